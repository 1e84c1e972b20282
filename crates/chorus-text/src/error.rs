//! Errors of loading and running a sentence encoder.

use std::path::PathBuf;

/// What went wrong, naming the file and the key where there is one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TextError {
    /// A file of the model folder could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file is malformed, or a key is missing or of the wrong type.
    #[error("{path}: {what}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        what: String,
    },
    /// The folder holds a model chorus cannot run (another architecture, a pooling mode it
    /// lacks, a module it does not know).
    #[error("{path}: {what} is not supported")]
    Unsupported {
        /// The file that says so.
        path: PathBuf,
        /// What.
        what: String,
    },
    /// The tokenizer could not be loaded, or could not encode an input.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Loading or running the model.
    #[error(transparent)]
    Nn(#[from] chorus_nn::NnError),
    /// An op or device error.
    #[error(transparent)]
    Core(#[from] chorus_core::Error),
    /// The batching queue's error (`crate::SentenceQueue`).
    #[error(transparent)]
    Batch(Box<chorus_batch::BatchError>),
}

impl From<chorus_batch::BatchError> for TextError {
    fn from(e: chorus_batch::BatchError) -> TextError {
        TextError::Batch(Box::new(e))
    }
}

/// Result with [`TextError`].
pub type Result<T, E = TextError> = std::result::Result<T, E>;
