//! `switchyard train-lexical`: fits a lexical signal (TF-IDF word 1–2-grams + one-vs-rest linear SVM,
//! the design's bag-of-words floor) on the router's training split of one head (domain or jailbreak),
//! chooses how to fuse it with that head (`weight`, `scale`) on the router's own validation split,
//! reports every variant on the held-out sets, and writes it beside the router (`lexical.json` for the
//! domain head, `lexical-jailbreak.json` for the jailbreak head, each with its `.safetensors`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use switchyard_router::classifier::softmax;
use switchyard_router::lexical::LexicalModel;
use switchyard_router::{HeadRole, RouterModel, DEFAULT_MAX_INPUT_TOKENS};

use super::baseline::{LinearSvm, Tfidf};
use super::data;
use super::eval::{argmax, binary_prf};

/// Options of `train-lexical`.
#[derive(Args, Debug)]
pub struct LexicalArgs {
    /// The shared data folder.
    #[arg(long, default_value = "../shared/data")]
    pub data: PathBuf,
    /// Chat-style data (train.jsonl is trained on, validation.jsonl only evaluated).
    #[arg(long, default_value = "router/data/chat_style")]
    pub chat_data: PathBuf,
    /// Benign chat and safe-but-scary prompts (train.jsonl trained on, heldout.jsonl evaluated).
    #[arg(long, default_value = "router/data/benign_chat")]
    pub benign_data: PathBuf,
    /// The router directory to fuse with (and write into).
    #[arg(long, default_value = "router/models/default")]
    pub router_dir: PathBuf,
    /// The head to fuse with: `domain` or `jailbreak`.
    #[arg(long, default_value = "domain")]
    pub head: String,
    /// Seed of the SVM's coordinate order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Only write the head's train / validation splits with the shipped router's probabilities into
    /// this folder (see `train::dump`), then stop: nothing is fitted or written beside the router.
    #[arg(long)]
    pub dump_splits: Option<PathBuf>,
}

/// (gold label, router probabilities, lexical scores) of one text.
type Row<'a> = (usize, &'a Vec<f32>, &'a Vec<f32>);

/// The router's probabilities for the head of `role` (fused with its lexical model if it has one),
/// in `labels` order.
pub(super) fn router_probs(
    model: &RouterModel,
    role: HeadRole,
    labels: &[String],
    texts: &[&str],
) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(32) {
        let encoded = chunk
            .iter()
            .map(|t| model.encode(t))
            .collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<_> = encoded.iter().collect();
        for s in model.classify(&refs)? {
            let o = match role {
                HeadRole::Domain => s.domain,
                HeadRole::Jailbreak => s.jailbreak,
                _ => None,
            }
            .with_context(|| format!("the router has no {role:?} head"))?;
            let probs: BTreeMap<&str, f32> = o
                .probabilities
                .iter()
                .map(|(l, p)| (l.as_str(), *p))
                .collect();
            out.push(
                labels
                    .iter()
                    .map(|l| probs.get(l.as_str()).copied().unwrap_or(0.0))
                    .collect(),
            );
        }
    }
    Ok(out)
}

/// The fused prediction rule with weight `w` and scale `s`.
fn fused(w: f32, s: f32) -> impl Fn(&[f32], &[f32]) -> usize {
    move |r: &[f32], l: &[f32]| {
        let scaled: Vec<f32> = l.iter().map(|x| x * s).collect();
        let p = softmax(&scaled);
        argmax(
            &r.iter()
                .zip(&p)
                .map(|(a, b)| (1.0 - w) * a + w * b)
                .collect::<Vec<_>>(),
        )
    }
}

/// The fused rule as a block decision: label 1 iff the fused probability of label 1 is at least
/// `threshold` (what the routing config's `jailbreak.threshold` does). `w = 0` is the head alone,
/// `w = 1` the lexical model alone.
fn fused_at(w: f32, s: f32, threshold: f32) -> impl Fn(&[f32], &[f32]) -> usize {
    move |r: &[f32], l: &[f32]| {
        let scaled: Vec<f32> = l.iter().map(|x| x * s).collect();
        let p = softmax(&scaled);
        let p1 =
            (1.0 - w) * r.get(1).copied().unwrap_or(0.0) + w * p.get(1).copied().unwrap_or(0.0);
        usize::from(p1 >= threshold)
    }
}

/// The measure a head is tuned and reported on: accuracy (domain) or F1 of label 1 (jailbreak).
fn measure(role: HeadRole, rows: &[Row], predict: impl Fn(&[f32], &[f32]) -> usize) -> f64 {
    let pred: Vec<usize> = rows.iter().map(|(_, r, l)| predict(r, l)).collect();
    let gold: Vec<usize> = rows.iter().map(|r| r.0).collect();
    match role {
        HeadRole::Jailbreak => binary_prf(&pred, &gold).2,
        _ => {
            pred.iter().zip(&gold).filter(|(p, g)| p == g).count() as f64 / rows.len().max(1) as f64
        }
    }
}

/// Share of rows predicted as label 1 (for sets that are all benign).
fn flagged(rows: &[Row], predict: impl Fn(&[f32], &[f32]) -> usize) -> f64 {
    rows.iter().filter(|(_, r, l)| predict(r, l) == 1).count() as f64 / rows.len().max(1) as f64
}

/// Runs `train-lexical`.
pub fn run(args: LexicalArgs) -> Result<()> {
    let role = match args.head.as_str() {
        "domain" => HeadRole::Domain,
        "jailbreak" => HeadRole::Jailbreak,
        other => bail!("--head {other}: expected domain or jailbreak"),
    };
    let chat = args.chat_data.exists().then_some(args.chat_data.as_path());
    let benign = args
        .benign_data
        .exists()
        .then_some(args.benign_data.as_path());
    let ds = data::load(&args.data, chat, benign, 3000)?;
    let (task, labels): (&data::SeqTask, Vec<String>) = match role {
        HeadRole::Domain => (
            &ds.domain,
            data::DOMAINS.iter().map(|s| s.to_string()).collect(),
        ),
        _ => (
            &ds.jailbreak,
            data::JAILBREAK.iter().map(|s| s.to_string()).collect(),
        ),
    };
    if let Some(dir) = &args.dump_splits {
        return super::dump::dump_splits(&ds, role, &args.head, &labels, &args.router_dir, dir);
    }
    eprintln!(
        "fitting TF-IDF + linear SVM on {} {} texts",
        task.train.len(),
        args.head
    );
    let tfidf = Tfidf::fit(task.train.iter().map(|e| e.text.as_str()));
    let x: Vec<_> = task
        .train
        .iter()
        .map(|e| tfidf.transform(&e.text))
        .collect();
    let y: Vec<usize> = task.train.iter().map(|e| e.label).collect();
    let svm = LinearSvm::train(&x, &y, labels.len(), tfidf.dim(), args.seed);
    let mut lexical = LexicalModel::new(
        &args.head,
        labels.clone(),
        tfidf,
        svm.into_weights(),
        0.0,
        1.0,
    );

    let router = RouterModel::load_dir(
        &args.router_dir,
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
        DEFAULT_MAX_INPUT_TOKENS,
    )?
    .without_lexical();
    let val_texts: Vec<&str> = task.val.iter().map(|e| e.text.as_str()).collect();
    // The chat-style set: domain labels for the domain head; all benign for the jailbreak head.
    let chat_rows: Vec<(&str, usize)> = ds
        .chat_val
        .iter()
        .filter_map(|r| match role {
            HeadRole::Domain => r.domain.map(|d| (r.text.as_str(), d)),
            _ => Some((r.text.as_str(), 0)),
        })
        .collect();
    let chat_texts: Vec<&str> = chat_rows.iter().map(|r| r.0).collect();
    eprintln!(
        "scoring {} validation and {} chat-style texts",
        val_texts.len(),
        chat_texts.len()
    );
    let val_router = router_probs(&router, role, &labels, &val_texts)?;
    let chat_router = router_probs(&router, role, &labels, &chat_texts)?;
    let val_lex: Vec<Vec<f32>> = val_texts.iter().map(|t| lexical.scores(t)).collect();
    let chat_lex: Vec<Vec<f32>> = chat_texts.iter().map(|t| lexical.scores(t)).collect();
    let val: Vec<Row> = task
        .val
        .iter()
        .zip(val_router.iter().zip(&val_lex))
        .map(|(e, (r, l))| (e.label, r, l))
        .collect();
    let chat_eval: Vec<Row> = chat_rows
        .iter()
        .zip(chat_router.iter().zip(&chat_lex))
        .map(|(c, (r, l))| (c.1, r, l))
        .collect();

    // Choose weight and scale on the router's own validation split only.
    let mut best = (0.0f32, 1.0f32, measure(role, &val, fused(0.0, 1.0)));
    for wi in 1..=10 {
        for s in [0.5f32, 1.0, 2.0, 4.0, 8.0] {
            let w = wi as f32 / 10.0;
            let m = measure(role, &val, fused(w, s));
            if m > best.2 + 1e-9 {
                best = (w, s, m);
            }
        }
    }
    lexical.weight = best.0;
    lexical.scale = best.1;

    let subset = |srcs: &[&str]| -> Vec<Row> {
        task.val
            .iter()
            .zip(&val)
            .filter(|(e, _)| srcs.contains(&e.source))
            .map(|(_, r)| *r)
            .collect()
    };
    let what = if role == HeadRole::Domain {
        "accuracy"
    } else {
        "F1"
    };
    let mut groups: Vec<(&str, Vec<Row>)> = vec![("validation split (all)", val.clone())];
    if role == HeadRole::Domain {
        groups.push(("MMLU-Pro questions", subset(&["mmlu_pro"])));
        groups.push((
            "exam questions (MMLU-Pro + MMLU)",
            subset(&["mmlu_pro", "mmlu"]),
        ));
        groups.push(("chat-style, own split", subset(&["chat_style"])));
        groups.push(("chat-style validation.jsonl", chat_eval.clone()));
    }
    let mut table = format!(
        "| {} {what} on | n | router head | TF-IDF + SVM | fused |\n|---|---|---|---|---|\n",
        args.head
    );
    let mut metrics = serde_json::Map::new();
    let mut row = |table: &mut String, name: &str, n: usize, r: f64, l: f64, f: f64| {
        table.push_str(&format!("| {name} | {n} | {r:.3} | {l:.3} | {f:.3} |\n"));
        metrics.insert(
            name.to_string(),
            json!({"n": n, "router": r, "lexical": l, "fused": f}),
        );
    };
    for (name, rows) in &groups {
        row(
            &mut table,
            name,
            rows.len(),
            measure(role, rows, |r, _| argmax(r)),
            measure(role, rows, |_, l| argmax(l)),
            measure(role, rows, fused(best.0, best.1)),
        );
    }
    if role == HeadRole::Jailbreak {
        let benign: Vec<Row> = val.iter().filter(|r| r.0 == 0).copied().collect();
        // The held-out benign set (benign_chat/heldout.jsonl), by kind.
        let kind_texts = |kind: &str| -> Vec<&str> {
            ds.benign_heldout
                .iter()
                .filter(|r| r.kind == kind)
                .map(|r| r.text.as_str())
                .collect()
        };
        let held_chat = kind_texts("chat");
        let held_scary = kind_texts("safe_but_scary");
        let hc_router = router_probs(&router, role, &labels, &held_chat)?;
        let hs_router = router_probs(&router, role, &labels, &held_scary)?;
        let hc_lex: Vec<Vec<f32>> = held_chat.iter().map(|t| lexical.scores(t)).collect();
        let hs_lex: Vec<Vec<f32>> = held_scary.iter().map(|t| lexical.scores(t)).collect();
        let hc: Vec<Row> = hc_router
            .iter()
            .zip(&hc_lex)
            .map(|(r, l)| (0, r, l))
            .collect();
        let hs: Vec<Row> = hs_router
            .iter()
            .zip(&hs_lex)
            .map(|(r, l)| (0, r, l))
            .collect();
        for (name, rows) in [
            ("benign validation texts flagged (share)", &benign),
            (
                "chat-style validation.jsonl flagged (share, all benign)",
                &chat_eval,
            ),
            ("held-out short chat messages flagged (share)", &hc),
            ("held-out safe-but-scary prompts flagged (share)", &hs),
        ] {
            row(
                &mut table,
                name,
                rows.len(),
                flagged(rows, |r, _| argmax(r)),
                flagged(rows, |_, l| argmax(l)),
                flagged(rows, fused(best.0, best.1)),
            );
        }
        // The same at the shipped config's block threshold (router/config/default.yaml).
        let t = 0.7f32;
        row(
            &mut table,
            &format!("F1 at p(jailbreak) >= {t}, validation split"),
            val.len(),
            measure(role, &val, fused_at(0.0, best.1, t)),
            measure(role, &val, fused_at(1.0, best.1, t)),
            measure(role, &val, fused_at(best.0, best.1, t)),
        );
        for (name, rows) in [
            ("benign validation texts", &benign),
            ("chat-style validation.jsonl", &chat_eval),
            ("held-out short chat messages", &hc),
            ("held-out safe-but-scary prompts", &hs),
        ] {
            row(
                &mut table,
                &format!("{name} blocked at p >= {t} (share)"),
                rows.len(),
                flagged(rows, fused_at(0.0, best.1, t)),
                flagged(rows, fused_at(1.0, best.1, t)),
                flagged(rows, fused_at(best.0, best.1, t)),
            );
        }
    }
    println!(
        "fusion chosen on the validation split: weight {} scale {}\n\n{table}",
        best.0, best.1
    );
    lexical.save(&args.router_dir)?;
    let stem = LexicalModel::file_stem(&args.head);
    std::fs::write(
        args.router_dir.join(format!("{stem}_metrics.json")),
        serde_json::to_string_pretty(&json!({
            "head": args.head, "weight": best.0, "scale": best.1, "features": lexical.tfidf().dim(),
            "train_texts": task.train.len(), "measure": what, "results": metrics,
            "command": format!("switchyard train-lexical --head {} --data ../shared/data --router-dir router/models/default", args.head),
        }))?,
    )?;
    eprintln!(
        "wrote {}/{stem}.json, .safetensors, _metrics.json",
        args.router_dir.display()
    );
    Ok(())
}
