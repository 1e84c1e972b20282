//! [`SentenceEncoder`]: text in, one embedding per text out, from a sentence-transformers folder.
//!
//! # Pipeline
//! 1. Tokenize the texts (`crate::tokenize`): truncated to `max_seq_length`, padded to the
//!    batch's longest, on the host.
//! 2. Upload ids, mask and token types, and run the [`BertModel`] on the calling thread's
//!    current stream: hidden states `[B, L, H]`.
//! 3. Pool as configured, on the device: `Mean` sums the states of the real tokens (the mask,
//!    as f32, zeroes the padding's) and divides by their number; `Cls` takes the first token's;
//!    `Max` takes the element-wise maximum after pushing the padding's states to -1e9.
//! 4. Read the pooled `[B, H]` back and, with a `Normalize` module, divide each row by its L2
//!    norm (at least 1e-12), as `torch.nn.functional.normalize`.
//!
//! # Threads
//! The encoder is immutable: `encode` takes `&self`, holds no lock, and one encoder (behind an
//! `Arc`, or borrowed by scoped threads) serves any number of threads at once, each on its own
//! stream. The kernels are deterministic, so the same batch gives the same bits on any thread.

use crate::config::{Pooling, SentenceConfig};
use crate::error::Result;
use crate::tokenize::{TextTokenizer, TokenBatch};
use chorus_core::{Device, Tensor};
use chorus_nn::{BertModel, Weights};
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
        let h = self.model.forward_inputs(&ids, &mask, Some(&types))?;
        let keep: Vec<f32> = batch.mask.iter().map(|&m| m as f32).collect();
        let pooled = match self.config.pooling {
            Pooling::Cls => h.narrow(1, 0, 1)?.reshape(&[b as isize, -1])?,
            Pooling::Mean => {
                let keep = Tensor::from_slice(&self.device, &keep, &[b, l, 1])?;
                let counts: Vec<f32> = (batch.lengths.iter())
                    .map(|&n| (n as f32).max(1e-9))
                    .collect();
                let counts = Tensor::from_slice(&self.device, &counts, &[b, 1])?;
                h.mul(&keep)?.sum(&[1], false)?.div(&counts)?
            }
            Pooling::Max => {
                let away: Vec<f32> = keep.iter().map(|&k| (k - 1.0) * 1e9).collect();
                let keep = Tensor::from_slice(&self.device, &keep, &[b, l, 1])?;
                let away = Tensor::from_slice(&self.device, &away, &[b, l, 1])?;
                h.mul(&keep)?.add(&away)?.amax(&[1], false)?
            }
        };
        Ok(pooled)
    }

    /// Step 4 for one pooled row (module docs).
    fn finish(&self, row: &[f32]) -> Vec<f32> {
        if !self.config.normalize {
            return row.to_vec();
        }
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        row.iter().map(|x| x / norm).collect()
    }
}
