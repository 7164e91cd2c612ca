//! Custom device ops for Switchyard's models.
//!
//! Every op works on plain slices on the CPU (runtime-dispatched SIMD where it pays, with a portable
//! fallback), so the model crate can own a forward pass without per-op allocation.

pub mod attention;
pub mod error;
pub mod pool;
pub mod qmatmul;

pub use attention::{paged_attention, AttentionShape, SequenceSpan};
pub use error::{KernelError, Result};
pub use qmatmul::{matmul, matmul_reference, matmul_with_isa, Isa, WeightFormat, WeightMatrix};
