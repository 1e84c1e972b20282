//! Convolution and pooling (`conv.cu`): `Kernel::Conv2d` (PyTorch's conv2d: cross-correlation,
//! zero padding, dilation 1, grouped, optional bias) of `[batch, c_in, h, w]` with weights
//! `[c_out, c_in / groups, kh, kw]`, and `Kernel::AdaptiveAvgPool2d` of `[planes, h, w]` to
//! `[planes, oh, ow]`.
//!
//! | kernel | launch | computes |
//! |---|---|---|
//! | `conv2d_f32` | ELEMENTWISE over `batch * c_out * oh * ow` | one thread per output sums its taps in f32 in a fixed order, then adds the bias |
//! | `adaptive_avg_pool2d_f32` | ELEMENTWISE over `planes * oh * ow` | cell `(i, j)` averages rows `floor(i h / oh) .. ceil((i + 1) h / oh)` and likewise columns, in double |
//!
//! Launch shapes as in [`super::common`]; an empty output launches nothing.

use super::common::{arg, grid, ptr, raw};
use crate::module::{Func, Module};
use crate::stream::CudaStream;
use chorus_core::kernel::{AdaptiveAvgPool2d, Conv2d};
use chorus_core::BackendResult;

/// Enqueues `Kernel::Conv2d`.
///
/// # Safety
/// As `kernels::launch`: input, weight and bias readable and `out` writable over the extents of
/// the geometry, no overlap.
pub(super) unsafe fn conv2d(stream: &CudaStream, module: &Module, k: &Conv2d) -> BackendResult<()> {
    let count = k.out_len() as u64;
    if count == 0 {
        return Ok(());
    }
    let (mut s, mut w, mut b, mut o) = (k.src.0, k.weight.0, ptr(k.bias), k.out.0);
    let [[h, wd], [kh, kw], [sh, sw], [ph, pw], [oh, ow]] =
        [k.hw, k.khw, k.stride, k.padding, k.out_hw];
    let mut v: [u64; 14] = [
        k.batch, k.c_in, h, wd, k.c_out, kh, kw, sh, sw, ph, pw, k.groups, oh, ow,
    ]
    .map(|x| x as u64);
    let [a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13] = &mut v;
    // SAFETY: caller's contract; parameters as `conv2d_f32` in conv.cu.
    unsafe {
        raw(
            stream,
            module,
            Func::Conv2dF32,
            grid(count),
            &mut [
                arg(&mut s),
                arg(&mut w),
                arg(&mut b),
                arg(&mut o),
                arg(a0),
                arg(a1),
                arg(a2),
                arg(a3),
                arg(a4),
                arg(a5),
                arg(a6),
                arg(a7),
                arg(a8),
                arg(a9),
                arg(a10),
                arg(a11),
                arg(a12),
                arg(a13),
            ],
        )
    }
}

/// Enqueues `Kernel::AdaptiveAvgPool2d`.
///
/// # Safety
/// As `kernels::launch`: `src` readable for `planes * h * w` f32, `out` writable for
/// `planes * oh * ow` f32, no overlap.
pub(super) unsafe fn adaptive_avg_pool2d(
    stream: &CudaStream,
    module: &Module,
    k: &AdaptiveAvgPool2d,
) -> BackendResult<()> {
    let AdaptiveAvgPool2d {
        src,
        out,
        planes,
        hw,
        out_hw,
        ..
    } = *k;
    let count = k.out_len() as u64;
    if count == 0 {
        return Ok(());
    }
    let (mut s, mut o) = (src.0, out.0);
    let mut v = [planes, hw[0], hw[1], out_hw[0], out_hw[1]].map(|x| x as u64);
    let [p, h, w, oh, ow] = &mut v;
    // SAFETY: caller's contract; parameters as `adaptive_avg_pool2d_f32` in conv.cu.
    unsafe {
        raw(
            stream,
            module,
            Func::AdaptiveAvgPool2dF32,
            grid(count),
            &mut [
                arg(&mut s),
                arg(&mut o),
                arg(p),
                arg(h),
                arg(w),
                arg(oh),
                arg(ow),
            ],
        )
    }
}
