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
//! # Who runs the commands
//! Commands run asynchronously on the stream's worker thread, which a push wakes. A host thread
//! that would otherwise block until the stream reaches a target (`synchronize`, a read-back, an
//! event wait without a timeout) runs the queued commands itself instead of sleeping while the
//! worker wakes up (a wake-up costs tens of microseconds, as much as a small kernel). Order is
//! kept by one rule: only the holder of `running` takes commands, always all queued ones, from
//! the front. Whoever clears `running` with commands left notifies `work`, so the worker never
//! sleeps while there is work nobody runs. Worker threads of other streams (a cross-stream wait)
//! and waits with a timeout only wait.
//!
//! # Fields
//! - `queue` (`BACKEND_STREAM`): commands, `enqueued`, `exit`, `running`; the worker sleeps on
//!   `work` while there is nothing it may take.
//! - `completed`: written by the worker only.
//! - `done_lock` (`BACKEND_STREAM_DONE`, holding the count of waiters) + `done`: threads
//!   waiting for a target. A waiter counts itself and checks `completed` under the lock; the
//!   thread running commands bumps `completed`, then takes the lock and notifies if anyone
//!   waits. So either the waiter's check comes after the bump (and sees it) or the runner's
//!   critical section comes after the waiter's (and sees the waiter): no lost wake-up, with
//!   only acquire/release ordering (the loom models check it, `loom_stream.rs`).
//! - `error` (`BACKEND_STREAM_ERROR`): the sticky error.

use crate::kernels;
use chorus_core::{BackendError, HostCallback, Kernel, StreamId};
use chorus_sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use chorus_sync::{rank, thread, Arc, Condvar, RankedMutex};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

chorus_sync::thread_local! {
    /// Address of the `StreamShared` whose commands the current thread runs (0 elsewhere).
    // Not `const { }`: loom's `thread_local!` (the models' build) does not take that form.
    #[allow(clippy::missing_const_for_thread_local)]
    static WORKER_OF: std::cell::Cell<usize> = std::cell::Cell::new(0);
}

/// A slot for the bytes of a read-back.
pub(crate) type ReplySlot = Arc<RankedMutex<Option<Vec<u8>>>>;

pub(crate) enum Command {
    Kernel(Kernel),
    /// A graph's kernels, run in order (stopping at the first that fails).
    Graph(Arc<Vec<Kernel>>),
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
    /// A thread (the worker or a waiting host thread) has taken commands and runs them.
    running: bool,
}

/// The state a stream's handle, its worker and other streams' waits share.
pub(crate) struct StreamShared {
    pub(crate) id: StreamId,
    /// Workers of this backend running commands right now (shared by all its streams).
    busy: Arc<AtomicUsize>,
    queue: RankedMutex<Queue>,
    work: Condvar,
    completed: AtomicU64,
    done_lock: RankedMutex<usize>,
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
        // Acquire: pairs with the runner's release, so the commands' effects are visible.
        self.completed.load(Ordering::Acquire) >= target
    }

    /// Blocks until `target` commands have completed, at most `timeout`; false on timeout.
    ///
    /// Called on this stream's own worker (a command that waits for its own stream, such as a
    /// callback dropping the last tensor of a closed device), it returns at once: everything
    /// before the running command has completed, and later commands cannot run before it ends.
    pub(crate) fn wait_until(&self, target: u64, timeout: Option<Duration>) -> bool {
        let on_worker = WORKER_OF.with(std::cell::Cell::get);
        if self.is_done(target) || on_worker == self as *const Self as usize {
            return true;
        }
        // Only a host thread waiting without a deadline helps (see the module docs).
        let help = on_worker == 0 && timeout.is_none();
        // A timeout too long to have a deadline is no timeout.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            if help && self.run_queued() {
                if self.is_done(target) {
                    return true;
                }
                continue;
            }
            // Someone else runs the commands up to `target`: sleep until one completes.
            let mut g = self.done_lock.lock();
            *g += 1;
            let ok = if self.is_done(target) {
                Some(true)
            } else {
                match deadline {
                    None => {
                        g = self.done.wait(g);
                        None
                    }
                    Some(d) => {
                        let now = Instant::now();
                        if now >= d {
                            Some(false)
                        } else {
                            g = self.done.wait_timeout(g, d - now).0;
                            None
                        }
                    }
                }
            };
            *g -= 1;
            drop(g);
            match ok {
                Some(done) => return done,
                None if self.is_done(target) => return true,
                None => {}
            }
        }
    }

    /// Runs the queued commands on the calling thread if nobody else is running this stream's
    /// commands; false if there was nothing this thread could take.
    fn run_queued(&self) -> bool {
        let mut batch = {
            let mut q = self.queue.lock();
            if q.running || q.cmds.is_empty() {
                return false;
            }
            q.running = true;
            std::mem::take(&mut q.cmds)
        };
        let outer = WORKER_OF.with(|w| w.replace(self as *const Self as usize));
        self.run_batch(&mut batch);
        WORKER_OF.with(|w| w.set(outer));
        self.release();
        true
    }

    /// Clears `running`; wakes the worker if commands were queued meanwhile.
    fn release(&self) {
        let mut q = self.queue.lock();
        q.running = false;
        let wake = !q.cmds.is_empty();
        drop(q);
        if wake {
            self.work.notify_one();
        }
    }

    /// Runs `batch` in order, counting and announcing every completed command.
    fn run_batch(&self, batch: &mut VecDeque<Command>) {
        self.busy.fetch_add(1, Ordering::AcqRel);
        for cmd in batch.drain(..) {
            self.execute(cmd);
            self.completed.fetch_add(1, Ordering::Release);
            if *self.done_lock.lock() > 0 {
                self.done.notify_all();
            }
        }
        self.busy.fetch_sub(1, Ordering::AcqRel);
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
                while (q.cmds.is_empty() || q.running) && !(q.exit && q.cmds.is_empty()) {
                    q = self.work.wait(q);
                }
                if q.cmds.is_empty() {
                    return;
                }
                q.running = true;
                std::mem::swap(&mut batch, &mut q.cmds);
            }
            self.run_batch(&mut batch);
            self.queue.lock().running = false;
        }
    }

    /// Runs one kernel unless the stream has failed; whether it ran and succeeded.
    fn run_kernel(&self, k: &Kernel) -> bool {
        if self.error.lock().is_some() {
            return false;
        }
        let name = k.name();
        // A stream alone on the device may use every core for a large kernel; with other
        // streams busy, each keeps to its own core. (Results do not depend on it.)
        let alone = self.busy.load(Ordering::Acquire) <= 1;
        kernels::set_parallelism(if alone { cores() } else { 1 });
        // SAFETY: `Backend::launch`'s contract (upheld by the runtime; for a graph, that of
        // `Backend::launch_graph` for each of its kernels) makes every pointer valid for the
        // kernel's extents until this command has run.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe {
            kernels::execute(k)
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
            return false;
        }
        true
    }

    fn execute(&self, cmd: Command) {
        match cmd {
            Command::Kernel(k) => {
                self.run_kernel(&k);
            }
            Command::Graph(ks) => {
                for k in ks.iter() {
                    if !self.run_kernel(k) {
                        return;
                    }
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
            .field("id", &self.shared.id)
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
    pub(crate) fn spawn(id: StreamId, busy: Arc<AtomicUsize>) -> Result<Self, BackendError> {
        let shared = Arc::new(StreamShared {
            id,
            busy,
            queue: RankedMutex::new(rank::BACKEND_STREAM, Queue::default()),
            work: Condvar::new(),
            completed: AtomicU64::new(0),
            done_lock: RankedMutex::new(rank::BACKEND_STREAM_DONE, 0),
            done: Condvar::new(),
            error: RankedMutex::new(rank::BACKEND_STREAM_ERROR, None),
        });
        let s = Arc::clone(&shared);
        let worker =
            thread::spawn_named(format!("chorus-cpu-stream-{}", id.index()), move || s.run())
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

#[cfg(all(test, chorus_loom))]
#[path = "loom_stream.rs"]
mod loom_stream;
