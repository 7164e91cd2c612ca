//! Custom device ops for Switchyard's models.
//!
//! Every op works on plain slices on the CPU (runtime-dispatched SIMD where it pays, with a portable
//! fallback), so the model crate can own a forward pass without per-op allocation. The decoder's
//! per-token ops (RMSNorm, rotary, KV-cache writes, paged attention) also exist as Candle tensor ops in
//! [`ops`], whose CPU forward is the slice kernel (the *CPU twin*) and whose CUDA forward (feature
//! `cuda`) is a kernel of `src/cuda/ops.cu`.

pub mod activation;
pub mod attention;
pub mod device;
pub mod error;
pub mod norm;
pub mod ops;
pub mod pool;
pub mod qmatmul;
pub mod rotary;

pub use attention::{paged_attention, write_kv, AttentionShape, CacheElement, SequenceSpan};
pub use error::{KernelError, Result};
pub use qmatmul::{
    matmul, matmul_reference, matmul_with_isa, ActScales, Isa, WeightFormat, WeightMatrix,
};
pub use rotary::RotaryStyle;
