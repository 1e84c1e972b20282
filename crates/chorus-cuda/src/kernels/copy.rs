//! Data movement (`copy.cu`): strided copies (`Kernel::Copy` into a contiguous buffer,
//! `Kernel::CopyInto` between two views) and the `Kernel::IndexSelect` gather. Both move
//! 2-, 4- or 8-byte words as bits ([`word`]), whatever the element type.
//!
//! | kernel | launch | computes |
//! |---|---|---|
//! | `copy_strided_u16/_u32/_u64` | ELEMENTWISE over `src.len()` | `dst[off_d(k)] = src[off_s(k)]` over coalesced [`Dims`] |
//! | `index_select_u16/_u32/_u64` | ELEMENTWISE over `outer * count * inner` | `out[(o count + k) inner + i] = src[(o n + idx[k]) inner + i]`; a bad index gives 0 and is recorded in the launch's fault word |
//!
//! Launch shapes as in [`super::common`]; an empty output launches nothing.

use super::common::{arg, grid, raw, word, Dims};
use crate::module::{Func, Module};
use crate::stream::CudaStream;
use chorus_core::kernel::{IndexSelect, StridedCopy};
use chorus_core::BackendResult;

/// Enqueues `Kernel::Copy`: `dst[idx] = src[idx]` over two views of one shape (a gather into a
/// contiguous block, or into a region of a larger tensor).
///
/// # Safety
/// As `kernels::launch`: both views reach only valid elements of `dtype`, `dst` writable and
/// overlapping neither `src` nor itself.
pub(super) unsafe fn copy(
    stream: &CudaStream,
    module: &Module,
    k: &StridedCopy,
) -> BackendResult<()> {
    let name = "copy";
    let f = word(name, k.dtype, [Func::CopyU16, Func::CopyU32, Func::CopyU64])?;
    let mut n = k.len() as u64;
    if n == 0 {
        return Ok(());
    }
    let (shape, s) = k.coalesced();
    let mut sd = Dims::new(name, &shape, &s[0])?;
    let mut dd = Dims::new(name, &shape, &s[1])?;
    let (mut a, mut b) = (k.src.ptr.0, k.dst.ptr.0);
    // SAFETY: caller's contract; parameters as `copy_strided_*` in copy.cu.
    unsafe {
        raw(
            stream,
            module,
            f,
            grid(n),
            &mut [
                arg(&mut a),
                arg(&mut sd),
                arg(&mut b),
                arg(&mut dd),
                arg(&mut n),
            ],
        )
    }
}

/// Enqueues `Kernel::IndexSelect`; a bad index is recorded in the launch's fault word
/// (`FaultWord`), which the runtime reads back to poison the output.
///
/// # Safety
/// As `kernels::launch`: `src` readable for `outer * n * inner` elements of `dtype`, `indices`
/// for `count` i64, `out` writable for `outer * count * inner` elements, no overlap; `fault`
/// a zeroed fault word (16 bytes, 8-byte aligned device memory) of this launch alone.
pub(super) unsafe fn index_select(
    stream: &CudaStream,
    module: &Module,
    k: &IndexSelect,
) -> BackendResult<()> {
    let IndexSelect {
        src,
        indices,
        out,
        outer,
        n,
        inner,
        count,
        dtype,
        fault,
    } = *k;
    let f = word(
        "index_select",
        dtype,
        [
            Func::IndexSelectU16,
            Func::IndexSelectU32,
            Func::IndexSelectU64,
        ],
    )?;
    let total = k.out_len() as u64;
    if total == 0 {
        return Ok(());
    }
    let (mut s, mut i, mut o, mut e) = (src.0, indices.0, out.0, fault.0);
    let mut v = [outer, n, inner, count].map(|x| x as u64);
    let [a0, a1, a2, a3] = &mut v;
    // SAFETY: caller's contract; parameters as `index_select_*` in copy.cu; `fault` is
    // the launch's fault word.
    unsafe {
        raw(
            stream,
            module,
            f,
            grid(total),
            &mut [
                arg(&mut s),
                arg(&mut i),
                arg(&mut o),
                arg(a0),
                arg(a1),
                arg(a2),
                arg(a3),
                arg(&mut e),
            ],
        )
    }
}
