//! Thinking ("reasoning") output: how each model family thinks, and splitting the output stream into
//! reasoning and answer deltas.
//!
//! Models with native thinking tokens (Qwen3: `<think>` / `</think>` in the vocabulary, a template
//! that reads `enable_thinking`) are switched by the template flag. Models without them get a
//! reasoning instruction and an opened `<think>` block in the assistant turn, and follow the same
//! `<think>…</think>` convention. Either way the markers never reach the caller: the splitter
//! removes them, so forcing the end marker at the budget cannot leak a literal `</think>` into the
//! answer.

use switchyard_models::text::{ChatMessage, ChatTemplate, TextTokenizer};

use crate::request::DeltaKind;

/// Start of the thinking section.
pub const THINK_START: &str = "<think>";
/// End of the thinking section.
pub const THINK_END: &str = "</think>";

/// Whether a generated token adds no text to the output: an end of sequence generated past
/// (`ignore_eos`), or a special token (a chat marker, a GGUF control token), as vLLM's
/// `skip_special_tokens` leaves them out. The markers the output is parsed by (`<think>`,
/// `</think>`, `<tool_call>`, `</tool_call>`) keep their text even where a tokenizer calls them
/// special: the thinking split and a budget's forced end read it.
pub fn silent_token(tokenizer: &TextTokenizer, id: u32) -> bool {
    if tokenizer.eos().contains(&id) {
        return true;
    }
    tokenizer.is_special(id)
        && !tokenizer.token(id).is_some_and(|t| {
            [
                THINK_START,
                THINK_END,
                crate::tools::TOOL_CALL_START,
                crate::tools::TOOL_CALL_END,
            ]
            .contains(&t.as_str())
        })
}

/// System instruction given to models with no native thinking mode.
pub const REASONING_INSTRUCTION: &str =
    "Think step by step inside <think> and </think> before you answer. \
Write your reasoning there, then close it with </think> and give the final answer.";

/// How a model family is put into (and out of) thinking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThinkingStyle {
    /// The chat template reads `enable_thinking` (Qwen3).
    TemplateFlag,
    /// The template itself opens `<think>` in the assistant turn (DeepSeek-R1 distills): the model
    /// always thinks, and turning thinking off closes the opened block at once, as Qwen3's template
    /// does with `enable_thinking=false`.
    TemplateOpens,
    /// No native mode: a reasoning instruction plus a `<think>` opened in the assistant turn.
    Prompted,
}

impl ThinkingStyle {
    /// Picks the style from the chat template's source.
    pub fn detect(template_source: Option<&str>) -> Self {
        match template_source {
            Some(src) if src.contains("enable_thinking") => Self::TemplateFlag,
            _ => Self::Prompted,
        }
    }

    /// Picks the style of a chat template: [`detect`](Self::detect) on its source, then whether
    /// its generation prompt for one user turn already ends in an opened `<think>`.
    pub fn of_template(template: Option<&ChatTemplate>) -> Self {
        let style = Self::detect(template.map(ChatTemplate::source));
        let opens = |t: &ChatTemplate| {
            t.render(&[ChatMessage::new("user", "Hello")], true, None)
                .is_ok_and(|text| text.trim_end().ends_with(THINK_START))
        };
        match template {
            Some(t) if style == Self::Prompted && opens(t) => Self::TemplateOpens,
            _ => style,
        }
    }
}

/// Where the splitter is in the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    /// Before any text: a leading `<think>` opens thinking, anything else is the answer.
    Start,
    /// Inside the thinking section.
    Thinking,
    /// In the answer.
    Answer,
    /// Raw text (text completions): everything is answer, exactly as generated, `<think>` and
    /// `</think>` included; nothing is held back or trimmed.
    Raw,
}

/// Splits generated text into reasoning and answer deltas, removing the markers.
#[derive(Debug)]
pub struct ThinkingSplitter {
    section: Section,
    pending: String,
    /// Whether answer text has been emitted (leading blank lines of the answer are dropped).
    answer_started: bool,
}

impl ThinkingSplitter {
    /// A splitter starting in `section` (`Thinking` when the prompt already opened `<think>`).
    pub fn new(section: Section) -> Self {
        Self {
            section,
            pending: String::new(),
            answer_started: false,
        }
    }

    /// The section the next token will be in.
    pub fn section(&self) -> Section {
        self.section
    }

    /// Whether the output is inside the thinking section (or may be about to enter it).
    pub fn in_thinking(&self) -> bool {
        self.section == Section::Thinking
    }

    /// Feeds new text; returns the deltas it resolves, in order.
    pub fn push(&mut self, text: &str) -> Vec<(DeltaKind, String)> {
        self.pending.push_str(text);
        let mut out = Vec::new();
        loop {
            match self.section {
                Section::Raw => {
                    push_delta(
                        &mut out,
                        DeltaKind::Content,
                        std::mem::take(&mut self.pending),
                    );
                    return out;
                }
                Section::Start => {
                    let trimmed = self.pending.trim_start();
                    if trimmed.starts_with(THINK_START) {
                        let skip = self.pending.len() - trimmed.len() + THINK_START.len();
                        self.pending.drain(..skip);
                        self.section = Section::Thinking;
                    } else if THINK_START.starts_with(trimmed) {
                        return out; // could still become `<think>`
                    } else {
                        self.section = Section::Answer;
                    }
                }
                Section::Thinking => match self.pending.find(THINK_END) {
                    Some(at) => {
                        let before: String = self.pending.drain(..at).collect();
                        self.pending.drain(..THINK_END.len());
                        push_delta(&mut out, DeltaKind::Reasoning, before);
                        self.section = Section::Answer;
                    }
                    None => {
                        let keep = partial_suffix(&self.pending, THINK_END);
                        let emit: String =
                            self.pending.drain(..self.pending.len() - keep).collect();
                        push_delta(&mut out, DeltaKind::Reasoning, emit);
                        return out;
                    }
                },
                Section::Answer => {
                    // A model may repeat the end marker in its answer: never pass it on.
                    while let Some(at) = self.pending.find(THINK_END) {
                        self.pending.replace_range(at..at + THINK_END.len(), "");
                    }
                    if !self.answer_started {
                        let trimmed = self.pending.trim_start().len();
                        self.pending.drain(..self.pending.len() - trimmed);
                    }
                    let keep = partial_suffix(&self.pending, THINK_END);
                    let emit: String = self.pending.drain(..self.pending.len() - keep).collect();
                    self.answer_started |= !emit.is_empty();
                    push_delta(&mut out, DeltaKind::Content, emit);
                    return out;
                }
            }
        }
    }

    /// Flushes text held back at the end of generation.
    pub fn finish(&mut self) -> Vec<(DeltaKind, String)> {
        let rest = std::mem::take(&mut self.pending);
        let kind = match self.section {
            Section::Thinking => DeltaKind::Reasoning,
            _ => DeltaKind::Content,
        };
        let mut out = Vec::new();
        push_delta(&mut out, kind, rest);
        out
    }
}

fn push_delta(out: &mut Vec<(DeltaKind, String)>, kind: DeltaKind, text: String) {
    if !text.is_empty() {
        out.push((kind, text));
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `marker`.
pub fn partial_suffix(text: &str, marker: &str) -> usize {
    (1..marker.len().min(text.len() + 1))
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n) && marker.starts_with(&text[text.len() - n..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(section: Section, pieces: &[&str]) -> (String, String) {
        let mut s = ThinkingSplitter::new(section);
        let mut deltas = Vec::new();
        for p in pieces {
            deltas.extend(s.push(p));
        }
        deltas.extend(s.finish());
        let join = |k| {
            deltas
                .iter()
                .filter(|(kind, _)| *kind == k)
                .map(|(_, t)| t.as_str())
                .collect::<String>()
        };
        (join(DeltaKind::Reasoning), join(DeltaKind::Content))
    }

    #[test]
    fn markers_split_across_pieces_are_removed() {
        let (r, c) = run(
            Section::Start,
            &["<th", "ink>", "2+2 is 4", "</", "thi", "nk>\n\n", "Four."],
        );
        assert_eq!(r, "2+2 is 4");
        assert_eq!(c, "Four.");
    }

    #[test]
    fn prompt_opened_thinking_starts_in_reasoning() {
        let (r, c) = run(Section::Thinking, &["step one", "\n</think>", "\n\nanswer"]);
        assert_eq!(r, "step one\n");
        assert_eq!(c, "answer");
    }

    #[test]
    fn raw_text_passes_markers_and_whitespace_through() {
        let pieces = ["\n <th", "ink>a</think>", "\n\nb"];
        let mut s = ThinkingSplitter::new(Section::Raw);
        let deltas: Vec<_> = pieces.iter().flat_map(|p| s.push(p)).collect();
        assert!(deltas.iter().all(|(k, _)| *k == DeltaKind::Content));
        assert_eq!(deltas.len(), 3, "nothing held back: {deltas:?}");
        let text: String = deltas.into_iter().map(|(_, t)| t).collect();
        assert_eq!(text, pieces.concat());
        assert!(!s.in_thinking());
        assert!(s.finish().is_empty());
    }

    #[test]
    fn text_without_markers_is_all_answer() {
        let (r, c) = run(Section::Start, &["Hello", " <thin", "gs>"]);
        assert_eq!(r, "");
        assert_eq!(c, "Hello <things>");
    }

    #[test]
    fn blank_lines_after_thinking_and_repeated_end_markers_are_dropped() {
        let (r, c) = run(
            Section::Thinking,
            &[
                "why", "</think>", "\n", "\n", "Because", " </th", "ink>", " so.",
            ],
        );
        assert_eq!(r, "why");
        assert_eq!(c, "Because  so.");
    }

    #[test]
    fn unfinished_thinking_is_flushed_as_reasoning() {
        let (r, c) = run(Section::Thinking, &["still thinking </thi"]);
        assert_eq!(r, "still thinking </thi");
        assert_eq!(c, "");
    }

    #[test]
    fn style_follows_the_template() {
        assert_eq!(
            ThinkingStyle::detect(Some("{% if enable_thinking %}")),
            ThinkingStyle::TemplateFlag
        );
        assert_eq!(
            ThinkingStyle::detect(Some("{{ messages }}")),
            ThinkingStyle::Prompted
        );
        assert_eq!(ThinkingStyle::detect(None), ThinkingStyle::Prompted);
    }

    #[test]
    fn a_template_that_opens_think_itself_is_told_apart() {
        let r1 = ChatTemplate::new(
            "{% for m in messages %}<U>{{ m.content }}{% endfor %}\
             {% if add_generation_prompt %}<A><think>\n{% endif %}",
            "",
            "",
        )
        .unwrap();
        assert_eq!(
            ThinkingStyle::of_template(Some(&r1)),
            ThinkingStyle::TemplateOpens
        );
        let plain = ChatTemplate::new(
            "{% for m in messages %}<U>{{ m.content }}{% endfor %}<A>",
            "",
            "",
        )
        .unwrap();
        assert_eq!(
            ThinkingStyle::of_template(Some(&plain)),
            ThinkingStyle::Prompted
        );
        assert_eq!(ThinkingStyle::of_template(None), ThinkingStyle::Prompted);
    }
}
