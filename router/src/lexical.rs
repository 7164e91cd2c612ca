//! A lexical signal: TF-IDF features of the text and a linear model per class, fused with a sequence
//! head's probabilities (the vLLM Semantic Router has keyword signals of its kind too).
//!
//! Features, each block L2-normalised on its own and the blocks side by side (scikit-learn's
//! `TfidfVectorizer(sublinear_tf=True, min_df=2)` per block, `hstack`ed):
//! * words: lowercased alphanumeric words, one-letter ones included (scikit-learn's default pattern
//!   drops them), and their bigrams (`ngram_range=(1, 2)`);
//! * optionally characters: n-grams of each whitespace-separated word padded with a space on both sides
//!   (`analyzer="char_wb"`, e.g. 2–5);
//! * optionally the embedding signal's sentence embedding times a fixed scale, so one linear model reads
//!   the text's words and its meaning together (a "joint" model, see [`EmbeddingFeatures`]).
//!
//! tf is sublinear (`1 + ln tf`) times a smooth idf. Scores are the linear model's decision values;
//! probabilities are `softmax(scale · scores)`, and the fused distribution is
//! `(1 − weight) · head + weight · lexical`. `switchyard train-lexical` fits the model on the router's
//! training split and chooses `weight` and `scale` on its validation split.
//!
//! On disk, beside the router (`lexical.json` + `lexical.safetensors` for the domain head,
//! `lexical-<head>.*` for others, `…-joint.*` for a joint model; a head may have a text-only model
//! and a joint one, and the router uses the joint one when it runs the embedding signal): the head
//! it fuses with, the label names, `weight`, `scale`, the word terms in feature order (or, for a
//! model fitted on the same word terms as another model of its head, `terms_from`: that model's
//! stem and the terms' SHA-256), the character block (`char_wb`: n-gram range and terms) and the
//! embedding features (`embedding`) when present; `idf` `[words]` and `char_idf` `[chars]` in f16;
//! the weights over `words + chars + embedding + 1` features (the last is the bias) in 8 bits,
//! feature-major: `weights_u8` `[features, classes]` and a per-feature f16 `weights_scale` (models
//! written before that: `weights` `[classes, features]` in f16, still read).

use std::collections::HashMap;
use std::path::Path;

use foldhash::fast::FixedState;

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

/// Calls `f` with every character n-gram (`min_n..=max_n` characters) of each whitespace-separated,
/// lowercased word of `text` padded with one space on both sides; a padded word shorter than `n`
/// counts once, whole, and ends its word's n-grams (scikit-learn's `char_wb` analyzer).
pub fn for_each_char_ngram(text: &str, min_n: usize, max_n: usize, mut f: impl FnMut(&str)) {
    let lower = text.to_lowercase();
    let mut padded = String::new();
    // Byte offset of every character boundary of the padded word.
    let mut bounds: Vec<usize> = Vec::new();
    for word in lower.split_whitespace() {
        padded.clear();
        padded.push(' ');
        padded.push_str(word);
        padded.push(' ');
        bounds.clear();
        bounds.extend(padded.char_indices().map(|(i, _)| i));
        bounds.push(padded.len());
        let chars = bounds.len() - 1;
        for n in min_n..=max_n {
            if chars <= n {
                f(&padded);
                break;
            }
            for start in 0..=chars - n {
                f(&padded[bounds[start]..bounds[start + n]]);
            }
        }
    }
}

/// Character n-grams of a text, as [`for_each_char_ngram`] yields them.
pub fn char_ngrams(text: &str, min_n: usize, max_n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for_each_char_ngram(text, min_n, max_n, |g| out.push(g.to_string()));
    out
}

/// Sparse, L2-normalised feature vector: (feature index, value), sorted by index.
pub type Sparse = Vec<(u32, f32)>;

/// How a [`Tfidf`] cuts a text into terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Analyzer {
    /// Words and word bigrams ([`terms`]).
    Words,
    /// Character n-grams within padded words ([`for_each_char_ngram`]).
    CharWb {
        /// Shortest n-gram, in characters.
        min_n: usize,
        /// Longest n-gram, in characters.
        max_n: usize,
    },
}

impl Analyzer {
    fn for_each(self, text: &str, mut f: impl FnMut(&str)) {
        match self {
            Analyzer::Words => terms(text).iter().for_each(|t| f(t)),
            Analyzer::CharWb { min_n, max_n } => for_each_char_ngram(text, min_n, max_n, f),
        }
    }
}

/// A fitted TF-IDF vectoriser.
#[derive(Debug, Clone)]
pub struct Tfidf {
    analyzer: Analyzer,
    terms: Vec<String>,
    index: TermIndex,
    idf: Vec<f32>,
}

/// The first term of `terms` that an earlier one repeats.
fn first_repeat(terms: &[String]) -> Option<&str> {
    let mut seen = std::collections::HashSet::with_capacity(terms.len());
    terms
        .iter()
        .find(|t| !seen.insert(t.as_str()))
        .map(String::as_str)
}

/// Term -> (feature index, idf), keyed by a seeded 64-bit hash of the term.
///
/// A look-up costs one cache line: a `String` key would cost another to compare, and a separate idf
/// array a third. That matters because a routed request looks up several hundred n-grams in tables
/// of 10^5 terms, right after decode steps have flushed the caches (measured on the shipped models:
/// ~3.7x slower cold than warm with `String` keys). The seed is chosen at build so that no two
/// vocabulary terms share a hash; a term outside the vocabulary passes for one only if its hash
/// equals one of theirs (about 10^5 / 2^64 per look-up).
#[derive(Debug, Clone)]
struct TermIndex {
    hasher: FixedState,
    map: HashMap<u64, (u32, f32), FixedState>,
}

impl TermIndex {
    /// The index of `terms`, which should be distinct (a term given twice keeps its first
    /// feature: no seed could separate it from itself).
    fn new(terms: &[String], idf: &[f32]) -> TermIndex {
        use std::collections::hash_map::Entry;
        use std::hash::BuildHasher;
        'seeds: for seed in 0u64.. {
            let hasher = FixedState::with_seed(seed);
            let mut map = HashMap::with_capacity_and_hasher(terms.len(), FixedState::default());
            for (i, (t, &w)) in terms.iter().zip(idf).enumerate() {
                match map.entry(hasher.hash_one(t.as_str())) {
                    Entry::Vacant(v) => {
                        v.insert((i as u32, w));
                    }
                    Entry::Occupied(o) if terms[o.get().0 as usize] == *t => {}
                    Entry::Occupied(_) => continue 'seeds,
                }
            }
            return TermIndex { hasher, map };
        }
        unreachable!("some seed separates distinct terms")
    }

    /// The key of a term.
    fn hash(&self, term: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(term)
    }

    /// The feature index and idf of the term with key `hash`, if it is in the vocabulary.
    fn get_hashed(&self, hash: u64) -> Option<(u32, f32)> {
        self.map.get(&hash).copied()
    }
}

impl Tfidf {
    /// Fits word features on texts: terms in at least 2 of them, smooth idf `ln((1 + n) / (1 + df)) + 1`.
    pub fn fit<'a>(texts: impl Iterator<Item = &'a str>) -> Tfidf {
        Self::fit_with(Analyzer::Words, texts)
    }

    /// Fits features of the given kind on texts, as [`Tfidf::fit`].
    pub fn fit_with<'a>(analyzer: Analyzer, texts: impl Iterator<Item = &'a str>) -> Tfidf {
        let mut df: HashMap<String, u32> = HashMap::new();
        let mut n = 0usize;
        for t in texts {
            n += 1;
            let mut doc: Vec<String> = Vec::new();
            analyzer.for_each(t, |term| doc.push(term.to_string()));
            doc.sort_unstable();
            doc.dedup();
            for term in doc {
                *df.entry(term).or_insert(0) += 1;
            }
        }
        let mut kept: Vec<(String, u32)> = df.into_iter().filter(|(_, d)| *d >= 2).collect();
        kept.sort();
        let idf = kept
            .iter()
            .map(|(_, d)| ((1.0 + n as f64) / (1.0 + f64::from(*d))).ln() as f32 + 1.0)
            .collect();
        Tfidf::new(analyzer, kept.into_iter().map(|(t, _)| t).collect(), idf)
    }

    fn new(analyzer: Analyzer, terms: Vec<String>, idf: Vec<f32>) -> Tfidf {
        let index = TermIndex::new(&terms, &idf);
        Tfidf {
            analyzer,
            terms,
            index,
            idf,
        }
    }

    /// Number of features.
    pub fn dim(&self) -> usize {
        self.idf.len()
    }

    /// How it cuts texts into terms.
    pub fn analyzer(&self) -> Analyzer {
        self.analyzer
    }

    /// The feature vector of a text.
    pub fn transform(&self, text: &str) -> Sparse {
        // Terms are hashed a few hundred at a time and then looked up together, so that the
        // look-ups' cache misses overlap (measured: a quarter less time than one term at a time).
        const AT_ONCE: usize = 256;
        let mut tf: HashMap<u32, (f32, f32), FixedState> = HashMap::default();
        let mut hashes = Vec::with_capacity(AT_ONCE);
        let mut count = |hashes: &mut Vec<u64>| {
            for h in hashes.drain(..) {
                if let Some((i, idf)) = self.index.get_hashed(h) {
                    tf.entry(i).or_insert((0.0, idf)).0 += 1.0;
                }
            }
        };
        self.analyzer.for_each(text, |t| {
            hashes.push(self.index.hash(t));
            if hashes.len() == AT_ONCE {
                count(&mut hashes);
            }
        });
        count(&mut hashes);
        let mut v: Sparse = tf
            .into_iter()
            .map(|(i, (c, idf))| (i, (1.0 + c.ln()) * idf))
            .collect();
        v.sort_unstable_by_key(|x| x.0);
        let norm = v.iter().map(|x| x.1 * x.1).sum::<f32>().sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| x.1 /= norm);
        }
        v
    }
}

/// The text features of a lexical model: word TF-IDF, optionally character TF-IDF beside it.
#[derive(Debug, Clone)]
pub struct TextFeatures {
    /// Word 1–2-grams.
    pub words: Tfidf,
    /// Character n-grams, if the model reads them (feature indices after the words').
    pub chars: Option<Tfidf>,
}

impl TextFeatures {
    /// Fits word features and, with `char_range`, character n-gram features on texts.
    pub fn fit(texts: &[&str], char_range: Option<(usize, usize)>) -> TextFeatures {
        TextFeatures {
            words: Tfidf::fit(texts.iter().copied()),
            chars: char_range.map(|(min_n, max_n)| {
                Tfidf::fit_with(Analyzer::CharWb { min_n, max_n }, texts.iter().copied())
            }),
        }
    }

    /// Number of features.
    pub fn dim(&self) -> usize {
        self.words.dim() + self.chars.as_ref().map_or(0, Tfidf::dim)
    }

    /// The feature vector of a text: each block L2-normalised, the character block after the words.
    pub fn transform(&self, text: &str) -> Sparse {
        let mut v = self.words.transform(text);
        if let Some(chars) = &self.chars {
            let offset = self.words.dim() as u32;
            v.extend(
                chars
                    .transform(text)
                    .into_iter()
                    .map(|(i, x)| (i + offset, x)),
            );
        }
        v
    }
}

/// Sentence-embedding features of a joint lexical model: the embedding signal's encoder output, times
/// `scale`, after the text features. The router computes them with the embedding signal's encoder,
/// which must be set up as recorded here (a mismatch is an error at load); without the embedding
/// signal the model scores on its text features alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingFeatures {
    /// Factor on the (L2-normalised) embedding.
    pub scale: f32,
    /// Width of the embedding.
    pub dim: usize,
    /// The encoder's name.
    pub encoder: String,
    /// Token budget of the encoder's input.
    pub max_tokens: usize,
    /// Whether the encoder's layer weights are held as Q8_0.
    pub quantized: bool,
    /// The encoder's first layers it reads (`None`: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<usize>,
}

/// The character block of `lexical.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CharMeta {
    min_n: usize,
    max_n: usize,
    terms: Vec<String>,
}

/// Where a model's word terms are kept when another model of the same directory lists the same
/// ones (the domain head's text-only and joint models are fitted on one vocabulary).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SharedTerms {
    /// The file stem of the model that lists them (`lexical`).
    stem: String,
    /// [`terms_sha256`] of the terms when this model was written, checked at load.
    sha256: String,
}

/// `lexical.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    head: String,
    labels: Vec<String>,
    weight: f32,
    scale: f32,
    /// The word terms in feature order; empty when they are another model's ([`Meta::terms_from`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    terms: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    terms_from: Option<SharedTerms>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    char_wb: Option<CharMeta>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    embedding: Option<EmbeddingFeatures>,
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
    features: TextFeatures,
    embedding: Option<EmbeddingFeatures>,
    /// Per feature (text features, embedding, then the bias), its weight for every class.
    weights: FeatureMajor,
}

/// A linear model's weights stored feature by feature (`[features][classes]`), so that scoring a
/// sparse vector reads one contiguous run per non-zero feature instead of one per class.
#[derive(Debug, Clone)]
struct FeatureMajor {
    classes: usize,
    values: Vec<f32>,
}

impl FeatureMajor {
    /// From `[classes][width]` rows (all of one width).
    fn from_rows(rows: &[Vec<f32>]) -> FeatureMajor {
        let classes = rows.len();
        let width = rows.first().map_or(0, Vec::len);
        let mut values = vec![0f32; width * classes];
        for (c, row) in rows.iter().enumerate() {
            for (j, w) in row.iter().enumerate() {
                values[j * classes + c] = *w;
            }
        }
        FeatureMajor { classes, values }
    }

    /// Features (with the bias).
    fn width(&self) -> usize {
        self.values.len() / self.classes.max(1)
    }

    /// The weights of feature `j`, one per class.
    fn feature(&self, j: usize) -> &[f32] {
        &self.values[j * self.classes..(j + 1) * self.classes]
    }

    /// Back to `[classes][width]` rows.
    #[cfg(test)]
    fn rows(&self) -> Vec<Vec<f32>> {
        (0..self.classes)
            .map(|c| (0..self.width()).map(|j| self.feature(j)[c]).collect())
            .collect()
    }

    /// 8-bit storage: per feature, an f16 scale (its largest absolute weight / 127) and one byte per
    /// class, `round(w / scale) + 128`.
    fn quantize(&self) -> (Vec<u8>, Vec<half::f16>) {
        let mut bytes = Vec::with_capacity(self.values.len());
        let mut scales = Vec::with_capacity(self.width());
        for j in 0..self.width() {
            let ws = self.feature(j);
            let max = ws.iter().fold(0f32, |m, w| m.max(w.abs()));
            let scale = half::f16::from_f32(max / 127.0);
            let s = scale.to_f32();
            scales.push(scale);
            bytes.extend(ws.iter().map(|w| {
                let q = if s > 0.0 { (w / s).round() } else { 0.0 };
                (q.clamp(-127.0, 127.0) + 128.0) as u8
            }));
        }
        (bytes, scales)
    }

    /// The inverse of [`FeatureMajor::quantize`].
    fn dequantize(classes: usize, bytes: &[u8], scales: &[half::f16]) -> FeatureMajor {
        let values = bytes
            .chunks(classes.max(1))
            .zip(scales)
            .flat_map(|(qs, s)| {
                let s = s.to_f32();
                qs.iter().map(move |q| (f32::from(*q) - 128.0) * s)
            })
            .collect();
        FeatureMajor { classes, values }
    }
}

impl LexicalModel {
    /// Builds a model on word features from its parts (`weights`: `[classes][dim + 1]`, bias last).
    pub fn new(
        head: &str,
        labels: Vec<String>,
        tfidf: Tfidf,
        weights: Vec<Vec<f32>>,
        weight: f32,
        scale: f32,
    ) -> LexicalModel {
        let features = TextFeatures {
            words: tfidf,
            chars: None,
        };
        Self::joint(head, labels, features, None, weights, weight, scale)
    }

    /// Builds a model on text features and, optionally, embedding features (`weights`:
    /// `[classes][features.dim() + embedding.dim + 1]`, bias last).
    pub fn joint(
        head: &str,
        labels: Vec<String>,
        features: TextFeatures,
        embedding: Option<EmbeddingFeatures>,
        weights: Vec<Vec<f32>>,
        weight: f32,
        scale: f32,
    ) -> LexicalModel {
        LexicalModel {
            head: head.to_string(),
            labels,
            weight,
            scale,
            features,
            embedding,
            weights: FeatureMajor::from_rows(&weights),
        }
    }

    /// The word vectoriser.
    pub fn tfidf(&self) -> &Tfidf {
        &self.features.words
    }

    /// The text features.
    pub fn features(&self) -> &TextFeatures {
        &self.features
    }

    /// The embedding features, if the model reads the sentence embedding.
    pub fn embedding_features(&self) -> Option<&EmbeddingFeatures> {
        self.embedding.as_ref()
    }

    /// Decision values per class from the text features alone (the bias included): the whole score
    /// of a model without embedding features.
    pub fn text_scores(&self, text: &str) -> Vec<f32> {
        let v = self.features.transform(text);
        let mut scores = self.weights.feature(self.weights.width() - 1).to_vec();
        for (j, x) in v {
            for (s, w) in scores.iter_mut().zip(self.weights.feature(j as usize)) {
                *s += w * x;
            }
        }
        scores
    }

    /// Adds the embedding features' share to [`LexicalModel::text_scores`]; nothing for a model
    /// without them.
    pub fn add_embedding(&self, scores: &mut [f32], embedding: &[f32]) {
        let Some(e) = &self.embedding else {
            return;
        };
        let offset = self.features.dim();
        for (j, x) in embedding.iter().take(e.dim).enumerate() {
            let x = e.scale * x;
            for (s, w) in scores.iter_mut().zip(self.weights.feature(offset + j)) {
                *s += w * x;
            }
        }
    }

    /// Decision values per class: text features, plus the embedding's share when given.
    pub fn scores(&self, text: &str, embedding: Option<&[f32]>) -> Vec<f32> {
        let mut s = self.text_scores(text);
        if let Some(e) = embedding {
            self.add_embedding(&mut s, e);
        }
        s
    }

    /// `softmax(scale · scores)`.
    pub fn probabilities(&self, scores: &[f32]) -> Vec<f32> {
        let scaled: Vec<f32> = scores.iter().map(|s| s * self.scale).collect();
        crate::classifier::softmax(&scaled)
    }

    /// The file stem of a model fused with `head`: `lexical` for the domain head (the first one
    /// shipped), `lexical-<head>` for the others; a joint model's (with embedding features) ends in
    /// `-joint`. A head may have one of each kind.
    pub fn file_stem(head: &str, joint: bool) -> String {
        let base = if head == "domain" {
            "lexical".to_string()
        } else {
            format!("lexical-{head}")
        };
        if joint {
            format!("{base}-joint")
        } else {
            base
        }
    }

    /// This model's file stem ([`LexicalModel::file_stem`]).
    pub fn stem(&self) -> String {
        Self::file_stem(&self.head, self.embedding.is_some())
    }

    /// Loads every lexical model of a router directory (`lexical.json`, `lexical-*.json`, each with
    /// its `.safetensors`), in file-name order.
    pub fn load_all(dir: &Path) -> Result<Vec<LexicalModel>, RouterError> {
        let metas = model_stems(dir)?
            .into_iter()
            .map(|stem| {
                let meta = read_meta(dir, &stem)?;
                Ok((stem, meta))
            })
            .collect::<Result<Vec<_>, RouterError>>()?;
        let shared = metas
            .iter()
            .map(|(stem, meta)| shared_terms(dir, stem, meta, &metas))
            .collect::<Result<Vec<_>, RouterError>>()?;
        metas
            .into_iter()
            .zip(shared)
            .map(|((stem, mut meta), terms)| {
                if let Some(terms) = terms {
                    meta.terms = terms;
                }
                Self::from_meta(dir, &stem, meta)
            })
            .collect()
    }

    /// The model of `<stem>.json` (its word terms resolved) and `<stem>.safetensors`.
    fn from_meta(dir: &Path, stem: &str, meta: Meta) -> Result<LexicalModel, RouterError> {
        let err = |m: String| meta_error(dir, stem, m);
        let tensors =
            candle_core::safetensors::load(dir.join(format!("{stem}.safetensors")), &Device::Cpu)?;
        let get = |name: &str| {
            tensors
                .get(name)
                .ok_or_else(|| err(format!("{stem}.safetensors has no `{name}`")))
                .and_then(|t| Ok(t.to_dtype(DType::F32)?))
        };
        let idf: Vec<f32> = get("idf")?.to_vec1()?;
        let classes = meta.labels.len();
        // 8-bit (`weights_u8` `[features, classes]` + `weights_scale` `[features]`) or, as first
        // shipped, f16 rows (`weights` `[classes, features]`).
        let weights = match tensors.get("weights_u8") {
            Some(q) => {
                let bytes: Vec<u8> = q.flatten_all()?.to_vec1()?;
                let scales: Vec<half::f16> = tensors
                    .get("weights_scale")
                    .ok_or_else(|| err(format!("{stem}.safetensors has no `weights_scale`")))?
                    .to_dtype(DType::F16)?
                    .to_vec1()?;
                if q.dims() != [scales.len(), classes] {
                    return Err(err(format!(
                        "weights_u8 is {:?}, expected [{}, {classes}]",
                        q.dims(),
                        scales.len()
                    )));
                }
                FeatureMajor::dequantize(classes, &bytes, &scales)
            }
            None => {
                let rows: Vec<Vec<f32>> = get("weights")?.to_vec2()?;
                if rows.len() != classes {
                    return Err(err(format!("weights should have {classes} rows")));
                }
                FeatureMajor::from_rows(&rows)
            }
        };
        if idf.len() != meta.terms.len() {
            return Err(err("terms and idf disagree in size".into()));
        }
        if let Some(t) = first_repeat(&meta.terms) {
            return Err(err(format!("the term `{t}` is listed twice")));
        }
        if let Some(t) = meta.char_wb.as_ref().and_then(|c| first_repeat(&c.terms)) {
            return Err(err(format!("char_wb: the term `{t}` is listed twice")));
        }
        let chars = match meta.char_wb {
            Some(c) => {
                let char_idf: Vec<f32> = get("char_idf")?.to_vec1()?;
                if char_idf.len() != c.terms.len() || c.min_n == 0 || c.min_n > c.max_n {
                    return Err(err(
                        "char_wb: terms and char_idf disagree in size, or a bad n-gram range"
                            .into(),
                    ));
                }
                let analyzer = Analyzer::CharWb {
                    min_n: c.min_n,
                    max_n: c.max_n,
                };
                Some(Tfidf::new(analyzer, c.terms, char_idf))
            }
            None => None,
        };
        let features = TextFeatures {
            words: Tfidf::new(Analyzer::Words, meta.terms, idf),
            chars,
        };
        let width = features.dim() + meta.embedding.as_ref().map_or(0, |e| e.dim) + 1;
        if weights.width() != width {
            return Err(err(format!(
                "weights cover {} features, expected {width} (features, embedding, bias)",
                weights.width()
            )));
        }
        Ok(LexicalModel {
            head: meta.head,
            labels: meta.labels,
            weight: meta.weight,
            scale: meta.scale,
            features,
            embedding: meta.embedding,
            weights,
        })
    }

    /// The model as [`LexicalModel::save`] stores it (f16 idf, 8-bit weights): what a router loading
    /// the files computes, for measuring before saving.
    pub fn as_stored(&self) -> LexicalModel {
        let round = |t: &mut Tfidf| {
            let idf = t
                .idf
                .iter()
                .map(|&x| half::f16::from_f32(x).to_f32())
                .collect();
            *t = Tfidf::new(t.analyzer, std::mem::take(&mut t.terms), idf);
        };
        let mut m = self.clone();
        round(&mut m.features.words);
        if let Some(c) = m.features.chars.as_mut() {
            round(c);
        }
        let (bytes, scales) = self.weights.quantize();
        m.weights = FeatureMajor::dequantize(self.weights.classes, &bytes, &scales);
        m
    }

    /// Writes `<stem>.json` + `<stem>.safetensors` into `dir` (see [`LexicalModel::file_stem`]).
    pub fn save(&self, dir: &Path) -> Result<(), RouterError> {
        let stem = self.stem();
        let char_wb = self.features.chars.as_ref().map(|c| {
            let (min_n, max_n) = match c.analyzer {
                Analyzer::CharWb { min_n, max_n } => (min_n, max_n),
                Analyzer::Words => (1, 1),
            };
            CharMeta {
                min_n,
                max_n,
                terms: c.terms.clone(),
            }
        });
        let terms = &self.features.words.terms;
        let terms_from = share_terms(dir, &stem, &self.head, terms)?;
        let meta = Meta {
            head: self.head.clone(),
            labels: self.labels.clone(),
            weight: self.weight,
            scale: self.scale,
            terms: if terms_from.is_some() {
                Vec::new()
            } else {
                terms.clone()
            },
            terms_from,
            char_wb,
            embedding: self.embedding.clone(),
        };
        write_meta(dir, &stem, &meta)?;
        let f16 = |v: &[f32]| -> Result<Tensor, RouterError> {
            Ok(Tensor::new(v, &Device::Cpu)?.to_dtype(DType::F16)?)
        };
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        tensors.insert("idf".into(), f16(&self.features.words.idf)?);
        if let Some(c) = &self.features.chars {
            tensors.insert("char_idf".into(), f16(&c.idf)?);
        }
        let (bytes, scales) = self.weights.quantize();
        let width = scales.len();
        tensors.insert(
            "weights_u8".into(),
            Tensor::from_vec(bytes, (width, self.weights.classes), &Device::Cpu)?,
        );
        tensors.insert(
            "weights_scale".into(),
            Tensor::from_vec(scales, width, &Device::Cpu)?,
        );
        save_tensors_whole(&tensors, &dir.join(format!("{stem}.safetensors")))
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

/// The stems of the lexical models in `dir` (`lexical`, `lexical-*`: a `.json` with its
/// `.safetensors`, not, say, a metrics file), sorted.
fn model_stems(dir: &Path) -> Result<Vec<String>, RouterError> {
    let mut stems: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter_map(|n| n.strip_suffix(".json").map(str::to_string))
        .filter(|n| n == "lexical" || n.starts_with("lexical-"))
        .filter(|n| dir.join(format!("{n}.safetensors")).exists())
        .collect();
    stems.sort();
    Ok(stems)
}

fn meta_error(dir: &Path, stem: &str, message: String) -> RouterError {
    RouterError::Classifier(format!(
        "{}: {message}",
        dir.join(format!("{stem}.json")).display()
    ))
}

fn read_meta(dir: &Path, stem: &str) -> Result<Meta, RouterError> {
    let err = |m: String| meta_error(dir, stem, m);
    let text = std::fs::read_to_string(dir.join(format!("{stem}.json")))
        .map_err(|e| err(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| err(e.to_string()))
}

/// Writes `<stem>.json` whole or not at all, so a reader never sees half of one.
fn write_meta(dir: &Path, stem: &str, meta: &Meta) -> Result<(), RouterError> {
    let json = serde_json::to_string(meta).map_err(|e| RouterError::Classifier(e.to_string()))?;
    write_whole(&dir.join(format!("{stem}.json")), json.as_bytes())
}

/// Writes `path` whole or not at all: a temporary file beside it, renamed over it. A reader (or a
/// server that has the old file mapped) sees the old file or the new one, never half of one.
pub(crate) fn write_whole(path: &Path, bytes: &[u8]) -> Result<(), RouterError> {
    let partial = partial_path(path);
    std::fs::write(&partial, bytes)?;
    std::fs::rename(&partial, path)?;
    Ok(())
}

/// [`write_whole`] for tensors in safetensors format.
pub(crate) fn save_tensors_whole(
    tensors: &HashMap<String, Tensor>,
    path: &Path,
) -> Result<(), RouterError> {
    let partial = partial_path(path);
    candle_core::safetensors::save(tensors, &partial)?;
    std::fs::rename(&partial, path)?;
    Ok(())
}

/// `dir/.name.partial` for `dir/name`.
fn partial_path(path: &Path) -> std::path::PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.partial"))
}

/// SHA-256 (hex) of word terms, each followed by a newline.
fn terms_sha256(terms: &[String]) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for t in terms {
        hasher.update(t.as_bytes());
        hasher.update(b"\n");
    }
    format!("{:x}", hasher.finalize())
}

/// The word terms `meta` (of `stem`) takes from another model of `metas`, checked against the
/// fingerprint it was written with; `None` when it lists its own.
fn shared_terms(
    dir: &Path,
    stem: &str,
    meta: &Meta,
    metas: &[(String, Meta)],
) -> Result<Option<Vec<String>>, RouterError> {
    let Some(from) = &meta.terms_from else {
        return Ok(None);
    };
    let err = |m: String| meta_error(dir, stem, m);
    if !meta.terms.is_empty() {
        return Err(err(format!(
            "lists terms and also takes them from `{}`",
            from.stem
        )));
    }
    let source = metas.iter().find(|(s, _)| *s == from.stem).ok_or_else(|| {
        err(format!(
            "takes its terms from `{}`, which is missing",
            from.stem
        ))
    })?;
    if source.1.terms_from.is_some() {
        return Err(err(format!(
            "takes its terms from `{}`, which does not list them itself",
            from.stem
        )));
    }
    if terms_sha256(&source.1.terms) != from.sha256 {
        return Err(err(format!(
            "`{}` lists other terms than the ones this model was fitted on (it was retrained \
             since): retrain this model too",
            from.stem
        )));
    }
    Ok(Some(source.1.terms.clone()))
}

/// Before `<stem>.json` (a model of `head`) is written with `terms`: which model of the same head in
/// `dir` already lists the same terms (so this one refers to it instead of listing them again), if
/// any. Models that take their terms from `stem` while `terms` differ from those get their terms
/// written out first, so that they keep loading; and `stem` shares nothing while others take terms
/// from it (no chains). Two fits writing into one directory at once can still race: run them one
/// after the other.
fn share_terms(
    dir: &Path,
    stem: &str,
    head: &str,
    terms: &[String],
) -> Result<Option<SharedTerms>, RouterError> {
    if !dir.exists() {
        return Ok(None);
    }
    let siblings: Vec<(String, Meta)> = model_stems(dir)?
        .into_iter()
        .filter(|s| s != stem)
        .filter_map(|s| match read_meta(dir, &s) {
            Ok(meta) => Some((s, meta)),
            Err(e) => {
                tracing::warn!("not sharing terms with {s}: {e}");
                None
            }
        })
        .collect();
    let sha256 = terms_sha256(terms);
    let mut referenced = false;
    for (s, meta) in &siblings {
        let Some(from) = meta.terms_from.as_ref().filter(|f| f.stem == stem) else {
            continue;
        };
        if from.sha256 == sha256 {
            referenced = true;
            continue;
        }
        // `stem` is being rewritten with other terms: give `s` its own copy of the old ones.
        let old = read_meta(dir, stem)
            .ok()
            .filter(|old| old.terms_from.is_none() && terms_sha256(&old.terms) == from.sha256);
        if let Some(old) = old {
            let mut meta = meta.clone();
            meta.terms = old.terms;
            meta.terms_from = None;
            write_meta(dir, s, &meta)?;
        }
    }
    if referenced || terms.is_empty() {
        return Ok(None);
    }
    Ok(siblings
        .iter()
        .find(|(_, m)| m.head == head && m.terms_from.is_none() && m.terms == terms)
        .map(|(s, _)| SharedTerms {
            stem: s.clone(),
            sha256,
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> LexicalModel {
        model_for("domain", &["math", "law"], "the court case")
    }

    /// A model of `head` with the two `labels`, fitted on three fixed texts and `last`.
    fn model_for(head: &str, labels: &[&str; 2], last: &str) -> LexicalModel {
        let texts = ["solve the equation", "solve for x", "the court ruled", last];
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
            head,
            labels.map(String::from).to_vec(),
            tfidf,
            vec![math, law],
            0.5,
            3.0,
        )
    }

    /// `m` with a one-value embedding block (weight 1 for its first class): its joint variant, on
    /// the same word terms.
    fn joint_of(m: &LexicalModel) -> LexicalModel {
        let words = m.features.words.clone();
        let dim = words.dim();
        let weight = |j: usize, k: usize| m.weights.values[j * m.weights.classes + k];
        let rows: Vec<Vec<f32>> = (0..m.labels.len())
            .map(|k| {
                let mut row: Vec<f32> = (0..dim).map(|j| weight(j, k)).collect();
                row.push(if k == 0 { 1.0 } else { 0.0 });
                row.push(weight(dim, k));
                row
            })
            .collect();
        let embedding = EmbeddingFeatures {
            scale: 1.0,
            dim: 1,
            encoder: "enc".into(),
            max_tokens: 64,
            quantized: false,
            layers: None,
        };
        LexicalModel::joint(
            &m.head,
            m.labels.clone(),
            TextFeatures { words, chars: None },
            Some(embedding),
            rows,
            m.weight,
            m.scale,
        )
    }

    fn meta_json(dir: &Path, stem: &str) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join(format!("{stem}.json"))).unwrap()).unwrap()
    }

    #[test]
    fn models_fitted_on_one_vocabulary_list_it_once_until_one_is_refitted() {
        let dir =
            std::env::temp_dir().join(format!("switchyard-lexical-shared-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let domain = model();
        let joint = joint_of(&domain);
        // Another head's model on the same terms keeps its own (deleting one head's files never
        // breaks another's).
        let guard = model_for("jailbreak", &["benign", "jailbreak"], "the court case");
        domain.save(&dir).unwrap();
        joint.save(&dir).unwrap();
        guard.save(&dir).unwrap();
        let texts = ["please solve this", "the court case of x", "nothing known"];
        let scores = |models: &[LexicalModel]| -> Vec<Vec<f32>> {
            models
                .iter()
                .flat_map(|m| {
                    let e = m.embedding_features().map(|_| &[0.5f32][..]);
                    texts.iter().map(move |t| m.scores(t, e))
                })
                .collect()
        };
        // load_all's order: lexical, lexical-jailbreak, lexical-joint.
        let stored = scores(&[domain.as_stored(), guard.as_stored(), joint.as_stored()]);

        // The joint model refers to the text-only model's terms instead of listing them again.
        let shared = meta_json(&dir, "lexical-joint");
        assert!(shared.get("terms").is_none(), "{shared}");
        assert_eq!(shared["terms_from"]["stem"], "lexical");
        assert!(meta_json(&dir, "lexical-jailbreak")["terms"].is_array());
        assert_eq!(
            meta_json(&dir, "lexical")["terms"]
                .as_array()
                .unwrap()
                .len(),
            domain.features.words.terms.len()
        );
        assert_eq!(scores(&LexicalModel::load_all(&dir).unwrap()), stored);

        // Saving the listed model again with the same terms keeps them listed (no chains).
        domain.save(&dir).unwrap();
        assert!(meta_json(&dir, "lexical")["terms"].is_array());
        assert_eq!(scores(&LexicalModel::load_all(&dir).unwrap()), stored);

        // A refitted text-only model with other terms: the joint model gets its own copy first.
        let refitted = model_for("domain", &["math", "law"], "the judge ruled on a case");
        assert_ne!(refitted.features.words.terms, domain.features.words.terms);
        refitted.save(&dir).unwrap();
        let own = meta_json(&dir, "lexical-joint");
        assert!(own.get("terms_from").is_none(), "{own}");
        let back = LexicalModel::load_all(&dir).unwrap();
        assert_eq!(scores(&back[1..]), stored[texts.len()..]);
        assert_eq!(back[0].features.words.terms, refitted.features.words.terms);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn shared_terms_edited_since_are_a_load_error_that_says_what_to_do() {
        let dir =
            std::env::temp_dir().join(format!("switchyard-lexical-edited-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        model().save(&dir).unwrap();
        joint_of(&model()).save(&dir).unwrap();
        // Same number of terms, one of them different: sizes alone would not notice.
        let mut listed = meta_json(&dir, "lexical");
        listed["terms"][0] = "zzz".into();
        std::fs::write(dir.join("lexical.json"), listed.to_string()).unwrap();
        let e = LexicalModel::load_all(&dir).unwrap_err().to_string();
        assert!(
            e.contains("lexical-joint.json") && e.contains("retrain this model too"),
            "{e}"
        );
        // A reference to a model that is not there names it.
        std::fs::remove_file(dir.join("lexical.json")).unwrap();
        let e = LexicalModel::load_all(&dir).unwrap_err().to_string();
        assert!(
            e.contains("takes its terms from `lexical`, which is missing"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_term_index_finds_every_term_with_its_idf_and_nothing_else() {
        let terms: Vec<String> = (0..20_000).map(|i| format!("t{i}")).collect();
        let idf: Vec<f32> = (0..terms.len()).map(|i| 1.0 + i as f32 / 7.0).collect();
        let index = TermIndex::new(&terms, &idf);
        for (i, t) in terms.iter().enumerate() {
            assert_eq!(
                index.get_hashed(index.hash(t)),
                Some((i as u32, idf[i])),
                "{t}"
            );
        }
        for t in ["", "t", "t20000", "x1", "t1 "] {
            assert_eq!(index.get_hashed(index.hash(t)), None, "{t:?}");
        }
    }

    #[test]
    fn a_term_listed_twice_is_a_load_error_and_never_a_hang() {
        // No seed separates a term from itself: the index keeps the first and returns.
        let terms: Vec<String> = ["a", "b", "a"].map(String::from).to_vec();
        let index = TermIndex::new(&terms, &[1.0, 2.0, 3.0]);
        assert_eq!(index.get_hashed(index.hash("a")), Some((0, 1.0)));
        // A model file that lists one twice is refused by name.
        let m = model();
        let dir =
            std::env::temp_dir().join(format!("switchyard-lexical-twice-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        m.save(&dir).unwrap();
        let meta = dir.join("lexical.json");
        let mut json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
        let first = json["terms"][0].clone();
        json["terms"][1] = first.clone();
        std::fs::write(&meta, json.to_string()).unwrap();
        let e = LexicalModel::load_all(&dir).unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "the term `{}` is listed twice",
                first.as_str().unwrap()
            )),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn terms_are_words_and_bigrams() {
        assert_eq!(
            terms("Solve x+1!"),
            vec!["solve", "x", "1", "solve x", "x 1"]
        );
    }

    #[test]
    fn eight_bit_weights_are_within_half_a_step_of_each_features_largest() {
        let rows = vec![vec![1.0, -0.5, 0.0, 1e-3], vec![-2.0, 0.25, 0.0, 3e-3]];
        let w = FeatureMajor::from_rows(&rows);
        let (bytes, scales) = w.quantize();
        let back = FeatureMajor::dequantize(2, &bytes, &scales);
        for (j, max) in [2.0f32, 0.5, 0.0, 3e-3].into_iter().enumerate() {
            for (c, row) in rows.iter().enumerate() {
                let err = (back.feature(j)[c] - row[j]).abs();
                // Half a step, plus the f16 rounding of the scale.
                assert!(
                    err <= max / 254.0 * 1.01 + 1e-9,
                    "feature {j} class {c}: {err}"
                );
            }
        }
        assert_eq!(back.rows().len(), 2);
    }

    #[test]
    fn char_ngrams_are_scikit_learns_char_wb() {
        // scikit-learn 1.x: TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5)).build_analyzer()
        let want = [
            " a", "ab", "b ", " ab", "ab ", " ab ", " ü", "ün", "nï", "ï ", " ün", "ünï", "nï ",
            " ünï", "ünï ", " ünï ", " x", "x ", " x ",
        ];
        assert_eq!(char_ngrams("Ab  Ünï\tx", 2, 5), want);
    }

    #[test]
    fn a_joint_model_reads_chars_and_the_embedding_and_round_trips() {
        let texts = [
            "solve the equation",
            "solve for x",
            "the court ruled",
            "the court case",
        ];
        let features = TextFeatures::fit(&texts, Some((2, 4)));
        assert!(features.chars.as_ref().unwrap().dim() > 0);
        let text_dim = features.dim();
        let v = features.transform("solve the court");
        // Two blocks, each of unit length.
        let (words, chars): (Vec<_>, Vec<_>) = v
            .iter()
            .partition(|(i, _)| (*i as usize) < features.words.dim());
        for block in [words, chars] {
            let norm: f32 = block.iter().map(|(_, x)| x * x).sum();
            assert!((norm - 1.0).abs() < 1e-5, "{norm}");
        }
        // Class 0 reads "sol" and embedding value 0; class 1 embedding value 1.
        let sol = text_dim - features.chars.as_ref().unwrap().dim()
            + features
                .chars
                .as_ref()
                .unwrap()
                .terms
                .iter()
                .position(|t| t == "sol")
                .unwrap();
        let mut w0 = vec![0.0; text_dim + 3];
        let mut w1 = vec![0.0; text_dim + 3];
        w0[sol] = 1.0;
        w0[text_dim] = 2.0;
        w1[text_dim + 1] = 3.0;
        w1[text_dim + 2] = 0.25; // bias
        let embedding = EmbeddingFeatures {
            scale: 2.0,
            dim: 2,
            encoder: "enc".into(),
            max_tokens: 64,
            quantized: true,
            layers: Some(4),
        };
        let m = LexicalModel::joint(
            "domain",
            vec!["math".into(), "law".into()],
            features,
            Some(embedding.clone()),
            vec![w0, w1],
            0.5,
            1.0,
        );
        let text = m.text_scores("solve");
        assert!(text[0] > 0.0 && (text[1] - 0.25).abs() < 1e-6, "{text:?}");
        let full = m.scores("solve", Some(&[0.5, 1.0]));
        assert!(
            (full[0] - (text[0] + 2.0 * 2.0 * 0.5)).abs() < 1e-5,
            "{full:?}"
        );
        assert!((full[1] - (0.25 + 2.0 * 3.0)).abs() < 1e-5, "{full:?}");

        let dir = std::env::temp_dir().join(format!("switchyard-joint-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        m.save(&dir).unwrap();
        let back = LexicalModel::load_all(&dir).unwrap().remove(0);
        assert_eq!(back.embedding_features(), Some(&embedding));
        // What `as_stored` predicts is exactly what loading the files gives.
        let stored = m.as_stored();
        for text in ["solve", "the court ruled on x"] {
            let e = Some(&[0.5f32, -1.0][..]);
            assert_eq!(stored.scores(text, e), back.scores(text, e));
        }
        let again = back.scores("solve", Some(&[0.5, 1.0]));
        for (a, b) in full.iter().zip(&again) {
            assert!(
                (a - b).abs() < 1e-2 * a.abs().max(1.0),
                "{full:?} vs {again:?}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn scores_fuse_and_round_trip_through_files() {
        let m = model();
        let s = m.scores("please solve this", None);
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
        let s2 = back.scores("please solve this", None);
        // f16 storage: equal to a few parts in a thousand.
        for (a, b) in s.iter().zip(&s2) {
            assert!((a - b).abs() < 1e-2 * a.abs().max(1.0), "{s:?} vs {s2:?}");
        }
        assert_eq!(back.weight, 0.5);

        // Saving again replaces the files by rename: a reader that opened them before (a server
        // with the directory loaded) keeps the old ones whole, and no partial file is left.
        let files = |ext: &str| dir.join(format!("{}.{ext}", m.stem()));
        let old = ["json", "safetensors"].map(|ext| std::fs::read(files(ext)).unwrap());
        let mut open = ["json", "safetensors"].map(|ext| std::fs::File::open(files(ext)).unwrap());
        let mut other = model();
        other.weight = 0.25;
        other.features.words.idf.iter_mut().for_each(|v| *v += 1.0);
        other.save(&dir).unwrap();
        for (file, before) in open.iter_mut().zip(&old) {
            let mut seen = Vec::new();
            std::io::Read::read_to_end(file, &mut seen).unwrap();
            assert_eq!(&seen, before);
        }
        assert_ne!(std::fs::read(files("json")).unwrap(), old[0]);
        assert_ne!(std::fs::read(files("safetensors")).unwrap(), old[1]);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        assert!(LexicalModel::load_all(&dir).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
