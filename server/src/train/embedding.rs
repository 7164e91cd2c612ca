//! `switchyard train-embedding`: the router's embedding signal. Embeds the domain head's training split
//! with a pretrained sentence encoder (all-MiniLM-L6-v2 from the model cache, as the router runs it),
//! fits a multinomial logistic regression on the embeddings ([`super::logreg`]; the chat-style rows,
//! a tenth of the split, can weigh more), chooses the chat-style weight and how to fuse the head after
//! the shipped head + lexical distribution (`weight`, `scale`) on the router's own validation split by
//! its balanced accuracy (exam and chat-style questions equally), reports every variant on the held-out sets and writes `embedding.json` +
//! `embedding.safetensors` + `embedding_metrics.json` beside the router.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use switchyard_router::classifier::softmax;
use switchyard_router::embedding::{Embedder, EmbeddingHead, DEFAULT_ENCODER};
use switchyard_router::{HeadRole, RouterModel, DEFAULT_MAX_INPUT_TOKENS};

use super::data;
use super::eval::argmax;
use super::lexical::router_probs;
use super::logreg::{self, LogRegOptions};

/// Options of `train-embedding`.
#[derive(Args, Debug)]
pub struct EmbeddingArgs {
    /// The data folders.
    #[command(flatten)]
    pub sets: data::DataArgs,
    /// The router directory to fuse with (and write into).
    #[arg(long, default_value = "router/models/default")]
    pub router_dir: PathBuf,
    /// The encoder directory (default: fetch all-MiniLM-L6-v2 into the model cache, as `fetch-model`).
    #[arg(long)]
    pub encoder: Option<PathBuf>,
    /// Token budget of the encoder's input.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Use only the encoder's first N layers (cheaper; the router then does too). Default: all.
    #[arg(long)]
    pub layers: Option<usize>,
    /// Hold the encoder's layer weights in f32 instead of Q8_0 (slower; the router then does too).
    #[arg(long)]
    pub f32: bool,
    /// Inverse L2 strength, as scikit-learn's `C` (penalty `1 / (C · n)` on the mean loss).
    #[arg(long, default_value_t = 4.0)]
    pub c: f32,
    /// Weights of the chat-style training rows to try (the rest weigh 1); the one with the best balanced
    /// validation accuracy is kept.
    #[arg(long, value_delimiter = ',', default_value = "1,3,10")]
    pub chat_weights: Vec<f32>,
    /// Full-batch Adam steps.
    #[arg(long, default_value_t = 400)]
    pub steps: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 0.05)]
    pub lr: f32,
    /// How the chat-style row weight, fusion weight and scale are chosen on the validation split.
    #[arg(long, value_enum, default_value_t = Selection::Balanced)]
    pub select: Selection,
}

/// The validation objective of `train-embedding`'s choices, over the router's own validation split.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    /// The mean of the exam questions' and the chat-style questions' accuracy.
    Balanced,
    /// The smaller margin above the design's targets, exam accuracy 0.85 and chat-style accuracy
    /// 0.75 (both met if possible, then as far above them as the weaker one allows).
    Targets,
}

impl Selection {
    fn score(self, exam: f64, chat: f64) -> f64 {
        match self {
            Selection::Balanced => (exam + chat) / 2.0,
            Selection::Targets => (exam - 0.85).min(chat - 0.75),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Selection::Balanced => "balanced accuracy on the validation split: mean of its exam questions' and its chat-style questions' accuracy",
            Selection::Targets => "the smaller margin above the targets on the validation split: min(exam accuracy - 0.85, chat-style accuracy - 0.75)",
        }
    }
}

/// Embeds texts in batches of similar length (fewer wasted attention rows).
pub(super) fn embed_all(embedder: &Embedder, texts: &[&str], what: &str) -> Result<Vec<Vec<f32>>> {
    let ids = texts
        .iter()
        .map(|t| embedder.encode(t))
        .collect::<Result<Vec<_>, _>>()?;
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| ids[i].len());
    let pb = ProgressBar::new(texts.len() as u64).with_style(
        ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_message(format!("embedding {what}"));
    let mut out = vec![Vec::new(); ids.len()];
    for chunk in order.chunks(32) {
        let batch: Vec<&[u32]> = chunk.iter().map(|&i| ids[i].as_slice()).collect();
        for (&i, e) in chunk.iter().zip(embedder.embed(&batch)?) {
            out[i] = e;
        }
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    Ok(out)
}

/// (gold, head + lexical as shipped, head alone, lexical alone, embedding logits) of one text.
struct Row<'a> {
    gold: usize,
    shipped: &'a [f32],
    head: &'a [f32],
    lexical: &'a [f32],
    z: &'a [f32],
}

/// One fitted head: (chat-style row weight, weights, fusion weight, scale, balanced validation
/// accuracy, training loss).
type Candidate = (f32, Vec<Vec<f32>>, f32, f32, f64, f32);

fn fused(r: &Row, w: f32, s: f32) -> usize {
    let scaled: Vec<f32> = r.z.iter().map(|v| v * s).collect();
    let p = softmax(&scaled);
    argmax(
        &r.shipped
            .iter()
            .zip(&p)
            .map(|(a, b)| (1.0 - w) * a + w * b)
            .collect::<Vec<_>>(),
    )
}

fn accuracy<'a>(
    rows: impl Iterator<Item = &'a Row<'a>>,
    predict: impl Fn(&Row) -> usize,
) -> (usize, f64) {
    let (mut n, mut ok) = (0usize, 0usize);
    for r in rows {
        n += 1;
        ok += usize::from(predict(r) == r.gold);
    }
    (n, ok as f64 / n.max(1) as f64)
}

/// Runs `train-embedding`.
pub fn run(args: EmbeddingArgs) -> Result<()> {
    let ds = args.sets.load()?;
    let task = &ds.domain;
    let labels: Vec<String> = data::DOMAINS.iter().map(|s| s.to_string()).collect();
    let encoder_dir = match &args.encoder {
        Some(d) => d.clone(),
        None => switchyard_server::fetch::MINILM.ensure(&switchyard_server::fetch::cache_dir())?,
    };
    let quantized = !args.f32;
    let embedder = Embedder::load(&encoder_dir, args.max_tokens, quantized, args.layers)?;

    let start = Instant::now();
    let train_texts: Vec<&str> = task.train.iter().map(|e| e.text.as_str()).collect();
    let val_texts: Vec<&str> = task.val.iter().map(|e| e.text.as_str()).collect();
    let chat_rows: Vec<(&str, usize)> = ds
        .chat_val
        .iter()
        .filter_map(|r| r.domain.map(|d| (r.text.as_str(), d)))
        .collect();
    let chat_texts: Vec<&str> = chat_rows.iter().map(|r| r.0).collect();
    let x_train = embed_all(&embedder, &train_texts, "the training split")?;
    let x_val = embed_all(&embedder, &val_texts, "the validation split")?;
    let x_chat = embed_all(&embedder, &chat_texts, "validation.jsonl")?;
    let embed_secs = start.elapsed().as_secs_f64();
    eprintln!(
        "embedded {} texts in {embed_secs:.0} s",
        train_texts.len() + val_texts.len() + chat_texts.len()
    );

    let y: Vec<usize> = task.train.iter().map(|e| e.label).collect();
    let opts = LogRegOptions {
        l2: 1.0 / (args.c * train_texts.len().max(1) as f32),
        steps: args.steps,
        lr: args.lr,
    };

    // The shipped router (head + lexical), the head alone and the lexical model alone.
    let load = || {
        RouterModel::load_dir(
            &args.router_dir,
            &candle_core::Device::Cpu,
            candle_core::DType::F32,
            DEFAULT_MAX_INPUT_TOKENS,
        )
    };
    let lexical = load()?
        .lexical_for(HeadRole::Domain, true)
        .cloned()
        .context("the router has no domain lexical model (run train-lexical first)")?;
    if let Some(e) = lexical.embedding_features() {
        let here = (embedder.dim(), args.max_tokens, quantized, args.layers);
        if (e.dim, e.max_tokens, e.quantized, e.layers) != here {
            anyhow::bail!(
                "the domain lexical model reads embeddings of {} tokens (Q8_0 {}, layers {:?}) but this \
                 encoder is set up for {} tokens (Q8_0 {}, layers {:?}): train-embedding with the same \
                 --max-tokens / --f32 / --layers, or retrain the lexical model after this",
                e.max_tokens, e.quantized, e.layers, here.1, here.2, here.3
            );
        }
    }
    let alone = load()?.without_lexical();
    // Lexical probabilities in the lexical model's label order (a joint model reads the embedding).
    let lex_raw = |texts: &[&str], embeddings: &[Vec<f32>]| -> Vec<Vec<f32>> {
        texts
            .iter()
            .zip(embeddings)
            .map(|(t, e)| lexical.probabilities(&lexical.scores(t, Some(e))))
            .collect()
    };
    let by_label = |raw: &[Vec<f32>]| -> Vec<Vec<f32>> {
        raw.iter()
            .map(|p| {
                labels
                    .iter()
                    .map(|l| {
                        let i = lexical.labels.iter().position(|x| x == l);
                        i.map_or(0.0, |i| p[i])
                    })
                    .collect()
            })
            .collect()
    };
    eprintln!("scoring the held-out texts with the router");
    let (val_head, chat_head) = (
        router_probs(&alone, HeadRole::Domain, &labels, &val_texts)?,
        router_probs(&alone, HeadRole::Domain, &labels, &chat_texts)?,
    );
    let (val_raw, chat_raw) = (lex_raw(&val_texts, &x_val), lex_raw(&chat_texts, &x_chat));
    let fuse = |head: &[Vec<f32>], raw: &[Vec<f32>]| -> Vec<Vec<f32>> {
        head.iter()
            .zip(raw)
            .map(|(h, l)| lexical.fuse(&labels, h, l))
            .collect()
    };
    let (val_shipped, chat_shipped) = (fuse(&val_head, &val_raw), fuse(&chat_head, &chat_raw));
    let (val_lex, chat_lex) = (by_label(&val_raw), by_label(&chat_raw));
    let is_exam = |i: usize| ["mmlu_pro", "mmlu"].contains(&task.val[i].source);
    let is_chat = |i: usize| task.val[i].source == "chat_style";

    // For each weight of the chat-style training rows: fit, then choose the fusion weight and scale,
    // all on the router's own validation split by its balanced accuracy (the mean of its exam
    // questions' and its chat-style questions' accuracy: the two kinds of text the router sees).
    let mut candidates = Vec::new();
    let mut chosen: Option<Candidate> = None;
    let start = Instant::now();
    for &cw in &args.chat_weights {
        let row_weights: Vec<f32> = task
            .train
            .iter()
            .map(|e| if e.source == "chat_style" { cw } else { 1.0 })
            .collect();
        let (weights, loss) = logreg::fit(&x_train, &y, Some(&row_weights), labels.len(), opts);
        let probe = EmbeddingHead::new(
            "domain",
            labels.clone(),
            weights.clone(),
            0.0,
            1.0,
            DEFAULT_ENCODER,
            0,
            quantized,
        );
        let z_val: Vec<Vec<f32>> = x_val.iter().map(|e| probe.logits(e)).collect();
        let val: Vec<Row> = (0..val_texts.len())
            .map(|i| Row {
                gold: task.val[i].label,
                shipped: &val_shipped[i],
                head: &val_head[i],
                lexical: &val_lex[i],
                z: &z_val[i],
            })
            .collect();
        let balanced = |w: f32, s: f32| {
            let exam = accuracy(
                (0..val.len()).filter(|&i| is_exam(i)).map(|i| &val[i]),
                |r| fused(r, w, s),
            )
            .1;
            let chat = accuracy(
                (0..val.len()).filter(|&i| is_chat(i)).map(|i| &val[i]),
                |r| fused(r, w, s),
            )
            .1;
            args.select.score(exam, chat)
        };
        let mut best = (0.0f32, 1.0f32, balanced(0.0, 1.0));
        for wi in 1..=20 {
            for s in [0.5f32, 1.0, 2.0] {
                let w = wi as f32 / 20.0;
                let b = balanced(w, s);
                if b > best.2 + 1e-9 {
                    best = (w, s, b);
                }
            }
        }
        eprintln!(
            "chat-style rows x{cw}: training loss {loss:.4}; weight {} scale {}: validation objective {:.4}",
            best.0, best.1, best.2
        );
        candidates.push(json!({"chat_weight": cw, "weight": best.0, "scale": best.1, "validation_objective": best.2, "training_loss": loss}));
        if chosen.as_ref().is_none_or(|c| best.2 > c.4 + 1e-9) {
            chosen = Some((cw, weights, best.0, best.1, best.2, loss));
        }
    }
    let fit_secs = start.elapsed().as_secs_f64();
    let (chat_weight, weights, w, s, _, loss) = chosen.context("--chat-weights is empty")?;
    let mut head = EmbeddingHead::new(
        "domain",
        labels.clone(),
        weights,
        w,
        s,
        DEFAULT_ENCODER,
        args.max_tokens,
        quantized,
    );
    head.layers = args.layers;
    let best = (w, s);
    let z_val: Vec<Vec<f32>> = x_val.iter().map(|e| head.logits(e)).collect();
    let z_chat: Vec<Vec<f32>> = x_chat.iter().map(|e| head.logits(e)).collect();
    let val: Vec<Row> = (0..val_texts.len())
        .map(|i| Row {
            gold: task.val[i].label,
            shipped: &val_shipped[i],
            head: &val_head[i],
            lexical: &val_lex[i],
            z: &z_val[i],
        })
        .collect();
    let chat_eval: Vec<Row> = (0..chat_texts.len())
        .map(|i| Row {
            gold: chat_rows[i].1,
            shipped: &chat_shipped[i],
            head: &chat_head[i],
            lexical: &chat_lex[i],
            z: &z_chat[i],
        })
        .collect();

    let by_source =
        |srcs: &'static [&'static str]| move |i: &usize| srcs.contains(&task.val[*i].source);
    let groups: Vec<(&str, Vec<&Row>)> = vec![
        ("validation split (all)", val.iter().collect()),
        (
            "MMLU-Pro questions",
            (0..val.len())
                .filter(by_source(&["mmlu_pro"]))
                .map(|i| &val[i])
                .collect(),
        ),
        (
            "exam questions (MMLU-Pro + MMLU)",
            (0..val.len())
                .filter(by_source(&["mmlu_pro", "mmlu"]))
                .map(|i| &val[i])
                .collect(),
        ),
        (
            "chat-style, own split",
            (0..val.len())
                .filter(by_source(&["chat_style"]))
                .map(|i| &val[i])
                .collect(),
        ),
        ("chat-style validation.jsonl", chat_eval.iter().collect()),
    ];
    let mut table = String::from(
        "| domain accuracy on | n | router head | TF-IDF + SVM | head + lexical | MiniLM + linear | fused (head + lexical + MiniLM) |\n|---|---|---|---|---|---|---|\n",
    );
    let mut metrics = serde_json::Map::new();
    for (name, rows) in &groups {
        let acc = |f: &dyn Fn(&Row) -> usize| accuracy(rows.iter().copied(), f);
        let (n, h) = acc(&|r| argmax(r.head));
        let l = acc(&|r| argmax(r.lexical)).1;
        let s = acc(&|r| argmax(r.shipped)).1;
        let e = acc(&|r| argmax(r.z)).1;
        let f = acc(&|r| fused(r, best.0, best.1)).1;
        table.push_str(&format!(
            "| {name} | {n} | {h:.3} | {l:.3} | {s:.3} | {e:.3} | {f:.3} |\n"
        ));
        metrics.insert(
            name.to_string(),
            json!({"n": n, "router": h, "lexical": l, "router_lexical": s, "embedding": e, "fused": f}),
        );
    }
    // How the fusion weight trades exam questions for chat-style ones, at the chosen scale.
    let mut tradeoff_table = format!(
        "| fusion weight (scale {}) | {} |\n|---|{}\n",
        best.1,
        groups.iter().map(|g| g.0).collect::<Vec<_>>().join(" | "),
        "---|".repeat(groups.len())
    );
    let mut tradeoff = Vec::new();
    for wi in 0..=10 {
        let w = wi as f32 / 10.0;
        let accs: Vec<f64> = groups
            .iter()
            .map(|(_, rows)| accuracy(rows.iter().copied(), |r| fused(r, w, best.1)).1)
            .collect();
        tradeoff_table.push_str(&format!(
            "| {w:.1} | {} |\n",
            accs.iter()
                .map(|a| format!("{a:.3}"))
                .collect::<Vec<_>>()
                .join(" | ")
        ));
        tradeoff.push(json!({"weight": w, "accuracy": accs}));
    }
    println!(
        "chosen on the validation split: chat-style rows x{chat_weight}, fusion weight {} scale {}\n\n{table}\n{tradeoff_table}",
        best.0, best.1
    );
    head.save(&args.router_dir)?;
    std::fs::write(
        args.router_dir.join("embedding_metrics.json"),
        serde_json::to_string_pretty(&json!({
            "head": "domain", "encoder": DEFAULT_ENCODER, "encoder_weights": if quantized { "q8_0" } else { "f32" },
            "max_tokens": args.max_tokens, "encoder_layers": args.layers, "weight": best.0, "scale": best.1,
            "train_texts": train_texts.len(), "c": args.c, "steps": args.steps, "lr": args.lr,
            "training_loss": loss, "embed_seconds": embed_secs, "fit_seconds": fit_secs,
            "chat_weight": chat_weight, "candidates": candidates,
            "selection": args.select.describe(),
            "measure": "accuracy", "results": metrics,
            "tradeoff": {"groups": groups.iter().map(|g| g.0).collect::<Vec<_>>(), "scale": best.1, "rows": tradeoff},
            "command": format!(
                "switchyard train-embedding --data ../shared/data --router-dir router/models/default{}{}",
                args.layers.map_or(String::new(), |n| format!(" --layers {n}")),
                if args.select == Selection::Targets { " --select targets" } else { "" },
            ),
        }))?,
    )?;
    eprintln!(
        "wrote {}/embedding.json, .safetensors, _metrics.json",
        args.router_dir.display()
    );
    Ok(())
}
