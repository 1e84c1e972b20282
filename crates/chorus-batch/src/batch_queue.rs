//! [`BatchQueue`]: the public handle: checks and submits requests, starts and stops the
//! workers, reads the statistics.
//!
//! # Fields
//! - `shared` (also held by every worker and ticket): the queue state machine
//!   (`crate::queue`, its own lock), the model (immutable, no lock), the settings (immutable)
//!   and the statistics (their own lock).
//! - `workers`: the join handles of the worker threads and, with a timeout set, of the timer
//!   thread (`worker::timer`), under `BATCH_WORKERS`, taken out by the first shutdown, which
//!   joins them after releasing the lock.
//! - `streams`: the stream of each worker, fixed at start.

use crate::config::{BatchConfig, ShutdownMode};
use crate::error::{BatchError, Result};
use crate::host::{BatchInput, Input};
use crate::queue::{Phase, Policy, Push, Queue};
use crate::slot::{self, Abandon, Completer, Take};
use crate::stats::{BatchStats, Stats};
use crate::ticket::{Outcome, Ticket};
use crate::worker;
use chorus_core::{DType, Health, StreamId};
use chorus_nn::Module;
use chorus_sync::atomic::AtomicU64;
use chorus_sync::{rank, thread, Arc, RankedMutex};

/// What requests are grouped by: the per-row shape, the dtype, and whether the input is in
/// host memory.
pub(crate) type Key = (Vec<usize>, DType, bool);

/// A request waiting in the queue or running in a batch.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) input: Input,
    pub(crate) done: Completer<Outcome>,
}

impl<T> Abandon for Result<T> {
    fn abandoned() -> Self {
        Err(BatchError::Abandoned)
    }
}

/// State shared by the handle, the workers and the tickets.
pub(crate) struct Shared {
    pub(crate) queue: Queue<Key, Request>,
    pub(crate) model: Box<dyn Module>,
    pub(crate) config: BatchConfig,
    pub(crate) stats: Stats,
    /// Batches started (numbers them).
    pub(crate) batches: AtomicU64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("model", &self.model.name())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Shuts the queue's state machine down and fails what `mode` takes out; returns how many.
pub(crate) fn fail_pending(shared: &Shared, mode: ShutdownMode) -> usize {
    let failed = shared.queue.shutdown(mode);
    let n = failed.len();
    if n > 0 {
        shared.stats.shut_down(n);
    }
    for q in failed {
        let Request { input, done } = q.item;
        done.complete(Err(BatchError::Shutdown { input }));
    }
    n
}

/// A dynamic batching queue: any number of threads submit single requests (an input whose
/// dimension 0 is the batch, usually of 1 row); worker threads, each on a stream of its own,
/// run them through one shared model as batches and hand each request exactly its rows of
/// the output.
///
/// See the [crate docs](crate) for how batches are formed and how failures are isolated.
///
/// # Examples
/// ```
/// use chorus_batch::{BatchConfig, BatchQueue};
/// use chorus_core::Tensor;
/// use chorus_nn::{Linear, Module};
/// use std::time::Duration;
/// # let device = chorus_cpu::device()?;
/// let model = Linear::new(Tensor::randn(&device, &[4, 8], 1)?, None)?;
/// let config = BatchConfig::builder(&device)
///     .max_batch(16)
///     .max_delay(Duration::from_micros(200))
///     .build()?;
/// let queue = BatchQueue::new(model, config)?;
/// std::thread::scope(|s| {
///     for t in 0..4 {
///         let (queue, device) = (&queue, &device);
///         s.spawn(move || {
///             let x = Tensor::randn(device, &[1, 8], t).unwrap();
///             let y = queue.infer(x).unwrap(); // batched with the other threads' requests
///             assert_eq!(y.shape(), &[1, 4]);
///         });
///     }
/// });
/// assert_eq!(queue.stats().requests, 4);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct BatchQueue {
    shared: Arc<Shared>,
    workers: RankedMutex<Vec<thread::JoinHandle<()>>>,
    streams: Vec<StreamId>,
}

impl BatchQueue {
    /// Starts a queue running `model` with `config`: its workers are started and have bound
    /// their streams (by the device's stream policy) when this returns.
    ///
    /// Pass an `Arc<M>` (or `&'static M`) to keep using the model directly as well.
    ///
    /// # Errors
    /// [`BatchError::WorkerStart`] when a worker's thread or stream cannot be had (an exclusive
    /// stream pool that is exhausted, say); the workers already started are stopped.
    pub fn new<M: Module + 'static>(model: M, config: BatchConfig) -> Result<BatchQueue> {
        let policy = Policy {
            max_batch: config.max_batch,
            max_delay: config.max_delay,
            preferred: config.preferred.clone(),
            capacity: config.max_queue,
            timeout: config.timeout,
        };
        let shared = Arc::new(Shared {
            queue: Queue::new(policy),
            model: Box::new(model),
            stats: Stats::new(),
            batches: AtomicU64::new(0),
            config,
        });
        let mut handles = Vec::new();
        let mut streams = Vec::new();
        let mut failure = None;
        for index in 0..shared.config.workers {
            let (started, rx) = slot::channel::<Result<StreamId>>();
            let s = Arc::clone(&shared);
            let spawned = thread::spawn_named(format!("chorus-batch-{index}"), move || {
                worker::main(s, index, started)
            });
            match spawned {
                Ok(h) => {
                    handles.push(h);
                    match rx.wait(None) {
                        Take::Ready(Ok(stream)) => streams.push(stream),
                        Take::Ready(Err(e)) => failure = Some(e),
                        Take::Pending | Take::Taken => failure = Some(BatchError::Abandoned),
                    }
                }
                Err(e) => {
                    failure = Some(BatchError::WorkerStart {
                        worker: index,
                        reason: format!("no thread: {e}"),
                    })
                }
            }
            if failure.is_some() {
                break;
            }
        }
        if failure.is_none() && shared.config.timeout.is_some() {
            let s = Arc::clone(&shared);
            match thread::spawn_named("chorus-batch-timer".to_string(), move || worker::timer(s)) {
                Ok(h) => handles.push(h),
                Err(e) => {
                    failure = Some(BatchError::WorkerStart {
                        worker: shared.config.workers,
                        reason: format!("no timer thread: {e}"),
                    })
                }
            }
        }
        let queue = BatchQueue {
            shared,
            workers: RankedMutex::new(rank::BATCH_WORKERS, handles),
            streams,
        };
        match failure {
            Some(e) => {
                queue.shutdown(ShutdownMode::Fail);
                Err(e)
            }
            None => Ok(queue),
        }
    }

    /// Checks a request before it is queued.
    fn check(&self, input: &Input) -> Result<()> {
        let cfg = &self.shared.config;
        if let Input::Device(t) = input {
            let (expected, got) = (cfg.device.id(), t.device_id());
            if expected != got {
                return Err(BatchError::DeviceMismatch { expected, got });
            }
        }
        let shape = input.shape();
        let Some((&rows, row_shape)) = shape.split_first() else {
            return Err(BatchError::InvalidInput {
                shape: shape.to_vec(),
                reason: "a 0-d tensor has no batch dimension",
            });
        };
        if rows == 0 {
            return Err(BatchError::InvalidInput {
                shape: shape.to_vec(),
                reason: "no rows (dimension 0 is 0)",
            });
        }
        if rows > cfg.max_batch {
            return Err(BatchError::TooManyRows {
                rows,
                max_batch: cfg.max_batch,
            });
        }
        if let Some(d) = cfg.pad_dim {
            if d >= shape.len() {
                return Err(BatchError::InvalidInput {
                    shape: shape.to_vec(),
                    reason: "no dimension pad_dim to pad along",
                });
            }
            if shape[d] == 0 {
                return Err(BatchError::InvalidInput {
                    shape: shape.to_vec(),
                    reason: "the padded dimension is empty",
                });
            }
        }
        if let Some(want) = &cfg.input_shape {
            // The padded dimension may differ.
            let fits = want.len() == row_shape.len()
                && (want.iter().zip(row_shape).enumerate())
                    .all(|(i, (w, r))| w == r || cfg.pad_dim == Some(i + 1));
            if !fits {
                return Err(BatchError::ShapeMismatch {
                    expected: want.clone(),
                    got: shape.to_vec(),
                });
            }
        }
        // A lost device runs nothing again: say so now rather than from a batch.
        if let Health::Lost { cause } = cfg.device.health() {
            return Err(BatchError::Device {
                rows,
                source: chorus_core::Error::DeviceLost {
                    device: cfg.device.id(),
                    cause,
                },
            });
        }
        Ok(())
    }

    /// Submits one request without waiting: `input`'s dimension 0 is the batch (1 row, or up
    /// to `max_batch`). The input is a [`Tensor`](chorus_core::Tensor) on the queue's device
    /// (the result is its rows of the batch's output, on the device) or a
    /// [`HostTensor`](crate::HostTensor) (the result is a host tensor; the batch is uploaded
    /// and read back with one copy each, see [`crate::host`]). Requests whose shapes differ
    /// past dimension 0, whose dtypes differ, or that are of different kinds, are never put in
    /// the same batch.
    ///
    /// # Errors
    /// Rejected at once, nothing queued: [`BatchError::QueueFull`] and
    /// [`BatchError::Shutdown`] hand the input back; [`BatchError::DeviceMismatch`],
    /// [`BatchError::InvalidInput`] (0-d, or no rows), [`BatchError::TooManyRows`],
    /// [`BatchError::ShapeMismatch`] (against [`BatchConfig::input_shape`]) name the problem;
    /// [`BatchError::Device`] with `DeviceLost` once the device is lost
    /// ([`BatchQueue::health`]).
    pub fn submit<I: BatchInput>(&self, input: I) -> Result<Ticket<I::Output>> {
        let input: Input = input.into();
        if let Err(e) = self.check(&input) {
            self.shared.stats.rejected();
            return Err(e);
        }
        let shape = input.shape();
        let rows = shape[0];
        // With a padded dimension, requests of one length class (module docs of
        // `BatchConfigBuilder::pad_dim`) share a key, and a token budget limits its batches.
        let mut row_shape = shape[1..].to_vec();
        let cfg = &self.shared.config;
        let mut limit = cfg.max_batch;
        if let Some(d) = cfg.pad_dim {
            let class = row_shape[d - 1].next_power_of_two();
            row_shape[d - 1] = class;
            if let Some(tokens) = cfg.max_batch_tokens {
                limit = (tokens / class).max(1);
            }
        }
        let key = (row_shape, input.dtype(), matches!(input, Input::Host(_)));
        let (done, rx) = slot::channel();
        match self
            .shared
            .queue
            .push(key, rows, limit, Request { input, done })
        {
            Push::Queued { id, enqueued } => Ok(Ticket::new(
                rx,
                Arc::clone(&self.shared),
                id,
                rows,
                enqueued,
            )),
            Push::Full(Request { input, done }) => {
                done.discard();
                self.shared.stats.rejected();
                Err(BatchError::QueueFull {
                    input,
                    capacity: self.shared.config.max_queue,
                })
            }
            Push::Closed(Request { input, done }) => {
                done.discard();
                self.shared.stats.rejected();
                Err(BatchError::Shutdown { input })
            }
        }
    }

    /// Submits one request and blocks until its result is there: `submit(input)?.wait()`.
    ///
    /// # Errors
    /// Those of [`BatchQueue::submit`] and [`Ticket::wait`].
    pub fn infer<I: BatchInput>(&self, input: I) -> Result<I::Output> {
        self.submit(input)?.wait()
    }

    /// Stops the queue: new requests are rejected with [`BatchError::Shutdown`] from now on;
    /// waiting requests are run ([`ShutdownMode::Drain`]) or failed with
    /// [`BatchError::Shutdown`], their inputs handed back ([`ShutdownMode::Fail`]); batches
    /// already running complete. Blocks until the workers have exited (a concurrent second
    /// call does not wait for them). Returns how many waiting requests were failed.
    ///
    /// Calling it again is allowed: `Fail` after `Drain` fails what has not run yet.
    pub fn shutdown(&self, mode: ShutdownMode) -> usize {
        let failed = fail_pending(&self.shared, mode);
        let handles = std::mem::take(&mut *self.workers.lock());
        let me = thread::current().id();
        for h in handles {
            if h.thread().id() != me {
                // A worker that panicked has already failed the queue (worker.rs).
                let _ = h.join();
            }
        }
        failed
    }

    /// The state of the queue's device: `Health::Lost` once a fatal fault lost it. Then every
    /// waiting request fails with [`BatchError::Device`] carrying `DeviceLost` (the workers'
    /// batches fail at once, running nothing), new ones are rejected with it, and the queue
    /// serves nothing again: make a new device, load the model onto it and start a new queue.
    pub fn health(&self) -> Health {
        self.shared.config.device.health()
    }

    /// Whether [`BatchQueue::shutdown`] has been called.
    pub fn is_shut_down(&self) -> bool {
        self.shared.queue.phase() != Phase::Open
    }

    /// A snapshot of the statistics.
    pub fn stats(&self) -> BatchStats {
        let (depth, peak) = self.shared.queue.depth();
        self.shared.stats.snapshot(depth, peak)
    }

    /// Clears the statistics (the peak queue depth restarts from the current depth).
    pub fn reset_stats(&self) {
        self.shared.queue.reset_peak();
        self.shared.stats.reset();
    }

    /// Requests waiting now.
    pub fn queue_depth(&self) -> usize {
        self.shared.queue.depth().0
    }

    /// The settings.
    pub fn config(&self) -> &BatchConfig {
        &self.shared.config
    }

    /// The model (to call it directly, outside the queue).
    pub fn model(&self) -> &dyn Module {
        self.shared.model.as_ref()
    }

    /// The stream each worker runs its batches on, by worker.
    pub fn worker_streams(&self) -> &[StreamId] {
        &self.streams
    }
}

impl Drop for BatchQueue {
    /// Shuts the queue down with [`ShutdownMode::Drain`]: every accepted request is run.
    fn drop(&mut self) {
        self.shutdown(ShutdownMode::Drain);
    }
}
