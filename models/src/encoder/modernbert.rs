//! The ModernBERT backbone on Candle tensors (CPU f32, or f16/bf16 on a GPU).
//!
//! Matches Hugging Face `ModernBertModel` in eager mode: token embeddings + LayerNorm, pre-norm
//! layers (the first without an attention norm) alternating global attention and sliding-window
//! local attention with their own rope thetas, GeGLU MLPs, a final LayerNorm. Attention scores are
//! upcast to f32 for the mask and the softmax, so half-precision weights are safe. Local layers on
//! long inputs attend block by block over the band of keys they can see, so they cost
//! O(T · window) rather than O(T²).

use super::config::{Activation, AttentionKind, ModernBertConfig};
use super::cpu::{CpuBackbone, LayerParts};
use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};

pub(crate) fn activate(x: &Tensor, act: Activation) -> Result<Tensor> {
    match act {
        Activation::Gelu => x.gelu_erf(),
        Activation::GeluTanh => x.gelu(),
        Activation::Silu => x.silu(),
        Activation::Relu => x.relu(),
    }
}

pub(crate) fn layer_norm(size: usize, eps: f64, bias: bool, vb: VarBuilder) -> Result<LayerNorm> {
    let config = candle_nn::LayerNormConfig {
        eps,
        remove_mean: true,
        affine: bias,
    };
    candle_nn::layer_norm(size, config, vb)
}

pub(crate) fn linear(inp: usize, out: usize, bias: bool, vb: VarBuilder) -> Result<Linear> {
    candle_nn::linear_b(inp, out, bias, vb)
}

/// cos/sin tables for one rope theta, `[max_positions, head_dim / 2]`.
#[derive(Debug, Clone)]
struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

impl Rotary {
    fn new(
        theta: f64,
        head_dim: usize,
        max_pos: usize,
        dtype: DType,
        dev: &Device,
    ) -> Result<Self> {
        let inv: Vec<f32> = (0..head_dim / 2)
            .map(|i| (1.0 / theta.powf((2 * i) as f64 / head_dim as f64)) as f32)
            .collect();
        let inv = Tensor::from_vec(inv, (1, head_dim / 2), dev)?;
        let t = Tensor::arange(0u32, max_pos as u32, dev)?
            .to_dtype(DType::F32)?
            .reshape((max_pos, 1))?;
        let freqs = t.matmul(&inv)?;
        Ok(Self {
            cos: freqs.cos()?.to_dtype(dtype)?,
            sin: freqs.sin()?.to_dtype(dtype)?,
        })
    }

    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let t = x.dim(2)?;
        candle_nn::rotary_emb::rope(
            &x.contiguous()?,
            &self.cos.narrow(0, 0, t)?,
            &self.sin.narrow(0, 0, t)?,
        )
    }
}

#[derive(Debug, Clone)]
struct Attention {
    qkv: Linear,
    out: Linear,
    heads: usize,
    head_dim: usize,
    kind: AttentionKind,
    /// Tokens seen on each side by a local layer.
    reach: usize,
    rotary: Rotary,
}

impl Attention {
    /// `x`: the packed tokens `[N, H]`; `key_bias`: `[B, 1, 1, T]` f32 (0 for real tokens, -1e9 for
    /// padding). Returns `[N, H]`.
    fn forward(&self, x: &Tensor, packing: &Packing, key_bias: &Tensor) -> Result<Tensor> {
        let (b, t) = (packing.batch, packing.len);
        let h = x.dim(1)?;
        let qkv = packing
            .pad(&self.qkv.forward(x)?)?
            .reshape((b, t, 3, self.heads, self.head_dim))?
            .permute((2, 0, 3, 1, 4))?;
        let q = self.rotary.apply(&qkv.get(0)?)?;
        let k = self.rotary.apply(&qkv.get(1)?)?;
        let v = qkv.get(2)?.contiguous()?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let ctx = match self.kind {
            AttentionKind::Local if t > 2 * self.reach + 1 => {
                self.banded(&q, &k, &v, key_bias, scale)?
            }
            AttentionKind::Local => {
                let band = band_bias(0, t, 0, t, self.reach, x.device())?;
                attend(&q, &k, &v, &key_bias.broadcast_add(&band)?, scale)?
            }
            AttentionKind::Global => attend(&q, &k, &v, key_bias, scale)?,
        };
        let ctx = packing.unpad(&ctx.transpose(1, 2)?.reshape((b * t, h))?)?;
        self.out.forward(&ctx)
    }

    /// Sliding-window attention block by block: queries `[s, e)` only see keys within `reach`.
    fn banded(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        key_bias: &Tensor,
        scale: f64,
    ) -> Result<Tensor> {
        let t = q.dim(2)?;
        let block = self.reach.max(16);
        let mut outs = Vec::with_capacity(t.div_ceil(block));
        let mut s = 0;
        while s < t {
            let e = (s + block).min(t);
            let ks = s.saturating_sub(self.reach);
            let ke = (e + self.reach).min(t);
            let bias = key_bias.narrow(3, ks, ke - ks)?.broadcast_add(&band_bias(
                s,
                e,
                ks,
                ke,
                self.reach,
                q.device(),
            )?)?;
            outs.push(attend(
                &q.narrow(2, s, e - s)?,
                &k.narrow(2, ks, ke - ks)?,
                &v.narrow(2, ks, ke - ks)?,
                &bias,
                scale,
            )?);
            s = e;
        }
        Tensor::cat(&outs, 2)
    }
}

/// `[1, 1, qe - qs, ke - ks]` f32: 0 where `|i - j| <= reach`, -inf elsewhere.
fn band_bias(
    qs: usize,
    qe: usize,
    ks: usize,
    ke: usize,
    reach: usize,
    dev: &Device,
) -> Result<Tensor> {
    let data: Vec<f32> = (qs..qe)
        .flat_map(|i| {
            (ks..ke).map(move |j| {
                if i.abs_diff(j) > reach {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_vec(data, (1, 1, qe - qs, ke - ks), dev)
}

/// softmax(q kᵀ · scale + bias) v, with the scores in f32.
fn attend(q: &Tensor, k: &Tensor, v: &Tensor, bias: &Tensor, scale: f64) -> Result<Tensor> {
    let dtype = q.dtype();
    let scores = (q.matmul(&k.t()?)? * scale)?
        .to_dtype(DType::F32)?
        .broadcast_add(bias)?;
    let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?;
    probs.matmul(v)
}

/// Where a padded `[B, T]` batch's real tokens are. Token-wise work (embeddings, norms, projections,
/// MLPs) runs on the `N` real tokens only, as ModernBERT's unpadded attention path does; attention
/// scatters them back to `[B, T]` around the score computation. A batch without padding is not moved.
struct Packing {
    batch: usize,
    len: usize,
    /// `[N]` u32: flat `[B * T]` positions of the real tokens; `None` when every position is real.
    real: Option<Tensor>,
    /// `[B * T]` u32: the packed row of each position, or `N` (a zero row) for padding.
    pad_map: Option<Tensor>,
}

impl Packing {
    fn new(attention_mask: &Tensor) -> Result<Packing> {
        let (batch, len) = attention_mask.dims2()?;
        let mask: Vec<f32> = attention_mask
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        let real: Vec<u32> = (0..mask.len() as u32)
            .filter(|&i| mask[i as usize] != 0.0)
            .collect();
        if real.len() == mask.len() {
            return Ok(Packing {
                batch,
                len,
                real: None,
                pad_map: None,
            });
        }
        let n = real.len() as u32;
        let mut pad_map = vec![n; mask.len()];
        for (row, &pos) in real.iter().enumerate() {
            pad_map[pos as usize] = row as u32;
        }
        let dev = attention_mask.device();
        Ok(Packing {
            batch,
            len,
            real: Some(Tensor::new(real, dev)?),
            pad_map: Some(Tensor::new(pad_map, dev)?),
        })
    }

    /// `[B * T, D]` -> `[N, D]`.
    fn unpad(&self, x: &Tensor) -> Result<Tensor> {
        match &self.real {
            Some(real) => x.index_select(real, 0),
            None => Ok(x.clone()),
        }
    }

    /// `[N, D]` -> `[B * T, D]`, zeros at padding.
    fn pad(&self, x: &Tensor) -> Result<Tensor> {
        match &self.pad_map {
            Some(map) => {
                let zero = Tensor::zeros((1, x.dim(1)?), x.dtype(), x.device())?;
                Tensor::cat(&[x, &zero], 0)?.index_select(map, 0)
            }
            None => Ok(x.clone()),
        }
    }
}

#[derive(Debug, Clone)]
struct Mlp {
    wi: Linear,
    wo: Linear,
    act: Activation,
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.wi.forward(x)?;
        let halves = h.chunk(2, D::Minus1)?;
        let gated = (activate(&halves[0], self.act)? * &halves[1])?;
        self.wo.forward(&gated)
    }
}

#[derive(Debug, Clone)]
struct Layer {
    attn_norm: Option<LayerNorm>,
    attn: Attention,
    mlp_norm: LayerNorm,
    mlp: Mlp,
}

/// The CPU fast path, shared between clones.
#[derive(Clone)]
struct FastPath(std::sync::Arc<CpuBackbone>);

impl std::fmt::Debug for FastPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CpuBackbone")
    }
}

/// The ModernBERT encoder. On the CPU in f32 it runs the plain-Rust fast path (`encoder::cpu`); elsewhere (and in
/// [`ModernBert::forward_reference`]) Candle ops.
#[derive(Debug, Clone)]
pub struct ModernBert {
    embeddings: Embedding,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
    final_norm: LayerNorm,
    config: ModernBertConfig,
    dtype: DType,
    fast: Option<FastPath>,
}

impl ModernBert {
    /// Builds the backbone from `vb`, whose root holds `model.embeddings…`, `model.layers…`.
    pub fn load(config: &ModernBertConfig, vb: VarBuilder) -> Result<Self> {
        let c = config;
        let vb = vb.pp("model");
        let dev = vb.device().clone();
        let dtype = vb.dtype();
        let hd = c.head_dim();
        let global = Rotary::new(
            c.global_rope_theta,
            hd,
            c.max_position_embeddings,
            dtype,
            &dev,
        )?;
        let local = Rotary::new(
            c.local_rope_theta,
            hd,
            c.max_position_embeddings,
            dtype,
            &dev,
        )?;
        let embeddings = candle_nn::embedding(
            c.vocab_size,
            c.hidden_size,
            vb.pp("embeddings.tok_embeddings"),
        )?;
        let embed_norm = layer_norm(
            c.hidden_size,
            c.norm_eps,
            c.norm_bias,
            vb.pp("embeddings.norm"),
        )?;
        let layers = c
            .layer_types
            .iter()
            .enumerate()
            .map(|(i, &kind)| {
                let lv = vb.pp(format!("layers.{i}"));
                Ok(Layer {
                    attn_norm: if i == 0 {
                        None
                    } else {
                        Some(layer_norm(
                            c.hidden_size,
                            c.norm_eps,
                            c.norm_bias,
                            lv.pp("attn_norm"),
                        )?)
                    },
                    attn: Attention {
                        qkv: linear(
                            c.hidden_size,
                            3 * c.hidden_size,
                            c.attention_bias,
                            lv.pp("attn.Wqkv"),
                        )?,
                        out: linear(
                            c.hidden_size,
                            c.hidden_size,
                            c.attention_bias,
                            lv.pp("attn.Wo"),
                        )?,
                        heads: c.num_heads,
                        head_dim: hd,
                        kind,
                        reach: c.local_attention / 2,
                        rotary: match kind {
                            AttentionKind::Global => global.clone(),
                            AttentionKind::Local => local.clone(),
                        },
                    },
                    mlp_norm: layer_norm(
                        c.hidden_size,
                        c.norm_eps,
                        c.norm_bias,
                        lv.pp("mlp_norm"),
                    )?,
                    mlp: Mlp {
                        wi: linear(
                            c.hidden_size,
                            2 * c.intermediate_size,
                            c.mlp_bias,
                            lv.pp("mlp.Wi"),
                        )?,
                        wo: linear(
                            c.intermediate_size,
                            c.hidden_size,
                            c.mlp_bias,
                            lv.pp("mlp.Wo"),
                        )?,
                        act: c.hidden_activation,
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let final_norm = layer_norm(c.hidden_size, c.norm_eps, c.norm_bias, vb.pp("final_norm"))?;
        let fast = if dev.is_cpu() && dtype == DType::F32 {
            let parts: Vec<LayerParts> = layers
                .iter()
                .map(|l: &Layer| LayerParts {
                    attn_norm: l.attn_norm.as_ref(),
                    qkv: &l.attn.qkv,
                    out: &l.attn.out,
                    mlp_norm: &l.mlp_norm,
                    wi: &l.mlp.wi,
                    wo: &l.mlp.wo,
                    kind: l.attn.kind,
                })
                .collect();
            Some(FastPath(std::sync::Arc::new(CpuBackbone::new(
                c,
                embeddings.embeddings(),
                &embed_norm,
                &parts,
                &final_norm,
            )?)))
        } else {
            None
        };
        Ok(Self {
            embeddings,
            embed_norm,
            layers,
            final_norm,
            config: c.clone(),
            dtype,
            fast,
        })
    }

    /// Stores the CPU fast path's linear weights as Q8_0 (8-bit weights and activations, one scale
    /// per 32 values). Returns `false`, changing nothing, when the model has no CPU fast path (another
    /// device or dtype), where it runs as loaded. [`ModernBert::forward_reference`] stays in f32.
    /// Fails only if the buffer for the quantized weights cannot be mapped.
    pub fn quantize_q8_0(&mut self) -> Result<bool> {
        let Some(FastPath(fast)) = &mut self.fast else {
            return Ok(false);
        };
        std::sync::Arc::make_mut(fast).quantize_q8_0()?;
        Ok(true)
    }

    /// The configuration.
    pub fn config(&self) -> &ModernBertConfig {
        &self.config
    }

    /// The dtype of the weights and activations.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Token states `[B, T, hidden]` for `input_ids` `[B, T]` (u32) and `attention_mask` `[B, T]`
    /// (1 for tokens, 0 for padding; any integer or float dtype). States at padding positions are 0.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let Some(FastPath(fast)) = &self.fast else {
            return self.forward_reference(input_ids, attention_mask);
        };
        let (b, t) = input_ids.dims2()?;
        self.check_length(t)?;
        let ids: Vec<u32> = input_ids.to_dtype(DType::U32)?.flatten_all()?.to_vec1()?;
        let mask: Vec<f32> = attention_mask
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        let states = fast.forward(&ids, &mask, b, t)?;
        Tensor::from_vec(states, (b, t, self.config.hidden_size), input_ids.device())
    }

    fn check_length(&self, t: usize) -> Result<()> {
        if t > self.config.max_position_embeddings {
            candle_core::bail!(
                "sequence of {t} tokens exceeds max_position_embeddings {}",
                self.config.max_position_embeddings
            );
        }
        Ok(())
    }

    /// [`ModernBert::forward`] on Candle ops only (the path used on GPUs and in half precision; on the
    /// CPU a reference for the fast path).
    pub fn forward_reference(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        self.check_length(t)?;
        // 0 for real keys, a large negative number for padding, in f32: [B, 1, 1, T]. (Finite, so
        // a padding query whose whole band is padding still gets a defined softmax.)
        let key_bias =
            ((attention_mask.to_dtype(DType::F32)? - 1.0)? * 1e9)?.reshape((b, 1, 1, t))?;
        let packing = Packing::new(attention_mask)?;
        let ids = packing.unpad(&input_ids.reshape((b * t, 1))?)?.squeeze(1)?;
        let mut x = self.embed_norm.forward(&self.embeddings.forward(&ids)?)?;
        for layer in &self.layers {
            let h = match &layer.attn_norm {
                Some(n) => n.forward(&x)?,
                None => x.clone(),
            };
            x = (&x + layer.attn.forward(&h, &packing, &key_bias)?)?;
            let h = layer.mlp_norm.forward(&x)?;
            x = (&x + layer.mlp.forward(&h)?)?;
        }
        let hidden = self.config.hidden_size;
        packing
            .pad(&self.final_norm.forward(&x)?)?
            .reshape((b, t, hidden))
    }
}
