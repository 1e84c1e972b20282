//! The low-level backend contract.
//!
//! A [`Backend`] owns the raw device objects (streams, events, memory segments) and executes
//! [`Kernel`]s. The runtime (`crate::runtime`) builds everything else on top, once, for every
//! backend: the stream pool and thread binding, the event pool, the caching allocator, the
//! completion thread and shutdown. The trait uses associated types and static dispatch; the
//! runtime erases the backend type at exactly one boundary (`crate::runtime::RuntimeObj`), so
//! that tensors, modules and the batching queue are not generic over the backend.
//!
//! # How each concept maps onto each backend
//!
//! | concept | CPU (`chorus-cpu`) | CUDA (`chorus-cuda`) | wgpu (`chorus-wgpu`) |
//! |---|---|---|---|
//! | `Stream` | a worker thread running a FIFO of commands | a non-blocking `CUstream` (+ its cuBLAS handle) | an open command encoder; `flush` submits it as one command buffer to the queue |
//! | `launch` | push a command; the worker runs the kernel | cuBLAS call or NVRTC kernel launch on the stream | record a compute pass into the encoder |
//! | `Graph` (`launch_graph`) | one command running the recorded kernels | a CUDA graph captured from the kernels' launches on the graph's own stream; `cuGraphLaunch` | the recorded passes encoded again (none prebuilt) |
//! | `flush` | nothing to do: commands are visible to the worker at once | nothing to do: launches are already submitted | `queue.submit` of the pending encoder |
//! | `Event` | (stream, command count) target; complete when the worker's count passes it | `CUevent` (`CU_EVENT_DISABLE_TIMING` unless timing) | submission index of the flushed command buffer (+ timestamp query when timing) |
//! | `record` | remember the stream's count of enqueued commands | `cuEventRecord` | flush, remember the submission index |
//! | `wait` (device-side) | push a command that waits for the other stream's count | `cuStreamWaitEvent` | nothing: wgpu orders submissions on one queue |
//! | `query` / `event_synchronize` | compare / condvar wait on the count | `cuEventQuery` / poll with back-off until the timeout | `device.poll(WaitForSubmissionIndex)` |
//! | `Segment` | 256-byte aligned host allocation | `cuMemAlloc` (one per segment, the core splits it) | one `wgpu::Buffer`; `DevicePtr` packs (buffer slot, offset) |
//! | `host_callback` | push a command that calls it | `cuLaunchHostFunc` | `queue.on_submitted_work_done` |
//! | `read` | push a copy command, wait for it | `cuMemcpyDtoHAsync` into pinned memory + sync | copy into a mappable buffer, map, wait |
//! | sticky error | kernel panic caught by the worker | asynchronous CUDA error of the context | device-lost / validation error callback |
//!
//! # Contract
//! - Work enqueued on one stream runs in enqueue order; work on different streams may overlap.
//! - Every method may be called from any thread, concurrently (backends lock internally; their
//!   locks rank above every runtime lock and never call back into the runtime).
//! - A host callback must not block; the runtime only passes callbacks that hand user code to
//!   its completion thread (and, with the test-only feature `testing`, the callback of
//!   `Stream::gate`, which blocks its stream on purpose until the test opens it).
//! - An event query answers for the *latest* `record` of that event; a record replaces the
//!   previous one. A never-recorded event is complete. After `reset_event` the event behaves as
//!   never recorded, and no effect of an earlier record (a late timestamp, a late completion)
//!   may become visible through it.
//! - `wait` captures the event's record as of the call (as `cuStreamWaitEvent` does): a later
//!   record or reset of the event does not change what the stream waits for.
//! - Raw objects are destroyed by `Drop`; the backend's own `Drop` runs after every stream has
//!   been synchronized by the runtime and must release the streams (join worker threads).

use crate::error::BackendError;
use crate::kernel::{DevicePtr, Kernel};
use crate::stream::StreamId;
use std::time::Duration;

/// A callback the backend runs once all work enqueued before it on a stream has completed.
pub type HostCallback = Box<dyn FnOnce() + Send + 'static>;

/// Result of a backend call.
pub type BackendResult<T> = Result<T, BackendError>;

/// A device backend. See the module docs for the contract and the mapping table.
pub trait Backend: Send + Sync + Sized + 'static {
    /// A raw stream (an ordered queue of work).
    type Stream: Send + Sync;
    /// A raw event (a marker in a stream that can be waited on).
    type Event: Send + Sync;
    /// A raw block of device memory returned by [`Backend::alloc_segment`].
    type Segment: Send + Sync;
    /// The executable form of a captured kernel list ([`Backend::build_graph`]).
    type Graph: Send + Sync + 'static;

    /// Backend name (`cpu`, `cuda`, `wgpu`).
    fn name(&self) -> &'static str;
    /// Hardware ordinal.
    fn ordinal(&self) -> u32;
    /// One line describing the hardware (`chorus info`).
    fn describe(&self) -> String;
    /// Total device memory in bytes, if known.
    fn total_memory(&self) -> Option<usize>;
    /// Whether [`Kernel::Attention`] runs here for `s` keys of `e` features and values of `ev`
    /// (else `scaled_dot_product_attention` is a matmul, a softmax and a matmul). None by
    /// default: a backend opts in where one kernel beats three (a GPU's launch cost).
    fn fuses_attention(&self, s: usize, e: usize, ev: usize) -> bool {
        let _ = (s, e, ev);
        false
    }
    /// Whether [`Kernel::Matmul`] gets `linear`'s weight's cache of derived data (`rhs_derived`)
    /// to keep the weight prepared for its kernel. None by default (handing it out costs an
    /// atomic on the weight, shared by every thread).
    fn prepares_weights(&self) -> bool {
        false
    }

    /// Creates stream `id` of the pool (`StreamId::DEFAULT`, index 0, is the default stream).
    ///
    /// # Errors
    /// The device refused to create the stream.
    fn create_stream(&self, id: StreamId) -> BackendResult<Self::Stream>;
    /// Creates an event; `timing` enables [`Backend::elapsed`].
    ///
    /// # Errors
    /// The device refused to create the event.
    fn create_event(&self, timing: bool) -> BackendResult<Self::Event>;
    /// Allocates a segment of `bytes` (at least 256-byte aligned).
    ///
    /// # Errors
    /// [`BackendError::OutOfMemory`] when the device has no room.
    fn alloc_segment(&self, bytes: usize) -> BackendResult<(Self::Segment, DevicePtr)>;
    /// Releases a segment.
    ///
    /// # Safety
    /// No enqueued or running work accesses the segment's memory any more.
    unsafe fn free_segment(&self, segment: Self::Segment);

    /// Enqueues `kernel` on `stream`.
    ///
    /// # Safety
    /// Every pointer in `kernel` addresses memory of a live segment of this backend, valid for
    /// the kernel's extents until the stream has executed the kernel; outputs do not overlap
    /// inputs; no other work writes the inputs or touches the outputs until then, except work
    /// ordered before or after it by stream order or events.
    ///
    /// # Errors
    /// The stream carries an earlier asynchronous error, or the launch failed.
    unsafe fn launch(&self, stream: &Self::Stream, kernel: Kernel) -> BackendResult<()>;
    /// Builds the executable form of `kernels` (a graph's recording: run in this order, as on
    /// one stream), or `None` to have the runtime launch them one by one at every run. The
    /// default is `None`; the CPU backend makes one command of them, CUDA a CUDA graph.
    ///
    /// # Safety
    /// Every pointer in `kernels` addresses memory that stays valid, for the kernel's extents,
    /// as long as the returned graph lives; the graph is only launched under the contract of
    /// [`Backend::launch`] for all of its kernels, on one stream at a time, and dropped once
    /// the work of its launches has completed. Moreover, at the call, the memory the kernels
    /// read holds what work enqueued before the call writes, and the memory they write is
    /// written by nothing but these kernels: a backend may synchronize the device and run the
    /// kernels once (on a stream of its own) while building. When it returns, with or without
    /// an error, no work it enqueued while building runs any more: the caller may free that
    /// memory at once.
    ///
    /// # Errors
    /// The device refused to build it.
    unsafe fn build_graph(&self, kernels: &[Kernel]) -> BackendResult<Option<Self::Graph>> {
        let _ = kernels;
        Ok(None)
    }
    /// Enqueues `graph` on `stream`.
    ///
    /// # Safety
    /// As [`Backend::launch`] for every kernel of the graph (see [`Backend::build_graph`]).
    ///
    /// # Errors
    /// As for [`Backend::launch`].
    unsafe fn launch_graph(&self, stream: &Self::Stream, graph: &Self::Graph) -> BackendResult<()>;
    /// Releases what the backend keeps idle for reuse besides the allocator's segments (CUDA:
    /// the streams of dropped graphs, each with a cuBLAS handle and its workspace); called by
    /// [`Device::empty_cache`](crate::Device::empty_cache). Nothing by default.
    fn release_idle(&self) {}
    /// Enqueues a copy of `data` to `dst`.
    ///
    /// # Safety
    /// As for [`Backend::launch`], with `dst` the output of `data.len()` bytes.
    ///
    /// # Errors
    /// As for [`Backend::launch`].
    unsafe fn write(
        &self,
        stream: &Self::Stream,
        dst: DevicePtr,
        data: Vec<u8>,
    ) -> BackendResult<()>;
    /// Copies `len` bytes at `src` to the host once all work enqueued before on `stream` has
    /// run. Blocks until the bytes are there.
    ///
    /// # Safety
    /// As for [`Backend::launch`], with `src` the input of `len` bytes.
    ///
    /// # Errors
    /// The stream carries an asynchronous error.
    unsafe fn read(
        &self,
        stream: &Self::Stream,
        src: DevicePtr,
        len: usize,
    ) -> BackendResult<Vec<u8>>;

    /// Hands pending work of `stream` to the device without waiting.
    ///
    /// # Errors
    /// The submission failed.
    fn flush(&self, stream: &Self::Stream) -> BackendResult<()>;
    /// Waits until all work enqueued on `stream` has run, at most `timeout`.
    /// Returns `false` when the time ran out, whatever error the stream carries: the runtime
    /// takes a stream that reports an error for one whose work has stopped (shutdown, slots
    /// handed back), so an error is reported only once the wait is over.
    ///
    /// # Errors
    /// The stream carries an asynchronous error (and its work has run, or the device cannot
    /// say: a lost context).
    fn synchronize(&self, stream: &Self::Stream, timeout: Option<Duration>) -> BackendResult<bool>;
    /// The asynchronous error the stream carries, if any (sticky).
    fn stream_error(&self, stream: &Self::Stream) -> Option<BackendError>;

    /// Records `event` at the current end of `stream`.
    ///
    /// # Errors
    /// The device refused.
    fn record(&self, event: &Self::Event, stream: &Self::Stream) -> BackendResult<()>;
    /// Makes later work on `stream` wait until `event` (as last recorded) completes; the host
    /// does not block.
    ///
    /// # Errors
    /// The device refused.
    fn wait(&self, stream: &Self::Stream, event: &Self::Event) -> BackendResult<()>;
    /// Whether `event` has completed (true if never recorded).
    ///
    /// # Errors
    /// The device reported an error.
    fn query(&self, event: &Self::Event) -> BackendResult<bool>;
    /// Waits until `event` completes, at most `timeout`; `false` when the time ran out.
    ///
    /// # Errors
    /// The device reported an error.
    fn event_synchronize(
        &self,
        event: &Self::Event,
        timeout: Option<Duration>,
    ) -> BackendResult<bool>;
    /// Time between two completed timing events.
    ///
    /// # Errors
    /// An event is not a timing event, was not recorded, or has not completed.
    fn elapsed(&self, start: &Self::Event, end: &Self::Event) -> BackendResult<Duration>;
    /// Brings a recycled event back to the never-recorded state.
    fn reset_event(&self, event: &Self::Event);

    /// Runs `callback` once all work enqueued before on `stream` has completed.
    ///
    /// # Errors
    /// The stream is broken; the callback is dropped without running.
    fn host_callback(&self, stream: &Self::Stream, callback: HostCallback) -> BackendResult<()>;
}
