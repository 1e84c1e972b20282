//! Reductions (`reduce.cu`): `Kernel::Reduce` over any set of dims of a contiguous tensor,
//! and `Kernel::ArgReduce` (value and index of the max / min) along one axis.
//!
//! | kernel | launch | computes |
//! |---|---|---|
//! | `reduce_f32`, `reduce_i64` | ROW over the `n_out` kept elements; 1024 threads per block when `n_out <= 64` and `n_red >= 4096`, else [`BLOCK`] | `out[r] = op` over the `n_red` reduced elements, kept and reduced dims as two coalesced [`Dims`] |
//! | `reduce_partial_f32` then `reduce_finish_f32` | ROW over `n_out * parts`, then ROW over `n_out` | the same for f32 with at most [`SPLIT_MAX_OUTPUTS`] outputs of at least [`SPLIT_MIN_REDUCED`] elements, in two passes through the stream's scratch buffer ([`split_reduce`]) |
//! | `arg_reduce_f32` | ROW over `outer * inner` | `values[r]`, `indices[r]` = the max / min of row `r` and its first index |
//!
//! Launch shapes as in [`super::common`]; an empty output launches nothing.

use super::common::{arg, raw, raw_with, row_grid, unsupported, Dims, BLOCK};
use crate::module::{Func, Module};
use crate::stream::CudaStream;
use chorus_core::kernel::{ArgOp, ArgReduce, Reduce, ReduceOp};
use chorus_core::{BackendResult, DType};

/// Reductions with at most this many outputs ...
const SPLIT_MAX_OUTPUTS: u64 = 512;
/// ... and at least this many reduced elements per output run in two passes, so that more than
/// one block works on each output.
const SPLIT_MIN_REDUCED: u64 = 1 << 17;

/// Enqueues `Kernel::Reduce`.
///
/// # Safety
/// As `kernels::launch`: `src` readable for the product of `shape`, `out` writable for the
/// product of the kept dims, both of `dtype`, no overlap.
pub(super) unsafe fn reduce(stream: &CudaStream, module: &Module, k: &Reduce) -> BackendResult<()> {
    let Reduce {
        op,
        src,
        out,
        dtype,
        ..
    } = *k;
    let name = "reduce";
    let f = match dtype {
        DType::F32 => Func::ReduceF32,
        DType::I64 => Func::ReduceI64,
        other => return Err(unsupported(name, format!("{other} reduction"))),
    };
    let mut code: i32 = match op {
        ReduceOp::Sum => 0,
        ReduceOp::Mean => 1,
        ReduceOp::Max => 2,
        ReduceOp::Min => 3,
        ReduceOp::Prod => 4,
        other => return Err(unsupported(name, format!("{other:?}"))),
    };
    // An empty input may still have kept elements (reduced to the identity / NaN by the kernel
    // with n_red == 0), or none at all.
    let (mut n_out, mut n_red) = (k.out_len() as u64, k.reduced_len() as u64);
    if n_out == 0 {
        return Ok(());
    }
    let split = k.split();
    let mut kept = Dims::new(name, &split.kept.0, &split.kept.1)?;
    let mut red = Dims::new(name, &split.reduced.0, &split.reduced.1)?;
    let (mut s, mut o) = (src.0, out.0);
    if f == Func::ReduceF32 && n_out <= SPLIT_MAX_OUTPUTS && n_red >= SPLIT_MIN_REDUCED {
        // SAFETY: caller's contract, for `src` over `kept` × `red` and `out` (`n_out` f32).
        return unsafe { split_reduce(stream, module, code, s, kept, red, o, n_out, n_red) };
    }
    // Few long rows: a full-size block per row reads four times as fast.
    let threads = if n_out <= 64 && n_red >= 4096 {
        1024
    } else {
        BLOCK
    };
    // SAFETY: caller's contract; parameters as `reduce_f32` / `reduce_i64` in reduce.cu.
    unsafe {
        raw_with(
            stream,
            module,
            f,
            (row_grid(n_out), threads, 0),
            &mut [
                arg(&mut code),
                arg(&mut s),
                arg(&mut kept),
                arg(&mut red),
                arg(&mut o),
                arg(&mut n_out),
                arg(&mut n_red),
            ],
        )
    }
}

/// An f32 reduction in two passes (`reduce_partial_f32`, `reduce_finish_f32`): each output's
/// reduced elements are split into `parts` chunks folded by separate blocks into double partial
/// results in the stream's scratch buffer, then folded per output. The split depends only on
/// the shape, so the result is the same on every run.
///
/// # Safety
/// As `kernels::launch`, for the reduction's `src` (readable over `kept` × `red`) and `out`
/// (`n_out` f32).
#[expect(
    clippy::too_many_arguments,
    reason = "the kernels' parameters, computed by `reduce`"
)]
unsafe fn split_reduce(
    stream: &CudaStream,
    module: &Module,
    mut code: i32,
    mut src: u64,
    mut kept: Dims,
    mut red: Dims,
    mut out: u64,
    mut n_out: u64,
    mut n_red: u64,
) -> BackendResult<()> {
    let mut chunk = n_red.div_ceil(1024).max(4096);
    let mut parts = n_red.div_ceil(chunk);
    let bytes = usize::try_from(n_out * parts * 8).expect("at most 512 × 1024 partials");
    // The scratch lock is held until both passes are enqueued, so another thread sharing this
    // stream cannot slip its own partials in between.
    stream.with_scratch(bytes, |scratch| {
        let mut partial = scratch;
        let mut rows = n_out * parts;
        // SAFETY: caller's contract for src/out; `partial` is this stream's scratch buffer of at
        // least `bytes` bytes, used only by kernels of this stream, in stream order.
        unsafe {
            raw(
                stream,
                module,
                Func::ReducePartialF32,
                row_grid(rows),
                &mut [
                    arg(&mut code),
                    arg(&mut src),
                    arg(&mut kept),
                    arg(&mut red),
                    arg(&mut partial),
                    arg(&mut n_out),
                    arg(&mut n_red),
                    arg(&mut parts),
                    arg(&mut chunk),
                ],
            )?;
            rows = n_out;
            raw(
                stream,
                module,
                Func::ReduceFinishF32,
                row_grid(rows),
                &mut [
                    arg(&mut code),
                    arg(&mut partial),
                    arg(&mut out),
                    arg(&mut n_out),
                    arg(&mut n_red),
                    arg(&mut parts),
                ],
            )
        }
    })
}

/// Enqueues `Kernel::ArgReduce`.
///
/// # Safety
/// As `kernels::launch`: `src` readable for `outer * n * inner` f32, `values` and `indices`
/// writable for `outer * inner` f32 / i64, no overlap.
pub(super) unsafe fn arg_reduce(
    stream: &CudaStream,
    module: &Module,
    k: &ArgReduce,
) -> BackendResult<()> {
    let ArgReduce {
        op,
        src,
        values,
        indices,
        outer,
        n,
        inner,
        ..
    } = *k;
    let mut code: i32 = match op {
        ArgOp::Max => 0,
        ArgOp::Min => 1,
        other => return Err(unsupported("arg_reduce", format!("{other:?}"))),
    };
    let rows = k.rows() as u64;
    if rows == 0 {
        return Ok(());
    }
    let (mut s, mut v, mut i) = (src.0, values.0, indices.0);
    let (mut outer, mut n, mut inner) = (outer as u64, n as u64, inner as u64);
    // SAFETY: caller's contract; parameters as `arg_reduce_f32` in reduce.cu.
    unsafe {
        raw(
            stream,
            module,
            Func::ArgReduceF32,
            row_grid(rows),
            &mut [
                arg(&mut code),
                arg(&mut s),
                arg(&mut v),
                arg(&mut i),
                arg(&mut outer),
                arg(&mut n),
                arg(&mut inner),
            ],
        )
    }
}
