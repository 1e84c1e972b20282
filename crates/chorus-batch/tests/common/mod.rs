//! Helpers shared by the integration tests: models, inputs, a tiny `block_on`, and the
//! comparison helpers.

#![allow(dead_code, unreachable_pub)]

use chorus_batch::{BatchConfig, BatchConfigBuilder};
use chorus_core::{Device, Tensor};
use chorus_nn::{Linear, Mlp, Module};
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

/// A long `max_delay`: batches then form only by size or by shutdown, so their composition
/// does not depend on timing.
pub const NEVER: Duration = Duration::from_secs(3600);

/// The CPU device.
pub fn device() -> Device {
    chorus_cpu::device().expect("cpu device")
}

/// A config builder on `device` with `max_batch` rows and `max_delay`.
pub fn config(device: &Device, max_batch: usize, max_delay: Duration) -> BatchConfigBuilder {
    BatchConfig::builder(device)
        .max_batch(max_batch)
        .max_delay(max_delay)
}

/// An MLP `sizes[0] → ... → sizes[n]` with seeded random weights scaled by 1/sqrt(fan_in).
pub fn mlp(device: &Device, sizes: &[usize]) -> Arc<Mlp> {
    let layers = sizes
        .windows(2)
        .enumerate()
        .map(|(i, w)| {
            let scale = Tensor::full(device, &[1], 1.0 / (w[0] as f32).sqrt()).unwrap();
            let weight = Tensor::randn(device, &[w[1], w[0]], 100 + i as u64)
                .unwrap()
                .mul(&scale)
                .unwrap();
            let bias = Tensor::randn(device, &[w[1]], 200 + i as u64)
                .unwrap()
                .mul(&scale)
                .unwrap();
            Linear::new(weight, Some(bias)).unwrap()
        })
        .collect();
    Arc::new(Mlp::new(layers).unwrap())
}

/// A linear layer 4 → 3 with small integer weights and bias: on small integer inputs every
/// product and sum is exact in f32, so the output does not depend on the batch it ran in.
pub fn exact_linear(device: &Device) -> Linear {
    let w = Tensor::from_slice(
        device,
        &[
            1.0_f32, 2.0, 0.0, -1.0, 0.0, 1.0, 3.0, 1.0, -2.0, 0.0, 1.0, 2.0,
        ],
        &[3, 4],
    )
    .unwrap();
    let b = Tensor::from_slice(device, &[1.0_f32, 0.0, -1.0], &[3]).unwrap();
    Linear::new(w, Some(b)).unwrap()
}

/// What [`exact_linear`] gives for one row, computed on the host.
pub fn exact_linear_host(x: [f32; 4]) -> [f32; 3] {
    let w = [
        [1.0, 2.0, 0.0, -1.0],
        [0.0, 1.0, 3.0, 1.0],
        [-2.0, 0.0, 1.0, 2.0],
    ];
    let b = [1.0, 0.0, -1.0];
    let mut y = [0.0; 3];
    for o in 0..3 {
        y[o] = b[o] + (0..4).map(|i| w[o][i] * x[i]).sum::<f32>();
    }
    y
}

/// Whether `got` is within the op tolerance of the golden MLP cases (rtol = atol = 1e-4).
pub fn close(got: &[f32], want: &[f32]) -> bool {
    got.len() == want.len()
        && got
            .iter()
            .zip(want)
            .all(|(g, w)| (g - w).abs() <= 1e-4 + 1e-4 * w.abs())
}

/// Runs a future to completion on this thread, parking between polls.
pub fn block_on<F: Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// A model that doubles its input: cheap, exact, any shape.
#[derive(Debug)]
pub struct Double;

impl Module for Double {
    fn forward(&self, x: &Tensor) -> chorus_nn::Result<Tensor> {
        Ok(x.add(x)?)
    }
}
