//! Token log-probabilities in the OpenAI shapes: chat's `choices[].logprobs.content`, and text
//! completions' (legacy) `choices[].logprobs` with `tokens`, `token_logprobs`, `top_logprobs` and
//! `text_offset`.

use serde_json::{json, Value};
use switchyard_engine::{Engine, TokenLogprob};
use switchyard_models::text::TextTokenizer;

/// One token as OpenAI writes it: its text, log-probability and bytes.
fn token(engine: &Engine, id: u32, logprob: f32) -> Value {
    let (text, bytes) = spell(engine, id);
    json!({"token": text, "logprob": logprob, "bytes": bytes})
}

/// A token's text and bytes. The bytes are the token's own ([`Engine::token_bytes`]), so a token
/// that holds part of a multi-byte character reports that part, and its text is written
/// `bytes:\xNN...` as OpenAI writes such tokens. Special tokens, and every token of a tokenizer
/// whose pieces are neither byte-level nor byte fallback (none of its tokens splits a character),
/// are the token decoded alone.
fn spell(engine: &Engine, id: u32) -> (String, Vec<u8>) {
    match engine.token_bytes().ok().and_then(|b| b.get(id)) {
        Some(raw) => (
            std::str::from_utf8(raw).map_or_else(|_| escaped(raw), str::to_string),
            raw.to_vec(),
        ),
        None => {
            let text = engine.tokenizer().decode(&[id]).unwrap_or_default();
            let bytes = text.as_bytes().to_vec();
            (text, bytes)
        }
    }
}

/// Bytes that are not UTF-8 text, as OpenAI names such a token: `bytes:\xe4\xbd`.
fn escaped(raw: &[u8]) -> String {
    let mut s = String::from("bytes:");
    for b in raw {
        s.push_str(&format!("\\x{b:02x}"));
    }
    s
}

/// The `content` entry of a sampled token, with its alternatives.
pub fn entry(engine: &Engine, lp: &TokenLogprob) -> Value {
    let mut v = token(engine, lp.id, lp.logprob);
    v["top_logprobs"] = lp
        .top
        .iter()
        .map(|&(id, logprob)| token(engine, id, logprob))
        .collect();
    v
}

/// `choices[].logprobs`: `null` when they were not asked for.
pub fn field(entries: Option<Vec<Value>>) -> Value {
    match entries {
        Some(content) => json!({ "content": content }),
        None => Value::Null,
    }
}

/// Builds a text completion's `logprobs` objects chunk by chunk, keeping the running character
/// offset of each token in the choice's text.
#[derive(Debug)]
pub struct TextLogprobs {
    offset: usize,
}

impl TextLogprobs {
    /// Starts at character `offset` of the choice's text (0, or the prompt's length when it is
    /// echoed after the prompt tokens' own entries).
    pub fn new(offset: usize) -> Self {
        Self { offset }
    }

    /// The object for these tokens, in order: each token's text, its log-probability and a map of
    /// the most likely alternatives with the token itself (OpenAI returns up to `logprobs + 1`), or
    /// `null` for both where there is none (a prompt's first token). `text_offset` counts
    /// characters, each token adding the length of its own text.
    pub fn object<'a>(
        &mut self,
        tokenizer: &TextTokenizer,
        tokens: impl IntoIterator<Item = (u32, Option<&'a TokenLogprob>)>,
    ) -> Value {
        let (mut texts, mut logprobs, mut tops, mut offsets) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let text_of = |id: u32| tokenizer.decode(&[id]).unwrap_or_default();
        for (id, lp) in tokens {
            let text = text_of(id);
            offsets.push(self.offset);
            self.offset += text.chars().count();
            match lp {
                Some(lp) => {
                    logprobs.push(json!(lp.logprob));
                    let mut top = serde_json::Map::new();
                    for &(alt, logprob) in &lp.top {
                        top.entry(text_of(alt)).or_insert(json!(logprob));
                    }
                    top.entry(text.clone()).or_insert(json!(lp.logprob));
                    tops.push(Value::Object(top));
                }
                None => {
                    logprobs.push(Value::Null);
                    tops.push(Value::Null);
                }
            }
            texts.push(text);
        }
        json!({"tokens": texts, "token_logprobs": logprobs, "top_logprobs": tops,
               "text_offset": offsets})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_characters_are_named_by_their_bytes() {
        assert_eq!(escaped(&[0xe4, 0xbd]), r"bytes:\xe4\xbd");
    }

    #[test]
    fn absent_when_not_asked_for_and_a_content_list_when_asked() {
        assert_eq!(field(None), Value::Null);
        assert_eq!(field(Some(Vec::new())), json!({"content": []}));
        assert_eq!(
            field(Some(vec![json!({"token": "a"})])),
            json!({"content": [{"token": "a"}]})
        );
    }
}
