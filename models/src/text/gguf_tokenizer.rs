//! Builds a Hugging Face `tokenizers` tokenizer from a GGUF file's `tokenizer.ggml.*` metadata.
//!
//! Only byte-level BPE vocabularies (`tokenizer.ggml.model = gpt2`: SmolLM2, Qwen2/3, Llama 3) are
//! supported. The pre-tokenizer is chosen from `tokenizer.ggml.pre` the way llama.cpp does, so ids
//! match llama.cpp's (Candle's GGUF tokenizer does not know `smollm` and splits digits differently).

use crate::error::{ModelError, Result};
use crate::weights::GgufFile;
use serde_json::{json, Value};

/// llama.cpp token types (`tokenizer.ggml.token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn split(regex: &str) -> Value {
    json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false})
}

fn byte_level(use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

/// The pre-tokenizer llama.cpp uses for a `tokenizer.ggml.pre` value.
fn pre_tokenizer(pre: &str) -> Result<Value> {
    let seq = |items: Vec<Value>| json!({"type": "Sequence", "pretokenizers": items});
    Ok(match pre {
        "smollm" | "starcoder" | "refact" | "command-r" => seq(vec![
            json!({"type": "Digits", "individual_digits": true}),
            byte_level(true),
        ]),
        "gpt-2" | "gpt2" | "default" => byte_level(true),
        "qwen2" | "deepseek-r1-qwen" => seq(vec![split(QWEN2_REGEX), byte_level(false)]),
        "llama3" | "llama-bpe" | "llama-v3" | "smaug-bpe" => {
            seq(vec![split(LLAMA3_REGEX), byte_level(false)])
        }
        other => {
            return Err(ModelError::Tokenizer(format!(
                "GGUF pre-tokenizer `{other}` is not supported; pass a tokenizer.json instead"
            )))
        }
    })
}

/// Builds the tokenizer described by `gguf`'s metadata.
pub fn tokenizer_from_gguf(gguf: &GgufFile) -> Result<tokenizers::Tokenizer> {
    let model = gguf.string("tokenizer.ggml.model").unwrap_or("missing");
    if model != "gpt2" {
        return Err(ModelError::Tokenizer(format!(
            "GGUF tokenizer model `{model}` is not supported (only byte-level BPE, `gpt2`); \
             pass a tokenizer.json instead"
        )));
    }
    let tokens = gguf
        .strings("tokenizer.ggml.tokens")
        .ok_or_else(|| ModelError::Tokenizer("GGUF has no tokenizer.ggml.tokens".into()))?;
    let merges = gguf
        .strings("tokenizer.ggml.merges")
        .ok_or_else(|| ModelError::Tokenizer("GGUF has no tokenizer.ggml.merges".into()))?;
    let types: Vec<i64> = match gguf.value("tokenizer.ggml.token_type") {
        Some(candle_core::quantized::gguf_file::Value::Array(items)) => items
            .iter()
            .map(|v| v.to_i32().map(i64::from).unwrap_or(1))
            .collect(),
        _ => vec![1; tokens.len()],
    };
    let pre = gguf.string("tokenizer.ggml.pre").unwrap_or("default");

    let vocab: serde_json::Map<String, Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), json!(i)))
        .collect();
    let added: Vec<Value> = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (_, &t))| t == TOKEN_TYPE_CONTROL || t == TOKEN_TYPE_USER_DEFINED)
        .map(|(i, (content, _))| {
            json!({"id": i, "content": content, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let spec = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer(pre)?,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": pre.starts_with("llama"),
            "vocab": vocab, "merges": merges,
        },
    });
    spec.to_string()
        .parse::<tokenizers::Tokenizer>()
        .map_err(|e| ModelError::Tokenizer(format!("building the GGUF tokenizer: {e}")))
}
