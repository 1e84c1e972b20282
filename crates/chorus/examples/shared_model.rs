//! Many threads sharing one model.
//!
//! A model is built once and shared by reference: `nn` modules are `Send + Sync` and immutable,
//! so threads call `forward` on the same model at the same time, without a lock. Each thread
//! runs its work on its own stream of the device, and the results are bit-identical to the same
//! work run on one thread, which this example checks.
//!
//! `cargo run -p chorus --example shared_model`

use chorus::nn::{Linear, Mlp};
use chorus::prelude::*;
use std::time::Instant;

/// Threads sharing the model, and forwards each one runs.
const THREADS: u64 = 8;
const FORWARDS: u64 = 25;

/// A linear layer `inputs → outputs` with random weights scaled by `1 / sqrt(inputs)`.
/// `randn` takes a seed: the same seed gives the same numbers on any thread and any device.
fn linear(device: &Device, inputs: usize, outputs: usize, seed: u64) -> anyhow::Result<Linear> {
    let scale = Tensor::full(device, &[1], 1.0 / (inputs as f32).sqrt())?;
    let weight = Tensor::randn(device, &[outputs, inputs], seed)?.mul(&scale)?;
    let bias = Tensor::randn(device, &[outputs], seed + 1)?.mul(&scale)?;
    Ok(Linear::new(weight, Some(bias))?)
}

/// Forward number `i`: a batch of 4 rows made from seed `1000 + i`, and the output read back
/// to host memory (reading back waits for the work; nothing before it does).
fn forward(device: &Device, model: &Mlp, i: u64) -> anyhow::Result<Vec<f32>> {
    let x = Tensor::randn(device, &[4, 64], 1000 + i)?;
    Ok(model.forward(&x)?.to_vec::<f32>()?)
}

fn main() -> anyhow::Result<()> {
    // A CPU device with the settings of the CHORUS_* environment variables (32 streams by
    // default: every thread gets one of them the first time it runs work).
    let device = Device::cpu()?;

    // The MLP 64 → 256 → 256 → 10 with ReLU between the layers (PyTorch's
    // `nn.Sequential(Linear, ReLU, Linear, ReLU, Linear)`).
    let model = Mlp::new(vec![
        linear(&device, 64, 256, 1)?,
        linear(&device, 256, 256, 3)?,
        linear(&device, 256, 10, 5)?,
    ])?;

    // The reference: every forward run on this thread alone, one after another.
    let total = THREADS * FORWARDS;
    let reference = (0..total)
        .map(|i| forward(&device, &model, i))
        .collect::<anyhow::Result<Vec<_>>>()?;

    // The same forwards from 8 threads at once, all sharing `model` and `device` by reference.
    // Thread `t` runs forwards `t * FORWARDS ..`.
    let start = Instant::now();
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (device, model) = (&device, &model);
                s.spawn(move || -> anyhow::Result<Vec<Vec<f32>>> {
                    (t * FORWARDS..(t + 1) * FORWARDS)
                        .map(|i| forward(device, model, i))
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a forward thread panicked"))
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let seconds = start.elapsed().as_secs_f64();

    // Every value must have the same bits as the single-threaded run.
    let parallel: Vec<Vec<f32>> = results.into_iter().flatten().collect();
    let bits = |v: &[Vec<f32>]| -> Vec<u32> { v.iter().flatten().map(|x| x.to_bits()).collect() };
    anyhow::ensure!(
        bits(&parallel) == bits(&reference),
        "a parallel forward differs from the single-threaded run"
    );
    println!(
        "{THREADS} threads ran {total} forwards of one shared MLP in {seconds:.3} s; \
         every output is bit-identical to the single-threaded run"
    );
    println!("first output row: {:?}", &reference[0][..10]);
    Ok(())
}
