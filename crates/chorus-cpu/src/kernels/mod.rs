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
mod mem;
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

use chorus_core::kernel::Kernel;
use chorus_core::{BackendError, BackendResult, DType};

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

/// Whether the CPU backend runs `kernel`: its kernels compute in f32 (and i64 where the op
/// has integer semantics), and every variant but [`Kernel::Attention`] (which the front-end
/// only makes for backends that fuse it) has a kernel here. Called at launch, before anything
/// is enqueued.
///
/// # Errors
/// [`BackendError::Unsupported`] naming the kernel and what is missing.
pub(crate) fn check(kernel: &Kernel) -> BackendResult<()> {
    if let Kernel::Attention(_) = kernel {
        return Err(unsupported(kernel, "a fused attention kernel".into()));
    }
    kernel
        .supported_by(&[DType::F32])
        .map_err(|what| unsupported(kernel, what))
}

fn unsupported(kernel: &Kernel, what: String) -> BackendError {
    BackendError::Unsupported {
        backend: "cpu",
        kernel: kernel.name(),
        what,
    }
}

/// Executes `kernel` synchronously on the calling thread (one call into its family's module).
///
/// # Safety
/// `kernel` passed [`check`]; every DevicePtr in it is a host address
/// (`ptr.0 as usize as *mut u8`) valid, for the kernel's extents, for reads (inputs) / writes
/// (outputs) of the element type, aligned to the element type; outputs do not overlap inputs or
/// each other; nobody else writes the inputs or accesses the outputs during the call.
///
/// # Panics
/// On a malformed descriptor (rank mismatch between shape and strides, unsorted or out-of-range
/// reduce dims), which the front-end never makes.
pub(crate) unsafe fn execute(kernel: &Kernel) {
    // SAFETY: every arm forwards this function's contract, for its descriptor's extents.
    unsafe {
        match kernel {
            Kernel::Fill(k) => elementwise::fill(k),
            Kernel::Randn(k) => randn::randn(k),
            Kernel::Copy(k) => copy::copy(k),
            Kernel::Matmul(k) => matmul::matmul(k),
            Kernel::Binary(k) => elementwise::binary(k),
            Kernel::Reduce(k) => reduce::reduce(k),
            Kernel::Unary(k) => unary::unary(k),
            Kernel::Softmax(k) => softmax::softmax(k),
            Kernel::ArgReduce(k) => arg::arg_reduce(k),
            Kernel::LayerNorm(k) => norm::layer_norm(k),
            Kernel::GroupNorm(k) => norm::group_norm(k),
            Kernel::Conv2d(k) => conv::conv2d(k),
            Kernel::AdaptiveAvgPool2d(k) => pool::adaptive_avg_pool2d(k),
            Kernel::IndexSelect(k) => index::index_select(k),
            other => unreachable!("`{}` is refused by `check`", other.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::ptr_mut;
    use super::*;
    use chorus_core::kernel::{DevicePtr, Scalar};

    #[test]
    fn fill_f32_and_i64() {
        let mut a = vec![0.0f32; 7];
        let mut b = vec![0i64; 5];
        // SAFETY: the outputs are live Vecs of exactly `len` elements.
        unsafe {
            execute(&Kernel::Fill(chorus_core::kernel::Fill {
                out: ptr_mut(&mut a),
                len: 7,
                value: Scalar::F32(2.5),
            }));
            execute(&Kernel::Fill(chorus_core::kernel::Fill {
                out: ptr_mut(&mut b),
                len: 5,
                value: Scalar::I64(-3),
            }));
        }
        assert_eq!(a, vec![2.5; 7]);
        assert_eq!(b, vec![-3; 5]);
    }

    #[test]
    fn fill_empty_touches_nothing() {
        // SAFETY: `len == 0`: the (null) pointer is never dereferenced.
        unsafe {
            execute(&Kernel::Fill(chorus_core::kernel::Fill {
                out: DevicePtr(0),
                len: 0,
                value: Scalar::F32(1.0),
            }))
        };
    }
}
