//! Requests of different lengths along `pad_dim`: padded with zeros to the batch's longest,
//! batched by length class, bounded by a token budget; host and device requests.

mod common;

use chorus_batch::{BatchConfig, BatchError, BatchQueue, HostTensor};
use chorus_core::Tensor;
use chorus_nn::Module;
use common::{config, device, NEVER};
use std::time::Duration;

/// Sums each row over its last dimension, times the row's index + 1 along dim 1: `[B, C, L]`
/// to `[B, C]`. Zeros appended along `L` change nothing.
#[derive(Debug)]
struct SumLast;

impl Module for SumLast {
    fn forward(&self, x: &Tensor) -> chorus_nn::Result<Tensor> {
        Ok(x.sum(&[2], false)?)
    }
}

/// A request `[1, 2, len]` with distinct values, and the sums the model must give for it.
fn request(len: usize, seed: usize) -> (Vec<f32>, Vec<f32>) {
    let v: Vec<f32> = (0..2 * len).map(|i| (i + seed * 100) as f32).collect();
    let sums = vec![v[..len].iter().sum(), v[len..].iter().sum()];
    (v, sums)
}

#[test]
fn requests_of_one_length_class_share_a_padded_batch() {
    let device = device();
    // Lengths 5..=8 are one class (8): with 4 requests and max_batch 4 they fill one batch.
    let cfg = config(&device, 4, NEVER).pad_dim(Some(2)).build().unwrap();
    let queue = BatchQueue::new(SumLast, cfg).unwrap();
    for host in [true, false] {
        let lens = [5, 8, 6, 7];
        let tickets: Vec<_> = (lens.iter().enumerate())
            .map(|(i, &len)| {
                let (v, sums) = request(len, i);
                let t = if host {
                    let h = HostTensor::new(&v, &[1, 2, len]).unwrap();
                    queue.submit(h).map(|t| (None, Some(t)))
                } else {
                    let x = Tensor::from_slice(&device, &v, &[1, 2, len]).unwrap();
                    queue.submit(x).map(|t| (Some(t), None))
                };
                (t.unwrap(), sums)
            })
            .collect();
        let mut batches = Vec::new();
        for ((dev_t, host_t), sums) in tickets {
            let (got, info) = match (dev_t, host_t) {
                (Some(t), _) => {
                    let (y, info) = t.wait_with_info().unwrap();
                    (y.to_vec::<f32>().unwrap(), info)
                }
                (_, Some(t)) => {
                    let (y, info) = t.wait_with_info().unwrap();
                    (y.to_vec::<f32>().unwrap(), info)
                }
                _ => unreachable!(),
            };
            assert_eq!(got, sums, "host {host}");
            batches.push((info.batch, info.requests));
        }
        assert!(
            batches.iter().all(|&(b, n)| b == batches[0].0 && n == 4),
            "{batches:?}"
        );
    }
}

#[test]
fn other_length_classes_and_the_token_budget_split_batches() {
    let device = device();
    // Budget 16 tokens: class 8 takes 2 rows a batch, class 4 takes 4.
    let cfg = config(&device, 8, Duration::from_millis(50))
        .pad_dim(Some(2))
        .max_batch_tokens(Some(16))
        .workers(1)
        .build()
        .unwrap();
    let queue = BatchQueue::new(SumLast, cfg).unwrap();
    let lens = [7, 3, 8, 4, 5, 2, 3];
    let tickets: Vec<_> = (lens.iter().enumerate())
        .map(|(i, &len)| {
            let (v, sums) = request(len, i);
            (
                queue
                    .submit(HostTensor::new(&v, &[1, 2, len]).unwrap())
                    .unwrap(),
                sums,
                len,
            )
        })
        .collect();
    let mut by_batch: std::collections::BTreeMap<u64, Vec<usize>> = Default::default();
    for (t, sums, len) in tickets {
        let (y, info) = t.wait_with_info().unwrap();
        assert_eq!(y.to_vec::<f32>().unwrap(), sums);
        by_batch.entry(info.batch).or_default().push(len);
    }
    for lens in by_batch.values() {
        let class = lens.iter().map(|l| l.next_power_of_two()).max().unwrap();
        assert!(
            lens.iter().all(|l| l.next_power_of_two() == class),
            "{by_batch:?}"
        );
        assert!(lens.len() * class <= 16, "over the budget: {by_batch:?}");
    }
    // Class 8 (7, 8, 5): 2 + 1; class 4 (3, 4, 3): one batch; class 2 (2): one.
    assert_eq!(by_batch.len(), 4, "{by_batch:?}");
}

#[test]
fn padding_settings_are_checked() {
    let device = device();
    let bad = |b: chorus_batch::BatchConfigBuilder, setting: &str| match b.build() {
        Err(BatchError::Config { setting: s, .. }) => assert_eq!(s, setting),
        other => panic!("{other:?}"),
    };
    bad(BatchConfig::builder(&device).pad_dim(Some(0)), "pad_dim");
    bad(
        BatchConfig::builder(&device)
            .pad_dim(Some(1))
            .max_batch_tokens(Some(0)),
        "max_batch_tokens",
    );
    bad(
        BatchConfig::builder(&device).max_batch_tokens(Some(64)),
        "max_batch_tokens",
    );
    let queue = BatchQueue::new(
        SumLast,
        config(&device, 4, NEVER).pad_dim(Some(2)).build().unwrap(),
    )
    .unwrap();
    match queue.submit(HostTensor::new(&[1.0f32, 2.0], &[1, 2]).unwrap()) {
        Err(BatchError::InvalidInput { reason, .. }) => assert!(reason.contains("pad_dim")),
        other => panic!("{other:?}"),
    }
    match queue.submit(HostTensor::new::<f32>(&[], &[1, 2, 0]).unwrap()) {
        Err(BatchError::InvalidInput { reason, .. }) => assert!(reason.contains("empty")),
        other => panic!("{other:?}"),
    }
}
