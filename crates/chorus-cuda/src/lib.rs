//! The CUDA backend of chorus, over cudarc with the driver, cuBLAS and NVRTC loaded at run time
//! (so this crate builds, lints and runs its non-GPU tests on machines without CUDA; every
//! entry point returns a typed error there instead of panicking).
//!
//! | runtime concept | here |
//! |---|---|
//! | stream (every pool slot) | its own non-blocking `CUstream` ([`CudaStream`]), with a cuBLAS handle created with the device (on its first GEMM with `lazy_blas`) and never shared |
//! | event | a `CUevent` from the core's event pool ([`CudaEvent`]; timing ones without `CU_EVENT_DISABLE_TIMING`) |
//! | memory | the core's caching allocator over `cuMemAlloc` segments ([`Segment`]): one driver allocation per segment, never per tensor, and no per-allocation events |
//! | completion handler | `cuLaunchHostFunc` with a trampoline that only runs the runtime's hand-off closure (which queues the user's handler for the completion thread) |
//! | matmul | `cublasGemmStridedBatchedEx`, f32 compute (TF32 only when [`Config::allow_tf32`]); `linear`'s bias and ReLU/tanh-GELU fused into the GEMM by a cuBLASLt epilogue, other activations in one extra kernel |
//! | every other op | CUDA C kernels (`kernels/*.cu`, one file per kernel family, one program) compiled by NVRTC once per GPU architecture and process, kept on disk across processes (`module.rs`); loaded when the device starts |
//! | randn | Philox4x32-10 + Box–Muller with IEEE-rounded intrinsics: the same bits as the CPU backend |
//!
//! # Examples
//! ```no_run
//! let device = chorus_cuda::device(0)?;
//! let x = chorus_core::Tensor::randn(&device, &[256, 256], 7)?;
//! let s = x.matmul(&x)?.sum_all()?.item::<f32>()?;
//! # Ok::<(), chorus_core::Error>(())
//! ```

mod blas;
mod driver;
mod event;
mod graph;
mod kernel_cache;
mod kernels;
mod lt;
mod memory;
mod module;
mod stream;

use chorus_core::{
    Backend, BackendError, BackendResult, Config, DevicePtr, HostCallback, Kernel, StreamId,
};
use chorus_sync::Arc;
use driver::Context;
use module::ModuleCache;
use std::time::Duration;

pub use event::CudaEvent;
pub use memory::Segment;
pub use stream::CudaStream;

/// One GPU as `chorus info` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GpuInfo {
    /// Device ordinal.
    pub ordinal: u32,
    /// Marketing name (`NVIDIA H100 80GB HBM3`).
    pub name: String,
    /// Total memory in bytes.
    pub memory: usize,
    /// Compute capability (major, minor).
    pub compute_capability: (i32, i32),
}

/// Number of CUDA devices on this machine (0 when no driver is installed).
pub fn device_count() -> usize {
    driver::device_count()
}

/// Whether at least one CUDA device can be used.
pub fn is_available() -> bool {
    device_count() > 0
}

/// Every CUDA device of this machine.
///
/// # Errors
/// The driver failed while answering (no driver at all gives an empty list).
pub fn gpus() -> chorus_core::Result<Vec<GpuInfo>> {
    (0..device_count() as u32)
        .map(|ordinal| {
            let ctx = Context::retain(ordinal).map_err(|e| backend_err(ordinal, e))?;
            Ok(GpuInfo {
                ordinal,
                name: ctx.name(),
                memory: ctx.total_memory().unwrap_or(0),
                compute_capability: ctx
                    .compute_capability()
                    .map_err(|e| backend_err(ordinal, e))?,
            })
        })
        .collect()
}

/// How the kernel program was obtained in this process: NVRTC compilations and loads from the
/// on-disk cache. Together at most one per GPU architecture, however many devices and threads.
pub fn kernel_builds() -> (usize, usize) {
    use chorus_sync::atomic::Ordering::Relaxed;
    (
        module::COMPILATIONS.load(Relaxed),
        module::DISK_LOADS.load(Relaxed),
    )
}

fn backend_err(ordinal: u32, source: BackendError) -> chorus_core::Error {
    chorus_core::Error::Unavailable {
        backend: "cuda",
        ordinal,
        source,
    }
}

/// CUDA device `ordinal` with the settings of the `CHORUS_*` environment variables (including
/// `CHORUS_CUDA_TF32` and `CHORUS_CUDA_LAZY_BLAS`).
///
/// # Errors
/// No driver or no such device, an invalid environment variable, or a driver failure.
pub fn device(ordinal: u32) -> chorus_core::Result<chorus_core::Device> {
    device_with(Config::builder().from_env()?.ordinal(ordinal).build()?)
}

/// CUDA device [`Config::ordinal`] with explicit settings: the runtime's, and the CUDA options
/// [`Config::allow_tf32`] and [`Config::lazy_blas`] ([`Config::backend`] is not read). An
/// [`Opener`](chorus_core::Opener).
///
/// # Errors
/// No driver or no such device, or a driver failure.
pub fn device_with(config: Config) -> chorus_core::Result<chorus_core::Device> {
    let ordinal = config.ordinal();
    let backend = CudaBackend::new(&config).map_err(|e| backend_err(ordinal, e))?;
    chorus_core::Device::with_backend(backend, config)
}

/// The CUDA backend of one device.
#[derive(Debug)]
pub struct CudaBackend {
    ctx: Arc<Context>,
    modules: ModuleCache,
    /// [`Config::allow_tf32`] of the device's config.
    allow_tf32: bool,
    /// [`Config::lazy_blas`] of the device's config.
    lazy_blas: bool,
    name: String,
    graph_streams: Arc<graph::GraphStreams>,
}

impl CudaBackend {
    /// The backend of device [`Config::ordinal`] (retains its primary context), with the CUDA
    /// options of `config` ([`Config::allow_tf32`], [`Config::lazy_blas`]).
    ///
    /// # Errors
    /// No driver, no such device, or a driver failure.
    pub fn new(config: &Config) -> BackendResult<CudaBackend> {
        kernels::attention::mode()?;
        let ctx = Arc::new(Context::retain(config.ordinal())?);
        let name = ctx.name();
        let backend = CudaBackend {
            ctx,
            modules: ModuleCache::default(),
            allow_tf32: config.allow_tf32(),
            lazy_blas: config.lazy_blas(),
            name,
            graph_streams: Arc::default(),
        };
        // One-time costs are paid here rather than inside the first requests: loading (or
        // compiling) the kernels, and cuBLAS's library initialization (seconds when its
        // libraries are not in the page cache yet).
        backend.modules.get(&backend.ctx)?;
        driver::traced("cuBLAS init", || blas::warm_up(&backend.ctx))?;
        Ok(backend)
    }
}

/// Runs a runtime host callback from the driver's callback thread.
///
/// # Safety
/// `data` is a `Box<HostCallback>` leaked by [`CudaBackend::host_callback`], passed here once.
unsafe extern "C" fn trampoline(data: *mut std::ffi::c_void) {
    // SAFETY: caller's contract: we own the box now.
    let callback = unsafe { Box::from_raw(data.cast::<HostCallback>()) };
    // The runtime's callbacks only queue work for its completion thread and do not panic; a
    // panic must still not unwind into the driver.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(callback));
}

impl Backend for CudaBackend {
    type Stream = CudaStream;
    type Event = CudaEvent;
    type Segment = Segment;
    type Graph = graph::CudaGraph;

    fn name(&self) -> &'static str {
        "cuda"
    }
    fn ordinal(&self) -> u32 {
        self.ctx.ordinal
    }
    fn describe(&self) -> String {
        let (major, minor) = self.ctx.compute_capability().unwrap_or((0, 0));
        let gib = self.ctx.total_memory().unwrap_or(0) as f64 / f64::from(1u32 << 30);
        format!(
            "{} ({gib:.1} GiB, compute capability {major}.{minor})",
            self.name
        )
    }
    fn total_memory(&self) -> Option<usize> {
        self.ctx.total_memory()
    }

    fn fuses_attention(&self, s: usize, e: usize, ev: usize) -> bool {
        kernels::attention::fuses(s, e, ev)
    }

    fn create_stream(&self, _id: StreamId) -> BackendResult<CudaStream> {
        let stream = driver::traced("stream", || CudaStream::create(&self.ctx))?;
        if !self.lazy_blas {
            stream.blas()?;
        }
        Ok(stream)
    }
    fn create_event(&self, timing: bool) -> BackendResult<CudaEvent> {
        CudaEvent::create(&self.ctx, timing)
    }
    fn alloc_segment(&self, bytes: usize) -> BackendResult<(Segment, DevicePtr)> {
        Segment::alloc(&self.ctx, bytes)
    }
    unsafe fn free_segment(&self, segment: Segment) {
        drop(segment);
    }

    unsafe fn launch(&self, stream: &CudaStream, kernel: Kernel) -> BackendResult<()> {
        stream.healthy()?;
        stream.bind()?;
        let module = self.modules.get(&self.ctx)?;
        // SAFETY: forwarded contract of Backend::launch; the context is current.
        unsafe { kernels::launch(stream, module, &kernel, self.allow_tf32) }
    }
    unsafe fn build_graph(&self, kernels: &[Kernel]) -> BackendResult<Option<graph::CudaGraph>> {
        self.ctx.bind()?;
        let module = self.modules.get(&self.ctx)?;
        // SAFETY: forwarded contract of Backend::build_graph.
        unsafe {
            graph::build(
                &self.ctx,
                &self.graph_streams,
                module,
                kernels,
                self.allow_tf32,
            )
        }
    }
    fn release_idle(&self) {
        self.graph_streams.clear();
    }
    unsafe fn launch_graph(
        &self,
        stream: &CudaStream,
        graph: &graph::CudaGraph,
    ) -> BackendResult<()> {
        // SAFETY: forwarded contract of Backend::launch_graph.
        unsafe { graph.launch(stream) }
    }
    unsafe fn write(
        &self,
        stream: &CudaStream,
        dst: DevicePtr,
        data: Vec<u8>,
    ) -> BackendResult<()> {
        stream.healthy()?;
        if data.is_empty() {
            return Ok(());
        }
        stream.bind()?;
        // SAFETY: `dst` is writable for `data.len()` bytes (caller); the source is pageable
        // host memory, which the driver copies to its staging area before returning, so
        // `data` may be dropped right after the call.
        let r = unsafe {
            cudarc::driver::sys::cuMemcpyHtoDAsync_v2(
                dst.0,
                data.as_ptr().cast(),
                data.len(),
                stream.raw,
            )
        };
        stream.track(r, "cuMemcpyHtoDAsync")
    }
    unsafe fn read(
        &self,
        stream: &CudaStream,
        src: DevicePtr,
        len: usize,
    ) -> BackendResult<Vec<u8>> {
        stream.read(src.0, len)
    }

    fn flush(&self, stream: &CudaStream) -> BackendResult<()> {
        // Launches are submitted as they are made.
        stream.healthy()
    }
    fn synchronize(&self, stream: &CudaStream, timeout: Option<Duration>) -> BackendResult<bool> {
        stream.synchronize(timeout)
    }
    fn stream_error(&self, stream: &CudaStream) -> Option<BackendError> {
        stream.error()
    }

    fn record(&self, event: &CudaEvent, stream: &CudaStream) -> BackendResult<()> {
        event.record(stream)
    }
    fn wait(&self, stream: &CudaStream, event: &CudaEvent) -> BackendResult<()> {
        event.wait_on(stream)
    }
    fn query(&self, event: &CudaEvent) -> BackendResult<bool> {
        event.query()
    }
    fn event_synchronize(
        &self,
        event: &CudaEvent,
        timeout: Option<Duration>,
    ) -> BackendResult<bool> {
        event.synchronize(timeout)
    }
    fn elapsed(&self, start: &CudaEvent, end: &CudaEvent) -> BackendResult<Duration> {
        start.elapsed(end)
    }
    fn reset_event(&self, event: &CudaEvent) {
        event.reset();
    }

    fn host_callback(&self, stream: &CudaStream, callback: HostCallback) -> BackendResult<()> {
        stream.healthy()?;
        stream.bind()?;
        let data = Box::into_raw(Box::new(callback));
        // SAFETY: the trampoline takes ownership of `data` exactly once when the driver calls
        // it. (If the context dies before the callback runs, the driver never calls it and the
        // box leaks; the runtime has already failed with the context's error then.)
        let r = unsafe {
            cudarc::driver::sys::cuLaunchHostFunc(stream.raw, Some(trampoline), data.cast())
        };
        if r != cudarc::driver::sys::CUresult::CUDA_SUCCESS {
            // SAFETY: the driver refused the callback, so it will never call the trampoline;
            // we still own the box.
            drop(unsafe { Box::from_raw(data) });
        }
        stream.track(r, "cuLaunchHostFunc")
    }
}
