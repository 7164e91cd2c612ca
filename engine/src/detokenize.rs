//! Incremental detokenization: text deltas from a growing list of token ids.
//!
//! Byte-level BPE tokens can split a UTF-8 character, and decoding a token alone can differ from
//! decoding it in context, so each step decodes a short window of recent tokens and emits only what
//! the new token added, holding back text that ends in an incomplete character (the prefix/read
//! offset scheme of text-generation-inference). Text held back longer than any character can be
//! (bytes that never form one) is let go, so the window, and the cost of a step, stays bounded.

use switchyard_models::text::TextTokenizer;

/// Prompt tokens the first generated tokens are decoded after ([`Detokenizer::after`]), as vLLM
/// does: enough context for a decoder that treats a sequence's first piece differently.
const CONTEXT_TOKENS: usize = 5;

/// Tokens held back before the text is let go as it stands when it holds bytes that never form a
/// character (a character has at most four bytes).
const MOST_HELD: usize = 8;

/// Tokens held back before the text is let go whatever it holds: a long run of tokens that each
/// end inside a character (whole characters, split unluckily) is held this long at most, so the
/// window, and the cost of a step, stays bounded.
const MOST_HELD_EVER: usize = 64;

/// Tokens that can hold the start of a character still unfinished (its first three bytes at most).
const UNFINISHED_TAIL: usize = 3;

/// Decodes generated tokens into text deltas.
#[derive(Debug, Default)]
pub struct Detokenizer {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl Detokenizer {
    /// A detokenizer for the tokens that follow `prompt`: they are decoded after its last tokens,
    /// so the first one reads as it does in the whole text (`▁Paris` after a prompt is " Paris";
    /// decoded alone, a SentencePiece decoder strips that space, and a text completion would glue
    /// its answer to the prompt). Context that ends inside a character is left out: the text
    /// after it could not extend it.
    pub fn after(tokenizer: &TextTokenizer, prompt: &[u32]) -> Self {
        let context = &prompt[prompt.len().saturating_sub(CONTEXT_TOKENS)..];
        let whole = tokenizer
            .decode(context)
            .is_ok_and(|t| !t.ends_with('\u{FFFD}'));
        let context = if whole { context } else { &[] };
        Self {
            prefix_offset: 0,
            read_offset: context.len(),
            ids: context.to_vec(),
        }
    }

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
        } else if self.ids.len() - self.read_offset > MOST_HELD {
            self.let_go(
                tokenizer,
                &prefix,
                self.ids.len() - self.read_offset > MOST_HELD_EVER,
            )
        } else {
            Ok(String::new())
        }
    }

    /// The text of the tokens held back but the last [`UNFINISHED_TAIL`], which might still begin
    /// a character: up to the last cut whose text ends in a whole character, or, if there is none,
    /// all of it as it stands (invalid bytes as U+FFFD) when it holds bytes that never form a
    /// character, or when `forced`; otherwise (whole characters split across every cut) nothing
    /// yet.
    fn let_go(
        &mut self,
        tokenizer: &TextTokenizer,
        prefix: &str,
        forced: bool,
    ) -> switchyard_models::Result<String> {
        let last = self.ids.len() - UNFINISHED_TAIL;
        let mut cut = (last, None);
        for end in (self.read_offset + 1..=last).rev() {
            let text = tokenizer.decode(&self.ids[self.prefix_offset..end])?;
            if text.len() > prefix.len() && !text.ends_with('\u{FFFD}') && text.starts_with(prefix)
            {
                cut = (end, Some(text));
                break;
            }
        }
        let (end, text) = match cut {
            (end, Some(text)) => (end, text),
            (end, None) => {
                let text = tokenizer.decode(&self.ids[self.prefix_offset..end])?;
                // One unfinished character at the end is no sign of garbage; another U+FFFD is.
                let held = text.strip_suffix('\u{FFFD}').unwrap_or(&text);
                if !forced && !held.contains('\u{FFFD}') {
                    return Ok(String::new());
                }
                (end, text)
            }
        };
        let delta = match text.strip_prefix(prefix) {
            Some(delta) => delta.to_string(),
            None => tokenizer.decode(&self.ids[self.read_offset..end])?,
        };
        self.prefix_offset = self.read_offset;
        self.read_offset = end;
        Ok(delta)
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
            "model": {"type": "BPE", "vocab": {"a": 0, "Ã": 1, "©": 2, "aÃ": 3, "b": 4, "©Ã": 5},
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
    fn bytes_that_never_form_a_character_are_let_go_as_they_come() {
        // "b", then lone C3 bytes, each made invalid by the next: nothing would ever finish them.
        let ids: Vec<u32> = std::iter::once(4)
            .chain(std::iter::repeat_n(1, 40))
            .collect();
        let (pushed, flushed) = stream(&ids);
        // Let go during the stream (the window stays short), not all held to the end...
        assert!(pushed.chars().count() > 30, "{pushed:?}");
        assert!(flushed.chars().count() <= MOST_HELD, "{flushed:?}");
        // ...and all of it, as the whole decodes.
        assert_eq!(pushed + &flushed, tokenizer().decode(&ids).unwrap());
        // A character split over tokens after the garbage is still whole.
        let mut ids = ids;
        ids.extend([3, 2, 4]);
        let (pushed, flushed) = stream(&ids);
        let all = pushed + &flushed;
        assert!(all.ends_with("aéb"), "{all:?}");
        assert_eq!(all, tokenizer().decode(&ids).unwrap());
    }

    #[test]
    fn text_after_a_prompt_is_decoded_in_its_context_unless_it_ends_inside_a_character() {
        let tok = tokenizer();
        let text = |mut d: Detokenizer, ids: &[u32]| {
            let mut out = String::new();
            for &id in ids {
                out += &d.push(&tok, id).unwrap();
            }
            out + &d.flush(&tok).unwrap()
        };
        // After "b": the continuation's text is what the whole adds to the prompt's.
        assert_eq!(text(Detokenizer::after(&tok, &[4]), &[3, 2]), "aé");
        // After "aÃ" (a character begun): that context is left out, and the continuation is
        // decoded as it stands, at once.
        let d = Detokenizer::after(&tok, &[4, 3]);
        assert_eq!(d.ids, [4u32; 0]);
        assert_eq!(text(d, &[4]), "b");
    }

    #[test]
    fn whole_characters_split_across_every_token_are_not_let_go_broken() {
        // "é" twenty times as C3, then (A9 C3) nineteen times, then A9: every token ends inside
        // a character, yet the text is whole.
        let ids: Vec<u32> = std::iter::once(1)
            .chain(std::iter::repeat_n(5, 19))
            .chain(std::iter::once(2))
            .collect();
        let (pushed, flushed) = stream(&ids);
        assert_eq!(pushed + &flushed, "é".repeat(20));
        // Past the hard bound the text goes as it stands, broken or not: the cost stays bounded.
        let ids: Vec<u32> = std::iter::once(1)
            .chain(std::iter::repeat_n(5, 2 * MOST_HELD_EVER))
            .collect();
        let (pushed, _) = stream(&ids);
        assert!(!pushed.is_empty());
    }

    #[test]
    fn text_held_back_at_the_end_is_flushed_not_lost() {
        // "a" + a lone C3 byte: the delta waits for the character's second byte, which never comes.
        assert_eq!(stream(&[4, 3]), ("b".to_string(), "a\u{FFFD}".to_string()));
        assert_eq!(stream(&[4]), ("b".to_string(), String::new()));
    }
}
