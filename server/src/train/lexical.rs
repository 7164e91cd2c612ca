//! `switchyard train-lexical`: fits the lexical signal (TF-IDF word 1–2-grams + one-vs-rest linear SVM,
//! the design's bag-of-words floor) on the router's domain training split, chooses how to fuse it with
//! the domain head (`weight`, `scale`) on the router's own validation split, reports every variant on
//! the held-out sets, and writes `lexical.json` + `lexical.safetensors` beside the router.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;
use switchyard_router::classifier::softmax;
use switchyard_router::lexical::LexicalModel;
use switchyard_router::{RouterModel, DEFAULT_MAX_INPUT_TOKENS};

use super::baseline::{LinearSvm, Tfidf};
use super::data;
use super::eval::argmax;

/// Options of `train-lexical`.
#[derive(Args, Debug)]
pub struct LexicalArgs {
    /// The shared data folder.
    #[arg(long, default_value = "../shared/data")]
    pub data: PathBuf,
    /// Chat-style data (train.jsonl is trained on, validation.jsonl only evaluated).
    #[arg(long, default_value = "router/data/chat_style")]
    pub chat_data: PathBuf,
    /// The router directory to fuse with (and write into).
    #[arg(long, default_value = "router/models/default")]
    pub router_dir: PathBuf,
    /// Seed of the SVM's coordinate order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Domain probabilities of the router alone, in `data::DOMAINS` order.
fn router_probs(model: &RouterModel, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(32) {
        let encoded = chunk
            .iter()
            .map(|t| model.encode(t))
            .collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<_> = encoded.iter().collect();
        for s in model.classify(&refs)? {
            let d = s.domain.context("the router has no domain head")?;
            let probs: BTreeMap<&str, f32> = d
                .probabilities
                .iter()
                .map(|(l, p)| (l.as_str(), *p))
                .collect();
            out.push(
                data::DOMAINS
                    .iter()
                    .map(|l| probs.get(l).copied().unwrap_or(0.0))
                    .collect(),
            );
        }
    }
    Ok(out)
}

/// (gold label, router probabilities, lexical scores) of one text.
type Row<'a> = (usize, &'a Vec<f32>, &'a Vec<f32>);

/// Accuracy of `predict` over examples.
fn accuracy(rows: &[Row], predict: impl Fn(&[f32], &[f32]) -> usize) -> f64 {
    let ok = rows.iter().filter(|(y, r, l)| predict(r, l) == *y).count();
    ok as f64 / rows.len().max(1) as f64
}

/// Runs `train-lexical`.
pub fn run(args: LexicalArgs) -> Result<()> {
    let chat = args.chat_data.exists().then_some(args.chat_data.as_path());
    let ds = data::load(&args.data, chat, 3000)?;
    let classes = data::DOMAINS.len();
    eprintln!(
        "fitting TF-IDF + linear SVM on {} domain texts",
        ds.domain.train.len()
    );
    let tfidf = Tfidf::fit(ds.domain.train.iter().map(|e| e.text.as_str()));
    let x: Vec<_> = ds
        .domain
        .train
        .iter()
        .map(|e| tfidf.transform(&e.text))
        .collect();
    let y: Vec<usize> = ds.domain.train.iter().map(|e| e.label).collect();
    let svm = LinearSvm::train(&x, &y, classes, tfidf.dim(), args.seed);
    let labels: Vec<String> = data::DOMAINS.iter().map(|s| s.to_string()).collect();
    let mut lexical = LexicalModel::new("domain", labels, tfidf, svm.into_weights(), 0.0, 1.0);

    let router = RouterModel::load_dir(
        &args.router_dir,
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
        DEFAULT_MAX_INPUT_TOKENS,
    )?
    .without_lexical();
    // (gold, router probabilities, lexical scores) for the validation split and the chat-style set.
    let val_texts: Vec<&str> = ds.domain.val.iter().map(|e| e.text.as_str()).collect();
    let chat_rows: Vec<(&str, usize)> = ds
        .chat_val
        .iter()
        .filter_map(|r| r.domain.map(|d| (r.text.as_str(), d)))
        .collect();
    let chat_texts: Vec<&str> = chat_rows.iter().map(|r| r.0).collect();
    eprintln!(
        "scoring {} validation and {} chat-style texts",
        val_texts.len(),
        chat_texts.len()
    );
    let val_router = router_probs(&router, &val_texts)?;
    let chat_router = router_probs(&router, &chat_texts)?;
    let val_lex: Vec<Vec<f32>> = val_texts.iter().map(|t| lexical.scores(t)).collect();
    let chat_lex: Vec<Vec<f32>> = chat_texts.iter().map(|t| lexical.scores(t)).collect();
    let val: Vec<Row> = ds
        .domain
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

    let fused = |w: f32, s: f32| {
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
    };
    // Choose weight and scale on the router's own validation split only.
    let mut best = (0.0f32, 1.0f32, accuracy(&val, fused(0.0, 1.0)));
    for wi in 1..=10 {
        for s in [0.5f32, 1.0, 2.0, 4.0, 8.0] {
            let w = wi as f32 / 10.0;
            let a = accuracy(&val, fused(w, s));
            if a > best.2 + 1e-9 {
                best = (w, s, a);
            }
        }
    }
    lexical.weight = best.0;
    lexical.scale = best.1;

    let subset = |srcs: &[&str]| -> Vec<Row> {
        ds.domain
            .val
            .iter()
            .zip(&val)
            .filter(|(e, _)| srcs.contains(&e.source))
            .map(|(_, r)| *r)
            .collect()
    };
    let groups: Vec<(&str, Vec<Row>)> = vec![
        ("validation split (all)", val.clone()),
        ("MMLU-Pro questions", subset(&["mmlu_pro"])),
        (
            "exam questions (MMLU-Pro + MMLU)",
            subset(&["mmlu_pro", "mmlu"]),
        ),
        ("chat-style, own split", subset(&["chat_style"])),
        ("chat-style validation.jsonl", chat_eval.clone()),
    ];
    let mut table = String::from(
        "| domain accuracy on | n | router | TF-IDF + SVM | fused |\n|---|---|---|---|---|\n",
    );
    let mut metrics = serde_json::Map::new();
    for (name, rows) in &groups {
        let r = accuracy(rows, |r, _| argmax(r));
        let l = accuracy(rows, |_, l| argmax(l));
        let f = accuracy(rows, fused(best.0, best.1));
        table.push_str(&format!(
            "| {name} | {} | {r:.3} | {l:.3} | {f:.3} |\n",
            rows.len()
        ));
        metrics.insert(
            name.to_string(),
            json!({"n": rows.len(), "router": r, "lexical": l, "fused": f}),
        );
    }
    println!(
        "fusion chosen on the validation split: weight {} scale {}\n\n{table}",
        best.0, best.1
    );
    lexical.save(&args.router_dir)?;
    std::fs::write(
        args.router_dir.join("lexical_metrics.json"),
        serde_json::to_string_pretty(&json!({
            "weight": best.0, "scale": best.1, "features": lexical.tfidf().dim(),
            "train_texts": ds.domain.train.len(), "accuracy": metrics,
            "command": "switchyard train-lexical --data ../shared/data --router-dir router/models/default",
        }))?,
    )?;
    eprintln!(
        "wrote {}/lexical.json, lexical.safetensors, lexical_metrics.json",
        args.router_dir.display()
    );
    Ok(())
}
