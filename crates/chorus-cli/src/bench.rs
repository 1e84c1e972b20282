//! `chorus bench`: the MLP 512→1024→1024→512 (ReLU), measured as PyTorch's side measures it in
//! `../shared/bench/torch_cpu_baseline.py`, so that the two can run side by side:
//! - `mlp_batching`: one thread, batch 1, 8, 64, 256; 5 warm-up forwards, then
//!   `max(20, 2000 / batch)` forwards, each read back (synchronized) before the next;
//! - `mlp_b1_threads`: 1, 2, 4, 8, 16, 64 threads sharing the model, each doing
//!   `max(20, 1000 / threads)` iterations of `randn([1, 512])` + forward + read-back.
//!
//! With a GPU device the suite of `torch_cuda_baseline.py` runs instead (`bench_cuda.rs`).
//!
//! The model is built from seeded random weights (the numbers do not matter for speed); every
//! linear layer runs as one GEMM with its bias and ReLU fused.
//!
//! `chorus bench batching` runs the dynamic batching benchmark instead (`bench_batching.rs`).

use crate::device::{self, DeviceChoice};
use chorus::{Device, Tensor, UnaryOp};
use clap::Args;
use std::process::ExitCode;
use std::time::Instant;

#[path = "bench_batching.rs"]
mod batching;

/// Arguments of `chorus bench`.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// The benchmark: `mlp` (batch and thread sweeps of the MLP) or `batching` (the dynamic
    /// batching queue against direct calls; see the batching options below).
    #[arg(value_enum, default_value_t = Suite::Mlp)]
    suite: Suite,
    /// Device to run on (`cpu`, `cuda`, `auto`). A GPU runs the suite of
    /// `torch_cuda_baseline.py` (see `bench_cuda.rs`), the CPU that of `torch_cpu_baseline.py`.
    #[arg(long, default_value = "cpu", value_parser = device::parse)]
    device: DeviceChoice,
    /// Print one JSON object (the same keys as the PyTorch script's output).
    #[arg(long)]
    json: bool,
    /// Run each row this many times and report the median run (every run's figure is in the
    /// row's `runs`): the GPU suite's thread-sweep rows, and every row of `batching` (both
    /// baselines and each queue setting); 1 (the default) runs each once, as PyTorch's script.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=99))]
    repeat: u64,
    /// GPU suite: run each thread-sweep row for this many seconds, every thread until a shared
    /// deadline, and count the forwards finished before it (steady state), instead of the
    /// PyTorch script's fixed counts (whose short rows also time the start of every thread and
    /// the slowest one's tail).
    #[arg(long, value_parser = parse_seconds)]
    seconds: Option<f64>,
    #[command(flatten)]
    batching: batching::BatchingArgs,
}

/// The index of the median of `rates` (the upper one of an even count); `rates` is not empty.
pub(crate) fn median_index(rates: &[f64]) -> usize {
    let mut order: Vec<usize> = (0..rates.len()).collect();
    order.sort_by(|&a, &b| rates[a].total_cmp(&rates[b]));
    order[order.len() / 2]
}

/// A round length in seconds: positive and at most an hour.
fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 3600.0 => Ok(v),
        _ => Err(format!("`{s}` is not a number of seconds in (0, 3600]")),
    }
}

/// The benchmarks of `chorus bench`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Suite {
    /// The MLP batch and thread sweeps (the default).
    Mlp,
    /// The dynamic batching queue (`bench_batching.rs`).
    Batching,
}

/// The MLP: `(weight [out, in], bias [out], relu?)` per layer.
struct Mlp(Vec<(Tensor, Tensor, bool)>);

impl Mlp {
    fn new(device: &Device) -> chorus::Result<Mlp> {
        let sizes = [512, 1024, 1024, 512];
        let layers = sizes
            .windows(2)
            .enumerate()
            .map(|(i, w)| {
                let scale = Tensor::full(device, &[1], 1.0 / (w[0] as f32).sqrt())?;
                let weight = Tensor::randn(device, &[w[1], w[0]], 100 + i as u64)?.mul(&scale)?;
                let bias = Tensor::randn(device, &[w[1]], 200 + i as u64)?.mul(&scale)?;
                Ok((weight, bias, i + 2 < sizes.len()))
            })
            .collect::<chorus::Result<Vec<_>>>()?;
        Ok(Mlp(layers))
    }

    fn forward(&self, x: &Tensor) -> chorus::Result<Tensor> {
        let mut h = x.clone();
        for (w, b, relu) in &self.0 {
            h = h.linear_act(w, Some(b), relu.then_some(UnaryOp::Relu))?;
        }
        Ok(h)
    }
}

/// Forward and wait for the result, as PyTorch's synchronous call does.
fn forward_sync(mlp: &Mlp, device: &Device, x: &Tensor) -> chorus::Result<()> {
    mlp.forward(x)?;
    device.current_stream()?.synchronize()
}

pub(crate) fn run(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    if args.suite == Suite::Batching {
        let repeat = usize::try_from(args.repeat)?;
        return batching::run(&args.device, args.json, repeat, &args.batching);
    }
    if device::is_gpu(args.device.kind) {
        let repeat = usize::try_from(args.repeat)?;
        let out = crate::bench_cuda::run(&args.device, args.json, repeat, args.seconds)?;
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    let device = device::build(&args.device)?;
    let mlp = Mlp::new(&device)?;
    let mut batching = Vec::new();
    for b in [1usize, 8, 64, 256] {
        let x = Tensor::randn(&device, &[b, 512], 7)?;
        for _ in 0..5 {
            forward_sync(&mlp, &device, &x)?;
        }
        let n = (2000 / b).max(20);
        let t0 = Instant::now();
        for _ in 0..n {
            forward_sync(&mlp, &device, &x)?;
        }
        let dt = t0.elapsed().as_secs_f64() / n as f64;
        batching.push(
            serde_json::json!({"batch": b, "latency_ms": dt * 1e3, "samples_per_s": b as f64 / dt}),
        );
    }
    let mut threads = Vec::new();
    for nt in [1usize, 2, 4, 8, 16, 64] {
        let iters = (1000 / nt).max(20);
        let t0 = Instant::now();
        std::thread::scope(|s| -> chorus::Result<()> {
            let hs: Vec<_> = (0..nt)
                .map(|t| {
                    let (mlp, device) = (&mlp, &device);
                    s.spawn(move || -> chorus::Result<()> {
                        for i in 0..iters {
                            let x = Tensor::randn(device, &[1, 512], (t * 100_000 + i) as u64)?;
                            forward_sync(mlp, device, &x)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            hs.into_iter()
                .try_for_each(|h| h.join().expect("bench thread panicked"))
        })?;
        let ops = (nt * iters) as f64 / t0.elapsed().as_secs_f64();
        threads.push(serde_json::json!({"threads": nt, "ops_per_s": ops}));
    }
    let out = serde_json::json!({
        "device": device.id().to_string(),
        "mlp_batching": batching,
        "mlp_b1_threads": threads,
    });
    if args.json {
        println!("{out}");
    } else {
        println!(
            "MLP 512-1024-1024-512 on {} ({})",
            device.id(),
            device.describe()
        );
        for b in out["mlp_batching"].as_array().into_iter().flatten() {
            println!(
                "  batch {:>4}: {:>10.0} samples/s  {:.3} ms",
                b["batch"],
                b["samples_per_s"].as_f64().unwrap_or(0.0),
                b["latency_ms"].as_f64().unwrap_or(0.0)
            );
        }
        for t in out["mlp_b1_threads"].as_array().into_iter().flatten() {
            println!(
                "  batch 1, {:>2} threads: {:>10.0} forwards/s",
                t["threads"],
                t["ops_per_s"].as_f64().unwrap_or(0.0)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
