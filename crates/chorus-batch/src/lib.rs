//! chorus-batch: dynamic batching across threads.
//!
//! A device earns its throughput from batches, but applications often hold one request per
//! thread. A [`BatchQueue`] takes single requests from any number of threads and runs them as
//! batches through one shared model ([`chorus_nn::Module`]) on any backend:
//!
//! - [`BatchQueue::infer`] blocks until the request's result is there;
//!   [`BatchQueue::submit`] returns a [`Ticket`] to wait on (with or without a time limit),
//!   poll, or `.await` (it is a [`Future`](std::future::Future); no async runtime needed).
//! - A request is a [`Tensor`](chorus_core::Tensor) on the queue's device (its result is a view
//!   of the batch's output there) or a [`HostTensor`] in host memory (its result is a host
//!   tensor too). Host requests are what a server receives and sends; they cost the device no
//!   work of their own: a batch of them is uploaded with one copy and read back with one
//!   ([`host`]), which is what lets a batch serve many threads on a GPU at the GPU's pace.
//! - Worker threads ([`BatchConfig::workers`]), each on a stream of its own (bound by the
//!   device's stream policy), concatenate the requests of a batch along dimension 0, run one
//!   forward pass, split the output and complete each request with exactly its rows. A request's
//!   result is bit-identical to the same rows of a direct model call on the same concatenated
//!   batch.
//!
//! # Forming batches
//! Requests are grouped by their shape past dimension 0 and their dtype; requests of different
//! groups are never mixed in one batch. A group runs as soon as it holds `max_batch` rows (or
//! the largest preferred batch size), or once its oldest request has waited `max_delay`
//! ([`BatchConfig`]). A batch holds at most `max_batch` rows, taken first in, first out.
//! With [`BatchConfigBuilder::graphs`], workers run batches through graphs of the model
//! ([`chorus_core::Graph`]), each batch padded with zero rows to a power of two so that a few
//! graphs serve all batch sizes ([`BatchInfo::padded_rows`]).
//!
//! # Failures stay where they belong
//! - A malformed request (0-d, no rows, more than `max_batch` rows, another device, another
//!   per-row shape than [`BatchConfig::input_shape`]) is rejected at submission with a typed
//!   [`BatchError`] and never reaches a batch. Requests of a shape the model cannot take form
//!   their own group, so the model's error fails only them.
//! - A model error, a model panic, or a device error reported by the worker's stream fails
//!   every request of that batch and no other; the worker goes on with the next batch.
//! - A full queue ([`BatchConfig::max_queue`]) rejects at once with [`BatchError::QueueFull`],
//!   handing the input back.
//! - A request that waits past its [`BatchConfig::timeout`] fails with [`BatchError::Timeout`]
//!   at its deadline, even while every worker is inside a batch (the queue then has a timer
//!   thread of its own).
//! - After [`BatchQueue::shutdown`] new requests are rejected ([`BatchError::Shutdown`], input
//!   handed back), and waiting ones are run ([`ShutdownMode::Drain`]) or failed with
//!   [`BatchError::Shutdown`] ([`ShutdownMode::Fail`]): never silently dropped. Dropping the
//!   queue drains it.
//!
//! # Protocol
//! Every request is, from submission to outcome, in exactly one place: the queue (`queue.rs`,
//! one lock), or the hands of the one party that took it out under that lock (a worker, as part
//! of a batch or because it expired; the timer or its own ticket, on timeout; a shutdown in
//! `Fail` mode).
//! That party completes it exactly once through its result slot (`slot.rs`), outside every
//! lock, and wakes its waiter: a thread blocked in [`Ticket::wait`] or a task's waker. No lock
//! is held while a model runs, while the runtime is called, or while a waker runs. Each worker
//! waits for its stream after the forward pass, so a ticket completes with computed rows, and
//! an asynchronous device error is charged to the batch that caused it. loom models of the
//! queue and the slot (`src/tests/`) check that no wake-up is lost, that each request is
//! completed exactly once, and shutdown racing submission.
//!
//! A kernel that fails on the device (an index out of range in an embedding) poisons the
//! batch's output: with a model whose rows are independent (`Module::rows_independent`) the
//! worker runs each request of the batch again alone, so that only the requests whose rows
//! fail on their own fail, with the original error; otherwise the batch fails. Either way the
//! worker's stream goes on. A lost device fails every waiting request with `DeviceLost`,
//! rejects new ones and shows in [`BatchQueue::health`]: make a new device and a new queue.
//! (Any other device error breaks its stream for good, the runtime's sticky-error rule: that
//! worker's batches keep failing with it.)
//!
//! # Statistics
//! [`BatchQueue::stats`]: batches run, requests, mean and histogram of batch sizes, queue
//! depth (now and peak), latency from submission to result (mean, p50, p95, p99, max), and
//! counts of failed, timed-out, shut-down and rejected requests.
//!
//! # Examples
//! ```
//! use chorus_batch::{BatchConfig, BatchQueue, ShutdownMode};
//! use chorus_core::Tensor;
//! use chorus_nn::{Linear, Module};
//! use std::sync::Arc;
//! use std::time::Duration;
//! # let device = chorus_cpu::device()?;
//! let model = Arc::new(Linear::new(Tensor::randn(&device, &[16, 32], 1)?, None)?);
//! let config = BatchConfig::builder(&device)
//!     .max_batch(32)
//!     .max_delay(Duration::from_micros(500))
//!     .build()?;
//! let queue = BatchQueue::new(Arc::clone(&model), config)?;
//!
//! // Eight threads, one request each: the queue runs them as one or a few batches.
//! let pairs: Vec<(Tensor, Tensor)> = std::thread::scope(|s| {
//!     let handles: Vec<_> = (0..8)
//!         .map(|i| {
//!             let (queue, device) = (&queue, &device);
//!             s.spawn(move || {
//!                 let x = Tensor::randn(device, &[1, 32], 100 + i).unwrap();
//!                 let y = queue.infer(x.clone()).unwrap(); // blocks until its batch ran
//!                 (x, y)
//!             })
//!         })
//!         .collect();
//!     handles.into_iter().map(|h| h.join().unwrap()).collect()
//! });
//! for (x, y) in &pairs {
//!     // The same rows as a direct call, within the op tolerance (the batch may differ).
//!     let direct = model.forward(x)?.to_vec::<f32>()?;
//!     for (a, b) in direct.iter().zip(y.to_vec::<f32>()?) {
//!         assert!((a - b).abs() <= 1e-4 + 1e-4 * a.abs());
//!     }
//! }
//! let stats = queue.stats();
//! assert_eq!(stats.requests, 8);
//! println!("{} batches, mean size {:.1}, p99 {:?}", stats.batches, stats.mean_batch_size, stats.latency.p99);
//!
//! // Async: a ticket is a future.
//! let ticket = queue.submit(Tensor::randn(&device, &[2, 32], 7)?)?;
//! # fn block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     use std::task::{Context, Poll, Wake, Waker};
//! #     struct Unpark(std::thread::Thread);
//! #     impl Wake for Unpark { fn wake(self: Arc<Self>) { self.0.unpark() } }
//! #     let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
//! #     let mut cx = Context::from_waker(&waker);
//! #     let mut f = std::pin::pin!(f);
//! #     loop { if let Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } std::thread::park(); }
//! # }
//! let y = block_on(async { ticket.await })?;
//! assert_eq!(y.shape(), &[2, 16]);
//!
//! queue.shutdown(ShutdownMode::Drain);
//! assert!(queue.submit(Tensor::randn(&device, &[1, 32], 8)?).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod batch_queue;
mod config;
mod error;
mod graphs;
pub mod host;
mod queue;
mod slot;
mod stats;
mod ticket;
mod worker;

#[cfg(all(test, chorus_loom))]
mod tests;

pub use batch_queue::BatchQueue;
pub use config::{BatchConfig, BatchConfigBuilder, ShutdownMode, MAX_WORKERS};
pub use error::{BatchError, Result};
pub use host::{BatchInput, BatchOutput, HostTensor, Input};
pub use stats::{BatchStats, Latency, Phases};
pub use ticket::{BatchInfo, Ticket};
