//! Llama-family decoders (Llama / SmolLM2, Qwen2, Qwen3) from GGUF or Hugging Face safetensors.

mod block_pool;
mod config;
mod gpu;
mod kv_cache;
mod model;
mod rope;

pub use config::{DecoderConfig, Family, RopeScaling, RopeStyle};
pub use kv_cache::{BlockTable, KvCache, KvDtype};
pub use model::{Decoder, LogitRows, SequenceInput};
pub use rope::Rope;
