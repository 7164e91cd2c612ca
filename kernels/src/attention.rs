//! Causal attention for a ragged batch of sequences over a paged KV cache.
//!
//! The cache of one layer is a pair of `[num_blocks, block_size, kv_heads, head_dim]` f32 buffers; a
//! sequence owns a list of blocks (its block table), and position `p` of the sequence lives in block
//! `blocks[p / block_size]`, slot `p % block_size`. Queries of all sequences are flattened into one
//! `[tokens, heads, head_dim]` buffer, so sequences at different positions (decode steps and prefill
//! chunks alike) are served by one call.

use crate::error::{KernelError, Result};

/// Shape of the attention problem shared by every sequence in a call.
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (`heads` is a multiple of it: grouped-query attention).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Positions per cache block.
    pub block_size: usize,
}

/// One sequence's slice of the flattened query batch.
#[derive(Clone, Copy, Debug)]
pub struct SequenceSpan<'a> {
    /// Index of the sequence's first query row in the flattened batch.
    pub first_row: usize,
    /// Number of query rows (tokens) of this sequence in the batch.
    pub rows: usize,
    /// Absolute position of the first query row; row `i` attends to positions `0..=start + i`.
    pub start_position: usize,
    /// The sequence's block table.
    pub blocks: &'a [u32],
}

/// Index of the first f32 of `(position, kv_head)` in a layer's cache buffer.
#[inline]
pub fn cache_offset(
    shape: &AttentionShape,
    blocks: &[u32],
    position: usize,
    kv_head: usize,
) -> usize {
    let block = blocks[position / shape.block_size] as usize;
    let slot = position % shape.block_size;
    ((block * shape.block_size + slot) * shape.kv_heads + kv_head) * shape.head_dim
}

/// Index of `position`'s slot in a layer's cache (`block * block_size + offset`), the unit of
/// [`write_kv`]'s `slots`.
#[inline]
pub fn cache_slot(block_size: usize, blocks: &[u32], position: usize) -> u32 {
    blocks[position / block_size] * block_size as u32 + (position % block_size) as u32
}

/// Writes one layer's new keys (or values) into their cache slots: row `r` of `src = [rows, width]`
/// goes to `cache[slots[r] * width..][..width]` (CPU twin of the CUDA kernel `write_kv_f32`).
pub fn write_kv(src: &[f32], cache: &mut [f32], slots: &[u32], width: usize) -> Result<()> {
    if src.len() != slots.len() * width {
        return Err(KernelError::Length {
            what: "new keys/values (one row per slot)",
            expected: slots.len() * width,
            actual: src.len(),
        });
    }
    let capacity = cache.len() / width.max(1);
    if let Some(&s) = slots.iter().find(|&&s| s as usize >= capacity) {
        return Err(KernelError::Length {
            what: "cache slot",
            expected: capacity,
            actual: s as usize,
        });
    }
    for (row, &s) in src.chunks_exact(width).zip(slots) {
        cache[s as usize * width..][..width].copy_from_slice(row);
    }
    Ok(())
}

/// Dot product with eight independent accumulators (vectorises without fast-math).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, ar) = a.split_at(a.len() / 8 * 8);
    let (bc, br) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(8).zip(bc.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ar.iter().zip(br).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// `out[rows, heads * head_dim] = softmax(q kᵀ · scale) v`, causally, for every sequence span.
///
/// `q` is `[rows, heads * head_dim]`; `k_cache`/`v_cache` hold one layer of the paged cache and must
/// already contain the keys and values of every position a query attends to (including its own).
pub fn paged_attention(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    spans: &[SequenceSpan],
    shape: AttentionShape,
    scale: f32,
    out: &mut [f32],
) -> Result<()> {
    let simd = crate::qmatmul::Isa::best() >= crate::qmatmul::Isa::Avx2;
    attention_on(q, k_cache, v_cache, spans, shape, scale, out, simd)
}

/// [`paged_attention`] with the AVX2 + FMA code (`simd`, when the CPU has it) or the portable one.
#[allow(clippy::too_many_arguments)]
fn attention_on(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    spans: &[SequenceSpan],
    shape: AttentionShape,
    scale: f32,
    out: &mut [f32],
    simd: bool,
) -> Result<()> {
    let width = shape.heads * shape.head_dim;
    let total_rows: usize = spans.iter().map(|s| s.rows).sum();
    let check = |what, expected, actual| {
        if expected != actual {
            Err(KernelError::Length {
                what,
                expected,
                actual,
            })
        } else {
            Ok(())
        }
    };
    check("attention queries", total_rows * width, q.len())?;
    check("attention output", total_rows * width, out.len())?;
    check("value cache", k_cache.len(), v_cache.len())?;
    if shape.kv_heads == 0 || !shape.heads.is_multiple_of(shape.kv_heads) || shape.block_size == 0 {
        return Err(KernelError::Length {
            what: "attention heads per key/value head",
            expected: shape.kv_heads,
            actual: shape.heads,
        });
    }
    let cache_positions = k_cache.len() / (shape.kv_heads * shape.head_dim);
    // Validate every block table up front so the parallel loop cannot index out of bounds.
    let mut row_owner = Vec::with_capacity(total_rows);
    for (s, span) in spans.iter().enumerate() {
        let last = span.start_position + span.rows;
        let needed = last.div_ceil(shape.block_size);
        if span.blocks.len() < needed {
            return Err(KernelError::Length {
                what: "block table entries",
                expected: needed,
                actual: span.blocks.len(),
            });
        }
        if let Some(&b) = span.blocks[..needed]
            .iter()
            .find(|&&b| (b as usize + 1) * shape.block_size > cache_positions)
        {
            return Err(KernelError::Length {
                what: "cache block index",
                expected: cache_positions / shape.block_size,
                actual: b as usize,
            });
        }
        if span.first_row != row_owner.len() {
            return Err(KernelError::Length {
                what: "first row of span (spans must be contiguous and in order)",
                expected: row_owner.len(),
                actual: span.first_row,
            });
        }
        row_owner.extend((0..span.rows).map(|i| (s, span.start_position + i)));
    }

    let d = shape.head_dim;
    let heads = shape.heads;
    let group = heads / shape.kv_heads;
    // One task per (query row, head): a single decoding sequence still spreads over every thread.
    let positions: usize = row_owner.iter().map(|&(_, p)| p + 1).sum();
    let per_item = 2 * d * positions.div_ceil(total_rows.max(1));
    let simd = simd && crate::qmatmul::Isa::Avx2.is_available();
    let dst = SharedOut(out.as_mut_ptr());
    crate::pool::parallel_rows(total_rows * heads, 1, per_item, &|a, b| {
        let dst = &dst;
        let run = |scores: &mut Vec<f32>| {
            for item in a..b {
                let (row, h) = (item / heads, item % heads);
                let (s, pos) = row_owner[row];
                let at = row * width + h * d;
                // SAFETY: item `(row, h)` owns `out[at..at + d]`; no other task writes there.
                let out_h = unsafe { std::slice::from_raw_parts_mut(dst.0.add(at), d) };
                let head = Head {
                    q: &q[at..at + d],
                    k_cache,
                    v_cache,
                    blocks: spans[s].blocks,
                    len: pos + 1,
                    kv_head: h / group,
                    shape,
                    scale,
                };
                #[cfg(target_arch = "x86_64")]
                if simd {
                    // SAFETY: `simd` is true only where `Isa::Avx2` (AVX2 + FMA) is available.
                    unsafe { attend_avx2(&head, scores, out_h) };
                    continue;
                }
                let _ = simd;
                attend::<Portable>(&head, scores, out_h);
            }
        };
        SCORES.with(|s| match s.try_borrow_mut() {
            Ok(mut s) => run(&mut s),
            Err(_) => run(&mut Vec::new()),
        });
    });
    Ok(())
}

/// The output buffer, shared by tasks that write disjoint heads of it.
struct SharedOut(*mut f32);
// SAFETY: tasks write disjoint elements of one live buffer (see `paged_attention`).
unsafe impl Sync for SharedOut {}

thread_local! {
    /// Per-thread attention scores, reused between calls.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One query head of one row, attending to positions `0..len` of its sequence.
struct Head<'a> {
    q: &'a [f32],
    k_cache: &'a [f32],
    v_cache: &'a [f32],
    blocks: &'a [u32],
    len: usize,
    kv_head: usize,
    shape: AttentionShape,
    scale: f32,
}

/// The vector primitives of the attention loop.
trait VecOps {
    /// `Σ a·b`.
    fn dot(a: &[f32], b: &[f32]) -> f32;
    /// `y += w·x`.
    fn axpy(w: f32, x: &[f32], y: &mut [f32]);
}

/// Portable code (what the compiler vectorises for the baseline target).
struct Portable;

impl VecOps for Portable {
    #[inline(always)]
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        dot(a, b)
    }
    #[inline(always)]
    fn axpy(w: f32, x: &[f32], y: &mut [f32]) {
        y.iter_mut().zip(x).for_each(|(y, x)| *y += w * x);
    }
}

/// `softmax(q kᵀ · scale) v` for one head, walking the sequence's cache block by block.
#[inline(always)]
fn attend<O: VecOps>(head: &Head, scores: &mut Vec<f32>, out: &mut [f32]) {
    let Head { shape, len, .. } = *head;
    let (d, bs) = (shape.head_dim, shape.block_size);
    let stride = shape.kv_heads * d;
    // Offset of position `p0`'s block's first slot, for each block the sequence uses.
    let block_base =
        |p0: usize| ((head.blocks[p0 / bs] as usize * bs) * shape.kv_heads + head.kv_head) * d;
    scores.resize(len, 0.0);
    let mut max = f32::NEG_INFINITY;
    for p0 in (0..len).step_by(bs) {
        let base = block_base(p0);
        for (slot, sc) in scores[p0..(p0 + bs).min(len)].iter_mut().enumerate() {
            let o = base + slot * stride;
            *sc = O::dot(head.q, &head.k_cache[o..o + d]) * head.scale;
            max = max.max(*sc);
        }
    }
    let mut sum = 0f32;
    for sc in scores.iter_mut() {
        *sc = (*sc - max).exp();
        sum += *sc;
    }
    let inv = 1.0 / sum;
    out.fill(0.0);
    for p0 in (0..len).step_by(bs) {
        let base = block_base(p0);
        for (slot, sc) in scores[p0..(p0 + bs).min(len)].iter().enumerate() {
            let o = base + slot * stride;
            O::axpy(sc * inv, &head.v_cache[o..o + d], out);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use core::arch::x86_64::*;

    /// 256-bit FMA code; callers make sure AVX2 and FMA are available.
    pub(super) struct Avx2;

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        // SAFETY: every load reads 8 floats below `n` of both slices.
        unsafe {
            while i + 16 <= n {
                acc0 =
                    _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
                acc1 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(pa.add(i + 8)),
                    _mm256_loadu_ps(pb.add(i + 8)),
                    acc1,
                );
                i += 16;
            }
            if i + 8 <= n {
                acc0 =
                    _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
                i += 8;
            }
        }
        let v = _mm256_add_ps(acc0, acc1);
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        let mut sum = _mm_cvtss_f32(s);
        for k in i..n {
            sum += a[k] * b[k];
        }
        sum
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn axpy(w: f32, x: &[f32], y: &mut [f32]) {
        let n = x.len().min(y.len());
        let wv = _mm256_set1_ps(w);
        let mut i = 0;
        // SAFETY: every access is 8 floats below `n` of both slices.
        unsafe {
            while i + 8 <= n {
                let py = y.as_mut_ptr().add(i);
                let v =
                    _mm256_fmadd_ps(wv, _mm256_loadu_ps(x.as_ptr().add(i)), _mm256_loadu_ps(py));
                _mm256_storeu_ps(py, v);
                i += 8;
            }
        }
        for k in i..n {
            y[k] += w * x[k];
        }
    }

    impl super::VecOps for Avx2 {
        #[inline(always)]
        fn dot(a: &[f32], b: &[f32]) -> f32 {
            // SAFETY: only instantiated inside `attend_avx2` (AVX2 + FMA checked by its caller).
            unsafe { dot(a, b) }
        }
        #[inline(always)]
        fn axpy(w: f32, x: &[f32], y: &mut [f32]) {
            // SAFETY: as above.
            unsafe { axpy(w, x, y) }
        }
    }
}

/// [`attend`] compiled for AVX2 + FMA.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx2(head: &Head, scores: &mut Vec<f32>, out: &mut [f32]) {
    attend::<avx2::Avx2>(head, scores, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Dense causal attention for one sequence whose keys/values are given contiguously.
    fn dense(q: &[f32], k: &[f32], v: &[f32], pos0: usize, shape: AttentionShape) -> Vec<f32> {
        let (h, kvh, d) = (shape.heads, shape.kv_heads, shape.head_dim);
        let rows = q.len() / (h * d);
        let mut out = vec![0f32; q.len()];
        for r in 0..rows {
            for head in 0..h {
                let g = head / (h / kvh);
                let qh = &q[(r * h + head) * d..][..d];
                let n = pos0 + r + 1;
                let s: Vec<f32> = (0..n)
                    .map(|p| {
                        let kp = &k[(p * kvh + g) * d..][..d];
                        qh.iter().zip(kp).map(|(a, b)| a * b).sum::<f32>() * 0.25
                    })
                    .collect();
                let m = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = s.iter().map(|x| (x - m).exp()).collect();
                let z: f32 = e.iter().sum();
                for p in 0..n {
                    for i in 0..d {
                        out[(r * h + head) * d + i] += e[p] / z * v[(p * kvh + g) * d + i];
                    }
                }
            }
        }
        out
    }

    #[test]
    fn paged_matches_dense_for_a_ragged_batch() {
        // Head widths: a multiple of 16, of 8 only, and none (the SIMD code's tails).
        for head_dim in [16, 64, 24, 12] {
            for simd in [false, true] {
                ragged_batch_matches_dense(head_dim, simd);
            }
        }
    }

    fn ragged_batch_matches_dense(head_dim: usize, simd: bool) {
        let shape = AttentionShape {
            heads: 4,
            kv_heads: 2,
            head_dim,
            block_size: 4,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let num_blocks = 16;
        let per_pos = shape.kv_heads * shape.head_dim;
        let mut k_cache = vec![0f32; num_blocks * shape.block_size * per_pos];
        let mut v_cache = k_cache.clone();
        // Two sequences: one decoding at position 9, one prefilling 5 tokens from position 3.
        let tables: [Vec<u32>; 2] = [vec![5, 2, 9], vec![0, 7]];
        let lens = [10usize, 8];
        let mut dense_kv = Vec::new();
        for (t, &len) in tables.iter().zip(&lens) {
            let k: Vec<f32> = (0..len * per_pos)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            let v: Vec<f32> = (0..len * per_pos)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            for p in 0..len {
                for g in 0..shape.kv_heads {
                    let o = cache_offset(&shape, t, p, g);
                    let src = (p * shape.kv_heads + g) * shape.head_dim;
                    k_cache[o..o + shape.head_dim].copy_from_slice(&k[src..src + shape.head_dim]);
                    v_cache[o..o + shape.head_dim].copy_from_slice(&v[src..src + shape.head_dim]);
                }
            }
            dense_kv.push((k, v));
        }
        let width = shape.heads * shape.head_dim;
        let q: Vec<f32> = (0..6 * width)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let spans = [
            SequenceSpan {
                first_row: 0,
                rows: 1,
                start_position: 9,
                blocks: &tables[0],
            },
            SequenceSpan {
                first_row: 1,
                rows: 5,
                start_position: 3,
                blocks: &tables[1],
            },
        ];
        let mut out = vec![0f32; q.len()];
        attention_on(&q, &k_cache, &v_cache, &spans, shape, 0.25, &mut out, simd).unwrap();
        let want0 = dense(&q[..width], &dense_kv[0].0, &dense_kv[0].1, 9, shape);
        let want1 = dense(&q[width..], &dense_kv[1].0, &dense_kv[1].1, 3, shape);
        for (a, b) in out.iter().zip(want0.iter().chain(&want1)) {
            assert!((a - b).abs() < 1e-5, "d={head_dim} simd={simd}: {a} vs {b}");
        }
    }

    #[test]
    fn short_block_table_is_an_error() {
        let shape = AttentionShape {
            heads: 2,
            kv_heads: 1,
            head_dim: 4,
            block_size: 2,
        };
        let cache = vec![0f32; 4 * 2 * 4];
        let q = vec![0f32; 8];
        let mut out = vec![0f32; 8];
        let spans = [SequenceSpan {
            first_row: 0,
            rows: 1,
            start_position: 4,
            blocks: &[0, 1],
        }];
        let err = paged_attention(&q, &cache, &cache, &spans, shape, 1.0, &mut out);
        assert!(matches!(err, Err(KernelError::Length { .. })));
    }
}
