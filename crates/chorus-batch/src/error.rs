//! Errors of the batching queue.
//!
//! Rejections at submission hand the input back where the request was well-formed
//! ([`BatchError::QueueFull`], [`BatchError::Shutdown`]); checks of the input name the shapes
//! and devices involved; failures of a batch ([`BatchError::Model`], [`BatchError::Device`],
//! [`BatchError::ModelPanicked`], [`BatchError::OutputRows`]) are delivered to every request of
//! that batch and to no other.

use crate::host::Input;
use chorus_core::{DType, DeviceId};
use chorus_nn::NnError;
use chorus_sync::Arc;
use std::time::Duration;

/// Everything that can go wrong with a request or the queue.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// The queue already holds `capacity` requests; the input is handed back.
    #[error("batch queue is full ({capacity} requests waiting); the input is handed back")]
    QueueFull {
        /// The rejected input, unchanged.
        input: Input,
        /// The queue's capacity (`max_queue`).
        capacity: usize,
    },
    /// The queue was shut down: a new request is rejected (its input handed back), or a
    /// request that was still waiting was failed by [`ShutdownMode::Fail`](crate::ShutdownMode).
    #[error("batch queue is shut down")]
    Shutdown {
        /// The request's input, handed back.
        input: Input,
    },
    /// The input's shape past the batch dimension is not the one the queue was configured for
    /// ([`BatchConfig::input_shape`](crate::BatchConfig::input_shape)).
    #[error("input of shape {got:?} does not match the queue's per-row shape {expected:?}")]
    ShapeMismatch {
        /// The configured per-row shape (the input's shape without dimension 0).
        expected: Vec<usize>,
        /// The input's full shape.
        got: Vec<usize>,
    },
    /// The input cannot be batched: it has no batch dimension, or no rows.
    #[error("input of shape {shape:?} cannot be batched: {reason}")]
    InvalidInput {
        /// The input's shape.
        shape: Vec<usize>,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The input has more rows than one batch may hold.
    #[error("input has {rows} rows, more than max_batch = {max_batch}")]
    TooManyRows {
        /// Rows of the input (its dimension 0).
        rows: usize,
        /// The queue's `max_batch`.
        max_batch: usize,
    },
    /// A host tensor's elements were asked for as another type than its dtype.
    #[error("host tensor of dtype {expected} read as {got}")]
    DTypeMismatch {
        /// The tensor's dtype.
        expected: DType,
        /// The requested element type.
        got: DType,
    },
    /// The input lives on another device than the queue's.
    #[error("input lives on {got}, the batch queue runs on {expected}")]
    DeviceMismatch {
        /// The queue's device.
        expected: DeviceId,
        /// The input's device.
        got: DeviceId,
    },
    /// The request waited in the queue longer than its timeout and was taken out unrun.
    #[error("request waited {waited:?} in the batch queue, more than its timeout of {timeout:?}")]
    Timeout {
        /// How long it had waited when it was taken out.
        waited: Duration,
        /// The configured per-request timeout.
        timeout: Duration,
    },
    /// The model's forward pass failed on the batch this request was part of.
    #[error("model failed on a batch of {rows} rows: {source}")]
    Model {
        /// Rows of the batch.
        rows: usize,
        /// The model's error, shared by every request of the batch.
        #[source]
        source: Arc<NnError>,
    },
    /// The model panicked on the batch this request was part of (the panic was contained; the
    /// worker goes on with the next batch).
    #[error("model panicked on a batch of {rows} rows: {message}")]
    ModelPanicked {
        /// Rows of the batch.
        rows: usize,
        /// The panic's message.
        message: String,
    },
    /// The model's output does not have the batch's rows along dimension 0, so it cannot be
    /// split among the requests.
    #[error(
        "model returned shape {got:?} for a batch of {rows} rows (dimension 0 must be the batch)"
    )]
    OutputRows {
        /// Rows of the batch.
        rows: usize,
        /// Shape of the model's output.
        got: Vec<usize>,
    },
    /// The runtime failed around the forward pass (concatenating, splitting, or waiting for
    /// the worker's stream, which reports the device errors of the batch's kernels).
    #[error("device error on a batch of {rows} rows: {source}")]
    Device {
        /// Rows of the batch.
        rows: usize,
        /// The runtime's error.
        #[source]
        source: chorus_core::Error,
    },
    /// A worker could not start: its thread or its stream could not be had. (The timer thread,
    /// started with a timeout set, counts as the worker after the last.)
    #[error("batch worker {worker} could not start: {reason}")]
    WorkerStart {
        /// Index of the worker.
        worker: usize,
        /// What failed.
        reason: String,
    },
    /// The request was dropped by a worker without an outcome (a bug: reported, never hung on).
    #[error("batch worker dropped the request without completing it")]
    Abandoned,
    /// The ticket's result was already taken by an earlier call.
    #[error("the ticket's result was already taken")]
    ResultTaken,
    /// A queue setting is invalid.
    #[error("invalid batch queue setting {setting} = {value}: {reason}")]
    Config {
        /// The setting (`max_batch`, `workers`, ...).
        setting: &'static str,
        /// The rejected value.
        value: String,
        /// What would be valid.
        reason: &'static str,
    },
}

impl BatchError {
    /// The input handed back by a rejection ([`BatchError::QueueFull`],
    /// [`BatchError::Shutdown`]), if this error carries one.
    pub fn into_input(self) -> Option<Input> {
        match self {
            BatchError::QueueFull { input, .. } | BatchError::Shutdown { input } => Some(input),
            _ => None,
        }
    }
}

/// Result with [`BatchError`].
pub type Result<T, E = BatchError> = std::result::Result<T, E>;
