//! Normalization layers: [`LayerNorm`] (PyTorch's `nn.LayerNorm` over the last dimension) and
//! [`GroupNorm`] (`nn.GroupNorm` over `[N, C, *]`).
//!
//! # Weights
//! `weight` and `bias`, each `[normalized size]` (`[C]` for group norm), as PyTorch's
//! `state_dict` holds them for `elementwise_affine=True` / `affine=True`.
//!
//! # Protocol
//! One kernel per forward pass. The modules are immutable; see [`Module`].

use crate::check::check_param;
use crate::error::{NnError, Result};
use crate::module::Module;
use crate::weights::Weights;
use chorus_core::Tensor;

/// PyTorch's default `eps` for both norms.
pub const DEFAULT_EPS: f32 = 1e-5;

/// Layer norm over the last dimension, with optional per-feature scale and shift.
///
/// # Examples
/// ```
/// use chorus_core::Tensor;
/// use chorus_nn::{LayerNorm, Module};
/// # let device = chorus_cpu::device()?;
/// let norm = LayerNorm::new(2, None, None, 1e-5)?;
/// let x = Tensor::from_slice(&device, &[1.0_f32, 3.0], &[1, 2])?;
/// let y = norm.forward(&x)?.to_vec::<f32>()?;
/// assert!((y[0] + 1.0).abs() < 1e-3 && (y[1] - 1.0).abs() < 1e-3);
/// # Ok::<(), chorus_nn::NnError>(())
/// ```
#[derive(Debug, Clone)]
pub struct LayerNorm {
    size: usize,
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    eps: f32,
}

impl LayerNorm {
    /// A layer norm over a last dimension of `size`, with optional `[size]` weight and bias.
    ///
    /// # Errors
    /// [`NnError::InvalidConfig`] for a zero size or a negative `eps`;
    /// [`NnError::TensorShape`] / [`NnError::TensorDType`] for unfit parameters.
    pub fn new(
        size: usize,
        weight: Option<Tensor>,
        bias: Option<Tensor>,
        eps: f32,
    ) -> Result<LayerNorm> {
        if size == 0 || eps.is_nan() || eps < 0.0 {
            return Err(NnError::InvalidConfig {
                what: "LayerNorm",
                reason: format!("needs a non-zero size and eps >= 0, got size {size}, eps {eps}"),
            });
        }
        if let Some(w) = &weight {
            check_param("weight", w, &[size])?;
        }
        if let Some(b) = &bias {
            check_param("bias", b, &[size])?;
        }
        Ok(LayerNorm {
            size,
            weight,
            bias,
            eps,
        })
    }

    /// Loads `weight` and `bias` (`[size]` each) from `weights`.
    ///
    /// # Errors
    /// As [`LayerNorm::new`]; the load errors of [`Weights::get`], naming the full name.
    pub fn load(weights: &Weights, size: usize, eps: f32) -> Result<LayerNorm> {
        let weight = weights.get("weight", &[size])?;
        let bias = weights.get("bias", &[size])?;
        LayerNorm::new(size, Some(weight), Some(bias), eps)
    }

    /// The normalized size (last dimension).
    pub fn size(&self) -> usize {
        self.size
    }
    /// The `eps` added to the variance.
    pub fn eps(&self) -> f32 {
        self.eps
    }
}

impl LayerNorm {
    /// The norm of `x + residual` (a residual connection followed by this norm) in one kernel,
    /// bit for bit `self.forward(&x.add(residual)?)` ([`Tensor::add_layer_norm`]).
    ///
    /// # Errors
    /// [`NnError::InvalidInput`] when the last dimension of `x` is not the normalized size;
    /// [`NnError::Core`] when the two do not broadcast, or for device errors.
    pub fn forward_add(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.check(x)?;
        Ok(x.add_layer_norm(residual, self.weight.as_ref(), self.bias.as_ref(), self.eps)?)
    }

    fn check(&self, x: &Tensor) -> Result<()> {
        if x.shape().last() != Some(&self.size) {
            return Err(NnError::InvalidInput {
                module: "LayerNorm",
                shape: x.shape().to_vec(),
                reason: format!("the last dimension must be {}", self.size),
            });
        }
        Ok(())
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.check(x)?;
        Ok(x.layer_norm(self.weight.as_ref(), self.bias.as_ref(), self.eps)?)
    }
    fn rows_independent(&self) -> bool {
        true
    }
}

/// Group norm of `[N, C, *]`: statistics over each group of `C / groups` channels and all
/// positions, then per-channel scale and shift.
///
/// # Examples
/// ```
/// use chorus_core::Tensor;
/// use chorus_nn::{GroupNorm, Module};
/// # let device = chorus_cpu::device()?;
/// let norm = GroupNorm::new(1, 2, None, None, 1e-5)?;
/// let x = Tensor::from_slice(&device, &[1.0_f32, 3.0], &[1, 2, 1])?;
/// let y = norm.forward(&x)?.to_vec::<f32>()?;
/// assert!((y[0] + 1.0).abs() < 1e-3 && (y[1] - 1.0).abs() < 1e-3);
/// # Ok::<(), chorus_nn::NnError>(())
/// ```
#[derive(Debug, Clone)]
pub struct GroupNorm {
    groups: usize,
    channels: usize,
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    eps: f32,
}

impl GroupNorm {
    /// A group norm of `channels` channels in `groups` groups, with optional `[channels]`
    /// weight and bias.
    ///
    /// # Errors
    /// [`NnError::InvalidConfig`] unless `channels` is a non-zero multiple of a non-zero
    /// `groups` and `eps >= 0`; [`NnError::TensorShape`] / [`NnError::TensorDType`] for unfit
    /// parameters.
    pub fn new(
        groups: usize,
        channels: usize,
        weight: Option<Tensor>,
        bias: Option<Tensor>,
        eps: f32,
    ) -> Result<GroupNorm> {
        if groups == 0
            || channels == 0
            || !channels.is_multiple_of(groups)
            || eps.is_nan()
            || eps < 0.0
        {
            return Err(NnError::InvalidConfig {
                what: "GroupNorm",
                reason: format!(
                    "channels must be a non-zero multiple of groups and eps >= 0, got \
                     {channels} channels, {groups} groups, eps {eps}"
                ),
            });
        }
        if let Some(w) = &weight {
            check_param("weight", w, &[channels])?;
        }
        if let Some(b) = &bias {
            check_param("bias", b, &[channels])?;
        }
        Ok(GroupNorm {
            groups,
            channels,
            weight,
            bias,
            eps,
        })
    }

    /// Loads `weight` and `bias` (`[channels]` each) from `weights`.
    ///
    /// # Errors
    /// As [`GroupNorm::new`]; the load errors of [`Weights::get`], naming the full name.
    pub fn load(weights: &Weights, groups: usize, channels: usize, eps: f32) -> Result<GroupNorm> {
        let weight = weights.get("weight", &[channels])?;
        let bias = weights.get("bias", &[channels])?;
        GroupNorm::new(groups, channels, Some(weight), Some(bias), eps)
    }

    /// Number of groups.
    pub fn groups(&self) -> usize {
        self.groups
    }
    /// Number of channels.
    pub fn channels(&self) -> usize {
        self.channels
    }
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.rank() < 2 || x.shape()[1] != self.channels {
            return Err(NnError::InvalidInput {
                module: "GroupNorm",
                shape: x.shape().to_vec(),
                reason: format!("needs [N, {}, ...]", self.channels),
            });
        }
        Ok(x.group_norm(
            self.groups,
            self.weight.as_ref(),
            self.bias.as_ref(),
            self.eps,
        )?)
    }
    fn rows_independent(&self) -> bool {
        true
    }
}
