//! AVX2 + FMA + F16C kernels (256-bit).
//!
//! Integer dot products use `vpmaddubsw` (unsigned weight quants x signed activation quants, pairs
//! summed to i16) and `vpmaddwd` (pairs summed to i32, optionally times a 16-bit scale). Signed
//! weights (Q8_0) go through the usual sign trick: `|w| x sign(x, w)`. No product can saturate the
//! i16 stage: `2 · 63 · 127 < 2^15` for the widest unsigned quants (Q6K), `2 · 128 · 127` for Q8_0.
//!
//! Every function here requires AVX2, FMA and F16C; callers check with [`super::Isa::Avx2`].

// Register tiles are indexed `acc[i][j]` on purpose: the loops mirror the tile layout.
#![allow(clippy::needless_range_loop)]

use super::act::{scales, Acts};
use super::layout::*;
use super::{OutPtr, Prefetcher, PrepareFn, TileFn, WeightMatrix};
use core::arch::x86_64::*;

// ---------------------------------------------------------------------------------------------
// Activation quantization.

/// Horizontal maximum of 8 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn hmax(v: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_max_ss(m, _mm_movehdup_ps(m));
    _mm_cvtss_f32(m)
}

/// Horizontal sum of 8 i32 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01>(s));
    _mm_cvtsi128_si32(s)
}

/// Horizontal sum of 8 f32 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Largest magnitude among 32 values at `p`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn amax32(p: *const f32) -> f32 {
    let sign = _mm256_set1_ps(-0.0);
    // SAFETY: the caller guarantees 32 readable floats at `p`.
    let (a, b, c, d) = unsafe {
        (
            _mm256_loadu_ps(p),
            _mm256_loadu_ps(p.add(8)),
            _mm256_loadu_ps(p.add(16)),
            _mm256_loadu_ps(p.add(24)),
        )
    };
    let m = _mm256_max_ps(
        _mm256_max_ps(_mm256_andnot_ps(sign, a), _mm256_andnot_ps(sign, b)),
        _mm256_max_ps(_mm256_andnot_ps(sign, c), _mm256_andnot_ps(sign, d)),
    );
    hmax(m)
}

/// Quantizes 32 values at `p` with inverse scale `id` into `q`, returning `Σq`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn quant32(p: *const f32, id: f32, q: *mut i8) -> i32 {
    let idv = _mm256_set1_ps(id);
    let lim = _mm256_set1_epi32(127);
    let nlim = _mm256_set1_epi32(-127);
    // SAFETY: the caller guarantees 32 readable floats at `p` and 32 writable bytes at `q`.
    unsafe {
        // `cvtps` rounds to nearest (even) under the default MXCSR; the clamp only matters for
        // non-finite input.
        let cv = |k: usize| {
            let v = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(p.add(8 * k)), idv));
            _mm256_max_epi32(_mm256_min_epi32(v, lim), nlim)
        };
        let (i0, i1, i2, i3) = (cv(0), cv(1), cv(2), cv(3));
        let sum = hsum_i32(_mm256_add_epi32(
            _mm256_add_epi32(i0, i1),
            _mm256_add_epi32(i2, i3),
        ));
        // packs work within 128-bit lanes: after both packs the dwords are in order
        // 0 4 1 5 2 6 3 7 (dword k holding values 4k..4k+3), so permute them back.
        let p16a = _mm256_packs_epi32(i0, i1);
        let p16b = _mm256_packs_epi32(i2, i3);
        let p8 = _mm256_packs_epi16(p16a, p16b);
        let fixed = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(q.cast(), fixed);
        sum
    }
}

/// AVX2 version of the `Q8x32` row quantization (see `act.rs`).
///
/// # Safety
/// AVX2, FMA and F16C must be available; `x.len() == q.len() == 32 * d.len() == 32 * s.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_row_q8x32(x: &[f32], q: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    let nb = x.len() / 32;
    assert!(q.len() >= nb * 32 && d.len() >= nb && s.len() >= nb);
    for b in 0..nb {
        // SAFETY: block `b` is in bounds of `x` and `q` (asserted above).
        unsafe {
            let p = x.as_ptr().add(32 * b);
            let (db, id) = scales(amax32(p));
            let sum = quant32(p, id, q.as_mut_ptr().add(32 * b));
            d[b] = db;
            s[b] = db * sum as f32;
        }
    }
}

/// Largest magnitude in `x` (`x.len()` a multiple of 32).
///
/// # Safety
/// AVX2, FMA and F16C must be available.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn amax(x: &[f32]) -> f32 {
    let mut m = 0f32;
    for c in x.chunks_exact(32) {
        // SAFETY: `c` holds 32 floats.
        m = m.max(unsafe { amax32(c.as_ptr()) });
    }
    m
}

/// Quantizes `x` with inverse scale `id` into `q` (`x.len() == q.len()`, a multiple of 32).
///
/// # Safety
/// AVX2, FMA and F16C must be available.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_scaled(x: &[f32], q: &mut [i8], id: f32) {
    assert!(q.len() >= x.len());
    for k in 0..x.len() / 32 {
        // SAFETY: chunk `k` is in bounds of both.
        unsafe { quant32(x.as_ptr().add(32 * k), id, q.as_mut_ptr().add(32 * k)) };
    }
}

// ---------------------------------------------------------------------------------------------
// 32-value block formats against Q8x32 activations.

/// The 32 quants of block `F` at `p` (unsigned for Q4/Q5, signed for Q8_0) and `[d, c, 0, 0]` with
/// value `k = d·q[k] + c` (see `scalar::decode_block32`).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn decode32<const F: u8>(p: *const u8) -> (__m256i, __m128) {
    // SAFETY: the caller guarantees a whole block at `p`.
    unsafe {
        let d_only = || {
            let d = _mm_cvtph_ps(_mm_cvtsi32_si128(p.cast::<u16>().read_unaligned() as i32));
            // [d, c·d, 0, 0]
            _mm_mul_ps(
                _mm_shuffle_ps::<0b00_00_00_00>(d, d),
                _mm_setr_ps(1.0, offset_units(F), 0.0, 0.0),
            )
        };
        let d_and_m = || _mm_cvtph_ps(_mm_cvtsi32_si128(p.cast::<i32>().read_unaligned()));
        let scales = match F {
            F_Q4_1 | F_Q5_1 => d_and_m(),
            _ => d_only(),
        };
        (quants32::<F>(p), scales)
    }
}

/// The constant offset of a format's quants in units of `d` (Q4_0: `q - 8`, Q5_0: `q - 16`), 0 for
/// the others.
const fn offset_units(f: u8) -> f32 {
    match f {
        F_Q4_0 => -8.0,
        F_Q5_0 => -16.0,
        _ => 0.0,
    }
}

/// The 32 quants of a block at `p` as bytes, in value order: unsigned and offset not removed for
/// the 4- and 5-bit formats, signed for Q8_0.
///
/// # Safety
/// AVX2, FMA and F16C must be available; a whole block of format `F` is at `p`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn quants32<const F: u8>(p: *const u8) -> __m256i {
    // SAFETY: the caller guarantees a whole block at `p`.
    unsafe {
        let low4 = _mm256_set1_epi8(0x0F);
        let nibbles = |at: usize| {
            let q = _mm_loadu_si128(p.add(at).cast());
            _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(q), q), low4)
        };
        match F {
            F_Q4_0 => nibbles(2),
            F_Q4_1 => nibbles(4),
            F_Q5_0 | F_Q5_1 => {
                let (qh_at, qs_at) = if F == F_Q5_0 { (2, 6) } else { (4, 8) };
                let qh = p.add(qh_at).cast::<i32>().read_unaligned();
                _mm256_or_si256(nibbles(qs_at), high_bits(qh))
            }
            _ => _mm256_loadu_si256(p.add(2).cast()),
        }
    }
}

/// `0x10` in byte `k` where bit `k` of `qh` is set.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn high_bits(qh: i32) -> __m256i {
    let v = _mm256_set1_epi32(qh);
    // Byte k gets byte k / 8 of qh...
    let spread = _mm256_shuffle_epi8(
        v,
        _mm256_setr_epi64x(
            0,
            0x0101_0101_0101_0101,
            0x0202_0202_0202_0202,
            0x0303_0303_0303_0303,
        ),
    );
    // ...and keeps bit k % 8 of it.
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// Blocks a step of [`mk32`] takes at once.
const CHUNK: usize = 4;

/// Register tile of the 32-value formats: `MR` activation rows x `NR` weight rows, over all blocks,
/// for the calls the packed kernel leaves (fewer than its `MIN_M` activation rows, as in decoding,
/// and the last rows of a matrix).
///
/// Blocks go [`CHUNK`] at a time: the integer dot products of 4 blocks (8 lanes each) are reduced
/// together into one vector of 4 by three `vphaddd`, so converting and scaling them costs one
/// conversion and two FMAs per 4 blocks instead of per block, and a row's 4 weight scales (and
/// offsets) are converted with one `vcvtph2ps`. The blocks past the last whole chunk take the
/// per-block step [`block32`]. The integers are the same as the per-block kernel's; only the order
/// of the float sums differs.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn mk32<const F: u8, const MR: usize, const NR: usize>(
    w: *const u8,
    rb: usize,
    nb: usize,
    acts: &Acts,
    i0: usize,
    r: usize,
    out: OutPtr,
) {
    let bb = block_bytes(F);
    let ones = _mm256_set1_epi16(1);
    let xs: [*const i8; MR] = std::array::from_fn(|i| acts.qs_ptr(i0 + i));
    let dx: [&[f32]; MR] = std::array::from_fn(|i| acts.d(i0 + i));
    let sx: [&[f32]; MR] = std::array::from_fn(|i| acts.s(i0 + i));
    let mut acc = [[_mm_setzero_ps(); NR]; MR];
    let chunks = nb / CHUNK;
    for c in 0..chunks {
        let b0 = CHUNK * c;
        // SAFETY: activation rows hold `nb * 32` values (64-byte aligned) and `nb` scales and sums.
        let (xv, dxv, sxv): ([[__m256i; CHUNK]; MR], [__m128; MR], [__m128; MR]) = unsafe {
            (
                std::array::from_fn(|i| {
                    std::array::from_fn(|k| _mm256_load_si256(xs[i].add(32 * (b0 + k)).cast()))
                }),
                std::array::from_fn(|i| _mm_loadu_ps(dx[i].as_ptr().add(b0))),
                std::array::from_fn(|i| {
                    if F == F_Q8_0 {
                        _mm_setzero_ps()
                    } else {
                        _mm_loadu_ps(sx[i].as_ptr().add(b0))
                    }
                }),
            )
        };
        for j in 0..NR {
            // SAFETY: row `r + j` and blocks `b0 .. b0 + CHUNK` are in bounds (checked by `tile32`).
            let (wq, (wd, wc)) = unsafe {
                let row = w.add(j * rb + b0 * bb);
                (
                    std::array::from_fn::<__m256i, CHUNK, _>(|k| quants32::<F>(row.add(k * bb))),
                    scales4::<F>(row),
                )
            };
            for i in 0..MR {
                let dots: [__m256i; CHUNK] = std::array::from_fn(|k| {
                    let prod = if F == F_Q8_0 {
                        _mm256_maddubs_epi16(
                            _mm256_sign_epi8(wq[k], wq[k]),
                            _mm256_sign_epi8(xv[i][k], wq[k]),
                        )
                    } else {
                        _mm256_maddubs_epi16(wq[k], xv[i][k])
                    };
                    _mm256_madd_epi16(prod, ones)
                });
                let dot = _mm_cvtepi32_ps(sum_lanes4(dots));
                acc[i][j] = _mm_fmadd_ps(dot, _mm_mul_ps(wd, dxv[i]), acc[i][j]);
                if F != F_Q8_0 {
                    acc[i][j] = _mm_fmadd_ps(wc, sxv[i], acc[i][j]);
                }
            }
        }
    }
    let mut tail = [[_mm256_setzero_ps(); NR]; MR];
    for b in chunks * CHUNK..nb {
        // SAFETY: as above, for block `b`.
        unsafe { block32::<F, MR, NR>(w, rb, b, &xs, &dx, &sx, &mut tail) };
    }
    for i in 0..MR {
        for j in 0..NR {
            let total = hsum4(acc[i][j]) + hsum(tail[i][j]);
            // SAFETY: in bounds, owned by this task.
            unsafe { out.write(i0 + i, r + j, total) };
        }
    }
}

/// The scales `d` of the [`CHUNK`] blocks from `row` and their offsets (`c·d` for Q4_0 / Q5_0, the
/// stored `m` for Q4_1 / Q5_1, zero for Q8_0).
///
/// # Safety
/// AVX2, FMA and F16C must be available; [`CHUNK`] whole blocks of format `F` are at `row`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn scales4<const F: u8>(row: *const u8) -> (__m128, __m128) {
    let bb = block_bytes(F);
    // SAFETY: the caller guarantees the blocks.
    unsafe {
        if F == F_Q4_1 || F == F_Q5_1 {
            // (d, m) pairs, then d in the low half and m in the high one.
            let dm = |k: usize| row.add(k * bb).cast::<i32>().read_unaligned();
            let v = _mm256_cvtph_ps(_mm_setr_epi32(dm(0), dm(1), dm(2), dm(3)));
            let v = _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7));
            (_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v))
        } else {
            let d = |k: usize| row.add(k * bb).cast::<i16>().read_unaligned();
            let v = _mm_cvtph_ps(_mm_setr_epi16(d(0), d(1), d(2), d(3), 0, 0, 0, 0));
            (v, _mm_mul_ps(v, _mm_set1_ps(offset_units(F))))
        }
    }
}

/// `[Σ v[0], Σ v[1], Σ v[2], Σ v[3]]` (each over its 8 lanes).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn sum_lanes4(v: [__m256i; CHUNK]) -> __m128i {
    // Per 128-bit half: [v0 0+1, v0 2+3, v1 0+1, v1 2+3], then [Σ v0, Σ v1, Σ v2, Σ v3] of the half.
    let h = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h))
}

/// The sum of the 4 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn hsum4(v: __m128) -> f32 {
    let s = _mm_add_ps(v, _mm_movehl_ps(v, v));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// One block `b` of [`mk32`]'s tile, accumulated per lane into `acc`.
///
/// # Safety
/// AVX2, FMA and F16C must be available; block `b` of rows `0..NR` at `w` (stride `rb`) and of the
/// activation rows are in bounds.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn block32<const F: u8, const MR: usize, const NR: usize>(
    w: *const u8,
    rb: usize,
    b: usize,
    xs: &[*const i8; MR],
    dx: &[&[f32]; MR],
    sx: &[&[f32]; MR],
    acc: &mut [[__m256; NR]; MR],
) {
    let bb = block_bytes(F);
    let ones = _mm256_set1_epi16(1);
    let mut wq = [_mm256_setzero_si256(); NR];
    let mut wd = [_mm256_setzero_ps(); NR];
    let mut wc = [_mm256_setzero_ps(); NR];
    for j in 0..NR {
        // SAFETY: the caller's contract.
        let (q, dc) = unsafe { decode32::<F>(w.add(j * rb + b * bb)) };
        wq[j] = q;
        wd[j] = _mm256_broadcastss_ps(dc);
        // [c, 0, 0, 0, 0, 0, 0, 0]: the block's offset, added once into lane 0.
        wc[j] = _mm256_zextps128_ps256(_mm_insert_ps::<0b0100_1110>(dc, dc));
    }
    for i in 0..MR {
        // SAFETY: the caller's contract (64-byte aligned rows).
        let xv = unsafe { _mm256_load_si256(xs[i].add(32 * b).cast()) };
        let dxv = _mm256_set1_ps(dx[i][b]);
        let sxv = _mm256_zextps128_ps256(_mm_set_ss(sx[i][b]));
        for j in 0..NR {
            let prod = if F == F_Q8_0 {
                _mm256_maddubs_epi16(_mm256_sign_epi8(wq[j], wq[j]), _mm256_sign_epi8(xv, wq[j]))
            } else {
                _mm256_maddubs_epi16(wq[j], xv)
            };
            let dot = _mm256_cvtepi32_ps(_mm256_madd_epi16(prod, ones));
            acc[i][j] = _mm256_fmadd_ps(dot, _mm256_mul_ps(wd[j], dxv), acc[i][j]);
            if F != F_Q8_0 {
                acc[i][j] = _mm256_fmadd_ps(wc[j], sxv, acc[i][j]);
            }
        }
    }
}

/// Runs micro-kernel `$mk::<F, mr, NR>` for a runtime `mr <= 4`.
macro_rules! by_mr {
    ($mk:ident, $F:expr, $NR:expr, $mr:expr, $($arg:expr),*) => {
        match $mr {
            1 => $mk::<$F, 1, $NR>($($arg),*),
            2 => $mk::<$F, 2, $NR>($($arg),*),
            3 => $mk::<$F, 3, $NR>($($arg),*),
            _ => $mk::<$F, 4, $NR>($($arg),*),
        }
    };
}
pub(super) use by_mr;

/// Activation rows per register tile (AVX2 has 16 vector registers).
const MR32: usize = 2;
/// Weight rows per register tile.
const NR32: usize = 2;
// Packed tiles hold whole register tiles of this kernel (see `tile_fn`'s grain).
const _: () = assert!(super::avx2_packed::NRP.is_multiple_of(NR32));

/// Tile kernel (rows `r0..r1`, all activation rows) for a 32-value block format.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile32<const F: u8>(w: &WeightMatrix, r0: usize, r1: usize, acts: &Acts, out: OutPtr) {
    let rb = w.row_bytes();
    let nb = w.cols() / 32;
    let base = w.data().as_ptr();
    let m = acts.m;
    // Enough activation rows: the packed kernel takes whole tiles, this one the rest.
    // SAFETY: the caller's contract.
    let r0 = unsafe { super::avx2_packed::tile::<F>(w, r0, r1, acts, out) };
    let mut pf = Prefetcher::new(base, r0 * rb, r1 * rb);
    let mut r = r0;
    while r < r1 {
        let nr = if r1 - r >= NR32 { NR32 } else { 1 };
        pf.advance((r + nr) * rb);
        // SAFETY: `r + nr <= r1 <= rows`.
        let wp = unsafe { base.add(r * rb) };
        let mut i = 0;
        while i < m {
            let mr = (m - i).min(MR32);
            // SAFETY: rows `r..r + nr` and activation rows `i..i + mr` are in bounds.
            unsafe {
                if nr == NR32 {
                    by_mr!(mk32, F, NR32, mr, wp, rb, nb, acts, i, r, out)
                } else {
                    by_mr!(mk32, F, 1, mr, wp, rb, nb, acts, i, r, out)
                }
            }
            i += mr;
        }
        r += nr;
    }
}

// ---------------------------------------------------------------------------------------------
// k-quants against Q8K activations.

/// Register tile of Q4K / Q5K: `MR` activation rows x `NR` weight rows, over all super-blocks.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn mk_q45k<const F: u8, const MR: usize, const NR: usize>(
    w: *const u8,
    rb: usize,
    nsb: usize,
    acts: &Acts,
    i0: usize,
    r: usize,
    out: OutPtr,
) {
    let bb = block_bytes(F);
    let qs_at = if F == F_Q4K { 16 } else { 48 };
    let low4 = _mm256_set1_epi8(0x0F);
    let xs: [*const i8; MR] = std::array::from_fn(|i| acts.qs_ptr(i0 + i));
    let dx: [&[f32]; MR] = std::array::from_fn(|i| acts.d(i0 + i));
    let bs: [&[i16]; MR] = std::array::from_fn(|i| acts.bsums(i0 + i));
    let mut facc = [[_mm256_setzero_ps(); NR]; MR];
    for sb in 0..nsb {
        let mut sc = [[0u8; 8]; NR];
        let mut mins = [_mm256_setzero_si256(); NR];
        let mut dd = [(0f32, 0f32); NR];
        let mut iacc = [[_mm256_setzero_si256(); NR]; MR];
        for j in 0..NR {
            // SAFETY: super-block `sb` of row `r + j` is in bounds.
            let p = unsafe { std::slice::from_raw_parts(w.add(j * rb + sb * bb), bb) };
            dd[j] = (f16_at(p, 0), f16_at(p, 2));
            let (s, mn) = k4_scales(&p[4..16]);
            sc[j] = s;
            let mn = _mm_cvtsi64_si128(i64::from_le_bytes(mn));
            mins[j] = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mn, mn));
        }
        for g in 0..4 {
            let mut lo = [_mm256_setzero_si256(); NR];
            let mut hi = [_mm256_setzero_si256(); NR];
            let mut s0 = [_mm256_setzero_si256(); NR];
            let mut s1 = [_mm256_setzero_si256(); NR];
            for j in 0..NR {
                s0[j] = _mm256_set1_epi16(sc[j][2 * g] as i16);
                s1[j] = _mm256_set1_epi16(sc[j][2 * g + 1] as i16);
                // SAFETY: in bounds as above.
                let q =
                    unsafe { _mm256_loadu_si256(w.add(j * rb + sb * bb + qs_at + 32 * g).cast()) };
                lo[j] = _mm256_and_si256(q, low4);
                hi[j] = _mm256_and_si256(_mm256_srli_epi16::<4>(q), low4);
                if F == F_Q5K {
                    // SAFETY: `qh` is bytes 16..48 of the block.
                    let h = unsafe { _mm256_loadu_si256(w.add(j * rb + sb * bb + 16).cast()) };
                    let b0 = _mm256_set1_epi8((1u8 << (2 * g)) as i8);
                    let b1 = _mm256_set1_epi8((1u8 << (2 * g + 1)) as i8);
                    let sixteen = _mm256_set1_epi8(0x10);
                    let h0 =
                        _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(h, b0), b0), sixteen);
                    let h1 =
                        _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(h, b1), b1), sixteen);
                    lo[j] = _mm256_or_si256(lo[j], h0);
                    hi[j] = _mm256_or_si256(hi[j], h1);
                }
            }
            for i in 0..MR {
                // SAFETY: activation rows hold `nsb * 256` values.
                let (xl, xh) = unsafe {
                    let p = xs[i].add(256 * sb + 64 * g);
                    (
                        _mm256_load_si256(p.cast()),
                        _mm256_load_si256(p.add(32).cast()),
                    )
                };
                for j in 0..NR {
                    let a = _mm256_madd_epi16(_mm256_maddubs_epi16(lo[j], xl), s0[j]);
                    let b = _mm256_madd_epi16(_mm256_maddubs_epi16(hi[j], xh), s1[j]);
                    iacc[i][j] = _mm256_add_epi32(iacc[i][j], _mm256_add_epi32(a, b));
                }
            }
        }
        for i in 0..MR {
            // SAFETY: 16 sums per super-block.
            let b16 = unsafe { _mm256_loadu_si256(bs[i].as_ptr().add(16 * sb).cast()) };
            let dxi = dx[i][sb];
            for j in 0..NR {
                let mi = _mm256_cvtepi32_ps(_mm256_madd_epi16(mins[j], b16));
                let t = _mm256_mul_ps(
                    _mm256_cvtepi32_ps(iacc[i][j]),
                    _mm256_set1_ps(dd[j].0 * dxi),
                );
                let t = _mm256_fnmadd_ps(mi, _mm256_set1_ps(dd[j].1 * dxi), t);
                facc[i][j] = _mm256_add_ps(facc[i][j], t);
            }
        }
    }
    for i in 0..MR {
        for j in 0..NR {
            // SAFETY: in bounds, owned by this task.
            unsafe { out.write(i0 + i, r + j, hsum(facc[i][j])) };
        }
    }
}

/// The 32 six-bit quants (0..64) of values `32·b .. 32·b + 32` of the Q6K super-block at `p`: low
/// nibbles from `ql` (bytes 0..128), top two bits from `qh` (bytes 128..192).
///
/// # Safety
/// AVX2 must be available and a whole super-block readable at `p`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn q6k_quants(p: *const u8, b: usize) -> __m256i {
    let (h, k) = (b / 4, b % 4);
    let low4 = _mm256_set1_epi8(0x0F);
    // SAFETY: the caller guarantees the super-block.
    let (ql, qh) = unsafe {
        (
            _mm256_loadu_si256(p.add(64 * h + 32 * (k & 1)).cast()),
            _mm256_loadu_si256(p.add(128 + 32 * h).cast()),
        )
    };
    let lo = if k < 2 {
        _mm256_and_si256(ql, low4)
    } else {
        _mm256_and_si256(_mm256_srli_epi16::<4>(ql), low4)
    };
    let hb = match k {
        0 => qh,
        1 => _mm256_srli_epi16::<2>(qh),
        2 => _mm256_srli_epi16::<4>(qh),
        _ => _mm256_srli_epi16::<6>(qh),
    };
    let hb = _mm256_slli_epi16::<4>(_mm256_and_si256(hb, _mm256_set1_epi8(3)));
    _mm256_or_si256(lo, hb)
}

/// Register tile of Q6K.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn mk_q6k<const F: u8, const MR: usize, const NR: usize>(
    w: *const u8,
    rb: usize,
    nsb: usize,
    acts: &Acts,
    i0: usize,
    r: usize,
    out: OutPtr,
) {
    let bb = block_bytes(F_Q6K);
    let xs: [*const i8; MR] = std::array::from_fn(|i| acts.qs_ptr(i0 + i));
    let dx: [&[f32]; MR] = std::array::from_fn(|i| acts.d(i0 + i));
    let bs: [&[i16]; MR] = std::array::from_fn(|i| acts.bsums(i0 + i));
    let mut facc = [[_mm256_setzero_ps(); NR]; MR];
    // Per quarter `k` of a half: i16 scale `2k` of the half in every lane of the low 128 bits and
    // scale `2k + 1` in the high ones, picked by `vpshufb` from the half's 8 scales in both lanes.
    let pick: [__m256i; 4] = std::array::from_fn(|k| {
        let (a, b) = (4 * k as i8, 4 * k as i8 + 2);
        let lane = |e: i8| {
            _mm_set_epi8(
                e + 1,
                e,
                e + 1,
                e,
                e + 1,
                e,
                e + 1,
                e,
                e + 1,
                e,
                e + 1,
                e,
                e + 1,
                e,
                e + 1,
                e,
            )
        };
        _mm256_set_m128i(lane(b), lane(a))
    });
    for sb in 0..nsb {
        let mut scales = [_mm256_setzero_si256(); NR];
        let mut off = [_mm256_setzero_si256(); NR];
        let mut d = [0f32; NR];
        let mut iacc = [[_mm256_setzero_si256(); NR]; MR];
        for j in 0..NR {
            // SAFETY: super-block `sb` of row `r + j` is in bounds.
            let p = unsafe { std::slice::from_raw_parts(w.add(j * rb + sb * bb), bb) };
            d[j] = f16_at(p, 208);
            // The 16 scales as i16: 0..8 in the low 128 bits, 8..16 in the high ones.
            // SAFETY: 16 scale bytes at 192.
            scales[j] =
                unsafe { _mm256_cvtepi8_epi16(_mm_loadu_si128(p.as_ptr().add(192).cast())) };
            // The `-32` offset of every quant, as `-32 · scale` against the 16-value sums.
            off[j] = _mm256_mullo_epi16(scales[j], _mm256_set1_epi16(-32));
        }
        for h in 0..2 {
            // This half's 8 scales in both 128-bit lanes.
            let half: [__m256i; NR] = std::array::from_fn(|j| {
                if h == 0 {
                    _mm256_permute4x64_epi64::<0b01_00_01_00>(scales[j])
                } else {
                    _mm256_permute4x64_epi64::<0b11_10_11_10>(scales[j])
                }
            });
            // Quarter `k` of this half: values 128h + 32k .. +32, scales 8h + 2k, 8h + 2k + 1.
            for k in 0..4 {
                let mut q = [_mm256_setzero_si256(); NR];
                let mut s = [_mm256_setzero_si256(); NR];
                for j in 0..NR {
                    s[j] = _mm256_shuffle_epi8(half[j], pick[k]);
                    // SAFETY: super-block `sb` of row `r + j` is in bounds.
                    q[j] = unsafe { q6k_quants(w.add(j * rb + sb * bb), 4 * h + k) };
                }
                for i in 0..MR {
                    // SAFETY: activation rows hold `nsb * 256` values.
                    let xv =
                        unsafe { _mm256_load_si256(xs[i].add(256 * sb + 128 * h + 32 * k).cast()) };
                    for j in 0..NR {
                        let v = _mm256_madd_epi16(_mm256_maddubs_epi16(q[j], xv), s[j]);
                        iacc[i][j] = _mm256_add_epi32(iacc[i][j], v);
                    }
                }
            }
        }
        for i in 0..MR {
            // SAFETY: 16 sums per super-block.
            let b16 = unsafe { _mm256_loadu_si256(bs[i].as_ptr().add(16 * sb).cast()) };
            let dxi = dx[i][sb];
            for j in 0..NR {
                let tot = _mm256_add_epi32(iacc[i][j], _mm256_madd_epi16(off[j], b16));
                facc[i][j] = _mm256_fmadd_ps(
                    _mm256_cvtepi32_ps(tot),
                    _mm256_set1_ps(d[j] * dxi),
                    facc[i][j],
                );
            }
        }
    }
    for i in 0..MR {
        for j in 0..NR {
            // SAFETY: in bounds, owned by this task.
            unsafe { out.write(i0 + i, r + j, hsum(facc[i][j])) };
        }
    }
}

const MRK: usize = 2;
const NRK: usize = 2;
// Packed tiles hold whole register tiles of this kernel too.
const _: () = assert!(super::avx2_packed::NRP.is_multiple_of(NRK));

/// Tile kernel for the k-quants.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_k<const F: u8>(w: &WeightMatrix, r0: usize, r1: usize, acts: &Acts, out: OutPtr) {
    let rb = w.row_bytes();
    let nsb = w.cols() / 256;
    let base = w.data().as_ptr();
    let m = acts.m;
    // Enough activation rows: the packed kernel takes whole tiles, this one the rest.
    // SAFETY: the caller's contract.
    let r0 = unsafe { super::avx2_packed::tile::<F>(w, r0, r1, acts, out) };
    let mut pf = Prefetcher::new(base, r0 * rb, r1 * rb);
    let mut r = r0;
    while r < r1 {
        let nr = if r1 - r >= NRK { NRK } else { 1 };
        pf.advance((r + nr) * rb);
        // SAFETY: `r + nr <= rows`.
        let wp = unsafe { base.add(r * rb) };
        let mut i = 0;
        while i < m {
            let mr = (m - i).min(MRK);
            // SAFETY: rows and activation rows in bounds.
            unsafe {
                match (F, nr == NRK) {
                    (F_Q6K, true) => by_mr!(mk_q6k, F, NRK, mr, wp, rb, nsb, acts, i, r, out),
                    (F_Q6K, false) => by_mr!(mk_q6k, F, 1, mr, wp, rb, nsb, acts, i, r, out),
                    (_, true) => by_mr!(mk_q45k, F, NRK, mr, wp, rb, nsb, acts, i, r, out),
                    (_, false) => by_mr!(mk_q45k, F, 1, mr, wp, rb, nsb, acts, i, r, out),
                }
            }
            i += mr;
        }
        r += nr;
    }
}

/// The AVX2 tile kernel for kernel format `f`, and its preferred row grain.
pub(super) fn tile_fn(f: u8) -> Option<(TileFn, usize)> {
    let t: TileFn = match f {
        F_Q4_0 => tile32::<F_Q4_0>,
        F_Q4_1 => tile32::<F_Q4_1>,
        F_Q5_0 => tile32::<F_Q5_0>,
        F_Q5_1 => tile32::<F_Q5_1>,
        F_Q8_0 => tile32::<F_Q8_0>,
        F_Q4K => tile_k::<F_Q4K>,
        F_Q5K => tile_k::<F_Q5K>,
        F_Q6K => tile_k::<F_Q6K>,
        _ => return None,
    };
    // Tasks start on whole packed tiles, so every row is computed by the same kernel (and gives
    // the same bits) however the rows are split.
    Some((t, super::avx2_packed::NRP))
}

/// The activation layout the AVX2 kernel of format `f` wants prepared (see `avx2_packed.rs`).
pub(super) fn prepare_fn(f: u8) -> Option<PrepareFn> {
    let p: PrepareFn = match f {
        F_Q4_0 => super::avx2_packed::prepare::<F_Q4_0>,
        F_Q4_1 => super::avx2_packed::prepare::<F_Q4_1>,
        F_Q5_0 => super::avx2_packed::prepare::<F_Q5_0>,
        F_Q5_1 => super::avx2_packed::prepare::<F_Q5_1>,
        F_Q8_0 => super::avx2_packed::prepare::<F_Q8_0>,
        F_Q4K => super::avx2_packed::prepare::<F_Q4K>,
        F_Q5K => super::avx2_packed::prepare::<F_Q5K>,
        F_Q6K => super::avx2_packed::prepare::<F_Q6K>,
        _ => return None,
    };
    Some(p)
}

// ---------------------------------------------------------------------------------------------
// Float path helpers.

/// Converts little-endian f16 bytes to f32 (`out.len() == bytes.len() / 2`).
///
/// # Safety
/// AVX2, FMA and F16C must be available.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn f16_to_f32(bytes: &[u8], out: &mut [f32]) {
    let n = out.len().min(bytes.len() / 2);
    let mut k = 0;
    while k + 8 <= n {
        // SAFETY: 16 bytes at 2k and 8 floats at k are in bounds.
        unsafe {
            let h = _mm_loadu_si128(bytes.as_ptr().add(2 * k).cast());
            _mm256_storeu_ps(out.as_mut_ptr().add(k), _mm256_cvtph_ps(h));
        }
        k += 8;
    }
    for (o, c) in out[k..n].iter_mut().zip(bytes[2 * k..].chunks_exact(2)) {
        *o = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
    }
}

/// `out[i][j] = x[i] · w[j]` over `n` values, `MR x NR` at once.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn dots_f32<const MR: usize, const NR: usize>(
    x: [*const f32; MR],
    w: [*const f32; NR],
    n: usize,
) -> [[f32; NR]; MR] {
    let mut acc = [[_mm256_setzero_ps(); NR]; MR];
    let mut k = 0;
    while k + 8 <= n {
        // SAFETY: the caller guarantees `n` readable floats at every pointer.
        unsafe {
            let wv: [__m256; NR] = std::array::from_fn(|j| _mm256_loadu_ps(w[j].add(k)));
            for i in 0..MR {
                let xv = _mm256_loadu_ps(x[i].add(k));
                for j in 0..NR {
                    acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
                }
            }
        }
        k += 8;
    }
    let mut res = [[0f32; NR]; MR];
    for i in 0..MR {
        for j in 0..NR {
            let mut s = hsum(acc[i][j]);
            for t in k..n {
                // SAFETY: `t < n`.
                s += unsafe { *x[i].add(t) * *w[j].add(t) };
            }
            res[i][j] = s;
        }
    }
    res
}

/// Float tile: `out[i0 + i][r + j] = x[i0 + i] · w[j]` for `i < mr`, `j < NR`, with `mr <= 4`.
///
/// # Safety
/// AVX2, FMA and F16C must be available; `x` rows `i0..i0 + mr` and the `w` rows hold `n` floats.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn float_tile<const NR: usize>(
    x: &[f32],
    n: usize,
    i0: usize,
    mr: usize,
    w: [*const f32; NR],
    r: usize,
    out: OutPtr,
) {
    macro_rules! go {
        ($mr:literal) => {{
            let xp: [*const f32; $mr] = std::array::from_fn(|i| x[(i0 + i) * n..][..n].as_ptr());
            // SAFETY: the caller's contract.
            let res = unsafe { dots_f32::<$mr, NR>(xp, w, n) };
            for i in 0..$mr {
                for j in 0..NR {
                    // SAFETY: in bounds, owned by this task.
                    unsafe { out.write(i0 + i, r + j, res[i][j]) };
                }
            }
        }};
    }
    match mr {
        1 => go!(1),
        2 => go!(2),
        3 => go!(3),
        _ => go!(4),
    }
}
