//! [`Linear`]: PyTorch's `nn.Linear`, optionally with an activation fused into the same kernel.
//!
//! # Weights
//! `weight` `[out_features, in_features]` and, unless built without one, `bias`
//! `[out_features]`, as in PyTorch's `state_dict`.
//!
//! # Protocol
//! `forward` is one `linear_act` kernel: `act(x @ weight^T + bias)` over the last dimension of
//! `x`. The module is immutable; see [`Module`].

use crate::check::{check_f32, check_param};
use crate::error::{NnError, Result};
use crate::module::Module;
use crate::weights::Weights;
use chorus_core::{Tensor, UnaryOp};

/// `act(x @ weight^T + bias)` over the last dimension.
///
/// # Examples
/// ```
/// use chorus_core::{Tensor, UnaryOp};
/// use chorus_nn::{Linear, Module};
/// # let device = chorus_cpu::device()?;
/// let weight = Tensor::from_slice(&device, &[1.0_f32, 2.0, -1.0, 0.0], &[2, 2])?;
/// let bias = Tensor::from_slice(&device, &[0.5_f32, 0.5], &[2])?;
/// let layer = Linear::new(weight, Some(bias))?.with_activation(Some(UnaryOp::Relu));
/// let x = Tensor::from_slice(&device, &[1.0_f32, 1.0], &[1, 2])?;
/// assert_eq!(layer.forward(&x)?.to_vec::<f32>()?, vec![3.5, 0.0]);
/// # Ok::<(), chorus_nn::NnError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    act: Option<UnaryOp>,
}

impl Linear {
    /// A linear layer from `weight` `[out, in]` and an optional `bias` `[out]` (f32).
    ///
    /// # Errors
    /// [`NnError::InvalidConfig`] unless `weight` is 2-D; [`NnError::TensorShape`] /
    /// [`NnError::TensorDType`] (named `weight` / `bias`) when they do not fit.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Linear> {
        check_f32("weight", &weight)?;
        if weight.rank() != 2 {
            return Err(NnError::InvalidConfig {
                what: "Linear weight",
                reason: format!("must be 2-D [out, in], got shape {:?}", weight.shape()),
            });
        }
        if let Some(b) = &bias {
            check_param("bias", b, &[weight.shape()[0]])?;
        }
        Ok(Linear {
            weight,
            bias,
            act: None,
        })
    }

    /// Loads `weight` `[out, in]` and (when `bias`) `bias` `[out]` from `weights`.
    ///
    /// # Errors
    /// [`NnError::MissingTensor`], [`NnError::TensorShape`], [`NnError::TensorDType`] naming
    /// the full tensor name.
    pub fn load(
        weights: &Weights,
        in_features: usize,
        out_features: usize,
        bias: bool,
    ) -> Result<Linear> {
        let weight = weights.get("weight", &[out_features, in_features])?;
        let bias = if bias {
            Some(weights.get("bias", &[out_features])?)
        } else {
            None
        };
        Ok(Linear {
            weight,
            bias,
            act: None,
        })
    }

    /// The same layer with `act` applied in the same kernel (`None`: no activation).
    #[must_use]
    pub fn with_activation(mut self, act: Option<UnaryOp>) -> Linear {
        self.act = act;
        self
    }

    /// The weight, `[out_features, in_features]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
    /// The bias, `[out_features]`.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
    /// The fused activation.
    pub fn activation(&self) -> Option<UnaryOp> {
        self.act
    }
    /// Input size.
    pub fn in_features(&self) -> usize {
        self.weight.shape()[1]
    }
    /// Output size.
    pub fn out_features(&self) -> usize {
        self.weight.shape()[0]
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.linear_act(&self.weight, self.bias.as_ref(), self.act)?)
    }
    fn rows_independent(&self) -> bool {
        true
    }
}
