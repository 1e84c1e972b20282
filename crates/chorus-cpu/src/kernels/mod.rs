//! The CPU backend's compute kernels: [`execute`] runs one [`Kernel`] descriptor synchronously
//! on host memory, on the calling thread (a stream worker, or a host thread waiting for the
//! stream). Only a matrix product may share its work with the threads of the global pool that
//! `gemm` uses, and only when the stream runs alone ([`set_parallelism`]).
//!
//! Every kernel is deterministic: the same descriptor over the same input bytes gives the same
//! output bytes on every run, with or without helpers (matrix products split rows and columns,
//! never the sum over `k`; reductions, softmax and norm statistics accumulate in a fixed order).

mod arg;
mod conv;
mod copy;
mod depthwise;
mod elementwise;
mod im2col;
mod index;
mod matmul;
mod norm;
#[cfg(target_arch = "x86_64")]
mod packed;
mod pool;
mod randn;
mod reduce;
mod rowdot;
mod share;
mod softmax;
mod strided;
#[cfg(test)]
mod test_util;
mod unary;

use chorus_core::kernel::{DevicePtr, Kernel, Scalar};

/// Sets how many cores the kernels the calling thread runs next may use (the stream worker sets
/// it before each kernel: all cores when no other stream is busy, else one).
pub(crate) fn set_parallelism(cores: usize) {
    PARALLELISM.with(|p| p.set(cores.max(1)));
}

/// The cores a GEMM of `m × n × k` may use: more than one only for products large enough to
/// gain from it (below that the split costs more than it saves, measured), and only when the
/// worker was given them. `gemm` splits rows and columns, never the sum over `k`, so the
/// result is bit-identical whatever this returns (checked by the matmul tests).
pub(crate) fn gemm_parallelism(m: usize, n: usize, k: usize) -> gemm::Parallelism {
    let cores = PARALLELISM.with(std::cell::Cell::get);
    if cores > 1 && m >= 128 && m.saturating_mul(n).saturating_mul(k) >= 1 << 24 {
        gemm::Parallelism::Rayon(cores)
    } else {
        gemm::Parallelism::None
    }
}

/// Whether `linear`'s weights are worth keeping prepared (packed once, `packed.rs`): on
/// machines that run the packed kernel.
pub(crate) fn prepares_weights() -> bool {
    #[cfg(target_arch = "x86_64")]
    return packed::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The cores the calling thread's kernels may use (see [`set_parallelism`]).
pub(crate) fn parallelism() -> usize {
    PARALLELISM.with(std::cell::Cell::get)
}

std::thread_local! {
    static PARALLELISM: std::cell::Cell<usize> = const { std::cell::Cell::new(1) };
}

/// Executes `kernel` synchronously on the calling thread.
///
/// # Safety
/// Every DevicePtr in `kernel` is a host address (`ptr.0 as usize as *mut u8`) valid, for the
/// kernel's extents, for reads (inputs) / writes (outputs) of the element type, aligned to the
/// element type; outputs do not overlap inputs or each other; nobody else writes the inputs or
/// accesses the outputs during the call.
///
/// # Panics
/// On a kernel, dtype, op or scalar variant this backend does not implement (f16/bf16
/// arithmetic, variants added to the `#[non_exhaustive]` enums later: the front-end rejects those
/// before launch), and on a malformed descriptor (rank mismatch between shape and strides,
/// unsorted or out-of-range reduce dims).
pub(crate) unsafe fn execute(kernel: &Kernel) {
    match kernel {
        // SAFETY: forwarded contract: `out` is valid for `len` writes of the scalar's type.
        Kernel::Fill { out, len, value } => unsafe { fill(*out, *len, *value) },
        // SAFETY: forwarded contract: `out` is valid for `len` f32 writes.
        Kernel::Randn { out, len, seed } => unsafe { randn::randn(*out, *len, *seed) },
        // SAFETY: forwarded contract: `src` readable over its extents, `out` writable for
        // `src.len()` elements of `dtype`, no overlap.
        Kernel::Copy { src, out, dtype } => unsafe { copy::copy(src, *out, *dtype) },
        Kernel::Matmul {
            lhs,
            rhs,
            out,
            batch,
            m,
            n,
            k,
            epilogue,
            rhs_derived,
        } => {
            let dims = matmul::Dims {
                batch: *batch,
                m: *m,
                n: *n,
                k: *k,
            };
            // SAFETY: forwarded contract: operands (and the bias, `n` f32) readable and `out`
            // writable for `batch * m * n` f32 over the descriptor's extents, no overlap.
            unsafe { matmul::matmul(lhs, rhs, *out, dims, *epilogue, rhs_derived.as_ref()) }
        }
        Kernel::Binary {
            op,
            lhs,
            rhs,
            out,
            dtype,
        } => {
            // SAFETY: forwarded contract: views readable, `out` writable for `lhs.len()`
            // elements of `dtype`, no overlap with the inputs.
            unsafe { elementwise::binary(*op, lhs, rhs, *out, *dtype) }
        }
        Kernel::Reduce {
            op,
            src,
            shape,
            dims,
            out,
            dtype,
        } => {
            // SAFETY: forwarded contract: `src` readable for the product of `shape`, `out`
            // writable for the product of the kept dims, both of `dtype`, no overlap.
            unsafe { reduce::reduce(*op, *src, shape, dims, *out, *dtype) }
        }
        // SAFETY: forwarded contract: `src` readable and `out` writable for `len` f32, no
        // overlap.
        Kernel::Unary { op, src, out, len } => unsafe { unary::unary(*op, *src, *out, *len) },
        Kernel::Softmax {
            src,
            out,
            outer,
            n,
            inner,
            scale,
            log,
            causal,
            mask,
        } => {
            let opts = softmax::Options {
                scale: *scale,
                log: *log,
                causal: *causal,
                mask: mask.as_ref(),
            };
            // SAFETY: forwarded contract: `src` readable and `out` writable for
            // `outer * n * inner` f32, the mask view readable, no overlap.
            unsafe { softmax::softmax(*src, *out, [*outer, *n, *inner], opts) }
        }
        Kernel::ArgReduce {
            op,
            src,
            values,
            indices,
            outer,
            n,
            inner,
        } => {
            // SAFETY: forwarded contract: `src` readable for `outer * n * inner` f32, `values`
            // and `indices` writable for `outer * inner` f32 / i64, no overlap.
            unsafe { arg::arg_reduce(*op, *src, *values, *indices, [*outer, *n, *inner]) }
        }
        Kernel::LayerNorm {
            src,
            residual,
            out,
            weight,
            bias,
            rows,
            n,
            eps,
        } => {
            // SAFETY: forwarded contract: `src` (and a residual) readable and `out` writable for
            // `rows * n` f32, weight and bias readable for `n` f32, no overlap.
            unsafe { norm::layer_norm(*src, *residual, *out, *weight, *bias, [*rows, *n], *eps) }
        }
        Kernel::GroupNorm {
            src,
            out,
            weight,
            bias,
            batch,
            channels,
            groups,
            spatial,
            eps,
        } => {
            let g = norm::Groups {
                batch: *batch,
                channels: *channels,
                groups: *groups,
                spatial: *spatial,
            };
            // SAFETY: forwarded contract: `src` readable and `out` writable for
            // `batch * channels * spatial` f32, weight and bias readable for `channels` f32, no
            // overlap.
            unsafe { norm::group_norm(*src, *out, *weight, *bias, g, *eps) }
        }
        Kernel::Conv2d {
            src,
            weight,
            bias,
            out,
            batch,
            c_in,
            hw,
            c_out,
            khw,
            stride,
            padding,
            groups,
            out_hw,
        } => {
            let geometry = conv::Conv {
                batch: *batch,
                c_in: *c_in,
                hw: *hw,
                c_out: *c_out,
                khw: *khw,
                stride: *stride,
                padding: *padding,
                groups: *groups,
                out_hw: *out_hw,
            };
            // SAFETY: forwarded contract: input, weight and bias readable and `out` writable over
            // the extents of the geometry, no overlap.
            unsafe { conv::conv2d(*src, *weight, *bias, *out, &geometry) }
        }
        Kernel::AdaptiveAvgPool2d {
            src,
            out,
            planes,
            hw,
            out_hw,
        } => {
            // SAFETY: forwarded contract: `src` readable for `planes * h * w` f32, `out` writable
            // for `planes * oh * ow` f32, no overlap.
            unsafe { pool::adaptive_avg_pool2d(*src, *out, *planes, *hw, *out_hw) }
        }
        Kernel::IndexSelect {
            src,
            indices,
            out,
            outer,
            n,
            inner,
            count,
            dtype,
        } => {
            // SAFETY: forwarded contract: `src` readable for `outer * n * inner` elements of
            // `dtype`, `indices` for `count` i64, `out` writable for `outer * count * inner`
            // elements, no overlap.
            unsafe {
                index::index_select(*src, *indices, *out, [*outer, *n, *inner], *count, *dtype)
            }
        }
        // SAFETY: forwarded contract: both views reach only valid elements of `dtype`, `dst`
        // writable and overlapping neither `src` nor itself.
        Kernel::CopyInto { src, dst, dtype } => unsafe { copy::copy_into(src, dst, *dtype) },
        other => panic!("the CPU backend has no `{}` kernel", other.name()),
    }
}

/// `out[i] = value` for `i < len`.
///
/// # Safety
/// `out` is valid and aligned for `len` writes of the scalar's type, and not otherwise accessed.
unsafe fn fill(out: DevicePtr, len: usize, value: Scalar) {
    match value {
        // SAFETY: caller's contract: `out` holds `len` writable f32.
        Scalar::F32(v) => unsafe { slice_mut::<f32>(out, len) }.fill(v),
        // SAFETY: caller's contract: `out` holds `len` writable i64.
        Scalar::I64(v) => unsafe { slice_mut::<i64>(out, len) }.fill(v),
        other => panic!("the CPU backend cannot fill with {other:?}"),
    }
}

/// The host pointer behind a CPU device address.
fn host<T>(ptr: DevicePtr) -> *mut T {
    ptr.0 as usize as *mut T
}

/// The `len` elements at `ptr` as a shared slice (empty, touching nothing, when `len == 0`).
///
/// # Safety
/// When `len > 0`, `ptr` is valid and aligned for `len` reads of `T` and nobody writes them
/// during `'a`.
unsafe fn slice<'a, T>(ptr: DevicePtr, len: usize) -> &'a [T] {
    if len == 0 {
        return &[];
    }
    // SAFETY: caller's contract; `len > 0` so the pointer is a real, non-null allocation.
    unsafe { std::slice::from_raw_parts(host::<T>(ptr), len) }
}

/// The `len` elements at `ptr` as an exclusive slice (empty, touching nothing, when `len == 0`).
///
/// # Safety
/// When `len > 0`, `ptr` is valid and aligned for `len` writes of `T` and nobody else accesses
/// them during `'a`.
unsafe fn slice_mut<'a, T>(ptr: DevicePtr, len: usize) -> &'a mut [T] {
    if len == 0 {
        return &mut [];
    }
    // SAFETY: caller's contract; `len > 0` so the pointer is a real, non-null allocation.
    unsafe { std::slice::from_raw_parts_mut(host::<T>(ptr), len) }
}

#[cfg(test)]
mod tests {
    use super::test_util::ptr_mut;
    use super::*;

    #[test]
    fn fill_f32_and_i64() {
        let mut a = vec![0.0f32; 7];
        let mut b = vec![0i64; 5];
        // SAFETY: the outputs are live Vecs of exactly `len` elements.
        unsafe {
            execute(&Kernel::Fill {
                out: ptr_mut(&mut a),
                len: 7,
                value: Scalar::F32(2.5),
            });
            execute(&Kernel::Fill {
                out: ptr_mut(&mut b),
                len: 5,
                value: Scalar::I64(-3),
            });
        }
        assert_eq!(a, vec![2.5; 7]);
        assert_eq!(b, vec![-3; 5]);
    }

    #[test]
    fn fill_empty_touches_nothing() {
        // SAFETY: `len == 0`: the (null) pointer is never dereferenced.
        unsafe {
            execute(&Kernel::Fill {
                out: DevicePtr(0),
                len: 0,
                value: Scalar::F32(1.0),
            })
        };
    }
}
