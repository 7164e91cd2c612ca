//! A BERT encoder for sentence embeddings (sentence-transformers' all-MiniLM-L6-v2 and its kind) on the
//! CPU in f32: the same plain-Rust fast path as the ModernBERT backbone ([`super::cpu`]), matrix products
//! through this project's kernels, and only the real tokens of each text (no padding).
//!
//! Matches Hugging Face `BertModel` (absolute positions, token type 0, post-norm layers) followed by
//! sentence-transformers' mean pooling over the tokens and L2 normalisation. The checkpoint is a plain
//! Hugging Face directory: `config.json` (`model_type: bert`) and `model.safetensors` (names with or
//! without the `bert.` prefix; f32, f16 or bf16, held as f32).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use super::config::Activation;
use super::cpu::{activate_in_place, attend_heads, Dense, HeadScratch, Norm};
use crate::error::{ModelError, Result};

/// The `config.json` fields a BERT encoder needs.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Number of layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Longest input, in tokens.
    pub max_position_embeddings: usize,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Activation of the feed-forward layer (`gelu`).
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Only `absolute` is supported.
    #[serde(default = "default_position_kind")]
    pub position_embedding_type: String,
}

fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}
fn default_position_kind() -> String {
    "absolute".into()
}

struct Layer {
    qkv: Dense,
    out: Dense,
    attn_norm: Norm,
    inter: Dense,
    output: Dense,
    out_norm: Norm,
}

/// A BERT encoder on the host, giving hidden states or pooled sentence embeddings.
pub struct BertEncoder {
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Vec<f32>,
    embed_norm: Norm,
    layers: Vec<Layer>,
    hidden: usize,
    heads: usize,
    head_dim: usize,
    max_positions: usize,
    act: Activation,
}

impl std::fmt::Debug for BertEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BertEncoder")
            .field("hidden", &self.hidden)
            .field("layers", &self.layers.len())
            .field("heads", &self.heads)
            .finish()
    }
}

/// Tensors of a checkpoint by name, with or without the `bert.` prefix, as host f32.
struct Weights<'a> {
    tensors: HashMap<String, Tensor>,
    path: &'a Path,
}

impl Weights<'_> {
    fn tensor(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .or_else(|| self.tensors.get(&format!("bert.{name}")))
            .ok_or_else(|| ModelError::MissingTensor(format!("{name} in {}", self.path.display())))
    }

    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let t = self.tensor(name)?;
        if t.dims() != shape {
            return Err(ModelError::BadTensor {
                name: name.into(),
                message: format!("shape {:?}, expected {shape:?}", t.dims()),
            });
        }
        Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
    }

    fn dense(&self, prefix: &str, rows: usize, cols: usize) -> Result<Dense> {
        Ok(Dense::new(
            self.get(&format!("{prefix}.weight"), &[rows, cols])?,
            Some(self.get(&format!("{prefix}.bias"), &[rows])?),
            rows,
            cols,
        ))
    }

    fn norm(&self, prefix: &str, h: usize, eps: f64) -> Result<Norm> {
        Ok(Norm::new(
            self.get(&format!("{prefix}.weight"), &[h])?,
            Some(self.get(&format!("{prefix}.bias"), &[h])?),
            eps as f32,
        ))
    }
}

/// Reusable buffers of one forward.
#[derive(Default)]
struct Scratch {
    h: Vec<f32>,
    qkv: Vec<f32>,
    ctx: Vec<f32>,
    proj: Vec<f32>,
    inter: Vec<f32>,
    head: HeadScratch,
}

impl BertEncoder {
    /// Loads `config.json` and `model.safetensors` from a Hugging Face BERT directory.
    pub fn load(dir: &Path) -> Result<BertEncoder> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|source| ModelError::Io {
            path: config_path.clone(),
            source,
        })?;
        let config: BertConfig = serde_json::from_str(&text).map_err(|e| ModelError::Format {
            path: config_path.clone(),
            message: e.to_string(),
        })?;
        let path = dir.join("model.safetensors");
        if !path.exists() {
            return Err(ModelError::Io {
                path,
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        let tensors = candle_core::safetensors::load(&path, &Device::Cpu).map_err(|e| {
            ModelError::Format {
                path: path.clone(),
                message: e.to_string(),
            }
        })?;
        Self::from_weights(
            &config,
            Weights {
                tensors,
                path: &path,
            },
        )
    }

    fn from_weights(c: &BertConfig, w: Weights) -> Result<BertEncoder> {
        if c.position_embedding_type != "absolute" {
            return Err(ModelError::Config(format!(
                "BERT position_embedding_type `{}` is not supported (only absolute)",
                c.position_embedding_type
            )));
        }
        let h = c.hidden_size;
        if c.num_attention_heads == 0 || !h.is_multiple_of(c.num_attention_heads) {
            return Err(ModelError::Config(format!(
                "hidden_size {h} is not a multiple of num_attention_heads {}",
                c.num_attention_heads
            )));
        }
        let eps = c.layer_norm_eps;
        let e = "embeddings";
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let p = format!("encoder.layer.{i}");
                // Q, K and V stacked into one [3h, h] product.
                let mut qkv_w = Vec::with_capacity(3 * h * h);
                let mut qkv_b = Vec::with_capacity(3 * h);
                for part in ["query", "key", "value"] {
                    qkv_w.extend(w.get(&format!("{p}.attention.self.{part}.weight"), &[h, h])?);
                    qkv_b.extend(w.get(&format!("{p}.attention.self.{part}.bias"), &[h])?);
                }
                Ok(Layer {
                    qkv: Dense::new(qkv_w, Some(qkv_b), 3 * h, h),
                    out: w.dense(&format!("{p}.attention.output.dense"), h, h)?,
                    attn_norm: w.norm(&format!("{p}.attention.output.LayerNorm"), h, eps)?,
                    inter: w.dense(&format!("{p}.intermediate.dense"), c.intermediate_size, h)?,
                    output: w.dense(&format!("{p}.output.dense"), h, c.intermediate_size)?,
                    out_norm: w.norm(&format!("{p}.output.LayerNorm"), h, eps)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // Only type 0 is used: its row, whatever the number of types.
        let token_type: Vec<f32> = w
            .tensor(&format!("{e}.token_type_embeddings.weight"))?
            .to_dtype(DType::F32)?
            .get(0)?
            .flatten_all()?
            .to_vec1()?;
        if token_type.len() != h {
            return Err(ModelError::BadTensor {
                name: "token_type_embeddings".into(),
                message: format!("width {}, expected {h}", token_type.len()),
            });
        }
        Ok(BertEncoder {
            word: w.get(&format!("{e}.word_embeddings.weight"), &[c.vocab_size, h])?,
            position: w.get(
                &format!("{e}.position_embeddings.weight"),
                &[c.max_position_embeddings, h],
            )?,
            token_type,
            embed_norm: w.norm(&format!("{e}.LayerNorm"), h, eps)?,
            layers,
            hidden: h,
            heads: c.num_attention_heads,
            head_dim: h / c.num_attention_heads,
            max_positions: c.max_position_embeddings,
            act: Activation::parse(&c.hidden_act)?,
        })
    }

    /// Stores the layers' weight matrices as Q8_0 (the integer kernels; about 3x less memory traffic
    /// and faster products on CPUs with VNNI), at the cost of 8-bit rounding of weights and activations.
    /// Embeddings, norms and attention stay f32. Fails only if the buffer for the quantized
    /// weights cannot be mapped.
    pub fn quantize_q8_0(mut self) -> Result<BertEncoder> {
        super::cpu::quantize_q8_0(
            self.layers
                .iter_mut()
                .flat_map(|l| [&mut l.qkv, &mut l.out, &mut l.inter, &mut l.output]),
        )?;
        Ok(self)
    }

    /// Keeps the first `n` layers only (a cheaper, shallower encoder; `n` at least 1, at most all).
    pub fn keep_layers(mut self, n: usize) -> BertEncoder {
        self.layers.truncate(n.max(1));
        self
    }

    /// Number of layers.
    pub fn layers(&self) -> usize {
        self.layers.len()
    }

    /// Width of the hidden states and embeddings.
    pub fn dim(&self) -> usize {
        self.hidden
    }

    /// Longest input, in tokens.
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// Last hidden states of each text, `[tokens * hidden]` row-major (ids include `[CLS]`/`[SEP]`).
    pub fn hidden_states(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        let never = AtomicBool::new(false);
        Ok(self
            .hidden_states_unless(batch, &never)?
            .expect("never stopped"))
    }

    /// [`hidden_states`](Self::hidden_states), abandoned (`None`) when `stop` is set before a
    /// layer starts.
    fn hidden_states_unless(
        &self,
        batch: &[&[u32]],
        stop: &AtomicBool,
    ) -> Result<Option<Vec<Vec<f32>>>> {
        let hd = self.hidden;
        let vocab = self.word.len() / hd;
        let mut rows = Vec::with_capacity(batch.len());
        let mut n = 0;
        for ids in batch {
            if ids.len() > self.max_positions {
                return Err(ModelError::Forward(format!(
                    "{} tokens, more than the encoder's {} positions",
                    ids.len(),
                    self.max_positions
                )));
            }
            rows.push(n..n + ids.len());
            n += ids.len();
        }
        let mut x = vec![0.0f32; n * hd];
        for (ids, range) in batch.iter().zip(&rows) {
            for (j, &id) in ids.iter().enumerate() {
                let id = id as usize;
                if id >= vocab {
                    return Err(ModelError::Forward(format!(
                        "token id {id} is outside the vocabulary of {vocab}"
                    )));
                }
                let out = &mut x[(range.start + j) * hd..][..hd];
                let (wv, pv) = (&self.word[id * hd..][..hd], &self.position[j * hd..][..hd]);
                for d in 0..hd {
                    out[d] = wv[d] + pv[d] + self.token_type[d];
                }
            }
        }
        let mut s = Scratch::default();
        self.embed_norm.forward(&x, &mut s.h);
        std::mem::swap(&mut x, &mut s.h);
        for layer in &self.layers {
            if stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
            layer.qkv.forward(&x, n, &mut s.qkv)?;
            self.attention(&rows, &mut s)?;
            layer.out.forward(&s.ctx, n, &mut s.proj)?;
            s.proj.iter_mut().zip(&x).for_each(|(p, x)| *p += x);
            layer.attn_norm.forward(&s.proj, &mut x);
            layer.inter.forward(&x, n, &mut s.inter)?;
            activate_in_place(&mut s.inter, self.act);
            layer.output.forward(&s.inter, n, &mut s.proj)?;
            s.proj.iter_mut().zip(&x).for_each(|(p, x)| *p += x);
            layer.out_norm.forward(&s.proj, &mut x);
        }
        Ok(Some(
            rows.iter()
                .map(|r| x[r.start * hd..r.end * hd].to_vec())
                .collect(),
        ))
    }

    /// Sentence embeddings: the mean of each text's last hidden states, L2-normalised (all zeros for an
    /// empty text).
    pub fn embed(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        Ok(self.pool(self.hidden_states(batch)?))
    }

    /// [`embed`](Self::embed), abandoned (`Ok(None)`) when `stop` is set before a layer starts:
    /// for work run speculatively beside something that may find it is not needed.
    pub fn embed_unless(
        &self,
        batch: &[&[u32]],
        stop: &AtomicBool,
    ) -> Result<Option<Vec<Vec<f32>>>> {
        Ok(self
            .hidden_states_unless(batch, stop)?
            .map(|states| self.pool(states)))
    }

    /// Mean pooling and L2 normalisation of each text's hidden states.
    fn pool(&self, states: Vec<Vec<f32>>) -> Vec<Vec<f32>> {
        let hd = self.hidden;
        states
            .into_iter()
            .map(|states| {
                let t = states.len() / hd;
                let mut e = vec![0.0f32; hd];
                for row in states.chunks_exact(hd) {
                    e.iter_mut().zip(row).for_each(|(e, v)| *e += v);
                }
                if t > 0 {
                    e.iter_mut().for_each(|v| *v /= t as f32);
                }
                let norm = e.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                e.iter_mut().for_each(|v| *v /= norm);
                e
            })
            .collect()
    }

    /// Full attention of every text and head from `s.qkv` `[N, 3 * hidden]` into `s.ctx`.
    fn attention(&self, rows: &[std::ops::Range<usize>], s: &mut Scratch) -> Result<()> {
        let (hd, dh) = (self.hidden, self.head_dim);
        s.ctx.resize(rows.last().map_or(0, |r| r.end) * hd, 0.0);
        let scale = 1.0 / (dh as f32).sqrt();
        for row in s.qkv.chunks_exact_mut(3 * hd) {
            row[..hd].iter_mut().for_each(|q| *q *= scale);
        }
        for range in rows {
            let t = range.len();
            if t == 0 {
                continue;
            }
            let windows = vec![0..t; t];
            attend_heads(
                &s.qkv,
                range.clone(),
                &windows,
                self.heads,
                dh,
                &mut s.head,
                &mut s.ctx,
            )?;
        }
        Ok(())
    }
}
