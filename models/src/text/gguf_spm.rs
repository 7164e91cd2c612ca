//! SentencePiece vocabularies from GGUF (`tokenizer.ggml.model = llama`) as a `tokenizers` BPE.
//!
//! llama.cpp's SPM tokenizer escapes spaces as `▁` (with one prefixed to every text run that starts
//! the input or follows a special token, when `add_space_prefix`), then repeatedly joins the
//! adjacent pair whose joined piece is in the vocabulary with the highest score, and spells pieces
//! that never formed a token as `<0xXX>` byte tokens. A BPE model whose merges are every split of
//! every piece into two vocabulary pieces, ranked by the joined piece's score, does the same (as
//! transformers' `LlamaConverter` does); the normaliser adds the `▁`s and the decoder undoes them.
//!
//! Decoding goes through [`SpmDecoder`], which writes each token's bytes as llama.cpp's
//! `llama_detokenize` does and replaces only the invalid UTF-8 (the `tokenizers` ByteFallback
//! decoder turns a whole run of byte tokens into U+FFFDs when one of them is invalid).

use crate::error::{ModelError, Result};
use serde_json::{json, Value};

/// llama.cpp token types (`tokenizer.ggml.token_type`).
pub(super) const TOKEN_TYPE_NORMAL: i64 = 1;
pub(super) const TOKEN_TYPE_UNKNOWN: i64 = 2;
pub(super) const TOKEN_TYPE_CONTROL: i64 = 3;
pub(super) const TOKEN_TYPE_USER_DEFINED: i64 = 4;
const TOKEN_TYPE_UNUSED: i64 = 5;
const TOKEN_TYPE_BYTE: i64 = 6;

const SPACE: &str = "\u{2581}";

/// What a SentencePiece GGUF vocabulary says.
#[derive(Clone, Debug)]
pub(super) struct SpmVocab<'a> {
    /// Pieces by id.
    pub tokens: Vec<&'a str>,
    /// Piece scores by id (higher merges first).
    pub scores: Vec<f32>,
    /// llama.cpp token types by id.
    pub types: Vec<i64>,
    /// The unknown token's id.
    pub unk: Option<u32>,
    /// Whether a `▁` is prefixed to text runs (`tokenizer.ggml.add_space_prefix`).
    pub add_space_prefix: bool,
}

/// Every `(left, right)` split of a vocabulary piece into two vocabulary pieces, the pairs of
/// higher-scoring joined pieces first (ties: lower id first).
pub(super) fn spm_merges(tokens: &[&str], scores: &[f32]) -> Vec<(String, String)> {
    let ids: std::collections::HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .rev()
        .map(|(i, t)| (*t, i))
        .collect();
    let mut ranked: Vec<(f32, usize, usize, &str, &str)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        if ids.get(piece) != Some(&id) {
            continue; // a duplicate piece: llama.cpp's lookup finds the first one
        }
        for (split, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(split);
            if ids.contains_key(left) && ids.contains_key(right) {
                let score = scores.get(id).copied().unwrap_or(0.0);
                ranked.push((score, id, split, left, right));
            }
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    ranked
        .into_iter()
        .map(|(_, _, _, l, r)| (l.to_string(), r.to_string()))
        .collect()
}

/// Builds the tokenizer for a SentencePiece vocabulary.
pub(super) fn spm_tokenizer(vocab: &SpmVocab) -> Result<tokenizers::Tokenizer> {
    let SpmVocab {
        tokens,
        scores,
        types,
        unk,
        add_space_prefix,
    } = vocab;
    let mut map = serde_json::Map::new();
    for (i, t) in tokens.iter().enumerate() {
        map.entry(t.to_string()).or_insert(json!(i));
    }
    let type_of = |i: usize| types.get(i).copied().unwrap_or(TOKEN_TYPE_NORMAL);
    // Control, user-defined and unknown tokens are matched in text before the SPM pass (as
    // llama.cpp does with parse_special); user-defined ones are plain text when decoded.
    let added: Vec<Value> = tokens
        .iter()
        .enumerate()
        .filter(|&(i, _)| {
            matches!(
                type_of(i),
                TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED | TOKEN_TYPE_UNKNOWN
            )
        })
        .map(|(i, content)| {
            json!({"id": i, "content": content, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false,
                   "special": type_of(i) != TOKEN_TYPE_USER_DEFINED})
        })
        .collect();
    let replace_space = json!({"type": "Replace", "pattern": {"String": " "}, "content": SPACE});
    let normalizer = if *add_space_prefix {
        json!({"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": SPACE}, replace_space]})
    } else {
        replace_space
    };
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": SPACE}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if *add_space_prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    let unk_token = unk.and_then(|id| tokens.get(id as usize)).copied();
    let spec = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": unk_token,
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
            "byte_fallback": true, "ignore_merges": false,
            "vocab": map, "merges": spm_merges(tokens, scores),
        },
    });
    spec.to_string()
        .parse::<tokenizers::Tokenizer>()
        .map_err(|e| ModelError::Tokenizer(format!("building the SentencePiece tokenizer: {e}")))
}

/// Text of token ids the way llama.cpp's `llama_detokenize(remove_special = false,
/// unparse_special = true)` writes it.
#[derive(Clone, Debug)]
pub struct SpmDecoder {
    /// The bytes each token writes.
    pieces: Vec<Vec<u8>>,
    /// Drop one leading space of the output (`add_space_prefix`).
    strip_space: bool,
}

/// The byte of a `<0xXX>` piece.
fn byte_piece(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    (hex.len() == 2).then(|| u8::from_str_radix(hex, 16).ok())?
}

impl SpmDecoder {
    /// The decoder for `vocab`.
    pub(super) fn new(vocab: &SpmVocab) -> Self {
        let pieces = vocab
            .tokens
            .iter()
            .enumerate()
            .map(|(i, piece)| {
                match vocab.types.get(i).copied().unwrap_or(TOKEN_TYPE_NORMAL) {
                    TOKEN_TYPE_NORMAL => piece.replace(SPACE, " ").into_bytes(),
                    TOKEN_TYPE_BYTE => byte_piece(piece)
                        .map(|b| vec![b])
                        .unwrap_or_else(|| piece.as_bytes().to_vec()),
                    // llama.cpp writes nothing for unused (and unknown-kind) tokens.
                    TOKEN_TYPE_UNUSED => Vec::new(),
                    _ => piece.as_bytes().to_vec(),
                }
            })
            .collect();
        Self {
            pieces,
            strip_space: vocab.add_space_prefix,
        }
    }

    /// Text of `ids`; ids outside the vocabulary are skipped, invalid UTF-8 becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            if let Some(piece) = self.pieces.get(id as usize) {
                bytes.extend_from_slice(piece);
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        match text.strip_prefix(' ') {
            Some(rest) if self.strip_space => rest.to_string(),
            _ => text.into_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab<'a>(pieces: &[(&'a str, f32, i64)]) -> SpmVocab<'a> {
        SpmVocab {
            tokens: pieces.iter().map(|p| p.0).collect(),
            scores: pieces.iter().map(|p| p.1).collect(),
            types: pieces.iter().map(|p| p.2).collect(),
            unk: Some(0),
            add_space_prefix: true,
        }
    }

    /// `<unk> <s> </s>`, the 256 byte pieces, then a few normal pieces.
    fn small() -> Vec<(String, f32, i64)> {
        let mut v = vec![
            ("<unk>".to_string(), 0.0, TOKEN_TYPE_UNKNOWN),
            ("<s>".into(), 0.0, TOKEN_TYPE_CONTROL),
            ("</s>".into(), 0.0, TOKEN_TYPE_CONTROL),
        ];
        v.extend((0..=255u8).map(|b| (format!("<0x{b:02X}>"), 0.0, TOKEN_TYPE_BYTE)));
        for (p, s) in [
            ("▁", -1.0),
            ("a", -2.0),
            ("b", -3.0),
            ("c", -4.0),
            ("ab", -10.0),
            ("bc", -5.0),
            ("abc", -6.0),
            ("▁a", -20.0),
            ("▁abc", -7.0),
        ] {
            v.push((p.to_string(), s, TOKEN_TYPE_NORMAL));
        }
        v
    }

    fn build(pieces: &[(String, f32, i64)]) -> tokenizers::Tokenizer {
        let refs: Vec<(&str, f32, i64)> = pieces.iter().map(|p| (p.0.as_str(), p.1, p.2)).collect();
        spm_tokenizer(&vocab(&refs)).unwrap()
    }

    fn pieces(tok: &tokenizers::Tokenizer, text: &str) -> Vec<String> {
        tok.encode(text, false).unwrap().get_tokens().to_vec()
    }

    #[test]
    fn merges_are_all_splits_ranked_by_the_joined_score() {
        let tokens = ["a", "b", "c", "ab", "bc", "abc"];
        let scores = [0.0, 0.0, 0.0, -3.0, -1.0, -2.0];
        let merges = spm_merges(&tokens, &scores);
        let pairs: Vec<(&str, &str)> = merges
            .iter()
            .map(|(l, r)| (l.as_str(), r.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [("b", "c"), ("a", "bc"), ("ab", "c"), ("a", "b")],
            "bc (-1) before abc (-2, both splits) before ab (-3)"
        );
    }

    #[test]
    fn merges_skip_splits_whose_halves_are_not_pieces() {
        let merges = spm_merges(&["ab", "a", "b", "abc"], &[0.0; 4]);
        assert_eq!(merges, [("a".to_string(), "b".to_string())]);
    }

    #[test]
    fn pairs_join_by_score_of_the_joined_piece() {
        let tok = build(&small());
        // "bc" (-5) beats "ab" (-10), then "abc" (-6) via a + bc, then "▁abc".
        assert_eq!(pieces(&tok, "abc"), ["▁abc"]);
        // Then "ab" (-10); "▁c" is no piece.
        assert_eq!(pieces(&tok, "abcab c"), ["▁abc", "ab", "▁", "c"]);
    }

    #[test]
    fn unknown_characters_fall_back_to_bytes_and_decode_back() {
        let tok = build(&small());
        let enc = tok.encode("aé", false).unwrap();
        assert_eq!(enc.get_tokens(), ["▁a", "<0xC3>", "<0xA9>"]);
        assert_eq!(tok.decode(enc.get_ids(), false).unwrap(), "aé");
    }

    #[test]
    fn special_tokens_split_text_and_each_run_gets_a_space_prefix() {
        let tok = build(&small());
        assert_eq!(pieces(&tok, "<s>a</s>b"), ["<s>", "▁a", "</s>", "▁", "b"]);
        let ids = tok.encode("<s>a b", false).unwrap().get_ids().to_vec();
        assert_eq!(tok.decode(&ids, false).unwrap(), "<s> a b");
        assert!(tok.encode("", false).unwrap().get_ids().is_empty());
    }

    #[test]
    fn no_space_prefix_when_the_vocabulary_says_so() {
        let owned = small();
        let refs: Vec<(&str, f32, i64)> = owned.iter().map(|p| (p.0.as_str(), p.1, p.2)).collect();
        let mut v = vocab(&refs);
        v.add_space_prefix = false;
        let tok = spm_tokenizer(&v).unwrap();
        assert_eq!(pieces(&tok, "abc a"), ["abc", "▁a"]);
        let ids = tok.encode(" a", false).unwrap().get_ids().to_vec();
        assert_eq!(tok.decode(&ids, false).unwrap(), " a");
    }
}

#[cfg(test)]
mod decoder_tests {
    use super::*;

    #[test]
    fn pieces_write_llama_cpp_bytes() {
        let v = SpmVocab {
            tokens: vec![
                "<s>", "<0xE4>", "<0xBD>", "<0xA0>", "▁hi", "x▁y", "<0x64>", "[UNUSED]",
            ],
            scores: vec![0.0; 8],
            types: vec![
                TOKEN_TYPE_CONTROL,
                TOKEN_TYPE_BYTE,
                TOKEN_TYPE_BYTE,
                TOKEN_TYPE_BYTE,
                TOKEN_TYPE_NORMAL,
                TOKEN_TYPE_USER_DEFINED,
                TOKEN_TYPE_BYTE,
                TOKEN_TYPE_UNUSED,
            ],
            unk: None,
            add_space_prefix: true,
        };
        let d = SpmDecoder::new(&v);
        assert_eq!(d.decode(&[4, 1, 2, 3]), "hi你");
        assert_eq!(d.decode(&[0, 4]), "<s> hi");
        assert_eq!(d.decode(&[5, 7, 99]), "x▁y");
        // One invalid byte is one U+FFFD; the valid byte before it stays.
        assert_eq!(d.decode(&[4, 6, 1, 4]), "hid\u{FFFD} hi");
        assert_eq!(byte_piece("<0x0A>"), Some(10));
        assert_eq!(byte_piece("<0x0>"), None);
    }
}
