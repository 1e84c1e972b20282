//! chorus-text: sentence encoders over chorus. A BERT-family model is read from a
//! sentence-transformers folder ([`SentenceConfig`] says what is read from which file), its
//! texts tokenized by Hugging Face's tokenizer ([`TextTokenizer`]), run by
//! [`chorus_nn::BertModel`] and pooled as the folder says ([`SentenceEncoder`]).
//!
//! One [`SentenceEncoder`] is shared by any number of threads with no lock; for the same batch
//! of texts, every thread gets the same bits. [`SentenceQueue`] batches one sentence per
//! request from many threads (requests of different lengths padded together, under a token
//! budget).

mod config;
mod encoder;
mod error;
mod queue;
mod tokenize;

pub use config::{Pooling, SentenceConfig};
pub use encoder::SentenceEncoder;
pub use error::{Result, TextError};
pub use queue::SentenceQueue;
pub use tokenize::{TextTokenizer, TokenBatch};
