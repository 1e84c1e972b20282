//! [`TransformerEncoderLayer`] and [`TransformerEncoder`]: PyTorch's modules of those names
//! with `batch_first=True`, in evaluation mode (no dropout).
//!
//! # Weights
//! A layer: `self_attn.*` (see [`MultiheadAttention`]), `linear1.weight` `[F, E]`,
//! `linear1.bias` `[F]`, `linear2.weight` `[E, F]`, `linear2.bias` `[E]`, `norm1.*`, `norm2.*`
//! (`[E]` each). An encoder: `layers.{i}.` for each layer and, when built with a final norm,
//! `norm.weight`, `norm.bias`.
//!
//! # Protocol
//! Post-norm (PyTorch's default, `norm_first=False`):
//! `x = norm1(x + self_attn(x)); x = norm2(x + linear2(act(linear1(x))))`.
//! Pre-norm (`norm_first=True`):
//! `x = x + self_attn(norm1(x)); x = x + linear2(act(linear1(norm2(x))))`.
//! The activation is fused into `linear1`'s kernel. The modules are immutable; see [`Module`].

use crate::attention::MultiheadAttention;
use crate::error::{NnError, Result};
use crate::linear::Linear;
use crate::module::Module;
use crate::norm::{LayerNorm, DEFAULT_EPS};
use crate::weights::Weights;
use chorus_core::{Tensor, UnaryOp};

/// The settings of a transformer encoder layer, named as PyTorch's constructor arguments.
///
/// # Examples
/// ```
/// use chorus_core::UnaryOp;
/// use chorus_nn::TransformerConfig;
/// let config = TransformerConfig::new(256, 4)
///     .dim_feedforward(1024)
///     .activation(UnaryOp::Gelu);
/// assert_eq!(config.layer_norm_eps, 1e-5);
/// assert!(!config.norm_first);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct TransformerConfig {
    /// Embedding size `E`.
    pub d_model: usize,
    /// Number of attention heads (divides `d_model`).
    pub nhead: usize,
    /// Hidden size `F` of the feed-forward block (PyTorch's default 2048).
    pub dim_feedforward: usize,
    /// Activation of the feed-forward block (`Relu`, PyTorch's default, or `Gelu`).
    pub activation: UnaryOp,
    /// `eps` of both layer norms (1e-5).
    pub layer_norm_eps: f32,
    /// Pre-norm instead of post-norm (false).
    pub norm_first: bool,
}

impl TransformerConfig {
    /// PyTorch's defaults for `d_model` and `nhead`: feed-forward 2048, relu, eps 1e-5,
    /// post-norm.
    pub fn new(d_model: usize, nhead: usize) -> TransformerConfig {
        TransformerConfig {
            d_model,
            nhead,
            dim_feedforward: 2048,
            activation: UnaryOp::Relu,
            layer_norm_eps: DEFAULT_EPS,
            norm_first: false,
        }
    }
    /// With feed-forward size `f`.
    #[must_use]
    pub fn dim_feedforward(mut self, f: usize) -> TransformerConfig {
        self.dim_feedforward = f;
        self
    }
    /// With activation `act`.
    #[must_use]
    pub fn activation(mut self, act: UnaryOp) -> TransformerConfig {
        self.activation = act;
        self
    }
    /// With layer-norm `eps`.
    #[must_use]
    pub fn layer_norm_eps(mut self, eps: f32) -> TransformerConfig {
        self.layer_norm_eps = eps;
        self
    }
    /// Pre-norm (`true`) or post-norm.
    #[must_use]
    pub fn norm_first(mut self, norm_first: bool) -> TransformerConfig {
        self.norm_first = norm_first;
        self
    }
}

/// One encoder layer: self-attention and a feed-forward block, each with a residual
/// connection and a layer norm.
///
/// # Examples
/// ```
/// use chorus_core::Tensor;
/// use chorus_nn::{Module, TransformerConfig, TransformerEncoderLayer, Weights};
/// # let device = chorus_cpu::device()?;
/// let (e, f) = (8, 16);
/// let names = [
///     ("self_attn.in_proj_weight", vec![3 * e, e]),
///     ("self_attn.in_proj_bias", vec![3 * e]),
///     ("self_attn.out_proj.weight", vec![e, e]),
///     ("self_attn.out_proj.bias", vec![e]),
///     ("linear1.weight", vec![f, e]),
///     ("linear1.bias", vec![f]),
///     ("linear2.weight", vec![e, f]),
///     ("linear2.bias", vec![e]),
///     ("norm1.weight", vec![e]),
///     ("norm1.bias", vec![e]),
///     ("norm2.weight", vec![e]),
///     ("norm2.bias", vec![e]),
/// ];
/// let tensors = names
///     .iter()
///     .enumerate()
///     .map(|(i, (name, shape))| Ok((name.to_string(), Tensor::randn(&device, shape, i as u64)?)))
///     .collect::<chorus_core::Result<Vec<_>>>()?;
/// let weights = Weights::from_tensors(tensors);
/// let layer = TransformerEncoderLayer::load(&weights, &TransformerConfig::new(e, 2).dim_feedforward(f))?;
/// let x = Tensor::randn(&device, &[2, 5, e], 99)?;
/// assert_eq!(layer.forward(&x)?.shape(), &[2, 5, e]);
/// # Ok::<(), chorus_nn::NnError>(())
/// ```
#[derive(Debug, Clone)]
pub struct TransformerEncoderLayer {
    self_attn: MultiheadAttention,
    linear1: Linear,
    linear2: Linear,
    norm1: LayerNorm,
    norm2: LayerNorm,
    norm_first: bool,
}

impl TransformerEncoderLayer {
    /// A layer from its parts; `activation` is fused into `linear1` (replacing any it had).
    ///
    /// # Errors
    /// [`NnError::InvalidConfig`] when the parts' sizes do not chain: attention over `E`,
    /// `linear1` `E -> F`, `linear2` `F -> E`, both norms over `E`.
    pub fn new(
        self_attn: MultiheadAttention,
        linear1: Linear,
        linear2: Linear,
        norm1: LayerNorm,
        norm2: LayerNorm,
        activation: UnaryOp,
        norm_first: bool,
    ) -> Result<TransformerEncoderLayer> {
        let e = self_attn.embed_dim();
        let f = linear1.out_features();
        let fits = linear1.in_features() == e
            && linear2.in_features() == f
            && linear2.out_features() == e
            && norm1.size() == e
            && norm2.size() == e;
        if !fits {
            return Err(NnError::InvalidConfig {
                what: "TransformerEncoderLayer",
                reason: format!(
                    "parts do not chain: attention over {e}, linear1 {} -> {f}, linear2 {} -> \
                     {}, norms over {} and {}",
                    linear1.in_features(),
                    linear2.in_features(),
                    linear2.out_features(),
                    norm1.size(),
                    norm2.size()
                ),
            });
        }
        Ok(TransformerEncoderLayer {
            self_attn,
            linear1: linear1.with_activation(Some(activation)),
            linear2,
            norm1,
            norm2,
            norm_first,
        })
    }

    /// Loads a layer with settings `config` from `self_attn.*`, `linear1.*`, `linear2.*`,
    /// `norm1.*`, `norm2.*`.
    ///
    /// # Errors
    /// [`NnError::InvalidConfig`] for invalid settings; the load errors of [`Weights::get`],
    /// naming the full tensor name.
    pub fn load(weights: &Weights, config: &TransformerConfig) -> Result<TransformerEncoderLayer> {
        let (e, f, eps) = (
            config.d_model,
            config.dim_feedforward,
            config.layer_norm_eps,
        );
        if f == 0 {
            return Err(NnError::InvalidConfig {
                what: "TransformerConfig",
                reason: "dim_feedforward must be non-zero".into(),
            });
        }
        TransformerEncoderLayer::new(
            MultiheadAttention::load(&weights.sub("self_attn."), e, config.nhead)?,
            Linear::load(&weights.sub("linear1."), e, f, true)?,
            Linear::load(&weights.sub("linear2."), f, e, true)?,
            LayerNorm::load(&weights.sub("norm1."), e, eps)?,
            LayerNorm::load(&weights.sub("norm2."), e, eps)?,
            config.activation,
            config.norm_first,
        )
    }

    /// The layer's attention.
    pub fn self_attn(&self) -> &MultiheadAttention {
        &self.self_attn
    }

    /// The layer on `x` `[B, L, E]` with an optional i64 key keep-mask `[B, L]` (1 = attend)
    /// and an optional causal mask; see [`MultiheadAttention::forward_masked`].
    ///
    /// # Errors
    /// [`NnError::InvalidInput`] for an unfit `x` or mask; [`NnError::Core`] for device errors.
    pub fn forward_masked(
        &self,
        x: &Tensor,
        key_keep_mask: Option<&Tensor>,
        causal: bool,
    ) -> Result<Tensor> {
        let attn = |t: &Tensor| self.self_attn.forward_masked(t, key_keep_mask, causal);
        let ff = |t: &Tensor| self.linear2.forward(&self.linear1.forward(t)?);
        if self.norm_first {
            let x = x.add(&attn(&self.norm1.forward(x)?)?)?;
            Ok(x.add(&ff(&self.norm2.forward(&x)?)?)?)
        } else {
            // Each residual add is fused into the norm after it (bit for bit the same).
            let x = self.norm1.forward_add(x, &attn(x)?)?;
            self.norm2.forward_add(&x, &ff(&x)?)
        }
    }
}

impl Module for TransformerEncoderLayer {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_masked(x, None, false)
    }
    fn rows_independent(&self) -> bool {
        true
    }
}

/// A stack of encoder layers with an optional final layer norm.
///
/// # Examples
/// ```no_run
/// use chorus_core::Tensor;
/// use chorus_nn::{Module, TransformerConfig, TransformerEncoder, Weights};
/// let device = chorus_cpu::device()?;
/// let weights = Weights::from_file(&device, "encoder.safetensors")?;
/// let config = TransformerConfig::new(32, 4).dim_feedforward(64);
/// let encoder = TransformerEncoder::load(&weights, &config, 2, false)?;
/// let y = encoder.forward(&Tensor::randn(&device, &[3, 9, 32], 0)?)?;
/// # Ok::<(), chorus_nn::NnError>(())
/// ```
#[derive(Debug, Clone)]
pub struct TransformerEncoder {
    layers: Vec<TransformerEncoderLayer>,
    norm: Option<LayerNorm>,
}

impl TransformerEncoder {
    /// An encoder from its layers and an optional final norm.
    ///
    /// # Errors
    /// [`NnError::InvalidConfig`] for no layers, layers of different sizes, or a final norm of
    /// another size.
    pub fn new(
        layers: Vec<TransformerEncoderLayer>,
        norm: Option<LayerNorm>,
    ) -> Result<TransformerEncoder> {
        let Some(first) = layers.first() else {
            return Err(NnError::InvalidConfig {
                what: "TransformerEncoder",
                reason: "needs at least one layer".into(),
            });
        };
        let e = first.self_attn.embed_dim();
        let same = layers.iter().all(|l| l.self_attn.embed_dim() == e)
            && norm.as_ref().is_none_or(|n| n.size() == e);
        if !same {
            return Err(NnError::InvalidConfig {
                what: "TransformerEncoder",
                reason: format!("every layer and the final norm must work on {e} features"),
            });
        }
        Ok(TransformerEncoder { layers, norm })
    }

    /// Loads `num_layers` layers from `layers.{i}.` and, when `final_norm`, the norm from
    /// `norm.` (PyTorch's `TransformerEncoder(layer, num_layers, norm=LayerNorm(E))`).
    ///
    /// # Errors
    /// As [`TransformerEncoderLayer::load`].
    pub fn load(
        weights: &Weights,
        config: &TransformerConfig,
        num_layers: usize,
        final_norm: bool,
    ) -> Result<TransformerEncoder> {
        let layers = (0..num_layers)
            .map(|i| TransformerEncoderLayer::load(&weights.sub(&format!("layers.{i}.")), config))
            .collect::<Result<Vec<_>>>()?;
        let norm = if final_norm {
            Some(LayerNorm::load(
                &weights.sub("norm."),
                config.d_model,
                config.layer_norm_eps,
            )?)
        } else {
            None
        };
        TransformerEncoder::new(layers, norm)
    }

    /// The layers.
    pub fn layers(&self) -> &[TransformerEncoderLayer] {
        &self.layers
    }

    /// The encoder on `x` `[B, L, E]` with an optional i64 key keep-mask `[B, L]` (1 = attend)
    /// and an optional causal mask, applied in every layer.
    ///
    /// # Errors
    /// As [`TransformerEncoderLayer::forward_masked`].
    pub fn forward_masked(
        &self,
        x: &Tensor,
        key_keep_mask: Option<&Tensor>,
        causal: bool,
    ) -> Result<Tensor> {
        let mut y = self.layers[0].forward_masked(x, key_keep_mask, causal)?;
        for layer in &self.layers[1..] {
            y = layer.forward_masked(&y, key_keep_mask, causal)?;
        }
        match &self.norm {
            Some(norm) => norm.forward(&y),
            None => Ok(y),
        }
    }
}

impl Module for TransformerEncoder {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_masked(x, None, false)
    }
    fn rows_independent(&self) -> bool {
        true
    }
}
