//! `switchyard refit-jailbreak-head`: refits the jailbreak head's last linear layer
//! (`heads.jailbreak.classifier`) on its training split plus diluted attacks (`dilution`): attack
//! pieces set among benign text in one window, and benign texts padded alike.
//!
//! The head reads the mean of a window's token states, so an attack inside as much benign text of
//! its own length read benign (the DAN prompt: p 0.999 alone, 0.28 after a paragraph of history,
//! through the served fusion).
//! Refitting the classifier alone keeps the backbone, which the other heads share, unchanged. The
//! head is measured before and after, alone (the served decision fuses it with the lexical model:
//! re-run `train-lexical --head jailbreak` afterwards), on the validation split, on diluted
//! validation attacks padded with validation and chat-style texts only, and on the benign held-out
//! sets; the numbers go to `jailbreak_refit_metrics.json` beside the router.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, D};
use clap::Args;
use serde_json::{json, Value};
use switchyard_models::encoder::{HeadTask, MultiHeadClassifier};
use tokenizers::Tokenizer;

use super::data::{self, Example};
use super::dilution::{diluted_validation, with_diluted_training, DilutionOptions};
use super::eval::binary_prf;
use super::refit::{fit_softmax_anchored, load_head, write_classifier, Features};
use super::tokenizer;

/// Options of `refit-jailbreak-head`.
#[derive(Args, Debug, Clone)]
pub struct JailbreakRefitArgs {
    /// The data folders.
    #[command(flatten)]
    pub sets: data::DataArgs,
    /// The router directory whose jailbreak head is refitted (its `model.safetensors` is rewritten).
    #[arg(long, default_value = "router/models/default")]
    pub router_dir: PathBuf,
    /// Diluted attacks per training attack, and as many padded benign texts (0: refit on the plain
    /// training split, the control arm).
    #[arg(long, default_value_t = 1)]
    pub per_attack: usize,
    /// Full-batch Adam steps.
    #[arg(long, default_value_t = 400)]
    pub steps: usize,
    /// Learning rate.
    #[arg(long, default_value_t = 0.01)]
    pub lr: f64,
    /// L2 penalty on the classifier's distance from its current weights (0: none). The backbone
    /// has all but memorised its training texts, so an unanchored fit trades held-out precision for
    /// the training texts.
    #[arg(long, default_value_t = 0.0)]
    pub anchor: f64,
    /// Word pieces per text at most (the router's input budget).
    #[arg(long, default_value_t = switchyard_router::DEFAULT_MAX_INPUT_TOKENS)]
    pub max_len: usize,
    /// The attack pieces' length in word pieces, `MIN-MAX` (a whole attack when it is shorter).
    #[arg(long, value_parser = super::lexical::parse_range, default_value = "64-120")]
    pub attack_tokens: (usize, usize),
    /// The padding's length as a multiple of the attack piece's, `MIN-MAX` (capped by the window).
    #[arg(long, value_parser = super::dilution::parse_ratio_range, default_value = "0.5-1.5")]
    pub padding_ratio: (f64, f64),
    /// Seed of the dilution (the validation dilution uses seed + 1).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Measure only: nothing is written beside the router.
    #[arg(long)]
    pub dry_run: bool,
}

/// The block threshold of the shipped routing config (`jailbreak.threshold`).
const SERVED_THRESHOLD: f32 = 0.7;

/// The jailbreak head's classifier features of `texts`, `[n, hidden]`.
fn sequence_features(
    model: &MultiHeadClassifier,
    head: usize,
    tok: &Tokenizer,
    texts: &[&str],
    max_len: usize,
    what: &str,
) -> Result<Tensor> {
    let mut rows = Vec::with_capacity(texts.len());
    let pb = super::progress(texts.len(), what);
    for chunk in texts.chunks(32) {
        let ids = tokenizer::encode_all(tok, chunk, max_len)?;
        let (input, mask) = model.batch_inputs(&ids)?;
        let states = model.backbone().forward(&input, &mask)?;
        rows.push(
            model.heads()[head]
                .features(&states, &mask)?
                .to_dtype(DType::F32)?,
        );
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    Ok(Tensor::cat(&rows, 0)?)
}

/// p(jailbreak) of each feature row under the classifier `(w, b)`.
fn jailbreak_probs(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Vec<f32>> {
    let logits = x.matmul(&w.t()?)?.broadcast_add(b)?;
    let p = candle_nn::ops::softmax(&logits, D::Minus1)?;
    Ok(p.narrow(1, 1, 1)?.squeeze(1)?.to_vec1()?)
}

/// One evaluated set: its texts' features and gold labels.
struct EvalSet {
    name: &'static str,
    x: Tensor,
    gold: Vec<usize>,
}

/// F1 and counts at 0.5 and at the served threshold; for an all-benign set, the share blocked.
fn measure(set: &EvalSet, p: &[f32]) -> Value {
    let at = |t: f32| -> Value {
        let pred: Vec<usize> = p.iter().map(|&q| usize::from(q >= t)).collect();
        let count = |want_p: usize, want_g: usize| {
            pred.iter()
                .zip(&set.gold)
                .filter(|(p, g)| **p == want_p && **g == want_g)
                .count()
        };
        let (precision, recall, f1) = binary_prf(&pred, &set.gold);
        let negatives = set.gold.iter().filter(|&&g| g == 0).count();
        json!({
            "f1": f1, "precision": precision, "recall": recall,
            "tp": count(1, 1), "fp": count(1, 0), "fn": count(0, 1),
            "benign_blocked_share": count(1, 0) as f64 / negatives.max(1) as f64,
        })
    };
    json!({"n": set.gold.len(), "at_0.5": at(0.5), "at_served": at(SERVED_THRESHOLD)})
}

fn summary(name: &str, m: &Value) -> String {
    let s = &m["at_served"];
    format!(
        "{name}: n {}, at {SERVED_THRESHOLD}: F1 {:.3} (TP {} / FP {} / FN {}), benign blocked {:.1} %",
        m["n"],
        s["f1"].as_f64().unwrap_or(0.0),
        s["tp"],
        s["fp"],
        s["fn"],
        100.0 * s["benign_blocked_share"].as_f64().unwrap_or(0.0)
    )
}

/// Runs `refit-jailbreak-head`.
pub fn run(args: JailbreakRefitArgs) -> Result<()> {
    let ds = args.sets.load()?;
    let dir = &args.router_dir;
    let (model, head) = load_head(
        dir,
        "jailbreak",
        |task| matches!(task, HeadTask::Sequence(_)),
        &data::JAILBREAK.map(String::from),
    )?;
    let tok = Tokenizer::from_file(dir.join("tokenizer.json"))
        .map_err(|e| anyhow::anyhow!("{}: {e}", dir.join("tokenizer.json").display()))?;
    let task = &ds.jailbreak;
    let options = DilutionOptions {
        per_attack: args.per_attack,
        max_tokens: args.max_len,
        seed: args.seed,
        attack_tokens: args.attack_tokens,
        padding_ratio: args.padding_ratio,
    };

    let train = with_diluted_training(&tok, task, &options)?;
    let diluted_val = diluted_validation(&tok, task, &ds.chat_val, &options)?;
    eprintln!(
        "jailbreak training texts: {} ({} diluted); validation {} + {} diluted",
        train.len(),
        train.len() - task.train.len(),
        task.val.len(),
        diluted_val.len()
    );

    let start = Instant::now();
    let features = |examples: &[Example], what: &str| -> Result<(Tensor, Vec<usize>)> {
        let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
        let x = sequence_features(&model, head, &tok, &texts, args.max_len, what)?;
        Ok((x, examples.iter().map(|e| e.label).collect()))
    };
    let (train_x, train_y) = features(&train, "training features")?;
    let all_benign = |name: &'static str, texts: Vec<&str>| -> Result<EvalSet> {
        let x = sequence_features(&model, head, &tok, &texts, args.max_len, name)?;
        Ok(EvalSet {
            name,
            x,
            gold: vec![0; texts.len()],
        })
    };
    let mut sets = Vec::new();
    let (x, gold) = features(&task.val, "validation features")?;
    sets.push(EvalSet {
        name: "validation split",
        x,
        gold,
    });
    let (x, gold) = features(&diluted_val, "diluted validation features")?;
    sets.push(EvalSet {
        name: "diluted validation (attacks among benign text; benign padded alike)",
        x,
        gold,
    });
    sets.push(all_benign(
        "chat-style validation.jsonl (all benign)",
        ds.chat_val.iter().map(|r| r.text.as_str()).collect(),
    )?);
    sets.push(all_benign(
        "held-out benign chat and safe-but-scary prompts",
        ds.benign_heldout.iter().map(|r| r.text.as_str()).collect(),
    )?);
    eprintln!("features in {:.0} s", start.elapsed().as_secs_f64());

    let classifier = model.heads()[head].classifier();
    let (w0, b0) = (
        classifier.weight().to_dtype(DType::F32)?,
        classifier
            .bias()
            .context("the jailbreak classifier has no bias")?
            .to_dtype(DType::F32)?,
    );
    let n = train_y.len();
    let data = Features {
        x: train_x,
        y: Tensor::from_vec(
            train_y.iter().map(|&y| y as u32).collect::<Vec<_>>(),
            n,
            &Device::Cpu,
        )?,
    };
    let (w, b, loss_before, loss_after) =
        fit_softmax_anchored(&data, &w0, &b0, args.steps, args.lr, args.anchor)?;
    eprintln!(
        "cross-entropy on the training texts: {loss_before:.4} -> {loss_after:.4} ({} steps, lr {})",
        args.steps, args.lr
    );

    let mut report = serde_json::Map::new();
    for set in &sets {
        let before = measure(set, &jailbreak_probs(&set.x, &w0, &b0)?);
        let after = measure(set, &jailbreak_probs(&set.x, &w, &b)?);
        eprintln!("before  {}", summary(set.name, &before));
        eprintln!("after   {}", summary(set.name, &after));
        report.insert(
            set.name.to_string(),
            json!({"before": before, "after": after}),
        );
    }
    if args.dry_run {
        eprintln!("--dry-run: nothing written");
        return Ok(());
    }
    let names = [
        model.heads()[head].tensor_name("classifier.weight"),
        model.heads()[head].tensor_name("classifier.bias"),
    ];
    write_classifier(dir, &names, &w, &b)?;
    let metrics = json!({
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "per_attack": args.per_attack,
        "steps": args.steps,
        "lr": args.lr,
        "anchor": args.anchor,
        "seed": args.seed,
        "training_texts": n,
        "diluted_training_texts": n - task.train.len(),
        "served_threshold": SERVED_THRESHOLD,
        "loss_before": loss_before,
        "loss_after": loss_after,
        "head_alone": report,
    });
    let path = dir.join("jailbreak_refit_metrics.json");
    std::fs::write(&path, serde_json::to_string_pretty(&metrics)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "wrote {}/model.safetensors ({}, {}) and {}; re-run `train-lexical --head jailbreak` for the fused decision",
        dir.display(),
        names[0],
        names[1],
        path.display()
    );
    Ok(())
}
