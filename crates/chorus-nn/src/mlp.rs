//! [`Mlp`]: PyTorch's `nn.Sequential(Linear, ReLU, Linear, ReLU, ..., Linear)`.
//!
//! # Weights
//! The `Sequential` numbers its children, ReLUs included, so the linear layers are `0.`,
//! `2.`, `4.`, ...: `0.weight`, `0.bias`, `2.weight`, `2.bias`, ...
//!
//! # Protocol
//! Each ReLU is fused into the linear layer before it (`linear_act(.., Some(Relu))`), so a
//! forward pass is one kernel per linear layer. The module is immutable; see [`Module`].

use crate::error::{NnError, Result};
use crate::linear::Linear;
use crate::module::Module;
use crate::weights::Weights;
use chorus_core::{Tensor, UnaryOp};

/// A stack of linear layers with ReLU between them (none after the last).
///
/// # Examples
/// ```
/// use chorus_core::Tensor;
/// use chorus_nn::{Linear, Mlp, Module};
/// # let device = chorus_cpu::device()?;
/// let l0 = Linear::new(Tensor::from_slice(&device, &[1.0_f32, -1.0], &[2, 1])?, None)?;
/// let l1 = Linear::new(Tensor::from_slice(&device, &[1.0_f32, 1.0], &[1, 2])?, None)?;
/// let mlp = Mlp::new(vec![l0, l1])?; // relu between the two
/// let x = Tensor::from_slice(&device, &[3.0_f32, -2.0], &[2, 1])?;
/// assert_eq!(mlp.forward(&x)?.to_vec::<f32>()?, vec![3.0, 2.0]);
/// # Ok::<(), chorus_nn::NnError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Mlp {
    layers: Vec<Linear>,
}

impl Mlp {
    /// An MLP from its linear layers: ReLU is fused into every layer but the last (replacing
    /// any activation they had); the last keeps its own.
    ///
    /// # Errors
    /// [`NnError::InvalidConfig`] for no layers or when one layer's output size is not the
    /// next one's input size.
    pub fn new(layers: Vec<Linear>) -> Result<Mlp> {
        if layers.is_empty() {
            return Err(NnError::InvalidConfig {
                what: "Mlp layers",
                reason: "needs at least one linear layer".into(),
            });
        }
        for (i, pair) in layers.windows(2).enumerate() {
            if pair[0].out_features() != pair[1].in_features() {
                return Err(NnError::InvalidConfig {
                    what: "Mlp layers",
                    reason: format!(
                        "layer {i} gives {} features but layer {} takes {}",
                        pair[0].out_features(),
                        i + 1,
                        pair[1].in_features()
                    ),
                });
            }
        }
        let last = layers.len() - 1;
        let layers = layers
            .into_iter()
            .enumerate()
            .map(|(i, l)| {
                if i < last {
                    l.with_activation(Some(UnaryOp::Relu))
                } else {
                    l
                }
            })
            .collect();
        Ok(Mlp { layers })
    }

    /// Loads the MLP with feature sizes `sizes` (`[512, 1024, 1024, 512]`: three linear
    /// layers) from `0.weight`, `0.bias`, `2.weight`, ... (every layer with a bias).
    ///
    /// # Errors
    /// [`NnError::InvalidConfig`] for fewer than two sizes or a zero size; the load errors of
    /// [`Weights::get`], naming the full tensor name.
    pub fn load(weights: &Weights, sizes: &[usize]) -> Result<Mlp> {
        if sizes.len() < 2 || sizes.contains(&0) {
            return Err(NnError::InvalidConfig {
                what: "Mlp sizes",
                reason: format!("needs at least two non-zero sizes, got {sizes:?}"),
            });
        }
        let layers = sizes
            .windows(2)
            .enumerate()
            .map(|(i, io)| Linear::load(&weights.sub(&format!("{}.", 2 * i)), io[0], io[1], true))
            .collect::<Result<Vec<_>>>()?;
        Mlp::new(layers)
    }

    /// The linear layers (with their fused activations).
    pub fn layers(&self) -> &[Linear] {
        &self.layers
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = self.layers[0].forward(x)?;
        for layer in &self.layers[1..] {
            y = layer.forward(&y)?;
        }
        Ok(y)
    }
    fn rows_independent(&self) -> bool {
        true
    }
}
