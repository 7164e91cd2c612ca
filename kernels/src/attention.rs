//! Attention over the paged KV cache (filled in by the model crate's needs).
