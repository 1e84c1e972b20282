//! [`BertModel`]: the encoder of Hugging Face's `BertModel` (BERT, MiniLM, ... sentence
//! encoders), in evaluation mode, without the pooler.
//!
//! # Model
//! Inputs: token ids `[B, L]` (i64), an attention mask `[B, L]` (i64, 1 = a real token,
//! 0 = padding) and optional token types `[B, L]` (i64; type 0 when absent).
//! - **Embeddings**: `LayerNorm(word[ids] + position[0..L] + token_type[types])`.
//! - **Encoder**: `num_hidden_layers` post-norm layers, each
//!   `x = LayerNorm(x + out(attention(x)))`, `x = LayerNorm(x + down(act(up(x))))`, where the
//!   attention's keys are masked by the attention mask (a padded position is attended by
//!   nobody; its own output row is computed and ignored by the pooling that follows).
//!
//! That layer is exactly PyTorch's post-norm `TransformerEncoderLayer`, so the encoder is a
//! [`TransformerEncoder`] whose attention packs BERT's separate query, key and value
//! projections into one `[3H, H]` projection at load.
//!
//! # Weights
//! Hugging Face's names: `embeddings.{word,position,token_type}_embeddings.weight`,
//! `embeddings.LayerNorm.{weight,bias}`, and for layer `i`
//! `encoder.layer.{i}.attention.self.{query,key,value}.{weight,bias}`,
//! `encoder.layer.{i}.attention.output.dense.*`, `encoder.layer.{i}.attention.output.LayerNorm.*`,
//! `encoder.layer.{i}.intermediate.dense.*`, `encoder.layer.{i}.output.dense.*`,
//! `encoder.layer.{i}.output.LayerNorm.*`. A `bert.` prefix (as in task models) is for the
//! caller to strip with [`Weights::sub`].

use crate::attention::MultiheadAttention;
use crate::embedding::Embedding;
use crate::error::{NnError, Result};
use crate::linear::Linear;
use crate::module::Module;
use crate::norm::LayerNorm;
use crate::transformer::{TransformerEncoder, TransformerEncoderLayer};
use crate::weights::Weights;
use chorus_core::{DType, Tensor, UnaryOp};

/// The sizes and settings of a BERT model: the fields of its `config.json`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BertConfig {
    /// Hidden size `H`.
    pub hidden_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads (divides `H`).
    pub num_attention_heads: usize,
    /// Hidden size of the feed-forward block.
    pub intermediate_size: usize,
    /// Activation of the feed-forward block (`hidden_act`: `gelu` is [`UnaryOp::Gelu`],
    /// `gelu_new`/`gelu_pytorch_tanh` [`UnaryOp::GeluTanh`], `relu` [`UnaryOp::Relu`]).
    pub hidden_act: UnaryOp,
    /// `eps` of every layer norm.
    pub layer_norm_eps: f32,
    /// Rows of the word embedding table.
    pub vocab_size: usize,
    /// Rows of the position embedding table: the longest input.
    pub max_position_embeddings: usize,
    /// Rows of the token type table.
    pub type_vocab_size: usize,
}

impl BertConfig {
    /// A configuration with BERT-base's settings but for the given sizes (gelu, eps 1e-12,
    /// 512 positions, 2 token types).
    pub fn new(
        vocab_size: usize,
        hidden_size: usize,
        num_hidden_layers: usize,
        num_attention_heads: usize,
        intermediate_size: usize,
    ) -> BertConfig {
        BertConfig {
            hidden_size,
            num_hidden_layers,
            num_attention_heads,
            intermediate_size,
            hidden_act: UnaryOp::Gelu,
            layer_norm_eps: 1e-12,
            vocab_size,
            max_position_embeddings: 512,
            type_vocab_size: 2,
        }
    }

    /// The activation named `name` in a `config.json` (`hidden_act`).
    ///
    /// # Errors
    /// [`NnError::InvalidConfig`] naming an activation chorus does not have.
    pub fn activation(name: &str) -> Result<UnaryOp> {
        match name {
            "gelu" => Ok(UnaryOp::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" => Ok(UnaryOp::GeluTanh),
            "relu" => Ok(UnaryOp::Relu),
            other => Err(NnError::InvalidConfig {
                what: "BertConfig",
                reason: format!("hidden_act {other:?} is not supported (gelu, gelu_new, relu)"),
            }),
        }
    }
}

/// A BERT encoder. See the module docs.
#[derive(Debug)]
pub struct BertModel {
    config: BertConfig,
    word: Embedding,
    position: Tensor,
    token_type: Embedding,
    norm: LayerNorm,
    encoder: TransformerEncoder,
}

impl BertModel {
    /// Loads the model named by Hugging Face's weight names (module docs) with `config`.
    ///
    /// # Errors
    /// [`NnError::InvalidConfig`] for sizes that do not fit together; the load errors of
    /// [`Weights::get`], naming the missing or misshapen tensor.
    pub fn load(weights: &Weights, config: &BertConfig) -> Result<BertModel> {
        let (h, eps) = (config.hidden_size, config.layer_norm_eps);
        let emb = weights.sub("embeddings.");
        let word = Embedding::load(&emb.sub("word_embeddings."), config.vocab_size, h)?;
        let position = emb.get(
            "position_embeddings.weight",
            &[config.max_position_embeddings, h],
        )?;
        let token_type = Embedding::load(
            &emb.sub("token_type_embeddings."),
            config.type_vocab_size,
            h,
        )?;
        let norm = LayerNorm::load(&emb.sub("LayerNorm."), h, eps)?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| layer(&weights.sub(&format!("encoder.layer.{i}.")), config))
            .collect::<Result<Vec<_>>>()?;
        let encoder = TransformerEncoder::new(layers, None)?;
        Ok(BertModel {
            config: config.clone(),
            word,
            position,
            token_type,
            norm,
            encoder,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// The hidden states `[B, L, H]` of token ids `[B, L]` with an attention mask `[B, L]`
    /// (1 = token, 0 = padding) and optional token types `[B, L]` (all i64).
    ///
    /// # Errors
    /// [`NnError::InvalidInput`] for inputs of the wrong rank, shape or dtype, or longer than
    /// `max_position_embeddings`; op and device errors. (An id past the vocabulary poisons the
    /// output: reading it gives the original error.)
    pub fn forward_inputs(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        token_type_ids: Option<&Tensor>,
    ) -> Result<Tensor> {
        let shape = input_ids.shape();
        let bad = |reason: String| NnError::InvalidInput {
            module: "BertModel",
            shape: shape.to_vec(),
            reason,
        };
        if shape.len() != 2 || input_ids.dtype() != DType::I64 {
            return Err(bad(format!(
                "input_ids must be i64 [batch, length], got {:?} {shape:?}",
                input_ids.dtype()
            )));
        }
        for (name, t) in [
            ("attention_mask", Some(attention_mask)),
            ("token_type_ids", token_type_ids),
        ] {
            if let Some(t) = t {
                if t.shape() != shape || t.dtype() != DType::I64 {
                    return Err(bad(format!(
                        "{name} must be i64 {shape:?} like input_ids, got {:?} {:?}",
                        t.dtype(),
                        t.shape()
                    )));
                }
            }
        }
        let l = shape[1];
        if l > self.config.max_position_embeddings {
            return Err(bad(format!(
                "{l} tokens exceed the model's {} positions",
                self.config.max_position_embeddings
            )));
        }
        // Positions 0..L are the table's first L rows; type 0 is its first row.
        let positions = self.position.narrow(0, 0, l)?;
        let types = match token_type_ids {
            Some(t) => Tensor::embedding(t, self.token_type.weight())?,
            None => self.token_type.weight().narrow(0, 0, 1)?,
        };
        let x = Tensor::embedding(input_ids, self.word.weight())?
            .add(&positions)?
            .add(&types)?;
        let x = self.norm.forward(&x)?;
        self.encoder.forward_masked(&x, Some(attention_mask), false)
    }
}

/// Encoder layer `encoder.layer.{i}.` of `config` (module docs).
fn layer(w: &Weights, config: &BertConfig) -> Result<TransformerEncoderLayer> {
    let (h, f, eps) = (
        config.hidden_size,
        config.intermediate_size,
        config.layer_norm_eps,
    );
    let attn = w.sub("attention.");
    let qkv =
        ["query.", "key.", "value."].map(|p| Linear::load(&attn.sub("self.").sub(p), h, h, true));
    let [q, k, v] = qkv;
    let (q, k, v) = (q?, k?, v?);
    let in_w = Tensor::cat(&[q.weight(), k.weight(), v.weight()], 0)?;
    let bias = |l: &Linear| l.bias().expect("loaded with a bias").clone();
    let in_b = Tensor::cat(&[&bias(&q), &bias(&k), &bias(&v)], 0)?;
    let out = Linear::load(&attn.sub("output.dense."), h, h, true)?;
    let self_attn = MultiheadAttention::new(config.num_attention_heads, in_w, Some(in_b), out)?;
    TransformerEncoderLayer::new(
        self_attn,
        Linear::load(&w.sub("intermediate.dense."), h, f, true)?,
        Linear::load(&w.sub("output.dense."), f, h, true)?,
        LayerNorm::load(&attn.sub("output.LayerNorm."), h, eps)?,
        LayerNorm::load(&w.sub("output.LayerNorm."), h, eps)?,
        config.hidden_act,
        false,
    )
}
