//! Incremental detokenization: text deltas from a growing list of token ids.
//!
//! Byte-level BPE tokens can split a UTF-8 character, and decoding a token alone can differ from
//! decoding it in context, so each step decodes a short window of recent tokens and emits only what
//! the new token added, holding back text that ends in an incomplete character (the prefix/read
//! offset scheme of text-generation-inference).

use switchyard_models::text::TextTokenizer;

/// Decodes generated tokens into text deltas.
#[derive(Debug, Default)]
pub struct Detokenizer {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl Detokenizer {
    /// Appends `token` and returns the text it completes (possibly empty).
    pub fn push(
        &mut self,
        tokenizer: &TextTokenizer,
        token: u32,
    ) -> switchyard_models::Result<String> {
        self.ids.push(token);
        let prefix = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = tokenizer.decode(&self.ids[self.prefix_offset..])?;
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') && full.starts_with(&prefix) {
            let delta = full[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(delta)
        } else {
            Ok(String::new())
        }
    }

    /// Returns the text still held back when generation ends (tokens whose text ends in an
    /// incomplete character), decoded as it stands: invalid bytes become U+FFFD, as llama.cpp and
    /// `transformers` print them, instead of the whole tail being lost.
    pub fn flush(&mut self, tokenizer: &TextTokenizer) -> switchyard_models::Result<String> {
        if self.read_offset == self.ids.len() {
            return Ok(String::new());
        }
        let prefix = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = tokenizer.decode(&self.ids[self.prefix_offset..])?;
        let tail = match full.strip_prefix(&prefix) {
            Some(tail) => tail.to_string(),
            None => tokenizer.decode(&self.ids[self.read_offset..])?,
        };
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(tail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A byte-level BPE whose tokens split `é` (bytes C3 A9, `Ã` and `©` in GPT-2's byte alphabet).
    fn tokenizer() -> TextTokenizer {
        let json = r#"{
            "version": "1.0",
            "added_tokens": [],
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "vocab": {"a": 0, "Ã": 1, "©": 2, "aÃ": 3, "b": 4},
                      "merges": ["a Ã"]}
        }"#;
        let inner = json
            .parse::<tokenizers::Tokenizer>()
            .expect("tokenizer JSON");
        TextTokenizer::new(inner, None, Vec::new())
    }

    fn stream(ids: &[u32]) -> (String, String) {
        let tok = tokenizer();
        let mut d = Detokenizer::default();
        let mut text = String::new();
        for &id in ids {
            text += &d.push(&tok, id).unwrap();
        }
        (text, d.flush(&tok).unwrap())
    }

    #[test]
    fn a_split_character_is_held_back_until_complete() {
        assert_eq!(stream(&[4, 3, 2]), ("baé".to_string(), String::new()));
    }

    #[test]
    fn text_held_back_at_the_end_is_flushed_not_lost() {
        // "a" + a lone C3 byte: the delta waits for the character's second byte, which never comes.
        assert_eq!(stream(&[4, 3]), ("b".to_string(), "a\u{FFFD}".to_string()));
        assert_eq!(stream(&[4]), ("b".to_string(), String::new()));
    }
}
