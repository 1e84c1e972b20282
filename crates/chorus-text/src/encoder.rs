//! [`SentenceEncoder`]: text in, one embedding per text out, from a sentence-transformers folder.
//!
//! # Pipeline
//! 1. Tokenize the texts (`crate::tokenize`): truncated to `max_seq_length`, padded to the
//!    batch's longest, on the host.
//! 2. Upload ids, mask and token types, and run the [`BertModel`] on the calling thread's
//!    current stream: hidden states `[B, L, H]`.
//! 3. Pool as configured, on the device: `Mean` sums the states of the real tokens (the mask,
//!    as f32, zeroes the padding's) and divides by their number; `Cls` takes the first token's;
//!    `Max` takes the element-wise maximum after pushing the padding's states to -1e9. (The
//!    mask becomes f32 through an embedding lookup in a two-row table: row 0 for padding, row
//!    1 for a token.)
//! 4. Read the pooled `[B, H]` back and, with a `Normalize` module, divide each row by its L2
//!    norm (at least 1e-12), as `torch.nn.functional.normalize`.
//!
//! # As a module
//! The encoder is also a [`Module`] (steps 2 and 3): its input is the packed i64 tensor
//! `[B, 3, L]` of ids, mask and token types ([`SentenceEncoder::pack`]), its output the pooled
//! `[B, H]`, before normalisation. Padding a packed batch with zeros along `L` changes
//! nothing: a zero mask excludes a position. That is how a batching queue runs it
//! (`crate::SentenceQueue`).
//!
//! # Threads
//! The encoder is immutable: `encode` takes `&self`, holds no lock, and one encoder (behind an
//! `Arc`, or borrowed by scoped threads) serves any number of threads at once, each on its own
//! stream. The kernels are deterministic, so the same batch gives the same bits on any thread.

use crate::config::{Pooling, SentenceConfig};
use crate::error::Result;
use crate::tokenize::{TextTokenizer, TokenBatch};
use chorus_core::{DType, Device, Tensor};
use chorus_nn::{BertModel, Module, NnError, Weights};
use std::path::Path;

/// A sentence encoder. See the module docs.
///
/// # Examples
/// ```no_run
/// use chorus_text::SentenceEncoder;
/// # let device = chorus_cpu::device()?;
/// let encoder = SentenceEncoder::from_dir(&device, "all-MiniLM-L6-v2/model")?;
/// let embeddings = encoder.encode(&["A man is eating food.", "Someone is eating."])?;
/// assert_eq!(embeddings[0].len(), encoder.dim());
/// # Ok::<(), chorus_text::TextError>(())
/// ```
#[derive(Debug)]
pub struct SentenceEncoder {
    device: Device,
    config: SentenceConfig,
    tokenizer: TextTokenizer,
    model: BertModel,
    /// `[[0], [1]]`: the mask as f32 (module docs, step 3).
    keep: Tensor,
    /// `[[-1e9], [0]]`: what max pooling adds (module docs, step 3).
    away: Tensor,
}

impl SentenceEncoder {
    /// Loads the sentence-transformers folder `dir` onto `device`: its configuration
    /// (`crate::config`), `tokenizer.json` and `model.safetensors`.
    ///
    /// # Errors
    /// A missing or malformed file or key, named; an unsupported architecture, pooling mode or
    /// module, named; weights missing or of the wrong shape, named.
    pub fn from_dir(device: &Device, dir: impl AsRef<Path>) -> Result<SentenceEncoder> {
        let dir = dir.as_ref();
        let config = SentenceConfig::from_dir(dir)?;
        let tokenizer =
            TextTokenizer::from_file(&dir.join("tokenizer.json"), config.max_seq_length)?;
        let weights = Weights::from_file(device, dir.join("model.safetensors"))?;
        // Task models keep the encoder under `bert.`.
        let weights = if weights.contains("bert.embeddings.word_embeddings.weight") {
            weights.sub("bert.")
        } else {
            weights
        };
        let model = BertModel::load(&weights, &config.bert)?;
        Ok(SentenceEncoder {
            keep: Tensor::from_slice(device, &[0.0f32, 1.0], &[2, 1])?,
            away: Tensor::from_slice(device, &[-1e9f32, 0.0], &[2, 1])?,
            device: device.clone(),
            config,
            tokenizer,
            model,
        })
    }

    /// The device the model lives on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The folder's configuration.
    pub fn config(&self) -> &SentenceConfig {
        &self.config
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// The transformer.
    pub fn model(&self) -> &BertModel {
        &self.model
    }

    /// The size of an embedding.
    pub fn dim(&self) -> usize {
        self.config.bert.hidden_size
    }

    /// The embeddings of `texts`, in order, computed as one batch on the calling thread's
    /// current stream (module docs). No text gives an empty list.
    ///
    /// # Errors
    /// [`crate::TextError::Tokenizer`] for a text the tokenizer cannot encode; op and device
    /// errors.
    pub fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let batch = self.tokenizer.encode(texts)?;
        let pooled = self.pooled(&batch)?.to_vec::<f32>()?;
        Ok(pooled
            .chunks_exact(self.dim())
            .map(|row| self.finish(row))
            .collect())
    }

    /// The pooled `[B, H]` embeddings of a tokenized batch, on the device, before any
    /// normalisation (module docs, steps 2 and 3).
    ///
    /// # Errors
    /// Op and device errors.
    pub fn pooled(&self, batch: &TokenBatch) -> Result<Tensor> {
        let (b, l) = (batch.lengths.len(), batch.width);
        let up = |v: &[i64]| Tensor::from_slice(&self.device, v, &[b, l]);
        let (ids, mask, types) = (up(&batch.ids)?, up(&batch.mask)?, up(&batch.types)?);
        Ok(self.pool(&ids, &mask, &types)?)
    }

    /// Steps 2 and 3 on device tensors `[B, L]`.
    fn pool(&self, ids: &Tensor, mask: &Tensor, types: &Tensor) -> chorus_nn::Result<Tensor> {
        let h = self.model.forward_inputs(ids, mask, Some(types))?;
        // [B, L, 1] f32: 1 for a token, 0 for padding.
        let keep = Tensor::embedding(mask, &self.keep)?;
        let pooled = match self.config.pooling {
            Pooling::Cls => {
                let b = h.shape()[0] as isize;
                h.narrow(1, 0, 1)?.reshape(&[b, -1])?
            }
            Pooling::Mean => {
                // sentence-transformers clamps the count at 1e-9 (a row of padding only);
                // adding 1e-9 is the same to f32 for any count of at least one token.
                let tiny = Tensor::full(&self.device, &[1], 1e-9)?;
                let counts = keep.sum(&[1], false)?.add(&tiny)?;
                h.mul(&keep)?.sum(&[1], false)?.div(&counts)?
            }
            Pooling::Max => {
                let away = Tensor::embedding(mask, &self.away)?;
                h.mul(&keep)?.add(&away)?.amax(&[1], false)?
            }
        };
        Ok(pooled)
    }

    /// The packed input of the encoder as a [`Module`] (module docs): `[ids, mask, types]` of
    /// `text`, `3 × L` i64 values, and `L`.
    ///
    /// # Errors
    /// [`crate::TextError::Tokenizer`] for a text the tokenizer cannot encode.
    pub fn pack(&self, text: &str) -> Result<(Vec<i64>, usize)> {
        let batch = self.tokenizer.encode(&[text])?;
        let mut packed = batch.ids;
        packed.extend(batch.mask);
        packed.extend(batch.types);
        Ok((packed, batch.width))
    }

    /// The embedding of a pooled row as [`SentenceEncoder::encode`] returns it (normalised
    /// when the folder says so; module docs, step 4).
    pub fn finish(&self, row: &[f32]) -> Vec<f32> {
        if !self.config.normalize {
            return row.to_vec();
        }
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        row.iter().map(|x| x / norm).collect()
    }
}

impl Module for SentenceEncoder {
    /// Steps 2 and 3 on a packed `[B, 3, L]` i64 input (module docs, "As a module").
    fn forward(&self, x: &Tensor) -> chorus_nn::Result<Tensor> {
        if x.rank() != 3 || x.shape()[1] != 3 || x.dtype() != DType::I64 {
            return Err(NnError::InvalidInput {
                module: "SentenceEncoder",
                shape: x.shape().to_vec(),
                reason: format!(
                    "expected packed i64 [batch, 3, length] (ids, mask, types), got {:?}",
                    x.dtype()
                ),
            });
        }
        let part = |i: usize| -> chorus_nn::Result<Tensor> {
            Ok(x.narrow(1, i, 1)?.squeeze(1)?.contiguous()?)
        };
        self.pool(&part(0)?, &part(1)?, &part(2)?)
    }

    fn rows_independent(&self) -> bool {
        true
    }
}
