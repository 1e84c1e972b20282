//! The CUDA backend's kernels, one module per kernel family as in the CPU backend
//! (`chorus-cpu/src/kernels/`): [`launch`] turns one [`Kernel`] descriptor into CUDA work on a
//! stream, and only dispatches; each family's module holds its launch code, and its CUDA C
//! source sits next to it in `<family>.cu`.
//!
//! | family | kernels |
//! |---|---|
//! | [`elementwise`] | `Fill`, `Randn`, `Unary`, `Binary` (and the matmul epilogue's `bias_act_f32`) |
//! | [`copy`] | `Copy`, `IndexSelect` |
//! | [`matmul`] | `Matmul`: cuBLAS / cuBLASLt (`crate::blas`, `crate::lt`), no `.cu` of its own |
//! | [`reduce`] | `Reduce`, `ArgReduce` |
//! | [`softmax`] | `Softmax` |
//! | [`norm`] | `LayerNorm`, `GroupNorm` |
//! | [`conv`] | `Conv2d`, `AdaptiveAvgPool2d` |
//! | [`attention`] | `Attention` |
//!
//! [`common`] is the leaf every family imports from (strided-view parameters, launch geometry,
//! the launch call); `common.cu` likewise opens the NVRTC program, which `crate::module`
//! assembles from the `.cu` files in a fixed order (one program, one module, one cache key).

pub(crate) mod attention;
mod common;
mod conv;
mod copy;
mod elementwise;
mod matmul;
mod norm;
mod reduce;
mod softmax;

use crate::module::Module;
use crate::stream::CudaStream;
use chorus_core::kernel::Kernel;
use chorus_core::{BackendResult, DType};

/// Whether the CUDA backend runs `kernel`: its kernels compute in f32 (and i64 where the op
/// has integer semantics); copies and gathers move words of any element size. Called before
/// anything is enqueued.
///
/// # Errors
/// `BackendError::Unsupported` naming the kernel and what is missing.
pub(crate) fn check(kernel: &Kernel) -> BackendResult<()> {
    kernel
        .supported_by(&[DType::F32])
        .map_err(|what| common::unsupported(kernel.name(), what))
}

/// Enqueues `kernel` on `stream`.
///
/// # Safety
/// As `Backend::launch`: every pointer of the descriptor addresses live device memory of this
/// context valid for the kernel's extents until the stream has run it; outputs overlap no
/// inputs. The context is current on the calling thread.
pub(crate) unsafe fn launch(
    stream: &CudaStream,
    module: &Module,
    kernel: &Kernel,
    tf32: bool,
) -> BackendResult<()> {
    let (s, m) = (stream, module);
    check(kernel)?;
    // SAFETY: every arm forwards this function's contract: each family function's own
    // contract is this one, for its descriptor.
    unsafe {
        match kernel {
            Kernel::Fill(k) => elementwise::fill(s, m, k),
            Kernel::Randn(k) => elementwise::randn(s, m, k),
            Kernel::Unary(k) => elementwise::unary(s, m, k),
            Kernel::Binary(k) => elementwise::binary(s, m, k),
            Kernel::Copy(k) => copy::copy(s, m, k),
            Kernel::IndexSelect(k) => copy::index_select(s, m, k),
            Kernel::Matmul(k) => matmul::matmul(s, m, k, tf32),
            Kernel::Reduce(k) => reduce::reduce(s, m, k),
            Kernel::ArgReduce(k) => reduce::arg_reduce(s, m, k),
            Kernel::Softmax(k) => softmax::softmax(s, m, k),
            Kernel::LayerNorm(k) => norm::layer_norm(s, m, k),
            Kernel::GroupNorm(k) => norm::group_norm(s, m, k),
            Kernel::Conv2d(k) => conv::conv2d(s, m, k),
            Kernel::AdaptiveAvgPool2d(k) => conv::adaptive_avg_pool2d(s, m, k),
            Kernel::Attention(k) => attention::launch(s, m, k),
            other => Err(common::unsupported(
                other.name(),
                format!("kernel {}", other.name()),
            )),
        }
    }
}
