//! The float path's AVX2 kernel: activations packed once per call, weights broadcast in place.
//!
//! A dot-product tile (`x` row · `w` row, 8 lanes, horizontal sum) needs one accumulator per output
//! and two loads per FMA; with AVX2's 16 registers a 4 x 4 tile spills. Here the activations are
//! packed k-major in blocks of [`BLOCK`] rows (`xp[k][i]`, zero-padded), so one register holds
//! `x[i..i + 8][k]`; each weight value `w[r][k]` is broadcast and multiplied into it. The register
//! tile is 16 activation rows x 6 weight rows (12 accumulators, 8 loads per 12 FMAs), or 8 x 12 for
//! a last block of at most 8 rows, and weights are read where they lie (F32) or from the caller's dequantized panel (F16, BF16, ...).
//!
//! Every output is one lane's FMA chain over `k` from zero, so it does not depend on which other
//! rows share its block or its task: results are identical for any split across threads. They
//! differ from the dot-product tile's (used below [`MIN_ROWS`]) by f32 summation order only, as the
//! integer kernels' matrix-vector and matrix-matrix paths do.

use super::OutPtr;
use std::arch::x86_64::*;

/// Weight rows per call of [`Packed::rows_times`] (and the row grain of a task): one 8-row block
/// runs them all at once (12 x 1 registers), a 16-row block in two halves (6 x 2).
pub(super) const NR: usize = 12;
/// Activation rows from which this kernel is used. Below, the dot-product tile is faster: decoding
/// is bound by reading the weights, which it loads 8 at a time instead of broadcasting each
/// (Zen 3, 2 threads: at m = 4 it is 1.5x faster; at m = 8 this kernel is as fast on 768 x 256 and
/// 1.25x faster on 1536 x 384).
pub(super) const MIN_ROWS: usize = 8;
/// Activation rows per packed block (two registers); the last block may be 8 rows (one register).
const BLOCK: usize = 16;

/// One packed activation block: `rows` real rows starting at `first`, `width` (8 or 16) floats per
/// `k` at `offset` in the packed buffer. Every block but the last is 16 rows wide.
#[derive(Clone, Copy)]
struct Block {
    first: usize,
    rows: usize,
    width: usize,
    offset: usize,
}

/// The blocks of `m` activation rows of `n` values.
fn blocks(m: usize, n: usize) -> impl Iterator<Item = Block> {
    (0..m.div_ceil(BLOCK)).map(move |b| {
        let first = b * BLOCK;
        let rows = (m - first).min(BLOCK);
        Block {
            first,
            rows,
            width: if rows > 8 { 16 } else { 8 },
            offset: first * n,
        }
    })
}

/// `acc[j][h] = Σ_k xp[k][8h..8h + 8] · w[j][k]` for a block of `H` registers and `R` weight rows
/// (`H * R = 12` accumulators: enough independent FMA chains to hide their latency).
///
/// # Safety
/// AVX2 and FMA available; `xp` holds `n * 8 * H` floats, every `w[j]` `n` floats.
#[target_feature(enable = "avx2,fma")]
unsafe fn block_times_rows<const H: usize, const R: usize>(
    xp: *const f32,
    n: usize,
    w: &[*const f32],
) -> [[__m256; H]; R] {
    let w: [*const f32; R] = std::array::from_fn(|j| w[j]);
    let mut acc = [[_mm256_setzero_ps(); H]; R];
    for k in 0..n {
        // SAFETY: `k < n`, within the caller's bounds.
        unsafe {
            let xv: [__m256; H] = std::array::from_fn(|h| _mm256_loadu_ps(xp.add((k * H + h) * 8)));
            for j in 0..R {
                let wv = _mm256_broadcast_ss(&*w[j].add(k));
                for h in 0..H {
                    acc[j][h] = _mm256_fmadd_ps(xv[h], wv, acc[j][h]);
                }
            }
        }
    }
    acc
}

/// Writes the `rows` real activation rows of a block's result for weight rows `r..r + nr` (the
/// first `nr` of `acc`).
///
/// # Safety
/// The outputs `(block.first + i, r + j)` for `i < block.rows`, `j < nr` are in bounds and this
/// task's own.
unsafe fn store<const H: usize, const R: usize>(
    acc: &[[__m256; H]; R],
    b: Block,
    r: usize,
    nr: usize,
    out: OutPtr,
) {
    for (j, lanes) in acc.iter().enumerate().take(nr) {
        let mut vals = [0f32; BLOCK];
        for (h, v) in lanes.iter().enumerate() {
            // SAFETY: `vals` holds `8 * H <= 16` floats.
            unsafe { _mm256_storeu_ps(vals.as_mut_ptr().add(8 * h), *v) };
        }
        for (i, &v) in vals.iter().enumerate().take(b.rows) {
            // SAFETY: the caller's contract.
            unsafe { out.write(b.first + i, r + j, v) };
        }
    }
}

/// A call's activations, packed for [`Packed::rows_times`].
pub(super) struct Packed {
    xp: Vec<f32>,
    m: usize,
    n: usize,
}

impl Packed {
    /// Packs `m` activation rows of `n` values (k-major per block, zero-padded) into `xp`, a buffer
    /// reused across calls ([`Packed::into_buffer`] gives it back).
    pub(super) fn new(x: &[f32], m: usize, n: usize, mut xp: Vec<f32>) -> Packed {
        xp.clear();
        xp.resize(blocks(m, n).map(|b| b.width * n).sum(), 0.0);
        for b in blocks(m, n) {
            for i in 0..b.rows {
                let row = &x[(b.first + i) * n..(b.first + i + 1) * n];
                for (k, &v) in row.iter().enumerate() {
                    xp[b.offset + k * b.width + i] = v;
                }
            }
        }
        Packed { xp, m, n }
    }

    /// The packing buffer, for the next call.
    pub(super) fn into_buffer(self) -> Vec<f32> {
        self.xp
    }

    /// `out[i][r + j] = x[i] · w[j]` for every activation row and `j < nr`; `w[nr..]` may repeat
    /// earlier rows (their results are dropped).
    ///
    /// # Safety
    /// AVX2 and FMA available; each `w[j]` addresses `n` floats; the outputs of rows `r..r + nr`
    /// are in bounds and this task's own.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn rows_times(&self, w: [*const f32; NR], r: usize, nr: usize, out: OutPtr) {
        const HALF: usize = NR / 2;
        for b in blocks(self.m, self.n) {
            // SAFETY: the block holds `n * width` packed floats; the rest is the caller's contract.
            unsafe {
                let xp = self.xp.as_ptr().add(b.offset);
                if b.width == 16 {
                    // Two registers per row: the weight rows in two halves of 6.
                    let acc = block_times_rows::<2, HALF>(xp, self.n, &w[..HALF]);
                    store(&acc, b, r, nr.min(HALF), out);
                    if nr > HALF {
                        let acc = block_times_rows::<2, HALF>(xp, self.n, &w[HALF..]);
                        store(&acc, b, r + HALF, nr - HALF, out);
                    }
                } else {
                    let acc = block_times_rows::<1, NR>(xp, self.n, &w);
                    store(&acc, b, r, nr, out);
                }
            }
        }
    }
}
