//! A lexical signal: TF-IDF over word 1–2-grams and a linear model per class, fused with a sequence
//! head's probabilities (the vLLM Semantic Router has keyword signals of its kind too).
//!
//! Features: lowercased alphanumeric words and their bigrams, sublinear tf (`1 + ln tf`) times a smooth
//! idf, L2-normalised (scikit-learn's `TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)`). Scores
//! are the linear model's decision values; probabilities are `softmax(scale · scores)`, and the fused
//! distribution is `(1 − weight) · head + weight · lexical`. `switchyard train-lexical` fits the model on
//! the router's training split and chooses `weight` and `scale` on its validation split.
//!
//! On disk, beside the router (`lexical.json` + `lexical.safetensors` for the domain head,
//! `lexical-<head>.*` for others): the head it fuses with, the
//! label names, `weight`, `scale`, the terms in feature order; `idf` `[dim]` and `weights`
//! `[classes, dim + 1]` (the last column is the bias) in f16.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::RouterError;

/// Words and bigrams of a text, as the features see them.
pub fn terms(text: &str) -> Vec<String> {
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    let mut t = words.clone();
    t.extend(words.windows(2).map(|w| format!("{} {}", w[0], w[1])));
    t
}

/// Sparse, L2-normalised feature vector: (feature index, value), sorted by index.
pub type Sparse = Vec<(u32, f32)>;

/// A fitted TF-IDF vectoriser.
#[derive(Debug, Clone)]
pub struct Tfidf {
    terms: Vec<String>,
    index: HashMap<String, u32>,
    idf: Vec<f32>,
}

impl Tfidf {
    /// Fits on texts: terms in at least 2 of them, smooth idf `ln((1 + n) / (1 + df)) + 1`.
    pub fn fit<'a>(texts: impl Iterator<Item = &'a str>) -> Tfidf {
        let mut df: HashMap<String, u32> = HashMap::new();
        let mut n = 0usize;
        for t in texts {
            n += 1;
            let mut ts = terms(t);
            ts.sort_unstable();
            ts.dedup();
            for term in ts {
                *df.entry(term).or_insert(0) += 1;
            }
        }
        let mut kept: Vec<(String, u32)> = df.into_iter().filter(|(_, d)| *d >= 2).collect();
        kept.sort();
        let idf = kept
            .iter()
            .map(|(_, d)| ((1.0 + n as f64) / (1.0 + f64::from(*d))).ln() as f32 + 1.0)
            .collect();
        Tfidf::new(kept.into_iter().map(|(t, _)| t).collect(), idf)
    }

    fn new(terms: Vec<String>, idf: Vec<f32>) -> Tfidf {
        let index = terms
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        Tfidf { terms, index, idf }
    }

    /// Number of features.
    pub fn dim(&self) -> usize {
        self.idf.len()
    }

    /// The feature vector of a text.
    pub fn transform(&self, text: &str) -> Sparse {
        let mut tf: HashMap<u32, f32> = HashMap::new();
        for t in terms(text) {
            if let Some(&i) = self.index.get(&t) {
                *tf.entry(i).or_insert(0.0) += 1.0;
            }
        }
        let mut v: Sparse = tf
            .into_iter()
            .map(|(i, c)| (i, (1.0 + c.ln()) * self.idf[i as usize]))
            .collect();
        v.sort_unstable_by_key(|x| x.0);
        let norm = v.iter().map(|x| x.1 * x.1).sum::<f32>().sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| x.1 /= norm);
        }
        v
    }
}

/// `lexical.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    head: String,
    labels: Vec<String>,
    weight: f32,
    scale: f32,
    terms: Vec<String>,
}

/// A lexical model fused with one sequence head.
#[derive(Debug, Clone)]
pub struct LexicalModel {
    /// The head it fuses with (`domain`).
    pub head: String,
    /// Label names, in weight-row order.
    pub labels: Vec<String>,
    /// Share of the fused distribution.
    pub weight: f32,
    /// Softmax temperature of the scores.
    pub scale: f32,
    tfidf: Tfidf,
    /// `[classes][dim + 1]`, bias last.
    weights: Vec<Vec<f32>>,
}

impl LexicalModel {
    /// Builds a model from its parts.
    pub fn new(
        head: &str,
        labels: Vec<String>,
        tfidf: Tfidf,
        weights: Vec<Vec<f32>>,
        weight: f32,
        scale: f32,
    ) -> LexicalModel {
        LexicalModel {
            head: head.to_string(),
            labels,
            weight,
            scale,
            tfidf,
            weights,
        }
    }

    /// The vectoriser.
    pub fn tfidf(&self) -> &Tfidf {
        &self.tfidf
    }

    /// Decision values per class.
    pub fn scores(&self, text: &str) -> Vec<f32> {
        let v = self.tfidf.transform(text);
        let dim = self.tfidf.dim();
        self.weights
            .iter()
            .map(|w| v.iter().map(|(j, x)| w[*j as usize] * x).sum::<f32>() + w[dim])
            .collect()
    }

    /// `softmax(scale · scores)`.
    pub fn probabilities(&self, scores: &[f32]) -> Vec<f32> {
        let scaled: Vec<f32> = scores.iter().map(|s| s * self.scale).collect();
        crate::classifier::softmax(&scaled)
    }

    /// The file stem of the model fused with `head`: `lexical` for the domain head (the first one
    /// shipped), `lexical-<head>` for the others.
    pub fn file_stem(head: &str) -> String {
        if head == "domain" {
            "lexical".to_string()
        } else {
            format!("lexical-{head}")
        }
    }

    /// Loads every lexical model of a router directory (`lexical.json`, `lexical-*.json`, each with
    /// its `.safetensors`), in file-name order.
    pub fn load_all(dir: &Path) -> Result<Vec<LexicalModel>, RouterError> {
        let mut stems: Vec<String> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter_map(|n| n.strip_suffix(".json").map(str::to_string))
            .filter(|n| n == "lexical" || n.starts_with("lexical-"))
            // A model is a `.json` with its `.safetensors` (not, say, a metrics file).
            .filter(|n| dir.join(format!("{n}.safetensors")).exists())
            .collect();
        stems.sort();
        stems
            .iter()
            .map(|stem| Self::load_stem(dir, stem))
            .collect()
    }

    fn load_stem(dir: &Path, stem: &str) -> Result<LexicalModel, RouterError> {
        let meta_path = dir.join(format!("{stem}.json"));
        let err = |m: String| RouterError::Classifier(format!("{}: {m}", meta_path.display()));
        let meta: Meta = serde_json::from_str(
            &std::fs::read_to_string(&meta_path).map_err(|e| err(e.to_string()))?,
        )
        .map_err(|e| err(e.to_string()))?;
        let tensors =
            candle_core::safetensors::load(dir.join(format!("{stem}.safetensors")), &Device::Cpu)?;
        let get = |name: &str| {
            tensors
                .get(name)
                .ok_or_else(|| err(format!("{stem}.safetensors has no `{name}`")))
                .and_then(|t| Ok(t.to_dtype(DType::F32)?))
        };
        let idf: Vec<f32> = get("idf")?.to_vec1()?;
        let weights: Vec<Vec<f32>> = get("weights")?.to_vec2()?;
        if idf.len() != meta.terms.len()
            || weights.len() != meta.labels.len()
            || weights.iter().any(|w| w.len() != idf.len() + 1)
        {
            return Err(err("terms, idf, labels and weights disagree in size".into()));
        }
        Ok(LexicalModel {
            head: meta.head,
            labels: meta.labels,
            weight: meta.weight,
            scale: meta.scale,
            tfidf: Tfidf::new(meta.terms, idf),
            weights,
        })
    }

    /// Writes `<stem>.json` + `<stem>.safetensors` into `dir` (see [`LexicalModel::file_stem`]).
    pub fn save(&self, dir: &Path) -> Result<(), RouterError> {
        let stem = Self::file_stem(&self.head);
        let meta = Meta {
            head: self.head.clone(),
            labels: self.labels.clone(),
            weight: self.weight,
            scale: self.scale,
            terms: self.tfidf.terms.clone(),
        };
        std::fs::write(
            dir.join(format!("{stem}.json")),
            serde_json::to_string(&meta).map_err(|e| RouterError::Classifier(e.to_string()))?,
        )?;
        let dim = self.tfidf.dim();
        let flat: Vec<f32> = self.weights.iter().flatten().copied().collect();
        let tensors: HashMap<String, Tensor> = [
            (
                "idf".to_string(),
                Tensor::new(self.tfidf.idf.clone(), &Device::Cpu)?.to_dtype(DType::F16)?,
            ),
            (
                "weights".to_string(),
                Tensor::from_vec(flat, (self.weights.len(), dim + 1), &Device::Cpu)?
                    .to_dtype(DType::F16)?,
            ),
        ]
        .into_iter()
        .collect();
        candle_core::safetensors::save(&tensors, dir.join(format!("{stem}.safetensors")))?;
        Ok(())
    }

    /// Fuses a head's distribution (`head_labels` order) with this model's, by label name; labels the
    /// lexical model lacks keep the head's share only.
    pub fn fuse(
        &self,
        head_labels: &[String],
        head_probs: &[f32],
        lexical_probs: &[f32],
    ) -> Vec<f32> {
        crate::classifier::fuse_by_label(
            head_labels,
            head_probs,
            &self.labels,
            lexical_probs,
            self.weight,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> LexicalModel {
        let texts = [
            "solve the equation",
            "solve for x",
            "the court ruled",
            "the court case",
        ];
        let tfidf = Tfidf::fit(texts.iter().copied());
        let dim = tfidf.dim();
        let mut math = vec![0.0; dim + 1];
        let mut law = vec![0.0; dim + 1];
        for (i, t) in tfidf.terms.iter().enumerate() {
            if t.contains("solve") {
                math[i] = 2.0;
            }
            if t.contains("court") {
                law[i] = 2.0;
            }
        }
        LexicalModel::new(
            "domain",
            vec!["math".into(), "law".into()],
            tfidf,
            vec![math, law],
            0.5,
            3.0,
        )
    }

    #[test]
    fn terms_are_words_and_bigrams() {
        assert_eq!(
            terms("Solve x+1!"),
            vec!["solve", "x", "1", "solve x", "x 1"]
        );
    }

    #[test]
    fn scores_fuse_and_round_trip_through_files() {
        let m = model();
        let s = m.scores("please solve this");
        assert!(s[0] > s[1], "{s:?}");
        let p = m.probabilities(&s);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        let fused = m.fuse(
            &["law".into(), "math".into(), "other".into()],
            &[0.5, 0.3, 0.2],
            &p,
        );
        assert!((fused[1] - (0.5 * 0.3 + 0.5 * p[0])).abs() < 1e-6);
        assert!((fused[2] - 0.1).abs() < 1e-6);

        let dir = std::env::temp_dir().join(format!("switchyard-lexical-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        m.save(&dir).unwrap();
        let back = LexicalModel::load_all(&dir).unwrap().remove(0);
        let s2 = back.scores("please solve this");
        // f16 storage: equal to a few parts in a thousand.
        for (a, b) in s.iter().zip(&s2) {
            assert!((a - b).abs() < 1e-2 * a.abs().max(1.0), "{s:?} vs {s2:?}");
        }
        assert_eq!(back.weight, 0.5);
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        assert!(LexicalModel::load_all(&dir).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
