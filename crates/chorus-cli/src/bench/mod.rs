//! `chorus bench`: its options, and which suite runs.
//!
//! - `mlp` (the default) on the CPU: `cpu.rs`, measured as `../shared/bench/torch_cpu_baseline.py`;
//! - `mlp` on a GPU: `cuda.rs`, measured as `torch_cuda_baseline.py`;
//! - `batching`: the dynamic batching queue against direct calls (`batching/`);
//! - `embed`: the sentence encoder, as `torch_minilm_baseline.py` measures
//!   sentence-transformers (`embed.rs`).
//!
//! The models are the workloads' (`crate::workload`): the MLP 512→1024→1024→512 and, on a
//! GPU, the transformer encoder.

mod batching;
mod cpu;
mod cuda;
mod embed;

use crate::device::{self, DeviceChoice};
use clap::Args;
use std::process::ExitCode;

/// Arguments of `chorus bench`.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// The benchmark: `mlp` (batch and thread sweeps of the MLP) or `batching` (the dynamic
    /// batching queue against direct calls; see the batching options below).
    #[arg(value_enum, default_value_t = Suite::Mlp)]
    suite: Suite,
    /// Device to run on (`cpu`, `cuda`, `auto`). A GPU runs the suite of
    /// `torch_cuda_baseline.py` (see `bench/cuda.rs`), the CPU that of `torch_cpu_baseline.py`.
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
    #[command(flatten)]
    embed: embed::EmbedBenchArgs,
}

/// The benchmarks of `chorus bench`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Suite {
    /// The MLP batch and thread sweeps (the default).
    Mlp,
    /// The dynamic batching queue (`bench/batching/`).
    Batching,
    /// The sentence encoder: offline, online (direct and queued), forward (`bench/embed.rs`).
    Embed,
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

/// Runs `chorus bench`: the suite the arguments choose.
///
/// # Errors
/// A device that cannot start, invalid options, or a failed forward.
pub(crate) fn run(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    let repeat = usize::try_from(args.repeat)?;
    if args.suite == Suite::Batching {
        return batching::run(&args.device, args.json, repeat, &args.batching);
    }
    if args.suite == Suite::Embed {
        let out = embed::run(&args.device, &args.embed)?;
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    if device::is_gpu(args.device.kind) {
        let out = cuda::run(&args.device, args.json, repeat, args.seconds)?;
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    cpu::run(&args.device, args.json)
}
