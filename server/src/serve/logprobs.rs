//! Token log-probabilities in the OpenAI shape (`choices[].logprobs.content`).

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
