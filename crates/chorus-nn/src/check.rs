//! Checks of tensors handed to module constructors (the `new` functions), which name the
//! parameter as the module calls it (`weight`, `bias`, `in_proj_weight`).

use crate::error::{NnError, Result};
use chorus_core::{DType, Tensor};

/// Checks that a tensor given to a constructor is f32.
pub(crate) fn check_f32(name: &str, t: &Tensor) -> Result<()> {
    if t.dtype() == DType::F32 {
        Ok(())
    } else {
        Err(NnError::TensorDType {
            name: name.to_string(),
            expected: "f32",
            got: t.dtype().name().to_string(),
        })
    }
}

/// Checks that a tensor given to a constructor is f32 of shape `expected`.
pub(crate) fn check_param(name: &str, t: &Tensor, expected: &[usize]) -> Result<()> {
    check_f32(name, t)?;
    if t.shape() == expected {
        Ok(())
    } else {
        Err(NnError::TensorShape {
            name: name.to_string(),
            expected: expected.to_vec(),
            got: t.shape().to_vec(),
        })
    }
}
