//! Limits and sizes of one engine.

use switchyard_models::decoder::KvDtype;

/// How much work the engine takes on at once.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineConfig {
    /// Most sequences in the running batch.
    pub max_num_seqs: usize,
    /// Most tokens (prefill chunks + decode tokens) in one forward step; at least `max_num_seqs`.
    pub max_batch_tokens: usize,
    /// Longest sequence (prompt + output); `None` uses the model's context length.
    pub max_model_len: Option<usize>,
    /// Positions per KV-cache block.
    pub block_size: usize,
    /// Memory for the KV cache in bytes; `None` sizes it for `max_num_seqs` full-length sequences,
    /// capped at 2 GiB.
    pub kv_cache_bytes: Option<usize>,
    /// Most requests waiting to be admitted; more are refused with `QueueFull`.
    pub max_waiting: usize,
    /// Element type of the KV cache (f16: host caches only).
    pub kv_cache_dtype: KvDtype,
    /// Reuse the KV-cache blocks of prompt prefixes that earlier or concurrent sequences computed
    /// (a shared system prompt, earlier turns, the other choices of a request) instead of
    /// computing them again.
    pub prefix_caching: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_num_seqs: 16,
            max_batch_tokens: 512,
            max_model_len: Some(4096),
            block_size: 16,
            kv_cache_bytes: None,
            max_waiting: 256,
            kv_cache_dtype: KvDtype::F32,
            prefix_caching: true,
        }
    }
}
