//! The GEMM path of `Kernel::Matmul`: the product goes to the stream's cuBLAS handle
//! (`crate::blas`, `crate::lt`: the library wrappers), the rest to two kernels of
//! `elementwise.cu` (this family has no `.cu` file of its own).
//!
//! - `k == 0`: the product is all zeros, written by `fill_f32` (ELEMENTWISE over
//!   `batch * m * n`), then the epilogue as below.
//! - `batch == 1` with a bias or an activation: one cuBLASLt call with the epilogue fused, when
//!   `lt` takes it (bias, ReLU, tanh-GELU and their combinations, 256-byte aligned operands,
//!   a layout and a plan it has; otherwise the path below).
//! - otherwise `cublasGemmStridedBatchedEx`, then, with a bias or an activation, `bias_act_f32`
//!   (ELEMENTWISE over `batch * m * n`): `out = act(out + bias[col])` in place over the
//!   contiguous `[batch * m, n]` result.

use super::common::{arg, grid, ptr, raw, unary_code};
use crate::module::{Func, Module};
use crate::stream::CudaStream;
use chorus_core::kernel::Matmul;
use chorus_core::BackendResult;

/// Enqueues `Kernel::Matmul` (its `rhs_derived` is the CPU backend's: unused here).
///
/// # Safety
/// As `kernels::launch`: the operands (and the bias, `n` f32) readable over their extents,
/// `out` writable for `batch * m * n` f32, no overlap.
pub(super) unsafe fn matmul(
    stream: &CudaStream,
    module: &Module,
    mm: &Matmul,
    tf32: bool,
) -> BackendResult<()> {
    let Matmul {
        ref lhs,
        ref rhs,
        out,
        batch,
        m,
        n,
        k,
        epilogue,
        ..
    } = *mm;
    let count = mm.out_len() as u64;
    if count == 0 {
        return Ok(());
    }
    // SAFETY: for every `raw` call below, the parameter lists follow elementwise.cu exactly,
    // and the pointers come from the descriptor, whose extents the caller guarantees; likewise
    // for the cuBLAS(Lt) calls.
    unsafe {
        if k == 0 {
            let (mut o, mut c, mut z) = (out.0, count, 0f32);
            raw(
                stream,
                module,
                Func::FillF32,
                grid(c),
                &mut [arg(&mut o), arg(&mut c), arg(&mut z)],
            )?;
        } else {
            let blas = stream.blas()?;
            if batch == 1 && epilogue.is_some() {
                let fused = blas.lt.matmul(
                    stream.raw,
                    lhs,
                    rhs,
                    out,
                    [m, n, k],
                    epilogue.bias,
                    epilogue.act,
                    tf32,
                    |e| stream.fail(e),
                )?;
                if fused {
                    return Ok(());
                }
            }
            blas.sgemm(lhs, rhs, out, [batch, m, n, k], tf32, |e| stream.fail(e))?;
        }
        if !epilogue.is_some() {
            return Ok(());
        }
        let mut act = match epilogue.act {
            Some(op) => unary_code("matmul", op)?,
            None => -1,
        };
        let (mut o, mut b) = (out.0, ptr(epilogue.bias));
        let (mut rows, mut cols) = (mm.out_rows() as u64, n as u64);
        raw(
            stream,
            module,
            Func::BiasActF32,
            grid(count),
            &mut [
                arg(&mut o),
                arg(&mut b),
                arg(&mut rows),
                arg(&mut cols),
                arg(&mut act),
            ],
        )
    }
}
