//! The CUDA backend's kernels, one module per kernel family as in the CPU backend
//! (`chorus-cpu/src/kernels/`): [`launch`] turns one [`Kernel`] descriptor into CUDA work on a
//! stream, and only dispatches; each family's module holds its launch code, and its CUDA C
//! source sits next to it in `<family>.cu`.
//!
//! | family | kernels |
//! |---|---|
//! | [`elementwise`] | `Fill`, `Randn`, `Unary`, `Binary` (and the matmul epilogue's `bias_act_f32`) |
//! | [`copy`] | `Copy`, `CopyInto`, `IndexSelect` |
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
use chorus_core::BackendResult;

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
    // SAFETY: every arm forwards this function's contract: each family function's own
    // contract is this one, for its descriptor's fields.
    unsafe {
        match kernel {
            Kernel::Fill { out, len, value } => elementwise::fill(s, m, *out, *len, *value),
            Kernel::Randn { out, len, seed } => elementwise::randn(s, m, *out, *len, *seed),
            Kernel::Unary { op, src, out, len } => elementwise::unary(s, m, *op, *src, *out, *len),
            Kernel::Binary {
                op,
                lhs,
                rhs,
                out,
                dtype,
            } => elementwise::binary(s, m, *op, lhs, rhs, *out, *dtype),
            Kernel::Copy { src, out, dtype } => copy::copy(s, m, src, *out, *dtype),
            Kernel::CopyInto { src, dst, dtype } => copy::copy_into(s, m, src, dst, *dtype),
            Kernel::IndexSelect {
                src,
                indices,
                out,
                outer,
                n,
                inner,
                count,
                dtype,
            } => copy::index_select(
                s,
                m,
                *src,
                *indices,
                *out,
                [*outer, *n, *inner],
                *count,
                *dtype,
            ),
            Kernel::Matmul {
                lhs,
                rhs,
                out,
                batch,
                m: rows,
                n,
                k,
                epilogue,
                ..
            } => matmul::matmul(
                s,
                m,
                lhs,
                rhs,
                *out,
                [*batch, *rows, *n, *k],
                *epilogue,
                tf32,
            ),
            Kernel::Reduce {
                op,
                src,
                shape,
                dims,
                out,
                dtype,
            } => reduce::reduce(s, m, *op, *src, shape, dims, *out, *dtype),
            Kernel::ArgReduce {
                op,
                src,
                values,
                indices,
                outer,
                n,
                inner,
            } => reduce::arg_reduce(s, m, *op, *src, *values, *indices, [*outer, *n, *inner]),
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
            } => softmax::softmax(
                s,
                m,
                *src,
                *out,
                [*outer, *n, *inner],
                *scale,
                *log,
                *causal,
                mask.as_ref(),
            ),
            Kernel::LayerNorm {
                src,
                residual,
                out,
                weight,
                bias,
                rows,
                n,
                eps,
            } => norm::layer_norm(
                s,
                m,
                *src,
                *residual,
                *out,
                *weight,
                *bias,
                [*rows, *n],
                *eps,
            ),
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
            } => norm::group_norm(
                s,
                m,
                *src,
                *out,
                *weight,
                *bias,
                [*batch, *channels, *groups, *spatial],
                *eps,
            ),
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
            } => conv::conv2d(
                s, m, *src, *weight, *bias, *out, *batch, *c_in, *hw, *c_out, *khw, *stride,
                *padding, *groups, *out_hw,
            ),
            Kernel::AdaptiveAvgPool2d {
                src,
                out,
                planes,
                hw,
                out_hw,
            } => conv::adaptive_avg_pool2d(s, m, *src, *out, *planes, *hw, *out_hw),
            Kernel::Attention(a) => attention::launch(s, m, a),
            other => Err(common::unsupported(
                other.name(),
                format!("kernel {}", other.name()),
            )),
        }
    }
}
