//! The device runtime, written once for every backend: stream pool and thread binding
//! (`slots`, `local`), event pool, caching allocator, tensor storages (`storage`), graph
//! capture (`capture`), completion thread and shutdown.
//!
//! [`Runtime<B>`] is generic over the [`Backend`]; handles (`Device`, `Stream`, `Event`,
//! `Tensor`) hold it as `Arc<dyn RuntimeObj>`, the one place where the backend type is erased,
//! so that the op front-end, modules and batching are written once and are not generic.
//!
//! # State
//! `open` → `closed` → `shut down`. `closed` is set once by the first [`RuntimeObj::shutdown`]
//! (when the last `Device` handle drops or on an explicit `Device::shutdown`), `shut down` when
//! that call has finished; a later call waits for it (except on the completion thread, which
//! the first call may be waiting for). Shutdown waits (bounded by the configured
//! timeout) for every stream's in-flight work, lets the completion thread run the handlers that
//! work produced and exit, takes back every thread's cached blocks, and releases cached memory.
//! After it, every call that would enqueue work or allocate returns `Error::DeviceClosed`;
//! frees and thread exits keep working. The `Runtime` itself is dropped when the last handle
//! of any kind (tensors included) is gone: it then waits for the streams once more, frees
//! every segment (or, if a stream never finishes within the timeout, leaks them all, since its
//! work may still use any) and joins its threads (never its own thread).
//!
//! # Lost
//! Besides that, a device may be *lost*: a backend call that reports a fault the device
//! cannot recover from (`BackendError::Lost`, mapped in `dev_err`) sets `lost` once, with its
//! cause, and closes the exclusive slot pool (waiters wake). From then on `check_open`, which
//! every entry point calls first, returns `Error::DeviceLost`, and so does a stream
//! synchronization that was waiting; frees and thread exits keep working, so the memory
//! accounting stays consistent. Shutdown and drop proceed as for an open device.
//!
//! # Fault injection
//! In debug builds and with the `fault-injection` feature, `faults` holds a plan
//! (`crate::faults`) that the wrapper around each backend call of a site consults (`inject`)
//! before calling the backend. Where a failed callback or fence would leave something behind,
//! the runtime waits for the stream instead (`settle_stream`): a thread's slot release, a
//! graph's drop, an allocator fence (`MemoryDevice::wait_stream`).
//!
//! # Fields
//! - `streams`, `backend`, `config`, `id`: immutable after construction.
//! - `slots`: the exclusive pool (`slots`, lock-free; `STREAM_SLOT_WAIT` to wait for a slot);
//!   `rr`: the shared policy's counter.
//! - `alloc`: its own lock (`ALLOCATOR`); `events`: `EVENT_POOL`; `completion`: `COMPLETION_QUEUE`.
//! - `caches`: registry of thread caches (`THREAD_CACHE_REGISTRY`), walked by shutdown and by
//!   an allocation that ran out of memory (the allocator's step 4 retires every cache, giving
//!   its blocks back; owners then start new caches). Every reclaim of cached blocks (a cache's,
//!   the streams' returns') holds it until those blocks are in the pools (`flush_caches`).
//! - `shut_down` (`SHUTDOWN_DONE`, with `shut_down_cv`): set by the shutdown that closed the
//!   device when it finishes.
//! - `lost`: a create-once cell (no lock); `faults`: its own leaf lock (`FAULT_PLAN`), read
//!   only while a plan is set.
//!
//! # Graph capture
//! A graph's recording (`capture`) is per thread and device and sits below the tensor layer, in
//! the runtime's launch and allocation path: while the calling thread records a graph of this
//! device, [`RuntimeObj::launch`] appends the kernel to the recording instead of launching it,
//! `Storage::new_output` takes an op's output from the graph's arena instead of the allocator,
//! and `Storage::use_on` checks and notes an input instead of ordering it (a storage of a graph
//! used outside its capture is refused there). The tensor front-end issues its ops the same way
//! whether or not a capture records them.
//!
//! # Reference cycles
//! Work handed to the backend (host callbacks) never captures the `Runtime`: a backend thread
//! must never drop the last reference, or the runtime would join that very thread.

pub(crate) mod capture;
mod events;
pub(crate) mod local;
mod memory;
pub(crate) mod poison;
pub(crate) mod slots;
mod storage;

use crate::alloc::returns::Returns;
use crate::alloc::thread_cache::ThreadCache;
use crate::alloc::{Allocator, Block, MemoryStats};
use crate::backend::Backend;
use crate::completion::{Completion, Handler};
use crate::config::{Config, Exhaustion, StreamPolicy};
use crate::error::{BackendError, DeviceId, Error, Result};
use crate::event_pool::EventPool;
use crate::faults::FaultSite;
use crate::kernel::{DevicePtr, Kernel};
use crate::stream::StreamId;
use chorus_sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use chorus_sync::{rank, thread, Arc, Condvar, Mutex, RankedMutex, Weak};
use std::time::{Duration, Instant};

pub(crate) use events::EventObj;
use slots::{StreamSlots, Wait};
pub(crate) use storage::Storage;

/// Process-wide counter of device instances. A plain std atomic: it is no part of any modeled
/// protocol, and loom atomics cannot live in a `static`.
// sync-shim: allowed (a static counter outside every loom model)
static NEXT_INSTANCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// What state a device is in ([`crate::Device::health`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Health {
    /// Working.
    Ok,
    /// Shut down (`Device::shutdown`, or its last handle dropped): calls get
    /// [`Error::DeviceClosed`].
    Closed,
    /// Lost to a fault it cannot recover from: calls get [`Error::DeviceLost`] naming `cause`.
    /// Open a new `Device` for the same hardware to go on (models must be loaded again).
    Lost {
        /// The first fatal fault.
        cause: String,
    },
}

/// Counters of completion handlers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HandlerStats {
    /// Handlers that ran to completion.
    pub ran: u64,
    /// Handlers that panicked (the panic was contained).
    pub panicked: u64,
    /// Message of the last panic.
    pub last_panic: Option<String>,
}

/// The backend-erased interface of a runtime (see the module docs).
pub(crate) trait RuntimeObj: Send + Sync + 'static {
    fn id(&self) -> DeviceId;
    fn config(&self) -> &Config;
    fn describe(&self) -> String;
    fn total_memory(&self) -> Option<usize>;
    fn fuses_attention(&self, s: usize, e: usize, ev: usize) -> bool;
    fn prepares_weights(&self) -> bool;
    fn is_closed(&self) -> bool;
    /// `Err(DeviceLost)` once lost, `Err(DeviceClosed)` once shut down.
    fn check_open(&self) -> Result<()>;
    fn health(&self) -> Health;
    #[cfg(any(debug_assertions, feature = "fault-injection"))]
    fn inject_faults(&self, plan: crate::faults::FaultPlan);
    #[cfg(any(debug_assertions, feature = "fault-injection"))]
    fn injected_faults(&self) -> Vec<(crate::faults::FaultSite, u64)>;
    fn num_streams(&self) -> usize;
    /// The calling thread's current stream on this device (binding it on first use).
    fn current_stream(&self) -> Result<StreamId>;
    fn flush(&self, s: StreamId) -> Result<()>;
    fn synchronize_stream(&self, s: StreamId, timeout: Option<Duration>) -> Result<()>;
    fn synchronize(&self, timeout: Option<Duration>) -> Result<()>;
    fn on_complete(&self, s: StreamId, f: Handler) -> Result<()>;
    /// Enqueues on stream `s` a host callback that blocks until `release`'s sender is dropped
    /// (`crate::stream::gate`, test-only).
    #[cfg(feature = "testing")]
    fn gate(&self, s: StreamId, release: std::sync::mpsc::Receiver<()>) -> Result<()>;
    fn new_event(&self, timing: bool) -> Result<Box<dyn EventObj>>;
    /// Whether the calling thread records a graph of this device (`capture`).
    fn capturing(&self) -> bool;
    /// A block from the allocator (an op's output goes through `Storage::new_output`, which
    /// takes it from a capture's arena while the thread records).
    fn alloc(&self, bytes: usize, s: StreamId) -> Result<Block>;
    /// Gives a block back; `users` are the streams that used it (the owner among them or not).
    fn free(&self, block: Block, users: &[StreamId]);
    fn memory_stats(&self) -> MemoryStats;
    fn reset_peak(&self);
    fn empty_cache(&self);
    fn handler_stats(&self) -> HandlerStats;
    /// Launches `k` on stream `s`, or, while the calling thread records a graph of this device,
    /// appends it to the recording (`capture`; nothing is enqueued).
    ///
    /// # Safety
    /// As `Backend::launch`.
    unsafe fn launch(&self, s: StreamId, k: Kernel) -> Result<()>;
    /// # Safety
    /// As `Backend::write`.
    unsafe fn write(&self, s: StreamId, dst: DevicePtr, data: Vec<u8>) -> Result<()>;
    /// # Safety
    /// As `Backend::read`.
    unsafe fn read(&self, s: StreamId, src: DevicePtr, len: usize) -> Result<Vec<u8>>;
    /// Makes later work on `consumer` wait for all work enqueued on `producer` so far.
    fn order_after(&self, producer: StreamId, consumer: StreamId) -> Result<()>;
    /// The executable form of a graph's recording (`crate::graph`); `s` is the capture's
    /// stream (for errors).
    ///
    /// # Safety
    /// As `Backend::build_graph`.
    unsafe fn build_graph(&self, s: StreamId, kernels: Vec<Kernel>) -> Result<GraphExec>;
    /// Enqueues a graph built by this runtime on stream `s`.
    ///
    /// # Safety
    /// As `Backend::launch_graph`.
    unsafe fn launch_graph(&self, s: StreamId, exec: &GraphExec) -> Result<()>;
    /// Drops `exec` once the work enqueued on stream `s` so far has completed (on the
    /// completion thread); leaks it if that cannot be known (a closed device or a broken
    /// stream), since its device resources may still be in use.
    fn drop_after(&self, s: StreamId, exec: GraphExec);
    fn shutdown(&self);
    /// A thread that used this device exits (called from its thread-local destructor).
    fn thread_exit(
        &self,
        stream: Option<StreamId>,
        exclusive: bool,
        cache: Option<Arc<ThreadCache>>,
    );
}

/// The indices of `streams`, for messages.
fn indices(streams: &[StreamId]) -> Vec<usize> {
    streams.iter().map(|s| s.index()).collect()
}

/// A graph's executable form, type-erased (`Exec<B::Graph>` inside).
pub(crate) type GraphExec = Box<dyn std::any::Any + Send + Sync>;

/// What a runtime builds from a graph's recording.
enum Exec<G> {
    /// The backend's form.
    Native(G),
    /// The recording, launched one by one (the backend has no form of its own for it).
    Kernels(Vec<Kernel>),
}

/// Leaks its contents when dropped unless taken: the payload of a host callback whose drop
/// without running would mean the stream's work may still use the contents.
struct LeakUnlessTaken(Option<GraphExec>);

impl Drop for LeakUnlessTaken {
    fn drop(&mut self) {
        if let Some(exec) = self.0.take() {
            std::mem::forget(exec);
        }
    }
}

/// Sets a shutdown's `shut_down` flag and wakes its waiters when dropped: at the end of the
/// shutdown that closed the device, also when it unwinds.
struct Finished<'a>(&'a RankedMutex<bool>, &'a Condvar);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        *self.0.lock() = true;
        self.1.notify_all();
    }
}

/// The runtime of one device over backend `B`.
pub(crate) struct Runtime<B: Backend> {
    id: DeviceId,
    backend: B,
    config: Config,
    me: Weak<Runtime<B>>,
    streams: Vec<B::Stream>,
    slots: Arc<StreamSlots>,
    rr: AtomicUsize,
    events: EventPool<B::Event>,
    alloc: Allocator<B::Segment, B::Event>,
    caches: RankedMutex<Vec<Weak<ThreadCache>>>,
    /// Small blocks freed on threads that could not cache them, kept for their streams.
    returns: Returns,
    completion: Arc<Completion>,
    completion_thread: Mutex<Option<thread::JoinHandle<()>>>,
    /// The completion thread's id: a shutdown called from a handler does not wait for one in
    /// progress, which waits for that thread.
    completion_id: thread::ThreadId,
    closed: AtomicBool,
    /// Set when the shutdown that closed the device has finished; later callers wait for it.
    shut_down: RankedMutex<bool>,
    shut_down_cv: Condvar,
    /// The cause of the fault that lost the device, set once (module docs, "Lost").
    lost: Once<String>,
    /// The fault-injection plan (`crate::faults`).
    #[cfg(any(debug_assertions, feature = "fault-injection"))]
    faults: crate::faults::Faults,
}

/// A create-once cell read without a lock (std's: it is no part of any loom model).
// sync-shim: allowed (see above)
type Once<T> = std::sync::OnceLock<T>;

impl<B: Backend> std::fmt::Debug for Runtime<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("id", &self.id)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl<B: Backend> Runtime<B> {
    /// Creates the runtime: streams, completion thread.
    pub(crate) fn new(backend: B, config: Config) -> Result<Arc<Self>> {
        let id = DeviceId {
            backend: backend.name(),
            ordinal: backend.ordinal(),
            instance: NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed),
        };
        let dev_err = |stream, source| Error::Device {
            device: id,
            stream,
            source,
        };
        let streams = (0..config.streams)
            .map(StreamId::new)
            .map(|s| backend.create_stream(s).map_err(|e| dev_err(s, e)))
            .collect::<Result<Vec<_>>>()?;
        let completion = Completion::new();
        let handle = completion
            .spawn(format!("chorus-{id}-completion"))
            .map_err(|e| {
                dev_err(
                    StreamId::DEFAULT,
                    BackendError::Call {
                        api: "spawn completion thread",
                        message: e.to_string(),
                    },
                )
            })?;
        Ok(Arc::new_cyclic(|me| Runtime {
            id,
            slots: Arc::new(StreamSlots::new(1, config.streams - 1)),
            rr: AtomicUsize::new(0),
            events: EventPool::new(),
            alloc: Allocator::new(id, config.streams, config.memory_limit),
            caches: RankedMutex::new(rank::THREAD_CACHE_REGISTRY, Vec::new()),
            returns: Returns::new(config.streams, config.thread_cache_bytes),
            completion,
            completion_id: handle.thread().id(),
            completion_thread: Mutex::new(Some(handle)),
            closed: AtomicBool::new(false),
            shut_down: RankedMutex::new(rank::SHUTDOWN_DONE, false),
            shut_down_cv: Condvar::new(),
            lost: Once::new(),
            #[cfg(any(debug_assertions, feature = "fault-injection"))]
            faults: crate::faults::Faults::new(),
            me: me.clone(),
            streams,
            backend,
            config,
        }))
    }

    fn stream(&self, s: StreamId) -> Result<&B::Stream> {
        self.streams.get(s.index()).ok_or(Error::NoSuchStream {
            device: self.id,
            stream: s,
            streams: self.streams.len(),
        })
    }

    /// The error of a failed backend call on `stream`: a fault that lost the device loses it
    /// (module docs, "Lost") and is `Error::DeviceLost`; any other is `Error::Device`.
    fn dev_err(&self, stream: StreamId) -> impl FnOnce(BackendError) -> Error + '_ {
        move |source| match source {
            BackendError::Lost { cause } => self.lose(cause),
            source => Error::Device {
                device: self.id,
                stream,
                source,
            },
        }
    }

    /// Puts the device in the `Lost` state (once; the first cause is kept) and returns the
    /// error every call now gets. Threads waiting for an exclusive stream wake with it.
    fn lose(&self, cause: String) -> Error {
        let cause = self.lost.get_or_init(|| cause).clone();
        self.slots.close();
        Error::DeviceLost {
            device: self.id,
            cause,
        }
    }

    /// The fault injection of a call of `site` (`crate::faults`): `Err` when the plan fails it.
    #[cfg(any(debug_assertions, feature = "fault-injection"))]
    fn inject(&self, site: crate::faults::FaultSite) -> Result<(), BackendError> {
        use crate::faults::Injected;
        match self.faults.hit(site) {
            None => Ok(()),
            Some(Injected::Fail(call)) => Err(BackendError::Injected { site, call }),
            Some(Injected::Lose(call)) => Err(BackendError::Lost {
                cause: format!("injected fatal fault at {site} #{call}"),
            }),
        }
    }

    /// Without fault injection: never fails.
    #[cfg(not(any(debug_assertions, feature = "fault-injection")))]
    #[inline(always)]
    fn inject(&self, _site: crate::faults::FaultSite) -> Result<(), BackendError> {
        Ok(())
    }

    /// Waits for stream `s` at most the shutdown timeout, when a host callback or a fence that
    /// would have waited for it device-side could not be enqueued; whether it is idle.
    fn settle_stream(&self, s: StreamId) -> bool {
        let Ok(stream) = self.stream(s) else {
            return false;
        };
        // A stream with an error has run (or dropped) its work: idle.
        !matches!(
            self.backend
                .synchronize(stream, Some(self.config.shutdown_timeout)),
            Ok(false)
        )
    }

    /// Binds a pooled stream to the calling thread by policy.
    fn bind(&self) -> Result<(StreamId, bool)> {
        let pooled = self.streams.len() - 1;
        match self.config.policy {
            StreamPolicy::Shared => {
                let i = 1 + self.rr.fetch_add(1, Ordering::Relaxed) % pooled;
                Ok((StreamId::new(i), false))
            }
            StreamPolicy::Exclusive => {
                let wait = match self.config.exhaustion {
                    Exhaustion::Error => Wait::No,
                    Exhaustion::Wait(d) => Wait::For(d),
                    Exhaustion::WaitForever => Wait::Forever,
                };
                self.slots
                    .acquire(wait)
                    .map(|s| (s, true))
                    .map_err(|waited| match self.check_open() {
                        // The wait was ended by the shutdown.
                        Err(closed) => closed,
                        Ok(()) => Error::StreamsExhausted {
                            device: self.id,
                            slots: pooled,
                            waited,
                        },
                    })
            }
        }
    }

    /// Waits for every stream, at most `timeout` in all; returns the streams still busy.
    fn wait_all(&self, timeout: Option<Duration>) -> Vec<StreamId> {
        // A timeout too long to have a deadline is no timeout.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut busy = Vec::new();
        for (i, s) in self.streams.iter().enumerate() {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            // A stream with a sticky error has still run (or dropped) its work: not busy.
            if let Ok(false) = self.backend.synchronize(s, left) {
                busy.push(StreamId::new(i));
            }
        }
        busy
    }

    /// Gives back to the pools every block the threads' caches and the streams' returns keep;
    /// `close`: the returns keep none from now on (shutdown).
    ///
    /// Every reclaim (this, [`Runtime::retire_cache`], `empty_cache`'s) holds the registry lock
    /// until the blocks it took out are in the pools, so no block is ever in transit outside
    /// the lock: once a reclaimer has it, every block an earlier one took is in the pools, and
    /// a snapshot of the frees taken after it (running out of memory, shutdown) counts them.
    fn flush_caches(&self, close: bool) {
        let mut reg = self.caches.lock();
        let caches: Vec<_> = reg.iter().filter_map(Weak::upgrade).collect();
        for c in &caches {
            self.retire_locked(&mut reg, c);
        }
        self.alloc.give_back(self.returns.drain(close));
        drop(reg);
        // The caches last referenced here (their threads exited meanwhile) drop unlocked.
        drop(caches);
    }

    /// Closes a thread cache (thread exit, shutdown, `empty_cache` or running out of memory,
    /// whichever comes first) and gives its blocks back, under the registry lock
    /// ([`Runtime::flush_caches`]).
    fn retire_cache(&self, c: &ThreadCache) {
        let mut reg = self.caches.lock();
        self.retire_locked(&mut reg, c);
    }

    /// [`Runtime::retire_cache`] under the registry lock `reg`: folds the cache's counts into
    /// the allocator's and unregisters it in one step, so that `memory_stats` counts it exactly
    /// once, and puts its blocks in the pools before the lock is released.
    fn retire_locked(&self, reg: &mut Vec<Weak<ThreadCache>>, c: &ThreadCache) {
        let Some(blocks) = c.close() else {
            return; // the other closer retired it
        };
        self.alloc.fold(c.counts());
        reg.retain(|w| !std::ptr::eq(w.as_ptr(), c));
        self.alloc.give_back(blocks);
    }
}

impl<B: Backend> RuntimeObj for Runtime<B> {
    fn id(&self) -> DeviceId {
        self.id
    }
    fn config(&self) -> &Config {
        &self.config
    }
    fn describe(&self) -> String {
        self.backend.describe()
    }
    fn total_memory(&self) -> Option<usize> {
        self.backend.total_memory()
    }
    fn fuses_attention(&self, s: usize, e: usize, ev: usize) -> bool {
        self.backend.fuses_attention(s, e, ev)
    }
    fn prepares_weights(&self) -> bool {
        self.backend.prepares_weights()
    }
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
    fn check_open(&self) -> Result<()> {
        if let Some(cause) = self.lost.get() {
            return Err(Error::DeviceLost {
                device: self.id,
                cause: cause.clone(),
            });
        }
        if self.is_closed() {
            Err(Error::DeviceClosed { device: self.id })
        } else {
            Ok(())
        }
    }
    fn health(&self) -> Health {
        if let Some(cause) = self.lost.get() {
            Health::Lost {
                cause: cause.clone(),
            }
        } else if self.is_closed() {
            Health::Closed
        } else {
            Health::Ok
        }
    }
    #[cfg(any(debug_assertions, feature = "fault-injection"))]
    fn inject_faults(&self, plan: crate::faults::FaultPlan) {
        self.faults.set(plan);
    }
    #[cfg(any(debug_assertions, feature = "fault-injection"))]
    fn injected_faults(&self) -> Vec<(crate::faults::FaultSite, u64)> {
        self.faults.fired()
    }
    fn num_streams(&self) -> usize {
        self.streams.len()
    }

    fn current_stream(&self) -> Result<StreamId> {
        self.check_open()?;
        let me = || -> Weak<dyn RuntimeObj> { self.me.clone() };
        local::current_stream(self.id.instance, me, || self.bind())
    }

    fn flush(&self, s: StreamId) -> Result<()> {
        self.check_open()?;
        self.backend.flush(self.stream(s)?).map_err(self.dev_err(s))
    }

    fn synchronize_stream(&self, s: StreamId, timeout: Option<Duration>) -> Result<()> {
        let done = (self.backend.synchronize(self.stream(s)?, timeout)).map_err(self.dev_err(s))?;
        // A device lost meanwhile: the wait is over, and so is the device.
        if let Some(cause) = self.lost.get() {
            return Err(Error::DeviceLost {
                device: self.id,
                cause: cause.clone(),
            });
        }
        match done {
            true => Ok(()),
            false => Err(Error::Timeout {
                device: self.id,
                what: format!("stream {s}"),
                timeout: timeout.unwrap_or_default(),
            }),
        }
    }

    fn synchronize(&self, timeout: Option<Duration>) -> Result<()> {
        // A timeout too long to have a deadline is no timeout.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        for s in (0..self.streams.len()).map(StreamId::new) {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            self.synchronize_stream(s, left).map_err(|e| match e {
                Error::Timeout { device, what, .. } => Error::Timeout {
                    device,
                    what,
                    timeout: timeout.unwrap_or_default(),
                },
                e => e,
            })?;
        }
        Ok(())
    }

    fn on_complete(&self, s: StreamId, f: Handler) -> Result<()> {
        self.check_open()?;
        let stream = self.stream(s)?;
        self.inject(FaultSite::HostCallback)
            .map_err(self.dev_err(s))?;
        let completion = Arc::clone(&self.completion);
        let cb = Box::new(move || completion.push(f));
        self.backend
            .host_callback(stream, cb)
            .map_err(self.dev_err(s))
    }

    #[cfg(feature = "testing")]
    fn gate(&self, s: StreamId, release: std::sync::mpsc::Receiver<()>) -> Result<()> {
        self.check_open()?;
        // Blocks the backend's thread, holding no runtime lock and calling nothing of the
        // runtime: it only waits until the gate's sender is dropped (`recv` then fails).
        let cb = Box::new(move || {
            let _ = release.recv();
        });
        self.backend
            .host_callback(self.stream(s)?, cb)
            .map_err(self.dev_err(s))
    }

    fn new_event(&self, timing: bool) -> Result<Box<dyn EventObj>> {
        self.check_open()?;
        let rt = self
            .me
            .upgrade()
            .ok_or(Error::DeviceClosed { device: self.id })?;
        events::lease(rt, timing)
    }

    fn capturing(&self) -> bool {
        capture::recording(self)
    }

    fn alloc(&self, bytes: usize, s: StreamId) -> Result<Block> {
        self.check_open()?;
        let (kind, size) = crate::alloc::pool::classify(bytes)
            .ok_or(Error::SizeOverflow { what: "allocation" })?;
        if kind == crate::alloc::pool::Kind::Small && self.config.thread_cache_bytes > 0 {
            if let Some(b) = self.with_thread_cache(None, |c| c.take(size, s)).flatten() {
                return Ok(self.alloc.thread_cache_hit(b));
            }
            if let Some(b) = self.returns.take(size, s) {
                return Ok(self.alloc.returns_hit(b));
            }
        }
        self.alloc.alloc(self, bytes, s)
    }

    fn free(&self, block: Block, users: &[StreamId]) {
        self.alloc.count_bytes_in(&block);
        let single = users.iter().all(|&u| u == block.stream);
        if single
            && block.size <= crate::alloc::pool::SMALL_MAX
            && self.config.thread_cache_bytes > 0
            && !self.is_closed()
        {
            // Only a thread whose current stream is the block's owner caches it, so that the
            // fast path in `alloc` hands it back to the same stream; another thread keeps it in
            // the stream's returns (`alloc::returns`).
            let owner = Some(block.stream);
            if let Some(crate::alloc::thread_cache::Put::Cached) =
                self.with_thread_cache(owner, |c| c.put(block))
            {
                return;
            }
            if self.returns.put(block).is_ok() {
                self.alloc.count_free();
                return;
            }
        }
        self.alloc.count_free();
        self.alloc.release(self, block, users);
    }

    fn memory_stats(&self) -> MemoryStats {
        // Under the registry lock: a cache is either still registered (its counts added here)
        // or retired (its counts folded), never both (`retire_cache`).
        let reg = self.caches.lock();
        let open = reg
            .iter()
            .filter_map(Weak::upgrade)
            .map(|c| c.counts())
            .fold((0, 0), |(h, f), (ch, cf)| (h + ch, f + cf));
        self.alloc.stats(open)
    }
    fn reset_peak(&self) {
        self.alloc.reset_peak();
    }
    fn empty_cache(&self) {
        if let Some(c) = local::take_cache(self.id.instance) {
            self.retire_cache(&c);
        }
        {
            // Under the registry lock, as every reclaim (`flush_caches`).
            let _reg = self.caches.lock();
            self.alloc.give_back(self.returns.drain(false));
        }
        self.alloc.empty_cache(self);
        self.backend.release_idle();
    }
    fn handler_stats(&self) -> HandlerStats {
        let (ran, panicked, last_panic) = self.completion.counts();
        HandlerStats {
            ran,
            panicked,
            last_panic,
        }
    }

    unsafe fn launch(&self, s: StreamId, k: Kernel) -> Result<()> {
        // The capture hook: recorded, not launched (whatever the stream: the capture's
        // allocations already refuse another stream than its own).
        if capture::recording(self) {
            return capture::record(self, k);
        }
        self.check_open()?;
        let stream = self.stream(s)?;
        self.inject(FaultSite::Launch).map_err(self.dev_err(s))?;
        // SAFETY: forwarded from the caller.
        unsafe { self.backend.launch(stream, k) }.map_err(self.dev_err(s))
    }
    unsafe fn write(&self, s: StreamId, dst: DevicePtr, data: Vec<u8>) -> Result<()> {
        self.check_open()?;
        // SAFETY: forwarded from the caller.
        unsafe { self.backend.write(self.stream(s)?, dst, data) }.map_err(self.dev_err(s))
    }
    unsafe fn read(&self, s: StreamId, src: DevicePtr, len: usize) -> Result<Vec<u8>> {
        self.check_open()?;
        let stream = self.stream(s)?;
        self.inject(FaultSite::Read).map_err(self.dev_err(s))?;
        // SAFETY: forwarded from the caller.
        unsafe { self.backend.read(stream, src, len) }.map_err(self.dev_err(s))
    }

    fn order_after(&self, producer: StreamId, consumer: StreamId) -> Result<()> {
        self.check_open()?;
        let (p, c) = (self.stream(producer)?, self.stream(consumer)?);
        let (ev, _) = self
            .events
            .acquire(false, || self.backend.create_event(false))
            .map_err(self.dev_err(producer))?;
        // The wait captures the record as it is now (backend contract), so the event can go
        // back to the pool at once.
        let res = (self.inject(FaultSite::Record))
            .and_then(|()| self.backend.record(&ev, p))
            .map_err(self.dev_err(producer))
            .and_then(|()| self.backend.wait(c, &ev).map_err(self.dev_err(consumer)));
        self.events
            .release(ev, false, |e| self.backend.reset_event(e));
        res
    }

    unsafe fn build_graph(&self, s: StreamId, kernels: Vec<Kernel>) -> Result<GraphExec> {
        self.check_open()?;
        // SAFETY: forwarded from the caller.
        let native = unsafe { self.backend.build_graph(&kernels) }.map_err(self.dev_err(s))?;
        Ok(Box::new(
            native.map_or(Exec::Kernels(kernels), Exec::Native),
        ))
    }

    unsafe fn launch_graph(&self, s: StreamId, exec: &GraphExec) -> Result<()> {
        self.check_open()?;
        let stream = self.stream(s)?;
        self.inject(FaultSite::Launch).map_err(self.dev_err(s))?;
        let exec = exec
            .downcast_ref::<Exec<B::Graph>>()
            .expect("a graph runs on the runtime that built it");
        match exec {
            Exec::Native(g) => {
                // SAFETY: forwarded from the caller.
                unsafe { self.backend.launch_graph(stream, g) }.map_err(self.dev_err(s))
            }
            Exec::Kernels(kernels) => {
                for k in kernels {
                    // SAFETY: forwarded from the caller (each kernel of the graph).
                    unsafe { self.backend.launch(stream, k.clone()) }.map_err(self.dev_err(s))?;
                }
                Ok(())
            }
        }
    }

    fn drop_after(&self, s: StreamId, exec: GraphExec) {
        let Ok(stream) = self.stream(s) else {
            return std::mem::forget(exec);
        };
        if self.is_closed() {
            return std::mem::forget(exec);
        }
        if let Err(e) = self.inject(FaultSite::HostCallback) {
            if let BackendError::Lost { cause } = e {
                self.lose(cause);
            }
            // No callback: wait for the stream here, and drop the form once it is idle.
            if self.settle_stream(s) {
                drop(exec);
            } else {
                std::mem::forget(exec);
            }
            return;
        }
        let completion = Arc::clone(&self.completion);
        let mut payload = LeakUnlessTaken(Some(exec));
        let cb = Box::new(move || {
            // The stream's work before this point has completed: the completion thread may
            // drop it (or the queue, if it has exited).
            if let Some(exec) = payload.0.take() {
                completion.push(Box::new(move || drop(exec)));
            }
        });
        // On failure the callback is dropped without running and leaks the executable form
        // (`LeakUnlessTaken`): the stream is broken, and its work may still use it.
        if let Err(BackendError::Lost { cause }) = self.backend.host_callback(stream, cb) {
            self.lose(cause);
        }
    }

    fn shutdown(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            // Another caller closed the device: return once its shutdown has finished (handlers
            // run, memory released), as this call promises. Not on the completion thread, whose
            // exit that shutdown may be waiting for.
            if thread::current().id() != self.completion_id {
                let mut done = self.shut_down.lock();
                while !*done {
                    done = self.shut_down_cv.wait(done);
                }
            }
            return;
        }
        // Marks this shutdown finished however the call ends, a panic included, so that a later
        // caller (`Drop` among them) never waits for a flag nobody will set.
        let _finished = Finished(&self.shut_down, &self.shut_down_cv);
        // Threads waiting for an exclusive stream get `DeviceClosed` instead.
        self.slots.close();
        let busy = self.wait_all(Some(self.config.shutdown_timeout));
        if !busy.is_empty() {
            eprintln!(
                "chorus: shutdown of {}: streams {:?} still had work after {:?}; it completes in the background",
                self.id,
                indices(&busy),
                self.config.shutdown_timeout
            );
        }
        self.completion.close();
        let handle = self
            .completion_thread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            if h.thread().id() == thread::current().id() {
                // Shutdown from a completion handler: the thread exits by itself after it.
                drop(h);
            } else {
                let _ = h.join();
            }
        }
        self.flush_caches(true);
        // Every free so far (the caches' blocks included) had its uses enqueued before it, so
        // once the streams are seen idle after this snapshot, they are complete. A second wait
        // (immediate unless work came since): a thread that passed its open check just before
        // the shutdown may have enqueued work after the first one.
        let upto = self.alloc.free_seq();
        let idle = busy.is_empty() && self.wait_all(Some(self.config.shutdown_timeout)).is_empty();
        self.alloc.close(self, idle.then_some(upto));
    }

    fn thread_exit(
        &self,
        stream: Option<StreamId>,
        exclusive: bool,
        cache: Option<Arc<ThreadCache>>,
    ) {
        if let Some(c) = cache {
            self.retire_cache(&c);
        }
        if let (Some(s), true) = (stream, exclusive) {
            // The slot goes back once the work this thread enqueued on it has completed.
            let slots = Arc::clone(&self.slots);
            let give = Box::new(move || slots.release(s));
            let enqueued = (self.inject(FaultSite::HostCallback))
                .and_then(|()| self.backend.host_callback(&self.streams[s.index()], give));
            if let Err(e) = enqueued {
                if let BackendError::Lost { cause } = e {
                    self.lose(cause);
                }
                // The callback could not be enqueued: wait for the stream's work here (a broken
                // stream's has stopped), then hand the slot back (after the timeout at most: a
                // slot is never lost).
                self.settle_stream(s);
                self.slots.release(s);
            }
        }
    }
}

impl<B: Backend> Drop for Runtime<B> {
    fn drop(&mut self) {
        self.shutdown();
        let busy = self.wait_all(Some(self.config.shutdown_timeout));
        if busy.is_empty() {
            self.alloc.teardown(self);
        } else {
            // Freeing memory that running work still touches would be a use-after-free on the
            // device; leaking every segment is the lesser evil, and it is said out loud.
            let leaked = self.alloc.leak(self);
            eprintln!(
                "chorus: {}: streams {:?} never finished; {leaked} bytes of device memory are not released",
                self.id,
                indices(&busy)
            );
        }
        for e in self.events.drain() {
            drop(e);
        }
    }
}

impl<B: Backend> Runtime<B> {
    /// Runs `f` on the calling thread's cache for this device, creating and registering it on
    /// first use; `None` if the thread is exiting, or its current stream is not `on_stream`
    /// (when given).
    fn with_thread_cache<R>(
        &self,
        on_stream: Option<StreamId>,
        f: impl FnOnce(&ThreadCache) -> R,
    ) -> Option<R> {
        let me = || -> Weak<dyn RuntimeObj> { self.me.clone() };
        local::with_cache(self.id.instance, me, on_stream, f, || {
            let c = Arc::new(ThreadCache::new(self.config.thread_cache_bytes));
            let mut reg = self.caches.lock();
            if self.is_closed() {
                // A free that saw the device open raced its shutdown, whose flush (under this
                // lock, after closing) has passed or will see this cache: once closed, a new
                // cache would never be flushed, so it is born closed, refuses every block, and
                // is not registered.
                let _ = c.close();
                return c;
            }
            reg.retain(|w| w.strong_count() > 0);
            reg.push(Arc::downgrade(&c));
            c
        })
    }
}

#[cfg(all(test, not(chorus_loom)))]
mod tests {
    use super::*;

    /// A shutdown that unwinds still marks itself finished, so later callers do not wait
    /// forever for it.
    #[test]
    fn a_shutdown_that_panics_is_still_marked_finished() {
        let (done, cv) = (RankedMutex::new(rank::SHUTDOWN_DONE, false), Condvar::new());
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _finished = Finished(&done, &cv);
            panic!("a shutdown step failed");
        }));
        assert!(unwound.is_err());
        assert!(*done.lock(), "a waiter would wait forever");
    }
}
