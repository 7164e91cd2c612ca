//! Text side of a generation model: tokenizers (from `tokenizer.json` or GGUF metadata) and chat
//! templates.

mod chat_template;
mod gguf_spm;
mod gguf_tokenizer;
mod tokenizer;

pub use chat_template::{python_json, ChatMessage, ChatTemplate, RESERVED_TEMPLATE_VARS};
pub use gguf_tokenizer::tokenizer_from_gguf;
pub use tokenizer::TextTokenizer;
