//! Completion handlers: user callbacks that run once a stream's earlier work has finished.
//!
//! # Protocol
//! `Stream::on_complete(f)` enqueues a backend host callback on the stream. That callback runs
//! on the backend's side (a CPU worker, a CUDA driver thread) and only *pushes* the handler onto
//! this module's queue. One runtime-owned thread per device pops handlers and runs them, one at
//! a time, with no runtime lock held (checked in debug builds), inside `catch_unwind`: a panic is
//! counted, its message kept and printed, and the thread goes on.
//!
//! # State
//! `open` → `closing` (shutdown: the device's streams have been synchronized, so every handler
//! whose work completed is queued; the thread runs what is queued, then exits) → `exited`.
//! A handler pushed after `exited` (its stream finished after shutdown gave up waiting) is
//! dropped without running, on a thread of its own ([`drop_late`]): it runs exactly once or not
//! at all, never partly.
//!
//! # Fields
//! `queue` under `COMPLETION_QUEUE`; counters atomic.

use chorus_sync::atomic::{AtomicU64, Ordering};
use chorus_sync::{rank, thread, Arc, Condvar, RankedMutex};
use std::collections::VecDeque;

/// A user completion handler.
pub(crate) type Handler = Box<dyn FnOnce() + Send + 'static>;

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Handler>,
    closing: bool,
    exited: bool,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("jobs", &self.jobs.len())
            .field("closing", &self.closing)
            .field("exited", &self.exited)
            .finish()
    }
}

/// State shared by the backend callbacks and the completion thread.
#[derive(Debug)]
pub(crate) struct Completion {
    queue: RankedMutex<Queue>,
    cond: Condvar,
    ran: AtomicU64,
    panics: AtomicU64,
    last_panic: RankedMutex<Option<String>>,
}

impl Completion {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            queue: RankedMutex::new(rank::COMPLETION_QUEUE, Queue::default()),
            cond: Condvar::new(),
            ran: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            last_panic: RankedMutex::new(rank::COMPLETION_QUEUE, None),
        })
    }

    /// Starts the completion thread.
    pub(crate) fn spawn(self: &Arc<Self>, name: String) -> std::io::Result<thread::JoinHandle<()>> {
        let me = Arc::clone(self);
        thread::spawn_named(name, move || me.run())
    }

    /// Called from a backend callback: queues `h` for the completion thread (or, if the thread
    /// has exited, has it dropped elsewhere). Never runs user code, nor drops it, on the calling
    /// thread.
    pub(crate) fn push(&self, h: Handler) {
        let mut q = self.queue.lock();
        if q.exited {
            drop(q);
            drop_late(h);
            return;
        }
        q.jobs.push_back(h);
        drop(q);
        self.cond.notify_one();
    }

    /// Asks the thread to run what is queued and exit.
    pub(crate) fn close(&self) {
        self.queue.lock().closing = true;
        self.cond.notify_all();
    }

    fn run(&self) {
        loop {
            let mut q = self.queue.lock();
            let job = loop {
                if let Some(j) = q.jobs.pop_front() {
                    break j;
                }
                if q.closing {
                    q.exited = true;
                    return;
                }
                q = self.cond.wait(q);
            };
            drop(q);
            self.run_one(job);
        }
    }

    fn run_one(&self, job: Handler) {
        chorus_sync::assert_no_locks_held();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)) {
            Ok(()) => {
                self.ran.fetch_add(1, Ordering::Relaxed);
            }
            Err(p) => {
                let msg = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".to_string());
                eprintln!("chorus: a completion handler panicked (contained): {msg}");
                self.panics.fetch_add(1, Ordering::Relaxed);
                *self.last_panic.lock() = Some(msg);
            }
        }
    }

    /// (handlers run, handlers that panicked, message of the last panic).
    pub(crate) fn counts(&self) -> (u64, u64, Option<String>) {
        (
            self.ran.load(Ordering::Relaxed),
            self.panics.load(Ordering::Relaxed),
            self.last_panic.lock().clone(),
        )
    }
}

/// Drops a handler that will never run, off the calling thread: that is a backend's callback
/// thread, which must not call the device (a CUDA host function may not call the driver), and
/// dropping the handler's captures may (freeing a tensor records events, or synchronizes once
/// the device is closed). Should no thread be had, the handler is leaked rather than dropped
/// here.
fn drop_late(h: Handler) {
    let slot = Arc::new(RankedMutex::new(rank::COMPLETION_QUEUE, Some(h)));
    let theirs = Arc::clone(&slot);
    let spawned = thread::spawn_named("chorus-late-handler".to_string(), move || {
        let h = theirs.lock().take();
        drop(h);
    });
    if spawned.is_err() {
        std::mem::forget(slot.lock().take());
    }
}
