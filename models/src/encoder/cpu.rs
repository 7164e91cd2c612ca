//! The ModernBERT backbone's CPU fast path in f32: plain Rust over slices, matrix products through this
//! project's kernels (`switchyard_kernels::qmatmul`, AVX-512 / AVX2 by runtime detection, on its own
//! thread pool), and nothing allocated per layer beyond a few reused buffers.
//!
//! Why: a router batch is small (one request is ~30 tokens), so Candle's per-op overhead (~150 ops per
//! forward, each allocating and dispatching) and its AVX2-only `gemm` dominated the latency. Token-wise
//! work runs on the real tokens only (no padding); attention runs per sequence and head, its two
//! products also through the kernels. Positions are column indices of the padded `[B, T]` input, as in
//! `transformers`, so any padding side gives the same states as [`super::ModernBert`]'s Candle path.

use candle_core::{DType, Result, Tensor};
use memmap2::Mmap;
use std::ops::Range;
use std::sync::Arc;
use switchyard_kernels::qmatmul::{matmul, WeightFormat, WeightMatrix};

use super::config::{Activation, AttentionKind, ModernBertConfig};
use crate::weights::anonymous_weight_buffer;

pub(super) fn kernel_err(e: switchyard_kernels::KernelError) -> candle_core::Error {
    candle_core::Error::Msg(format!("encoder kernel: {e}"))
}

fn host(t: &Tensor) -> Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
}

/// `f32` values as the bytes the kernels read.
pub(super) fn bytes(v: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding or invalid bit patterns, and u8 has alignment 1.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

/// A weight matrix as the kernels read it.
#[derive(Clone)]
enum Weight {
    F32(Vec<f32>),
    /// GGML Q8_0 blocks (32 weights, one f16 scale), as raw bytes at `range` of a buffer that holds
    /// every quantized matrix of the encoder (see [`quantize_q8_0`]).
    Q8_0 {
        buffer: Arc<Mmap>,
        range: Range<usize>,
    },
}

/// A linear layer `y = x Wᵀ + b`, `W` `[out, in]`.
#[derive(Clone)]
pub(super) struct Dense {
    weight: Weight,
    bias: Option<Vec<f32>>,
    rows: usize,
    cols: usize,
}

impl Dense {
    /// From a row-major `[rows, cols]` weight and an optional bias of `rows` values.
    pub(super) fn new(weight: Vec<f32>, bias: Option<Vec<f32>>, rows: usize, cols: usize) -> Dense {
        Dense {
            weight: Weight::F32(weight),
            bias,
            rows,
            cols,
        }
    }

    fn from(l: &candle_nn::Linear) -> Result<Dense> {
        let (rows, cols) = l.weight().dims2()?;
        Ok(Dense::new(
            host(l.weight())?,
            l.bias().map(host).transpose()?,
            rows,
            cols,
        ))
    }

    /// The weight as Q8_0 blocks (8-bit, one scale per 32 weights), if it is f32 with rows of a
    /// whole number of blocks.
    fn q8_0_blocks(&self) -> Option<Vec<u8>> {
        use candle_core::quantized::k_quants::{BlockQ8_0, GgmlType};
        let Weight::F32(w) = &self.weight else {
            return None;
        };
        if !self.cols.is_multiple_of(32) {
            return None;
        }
        let mut blocks = vec![BlockQ8_0::zeros(); w.len() / 32];
        BlockQ8_0::from_float(w, &mut blocks);
        // SAFETY: BlockQ8_0 is `repr(C)` plain data (an f16 and 32 i8, 34 bytes, no padding).
        let raw = unsafe {
            std::slice::from_raw_parts(
                blocks.as_ptr().cast::<u8>(),
                std::mem::size_of_val(blocks.as_slice()),
            )
        };
        Some(raw.to_vec())
    }

    /// `out` (resized to `[m, rows]`) = `x` `[m, cols]` · Wᵀ + b.
    pub(super) fn forward(&self, x: &[f32], m: usize, out: &mut Vec<f32>) -> Result<()> {
        out.resize(m * self.rows, 0.0);
        let (format, data) = match &self.weight {
            Weight::F32(w) => (WeightFormat::F32, bytes(w)),
            Weight::Q8_0 { buffer, range } => (WeightFormat::Q8_0, &buffer[range.clone()]),
        };
        let w = WeightMatrix::new(format, self.rows, self.cols, data).map_err(kernel_err)?;
        matmul(x, m, &w, out).map_err(kernel_err)?;
        if let Some(b) = &self.bias {
            for row in out.chunks_exact_mut(self.rows) {
                row.iter_mut().zip(b).for_each(|(y, b)| *y += b);
            }
        }
        Ok(())
    }
}

/// Stores the weights of `layers` as Q8_0 (the integer kernels, with the activations rounded to
/// 8 bits too), all in one buffer mapped with the weights' page size
/// ([`crate::weights::weight_pages`]): a routed request reads every matrix, often after other work
/// has pushed them out of the caches, and a cold read costs less in 2 MiB pages (see
/// `weights/pages.rs`). Matrices already quantized, or with rows that are not a whole number of
/// 32-value blocks, stay as they are.
pub(super) fn quantize_q8_0<'a>(layers: impl IntoIterator<Item = &'a mut Dense>) -> Result<()> {
    let mut todo: Vec<(&mut Dense, Vec<u8>)> = layers
        .into_iter()
        .filter_map(|d| d.q8_0_blocks().map(|b| (d, b)))
        .collect();
    // Each matrix starts on a cache line.
    let padded = |b: &Vec<u8>| b.len().next_multiple_of(64);
    let total = todo.iter().map(|(_, b)| padded(b)).sum();
    let io = |e: std::io::Error| candle_core::Error::Msg(format!("a buffer for Q8_0 weights: {e}"));
    let mut buffer = anonymous_weight_buffer(total).map_err(io)?;
    let mut ranges = Vec::with_capacity(todo.len());
    let mut at = 0;
    for (_, blocks) in &todo {
        buffer[at..at + blocks.len()].copy_from_slice(blocks);
        ranges.push(at..at + blocks.len());
        at += padded(blocks);
    }
    let buffer = Arc::new(buffer.make_read_only().map_err(io)?);
    for ((dense, _), range) in todo.iter_mut().zip(ranges) {
        dense.weight = Weight::Q8_0 {
            buffer: buffer.clone(),
            range,
        };
    }
    Ok(())
}

/// LayerNorm over the last dimension.
#[derive(Clone)]
pub(super) struct Norm {
    weight: Vec<f32>,
    bias: Option<Vec<f32>>,
    eps: f32,
}

impl Norm {
    /// From its scale, optional shift and epsilon.
    pub(super) fn new(weight: Vec<f32>, bias: Option<Vec<f32>>, eps: f32) -> Norm {
        Norm { weight, bias, eps }
    }

    fn from(n: &candle_nn::LayerNorm, eps: f64) -> Result<Norm> {
        Ok(Norm {
            weight: host(n.weight())?,
            bias: n.bias().map(host).transpose()?,
            eps: eps as f32,
        })
    }

    /// `out` (resized to `x`'s length) = the norm of each row of `x`.
    pub(super) fn forward(&self, x: &[f32], out: &mut Vec<f32>) {
        let h = self.weight.len();
        out.resize(x.len(), 0.0);
        for (row, o) in x.chunks_exact(h).zip(out.chunks_exact_mut(h)) {
            let mean = sum8(row.iter().copied()) / h as f32;
            let var = sum8(row.iter().map(|v| (v - mean) * (v - mean))) / h as f32;
            let inv = 1.0 / (var + self.eps).sqrt();
            for ((o, x), w) in o.iter_mut().zip(row).zip(&self.weight) {
                *o = (x - mean) * inv * w;
            }
            if let Some(b) = &self.bias {
                o.iter_mut().zip(b).for_each(|(o, b)| *o += b);
            }
        }
    }
}

/// The sum of `values` in eight interleaved partial sums (so the compiler can keep them in one
/// vector register).
fn sum8(values: impl Iterator<Item = f32>) -> f32 {
    let mut acc = [0f32; 8];
    for (i, v) in values.enumerate() {
        acc[i % 8] += v;
    }
    acc.iter().sum()
}

/// The activation applied to every value of `v` (GELU on the kernels' 8-lane path).
pub(super) fn activate_in_place(v: &mut [f32], act: Activation) {
    match act {
        Activation::Gelu => switchyard_kernels::activation::gelu_in_place(v),
        Activation::GeluTanh => v.iter_mut().for_each(|x| {
            let x3 = *x * *x * *x;
            *x = 0.5
                * *x
                * (1.0 + ((2.0 / std::f32::consts::PI).sqrt() * (*x + 0.044_715 * x3)).tanh());
        }),
        Activation::Silu => v.iter_mut().for_each(|x| *x /= 1.0 + (-*x).exp()),
        Activation::Relu => v.iter_mut().for_each(|x| *x = x.max(0.0)),
    }
}

/// cos / sin tables `[positions, head_dim / 2]` for one rope theta.
#[derive(Clone)]
struct Rope {
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
}

impl Rope {
    fn new(theta: f64, head_dim: usize, positions: usize) -> Rope {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        for p in 0..positions {
            for i in 0..half {
                // As the Candle path: inverse frequency and angle in f32.
                let inv = (1.0 / theta.powf((2 * i) as f64 / head_dim as f64)) as f32;
                let a = p as f32 * inv;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Rope { cos, sin, half }
    }

    /// Rotates one head vector (`rotate_half` convention) at `position`.
    fn apply(&self, v: &mut [f32], position: usize) {
        let (c, s) = (
            &self.cos[position * self.half..][..self.half],
            &self.sin[position * self.half..][..self.half],
        );
        let (a, b) = v.split_at_mut(self.half);
        for i in 0..self.half {
            let (x, y) = (a[i], b[i]);
            a[i] = x * c[i] - y * s[i];
            b[i] = y * c[i] + x * s[i];
        }
    }
}

#[derive(Clone)]
struct Layer {
    attn_norm: Option<Norm>,
    qkv: Dense,
    out: Dense,
    mlp_norm: Norm,
    wi: Dense,
    wo: Dense,
    kind: AttentionKind,
}

/// The backbone's weights on the host, in f32.
#[derive(Clone)]
pub(crate) struct CpuBackbone {
    embeddings: Vec<f32>,
    embed_norm: Norm,
    layers: Vec<Layer>,
    final_norm: Norm,
    global_rope: Rope,
    local_rope: Rope,
    hidden: usize,
    heads: usize,
    head_dim: usize,
    reach: usize,
    act: Activation,
}

/// The Candle layers of one encoder layer, borrowed to copy their weights.
pub(crate) struct LayerParts<'a> {
    pub attn_norm: Option<&'a candle_nn::LayerNorm>,
    pub qkv: &'a candle_nn::Linear,
    pub out: &'a candle_nn::Linear,
    pub mlp_norm: &'a candle_nn::LayerNorm,
    pub wi: &'a candle_nn::Linear,
    pub wo: &'a candle_nn::Linear,
    pub kind: AttentionKind,
}

/// Reusable buffers of one forward.
#[derive(Default)]
struct Scratch {
    h: Vec<f32>,
    qkv: Vec<f32>,
    ctx: Vec<f32>,
    proj: Vec<f32>,
    mlp: Vec<f32>,
    gated: Vec<f32>,
    head: HeadScratch,
}

/// Reusable buffers of one head's attention ([`attend_heads`]).
#[derive(Default)]
pub(super) struct HeadScratch {
    q: Vec<f32>,
    k: Vec<f32>,
    vt: Vec<f32>,
    scores: Vec<f32>,
    out: Vec<f32>,
}

/// Softmax attention of every head over one sequence: rows `range` of `qkv` (`[N, 3 · hidden]`,
/// queries already rotated and scaled), query `a` of the sequence attending to its keys
/// `windows[a]`; each head's result goes to its columns of `ctx` (`[N, hidden]`).
pub(super) fn attend_heads(
    qkv: &[f32],
    range: std::ops::Range<usize>,
    windows: &[std::ops::Range<usize>],
    heads: usize,
    head_dim: usize,
    hs: &mut HeadScratch,
    ctx: &mut [f32],
) -> Result<()> {
    for head in 0..heads {
        attend_head(
            qkv,
            range.clone(),
            windows,
            head,
            heads * head_dim,
            head_dim,
            hs,
            ctx,
        )?;
    }
    Ok(())
}

/// [`attend_heads`] for one head.
#[allow(clippy::too_many_arguments)]
fn attend_head(
    qkv: &[f32],
    range: std::ops::Range<usize>,
    windows: &[std::ops::Range<usize>],
    head: usize,
    hidden: usize,
    head_dim: usize,
    hs: &mut HeadScratch,
    ctx: &mut [f32],
) -> Result<()> {
    let (hd, dh, t) = (hidden, head_dim, range.len());
    // Q and K of this sequence and head contiguous, V transposed.
    hs.q.resize(t * dh, 0.0);
    hs.k.resize(t * dh, 0.0);
    hs.vt.resize(dh * t, 0.0);
    for (j, i) in range.clone().enumerate() {
        let row = &qkv[i * 3 * hd..][..3 * hd];
        hs.q[j * dh..][..dh].copy_from_slice(&row[head * dh..][..dh]);
        hs.k[j * dh..][..dh].copy_from_slice(&row[hd + head * dh..][..dh]);
        for (d, v) in row[2 * hd + head * dh..][..dh].iter().enumerate() {
            hs.vt[d * t + j] = *v;
        }
    }
    // scores = Q Kᵀ, softmax over each query's window.
    hs.scores.resize(t * t, 0.0);
    let kw = WeightMatrix::new(WeightFormat::F32, t, dh, bytes(&hs.k)).map_err(kernel_err)?;
    matmul(&hs.q, t, &kw, &mut hs.scores).map_err(kernel_err)?;
    for (row, w) in hs.scores.chunks_exact_mut(t).zip(windows) {
        row[..w.start].fill(0.0);
        row[w.end..].fill(0.0);
        switchyard_kernels::activation::softmax_in_place(&mut row[w.clone()]);
    }
    // out = P V.
    hs.out.resize(t * dh, 0.0);
    let vw = WeightMatrix::new(WeightFormat::F32, dh, t, bytes(&hs.vt)).map_err(kernel_err)?;
    matmul(&hs.scores, t, &vw, &mut hs.out).map_err(kernel_err)?;
    for (j, i) in range.enumerate() {
        ctx[i * hd + head * dh..][..dh].copy_from_slice(&hs.out[j * dh..][..dh]);
    }
    Ok(())
}

impl CpuBackbone {
    pub(crate) fn new(
        config: &ModernBertConfig,
        embeddings: &Tensor,
        embed_norm: &candle_nn::LayerNorm,
        layers: &[LayerParts],
        final_norm: &candle_nn::LayerNorm,
    ) -> Result<CpuBackbone> {
        let eps = config.norm_eps;
        let head_dim = config.head_dim();
        Ok(CpuBackbone {
            embeddings: host(embeddings)?,
            embed_norm: Norm::from(embed_norm, eps)?,
            layers: layers
                .iter()
                .map(|l| {
                    Ok(Layer {
                        attn_norm: l.attn_norm.map(|n| Norm::from(n, eps)).transpose()?,
                        qkv: Dense::from(l.qkv)?,
                        out: Dense::from(l.out)?,
                        mlp_norm: Norm::from(l.mlp_norm, eps)?,
                        wi: Dense::from(l.wi)?,
                        wo: Dense::from(l.wo)?,
                        kind: l.kind,
                    })
                })
                .collect::<Result<_>>()?,
            final_norm: Norm::from(final_norm, eps)?,
            global_rope: Rope::new(
                config.global_rope_theta,
                head_dim,
                config.max_position_embeddings,
            ),
            local_rope: Rope::new(
                config.local_rope_theta,
                head_dim,
                config.max_position_embeddings,
            ),
            hidden: config.hidden_size,
            heads: config.num_heads,
            head_dim,
            reach: config.local_attention / 2,
            act: config.hidden_activation,
        })
    }

    /// Stores every layer's linear weights as Q8_0 (see [`quantize_q8_0`]): the products run
    /// on the integer kernels, ~1.5x faster than f32 at router sizes on AVX2.
    pub(crate) fn quantize_q8_0(&mut self) -> Result<()> {
        quantize_q8_0(
            self.layers
                .iter_mut()
                .flat_map(|l| [&mut l.qkv, &mut l.out, &mut l.wi, &mut l.wo]),
        )
    }

    /// States `[B * T, hidden]` (zeros at padding) for ids `[B, T]` and a mask `[B, T]` (non-zero =
    /// token).
    pub(crate) fn forward(
        &self,
        ids: &[u32],
        mask: &[f32],
        batch: usize,
        len: usize,
    ) -> Result<Vec<f32>> {
        let hd = self.hidden;
        // Real tokens in row-major order: (flat position, column).
        let real: Vec<(usize, usize)> = (0..batch * len)
            .filter(|&p| mask[p] != 0.0)
            .map(|p| (p, p % len))
            .collect();
        let n = real.len();
        // Each row's range in the packed order.
        let mut rows = Vec::with_capacity(batch);
        let mut start = 0;
        for b in 0..batch {
            let count = real[start..]
                .iter()
                .take_while(|(p, _)| p / len == b)
                .count();
            rows.push(start..start + count);
            start += count;
        }

        let vocab = self.embeddings.len() / hd;
        let mut x = vec![0.0f32; n * hd];
        for (i, &(p, _)) in real.iter().enumerate() {
            let id = ids[p] as usize;
            if id >= vocab {
                candle_core::bail!("token id {id} is outside the vocabulary of {vocab}");
            }
            x[i * hd..][..hd].copy_from_slice(&self.embeddings[id * hd..][..hd]);
        }
        let mut s = Scratch::default();
        self.embed_norm.forward(&x, &mut s.h);
        std::mem::swap(&mut x, &mut s.h);

        for layer in &self.layers {
            let input = match &layer.attn_norm {
                Some(norm) => {
                    norm.forward(&x, &mut s.h);
                    &s.h
                }
                None => &x,
            };
            layer.qkv.forward(input, n, &mut s.qkv)?;
            self.attention(layer.kind, &real, &rows, &mut s)?;
            layer.out.forward(&s.ctx, n, &mut s.proj)?;
            x.iter_mut().zip(&s.proj).for_each(|(x, y)| *x += y);

            layer.mlp_norm.forward(&x, &mut s.h);
            layer.wi.forward(&s.h, n, &mut s.mlp)?;
            let inter = layer.wi.rows / 2;
            s.gated.resize(n * inter, 0.0);
            for (row, g) in s
                .mlp
                .chunks_exact(2 * inter)
                .zip(s.gated.chunks_exact_mut(inter))
            {
                let (a, b) = row.split_at(inter);
                g.copy_from_slice(a);
                activate_in_place(g, self.act);
                g.iter_mut().zip(b).for_each(|(g, b)| *g *= b);
            }
            layer.wo.forward(&s.gated, n, &mut s.proj)?;
            x.iter_mut().zip(&s.proj).for_each(|(x, y)| *x += y);
        }
        self.final_norm.forward(&x, &mut s.h);

        let mut out = vec![0.0f32; batch * len * hd];
        for (i, &(p, _)) in real.iter().enumerate() {
            out[p * hd..][..hd].copy_from_slice(&s.h[i * hd..][..hd]);
        }
        Ok(out)
    }

    /// Attention of every sequence and head from `s.qkv` `[N, 3 * hidden]` into `s.ctx` `[N, hidden]`.
    fn attention(
        &self,
        kind: AttentionKind,
        real: &[(usize, usize)],
        rows: &[std::ops::Range<usize>],
        s: &mut Scratch,
    ) -> Result<()> {
        let (hd, dh) = (self.hidden, self.head_dim);
        let n = real.len();
        s.ctx.resize(n * hd, 0.0);
        let rope = match kind {
            AttentionKind::Global => &self.global_rope,
            AttentionKind::Local => &self.local_rope,
        };
        let scale = 1.0 / (dh as f32).sqrt();
        // Every head's query and key rotated in place, one pass per token; the queries scaled.
        for (row, &(_, col)) in s.qkv.chunks_exact_mut(3 * hd).zip(real) {
            let (q, rest) = row.split_at_mut(hd);
            for (qh, kh) in q.chunks_exact_mut(dh).zip(rest[..hd].chunks_exact_mut(dh)) {
                rope.apply(qh, col);
                rope.apply(kh, col);
            }
            q.iter_mut().for_each(|v| *v *= scale);
        }
        for range in rows {
            let t = range.len();
            if t == 0 {
                continue;
            }
            // Columns ascend within a sequence, so each query's window of keys is one range.
            let cols: Vec<usize> = real[range.clone()].iter().map(|&(_, c)| c).collect();
            let windows: Vec<std::ops::Range<usize>> = cols
                .iter()
                .map(|&c| match kind {
                    AttentionKind::Global => 0..t,
                    AttentionKind::Local => {
                        cols.partition_point(|&b| b + self.reach < c)
                            ..cols.partition_point(|&b| b <= c + self.reach)
                    }
                })
                .collect();
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
