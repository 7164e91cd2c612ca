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
}

fn tok_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

impl TextTokenizer {
    /// Wraps a tokenizer; `eos` lists every id that ends generation.
    pub fn new(inner: tokenizers::Tokenizer, bos: Option<u32>, mut eos: Vec<u32>) -> Self {
        eos.sort_unstable();
        eos.dedup();
        Self {
            inner,
            bos,
            eos,
            add_bos: false,
            spm: None,
        }
    }

    /// Builds the tokenizer from GGUF metadata, with its bos/eos/eot ids.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let (inner, spm) = super::gguf_tokenizer::gguf_tokenizer_parts(gguf)?;
        let id = |k: &str| gguf.integer(k).map(|v| v as u32);
        let eos = ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"]
            .iter()
            .filter_map(|k| id(k))
            .collect();
        let mut tokenizer = Self::new(inner, id("tokenizer.ggml.bos_token_id"), eos);
        // llama.cpp's default: SentencePiece vocabularies start sequences with BOS.
        tokenizer.add_bos = gguf
            .boolean("tokenizer.ggml.add_bos_token")
            .unwrap_or(spm.is_some());
        tokenizer.spm = spm.map(Arc::new);
        Ok(tokenizer)
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
