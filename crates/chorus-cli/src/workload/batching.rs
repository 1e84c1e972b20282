//! The batching workload: the MLP behind one dynamic batching queue shared by every thread.
//! A round submits `randn([1, 512])` and waits for its rows (odd iterations as a host request:
//! the input copied to host memory, the result copied back to the device); its results are the
//! output and where it ran (batch number, row offset, batch rows).
//!
//! Its single-threaded reference ([`reference`]) is per batch, not per round: the model called
//! directly on the concatenation of a batch's inputs gives the same bits, and on each input
//! alone the same values within the op tolerance (a different batch may round differently).

use super::{seed_for, Params, RoundKey};
use chorus::batch::{BatchConfig, BatchError, BatchQueue, HostTensor};
use chorus::nn;
use chorus::{Device, Result, Tensor};
use std::time::Duration;

/// The queue: batches of up to 32 rows, 0.5 ms delay, 2 workers, room for every thread's
/// request.
pub(super) fn queue(device: &Device, mlp: nn::Mlp) -> std::result::Result<BatchQueue, BatchError> {
    let config = BatchConfig::builder(device)
        .max_batch(32)
        .max_delay(Duration::from_micros(500))
        .workers(2)
        .max_queue(65_536)
        .input_shape(Some(vec![512]))
        .build()?;
    BatchQueue::new(mlp, config)
}

/// The input of round `key`.
fn input(device: &Device, p: &Params<'_>, key: RoundKey) -> Result<Tensor> {
    Tensor::randn(device, &[1, 512], seed_for(p.seed, key, 0))
}

/// Submits round `key`'s input to the queue, waits for its rows and returns them with where
/// they ran (`[batch, offset, rows]` as an i64 tensor).
pub(super) fn round(device: &Device, p: &Params<'_>, key: RoundKey) -> Result<Vec<Tensor>> {
    let queue = p
        .models
        .and_then(|m| m.queue.as_ref())
        .expect("the batching scenario runs with its queue built");
    let x = input(device, p, key)?;
    let (y, info) = if key.iter % 2 == 1 {
        let (y, info) = queue
            .submit(HostTensor::from_tensor(&x)?)
            .and_then(|t| t.wait_with_info())
            .map_err(batch_error)?;
        (y.to_device(device)?, info)
    } else {
        queue
            .submit(x)
            .and_then(|t| t.wait_with_info())
            .map_err(batch_error)?
    };
    let at = [info.batch as i64, info.offset as i64, info.rows as i64];
    Ok(vec![y, Tensor::from_slice(device, &at, &[3])?])
}

/// The direct single-threaded reference for the rounds `keys`, which ran together in one
/// batch, in row order: the model called directly on the concatenation of their inputs
/// (bit-identical to the batch by construction), and on each input alone (equal within the op
/// tolerance), as `(batch output, [row outputs])`.
///
/// # Errors
/// An op or model error.
pub(crate) fn reference(
    device: &Device,
    p: &Params<'_>,
    keys: &[RoundKey],
) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
    let model = p
        .models
        .expect("the batching scenario runs with its model built")
        .model();
    let run = |x: &Tensor| {
        model
            .forward(x)
            .map_err(|e| nn_error(&e))
            .and_then(|y| y.to_vec::<f32>())
    };
    let inputs = keys
        .iter()
        .map(|&k| input(device, p, k))
        .collect::<Result<Vec<_>>>()?;
    let batch = run(&Tensor::cat(&inputs.iter().collect::<Vec<_>>(), 0)?)?;
    let alone = inputs.iter().map(run).collect::<Result<Vec<_>>>()?;
    Ok((batch, alone))
}

/// A batch queue's error as a runtime error (the round's error type).
fn batch_error(e: BatchError) -> chorus::Error {
    match e {
        BatchError::Device { source, .. } => source,
        BatchError::Model { source, .. } => nn_error(&source),
        other => model_error(other.to_string()),
    }
}

/// A model's error as a runtime error.
fn nn_error(e: &nn::NnError) -> chorus::Error {
    match e {
        nn::NnError::Core(e) => e.clone(),
        other => model_error(other.to_string()),
    }
}

fn model_error(reason: String) -> chorus::Error {
    chorus::Error::InvalidShape {
        op: "batch queue",
        shape: vec![1, 512],
        reason,
    }
}
