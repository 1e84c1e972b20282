//! [`Ticket`]: the handle to one submitted request's result.
//!
//! # Protocol
//! The ticket owns the receiving half of the request's result slot (`crate::slot`); the queue
//! holds the completing half with the request until a worker, a shutdown, or the ticket itself
//! takes the request out of the queue (`crate::queue`) and completes it. When the request's
//! timeout has passed, the ticket's blocking waits and polls try to take it out of the queue
//! themselves and complete it with [`BatchError::Timeout`]; if a worker has already taken it,
//! it runs to completion and the ticket waits for that. The queue's timer thread also expires
//! requests at their deadline, even while every worker is busy, so a future that is not being
//! polled, or a ticket only polled by `try_wait`, still resolves on time.

use crate::batch_queue::Shared;
use crate::error::{BatchError, Result};
use crate::host::{BatchOutput, Input};
use crate::slot::{Receiver, Take};
use chorus_core::{StreamId, Tensor};
use chorus_sync::Arc;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The outcome of one request.
pub(crate) type Outcome = Result<Done>;

/// A request's rows (of its input's kind: on the device or in host memory) and where they ran.
#[derive(Debug)]
pub(crate) struct Done {
    pub(crate) output: Input,
    pub(crate) info: BatchInfo,
    /// The request's input, handed back so that it is freed on the thread that takes the
    /// result, not on the worker's (`worker.rs`, step 5).
    pub(crate) input: Input,
}

/// Where a request ran: its batch, its rows in it, and the worker and stream that ran it.
///
/// Running the model directly on the concatenation of the inputs of batch `batch` (in
/// `offset` order), followed by `padded_rows - rows` rows of zeros, gives bit-identical rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct BatchInfo {
    /// The batch's number in its queue: from 1, in the order the batches started (a poisoned
    /// batch whose requests ran again alone leaves its number unused).
    pub batch: u64,
    /// The request's first row in the batch.
    pub offset: usize,
    /// Rows in the batch.
    pub rows: usize,
    /// Rows the model ran on: `rows`, and zero rows padding the batch up to a power of two for
    /// a graph ([`BatchConfigBuilder::graphs`](crate::BatchConfigBuilder::graphs)).
    pub padded_rows: usize,
    /// Requests in the batch.
    pub requests: usize,
    /// The worker that ran it.
    pub worker: usize,
    /// The stream it ran on.
    pub stream: StreamId,
}

/// A submitted request: wait for its result (blocking, with or without a time limit), poll
/// it, or `.await` it (it is a [`Future`]; no async runtime is needed).
///
/// The result (`O`: a [`Tensor`] for a device request, a [`HostTensor`](crate::HostTensor) for a
/// host request) is the request's own rows of its batch's output (a view of that output on
/// the device, or a copy in host memory), already computed when the ticket completes. Dropping
/// a ticket does not cancel the request.
///
/// # Examples
/// ```
/// use chorus_batch::{BatchConfig, BatchQueue};
/// use chorus_core::Tensor;
/// use chorus_nn::Relu;
/// # let device = chorus_cpu::device()?;
/// let queue = BatchQueue::new(Relu, BatchConfig::builder(&device).build()?)?;
/// let x = Tensor::from_slice(&device, &[-1.0_f32, 2.0], &[1, 2])?;
/// let mut ticket = queue.submit(x)?;
/// let _maybe = ticket.try_wait(); // Some(result) once the batch ran, else None
/// let y = ticket.wait()?;
/// assert_eq!(y.to_vec::<f32>()?, vec![0.0, 2.0]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Ticket<O = Tensor> {
    rx: Receiver<Outcome>,
    shared: Arc<Shared>,
    id: u64,
    rows: usize,
    /// When the request's timeout passes (`None`: no timeout, or already acted on).
    deadline: Option<Instant>,
    taken: bool,
    info: Option<BatchInfo>,
    output: PhantomData<fn() -> O>,
}

impl<O: BatchOutput> Ticket<O> {
    pub(crate) fn new(
        rx: Receiver<Outcome>,
        shared: Arc<Shared>,
        id: u64,
        rows: usize,
        enqueued: Instant,
    ) -> Ticket<O> {
        let deadline = shared.config.timeout.and_then(|t| enqueued.checked_add(t));
        Ticket {
            rx,
            shared,
            id,
            rows,
            deadline,
            taken: false,
            info: None,
            output: PhantomData,
        }
    }

    /// The request's id: unique in its queue, increasing in submission order.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Rows of the request (its input's dimension 0), and of its result.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Whether the result is there to be taken (without taking it).
    pub fn is_ready(&self) -> bool {
        self.rx.is_ready()
    }

    /// Blocks until the result is there and returns it.
    ///
    /// # Errors
    /// The request's failure: [`BatchError::Timeout`] (it waited in the queue past its
    /// timeout), [`BatchError::Shutdown`] (failed by [`ShutdownMode::Fail`](crate::ShutdownMode)),
    /// or its batch's failure ([`BatchError::Model`], [`BatchError::Device`],
    /// [`BatchError::ModelPanicked`], [`BatchError::OutputRows`]); [`BatchError::ResultTaken`]
    /// if an earlier call took the result.
    pub fn wait(mut self) -> Result<O> {
        self.wait_until(None).unwrap_or(Err(BatchError::Abandoned))
    }

    /// Like [`Ticket::wait`], also saying where the request ran.
    ///
    /// # Errors
    /// As [`Ticket::wait`].
    pub fn wait_with_info(mut self) -> Result<(O, BatchInfo)> {
        let out = self
            .wait_until(None)
            .unwrap_or(Err(BatchError::Abandoned))?;
        let info = self.info.ok_or(BatchError::Abandoned)?;
        Ok((out, info))
    }

    /// Where the request ran, once its result has been taken by [`Ticket::try_wait`],
    /// [`Ticket::wait_timeout`] or polling; `None` before, or if it failed.
    pub fn batch_info(&self) -> Option<BatchInfo> {
        self.info
    }

    /// Like [`Ticket::wait`], but gives up after `timeout` and returns `None` (the ticket stays
    /// valid; wait again later).
    ///
    /// # Errors
    /// As [`Ticket::wait`], inside the `Some`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<Result<O>> {
        let until = Instant::now().checked_add(timeout);
        self.wait_until(until)
    }

    /// Takes the result if it is there, without blocking; `None` if it is not yet.
    ///
    /// # Errors
    /// As [`Ticket::wait`], inside the `Some`.
    pub fn try_wait(&mut self) -> Option<Result<O>> {
        if self.taken {
            return Some(Err(BatchError::ResultTaken));
        }
        self.expire_if_due(Instant::now());
        self.finish(self.rx.try_take())
    }

    /// Waits until the result is there or `until` passes (`None`: no limit).
    fn wait_until(&mut self, until: Option<Instant>) -> Option<Result<O>> {
        loop {
            if self.taken {
                return Some(Err(BatchError::ResultTaken));
            }
            self.expire_if_due(Instant::now());
            let stop = match (until, self.deadline) {
                (Some(u), Some(d)) => Some(u.min(d)),
                (u, d) => u.or(d),
            };
            if let Some(out) = self.finish(self.rx.wait(stop)) {
                return Some(out);
            }
            if until.is_some_and(|u| Instant::now() >= u) {
                return None;
            }
            // The request's deadline passed: the next turn takes it out of the queue.
        }
    }

    /// Maps what the slot gave to the caller's answer, remembering a taken result.
    fn finish(&mut self, take: Take<Outcome>) -> Option<Result<O>> {
        match take {
            Take::Ready(out) => {
                self.taken = true;
                Some(out.and_then(|done| {
                    self.info = Some(done.info);
                    // Freed here, on the thread taking the result (`Done::input`).
                    drop(done.input);
                    // A request's result is always of its input's kind (worker.rs).
                    O::from_input(done.output).ok_or(BatchError::Abandoned)
                }))
            }
            Take::Taken => {
                self.taken = true;
                Some(Err(BatchError::ResultTaken))
            }
            Take::Pending => None,
        }
    }

    /// Past the request's deadline, takes it out of the queue if it is still waiting and
    /// completes it with a timeout; a request a worker already holds completes normally.
    fn expire_if_due(&mut self, now: Instant) {
        let Some(deadline) = self.deadline else {
            return;
        };
        if now < deadline {
            return;
        }
        self.deadline = None;
        if let Some(q) = self.shared.queue.cancel(self.id) {
            let timeout = self.shared.config.timeout.unwrap_or_default();
            self.shared.stats.timed_out(1);
            q.item.done.complete(Err(BatchError::Timeout {
                waited: now.saturating_duration_since(q.enqueued),
                timeout,
            }));
        }
    }
}

impl<O: BatchOutput> Future for Ticket<O> {
    type Output = Result<O>;

    /// Ready with the result once its batch has run; a poll after that gives
    /// [`BatchError::ResultTaken`].
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if this.taken {
            return Poll::Ready(Err(BatchError::ResultTaken));
        }
        this.expire_if_due(Instant::now());
        match this.finish(this.rx.poll(cx.waker())) {
            Some(out) => Poll::Ready(out),
            None => Poll::Pending,
        }
    }
}
