//! Distillation of a pretrained sentence encoder into the router's backbone
//! (`train-router --distill-steps`): the teacher (the embedding signal's all-MiniLM-L6-v2, run as the
//! router runs it) embeds every training text once; the backbone's mean-pooled state, through a
//! linear projection, then learns those embeddings (centred on the corpus mean) under a cosine
//! loss, before the heads are fine-tuned. The aim is to carry the teacher's general language
//! knowledge into the small router. Each side reads a text as it would when serving: the teacher
//! its first 128 tokens of its own vocabulary, the student `--max-len` of the router's (head and
//! tail), so a long text is compared on somewhat different spans.

use super::data::Dataset;
use super::eval::argmax;
use super::logreg::{self, LogRegOptions};
use super::model::{cosine_distance, DistillHead, TrainModel};
use super::{adamw, lr_at, make_batch, progress, step, LossMeter, Sampler, TrainArgs};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use candle_nn::{Optimizer, VarMap};
use rand::rngs::StdRng;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use switchyard_router::embedding::Embedder;

/// The teacher encoder and how it was set up.
pub struct Teacher {
    embedder: Embedder,
    dir: PathBuf,
    layers: usize,
}

impl Teacher {
    /// Loads the teacher named by `--distill-encoder` / `--distill-layers` (Q8_0, 128 tokens).
    pub fn load(args: &TrainArgs) -> Result<Self> {
        let dir = match &args.distill_encoder {
            Some(d) => d.clone(),
            None => {
                switchyard_server::fetch::MINILM.ensure(&switchyard_server::fetch::cache_dir())?
            }
        };
        let embedder = Embedder::load(&dir, 128, true, Some(args.distill_layers))
            .with_context(|| format!("loading the distillation teacher {}", dir.display()))?;
        Ok(Self {
            embedder,
            dir,
            layers: args.distill_layers,
        })
    }

    /// Embedding width.
    pub fn dim(&self) -> usize {
        self.embedder.dim()
    }

    /// What the report records of the teacher.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "encoder": self.dir.display().to_string(), "layers": self.layers,
            "weights": "Q8_0", "max_tokens": 128,
        })
    }

    /// Embeddings of `texts`, with a progress bar.
    pub fn embed(&self, texts: &[&str], what: &str) -> Result<Vec<Vec<f32>>> {
        super::embedding::embed_all(&self.embedder, texts, what)
    }

    /// The corpus's embeddings, read from `cache` when it holds this corpus under this teacher,
    /// else computed (and written there). A `cache` file that is not such a cache is an error,
    /// never overwritten.
    pub fn corpus_embeddings(&self, texts: &[&str], cache: Option<&Path>) -> Result<Tensor> {
        let key = self.cache_key(texts)?;
        let shape = (texts.len(), self.dim());
        if let Some(path) = cache.filter(|p| p.exists()) {
            match read_cache(path, &key, shape)? {
                Some(t) => {
                    eprintln!("distill: teacher embeddings from {}", path.display());
                    return Ok(t);
                }
                None => eprintln!(
                    "distill: {} is for another corpus or teacher; recomputing",
                    path.display()
                ),
            }
        }
        let start = Instant::now();
        let rows = self.embed(texts, "the corpus (teacher)")?;
        eprintln!(
            "distill: teacher embedded {} texts in {:.0} s",
            rows.len(),
            start.elapsed().as_secs_f64()
        );
        let flat: Vec<f32> = rows.into_iter().flatten().collect();
        if flat.len() != shape.0 * shape.1 {
            bail!("the teacher returned embeddings of the wrong width");
        }
        let t = Tensor::from_vec(flat, shape, &Device::Cpu)?;
        if let Some(path) = cache {
            write_cache(path, &key, &t)?;
        }
        Ok(t)
    }

    /// SHA-256 of the teacher (its config and weights, the layers used) and of the texts in order.
    fn cache_key(&self, texts: &[&str]) -> Result<Vec<u8>> {
        let mut h = Sha256::new();
        for file in ["config.json", "model.safetensors"] {
            let path = self.dir.join(file);
            let bytes =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(&bytes);
        }
        h.update((self.layers as u64).to_le_bytes());
        h.update((texts.len() as u64).to_le_bytes());
        for t in texts {
            h.update((t.len() as u64).to_le_bytes());
            h.update(t.as_bytes());
        }
        Ok(h.finalize().to_vec())
    }
}

/// The cached embeddings when `path` holds them for `key` in `shape`; `None` when it holds
/// another corpus's. A file without a key is not a cache: an error.
fn read_cache(path: &Path, key: &[u8], shape: (usize, usize)) -> Result<Option<Tensor>> {
    let saved = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("reading {}", path.display()))?;
    let Some(stored) = saved.get("key") else {
        bail!(
            "{} is not a teacher-embedding cache (it has no `key`); not overwriting it",
            path.display()
        );
    };
    if stored.to_vec1::<u8>()? != key {
        return Ok(None);
    }
    Ok(saved
        .get("embeddings")
        .filter(|t| t.dims() == [shape.0, shape.1])
        .cloned())
}

fn write_cache(path: &Path, key: &[u8], embeddings: &Tensor) -> Result<()> {
    let tensors = HashMap::from([
        ("embeddings".to_string(), embeddings.clone()),
        (
            "key".to_string(),
            Tensor::from_vec(key.to_vec(), key.len(), &Device::Cpu)?,
        ),
    ]);
    candle_core::safetensors::save(&tensors, path)
        .with_context(|| format!("writing {}", path.display()))
}

/// How long and how fast the backbone learns the teacher.
pub struct Schedule {
    pub steps: usize,
    pub batch_size: usize,
    /// Peak learning rate (warm-up, then linear decay).
    pub lr: f64,
}

impl Schedule {
    /// `--distill-steps`, `--batch-size`, `--distill-lr`.
    pub fn of(args: &TrainArgs) -> Self {
        Self {
            steps: args.distill_steps,
            batch_size: args.batch_size,
            lr: args.distill_lr,
        }
    }
}

/// Trains the backbone and `head` on the teacher's `targets` (`[corpus, dim]`). Returns
/// (sequences/s, smoothed loss).
pub fn train(
    model: &TrainModel,
    head: &DistillHead,
    varmap: &VarMap,
    corpus: &[Vec<u32>],
    targets: &Tensor,
    schedule: &Schedule,
    rng: &mut StdRng,
) -> Result<(f64, f64)> {
    let dev = Device::Cpu;
    let mut opt = adamw(varmap, schedule.lr)?;
    let lens: Vec<usize> = corpus.iter().map(Vec::len).collect();
    let mut sampler = Sampler::new(corpus.len());
    let pb = progress(schedule.steps, "distill");
    let mut meter = LossMeter::new("distill");
    for s in 0..schedule.steps {
        opt.set_learning_rate(lr_at(s, schedule.steps, schedule.lr));
        let idx = sampler.next(&lens, schedule.batch_size, rng);
        let refs: Vec<&[u32]> = idx.iter().map(|&i| corpus[i].as_slice()).collect();
        let (ids, mask, bias) = make_batch(&refs, &dev)?;
        let pooled = TrainModel::mean_pool(&model.backbone(&ids, &bias)?, &mask)?;
        let rows: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
        let gold = targets.index_select(&Tensor::from_vec(rows, idx.len(), &dev)?, 0)?;
        let loss = cosine_distance(&head.project(&pooled)?, &gold)?;
        let lv = f64::from(loss.to_scalar::<f32>()?);
        step(&mut opt, varmap, &loss)?;
        meter.record(s, lv, &refs, &pb);
    }
    pb.finish();
    Ok((meter.rates().0, meter.ema))
}

/// Mean cosine between the student's projected embeddings of `ids` and the teacher's `targets`.
pub fn mean_cosine(
    model: &TrainModel,
    head: &DistillHead,
    ids: &[Vec<u32>],
    targets: &[Vec<f32>],
) -> Result<f64> {
    let student = student_embeddings(model, head, ids)?;
    let total: f64 = student
        .iter()
        .zip(targets)
        .map(|(s, t)| {
            let t = unit(t.clone());
            f64::from(s.iter().zip(&t).map(|(x, y)| x * y).sum::<f32>())
        })
        .sum();
    Ok(total / ids.len().max(1) as f64)
}

/// The student's projected embeddings of `ids`, L2-normalised.
fn student_embeddings(
    model: &TrainModel,
    head: &DistillHead,
    ids: &[Vec<u32>],
) -> Result<Vec<Vec<f32>>> {
    let dev = Device::Cpu;
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| ids[i].len());
    let mut out = vec![Vec::new(); ids.len()];
    for chunk in order.chunks(64) {
        let refs: Vec<&[u32]> = chunk.iter().map(|&i| ids[i].as_slice()).collect();
        let (t, mask, bias) = make_batch(&refs, &dev)?;
        let pooled = TrainModel::mean_pool(&model.backbone(&t, &bias)?.detach(), &mask)?;
        for (&i, row) in chunk
            .iter()
            .zip(head.project(&pooled)?.detach().to_vec2::<f32>()?)
        {
            out[i] = unit(row);
        }
    }
    Ok(out)
}

fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

/// How much of the domain a linear model reads from the student's embeddings, beside the same
/// model on the teacher's: a logistic regression (as `train-embedding` fits, C = 4) on each side's
/// embeddings of the domain training split, scored on the held-out sets. Both sides are unit
/// vectors, the teacher's centred on its training-split mean (the student learned centred ones).
pub fn probe(
    model: &TrainModel,
    head: &DistillHead,
    teacher: &Teacher,
    ds: &Dataset,
    enc: &impl Fn(Vec<&str>) -> Result<Vec<Vec<u32>>>,
) -> Result<serde_json::Value> {
    let task = &ds.domain;
    let chat: Vec<(&str, usize)> = ds
        .chat_val
        .iter()
        .filter_map(|r| r.domain.map(|d| (r.text.as_str(), d)))
        .collect();
    let train: Vec<&str> = task.train.iter().map(|e| e.text.as_str()).collect();
    let val: Vec<&str> = task.val.iter().map(|e| e.text.as_str()).collect();
    let chat_texts: Vec<&str> = chat.iter().map(|c| c.0).collect();

    let teacher_side = {
        let raw: Vec<Vec<Vec<f32>>> = vec![
            teacher.embed(&train, "the domain training split (teacher)")?,
            teacher.embed(&val, "the validation split (teacher)")?,
            teacher.embed(&chat_texts, "validation.jsonl (teacher)")?,
        ];
        let dim = teacher.dim();
        let mut centre = vec![0f32; dim];
        for e in &raw[0] {
            centre.iter_mut().zip(e).for_each(|(c, x)| *c += x);
        }
        centre
            .iter_mut()
            .for_each(|c| *c /= raw[0].len().max(1) as f32);
        raw.into_iter()
            .map(|set| {
                set.into_iter()
                    .map(|e| unit(e.iter().zip(&centre).map(|(x, c)| x - c).collect()))
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    };
    let student_side = vec![
        student_embeddings(model, head, &enc(train.clone())?)?,
        student_embeddings(model, head, &enc(val.clone())?)?,
        student_embeddings(model, head, &enc(chat_texts.clone())?)?,
    ];

    let y: Vec<usize> = task.train.iter().map(|e| e.label).collect();
    let opts = LogRegOptions {
        l2: 1.0 / (4.0 * train.len().max(1) as f32),
        steps: 400,
        lr: 0.05,
    };
    // Held-out groups of the validation split, by source.
    let groups: [(&str, &[&str]); 3] = [
        ("MMLU-Pro questions", &["mmlu_pro"]),
        ("exam questions (MMLU-Pro + MMLU)", &["mmlu_pro", "mmlu"]),
        ("chat-style, own split", &["chat_style"]),
    ];
    let mut report = serde_json::Map::new();
    for (side, x) in [("student", &student_side), ("teacher", &teacher_side)] {
        let (w, _) = logreg::fit(&x[0], &y, None, task.labels.len(), opts);
        let right = |e: &[f32], gold: usize| argmax(&logreg::logits(&w, e)) == gold;
        let mut scores = serde_json::Map::new();
        for (name, sources) in &groups {
            let rows: Vec<usize> = (0..val.len())
                .filter(|&i| sources.contains(&task.val[i].source))
                .collect();
            let hits = rows
                .iter()
                .filter(|&&i| right(&x[1][i], task.val[i].label))
                .count();
            scores.insert(
                name.to_string(),
                serde_json::json!(hits as f64 / rows.len().max(1) as f64),
            );
        }
        let hits = chat
            .iter()
            .zip(&x[2])
            .filter(|((_, gold), e)| right(e, *gold))
            .count();
        scores.insert(
            "chat-style validation.jsonl".into(),
            serde_json::json!(hits as f64 / chat.len().max(1) as f64),
        );
        report.insert(side.into(), serde_json::Value::Object(scores));
    }
    Ok(serde_json::Value::Object(report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::model::{Arch, HeadKind};
    use rand::{Rng, SeedableRng};

    fn tiny() -> Arch {
        Arch {
            vocab_size: 40,
            hidden: 16,
            layers: 2,
            heads: 2,
            intermediate: 24,
            local_attention: 4,
            global_every: 3,
            max_position: 32,
            pad_id: 0,
            norm_eps: 1e-5,
            global_rope_theta: 160_000.0,
            local_rope_theta: 10_000.0,
        }
    }

    /// Training pulls the student's embeddings of the corpus towards the teacher's.
    #[test]
    fn the_student_learns_the_teachers_embeddings() -> Result<()> {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let heads = vec![(
            "domain".to_string(),
            HeadKind::Sequence,
            vec!["a".into(), "b".into()],
        )];
        let model = TrainModel::new(&tiny(), &heads, &varmap, &dev, 0)?;
        let head = DistillHead::new(&varmap, 16, 8, &dev, 0)?;
        let mut rng = StdRng::seed_from_u64(7);
        let corpus: Vec<Vec<u32>> = (0..12)
            .map(|_| {
                (0..rng.random_range(4..10))
                    .map(|_| rng.random_range(5..40))
                    .collect()
            })
            .collect();
        let rows: Vec<Vec<f32>> = (0..corpus.len())
            .map(|_| (0..8).map(|_| rng.random_range(-1.0..1.0)).collect())
            .collect();
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let targets = Tensor::from_vec(flat, (corpus.len(), 8), &dev)?;
        let before = mean_cosine(&model, &head, &corpus, &rows)?;
        let schedule = Schedule {
            steps: 150,
            batch_size: 4,
            lr: 1e-2,
        };
        let (_, loss) = train(
            &model, &head, &varmap, &corpus, &targets, &schedule, &mut rng,
        )?;
        let after = mean_cosine(&model, &head, &corpus, &rows)?;
        assert!(
            after > before + 0.3 && after > 0.6,
            "cosine {before:.3} -> {after:.3}"
        );
        assert!(
            (1.0 - loss - after).abs() < 0.2,
            "loss {loss:.3}, cosine {after:.3}"
        );
        Ok(())
    }

    /// A cache file serves only the corpus and teacher it was written for, and a file that is not
    /// a cache is left alone.
    #[test]
    fn the_cache_serves_only_its_own_key() -> Result<()> {
        let dir = std::env::temp_dir();
        let path = dir.join(format!("switchyard-distill-{}.st", std::process::id()));
        let t = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &Device::Cpu)?;
        write_cache(&path, b"key", &t)?;
        let back = read_cache(&path, b"key", (2, 2))?.expect("the same key reads the cache");
        assert_eq!(back.to_vec2::<f32>()?, t.to_vec2::<f32>()?);
        assert!(read_cache(&path, b"other", (2, 2))?.is_none());
        assert!(read_cache(&path, b"key", (3, 2))?.is_none());
        let other = dir.join(format!(
            "switchyard-distill-{}-other.st",
            std::process::id()
        ));
        candle_core::safetensors::save(&HashMap::from([("w".to_string(), t)]), &other)?;
        let err = read_cache(&other, b"key", (2, 2)).unwrap_err().to_string();
        assert!(err.contains("not a teacher-embedding cache"), "{err}");
        std::fs::remove_file(&path).ok();
        std::fs::remove_file(&other).ok();
        Ok(())
    }
}
