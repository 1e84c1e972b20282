//! Text to token ids, with Hugging Face's `tokenizers` reading the folder's `tokenizer.json`.
//!
//! As sentence-transformers does: each text is truncated to `max_seq_length` tokens (special
//! tokens included), and a batch is padded to its longest text with the pad token; the fixed
//! padding a `tokenizer.json` may set (MiniLM's pads everything to 128) is turned off.

use crate::error::{Result, TextError};
use std::path::Path;
use tokenizers::{Tokenizer, TruncationParams};

/// A batch of texts as rectangular i64 arrays, row-major `[texts, longest]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBatch {
    /// Token ids, padded with the pad id.
    pub ids: Vec<i64>,
    /// 1 for a token, 0 for padding.
    pub mask: Vec<i64>,
    /// Token types (0 for a single text).
    pub types: Vec<i64>,
    /// Each text's number of tokens.
    pub lengths: Vec<usize>,
    /// The longest text's number of tokens: the batch's width.
    pub width: usize,
}

/// The folder's tokenizer with sentence-transformers' truncation and padding.
#[derive(Debug)]
pub struct TextTokenizer {
    inner: Tokenizer,
    pad_id: i64,
}

impl TextTokenizer {
    /// Loads `tokenizer.json` and truncates to `max_seq_length` tokens.
    ///
    /// # Errors
    /// [`TextError::Io`] when the file is missing; [`TextError::Tokenizer`] naming the file
    /// when it cannot be parsed.
    pub fn from_file(path: &Path, max_seq_length: usize) -> Result<TextTokenizer> {
        if !path.exists() {
            return Err(TextError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        let mut inner = Tokenizer::from_file(path)
            .map_err(|e| TextError::Tokenizer(format!("{}: {e}", path.display())))?;
        let pad_id = inner.get_padding().map_or(0, |p| p.pad_id);
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_seq_length,
                ..TruncationParams::default()
            }))
            .map_err(|e| TextError::Tokenizer(format!("{}: {e}", path.display())))?;
        Ok(TextTokenizer {
            inner,
            pad_id: i64::from(pad_id),
        })
    }

    /// Tokenizes `texts` (special tokens added) into one padded batch.
    ///
    /// # Errors
    /// [`TextError::Tokenizer`] when a text cannot be encoded.
    pub fn encode(&self, texts: &[&str]) -> Result<TokenBatch> {
        let encodings = texts
            .iter()
            .map(|t| {
                self.inner
                    .encode(*t, true)
                    .map_err(|e| TextError::Tokenizer(e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let lengths: Vec<usize> = encodings.iter().map(|e| e.get_ids().len()).collect();
        let width = lengths.iter().copied().max().unwrap_or(0);
        let n = texts.len() * width;
        let (mut ids, mut mask, mut types) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for e in &encodings {
            let pad = width - e.get_ids().len();
            ids.extend(e.get_ids().iter().map(|&i| i64::from(i)));
            ids.extend(std::iter::repeat_n(self.pad_id, pad));
            mask.extend(e.get_attention_mask().iter().map(|&m| i64::from(m)));
            mask.extend(std::iter::repeat_n(0, pad));
            types.extend(e.get_type_ids().iter().map(|&t| i64::from(t)));
            types.extend(std::iter::repeat_n(0, pad));
        }
        Ok(TokenBatch {
            ids,
            mask,
            types,
            lengths,
            width,
        })
    }

    /// The number of tokens of `text` after truncation (special tokens included).
    ///
    /// # Errors
    /// As [`TextTokenizer::encode`].
    pub fn count(&self, text: &str) -> Result<usize> {
        Ok(self.encode(&[text])?.width)
    }
}
