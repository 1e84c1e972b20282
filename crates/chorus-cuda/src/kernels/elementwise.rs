//! Elementwise kernels (`elementwise.cu`): fill, randn, unary activations and binary
//! arithmetic, each output from its own inputs. The matmul's bias/activation epilogue
//! (`bias_act_f32`) lives in `elementwise.cu` too, beside the activations it shares with
//! `unary_f32`, but is launched by [`super::matmul`].
//!
//! | kernel | launch | computes |
//! |---|---|---|
//! | `fill_f32`, `fill_i64` | ELEMENTWISE over `len` | `out[k] = value` |
//! | `randn_f32` | ELEMENTWISE over the `ceil(len / 4)` Philox counters | standard normals, bit for bit the CPU backend's |
//! | `unary_f32` | ELEMENTWISE over `len` | `out[k] = act(op, src[k])` (codes: [`unary_code`]) |
//! | `binary_f32`, `binary_i64` | ELEMENTWISE over `lhs.len()` | `out[k] = lhs[..] op rhs[..]` over coalesced [`Dims`] |
//!
//! Launch shapes as in [`super::common`]; an empty output launches nothing.

use super::common::{arg, grid, raw, unary_code, unsupported, Dims};
use crate::module::{Func, Module};
use crate::stream::CudaStream;
use chorus_core::kernel::{Binary, BinaryOp, Fill, Randn, Scalar, Unary};
use chorus_core::{BackendResult, DType};

/// Enqueues `Kernel::Fill`.
///
/// # Safety
/// As `kernels::launch`: `out` holds `len` writable elements of the value's type.
pub(super) unsafe fn fill(stream: &CudaStream, module: &Module, k: &Fill) -> BackendResult<()> {
    let Fill { out, len, value } = *k;
    let (mut o, mut n) = (out.0, len as u64);
    if n == 0 {
        return Ok(());
    }
    // SAFETY: caller's contract; parameters as `fill_f32` / `fill_i64` in elementwise.cu.
    unsafe {
        match value {
            Scalar::F32(mut v) => raw(
                stream,
                module,
                Func::FillF32,
                grid(n),
                &mut [arg(&mut o), arg(&mut n), arg(&mut v)],
            ),
            Scalar::I64(mut v) => raw(
                stream,
                module,
                Func::FillI64,
                grid(n),
                &mut [arg(&mut o), arg(&mut n), arg(&mut v)],
            ),
            other => Err(unsupported("fill", format!("fill value {other:?}"))),
        }
    }
}

/// Enqueues `Kernel::Randn`.
///
/// # Safety
/// As `kernels::launch`: `out` holds `len` writable f32.
pub(super) unsafe fn randn(stream: &CudaStream, module: &Module, k: &Randn) -> BackendResult<()> {
    let Randn { out, len, seed, .. } = *k;
    let (mut o, mut n, mut s) = (out.0, len as u64, seed);
    if n == 0 {
        return Ok(());
    }
    // SAFETY: caller's contract; parameters as `randn_f32` in elementwise.cu.
    unsafe {
        raw(
            stream,
            module,
            Func::RandnF32,
            grid(k.blocks() as u64),
            &mut [arg(&mut o), arg(&mut n), arg(&mut s)],
        )
    }
}

/// Enqueues `Kernel::Unary`.
///
/// # Safety
/// As `kernels::launch`: `src` readable and `out` writable for `len` f32, no overlap.
pub(super) unsafe fn unary(stream: &CudaStream, module: &Module, k: &Unary) -> BackendResult<()> {
    let Unary {
        op, src, out, len, ..
    } = *k;
    let mut code = unary_code("unary", op)?;
    let (mut s, mut o, mut n) = (src.0, out.0, len as u64);
    if n == 0 {
        return Ok(());
    }
    // SAFETY: caller's contract; parameters as `unary_f32` in elementwise.cu.
    unsafe {
        raw(
            stream,
            module,
            Func::UnaryF32,
            grid(n),
            &mut [arg(&mut code), arg(&mut s), arg(&mut o), arg(&mut n)],
        )
    }
}

/// Enqueues `Kernel::Binary`.
///
/// # Safety
/// As `kernels::launch`: both views readable over their extents, `out` writable for
/// `lhs.len()` elements of `dtype`, no overlap with the inputs.
pub(super) unsafe fn binary(stream: &CudaStream, module: &Module, k: &Binary) -> BackendResult<()> {
    let Binary {
        op,
        ref lhs,
        ref rhs,
        out,
        dtype,
    } = *k;
    let name = "binary";
    let f = match dtype {
        DType::F32 => Func::BinaryF32,
        DType::I64 => Func::BinaryI64,
        other => return Err(unsupported(name, format!("{other} arithmetic"))),
    };
    let mut code: i32 = match op {
        BinaryOp::Add => 0,
        BinaryOp::Sub => 1,
        BinaryOp::Mul => 2,
        BinaryOp::Div => 3,
        other => return Err(unsupported(name, format!("{other:?}"))),
    };
    let mut n = k.len() as u64;
    if n == 0 {
        return Ok(());
    }
    let (shape, s) = k.coalesced();
    let mut ad = Dims::new(name, &shape, &s[0])?;
    let mut bd = Dims::new(name, &shape, &s[1])?;
    let (mut a, mut b, mut o) = (lhs.ptr.0, rhs.ptr.0, out.0);
    // SAFETY: caller's contract; parameters as `binary_f32` / `binary_i64` in elementwise.cu.
    unsafe {
        raw(
            stream,
            module,
            f,
            grid(n),
            &mut [
                arg(&mut code),
                arg(&mut a),
                arg(&mut ad),
                arg(&mut b),
                arg(&mut bd),
                arg(&mut o),
                arg(&mut n),
            ],
        )
    }
}
