//! Each token's bytes as the model's tokenizer spells them: byte-level BPE's printable stand-ins
//! mapped back to bytes, SentencePiece's `<0xNN>` byte-fallback pieces to their byte and its `▁` to
//! a space (llguidance reads them from the tokenizer's own description). A token may hold part of a
//! UTF-8 character, which decoding it alone cannot show; the OpenAI `logprobs` entries report
//! those bytes, and constrained answers match grammars against them.

use llguidance::toktrie::TokTrie;
use switchyard_models::text::TextTokenizer;

/// The byte strings of one model's vocabulary, by token id.
#[derive(Debug)]
pub struct TokenBytes {
    /// Special tokens keep llguidance's marker byte in front of their text.
    words: Vec<Vec<u8>>,
}

impl TokenBytes {
    /// Reads the byte strings from `tokenizer`; the error is why they cannot be read (a decoder
    /// that is neither byte-level nor byte fallback).
    pub fn new(tokenizer: &TextTokenizer) -> std::result::Result<Self, String> {
        let json = serde_json::to_value(tokenizer.inner()).map_err(|e| e.to_string())?;
        let mut words =
            llguidance::token_bytes_from_tokenizer_json(&json).map_err(|e| e.to_string())?;
        // The vocabulary may have ids the tokenizer file does not spell (padding rows): empty.
        words.resize(words.len().max(tokenizer.vocab_size()), Vec::new());
        Ok(Self { words })
    }

    /// The bytes of an ordinary token; `None` for a special token (its text is a name, not
    /// bytes of the answer) and for an id the vocabulary does not spell.
    pub fn get(&self, id: u32) -> Option<&[u8]> {
        match self.words.get(id as usize)?.as_slice() {
            [] => None,
            [TokTrie::SPECIAL_TOKEN_MARKER, ..] => None,
            bytes => Some(bytes),
        }
    }

    /// Every token's byte string as llguidance indexes it (special tokens marked).
    pub(crate) fn words(&self) -> &[Vec<u8>] {
        &self.words
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A byte-level BPE vocabulary with a space-prefixed word, the two halves of "é" and a special
    /// token.
    fn byte_level() -> TextTokenizer {
        let json = serde_json::json!({
            "version": "1.0",
            "added_tokens": [{"id": 4, "content": "<|end|>", "single_word": false, "lstrip": false,
                              "rstrip": false, "normalized": false, "special": true}],
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "vocab": {"a": 0, "ĠHello": 1, "Ã": 2, "©": 3}, "merges": []}
        });
        let inner = tokenizers::Tokenizer::from_bytes(json.to_string().as_bytes()).unwrap();
        TextTokenizer::new(inner, None, vec![4])
    }

    #[test]
    fn tokens_are_their_bytes_and_special_tokens_have_none() {
        let bytes = TokenBytes::new(&byte_level()).unwrap();
        assert_eq!(bytes.get(0), Some(&b"a"[..]));
        assert_eq!(bytes.get(1), Some(&b" Hello"[..]));
        // "é" is 0xC3 0xA9: each half is a token of its own, not text.
        assert_eq!(bytes.get(2), Some(&[0xC3][..]));
        assert_eq!(bytes.get(3), Some(&[0xA9][..]));
        assert_eq!(bytes.get(4), None);
        assert_eq!(bytes.get(99), None);
        assert_eq!(bytes.words()[4][0], TokTrie::SPECIAL_TOKEN_MARKER);
    }
}
