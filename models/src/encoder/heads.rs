//! Classification heads on a shared ModernBERT backbone: sequence classification (pooled, one
//! label per input) and token classification (one label per token, e.g. BIO PII tags).

use super::config::{Activation, ModernBertConfig, Pooling};
use super::modernbert::{activate, layer_norm, linear};
use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{LayerNorm, Linear, VarBuilder};

/// What a head predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadTask {
    /// One label per input (`ModernBertForSequenceClassification`).
    Sequence(Pooling),
    /// One label per token (`ModernBertForTokenClassification`).
    Token,
}

/// A prediction head: `head.dense` → activation → `head.norm` → `classifier`, as in transformers.
#[derive(Debug, Clone)]
pub struct ClassifierHead {
    name: String,
    task: HeadTask,
    labels: Vec<String>,
    dense: Linear,
    act: Activation,
    norm: LayerNorm,
    classifier: Linear,
    /// Where its tensors sit in the checkpoint (`heads.pii`, or empty at the root).
    tensor_prefix: String,
}

impl ClassifierHead {
    /// Loads a head whose tensors are `head.dense`, `head.norm`, `classifier` under `vb`.
    pub fn load(
        name: &str,
        task: HeadTask,
        labels: Vec<String>,
        config: &ModernBertConfig,
        vb: VarBuilder,
    ) -> Result<Self> {
        let h = config.hidden_size;
        Ok(Self {
            name: name.to_string(),
            task,
            dense: linear(h, h, config.classifier_bias, vb.pp("head.dense"))?,
            act: config.classifier_activation,
            norm: layer_norm(h, config.norm_eps, config.norm_bias, vb.pp("head.norm"))?,
            classifier: linear(h, labels.len(), true, vb.pp("classifier"))?,
            labels,
            tensor_prefix: vb.prefix(),
        })
    }

    /// The head's name (e.g. `domain`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What it predicts.
    pub fn task(&self) -> HeadTask {
        self.task
    }

    /// Label names by id.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Renames the labels (as many as the head predicts: [`super::MultiHeadClassifier::relabel`]).
    pub(super) fn set_labels(&mut self, labels: Vec<String>) {
        self.labels = labels;
    }

    /// The last linear layer (`classifier`), which maps [`Self::features`] to logits.
    pub fn classifier(&self) -> &Linear {
        &self.classifier
    }

    /// The checkpoint name of one of its tensors, e.g. `classifier.weight` -> `heads.pii.classifier.weight`.
    pub fn tensor_name(&self, name: &str) -> String {
        if self.tensor_prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.tensor_prefix)
        }
    }

    /// Logits: `[B, labels]` for a sequence head, `[B, T, labels]` for a token head.
    pub fn forward(&self, states: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        self.classifier
            .forward(&self.features(states, attention_mask)?)
    }

    /// What the classifier reads: the pooled (sequence) or per-token (token) backbone states after
    /// `head.dense` → activation → `head.norm`; `[B, H]` or `[B, T, H]`.
    pub fn features(&self, states: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let x = match self.task {
            // Contiguous: CUDA matmuls (unlike the CPU's) refuse the strided [CLS] view.
            HeadTask::Sequence(Pooling::Cls) => states.narrow(1, 0, 1)?.squeeze(1)?.contiguous()?,
            HeadTask::Sequence(Pooling::Mean) => {
                // Sum and divide in f32: a bf16 sum over hundreds of tokens loses most of its digits.
                let m = attention_mask.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?;
                let summed = states.to_dtype(DType::F32)?.broadcast_mul(&m)?.sum(1)?;
                let count = m.sum(1)?.clamp(1.0, f64::MAX)?;
                summed.broadcast_div(&count)?.to_dtype(states.dtype())?
            }
            HeadTask::Token => states.clone(),
        };
        self.norm
            .forward(&activate(&self.dense.forward(&x)?, self.act)?)
    }
}
