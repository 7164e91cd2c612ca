//! Token log-probabilities in the OpenAI shapes: chat's `choices[].logprobs.content`, and text
//! completions' (legacy) `choices[].logprobs` with `tokens`, `token_logprobs`, `top_logprobs` and
//! `text_offset`.

use serde_json::{json, Value};
use switchyard_engine::TokenLogprob;
use switchyard_models::text::TextTokenizer;

/// One token as OpenAI writes it: its text, log-probability and UTF-8 bytes.
fn token(tokenizer: &TextTokenizer, id: u32, logprob: f32) -> Value {
    // A token that ends inside a multi-byte character decodes with a replacement character;
    // `bytes` then holds that text's bytes, not the raw partial ones.
    let text = tokenizer.decode(&[id]).unwrap_or_default();
    json!({"token": text, "logprob": logprob, "bytes": text.as_bytes()})
}

/// The `content` entry of a sampled token, with its alternatives.
pub fn entry(tokenizer: &TextTokenizer, lp: &TokenLogprob) -> Value {
    let mut v = token(tokenizer, lp.id, lp.logprob);
    v["top_logprobs"] = lp
        .top
        .iter()
        .map(|&(id, logprob)| token(tokenizer, id, logprob))
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
    fn absent_when_not_asked_for_and_a_content_list_when_asked() {
        assert_eq!(field(None), Value::Null);
        assert_eq!(field(Some(Vec::new())), json!({"content": []}));
        assert_eq!(
            field(Some(vec![json!({"token": "a"})])),
            json!({"content": [{"token": "a"}]})
        );
    }
}
