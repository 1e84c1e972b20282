//! Normalizations (`norm.cu`): `Kernel::LayerNorm` (over the last `n` elements of each row,
//! with an optional residual added first) and `Kernel::GroupNorm` (over each group of
//! `channels / groups` channels of a `[batch, channels, spatial]` tensor). Mean and biased
//! variance in double, in two passes; each output rounded once.
//!
//! | kernel | launch | computes |
//! |---|---|---|
//! | `layer_norm_f32` | ROW over `rows` | `(x [+ residual] - mean) / sqrt(var + eps) [* weight] [+ bias]`, weight and bias `[n]` |
//! | `group_norm_f32` | ROW over `batch * groups` | the same over each group, weight and bias per channel |
//!
//! Launch shapes as in [`super::common`]; an empty output launches nothing.

use super::common::{arg, ptr, raw, row_grid};
use crate::module::{Func, Module};
use crate::stream::CudaStream;
use chorus_core::kernel::{GroupNorm, LayerNorm};
use chorus_core::BackendResult;

/// Enqueues `Kernel::LayerNorm`.
///
/// # Safety
/// As `kernels::launch`: `src` (and a residual) readable and `out` writable for `rows * n` f32,
/// weight and bias readable for `n` f32, no overlap.
pub(super) unsafe fn layer_norm(
    stream: &CudaStream,
    module: &Module,
    k: &LayerNorm,
) -> BackendResult<()> {
    let LayerNorm {
        src,
        residual,
        out,
        weight,
        bias,
        rows,
        n,
        eps,
        ..
    } = *k;
    if rows == 0 {
        return Ok(());
    }
    let (mut s, mut o, mut w, mut b) = (src.0, out.0, ptr(weight), ptr(bias));
    let mut r = ptr(residual);
    let (mut rows, mut n, mut eps) = (rows as u64, n as u64, eps);
    // SAFETY: caller's contract; parameters as `layer_norm_f32` in norm.cu.
    unsafe {
        raw(
            stream,
            module,
            Func::LayerNormF32,
            row_grid(rows),
            &mut [
                arg(&mut s),
                arg(&mut r),
                arg(&mut o),
                arg(&mut w),
                arg(&mut b),
                arg(&mut rows),
                arg(&mut n),
                arg(&mut eps),
            ],
        )
    }
}

/// Enqueues `Kernel::GroupNorm`.
///
/// # Safety
/// As `kernels::launch`: `src` readable and `out` writable for `batch * channels * spatial`
/// f32, weight and bias readable for `channels` f32, no overlap.
pub(super) unsafe fn group_norm(
    stream: &CudaStream,
    module: &Module,
    k: &GroupNorm,
) -> BackendResult<()> {
    let GroupNorm {
        src,
        out,
        weight,
        bias,
        batch,
        channels,
        groups,
        spatial,
        eps,
        ..
    } = *k;
    let rows = k.rows() as u64;
    if rows == 0 {
        return Ok(());
    }
    let (mut s, mut o, mut w, mut b) = (src.0, out.0, ptr(weight), ptr(bias));
    let (mut batch, mut c, mut g, mut sp, mut eps) = (
        batch as u64,
        channels as u64,
        groups as u64,
        spatial as u64,
        eps,
    );
    // SAFETY: caller's contract; parameters as `group_norm_f32` in norm.cu.
    unsafe {
        raw(
            stream,
            module,
            Func::GroupNormF32,
            row_grid(rows),
            &mut [
                arg(&mut s),
                arg(&mut o),
                arg(&mut w),
                arg(&mut b),
                arg(&mut batch),
                arg(&mut c),
                arg(&mut g),
                arg(&mut sp),
                arg(&mut eps),
            ],
        )
    }
}
