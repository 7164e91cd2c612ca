//! The decoder's forward pass on a Candle device other than the CPU (CUDA).
//!
//! Same math as the CPU path in `model.rs`, on device tensors: quantized GGUF weights are uploaded once
//! as Candle `QTensor`s and multiplied with Candle's `QMatMul` (its CUDA kernels), f32/f16/bf16 weights
//! become f32 device matrices; RMSNorm (fused with the residual add), rotary, the KV-cache writes and
//! the paged attention over the engine's cache are this project's kernels (`switchyard_kernels::ops`),
//! and the cache lives on the device ([`KvCache::new_on`]). Activations are f32. Token embeddings are
//! dequantized on the host from the mapped file (a few KB per step) and uploaded; only the logits the
//! caller asked for come back.

use crate::decoder::kv_cache::KvCache;
use crate::decoder::{DecoderConfig, RopeStyle};
use crate::error::{ModelError, Result};
use crate::weights::MappedTensor;
use candle_core::quantized::{ggml_file::qtensor_from_ggml, QMatMul};
use candle_core::{Device, Module, Tensor};
use switchyard_kernels::ops::{self, AttentionMeta};
use switchyard_kernels::{AttentionShape, RotaryStyle, SequenceSpan};

/// A linear layer on the device.
pub(crate) struct GpuLinear {
    weight: QMatMul,
    bias: Option<Tensor>,
}

impl GpuLinear {
    pub(crate) fn new(
        weight: &MappedTensor,
        bias: Option<&[f32]>,
        device: &Device,
    ) -> Result<Self> {
        let q = qtensor_from_ggml(
            weight.format(),
            weight.bytes(),
            weight.shape().to_vec(),
            device,
        )?;
        let weight = QMatMul::from_qtensor(q)?;
        let bias = match bias {
            Some(b) => Some(Tensor::from_slice(b, b.len(), device)?),
            None => None,
        };
        Ok(Self { weight, bias })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.weight.forward(x)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

pub(crate) struct GpuLayer {
    pub(crate) attn_norm: Tensor,
    pub(crate) q: GpuLinear,
    pub(crate) k: GpuLinear,
    pub(crate) v: GpuLinear,
    pub(crate) o: GpuLinear,
    pub(crate) q_norm: Option<Tensor>,
    pub(crate) k_norm: Option<Tensor>,
    pub(crate) ffn_norm: Tensor,
    pub(crate) gate: GpuLinear,
    pub(crate) up: GpuLinear,
    pub(crate) down: GpuLinear,
}

/// Every weight of a decoder, resident on one device.
pub(crate) struct GpuWeights {
    pub(crate) device: Device,
    pub(crate) layers: Vec<GpuLayer>,
    pub(crate) norm: Tensor,
    pub(crate) lm_head: GpuLinear,
}

impl std::fmt::Debug for GpuWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuWeights")
            .field("device", &self.device)
            .field("layers", &self.layers.len())
            .finish()
    }
}

pub(crate) fn vector(v: &[f32], device: &Device) -> Result<Tensor> {
    Ok(Tensor::from_slice(v, v.len(), device)?)
}

/// What the host prepared for one step.
pub(crate) struct StepInput<'a> {
    /// `[n, hidden]` embeddings.
    pub(crate) x: Vec<f32>,
    pub(crate) n: usize,
    /// `[n, head_dim / 2]` rotary tables.
    pub(crate) cos: Vec<f32>,
    pub(crate) sin: Vec<f32>,
    pub(crate) spans: &'a [SequenceSpan<'a>],
    /// Cache slot (block * block_size + offset) of every row.
    pub(crate) slots: Vec<u32>,
    /// Rows whose logits are returned, in order.
    pub(crate) logit_rows: Vec<u32>,
}

impl GpuWeights {
    pub(crate) fn forward(
        &self,
        c: &DecoderConfig,
        step: StepInput,
        cache: &KvCache,
    ) -> Result<Vec<f32>> {
        let dev = &self.device;
        let (h, hd, n) = (c.hidden_size, c.head_dim, step.n);
        let half = hd / 2;
        if cache.device_layers.len() != self.layers.len() {
            return Err(ModelError::Forward(format!(
                "the KV cache is not on {dev:?} (build it with KvCache::new_on)"
            )));
        }
        let style = match c.rope_style {
            RopeStyle::HalfSplit => RotaryStyle::HalfSplit,
            RopeStyle::Interleaved => RotaryStyle::Interleaved,
        };
        let shape = AttentionShape {
            heads: c.num_heads,
            kv_heads: c.num_kv_heads,
            head_dim: hd,
            block_size: cache.block_size(),
        };
        let scale = 1.0 / (hd as f32).sqrt();
        let eps = c.rms_norm_eps as f32;
        let max_slot = step.slots.iter().copied().max().unwrap_or(0);

        let x0 = Tensor::from_vec(step.x, (n, h), dev)?;
        let cos = Tensor::from_vec(step.cos, (n, half), dev)?;
        let sin = Tensor::from_vec(step.sin, (n, half), dev)?;
        let slots = Tensor::from_vec(step.slots, n, dev)?;
        let meta = AttentionMeta::new(step.spans, cache.block_size(), dev)?;

        let mut x = x0;
        let mut xn = ops::rms_norm(&x, &self.layers[0].attn_norm, eps)?;
        for (i, (layer, (kc, vc))) in self.layers.iter().zip(&cache.device_layers).enumerate() {
            let mut q = layer.q.forward(&xn)?;
            let mut k = layer.k.forward(&xn)?;
            let v = layer.v.forward(&xn)?.contiguous()?;
            if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                q = ops::rms_norm(&q.contiguous()?, qn, eps)?;
                k = ops::rms_norm(&k.contiguous()?, kn, eps)?;
            }
            // Fresh, contiguous buffers of their own, so rotating in place touches nothing else.
            let q = q.contiguous()?;
            let k = k.contiguous()?;
            ops::rotary_in_place(&q, &cos, &sin, hd, style)?;
            ops::rotary_in_place(&k, &cos, &sin, hd, style)?;
            ops::write_kv(kc, &k, &slots, max_slot)?;
            ops::write_kv(vc, &v, &slots, max_slot)?;
            let attn = ops::paged_attention(&q, kc, vc, &meta, shape, scale)?;
            let proj = layer.o.forward(&attn)?.contiguous()?;
            let (x1, h1) = ops::add_rms_norm(&x, &proj, &layer.ffn_norm, eps)?;
            let act = (layer.gate.forward(&h1)?.silu()? * layer.up.forward(&h1)?)?;
            let down = layer.down.forward(&act)?.contiguous()?;
            let next_norm = match self.layers.get(i + 1) {
                Some(next) => &next.attn_norm,
                None => &self.norm,
            };
            let (x2, h2) = ops::add_rms_norm(&x1, &down, next_norm, eps)?;
            x = x2;
            xn = h2;
        }
        // `xn` is now the final norm of every row.
        if step.logit_rows.is_empty() {
            return Ok(Vec::new());
        }
        let rows = step.logit_rows.len();
        let picked = if rows == n {
            xn
        } else {
            let idx = Tensor::from_vec(step.logit_rows, rows, dev)?;
            xn.index_select(&idx, 0)?
        };
        let logits = self.lm_head.forward(&picked)?;
        Ok(logits.flatten_all()?.to_vec1::<f32>()?)
    }
}
