//! Dynamic batching: many threads each send single requests, and a `BatchQueue` runs them
//! through one model as batches.
//!
//! A request here is what a server holds: one row of f32 in host memory (a `HostTensor`), and
//! its answer comes back in host memory. The queue gathers the rows that arrive together into
//! one batch (up to `max_batch` rows, waiting at most `max_delay` for more), runs the model
//! once on its worker threads, and hands each request exactly its rows. Its statistics show the
//! batches it made.
//!
//! `cargo run -p chorus --example dynamic_batching`

use chorus::batch::{BatchConfig, BatchQueue, HostTensor, ShutdownMode};
use chorus::nn::{Linear, Mlp};
use chorus::prelude::*;
use std::time::Duration;

/// Client threads, and requests each one sends (one at a time, waiting for each answer).
const CLIENTS: usize = 16;
const REQUESTS: usize = 20;

/// A linear layer with random weights scaled by `1 / sqrt(inputs)`.
fn linear(device: &Device, inputs: usize, outputs: usize, seed: u64) -> anyhow::Result<Linear> {
    let scale = Tensor::full(device, &[1], 1.0 / (inputs as f32).sqrt())?;
    let weight = Tensor::randn(device, &[outputs, inputs], seed)?.mul(&scale)?;
    let bias = Tensor::randn(device, &[outputs], seed + 1)?.mul(&scale)?;
    Ok(Linear::new(weight, Some(bias))?)
}

/// The request of client `c` number `i`: 32 values.
fn request_row(c: usize, i: usize) -> Vec<f32> {
    (0..32)
        .map(|j| ((c * 31 + i * 7 + j) % 17) as f32 / 17.0 - 0.5)
        .collect()
}

fn main() -> anyhow::Result<()> {
    let device = Device::cpu()?;
    // The model: an MLP 32 → 64 → 8. The queue owns it (any `nn::Module` will do); keep a
    // clone to check answers against direct calls.
    let model = Mlp::new(vec![
        linear(&device, 32, 64, 1)?,
        linear(&device, 64, 8, 3)?,
    ])?;
    let direct = model.clone();

    let config = BatchConfig::builder(&device)
        .max_batch(16) // rows per batch
        .max_delay(Duration::from_micros(500)) // how long the oldest request waits for company
        .workers(2) // worker threads, each on a stream of its own
        .max_queue(1024) // beyond it `submit` fails with QueueFull and hands the input back
        .build()?;
    let queue = BatchQueue::new(model, config)?;

    // Every client sends its requests one after another; `infer` blocks until the request's
    // rows are computed. (`submit` returns a ticket to wait on later, or to `.await`.)
    let answers = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let queue = &queue;
                s.spawn(move || -> anyhow::Result<Vec<Vec<f32>>> {
                    (0..REQUESTS)
                        .map(|i| {
                            let x = HostTensor::new(&request_row(c, i), &[1, 32])?;
                            Ok(queue.infer(x)?.to_vec::<f32>()?)
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a client thread panicked"))
            .collect::<anyhow::Result<Vec<_>>>()
    })?;

    // Each answer equals a direct call on its row alone, within float rounding (a batch of
    // different size may sum in a different order; against a direct call on the same batch it
    // is bit-identical).
    let mut worst = 0.0f32;
    for (c, rows) in answers.iter().enumerate() {
        for (i, got) in rows.iter().enumerate() {
            let x = Tensor::from_slice(&device, &request_row(c, i), &[1, 32])?;
            let want = direct.forward(&x)?.to_vec::<f32>()?;
            for (g, w) in got.iter().zip(&want) {
                worst = worst.max((g - w).abs());
            }
        }
    }
    anyhow::ensure!(
        worst <= 1e-4,
        "an answer differs from a direct call by {worst}"
    );

    let stats = queue.stats();
    println!(
        "{CLIENTS} clients sent {} requests; the queue ran them in {} batches (mean {:.1} rows)",
        stats.requests, stats.batches, stats.mean_batch_size
    );
    println!(
        "request latency: p50 {:?}, p99 {:?}; every answer matches a direct call (largest \
         difference {worst:e})",
        stats.latency.p50, stats.latency.p99
    );
    // Drain: requests still waiting are run before the workers stop (Fail would fail them).
    queue.shutdown(ShutdownMode::Drain);
    Ok(())
}
