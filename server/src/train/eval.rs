//! Evaluation of a saved router directory through the inference loader
//! (`switchyard_models::encoder::MultiHeadClassifier`), so the numbers are those of the artifact.

use super::data::bio_spans;
use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use switchyard_models::encoder::{HeadTask, MultiHeadClassifier};

/// Per-head predictions for a list of inputs.
pub struct Predictions {
    /// Sequence heads: head name → (argmax label, probability of label 1) per input.
    pub seq: HashMap<String, Vec<(usize, f32)>>,
    /// Token heads: head name → argmax label per token per input.
    pub tok: HashMap<String, Vec<Vec<usize>>>,
}

/// Index of the largest value (the first on ties).
pub fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &v)| if v > b.1 { (i, v) } else { b },
        )
        .0
}

fn softmax(row: &[f32]) -> Vec<f32> {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = row.iter().map(|v| (v - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// Runs every head on `ids` in length-sorted batches of `batch`.
pub fn predict(clf: &MultiHeadClassifier, ids: &[Vec<u32>], batch: usize) -> Result<Predictions> {
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| ids[i].len());
    let mut seq: HashMap<String, Vec<(usize, f32)>> = HashMap::new();
    let mut tok: HashMap<String, Vec<Vec<usize>>> = HashMap::new();
    for h in clf.heads() {
        match h.task() {
            HeadTask::Sequence(_) => {
                seq.insert(h.name().to_string(), vec![(0, 0.0); ids.len()]);
            }
            HeadTask::Token => {
                tok.insert(h.name().to_string(), vec![Vec::new(); ids.len()]);
            }
        }
    }
    for chunk in order.chunks(batch.max(1)) {
        let list: Vec<Vec<u32>> = chunk.iter().map(|&i| ids[i].clone()).collect();
        let (input, mask) = clf.batch_inputs(&list)?;
        for out in clf.forward(&input, &mask)? {
            if let Some(slot) = seq.get_mut(&out.name) {
                let rows = out.logits.to_vec2::<f32>()?;
                for (&i, row) in chunk.iter().zip(rows) {
                    let p = softmax(&row);
                    slot[i] = (argmax(&row), p.get(1).copied().unwrap_or(0.0));
                }
            } else if let Some(slot) = tok.get_mut(&out.name) {
                let rows = out.logits.to_vec3::<f32>()?;
                for ((&i, row), seq_ids) in chunk.iter().zip(rows).zip(&list) {
                    slot[i] = row.iter().take(seq_ids.len()).map(|r| argmax(r)).collect();
                }
            }
        }
    }
    Ok(Predictions { seq, tok })
}

/// Loads a saved router directory for evaluation (f32, CPU).
pub fn load(dir: &std::path::Path) -> Result<MultiHeadClassifier> {
    Ok(MultiHeadClassifier::load(dir, &Device::Cpu, DType::F32)?)
}

/// Accuracy of predictions against gold labels.
pub fn accuracy(pred: &[usize], gold: &[usize]) -> f64 {
    if gold.is_empty() {
        return f64::NAN;
    }
    pred.iter().zip(gold).filter(|(p, g)| p == g).count() as f64 / gold.len() as f64
}

/// Macro-F1 over the labels that occur in gold or predictions.
pub fn macro_f1(pred: &[usize], gold: &[usize], n_labels: usize) -> f64 {
    let mut f1s = Vec::new();
    for c in 0..n_labels {
        let tp = pred
            .iter()
            .zip(gold)
            .filter(|(p, g)| **p == c && **g == c)
            .count() as f64;
        let fp = pred
            .iter()
            .zip(gold)
            .filter(|(p, g)| **p == c && **g != c)
            .count() as f64;
        let fn_ = pred
            .iter()
            .zip(gold)
            .filter(|(p, g)| **p != c && **g == c)
            .count() as f64;
        if tp + fp + fn_ == 0.0 {
            continue;
        }
        f1s.push(if tp == 0.0 {
            0.0
        } else {
            2.0 * tp / (2.0 * tp + fp + fn_)
        });
    }
    if f1s.is_empty() {
        f64::NAN
    } else {
        f1s.iter().sum::<f64>() / f1s.len() as f64
    }
}

/// Binary precision, recall, F1 for class 1.
pub fn binary_prf(pred: &[usize], gold: &[usize]) -> (f64, f64, f64) {
    let tp = pred
        .iter()
        .zip(gold)
        .filter(|(p, g)| **p == 1 && **g == 1)
        .count() as f64;
    let fp = pred
        .iter()
        .zip(gold)
        .filter(|(p, g)| **p == 1 && **g == 0)
        .count() as f64;
    let fn_ = pred
        .iter()
        .zip(gold)
        .filter(|(p, g)| **p == 0 && **g == 1)
        .count() as f64;
    let p = if tp + fp > 0.0 { tp / (tp + fp) } else { 0.0 };
    let r = if tp + fn_ > 0.0 { tp / (tp + fn_) } else { 0.0 };
    let f = if p + r > 0.0 {
        2.0 * p * r / (p + r)
    } else {
        0.0
    };
    (p, r, f)
}

/// Word-level tags from token predictions: each word takes its first piece's tag.
pub fn word_tags(token_pred: &[usize], word_ids: &[Option<u32>], n_words: usize) -> Vec<usize> {
    let mut tags = vec![0usize; n_words];
    let mut prev = None;
    for (t, w) in token_pred.iter().zip(word_ids) {
        if let Some(w) = w {
            if prev != Some(*w) {
                if let Some(slot) = tags.get_mut(*w as usize) {
                    *slot = *t;
                }
            }
        }
        prev = *w;
    }
    tags
}

/// (true positives, predicted, gold) entity counts.
pub type Counts = (usize, usize, usize);

/// Entity-level counts (exact span and type), overall and per entity index.
pub fn entity_counts(
    pred: &[Vec<usize>],
    gold: &[Vec<usize>],
    n_entities: usize,
) -> (Counts, Vec<Counts>) {
    let mut all = (0, 0, 0);
    let mut per = vec![(0, 0, 0); n_entities];
    for (p, g) in pred.iter().zip(gold) {
        let ps = bio_spans(p);
        let gs = bio_spans(g);
        for s in &ps {
            all.1 += 1;
            per[s.2].1 += 1;
            if gs.contains(s) {
                all.0 += 1;
                per[s.2].0 += 1;
            }
        }
        for s in &gs {
            all.2 += 1;
            per[s.2].2 += 1;
        }
    }
    (all, per)
}

/// F1 from (tp, predicted, gold).
pub fn f1_of(c: Counts) -> f64 {
    if c.1 + c.2 == 0 {
        return f64::NAN;
    }
    2.0 * c.0 as f64 / (c.1 + c.2) as f64
}

/// Max |a − b| between two tensors of one shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics() {
        assert_eq!(accuracy(&[0, 1, 1], &[0, 1, 0]), 2.0 / 3.0);
        let (p, r, f) = binary_prf(&[1, 1, 0, 0], &[1, 0, 1, 0]);
        assert_eq!((p, r, f), (0.5, 0.5, 0.5));
        assert!((macro_f1(&[0, 1], &[0, 1], 3) - 1.0).abs() < 1e-12);
        // word tags from first pieces; spans exact.
        let wt = word_tags(
            &[0, 1, 2, 2, 0],
            &[None, Some(0), Some(0), Some(1), None],
            2,
        );
        assert_eq!(wt, vec![1, 2]);
        let (all, _) = entity_counts(&[vec![1, 2, 0]], &[vec![1, 0, 0]], 13);
        assert_eq!(all, (0, 1, 1));
    }
}
