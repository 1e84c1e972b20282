//! What every kernel family shares (the leaf the families import from; `common.cu` is its CUDA
//! side, the first part of the program): the strided-view parameter [`Dims`], the launch
//! geometry ([`BLOCK`], [`grid`], [`row_grid`]), the launch call itself ([`raw`],
//! [`raw_with`]), kernel argument packing ([`arg`], [`ptr`]) and the small translations from
//! descriptor enums to the kernels' codes ([`unary_code`], [`word`]).
//!
//! Launch shapes, as `common.cu` defines them:
//! - ELEMENTWISE: [`BLOCK`] threads per block, [`grid`]`(items)` blocks (capped at 2^20: every
//!   such kernel is a grid-stride loop over u64 indices), no dynamic shared memory;
//! - ROW: [`BLOCK`] threads per block (a multiple of 32 up to 1024: `reduce` takes 1024 for a
//!   few long rows), [`row_grid`]`(rows)` = min(rows, 65535) blocks that grid-stride over the
//!   rows, the threads of a block sharing one row; no dynamic shared memory.
//!
//! Strided views are passed as [`Dims`] after *coalescing* (`chorus_core::kernel::coalesce`):
//! size-1 dimensions are dropped and neighbours that step as one in every view of the kernel
//! are merged, so a contiguous operand arrives as one dimension of stride 1 and the
//! kernels' index arithmetic stays short. A view that still has more than [`MAX_DIMS`]
//! dimensions is refused with an error naming the kernel.

use crate::module::{Func, Module};
use crate::stream::CudaStream;
use chorus_core::kernel::UnaryOp;
use chorus_core::{BackendError, BackendResult, DType, DevicePtr};
use std::ffi::c_void;

/// Dimensions a [`Dims`] can carry (as `MAX_DIMS` in common.cu).
pub(super) const MAX_DIMS: usize = 16;

/// Threads per block of every kernel.
pub(super) const BLOCK: u32 = 256;

/// A coalesced strided layout, `struct Dims` in common.cu.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(super) struct Dims {
    rank: i64,
    shape: [i64; MAX_DIMS],
    strides: [i64; MAX_DIMS],
}

impl Dims {
    pub(super) fn new(
        kernel: &'static str,
        shape: &[usize],
        strides: &[usize],
    ) -> BackendResult<Dims> {
        if shape.len() > MAX_DIMS {
            return Err(BackendError::Kernel {
                kernel,
                message: format!(
                    "a view with {} non-mergeable dimensions (the CUDA kernels take at most {MAX_DIMS})",
                    shape.len()
                ),
            });
        }
        let mut d = Dims {
            rank: shape.len() as i64,
            shape: [0; MAX_DIMS],
            strides: [0; MAX_DIMS],
        };
        for (i, (&n, &s)) in shape.iter().zip(strides).enumerate() {
            d.shape[i] = n as i64;
            d.strides[i] = s as i64;
        }
        Ok(d)
    }
}

/// A pointer to one kernel argument, for cuLaunchKernel's parameter array.
pub(super) fn arg<T>(v: &mut T) -> *mut c_void {
    (v as *mut T).cast()
}

/// The device address of an optional operand, 0 (NULL to the kernel) when absent.
pub(super) fn ptr(p: Option<DevicePtr>) -> u64 {
    p.map_or(0, |p| p.0)
}

/// The error for a kernel, op, dtype or value this backend does not implement.
pub(super) fn unsupported(kernel: &'static str, what: String) -> BackendError {
    BackendError::Unsupported {
        backend: "cuda",
        kernel,
        what,
    }
}

/// The `op` code of `activate` in elementwise.cu (unary and the matmul epilogue).
pub(super) fn unary_code(kernel: &'static str, op: UnaryOp) -> BackendResult<i32> {
    Ok(match op {
        UnaryOp::Relu => 0,
        UnaryOp::Gelu => 1,
        UnaryOp::GeluTanh => 2,
        UnaryOp::Tanh => 3,
        UnaryOp::Exp => 4,
        other => return Err(unsupported(kernel, format!("{other:?}"))),
    })
}

/// Word type of an element size: the copy and gather kernels move bits, not values.
pub(super) fn word(kernel: &'static str, dtype: DType, funcs: [Func; 3]) -> BackendResult<Func> {
    match dtype.size() {
        2 => Ok(funcs[0]),
        4 => Ok(funcs[1]),
        8 => Ok(funcs[2]),
        n => Err(unsupported(kernel, format!("{n}-byte element type"))),
    }
}

/// Blocks for `n` independent items (grid-stride kernels take any grid).
pub(super) fn grid(n: u64) -> u32 {
    n.div_ceil(u64::from(BLOCK)).clamp(1, 1 << 20) as u32
}

/// Blocks for `rows` rows (one block per row, grid-stride over rows).
pub(super) fn row_grid(rows: u64) -> u32 {
    rows.clamp(1, 65_535) as u32
}

/// Launches `f` with `params` on `stream`.
///
/// # Safety
/// `params` matches the kernel's parameter list in its `.cu` file (count, order, types), every
/// pointer argument addresses device memory valid for the kernel's extents until the stream
/// has run it, outputs overlap no inputs, and the context is current.
pub(super) unsafe fn raw(
    stream: &CudaStream,
    module: &Module,
    f: Func,
    blocks: u32,
    params: &mut [*mut c_void],
) -> BackendResult<()> {
    // SAFETY: forwarded contract.
    unsafe { raw_with(stream, module, f, (blocks, BLOCK, 0), params) }
}

/// As [`raw`] with `threads` per block (a multiple of 32, at most 1024: what the ROW kernels
/// accept) and `shared` bytes of dynamic shared memory per block.
///
/// # Safety
/// As [`raw`]; `shared` is what the kernel reads and writes of its dynamic shared memory, and
/// within the device's limit for a default launch (48 KiB).
pub(super) unsafe fn raw_with(
    stream: &CudaStream,
    module: &Module,
    f: Func,
    (blocks, threads, shared): (u32, u32, u32),
    params: &mut [*mut c_void],
) -> BackendResult<()> {
    // SAFETY: caller's contract; the function belongs to the loaded module of this context.
    let r = unsafe {
        cudarc::driver::sys::cuLaunchKernel(
            module.func(f),
            blocks,
            1,
            1,
            threads,
            1,
            1,
            shared,
            stream.raw,
            params.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    };
    stream.track(r, "cuLaunchKernel")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dims_refuse_too_many() {
        let shape = vec![2; MAX_DIMS + 1];
        assert!(Dims::new("copy", &shape, &shape).is_err());
        assert!(Dims::new("copy", &shape[..MAX_DIMS], &shape[..MAX_DIMS]).is_ok());
    }
}
