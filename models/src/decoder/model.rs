//! The llama-family forward pass over a ragged batch.
//!
//! All tokens of a step (prefill chunks and single decode tokens of many sequences) are flattened
//! into one `[tokens, hidden]` activation matrix, so every linear layer is one matrix product over
//! the whole batch (weights are read once per step, not once per sequence), and attention is one
//! paged-attention call that knows where each sequence's rows and cache blocks are.

use crate::decoder::gpu::{self, GpuLayer, GpuLinear, GpuWeights, StepInput};
use crate::decoder::kv_cache::{BlockTable, KvCache};
use crate::decoder::rope::Rope;
use crate::decoder::{DecoderConfig, Family};
use crate::error::{ModelError, Result};
use crate::weights::{GgufFile, MappedTensor, SafetensorsFiles, TensorSource};
use candle_core::Device;
use std::path::Path;
use switchyard_kernels::{matmul, ActScales, AttentionShape, SequenceSpan};

/// A linear layer: a (possibly quantized) `[out, in]` weight and an optional bias.
#[derive(Debug)]
struct Linear {
    weight: MappedTensor,
    bias: Option<Vec<f32>>,
}

/// A [`ModelError::BadTensor`] unless `t`, called `name`, is a `[rows, cols]` matrix.
fn check_matrix(t: &MappedTensor, name: &str, rows: usize, cols: usize) -> Result<()> {
    if t.shape() != [rows, cols] {
        return Err(ModelError::BadTensor {
            name: name.into(),
            message: format!("expected shape [{rows}, {cols}], found {:?}", t.shape()),
        });
    }
    Ok(())
}

impl Linear {
    fn load(
        src: &dyn TensorSource,
        name: &str,
        bias: Option<&str>,
        out: usize,
        inp: usize,
    ) -> Result<Self> {
        let weight = src.require(name)?;
        check_matrix(&weight, name, out, inp)?;
        let bias = match bias.and_then(|b| src.get(b)) {
            Some(b) => Some(vector(&b, bias.unwrap_or_default(), out)?),
            None => None,
        };
        Ok(Self { weight, bias })
    }

    /// `out[m, rows] = x[m, cols] Wᵀ + b`.
    fn forward(&self, x: &[f32], m: usize, out: &mut [f32]) -> Result<()> {
        matmul(x, m, &ggml_matrix(&self.weight)?, out)?;
        if let Some(b) = &self.bias {
            for row in out.chunks_exact_mut(b.len()) {
                row.iter_mut().zip(b).for_each(|(o, b)| *o += b);
            }
        }
        Ok(())
    }
}

fn vector(t: &MappedTensor, name: &str, len: usize) -> Result<Vec<f32>> {
    let v = t.to_f32_vec()?;
    if v.len() != len {
        return Err(ModelError::BadTensor {
            name: name.into(),
            message: format!("expected {len} elements, found {}", v.len()),
        });
    }
    Ok(v)
}

#[derive(Debug)]
struct Layer {
    attn_norm: Vec<f32>,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// How tensors are named in a checkpoint format.
#[derive(Clone, Copy)]
enum Naming {
    Gguf,
    HuggingFace,
}

impl Naming {
    fn embed(self) -> &'static str {
        match self {
            Self::Gguf => "token_embd.weight",
            Self::HuggingFace => "model.embed_tokens.weight",
        }
    }
    fn output_norm(self) -> &'static str {
        match self {
            Self::Gguf => "output_norm.weight",
            Self::HuggingFace => "model.norm.weight",
        }
    }
    fn lm_head(self) -> &'static str {
        match self {
            Self::Gguf => "output.weight",
            Self::HuggingFace => "lm_head.weight",
        }
    }
    /// Name of `part` (in GGUF's vocabulary) of layer `i`.
    fn layer(self, i: usize, part: &str) -> String {
        match self {
            Self::Gguf => format!("blk.{i}.{part}"),
            Self::HuggingFace => {
                let hf = match part {
                    "attn_norm.weight" => "input_layernorm.weight",
                    "ffn_norm.weight" => "post_attention_layernorm.weight",
                    "attn_q.weight" => "self_attn.q_proj.weight",
                    "attn_k.weight" => "self_attn.k_proj.weight",
                    "attn_v.weight" => "self_attn.v_proj.weight",
                    "attn_q.bias" => "self_attn.q_proj.bias",
                    "attn_k.bias" => "self_attn.k_proj.bias",
                    "attn_v.bias" => "self_attn.v_proj.bias",
                    "attn_output.weight" => "self_attn.o_proj.weight",
                    "attn_q_norm.weight" => "self_attn.q_norm.weight",
                    "attn_k_norm.weight" => "self_attn.k_norm.weight",
                    "ffn_gate.weight" => "mlp.gate_proj.weight",
                    "ffn_up.weight" => "mlp.up_proj.weight",
                    "ffn_down.weight" => "mlp.down_proj.weight",
                    other => other,
                };
                format!("model.layers.{i}.{hf}")
            }
        }
    }
}

/// A llama-family decoder (Llama, SmolLM2, Qwen2, Qwen3) with weights used in place from their files.
#[derive(Debug)]
pub struct Decoder {
    config: DecoderConfig,
    embed: MappedTensor,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    lm_head: MappedTensor,
    rope: Rope,
    /// The weights on a GPU, when the model was moved there ([`Decoder::to_device`]).
    gpu: Option<GpuWeights>,
}

/// One sequence's part of a forward batch.
#[derive(Clone, Copy, Debug)]
pub struct SequenceInput<'a> {
    /// The tokens to run for this sequence (a prefill chunk, or the one newest token when decoding).
    pub tokens: &'a [u32],
    /// Absolute position of `tokens[0]` (the number of positions already in the cache).
    pub start_position: usize,
    /// The sequence's cache blocks; must cover `start_position + tokens.len()` positions.
    pub blocks: &'a BlockTable,
    /// Which of this chunk's rows get logits back.
    pub logits: LogitRows,
}

/// The rows of a [`SequenceInput`] whose logits [`Decoder::forward`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitRows {
    /// None (a prefill chunk before the prompt's last).
    None,
    /// The chunk's last token: the next token's distribution.
    Last,
    /// Every token of the chunk (scoring a prompt: each row predicts the token after it).
    All,
}

impl Decoder {
    /// Loads a GGUF file (weights stay quantized and mapped).
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let config = DecoderConfig::from_gguf(gguf)?;
        Self::load(config, gguf, Naming::Gguf)
    }

    /// Loads a Hugging Face checkpoint directory (`config.json` + safetensors).
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text =
            std::fs::read_to_string(&path).map_err(|source| ModelError::Io { path, source })?;
        let config = DecoderConfig::from_hf_json(&text)?;
        let files = SafetensorsFiles::open_dir(dir)?;
        Self::load(config, &files, Naming::HuggingFace)
    }

    fn load(config: DecoderConfig, src: &dyn TensorSource, naming: Naming) -> Result<Self> {
        let c = &config;
        let embed = src.require(naming.embed())?;
        check_matrix(&embed, naming.embed(), c.vocab_size, c.hidden_size)?;
        let lm_head = match src.get(naming.lm_head()) {
            Some(t) => t,
            None if c.tie_word_embeddings || matches!(naming, Naming::Gguf) => embed.clone(),
            None => return Err(ModelError::MissingTensor(naming.lm_head().into())),
        };
        check_matrix(&lm_head, naming.lm_head(), c.vocab_size, c.hidden_size)?;
        let (h, q, kv, ff) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
        let with_bias = c.family == Family::Qwen2;
        let layers = (0..c.num_layers)
            .map(|i| {
                let name = |part: &str| naming.layer(i, part);
                let lin = |w: &str, b: &str, out, inp| {
                    Linear::load(
                        src,
                        &name(w),
                        with_bias.then(|| name(b)).as_deref(),
                        out,
                        inp,
                    )
                };
                let norm = |part: &str, len| vector(&src.require(&name(part))?, &name(part), len);
                let qk_norm = |part: &str| -> Result<Option<Vec<f32>>> {
                    match c.family {
                        Family::Qwen3 => norm(part, c.head_dim).map(Some),
                        _ => Ok(None),
                    }
                };
                Ok(Layer {
                    attn_norm: norm("attn_norm.weight", h)?,
                    q: lin("attn_q.weight", "attn_q.bias", q, h)?,
                    k: lin("attn_k.weight", "attn_k.bias", kv, h)?,
                    v: lin("attn_v.weight", "attn_v.bias", kv, h)?,
                    o: lin("attn_output.weight", "", h, q)?,
                    q_norm: qk_norm("attn_q_norm.weight")?,
                    k_norm: qk_norm("attn_k_norm.weight")?,
                    ffn_norm: norm("ffn_norm.weight", h)?,
                    gate: lin("ffn_gate.weight", "", ff, h)?,
                    up: lin("ffn_up.weight", "", ff, h)?,
                    down: lin("ffn_down.weight", "", h, ff)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = vector(&src.require(naming.output_norm())?, naming.output_norm(), h)?;
        let rope = match naming {
            Naming::Gguf => Rope::new(c).with_ggml_angles(c),
            Naming::HuggingFace => Rope::new(c),
        };
        Ok(Self {
            config,
            embed,
            layers,
            norm,
            lm_head,
            rope,
            gpu: None,
        })
    }

    /// Moves the model to `device`: on a CUDA device every weight is uploaded once (quantized GGUF
    /// weights stay quantized) and [`Decoder::forward`] runs there, on a cache made by
    /// [`KvCache::new_on`] for the same device. The CPU is a no-op.
    pub fn to_device(mut self, device: &Device) -> Result<Self> {
        if device.is_cpu() {
            self.gpu = None;
            return Ok(self);
        }
        let started = std::time::Instant::now();
        let lin = |l: &Linear| GpuLinear::new(&l.weight, l.bias.as_deref(), device);
        let layers = self
            .layers
            .iter()
            .map(|l| {
                Ok(GpuLayer {
                    attn_norm: gpu::vector(&l.attn_norm, device)?,
                    q: lin(&l.q)?,
                    k: lin(&l.k)?,
                    v: lin(&l.v)?,
                    o: lin(&l.o)?,
                    q_norm: l
                        .q_norm
                        .as_deref()
                        .map(|v| gpu::vector(v, device))
                        .transpose()?,
                    k_norm: l
                        .k_norm
                        .as_deref()
                        .map(|v| gpu::vector(v, device))
                        .transpose()?,
                    ffn_norm: gpu::vector(&l.ffn_norm, device)?,
                    gate: lin(&l.gate)?,
                    up: lin(&l.up)?,
                    down: lin(&l.down)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let weights = GpuWeights {
            device: device.clone(),
            layers,
            norm: gpu::vector(&self.norm, device)?,
            lm_head: GpuLinear::new(&self.lm_head, None, device)?,
        };
        tracing::info!(
            device = ?device,
            weights_mib = self.weight_bytes() >> 20,
            secs = started.elapsed().as_secs_f32(),
            "decoder weights uploaded"
        );
        self.gpu = Some(weights);
        Ok(self)
    }

    /// The device the forward pass runs on.
    pub fn device(&self) -> Device {
        self.gpu.as_ref().map_or(Device::Cpu, |g| g.device.clone())
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    /// Bytes of weights this model reads (its share of the mapped files).
    pub fn weight_bytes(&self) -> usize {
        let lin = |l: &Linear| l.weight.bytes().len();
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                lin(&l.q)
                    + lin(&l.k)
                    + lin(&l.v)
                    + lin(&l.o)
                    + lin(&l.gate)
                    + lin(&l.up)
                    + lin(&l.down)
            })
            .sum();
        let head = if std::ptr::eq(self.lm_head.bytes().as_ptr(), self.embed.bytes().as_ptr()) {
            0
        } else {
            self.lm_head.bytes().len()
        };
        layers + self.embed.bytes().len() + head
    }

    /// Runs one step for a batch of sequences, writing their new keys/values into `cache`, and
    /// returns `[rows, vocab]` logits for the rows the sequences asked for ([`LogitRows`]), in
    /// batch order.
    pub fn forward(&self, batch: &[SequenceInput], cache: &mut KvCache) -> Result<Vec<f32>> {
        self.run(batch, cache, false, &mut |_, _, _| {})
    }

    /// Like [`Decoder::forward`], but returns `[tokens, vocab]` logits for every input token of every
    /// sequence (teacher forcing, scoring), whatever their `logits` say.
    pub fn forward_all(&self, batch: &[SequenceInput], cache: &mut KvCache) -> Result<Vec<f32>> {
        self.run(batch, cache, true, &mut |_, _, _| {})
    }

    /// [`Decoder::forward_all`] that also hands every intermediate result of the CPU path to
    /// `trace(name, layer, values)` as it is computed, `[tokens, width]` row-major, under
    /// llama.cpp's graph names (`attn_norm`, `Qcur`, `Kcur`, `Vcur` after their projections,
    /// `Qrope` / `Krope` after rotation, `kqv_out`, `attn_out`, `ffn_inp`, `ffn_norm`, `ffn_gate`,
    /// `ffn_up`, `ffn_swiglu`, `ffn_out`, `l_out`; `result_norm` with layer 0), so that a model can be
    /// compared with llama.cpp's eval callback op by op. A decoder on a GPU traces nothing.
    pub fn forward_traced(
        &self,
        batch: &[SequenceInput],
        cache: &mut KvCache,
        trace: &mut dyn FnMut(&str, usize, &[f32]),
    ) -> Result<Vec<f32>> {
        self.run(batch, cache, true, trace)
    }

    fn run(
        &self,
        batch: &[SequenceInput],
        cache: &mut KvCache,
        all_rows: bool,
        trace: &mut dyn FnMut(&str, usize, &[f32]),
    ) -> Result<Vec<f32>> {
        let c = &self.config;
        let (h, qd, kvd, ff, hd) = (
            c.hidden_size,
            c.q_dim(),
            c.kv_dim(),
            c.intermediate_size,
            c.head_dim,
        );
        let n: usize = batch.iter().map(|s| s.tokens.len()).sum();
        if n == 0 {
            return Ok(Vec::new());
        }
        if cache.kv_dim() != kvd || cache.num_layers() != c.num_layers {
            return Err(ModelError::Forward(
                "KV cache was built for another model".into(),
            ));
        }
        // Positions, spans and cache slots of every row.
        let mut positions = Vec::with_capacity(n);
        let mut spans = Vec::with_capacity(batch.len());
        for s in batch {
            let end = s.start_position + s.tokens.len();
            if end > c.max_position_embeddings {
                return Err(ModelError::Forward(format!(
                    "position {end} exceeds the model's context of {}",
                    c.max_position_embeddings
                )));
            }
            if s.blocks.blocks().len() * cache.block_size() < end {
                return Err(ModelError::Forward(format!(
                    "block table covers {} positions, {end} needed",
                    s.blocks.blocks().len() * cache.block_size()
                )));
            }
            spans.push(SequenceSpan {
                first_row: positions.len(),
                rows: s.tokens.len(),
                start_position: s.start_position,
                blocks: s.blocks.blocks(),
            });
            positions.extend(s.start_position..end);
        }
        let shape = AttentionShape {
            heads: c.num_heads,
            kv_heads: c.num_kv_heads,
            head_dim: hd,
            block_size: cache.block_size(),
        };
        let slot = |row: usize| -> usize {
            let span = spans
                .iter()
                .rfind(|s| s.first_row <= row)
                .expect("row belongs to a span");
            let pos = positions[row];
            switchyard_kernels::attention::cache_offset(&shape, span.blocks, pos, 0)
        };
        let slots: Vec<usize> = (0..n).map(slot).collect();

        // Rotary tables per row, shared by all layers.
        let half = hd / 2;
        let mut cos = vec![0f32; n * half];
        let mut sin = vec![0f32; n * half];
        for (r, &p) in positions.iter().enumerate() {
            self.rope.cos_sin(
                p,
                &mut cos[r * half..][..half],
                &mut sin[r * half..][..half],
            );
        }

        // Embeddings.
        let embed = self.embed.matrix()?;
        let mut x = vec![0f32; n * h];
        for (row, &tok) in batch.iter().flat_map(|s| s.tokens).enumerate() {
            if tok as usize >= c.vocab_size {
                return Err(ModelError::Forward(format!(
                    "token id {tok} is outside the vocabulary of {}",
                    c.vocab_size
                )));
            }
            embed.dequantize_row(tok as usize, &mut x[row * h..(row + 1) * h])?;
        }

        // Rows whose logits are returned.
        let rows: Vec<usize> = if all_rows {
            (0..n).collect()
        } else {
            spans
                .iter()
                .zip(batch)
                .flat_map(|(span, s)| {
                    let end = span.first_row + span.rows;
                    match s.logits {
                        LogitRows::None => end..end,
                        LogitRows::Last => end.saturating_sub(1).max(span.first_row)..end,
                        LogitRows::All => span.first_row..end,
                    }
                })
                .collect()
        };
        if let Some(g) = &self.gpu {
            let step = StepInput {
                x,
                n,
                cos,
                sin,
                spans: &spans,
                slots: slots.iter().map(|&s| (s / kvd) as u32).collect(),
                logit_rows: rows.iter().map(|&r| r as u32).collect(),
            };
            return g.forward(c, step, cache);
        }
        if cache.layers.len() != c.num_layers {
            return Err(ModelError::Forward(
                "the KV cache is on a device but this decoder runs on the CPU".into(),
            ));
        }

        let eps = c.rms_norm_eps as f32;
        let scale = 1.0 / (hd as f32).sqrt();
        let mut xn = vec![0f32; n * h];
        let mut q = vec![0f32; n * qd];
        let mut k = vec![0f32; n * kvd];
        let mut v = vec![0f32; n * kvd];
        let mut attn = vec![0f32; n * qd];
        let mut proj = vec![0f32; n * h];
        let mut gate = vec![0f32; n * ff];
        let mut up = vec![0f32; n * ff];
        for (li, (layer, lc)) in self.layers.iter().zip(cache.layers.iter_mut()).enumerate() {
            rms_norm_rows(&x, &layer.attn_norm, eps, &mut xn);
            trace("attn_norm", li, &xn);
            layer.q.forward(&xn, n, &mut q)?;
            layer.k.forward(&xn, n, &mut k)?;
            layer.v.forward(&xn, n, &mut v)?;
            trace("Qcur", li, &q);
            trace("Kcur", li, &k);
            trace("Vcur", li, &v);
            if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                rms_norm_in_place(&mut q, qn, eps);
                rms_norm_in_place(&mut k, kn, eps);
            }
            for r in 0..n {
                let (cr, sr) = (&cos[r * half..][..half], &sin[r * half..][..half]);
                self.rope.apply(&mut q[r * qd..(r + 1) * qd], hd, cr, sr);
                self.rope.apply(&mut k[r * kvd..(r + 1) * kvd], hd, cr, sr);
                lc.write(
                    slots[r],
                    &k[r * kvd..(r + 1) * kvd],
                    &v[r * kvd..(r + 1) * kvd],
                );
            }
            trace("Qrope", li, &q);
            trace("Krope", li, &k);
            lc.attend(&q, &spans, shape, scale, &mut attn)?;
            trace("kqv_out", li, &attn);
            layer.o.forward(&attn, n, &mut proj)?;
            trace("attn_out", li, &proj);
            add_in_place(&mut x, &proj);
            trace("ffn_inp", li, &x);

            rms_norm_rows(&x, &layer.ffn_norm, eps, &mut xn);
            trace("ffn_norm", li, &xn);
            layer.gate.forward(&xn, n, &mut gate)?;
            layer.up.forward(&xn, n, &mut up)?;
            trace("ffn_gate", li, &gate);
            trace("ffn_up", li, &up);
            // On the kernels' pool: a decode step's few thousand values stay on this thread (rayon
            // would cost a cross-thread hand-off per layer), a prefill's are split.
            const CHUNK: usize = 1 << 14;
            switchyard_kernels::pool::parallel_chunks_mut(&mut gate, CHUNK, 16, &|k, g| {
                switchyard_kernels::activation::silu_mul_in_place(g, &up[k * CHUNK..][..g.len()])
            });
            trace("ffn_swiglu", li, &gate);
            layer.down.forward(&gate, n, &mut proj)?;
            trace("ffn_out", li, &proj);
            add_in_place(&mut x, &proj);
            trace("l_out", li, &x);
        }

        // Final norm and logits only for the rows that need them.
        let mut last = vec![0f32; rows.len() * h];
        for (i, &r) in rows.iter().enumerate() {
            last[i * h..(i + 1) * h].copy_from_slice(&x[r * h..(r + 1) * h]);
        }
        let mut last_n = vec![0f32; last.len()];
        rms_norm_rows(&last, &self.norm, eps, &mut last_n);
        trace("result_norm", 0, &last_n);
        let mut logits = vec![0f32; rows.len() * c.vocab_size];
        matmul(
            &last_n,
            rows.len(),
            &ggml_matrix(&self.lm_head)?,
            &mut logits,
        )?;
        Ok(logits)
    }
}

/// A weight as the kernels read it, with the activations' block scales rounded as llama.cpp rounds
/// them ([`ActScales::Ggml`]), so a GGUF model computes what llama.cpp computes on the same file up to
/// the order of summation (float weights take the float kernels, which this does not change).
fn ggml_matrix(w: &MappedTensor) -> Result<switchyard_kernels::WeightMatrix<'_>> {
    Ok(w.matrix()?.with_act_scales(ActScales::Ggml))
}

/// RMSNorm of each `weight.len()`-wide row of `x` into `out`.
fn rms_norm_rows(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let w = weight.len();
    for (xr, or) in x.chunks_exact(w).zip(out.chunks_exact_mut(w)) {
        let inv = inverse_rms(xr, eps);
        for ((o, xv), wv) in or.iter_mut().zip(xr).zip(weight) {
            *o = xv * inv * wv;
        }
    }
}

/// RMSNorm of each `weight.len()`-wide chunk of `x`, in place (per-head q/k norms).
fn rms_norm_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
    let w = weight.len();
    for xr in x.chunks_exact_mut(w) {
        let inv = inverse_rms(xr, eps);
        for (xv, wv) in xr.iter_mut().zip(weight) {
            *xv = *xv * inv * wv;
        }
    }
}

/// `1 / sqrt(mean(x²) + eps)`, the squares summed in f64 as GGML does (so the normalised values
/// match llama.cpp's to the last bit, and the 8-bit activation quantization after them rounds the same).
fn inverse_rms(x: &[f32], eps: f32) -> f32 {
    let sum: f64 = x.iter().map(|&v| f64::from(v * v)).sum();
    let mean = (sum / x.len() as f64) as f32;
    1.0 / (mean + eps).sqrt()
}

fn add_in_place(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}
