//! AVX2 matrix-matrix kernel for the 32-value block formats (prefill and batched decode, `m >= 4`).
//!
//! The per-block kernel of `avx2.rs` pays, for every 32-value block and every (activation row,
//! weight row) pair, a full reduction to i32, a conversion to float and two float products: about
//! six instructions per 32 multiply-adds, and the weight block is decoded again for every pair of
//! activation rows. Here, as in the AVX-512 kernel, blocks are laid *side by side*:
//!
//! - a group of 8 consecutive blocks is stored as 8 "step" registers, register `t` lane `k` holding
//!   values `4t .. 4t + 4` of block `k` (an 8 x 8 transpose of dwords). `vpmaddubsw` of step `t` of
//!   the weights with step `t` of the activations adds 2 products per i16 lane, and the i16 sums of
//!   the steps accumulate without saturating (4-bit weights: `8 · 2 · 15 · 127 < 2^15`; 5-bit: four
//!   steps, then flushed), so lane `k` ends up holding the integer dot product of block `k` and one
//!   `vpmaddwd` + conversion + FMA scales 8 blocks at once;
//! - each tile of [`NRP`] weight rows is decoded into that layout once per call (thread-local
//!   scratch) and reused by every activation row; the activations get the same layout once per call
//!   (`prepare`), with their scales and sums beside them.
//!
//! Q8_0's weights are signed, so they take the sign trick per step (`|w|` against `sign(x, w)`),
//! and each step is widened to i32 at once (`2 · 128 · 127` leaves no room for a second step).
//! A last group of `r < 8` blocks is laid out `w` blocks wide, `w` the power of two at or above
//! `r`: `w` step registers whose lanes hold `8 / w` consecutive dwords of one block each (lane `l`
//! belongs to block `l / (8 / w)`; `w = 8` is the layout above), so a row of 18 blocks (SmolLM2's
//! 576 columns) takes 8 + 8 + 2 steps instead of 24, and one of 12 (MiniLM's 384) 8 + 4 instead of
//! 16. A block's scale sits in each of its lanes, its offset sum in the first one only (zero in the
//! others), and blocks `r..w` are zero-padded (zero quants, scales and offsets), which is exact.
//! Accuracy is the same as the per-block kernel's: identical integers, float sums in another order.
//!
//! The k-quants fit the same layout, one 256-value super-block per group (their activations are
//! quantized per super-block, so `d` is the same in all 8 lanes and `s` comes from the 16-value sums):
//! - Q4K / Q5K sub-blocks of 32 are Q4_1 / Q5_1 blocks with scale `d·scale` and offset
//!   `-dmin·min`, decoded once per tile like them;
//! - Q6K has a scale per 16 values, i.e. per half of a lane's 8 steps; its quants `q - 32` are
//!   signed and take the sign trick, `|q - 32| <= 32` lets four steps accumulate in i16
//!   (`4 · 2 · 32 · 127 < 2^15`), and each half is scaled on its own.

// Register tiles are indexed `acc[j]` on purpose: the loops mirror the tile layout.
#![allow(clippy::needless_range_loop)]

use super::act::Acts;
use super::avx2::{decode32, hsum, q6k_quants};
use super::layout::*;
use super::{OutPtr, Prefetcher, WeightMatrix};
use core::arch::x86_64::*;
use std::cell::RefCell;

/// Fewest activation rows for which packing pays (fewer take the per-block kernel).
pub(super) const MIN_M: usize = 4;
/// Weight rows per packed tile; the register tile is 1 activation row x `NRP` weight rows.
/// Measured on a Zen 3 (2 threads, SmolLM2 Q4_1 shapes, `m` 16 and 64): 1 x 6 beat 1 x 4, 1 x 8,
/// 2 x 2, 2 x 3, 2 x 4, 3 x 2 and 4 x 2 (activation x weight rows) by 10-40 %; the i16 and f32
/// accumulators of wider tiles no longer fit the 16 vector registers.
pub(super) const NRP: usize = 6;
/// 32-byte units per (group, weight row) in the packed tile: 8 steps, then for the signed formats
/// (Q8_0, Q6K) 8 steps of signed quants, then the 8 scales and the 8 offsets (Q6K: the 8 scales of
/// the first and of the second 16 values of each block).
const fn weight_units(f: u8) -> usize {
    if signed(f) {
        18
    } else {
        10
    }
}

/// Formats whose quants are signed (they take the sign trick).
const fn signed(f: u8) -> bool {
    f == F_Q8_0 || f == F_Q6K
}

/// Steps of i16 sums a lane accumulates before they are widened (see the module docs).
const fn flush_every(f: u8) -> usize {
    match f {
        F_Q4_0 | F_Q4_1 | F_Q4K => 8,
        F_Q5_0 | F_Q5_1 | F_Q5K | F_Q6K => 4,
        _ => 1,
    }
}
/// 32-byte units per (activation row, group): 8 steps, the 8 scales `d`, the 8 sums `s = d·Σq`.
const ACT_UNITS: usize = 10;

/// 32 bytes, 32-byte aligned: the unit of the packed layouts.
#[repr(C, align(32))]
#[derive(Clone, Copy)]
struct Y([u8; 32]);

thread_local! {
    static PACK: RefCell<Vec<Y>> = const { RefCell::new(Vec::new()) };
}

/// Transposes 8 registers of 8 dwords: lane `k` of result `t` is lane `t` of input `k`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn transpose8(r: [__m256i; 8]) -> [__m256i; 8] {
    let t: [__m256i; 8] = std::array::from_fn(|k| {
        let (a, b) = (r[2 * (k / 2)], r[2 * (k / 2) + 1]);
        if k % 2 == 0 {
            _mm256_unpacklo_epi32(a, b)
        } else {
            _mm256_unpackhi_epi32(a, b)
        }
    });
    // u[4h + v]: dwords v and v + 4 of inputs 4h .. 4h + 4.
    let u: [__m256i; 8] = std::array::from_fn(|n| {
        let (h, v) = (n / 4, n % 4);
        let (a, b) = (t[4 * h + v / 2], t[4 * h + 2 + v / 2]);
        if v % 2 == 0 {
            _mm256_unpacklo_epi64(a, b)
        } else {
            _mm256_unpackhi_epi64(a, b)
        }
    });
    std::array::from_fn(|c| {
        if c < 4 {
            _mm256_permute2x128_si256::<0x20>(u[c], u[4 + c])
        } else {
            _mm256_permute2x128_si256::<0x31>(u[c - 4], u[c])
        }
    })
}

/// Number of 8-block groups of a row of `cols` values.
fn groups(cols: usize) -> usize {
    (cols / 32).div_ceil(8)
}

/// Width (blocks, a power of two up to 8) of the last group of a row of `nb` blocks; 8 when every
/// group is full (see the module docs).
fn last_width(nb: usize) -> usize {
    match nb % 8 {
        0 => 8,
        r => r.next_power_of_two(),
    }
}

/// The narrow last group of a row of `nb` 32-value blocks, if it has one: its index, its blocks
/// and its width.
fn narrow_last(nb: usize) -> Option<(usize, usize, usize)> {
    (last_width(nb) < 8).then(|| (nb / 8, nb % 8, last_width(nb)))
}

/// Lays the blocks `b[k]` (`k < w`; zero beyond the group's last block) of a group `w` blocks wide
/// out as `w` step registers (see the module docs): dword `l` of step `t` is dword
/// `t · 8/w + l % (8/w)` of block `l / (8/w)`. `w = 8` is [`transpose8`].
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn narrow_steps(b: [__m256i; 8], w: usize) -> [__m256i; 8] {
    let zero = _mm256_setzero_si256();
    match w {
        1 => [b[0], zero, zero, zero, zero, zero, zero, zero],
        2 => [
            _mm256_permute2x128_si256::<0x20>(b[0], b[1]),
            _mm256_permute2x128_si256::<0x31>(b[0], b[1]),
            zero,
            zero,
            zero,
            zero,
            zero,
            zero,
        ],
        4 => {
            // Step `t` holds qword `t` of blocks 0..4.
            let (lo01, hi01) = (
                _mm256_unpacklo_epi64(b[0], b[1]),
                _mm256_unpackhi_epi64(b[0], b[1]),
            );
            let (lo23, hi23) = (
                _mm256_unpacklo_epi64(b[2], b[3]),
                _mm256_unpackhi_epi64(b[2], b[3]),
            );
            [
                _mm256_permute2x128_si256::<0x20>(lo01, lo23),
                _mm256_permute2x128_si256::<0x20>(hi01, hi23),
                _mm256_permute2x128_si256::<0x31>(lo01, lo23),
                _mm256_permute2x128_si256::<0x31>(hi01, hi23),
                zero,
                zero,
                zero,
                zero,
            ]
        }
        _ => transpose8(b),
    }
}

/// Per lane of a group `w` blocks wide, `per_block[k]` for every lane of block `k < r`; with
/// `first_only`, in the block's first lane alone (zero in its others).
fn lanes_of(per_block: impl Fn(usize) -> f32, r: usize, w: usize, first_only: bool) -> [f32; 8] {
    let lanes = 8 / w;
    std::array::from_fn(|l| {
        let k = l / lanes;
        if k < r && (!first_only || l % lanes == 0) {
            per_block(k)
        } else {
            0.0
        }
    })
}

/// 64-byte units of `Acts`' grouped storage per activation row (a whole number of 512 bytes).
fn act_lines(ng: usize) -> usize {
    (ng * ACT_UNITS * 32).div_ceil(512) * 8
}

/// Lays the activations out side by side (see the module docs) when the call has at least
/// [`MIN_M`] rows; the scales and sums of the padded blocks of a last partial group are zero.
///
/// # Safety
/// AVX2, FMA and F16C must be available.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn prepare<const F: u8>(acts: &mut Acts) {
    if acts.m < MIN_M {
        return;
    }
    let (m, nb) = (acts.m, acts.cols / 32);
    let ng = groups(acts.cols);
    let dst = acts.grouped_mut(act_lines(ng)).cast::<Y>();
    // Rows are `act_lines(ng)` units of 64 bytes apart (see `Acts::grouped_row`).
    let row_units = act_lines(ng) * 64 / size_of::<Y>();
    let k_quant = F >= F_Q4K;
    // The k-quants' groups are whole super-blocks.
    let narrow = narrow_last(nb).filter(|_| !k_quant);
    for i in 0..m {
        let q = acts.qs_ptr(i);
        for g in 0..ng {
            if let Some((last, r, w)) = narrow.filter(|n| n.0 == g) {
                let (d, s) = (acts.d(i), acts.s(i));
                let first = 8 * last;
                let dl = lanes_of(|k| d[first + k], r, w, false);
                let sl = lanes_of(|k| s[first + k], r, w, true);
                // SAFETY: blocks `first..first + r` are in bounds of row `i`; `dst` holds `m` rows
                // of `row_units` units, each group's `ACT_UNITS` inside them.
                unsafe {
                    let blocks: [__m256i; 8] = std::array::from_fn(|k| {
                        if k < r {
                            _mm256_load_si256(q.add(32 * (first + k)).cast())
                        } else {
                            _mm256_setzero_si256()
                        }
                    });
                    let u = dst.add(i * row_units + g * ACT_UNITS);
                    for (t, v) in narrow_steps(blocks, w).into_iter().enumerate().take(w) {
                        _mm256_store_si256(u.add(t).cast(), v);
                    }
                    _mm256_store_ps(u.add(8).cast(), _mm256_loadu_ps(dl.as_ptr()));
                    _mm256_store_ps(u.add(9).cast(), _mm256_loadu_ps(sl.as_ptr()));
                }
                continue;
            }
            // Scale and sum of each block (lane) of the group.
            let mut lanes = [[0f32; 8]; 2];
            for k in 0..8 {
                let b = 8 * g + k;
                if k_quant {
                    // One scale per super-block (= group); sums of the two 16-value halves.
                    let (d, bs) = (acts.d(i)[g], acts.bsums(i));
                    lanes[0][k] = d;
                    lanes[1][k] = d * f32::from(bs[2 * b] + bs[2 * b + 1]);
                } else if b < nb {
                    lanes[0][k] = acts.d(i)[b];
                    lanes[1][k] = acts.s(i)[b];
                }
            }
            // SAFETY: blocks below `nb` are in bounds of row `i`; `dst` holds `m` rows of
            // `row_units` units, each group's `ACT_UNITS` inside them.
            unsafe {
                let blocks: [__m256i; 8] = std::array::from_fn(|k| {
                    let b = 8 * g + k;
                    if b < nb {
                        _mm256_load_si256(q.add(32 * b).cast())
                    } else {
                        _mm256_setzero_si256()
                    }
                });
                let u = dst.add(i * row_units + g * ACT_UNITS);
                for (t, v) in transpose8(blocks).into_iter().enumerate() {
                    _mm256_store_si256(u.add(t).cast(), v);
                }
                _mm256_store_ps(u.add(8).cast(), _mm256_loadu_ps(lanes[0].as_ptr()));
                _mm256_store_ps(u.add(9).cast(), _mm256_loadu_ps(lanes[1].as_ptr()));
            }
        }
    }
}

/// Decodes `NRP` weight rows at `w` (row stride `rb`, `nb` blocks) into the packed layout at `pk`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pack<const F: u8>(w: *const u8, rb: usize, nb: usize, ng: usize, pk: *mut Y) {
    if F >= F_Q4K {
        // SAFETY: the caller's contract.
        return unsafe { pack_k::<F>(w, rb, ng, pk) };
    }
    let bb = block_bytes(F);
    let wu = weight_units(F);
    let narrow = narrow_last(nb);
    for j in 0..NRP {
        for g in 0..ng {
            if let Some((last, r, width)) = narrow.filter(|n| n.0 == g) {
                // SAFETY: blocks `8 · last .. nb` of row `j` are in bounds; `pk` holds
                // `ng · NRP · wu` units.
                unsafe {
                    pack_narrow::<F>(
                        w.add(j * rb + 8 * last * bb),
                        r,
                        width,
                        pk.add((g * NRP + j) * wu),
                    )
                };
                continue;
            }
            let mut dc = [[0f32; 4]; 8];
            // SAFETY: blocks below `nb` of row `j` are in bounds; `pk` holds `ng · NRP · wu` units.
            unsafe {
                let q: [__m256i; 8] = std::array::from_fn(|k| {
                    let b = 8 * g + k;
                    if b < nb {
                        let (q, v) = decode32::<F>(w.add(j * rb + b * bb));
                        _mm_storeu_ps(dc[k].as_mut_ptr(), v);
                        q
                    } else {
                        _mm256_setzero_si256()
                    }
                });
                let u = pk.add((g * NRP + j) * wu);
                for (t, v) in transpose8(q).into_iter().enumerate() {
                    if F == F_Q8_0 {
                        _mm256_store_si256(u.add(t).cast(), _mm256_abs_epi8(v));
                        _mm256_store_si256(u.add(8 + t).cast(), v);
                    } else {
                        _mm256_store_si256(u.add(t).cast(), v);
                    }
                }
                let (dv, cv) = (u.add(wu - 2).cast::<f32>(), u.add(wu - 1).cast::<f32>());
                for k in 0..8 {
                    *dv.add(k) = dc[k][0];
                    *cv.add(k) = dc[k][1];
                }
            }
        }
    }
}

/// [`pack`] for a last group of `r` blocks at `w` laid out `width` blocks wide (see the module docs),
/// into the `weight_units(F)` units at `u`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pack_narrow<const F: u8>(w: *const u8, r: usize, width: usize, u: *mut Y) {
    let wu = weight_units(F);
    let mut dc = [[0f32; 4]; 8];
    // SAFETY: the caller guarantees `r` whole blocks at `w` and `wu` writable units at `u`.
    unsafe {
        let blocks: [__m256i; 8] = std::array::from_fn(|k| {
            if k < r {
                let (q, v) = decode32::<F>(w.add(k * block_bytes(F)));
                _mm_storeu_ps(dc[k].as_mut_ptr(), v);
                q
            } else {
                _mm256_setzero_si256()
            }
        });
        for (t, v) in narrow_steps(blocks, width)
            .into_iter()
            .enumerate()
            .take(width)
        {
            if F == F_Q8_0 {
                _mm256_store_si256(u.add(t).cast(), _mm256_abs_epi8(v));
                _mm256_store_si256(u.add(8 + t).cast(), v);
            } else {
                _mm256_store_si256(u.add(t).cast(), v);
            }
        }
        let dl = lanes_of(|k| dc[k][0], r, width, false);
        let cl = lanes_of(|k| dc[k][1], r, width, false);
        _mm256_store_ps(u.add(wu - 2).cast(), _mm256_loadu_ps(dl.as_ptr()));
        _mm256_store_ps(u.add(wu - 1).cast(), _mm256_loadu_ps(cl.as_ptr()));
    }
}

/// [`pack`] for the k-quants: group `g` of a row is its super-block `g`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pack_k<const F: u8>(w: *const u8, rb: usize, ng: usize, pk: *mut Y) {
    let bb = block_bytes(F);
    let wu = weight_units(F);
    for j in 0..NRP {
        for g in 0..ng {
            // SAFETY: super-block `g` of row `j` is in bounds; `pk` holds `ng · NRP · wu` units.
            unsafe {
                let (q, lanes) = decode_k::<F>(w.add(j * rb + g * bb));
                let u = pk.add((g * NRP + j) * wu);
                for (t, v) in transpose8(q).into_iter().enumerate() {
                    if signed(F) {
                        _mm256_store_si256(u.add(t).cast(), _mm256_abs_epi8(v));
                        _mm256_store_si256(u.add(8 + t).cast(), v);
                    } else {
                        _mm256_store_si256(u.add(t).cast(), v);
                    }
                }
                _mm256_store_ps(u.add(wu - 2).cast(), _mm256_loadu_ps(lanes[0].as_ptr()));
                _mm256_store_ps(u.add(wu - 1).cast(), _mm256_loadu_ps(lanes[1].as_ptr()));
            }
        }
    }
}

/// The 8 blocks of 32 quants of a k-quant super-block at `p`, in value order, with their scales
/// and offsets per block (Q4K / Q5K: `d·scale`, `-dmin·min`; Q6K: `d·scale` of the first and of
/// the second 16 values; its quants are returned as `q - 32`).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode_k<const F: u8>(p: *const u8) -> ([__m256i; 8], [[f32; 8]; 2]) {
    // SAFETY: the caller guarantees a whole super-block at `p`.
    let b = unsafe { std::slice::from_raw_parts(p, block_bytes(F)) };
    let low4 = _mm256_set1_epi8(0x0F);
    let load = |at: usize| unsafe { _mm256_loadu_si256(p.add(at).cast()) };
    let mut q = [_mm256_setzero_si256(); 8];
    let mut lanes = [[0f32; 8]; 2];
    if F == F_Q6K {
        let d = f16_at(b, 208);
        for k in 0..8 {
            // SAFETY: the whole super-block is at `p`.
            let q6 = unsafe { q6k_quants(p, k) };
            q[k] = _mm256_sub_epi8(q6, _mm256_set1_epi8(32));
            lanes[0][k] = d * f32::from(b[192 + 2 * k] as i8);
            lanes[1][k] = d * f32::from(b[192 + 2 * k + 1] as i8);
        }
        return (q, lanes);
    }
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (sc, mn) = k4_scales(&b[4..16]);
    let qs_at = if F == F_Q5K { 48 } else { 16 };
    let one = _mm256_set1_epi8(1);
    for pair in 0..4 {
        let bytes = load(qs_at + 32 * pair);
        let mut lo = _mm256_and_si256(bytes, low4);
        let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(bytes), low4);
        if F == F_Q5K {
            // Bit `2·pair` of `qh[l]` is bit 4 of value `l` of the low block, the next bit the
            // high block's.
            let qh = load(16);
            let bit = |s: i32| {
                let v = _mm256_srl_epi16(qh, _mm_cvtsi32_si128(s));
                _mm256_slli_epi16::<4>(_mm256_and_si256(v, one))
            };
            lo = _mm256_or_si256(lo, bit(2 * pair as i32));
            hi = _mm256_or_si256(hi, bit(2 * pair as i32 + 1));
        }
        q[2 * pair] = lo;
        q[2 * pair + 1] = hi;
    }
    for k in 0..8 {
        lanes[0][k] = d * f32::from(sc[k]);
        lanes[1][k] = -dmin * f32::from(mn[k]);
    }
    (q, lanes)
}

/// Register tile over a packed tile: activation row `i` x `NRP` weight rows from `r`, over the
/// `ng` groups, the last `last` blocks wide.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn micro<const F: u8>(
    pk: *const Y,
    ng: usize,
    last: usize,
    acts: &Acts,
    i: usize,
    r: usize,
    out: OutPtr,
) {
    let x = acts.grouped_row(i).cast::<Y>();
    let mut acc = [_mm256_setzero_ps(); NRP];
    let full = if last == 8 { ng } else { ng - 1 };
    // SAFETY: `pk` holds the packed tile (`pack`), row `i` of the activations its grouped layout
    // (`prepare`), both with `ng` groups.
    unsafe {
        for g in 0..full {
            group::<F, 8>(pk, x, g, &mut acc);
        }
        match (full < ng).then_some(last) {
            Some(1) => group::<F, 1>(pk, x, full, &mut acc),
            Some(2) => group::<F, 2>(pk, x, full, &mut acc),
            Some(4) => group::<F, 4>(pk, x, full, &mut acc),
            Some(w) => unreachable!("a last group {w} blocks wide"),
            None => {}
        }
        for j in 0..NRP {
            out.write(i, r + j, hsum(acc[j]));
        }
    }
}

/// Adds group `g` (`STEPS` step registers: 8, or a narrow last group's width) of one activation
/// row (`x`, grouped layout) times the `NRP` weight rows of the packed tile `pk` to `acc`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn group<const F: u8, const STEPS: usize>(
    pk: *const Y,
    x: *const Y,
    g: usize,
    acc: &mut [__m256; NRP],
) {
    let wu = weight_units(F);
    let ones = _mm256_set1_epi16(1);
    let flush = flush_every(F);
    // SAFETY: the caller's contract (see `micro`).
    unsafe {
        let xg = x.add(g * ACT_UNITS);
        let dx = _mm256_load_ps(xg.add(8).cast());
        let wg: [*const Y; NRP] = std::array::from_fn(|j| pk.add((g * NRP + j) * wu));
        let mut i16acc = [_mm256_setzero_si256(); NRP];
        let mut i32acc = [_mm256_setzero_si256(); NRP];
        for t in 0..STEPS {
            let xv = _mm256_load_si256(xg.add(t).cast());
            for j in 0..NRP {
                let wv = _mm256_load_si256(wg[j].add(t).cast());
                let xs = if signed(F) {
                    _mm256_sign_epi8(xv, _mm256_load_si256(wg[j].add(8 + t).cast()))
                } else {
                    xv
                };
                i16acc[j] = _mm256_add_epi16(i16acc[j], _mm256_maddubs_epi16(wv, xs));
            }
            if (t + 1) % flush == 0 || t + 1 == STEPS {
                for j in 0..NRP {
                    let wide = _mm256_madd_epi16(i16acc[j], ones);
                    i16acc[j] = _mm256_setzero_si256();
                    if F == F_Q6K {
                        // Each half of the block has its own scale.
                        let dw = _mm256_load_ps(wg[j].add(wu - 2 + t / 4).cast());
                        let dot = _mm256_cvtepi32_ps(wide);
                        acc[j] = _mm256_fmadd_ps(dot, _mm256_mul_ps(dw, dx), acc[j]);
                    } else {
                        i32acc[j] = _mm256_add_epi32(i32acc[j], wide);
                    }
                }
            }
        }
        if F == F_Q6K {
            return;
        }
        let sx = _mm256_load_ps(xg.add(9).cast());
        for j in 0..NRP {
            let dw = _mm256_load_ps(wg[j].add(wu - 2).cast());
            let dot = _mm256_cvtepi32_ps(i32acc[j]);
            acc[j] = _mm256_fmadd_ps(dot, _mm256_mul_ps(dw, dx), acc[j]);
            if F != F_Q8_0 {
                let cw = _mm256_load_ps(wg[j].add(wu - 1).cast());
                acc[j] = _mm256_fmadd_ps(cw, sx, acc[j]);
            }
        }
    }
}

/// Rows `r0..r1` of the output for all activation rows, by packed tiles of [`NRP`] rows; returns
/// the first row it did not compute (the last `< NRP` rows, or `r0` when the activations were not
/// prepared), which the caller's per-block kernel finishes.
///
/// # Safety
/// AVX2, FMA and F16C must be available; rows `r0..r1` are in bounds and owned by this task.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn tile<const F: u8>(
    w: &WeightMatrix,
    r0: usize,
    r1: usize,
    acts: &Acts,
    out: OutPtr,
) -> usize {
    let ng = groups(w.cols());
    if acts.m < MIN_M || !acts.grouped_ready(act_lines(ng)) {
        return r0;
    }
    let (rb, nb, m) = (w.row_bytes(), w.cols() / 32, acts.m);
    // The k-quants' groups are whole super-blocks.
    let last = if F >= F_Q4K { 8 } else { last_width(nb) };
    let base = w.data().as_ptr();
    let mut scratch = PACK.with(|p| p.take());
    let units = ng * NRP * weight_units(F);
    if scratch.len() < units {
        scratch.resize(units, Y([0; 32]));
    }
    let mut pf = Prefetcher::new(base, r0 * rb, r1 * rb);
    let mut r = r0;
    while r1 - r >= NRP {
        pf.advance((r + NRP) * rb);
        // SAFETY: rows `r..r + NRP` are in bounds; `scratch` holds the packed tile.
        unsafe {
            pack::<F>(base.add(r * rb), rb, nb, ng, scratch.as_mut_ptr());
            for i in 0..m {
                micro::<F>(scratch.as_ptr(), ng, last, acts, i, r, out);
            }
        }
        r += NRP;
    }
    PACK.with(|p| p.replace(scratch));
    r
}
