//! Hyper-parameters of a llama-family decoder, read from a Hugging Face `config.json` or from GGUF
//! metadata.

use crate::error::{ModelError, Result};
use crate::weights::GgufFile;
use serde::Deserialize;

/// The decoder families this crate implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Llama 2/3, SmolLM/SmolLM2 and other `LlamaForCausalLM` checkpoints.
    Llama,
    /// Qwen2 / Qwen2.5: biases on the q/k/v projections.
    Qwen2,
    /// Qwen3: RMSNorm on queries and keys per head, no q/k/v biases.
    Qwen3,
}

impl Family {
    /// The family for a Hugging Face `model_type` or GGUF `general.architecture`.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "llama" | "smollm" | "smollm2" | "mistral" => Ok(Self::Llama),
            "qwen2" => Ok(Self::Qwen2),
            "qwen3" => Ok(Self::Qwen3),
            other => Err(ModelError::Config(format!(
                "unsupported architecture `{other}` (supported: llama, qwen2, qwen3)"
            ))),
        }
    }
}

/// How rotary embeddings pair up the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Dimension `i` rotates with `i + d/2` (Hugging Face `rotate_half`, llama.cpp NEOX).
    HalfSplit,
    /// Dimension `2i` rotates with `2i + 1` (llama.cpp NORM; GGUF llama weights are permuted for it).
    Interleaved,
}

/// Rotary-embedding frequency scaling, as the configs name it.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// Positions divided by `factor` (`rope_type: linear`).
    Linear { factor: f64 },
    /// Llama 3.1's wavelength-dependent scaling (`rope_type: llama3`).
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
    /// One divisor per rotation pair: how a GGUF stores a `llama3` scaling (the tensor
    /// `rope_freqs.weight`, llama.cpp's `freq_factors`), with no scaling metadata.
    FreqFactors(Vec<f32>),
}

/// Everything the forward pass needs to know about a decoder's shape.
#[derive(Clone, Debug, PartialEq)]
pub struct DecoderConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub rope_style: RopeStyle,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
}

#[derive(Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    architectures: Option<Vec<String>>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    /// transformers v5: `rope_theta`, `rope_type` and the scaling's fields in one object.
    rope_parameters: Option<serde_json::Value>,
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    hidden_act: Option<String>,
    /// Mistral's (and Qwen2's, with `use_sliding_window`) attention window.
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
}

/// Hugging Face's default rope theta.
const DEFAULT_ROPE_THETA: f64 = 10_000.0;

impl DecoderConfig {
    /// Parses a Hugging Face `config.json` text.
    pub fn from_hf_json(text: &str) -> Result<Self> {
        let hf: HfConfig = serde_json::from_str(text)
            .map_err(|e| ModelError::Config(format!("config.json: {e}")))?;
        let model_type = match (&hf.model_type, &hf.architectures) {
            (Some(t), _) => t.clone(),
            (None, Some(archs)) if !archs.is_empty() => {
                archs[0].trim_end_matches("ForCausalLM").to_lowercase()
            }
            _ => return Err(ModelError::Config("config.json has no `model_type`".into())),
        };
        if let Some(act) = &hf.hidden_act {
            if act != "silu" {
                return Err(ModelError::Config(format!(
                    "hidden_act `{act}` is not supported (only silu)"
                )));
            }
        }
        let family = Family::from_name(&model_type)?;
        // v4 keys first; transformers v5 writes both into `rope_parameters`.
        let rope_scaling = hf
            .rope_scaling
            .as_ref()
            .or(hf.rope_parameters.as_ref())
            .map(parse_hf_rope_scaling)
            .transpose()?
            .flatten();
        let rope_theta = hf
            .rope_theta
            .or_else(|| {
                hf.rope_parameters
                    .as_ref()
                    .and_then(|p| p.get("rope_theta"))
                    .and_then(serde_json::Value::as_f64)
            })
            .unwrap_or(DEFAULT_ROPE_THETA);
        let config = Self {
            family,
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_layers: hf.num_hidden_layers,
            num_heads: hf.num_attention_heads,
            num_kv_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            head_dim: hf
                .head_dim
                .unwrap_or(hf.hidden_size / hf.num_attention_heads.max(1)),
            rms_norm_eps: hf.rms_norm_eps,
            rope_theta,
            rope_scaling,
            rope_style: RopeStyle::HalfSplit,
            max_position_embeddings: context_within_window(&hf, &model_type),
            tie_word_embeddings: hf.tie_word_embeddings,
        };
        config.validate()?;
        Ok(config)
    }

    /// Reads the configuration from GGUF metadata (`general.architecture` and its `<arch>.*` keys).
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let arch = gguf
            .string("general.architecture")
            .ok_or_else(|| ModelError::Config("GGUF has no general.architecture".into()))?
            .to_string();
        let family = Family::from_name(&arch)?;
        let int = |key: &str| -> Result<usize> {
            gguf.integer(&format!("{arch}.{key}"))
                .map(|v| v as usize)
                .ok_or_else(|| ModelError::Config(format!("GGUF metadata `{arch}.{key}` missing")))
        };
        let hidden_size = int("embedding_length")?;
        let num_heads = int("attention.head_count")?;
        let vocab_size = match int("vocab_size") {
            Ok(v) => v,
            Err(_) => gguf
                .strings("tokenizer.ggml.tokens")
                .map(|t| t.len())
                .ok_or_else(|| ModelError::Config("GGUF has no vocabulary size".into()))?,
        };
        let rope_scaling = match gguf.string(&format!("{arch}.rope.scaling.type")) {
            None | Some("none") => None,
            Some("linear") => Some(RopeScaling::Linear {
                factor: gguf
                    .float(&format!("{arch}.rope.scaling.factor"))
                    .unwrap_or(1.0),
            }),
            Some(other) => {
                return Err(ModelError::Config(format!(
                    "GGUF rope scaling `{other}` is not supported"
                )))
            }
        };
        // llama.cpp's converter writes a `llama3` scaling as divisors in a tensor, not as metadata.
        let freq_factors = crate::weights::TensorSource::get(gguf, "rope_freqs.weight")
            .map(|t| t.to_f32_vec())
            .transpose()?;
        let rope_scaling = match (rope_scaling, freq_factors) {
            (None, Some(factors)) => Some(RopeScaling::FreqFactors(factors)),
            (Some(_), Some(_)) => {
                return Err(ModelError::Config(
                    "GGUF has both rope scaling metadata and rope_freqs.weight; not supported"
                        .into(),
                ))
            }
            (scaling, None) => scaling,
        };
        let tied = crate::weights::TensorSource::get(gguf, "output.weight").is_none();
        let config = Self {
            family,
            vocab_size,
            hidden_size,
            intermediate_size: int("feed_forward_length")?,
            num_layers: int("block_count")?,
            num_heads,
            num_kv_heads: int("attention.head_count_kv").unwrap_or(num_heads),
            head_dim: int("attention.key_length").unwrap_or(hidden_size / num_heads.max(1)),
            rms_norm_eps: gguf
                .float(&format!("{arch}.attention.layer_norm_rms_epsilon"))
                .ok_or_else(|| ModelError::Config("GGUF rms epsilon missing".into()))?,
            rope_theta: gguf
                .float(&format!("{arch}.rope.freq_base"))
                .unwrap_or(10_000.0),
            rope_scaling,
            rope_style: match family {
                Family::Llama => RopeStyle::Interleaved,
                Family::Qwen2 | Family::Qwen3 => RopeStyle::HalfSplit,
            },
            max_position_embeddings: int("context_length")?,
            tie_word_embeddings: tied,
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.num_heads == 0
            || self.num_kv_heads == 0
            || !self.num_heads.is_multiple_of(self.num_kv_heads)
        {
            return bad(format!(
                "{} attention heads cannot be grouped over {} key/value heads",
                self.num_heads, self.num_kv_heads
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return bad(format!(
                "head_dim {} must be even and non-zero",
                self.head_dim
            ));
        }
        if self.vocab_size == 0 || self.hidden_size == 0 || self.num_layers == 0 {
            return bad("vocab_size, hidden_size and num_layers must be non-zero".into());
        }
        if let Some(RopeScaling::FreqFactors(f)) = &self.rope_scaling {
            if f.len() != self.head_dim / 2 || f.iter().any(|&x| !(x.is_finite() && x > 0.0)) {
                return bad(format!(
                    "rope_freqs.weight needs {} positive factors (one per rotation pair of head_dim {}); got {}",
                    self.head_dim / 2,
                    self.head_dim,
                    f.len()
                ));
            }
        }
        Ok(())
    }

    /// Width of the concatenated query heads.
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    /// Width of the concatenated key (or value) heads.
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
}

/// The context a model is served with: its `max_position_embeddings`, or, for a model whose
/// attention only looks `sliding_window` positions back (Mistral v0.1; Qwen2 with
/// `use_sliding_window`), no more than that window, where full attention (all this decoder
/// computes) is the same thing. Past it the outputs would differ from the model's.
fn context_within_window(hf: &HfConfig, model_type: &str) -> usize {
    let windowed = model_type == "mistral" || hf.use_sliding_window == Some(true);
    match hf.sliding_window.filter(|_| windowed) {
        Some(window) if window < hf.max_position_embeddings => {
            tracing::warn!(
                "the model attends within a {window}-position window, which this decoder does not \
                 implement: its context is capped at {window} (max_position_embeddings {})",
                hf.max_position_embeddings
            );
            window
        }
        _ => hf.max_position_embeddings,
    }
}

fn parse_hf_rope_scaling(v: &serde_json::Value) -> Result<Option<RopeScaling>> {
    if v.is_null() {
        return Ok(None);
    }
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("default");
    let num = |key: &str| -> Result<f64> {
        v.get(key)
            .and_then(|x| x.as_f64())
            .ok_or_else(|| ModelError::Config(format!("rope_scaling.{key} missing")))
    };
    match kind {
        "default" => Ok(None),
        "linear" => Ok(Some(RopeScaling::Linear {
            factor: num("factor")?,
        })),
        "llama3" => Ok(Some(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
        })),
        other => Err(ModelError::Config(format!(
            "rope_scaling type `{other}` is not supported (default, linear, llama3)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Llama 3.1-shaped `config.json` with the rope fields given by `rope`.
    fn llama(rope: &str) -> String {
        format!(
            r#"{{"model_type": "llama", "vocab_size": 32, "hidden_size": 16,
                "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                "num_key_value_heads": 1, "rms_norm_eps": 1e-5,
                "max_position_embeddings": 128{rope}}}"#
        )
    }

    #[test]
    fn transformers_v5_rope_parameters_read_as_the_v4_fields() {
        let scaling = r#""rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192"#;
        let v4 = DecoderConfig::from_hf_json(&llama(&format!(
            r#", "rope_theta": 500000.0, "rope_scaling": {{{scaling}}}"#
        )))
        .unwrap();
        let v5 = DecoderConfig::from_hf_json(&llama(&format!(
            r#", "rope_parameters": {{"rope_theta": 500000.0, {scaling}}}"#
        )))
        .unwrap();
        assert_eq!(v5, v4);
        assert_eq!(v5.rope_theta, 500_000.0);
        assert!(
            matches!(v5.rope_scaling, Some(RopeScaling::Llama3 { factor, .. }) if factor == 8.0)
        );
        // No theta anywhere: Hugging Face's default.
        let plain = DecoderConfig::from_hf_json(&llama("")).unwrap();
        assert_eq!(
            (plain.rope_theta, plain.rope_scaling),
            (DEFAULT_ROPE_THETA, None)
        );
        // Mistral v0.1's window caps the context; Qwen2's only when it is switched on.
        let window = r#", "sliding_window": 64"#;
        let mistral =
            llama(window).replace(r#""model_type": "llama""#, r#""model_type": "mistral""#);
        assert_eq!(
            DecoderConfig::from_hf_json(&mistral)
                .unwrap()
                .max_position_embeddings,
            64
        );
        let qwen2 = llama(window).replace(r#""model_type": "llama""#, r#""model_type": "qwen2""#);
        assert_eq!(
            DecoderConfig::from_hf_json(&qwen2)
                .unwrap()
                .max_position_embeddings,
            128
        );
        let on = qwen2.replace(
            r#""sliding_window": 64"#,
            r#""sliding_window": 64, "use_sliding_window": true"#,
        );
        assert_eq!(
            DecoderConfig::from_hf_json(&on)
                .unwrap()
                .max_position_embeddings,
            64
        );
        // An unsupported type in either place is refused, not ignored.
        let yarn =
            r#", "rope_parameters": {"rope_theta": 1e6, "rope_type": "yarn", "factor": 4.0}"#;
        assert!(DecoderConfig::from_hf_json(&llama(yarn)).is_err());
    }
}
