//! The CUDA driver, loaded at run time: presence checks, error conversion, and the device's
//! primary context.
//!
//! cudarc loads `libcuda` (and cuBLAS, NVRTC) on first use and panics when a library is
//! missing, so every entry point of this crate first asks [`driver_present`] and the other
//! `*_present` checks and returns a typed error instead. The primary context is retained once
//! per backend ([`Context`]) and released when the last object that needs it (backend, streams,
//! events, segments all hold an `Arc<Context>`) is gone, whatever the drop order.

use chorus_core::{BackendError, BackendResult};
use cudarc::driver::sys::{self, CUresult};
use std::ffi::CStr;

/// Whether `libcuda` can be loaded on this machine.
pub(crate) fn driver_present() -> bool {
    // SAFETY: only tries to open the library by its known names; no symbol is called.
    unsafe { sys::is_culib_present() }
}

/// Whether cuBLAS can be loaded.
pub(crate) fn cublas_present() -> bool {
    // SAFETY: as `driver_present`.
    unsafe { cudarc::cublas::sys::is_culib_present() }
}

/// Whether cuBLASLt can be loaded.
pub(crate) fn cublaslt_present() -> bool {
    // SAFETY: as `driver_present`.
    unsafe { cudarc::cublaslt::sys::is_culib_present() }
}

/// Whether NVRTC can be loaded.
pub(crate) fn nvrtc_present() -> bool {
    // SAFETY: as `driver_present`.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Converts a driver result into a backend result naming the call.
pub(crate) fn check(result: CUresult, api: &'static str) -> BackendResult<()> {
    match result {
        CUresult::CUDA_SUCCESS => Ok(()),
        CUresult::CUDA_ERROR_OUT_OF_MEMORY => Err(BackendError::OutOfMemory { bytes: 0 }),
        other if fatal(other) => Err(BackendError::Lost {
            cause: format!("{api}: {}", describe(other)),
        }),
        other => Err(BackendError::Call {
            api,
            message: describe(other),
        }),
    }
}

/// Whether `result` says the context is broken for good ("sticky" errors in CUDA's terms: every
/// later call in the context returns one; only a new context recovers), which loses the device.
fn fatal(result: CUresult) -> bool {
    use CUresult::*;
    matches!(
        result,
        CUDA_ERROR_ILLEGAL_ADDRESS
            | CUDA_ERROR_LAUNCH_FAILED
            | CUDA_ERROR_ECC_UNCORRECTABLE
            | CUDA_ERROR_NVLINK_UNCORRECTABLE
            | CUDA_ERROR_HARDWARE_STACK_ERROR
            | CUDA_ERROR_ILLEGAL_INSTRUCTION
            | CUDA_ERROR_MISALIGNED_ADDRESS
            | CUDA_ERROR_INVALID_ADDRESS_SPACE
            | CUDA_ERROR_INVALID_PC
            | CUDA_ERROR_ASSERT
            | CUDA_ERROR_LAUNCH_TIMEOUT
            | CUDA_ERROR_CONTEXT_IS_DESTROYED
            | CUDA_ERROR_EXTERNAL_DEVICE
    )
}

/// The driver's name and description of an error code.
pub(crate) fn describe(result: CUresult) -> String {
    let mut name = std::ptr::null();
    let mut text = std::ptr::null();
    // SAFETY: both calls only write a pointer to a static string (or leave it null for an
    // unknown code); the strings are owned by the driver and live for the process.
    unsafe {
        let _ = sys::cuGetErrorName(result, &mut name);
        let _ = sys::cuGetErrorString(result, &mut text);
        let name = if name.is_null() {
            format!("{result:?}")
        } else {
            CStr::from_ptr(name).to_string_lossy().into_owned()
        };
        if text.is_null() {
            name
        } else {
            format!("{name}: {}", CStr::from_ptr(text).to_string_lossy())
        }
    }
}

/// Initializes the driver once per process (`cuInit` is idempotent and thread-safe).
pub(crate) fn init() -> BackendResult<()> {
    if !driver_present() {
        return Err(BackendError::Call {
            api: "dlopen(libcuda)",
            message: "the CUDA driver library is not installed on this machine".into(),
        });
    }
    // SAFETY: cuInit takes flags 0 and may be called any number of times from any thread.
    check(unsafe { sys::cuInit(0) }, "cuInit")
}

/// Number of CUDA devices (0 without a driver).
pub(crate) fn device_count() -> usize {
    if init().is_err() {
        return 0;
    }
    let mut n = 0;
    // SAFETY: writes one int; the driver is initialized.
    match unsafe { sys::cuDeviceGetCount(&mut n) } {
        CUresult::CUDA_SUCCESS => usize::try_from(n).unwrap_or(0),
        _ => 0,
    }
}

/// The primary context of one device, retained for as long as this value lives, and what every
/// stream of the device shares through it.
#[derive(Debug)]
pub(crate) struct Context {
    pub(crate) device: sys::CUdevice,
    pub(crate) raw: sys::CUcontext,
    pub(crate) ordinal: u32,
    /// The cuBLASLt algorithm of each GEMM shape (`crate::lt`).
    pub(crate) gemm_algos: crate::lt::Algos,
}

// SAFETY: a CUcontext handle may be used from any thread (made current per thread with
// cuCtxSetCurrent); the driver synchronizes access to the context internally.
unsafe impl Send for Context {}
// SAFETY: as above; `&Context` only hands out the handle.
unsafe impl Sync for Context {}

impl Context {
    /// Retains the primary context of device `ordinal`.
    pub(crate) fn retain(ordinal: u32) -> BackendResult<Context> {
        init()?;
        let count = device_count();
        if ordinal as usize >= count {
            return Err(BackendError::Call {
                api: "cuDeviceGet",
                message: format!("no CUDA device {ordinal} (this machine has {count})"),
            });
        }
        let mut device = 0;
        check(
            // SAFETY: the ordinal is below the device count; writes one handle.
            unsafe { sys::cuDeviceGet(&mut device, ordinal as i32) },
            "cuDeviceGet",
        )?;
        let flags = sched_flags()?;
        check(
            // SAFETY: valid device handle. Sets how host threads wait for the GPU (spin, yield or
            // block); applies to the primary context from now on.
            unsafe { sys::cuDevicePrimaryCtxSetFlags_v2(device, flags) },
            "cuDevicePrimaryCtxSetFlags",
        )?;
        let mut raw = Self::retain_primary(device)?;
        // A fatal fault (an illegal address, ...) broke the primary context for good: every
        // Device on it is lost. A new one resets it (the lost Devices' memory and streams in it
        // are gone; their later calls fail, as they already did) and starts afresh. The probe
        // waits for the work of the context's other Devices, if any (open is rare).
        // A context synchronization breaks another thread's graph capture: not during one
        // (`crate::graph::building`).
        let no_capture = crate::graph::building().shared();
        // SAFETY: `raw` is a retained context; setting it current and synchronizing it touch
        // nothing of ours.
        let probe = unsafe {
            match sys::cuCtxSetCurrent(raw) {
                CUresult::CUDA_SUCCESS => sys::cuCtxSynchronize(),
                r => r,
            }
        };
        drop(no_capture);
        if fatal(probe) {
            // SAFETY: releases the retain above, then resets the primary context of a valid
            // device (its state is unusable anyway) and retains the fresh one.
            unsafe {
                let _ = sys::cuDevicePrimaryCtxRelease_v2(device);
                check(
                    sys::cuDevicePrimaryCtxReset_v2(device),
                    "cuDevicePrimaryCtxReset",
                )?;
            }
            raw = Self::retain_primary(device)?;
        }
        Ok(Context {
            device,
            raw,
            ordinal,
            gemm_algos: crate::lt::Algos::default(),
        })
    }

    /// Retains the primary context of `device` (released by the caller, or in Drop).
    fn retain_primary(device: sys::CUdevice) -> BackendResult<sys::CUcontext> {
        let mut raw = std::ptr::null_mut();
        check(
            // SAFETY: `device` is a valid device handle; writes one context handle.
            unsafe { sys::cuDevicePrimaryCtxRetain(&mut raw, device) },
            "cuDevicePrimaryCtxRetain",
        )?;
        Ok(raw)
    }

    /// Makes the context current on the calling thread (a no-op when it already is).
    pub(crate) fn bind(&self) -> BackendResult<()> {
        let mut current = std::ptr::null_mut();
        // SAFETY: writes the calling thread's current context handle (or null).
        let _ = unsafe { sys::cuCtxGetCurrent(&mut current) };
        if current == self.raw {
            return Ok(());
        }
        // SAFETY: `raw` is a retained primary context, valid until Drop.
        check(unsafe { sys::cuCtxSetCurrent(self.raw) }, "cuCtxSetCurrent")
    }

    /// An integer attribute of the device.
    pub(crate) fn attribute(&self, attribute: sys::CUdevice_attribute) -> BackendResult<i32> {
        let mut v = 0;
        check(
            // SAFETY: valid device handle; writes one int.
            unsafe { sys::cuDeviceGetAttribute(&mut v, attribute, self.device) },
            "cuDeviceGetAttribute",
        )?;
        Ok(v)
    }

    /// Compute capability (major, minor).
    pub(crate) fn compute_capability(&self) -> BackendResult<(i32, i32)> {
        use sys::CUdevice_attribute as A;
        Ok((
            self.attribute(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
            self.attribute(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
        ))
    }

    /// The device's name.
    pub(crate) fn name(&self) -> String {
        let mut buf = [0 as std::ffi::c_char; 256];
        // SAFETY: writes at most `len` bytes, NUL-terminated, into `buf`.
        let r = unsafe { sys::cuDeviceGetName(buf.as_mut_ptr(), buf.len() as i32, self.device) };
        if r != CUresult::CUDA_SUCCESS {
            return format!("CUDA device {}", self.ordinal);
        }
        // SAFETY: the driver NUL-terminated the name inside `buf`.
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    }

    /// Total memory of the device in bytes.
    pub(crate) fn total_memory(&self) -> Option<usize> {
        let mut bytes = 0;
        // SAFETY: valid device handle; writes one size.
        let r = unsafe { sys::cuDeviceTotalMem_v2(&mut bytes, self.device) };
        (r == CUresult::CUDA_SUCCESS).then_some(bytes)
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: we retained the primary context of `device` once in `retain`; every object
        // that used it holds an Arc of this value, so none is left.
        let _ = unsafe { sys::cuDevicePrimaryCtxRelease_v2(self.device) };
    }
}

/// How host threads wait for the GPU, from `CHORUS_CUDA_SCHED`: `hybrid` (the default: a
/// waiting thread spins but yields its core, as with `yield`, while at most one thread per
/// core waits that way; further waiting threads sleep, see `stream.rs`), `yield` (every
/// waiting thread spins and yields: measured best of the driver's modes with many threads on
/// the H100 machine: the MLP at 16 threads 101.7k forwards/s vs 93.2k with the driver's
/// `auto`, which spins without yielding, and 58k with `blocking`), `auto`, `spin` or
/// `blocking`.
fn sched_flags() -> BackendResult<u32> {
    use sys::CUctx_flags as F;
    let v = std::env::var("CHORUS_CUDA_SCHED").unwrap_or_default();
    let flag = match v.trim().to_ascii_lowercase().as_str() {
        "" | "hybrid" => F::CU_CTX_SCHED_YIELD,
        "auto" => F::CU_CTX_SCHED_AUTO,
        "spin" => F::CU_CTX_SCHED_SPIN,
        "yield" => F::CU_CTX_SCHED_YIELD,
        "blocking" => F::CU_CTX_SCHED_BLOCKING_SYNC,
        _ => {
            return Err(BackendError::Call {
                api: "CHORUS_CUDA_SCHED",
                message: format!("`{v}` is not hybrid, yield, auto, spin or blocking"),
            })
        }
    };
    Ok(flag as u32)
}

/// Whether waiting threads beyond one per core sleep instead of spinning (`CHORUS_CUDA_SCHED`
/// unset or `hybrid`).
pub(crate) fn cap_spinning() -> bool {
    // sync-shim: allowed (computed once; reading it is a plain load)
    static CAP: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CAP.get_or_init(|| {
        let v = std::env::var("CHORUS_CUDA_SCHED").unwrap_or_default();
        matches!(v.trim().to_ascii_lowercase().as_str(), "" | "hybrid")
    })
}

/// Runs `f`, and with `CHORUS_CUDA_TRACE` set prints how long it took (one-time setup steps:
/// kernel compilation, cuBLAS handles, staging buffers).
pub(crate) fn traced<T>(what: &str, f: impl FnOnce() -> T) -> T {
    if std::env::var_os("CHORUS_CUDA_TRACE").is_none() {
        return f();
    }
    let t0 = std::time::Instant::now();
    let r = f();
    eprintln!(
        "chorus-cuda: {what}: {:.3} ms",
        t0.elapsed().as_secs_f64() * 1e3
    );
    r
}
