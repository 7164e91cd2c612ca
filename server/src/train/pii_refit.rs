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

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use clap::Args;
use switchyard_models::encoder::{HeadTask, MultiHeadClassifier};
use tokenizers::Tokenizer;

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

/// Per-token features of the PII head and their gold tags, over all training sentences.
struct TokenFeatures {
    x: Tensor,
    y: Tensor,
}

fn token_features(
    model: &MultiHeadClassifier,
    head: usize,
    tok: &Tokenizer,
    sentences: &[data::TokenExample],
    max_len: usize,
) -> Result<TokenFeatures> {
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
    Ok(TokenFeatures {
        x: Tensor::from_vec(xs, (n, hidden), &Device::Cpu)?,
        y: Tensor::from_vec(ys, n, &Device::Cpu)?,
    })
}

/// Softmax regression `x · wᵀ + b` on `(x, y)`, from `(w, b)`, by full-batch Adam; returns the new
/// weights and the loss before and after.
fn fit_softmax(
    data: &TokenFeatures,
    w: &Tensor,
    b: &Tensor,
    steps: usize,
    lr: f64,
) -> Result<(Tensor, Tensor, f32, f32)> {
    let w = Var::from_tensor(&w.to_dtype(DType::F32)?)?;
    let b = Var::from_tensor(&b.to_dtype(DType::F32)?)?;
    let loss_of = |w: &Tensor, b: &Tensor| -> Result<Tensor> {
        let logits = data.x.matmul(&w.t()?)?.broadcast_add(b)?;
        Ok(candle_nn::loss::cross_entropy(&logits, &data.y)?)
    };
    let before = loss_of(w.as_tensor(), b.as_tensor())?.to_scalar::<f32>()?;
    let mut opt = AdamW::new(
        vec![w.clone(), b.clone()],
        ParamsAdamW {
            lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    for _ in 0..steps {
        opt.backward_step(&loss_of(w.as_tensor(), b.as_tensor())?)?;
    }
    let after = loss_of(w.as_tensor(), b.as_tensor())?.to_scalar::<f32>()?;
    Ok((w.as_tensor().clone(), b.as_tensor().clone(), before, after))
}

/// Rewrites `model.safetensors` with the two classifier tensors replaced (stored in the dtype they
/// had); the file's metadata (e.g. transformers' `format: pt`) is kept.
fn write_classifier(dir: &Path, names: &[String; 2], w: &Tensor, b: &Tensor) -> Result<()> {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let metadata = safetensors::SafeTensors::read_metadata(&bytes)
        .with_context(|| format!("{}: not a safetensors file", path.display()))?
        .1
        .metadata()
        .clone();
    let mut tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .with_context(|| format!("reading {}", path.display()))?;
    for (key, new) in names.iter().zip([w, b]) {
        let old = tensors
            .get(key)
            .with_context(|| format!("{key} is not in {}", path.display()))?;
        if old.dims() != new.dims() {
            bail!("{key}: shape {:?} vs {:?}", old.dims(), new.dims());
        }
        let stored = new.to_dtype(old.dtype())?;
        tensors.insert(key.clone(), stored);
    }
    let mut named: Vec<(&String, &Tensor)> = tensors.iter().collect();
    named.sort_by(|a, b| a.0.cmp(b.0));
    safetensors::serialize_to_file(named, metadata, &path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Runs `refit-pii-head`.
pub fn run(args: PiiRefitArgs) -> Result<()> {
    let ds = args.sets.load()?;
    let dir = &args.router_dir;
    let model = MultiHeadClassifier::load(dir, &Device::Cpu, DType::F32)?;
    let head = model
        .heads()
        .iter()
        .position(|h| h.name() == "pii" && h.task() == HeadTask::Token)
        .with_context(|| format!("{} has no token head named `pii`", dir.display()))?;
    if model.heads()[head].labels() != data::pii_labels().as_slice() {
        bail!(
            "the PII head's labels {:?} are not the trainer's {:?}",
            model.heads()[head].labels(),
            data::pii_labels()
        );
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::D;

    #[test]
    fn the_softmax_fit_lowers_the_loss_and_separates_a_separable_set() {
        // Two features, three classes, each class on its own side.
        let x: Vec<f32> = vec![
            1.0, 0.0, 0.0, 1.0, -1.0, -1.0, 0.9, 0.1, 0.1, 0.9, -0.8, -1.2,
        ];
        let y: Vec<u32> = vec![0, 1, 2, 0, 1, 2];
        let data = TokenFeatures {
            x: Tensor::from_vec(x, (6, 2), &Device::Cpu).unwrap(),
            y: Tensor::from_vec(y.clone(), 6, &Device::Cpu).unwrap(),
        };
        let w0 = Tensor::zeros((3, 2), DType::F32, &Device::Cpu).unwrap();
        let b0 = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
        let (w, b, before, after) = fit_softmax(&data, &w0, &b0, 200, 0.1).unwrap();
        assert!((before - 3f32.ln()).abs() < 1e-5, "{before}");
        assert!(after < 0.1, "{after}");
        let pred: Vec<u32> = data
            .x
            .matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&b)
            .unwrap()
            .argmax(D::Minus1)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(pred, y);
    }

    #[test]
    fn the_classifier_is_written_back_in_its_dtype_and_the_rest_is_kept() {
        let dir = std::env::temp_dir().join(format!("sy-pii-refit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cpu = Device::Cpu;
        let mut tensors = std::collections::HashMap::new();
        let w = Tensor::zeros((3, 2), DType::F16, &cpu).unwrap();
        tensors.insert("heads.pii.classifier.weight".to_string(), w);
        let b = Tensor::zeros(3, DType::F16, &cpu).unwrap();
        tensors.insert("heads.pii.classifier.bias".to_string(), b);
        let other = Tensor::ones(4, DType::F16, &cpu).unwrap();
        tensors.insert("layers.0.w".to_string(), other);
        let metadata = Some(
            [("format".to_string(), "pt".to_string())]
                .into_iter()
                .collect(),
        );
        safetensors::serialize_to_file(&tensors, metadata.clone(), &dir.join("model.safetensors"))
            .unwrap();
        let names = [
            "heads.pii.classifier.weight".to_string(),
            "heads.pii.classifier.bias".to_string(),
        ];
        let new_w = Tensor::ones((3, 2), DType::F32, &cpu).unwrap();
        let new_b = Tensor::full(2f32, 3, &cpu).unwrap();
        write_classifier(&dir, &names, &new_w, &new_b).unwrap();
        let back = candle_core::safetensors::load(dir.join("model.safetensors"), &cpu).unwrap();
        let w = &back["heads.pii.classifier.weight"];
        assert_eq!(w.dtype(), DType::F16);
        let w: Vec<f32> = w
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(w, vec![1.0; 6]);
        let b: Vec<f32> = back["heads.pii.classifier.bias"]
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(b, vec![2.0; 3]);
        assert_eq!(back["layers.0.w"].dims(), &[4]);
        let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(header.metadata(), &metadata);
        // A wrong shape is refused.
        let bad = Tensor::ones((2, 2), DType::F32, &cpu).unwrap();
        assert!(write_classifier(&dir, &names, &bad, &new_b).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
