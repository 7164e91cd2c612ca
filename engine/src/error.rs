//! The engine's error type.

/// Why a request could not be accepted or served.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The prompt does not fit in the context the engine serves.
    #[error("prompt has {prompt_tokens} tokens, more than the {limit} this model accepts (max_model_len {max_model_len} leaves room for at least one new token)")]
    PromptTooLong {
        prompt_tokens: usize,
        limit: usize,
        max_model_len: usize,
    },
    /// The prompt is empty after rendering.
    #[error("prompt is empty")]
    EmptyPrompt,
    /// A parameter is out of range.
    #[error("invalid parameter `{param}`: {message}")]
    InvalidParameter {
        param: &'static str,
        message: String,
    },
    /// The waiting queue is full.
    #[error("the engine queue is full ({0} requests waiting)")]
    QueueFull(usize),
    /// The engine has stopped (shut down, or its worker died).
    #[error("the engine is not running")]
    Stopped,
    /// Chat rendering or tokenization failed.
    #[error(transparent)]
    Model(#[from] switchyard_models::ModelError),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, EngineError>;
