//! Model architectures for Switchyard.
//!
//! - [`decoder`]: llama-family decoders with an external paged KV cache, weights memory-mapped from
//!   GGUF or safetensors files.
//! - [`weights`]: the memory-mapped file readers.

pub mod decoder;
pub mod device;
pub mod encoder;
pub mod error;
pub mod executor;
pub mod loader;
pub mod text;
pub mod weights;

pub use device::DeviceSpec;
pub use error::{ModelError, Result};
pub use loader::{load_generation_model, GenerationModel};
