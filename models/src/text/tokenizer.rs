//! The tokenizer of a generation model, with the special ids generation needs.

use super::gguf_spm::SpmDecoder;
use crate::error::{ModelError, Result};
use crate::weights::GgufFile;
use std::path::Path;
use std::sync::Arc;

/// A tokenizer plus the model's begin/end-of-sequence tokens.
#[derive(Clone, Debug)]
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: Vec<u32>,
    add_bos: bool,
    /// llama.cpp-style decoding for SentencePiece GGUF vocabularies.
    spm: Option<Arc<SpmDecoder>>,
    /// Ids of the special tokens (added tokens marked `special`: a GGUF's control tokens), sorted.
    special: Vec<u32>,
}

/// Tokens llama.cpp also ends generation at, found by their text (`llama-vocab.cpp`), beside the
/// ids a GGUF names: a chat model's end of turn is often not its `eos_token_id`. (llama.cpp also
/// guesses FIM tokens by text; here they end generation only when the metadata names them.)
const END_OF_GENERATION_TEXTS: [&str; 14] = [
    "<|eot_id|>",
    "<|eom_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<end_of_utterance>",
    "<\u{ff5c}end\u{2581}of\u{2581}sentence\u{ff5c}>",
];

/// Whether prompts start with BOS when a GGUF does not say (`tokenizer.ggml.add_bos_token`
/// absent), as llama.cpp decides it: yes for SentencePiece vocabularies and for the BPE ones of the
/// Llama 3 family of pre-tokenizers, no otherwise.
fn default_add_bos(model: Option<&str>, pre: Option<&str>) -> bool {
    const LLAMA3_FAMILY: [&str; 9] = [
        "llama3",
        "llama-v3",
        "llama-bpe",
        "falcon3",
        "falcon-h1",
        "pixtral",
        "midm-2.0",
        "lfm2",
        "jina-v5-nano",
    ];
    match model {
        Some("llama") => true,
        Some("gpt2") => pre.is_some_and(|p| LLAMA3_FAMILY.contains(&p)),
        _ => false,
    }
}

fn tok_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

impl TextTokenizer {
    /// Wraps a tokenizer; `eos` lists every id that ends generation.
    pub fn new(inner: tokenizers::Tokenizer, bos: Option<u32>, mut eos: Vec<u32>) -> Self {
        eos.sort_unstable();
        eos.dedup();
        let mut special: Vec<u32> = inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| id)
            .collect();
        special.sort_unstable();
        Self {
            inner,
            bos,
            eos,
            add_bos: false,
            spm: None,
            special,
        }
    }

    /// Whether `id` is a special token (chat markers, control tokens): generated output shows no
    /// text for it, as vLLM's `skip_special_tokens` default and llama.cpp's rendering do.
    pub fn is_special(&self, id: u32) -> bool {
        self.special.binary_search(&id).is_ok()
    }

    /// Builds the tokenizer from GGUF metadata, with its special ids ([`Self::with_gguf_specials`]).
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let (inner, spm) = super::gguf_tokenizer::gguf_tokenizer_parts(gguf)?;
        let mut tokenizer = Self::new(inner, None, Vec::new()).with_gguf_specials(gguf);
        tokenizer.spm = spm.map(Arc::new);
        Ok(tokenizer)
    }

    /// Takes a GGUF's special ids from its metadata, as llama.cpp does, whether this tokenizer
    /// was built from the GGUF or given beside it (`tokenizer.json`): BOS, whether prompts start
    /// with it (`add_bos_token`; by default, for a SentencePiece vocabulary), and every id that
    /// ends generation (`eos`, `eot`, `eom`, and the end-of-turn tokens llama.cpp finds by text).
    pub fn with_gguf_specials(mut self, gguf: &GgufFile) -> Self {
        let id = |k: &str| gguf.integer(k).map(|v| v as u32);
        self.bos = id("tokenizer.ggml.bos_token_id");
        self.add_bos = gguf
            .boolean("tokenizer.ggml.add_bos_token")
            .unwrap_or_else(|| {
                default_add_bos(
                    gguf.string("tokenizer.ggml.model"),
                    gguf.string("tokenizer.ggml.pre"),
                )
            });
        let named = [
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.eom_token_id",
            "tokenizer.ggml.fim_pad_token_id",
            "tokenizer.ggml.fim_rep_token_id",
            "tokenizer.ggml.fim_sep_token_id",
        ]
        .iter()
        .filter_map(|k| id(k));
        let by_text = END_OF_GENERATION_TEXTS
            .iter()
            .filter_map(|t| self.inner.token_to_id(t));
        let ids: Vec<u32> = named.chain(by_text).collect();
        self.add_eos(ids);
        self
    }

    /// Whether the tokenizer's own post-processor puts BOS first (a `tokenizer.json`
    /// `TemplateProcessing`, as Llama 3's adds `<|begin_of_text|>`): `transformers` then starts a
    /// text with it though `tokenizer_config.json` says nothing.
    pub fn post_processor_adds_bos(&self) -> bool {
        let Some(bos) = self.bos else { return false };
        self.inner
            .encode("a", true)
            .is_ok_and(|e| e.get_ids().first() == Some(&bos))
    }

    /// Loads `tokenizer.json` from a file, taking bos/eos from the named tokens.
    pub fn from_file(path: &Path, bos: Option<&str>, eos: &[String]) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
        let bos = bos.and_then(|t| inner.token_to_id(t));
        let eos = eos.iter().filter_map(|t| inner.token_to_id(t)).collect();
        Ok(Self::new(inner, bos, eos))
    }

    /// Adds more end-of-generation ids (e.g. from `generation_config.json`).
    pub fn add_eos(&mut self, ids: impl IntoIterator<Item = u32>) {
        self.eos.extend(ids);
        self.eos.sort_unstable();
        self.eos.dedup();
    }

    /// Token ids of `text`; special tokens written in the text are recognised.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(tok_err)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of `text` preceded by BOS when the model asks for one (GGUF
    /// `tokenizer.ggml.add_bos_token`), as llama.cpp's `llama_tokenize(add_special, parse_special)`.
    pub fn encode_with_bos(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        if self.add_bos {
            ids.extend(self.bos);
        }
        ids.extend(self.encode(text)?);
        Ok(ids)
    }

    /// Token ids of a prompt: BOS first when the model asks for one, unless the text already
    /// begins with it (a chat template's `{{ bos_token }}`), so a sequence never starts with two;
    /// llama.cpp's server strips a rendered template's BOS for the same reason.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let ids = self.encode(text)?;
        match self.bos {
            Some(bos) if self.add_bos && ids.first() != Some(&bos) => {
                Ok(std::iter::once(bos).chain(ids).collect())
            }
            _ => Ok(ids),
        }
    }

    /// Whether the model wants BOS before a sequence (GGUF `tokenizer.ggml.add_bos_token`).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Sets whether prompts start with BOS (Hugging Face `tokenizer_config.json` `add_bos_token`).
    pub fn set_add_bos(&mut self, add_bos: bool) {
        self.add_bos = add_bos;
    }

    /// Text of `ids`, special tokens included as written.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(spm) = &self.spm {
            return Ok(spm.decode(ids));
        }
        self.inner.decode(ids, false).map_err(tok_err)
    }

    /// The id of a token string, if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The string of a token id.
    pub fn token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Begin-of-sequence id, if the model has one.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// Ids that end generation.
    pub fn eos(&self) -> &[u32] {
        &self.eos
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bos_comes_first_by_default_where_llama_cpp_puts_it() {
        assert!(default_add_bos(Some("llama"), None));
        assert!(default_add_bos(Some("gpt2"), Some("llama-bpe")));
        assert!(default_add_bos(Some("gpt2"), Some("llama3")));
        assert!(!default_add_bos(Some("gpt2"), Some("smollm")));
        assert!(!default_add_bos(Some("gpt2"), Some("qwen2")));
        assert!(!default_add_bos(Some("gpt2"), None));
        assert!(!default_add_bos(None, None));
    }

    /// A word-level tokenizer (`<s>`=0, `a`=1) with the given post-processor.
    fn tokenizer(post_processor: &str) -> TextTokenizer {
        let json = format!(
            r#"{{"version": "1.0",
                "added_tokens": [{{"id": 0, "content": "<s>", "single_word": false, "lstrip": false,
                                  "rstrip": false, "normalized": false, "special": true}}],
                "pre_tokenizer": {{"type": "Whitespace"}},
                "post_processor": {post_processor},
                "model": {{"type": "WordLevel", "vocab": {{"<s>": 0, "a": 1}}, "unk_token": "a"}}}}"#
        );
        let inner: tokenizers::Tokenizer = json.parse().expect("tokenizer JSON");
        TextTokenizer::new(inner, Some(0), Vec::new())
    }

    #[test]
    fn a_post_processor_that_puts_bos_first_is_seen() {
        let template = r#"{"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]}}}"#;
        assert!(tokenizer(template).post_processor_adds_bos());
        assert!(!tokenizer("null").post_processor_adds_bos());
    }
}
