//! The model crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be opened or mapped.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A weight file is malformed or not of the expected kind.
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    /// A tensor the architecture needs is absent.
    #[error("missing tensor `{0}`")]
    MissingTensor(String),
    /// A tensor exists but has the wrong shape or storage format.
    #[error("tensor `{name}`: {message}")]
    BadTensor { name: String, message: String },
    /// A configuration value is missing, malformed or unsupported.
    #[error("config: {0}")]
    Config(String),
    /// The tokenizer could not be built or failed on an input.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template failed to parse or render.
    #[error("chat template: {0}")]
    Template(String),
    /// A forward pass was asked for something the model or cache cannot do.
    #[error("forward: {0}")]
    Forward(String),
    /// A kernel rejected its inputs.
    #[error(transparent)]
    Kernel(#[from] switchyard_kernels::KernelError),
    /// A device could not be opened (the reason says why).
    #[error("device: {0}")]
    Device(String),
    /// Candle reported an error (GGUF parsing, tensors).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, ModelError>;
