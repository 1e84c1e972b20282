//! Graphs on CUDA: a graph's kernels (`chorus_core::Graph`) captured into one CUDA graph.
//!
//! `build` first runs the kernels once, for real, on a stream of the graph's own, after
//! synchronizing the context (so that what they read is complete and what they write, the
//! graph's own memory, is idle: `Backend::build_graph`'s contract). It then launches them
//! again, in order, while that stream *captures* (`cuStreamBeginCapture`, relaxed mode), which
//! records them instead of running them, and instantiates the result. The graph keeps that
//! stream: the nodes refer to its cuBLAS workspace (8 MiB) and scratch memory, which must live
//! as long as the graph and are used by one launch at a time (the runtime runs a graph on one
//! stream at a time, in order). When the graph is dropped (its launches complete), its stream
//! goes back to the device's idle graph streams ([`GraphStreams`]) and the next build takes
//! it: a build does not create a cuBLAS handle each time (nor a drop destroy one), each of
//! which synchronizes the device. (A graph with `index_select` is built like any other: its
//! fault word is graph memory, zeroed by a recorded fill before the kernel in every run, and
//! copied out of each run by the runtime.)
//!
//! # What may not happen during a capture
//! A cuBLAS handle's first products synchronize the device, and a device synchronization
//! anywhere in the process invalidates a capture in progress (measured on the H100: a new
//! stream's first cuBLASLt product on another thread made `cuStreamEndCapture` fail with
//! `CUDA_ERROR_STREAM_CAPTURE_INVALIDATED`; allocating or freeing device or page-locked memory,
//! creating streams and products on handles that had made one small product of each kind
//! before did not; destroying a cuBLAS handle did, as `compute-sanitizer` showed). Hence
//! [`building`]: a process-wide reader-writer lock (all devices share the primary contexts).
//! A build holds it exclusively (so builds are serialized too); a new handle
//! (`CudaStream::blas`) holds it shared while it is created and makes those first two small
//! products (the warm-up run above does the same for the graph's own handle before its
//! capture), and so does destroying a handle, a graph or a module, and what a new device does
//! (loading the module, creating and destroying a throwaway handle: seen to break a capture of
//! another device when tests ran in parallel). Shared, so that the first products of many new
//! handles (each a device synchronization) overlap instead of queueing.
//!
//! Code outside chorus (another library in the process) may still synchronize the device
//! during a capture. A broken capture is tried again, twice; if the third breaks too, the
//! build returns no CUDA graph and the runtime launches the graph's kernels one by one (the
//! same results, more launches; `CHORUS_CUDA_TRACE` reports it). But such synchronizations
//! have also crashed the process inside the driver (H100, CUDA 13.0 driver: a kernel launch
//! into a capture being broken, or destroying a stream or cuBLAS handle whose captures broke;
//! 4 of 6 runs of the ignored test `captures_survive_foreign_device_synchronizations`, which
//! synchronizes the device from another thread without pause). So: no device-wide
//! synchronization by other code while `Graph::capture` runs.

use crate::driver::{check, Context};
use crate::kernels;
use crate::module::Module;
use crate::stream::CudaStream;
use chorus_core::{BackendResult, Kernel};
use chorus_sync::{rank, Arc, RankedMutex};
use cudarc::driver::sys;

/// The process-wide lock that keeps device synchronizations out of captures (module docs).
///
/// A std `RwLock` (not a ranked lock: it has two modes, and no ranked lock is held when it is
/// taken; the build holds it while its launches take backend locks, which rank above
/// everything the build holds).
// chorus-sync has no reader-writer lock (see above).
#[allow(clippy::disallowed_types)]
// sync-shim: allowed (see the docs)
pub(crate) struct Building(std::sync::RwLock<()>);

impl Building {
    /// Taken by a build: no other build, and nothing that synchronizes the device, meanwhile.
    pub(crate) fn exclusive(&self) -> impl Drop + '_ {
        self.0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
    /// Taken by what synchronizes the device (a new cuBLAS handle's first products, destroying
    /// a handle, a graph or a module): any number at once, never during a build.
    pub(crate) fn shared(&self) -> impl Drop + '_ {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The lock (module docs).
// As `Building`.
#[allow(clippy::disallowed_types)]
pub(crate) fn building() -> &'static Building {
    // sync-shim: allowed (a process-wide lock; not loom-modelled)
    static BUILDING: Building = Building(std::sync::RwLock::new(()));
    &BUILDING
}

/// Idle graph streams of one device: a graph's stream (and its cuBLAS handle and workspace)
/// goes back here when the graph is dropped, and the next build takes it, so that capturing
/// graphs over and over does not create and destroy a cuBLAS handle each time (each of which
/// synchronizes the device).
#[derive(Debug)]
pub(crate) struct GraphStreams(RankedMutex<Vec<CudaStream>>);

/// Most idle graph streams kept (8 MiB of cuBLAS workspace each); more are destroyed.
const IDLE_GRAPH_STREAMS: usize = 64;

impl Default for GraphStreams {
    fn default() -> Self {
        GraphStreams(RankedMutex::new(rank::BACKEND_GRAPH_STREAMS, Vec::new()))
    }
}

impl GraphStreams {
    /// An idle graph stream of `ctx`'s device, or a new one.
    fn take(&self, ctx: &Arc<Context>) -> BackendResult<CudaStream> {
        // Popped first: the list's lock is not held while the stream is prepared.
        let idle = self.0.lock().pop();
        match idle {
            Some(stream) => {
                stream.bind()?;
                stream.reset_for_build();
                Ok(stream)
            }
            None => CudaStream::create_for_graph(ctx),
        }
    }

    /// Destroys every idle graph stream (`Device::empty_cache`).
    pub(crate) fn clear(&self) {
        let idle = std::mem::take(&mut *self.0.lock());
        // Destroyed with no lock held (as in `put`).
        drop(idle);
    }

    /// Keeps `stream` (idle: nothing enqueued on it runs any more) for a later build, unless
    /// enough are kept already.
    fn put(&self, stream: CudaStream) {
        let extra = {
            let mut idle = self.0.lock();
            if idle.len() < IDLE_GRAPH_STREAMS {
                idle.push(stream);
                None
            } else {
                Some(stream)
            }
        };
        // Destroyed (a cuBLAS handle: not during a capture, see `CudaStream`'s drop) with no
        // lock held.
        drop(extra);
    }
}

/// An instantiated CUDA graph and the stream it was captured on.
#[derive(Debug)]
pub struct CudaGraph {
    exec: sys::CUgraphExec,
    /// `Some` until the drop hands it back to `streams`.
    stream: Option<CudaStream>,
    streams: Arc<GraphStreams>,
}

// SAFETY: a CUgraphExec handle may be launched from any thread with its context current (the
// driver orders launches of one graph); it is destroyed once, in Drop. `CudaStream` is Send +
// Sync.
unsafe impl Send for CudaGraph {}
// SAFETY: as above.
unsafe impl Sync for CudaGraph {}

/// Captures `kernels` into a CUDA graph (module docs); `None` when the graph must not be one.
///
/// # Safety
/// As `Backend::build_graph`.
pub(crate) unsafe fn build(
    ctx: &Arc<Context>,
    streams: &Arc<GraphStreams>,
    module: &Module,
    kernels: &[Kernel],
    tf32: bool,
) -> BackendResult<Option<CudaGraph>> {
    if kernels.is_empty() {
        return Ok(None);
    }
    // The stream is taken before the lock is, so that an early return drops (and destroys the
    // cuBLAS handle of) the stream after releasing it.
    let stream = streams.take(ctx)?;
    let exclusive = building().exclusive();
    // The warm-up run (module docs).
    // SAFETY: the context is current (`create_for_graph` bound it).
    check(unsafe { sys::cuCtxSynchronize() }, "cuCtxSynchronize")?;
    // SAFETY: the caller's contract: the pointers are valid, what the kernels read is complete
    // once the context is synchronized, and what they write is the graph's alone.
    let warmed = unsafe { launch_all(&stream, module, kernels, tf32) };
    // Waited for even when a launch failed part way: the kernels launched before it write the
    // graph's memory, which the caller frees (and hands out again) as soon as this returns.
    let idle = stream.synchronize(None);
    warmed?;
    idle?;
    let mut failure = None;
    for _ in 0..CAPTURE_ATTEMPTS {
        // SAFETY: the caller's contract (as above).
        match unsafe { capture(&stream, module, kernels, tf32) } {
            Ok(exec) => {
                return Ok(Some(CudaGraph {
                    exec,
                    stream: Some(stream),
                    streams: Arc::clone(streams),
                }))
            }
            Err(e) => failure = Some(e),
        }
    }
    if std::env::var_os("CHORUS_CUDA_TRACE").is_some() {
        eprintln!("chorus-cuda: graph captures failed ({failure:?}); kernel by kernel instead");
    }
    // Kept, not destroyed: destroying the handle of broken captures has crashed (module docs);
    // and after the lock, which destroying an extra stream takes shared.
    drop(exclusive);
    streams.put(stream);
    Ok(None)
}

/// Captures of one graph tried before it falls back to kernel-by-kernel launches.
const CAPTURE_ATTEMPTS: usize = 3;

/// One capture of `kernels` on `stream` (idle), instantiated.
///
/// # Safety
/// As `build`, after its warm-up run.
unsafe fn capture(
    stream: &CudaStream,
    module: &Module,
    kernels: &[Kernel],
    tf32: bool,
) -> BackendResult<sys::CUgraphExec> {
    let mode = sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED;
    // SAFETY: a live stream of the current context (`create_for_graph` bound it), idle.
    let r = unsafe { sys::cuStreamBeginCapture_v2(stream.raw, mode) };
    check(r, "cuStreamBeginCapture")?;
    // SAFETY: the caller's contract covers every pointer for as long as the graph lives; the
    // capturing stream records the launches without running them.
    let launched = unsafe { launch_all(stream, module, kernels, tf32) };
    let mut graph = std::ptr::null_mut();
    // SAFETY: the stream is capturing (begun above); writes one graph handle (null if the
    // capture failed), destroyed below. Ending it also ends a broken capture.
    let ended = check(
        unsafe { sys::cuStreamEndCapture(stream.raw, &mut graph) },
        "cuStreamEndCapture",
    );
    let built = launched.and(ended).and_then(|()| {
        let mut exec = std::ptr::null_mut();
        // SAFETY: `graph` is the complete graph of the capture; writes one exec handle.
        check(
            unsafe { sys::cuGraphInstantiateWithFlags(&mut exec, graph, 0) },
            "cuGraphInstantiate",
        )
        .map(|()| exec)
    });
    if !graph.is_null() {
        // SAFETY: the graph of the capture, destroyed once; the exec does not need it.
        let _ = unsafe { sys::cuGraphDestroy(graph) };
    }
    built
}

/// Launches `kernels` in order on `stream`.
///
/// # Safety
/// As `kernels::launch` for each kernel.
unsafe fn launch_all(
    stream: &CudaStream,
    module: &Module,
    kernels: &[Kernel],
    tf32: bool,
) -> BackendResult<()> {
    for k in kernels {
        // SAFETY: forwarded from the caller.
        unsafe { kernels::launch(stream, module, k, tf32)? };
    }
    Ok(())
}

impl CudaGraph {
    /// Enqueues the graph on `stream`.
    ///
    /// # Safety
    /// As `Backend::launch_graph`.
    pub(crate) unsafe fn launch(&self, stream: &CudaStream) -> BackendResult<()> {
        stream.healthy()?;
        stream.bind()?;
        // SAFETY: a live exec and stream of the current context; the caller orders the launch.
        let r = unsafe { sys::cuGraphLaunch(self.exec, stream.raw) };
        stream.track(r, "cuGraphLaunch")
    }
}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        if stream.bind().is_err() {
            return;
        }
        {
            // Not during a capture (module docs); released before the stream may be destroyed,
            // whose cuBLAS handle takes the lock again.
            let _no_capture = building().shared();
            // SAFETY: the runtime drops a graph once its launches have completed; created once,
            // destroyed once. The stream (and its workspace) outlives it.
            let _ = unsafe { sys::cuGraphExecDestroy(self.exec) };
        }
        // The nodes that referred to the stream's old scratch buffers are gone; the stream
        // itself never ran anything after the build, so the next build may use it.
        stream.free_retired();
        self.streams.put(stream);
    }
}
