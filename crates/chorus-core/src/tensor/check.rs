//! Argument checks shared by every op: they run before anything is allocated or enqueued and
//! return the typed error naming the op.

use super::Tensor;
use crate::dtype::DType;
use crate::error::{Error, Result};

/// `a` and `b` live on the same device.
pub(super) fn same_device(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    let (lhs, rhs) = (a.device_id(), b.device_id());
    if lhs == rhs {
        Ok(())
    } else {
        Err(Error::DeviceMismatch { op, lhs, rhs })
    }
}

/// `b` has `a`'s dtype.
pub(super) fn same_dtype(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    need_dtype(op, b, a.dtype)
}

/// `t` has dtype `want`.
pub(super) fn need_dtype(op: &'static str, t: &Tensor, want: DType) -> Result<()> {
    if t.dtype == want {
        Ok(())
    } else {
        Err(Error::DTypeMismatch {
            op,
            expected: want,
            got: t.dtype,
        })
    }
}

/// `t` has a dtype this op front-end computes with (f32 or i64).
pub(super) fn supported(op: &'static str, t: &Tensor) -> Result<()> {
    match t.dtype {
        DType::F32 | DType::I64 => Ok(()),
        dtype => Err(Error::UnsupportedDType { op, dtype }),
    }
}

/// `(outer, n, inner)` of `shape` around dimension `d` (`(1, 1, 1)` for a 0-d shape).
pub(super) fn split_at(shape: &[usize], d: usize) -> (usize, usize, usize) {
    if shape.is_empty() {
        return (1, 1, 1);
    }
    (
        shape[..d].iter().product(),
        shape[d],
        shape[d + 1..].iter().product(),
    )
}
