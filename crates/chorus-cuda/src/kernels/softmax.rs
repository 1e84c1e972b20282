//! Softmax (`softmax.cu`): `Kernel::Softmax`, softmax or log-softmax of `scale * x` along one
//! axis, entries dropped by a causal limit or an i64 keep-mask.
//!
//! | kernel | launch | computes |
//! |---|---|---|
//! | `softmax_f32` | ROW over `outer * inner` | row `(o, i)` holds `src[(o n + j) inner + i]`, `j < n`; max in f32, sum in double, each output rounded once |
//!
//! Launch shapes as in [`super::common`]; an empty output launches nothing.

use super::common::{arg, raw, row_grid};
use crate::module::{Func, Module};
use crate::stream::CudaStream;
use chorus_core::kernel::Softmax;
use chorus_core::BackendResult;

/// Enqueues `Kernel::Softmax`.
///
/// # Safety
/// As `kernels::launch`: `src` readable and `out` writable for `outer * n * inner` f32, the
/// mask view readable, no overlap.
pub(super) unsafe fn softmax(
    stream: &CudaStream,
    module: &Module,
    k: &Softmax,
) -> BackendResult<()> {
    let Softmax {
        src,
        out,
        outer,
        n,
        inner,
        scale,
        log,
        causal,
        ref mask,
        ..
    } = *k;
    let rows = k.rows() as u64;
    if rows == 0 || n == 0 {
        return Ok(());
    }
    let (mut s, mut o) = (src.0, out.0);
    let (mut outer, mut n, mut inner) = (outer as u64, n as u64, inner as u64);
    let (mut scale, mut log) = (scale, i32::from(log));
    let mut causal = causal.map_or(0, |q| q as u64);
    let (mut m, mut s0, mut s1) = match mask {
        Some(v) => (v.ptr.0, v.strides[0] as i64, v.strides[1] as i64),
        None => (0, 0, 0),
    };
    // SAFETY: caller's contract; parameters as `softmax_f32` in softmax.cu.
    unsafe {
        raw(
            stream,
            module,
            Func::SoftmaxF32,
            row_grid(rows),
            &mut [
                arg(&mut s),
                arg(&mut o),
                arg(&mut outer),
                arg(&mut n),
                arg(&mut inner),
                arg(&mut scale),
                arg(&mut log),
                arg(&mut causal),
                arg(&mut m),
                arg(&mut s0),
                arg(&mut s1),
            ],
        )
    }
}
