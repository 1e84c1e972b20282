//! Reading a sentence-transformers folder's configuration: everything comes from the folder's
//! own files, so any BERT-architecture sentence-transformers model loads, not one in particular.
//!
//! | file | what is read |
//! |---|---|
//! | `modules.json` | the pipeline: a `Transformer` module, then optionally `Pooling` (its folder) and `Normalize`; any other module is refused |
//! | `config.json` | `model_type`/`architectures` (BERT only), `hidden_size`, `num_hidden_layers`, `num_attention_heads`, `intermediate_size`, `hidden_act`, `layer_norm_eps`, `vocab_size`, `max_position_embeddings`, `type_vocab_size` |
//! | `sentence_bert_config.json` | `max_seq_length` (else `max_position_embeddings`) |
//! | `<pooling folder>/config.json` | which of `pooling_mode_cls_token`, `pooling_mode_mean_tokens`, `pooling_mode_max_tokens` is set (exactly one; others refused) |
//! | `tokenizer.json` | read by the tokenizer (`crate::tokenize`) |
//! | `model.safetensors` | the weights (`chorus_nn::Weights`) |

use crate::error::{Result, TextError};
use chorus_nn::BertConfig;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// How token states become one sentence embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Pooling {
    /// The first token's state (`[CLS]`).
    Cls,
    /// The mean over the real tokens (padding excluded).
    Mean,
    /// The element-wise maximum over the real tokens.
    Max,
}

/// What a sentence-transformers folder describes. See the module docs.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SentenceConfig {
    /// The transformer's settings.
    pub bert: BertConfig,
    /// The pooling mode.
    pub pooling: Pooling,
    /// Whether a `Normalize` module follows the pooling (L2 normalisation).
    pub normalize: bool,
    /// Inputs are truncated to this many tokens, special tokens included.
    pub max_seq_length: usize,
}

/// A parsed JSON file, remembered with its path for errors.
struct Json {
    path: PathBuf,
    value: Value,
}

impl Json {
    fn read(path: PathBuf) -> Result<Json> {
        let text = std::fs::read_to_string(&path).map_err(|source| TextError::Io {
            path: path.clone(),
            source,
        })?;
        let value = serde_json::from_str(&text).map_err(|e| TextError::Config {
            path: path.clone(),
            what: format!("not valid JSON: {e}"),
        })?;
        Ok(Json { path, value })
    }

    fn bad(&self, what: String) -> TextError {
        TextError::Config {
            path: self.path.clone(),
            what,
        }
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.value.get(key)
    }

    fn usize(&self, key: &str) -> Result<usize> {
        match self.get(key) {
            Some(v) => (v.as_u64())
                .and_then(|n| usize::try_from(n).ok())
                .filter(|&n| n > 0)
                .ok_or_else(|| {
                    self.bad(format!("key {key:?} must be a positive integer, got {v}"))
                }),
            None => Err(self.bad(format!("key {key:?} is missing"))),
        }
    }

    fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        match self.get(key) {
            None => Ok(default),
            Some(_) => self.usize(key),
        }
    }

    fn f32_or(&self, key: &str, default: f32) -> Result<f32> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => (v.as_f64())
                .filter(|x| *x > 0.0)
                .map(|x| x as f32)
                .ok_or_else(|| self.bad(format!("key {key:?} must be a positive number, got {v}"))),
        }
    }

    fn str_or<'a>(&'a self, key: &str, default: &'a str) -> Result<&'a str> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_str()
                .ok_or_else(|| self.bad(format!("key {key:?} must be a string, got {v}"))),
        }
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.bad(format!("key {key:?} must be true or false, got {v}"))),
        }
    }
}

impl SentenceConfig {
    /// Reads the configuration of the sentence-transformers folder `dir` (module docs).
    ///
    /// # Errors
    /// [`TextError::Io`] for a missing or unreadable file, [`TextError::Config`] for malformed
    /// JSON or a missing or mistyped key (naming file and key), [`TextError::Unsupported`] for
    /// another architecture, pooling mode or module.
    pub fn from_dir(dir: &Path) -> Result<SentenceConfig> {
        let modules = Json::read(dir.join("modules.json"))?;
        let list = modules
            .value
            .as_array()
            .ok_or_else(|| modules.bad("must be a list of modules".into()))?;
        let mut transformer = false;
        let mut pooling_dir = None;
        let mut normalize = false;
        for m in list {
            let kind = m
                .get("type")
                .and_then(Value::as_str)
                .ok_or_else(|| modules.bad(format!("module {m} has no string key \"type\"")))?;
            let path = m.get("path").and_then(Value::as_str).unwrap_or("");
            match kind.rsplit('.').next().unwrap_or(kind) {
                "Transformer" => transformer = true,
                "Pooling" => pooling_dir = Some(dir.join(path)),
                "Normalize" => normalize = true,
                other => {
                    return Err(TextError::Unsupported {
                        path: modules.path.clone(),
                        what: format!("module {other:?} ({kind})"),
                    })
                }
            }
        }
        if !transformer {
            return Err(modules.bad("no Transformer module".into()));
        }
        let bert = bert_config(&Json::read(dir.join("config.json"))?)?;
        let st = dir.join("sentence_bert_config.json");
        let max_seq_length = if st.exists() {
            Json::read(st)?.usize_or("max_seq_length", bert.max_position_embeddings)?
        } else {
            bert.max_position_embeddings
        };
        if max_seq_length > bert.max_position_embeddings {
            return Err(TextError::Config {
                path: dir.join("sentence_bert_config.json"),
                what: format!(
                    "max_seq_length {max_seq_length} exceeds the model's {} positions",
                    bert.max_position_embeddings
                ),
            });
        }
        let pooling = match pooling_dir {
            Some(p) => pooling(&Json::read(p.join("config.json"))?)?,
            // sentence-transformers' default for a bare transformer.
            None => Pooling::Mean,
        };
        Ok(SentenceConfig {
            bert,
            pooling,
            normalize,
            max_seq_length,
        })
    }
}

/// The BERT settings of `config.json`.
fn bert_config(c: &Json) -> Result<BertConfig> {
    let model_type = c.str_or("model_type", "bert")?;
    if model_type != "bert" {
        return Err(TextError::Unsupported {
            path: c.path.clone(),
            what: format!("model_type {model_type:?} (BERT only)"),
        });
    }
    let act = c.str_or("hidden_act", "gelu")?;
    let hidden_act = BertConfig::activation(act).map_err(|_| TextError::Unsupported {
        path: c.path.clone(),
        what: format!("hidden_act {act:?} (gelu, gelu_new, relu)"),
    })?;
    let position = c.str_or("position_embedding_type", "absolute")?;
    if position != "absolute" {
        return Err(TextError::Unsupported {
            path: c.path.clone(),
            what: format!("position_embedding_type {position:?} (absolute only)"),
        });
    }
    let mut bert = BertConfig::new(
        c.usize("vocab_size")?,
        c.usize("hidden_size")?,
        c.usize("num_hidden_layers")?,
        c.usize("num_attention_heads")?,
        c.usize("intermediate_size")?,
    );
    if !bert.hidden_size.is_multiple_of(bert.num_attention_heads) {
        return Err(c.bad(format!(
            "hidden_size {} is not a multiple of num_attention_heads {}",
            bert.hidden_size, bert.num_attention_heads
        )));
    }
    bert.hidden_act = hidden_act;
    bert.layer_norm_eps = c.f32_or("layer_norm_eps", 1e-12)?;
    bert.max_position_embeddings = c.usize_or("max_position_embeddings", 512)?;
    bert.type_vocab_size = c.usize_or("type_vocab_size", 2)?;
    Ok(bert)
}

/// The pooling mode of a Pooling module's `config.json`.
fn pooling(c: &Json) -> Result<Pooling> {
    let modes = [
        ("pooling_mode_cls_token", Some(Pooling::Cls)),
        ("pooling_mode_mean_tokens", Some(Pooling::Mean)),
        ("pooling_mode_max_tokens", Some(Pooling::Max)),
        ("pooling_mode_mean_sqrt_len_tokens", None),
        ("pooling_mode_weightedmean_tokens", None),
        ("pooling_mode_lasttoken", None),
    ];
    let mut chosen = Vec::new();
    for (key, mode) in modes {
        if c.bool_or(key, false)? {
            chosen.push((key, mode));
        }
    }
    match chosen.as_slice() {
        [(_, Some(mode))] => Ok(*mode),
        [(key, None)] => Err(TextError::Unsupported {
            path: c.path.clone(),
            what: format!("pooling mode {key}"),
        }),
        [] => Err(c.bad("no pooling mode is set".into())),
        several => Err(TextError::Unsupported {
            path: c.path.clone(),
            what: format!(
                "several pooling modes at once ({})",
                several
                    .iter()
                    .map(|(k, _)| *k)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}
