//! `switchyard refit-pii-head`: refits the PII head's last linear layer (`heads.pii.classifier`) on
//! the frozen backbone and head transform, with the trainer's PII training split as it is now, which
//! includes lower-case chat sentences with no entity in them (`pii_free_chat`, see `data::load`).
//!
//! The shipped checkpoint was trained before those sentences existed, so its PII head had never seen a
//! sentence without an entity and tags ordinary lower-case words as names. A full retrain of the
//! router takes ~40 minutes; this fits the `[tags, hidden]` classifier alone (softmax regression on the
//! head's per-token features, warm-started from the current weights, full-batch Adam), in a minute or
//! two, and writes it back into `model.safetensors` with every other tensor unchanged.
//! `switchyard eval-pii` measures the result through the router.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use switchyard_models::encoder::{HeadTask, MultiHeadClassifier};
use tokenizers::Tokenizer;

use super::refit::{fit_softmax, load_head, write_classifier, Features};
use super::{data, tokenizer};

/// Options of `refit-pii-head`.
#[derive(Args, Debug, Clone)]
pub struct PiiRefitArgs {
    /// The data folders.
    #[command(flatten)]
    pub sets: data::DataArgs,
    /// The router directory whose PII head is refitted (its `model.safetensors` is rewritten).
    #[arg(long, default_value = "router/models/default")]
    pub router_dir: PathBuf,
    /// Full-batch Adam steps (400 was the best of 50 / 200 / 400 / 1000 by entity F1 on the PII
    /// validation split, `eval-pii`).
    #[arg(long, default_value_t = 400)]
    pub steps: usize,
    /// Learning rate.
    #[arg(long, default_value_t = 0.01)]
    pub lr: f64,
    /// Tokens per sentence at most (as the trainer's `--max-len`).
    #[arg(long, default_value_t = 128)]
    pub max_len: usize,
}

fn token_features(
    model: &MultiHeadClassifier,
    head: usize,
    tok: &Tokenizer,
    sentences: &[data::TokenExample],
    max_len: usize,
) -> Result<Features> {
    let hidden = model.backbone().config().hidden_size;
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    let pb = super::progress(sentences.len(), "PII features");
    for chunk in sentences.chunks(32) {
        let mut ids = Vec::with_capacity(chunk.len());
        let mut tags = Vec::with_capacity(chunk.len());
        for e in chunk {
            let (i, w) = tokenizer::encode_words(tok, &e.words, max_len)?;
            tags.push(tokenizer::token_tags(&w, &e.tags));
            ids.push(i);
        }
        let (input, mask) = model.batch_inputs(&ids)?;
        let states = model.backbone().forward(&input, &mask)?;
        let feats = model.heads()[head]
            .features(&states, &mask)?
            .to_dtype(DType::F32)?
            .to_vec3::<f32>()?;
        for (f, t) in feats.iter().zip(&tags) {
            for (row, &tag) in f.iter().zip(t) {
                xs.extend_from_slice(row);
                ys.push(tag);
            }
        }
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    let n = ys.len();
    Ok(Features {
        x: Tensor::from_vec(xs, (n, hidden), &Device::Cpu)?,
        y: Tensor::from_vec(ys, n, &Device::Cpu)?,
    })
}

/// Runs `refit-pii-head`.
pub fn run(args: PiiRefitArgs) -> Result<()> {
    let ds = args.sets.load()?;
    let dir = &args.router_dir;
    let (model, head) = load_head(
        dir,
        "pii",
        |task| task == HeadTask::Token,
        &data::pii_labels(),
    )?;
    let tok = Tokenizer::from_file(dir.join("tokenizer.json"))
        .map_err(|e| anyhow::anyhow!("{}: {e}", dir.join("tokenizer.json").display()))?;

    let free = ds
        .pii
        .train
        .iter()
        .filter(|e| e.source == "pii_free_chat")
        .count();
    eprintln!(
        "PII training split: {} sentences, {free} of them entity-free chat",
        ds.pii.train.len()
    );
    let start = Instant::now();
    let feats = token_features(&model, head, &tok, &ds.pii.train, args.max_len)?;
    eprintln!(
        "{} tokens of features in {:.0} s",
        feats.y.dims()[0],
        start.elapsed().as_secs_f64()
    );
    let classifier = model.heads()[head].classifier();
    let bias = classifier
        .bias()
        .context("the PII classifier has no bias")?;
    let (w, b, before, after) =
        fit_softmax(&feats, classifier.weight(), bias, args.steps, args.lr)?;
    eprintln!(
        "token cross-entropy on the training split: {before:.4} -> {after:.4} ({} steps, lr {})",
        args.steps, args.lr
    );
    let names = [
        model.heads()[head].tensor_name("classifier.weight"),
        model.heads()[head].tensor_name("classifier.bias"),
    ];
    write_classifier(dir, &names, &w, &b)?;
    eprintln!(
        "wrote {}/model.safetensors ({}, {}); measure it with `switchyard eval-pii`",
        dir.display(),
        names[0],
        names[1]
    );
    Ok(())
}
