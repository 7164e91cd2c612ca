//! A differentiable ModernBERT for training, on a `VarMap` whose tensor names are exactly those
//! `switchyard_models::encoder::MultiHeadClassifier` loads (`model.*` with Hugging Face names,
//! `heads.<name>.head.dense`, `heads.<name>.head.norm`, `heads.<name>.classifier`).
//!
//! Why not build `models::encoder::ModernBert` on the `VarMap` and train that? In candle-nn 0.11.1
//! `ops::softmax_last_dim`, `rotary_emb::rope` (and the fused `ops::layer_norm`, used by
//! `LayerNorm` only when it has a bias) are created with `apply_op*_no_bwd`: their outputs carry no
//! gradient, silently, so q/k projections would never learn. This forward computes the same
//! function with ops that all have a backward: a softmax custom op with its own backward, rope as
//! `x·cos + rotate_half(x)·sin`, LayerNorm from primitive ops, and plain masked attention (the
//! inference encoder's banded local attention equals a band mask at these lengths).
//! `train::run` checks the saved model against the inference encoder (max |Δlogit|).

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor, D};
use candle_nn::{Init, VarBuilder, VarMap};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

/// Backbone hyper-parameters (ModernBERT v4 key layout when written out).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Arch {
    pub vocab_size: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub local_attention: usize,
    pub global_every: usize,
    pub max_position: usize,
    pub pad_id: u32,
    pub norm_eps: f64,
    pub global_rope_theta: f64,
    pub local_rope_theta: f64,
}

impl Arch {
    pub fn is_local(&self, layer: usize) -> bool {
        !layer.is_multiple_of(self.global_every)
    }

    /// `config.json` in the transformers v4 layout; `id2label` is the domain head's, so that the
    /// root `head.*` / `classifier.*` copy makes the file a plain sequence classifier as well.
    pub fn config_json(&self, id2label: &[String]) -> serde_json::Value {
        let id2label: serde_json::Map<String, serde_json::Value> = id2label
            .iter()
            .enumerate()
            .map(|(i, l)| (i.to_string(), serde_json::Value::String(l.clone())))
            .collect();
        let label2id: serde_json::Map<String, serde_json::Value> = id2label
            .iter()
            .map(|(i, l)| {
                (
                    l.as_str().unwrap_or_default().to_string(),
                    serde_json::json!(i.parse::<u64>().unwrap_or(0)),
                )
            })
            .collect();
        serde_json::json!({
            "architectures": ["ModernBertForSequenceClassification"],
            "model_type": "modernbert",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "intermediate_size": self.intermediate,
            "max_position_embeddings": self.max_position,
            "norm_eps": self.norm_eps,
            "pad_token_id": self.pad_id,
            "cls_token_id": 2,
            "sep_token_id": 3,
            "bos_token_id": 2,
            "eos_token_id": 3,
            "global_rope_theta": self.global_rope_theta,
            "local_rope_theta": self.local_rope_theta,
            "global_attn_every_n_layers": self.global_every,
            "local_attention": self.local_attention,
            "hidden_activation": "gelu",
            "classifier_activation": "gelu",
            "classifier_pooling": "mean",
            "attention_bias": false,
            "mlp_bias": false,
            "norm_bias": false,
            "classifier_bias": false,
            "id2label": id2label,
            "label2id": label2id,
            "torch_dtype": "float32",
        })
    }
}

/// Softmax over the last dimension, with a backward (candle-nn's has none).
struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "train-softmax-last-dim"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(src) = storage else {
            candle_core::bail!("softmax: f32 only");
        };
        let Some((a, b)) = layout.contiguous_offsets() else {
            candle_core::bail!("softmax: contiguous input only");
        };
        let src = &src[a..b];
        let dim = layout.dims().last().copied().unwrap_or(1).max(1);
        let mut dst = vec![0f32; src.len()];
        dst.par_chunks_mut(dim * 64)
            .zip(src.par_chunks(dim * 64))
            .for_each(|(ys, xs)| {
                for (y, x) in ys.chunks_mut(dim).zip(xs.chunks(dim)) {
                    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0f32;
                    for (yi, xi) in y.iter_mut().zip(x) {
                        *yi = (xi - m).exp();
                        sum += *yi;
                    }
                    let inv = 1.0 / sum;
                    y.iter_mut().for_each(|v| *v *= inv);
                }
            });
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dot = (grad * res)?.sum_keepdim(D::Minus1)?;
        Ok(Some(res.mul(&grad.broadcast_sub(&dot)?)?))
    }
}

pub fn softmax(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax)
}

/// LayerNorm without bias (ModernBERT's `norm_bias: false`), from differentiable ops.
fn layer_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    xc.broadcast_div(&(var + eps)?.sqrt()?)?.broadcast_mul(w)
}

/// `x @ wᵀ` for `x` of any rank, `w` `[out, in]`.
fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let inp = *dims.last().unwrap_or(&1);
    let rows = x.elem_count() / inp.max(1);
    let y = x.reshape((rows, inp))?.matmul(&w.t()?)?;
    let mut out = dims;
    if let Some(l) = out.last_mut() {
        *l = w.dim(0)?;
    }
    y.reshape(out)
}

/// `[max_pos, head_dim]` cos and sin tables (each half repeated), as the inference encoder's.
fn rope_tables(theta: f64, hd: usize, max_pos: usize, dev: &Device) -> Result<(Tensor, Tensor)> {
    let inv: Vec<f32> = (0..hd / 2)
        .map(|i| (1.0 / theta.powf((2 * i) as f64 / hd as f64)) as f32)
        .collect();
    let inv = Tensor::from_vec(inv, (1, hd / 2), dev)?;
    let t = Tensor::arange(0u32, max_pos as u32, dev)?
        .to_dtype(DType::F32)?
        .reshape((max_pos, 1))?;
    let f = t.matmul(&inv)?;
    let f = Tensor::cat(&[&f, &f], 1)?;
    Ok((f.cos()?, f.sin()?))
}

fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let hd = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, hd / 2)?;
    let x2 = x.narrow(D::Minus1, hd / 2, hd / 2)?;
    let rot = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(cos)? + rot.broadcast_mul(sin)?
}

struct Layer {
    attn_norm: Option<Tensor>,
    wqkv: Tensor,
    wo: Tensor,
    mlp_norm: Tensor,
    wi: Tensor,
    wo_mlp: Tensor,
    local: bool,
}

/// What a head predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadKind {
    /// Mean-pooled sequence classification.
    Sequence,
    /// One label per token.
    Token,
}

pub struct Head {
    pub name: String,
    pub kind: HeadKind,
    pub labels: Vec<String>,
    dense: Tensor,
    norm: Tensor,
    cls_w: Tensor,
    cls_b: Tensor,
}

struct MlmHead {
    dense: Tensor,
    norm: Tensor,
    bias: Tensor,
}

/// The trainable model: backbone, task heads, and an MLM head (not saved) tied to the embeddings.
pub struct TrainModel {
    pub arch: Arch,
    emb: Tensor,
    embed_norm: Tensor,
    layers: Vec<Layer>,
    final_norm: Tensor,
    pub heads: Vec<Head>,
    mlm: MlmHead,
    rope_global: (Tensor, Tensor),
    rope_local: (Tensor, Tensor),
}

/// A new variable `name` of `vb` drawn from N(0, std) by a generator seeded with `seed` and the
/// variable's path, so that `--seed` fixes the starting weights (Candle's CPU `randn` draws from an
/// unseeded thread generator) and each variable's draw does not depend on the others.
fn seeded_normal(
    varmap: &VarMap,
    vb: &VarBuilder,
    shape: impl Into<Shape>,
    name: &str,
    std: f64,
    seed: u64,
) -> Result<Tensor> {
    let shape = shape.into();
    let t = vb.get_with_hints(shape.clone(), name, Init::Const(0.0))?;
    let path = match vb.prefix() {
        p if p.is_empty() => name.to_string(),
        p => format!("{p}.{name}"),
    };
    let var = varmap
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("the variable map's lock is poisoned".into()))?
        .get(&path)
        .cloned()
        .ok_or_else(|| candle_core::Error::Msg(format!("no variable {path}")))?;
    let mut rng = StdRng::seed_from_u64(seed ^ super::data::fnv1a(path.as_bytes()));
    // Box-Muller: two uniforms per value (the second of each pair unused, for clarity).
    let values: Vec<f32> = (0..shape.elem_count())
        .map(|_| {
            let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
            let u2: f64 = rng.random();
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos() * std) as f32
        })
        .collect();
    var.set(&Tensor::from_vec(values, shape, t.device())?)?;
    Ok(t)
}

impl TrainModel {
    /// Creates every variable in `varmap` (initialised like transformers' ModernBERT: N(0, 0.02),
    /// output projections scaled by 1/√(2·layers), norms at 1), the random ones drawn from `seed`.
    pub fn new(
        arch: &Arch,
        heads: &[(String, HeadKind, Vec<String>)],
        varmap: &VarMap,
        dev: &Device,
        seed: u64,
    ) -> Result<Self> {
        let vb = VarBuilder::from_varmap(varmap, DType::F32, dev);
        let h = arch.hidden;
        let std = 0.02;
        let out_std = std / (2.0 * arch.layers as f64).sqrt();
        let ones = Init::Const(1.0);
        let m = vb.pp("model");
        let emb = seeded_normal(
            varmap,
            &m,
            (arch.vocab_size, h),
            "embeddings.tok_embeddings.weight",
            std,
            seed,
        )?;
        let embed_norm = m.get_with_hints(h, "embeddings.norm.weight", ones)?;
        let layers = (0..arch.layers)
            .map(|i| {
                let l = m.pp(format!("layers.{i}"));
                Ok(Layer {
                    attn_norm: if i == 0 {
                        None
                    } else {
                        Some(l.get_with_hints(h, "attn_norm.weight", ones)?)
                    },
                    wqkv: seeded_normal(varmap, &l, (3 * h, h), "attn.Wqkv.weight", std, seed)?,
                    wo: seeded_normal(varmap, &l, (h, h), "attn.Wo.weight", out_std, seed)?,
                    mlp_norm: l.get_with_hints(h, "mlp_norm.weight", ones)?,
                    wi: seeded_normal(
                        varmap,
                        &l,
                        (2 * arch.intermediate, h),
                        "mlp.Wi.weight",
                        std,
                        seed,
                    )?,
                    wo_mlp: seeded_normal(
                        varmap,
                        &l,
                        (h, arch.intermediate),
                        "mlp.Wo.weight",
                        out_std,
                        seed,
                    )?,
                    local: arch.is_local(i),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let final_norm = m.get_with_hints(h, "final_norm.weight", ones)?;
        let heads = heads
            .iter()
            .map(|(name, kind, labels)| {
                let hv = vb.pp(format!("heads.{name}"));
                Ok(Head {
                    name: name.clone(),
                    kind: *kind,
                    labels: labels.clone(),
                    dense: seeded_normal(varmap, &hv, (h, h), "head.dense.weight", std, seed)?,
                    norm: hv.get_with_hints(h, "head.norm.weight", ones)?,
                    cls_w: seeded_normal(
                        varmap,
                        &hv,
                        (labels.len(), h),
                        "classifier.weight",
                        std,
                        seed,
                    )?,
                    cls_b: hv.get_with_hints(labels.len(), "classifier.bias", Init::Const(0.0))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mv = vb.pp("mlm");
        let mlm = MlmHead {
            dense: seeded_normal(varmap, &mv, (h, h), "dense.weight", std, seed)?,
            norm: mv.get_with_hints(h, "norm.weight", ones)?,
            bias: mv.get_with_hints(arch.vocab_size, "bias", Init::Const(0.0))?,
        };
        let hd = h / arch.heads;
        Ok(Self {
            arch: arch.clone(),
            emb,
            embed_norm,
            layers,
            final_norm,
            heads,
            mlm,
            rope_global: rope_tables(arch.global_rope_theta, hd, arch.max_position, dev)?,
            rope_local: rope_tables(arch.local_rope_theta, hd, arch.max_position, dev)?,
        })
    }

    fn attention(&self, l: &Layer, x: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let (b, t, h) = x.dims3()?;
        let nh = self.arch.heads;
        let hd = h / nh;
        let qkv = linear(x, &l.wqkv)?
            .reshape((b, t, 3, nh, hd))?
            .permute((2, 0, 3, 1, 4))?;
        let (cos, sin) = if l.local {
            &self.rope_local
        } else {
            &self.rope_global
        };
        let cos = cos.narrow(0, 0, t)?;
        let sin = sin.narrow(0, 0, t)?;
        let q = rope(&qkv.get(0)?.contiguous()?, &cos, &sin)?;
        let k = rope(&qkv.get(1)?.contiguous()?, &cos, &sin)?;
        let v = qkv.get(2)?.contiguous()?;
        let scores =
            (q.matmul(&k.t()?.contiguous()?)? * (1.0 / (hd as f64).sqrt()))?.broadcast_add(bias)?;
        let ctx = softmax(&scores)?.matmul(&v)?;
        let ctx = ctx.transpose(1, 2)?.contiguous()?.reshape((b, t, h))?;
        linear(&ctx, &l.wo)
    }

    /// Token states `[B, T, H]`. `key_bias`: `[B, 1, 1, T]` (0 for tokens, -1e9 for padding).
    pub fn backbone(&self, ids: &Tensor, key_bias: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let eps = self.arch.norm_eps;
        let x = self
            .emb
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, self.arch.hidden))?;
        let mut x = layer_norm(&x, &self.embed_norm, eps)?;
        let reach = self.arch.local_attention / 2;
        let band: Vec<f32> = (0..t)
            .flat_map(|i| (0..t).map(move |j| if i.abs_diff(j) > reach { -1e9 } else { 0.0 }))
            .collect();
        let local_bias =
            key_bias.broadcast_add(&Tensor::from_vec(band, (1, 1, t, t), ids.device())?)?;
        for l in &self.layers {
            let hn = match &l.attn_norm {
                Some(w) => layer_norm(&x, w, eps)?,
                None => x.clone(),
            };
            let bias = if l.local { &local_bias } else { key_bias };
            x = (&x + self.attention(l, &hn, bias)?)?;
            let hn = layer_norm(&x, &l.mlp_norm, eps)?;
            let up = linear(&hn, &l.wi)?;
            let halves = up.chunk(2, D::Minus1)?;
            let gated = (halves[0].gelu_erf()? * &halves[1])?;
            x = (&x + linear(&gated, &l.wo_mlp)?)?;
        }
        layer_norm(&x, &self.final_norm, eps)
    }

    /// A head on already pooled / selected states `[N, H]` → logits `[N, labels]`.
    pub fn head_logits(&self, head: usize, x: &Tensor) -> Result<Tensor> {
        let hd = &self.heads[head];
        let y = layer_norm(
            &linear(x, &hd.dense)?.gelu_erf()?,
            &hd.norm,
            self.arch.norm_eps,
        )?;
        linear(&y, &hd.cls_w)?.broadcast_add(&hd.cls_b)
    }

    /// Mean pooling over real tokens: `states` `[B, T, H]`, `mask` `[B, T]` f32 → `[B, H]`.
    pub fn mean_pool(states: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let m = mask.unsqueeze(D::Minus1)?;
        let sum = states.broadcast_mul(&m)?.sum(1)?;
        let count = m.sum(1)?.clamp(1.0, f64::MAX)?;
        sum.broadcast_div(&count)
    }

    /// MLM logits `[N, vocab]` for selected states `[N, H]` (decoder tied to the embeddings).
    pub fn mlm_logits(&self, x: &Tensor) -> Result<Tensor> {
        let y = layer_norm(
            &linear(x, &self.mlm.dense)?.gelu_erf()?,
            &self.mlm.norm,
            self.arch.norm_eps,
        )?;
        linear(&y, &self.emb)?.broadcast_add(&self.mlm.bias)
    }
}

/// A linear map from the mean-pooled backbone state into a teacher encoder's embedding space: the
/// student side of distillation (`train-router --distill-steps`). Lives in the `VarMap` under
/// `distill.*`, which the router does not save.
pub struct DistillHead {
    w: Tensor,
    b: Tensor,
}

impl DistillHead {
    /// Creates the projection `hidden → dim` in `varmap`.
    pub fn new(
        varmap: &VarMap,
        hidden: usize,
        dim: usize,
        dev: &Device,
        seed: u64,
    ) -> Result<Self> {
        let vb = VarBuilder::from_varmap(varmap, DType::F32, dev).pp("distill");
        Ok(Self {
            w: seeded_normal(varmap, &vb, (dim, hidden), "proj.weight", 0.02, seed)?,
            b: vb.get_with_hints(dim, "proj.bias", Init::Const(0.0))?,
        })
    }

    /// Pooled states `[N, H]` → embeddings `[N, dim]`.
    pub fn project(&self, pooled: &Tensor) -> Result<Tensor> {
        linear(pooled, &self.w)?.broadcast_add(&self.b)
    }
}

/// Mean cosine distance `1 − cos(a_i, b_i)` over the rows of `a`, `b` `[N, D]`.
pub fn cosine_distance(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let dot = (a * b)?.sum(D::Minus1)?;
    // The small term inside the roots keeps a zero row's gradient finite.
    let norm = |x: &Tensor| -> Result<Tensor> { (x.sqr()?.sum(D::Minus1)? + 1e-12)?.sqrt() };
    (dot / (norm(a)? * norm(b)?)?)?
        .affine(-1.0, 1.0)?
        .mean_all()
}

/// Names of the tensors that go into `model.safetensors` (everything but the MLM head and the
/// distillation projection).
pub fn is_saved(name: &str) -> bool {
    !name.starts_with("mlm.") && !name.starts_with("distill.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_op_matches_and_has_a_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let x = candle_core::Var::from_vec(vec![0.5f32, -1.0, 2.0, 0.0, 3.0, 1.0], (2, 3), &dev)?;
        let y = softmax(x.as_tensor())?;
        let want = candle_nn::ops::softmax_last_dim(x.as_tensor())?;
        let d = (&y - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d < 1e-6);
        // Gradient of sum(softmax · w) against the decomposed softmax's.
        let w = Tensor::new(&[[1f32, 2., 3.], [-1., 0., 1.]], &dev)?;
        let g1 = (y * &w)?.sum_all()?.backward()?;
        let e = x.as_tensor().exp()?;
        let y2 = e.broadcast_div(&e.sum_keepdim(1)?)?;
        let g2 = (y2 * &w)?.sum_all()?.backward()?;
        let a = g1
            .get(x.as_tensor())
            .expect("grad")
            .flatten_all()?
            .to_vec1::<f32>()?;
        let b = g2
            .get(x.as_tensor())
            .expect("grad")
            .flatten_all()?
            .to_vec1::<f32>()?;
        for (p, q) in a.iter().zip(&b) {
            assert!((p - q).abs() < 1e-5, "{a:?} vs {b:?}");
        }
        Ok(())
    }

    #[test]
    fn rope_matches_candle_rope() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 5, 8), &dev)?;
        let (cos, sin) = rope_tables(10_000.0, 8, 16, &dev)?;
        let ours = rope(&x, &cos.narrow(0, 0, 5)?, &sin.narrow(0, 0, 5)?)?;
        let theirs = candle_nn::rotary_emb::rope(
            &x,
            &cos.narrow(0, 0, 5)?.narrow(1, 0, 4)?.contiguous()?,
            &sin.narrow(0, 0, 5)?.narrow(1, 0, 4)?.contiguous()?,
        )?;
        let d = (ours - theirs)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d < 1e-5, "{d}");
        Ok(())
    }

    /// Why this module exists: candle-nn 0.11.1's softmax and rope carry no gradient. If this
    /// starts failing, candle grew backward passes and the training forward could use them.
    #[test]
    fn candle_nn_softmax_and_rope_drop_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = candle_core::Var::from_vec(vec![0.5f32, -1.0, 2.0, 0.0], (1, 1, 1, 4), &dev)?;
        let g = candle_nn::ops::softmax_last_dim(x.as_tensor())?
            .sqr()?
            .sum_all()?
            .backward()?;
        assert!(g.get(x.as_tensor()).is_none());
        let cos = Tensor::ones((1, 2), DType::F32, &dev)?;
        let g = candle_nn::rotary_emb::rope(x.as_tensor(), &cos, &cos.zeros_like()?)?
            .sum_all()?
            .backward()?;
        assert!(g.get(x.as_tensor()).is_none());
        Ok(())
    }
}
