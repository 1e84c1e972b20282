//! The CPU suite of `chorus bench`: the MLP 512→1024→1024→512 (ReLU; [`workload::mlp`]),
//! measured as PyTorch's side measures it in `../shared/bench/torch_cpu_baseline.py`, so that
//! the two can run side by side:
//! - `mlp_batching`: one thread, batch 1, 8, 64, 256; 5 warm-up forwards, then
//!   `max(20, 2000 / batch)` forwards, each read back (synchronized) before the next;
//! - `mlp_b1_threads`: 1, 2, 4, 8, 16, 64 threads sharing the model, each doing
//!   `max(20, 1000 / threads)` iterations of `randn([1, 512])` + forward + read-back.
//!
//! The model is built from seeded random weights (the numbers do not matter for speed); every
//! linear layer runs as one GEMM with its bias and ReLU fused.

use crate::device::{self, DeviceChoice};
use crate::workload;
use chorus::nn::{self, Module as _};
use chorus::{Device, Tensor};
use serde_json::Value;
use std::process::ExitCode;
use std::time::Instant;

/// Forward and wait for the result, as PyTorch's synchronous call does.
fn forward_sync(mlp: &nn::Mlp, device: &Device, x: &Tensor) -> anyhow::Result<()> {
    mlp.forward(x)?;
    Ok(device.current_stream()?.synchronize()?)
}

/// Runs the suite on `choice` and prints it (one JSON object with `as_json`, else text).
///
/// # Errors
/// A device that cannot start or a failed forward.
pub(super) fn run(choice: &DeviceChoice, as_json: bool) -> anyhow::Result<ExitCode> {
    let device = device::build(choice)?;
    let mlp = workload::mlp(&device)?;
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
        std::thread::scope(|s| -> anyhow::Result<()> {
            let hs: Vec<_> = (0..nt)
                .map(|t| {
                    let (mlp, device) = (&mlp, &device);
                    s.spawn(move || -> anyhow::Result<()> {
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
    if as_json {
        println!("{out}");
    } else {
        print_text(&device, &out);
    }
    Ok(ExitCode::SUCCESS)
}

/// The suite's figures as text.
fn print_text(device: &Device, out: &Value) {
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
