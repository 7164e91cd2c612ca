//! Token log-probabilities in the OpenAI shapes: chat's `choices[].logprobs.content`, and text
//! completions' (legacy) `choices[].logprobs` with `tokens`, `token_logprobs`, `top_logprobs` and
//! `text_offset`.

use serde_json::{json, Value};
use switchyard_engine::{Engine, TokenLogprob};

/// One token as OpenAI writes it: its text, log-probability and bytes.
fn token(engine: &Engine, id: u32, logprob: f32) -> Value {
    let (text, bytes) = spell(engine, id);
    json!({"token": text, "logprob": logprob, "bytes": bytes})
}

/// A token's text and bytes. The bytes are the token's own ([`Engine::token_bytes`]), so a token
/// that holds part of a multi-byte character reports that part, and its text is written
/// `bytes:\xNN...` as OpenAI writes such tokens. A token that adds no text to the answer (a
/// special token, [`Engine::silent_token`]) is empty; every token of a tokenizer whose pieces are
/// neither byte-level nor byte fallback (none of its tokens splits a character) is the token
/// decoded alone.
fn spell(engine: &Engine, id: u32) -> (String, Vec<u8>) {
    // A token that adds no text to the answer (a special token) spells nothing, so that the
    // entries' bytes put together are the answer's.
    if engine.silent_token(id) {
        return (String::new(), Vec::new());
    }
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
    /// The bytes of a character the tokens so far have begun and not finished.
    unfinished: Vec<u8>,
}

impl TextLogprobs {
    /// Starts at character `offset` of the choice's text (0, or the prompt's length when it is
    /// echoed after the prompt tokens' own entries).
    pub fn new(offset: usize) -> Self {
        Self {
            offset,
            unfinished: Vec::new(),
        }
    }

    /// The object for these tokens, in order: each token's text (as chat's entries spell it:
    /// `bytes:\xNN...` for part of a character), its log-probability and a map of the most likely
    /// alternatives with the token itself (OpenAI returns up to `logprobs + 1`), or `null` for
    /// both where there is none (a prompt's first token). `text_offset` counts characters of the
    /// choice's text; a character split over tokens counts at the token that finishes it.
    pub fn object<'a>(
        &mut self,
        engine: &Engine,
        tokens: impl IntoIterator<Item = (u32, Option<&'a TokenLogprob>)>,
    ) -> Value {
        self.build(engine, tokens, None)
    }

    /// An echoed prompt's object: each token at `offsets` (where its text starts in the prompt's
    /// text, [`echo_offsets`]); the tokens after it go on at character `text_chars`, where the
    /// echoed text ends, whatever the prompt's tokens spelled (a SentencePiece tokenizer's first
    /// piece carries a space the prompt does not have, a special token a name).
    pub fn echoed<'a>(
        &mut self,
        engine: &Engine,
        tokens: impl IntoIterator<Item = (u32, Option<&'a TokenLogprob>)>,
        offsets: &[usize],
        text_chars: usize,
    ) -> Value {
        let object = self.build(engine, tokens, Some(offsets));
        self.continue_at(text_chars);
        object
    }

    /// The object, each token at `fixed[i]` when given, else at the running offset.
    fn build<'a>(
        &mut self,
        engine: &Engine,
        tokens: impl IntoIterator<Item = (u32, Option<&'a TokenLogprob>)>,
        fixed: Option<&[usize]>,
    ) -> Value {
        let (mut texts, mut logprobs, mut tops, mut offsets) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let text_of = |id: u32| spell(engine, id).0;
        for (i, (id, lp)) in tokens.into_iter().enumerate() {
            let (text, bytes) = spell(engine, id);
            offsets.push(fixed.and_then(|f| f.get(i).copied()).unwrap_or(self.offset));
            self.advance(&bytes);
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

    /// Goes on at character `offset` with the next tokens.
    fn continue_at(&mut self, offset: usize) {
        self.offset = offset;
        self.unfinished.clear();
    }

    /// Moves the offset past a token's bytes: past every character they finish (an invalid byte
    /// sequence is one replacement character, as the text shows it), keeping an unfinished one.
    fn advance(&mut self, bytes: &[u8]) {
        self.unfinished.extend_from_slice(bytes);
        let finished = finished_prefix(&self.unfinished);
        self.offset += String::from_utf8_lossy(&self.unfinished[..finished])
            .chars()
            .count();
        self.unfinished.drain(..finished);
    }
}

/// Where each of an echoed prompt's `tokens` starts in its `text`, in characters: the prompt
/// tokens' `text_offset`s ([`aligned_offsets`] over the tokens' bytes).
pub fn echo_offsets(engine: &Engine, text: &str, tokens: &[u32]) -> Vec<usize> {
    aligned_offsets(text, tokens.iter().map(|&id| spell(engine, id).1))
}

/// Where each token starts in `text`, in characters, its bytes sought at the running position:
/// a token found there starts there and moves the position past itself; one found there but
/// for a leading space (the space a SentencePiece first piece carries and the text does not)
/// starts there too; any other (a special token the tokenizer added, such as BOS) takes none of
/// the text. A token that starts inside a character is at that character, as for generated text.
/// One pass over the text.
fn aligned_offsets(text: &str, tokens: impl IntoIterator<Item = Vec<u8>>) -> Vec<usize> {
    let bytes = text.as_bytes();
    let (mut at, mut counted_bytes, mut counted_chars) = (0, 0, 0);
    tokens
        .into_iter()
        .map(|token| {
            let mut boundary = at;
            while !text.is_char_boundary(boundary) {
                boundary -= 1;
            }
            counted_chars += text[counted_bytes..boundary].chars().count();
            counted_bytes = boundary;
            let rest = &bytes[at..];
            if rest.starts_with(&token) {
                at += token.len();
            } else if let Some(unspaced) = token.strip_prefix(b" ") {
                if !unspaced.is_empty() && rest.starts_with(unspaced) {
                    at += unspaced.len();
                }
            }
            counted_chars
        })
        .collect()
}

/// Legacy objects of consecutive tokens joined into one.
pub fn joined(parts: Vec<Value>) -> Value {
    let mut all =
        json!({"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []});
    for part in parts {
        for key in ["tokens", "token_logprobs", "top_logprobs", "text_offset"] {
            if let (Some(to), Some(from)) = (all[key].as_array_mut(), part[key].as_array()) {
                to.extend(from.iter().cloned());
            }
        }
    }
    all
}

/// The length of `bytes` without a character begun at its end and not finished.
fn finished_prefix(bytes: &[u8]) -> usize {
    let mut start = 0;
    loop {
        match std::str::from_utf8(&bytes[start..]) {
            Ok(_) => return bytes.len(),
            // An invalid sequence is finished: the text shows one replacement character for it.
            Err(e) => match e.error_len() {
                Some(invalid) => start += e.valid_up_to() + invalid,
                None => return start + e.valid_up_to(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_character_split_over_tokens_counts_once_at_the_token_that_finishes_it() {
        let mut offsets = TextLogprobs::new(3);
        offsets.advance(b"ab");
        assert_eq!(offsets.offset, 5);
        // "é" is C3 A9; "€" is E2 82 AC.
        offsets.advance(&[0xC3]);
        assert_eq!(offsets.offset, 5);
        offsets.advance(&[0xA9, b'x', 0xE2, 0x82]);
        assert_eq!(offsets.offset, 7);
        offsets.advance(&[0xAC]);
        assert_eq!(offsets.offset, 8);
        // A byte no character starts with is one replacement character at once.
        offsets.advance(&[0xF5, b'y']);
        assert_eq!(offsets.offset, 10);
        assert_eq!(finished_prefix(&[b'a', 0xF0, 0x9F]), 1);
        assert_eq!(finished_prefix(&[0xFF, 0xF0]), 1);
    }

    #[test]
    fn the_generated_text_goes_on_after_the_prompt_and_objects_join_in_order() {
        let mut offsets = TextLogprobs::new(0);
        // A prompt whose tokens spelled " Hello" for the text "Hello", ending mid-character.
        offsets.advance(b" Hello");
        offsets.advance(&[0xC3]);
        offsets.continue_at(5);
        offsets.advance(b"!");
        assert_eq!(offsets.offset, 6);
        let part = |t: &str, o: usize| json!({"tokens": [t], "token_logprobs": [null], "top_logprobs": [null], "text_offset": [o]});
        assert_eq!(
            joined(vec![part("a", 0), part("b", 1)]),
            json!({"tokens": ["a", "b"], "token_logprobs": [null, null],
                   "top_logprobs": [null, null], "text_offset": [0, 1]})
        );
    }

    #[test]
    fn an_echoed_prompts_tokens_are_found_in_its_text() {
        let at =
            |text: &str, tokens: &[&[u8]]| aligned_offsets(text, tokens.iter().map(|t| t.to_vec()));
        // BOS takes none of the text, a SentencePiece first piece's space is not in it.
        assert_eq!(
            at(
                "Hello world",
                &[b"<s>", b" He", b"ll", b"o", b" wor", b"ld"]
            ),
            [0, 0, 2, 4, 5, 9]
        );
        // Written in the text, the special token is there.
        assert_eq!(at("<s> Hi", &[b"<s>", b" Hi"]), [0, 3]);
        // "é€" split over tokens: a token inside a character is at that character.
        assert_eq!(
            at("aé€b", &[b"a", &[0xC3], &[0xA9, 0xE2], &[0x82, 0xAC], b"b"]),
            [0, 1, 1, 2, 3]
        );
        // A space token before a space is the space itself.
        assert_eq!(at("a  b", &[b"a", b" ", b" b"]), [0, 1, 2]);
    }

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
