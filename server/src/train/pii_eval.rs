//! `switchyard eval-pii`: the PII head measured through the router's own inference path.
//!
//! The trainer scores the PII head per word on pre-split words (`train::eval::word_tags`). Serving
//! does something else: the router tokenizes the raw text, decodes the head's BIO tags into entities
//! with character offsets, and the policy keeps those at or above `pii.threshold` that have their
//! type's form (`decision::has_its_form`). This command runs the held-out PII sentences (the trainer's
//! own validation split, `data::load` → `ds.pii.val`) through [`Router::route_text`] exactly so, and
//! scores the entities the decision masks against the gold word tags turned into character spans:
//! exact span and type F1, precision, recall, per type, with a sample of errors by kind. It also
//! reports how often benign texts get any entity. Results go to `pii_metrics.json` beside the router.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;
use switchyard_router::config::{PiiAction, PiiPolicy};
use switchyard_router::decision::has_its_form;
use switchyard_router::{PiiEntity, Router, RouterConfig, RouterOptions};

use super::data::{self, TokenExample};

/// Options of `eval-pii`.
#[derive(Args, Debug)]
pub struct EvalPiiArgs {
    /// The data folders.
    #[command(flatten)]
    pub sets: data::DataArgs,
    /// The router directory to evaluate.
    #[arg(long, default_value = "router/models/default")]
    pub router_dir: PathBuf,
    /// Routing configuration whose `pii.threshold` applies; default: the shipped one.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where to write the metrics; default: `pii_metrics.json` in the router directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Errors of each kind to print.
    #[arg(long, default_value_t = 8)]
    pub samples: usize,
    /// Also write every evaluated text's tokens with the PII head's top two tags and probabilities,
    /// and the gold spans, as JSON lines to this file (for error analysis).
    #[arg(long)]
    pub dump: Option<PathBuf>,
}

/// Where `eval-pii` writes its metrics: `--out`, else beside the router it evaluated.
fn metrics_path(args: &EvalPiiArgs) -> PathBuf {
    args.out
        .clone()
        .unwrap_or_else(|| args.router_dir.join("pii_metrics.json"))
}

/// A typed entity span, in characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span {
    /// Entity type (`PERSON`, ...).
    pub ty: String,
    /// First character.
    pub start: usize,
    /// End (exclusive).
    pub end: usize,
}

/// Character spans of `words` in `text`, found in order (whitespace between them skipped); `None`
/// if a word is not where the split says it is.
pub fn word_char_spans(text: &str, words: &[String]) -> Option<Vec<(usize, usize)>> {
    let chars: Vec<char> = text.chars().collect();
    let mut pos = 0;
    let mut out = Vec::with_capacity(words.len());
    for w in words {
        let w: Vec<char> = w.chars().collect();
        while pos < chars.len() && chars[pos].is_whitespace() {
            pos += 1;
        }
        if w.is_empty() || !chars[pos..].starts_with(&w) {
            return None;
        }
        out.push((pos, pos + w.len()));
        pos += w.len();
    }
    Some(out)
}

/// The gold entities of a sentence as character spans: each BIO span runs from its first word's
/// start to its last word's end. `None` if the words do not align with the text.
pub fn gold_spans(ex: &TokenExample) -> Option<Vec<Span>> {
    let at = word_char_spans(&ex.text, &ex.words)?;
    Some(
        data::bio_spans(&ex.tags)
            .into_iter()
            .map(|(first, last, e)| Span {
                ty: data::PII_ENTITIES[e].to_string(),
                start: at[first].0,
                end: at[last - 1].1,
            })
            .collect(),
    )
}

/// (true positives, predicted, gold).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub tp: usize,
    pub pred: usize,
    pub gold: usize,
}

impl Counts {
    /// Precision, recall, F1 (0 where undefined).
    pub fn prf(&self) -> (f64, f64, f64) {
        let p = self.tp as f64 / self.pred.max(1) as f64;
        let r = self.tp as f64 / self.gold.max(1) as f64;
        let f = if self.pred + self.gold == 0 {
            0.0
        } else {
            2.0 * self.tp as f64 / (self.pred + self.gold) as f64
        };
        (p, r, f)
    }

    fn json(&self) -> serde_json::Value {
        let (p, r, f) = self.prf();
        json!({"tp": self.tp, "predicted": self.pred, "gold": self.gold,
               "precision": p, "recall": r, "f1": f})
    }
}

/// Exact span-and-type counts, overall and per type (types of either side).
pub fn score(pred: &[Vec<Span>], gold: &[Vec<Span>]) -> (Counts, BTreeMap<String, Counts>) {
    let mut all = Counts::default();
    let mut per: BTreeMap<String, Counts> = BTreeMap::new();
    for (p, g) in pred.iter().zip(gold) {
        for s in p {
            let c = per.entry(s.ty.clone()).or_default();
            c.pred += 1;
            all.pred += 1;
            if g.contains(s) {
                c.tp += 1;
                all.tp += 1;
            }
        }
        for s in g {
            per.entry(s.ty.clone()).or_default().gold += 1;
            all.gold += 1;
        }
    }
    (all, per)
}

/// What went wrong with a predicted entity that is not gold, or a gold entity not predicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorKind {
    /// Same span, other type.
    Type,
    /// Same type, overlapping but different span.
    Boundary,
    /// Overlapping span of another type.
    BoundaryAndType,
    /// A gold entity covered by two or more predicted entities of its type.
    Fragmented,
    /// A predicted entity overlapping no gold entity.
    Spurious,
    /// A gold entity no predicted entity overlaps.
    Missed,
}

fn overlaps(a: &Span, b: &Span) -> bool {
    a.start < b.end && b.start < a.end
}

/// Kinds of the errors of one sentence: `(kind, predicted, gold)` pairs, one per wrong predicted
/// entity (against the gold entity it overlaps most) and one per missed gold entity.
pub fn classify_errors(
    pred: &[Span],
    gold: &[Span],
) -> Vec<(ErrorKind, Option<Span>, Option<Span>)> {
    let mut out = Vec::new();
    for g in gold.iter().filter(|g| !pred.contains(g)) {
        let same_type: Vec<&Span> = pred
            .iter()
            .filter(|p| p.ty == g.ty && overlaps(p, g))
            .collect();
        if same_type.len() >= 2 {
            out.push((ErrorKind::Fragmented, None, Some(g.clone())));
        } else if !pred.iter().any(|p| overlaps(p, g)) {
            out.push((ErrorKind::Missed, None, Some(g.clone())));
        }
    }
    for p in pred.iter().filter(|p| !gold.contains(p)) {
        let best = gold
            .iter()
            .filter(|g| overlaps(p, g))
            .max_by_key(|g| p.end.min(g.end) - p.start.max(g.start));
        let kind = match best {
            None => ErrorKind::Spurious,
            Some(g) if g.start == p.start && g.end == p.end => ErrorKind::Type,
            Some(g) if g.ty == p.ty => ErrorKind::Boundary,
            Some(_) => ErrorKind::BoundaryAndType,
        };
        out.push((kind, Some(p.clone()), best.cloned()));
    }
    out
}

/// The shipped (or given) configuration, changed so the decision's `masked` list is every entity the
/// policy acts on: PII on for every route, every type masked, jailbreak detection off (a blocked
/// request is never checked for PII). The threshold and the form check stay as configured. Also
/// returns the configuration's own default PII policy.
fn eval_config(args: &EvalPiiArgs) -> Result<(RouterConfig, PiiPolicy)> {
    let mut config = match &args.config {
        Some(path) => RouterOptions::from_config_file(path)?.config,
        None => RouterConfig::shipped_default()?,
    };
    let policy = config.pii.default_policy.clone();
    config.jailbreak.enabled = false;
    config.pii.enabled = true;
    config.pii.default_policy = PiiPolicy {
        default: PiiAction::Mask,
        entities: BTreeMap::new(),
    };
    for m in config.models.values_mut() {
        m.pii = None;
    }
    config.default_route.pii_enabled = None;
    config.default_route.pii_threshold = None;
    for c in &mut config.categories {
        c.route.pii_enabled = None;
        c.route.pii_threshold = None;
    }
    Ok((config, policy))
}

/// The entities the router acts on for `text`, and every entity its PII head found (before the
/// threshold and the form check).
fn route(router: &Router, text: &str) -> Result<(Vec<Span>, Vec<PiiEntity>)> {
    let d = router.route_text(text)?;
    let spans = d
        .masked
        .iter()
        .map(|e| Span {
            ty: e.entity_type.clone(),
            start: e.start,
            end: e.end,
        })
        .collect();
    Ok((spans, d.signals.pii))
}

/// One JSON line per text: the text, its gold spans (if any), and per token its character span,
/// whether it starts a word, and the PII head's two most probable tags.
fn dump_tokens(
    path: &std::path::Path,
    router_dir: &std::path::Path,
    router: &Router,
    rows: &[(&str, &str, Option<&Vec<Span>>)],
) -> Result<()> {
    use std::io::Write;
    let clf = super::eval::load(router_dir)?;
    let head = clf
        .heads()
        .iter()
        .position(|h| h.name() == "pii")
        .context("the router has no `pii` head")?;
    let labels = clf.heads()[head].labels().to_vec();
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for (set, text, gold) in rows {
        let enc = router.model().encode(text)?.backbones.remove(0);
        let (input, mask) = clf.batch_inputs(std::slice::from_ref(&enc.ids))?;
        let logits = clf.forward(&input, &mask)?[head].logits.to_vec3::<f32>()?;
        let tokens: Vec<serde_json::Value> = logits[0]
            .iter()
            .enumerate()
            .filter(|(t, _)| !enc.special[*t])
            .map(|(t, row)| {
                let p = switchyard_router::classifier::softmax(row);
                let mut order: Vec<usize> = (0..p.len()).collect();
                order.sort_by(|a, b| p[*b].total_cmp(&p[*a]));
                json!({"span": enc.offsets[t], "word_start": enc.word_start[t],
                       "tags": [[labels[order[0]], p[order[0]]], [labels[order[1]], p[order[1]]]],
                       "probs": p})
            })
            .collect();
        let gold = gold.map(|g| {
            g.iter()
                .map(|s| json!([s.ty, s.start, s.end]))
                .collect::<Vec<_>>()
        });
        writeln!(
            out,
            "{}",
            json!({"set": set, "text": text, "gold": gold, "labels": labels, "tokens": tokens})
        )?;
    }
    Ok(())
}

/// The `text` field of each line of a JSON-lines file (none if it does not exist).
fn texts_of(path: &std::path::Path) -> Result<Vec<String>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    Ok(std::fs::read_to_string(path)?
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["text"].as_str().map(|t| t.trim().to_string()))
        .filter(|t| !t.is_empty())
        .collect())
}

fn snippet(text: &str, s: &Span) -> String {
    let part: String = text.chars().skip(s.start).take(s.end - s.start).collect();
    format!("{}[{}..{}] {part:?}", s.ty, s.start, s.end)
}

/// Runs `eval-pii`.
pub fn run(args: EvalPiiArgs) -> Result<()> {
    let ds = args.sets.load()?;
    let (config, policy) = eval_config(&args)?;
    let threshold = config.pii.threshold;
    let mut options = RouterOptions::new(config);
    options.model_dir = Some(args.router_dir.clone());
    let router = Router::load(options)?;

    // Held-out PII sentences.
    let mut gold = Vec::new();
    let mut pred = Vec::new();
    let mut raw = Vec::new();
    let mut texts = Vec::new();
    let mut unaligned = 0;
    for ex in &ds.pii.val {
        let Some(g) = gold_spans(ex) else {
            unaligned += 1;
            continue;
        };
        let (p, r) = route(&router, &ex.text)?;
        gold.push(g);
        pred.push(p);
        raw.push(r);
        texts.push(ex.text.as_str());
    }
    let (all, per) = score(&pred, &gold);
    let (p, r, f) = all.prf();
    eprintln!(
        "pii validation split: {} sentences ({unaligned} unaligned, skipped), {} gold entities: \
         F1 {f:.3} (P {p:.3} / R {r:.3})",
        texts.len(),
        all.gold
    );
    for (ty, c) in &per {
        let (p, r, f) = c.prf();
        eprintln!(
            "  {ty:<18} gold {:>3} pred {:>3}  F1 {f:.3} (P {p:.3} / R {r:.3})",
            c.gold, c.pred
        );
    }

    // Errors by kind, with a sample of each.
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    let mut shown: BTreeMap<String, usize> = BTreeMap::new();
    for (i, text) in texts.iter().enumerate() {
        for (kind, p, g) in classify_errors(&pred[i], &gold[i]) {
            let key = format!("{kind:?}");
            *kinds.entry(key.clone()).or_default() += 1;
            let n = shown.entry(key.clone()).or_default();
            if *n < args.samples {
                *n += 1;
                eprintln!(
                    "{key}: pred {} | gold {} | {text:?}",
                    p.map_or("-".into(), |s| snippet(text, &s)),
                    g.map_or("-".into(), |s| snippet(text, &s)),
                );
            }
        }
    }
    eprintln!("errors by kind: {kinds:?}");

    // Raw head entities (before threshold and form check), for the threshold's effect.
    let raw_counts = {
        let raw_spans: Vec<Vec<Span>> = raw
            .iter()
            .map(|r| {
                r.iter()
                    .map(|e| Span {
                        ty: e.entity_type.clone(),
                        start: e.start,
                        end: e.end,
                    })
                    .collect()
            })
            .collect();
        score(&raw_spans, &gold).0
    };
    let formed: Vec<Vec<Span>> = raw
        .iter()
        .zip(&texts)
        .map(|(r, t)| {
            r.iter()
                .filter(|e| has_its_form(e, t))
                .map(|e| Span {
                    ty: e.entity_type.clone(),
                    start: e.start,
                    end: e.end,
                })
                .collect()
        })
        .collect();
    let formed_counts = score(&formed, &gold).0;

    // Benign texts: the share with any entity acted on.
    let mut benign_rates = serde_json::Map::new();
    let chat_val: Vec<&str> = ds.chat_val.iter().map(|r| r.text.as_str()).collect();
    for (name, rows) in [
        (
            "benign_heldout_chat",
            ds.benign_heldout
                .iter()
                .filter(|r| r.kind == "chat")
                .map(|r| r.text.as_str())
                .collect::<Vec<_>>(),
        ),
        (
            "benign_heldout_safe_but_scary",
            ds.benign_heldout
                .iter()
                .filter(|r| r.kind == "safe_but_scary")
                .map(|r| r.text.as_str())
                .collect(),
        ),
        ("chat_style_validation", chat_val),
    ] {
        if rows.is_empty() {
            continue;
        }
        let mut with_entity = 0;
        let mut acted_on = 0;
        let mut by_type: BTreeMap<String, usize> = BTreeMap::new();
        let mut sample = Vec::new();
        for t in &rows {
            let (p, _) = route(&router, t)?;
            let mut types: Vec<&str> = p.iter().map(|s| s.ty.as_str()).collect();
            types.sort();
            types.dedup();
            for ty in types {
                *by_type.entry(ty.to_string()).or_default() += 1;
            }
            if p.iter()
                .any(|s| policy.action_for(&s.ty) != PiiAction::Allow)
            {
                acted_on += 1;
            }
            if !p.is_empty() {
                with_entity += 1;
                if sample.len() < args.samples {
                    sample.push(
                        p.iter()
                            .map(|s| snippet(t, s))
                            .collect::<Vec<_>>()
                            .join(", "),
                    );
                }
            }
        }
        let rate = with_entity as f64 / rows.len() as f64;
        eprintln!(
            "{name}: {with_entity}/{} texts with an entity ({:.1} %), {acted_on} masked or blocked \
             by the default policy: {sample:?}",
            rows.len(),
            100.0 * rate
        );
        benign_rates.insert(
            name.into(),
            json!({"n": rows.len(), "texts_with_entity": with_entity, "rate": rate,
                   "texts_with_entity_of_type": by_type,
                   "texts_masked_or_blocked_by_default_policy": acted_on,
                   "rate_masked_or_blocked_by_default_policy": acted_on as f64 / rows.len() as f64}),
        );
    }

    if let Some(path) = &args.dump {
        let mut rows: Vec<(&str, &str, Option<&Vec<Span>>)> = texts
            .iter()
            .zip(&gold)
            .map(|(t, g)| ("pii_val", *t, Some(g)))
            .collect();
        rows.extend(
            ds.benign_heldout
                .iter()
                .map(|r| ("benign_heldout", r.text.as_str(), None)),
        );
        // Training-side benign texts (the router's PII head was not trained on them): where a rule
        // against false positives may be checked without touching the held-out sets.
        let train_side = [
            ("benign_train", args.sets.benign_data.join("train.jsonl")),
            ("chat_train", args.sets.chat_data.join("train.jsonl")),
        ]
        .into_iter()
        .map(|(set, path)| Ok((set, texts_of(&path)?)))
        .collect::<Result<Vec<_>>>()?;
        for (set, list) in &train_side {
            rows.extend(list.iter().map(|t| (*set, t.as_str(), None)));
        }
        dump_tokens(path, &args.router_dir, &router, &rows)?;
        eprintln!("wrote {}", path.display());
    }

    let report = json!({
        "what": "PII entities through the router's inference path (Router::route_text: tokenizer, \
                 BIO decoding, pii.threshold, has_its_form), exact character span and type",
        "split": "the trainer's PII validation split (data::load -> ds.pii.val: Presidio synth v2 \
                  minus hold-out + generated_large, held out by text hash)",
        "router_dir": args.router_dir.display().to_string(),
        "threshold": (f64::from(threshold) * 1e4).round() / 1e4,
        "val": {
            "sentences": texts.len(),
            "unaligned_sentences_skipped": unaligned,
            "overall": all.json(),
            "per_type": per.iter().map(|(k, c)| (k.clone(), c.json())).collect::<BTreeMap<_, _>>(),
            "errors_by_kind": kinds,
            "head_only_no_threshold_no_form_check": raw_counts.json(),
            "form_check_no_threshold": formed_counts.json(),
        },
        "benign_texts_with_entity": benign_rates,
    });
    let out = metrics_path(&args);
    std::fs::write(&out, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn metrics_go_beside_the_router_evaluated_unless_told() {
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: EvalPiiArgs,
        }
        let parsed = |argv: &[&str]| Cli::try_parse_from(argv).expect("parses").args;
        let args = parsed(&["eval-pii", "--router-dir", "/tmp/candidate"]);
        assert_eq!(
            metrics_path(&args),
            PathBuf::from("/tmp/candidate/pii_metrics.json")
        );
        let args = parsed(&["eval-pii", "--out", "/tmp/m.json"]);
        assert_eq!(metrics_path(&args), PathBuf::from("/tmp/m.json"));
    }

    fn span(ty: &str, start: usize, end: usize) -> Span {
        Span {
            ty: ty.into(),
            start,
            end,
        }
    }

    #[test]
    fn words_align_with_their_text() {
        let words: Vec<String> = ["Zoë", "'", "s", "at", "#", "15", "."]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let at = word_char_spans("Zoë's at #15.", &words).unwrap();
        assert_eq!(
            at,
            vec![(0, 3), (3, 4), (4, 5), (6, 8), (9, 10), (10, 12), (12, 13)]
        );
        assert!(word_char_spans("Zoe", &["Zoë".to_string()]).is_none());
    }

    #[test]
    fn gold_tags_become_character_spans() {
        let ex = TokenExample {
            text: "Call  Ann Lee at 555".into(),
            words: ["Call", "Ann", "Lee", "at", "555"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            // O B-PERSON I-PERSON O B-PHONE_NUMBER
            tags: vec![0, 1, 2, 0, 11],
            source: "test",
        };
        assert_eq!(data::PII_ENTITIES[5], "PHONE_NUMBER");
        assert_eq!(
            gold_spans(&ex).unwrap(),
            vec![span("PERSON", 6, 13), span("PHONE_NUMBER", 17, 20)]
        );
    }

    #[test]
    fn scores_and_error_kinds() {
        let gold = vec![
            span("PERSON", 0, 5),
            span("LOCATION", 10, 15),
            span("STREET_ADDRESS", 20, 40),
            span("PHONE_NUMBER", 50, 55),
        ];
        let pred = vec![
            span("PERSON", 0, 5),
            span("ORGANIZATION", 10, 15),
            span("STREET_ADDRESS", 20, 28),
            span("STREET_ADDRESS", 30, 40),
            span("DATE_TIME", 60, 62),
        ];
        let (all, per) = score(std::slice::from_ref(&pred), std::slice::from_ref(&gold));
        assert_eq!((all.tp, all.pred, all.gold), (1, 5, 4));
        assert_eq!(per["PERSON"].prf(), (1.0, 1.0, 1.0));
        let kinds: Vec<ErrorKind> = classify_errors(&pred, &gold)
            .into_iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(
            kinds,
            vec![
                ErrorKind::Fragmented,
                ErrorKind::Missed,
                ErrorKind::Type,
                ErrorKind::Boundary,
                ErrorKind::Boundary,
                ErrorKind::Spurious
            ]
        );
    }
}
