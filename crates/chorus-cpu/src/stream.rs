//! A CPU stream: a worker thread that runs its commands in enqueue order.
//!
//! # State
//! Commands are pushed under the queue lock, which also counts them (`enqueued`). The worker
//! takes all queued commands at once, runs them in order, and bumps `completed` after each one.
//! So "all work enqueued before point P has run" is exactly `completed >= enqueued at P`: events
//! and synchronization are comparisons against that count (`target`).
//!
//! A kernel that panics is caught: the stream keeps its first error (sticky), later launches
//! on it fail with that error, and the worker goes on counting commands so that waits finish.
//! Callbacks and waits still run after an error.
//!
//! `exit` is set when the stream is dropped; the worker drains what is queued, then leaves.
//!
//! # Fields
//! - `queue` (`BACKEND_STREAM`): commands, `enqueued`, `exit`; the worker sleeps on `work`.
//! - `completed`: written by the worker only.
//! - `done_lock` (`BACKEND_STREAM_DONE`) + `done`: host threads waiting for a target. A waiter
//!   announces itself in `waiters` before it checks `completed`; the worker bumps `completed`
//!   before it reads `waiters`; both use SeqCst, so either the waiter sees the new count or the
//!   worker sees the waiter and notifies under the lock (no lost wake-up).
//! - `error` (`BACKEND_STREAM_ERROR`): the sticky error.

use crate::kernels;
use chorus_core::{BackendError, HostCallback, Kernel};
use chorus_sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use chorus_sync::{rank, thread, Arc, Condvar, RankedMutex};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

std::thread_local! {
    /// Address of the `StreamShared` whose worker is the current thread (0 elsewhere).
    static WORKER_OF: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// A slot for the bytes of a read-back.
pub(crate) type ReplySlot = Arc<RankedMutex<Option<Vec<u8>>>>;

pub(crate) enum Command {
    Kernel(Kernel),
    Write {
        dst: usize,
        data: Vec<u8>,
    },
    Read {
        src: usize,
        len: usize,
        reply: ReplySlot,
    },
    Callback(HostCallback),
    /// Wait until `stream` has completed `target` commands.
    WaitFor {
        stream: Arc<StreamShared>,
        target: u64,
    },
    /// Store the time into an event if it is still at record number `seq`.
    Timestamp(Arc<crate::event::EventShared>, u64),
}

#[derive(Default)]
struct Queue {
    cmds: VecDeque<Command>,
    enqueued: u64,
    exit: bool,
}

/// The state a stream's handle, its worker and other streams' waits share.
pub(crate) struct StreamShared {
    pub(crate) index: usize,
    /// Workers of this backend running commands right now (shared by all its streams).
    busy: Arc<AtomicUsize>,
    queue: RankedMutex<Queue>,
    work: Condvar,
    completed: AtomicU64,
    waiters: AtomicUsize,
    done_lock: RankedMutex<()>,
    done: Condvar,
    error: RankedMutex<Option<BackendError>>,
}

impl StreamShared {
    /// Pushes a command; returns the count of commands enqueued so far (its target).
    pub(crate) fn push(&self, cmd: Command) -> u64 {
        let mut q = self.queue.lock();
        q.cmds.push_back(cmd);
        q.enqueued += 1;
        let target = q.enqueued;
        let wake = q.cmds.len() == 1;
        drop(q);
        if wake {
            self.work.notify_one();
        }
        target
    }

    /// Like `push`, but fails with the sticky error first.
    pub(crate) fn push_work(&self, cmd: Command) -> Result<u64, BackendError> {
        if let Some(e) = self.error() {
            return Err(e);
        }
        Ok(self.push(cmd))
    }

    /// Count of commands enqueued so far.
    pub(crate) fn enqueued(&self) -> u64 {
        self.queue.lock().enqueued
    }

    pub(crate) fn is_done(&self, target: u64) -> bool {
        self.completed.load(Ordering::SeqCst) >= target
    }

    /// Blocks until `target` commands have completed, at most `timeout`; false on timeout.
    ///
    /// Called on this stream's own worker (a command that waits for its own stream, such as a
    /// callback dropping the last tensor of a closed device), it returns at once: everything
    /// before the running command has completed, and later commands cannot run before it ends.
    pub(crate) fn wait_until(&self, target: u64, timeout: Option<Duration>) -> bool {
        if self.is_done(target) || WORKER_OF.with(|w| w.get()) == self as *const Self as usize {
            return true;
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let mut g = self.done_lock.lock();
        let ok = loop {
            if self.is_done(target) {
                break true;
            }
            match deadline {
                None => g = self.done.wait(g),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        break false;
                    }
                    g = self.done.wait_timeout(g, d - now).0;
                }
            }
        };
        drop(g);
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        ok
    }

    pub(crate) fn error(&self) -> Option<BackendError> {
        self.error.lock().clone()
    }

    fn run(&self) {
        WORKER_OF.with(|w| w.set(self as *const Self as usize));
        let mut batch = VecDeque::new();
        loop {
            {
                let mut q = self.queue.lock();
                while q.cmds.is_empty() && !q.exit {
                    q = self.work.wait(q);
                }
                if q.cmds.is_empty() {
                    return;
                }
                std::mem::swap(&mut batch, &mut q.cmds);
            }
            self.busy.fetch_add(1, Ordering::AcqRel);
            for cmd in batch.drain(..) {
                self.execute(cmd);
                self.completed.fetch_add(1, Ordering::SeqCst);
                if self.waiters.load(Ordering::SeqCst) > 0 {
                    let _g = self.done_lock.lock();
                    self.done.notify_all();
                }
            }
            self.busy.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn execute(&self, cmd: Command) {
        match cmd {
            Command::Kernel(k) => {
                if self.error.lock().is_some() {
                    return;
                }
                let name = k.name();
                // A stream alone on the device may use every core for a large kernel; with
                // other streams busy, each keeps to its own core. (Results do not depend on it.)
                let alone = self.busy.load(Ordering::Acquire) <= 1;
                kernels::set_parallelism(if alone { cores() } else { 1 });
                // SAFETY: `Backend::launch`'s contract (upheld by the runtime) makes every
                // pointer valid for the kernel's extents until this command has run.
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe {
                    kernels::execute(&k)
                }));
                if let Err(p) = r {
                    let message = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "panic".into());
                    self.error.lock().get_or_insert(BackendError::Kernel {
                        kernel: name,
                        message,
                    });
                }
            }
            Command::Write { dst, data } => {
                // SAFETY: `Backend::write`'s contract: `dst` is valid for `data.len()` bytes
                // and nothing else touches them until this command has run.
                unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst as *mut u8, data.len()) };
            }
            Command::Read { src, len, reply } => {
                // SAFETY: `Backend::read`'s contract: `src` is valid for `len` bytes and not
                // written until this command has run.
                let bytes = unsafe { std::slice::from_raw_parts(src as *const u8, len) }.to_vec();
                *reply.lock() = Some(bytes);
            }
            Command::Callback(cb) => {
                // Callbacks from the runtime only hand work to other threads; a panic here
                // would be a runtime bug, and must not kill the worker.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(cb));
            }
            Command::WaitFor { stream, target } => {
                stream.wait_until(target, None);
            }
            Command::Timestamp(ev, seq) => ev.stamp(seq),
        }
    }
}

/// The backend's `Stream`: the shared state and the worker's handle.
pub struct CpuStream {
    pub(crate) shared: Arc<StreamShared>,
    worker: Option<thread::JoinHandle<()>>,
}

impl std::fmt::Debug for CpuStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuStream")
            .field("index", &self.shared.index)
            .finish()
    }
}

/// Cores of this machine (cached).
fn cores() -> usize {
    // sync-shim: allowed (a value computed once, outside every loom model)
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

impl CpuStream {
    pub(crate) fn spawn(index: usize, busy: Arc<AtomicUsize>) -> Result<Self, BackendError> {
        let shared = Arc::new(StreamShared {
            index,
            busy,
            queue: RankedMutex::new(rank::BACKEND_STREAM, Queue::default()),
            work: Condvar::new(),
            completed: AtomicU64::new(0),
            waiters: AtomicUsize::new(0),
            done_lock: RankedMutex::new(rank::BACKEND_STREAM_DONE, ()),
            done: Condvar::new(),
            error: RankedMutex::new(rank::BACKEND_STREAM_ERROR, None),
        });
        let s = Arc::clone(&shared);
        let worker = thread::spawn_named(format!("chorus-cpu-stream-{index}"), move || s.run())
            .map_err(|e| BackendError::Call {
                api: "spawn stream worker",
                message: e.to_string(),
            })?;
        Ok(Self {
            shared,
            worker: Some(worker),
        })
    }
}

impl Drop for CpuStream {
    fn drop(&mut self) {
        self.shared.queue.lock().exit = true;
        self.shared.work.notify_all();
        if let Some(w) = self.worker.take() {
            if w.thread().id() != thread::current().id() {
                let _ = w.join();
            }
        }
    }
}
