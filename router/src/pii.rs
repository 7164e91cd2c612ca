//! Decoding the PII token head: per-token BIO logits → entities with character spans.
//!
//! The head is trained with a word's first piece tagged `B-X` or `I-X` and its later pieces `I-X`
//! (or all `O`), so every piece carries evidence about its word. Decoding reads it per word:
//!
//! 1. A word's probabilities are the mean of its pieces' (`hav` `##n` of "havn" vote together), so
//!    a name whose first piece alone looks like `O` is still found, and a common word with one
//!    name-like piece is not.
//! 2. A word's type is the most probable of `O` and each entity type `X`, scored `P(B-X) + P(I-X)`:
//!    the head's uncertainty between `B-X` and `I-X` is no reason to drop the word. Whether the word
//!    begins an entity (`B`) or continues one (`I`) is read from its first piece.
//! 3. `I-X` continues an open `X` (or opens one, leniently); so does `B-X` glued to it with no
//!    character between (the head sometimes restarts inside a hyphenated name). Anything else closes it.
//! 4. An entity runs from its first word's start to its last word's end, in characters; its score
//!    is the mean type score of its words.
//! 5. With the text at hand ([`complete_spans`], which [`crate::Router`] applies), an entity of a
//!    type that never holds whitespace (e-mail address, URL, domain name, IP address) is its whole
//!    whitespace-free run, its fragments one entity.

use crate::classifier::{softmax, Encoded};
use crate::signals::PiiEntity;

/// How a label reads: `B-X` / `I-X` (prefix, entity type), or `None` for `O` and anything else.
fn split_label(label: &str) -> Option<(bool, &str)> {
    match label.split_once('-') {
        Some(("B", ty)) => Some((true, ty)),
        Some(("I", ty)) => Some((false, ty)),
        _ => None,
    }
}

/// A word's decoded tag: entity type, whether its first piece says `B`, and its type score.
struct WordTag<'a> {
    ty: Option<&'a str>,
    begins: bool,
    score: f32,
}

/// The tag of a word from its pieces' probabilities (rules 1 and 2 of the module docs).
fn word_tag<'a>(pieces: &[Vec<f32>], labels: &'a [String]) -> WordTag<'a> {
    let n = pieces.len().max(1) as f32;
    let mean: Vec<f32> = (0..labels.len())
        .map(|i| {
            pieces
                .iter()
                .map(|p| p.get(i).copied().unwrap_or(0.0))
                .sum::<f32>()
                / n
        })
        .collect();
    // Type scores in first-seen label order: (type, P(B-X) + P(I-X)); everything else is `O`.
    let mut types: Vec<(&str, f32)> = Vec::new();
    let mut outside = 0.0;
    for (label, p) in labels.iter().zip(&mean) {
        match split_label(label) {
            Some((_, ty)) => match types.iter_mut().find(|t| t.0 == ty) {
                Some(t) => t.1 += p,
                None => types.push((ty, *p)),
            },
            None => outside += p,
        }
    }
    let best = types
        .iter()
        .fold(None::<(&str, f32)>, |b, &t| match b {
            Some(b) if b.1 >= t.1 => Some(b),
            _ => Some(t),
        })
        .filter(|t| t.1 > outside);
    let Some((ty, score)) = best else {
        return WordTag {
            ty: None,
            begins: false,
            score: outside,
        };
    };
    // B or I from the first piece.
    let (mut b, mut i) = (0.0, 0.0);
    if let Some(first) = pieces.first() {
        for (label, p) in labels.iter().zip(first) {
            match split_label(label) {
                Some((true, t)) if t == ty => b += p,
                Some((false, t)) if t == ty => i += p,
                _ => {}
            }
        }
    }
    WordTag {
        ty: Some(ty),
        begins: b >= i,
        score,
    }
}

/// Words of an encoded text: `(first token, end token)` index ranges of non-special tokens, a word
/// being a token that starts one and the later pieces that follow it.
fn words(encoded: &Encoded, len: usize) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    let mut continues = false;
    for t in 0..len {
        if encoded.special.get(t).copied().unwrap_or(true) {
            continues = false;
            continue;
        }
        let starts = encoded.word_start.get(t).copied().unwrap_or(true);
        match out.last_mut() {
            Some(w) if continues && !starts => w.1 = t + 1,
            _ => out.push((t, t + 1)),
        }
        continues = true;
    }
    out
}

/// Entities from per-token BIO logits (see the module docs). `logits` has one row per token of
/// `encoded` (extra rows, e.g. padding, are ignored); `labels` names the row's columns.
pub fn bio_entities(logits: &[Vec<f32>], labels: &[String], encoded: &Encoded) -> Vec<PiiEntity> {
    let len = logits
        .len()
        .min(encoded.ids.len())
        .min(encoded.offsets.len());
    let probs: Vec<Vec<f32>> = logits[..len].iter().map(|r| softmax(r)).collect();
    let mut out: Vec<PiiEntity> = Vec::new();
    let mut open: Option<(PiiEntity, f32, usize)> = None; // (entity, score sum, words)
    let close = |open: &mut Option<(PiiEntity, f32, usize)>, out: &mut Vec<PiiEntity>| {
        if let Some((mut e, sum, n)) = open.take() {
            e.score = sum / n as f32;
            out.push(e);
        }
    };
    let mut prev_word_end: Option<usize> = None;
    for (first, end) in words(encoded, len) {
        let start = encoded.offsets[first].0;
        let stop = encoded.offsets[end - 1].1;
        // A special token, a gap in the token sequence between two words or the cut of a long
        // text closes an entity.
        if prev_word_end != Some(first) || encoded.cut == Some(first) {
            close(&mut open, &mut out);
        }
        prev_word_end = Some(end);
        let tag = word_tag(&probs[first..end], labels);
        let Some(ty) = tag.ty else {
            close(&mut open, &mut out);
            continue;
        };
        match &mut open {
            Some((e, sum, n)) if e.entity_type == ty && (!tag.begins || e.end == start) => {
                e.end = stop;
                *sum += tag.score;
                *n += 1;
            }
            _ => {
                close(&mut open, &mut out);
                open = Some((
                    PiiEntity {
                        entity_type: ty.to_string(),
                        start,
                        end: stop,
                        score: 0.0,
                    },
                    tag.score,
                    1,
                ));
            }
        }
    }
    close(&mut open, &mut out);
    out
}

/// Entity types whose text never holds whitespace: an e-mail address, a URL, a domain name, an IP
/// address is one whitespace-free run of the text.
fn is_unbroken(entity_type: &str) -> bool {
    matches!(
        crate::config::normalize_entity_type(entity_type).as_str(),
        "EMAIL_ADDRESS" | "EMAIL" | "URL" | "DOMAIN_NAME" | "IP_ADDRESS"
    )
}

/// Characters trimmed from the ends of a run taken as an unbroken entity (brackets, quotes, and the
/// punctuation a sentence puts after it).
const RUN_TRIM: &[char] = &[
    '(', ')', '[', ']', '{', '}', '<', '>', '"', '\'', ',', ';', ':', '!', '?', '.',
];

/// Completes the spans of the types that never hold whitespace (e-mail address, URL, domain name,
/// IP address) to their whole run of `text` (ends trimmed of brackets, quotes and sentence
/// punctuation), and keeps one entity per span. The word-piece tokenizer splits
/// `john.doe@example.com` into seven words and the head may tag some of them `O`, which leaves
/// fragments (`john.`, `@`, `.com`) that mask nothing useful; the whole run is the address.
pub fn complete_spans(entities: &mut Vec<PiiEntity>, text: &str) {
    let chars: Vec<char> = text.chars().collect();
    for e in entities.iter_mut().filter(|e| is_unbroken(&e.entity_type)) {
        let (mut start, mut end) = (e.start.min(chars.len()), e.end.min(chars.len()));
        while start > 0 && !chars[start - 1].is_whitespace() {
            start -= 1;
        }
        while end < chars.len() && !chars[end].is_whitespace() {
            end += 1;
        }
        while start < end && RUN_TRIM.contains(&chars[start]) {
            start += 1;
        }
        while end > start && RUN_TRIM.contains(&chars[end - 1]) {
            end -= 1;
        }
        // Never shrink what the head found (it may have tagged the trimmed punctuation).
        e.start = start.min(e.start);
        e.end = end.max(e.end);
    }
    // Fragments of one run are now the same span: keep the most confident of each.
    let mut kept: Vec<PiiEntity> = Vec::with_capacity(entities.len());
    let mut at: std::collections::HashMap<(usize, usize, String), usize> = Default::default();
    for e in entities.drain(..) {
        let key = (
            e.start,
            e.end,
            crate::config::normalize_entity_type(&e.entity_type),
        );
        match at.get(&key) {
            Some(&k) => kept[k].score = kept[k].score.max(e.score),
            None => {
                at.insert(key, kept.len());
                kept.push(e);
            }
        }
    }
    *entities = kept;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_of_an_address_become_the_whole_address() {
        let text = "Write to john.doe@example.com, or see (https://x.org/a).";
        let at = |ty: &str, s: &str, score: f32| {
            let start = text.find(s).unwrap();
            PiiEntity {
                entity_type: ty.into(),
                start,
                end: start + s.len(),
                score,
            }
        };
        let mut found = vec![
            at("EMAIL_ADDRESS", "john.", 0.9),
            at("EMAIL_ADDRESS", "@", 1.0),
            at("EMAIL_ADDRESS", ".com", 0.8),
            at("URL", "x.org", 0.7),
            at("PERSON", "Write", 0.6),
        ];
        complete_spans(&mut found, text);
        let spans: Vec<(&str, &str, f32)> = found
            .iter()
            .map(|e| (e.entity_type.as_str(), &text[e.start..e.end], e.score))
            .collect();
        assert_eq!(
            spans,
            vec![
                ("EMAIL_ADDRESS", "john.doe@example.com", 1.0),
                ("URL", "https://x.org/a", 0.7),
                ("PERSON", "Write", 0.6),
            ]
        );
    }

    fn labels(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn one_hot(i: usize, n: usize) -> Vec<f32> {
        (0..n).map(|j| if i == j { 10.0 } else { 0.0 }).collect()
    }

    fn encoded(offsets: &[(usize, usize)], special: &[bool], word_start: &[bool]) -> Encoded {
        Encoded {
            ids: vec![0; offsets.len()],
            offsets: offsets.to_vec(),
            special: special.to_vec(),
            word_start: word_start.to_vec(),
            cut: None,
        }
    }

    fn spans(e: &[PiiEntity]) -> Vec<(&str, usize, usize)> {
        e.iter()
            .map(|e| (e.entity_type.as_str(), e.start, e.end))
            .collect()
    }

    #[test]
    fn bio_tags_become_character_spans() {
        let labels = labels(&[
            "O",
            "B-PERSON",
            "I-PERSON",
            "B-EMAIL_ADDRESS",
            "I-EMAIL_ADDRESS",
        ]);
        // "[CLS] I am Zoë Hart , bo @ x [SEP]"
        let enc = encoded(
            &[
                (0, 0),
                (0, 1),
                (2, 4),
                (5, 8),
                (9, 13),
                (13, 14),
                (15, 17),
                (17, 18),
                (18, 19),
                (0, 0),
            ],
            &[
                true, false, false, false, false, false, false, false, false, true,
            ],
            &[true; 10],
        );
        let tags = [0, 0, 0, 1, 2, 0, 3, 3, 4, 2];
        let logits: Vec<Vec<f32>> = tags.iter().map(|&t| one_hot(t, 5)).collect();
        let e = bio_entities(&logits, &labels, &enc);
        assert_eq!(
            spans(&e),
            vec![("PERSON", 5, 13), ("EMAIL_ADDRESS", 15, 19)]
        );
        assert!(e[0].score > 0.99);
    }

    #[test]
    fn a_stray_inside_tag_opens_an_entity_and_a_glued_begin_continues() {
        let labels = labels(&["O", "B-X", "I-X", "B-Y", "I-Y"]);
        let enc = encoded(&[(0, 1), (2, 3), (4, 5)], &[false; 3], &[true; 3]);
        let logits: Vec<Vec<f32>> = [2, 4, 4].iter().map(|&t| one_hot(t, 5)).collect();
        assert_eq!(
            spans(&bio_entities(&logits, &labels, &enc)),
            vec![("X", 0, 1), ("Y", 2, 5)]
        );
        // A `B-` glued to an open entity of its type continues it; one after a gap starts a new one.
        let enc = encoded(&[(0, 2), (2, 3), (4, 5)], &[false; 3], &[true; 3]);
        let logits: Vec<Vec<f32>> = [1, 1, 1].iter().map(|&t| one_hot(t, 5)).collect();
        assert_eq!(
            spans(&bio_entities(&logits, &labels, &enc)),
            vec![("X", 0, 3), ("X", 4, 5)]
        );
    }

    #[test]
    fn an_entity_never_spans_the_cut_of_a_long_text() {
        let labels = labels(&["O", "B-X", "I-X"]);
        // "Ann Lee ... (cut) ... Smith": the head ends inside an entity, the tail starts with an
        // inside tag; the characters between were never read.
        let mut enc = encoded(&[(0, 3), (4, 7), (500, 505)], &[false; 3], &[true; 3]);
        let logits: Vec<Vec<f32>> = [1, 2, 2].iter().map(|&t| one_hot(t, 3)).collect();
        assert_eq!(
            spans(&bio_entities(&logits, &labels, &enc)),
            vec![("X", 0, 505)],
            "the premise: without the cut the tags join"
        );
        enc.cut = Some(2);
        assert_eq!(
            spans(&bio_entities(&logits, &labels, &enc)),
            vec![("X", 0, 7), ("X", 500, 505)]
        );
    }

    #[test]
    fn a_words_pieces_vote_together() {
        let labels = labels(&["O", "B-PERSON", "I-PERSON"]);
        // "heyy Torben": he ##y ##y To ##r ##ben.
        let enc = encoded(
            &[(0, 2), (2, 3), (3, 4), (5, 7), (7, 8), (8, 11)],
            &[false; 6],
            &[true, false, false, true, false, false],
        );
        // "heyy": one piece of three looks like a name: not an entity. "Torben": its first piece
        // says `O` but the rest say `I-PERSON`: one PERSON entity over the whole word.
        let logits: Vec<Vec<f32>> = [0, 2, 0, 0, 2, 2].iter().map(|&t| one_hot(t, 3)).collect();
        let e = bio_entities(&logits, &labels, &enc);
        assert_eq!(spans(&e), vec![("PERSON", 5, 11)]);
        assert!((e[0].score - 2.0 / 3.0).abs() < 1e-3, "{e:?}");
    }

    #[test]
    fn begin_and_inside_of_one_type_add_up() {
        let labels = labels(&["O", "B-LOCATION", "I-LOCATION"]);
        let enc = encoded(&[(0, 6)], &[false], &[true]);
        // O 0.4, B 0.3, I 0.3: the word is a LOCATION scored 0.6 (argmax over tags would say O).
        let logits = vec![vec![0.4f32.ln(), 0.3f32.ln(), 0.3f32.ln()]];
        let e = bio_entities(&logits, &labels, &enc);
        assert_eq!(spans(&e), vec![("LOCATION", 0, 6)]);
        assert!((e[0].score - 0.6).abs() < 1e-4);
    }

    #[test]
    fn specials_close_entities_and_bad_shapes_do_not_panic() {
        let labels = labels(&["O", "B-X", "I-X"]);
        let enc = encoded(&[(0, 1), (0, 0), (2, 3)], &[false, true, false], &[true; 3]);
        let logits: Vec<Vec<f32>> = [1, 2, 2].iter().map(|&t| one_hot(t, 3)).collect();
        assert_eq!(
            spans(&bio_entities(&logits, &labels, &enc)),
            vec![("X", 0, 1), ("X", 2, 3)]
        );
        // Fewer logits than tokens, rows shorter than the labels, no labels at all.
        assert_eq!(bio_entities(&logits[..1], &labels, &enc).len(), 1);
        assert!(bio_entities(&[vec![1.0]], &labels, &enc).is_empty());
        assert!(bio_entities(&logits, &[], &enc).is_empty());
    }
}
