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
}
