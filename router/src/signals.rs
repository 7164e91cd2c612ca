//! The classifier-independent input to the routing policy.
//!
//! Whatever produces the signals (the multi-head ModernBERT router, a vLLM SR checkpoint per task, a test)
//! fills a [`Signals`] and hands it to [`crate::decision::decide`]; the policy never sees tensors. Label
//! names are the classifier's own (`id2label`, or the vLLM SR mapping files); the configuration maps them
//! to categories (see [`crate::config::normalize_label`] for how loosely they are compared).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The output of one sequence-classification head (domain, reasoning need, jailbreak).
#[derive(Debug, Clone, PartialEq)]
pub struct ClassifierOutput {
    /// The top label.
    pub label: String,
    /// The top label's probability, in [0, 1].
    pub score: f32,
    /// Every label's probability (any order; empty if the classifier only gives the top label). The
    /// entropy rule and the top-2 vote need this for the domain head.
    pub probabilities: Vec<(String, f32)>,
    /// Time this head took (for a shared backbone pass: that pass, as the caller chooses to attribute it).
    pub latency: Duration,
}

impl ClassifierOutput {
    /// From a full distribution: the top label is the most probable one (the first on ties). `None` if
    /// `probabilities` is empty.
    pub fn from_probabilities(
        probabilities: Vec<(String, f32)>,
        latency: Duration,
    ) -> Option<ClassifierOutput> {
        let (label, score) = probabilities
            .iter()
            .fold(None::<&(String, f32)>, |best, p| match best {
                Some(b) if b.1 >= p.1 => Some(b),
                _ => Some(p),
            })?
            .clone();
        Some(ClassifierOutput {
            label,
            score,
            probabilities,
            latency,
        })
    }

    /// Just a top label and its score (no distribution).
    pub fn top(label: impl Into<String>, score: f32, latency: Duration) -> ClassifierOutput {
        ClassifierOutput {
            label: label.into(),
            score,
            probabilities: Vec::new(),
            latency,
        }
    }
}

/// One personal-information entity found by the token-classification head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PiiEntity {
    /// Entity type, e.g. `PERSON`, `EMAIL_ADDRESS` (a `B-`/`I-` prefix is tolerated and ignored).
    pub entity_type: String,
    /// Start, in characters (Unicode scalar values, not bytes) of the text passed to `decide`.
    pub start: usize,
    /// End (exclusive), in characters.
    pub end: usize,
    /// Confidence, in [0, 1] (e.g. the mean of its tokens' probabilities).
    pub score: f32,
}

/// Everything the policy knows about a request besides its text. Absent heads are `None`; the policy
/// then falls back as documented in [`crate::decision`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Signals {
    /// Domain / category head.
    pub domain: Option<ClassifierOutput>,
    /// Reasoning-need head (labels such as `reasoning` / `no_reasoning`).
    pub reasoning: Option<ClassifierOutput>,
    /// Jailbreak head (labels such as `benign` / `jailbreak`).
    pub jailbreak: Option<ClassifierOutput>,
    /// PII entities (empty: none found, or no PII head).
    pub pii: Vec<PiiEntity>,
    /// Time the PII head took, if it ran.
    pub pii_latency: Option<Duration>,
    /// Whether the embedding signal took part in its head's signal.
    pub embedding: EmbeddingUse,
}

/// Whether the sentence-embedding signal took part in a request's signals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EmbeddingUse {
    /// The router has no embedding signal.
    #[default]
    Off,
    /// The sentence encoder ran and its head was fused in.
    Fused,
    /// The fast signals were confident enough that the encoder did not run for this text.
    Skipped,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_probabilities_picks_the_top_label() {
        let o = ClassifierOutput::from_probabilities(
            vec![("a".into(), 0.2), ("b".into(), 0.5), ("c".into(), 0.5)],
            Duration::from_millis(3),
        )
        .unwrap();
        assert_eq!(o.label, "b");
        assert_eq!(o.score, 0.5);
        assert_eq!(o.probabilities.len(), 3);
        assert!(ClassifierOutput::from_probabilities(vec![], Duration::ZERO).is_none());
    }

    #[test]
    fn top_has_no_distribution() {
        let o = ClassifierOutput::top("math", 0.9, Duration::ZERO);
        assert_eq!(o.label, "math");
        assert!(o.probabilities.is_empty());
    }
}
