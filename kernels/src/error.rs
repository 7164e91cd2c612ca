//! Errors raised by kernel entry points when their inputs disagree.

/// A kernel was called with inputs it cannot work on.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A buffer's length does not match the shape it was declared with.
    #[error("{what}: expected {expected} elements, got {actual}")]
    Length {
        what: &'static str,
        expected: usize,
        actual: usize,
    },
    /// A size computed from a declared shape does not fit in `usize`.
    #[error("{what}: the shape's size overflows")]
    Overflow { what: &'static str },
    /// The weight format is not supported by this kernel.
    #[error("unsupported weight format {0:?}")]
    UnsupportedFormat(WeightFormatName),
    /// A row length is not a multiple of the format's block size.
    #[error("row length {cols} is not a multiple of the {format:?} block size {block}")]
    RaggedRow {
        format: WeightFormatName,
        cols: usize,
        block: usize,
    },
    /// A kernel was asked to run on an instruction set this CPU does not have.
    #[error("instruction set {0} is not available on this CPU")]
    UnsupportedIsa(&'static str),
    /// A tensor-level op was given tensors of the wrong dtype, layout or shape.
    #[error("{0}")]
    Tensor(String),
    /// Candle (or the CUDA driver underneath it) reported an error.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// The product of `factors` (a shape's element or byte count), or [`KernelError::Overflow`].
pub fn checked_size(what: &'static str, factors: &[usize]) -> Result<usize> {
    factors
        .iter()
        .try_fold(1usize, |n, &f| n.checked_mul(f))
        .ok_or(KernelError::Overflow { what })
}

/// The name of a weight format, for error messages.
pub type WeightFormatName = candle_core::quantized::GgmlDType;

/// Result alias for kernel calls.
pub type Result<T> = std::result::Result<T, KernelError>;
