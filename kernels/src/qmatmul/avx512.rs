//! AVX-512 (F, BW, VL) + VNNI kernels.
//!
//! - 32-value formats: two blocks per 512-bit register; `vpdpbusd` multiplies the unsigned weight
//!   quants by the signed activation quants and sums each 4 products straight into i32 (no i16
//!   stage, so no saturation). Q8_0's signed weights: `|w|` against `x` negated where `w < 0`
//!   (a masked subtract, AVX-512 has no `vpsignb`).
//! - k-quants: 64 values per register; `vpmaddubsw` (pairs to i16), then `vpdpwssd` multiplies by
//!   the 16-bit sub-block scales and accumulates into i32, so a whole 256-value super-block is
//!   summed in integers and converted to float once.
//!
//! Every function here requires the features of [`super::Isa::Avx512`].

// Register tiles are indexed `acc[i][j]` on purpose: the loops mirror the tile layout.
#![allow(clippy::needless_range_loop)]

use super::act::Acts;
use super::avx2::by_mr;
use super::layout::*;
use super::scalar;
use super::{OutPtr, Prefetcher, PrepareFn, TileFn, WeightMatrix};
use core::arch::x86_64::*;
use std::cell::RefCell;

/// `[lo x8, hi x8]` lane indices.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn halves(lo: i32, hi: i32) -> __m512i {
    _mm512_inserti64x4::<1>(
        _mm512_castsi256_si512(_mm256_set1_epi32(lo)),
        _mm256_set1_epi32(hi),
    )
}

/// i16 lane indices: 256-bit half `h` of the result takes lane `a` (`h = 0`) or `b` (`h = 1`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn idx16_halves(a: i16, b: i16) -> __m512i {
    _mm512_inserti64x4::<1>(
        _mm512_castsi256_si512(_mm256_set1_epi16(a)),
        _mm256_set1_epi16(b),
    )
}

/// i16 lane indices: 128-bit lane `L` of the result takes lane `base + L`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn idx16_quarters(base: i32) -> __m512i {
    let v = |k: i32| (base + k) | ((base + k) << 16);
    _mm512_setr_epi32(
        v(0),
        v(0),
        v(0),
        v(0),
        v(1),
        v(1),
        v(1),
        v(1),
        v(2),
        v(2),
        v(2),
        v(2),
        v(3),
        v(3),
        v(3),
        v(3),
    )
}

// ---------------------------------------------------------------------------------------------
// 32-value block formats against Q8x32 activations.

/// Blocks `b` (at `p`) and `b + 1` (at `p + block_bytes(F)`) of format `F`: their 64 quants
/// (unsigned for Q4/Q5, signed for Q8_0) and `[d0, d1, c0, c1]` (value `k` of block `t` is
/// `d_t·q[k] + c_t`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn decode64<const F: u8>(p: *const u8) -> (__m512i, __m128) {
    let bb = block_bytes(F);
    // SAFETY: the caller guarantees two whole blocks at `p`.
    unsafe {
        let nibbles = |at: usize| {
            // [q0, q0, q1, q1] (two broadcast loads), then shift the odd 128-bit lanes by 4:
            // [q0 & 15, q0 >> 4, q1 & 15, q1 >> 4] is values 0..32 of block 0, then of block 1.
            let z = _mm512_broadcast_i32x4(_mm_loadu_si128(p.add(at).cast()));
            let z = _mm512_mask_broadcast_i32x4(z, 0xFF00, _mm_loadu_si128(p.add(bb + at).cast()));
            let z = _mm512_srlv_epi16(
                z,
                _mm512_setr_epi64(
                    0,
                    0,
                    0x0004_0004_0004_0004,
                    0x0004_0004_0004_0004,
                    0,
                    0,
                    0x0004_0004_0004_0004,
                    0x0004_0004_0004_0004,
                ),
            );
            _mm512_and_si512(z, _mm512_set1_epi8(0x0F))
        };
        let d_only = || {
            let a = p.cast::<u16>().read_unaligned() as i32;
            let b = p.add(bb).cast::<u16>().read_unaligned() as i32;
            let d = _mm_cvtph_ps(_mm_cvtsi32_si128(a | (b << 16)));
            let c = match F {
                F_Q4_0 => -8.0,
                F_Q5_0 => -16.0,
                _ => 0.0,
            };
            _mm_mul_ps(_mm_movelh_ps(d, d), _mm_setr_ps(1.0, 1.0, c, c))
        };
        let d_and_m = || {
            let a = p.cast::<u32>().read_unaligned() as u64;
            let b = p.add(bb).cast::<u32>().read_unaligned() as u64;
            let v = _mm_cvtsi64_si128((a | (b << 32)) as i64);
            _mm_cvtph_ps(_mm_shufflelo_epi16::<0b11_01_10_00>(v))
        };
        let high_bits = |at: usize| {
            let a = p.add(at).cast::<u32>().read_unaligned() as u64;
            let b = p.add(bb + at).cast::<u32>().read_unaligned() as u64;
            _mm512_maskz_mov_epi8(a | (b << 32), _mm512_set1_epi8(0x10))
        };
        match F {
            F_Q4_0 => (nibbles(2), d_only()),
            F_Q4_1 => (nibbles(4), d_and_m()),
            F_Q5_0 => (_mm512_or_si512(nibbles(6), high_bits(2)), d_only()),
            F_Q5_1 => (_mm512_or_si512(nibbles(8), high_bits(4)), d_and_m()),
            _ => {
                let q = _mm512_inserti64x4::<1>(
                    _mm512_castsi256_si512(_mm256_loadu_si256(p.add(2).cast())),
                    _mm256_loadu_si256(p.add(bb + 2).cast()),
                );
                (q, d_only())
            }
        }
    }
}

/// Register tile of the 32-value formats: `MR` activation rows x `NR` weight rows.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
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
    let pair = halves(0, 1);
    let xs: [*const i8; MR] = std::array::from_fn(|i| acts.qs_ptr(i0 + i));
    let dx: [&[f32]; MR] = std::array::from_fn(|i| acts.d(i0 + i));
    let sx: [&[f32]; MR] = std::array::from_fn(|i| acts.s(i0 + i));
    let mut acc = [[_mm512_setzero_ps(); NR]; MR];
    let mut b = 0;
    while b + 2 <= nb {
        let mut wq = [_mm512_setzero_si512(); NR];
        let mut neg = [0 as __mmask64; NR];
        let mut wd = [_mm512_setzero_ps(); NR];
        let mut wc = [_mm512_setzero_ps(); NR];
        for j in 0..NR {
            // SAFETY: blocks `b`, `b + 1` of row `r + j` are in bounds (checked by `tile32`).
            let (q, dc) = unsafe { decode64::<F>(w.add(j * rb + b * bb)) };
            if F == F_Q8_0 {
                neg[j] = _mm512_movepi8_mask(q);
                wq[j] = _mm512_abs_epi8(q);
            } else {
                wq[j] = q;
            }
            wd[j] = _mm512_permutexvar_ps(pair, _mm512_castps128_ps512(dc));
            // [c0, c1, 0, ...]: the blocks' offsets, added into lanes 0 and 1.
            wc[j] = _mm512_zextps128_ps512(_mm_movehl_ps(_mm_setzero_ps(), dc));
        }
        for i in 0..MR {
            // SAFETY: activation rows hold `nb * 32` values (64-byte aligned, zero padded).
            let (xv, dxs, sxs) = unsafe {
                (
                    _mm512_loadu_si512(xs[i].add(32 * b).cast()),
                    _mm_castpd_ps(_mm_load_sd(dx[i].as_ptr().add(b).cast())),
                    _mm_castpd_ps(_mm_load_sd(sx[i].as_ptr().add(b).cast())),
                )
            };
            let dxv = _mm512_permutexvar_ps(pair, _mm512_castps128_ps512(dxs));
            let sxv = _mm512_zextps128_ps512(sxs);
            for j in 0..NR {
                let xsg = if F == F_Q8_0 {
                    _mm512_mask_sub_epi8(xv, neg[j], _mm512_setzero_si512(), xv)
                } else {
                    xv
                };
                let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wq[j], xsg);
                acc[i][j] = _mm512_fmadd_ps(
                    _mm512_cvtepi32_ps(dot),
                    _mm512_mul_ps(wd[j], dxv),
                    acc[i][j],
                );
                if F != F_Q8_0 {
                    acc[i][j] = _mm512_fmadd_ps(wc[j], sxv, acc[i][j]);
                }
            }
        }
        b += 2;
    }
    let mut res = [[0f32; NR]; MR];
    for i in 0..MR {
        for j in 0..NR {
            res[i][j] = _mm512_reduce_add_ps(acc[i][j]);
        }
    }
    if b < nb {
        // An odd last block: the scalar definition.
        let mut q = [0i16; 32];
        for j in 0..NR {
            // SAFETY: block `b` of row `r + j` is in bounds.
            let blk = unsafe { std::slice::from_raw_parts(w.add(j * rb + b * bb), bb) };
            let (d, c) = scalar::decode_block32::<F>(blk, &mut q);
            for i in 0..MR {
                let x = &acts.qs(i0 + i)[32 * b..];
                let dot = scalar::idot32(&q, x);
                res[i][j] += d * dx[i][b] * dot as f32 + c * sx[i][b];
            }
        }
    }
    for i in 0..MR {
        for j in 0..NR {
            // SAFETY: in bounds, owned by this task.
            unsafe { out.write(i0 + i, r + j, res[i][j]) };
        }
    }
}

/// Activation rows per register tile (32 vector registers).
const MR32: usize = 4;
/// Weight rows per register tile.
const NR32: usize = 3;

/// Weight rows per packed register tile (`m > MR32`).
const NRP: usize = 4;

/// 64 bytes, 64-byte aligned: the unit of the packed-weights scratch.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub(super) struct Z(pub(super) [u8; 64]);

thread_local! {
    static PACK: RefCell<Vec<Z>> = const { RefCell::new(Vec::new()) };
}

/// How a row's first blocks are laid out side by side for the integer dot products of
/// [`mk32p`]: `full` groups of 16 blocks (register lane `k` holds 4 values of block `k`), then
/// at most one group of 8 blocks (two lanes per block) and one of 4 (four lanes per block).
/// Every group fills all 16 lanes, so no multiply is spent on padding (a 256-value row, 8 blocks,
/// is one group of 8). Blocks past the groups (fewer than 4) take the pair path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Groups {
    full: usize,
    eight: bool,
    four: bool,
}

/// One group of [`Groups`]: its first block and how many register lanes each block takes.
#[derive(Clone, Copy)]
struct Group {
    first: usize,
    lanes: usize,
}

impl Group {
    /// Registers of quants (4 values per lane).
    fn regs(self) -> usize {
        8 / self.lanes
    }
    /// Units per (group, row) in the packed weights: the quants, then `d`, `c` and Q8_0's
    /// `128·Σw`, one value per lane.
    fn units(self) -> usize {
        self.regs() + 3
    }
    /// Lane `k`'s byte offset in block `first`'s row of blocks of `block_bytes`, for register 0:
    /// block `k / lanes`, values `4 (k % lanes) ..` (register `t` adds `4 t lanes` values).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    #[inline]
    fn lane_offsets(self, block_bytes: usize) -> __m512i {
        let l = self.lanes as i32;
        let b = block_bytes as i32;
        let at = |k: i32| (k / l) * b + 4 * (k % l);
        _mm512_setr_epi32(
            at(0),
            at(1),
            at(2),
            at(3),
            at(4),
            at(5),
            at(6),
            at(7),
            at(8),
            at(9),
            at(10),
            at(11),
            at(12),
            at(13),
            at(14),
            at(15),
        )
    }
    /// Lane `k`'s block, relative to `first`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    #[inline]
    fn lane_blocks(self) -> __m512i {
        let l = self.lanes as i32;
        _mm512_setr_epi32(
            0,
            1 / l,
            2 / l,
            3 / l,
            4 / l,
            5 / l,
            6 / l,
            7 / l,
            8 / l,
            9 / l,
            10 / l,
            11 / l,
            12 / l,
            13 / l,
            14 / l,
            15 / l,
        )
    }
    /// Per-block values (`16 / lanes` of them at `p`) spread to their lanes.
    ///
    /// # Safety
    /// `p` points to `16 / lanes` readable floats.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    #[inline]
    unsafe fn spread(self, p: *const f32) -> __m512 {
        if self.lanes == 1 {
            // SAFETY: 16 floats at `p`.
            unsafe { _mm512_loadu_ps(p) }
        } else {
            let n = 16 / self.lanes;
            // SAFETY: `n` floats at `p`; the masked lanes are not read.
            let v = unsafe { _mm512_maskz_loadu_ps(((1u32 << n) - 1) as __mmask16, p) };
            _mm512_permutexvar_ps(self.lane_blocks(), v)
        }
    }
}

impl Groups {
    fn of(nb: usize) -> Groups {
        let rem = nb % 16;
        Groups {
            full: nb / 16,
            eight: rem >= 8,
            four: rem % 8 >= 4,
        }
    }
    fn count(self) -> usize {
        self.full + self.eight as usize + self.four as usize
    }
    /// Blocks the groups cover (from block 0).
    fn blocks(self) -> usize {
        16 * self.full + 8 * self.eight as usize + 4 * self.four as usize
    }
    fn get(self, g: usize) -> Group {
        if g < self.full {
            Group {
                first: 16 * g,
                lanes: 1,
            }
        } else if g == self.full && self.eight {
            Group {
                first: 16 * g,
                lanes: 2,
            }
        } else {
            Group {
                first: 16 * self.full + 8 * self.eight as usize,
                lanes: 4,
            }
        }
    }
    /// Units before group `g` in the packed weights (all `NRP` rows of the groups before it).
    fn pack_offset(self, g: usize) -> usize {
        let units = |lanes| Group { first: 0, lanes }.units();
        let (eight_at, four_at) = (self.full, self.full + self.eight as usize);
        let before = g.min(self.full) * units(1)
            + (self.eight && g > eight_at) as usize * units(2)
            + (self.four && g > four_at) as usize * units(4);
        NRP * before
    }
}

/// Where things are in a packed tile of `NRP` rows (offsets in units of 64 bytes).
///
/// The first blocks are *grouped* ([`Groups`]), so an integer dot product of 16, 8 or 4 blocks
/// accumulates in one register and the float scaling is paid once per group (`mk32p`). The
/// remaining blocks `b0..nb` (fewer than 4) are packed in pairs, two 32-value blocks per
/// register, and an odd last one is done by the scalar definition.
#[derive(Clone, Copy)]
struct PackLayout {
    groups: Groups,
    b0: usize,
    np: usize,
    pair_at: usize,
    c_at: usize,
    s_at: usize,
    total: usize,
}

fn pack_layout(nb: usize, grouped: bool) -> PackLayout {
    let groups = if grouped {
        Groups::of(nb)
    } else {
        Groups::of(0)
    };
    let b0 = groups.blocks();
    let nl = nb - b0;
    let np = nl / 2;
    let pair_at = groups.pack_offset(groups.count());
    let c_at = pair_at + np * NRP * 2;
    let s_at = c_at + NRP * nl.div_ceil(16);
    let total = s_at + (np * NRP).div_ceil(8);
    PackLayout {
        groups,
        b0,
        np,
        pair_at,
        c_at,
        s_at,
        total,
    }
}

/// Bit `e` of `h` (e < 4) to bit 4 of byte `e`, for each 32-bit lane.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn spread4(h: __m512i) -> __m512i {
    let bit = |m: i32, sh: u32| {
        _mm512_sll_epi32(
            _mm512_and_si512(h, _mm512_set1_epi32(m)),
            _mm_cvtsi32_si128(sh as i32),
        )
    };
    _mm512_or_si512(
        _mm512_or_si512(bit(1, 4), bit(2, 11)),
        _mm512_or_si512(bit(4, 18), bit(8, 25)),
    )
}

/// Decodes rows `w .. w + NRP·rb` once for all the activation rows of a call (see [`PackLayout`]).
///
/// Grouped section, per group `g` and row `j`, from unit `pack_offset(g) + j·units`: the
/// group's registers of quants, register `t` lane `k` = values `4 (t·lanes + k % lanes) ..` (4 of
/// them, unpacked order) of block `first + k / lanes` (raw signed bytes for Q8_0), then per lane its
/// block's scale `d`, offset `c` (in the block's first lane only, so it is counted once) and for
/// Q8_0 `128·Σq` of the lane's quants.
/// Pair section, per pair `p` and row `j`: the 64 quants of blocks `b0 + 2p`, `+1` (`|q|` for
/// Q8_0) and the scale vector `[d0 x8, d1 x8]`; then per row the offsets `c`, then Q8_0's signs.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn pack32<const F: u8>(w: *const u8, rb: usize, nb: usize, lay: PackLayout, pk: *mut Z) {
    let bb = block_bytes(F);
    let pair = halves(0, 1);
    let nl = nb - lay.b0;
    let nlp = nl.div_ceil(16) * 16;
    let nib = _mm512_set1_epi32(0x0F0F_0F0F);
    let groups = lay.groups;
    // SAFETY: the caller provides `lay.total` units at `pk` and `NRP` whole rows at `w`; every
    // gathered dword lies inside its block.
    unsafe {
        for j in 0..NRP {
            for g in 0..groups.count() {
                let grp = groups.get(g);
                let base = w.add(j * rb + grp.first * bb);
                let u = pk
                    .add(groups.pack_offset(g) + j * grp.units())
                    .cast::<__m512i>();
                let regs = grp.regs();
                let lanes = grp.lane_offsets(bb);
                let gather = |off: usize| {
                    _mm512_i32gather_epi32::<1>(
                        _mm512_add_epi32(lanes, _mm512_set1_epi32(off as i32)),
                        base.cast(),
                    )
                };
                if F == F_Q8_0 {
                    let mut sum = _mm512_setzero_si512();
                    for t in 0..regs {
                        let v = gather(2 + 4 * t * grp.lanes);
                        _mm512_store_si512(u.add(t), v);
                        sum = _mm512_dpbusd_epi32(sum, _mm512_set1_epi8(1), v);
                    }
                    _mm512_store_si512(u.add(regs + 2), _mm512_slli_epi32::<7>(sum));
                } else {
                    let (qh_at, qs_at) = match F {
                        F_Q4_0 => (0, 2),
                        F_Q4_1 => (0, 4),
                        F_Q5_0 => (2, 6),
                        _ => (4, 8),
                    };
                    let block_at =
                        _mm512_mullo_epi32(grp.lane_blocks(), _mm512_set1_epi32(bb as i32));
                    let qh = if F == F_Q5_0 || F == F_Q5_1 {
                        _mm512_i32gather_epi32::<1>(
                            _mm512_add_epi32(block_at, _mm512_set1_epi32(qh_at)),
                            base.cast(),
                        )
                    } else {
                        _mm512_setzero_si512()
                    };
                    // Bit `4 (k % lanes)` of a lane's high bits is its first value's.
                    let lane_shift = _mm512_sub_epi32(lanes, block_at);
                    let half = regs / 2;
                    for t in 0..half {
                        // The low nibbles are values `4u ..`, the high ones `16 + 4u ..`, where
                        // `u = t·lanes + k % lanes`.
                        let v = gather(qs_at + 4 * t * grp.lanes);
                        let mut lo = _mm512_and_si512(v, nib);
                        let mut hi = _mm512_and_si512(_mm512_srli_epi32::<4>(v), nib);
                        if F == F_Q5_0 || F == F_Q5_1 {
                            let sh = |n: usize| {
                                _mm512_srlv_epi32(
                                    qh,
                                    _mm512_add_epi32(lane_shift, _mm512_set1_epi32(n as i32)),
                                )
                            };
                            lo = _mm512_or_si512(lo, spread4(sh(4 * t * grp.lanes)));
                            hi = _mm512_or_si512(hi, spread4(sh(16 + 4 * t * grp.lanes)));
                        }
                        _mm512_store_si512(u.add(t), lo);
                        _mm512_store_si512(u.add(t + half), hi);
                    }
                }
                let block_at = _mm512_mullo_epi32(grp.lane_blocks(), _mm512_set1_epi32(bb as i32));
                let dm = _mm512_i32gather_epi32::<1>(block_at, base.cast());
                let d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dm));
                let c = match F {
                    F_Q4_0 => _mm512_mul_ps(d, _mm512_set1_ps(-8.0)),
                    F_Q5_0 => _mm512_mul_ps(d, _mm512_set1_ps(-16.0)),
                    F_Q4_1 | F_Q5_1 => {
                        _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(dm)))
                    }
                    _ => _mm512_setzero_ps(),
                };
                // The offset once per block: in its first lane.
                let first_lanes: __mmask16 = match grp.lanes {
                    1 => 0xffff,
                    2 => 0x5555,
                    _ => 0x1111,
                };
                _mm512_store_ps(u.add(regs).cast(), d);
                _mm512_store_ps(u.add(regs + 1).cast(), _mm512_maskz_mov_ps(first_lanes, c));
            }
            let cs = pk.add(lay.c_at).cast::<f32>();
            let signs = pk.add(lay.s_at).cast::<u64>();
            for p in 0..lay.np {
                let (q, dc) = decode64::<F>(w.add(j * rb + (lay.b0 + 2 * p) * bb));
                let dst = pk.add(lay.pair_at + 2 * (p * NRP + j)).cast::<__m512i>();
                if F == F_Q8_0 {
                    *signs.add(p * NRP + j) = _mm512_movepi8_mask(q);
                    _mm512_store_si512(dst, _mm512_abs_epi8(q));
                } else {
                    _mm512_store_si512(dst, q);
                }
                let wd = _mm512_permutexvar_ps(pair, _mm512_castps128_ps512(dc));
                _mm512_store_ps(dst.add(1).cast(), wd);
                _mm_storeh_pd(cs.add(j * nlp + 2 * p).cast(), _mm_castps_pd(dc));
            }
        }
    }
}

/// Lays the activations out for the grouped section of [`pack32`] (see there: the same lanes, each
/// group's registers one after the other), plus 128 (as unsigned bytes) for Q8_0, whose weights
/// are the signed operand.
///
/// # Safety
/// The CPU must have the `Avx512` features.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn prepare32<const F: u8>(acts: &mut Acts) {
    let groups = Groups::of(acts.cols / 32);
    if acts.m <= MR32 || groups.count() == 0 {
        return;
    }
    let m = acts.m;
    // 32 values (half a unit) per block.
    let units = groups.blocks() / 2;
    let dst = acts.grouped_mut(units);
    for i in 0..m {
        for g in 0..groups.count() {
            let grp = groups.get(g);
            let lanes = grp.lane_offsets(32);
            for t in 0..grp.regs() {
                // SAFETY: row `i` holds `cols >= 32 · groups.blocks()` values; `dst` holds
                // `m · units` units.
                unsafe {
                    let src = acts.qs_ptr(i).add(32 * grp.first + 4 * t * grp.lanes);
                    let v = _mm512_i32gather_epi32::<1>(lanes, src.cast());
                    let v = if F == F_Q8_0 {
                        _mm512_xor_si512(v, _mm512_set1_epi8(-128))
                    } else {
                        v
                    };
                    let at = i * units + grp.first / 2 + t;
                    _mm512_store_si512(dst.cast::<__m512i>().add(at), v);
                }
            }
        }
    }
}

/// Horizontal sums of a register tile. A 4 x 4 tile is reduced as one 16 x 16 transpose-and-add
/// (45 instructions instead of 16 separate reductions of 8 each).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn reduce_tile<const MR: usize, const NR: usize>(acc: &[[__m512; NR]; MR]) -> [[f32; NR]; MR] {
    let mut res = [[0f32; NR]; MR];
    if MR == 4 && NR == 4 {
        let v: [__m512; 16] = std::array::from_fn(|n| acc[n / 4][n % 4]);
        // Halves: w[i] = [partials of v[2i] (8) | partials of v[2i + 1] (8)].
        let w: [__m512; 8] = std::array::from_fn(|i| {
            let (a, b) = (v[2 * i], v[2 * i + 1]);
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0x44>(a, b),
                _mm512_shuffle_f32x4::<0xEE>(a, b),
            )
        });
        // Quarters: z[i] quarter k = 4 partials of v[4i + k].
        let z: [__m512; 4] = std::array::from_fn(|i| {
            let (c, d) = (w[2 * i], w[2 * i + 1]);
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0x88>(c, d),
                _mm512_shuffle_f32x4::<0xDD>(c, d),
            )
        });
        // y[i] quarter k = [2 partials of v[8i + k], 2 partials of v[8i + 4 + k]].
        let y: [__m512; 2] = std::array::from_fn(|i| {
            let (g, h) = (_mm512_castps_pd(z[2 * i]), _mm512_castps_pd(z[2 * i + 1]));
            _mm512_add_ps(
                _mm512_castpd_ps(_mm512_unpacklo_pd(g, h)),
                _mm512_castpd_ps(_mm512_unpackhi_pd(g, h)),
            )
        });
        // Lane 4k + p = Σ v[4p + k].
        let sums = _mm512_add_ps(
            _mm512_shuffle_ps::<0b10_00_10_00>(y[0], y[1]),
            _mm512_shuffle_ps::<0b11_01_11_01>(y[0], y[1]),
        );
        let mut lanes = [0f32; 16];
        // SAFETY: 16 floats.
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), sums) };
        for i in 0..MR {
            for j in 0..NR {
                // v[4i + j] is in lane 4j + i.
                res[i][j] = lanes[4 * j + i];
            }
        }
    } else {
        for i in 0..MR {
            for j in 0..NR {
                res[i][j] = _mm512_reduce_add_ps(acc[i][j]);
            }
        }
    }
    res
}

/// Register tile over a packed tile (see [`pack32`]): `MR` activation rows x `NRP` weight rows.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn mk32p<const F: u8, const MR: usize, const NR: usize>(
    pk: *const Z,
    lay: PackLayout,
    w: *const u8,
    rb: usize,
    nb: usize,
    acts: &Acts,
    i0: usize,
    r: usize,
    out: OutPtr,
) {
    debug_assert_eq!(NR, NRP);
    let bb = block_bytes(F);
    let pair = halves(0, 1);
    let nl = nb - lay.b0;
    let nlp = nl.div_ceil(16) * 16;
    let xs: [*const i8; MR] = std::array::from_fn(|i| acts.qs_ptr(i0 + i));
    let dx: [&[f32]; MR] = std::array::from_fn(|i| acts.d(i0 + i));
    let sx: [&[f32]; MR] = std::array::from_fn(|i| acts.s(i0 + i));
    let mut acc = [[_mm512_setzero_ps(); NR]; MR];
    // SAFETY: `pk` holds the packed tile (`pack32`); activation rows hold `nb * 32` values, and
    // their grouped layout (`prepare32`) when there are groups.
    unsafe {
        let groups = lay.groups;
        for g in 0..groups.count() {
            let grp = groups.get(g);
            let regs = grp.regs();
            let mut iacc = [[_mm512_setzero_si512(); NR]; MR];
            let xg: [*const __m512i; MR] = std::array::from_fn(|i| {
                acts.grouped_row(i0 + i)
                    .cast::<__m512i>()
                    .add(grp.first / 2)
            });
            let wg: [*const __m512i; NR] =
                std::array::from_fn(|j| pk.add(groups.pack_offset(g) + j * grp.units()).cast());
            for t in 0..regs {
                if F == F_Q8_0 {
                    // x + 128 is the unsigned operand, the weights the signed one.
                    let xv: [__m512i; MR] =
                        std::array::from_fn(|i| _mm512_load_si512(xg[i].add(t)));
                    for j in 0..NR {
                        let wv = _mm512_load_si512(wg[j].add(t));
                        for i in 0..MR {
                            iacc[i][j] = _mm512_dpbusd_epi32(iacc[i][j], xv[i], wv);
                        }
                    }
                } else {
                    let wv: [__m512i; NR] =
                        std::array::from_fn(|j| _mm512_load_si512(wg[j].add(t)));
                    for i in 0..MR {
                        let xv = _mm512_load_si512(xg[i].add(t));
                        for j in 0..NR {
                            iacc[i][j] = _mm512_dpbusd_epi32(iacc[i][j], wv[j], xv);
                        }
                    }
                }
            }
            let dxv: [__m512; MR] =
                std::array::from_fn(|i| grp.spread(dx[i].as_ptr().add(grp.first)));
            let sxv: [__m512; MR] = std::array::from_fn(|i| {
                if F == F_Q8_0 {
                    _mm512_setzero_ps()
                } else {
                    grp.spread(sx[i].as_ptr().add(grp.first))
                }
            });
            for j in 0..NR {
                let dw = _mm512_load_ps(wg[j].add(regs).cast());
                let cw = _mm512_load_ps(wg[j].add(regs + 1).cast());
                let corr = _mm512_load_si512(wg[j].add(regs + 2));
                for i in 0..MR {
                    let ia = if F == F_Q8_0 {
                        _mm512_sub_epi32(iacc[i][j], corr)
                    } else {
                        iacc[i][j]
                    };
                    acc[i][j] = _mm512_fmadd_ps(
                        _mm512_cvtepi32_ps(ia),
                        _mm512_mul_ps(dw, dxv[i]),
                        acc[i][j],
                    );
                    if F != F_Q8_0 {
                        acc[i][j] = _mm512_fmadd_ps(cw, sxv[i], acc[i][j]);
                    }
                }
            }
        }
        let signs = pk.add(lay.s_at).cast::<u64>();
        for p in 0..lay.np {
            let b = lay.b0 + 2 * p;
            let mut xv = [_mm512_setzero_si512(); MR];
            let mut dxv = [_mm512_setzero_ps(); MR];
            for i in 0..MR {
                xv[i] = _mm512_load_si512(xs[i].add(32 * b).cast());
                let d2 = _mm_castpd_ps(_mm_load_sd(dx[i].as_ptr().add(b).cast()));
                dxv[i] = _mm512_permutexvar_ps(pair, _mm512_castps128_ps512(d2));
            }
            for j in 0..NR {
                let src = pk.add(lay.pair_at + 2 * (p * NR + j)).cast::<__m512i>();
                let wq = _mm512_load_si512(src);
                let wd = _mm512_load_ps(src.add(1).cast());
                let neg = if F == F_Q8_0 {
                    *signs.add(p * NR + j)
                } else {
                    0
                };
                for i in 0..MR {
                    let xsg = if F == F_Q8_0 {
                        _mm512_mask_sub_epi8(xv[i], neg, _mm512_setzero_si512(), xv[i])
                    } else {
                        xv[i]
                    };
                    let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wq, xsg);
                    acc[i][j] = _mm512_fmadd_ps(
                        _mm512_cvtepi32_ps(dot),
                        _mm512_mul_ps(wd, dxv[i]),
                        acc[i][j],
                    );
                }
            }
        }
        if F != F_Q8_0 {
            // Σ_b c_b · s_b over the pairs, 16 blocks per instruction.
            let cs = pk.add(lay.c_at).cast::<f32>();
            let nfull = 2 * lay.np;
            let mut t = 0;
            while t < nfull {
                let mask: __mmask16 = if nfull - t >= 16 {
                    0xffff
                } else {
                    (1u16 << (nfull - t)) - 1
                };
                let sv: [__m512; MR] = std::array::from_fn(|i| {
                    _mm512_maskz_loadu_ps(mask, sx[i].as_ptr().add(lay.b0 + t))
                });
                for j in 0..NR {
                    let cv = _mm512_maskz_loadu_ps(mask, cs.add(j * nlp + t));
                    for i in 0..MR {
                        acc[i][j] = _mm512_fmadd_ps(cv, sv[i], acc[i][j]);
                    }
                }
                t += 16;
            }
        }
    }
    let res = reduce_tile(&acc);
    let mut res = res;
    if nl % 2 == 1 {
        let b = nb - 1;
        let mut q = [0i16; 32];
        for j in 0..NR {
            // SAFETY: block `b` of row `r + j` is in bounds.
            let blk = unsafe { std::slice::from_raw_parts(w.add(j * rb + b * bb), bb) };
            let (d, c) = scalar::decode_block32::<F>(blk, &mut q);
            for i in 0..MR {
                let dot = scalar::idot32(&q, &acts.qs(i0 + i)[32 * b..]);
                res[i][j] += d * dx[i][b] * dot as f32 + c * sx[i][b];
            }
        }
    }
    for i in 0..MR {
        for j in 0..NR {
            // SAFETY: in bounds, owned by this task.
            unsafe { out.write(i0 + i, r + j, res[i][j]) };
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn tile32<const F: u8>(
    w: &WeightMatrix,
    r0: usize,
    r1: usize,
    acts: &Acts,
    out: OutPtr,
) {
    let rb = w.row_bytes();
    let nb = w.cols() / 32;
    let base = w.data().as_ptr();
    let m = acts.m;
    let mut pf = Prefetcher::new(base, r0 * rb, r1 * rb);
    // More activation rows than one register tile: decode each tile of `NRP` weight rows once
    // into scratch and run every group of `MR32` activation rows over it. (Keeping several packed
    // tiles per pass over the activations measured slower.)
    let packed = m > MR32 && nb >= 2;
    let lay = pack_layout(nb, acts.grouped_ready(Groups::of(nb).blocks() / 2));
    let mut scratch = PACK.with(|p| p.take());
    if packed && scratch.len() < lay.total {
        scratch.resize(lay.total, Z([0; 64]));
    }
    let mut r = r0;
    while packed && r1 - r >= NRP {
        pf.advance((r + NRP) * rb);
        // SAFETY: `scratch` holds `lay.total` units; rows `r..r + NRP` are in bounds.
        let wp = unsafe { base.add(r * rb) };
        unsafe { pack32::<F>(wp, rb, nb, lay, scratch.as_mut_ptr()) };
        let mut i = 0;
        while i < m {
            let mr = (m - i).min(MR32);
            // SAFETY: as above; activation rows `i..i + mr` are in bounds.
            unsafe {
                let pk = scratch.as_ptr();
                by_mr!(mk32p, F, NRP, mr, pk, lay, wp, rb, nb, acts, i, r, out)
            }
            i += mr;
        }
        r += NRP;
    }
    while r < r1 {
        let nr = if r1 - r >= NR32 { NR32 } else { 1 };
        pf.advance((r + nr) * rb);
        // SAFETY: `r + nr <= rows`.
        let wp = unsafe { base.add(r * rb) };
        let mut i = 0;
        while i < m {
            let mr = (m - i).min(MR32);
            // SAFETY: rows and activation rows in bounds.
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
    PACK.with(|p| p.replace(scratch));
}

// ---------------------------------------------------------------------------------------------
// k-quants against Q8K activations.

/// Register tile of Q4K / Q5K.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
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
    let low4 = _mm512_set1_epi8(0x0F);
    let xs: [*const i8; MR] = std::array::from_fn(|i| acts.qs_ptr(i0 + i));
    let dx: [&[f32]; MR] = std::array::from_fn(|i| acts.d(i0 + i));
    let bs: [&[i16]; MR] = std::array::from_fn(|i| acts.bsums(i0 + i));
    let mut facc = [[_mm512_setzero_ps(); NR]; MR];
    for sb in 0..nsb {
        let mut scz = [_mm512_setzero_si512(); NR];
        let mut mins = [_mm256_setzero_si256(); NR];
        let mut dd = [(0f32, 0f32); NR];
        let mut iacc = [[_mm512_setzero_si512(); NR]; MR];
        for j in 0..NR {
            // SAFETY: super-block `sb` of row `r + j` is in bounds.
            let p = unsafe { std::slice::from_raw_parts(w.add(j * rb + sb * bb), bb) };
            dd[j] = (f16_at(p, 0), f16_at(p, 2));
            let (sc, mn) = k4_scales(&p[4..16]);
            let sc = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(i64::from_le_bytes(sc)));
            scz[j] = _mm512_castsi128_si512(sc);
            let mn = _mm_cvtsi64_si128(i64::from_le_bytes(mn));
            mins[j] = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mn, mn));
        }
        for g in 0..4 {
            let idx = idx16_halves(2 * g as i16, 2 * g as i16 + 1);
            let mut q = [_mm512_setzero_si512(); NR];
            let mut s = [_mm512_setzero_si512(); NR];
            for j in 0..NR {
                // SAFETY: in bounds as above.
                unsafe {
                    let p = w.add(j * rb + sb * bb);
                    let v = _mm256_loadu_si256(p.add(qs_at + 32 * g).cast());
                    let z = _mm512_inserti64x4::<1>(
                        _mm512_castsi256_si512(v),
                        _mm256_srli_epi16::<4>(v),
                    );
                    q[j] = _mm512_and_si512(z, low4);
                    if F == F_Q5K {
                        let h = _mm256_loadu_si256(p.add(16).cast());
                        let k0 = _mm256_test_epi8_mask(h, _mm256_set1_epi8((1u8 << (2 * g)) as i8));
                        let k1 =
                            _mm256_test_epi8_mask(h, _mm256_set1_epi8((1u8 << (2 * g + 1)) as i8));
                        let k = k0 as u64 | ((k1 as u64) << 32);
                        q[j] = _mm512_mask_add_epi8(q[j], k, q[j], _mm512_set1_epi8(0x10));
                    }
                }
                s[j] = _mm512_permutexvar_epi16(idx, scz[j]);
            }
            for i in 0..MR {
                // SAFETY: activation rows hold `nsb * 256` values.
                let xv = unsafe { _mm512_load_si512(xs[i].add(256 * sb + 64 * g).cast()) };
                for j in 0..NR {
                    let prod = _mm512_maddubs_epi16(q[j], xv);
                    iacc[i][j] = _mm512_dpwssd_epi32(iacc[i][j], prod, s[j]);
                }
            }
        }
        for i in 0..MR {
            // SAFETY: 16 sums per super-block.
            let b16 = unsafe { _mm256_loadu_si256(bs[i].as_ptr().add(16 * sb).cast()) };
            let dxi = dx[i][sb];
            for j in 0..NR {
                let mi = _mm256_cvtepi32_ps(_mm256_madd_epi16(mins[j], b16));
                let t = _mm512_mul_ps(
                    _mm512_cvtepi32_ps(iacc[i][j]),
                    _mm512_set1_ps(dd[j].0 * dxi),
                );
                let t =
                    _mm512_fnmadd_ps(_mm512_zextps256_ps512(mi), _mm512_set1_ps(dd[j].1 * dxi), t);
                facc[i][j] = _mm512_add_ps(facc[i][j], t);
            }
        }
    }
    for i in 0..MR {
        for j in 0..NR {
            // SAFETY: in bounds, owned by this task.
            unsafe { out.write(i0 + i, r + j, _mm512_reduce_add_ps(facc[i][j])) };
        }
    }
}

/// Register tile of Q6K.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
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
    let low4 = _mm512_set1_epi8(0x0F);
    let three = _mm512_set1_epi8(3);
    let top = _mm512_set1_epi8(0x30);
    let xs: [*const i8; MR] = std::array::from_fn(|i| acts.qs_ptr(i0 + i));
    let dx: [&[f32]; MR] = std::array::from_fn(|i| acts.d(i0 + i));
    let bs: [&[i16]; MR] = std::array::from_fn(|i| acts.bsums(i0 + i));
    let mut facc = [[_mm512_setzero_ps(); NR]; MR];
    for sb in 0..nsb {
        let mut scz = [_mm512_setzero_si512(); NR];
        let mut off = [_mm256_setzero_si256(); NR];
        let mut d = [0f32; NR];
        let mut iacc = [[_mm512_setzero_si512(); NR]; MR];
        for j in 0..NR {
            // SAFETY: super-block `sb` of row `r + j` is in bounds.
            unsafe {
                let p = w.add(j * rb + sb * bb);
                d[j] = half::f16::from_bits(p.add(208).cast::<u16>().read_unaligned()).to_f32();
                let s16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(192).cast()));
                scz[j] = _mm512_castsi256_si512(s16);
                off[j] = _mm256_mullo_epi16(s16, _mm256_set1_epi16(-32));
            }
        }
        // Quarter `qq` = values 64qq..64qq + 64 = half `qq / 2`, low (`qq` even) or high nibbles.
        for qq in 0..4 {
            let (h, high) = (qq / 2, qq % 2 == 1);
            let idx = idx16_quarters(4 * qq as i32);
            let mut q = [_mm512_setzero_si512(); NR];
            let mut s = [_mm512_setzero_si512(); NR];
            for j in 0..NR {
                // SAFETY: `ql` at 0..128 and `qh` at 128..192 of the block.
                unsafe {
                    let p = w.add(j * rb + sb * bb);
                    let a = _mm512_loadu_si512(p.add(64 * h).cast());
                    let hq = _mm256_loadu_si256(p.add(128 + 32 * h).cast());
                    let hz = _mm512_inserti64x4::<1>(
                        _mm512_castsi256_si512(hq),
                        _mm256_srli_epi16::<2>(hq),
                    );
                    q[j] = if high {
                        _mm512_or_si512(
                            _mm512_and_si512(_mm512_srli_epi16::<4>(a), low4),
                            _mm512_and_si512(hz, top),
                        )
                    } else {
                        _mm512_or_si512(
                            _mm512_and_si512(a, low4),
                            _mm512_slli_epi16::<4>(_mm512_and_si512(hz, three)),
                        )
                    };
                }
                s[j] = _mm512_permutexvar_epi16(idx, scz[j]);
            }
            for i in 0..MR {
                // SAFETY: activation rows hold `nsb * 256` values.
                let xv = unsafe { _mm512_load_si512(xs[i].add(256 * sb + 64 * qq).cast()) };
                for j in 0..NR {
                    let prod = _mm512_maddubs_epi16(q[j], xv);
                    iacc[i][j] = _mm512_dpwssd_epi32(iacc[i][j], prod, s[j]);
                }
            }
        }
        for i in 0..MR {
            // SAFETY: 16 sums per super-block.
            let b16 = unsafe { _mm256_loadu_si256(bs[i].as_ptr().add(16 * sb).cast()) };
            let dxi = dx[i][sb];
            for j in 0..NR {
                let o = _mm512_zextsi256_si512(_mm256_madd_epi16(off[j], b16));
                let tot = _mm512_add_epi32(iacc[i][j], o);
                facc[i][j] = _mm512_fmadd_ps(
                    _mm512_cvtepi32_ps(tot),
                    _mm512_set1_ps(d[j] * dxi),
                    facc[i][j],
                );
            }
        }
    }
    for i in 0..MR {
        for j in 0..NR {
            // SAFETY: in bounds, owned by this task.
            unsafe { out.write(i0 + i, r + j, _mm512_reduce_add_ps(facc[i][j])) };
        }
    }
}

const MRK: usize = 4;
const NRK: usize = 2;

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn tile_k<const F: u8>(w: &WeightMatrix, r0: usize, r1: usize, acts: &Acts, out: OutPtr) {
    let rb = w.row_bytes();
    let nsb = w.cols() / 256;
    let base = w.data().as_ptr();
    let m = acts.m;
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

/// The activation preparation for kernel format `f`, if it needs one beyond quantization.
pub(super) fn prepare_fn(f: u8) -> Option<PrepareFn> {
    let p: PrepareFn = match f {
        F_Q4_0 => prepare32::<F_Q4_0>,
        F_Q4_1 => prepare32::<F_Q4_1>,
        F_Q5_0 => prepare32::<F_Q5_0>,
        F_Q5_1 => prepare32::<F_Q5_1>,
        F_Q8_0 => prepare32::<F_Q8_0>,
        _ => return None,
    };
    Some(p)
}

/// The AVX-512 tile kernel for kernel format `f`, and its preferred row grain.
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
    Some((t, if f >= F_Q4K { NRK } else { 12 }))
}

// ---------------------------------------------------------------------------------------------
// Float path.

/// `out[i][j] = x[i] · w[j]` over `n` values.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn dots_f32<const MR: usize, const NR: usize>(
    x: [*const f32; MR],
    w: [*const f32; NR],
    n: usize,
) -> [[f32; NR]; MR] {
    let mut acc = [[_mm512_setzero_ps(); NR]; MR];
    let mut k = 0;
    while k < n {
        let mask: __mmask16 = if n - k >= 16 {
            0xffff
        } else {
            (1u16 << (n - k)) - 1
        };
        // SAFETY: masked loads read only the `n` floats the caller guarantees.
        unsafe {
            let wv: [__m512; NR] =
                std::array::from_fn(|j| _mm512_maskz_loadu_ps(mask, w[j].add(k)));
            for i in 0..MR {
                let xv = _mm512_maskz_loadu_ps(mask, x[i].add(k));
                for j in 0..NR {
                    acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
                }
            }
        }
        k += 16;
    }
    let mut res = [[0f32; NR]; MR];
    for i in 0..MR {
        for j in 0..NR {
            res[i][j] = _mm512_reduce_add_ps(acc[i][j]);
        }
    }
    res
}

/// Float tile, as `avx2::float_tile`.
///
/// # Safety
/// The CPU must have the `Avx512` features; `x` rows `i0..i0 + mr` and the `w` rows hold `n` floats.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduce_tile_4x4() {
        if !super::super::Isa::Avx512.is_available() {
            return;
        }
        let mut vals = [[[0f32; 16]; 4]; 4];
        for i in 0..4 {
            for j in 0..4 {
                for l in 0..16 {
                    vals[i][j][l] = ((i * 4 + j) * 100 + l) as f32;
                }
            }
        }
        // SAFETY: AVX-512 checked above.
        unsafe {
            let acc: [[__m512; 4]; 4] = std::array::from_fn(|i| {
                std::array::from_fn(|j| _mm512_loadu_ps(vals[i][j].as_ptr()))
            });
            let got = reduce_tile(&acc);
            for i in 0..4 {
                for j in 0..4 {
                    let want: f32 = vals[i][j].iter().sum();
                    assert_eq!(got[i][j], want, "({i}, {j}): {got:?}");
                }
            }
        }
    }
}
