//! chorus-nn: neural-network modules over [`chorus_core::Tensor`], loaded from safetensors
//! files by their PyTorch `state_dict` names.
//!
//! - [`Weights`]: named tensors from a safetensors file, with prefixes for nesting.
//! - [`Module`]: `forward(&self, x)`; every module is immutable and `Send + Sync`, so one
//!   instance serves all threads at once with no lock on the forward path, and a forward pass
//!   gives bit-identical results on any thread.
//! - Layers: [`Linear`], [`Mlp`], [`LayerNorm`], [`GroupNorm`], [`MultiheadAttention`],
//!   [`TransformerEncoderLayer`], [`TransformerEncoder`], [`Conv2d`], [`AdaptiveAvgPool2d`],
//!   [`Embedding`], [`Relu`], [`Flatten`], [`Sequential`].
//! - Models: [`depthwise_separable`].
//!
//! Each layer has a `load(&weights, config..)` reading PyTorch's names under the handle's
//! prefix, and a `new(..)` from tensors. Load errors name the full tensor name.
//!
//! # Examples
//! ```
//! use chorus_core::Tensor;
//! use chorus_nn::{Mlp, Module, Weights};
//! # let device = chorus_cpu::device()?;
//! // A state_dict of nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).
//! let weights = Weights::from_tensors([
//!     ("0.weight".to_string(), Tensor::randn(&device, &[8, 4], 1)?),
//!     ("0.bias".to_string(), Tensor::randn(&device, &[8], 2)?),
//!     ("2.weight".to_string(), Tensor::randn(&device, &[2, 8], 3)?),
//!     ("2.bias".to_string(), Tensor::randn(&device, &[2], 4)?),
//! ]);
//! let mlp = Mlp::load(&weights, &[4, 8, 2])?;
//! let y = mlp.forward(&Tensor::randn(&device, &[3, 4], 5)?)?;
//! assert_eq!(y.shape(), &[3, 2]);
//! # Ok::<(), chorus_nn::NnError>(())
//! ```

mod attention;
mod bert;
mod check;
mod conv;
mod embedding;
mod error;
mod layers;
mod linear;
mod mlp;
mod models;
mod module;
mod norm;
mod sequential;
mod transformer;
mod weights;

pub use attention::MultiheadAttention;
pub use bert::{BertConfig, BertModel};
pub use conv::{Conv2d, Conv2dConfig};
pub use embedding::Embedding;
pub use error::{NnError, Result};
pub use layers::{AdaptiveAvgPool2d, Flatten, Relu};
pub use linear::Linear;
pub use mlp::Mlp;
pub use models::depthwise_separable;
pub use module::Module;
pub use norm::{GroupNorm, LayerNorm, DEFAULT_EPS};
pub use sequential::Sequential;
pub use transformer::{TransformerConfig, TransformerEncoder, TransformerEncoderLayer};
pub use weights::Weights;
