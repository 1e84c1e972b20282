//! The direct baselines of `chorus bench batching`: (a) every client calling the model itself
//! with batch 1, and (b) one thread calling it on whole batches.

use super::clients::{clients, host_rows, seed};
use super::measure::{cpu_since, cpu_time, CpuClock, Measured, Phase};
use super::{BatchingArgs, InputKind};
use chorus::nn::{self, Module as _};
use chorus::{Device, Tensor};
use std::ops::Range;
use std::time::{Duration, Instant};

/// A direct forward on `rows` rows made from `seed`, timed from the call until the result is
/// there (on the host for `Host`, computed on the device for `Device`).
fn direct_call(
    device: &Device,
    model: &nn::Mlp,
    kind: InputKind,
    seed: u64,
    rows: usize,
) -> anyhow::Result<Duration> {
    match kind {
        InputKind::Host => {
            let data = host_rows(seed, rows);
            let t0 = Instant::now();
            let x = Tensor::from_slice(device, &data, &[rows, 512])?;
            std::hint::black_box(model.forward(&x)?.to_vec::<f32>()?);
            Ok(t0.elapsed())
        }
        InputKind::Device => {
            let x = Tensor::randn(device, &[rows, 512], seed)?;
            let stream = device.current_stream()?;
            stream.synchronize()?; // the input is made before the clock starts
            let t0 = Instant::now();
            model.forward(&x)?;
            stream.synchronize()?;
            Ok(t0.elapsed())
        }
    }
}

/// (a): every client calls the model directly with batch 1.
pub(super) fn direct_threads(
    device: &Device,
    model: &nn::Mlp,
    a: &BatchingArgs,
) -> anyhow::Result<Measured> {
    let run = |c: u64, requests: Range<u64>| {
        requests
            .map(|i| direct_call(device, model, a.input, seed(c, i), 1))
            .collect()
    };
    let phase = clients(a.clients, 5, a.requests, &run, &|| {})?;
    Ok(Measured::from(a.clients * a.requests, phase))
}

/// (b): one thread, direct calls on batch `b`.
pub(super) fn direct_batch(
    device: &Device,
    model: &nn::Mlp,
    kind: InputKind,
    b: usize,
    samples: u64,
) -> anyhow::Result<Measured> {
    for i in 0..3 {
        direct_call(device, model, kind, 7 + i, b)?;
    }
    let n = (samples / b as u64).clamp(10, 2000);
    let mut latencies = Vec::with_capacity(n as usize);
    let mut busy = Duration::ZERO;
    let (cpu0, thread0) = (cpu_time(CpuClock::Process), cpu_time(CpuClock::Thread));
    for i in 0..n {
        let l = direct_call(device, model, kind, 7 + i, b)?;
        busy += l;
        latencies.push(l);
    }
    // Throughput over the timed calls only (making the input is the client's business); the
    // CPU times include making the inputs.
    let phase = Phase {
        elapsed: busy,
        cpu: cpu_since(CpuClock::Process, cpu0),
        client_cpu: cpu_since(CpuClock::Thread, thread0),
        latencies,
    };
    Ok(Measured::from(n * b as u64, phase))
}
