//! ModernBERT configuration, parsed from `config.json` in either the transformers v4 layout
//! (`global_rope_theta`, `local_rope_theta`, `global_attn_every_n_layers`, `local_attention`) or the
//! v5 layout (`rope_parameters` per attention type, `layer_types`, `sliding_window`), with
//! `id2label` / `label2id` whose ids may be integers or strings.

use crate::error::{ModelError, Result};
use serde_json::Value;
use std::collections::BTreeMap;

/// How a sequence-classification head pools the token states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// The first token's state (`[CLS]`).
    Cls,
    /// The mean over non-padding tokens.
    Mean,
}

impl Pooling {
    /// Parses `classifier_pooling`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "cls" => Ok(Self::Cls),
            "mean" => Ok(Self::Mean),
            other => Err(ModelError::Config(format!(
                "classifier_pooling `{other}` is not supported (cls, mean)"
            ))),
        }
    }
}

/// Activation functions the configs name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// Exact (erf) GELU, transformers' `gelu`.
    Gelu,
    /// tanh-approximated GELU (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    /// SiLU / swish.
    Silu,
    /// ReLU.
    Relu,
}

impl Activation {
    /// Parses a transformers `ACT2FN` name.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "gelu" => Ok(Self::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Self::GeluTanh),
            "silu" | "swish" => Ok(Self::Silu),
            "relu" => Ok(Self::Relu),
            other => Err(ModelError::Config(format!(
                "activation `{other}` is not supported"
            ))),
        }
    }
}

/// Whether a layer attends globally or within a sliding window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionKind {
    Global,
    /// Each token sees tokens at most `window / 2` positions away.
    Local,
}

/// The backbone's hyper-parameters (and, for checkpoints with one head, the head's).
#[derive(Clone, Debug, PartialEq)]
pub struct ModernBertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub norm_eps: f64,
    pub pad_token_id: u32,
    pub global_rope_theta: f64,
    pub local_rope_theta: f64,
    /// Sliding-window width of local layers (transformers' `local_attention`).
    pub local_attention: usize,
    pub layer_types: Vec<AttentionKind>,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub norm_bias: bool,
    pub classifier_bias: bool,
    pub hidden_activation: Activation,
    pub classifier_activation: Activation,
    pub classifier_pooling: Pooling,
    /// Label names by id, if the config has them.
    pub id2label: Option<Vec<String>>,
    /// `architectures[0]`, if given.
    pub architecture: Option<String>,
}

fn get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.get(key).filter(|x| !x.is_null())
}

fn usize_field(v: &Value, key: &str) -> Result<usize> {
    get(v, key)
        .and_then(Value::as_u64)
        .map(|x| x as usize)
        .ok_or_else(|| ModelError::Config(format!("`{key}` is missing or not an integer")))
}

fn bool_field(v: &Value, key: &str, default: bool) -> Result<bool> {
    match get(v, key) {
        None => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(ModelError::Config(format!(
            "`{key}` must be a boolean, got {other}"
        ))),
    }
}

fn str_field<'a>(v: &'a Value, key: &str, default: &'a str) -> Result<&'a str> {
    match get(v, key) {
        None => Ok(default),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(ModelError::Config(format!(
            "`{key}` must be a string, got {other}"
        ))),
    }
}

/// A rope theta from the v4 key, the v5 `rope_parameters[kind]`, or a plain `rope_theta`.
fn rope_theta(v: &Value, v4_key: &str, v5_kind: &str) -> Result<f64> {
    if let Some(x) = get(v, v4_key).and_then(Value::as_f64) {
        return Ok(x);
    }
    if let Some(params) = get(v, "rope_parameters") {
        if let Some(x) = params
            .get(v5_kind)
            .and_then(|p| p.get("rope_theta"))
            .and_then(Value::as_f64)
        {
            return Ok(x);
        }
        if let Some(x) = params.get("rope_theta").and_then(Value::as_f64) {
            return Ok(x);
        }
        if let Some(t) = params
            .get(v5_kind)
            .and_then(|p| p.get("rope_type"))
            .and_then(Value::as_str)
            .filter(|t| *t != "default")
        {
            return Err(ModelError::Config(format!(
                "rope_parameters.{v5_kind}.rope_type `{t}` is not supported"
            )));
        }
    }
    if let Some(x) = get(v, "rope_theta").and_then(Value::as_f64) {
        return Ok(x);
    }
    Err(ModelError::Config(format!(
        "no rope theta: neither `{v4_key}` nor `rope_parameters.{v5_kind}.rope_theta`"
    )))
}

/// Label names by id from an `id2label` map (keys are ids as strings) or a `label2id` map (values
/// are ids as integers or strings). Ids must be exactly `0..n`.
pub fn parse_labels(
    id2label: Option<&Value>,
    label2id: Option<&Value>,
) -> Result<Option<Vec<String>>> {
    let mut by_id: BTreeMap<usize, String> = BTreeMap::new();
    let parse_id = |x: &Value, what: &str| -> Result<usize> {
        match x {
            Value::Number(n) => n.as_u64().map(|n| n as usize),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
        .ok_or_else(|| ModelError::Config(format!("{what}: `{x}` is not a label id")))
    };
    if let Some(Value::Object(map)) = id2label {
        for (id, label) in map {
            let label = label
                .as_str()
                .ok_or_else(|| ModelError::Config(format!("id2label[{id}] is not a string")))?;
            by_id.insert(
                parse_id(&Value::String(id.clone()), "id2label")?,
                label.to_string(),
            );
        }
    } else if let Some(Value::Object(map)) = label2id {
        for (label, id) in map {
            by_id.insert(parse_id(id, "label2id")?, label.clone());
        }
    }
    if by_id.is_empty() {
        return Ok(None);
    }
    let n = by_id.len();
    if by_id.keys().copied().ne(0..n) {
        return Err(ModelError::Config(format!(
            "label ids must be 0..{n}, got {:?}",
            by_id.keys().collect::<Vec<_>>()
        )));
    }
    Ok(Some(by_id.into_values().collect()))
}

impl ModernBertConfig {
    /// Parses `config.json` text.
    pub fn from_json(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| ModelError::Config(format!("config.json: {e}")))?;
        Self::from_value(&v)
    }

    /// Parses an already-read `config.json`.
    pub fn from_value(v: &Value) -> Result<Self> {
        if let Some(t) = get(v, "model_type").and_then(Value::as_str) {
            if t != "modernbert" {
                return Err(ModelError::Config(format!(
                    "model_type `{t}` is not modernbert"
                )));
            }
        }
        let num_layers = usize_field(v, "num_hidden_layers")?;
        let layer_types = match get(v, "layer_types") {
            Some(Value::Array(types)) => types
                .iter()
                .map(|t| match t.as_str() {
                    Some("full_attention") => Ok(AttentionKind::Global),
                    Some("sliding_attention") => Ok(AttentionKind::Local),
                    _ => Err(ModelError::Config(format!(
                        "layer_types: unknown entry {t}"
                    ))),
                })
                .collect::<Result<Vec<_>>>()?,
            _ => {
                let every = get(v, "global_attn_every_n_layers")
                    .and_then(Value::as_u64)
                    .unwrap_or(3)
                    .max(1) as usize;
                (0..num_layers)
                    .map(|i| {
                        if i % every == 0 {
                            AttentionKind::Global
                        } else {
                            AttentionKind::Local
                        }
                    })
                    .collect()
            }
        };
        if layer_types.len() != num_layers {
            return Err(ModelError::Config(format!(
                "layer_types has {} entries for {num_layers} layers",
                layer_types.len()
            )));
        }
        let local_attention = match get(v, "local_attention").and_then(Value::as_u64) {
            Some(w) => w as usize,
            None => match get(v, "sliding_window").and_then(Value::as_u64) {
                // v5 stores the half-width reach per side.
                Some(w) => 2 * w as usize,
                None => 128,
            },
        };
        let hidden_size = usize_field(v, "hidden_size")?;
        let num_heads = usize_field(v, "num_attention_heads")?;
        if num_heads == 0 || !hidden_size.is_multiple_of(num_heads) {
            return Err(ModelError::Config(format!(
                "hidden_size {hidden_size} is not divisible by num_attention_heads {num_heads}"
            )));
        }
        let config = Self {
            vocab_size: usize_field(v, "vocab_size")?,
            hidden_size,
            num_layers,
            num_heads,
            intermediate_size: usize_field(v, "intermediate_size")?,
            max_position_embeddings: usize_field(v, "max_position_embeddings")?,
            norm_eps: get(v, "norm_eps")
                .or_else(|| get(v, "layer_norm_eps"))
                .and_then(Value::as_f64)
                .unwrap_or(1e-5),
            pad_token_id: get(v, "pad_token_id").and_then(Value::as_u64).unwrap_or(0) as u32,
            global_rope_theta: rope_theta(v, "global_rope_theta", "full_attention")?,
            local_rope_theta: rope_theta(v, "local_rope_theta", "sliding_attention")?,
            local_attention,
            layer_types,
            attention_bias: bool_field(v, "attention_bias", false)?,
            mlp_bias: bool_field(v, "mlp_bias", false)?,
            norm_bias: bool_field(v, "norm_bias", false)?,
            classifier_bias: bool_field(v, "classifier_bias", false)?,
            hidden_activation: Activation::parse(str_field(v, "hidden_activation", "gelu")?)?,
            classifier_activation: Activation::parse(str_field(
                v,
                "classifier_activation",
                "gelu",
            )?)?,
            classifier_pooling: Pooling::parse(str_field(v, "classifier_pooling", "cls")?)?,
            id2label: parse_labels(get(v, "id2label"), get(v, "label2id"))?,
            architecture: get(v, "architectures")
                .and_then(|a| a.get(0))
                .and_then(Value::as_str)
                .map(str::to_string),
        };
        Ok(config)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: &str = r#"{"model_type": "modernbert", "architectures": ["ModernBertForSequenceClassification"],
        "vocab_size": 100, "hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
        "intermediate_size": 96, "max_position_embeddings": 512, "norm_eps": 1e-5, "pad_token_id": 3,
        "global_rope_theta": 160000.0, "local_rope_theta": 10000.0, "global_attn_every_n_layers": 3,
        "local_attention": 8, "classifier_pooling": "mean",
        "id2label": {"0": "a", "1": "b"}, "label2id": {"a": 0, "b": 1}}"#;

    #[test]
    fn parses_the_v4_layout() {
        let c = ModernBertConfig::from_json(V4).unwrap();
        use AttentionKind::*;
        assert_eq!(c.layer_types, vec![Global, Local, Local, Global]);
        assert_eq!(
            (c.global_rope_theta, c.local_rope_theta),
            (160000.0, 10000.0)
        );
        assert_eq!(c.classifier_pooling, Pooling::Mean);
        assert_eq!(c.id2label, Some(vec!["a".into(), "b".into()]));
        assert_eq!(c.head_dim(), 16);
    }

    #[test]
    fn parses_the_v5_layout_and_string_label_ids() {
        let v5 = r#"{"model_type": "modernbert", "vocab_size": 100, "hidden_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 96,
            "max_position_embeddings": 512, "layer_types": ["full_attention", "sliding_attention"],
            "sliding_window": 4, "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 160000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
            "label2id": {"x": "1", "y": "0"}}"#;
        let c = ModernBertConfig::from_json(v5).unwrap();
        assert_eq!(
            c.layer_types,
            vec![AttentionKind::Global, AttentionKind::Local]
        );
        assert_eq!(c.local_attention, 8);
        assert_eq!(c.local_rope_theta, 10000.0);
        assert_eq!(c.id2label, Some(vec!["y".into(), "x".into()]));
    }

    #[test]
    fn unsupported_values_are_named() {
        let bad = V4.replace("\"mean\"", "\"max\"");
        let err = ModernBertConfig::from_json(&bad).unwrap_err().to_string();
        assert!(err.contains("classifier_pooling"), "{err}");
        let gap = V4.replace(r#""1": "b""#, r#""2": "b""#);
        let err = ModernBertConfig::from_json(&gap).unwrap_err().to_string();
        assert!(err.contains("label ids"), "{err}");
    }
}
