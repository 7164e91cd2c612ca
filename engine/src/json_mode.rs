//! JSON mode (OpenAI `response_format: {"type": "json_object"}`): the answer is one JSON object.
//!
//! [`JsonState`] is a character-level recognizer of JSON text prefixes (RFC 8259: objects, arrays,
//! strings with escapes, numbers, `true` / `false` / `null`), with the top-level value an object.
//! It is `Copy` (the container stack is a bit per level), so checking a candidate token is a copy
//! and a few steps, with no allocation: before each sampled answer token, [`JsonMode::mask`] sets
//! the logit of every token whose text cannot continue the answer to −∞, and allows the
//! end-of-sequence ids only once the object is complete (and nothing else after it). Two limits
//! keep a small model from wandering: at most [`MAX_DEPTH`] nested containers, and at most
//! [`MAX_WHITESPACE_RUN`] whitespace characters in a row between tokens.

use std::sync::Arc;

/// Most containers open at once.
pub const MAX_DEPTH: u8 = 64;
/// Most whitespace characters in a row outside strings (enough for indentation).
pub const MAX_WHITESPACE_RUN: u8 = 16;

/// Where the recognizer is inside the grammar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Nothing yet: only `{` (after optional whitespace).
    Start,
    /// A value is expected (after `:` or `,` in an array).
    Value,
    /// Just after `[`: a value or `]`.
    ArrayFirst,
    /// Just after `{`: a key or `}`.
    ObjectFirst,
    /// After `,` in an object: a key.
    Key,
    /// After a key: `:`.
    Colon,
    /// After a value inside a container: `,` or the closing bracket.
    AfterValue,
    /// Inside a string (`key`: an object key, followed by `:`).
    Str { key: bool },
    /// After a backslash in a string.
    Escape { key: bool },
    /// Inside `\uXXXX`, with this many hex digits to go.
    Unicode { key: bool, left: u8 },
    /// Inside a number.
    Number(Num),
    /// Inside `true` / `false` / `null`: the literal and how many characters are matched.
    Literal { word: u8, at: u8 },
    /// The top-level object is closed.
    Done,
}

/// Number sub-states: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Num {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    Exp,
    ExpSign,
    ExpDigits,
}

impl Num {
    /// Whether a number may end here.
    fn complete(self) -> bool {
        matches!(self, Num::Zero | Num::Int | Num::Frac | Num::ExpDigits)
    }
}

const LITERALS: [&[u8]; 3] = [b"true", b"false", b"null"];

/// A JSON prefix recognizer (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JsonState {
    mode: Mode,
    /// Bit `i` set: container `i` (from the outside) is an array, else an object.
    arrays: u64,
    depth: u8,
    whitespace_run: u8,
}

impl Default for JsonState {
    fn default() -> Self {
        Self::new()
    }
}

impl JsonState {
    /// Before the first character.
    pub fn new() -> Self {
        Self {
            mode: Mode::Start,
            arrays: 0,
            depth: 0,
            whitespace_run: 0,
        }
    }

    /// Whether the text so far is one complete JSON object.
    pub fn complete(&self) -> bool {
        self.mode == Mode::Done
    }

    /// Feeds `text`; `false` (and the state unusable) if it cannot continue a JSON object.
    pub fn feed(&mut self, text: &str) -> bool {
        text.chars().all(|c| self.step(c))
    }

    /// Feeds one character; `false` if it cannot come next.
    pub fn step(&mut self, c: char) -> bool {
        match self.mode {
            Mode::Str { key } => {
                match c {
                    '"' => self.mode = if key { Mode::Colon } else { self.after_value() },
                    '\\' => self.mode = Mode::Escape { key },
                    c if (c as u32) < 0x20 => return false,
                    _ => {}
                }
                return true;
            }
            Mode::Escape { key } => {
                self.mode = match c {
                    '"' | '\\' | '/' | 'b' | 'f' | 'n' | 'r' | 't' => Mode::Str { key },
                    'u' => Mode::Unicode { key, left: 4 },
                    _ => return false,
                };
                return true;
            }
            Mode::Unicode { key, left } => {
                if !c.is_ascii_hexdigit() {
                    return false;
                }
                self.mode = if left == 1 {
                    Mode::Str { key }
                } else {
                    Mode::Unicode {
                        key,
                        left: left - 1,
                    }
                };
                return true;
            }
            Mode::Literal { word, at } => {
                let w = LITERALS[word as usize];
                if c as u32 != u32::from(w[at as usize]) {
                    return false;
                }
                self.mode = if at as usize + 1 == w.len() {
                    self.after_value()
                } else {
                    Mode::Literal { word, at: at + 1 }
                };
                return true;
            }
            Mode::Number(n) => {
                if let Some(next) = number_step(n, c) {
                    self.mode = Mode::Number(next);
                    return true;
                }
                if !n.complete() {
                    return false;
                }
                // The number ended; the character belongs to what follows it.
                self.mode = self.after_value();
            }
            _ => {}
        }
        if matches!(c, ' ' | '\t' | '\n' | '\r') {
            self.whitespace_run += 1;
            return self.whitespace_run <= MAX_WHITESPACE_RUN;
        }
        self.whitespace_run = 0;
        match (self.mode, c) {
            (Mode::Start, '{') => self.open(false),
            (Mode::Value | Mode::ArrayFirst, _) => {
                if self.mode == Mode::ArrayFirst && c == ']' {
                    return self.close(true);
                }
                self.value(c)
            }
            (Mode::ObjectFirst, '}') => self.close(false),
            (Mode::ObjectFirst | Mode::Key, '"') => {
                self.mode = Mode::Str { key: true };
                true
            }
            (Mode::Colon, ':') => {
                self.mode = Mode::Value;
                true
            }
            (Mode::AfterValue, ',') => {
                self.mode = if self.in_array() {
                    Mode::Value
                } else {
                    Mode::Key
                };
                true
            }
            (Mode::AfterValue, ']') if self.in_array() => self.close(true),
            (Mode::AfterValue, '}') if !self.in_array() => self.close(false),
            _ => false,
        }
    }

    /// The first character of a value.
    fn value(&mut self, c: char) -> bool {
        match c {
            '{' => self.open(false),
            '[' => self.open(true),
            '"' => {
                self.mode = Mode::Str { key: false };
                true
            }
            '-' => {
                self.mode = Mode::Number(Num::Minus);
                true
            }
            '0' => {
                self.mode = Mode::Number(Num::Zero);
                true
            }
            '1'..='9' => {
                self.mode = Mode::Number(Num::Int);
                true
            }
            't' | 'f' | 'n' => {
                let word = match c {
                    't' => 0,
                    'f' => 1,
                    _ => 2,
                };
                self.mode = Mode::Literal { word, at: 1 };
                true
            }
            _ => false,
        }
    }

    fn in_array(&self) -> bool {
        self.depth > 0 && self.arrays & (1 << (self.depth - 1)) != 0
    }

    fn open(&mut self, array: bool) -> bool {
        if self.depth >= MAX_DEPTH {
            return false;
        }
        if array {
            self.arrays |= 1 << self.depth;
        } else {
            self.arrays &= !(1 << self.depth);
        }
        self.depth += 1;
        self.mode = if array {
            Mode::ArrayFirst
        } else {
            Mode::ObjectFirst
        };
        true
    }

    fn close(&mut self, array: bool) -> bool {
        if self.depth == 0 || self.in_array() != array {
            return false;
        }
        self.depth -= 1;
        self.mode = self.after_value();
        true
    }

    /// The mode after a complete value at the current depth.
    fn after_value(&self) -> Mode {
        if self.depth == 0 {
            Mode::Done
        } else {
            Mode::AfterValue
        }
    }
}

/// The number sub-state after `c`, or `None` if `c` does not extend the number.
fn number_step(n: Num, c: char) -> Option<Num> {
    Some(match (n, c) {
        (Num::Minus, '0') => Num::Zero,
        (Num::Minus, '1'..='9') => Num::Int,
        (Num::Int, '0'..='9') => Num::Int,
        (Num::Zero | Num::Int, '.') => Num::Dot,
        (Num::Dot | Num::Frac, '0'..='9') => Num::Frac,
        (Num::Zero | Num::Int | Num::Frac, 'e' | 'E') => Num::Exp,
        (Num::Exp, '+' | '-') => Num::ExpSign,
        (Num::Exp | Num::ExpSign | Num::ExpDigits, '0'..='9') => Num::ExpDigits,
        _ => return None,
    })
}

/// The text each token id adds to an answer, indexed for checking tokens against a [`JsonState`].
#[derive(Debug)]
pub struct TokenTexts {
    kinds: Vec<TokenText>,
    /// Token ids by the first character of their text (texts only), so a state outside a string
    /// rejects a whole bucket with one step.
    by_first: Vec<(char, Vec<u32>)>,
}

/// What a token may do to a JSON answer.
#[derive(Debug)]
enum TokenText {
    /// Text; `plain`: it has no `"`, `\` or control character, so inside a string it is just more
    /// of the string.
    Text { text: Box<str>, plain: bool },
    /// Part of a multi-byte character (byte-fallback pieces): fine inside a string, nowhere else.
    PartialChar,
    /// No text (special tokens).
    Nothing,
}

impl TokenTexts {
    /// Every token's text: decoded after a fixed anchor token and cut after the anchor's text, so
    /// that decoders that drop a leading space of the first token (SentencePiece) keep it.
    pub fn new(tokenizer: &switchyard_models::text::TextTokenizer) -> Arc<TokenTexts> {
        let anchor = tokenizer
            .encode("a")
            .ok()
            .and_then(|ids| ids.last().copied());
        let anchor_text = anchor
            .and_then(|a| tokenizer.decode(&[a]).ok())
            .unwrap_or_default();
        let texts = (0..tokenizer.vocab_size() as u32).map(|id| {
            match anchor {
                Some(a) => tokenizer
                    .decode(&[a, id])
                    .ok()
                    .and_then(|t| t.strip_prefix(anchor_text.as_str()).map(str::to_string)),
                None => tokenizer.decode(&[id]).ok(),
            }
            .filter(|t| !t.is_empty())
        });
        Arc::new(Self::from_texts(texts))
    }

    fn from_texts(texts: impl Iterator<Item = Option<String>>) -> TokenTexts {
        let mut by_first = std::collections::BTreeMap::<char, Vec<u32>>::new();
        let kinds = texts
            .enumerate()
            .map(|(id, text)| match text {
                None => TokenText::Nothing,
                Some(t) if t.contains('\u{FFFD}') => TokenText::PartialChar,
                Some(t) => {
                    let first = t.chars().next().expect("texts are not empty");
                    by_first.entry(first).or_default().push(id as u32);
                    let plain = !t
                        .chars()
                        .any(|c| c == '"' || c == '\\' || (c as u32) < 0x20);
                    TokenText::Text {
                        text: t.into_boxed_str(),
                        plain,
                    }
                }
            })
            .collect();
        TokenTexts {
            kinds,
            by_first: by_first.into_iter().collect(),
        }
    }
}

/// A sequence's JSON mode: the answer so far and the vocabulary's texts.
#[derive(Debug)]
pub struct JsonMode {
    state: JsonState,
    texts: Arc<TokenTexts>,
    /// Which tokens [`mask`](Self::mask) allows, kept between steps so it allocates once.
    allowed: Vec<bool>,
}

impl JsonMode {
    /// JSON mode from the first answer token on.
    pub fn new(texts: Arc<TokenTexts>) -> Self {
        Self {
            state: JsonState::new(),
            texts,
            allowed: Vec::new(),
        }
    }

    /// Whether the answer is a complete JSON object.
    pub fn complete(&self) -> bool {
        self.state.complete()
    }

    /// Sets the logits of tokens that cannot come next to −∞; `end_ids` (end of sequence) are
    /// allowed exactly when the object is complete. Returns whether any token is left.
    pub fn mask(&mut self, logits: &mut [f32], end_ids: &[u32]) -> bool {
        let mut allowed = std::mem::take(&mut self.allowed);
        allowed.clear();
        allowed.resize(logits.len(), false);
        if !self.state.complete() {
            self.allow_continuations(&mut allowed);
        }
        for &id in end_ids {
            if let Some(a) = allowed.get_mut(id as usize) {
                *a = self.state.complete();
            }
        }
        let mut any = false;
        for (logit, &ok) in logits.iter_mut().zip(&allowed) {
            if ok {
                any |= logit.is_finite();
            } else {
                *logit = f32::NEG_INFINITY;
            }
        }
        self.allowed = allowed;
        any
    }

    /// Marks the tokens whose text continues the answer.
    fn allow_continuations(&self, allowed: &mut [bool]) {
        let kinds = &self.texts.kinds;
        let feeds = |text: &str| {
            let mut s = self.state;
            s.feed(text)
        };
        if matches!(self.state.mode, Mode::Str { .. }) {
            for (a, kind) in allowed.iter_mut().zip(kinds) {
                *a = match kind {
                    TokenText::Text { plain: true, .. } | TokenText::PartialChar => true,
                    TokenText::Text { text, .. } => feeds(text),
                    TokenText::Nothing => false,
                };
            }
            return;
        }
        for (first, ids) in &self.texts.by_first {
            let mut after_first = self.state;
            if !after_first.step(*first) {
                continue;
            }
            for &id in ids {
                let Some(TokenText::Text { text, .. }) = kinds.get(id as usize) else {
                    continue;
                };
                let mut s = after_first;
                if let Some(a) = allowed.get_mut(id as usize) {
                    *a = s.feed(&text[first.len_utf8()..]);
                }
            }
        }
    }

    /// Records a token of the answer (one that [`mask`](Self::mask) allowed).
    pub fn push(&mut self, id: u32) {
        if let Some(TokenText::Text { text, .. }) = self.texts.kinds.get(id as usize) {
            let mut s = self.state;
            if s.feed(text) {
                self.state = s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepts(text: &str) -> bool {
        let mut s = JsonState::new();
        s.feed(text)
    }

    fn complete(text: &str) -> bool {
        let mut s = JsonState::new();
        s.feed(text) && s.complete()
    }

    #[test]
    fn whole_objects_are_complete() {
        for text in [
            "{}",
            r#"{"a": 1}"#,
            r#" { "a" : [1, -2.5e+3, 0, 0.25, true, false, null, "x\"\\\u00e9"], "b": {"c": []} } "#,
            "{\"nested\": [[[{}]]], \"s\": \"caf\u{e9} \u{1f600}\"}",
            "{\n  \"k\": \"v\"\n}",
        ] {
            assert!(complete(text), "{text}");
        }
    }

    #[test]
    fn prefixes_are_accepted_but_not_complete() {
        let text = r#"{"a": [1, {"b": "c"}], "d": -0.5e10}"#;
        for end in 0..text.len() {
            let prefix = &text[..end];
            assert!(accepts(prefix), "{prefix}");
            assert!(!complete(prefix), "{prefix}");
        }
        assert!(complete(text));
    }

    #[test]
    fn what_json_forbids_is_refused() {
        for text in [
            "[1]",                      // the top level must be an object
            "\"s\"",                    // ... not a string
            "{a: 1}",                   // keys are strings
            "{\"a\" 1}",                // the colon
            "{\"a\": 01}",              // leading zero
            "{\"a\": 1.}",              // a fraction needs digits
            "{\"a\": tru }",            // literals whole
            "{\"a\": 1,}",              // trailing comma
            "{\"a\": [1 2]}",           // commas between values
            "{\"a\": \"\\x\"}",         // escapes
            "{\"a\": \"\\u12G4\"}",     // \u needs four hex digits
            "{\"a\": \"line\nbreak\"}", // raw control characters in strings
            "{\"a\": 1]",               // brackets match
            "{} {}",                    // one value
            "{}x",
        ] {
            assert!(!accepts(text), "{text}");
        }
    }

    #[test]
    fn whitespace_runs_and_depth_are_bounded() {
        let spaces = " ".repeat(MAX_WHITESPACE_RUN as usize);
        assert!(accepts(&format!("{{{spaces}\"a\":{spaces}1")));
        assert!(!accepts(&format!("{{{spaces} \"a\"")));
        let deep = format!("{{\"a\":{}", "[".repeat(MAX_DEPTH as usize - 1));
        assert!(accepts(&deep));
        assert!(!accepts(&format!("{deep}[")));
    }

    #[test]
    fn a_number_ends_at_the_character_after_it() {
        let mut s = JsonState::new();
        assert!(s.feed("{\"a\": 12"));
        assert!(!s.complete());
        assert!(s.feed("}"));
        assert!(s.complete());
    }

    fn mode_over(vocab: &[&str]) -> JsonMode {
        let texts = vocab.iter().map(|t| (!t.is_empty()).then(|| t.to_string()));
        JsonMode::new(Arc::new(TokenTexts::from_texts(texts)))
    }

    #[test]
    fn the_indexed_mask_agrees_with_feeding_every_token() {
        // Every one- and two-character text over JSON's interesting characters.
        let chars: Vec<char> = "{}[]\":,\\ \n0123456789.-+eEtrufalsnx\u{e9}"
            .chars()
            .collect();
        let mut vocab: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
        for a in &chars {
            for b in &chars {
                vocab.push(format!("{a}{b}"));
            }
        }
        let texts = Arc::new(TokenTexts::from_texts(vocab.iter().cloned().map(Some)));
        for prefix in [
            "",
            "{",
            "{\"a",
            "{\"a\\",
            "{\"a\": ",
            "{\"a\": 1",
            "{\"a\": [",
            "{\"a\": [1, tr",
            "{\"a\": 1e",
        ] {
            let mut mode = JsonMode::new(texts.clone());
            let mut state = JsonState::new();
            assert!(state.feed(prefix), "{prefix}");
            mode.state = state;
            let mut logits = vec![0.0f32; vocab.len()];
            mode.mask(&mut logits, &[]);
            for (text, logit) in vocab.iter().zip(&logits) {
                let mut s = state;
                assert_eq!(logit.is_finite(), s.feed(text), "{prefix:?} + {text:?}");
            }
        }
    }

    #[test]
    fn masking_allows_exactly_the_tokens_that_continue_the_object() {
        // 0 is the end of sequence; 6 a byte piece of a multi-byte character.
        let vocab = ["", "{", "\"", "a", "}", " ", "\u{FFFD}", "{\"", "1", ":"];
        let mut mode = mode_over(&vocab);
        let allowed = |mode: &mut JsonMode| {
            let mut logits = vec![0.0f32; vocab.len()];
            assert!(mode.mask(&mut logits, &[0]));
            (0..vocab.len())
                .filter(|&i| logits[i].is_finite())
                .collect::<Vec<_>>()
        };
        assert_eq!(allowed(&mut mode), vec![1, 5, 7]);
        for id in [7, 3] {
            mode.push(id);
        }
        // Inside the key: any text without a raw control character, and byte pieces.
        assert_eq!(allowed(&mut mode), vec![1, 2, 3, 4, 5, 6, 7, 8, 9]);
        for id in [2, 9, 8] {
            mode.push(id);
        }
        assert_eq!(allowed(&mut mode), vec![4, 5, 8]);
        mode.push(4);
        assert!(mode.complete());
        // Complete: only the end of sequence.
        assert_eq!(allowed(&mut mode), vec![0]);
    }
}
