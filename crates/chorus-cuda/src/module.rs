//! The CUDA C kernels (`kernels/*.cu`, assembled into one program: [`SOURCE`]), compiled by
//! NVRTC once per device and kept loaded.
//!
//! Two levels, both `OnceLock`s, so that each step runs exactly once even when 64 threads ask
//! at the same moment (the others block until it is done, then all share the result, an error
//! included), and every later call is one atomic load:
//! - the cubin, compiled by NVRTC for the device's exact architecture (`sm_XY`, so the driver
//!   JITs nothing), once per architecture per process ([`cubin`]): every device of that
//!   architecture, and every `Device` created later, reuses it;
//! - the loaded module (`cuModuleLoadData`, milliseconds), once per backend
//!   ([`ModuleCache::get`]), because a module belongs to a context.

use crate::driver::{check, Context};
use crate::kernel_cache;
use chorus_core::{BackendError, BackendResult};
use chorus_sync::atomic::{AtomicUsize, Ordering};
use chorus_sync::{rank, Arc, RankedMutex};
use cudarc::driver::sys;
use cudarc::nvrtc::sys::{self as nvrtc, nvrtcResult};
use std::ffi::{c_char, CStr, CString};

/// The CUDA C source of every non-BLAS kernel: one NVRTC program, the `.cu` file of each kernel
/// family (next to its launch code in `kernels/`) concatenated in this fixed order, `common.cu`
/// (types, macros, device helpers) first. One program, one module, one cache key
/// (`kernel_cache` hashes this text). `scripts/check-cuda-kernels` reads this list from here:
/// keep one `include_str!("kernels/<name>.cu")` per line.
pub(crate) const SOURCE: &str = concat!(
    include_str!("kernels/common.cu"),
    include_str!("kernels/elementwise.cu"),
    include_str!("kernels/copy.cu"),
    include_str!("kernels/reduce.cu"),
    include_str!("kernels/softmax.cu"),
    include_str!("kernels/norm.cu"),
    include_str!("kernels/conv.cu"),
    include_str!("kernels/attention.cu"),
);

macro_rules! functions {
    ($($variant:ident = $name:literal,)*) => {
        /// A kernel of the program ([`SOURCE`]), by its `extern "C"` name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(usize)]
        pub(crate) enum Func { $($variant,)* }
        /// Every function name, in `Func` order.
        const NAMES: &[&str] = &[$($name,)*];
    };
}

functions! {
    FillF32 = "fill_f32",
    FillI64 = "fill_i64",
    RandnF32 = "randn_f32",
    CopyU16 = "copy_strided_u16",
    CopyU32 = "copy_strided_u32",
    CopyU64 = "copy_strided_u64",
    BinaryF32 = "binary_f32",
    BinaryI64 = "binary_i64",
    ReduceF32 = "reduce_f32",
    ReduceI64 = "reduce_i64",
    ReducePartialF32 = "reduce_partial_f32",
    ReduceFinishF32 = "reduce_finish_f32",
    UnaryF32 = "unary_f32",
    BiasActF32 = "bias_act_f32",
    SoftmaxF32 = "softmax_f32",
    ArgReduceF32 = "arg_reduce_f32",
    LayerNormF32 = "layer_norm_f32",
    GroupNormF32 = "group_norm_f32",
    Conv2dF32 = "conv2d_f32",
    AdaptiveAvgPool2dF32 = "adaptive_avg_pool2d_f32",
    IndexSelectU16 = "index_select_u16",
    IndexSelectU32 = "index_select_u32",
    IndexSelectU64 = "index_select_u64",
    AttentionF32 = "attention_f32",
}

/// A loaded module and its functions.
#[derive(Debug)]
pub(crate) struct Module {
    raw: sys::CUmodule,
    funcs: Vec<sys::CUfunction>,
    ctx: Arc<Context>,
}

// SAFETY: module and function handles may be used from any thread with the context current;
// the module is immutable after loading.
unsafe impl Send for Module {}
// SAFETY: as above.
unsafe impl Sync for Module {}

impl Module {
    /// The handle of `f`.
    pub(crate) fn func(&self, f: Func) -> sys::CUfunction {
        self.funcs[f as usize]
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        if self.ctx.bind().is_ok() {
            // Unloading may synchronize the device: not during another device's graph capture.
            let _no_capture = crate::graph::building().shared();
            // SAFETY: loaded once by cuModuleLoadData; dropped after every stream using its
            // functions has been synchronized (the backend owns the cache and drops last).
            let _ = unsafe { sys::cuModuleUnload(self.raw) };
        }
    }
}

/// NVRTC compilations of the program in this process.
pub(crate) static COMPILATIONS: AtomicUsize = AtomicUsize::new(0);
/// Programs taken from the on-disk cache instead (see `kernel_cache`).
pub(crate) static DISK_LOADS: AtomicUsize = AtomicUsize::new(0);

/// Compile-once cache of the module of one device.
#[derive(Debug, Default)]
pub(crate) struct ModuleCache {
    // Compile-once cell: this backend is not loom-modelled, and OnceLock gives lock-free reads
    // after initialization. sync-shim: allowed (see above)
    cell: std::sync::OnceLock<Result<Arc<Module>, BackendError>>,
}

impl ModuleCache {
    /// The module, compiling and loading it on first use.
    pub(crate) fn get(&self, ctx: &Arc<Context>) -> BackendResult<&Arc<Module>> {
        self.cell
            .get_or_init(|| crate::driver::traced("module load", || load(ctx).map(Arc::new)))
            .as_ref()
            .map_err(Clone::clone)
    }
}

fn nvrtc_check(r: nvrtcResult, api: &'static str) -> BackendResult<()> {
    if r == nvrtcResult::NVRTC_SUCCESS {
        return Ok(());
    }
    // SAFETY: returns a pointer to a static string for any result code.
    let text = unsafe { CStr::from_ptr(nvrtc::nvrtcGetErrorString(r)) };
    Err(BackendError::Call {
        api,
        message: text.to_string_lossy().into_owned(),
    })
}

/// Compiles [`SOURCE`] for the device of `ctx` and loads it.
fn load(ctx: &Arc<Context>) -> BackendResult<Module> {
    let cubin = cubin(ctx.compute_capability()?)?;
    ctx.bind()?;
    // Loading code into the context may synchronize it: not during another device's capture.
    let _no_capture = crate::graph::building().shared();
    let mut raw = std::ptr::null_mut();
    check(
        // SAFETY: `cubin` is a complete cubin image produced by NVRTC for this device; the
        // context is current; writes one module handle.
        unsafe { sys::cuModuleLoadData(&mut raw, cubin.as_ptr().cast()) },
        "cuModuleLoadData",
    )?;
    let mut module = Module {
        raw,
        funcs: Vec::with_capacity(NAMES.len()),
        ctx: Arc::clone(ctx),
    };
    for name in NAMES {
        let c = CString::new(*name).expect("kernel names have no NUL");
        let mut f = std::ptr::null_mut();
        check(
            // SAFETY: valid module handle and NUL-terminated name; writes one function handle.
            unsafe { sys::cuModuleGetFunction(&mut f, module.raw, c.as_ptr()) },
            "cuModuleGetFunction",
        )
        .map_err(|e| BackendError::Call {
            api: "cuModuleGetFunction",
            message: format!("{name}: {e}"),
        })?;
        module.funcs.push(f);
    }
    Ok(module)
}

/// A compile-once cell per architecture.
/// The registry: one compile-once cell per compute capability.
type Registry = RankedMutex<Vec<((i32, i32), CubinCell)>>;
type CubinCell = Arc<std::sync::OnceLock<Result<Vec<u8>, BackendError>>>; // sync-shim: allowed (see ModuleCache)

/// The cubin for compute capability `cc`, compiled on first use (once per process).
fn cubin(cc: (i32, i32)) -> BackendResult<Arc<Vec<u8>>> {
    // sync-shim: allowed (process-wide registry, created on first use; not loom-modelled)
    static CELLS: std::sync::LazyLock<Registry> =
        std::sync::LazyLock::new(|| RankedMutex::new(rank::BACKEND_MODULE, Vec::new())); // sync-shim: allowed (as above)
    let cell = {
        let mut cells = CELLS.lock();
        match cells.iter().find(|(k, _)| *k == cc) {
            Some((_, c)) => Arc::clone(c),
            None => {
                let c = CubinCell::default();
                cells.push((cc, Arc::clone(&c)));
                c
            }
        }
    };
    // Compiled outside the registry lock: another architecture never waits for this one.
    let result = cell.get_or_init(|| {
        let arch = format!("--gpu-architecture=sm_{}{}", cc.0, cc.1);
        let version = nvrtc_version()?;
        if let Some(cubin) = kernel_cache::load(SOURCE, &arch, version) {
            DISK_LOADS.fetch_add(1, Ordering::Relaxed);
            return Ok(cubin);
        }
        COMPILATIONS.fetch_add(1, Ordering::Relaxed);
        let cubin = crate::driver::traced("NVRTC compile", || compile(&arch))?;
        kernel_cache::store(SOURCE, &arch, version, &cubin);
        Ok(cubin)
    });
    result
        .as_ref()
        .map(|c| Arc::new(c.clone()))
        .map_err(Clone::clone)
}

/// NVRTC's (major, minor) version.
fn nvrtc_version() -> BackendResult<(i32, i32)> {
    if !crate::driver::nvrtc_present() {
        return Err(BackendError::Call {
            api: "dlopen(libnvrtc)",
            message: "NVRTC (the CUDA runtime compiler library) is not installed".into(),
        });
    }
    let (mut major, mut minor) = (0, 0);
    nvrtc_check(
        // SAFETY: writes two ints.
        unsafe { nvrtc::nvrtcVersion(&mut major, &mut minor) },
        "nvrtcVersion",
    )?;
    Ok((major, minor))
}

/// Compiles the program with `arch` and returns the cubin.
fn compile(arch: &str) -> BackendResult<Vec<u8>> {
    let src = CString::new(SOURCE).expect("the kernel source has no NUL");
    let name = c"chorus_kernels.cu";
    let mut prog = std::ptr::null_mut();
    nvrtc_check(
        // SAFETY: NUL-terminated source and name, no headers; writes one program handle, which
        // is destroyed below on every path.
        unsafe {
            nvrtc::nvrtcCreateProgram(
                &mut prog,
                src.as_ptr(),
                name.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            )
        },
        "nvrtcCreateProgram",
    )?;
    let result = compile_program(prog, arch);
    // SAFETY: `prog` was created above and is destroyed once.
    let _ = unsafe { nvrtc::nvrtcDestroyProgram(&mut prog) };
    result
}

fn compile_program(prog: nvrtc::nvrtcProgram, arch: &str) -> BackendResult<Vec<u8>> {
    let options = [CString::new(arch).expect("no NUL"), c"--std=c++17".into()];
    let ptrs: Vec<*const c_char> = options.iter().map(|o| o.as_ptr()).collect();
    // SAFETY: `prog` is a live program; `ptrs` holds `len` NUL-terminated option strings that
    // outlive the call.
    let r = unsafe { nvrtc::nvrtcCompileProgram(prog, ptrs.len() as i32, ptrs.as_ptr()) };
    if r != nvrtcResult::NVRTC_SUCCESS {
        let mut size = 0;
        // SAFETY: live program; writes the log size, then at most that many bytes.
        let log = unsafe {
            let _ = nvrtc::nvrtcGetProgramLogSize(prog, &mut size);
            let mut log = vec![0u8; size.max(1)];
            let _ = nvrtc::nvrtcGetProgramLog(prog, log.as_mut_ptr().cast());
            String::from_utf8_lossy(&log)
                .trim_end_matches('\0')
                .to_string()
        };
        return Err(BackendError::Call {
            api: "nvrtcCompileProgram",
            message: format!("{arch}: {log}"),
        });
    }
    let mut size = 0;
    nvrtc_check(
        // SAFETY: the program compiled; writes the cubin size.
        unsafe { nvrtc::nvrtcGetCUBINSize(prog, &mut size) },
        "nvrtcGetCUBINSize",
    )?;
    let mut cubin = vec![0u8; size];
    nvrtc_check(
        // SAFETY: `cubin` has room for the `size` bytes NVRTC writes.
        unsafe { nvrtc::nvrtcGetCUBIN(prog, cubin.as_mut_ptr().cast()) },
        "nvrtcGetCUBIN",
    )?;
    Ok(cubin)
}
