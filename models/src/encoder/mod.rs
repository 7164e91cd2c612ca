//! ModernBERT encoders with one or several classification heads sharing one backbone pass, and a BERT
//! sentence-embedding encoder ([`BertEncoder`], e.g. all-MiniLM-L6-v2) for the router's embedding signal.
//!
//! A model directory is either a plain Hugging Face checkpoint
//! (`ModernBertForSequenceClassification` or `ModernBertForTokenClassification`: `config.json` with
//! `id2label`, `model.safetensors`, `tokenizer.json`), or Switchyard's multi-head layout: the same
//! files plus `heads.json` listing heads whose tensors live under their own prefix in
//! `model.safetensors` (see `tests/fixtures/README.md`). Label names come from `id2label`, or from the
//! vLLM Semantic Router's side files (`category_mapping.json`, `pii_type_mapping.json`,
//! `jailbreak_type_mapping.json`) when present.

mod bert;
mod config;
mod cpu;
mod heads;
mod modernbert;

pub use bert::{BertConfig, BertEncoder};
pub use config::{parse_labels, Activation, AttentionKind, ModernBertConfig, Pooling};
pub use heads::{ClassifierHead, HeadTask};
pub use modernbert::ModernBert;

use crate::error::{ModelError, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde_json::Value;
use std::path::Path;

/// The vLLM Semantic Router's label side files, in the order they are tried.
const SIDE_FILES: [&str; 3] = [
    "category_mapping.json",
    "pii_type_mapping.json",
    "jailbreak_type_mapping.json",
];

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| ModelError::Format {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Labels from a vLLM Semantic Router side file found in `dir`, if there is one.
fn side_file_labels(dir: &Path) -> Result<Option<Vec<String>>> {
    SIDE_FILES
        .iter()
        .map(|name| dir.join(name))
        .find(|path| path.exists())
        .map(|path| mapping_file_labels(&path))
        .transpose()
}

/// Labels from a vLLM Semantic Router label file (`category_mapping.json`,
/// `pii_type_mapping.json`, `jailbreak_type_mapping.json`, or one named in a config's
/// `*_mapping_path`): its `idx_to_*` map, ids as string keys.
pub fn mapping_file_labels(path: &Path) -> Result<Vec<String>> {
    let v = read_json(path)?;
    let map = v.as_object().and_then(|o| {
        o.iter()
            .find(|(k, _)| k.starts_with("idx_to_"))
            .map(|(_, m)| m)
    });
    parse_labels(map, None)?.ok_or_else(|| ModelError::Format {
        path: path.to_path_buf(),
        message: "no `idx_to_…` label map".into(),
    })
}

/// A ModernBERT backbone with its heads, run together.
#[derive(Debug, Clone)]
pub struct MultiHeadClassifier {
    backbone: ModernBert,
    heads: Vec<ClassifierHead>,
    device: Device,
}

/// One head's logits for a batch.
#[derive(Debug, Clone)]
pub struct HeadLogits {
    /// The head's name.
    pub name: String,
    /// `[B, labels]` (sequence head) or `[B, T, labels]` (token head), f32.
    pub logits: Tensor,
}

fn candle_err(dir: &Path) -> impl Fn(candle_core::Error) -> ModelError + '_ {
    move |e| ModelError::Format {
        path: dir.to_path_buf(),
        message: e.to_string(),
    }
}

impl MultiHeadClassifier {
    /// Loads a model directory (plain checkpoint or multi-head layout) onto `device` in `dtype`.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let config_value = read_json(&dir.join("config.json"))?;
        let config = ModernBertConfig::from_value(&config_value)?;
        let weights = dir.join("model.safetensors");
        if !weights.exists() {
            return Err(ModelError::Format {
                path: weights,
                message: "missing (only safetensors checkpoints are supported)".into(),
            });
        }
        // SAFETY: the file is mapped read-only; it must not be truncated while mapped.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], dtype, device) }
            .map_err(candle_err(dir))?;
        let backbone = ModernBert::load(&config, vb.clone()).map_err(candle_err(dir))?;
        let heads_file = dir.join("heads.json");
        let heads = if heads_file.exists() {
            let spec = read_json(&heads_file)?;
            let list = spec["heads"].as_array().ok_or_else(|| ModelError::Format {
                path: heads_file.clone(),
                message: "no `heads` array".into(),
            })?;
            list.iter()
                .enumerate()
                .map(|(i, h)| {
                    let field = |k: &str| {
                        h.get(k)
                            .and_then(Value::as_str)
                            .ok_or_else(|| ModelError::Format {
                                path: heads_file.clone(),
                                message: format!("heads[{i}].{k} is missing"),
                            })
                    };
                    let name = field("name")?;
                    let task = match field("task")? {
                        "sequence" => HeadTask::Sequence(
                            match h.get("classifier_pooling").and_then(Value::as_str) {
                                Some(p) => Pooling::parse(p)?,
                                None => config.classifier_pooling,
                            },
                        ),
                        "token" => HeadTask::Token,
                        other => {
                            return Err(ModelError::Format {
                                path: heads_file.clone(),
                                message: format!("heads[{i}].task `{other}` (sequence, token)"),
                            })
                        }
                    };
                    let labels =
                        parse_labels(h.get("id2label"), h.get("label2id"))?.ok_or_else(|| {
                            ModelError::Format {
                                path: heads_file.clone(),
                                message: format!("heads[{i}] has no id2label"),
                            }
                        })?;
                    let prefix = h.get("prefix").and_then(Value::as_str).unwrap_or("");
                    let hv = if prefix.is_empty() {
                        vb.clone()
                    } else {
                        vb.pp(prefix.trim_end_matches('.'))
                    };
                    ClassifierHead::load(name, task, labels, &config, hv).map_err(candle_err(dir))
                })
                .collect::<Result<Vec<_>>>()?
        } else {
            let task = match config.architecture.as_deref() {
                Some("ModernBertForTokenClassification") => HeadTask::Token,
                Some("ModernBertForSequenceClassification") | None => {
                    HeadTask::Sequence(config.classifier_pooling)
                }
                Some(other) => {
                    return Err(ModelError::Config(format!(
                        "architecture `{other}` has no classification head (expected ModernBertForSequenceClassification or ModernBertForTokenClassification)"
                    )))
                }
            };
            let labels = match side_file_labels(dir)? {
                Some(l) => l,
                None => config.id2label.clone().ok_or_else(|| {
                    ModelError::Config("config.json has no id2label and no label side file".into())
                })?,
            };
            let name = dir
                .file_name()
                .map_or("head".into(), |n| n.to_string_lossy().into_owned());
            vec![ClassifierHead::load(&name, task, labels, &config, vb).map_err(candle_err(dir))?]
        };
        Ok(Self {
            backbone,
            heads,
            device: device.clone(),
        })
    }

    /// The backbone.
    pub fn backbone(&self) -> &ModernBert {
        &self.backbone
    }

    /// Runs the backbone's linear layers in Q8_0 on the CPU (see [`ModernBert::quantize_q8_0`]);
    /// `false` if there is no CPU fast path to quantize. The heads stay in f32.
    pub fn quantize_q8_0(&mut self) -> Result<bool> {
        Ok(self.backbone.quantize_q8_0()?)
    }

    /// The heads, in order.
    pub fn heads(&self) -> &[ClassifierHead] {
        &self.heads
    }

    /// Renames a single-head model's labels (a label file named apart from the checkpoint); it
    /// must name as many labels as the head predicts.
    pub fn relabel(&mut self, labels: Vec<String>) -> Result<()> {
        match self.heads.as_mut_slice() {
            [head] if head.labels().len() == labels.len() => {
                head.set_labels(labels);
                Ok(())
            }
            [head] => Err(ModelError::Config(format!(
                "{} labels for a head of {}",
                labels.len(),
                head.labels().len()
            ))),
            heads => Err(ModelError::Config(format!(
                "a label file names the labels of one head; this model has {}",
                heads.len()
            ))),
        }
    }

    /// The device the model lives on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Builds right-padded `[B, T]` input and mask tensors from token id lists.
    pub fn batch_inputs(&self, ids: &[Vec<u32>]) -> Result<(Tensor, Tensor)> {
        let t = ids.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let pad = self.backbone.config().pad_token_id;
        let mut flat = Vec::with_capacity(ids.len() * t);
        let mut mask = Vec::with_capacity(ids.len() * t);
        for seq in ids {
            flat.extend(
                seq.iter()
                    .copied()
                    .chain(std::iter::repeat_n(pad, t - seq.len())),
            );
            mask.extend((0..t).map(|i| u32::from(i < seq.len())));
        }
        let shape = (ids.len(), t);
        Ok((
            Tensor::from_vec(flat, shape, &self.device)?,
            Tensor::from_vec(mask, shape, &self.device)?,
        ))
    }

    /// Runs the backbone once and every head on its output; logits come back as f32.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Vec<HeadLogits>> {
        let states = self.backbone.forward(input_ids, attention_mask)?;
        self.heads
            .iter()
            .map(|h| {
                Ok(HeadLogits {
                    name: h.name().to_string(),
                    logits: h.forward(&states, attention_mask)?.to_dtype(DType::F32)?,
                })
            })
            .collect()
    }
}
