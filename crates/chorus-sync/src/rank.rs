//! Every runtime lock's rank, in one list (model: wgpu-core `lock/rank.rs`).
//!
//! A thread may acquire a lock only if its rank is strictly greater than the rank of every lock
//! the thread already holds. Debug builds check this and panic naming both locks. The constants
//! below are listed in rank order, which is the order in which nested acquisition happens:
//!
//! - the batching queue's locks (chorus-batch) rank below every runtime lock: each is held
//!   only for a few field updates, never while another lock is held, a model runs, the runtime
//!   is called or a ticket's waker fires;
//! - the shutdown-done flag is a leaf, waited on alone;
//! - a graph's run lock is held while the run orders and enqueues its work (event pool,
//!   allocator fences, backend);
//! - the thread-cache registry is held by every reclaim of cached blocks (shutdown, an
//!   allocation that ran out of memory, `empty_cache`, a thread's exit) until the blocks are in
//!   the allocator's pools, by `memory_stats` while it adds up the caches' counts, and while a
//!   new cache is registered;
//! - the allocator calls into a stream's returns, the event pool and then the backend (event
//!   record, query);
//! - the completion queue is taken by backend callbacks and the completion thread, alone;
//! - backend-internal locks come next: they never call back into the runtime;
//! - leaves last: a graph's arena, a storage's derived-data cache, the stream pool's
//!   exhaustion lock (held only to wait for a free slot or to wake waiters, never nested), the
//!   fault-injection plan.

/// A lock's place in the global order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LockRank {
    /// Position in the order: nested acquisition must strictly increase it.
    pub rank: u16,
    /// Name shown in a violation message.
    pub name: &'static str,
}

const fn r(rank: u16, name: &'static str) -> LockRank {
    LockRank { rank, name }
}

/// A batch queue's worker thread handles (shutdown takes them out to join them).
pub const BATCH_WORKERS: LockRank = r(2, "BatchQueue::workers");
/// A batch queue's pending requests and phase (submitters, workers, shutdown, cancelling tickets).
pub const BATCH_QUEUE: LockRank = r(4, "BatchQueue::state");
/// A batch ticket's one-shot result slot (the worker completing it, the ticket's owner waiting).
pub const BATCH_TICKET: LockRank = r(6, "Ticket::slot");
/// A batch queue's statistics (workers record each batch, readers copy them).
pub const BATCH_STATS: LockRank = r(8, "BatchQueue::stats");
/// Whether a device's shutdown has finished (a second caller waits for the first; a leaf,
/// waited on with no other lock held).
pub const SHUTDOWN_DONE: LockRank = r(12, "Runtime::shut_down");
/// A graph's runs (held while one run orders and enqueues its copies and its kernels).
pub const GRAPH_RUNS: LockRank = r(15, "Graph::runs");
/// Registry of per-thread block caches (shutdown walks it).
pub const THREAD_CACHE_REGISTRY: LockRank = r(20, "ThreadCaches::registry");
/// The caching allocator's pools.
pub const ALLOCATOR: LockRank = r(30, "Allocator::pools");
/// One stream's returns (blocks freed on a thread that could not cache them; a leaf lock, taken
/// under `ALLOCATOR` when the allocator hands a finished deferred block to its stream).
pub const RUNTIME_RETURNS: LockRank = r(32, "Returns::streams");
/// The event pool's free list.
pub const EVENT_POOL: LockRank = r(40, "EventPool::free");
/// Queue of completion handlers waiting for the completion thread.
pub const COMPLETION_QUEUE: LockRank = r(50, "Completion::queue");
/// A backend's event state (CPU backend: recorded target and timestamp).
pub const BACKEND_EVENT: LockRank = r(60, "backend event");
/// A backend stream's library handle while it is being made (CUDA: the cuBLAS handle, whose
/// warm-up takes the stream's plan locks).
pub const BACKEND_BLAS_INIT: LockRank = r(65, "backend cuBLAS handle creation");
/// A backend's stream queue (CPU backend: the worker's command queue).
pub const BACKEND_STREAM: LockRank = r(70, "backend stream queue");
/// A backend stream's GEMM plans (cuBLASLt descriptors per shape; a leaf lock).
pub const BACKEND_PLANS: LockRank = r(71, "backend GEMM plans");
/// A backend stream's read staging buffer (held across the copy and the stream synchronization,
/// which may record the stream's sticky error).
pub const BACKEND_STAGING: LockRank = r(72, "backend read staging");
/// A backend stream's scratch memory for multi-pass kernels (held while they are enqueued;
/// a failure then records the stream's sticky error).
pub const BACKEND_SCRATCH: LockRank = r(73, "backend scratch");
/// A graph stream's old scratch buffers (CUDA; a leaf lock taken under `BACKEND_SCRATCH`).
pub const BACKEND_RETIRED_SCRATCH: LockRank = r(74, "backend retired scratch");
/// A backend stream's sticky error slot.
pub const BACKEND_STREAM_ERROR: LockRank = r(75, "backend stream error");
/// The CUDA backend's idle graph streams (a leaf lock).
pub const BACKEND_GRAPH_STREAMS: LockRank = r(77, "backend graph streams");
/// The CUDA backend's cuBLASLt algorithm per GEMM shape, shared by a device's streams (a leaf
/// lock, taken under `BACKEND_PLANS`).
pub const BACKEND_GEMM_ALGOS: LockRank = r(78, "backend GEMM algorithms");
/// A backend stream's completion wait (host threads waiting for the worker's progress).
pub const BACKEND_STREAM_DONE: LockRank = r(80, "backend stream done");
/// A backend's one-shot reply slot (read-back data).
pub const BACKEND_REPLY: LockRank = r(85, "backend reply");
/// The CUDA backend's process-wide registry of compiled kernel programs (a leaf lock).
pub const BACKEND_MODULE: LockRank = r(90, "backend module registry");
/// A graph's memory: its blocks and which of them are free (a leaf lock).
pub const GRAPH_ARENA: LockRank = r(94, "graph arena");
/// A storage's cache of derived data (held while a backend makes an entry, e.g. packs a weight;
/// a leaf lock).
pub const DERIVED_ENTRIES: LockRank = r(96, "Derived::entries");
/// Exclusive stream-slot pool: waiting for a slot when all are taken; releasers notifying;
/// shutdown and a lost device closing it (a leaf, so that a device found lost under any lock,
/// a graph's run lock say, can close it).
pub const STREAM_SLOT_WAIT: LockRank = r(97, "StreamSlots::wait");
/// A device's fault-injection plan (debug builds, `fault-injection`): read by the wrapper
/// around every backend call of a site, which may hold any lock above; a leaf lock.
pub const FAULT_PLAN: LockRank = r(98, "Faults::plan");
/// Test-only ranks for checking the checker.
pub const TEST_LOW: LockRank = r(1000, "test low");
/// Test-only ranks for checking the checker.
pub const TEST_HIGH: LockRank = r(1001, "test high");
