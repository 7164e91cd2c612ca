//! Causal attention for a ragged batch of sequences over a paged KV cache.
//!
//! The cache of one layer is a pair of `[num_blocks, block_size, kv_heads, head_dim]` f32 buffers; a
//! sequence owns a list of blocks (its block table), and position `p` of the sequence lives in block
//! `blocks[p / block_size]`, slot `p % block_size`. Queries of all sequences are flattened into one
//! `[tokens, heads, head_dim]` buffer, so sequences at different positions (decode steps and prefill
//! chunks alike) are served by one call.
//!
//! The cache holds f32 or f16 ([`CacheElement`]): f16 halves its memory and the bytes a decode step
//! reads at long contexts (the queries, scores and sums stay f32).

use crate::error::{checked_size, KernelError, Result};
use half::f16;

/// An element type of the KV cache.
pub trait CacheElement: Copy + Default + Send + Sync + 'static {
    /// Writes `src` into `dst` (same length), rounding when the type is narrower.
    fn store(dst: &mut [Self], src: &[f32]);
    /// The value as f32.
    fn to_f32(self) -> f32;
    /// Eight values from `p` as f32 lanes.
    ///
    /// # Safety
    /// AVX2 (and F16C for f16) must be available, and 8 elements readable at `p`.
    #[cfg(target_arch = "x86_64")]
    #[doc(hidden)]
    unsafe fn load8(p: *const Self) -> core::arch::x86_64::__m256;
}

/// Whether this CPU can run the AVX2 kernels: they are compiled with AVX2, FMA and F16C for
/// either cache type (every AVX2 CPU has F16C).
fn simd_kernels_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return crate::qmatmul::Isa::Avx2.is_available() && is_x86_feature_detected!("f16c");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

impl CacheElement for f32 {
    fn store(dst: &mut [Self], src: &[f32]) {
        dst.copy_from_slice(src);
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> core::arch::x86_64::__m256 {
        // SAFETY: the caller's contract.
        unsafe { core::arch::x86_64::_mm256_loadu_ps(p) }
    }
}

impl CacheElement for f16 {
    fn store(dst: &mut [Self], src: &[f32]) {
        use half::slice::HalfFloatSliceExt;
        dst.convert_from_f32_slice(src);
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> core::arch::x86_64::__m256 {
        use core::arch::x86_64::*;
        // SAFETY: the caller's contract (F16C available, 16 bytes readable).
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
    }
}

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
pub fn write_kv<T: CacheElement>(
    src: &[f32],
    cache: &mut [T],
    slots: &[u32],
    width: usize,
) -> Result<()> {
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
        T::store(&mut cache[s as usize * width..][..width], row);
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
pub fn paged_attention<T: CacheElement>(
    q: &[f32],
    k_cache: &[T],
    v_cache: &[T],
    spans: &[SequenceSpan],
    shape: AttentionShape,
    scale: f32,
    out: &mut [f32],
) -> Result<()> {
    let simd = crate::qmatmul::Isa::best() >= crate::qmatmul::Isa::Avx2;
    let threads = crate::pool::threads();
    attention_on(q, k_cache, v_cache, spans, shape, scale, out, simd, threads)
}

/// [`paged_attention`] with the AVX2 + FMA code (`simd`, when the CPU has it) or the portable one,
/// its work split for `threads` threads.
#[allow(clippy::too_many_arguments)]
fn attention_on<T: CacheElement>(
    q: &[f32],
    k_cache: &[T],
    v_cache: &[T],
    spans: &[SequenceSpan],
    shape: AttentionShape,
    scale: f32,
    out: &mut [f32],
    simd: bool,
    threads: usize,
) -> Result<()> {
    if shape.head_dim == 0 {
        return Err(KernelError::Length {
            what: "attention head dimension",
            expected: 1,
            actual: 0,
        });
    }
    let width = checked_size("attention row", &[shape.heads, shape.head_dim])?;
    let total_rows = spans
        .iter()
        .try_fold(0usize, |n, s| n.checked_add(s.rows))
        .ok_or(KernelError::Overflow {
            what: "attention rows",
        })?;
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
    let elements = checked_size("attention queries", &[total_rows, width])?;
    check("attention queries", elements, q.len())?;
    check("attention output", elements, out.len())?;
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
    let mut rows_so_far = 0;
    for span in spans {
        let last = span
            .start_position
            .checked_add(span.rows)
            .ok_or(KernelError::Overflow {
                what: "attention positions",
            })?;
        let needed = last.div_ceil(shape.block_size);
        if span.blocks.len() < needed {
            return Err(KernelError::Length {
                what: "block table entries",
                expected: needed,
                actual: span.blocks.len(),
            });
        }
        if let Some(&b) = span.blocks[..needed].iter().find(|&&b| {
            (b as usize + 1)
                .checked_mul(shape.block_size)
                .is_none_or(|end| end > cache_positions)
        }) {
            return Err(KernelError::Length {
                what: "cache block index",
                expected: cache_positions / shape.block_size,
                actual: b as usize,
            });
        }
        if span.first_row != rows_so_far {
            return Err(KernelError::Length {
                what: "first row of span (spans must be contiguous and in order)",
                expected: rows_so_far,
                actual: span.first_row,
            });
        }
        rows_so_far += span.rows;
    }

    let group = shape.heads / shape.kv_heads;
    let d = shape.head_dim;
    // Work items: tiles of up to `TILE` query vectors (row, head) of one sequence that share a
    // key/value head, so each key and value read from the cache serves the whole tile.
    let mut tiles = Vec::new();
    let mut work = 0usize;
    for (s, span) in spans.iter().enumerate() {
        let vectors = span.rows * group;
        for kv_head in 0..shape.kv_heads {
            for first in (0..vectors).step_by(TILE) {
                let count = TILE.min(vectors - first);
                let last_row = (first + count - 1) / group;
                work += count * (span.start_position + last_row + 1) * 2 * d;
                tiles.push(Tile {
                    span: s,
                    kv_head,
                    first,
                    count,
                    keys: 0..span.start_position + last_row + 1,
                    partial: None,
                });
            }
        }
    }
    let simd = simd && simd_kernels_available() && d.is_multiple_of(16);
    let (tiles, splits) = split_keys(tiles, threads);
    let mut partials = Partials::new(splits.iter().map(|s| s.segments).sum(), d);
    // A few tasks per thread: threads claim them one by one, so uneven tiles balance out.
    let per_task = tiles.len().div_ceil(4 * threads).max(1);
    let dst = SharedOut(out.as_mut_ptr());
    let partial_out = partials.shared();
    let ctx = Context {
        q,
        k_cache,
        v_cache,
        spans,
        shape,
        scale,
    };
    crate::pool::parallel_tasks(tiles.len().div_ceil(per_task), work, &|t| {
        let run = |scratch: &mut Scratch| {
            for tile in &tiles[t * per_task..((t + 1) * per_task).min(tiles.len())] {
                let (max, sum) = 'state: {
                    #[cfg(target_arch = "x86_64")]
                    if simd {
                        // SAFETY: `simd` is true only where AVX2, FMA and F16C are available
                        // (`simd_kernels_available`) and the head width is a multiple of 16.
                        break 'state unsafe { attend_avx2(&ctx, tile, scratch) };
                    }
                    attend::<Portable, T>(&ctx, tile, scratch)
                };
                // SAFETY: the tile owns its output vectors, or its partial slot: no other task
                // writes them.
                unsafe {
                    match tile.partial {
                        None => finish(&ctx, tile, &sum, &scratch.acc, &dst),
                        Some(slot) => partial_out.store(slot, &max, &sum, &scratch.acc),
                    }
                }
            }
        };
        SCRATCH.with(|s| match s.try_borrow_mut() {
            Ok(mut s) => run(&mut s),
            Err(_) => run(&mut Scratch::default()),
        });
    });
    for split in &splits {
        partials.merge(&ctx, split, out);
    }
    Ok(())
}

/// Keys per segment below which a tile is not split.
const MIN_SEGMENT_KEYS: usize = 256;

/// A tile whose keys were split into `segments` consecutive tiles, partial slots
/// `first_slot..first_slot + segments`.
struct Split {
    tile: Tile,
    first_slot: usize,
    segments: usize,
}

/// With fewer tiles than two per thread (a few sequences decoding), splits each long tile's keys
/// into segments that threads take separately (flash-decoding); [`Partials::merge`] combines
/// their softmax states afterwards.
fn split_keys(tiles: Vec<Tile>, threads: usize) -> (Vec<Tile>, Vec<Split>) {
    if threads <= 1 || tiles.len() >= 2 * threads {
        return (tiles, Vec::new());
    }
    let want = (2 * threads).div_ceil(tiles.len());
    let mut out = Vec::new();
    let mut splits = Vec::new();
    let mut slot = 0;
    for tile in tiles {
        let len = tile.keys.len();
        let segments = want.min(len / MIN_SEGMENT_KEYS);
        if segments < 2 {
            out.push(tile);
            continue;
        }
        let step = len.div_ceil(segments).next_multiple_of(CHUNK);
        let starts: Vec<usize> = (0..len).step_by(step).collect();
        for (k, &k0) in starts.iter().enumerate() {
            out.push(Tile {
                keys: k0..(k0 + step).min(len),
                partial: Some(slot + k),
                ..tile
            });
        }
        splits.push(Split {
            tile,
            first_slot: slot,
            segments: starts.len(),
        });
        slot += starts.len();
    }
    (out, splits)
}

/// Softmax states of split tiles' segments: per slot `TILE` maxima, `TILE` sums and
/// `TILE × head_dim` unnormalised outputs.
struct Partials {
    d: usize,
    state: Vec<f32>,
    acc: Vec<f32>,
}

/// [`Partials`]' buffers, written by tasks that own disjoint slots.
struct SharedPartials {
    d: usize,
    state: *mut f32,
    acc: *mut f32,
}
// SAFETY: tasks write disjoint slots of live buffers (see `paged_attention`).
unsafe impl Sync for SharedPartials {}

impl SharedPartials {
    /// # Safety
    /// `slot` is below the slots the buffers were made for, and no other task writes it.
    unsafe fn store(&self, slot: usize, max: &[f32; TILE], sum: &[f32; TILE], acc: &[f32]) {
        // SAFETY: the caller's contract; `acc` holds at least TILE × d values (`attend`).
        unsafe {
            let state = std::slice::from_raw_parts_mut(self.state.add(slot * 2 * TILE), 2 * TILE);
            state[..TILE].copy_from_slice(max);
            state[TILE..].copy_from_slice(sum);
            std::slice::from_raw_parts_mut(self.acc.add(slot * TILE * self.d), TILE * self.d)
                .copy_from_slice(&acc[..TILE * self.d]);
        }
    }
}

impl Partials {
    fn new(slots: usize, d: usize) -> Self {
        Partials {
            d,
            state: vec![0.0; slots * 2 * TILE],
            acc: vec![0.0; slots * TILE * d],
        }
    }

    fn shared(&mut self) -> SharedPartials {
        SharedPartials {
            d: self.d,
            state: self.state.as_mut_ptr(),
            acc: self.acc.as_mut_ptr(),
        }
    }

    /// Combines a split tile's segments into its output vectors.
    fn merge<T>(&self, ctx: &Context<T>, split: &Split, out: &mut [f32]) {
        let d = self.d;
        let slots = split.first_slot..split.first_slot + split.segments;
        let state = |slot: usize| &self.state[slot * 2 * TILE..(slot + 1) * 2 * TILE];
        for i in 0..split.tile.count {
            let max = slots
                .clone()
                .map(|s| state(s)[i])
                .fold(f32::NEG_INFINITY, f32::max);
            let at = output_offset(ctx, &split.tile, i);
            let dst = &mut out[at..at + d];
            dst.fill(0.0);
            let mut total = 0f32;
            for s in slots.clone() {
                // A segment past the vector's causal limit has max -inf: weight 0.
                let w = (state(s)[i] - max).exp();
                total += w * state(s)[TILE + i];
                let acc = &self.acc[(s * TILE + i) * d..(s * TILE + i + 1) * d];
                dst.iter_mut().zip(acc).for_each(|(o, a)| *o += w * a);
            }
            let inv = 1.0 / total;
            dst.iter_mut().for_each(|o| *o *= inv);
        }
    }
}

/// Index of the first output value of vector `i` of `tile`.
fn output_offset<T>(ctx: &Context<T>, tile: &Tile, i: usize) -> usize {
    let shape = ctx.shape;
    let group = shape.heads / shape.kv_heads;
    let v = tile.first + i;
    let head = tile.kv_head * group + v % group;
    (ctx.spans[tile.span].first_row + v / group) * shape.heads * shape.head_dim
        + head * shape.head_dim
}

/// Writes a whole tile's normalised outputs.
///
/// # Safety
/// No other thread may write the tile's output vectors of `out` during the call.
unsafe fn finish<T>(
    ctx: &Context<T>,
    tile: &Tile,
    sum: &[f32; TILE],
    acc: &[f32],
    out: &SharedOut,
) {
    let d = ctx.shape.head_dim;
    for (i, total) in sum.iter().enumerate().take(tile.count) {
        let at = output_offset(ctx, tile, i);
        let inv = 1.0 / total;
        // SAFETY: the tile owns `out[at..at + d]` (caller's contract); the buffer is live.
        let dst = unsafe { std::slice::from_raw_parts_mut(out.0.add(at), d) };
        for (o, &a) in dst.iter_mut().zip(&acc[i * d..(i + 1) * d]) {
            *o = a * inv;
        }
    }
}

/// Query vectors per tile (a multiple of the micro-kernels' 4).
const TILE: usize = 8;
/// Keys scored per step of the online softmax.
const CHUNK: usize = 64;

/// The output buffer, shared by tasks that write disjoint vectors of it.
struct SharedOut(*mut f32);
// SAFETY: tasks write disjoint elements of one live buffer (see `paged_attention`).
unsafe impl Sync for SharedOut {}

/// What every tile of one call reads.
struct Context<'a, T> {
    q: &'a [f32],
    k_cache: &'a [T],
    v_cache: &'a [T],
    spans: &'a [SequenceSpan<'a>],
    shape: AttentionShape,
    scale: f32,
}

/// Query vectors `first..first + count` of a sequence's vectors that use key/value head
/// `kv_head`; vector `i` is row `i / group`, head `kv_head * group + i % group`.
/// It covers keys `keys` (all its vectors attend to: one segment when split), and writes its
/// outputs, or its softmax state to a partial slot when split.
#[derive(Clone)]
struct Tile {
    span: usize,
    kv_head: usize,
    first: usize,
    count: usize,
    keys: std::ops::Range<usize>,
    partial: Option<usize>,
}

/// Per-thread buffers of one tile, reused between tiles and calls.
#[derive(Default)]
struct Scratch {
    /// Scaled queries, `[TILE, head_dim]`, zero past the tile's vectors.
    q: Vec<f32>,
    /// Unnormalised outputs, `[TILE, head_dim]`.
    acc: Vec<f32>,
    /// Scores, then probabilities, of the current chunk: `[TILE, CHUNK]`.
    p: Vec<f32>,
    /// Cache offset of each key of the current chunk.
    offsets: Vec<usize>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// The vector primitives of the attention loop, for `nq` (a multiple of 4) query vectors.
trait TileOps {
    /// `p[i * CHUNK + j] = q[i] · k[offsets[j]]` (may also write column `offsets.len()` when odd).
    fn scores<T: CacheElement>(
        q: &[f32],
        nq: usize,
        d: usize,
        k: &[T],
        offsets: &[usize],
        p: &mut [f32],
    );
    /// `acc[i] = alpha[i] · acc[i] + Σ_j p[i * CHUNK + j] · v[offsets[j]]`.
    fn accumulate<T: CacheElement>(
        acc: &mut [f32],
        nq: usize,
        d: usize,
        alpha: &[f32],
        p: &[f32],
        v: &[T],
        offsets: &[usize],
    );
    /// `x[j] = exp(x[j] - max)` in place; returns the sum.
    fn exp_sum(x: &mut [f32], max: f32) -> f32;
}

/// The online-softmax state of one tile over its keys, streamed in chunks: returns each vector's
/// running maximum and sum, with its unnormalised output in `s.acc`.
#[inline(always)]
fn attend<O: TileOps, T: CacheElement>(
    ctx: &Context<T>,
    tile: &Tile,
    s: &mut Scratch,
) -> ([f32; TILE], [f32; TILE]) {
    let shape = ctx.shape;
    let (d, group) = (shape.head_dim, shape.heads / shape.kv_heads);
    let span = &ctx.spans[tile.span];
    let nq = tile.count.next_multiple_of(4);
    s.q.clear();
    s.q.resize(nq * d, 0.0);
    for i in 0..tile.count {
        let at = output_offset(ctx, tile, i);
        for (dst, &x) in s.q[i * d..(i + 1) * d].iter_mut().zip(&ctx.q[at..at + d]) {
            *dst = x * ctx.scale;
        }
    }
    s.acc.clear();
    s.acc.resize(TILE * d, 0.0);
    s.p.resize(nq * CHUNK, 0.0);
    let mut max = [f32::NEG_INFINITY; TILE];
    let mut sum = [0f32; TILE];
    let mut alpha = [1f32; TILE];
    // Vector i attends to positions 0..limit(i).
    let limit = |i: usize| span.start_position + (tile.first + i) / group + 1;
    for c0 in tile.keys.clone().step_by(CHUNK) {
        let keys = CHUNK.min(tile.keys.end - c0);
        // Offsets block by block (no division per key).
        s.offsets.clear();
        let stride = shape.kv_heads * d;
        let mut p = c0;
        while p < c0 + keys {
            let first = cache_offset(&shape, span.blocks, p, tile.kv_head);
            let run = (shape.block_size - p % shape.block_size).min(c0 + keys - p);
            s.offsets.extend((0..run).map(|j| first + j * stride));
            p += run;
        }
        O::scores(&s.q, nq, d, ctx.k_cache, &s.offsets, &mut s.p);
        for i in 0..nq {
            let row = &mut s.p[i * CHUNK..][..keys];
            let valid = if i < tile.count {
                limit(i).saturating_sub(c0).min(keys)
            } else {
                0
            };
            if valid == 0 {
                alpha[i] = 1.0;
                row.fill(0.0);
                continue;
            }
            let chunk_max = row[..valid]
                .iter()
                .fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let new_max = max[i].max(chunk_max);
            alpha[i] = (max[i] - new_max).exp();
            sum[i] = sum[i] * alpha[i] + O::exp_sum(&mut row[..valid], new_max);
            row[valid..].fill(0.0);
            max[i] = new_max;
        }
        O::accumulate(
            &mut s.acc,
            nq,
            d,
            &alpha[..nq],
            &s.p,
            ctx.v_cache,
            &s.offsets,
        );
    }
    (max, sum)
}

/// Portable code (what the compiler vectorises for the baseline target).
struct Portable;

impl TileOps for Portable {
    #[inline(always)]
    fn scores<T: CacheElement>(
        q: &[f32],
        nq: usize,
        d: usize,
        k: &[T],
        offsets: &[usize],
        p: &mut [f32],
    ) {
        let mut key = vec![0f32; d];
        for (j, &o) in offsets.iter().enumerate() {
            key.iter_mut()
                .zip(&k[o..o + d])
                .for_each(|(x, y)| *x = y.to_f32());
            for i in 0..nq {
                p[i * CHUNK + j] = dot(&q[i * d..(i + 1) * d], &key);
            }
        }
    }
    #[inline(always)]
    fn accumulate<T: CacheElement>(
        acc: &mut [f32],
        nq: usize,
        d: usize,
        alpha: &[f32],
        p: &[f32],
        v: &[T],
        offsets: &[usize],
    ) {
        for i in 0..nq {
            acc[i * d..(i + 1) * d]
                .iter_mut()
                .for_each(|x| *x *= alpha[i]);
        }
        let mut value = vec![0f32; d];
        for (j, &o) in offsets.iter().enumerate() {
            value
                .iter_mut()
                .zip(&v[o..o + d])
                .for_each(|(x, y)| *x = y.to_f32());
            for i in 0..nq {
                let w = p[i * CHUNK + j];
                acc[i * d..(i + 1) * d]
                    .iter_mut()
                    .zip(&value)
                    .for_each(|(y, x)| *y += w * x);
            }
        }
    }
    #[inline(always)]
    fn exp_sum(x: &mut [f32], max: f32) -> f32 {
        x.iter_mut().fold(0.0, |s, v| {
            *v = (*v - max).exp();
            s + *v
        })
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{CacheElement, CHUNK};
    use core::arch::x86_64::*;

    /// 256-bit FMA code; callers make sure AVX2 and FMA are available and `d % 16 == 0`.
    pub(super) struct Avx2;

    /// Scores of 4 query vectors against 2 keys at a time: 8 accumulators, each key and query
    /// load shared by 4 and 2 multiply-adds.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scores<T: CacheElement>(
        q: &[f32],
        nq: usize,
        d: usize,
        k: &[T],
        offsets: &[usize],
        p: &mut [f32],
    ) {
        let keys = offsets.len();
        assert!(q.len() >= nq * d && p.len() >= nq * CHUNK && keys <= CHUNK);
        assert!(offsets.iter().all(|&o| o + d <= k.len()));
        for i in (0..nq).step_by(4) {
            let qp = q[i * d..].as_ptr();
            for j in (0..keys).step_by(2) {
                // An odd last key is paired with itself; its twin score lands in column `keys`.
                let (k0, k1) = (offsets[j], offsets[(j + 1).min(keys - 1)]);
                // SAFETY: the asserts above bound every load (query rows `i..i + 4` of `q`,
                // `d` floats at each key offset) and every store (columns `j, j + 1 < CHUNK + 1`
                // of rows `i..i + 4`; `j + 1 <= keys` and `keys` is even when it equals CHUNK).
                unsafe {
                    let (kp0, kp1) = (k.as_ptr().add(k0), k.as_ptr().add(k1));
                    let mut a = [_mm256_setzero_ps(); 8];
                    for dd in (0..d).step_by(8) {
                        let x0 = T::load8(kp0.add(dd));
                        let x1 = T::load8(kp1.add(dd));
                        for r in 0..4 {
                            let qv = _mm256_loadu_ps(qp.add(r * d + dd));
                            a[2 * r] = _mm256_fmadd_ps(qv, x0, a[2 * r]);
                            a[2 * r + 1] = _mm256_fmadd_ps(qv, x1, a[2 * r + 1]);
                        }
                    }
                    // [q0k0, q0k1, q1k0, q1k1] and [q2k0, q2k1, q3k0, q3k1].
                    let lo = hsum4(a[0], a[1], a[2], a[3]);
                    let hi = hsum4(a[4], a[5], a[6], a[7]);
                    let pp = p.as_mut_ptr().add(i * CHUNK + j);
                    let mut t = [0f32; 8];
                    _mm_storeu_ps(t.as_mut_ptr(), lo);
                    _mm_storeu_ps(t.as_mut_ptr().add(4), hi);
                    for r in 0..4 {
                        pp.add(r * CHUNK)
                            .cast::<[f32; 2]>()
                            .write_unaligned([t[2 * r], t[2 * r + 1]]);
                    }
                }
            }
        }
    }

    /// The full sums of four vectors, in order.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn hsum4(a: __m256, b: __m256, c: __m256, d: __m256) -> __m128 {
        let u = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
        _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps::<1>(u))
    }

    /// 4 query vectors × 16 output values per pass: 8 accumulators, each value load shared by 4
    /// multiply-adds.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn accumulate<T: CacheElement>(
        acc: &mut [f32],
        nq: usize,
        d: usize,
        alpha: &[f32],
        p: &[f32],
        v: &[T],
        offsets: &[usize],
    ) {
        assert!(acc.len() >= nq * d && alpha.len() >= nq && p.len() >= nq * CHUNK);
        assert!(offsets.len() <= CHUNK && offsets.iter().all(|&o| o + d <= v.len()));
        for i in (0..nq).step_by(4) {
            for dd in (0..d).step_by(16) {
                // SAFETY: the asserts above bound every access: rows `i..i + 4` of `acc`
                // (`dd + 16 <= d`), of `alpha` and of `p`, and `d` floats at each value offset.
                unsafe {
                    let ap = acc.as_mut_ptr().add(i * d + dd);
                    let mut a = [_mm256_setzero_ps(); 8];
                    for r in 0..4 {
                        let w = _mm256_set1_ps(alpha[i + r]);
                        a[2 * r] = _mm256_mul_ps(w, _mm256_loadu_ps(ap.add(r * d)));
                        a[2 * r + 1] = _mm256_mul_ps(w, _mm256_loadu_ps(ap.add(r * d + 8)));
                    }
                    let pp = p.as_ptr().add(i * CHUNK);
                    for (j, &o) in offsets.iter().enumerate() {
                        let vp = v.as_ptr().add(o + dd);
                        let (x0, x1) = (T::load8(vp), T::load8(vp.add(8)));
                        for r in 0..4 {
                            let w = _mm256_broadcast_ss(&*pp.add(r * CHUNK + j));
                            a[2 * r] = _mm256_fmadd_ps(w, x0, a[2 * r]);
                            a[2 * r + 1] = _mm256_fmadd_ps(w, x1, a[2 * r + 1]);
                        }
                    }
                    for r in 0..4 {
                        _mm256_storeu_ps(ap.add(r * d), a[2 * r]);
                        _mm256_storeu_ps(ap.add(r * d + 8), a[2 * r + 1]);
                    }
                }
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    fn exp_sum(x: &mut [f32], max: f32) -> f32 {
        let m = _mm256_set1_ps(max);
        let mut total = _mm256_setzero_ps();
        let mut chunks = x.chunks_exact_mut(8);
        for c in &mut chunks {
            // SAFETY: `c` is exactly 8 floats.
            unsafe {
                let e =
                    crate::activation::avx2::exp8(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), m));
                _mm256_storeu_ps(c.as_mut_ptr(), e);
                total = _mm256_add_ps(total, e);
            }
        }
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), total) };
        let tail = chunks.into_remainder().iter_mut().fold(0.0, |s, v| {
            *v = (*v - max).exp();
            s + *v
        });
        lanes.iter().sum::<f32>() + tail
    }

    impl super::TileOps for Avx2 {
        #[inline(always)]
        fn scores<T: CacheElement>(
            q: &[f32],
            nq: usize,
            d: usize,
            k: &[T],
            offsets: &[usize],
            p: &mut [f32],
        ) {
            // SAFETY: only instantiated inside `attend_avx2` (AVX2, FMA and F16C checked by its
            // caller).
            unsafe { scores(q, nq, d, k, offsets, p) }
        }
        #[inline(always)]
        fn accumulate<T: CacheElement>(
            acc: &mut [f32],
            nq: usize,
            d: usize,
            alpha: &[f32],
            p: &[f32],
            v: &[T],
            offsets: &[usize],
        ) {
            // SAFETY: as above.
            unsafe { accumulate(acc, nq, d, alpha, p, v, offsets) }
        }
        #[inline(always)]
        fn exp_sum(x: &mut [f32], max: f32) -> f32 {
            // SAFETY: as above.
            unsafe { exp_sum(x, max) }
        }
    }
}

/// [`attend`] compiled for AVX2 + FMA (+ F16C).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C, and the head width must be a multiple of 16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_avx2<T: CacheElement>(
    ctx: &Context<T>,
    tile: &Tile,
    s: &mut Scratch,
) -> ([f32; TILE], [f32; TILE]) {
    attend::<avx2::Avx2, T>(ctx, tile, s)
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
                ragged_batch_matches_dense::<f32>(4, 2, head_dim, 0, simd, 2);
                ragged_batch_matches_dense::<f16>(4, 2, head_dim, 0, simd, 2);
            }
        }
    }

    #[test]
    fn keys_split_across_threads_merge_to_the_same_attention() {
        // Few tiles for many threads: long tiles are split into segments (flash-decoding),
        // including segments past some vectors' causal limit (the prefilling sequence).
        for (heads, kv_heads, head_dim) in [(9, 3, 64), (4, 1, 32), (6, 2, 24)] {
            for simd in [false, true] {
                ragged_batch_matches_dense::<f32>(heads, kv_heads, head_dim, 1200, simd, 8);
                ragged_batch_matches_dense::<f16>(heads, kv_heads, head_dim, 1200, simd, 8);
            }
        }
        let tile = |len: usize| Tile {
            span: 0,
            kv_head: 0,
            first: 0,
            count: 3,
            keys: 0..len,
            partial: None,
        };
        let (tiles, splits) = split_keys(vec![tile(1210), tile(100)], 8);
        assert_eq!(splits.len(), 1, "the short tile stays whole");
        assert_eq!(splits[0].segments, 4);
        let ranges: Vec<_> = tiles.iter().map(|t| t.keys.clone()).collect();
        assert_eq!(ranges, [0..320, 320..640, 640..960, 960..1210, 0..100]);
        assert!(tiles[..4].iter().map(|t| t.partial).eq((0..4).map(Some)));
    }

    #[test]
    fn long_sequences_with_grouped_heads_match_dense() {
        // Several key chunks, tiles that cross rows (groups of 3 and 7 heads), a tile that
        // spans the diagonal, and the SIMD kernels' full width.
        for (heads, kv_heads, head_dim) in [(9, 3, 64), (14, 2, 64), (4, 1, 32), (6, 2, 24)] {
            for simd in [false, true] {
                ragged_batch_matches_dense::<f32>(heads, kv_heads, head_dim, 150, simd, 2);
                ragged_batch_matches_dense::<f16>(heads, kv_heads, head_dim, 150, simd, 2);
            }
        }
    }

    /// Two sequences, `offset` positions further on than the base case: one decoding, one
    /// prefilling 5 tokens; work planned for `threads` threads.
    /// With an f16 cache the reference gets the same rounded keys and values, so both must agree
    /// as closely as with f32.
    fn ragged_batch_matches_dense<T: CacheElement>(
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        offset: usize,
        simd: bool,
        threads: usize,
    ) {
        let shape = AttentionShape {
            heads,
            kv_heads,
            head_dim,
            block_size: 4,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let lens = [10 + offset, 8 + offset];
        let per_seq = lens[0].div_ceil(shape.block_size);
        let num_blocks = 2 * per_seq;
        let per_pos = shape.kv_heads * shape.head_dim;
        let mut k_cache = vec![T::default(); num_blocks * shape.block_size * per_pos];
        let mut v_cache = k_cache.clone();
        // Block tables that interleave and run backwards through the cache.
        let tables: [Vec<u32>; 2] = [
            (0..per_seq).map(|b| (2 * b + 1) as u32).rev().collect(),
            (0..per_seq).map(|b| (2 * b) as u32).collect(),
        ];
        let mut dense_kv = Vec::new();
        for (t, &len) in tables.iter().zip(&lens) {
            let mut random = || -> Vec<f32> {
                let x: Vec<f32> = (0..len * per_pos)
                    .map(|_| rng.random_range(-1.0..1.0))
                    .collect();
                let mut rounded = vec![T::default(); x.len()];
                T::store(&mut rounded, &x);
                rounded.iter().map(|r| r.to_f32()).collect()
            };
            let (k, v) = (random(), random());
            for p in 0..len {
                for g in 0..shape.kv_heads {
                    let o = cache_offset(&shape, t, p, g);
                    let src = (p * shape.kv_heads + g) * shape.head_dim;
                    let d = shape.head_dim;
                    T::store(&mut k_cache[o..o + d], &k[src..src + d]);
                    T::store(&mut v_cache[o..o + d], &v[src..src + d]);
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
                start_position: 9 + offset,
                blocks: &tables[0],
            },
            SequenceSpan {
                first_row: 1,
                rows: 5,
                start_position: 3 + offset,
                blocks: &tables[1],
            },
        ];
        let mut out = vec![0f32; q.len()];
        attention_on(
            &q, &k_cache, &v_cache, &spans, shape, 0.25, &mut out, simd, threads,
        )
        .unwrap();
        let want0 = dense(
            &q[..width],
            &dense_kv[0].0,
            &dense_kv[0].1,
            9 + offset,
            shape,
        );
        let want1 = dense(
            &q[width..],
            &dense_kv[1].0,
            &dense_kv[1].1,
            3 + offset,
            shape,
        );
        for (a, b) in out.iter().zip(want0.iter().chain(&want1)) {
            assert!(
                (a - b).abs() < 1e-5,
                "{heads}/{kv_heads} heads, d={head_dim}, offset {offset}, simd={simd}, {}: {a} vs {b}",
                std::any::type_name::<T>()
            );
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

    #[test]
    fn shapes_that_overflow_or_are_empty_are_errors() {
        let cache = vec![0f32; 64];
        let (q, mut out) = (vec![0f32; 8], vec![0f32; 8]);
        let span = |rows, start_position| SequenceSpan {
            first_row: 0,
            rows,
            start_position,
            blocks: &[0],
        };
        let shape = |heads, kv_heads, head_dim| AttentionShape {
            heads,
            kv_heads,
            head_dim,
            block_size: 2,
        };
        // A zero head dimension (which divided by zero), a row width and a last position past
        // `usize`.
        let cases = [
            (shape(2, 1, 0), span(1, 0)),
            (shape(usize::MAX, 1, 4), span(1, 0)),
            (shape(2, 1, 4), span(1, usize::MAX)),
        ];
        for simd in [false, true] {
            for (shape, span) in &cases {
                let err = attention_on(
                    &q,
                    &cache,
                    &cache,
                    std::slice::from_ref(span),
                    *shape,
                    1.0,
                    &mut out,
                    simd,
                    1,
                );
                assert!(
                    matches!(
                        err,
                        Err(KernelError::Length { .. } | KernelError::Overflow { .. })
                    ),
                    "{shape:?}: {err:?}"
                );
            }
        }
    }
}
