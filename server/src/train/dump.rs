//! `switchyard train-lexical --dump-splits DIR`: writes the exact splits the trainer uses for one head,
//! with the shipped router's probabilities, so an outside experiment (say, a pretrained encoder's
//! embeddings and a linear model in Python) is measured on the same texts and fused with the same
//! router without reimplementing the split.
//!
//! `DIR/<head>.jsonl`, one object per text: `text`, `label` (index into `labels.json`), `source`, `split`
//! (`train`, `val`, `chat_validation` for the chat-style `validation.jsonl`, or `benign_heldout_<kind>`
//! for the jailbreak head), and for every split but `train`: `head` (the router head alone), `lexical`
//! (the lexical model's probabilities at its shipped scale, when the router has one; a joint model's
//! embedding share included) and `fused` (the head fused with the lexical model, as the shipped router
//! fuses them before the separate embedding signal), each in label order.

use std::io::Write;
use std::path::Path;

use anyhow::Result;
use serde_json::json;
use switchyard_router::{HeadRole, RouterModel, DEFAULT_MAX_INPUT_TOKENS};

use super::data::Dataset;
use super::lexical::{router_probs, score_texts, FeatureEncoder};

/// One text to write.
struct Row<'a> {
    text: &'a str,
    label: usize,
    source: &'a str,
    split: String,
}

/// Writes `dir/<head>.jsonl` and `dir/<head>_labels.json` for the head of `role` (domain or jailbreak).
pub fn dump_splits(
    ds: &Dataset,
    role: HeadRole,
    head: &str,
    labels: &[String],
    router_dir: &Path,
    dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let task = if role == HeadRole::Domain {
        &ds.domain
    } else {
        &ds.jailbreak
    };
    let mut rows: Vec<Row> = Vec::new();
    for (split, examples) in [("train", &task.train), ("val", &task.val)] {
        rows.extend(examples.iter().map(|e| Row {
            text: &e.text,
            label: e.label,
            source: e.source,
            split: split.to_string(),
        }));
    }
    for r in &ds.chat_val {
        let label = match role {
            HeadRole::Domain => r.domain,
            _ => Some(0),
        };
        if let Some(label) = label {
            rows.push(Row {
                text: &r.text,
                label,
                source: "chat_style",
                split: "chat_validation".into(),
            });
        }
    }
    if role == HeadRole::Jailbreak {
        rows.extend(ds.benign_heldout.iter().map(|r| Row {
            text: &r.text,
            label: 0,
            source: "benign_chat",
            split: format!("benign_heldout_{}", r.kind),
        }));
    }

    let load = || {
        RouterModel::load_dir(
            router_dir,
            &candle_core::Device::Cpu,
            candle_core::DType::F32,
            DEFAULT_MAX_INPUT_TOKENS,
        )
    };
    let shipped = load()?;
    let lexical = shipped.lexical_for(role, true).cloned();
    let alone = load()?.without_lexical();
    let scored: Vec<&str> = rows
        .iter()
        .filter(|r| r.split != "train")
        .map(|r| r.text)
        .collect();
    eprintln!("scoring {} held-out texts with the router", scored.len());
    let head_p = router_probs(&alone, role, labels, &scored)?;
    // The lexical model's probabilities (its label order), with a joint model's embedding share.
    let lexical_p: Option<Vec<Vec<f32>>> = match &lexical {
        Some(lex) => {
            let encoder = lex
                .embedding_features()
                .map(|e| FeatureEncoder::load(router_dir, e.scale))
                .transpose()?;
            let scores = score_texts(lex, encoder.as_ref(), &scored, "the held-out texts")?.0;
            Some(scores.iter().map(|s| lex.probabilities(s)).collect())
        }
        None => None,
    };

    let path = dir.join(format!("{head}.jsonl"));
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
    let mut k = 0;
    for r in &rows {
        let mut obj =
            json!({"text": r.text, "label": r.label, "source": r.source, "split": r.split});
        if r.split != "train" {
            obj["head"] = json!(head_p[k]);
            match (&lexical, &lexical_p) {
                (Some(lex), Some(p)) => {
                    let by_label: Vec<f32> = labels
                        .iter()
                        .map(|l| {
                            let i = lex.labels.iter().position(|x| x == l);
                            i.map_or(0.0, |i| p[k][i])
                        })
                        .collect();
                    obj["lexical"] = json!(by_label);
                    obj["fused"] = json!(lex.fuse(labels, &head_p[k], &p[k]));
                }
                _ => obj["fused"] = json!(head_p[k]),
            }
            k += 1;
        }
        writeln!(out, "{obj}")?;
    }
    out.flush()?;
    std::fs::write(
        dir.join(format!("{head}_labels.json")),
        serde_json::to_string(labels)?,
    )?;
    eprintln!("wrote {} rows to {}", rows.len(), path.display());
    Ok(())
}
