//! Builds a Hugging Face `tokenizers` tokenizer from a GGUF file's `tokenizer.ggml.*` metadata.
//!
//! Two vocabulary kinds are supported, with ids matching llama.cpp's:
//! - byte-level BPE (`tokenizer.ggml.model = gpt2`: SmolLM2, Qwen2/3, Llama 3), the pre-tokenizer
//!   chosen from `tokenizer.ggml.pre` the way llama.cpp does (Candle's GGUF tokenizer does not know
//!   `smollm` and splits digits differently);
//! - SentencePiece BPE (`tokenizer.ggml.model = llama`: Llama 1/2, TinyLlama, Mistral), see
//!   [`super::gguf_spm`].

use super::gguf_spm::{
    spm_tokenizer, SpmDecoder, SpmVocab, TOKEN_TYPE_CONTROL, TOKEN_TYPE_NORMAL,
    TOKEN_TYPE_USER_DEFINED,
};
use crate::error::{ModelError, Result};
use crate::weights::GgufFile;
use candle_core::quantized::gguf_file::Value as GgufValue;
use serde_json::{json, Value};

const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GPT-2's pre-tokenizer regex (what `ByteLevel` with `use_regex` splits by).
const GPT2_REGEX: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

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
        "gpt-2" | "gpt2" => byte_level(true),
        // llama.cpp's fallback for a vocabulary that names no pre-tokenizer (it warns that
        // generation quality will be degraded): punctuation runs, GPT-2's rule, digit runs, then
        // runs of three digits.
        "default" => seq(vec![
            split(r"[\p{P}\$\+<=>\^~\|]+"),
            split(GPT2_REGEX),
            split(r"\p{N}+"),
            split("[0-9][0-9][0-9]"),
            byte_level(false),
        ]),
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

/// Whether a tokenizer model (`tokenizer.ggml.model`) is one this module builds.
fn check_model(model: &str) -> Result<()> {
    match model {
        "gpt2" | "llama" => Ok(()),
        other => Err(ModelError::Tokenizer(format!(
            "GGUF tokenizer model `{other}` is not supported (only `gpt2`, byte-level BPE, and \
             `llama`, SentencePiece BPE); pass a tokenizer.json instead"
        ))),
    }
}

/// A numeric array (`tokenizer.ggml.token_type` / `scores`) read with `read`, or `default` for
/// every token when absent or malformed.
fn per_token<T: Clone>(
    gguf: &GgufFile,
    key: &str,
    n: usize,
    default: T,
    read: impl Fn(&GgufValue) -> Option<T>,
) -> Result<Vec<T>> {
    match gguf.value(key) {
        Some(GgufValue::Array(items)) if items.len() == n => Ok(items
            .iter()
            .map(|v| read(v).unwrap_or_else(|| default.clone()))
            .collect()),
        Some(GgufValue::Array(items)) => Err(ModelError::Tokenizer(format!(
            "GGUF {key} has {} entries for {n} tokens",
            items.len()
        ))),
        _ => Ok(vec![default; n]),
    }
}

/// Builds the tokenizer described by `gguf`'s metadata.
pub fn tokenizer_from_gguf(gguf: &GgufFile) -> Result<tokenizers::Tokenizer> {
    gguf_tokenizer_parts(gguf).map(|(t, _)| t)
}

/// The tokenizer of `gguf`, and for SentencePiece vocabularies the llama.cpp-style decoder.
pub(super) fn gguf_tokenizer_parts(
    gguf: &GgufFile,
) -> Result<(tokenizers::Tokenizer, Option<SpmDecoder>)> {
    let model = gguf.string("tokenizer.ggml.model").unwrap_or("missing");
    check_model(model)?;
    let tokens = gguf
        .strings("tokenizer.ggml.tokens")
        .ok_or_else(|| ModelError::Tokenizer("GGUF has no tokenizer.ggml.tokens".into()))?;
    let types = per_token(
        gguf,
        "tokenizer.ggml.token_type",
        tokens.len(),
        TOKEN_TYPE_NORMAL,
        |v| v.to_i32().ok().map(i64::from),
    )?;
    if model == "llama" {
        let scores = per_token(gguf, "tokenizer.ggml.scores", tokens.len(), 0.0, |v| {
            v.to_f32().ok()
        })?;
        let unk = gguf
            .integer("tokenizer.ggml.unknown_token_id")
            .map(|v| v as u32)
            .or_else(|| tokens.iter().position(|t| *t == "<unk>").map(|i| i as u32));
        let vocab = SpmVocab {
            tokens,
            scores,
            types,
            unk,
            add_space_prefix: gguf
                .boolean("tokenizer.ggml.add_space_prefix")
                .unwrap_or(true),
        };
        return Ok((spm_tokenizer(&vocab)?, Some(SpmDecoder::new(&vocab))));
    }
    let merges = gguf
        .strings("tokenizer.ggml.merges")
        .ok_or_else(|| ModelError::Tokenizer("GGUF has no tokenizer.ggml.merges".into()))?;
    let pre = gguf.string("tokenizer.ggml.pre").unwrap_or_else(|| {
        tracing::warn!(
            "the GGUF names no pre-tokenizer (tokenizer.ggml.pre): llama.cpp's default is used, \
             and its generation quality may be degraded, as llama.cpp warns"
        );
        "default"
    });

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
        // User-defined tokens (Qwen's `<think>`, `<tool_call>`) are plain text when decoded, as
        // llama.cpp renders them; control tokens are special, their text never shown.
        .map(|(i, (content, &t))| {
            json!({"id": i, "content": content, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": t != TOKEN_TYPE_USER_DEFINED})
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
    let tokenizer = spec
        .to_string()
        .parse::<tokenizers::Tokenizer>()
        .map_err(|e| ModelError::Tokenizer(format!("building the GGUF tokenizer: {e}")))?;
    Ok((tokenizer, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_vocabulary_kinds_are_named() {
        for kind in ["bert", "t5", "rwkv", "missing"] {
            let err = check_model(kind).unwrap_err().to_string();
            assert!(err.contains(&format!("`{kind}`")), "{err}");
        }
        assert!(check_model("gpt2").is_ok() && check_model("llama").is_ok());
    }

    #[test]
    fn the_default_pre_tokenizer_splits_as_llama_cpp_does() {
        use tokenizers::PreTokenizer;
        let pre: tokenizers::PreTokenizerWrapper =
            serde_json::from_value(pre_tokenizer("default").unwrap()).unwrap();
        let mut text = tokenizers::PreTokenizedString::from("x=1234, ok");
        pre.pre_tokenize(&mut text).unwrap();
        let pieces: Vec<String> = text
            .get_splits(
                tokenizers::OffsetReferential::Original,
                tokenizers::OffsetType::Byte,
            )
            .into_iter()
            .map(|(s, _, _)| s.to_string())
            .collect();
        // Byte-level pieces: `Ġ` is the space.
        assert_eq!(pieces, ["x", "=", "123", "4", ",", "Ġok"]);
    }

    #[test]
    fn unknown_pre_tokenizers_are_named() {
        let err = pre_tokenizer("falcon").unwrap_err().to_string();
        assert!(err.contains("`falcon`"), "{err}");
    }
}
