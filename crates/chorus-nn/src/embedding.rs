//! [`Embedding`]: PyTorch's `nn.Embedding` (a lookup table of rows).
//!
//! # Weights
//! `weight` `[num_embeddings, embedding_dim]`.
//!
//! # Protocol
//! `forward` takes i64 indices of any shape and gives `indices.shape + [embedding_dim]`, one
//! row-gather kernel. An index out of range fails that kernel, and the stream reports it as a
//! device error at its next call. The module is immutable; see [`Module`].

use crate::check::check_f32;
use crate::error::{NnError, Result};
use crate::module::Module;
use crate::weights::Weights;
use chorus_core::{DType, Tensor};

/// A table of `num_embeddings` rows of `embedding_dim` values, looked up by i64 index.
///
/// # Examples
/// ```
/// use chorus_core::Tensor;
/// use chorus_nn::{Embedding, Module};
/// # let device = chorus_cpu::device()?;
/// let table = Tensor::from_slice(&device, &[0.0_f32, 0.5, 1.0, 1.5, 2.0, 2.5], &[3, 2])?;
/// let emb = Embedding::new(table)?;
/// let idx = Tensor::from_slice(&device, &[2_i64, 0], &[1, 2])?;
/// let y = emb.forward(&idx)?;
/// assert_eq!(y.shape(), &[1, 2, 2]);
/// assert_eq!(y.to_vec::<f32>()?, vec![2.0, 2.5, 0.0, 0.5]);
/// # Ok::<(), chorus_nn::NnError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Embedding {
    weight: Tensor,
}

impl Embedding {
    /// An embedding from its f32 table `[num_embeddings, embedding_dim]`.
    ///
    /// # Errors
    /// [`NnError::TensorDType`] unless f32; [`NnError::InvalidConfig`] unless 2-D.
    pub fn new(weight: Tensor) -> Result<Embedding> {
        check_f32("weight", &weight)?;
        if weight.rank() != 2 {
            return Err(NnError::InvalidConfig {
                what: "Embedding weight",
                reason: format!(
                    "must be 2-D [num_embeddings, embedding_dim], got shape {:?}",
                    weight.shape()
                ),
            });
        }
        Ok(Embedding { weight })
    }

    /// Loads `weight` `[num_embeddings, embedding_dim]`.
    ///
    /// # Errors
    /// The load errors of [`Weights::get`], naming the full tensor name.
    pub fn load(
        weights: &Weights,
        num_embeddings: usize,
        embedding_dim: usize,
    ) -> Result<Embedding> {
        Embedding::new(weights.get("weight", &[num_embeddings, embedding_dim])?)
    }

    /// The table.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
    /// Number of rows.
    pub fn num_embeddings(&self) -> usize {
        self.weight.shape()[0]
    }
    /// Size of a row.
    pub fn embedding_dim(&self) -> usize {
        self.weight.shape()[1]
    }
}

impl Module for Embedding {
    /// Rows for the i64 `indices` (any shape).
    fn forward(&self, indices: &Tensor) -> Result<Tensor> {
        if indices.dtype() != DType::I64 {
            return Err(NnError::InvalidInput {
                module: "Embedding",
                shape: indices.shape().to_vec(),
                reason: format!("indices must be i64, got {}", indices.dtype()),
            });
        }
        Ok(Tensor::embedding(indices, &self.weight)?)
    }
    fn rows_independent(&self) -> bool {
        true
    }
}
