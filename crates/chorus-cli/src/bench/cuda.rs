//! The GPU suite of `chorus bench` (the default for `--device cuda`), measured exactly as
//! PyTorch's side measures it in `../shared/bench/torch_cuda_baseline.py`, so the two can run
//! side by side in one job on the GPU machine:
//! - `threads`: the transformer block (d=256, 4 heads, 2 layers, input 4×32×256) and the MLP
//!   512→1024→1024→512 at batch 1, from 1, 2, 4, 8, 16, 32, 64 threads sharing one model,
//!   each thread on its own stream; an iteration is `x = randn(...)`, `model(x).sum().item()`;
//!   `max(20, 400 / threads)` (transformer) or `max(50, 2000 / threads)` (MLP) iterations after
//!   one warm-up round, timed from a barrier;
//! - `batching`: one thread, the MLP at batch 1 … 4096, 20 warm-up forwards then 500 timed
//!   `model(x).sum().item()`.
//!
//! With `--repeat N` each thread-sweep row runs N times and reports the median (every run's
//! figure in `"runs"`): a row of the MLP lasts ~20 ms from 16 threads on, short enough for one
//! hiccup to move it by half. With `--seconds S` every thread of a row iterates until a shared
//! deadline S seconds after the start, and the row counts the forwards finished before it
//! (`"seconds": S` in the row): the steady rate, without the start of the threads and the tail
//! of the slowest one that a fixed count of ~50 forwards per thread also times.
//!
//! Both are measured twice: calling the model (`"graph": false`, what PyTorch's side does) and
//! running a [`Graph`] of `model(x).sum()` captured by each thread before the clock starts
//! (`"graph": true`; an iteration is then `x = randn(...)`, `graph.run(x).item()`).
//!
//! (The seed's stress rounds are `chorus stress --device cuda --json`.) The output's keys are the
//! PyTorch script's, so `scripts/compare-bench` can pair the rows.

use crate::device::{self, DeviceChoice};
use crate::workload::{Models, Workload};
use chorus::{DType, Device, Graph, Tensor};
use serde_json::{json, Value};
// sync-shim: allowed (a benchmark round's deadline flag, not runtime code)
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::Instant;

const THREADS: [usize; 7] = [1, 2, 4, 8, 16, 32, 64];

/// One model of the thread sweep: a workload's model, its input and the script's counts.
struct SweepModel {
    name: &'static str,
    workload: Workload,
    input: &'static [usize],
    iters: fn(usize) -> usize,
}

const MODELS: [SweepModel; 2] = [
    SweepModel {
        name: "transformer_d256_h4_L2_x4x32",
        workload: Workload::Transformer,
        input: &[4, 32, 256],
        iters: |t| (400 / t).max(20),
    },
    SweepModel {
        name: "mlp_512_1024_1024_512_b1",
        workload: Workload::Mlp,
        input: &[1, 512],
        iters: |t| (2000 / t).max(50),
    },
];

/// `model(x).sum().item()`: one synchronous forward, as the PyTorch script does it.
fn forward_item(models: &Models, x: &Tensor) -> anyhow::Result<f32> {
    Ok(models.model().forward(x)?.sum_all()?.item::<f32>()?)
}

/// How a round calls the model: directly, or through a graph the thread captured.
enum Forward<'a> {
    Direct(&'a Models),
    Graph(Graph),
}

impl<'a> Forward<'a> {
    /// A graph of `model(x).sum()` for inputs of `shape` when `graph`, captured on the calling
    /// thread's stream.
    fn new(
        device: &Device,
        models: &'a Models,
        shape: &[usize],
        graph: bool,
    ) -> anyhow::Result<Self> {
        if !graph {
            return Ok(Forward::Direct(models));
        }
        let g = Graph::capture(device, &[(shape, DType::F32)], |x| -> anyhow::Result<_> {
            Ok(vec![models.model().forward(&x[0])?.sum_all()?])
        })?;
        Ok(Forward::Graph(g))
    }

    /// `model(x).sum().item()`.
    fn item(&self, x: &Tensor) -> anyhow::Result<f32> {
        match self {
            Forward::Direct(models) => forward_item(models, x),
            Forward::Graph(g) => Ok(g.run(&[x])?[0].item::<f32>()?),
        }
    }
}

/// Forwards per second from `threads` threads sharing `models`: each does the workload's count
/// of forwards, or (`seconds`) as many as it finishes before the deadline.
fn thread_round(
    device: &Device,
    models: &Models,
    w: &SweepModel,
    threads: usize,
    graph: bool,
    seconds: Option<f64>,
) -> anyhow::Result<Value> {
    let iters = match seconds {
        Some(_) => usize::MAX,
        None => (w.iters)(threads),
    };
    let barrier = Barrier::new(threads + 1);
    let stop = AtomicBool::new(false);
    let (mut errors, mut done) = (0, 0);
    let dt = std::thread::scope(|s| -> anyhow::Result<f64> {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (barrier, stop) = (&barrier, &stop);
                s.spawn(move || -> anyhow::Result<usize> {
                    let seed = |i: usize| (t * 1_000_003 + i) as u64;
                    // Capture (graph rounds) and one warm-up forward, before the clock; the
                    // barrier is reached whatever happened, so no thread waits forever.
                    let ready = (|| -> anyhow::Result<Forward<'_>> {
                        let fwd = Forward::new(device, models, w.input, graph)?;
                        let warm = Tensor::randn(device, w.input, seed(usize::MAX / 2 - t))?;
                        fwd.item(&warm)?;
                        Ok(fwd)
                    })();
                    barrier.wait();
                    let fwd = ready?;
                    for i in 0..iters {
                        let x = Tensor::randn(device, w.input, seed(i))?;
                        fwd.item(&x)?;
                        // A forward that ends after the deadline is not counted (its time
                        // before the deadline is: the rate errs low by under one per thread).
                        if stop.load(Ordering::Relaxed) {
                            return Ok(i);
                        }
                    }
                    Ok(iters)
                })
            })
            .collect();
        barrier.wait();
        let t0 = Instant::now();
        let mut dt = None;
        if let Some(secs) = seconds {
            std::thread::sleep(std::time::Duration::from_secs_f64(secs));
            stop.store(true, Ordering::Relaxed);
            dt = Some(t0.elapsed().as_secs_f64());
        }
        for h in handles {
            match h.join().expect("bench thread panicked") {
                Ok(n) => done += n,
                Err(e) => {
                    eprintln!("{} ({threads} threads): {e:#}", w.name);
                    errors += 1;
                }
            }
        }
        Ok(dt.unwrap_or_else(|| t0.elapsed().as_secs_f64()))
    })?;
    // A rate of the threads that survived would not be the row's: fail, as the CPU suite does.
    anyhow::ensure!(
        errors == 0,
        "{} ({threads} threads): {errors} thread(s) failed (errors above)",
        w.name
    );
    Ok(json!({
        "threads": threads,
        "ops_per_s": done as f64 / dt,
        "seconds": seconds,
        "errors": errors,
        "workload": w.name,
        "per_thread_stream": true,
        "graph": graph,
    }))
}

/// Samples per second of the MLP at each batch size, one thread.
fn batching(device: &Device) -> anyhow::Result<Vec<Value>> {
    let models = Models::build(device, Workload::Mlp)?.expect("the mlp workload has a model");
    let mut rows = Vec::new();
    for graph in [false, true] {
        for b in [1usize, 8, 64, 256, 1024, 4096] {
            let x = Tensor::randn(device, &[b, 512], 7)?;
            let fwd = Forward::new(device, &models, &[b, 512], graph)?;
            for _ in 0..20 {
                fwd.item(&x)?;
            }
            let n = 500;
            let t0 = Instant::now();
            for _ in 0..n {
                fwd.item(&x)?;
            }
            let dt = t0.elapsed().as_secs_f64() / f64::from(n);
            rows.push(json!({
                "batch": b,
                "latency_ms": dt * 1e3,
                "samples_per_s": b as f64 / dt,
                "graph": graph,
            }));
        }
    }
    Ok(rows)
}

/// The median of `runs` thread-sweep rows (by `ops_per_s`), with every run's figure in `runs`.
fn median_row(mut runs: Vec<Value>) -> Value {
    let rates: Vec<f64> = runs
        .iter()
        .map(|r| r["ops_per_s"].as_f64().unwrap_or(0.0))
        .collect();
    let mut row = runs.swap_remove(super::median_index(&rates));
    row["runs"] = json!(rates);
    row
}

/// Runs the suite on `choice` and returns the result object; each thread-sweep row is the
/// median of `repeat` runs, each of the script's count or of `seconds`.
pub(super) fn run(
    choice: &DeviceChoice,
    quiet: bool,
    repeat: usize,
    seconds: Option<f64>,
) -> anyhow::Result<Value> {
    let device = device::build_with_streams(choice, THREADS[THREADS.len() - 1] + 1)?;
    let mut threads = Vec::new();
    for w in &MODELS {
        let models = Models::build(&device, w.workload)?.expect("model workloads have a model");
        for graph in [false, true] {
            for &t in &THREADS {
                let runs = (0..repeat.max(1))
                    .map(|_| thread_round(&device, &models, w, t, graph, seconds))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let row = median_row(runs);
                if !quiet {
                    eprintln!("{row}");
                }
                threads.push(row);
            }
        }
    }
    let batching = batching(&device)?;
    if !quiet {
        for b in &batching {
            eprintln!("{b}");
        }
    }
    Ok(json!({
        "device": device.id().to_string(),
        "description": device.describe(),
        "threads": threads,
        "batching": batching,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus::DeviceExt;

    #[test]
    fn a_repeated_row_is_the_median_run_with_every_run_listed() {
        let row = |r: f64| json!({"threads": 16, "ops_per_s": r, "graph": false});
        let m = median_row(vec![row(30.0), row(10.0), row(20.0)]);
        assert_eq!(m["ops_per_s"], 20.0);
        assert_eq!(m["runs"], json!([30.0, 10.0, 20.0]));
        assert_eq!(median_row(vec![row(5.0)])["ops_per_s"], 5.0);
    }

    #[test]
    fn a_timed_row_counts_the_forwards_finished_before_its_deadline() {
        let device = Device::cpu().unwrap();
        let models = Models::build(&device, Workload::Mlp).unwrap().unwrap();
        let w = &MODELS[1];
        let started = Instant::now();
        let row = thread_round(&device, &models, w, 2, false, Some(0.3)).unwrap();
        // The deadline ends the round: far fewer than the unbounded count ran.
        assert!(started.elapsed().as_secs_f64() < 5.0);
        assert_eq!(row["seconds"], 0.3);
        assert_eq!(row["errors"], 0);
        assert!(row["ops_per_s"].as_f64().unwrap() > 0.0, "{row}");
        let counted = thread_round(&device, &models, w, 2, false, None).unwrap();
        assert_eq!(counted["seconds"], Value::Null);
        assert!(counted["ops_per_s"].as_f64().unwrap() > 0.0, "{counted}");
    }
}
