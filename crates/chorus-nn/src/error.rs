//! Errors of chorus-nn: loading weights, building modules from them, and running them.
//!
//! Every error names what it is about: the full state-dict name of a tensor (prefix included),
//! the file, the module and the setting. Errors of the op front-end and of the device come
//! through unchanged as [`NnError::Core`].

use std::path::PathBuf;

/// Everything that can go wrong in chorus-nn.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NnError {
    /// An op or the device failed (shape checks of the op front-end, device errors, ...).
    #[error(transparent)]
    Core(#[from] chorus_core::Error),
    /// A tensor the module needs is not in the weights.
    #[error("tensor `{name}` is missing from the weights")]
    MissingTensor {
        /// Full name (prefix included), e.g. `encoder.layers.0.linear1.weight`.
        name: String,
    },
    /// A tensor has another shape than the module's configuration implies.
    #[error("tensor `{name}` has shape {got:?}, expected {expected:?}")]
    TensorShape {
        /// Full name (prefix included).
        name: String,
        /// The shape the configuration implies.
        expected: Vec<usize>,
        /// The shape in the weights.
        got: Vec<usize>,
    },
    /// A tensor has an element type that cannot be used here.
    #[error("tensor `{name}` has dtype {got}, expected {expected}")]
    TensorDType {
        /// Full name (prefix included).
        name: String,
        /// What would be accepted (`f32`, `f32 or i64`).
        expected: &'static str,
        /// The dtype in the file or tensor (safetensors' name for dtypes chorus does not load,
        /// such as `BF16` or `F64`).
        got: String,
    },
    /// A safetensors buffer could not be parsed.
    #[error("safetensors {what}: {message}")]
    Safetensors {
        /// The file, or `bytes` for an in-memory buffer.
        what: String,
        /// What the parser said.
        message: String,
    },
    /// A weights file could not be read.
    #[error("reading {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A module configuration is invalid (`d_model` not a multiple of `nhead`, zero sizes, ...).
    #[error("invalid configuration of {what}: {reason}")]
    InvalidConfig {
        /// The module and setting (`MultiheadAttention`, `Mlp sizes`).
        what: &'static str,
        /// Why it is invalid.
        reason: String,
    },
    /// A module's input does not fit the module (checked before anything is enqueued).
    #[error("{module}: input of shape {shape:?} does not fit ({reason})")]
    InvalidInput {
        /// The module.
        module: &'static str,
        /// The input's shape.
        shape: Vec<usize>,
        /// What the module expects.
        reason: String,
    },
}

/// Result with [`NnError`].
pub type Result<T, E = NnError> = std::result::Result<T, E>;
