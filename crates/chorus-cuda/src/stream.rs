//! A pool stream: a non-blocking `CUstream`, its cuBLAS handle (created with the device, or on the first GEMM with `lazy_blas`),
//! a page-locked staging buffer for reads, and the stream's error state.
//!
//! Waiting (in the default `hybrid` mode of `CHORUS_CUDA_SCHED`, `driver.rs`): a host thread
//! that waits for a stream without a time limit spins, yielding its core (the context's
//! `CU_CTX_SCHED_YIELD`, lowest latency), while no more threads than the machine has cores are
//! waiting that way; the threads beyond sleep on a blocking-synchronization event recorded on
//! the stream instead, so that 64 waiting threads on 16 cores do not take the cores from the
//! threads that launch work. (Another thread recording the event again before this one waits
//! only makes this one wait for more work of the same stream, never less.)
//!
//! Errors: a failed driver call on the stream makes the stream's error sticky: every later call
//! on this stream returns it; other streams are unaffected. (A fault that corrupts the CUDA
//! context itself, such as an illegal address, is reported by the driver on every stream,
//! because CUDA poisons the whole context.) Bad input a kernel finds on the device (an index out
//! of range) is not a stream error: the kernel reports it in its launch's fault word, which
//! the runtime reads back to poison the outputs (`chorus_core::kernel::FaultWord`).

use crate::blas::Blas;
use crate::driver::{check, Context};
use crate::memory::{Pinned, Segment};
use chorus_core::{BackendError, BackendResult};
use chorus_sync::atomic::{AtomicBool, Ordering};
use chorus_sync::{rank, Arc, RankedMutex};
use cudarc::driver::sys::{self, CUresult};
// sync-shim: allowed (a process-wide counter of spinning waiters; not loom-modelled)
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

/// Threads spinning in [`CudaStream::wait`] now, over all streams.
// sync-shim: allowed (see the import)
static SPINNING: AtomicUsize = AtomicUsize::new(0);

/// Most threads that wait by spinning at once: the machine's cores (no limit unless the
/// waiting mode is `hybrid`, `driver::cap_spinning`).
fn max_spinning() -> usize {
    // sync-shim: allowed (computed once; reading it is a plain load)
    static MAX: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| {
        if crate::driver::cap_spinning() {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            usize::MAX
        }
    })
}

/// Staging buffers above this size are not kept; larger reads go to pageable memory directly.
const MAX_STAGING: usize = 16 << 20;

/// One stream of the pool.
#[derive(Debug)]
pub struct CudaStream {
    pub(crate) raw: sys::CUstream,
    ctx: Arc<Context>,
    // sync-shim: allowed (create-once cell for the cuBLAS handle; not loom-modelled)
    blas: std::sync::OnceLock<Blas>,
    /// Held while the handle is made (one attempt at a time; a failed one is tried again).
    blas_init: RankedMutex<()>,
    staging: RankedMutex<Option<Pinned>>,
    /// Device scratch memory for multi-pass kernels, used in stream order only.
    scratch: RankedMutex<Option<Segment>>,
    /// A graph's stream (`crate::graph`): it captures and never runs, so scratch memory that
    /// grows keeps its old segments (the graph's nodes refer to them) instead of waiting.
    for_graph: bool,
    /// Those old segments.
    retired: RankedMutex<Vec<Segment>>,
    failed: AtomicBool,
    sticky: RankedMutex<Option<BackendError>>,
    /// A `CU_EVENT_BLOCKING_SYNC` event that threads beyond [`max_spinning`] sleep on.
    sleep_event: sys::CUevent,
}

// SAFETY: a CUstream handle may be used from any thread with its context current; the driver
// serializes concurrent submissions to one stream. Every other field is Send + Sync or is
// only touched through locks (staging, scratch).
unsafe impl Send for CudaStream {}
// SAFETY: as above.
unsafe impl Sync for CudaStream {}

impl CudaStream {
    /// Creates the stream a graph is captured on (`crate::graph`).
    pub(crate) fn create_for_graph(ctx: &Arc<Context>) -> BackendResult<CudaStream> {
        let mut s = Self::create(ctx)?;
        s.for_graph = true;
        Ok(s)
    }

    /// Creates a stream (non-blocking: no implicit ordering with the legacy stream).
    pub(crate) fn create(ctx: &Arc<Context>) -> BackendResult<CudaStream> {
        ctx.bind()?;
        let mut raw = std::ptr::null_mut();
        check(
            // SAFETY: the context is current; writes one stream handle, destroyed in Drop.
            unsafe {
                sys::cuStreamCreate(&mut raw, sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32)
            },
            "cuStreamCreate",
        )?;
        // The stream's other parts; should one fail, the stream is destroyed (once, here).
        let parts = || -> BackendResult<_> {
            let mut sleep_event = std::ptr::null_mut();
            let flags = sys::CUevent_flags::CU_EVENT_BLOCKING_SYNC as u32
                | sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32;
            // SAFETY: the context is current; writes one event handle, destroyed in Drop.
            let r = unsafe { sys::cuEventCreate(&mut sleep_event, flags) };
            check(r, "cuEventCreate")?;
            Ok(sleep_event)
        };
        let sleep_event = match parts() {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: created above, nothing enqueued yet.
                let _ = unsafe { sys::cuStreamDestroy_v2(raw) };
                return Err(e);
            }
        };
        Ok(CudaStream {
            raw,
            ctx: Arc::clone(ctx),
            blas: std::sync::OnceLock::new(), // sync-shim: allowed (see the field)
            blas_init: RankedMutex::new(rank::BACKEND_BLAS_INIT, ()),
            staging: RankedMutex::new(rank::BACKEND_STAGING, None),
            scratch: RankedMutex::new(rank::BACKEND_SCRATCH, None),
            for_graph: false,
            retired: RankedMutex::new(rank::BACKEND_RETIRED_SCRATCH, Vec::new()),
            failed: AtomicBool::new(false),
            sticky: RankedMutex::new(rank::BACKEND_STREAM_ERROR, None),
            sleep_event,
        })
    }

    /// Frees the scratch segments a graph's nodes referred to (`for_graph`), once that graph
    /// is gone.
    pub(crate) fn free_retired(&self) {
        self.retired.lock().clear();
    }

    /// The stream's cuBLAS handle, created on first use: holding the graph-build lock shared (a new
    /// handle's first products synchronize the device, which would break a capture in
    /// progress: `crate::graph`), except on a graph's own stream, whose build holds it. A
    /// failed creation (out of memory for its workspace, say) is reported and tried again at
    /// the next use, not kept.
    pub(crate) fn blas(&self) -> BackendResult<&Blas> {
        if let Some(b) = self.blas.get() {
            return Ok(b);
        }
        let _one_at_a_time = self.blas_init.lock();
        if let Some(b) = self.blas.get() {
            return Ok(b);
        }
        let made = {
            let _no_capture = (!self.for_graph).then(|| crate::graph::building().shared());
            crate::driver::traced("cuBLAS handle", || Blas::new(&self.ctx, self.raw))?
        };
        Ok(self.blas.get_or_init(|| made))
    }

    /// Forgets a graph stream's sticky error before its next build. A graph's stream fails
    /// only inside a build (a capture broken by a device synchronization elsewhere, or the
    /// warm-up run), which is over once the stream is idle again; the next build reports its
    /// own errors rather than an earlier graph's.
    pub(crate) fn reset_for_build(&self) {
        debug_assert!(self.for_graph);
        *self.sticky.lock() = None;
        self.failed.store(false, Ordering::Release);
    }

    /// The sticky error, if the stream has one.
    pub(crate) fn error(&self) -> Option<BackendError> {
        if self.failed.load(Ordering::Acquire) {
            return self.sticky.lock().clone();
        }
        None
    }

    /// Makes `e` the stream's sticky error (the first one wins) and returns the sticky error.
    pub(crate) fn fail(&self, e: BackendError) -> BackendError {
        let mut sticky = self.sticky.lock();
        let e = sticky.get_or_insert(e).clone();
        self.failed.store(true, Ordering::Release);
        e
    }

    /// `Err` with the sticky error, if any.
    pub(crate) fn healthy(&self) -> BackendResult<()> {
        self.error().map_or(Ok(()), Err)
    }

    /// Converts the result of a call on this stream, making a failure sticky.
    pub(crate) fn track(&self, r: CUresult, api: &'static str) -> BackendResult<()> {
        check(r, api).map_err(|e| self.fail(e))
    }

    /// Binds the context to the calling thread.
    pub(crate) fn bind(&self) -> BackendResult<()> {
        self.ctx.bind()
    }

    /// Waits for all work enqueued so far, at most `timeout`; `false` when the time ran out.
    /// A sticky error is reported after the wait, not instead of it: the work enqueued before
    /// (or after) the failure may still be running, and a caller that gets an error treats the
    /// stream as done (shutdown, a slot handed back).
    pub(crate) fn synchronize(&self, timeout: Option<Duration>) -> BackendResult<bool> {
        self.bind()?;
        self.wait(timeout)
    }

    /// [`CudaStream::synchronize`] for callers that checked the stream and bound the context.
    fn wait(&self, timeout: Option<Duration>) -> BackendResult<bool> {
        let done = match timeout {
            None => {
                let spin = SPINNING.fetch_add(1, Ordering::Relaxed) < max_spinning();
                let r = if spin {
                    // SAFETY: live stream, context current.
                    let r = unsafe { sys::cuStreamSynchronize(self.raw) };
                    check(r, "cuStreamSynchronize")
                } else {
                    // SAFETY: live event and stream of the current context; the event is
                    // this stream's, destroyed only with it.
                    let r = unsafe { sys::cuEventRecord(self.sleep_event, self.raw) };
                    check(r, "cuEventRecord").and_then(|()| {
                        // SAFETY: as above.
                        let r = unsafe { sys::cuEventSynchronize(self.sleep_event) };
                        check(r, "cuEventSynchronize")
                    })
                };
                SPINNING.fetch_sub(1, Ordering::Relaxed);
                r.map_err(|e| self.fail(e)).map(|()| true)?
            }
            Some(t) => poll(t, || {
                // SAFETY: live stream, context current.
                match unsafe { sys::cuStreamQuery(self.raw) } {
                    CUresult::CUDA_SUCCESS => Ok(true),
                    CUresult::CUDA_ERROR_NOT_READY => Ok(false),
                    other => self.track(other, "cuStreamQuery").map(|()| false),
                }
            })?,
        };
        // Work still running is reported as such, whatever the stream's error (see
        // `synchronize`).
        if done {
            self.healthy()?;
        }
        Ok(done)
    }

    /// Runs `f` with the address of at least `bytes` of this stream's scratch memory, holding
    /// it (so the kernels `f` enqueues use it in stream order without another thread's kernels
    /// in between).
    pub(crate) fn with_scratch<R>(
        &self,
        bytes: usize,
        f: impl FnOnce(u64) -> BackendResult<R>,
    ) -> BackendResult<R> {
        let mut scratch = self.scratch.lock();
        if scratch.as_ref().is_none_or(|s| s.len() < bytes) {
            if self.for_graph {
                // Captured nodes refer to the old buffer: it lives as long as the graph.
                self.retired.lock().extend(scratch.take());
            } else if scratch.is_some() {
                // Earlier kernels of this stream may still use the old buffer.
                self.synchronize(None)?;
            }
            *scratch = None;
            let (segment, _) = Segment::alloc(&self.ctx, bytes.next_power_of_two())?;
            *scratch = Some(segment);
        }
        f(scratch.as_ref().expect("allocated above").ptr())
    }

    /// Copies `len` bytes at device address `src` to the host after all earlier work.
    pub(crate) fn read(&self, src: sys::CUdeviceptr, len: usize) -> BackendResult<Vec<u8>> {
        self.healthy()?;
        self.bind()?;
        let mut out = vec![0u8; len];
        if len == 0 {
            self.wait(None)?;
            return Ok(out);
        }
        if len > MAX_STAGING {
            // Pageable destination: the driver stages it and returns once the copy is done.
            self.track(
                // SAFETY: `out` has `len` writable bytes; `src` is readable for `len` bytes (caller
                // of Backend::read); the copy is ordered after earlier work on the stream.
                unsafe { sys::cuMemcpyDtoHAsync_v2(out.as_mut_ptr().cast(), src, len, self.raw) },
                "cuMemcpyDtoHAsync",
            )?;
            self.wait(None)?;
            return Ok(out);
        }
        let mut staging = self.staging.lock();
        if staging.as_ref().is_none_or(|p| p.len() < len) {
            *staging = Some(Pinned::alloc(&self.ctx, len.next_power_of_two().max(4096))?);
        }
        let buf = staging.as_ref().expect("allocated above");
        self.track(
            // SAFETY: `buf` is page-locked memory of at least `len` bytes, held (through the lock)
            // until the stream has finished the copy below; `src` as above.
            unsafe { sys::cuMemcpyDtoHAsync_v2(buf.host().cast(), src, len, self.raw) },
            "cuMemcpyDtoHAsync",
        )?;
        self.wait(None)?;
        // SAFETY: the copy completed (stream synchronized); `buf` holds `len` initialized bytes
        // and `out` has room for them; they do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(buf.host(), out.as_mut_ptr(), len) };
        Ok(out)
    }
}

/// Polls `done` with a growing back-off until it says true or `timeout` has passed.
pub(crate) fn poll(
    timeout: Duration,
    mut done: impl FnMut() -> BackendResult<bool>,
) -> BackendResult<bool> {
    let start = Instant::now();
    let mut pause = Duration::from_micros(5);
    loop {
        if done()? {
            return Ok(true);
        }
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            return Ok(false);
        }
        chorus_sync::thread::sleep(pause.min(timeout - elapsed));
        pause = (pause * 2).min(Duration::from_millis(1));
    }
}

impl Drop for CudaStream {
    fn drop(&mut self) {
        // The cuBLAS handle goes first, while its stream still exists; destroying it
        // synchronizes the device, so not during a graph capture (`crate::graph`). (A graph's
        // stream is dropped after its build or its exec released the lock.)
        if let Some(blas) = self.blas.take() {
            let _no_capture = crate::graph::building().shared();
            drop(blas);
        }
        if self.ctx.bind().is_ok() {
            // SAFETY: the runtime synchronizes every stream before dropping it, so nothing
            // waits on the event; event and stream were created once and are destroyed once.
            unsafe {
                let _ = sys::cuEventDestroy_v2(self.sleep_event);
                let _ = sys::cuStreamDestroy_v2(self.raw);
            }
        }
    }
}
