//! What the router decides on a set of requests (part of `bench router`): how confident the domain
//! signal is, how many requests take the default route, think, or are blocked, and, where the texts
//! carry labels (`domain`, `reasoning`, as `router/data/chat_style/validation.jsonl` does), how often
//! the domain signal and the routes agree with them.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use switchyard_router::{Action, Decision, EmbeddingUse};

/// One request of the texts file, with its labels when the file has them.
#[derive(Debug, Clone, Deserialize)]
pub struct LabelledText {
    /// The user message.
    pub text: String,
    /// Its domain (a category name), if labelled.
    #[serde(default)]
    pub domain: Option<String>,
    /// Whether a good answer needs multi-step reasoning, if labelled.
    #[serde(default)]
    pub reasoning: Option<bool>,
}

/// Reads a JSONL file of `{"text": ..., "domain"?: ..., "reasoning"?: ...}` lines.
pub fn read_labelled(path: &Path) -> Result<Vec<LabelledText>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let rows = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}:{}: not a text line", path.display(), n + 1))
        })
        .collect::<Result<Vec<LabelledText>>>()?;
    if rows.is_empty() {
        bail!("{}: no texts", path.display());
    }
    Ok(rows)
}

/// What one decision amounts to, for counting.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The domain signal's top label and its probability (none without a domain head).
    pub domain: Option<(String, f32)>,
    /// The route taken: a category name or `default`.
    pub route: String,
    /// A keyword rule decided the route.
    pub keyword_rule: bool,
    /// Generation thinks first.
    pub thinking: bool,
    /// The request is refused.
    pub blocked: bool,
    /// The sentence encoder was skipped (the fast signals were confident).
    pub embedding_skipped: bool,
}

impl From<&Decision> for Outcome {
    fn from(d: &Decision) -> Self {
        Outcome {
            domain: d
                .signals
                .domain
                .as_ref()
                .map(|s| (s.label.clone(), s.score)),
            route: d.category.clone(),
            keyword_rule: d.keyword_rule.is_some(),
            thinking: d.reasoning.is_thinking(),
            blocked: matches!(d.action, Action::Block { .. }),
            embedding_skipped: d.signals.embedding == EmbeddingUse::Skipped,
        }
    }
}

/// The counts and rates over all requests.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecisionSummary {
    /// Requests routed.
    pub requests: usize,
    /// Mean probability of the domain signal's top label.
    pub mean_top_probability: Option<f64>,
    /// Requests that took the default route (low confidence, a rule, or no domain head).
    pub default_routes: usize,
    /// Requests a keyword rule decided.
    pub keyword_rule_routes: usize,
    /// Requests that think.
    pub thinking: usize,
    /// Requests refused (jailbreak or PII).
    pub blocked: usize,
    /// Requests whose sentence encoder was skipped (`classifier.embedding.skip_when_confident`).
    pub embedding_skipped: usize,
    /// Share of labelled requests whose domain signal names their domain.
    pub domain_accuracy: Option<f64>,
    /// Share of the labelled requests routed to a category whose category is their domain.
    pub routed_category_precision: Option<f64>,
    /// Share of requests labelled with reasoning need whose thinking decision matches the label.
    pub thinking_agreement: Option<f64>,
    /// Requests labelled as needing reasoning.
    pub labelled_reasoning: Option<usize>,
}

fn share(hits: usize, of: usize) -> Option<f64> {
    (of > 0).then(|| hits as f64 / of as f64)
}

/// Counts outcomes against their labels.
pub fn summarise(rows: &[(Outcome, &LabelledText)]) -> DecisionSummary {
    let tops: Vec<f64> = rows
        .iter()
        .filter_map(|(o, _)| o.domain.as_ref().map(|d| f64::from(d.1)))
        .collect();
    let with_domain: Vec<_> = rows
        .iter()
        .filter_map(|(o, t)| t.domain.as_ref().map(|g| (o, g)))
        .collect();
    let domain_hits = with_domain
        .iter()
        .filter(|(o, g)| o.domain.as_ref().is_some_and(|d| &d.0 == *g))
        .count();
    let routed: Vec<_> = with_domain
        .iter()
        .filter(|(o, _)| o.route != "default")
        .collect();
    let routed_hits = routed.iter().filter(|(o, g)| &o.route == *g).count();
    let with_reasoning: Vec<_> = rows
        .iter()
        .filter_map(|(o, t)| t.reasoning.map(|r| (o, r)))
        .collect();
    let agree = with_reasoning
        .iter()
        .filter(|(o, r)| o.thinking == *r)
        .count();
    DecisionSummary {
        requests: rows.len(),
        mean_top_probability: (!tops.is_empty())
            .then(|| tops.iter().sum::<f64>() / tops.len() as f64),
        default_routes: rows.iter().filter(|(o, _)| o.route == "default").count(),
        keyword_rule_routes: rows.iter().filter(|(o, _)| o.keyword_rule).count(),
        thinking: rows.iter().filter(|(o, _)| o.thinking).count(),
        blocked: rows.iter().filter(|(o, _)| o.blocked).count(),
        embedding_skipped: rows.iter().filter(|(o, _)| o.embedding_skipped).count(),
        domain_accuracy: share(domain_hits, with_domain.len()),
        routed_category_precision: share(routed_hits, routed.len()),
        thinking_agreement: share(agree, with_reasoning.len()),
        labelled_reasoning: (!with_reasoning.is_empty())
            .then(|| with_reasoning.iter().filter(|(_, r)| *r).count()),
    }
}

/// The summary as one Markdown table.
pub fn markdown(s: &DecisionSummary) -> String {
    let rate = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
    let mut out = String::from("| what the router decided | value |\n|---|---|\n");
    let mut row = |k: &str, v: String| out.push_str(&format!("| {k} | {v} |\n"));
    row("requests", s.requests.to_string());
    row("mean top domain probability", rate(s.mean_top_probability));
    row("default routes", s.default_routes.to_string());
    row(
        "routes a keyword rule decided",
        s.keyword_rule_routes.to_string(),
    );
    row(
        "thinking (labelled as needing reasoning)",
        format!(
            "{} ({})",
            s.thinking,
            s.labelled_reasoning
                .map_or("-".to_string(), |n| n.to_string())
        ),
    );
    row("blocked", s.blocked.to_string());
    row(
        "sentence encoder skipped (fast signals confident)",
        s.embedding_skipped.to_string(),
    );
    row("domain signal accuracy", rate(s.domain_accuracy));
    row(
        "requests routed to a category: right category",
        rate(s.routed_category_precision),
    );
    row(
        "thinking decision agrees with the label",
        rate(s.thinking_agreement),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(domain: &str, p: f32, route: &str, thinking: bool) -> Outcome {
        Outcome {
            domain: Some((domain.into(), p)),
            route: route.into(),
            keyword_rule: false,
            thinking,
            blocked: false,
            embedding_skipped: false,
        }
    }

    fn text(domain: Option<&str>, reasoning: Option<bool>) -> LabelledText {
        LabelledText {
            text: "t".into(),
            domain: domain.map(str::to_string),
            reasoning,
        }
    }

    #[test]
    fn counts_and_rates_follow_the_labels() {
        let texts = [
            text(Some("math"), Some(true)),
            text(Some("law"), Some(false)),
            text(Some("law"), Some(true)),
            text(None, None),
        ];
        let rows = vec![
            (outcome("math", 0.9, "math", true), &texts[0]),
            // Right label, but below the confidence threshold: default route.
            (outcome("law", 0.3, "default", false), &texts[1]),
            (outcome("history", 0.6, "history", false), &texts[2]),
            (
                Outcome {
                    keyword_rule: true,
                    blocked: true,
                    embedding_skipped: true,
                    ..outcome("other", 0.2, "default", false)
                },
                &texts[3],
            ),
        ];
        let s = summarise(&rows);
        assert_eq!(s.requests, 4);
        assert!((s.mean_top_probability.unwrap() - 0.5).abs() < 1e-6);
        assert_eq!((s.default_routes, s.keyword_rule_routes), (2, 1));
        assert_eq!((s.thinking, s.blocked, s.embedding_skipped), (1, 1, 1));
        // math right, law right (the signal, not the route), history wrong.
        assert!((s.domain_accuracy.unwrap() - 2.0 / 3.0).abs() < 1e-9);
        // Routed to a category: math (right) and history (wrong).
        assert_eq!(s.routed_category_precision, Some(0.5));
        // Thinking matches on the math and first law rows, not the second law row.
        assert!((s.thinking_agreement.unwrap() - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(s.labelled_reasoning, Some(2));
        let md = markdown(&s);
        assert!(md.contains("| requests | 4 |"), "{md}");
        assert!(md.contains("| requests routed to a category: right category | 0.500 |"));
    }

    #[test]
    fn unlabelled_texts_give_no_rates() {
        let texts = [text(None, None)];
        let s = summarise(&[(outcome("math", 0.8, "math", true), &texts[0])]);
        assert_eq!(s.domain_accuracy, None);
        assert_eq!(s.routed_category_precision, None);
        assert_eq!(s.thinking_agreement, None);
        assert_eq!(s.labelled_reasoning, None);
        assert!(markdown(&s).contains("| domain signal accuracy | - |"));
    }

    #[test]
    fn a_texts_file_reads_with_or_without_labels_and_rejects_bad_lines() {
        let dir = std::env::temp_dir().join(format!("sy-decisions-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.jsonl");
        std::fs::write(
            &good,
            "{\"text\": \"a\", \"domain\": \"law\", \"reasoning\": false}\n\n{\"text\": \"b\"}\n",
        )
        .unwrap();
        let rows = read_labelled(&good).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].domain.as_deref(), Some("law"));
        assert_eq!(rows[1].reasoning, None);
        let bad = dir.join("bad.jsonl");
        std::fs::write(&bad, "{\"text\": \"a\"}\n{\"domain\": \"law\"}\n").unwrap();
        let err = read_labelled(&bad).unwrap_err().to_string();
        assert!(err.contains("bad.jsonl:2"), "{err}");
        std::fs::write(&bad, "\n").unwrap();
        assert!(read_labelled(&bad).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
