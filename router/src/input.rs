//! What the classifiers read from a chat request, and how decisions are applied back to it.
//!
//! The router classifies the last user turns (newest last, joined by a blank line, at most
//! [`MAX_USER_TURNS`] of them and about [`MAX_INPUT_CHARS`] characters; the newest turn is always kept
//! whole here, the tokenizer cuts it down to head + tail). The jailbreak and PII signals also read
//! what that leaves out, in guard windows ([`RouteInput::push_window`]) appended to the text after
//! the routed part. [`RouteInput`] remembers where each turn and window sits in the text, so PII
//! spans found in it can be masked in the original messages.

use serde::Serialize;
use switchyard_models::text::ChatMessage;

use crate::config::{normalize_entity_type, SystemPrompt, SystemPromptMode};
use crate::signals::PiiEntity;

/// At most this many user turns are classified together.
pub const MAX_USER_TURNS: usize = 3;
/// Older turns are only added while the text stays under this many characters.
pub const MAX_INPUT_CHARS: usize = 4000;

/// Joins turns in the classified text.
const TURN_SEPARATOR: &str = "\n\n";

/// Where (part of) one user message sits in the classified text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Segment {
    /// Index of the message in the request.
    pub message: usize,
    /// First character of the segment in the classified text.
    pub start: usize,
    /// Its length in characters.
    pub len: usize,
    /// The character of the message it starts at (0 unless it is a guard window inside a message).
    pub from: usize,
}

/// The text the classifiers see, and where it came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteInput {
    /// The classified text: the routed part (the last user turns), then any guard windows.
    pub text: String,
    /// Its user messages (and windows of them), in text order.
    pub segments: Vec<Segment>,
    /// Bytes of `text` that are the routed part.
    routed_len: usize,
    /// Segments of the routed part.
    routed_segments: usize,
    /// Characters in `text`.
    chars: usize,
}

impl RouteInput {
    /// The last user turns of `messages` (see the module docs). Empty if there is no user message.
    pub fn from_messages(messages: &[ChatMessage]) -> RouteInput {
        let mut picked: Vec<usize> = Vec::new();
        let mut chars = 0;
        for (i, m) in messages.iter().enumerate().rev() {
            if m.role != "user" {
                continue;
            }
            let len = m.content.chars().count();
            if !picked.is_empty()
                && (picked.len() >= MAX_USER_TURNS || chars + len > MAX_INPUT_CHARS)
            {
                break;
            }
            chars += len;
            picked.push(i);
        }
        picked.reverse();
        let mut input = RouteInput::default();
        let mut pos = 0;
        for (k, &i) in picked.iter().enumerate() {
            if k > 0 {
                input.text.push_str(TURN_SEPARATOR);
                pos += TURN_SEPARATOR.chars().count();
            }
            let content = &messages[i].content;
            let len = content.chars().count();
            input.text.push_str(content);
            input.segments.push(Segment {
                message: i,
                start: pos,
                len,
                from: 0,
            });
            pos += len;
        }
        input.routed_len = input.text.len();
        input.routed_segments = input.segments.len();
        input.chars = pos;
        input
    }

    /// The routed part: the last user turns, which every signal reads.
    pub fn routed_text(&self) -> &str {
        &self.text[..self.routed_len]
    }

    /// Appends a guard window: `text`, the characters of message `message` from its character
    /// `from` on, after a blank line. Returns where it starts in [`RouteInput::text`], in characters.
    pub fn push_window(&mut self, message: usize, from: usize, text: &str) -> usize {
        if !self.text.is_empty() {
            self.text.push_str(TURN_SEPARATOR);
            self.chars += TURN_SEPARATOR.chars().count();
        }
        let start = self.chars;
        let len = text.chars().count();
        self.text.push_str(text);
        self.chars += len;
        self.segments.push(Segment {
            message,
            start,
            len,
            from,
        });
        start
    }

    /// Guard windows appended after the routed part.
    pub fn windows(&self) -> &[Segment] {
        &self.segments[self.routed_segments..]
    }

    /// The newest user message (the last segment), whole: the text keyword rules read. The whole
    /// text when there are no segments.
    pub fn newest_turn(&self) -> &str {
        let Some(seg) = self.segments[..self.routed_segments].last() else {
            return self.routed_text();
        };
        let byte_at = |chars: usize| {
            self.text
                .char_indices()
                .nth(chars)
                .map_or(self.text.len(), |(b, _)| b)
        };
        let start = byte_at(seg.start);
        let end = start
            + self.text[start..]
                .chars()
                .take(seg.len)
                .map(char::len_utf8)
                .sum::<usize>();
        &self.text[start..end]
    }

    /// A plain text, as if it were one user message at index 0.
    pub fn from_text(text: &str) -> RouteInput {
        RouteInput {
            text: text.to_string(),
            segments: vec![Segment {
                message: 0,
                start: 0,
                len: text.chars().count(),
                from: 0,
            }],
            routed_len: text.len(),
            routed_segments: 1,
            chars: text.chars().count(),
        }
    }

    /// Where an entity found in [`RouteInput::text`] sits in the request: (message, first and
    /// one-past-last character of the message) for each segment it overlaps, clipped to it.
    pub fn message_spans(&self, entity: &PiiEntity) -> Vec<(usize, usize, usize)> {
        self.segments
            .iter()
            .filter_map(|seg| {
                let start = entity.start.max(seg.start);
                let end = entity.end.min(seg.start + seg.len);
                (start < end).then(|| {
                    (
                        seg.message,
                        start - seg.start + seg.from,
                        end - seg.start + seg.from,
                    )
                })
            })
            .collect()
    }

    /// Replaces each entity's span in the messages it came from with `[ENTITY_TYPE]`. Spans are clipped
    /// to their message; overlapping spans (the same entity seen in the routed text and in a guard
    /// window, say) are merged into the first.
    pub fn mask(&self, messages: &mut [ChatMessage], entities: &[PiiEntity]) {
        let mut by_message: std::collections::BTreeMap<usize, Vec<(usize, usize, String)>> =
            Default::default();
        for e in entities {
            for (message, start, end) in self.message_spans(e) {
                by_message.entry(message).or_default().push((
                    start,
                    end,
                    normalize_entity_type(&e.entity_type),
                ));
            }
        }
        for (index, mut spans) in by_message {
            let Some(message) = messages.get_mut(index) else {
                continue;
            };
            // Sorted; one overlapping the last masked span extends it.
            spans.sort();
            let mut masked = String::with_capacity(message.content.len());
            let mut next = 0; // first character not yet copied
            let chars: Vec<char> = message.content.chars().collect();
            for (start, end, ty) in spans {
                // A request edited since it was routed cannot make a span reach past its message.
                let (start, end) = (start.min(chars.len()), end.min(chars.len()));
                if start < next {
                    next = next.max(end);
                    continue;
                }
                masked.extend(&chars[next..start]);
                masked.push('[');
                masked.push_str(&ty);
                masked.push(']');
                next = end;
            }
            masked.extend(&chars[next.min(chars.len())..]);
            message.content = masked;
        }
    }
}

/// Applies a route's system prompt: `replace` drops the client's system messages and puts this one
/// first; `insert` puts it before the client's system message (in the same message, so templates that
/// read only the first system message see both).
pub fn apply_system_prompt<M: SystemTurn>(messages: &mut Vec<M>, prompt: &SystemPrompt) {
    match prompt.mode {
        SystemPromptMode::Replace => {
            messages.retain(|m| !m.is_system());
            messages.insert(0, M::system(&prompt.text));
        }
        SystemPromptMode::Insert => match messages.first_mut() {
            Some(first) if first.is_system() => first.prepend(&prompt.text),
            _ => messages.insert(0, M::system(&prompt.text)),
        },
    }
}

/// A chat message as a route's system prompt is applied to it: the router's [`ChatMessage`], or a
/// client's message in another shape (the proxy forwards the client's own JSON).
pub trait SystemTurn {
    /// A system message of `text`.
    fn system(text: &str) -> Self;
    /// Whether this is a system message.
    fn is_system(&self) -> bool;
    /// Puts `text` before the message's text, a blank line between.
    fn prepend(&mut self, text: &str);
}

impl SystemTurn for ChatMessage {
    fn system(text: &str) -> Self {
        ChatMessage::new("system", text)
    }

    fn is_system(&self) -> bool {
        self.role == "system"
    }

    fn prepend(&mut self, text: &str) {
        self.content = format!("{text}\n\n{}", self.content);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage::new(role, content)
    }

    #[test]
    fn takes_the_last_user_turns_newest_last() {
        let messages = vec![
            msg("system", "sys"),
            msg("user", "one"),
            msg("assistant", "a"),
            msg("user", "two"),
            msg("user", "three"),
            msg("user", "four"),
        ];
        let input = RouteInput::from_messages(&messages);
        assert_eq!(input.text, "two\n\nthree\n\nfour");
        assert_eq!(
            input.segments,
            vec![
                Segment {
                    message: 3,
                    start: 0,
                    len: 3,
                    from: 0
                },
                Segment {
                    message: 4,
                    start: 5,
                    len: 5,
                    from: 0
                },
                Segment {
                    message: 5,
                    start: 12,
                    len: 4,
                    from: 0
                },
            ]
        );
        assert!(RouteInput::from_messages(&[msg("system", "x")])
            .text
            .is_empty());
        assert_eq!(input.newest_turn(), "four");
    }

    #[test]
    fn windows_map_entities_back_into_their_message_and_mask_each_span_once() {
        let mut messages = vec![
            msg("user", "Older note: mail bob@x.io today."),
            msg("user", "Now: call 555 0100, thanks."),
        ];
        let mut input = RouteInput::from_messages(&messages[1..2]);
        // As if routing read only the newest turn (index 1 of the request).
        input.segments[0].message = 1;
        let start = input.push_window(0, 12, "mail bob@x.io today.");
        assert_eq!(input.routed_text(), "Now: call 555 0100, thanks.");
        assert_eq!(input.windows().len(), 1);
        assert_eq!(input.newest_turn(), "Now: call 555 0100, thanks.");
        let at = |ty: &str, from: usize, to: usize| PiiEntity {
            entity_type: ty.into(),
            start: from,
            end: to,
            score: 1.0,
        };
        // The address in the window, twice (as two overlapping windows report it), and the
        // phone number in the routed text.
        let email = at("EMAIL_ADDRESS", start + 5, start + 13);
        assert_eq!(input.message_spans(&email), vec![(0, 17, 25)]);
        input.mask(
            &mut messages,
            &[email.clone(), email, at("PHONE_NUMBER", 10, 18)],
        );
        assert_eq!(
            messages[0].content,
            "Older note: mail [EMAIL_ADDRESS] today."
        );
        assert_eq!(messages[1].content, "Now: call [PHONE_NUMBER], thanks.");
    }

    #[test]
    fn the_newest_turn_is_the_last_user_message_whole() {
        let messages = vec![
            msg("user", "Préface — ünïcode"),
            msg("assistant", "ok"),
            msg("user", "thanks! 🙂"),
            msg("assistant", "welcome"),
        ];
        let input = RouteInput::from_messages(&messages);
        assert_eq!(input.newest_turn(), "thanks! 🙂");
        assert_eq!(RouteInput::from_text("só").newest_turn(), "só");
        assert_eq!(RouteInput::default().newest_turn(), "");
    }

    #[test]
    fn a_long_turn_is_kept_whole_and_older_ones_dropped() {
        let long = "x".repeat(MAX_INPUT_CHARS + 10);
        let input = RouteInput::from_messages(&[msg("user", "older"), msg("user", &long)]);
        assert_eq!(input.text, long);
        assert_eq!(input.segments.len(), 1);
    }

    fn entity(t: &str, start: usize, end: usize) -> PiiEntity {
        PiiEntity {
            entity_type: t.into(),
            start,
            end,
            score: 1.0,
        }
    }

    #[test]
    fn masks_spans_in_the_messages_they_came_from() {
        let mut messages = vec![
            msg("user", "mail me at bo@x.io"),
            msg("assistant", "ok"),
            msg("user", "I am Zoë Hart, café owner"),
        ];
        let input = RouteInput::from_messages(&messages);
        let second = input.segments[1].start;
        input.mask(
            &mut messages,
            &[
                entity("EMAIL_ADDRESS", 11, 18),
                entity("B-PERSON", second + 5, second + 13),
            ],
        );
        assert_eq!(messages[0].content, "mail me at [EMAIL_ADDRESS]");
        assert_eq!(messages[1].content, "ok");
        assert_eq!(messages[2].content, "I am [PERSON], café owner");
    }

    #[test]
    fn overlapping_spans_are_masked_as_one() {
        let mut messages = vec![msg("user", "abcdefghij")];
        RouteInput::from_text("abcdefghij").mask(
            &mut messages,
            &[
                entity("A", 1, 4),
                entity("B", 2, 6),
                entity("D", 3, 5),
                entity("C", 7, 9),
            ],
        );
        // B reaches past A: none of its characters is left.
        assert_eq!(messages[0].content, "a[A]g[C]j");
    }

    #[test]
    fn system_prompt_replace_and_insert() {
        let mut m = vec![msg("system", "client"), msg("user", "q")];
        apply_system_prompt(
            &mut m,
            &SystemPrompt {
                text: "route".into(),
                mode: SystemPromptMode::Insert,
            },
        );
        assert_eq!(m[0].content, "route\n\nclient");
        assert_eq!(m.len(), 2);
        apply_system_prompt(
            &mut m,
            &SystemPrompt {
                text: "only".into(),
                mode: SystemPromptMode::Replace,
            },
        );
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].content, "only");
        let mut m = vec![msg("user", "q")];
        apply_system_prompt(
            &mut m,
            &SystemPrompt {
                text: "s".into(),
                mode: SystemPromptMode::Insert,
            },
        );
        assert_eq!((m[0].role.as_str(), m[0].content.as_str()), ("system", "s"));
    }
}
