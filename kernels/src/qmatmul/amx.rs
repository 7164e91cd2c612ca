//! Intel AMX (Advanced Matrix Extensions) kernels for the 32-value formats (Q4_0, Q4_1, Q5_0,
//! Q5_1, Q8_0) when a call has more than a few activation rows (prefill, batched decode, the
//! router's encoders).
//!
//! One `tdpbssd` / `tdpbusd` multiplies a 16 x 32 tile of weight quants (16 weight rows, one
//! 32-value block) by a 32 x 16 tile of activation quants (16 activation rows) into a 16 x 16 tile
//! of i32 sums: 8,192 multiply-adds in one instruction, against 64 for AVX-512's `vpdpbusd`. The
//! sums of one block are then scaled in float with AVX-512 (`d_w · d_x`), so the float work, not
//! the multiplies, sets the pace. The offset formats' share, `Σ c_w · s_x` (Q4_1's minimum, Q4_0's
//! `-8 d`), is summed apart and added last, as GGML's `vec_dot_q4_1_q8_1` sums it.
//!
//! Layout: the weights are the tiles' `A` operand, read straight from the GGUF blocks for Q8_0
//! (16 rows of 32 quants, `row_bytes` apart) and unpacked to one byte per value once per 16 weight
//! rows for the 4- and 5-bit formats; the activations are the `B` operand, laid out by [`prepare32`]
//! once per call in the pairing AMX expects (row `r` of a block's tile holds values `4r .. 4r + 4` of
//! each of the 16 activation rows side by side), with each block's 16 scales `d_x` and `s_x` beside
//! them. Rows past `m` in the last 16 are zeros. The accumulator tile is `[weight row][activation
//! row]`, transposed once per 16 x 16 outputs when written.
//!
//! The operating system must grant the process the tile state first (`arch_prctl`
//! `ARCH_REQ_XCOMP_PERM`, Linux 5.16+): [`available`] asks once. Every function here except
//! [`available`] requires [`super::Isa::Amx`]'s features.

use super::act::Acts;
use super::avx512::{self, Z};
use super::layout::*;
use super::{OutPtr, PrepareFn, TileFn, WeightMatrix};
use core::arch::x86_64::*;
use std::arch::asm;
use std::cell::RefCell;

/// Fewest activation rows that take the tiles (fewer: the AVX-512 kernels, which stream the
/// weights once for all rows).
const MIN_M: usize = 5;

/// The most columns a matrix may have for these kernels: their gathers address 16 rows of weights
/// or activations at `lane · row bytes` in 32-bit lanes, which stays below `i32::MAX` up to here
/// (Q8_0, the widest format, at 34 bytes per 32 values, and an activation row's padding included).
pub(super) const MAX_COLS: usize = 1 << 26;
/// Rows (and columns of i32) of a tile.
const T: usize = 16;
/// 64-byte units per (16 activation rows, block) in the prepared activations: the `B` tile (8 rows
/// of 64 bytes), then the 16 `d_x`, then the 16 `s_x`.
const ACT_UNITS: usize = 10;

/// Whether this CPU has AMX-TILE and AMX-INT8, the OS saves their state, and the process may use
/// it (asked of the kernel once).
pub(super) fn available() -> bool {
    static READY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *READY.get_or_init(|| {
        let leaf7 = __cpuid_count(7, 0);
        let tile = leaf7.edx & (1 << 24) != 0;
        let int8 = leaf7.edx & (1 << 25) != 0;
        let osxsave = __cpuid(1).ecx & (1 << 27) != 0;
        if !(tile && int8 && osxsave) {
            return false;
        }
        // XCR0 bits 17 (XTILECFG) and 18 (XTILEDATA): the OS manages the tile state.
        // SAFETY: OSXSAVE is set, so XGETBV is enabled.
        let xcr0 = unsafe { xgetbv0() };
        if xcr0 & (3 << 17) != 3 << 17 {
            return false;
        }
        request_tile_permission()
    })
}

/// XCR0.
#[target_feature(enable = "xsave")]
unsafe fn xgetbv0() -> u64 {
    _xgetbv(0)
}

#[cfg(target_os = "linux")]
fn request_tile_permission() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call with integer arguments.
    let r = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    if r != 0 {
        tracing::info!(
            "the CPU has AMX but the OS did not grant the tile state ({}); using AVX-512",
            std::io::Error::last_os_error()
        );
    }
    r == 0
}

#[cfg(not(target_os = "linux"))]
fn request_tile_permission() -> bool {
    false
}

/// The tile configuration (palette 1): tile 0 the 16 x 16 i32 sums, tile 1 the weights (16 rows
/// of 32 bytes), tile 2 the activations (8 rows of 64 bytes).
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn new() -> TileConfig {
        let mut c = [0u8; 64];
        c[0] = 1;
        for (tile, rows, bytes) in [(0usize, 16u8, 64u16), (1, 16, 32), (2, 8, 64)] {
            c[16 + 2 * tile..18 + 2 * tile].copy_from_slice(&bytes.to_le_bytes());
            c[48 + tile] = rows;
        }
        TileConfig(c)
    }
}

thread_local! {
    /// Unpacked weight quants (16 rows x 32 bytes per block) and the 16 rows' `d`, `c` per block.
    static PACK: RefCell<Vec<Z>> = const { RefCell::new(Vec::new()) };
}

/// Lays the activations out as the tiles' `B` operand (see the module docs).
///
/// # Safety
/// The CPU must have [`super::Isa::Amx`]'s features.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn prepare32(acts: &mut Acts) {
    let (m, nb) = (acts.m, acts.cols / 32);
    if m < MIN_M {
        return;
    }
    let tiles = m.div_ceil(T);
    let stride = acts.stride() as i32;
    let q_at = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(stride),
    );
    let s_at = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(nb as i32),
    );
    let (qs, d, s) = (acts.qs_base(), acts.d_base(), acts.s_base());
    let dst = acts.tiles_mut(tiles * nb * ACT_UNITS).cast::<__m512i>();
    for t in 0..tiles {
        let rows = (m - T * t).min(T);
        let mask = ((1u32 << rows) - 1) as __mmask16;
        for b in 0..nb {
            // SAFETY: the gathers read rows `T t .. T t + rows` (< m) of the quants and scales at
            // block `b`; `dst` holds `tiles · nb · ACT_UNITS` units.
            unsafe {
                let u = dst.add((t * nb + b) * ACT_UNITS);
                let q = qs.add(T * t * stride as usize + 32 * b);
                for r in 0..8 {
                    let v = _mm512_mask_i32gather_epi32::<1>(
                        _mm512_setzero_si512(),
                        mask,
                        q_at,
                        q.add(4 * r).cast(),
                    );
                    _mm512_store_si512(u.add(r), v);
                }
                let at = T * t * nb + b;
                let dx = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), mask, s_at, d.add(at));
                let sx = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), mask, s_at, s.add(at));
                _mm512_store_ps(u.add(8).cast(), dx);
                _mm512_store_ps(u.add(9).cast(), sx);
            }
        }
    }
}

/// Block `b`'s scales `d` and offsets `c` (in the value's units: `-8d`, `-16d` or `m`) of the 16
/// weight rows at `w` (`rb` bytes apart).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn block_scales<const F: u8>(w: *const u8, rb: usize, b: usize) -> (__m512, __m512) {
    let rows = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(rb as i32),
    );
    // SAFETY: the caller's rows hold block `b`; each gathered dword is its first 4 bytes.
    let dm = unsafe { _mm512_i32gather_epi32::<1>(rows, w.add(b * block_bytes(F)).cast()) };
    let d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dm));
    let c = match F {
        F_Q4_0 => _mm512_mul_ps(d, _mm512_set1_ps(-8.0)),
        F_Q5_0 => _mm512_mul_ps(d, _mm512_set1_ps(-16.0)),
        F_Q4_1 | F_Q5_1 => _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(dm))),
        _ => _mm512_setzero_ps(),
    };
    (d, c)
}

/// Block `b` of the 16 weight rows at `w` as one byte per value (0..15, or 0..31 with the fifth
/// bits), row `n` at `dst + 32 n`, in value order.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn unpack_block<const F: u8>(w: *const u8, rb: usize, b: usize, dst: *mut u8) {
    let bb = block_bytes(F);
    let qs_at = match F {
        F_Q4_0 => 2,
        F_Q4_1 => 4,
        F_Q5_0 => 6,
        _ => 8,
    };
    let nib = _mm_set1_epi8(0x0F);
    for n in 0..T {
        // SAFETY: row `n`'s block `b` is in bounds; `dst` holds 16 x 32 bytes.
        unsafe {
            let blk = w.add(n * rb + b * bb);
            let q = _mm_loadu_si128(blk.add(qs_at).cast());
            let lo = _mm_and_si128(q, nib);
            let hi = _mm_and_si128(_mm_srli_epi16::<4>(q), nib);
            let mut v = _mm256_set_m128i(hi, lo);
            if F == F_Q5_0 || F == F_Q5_1 {
                let qh = blk.add(qs_at - 4).cast::<u32>().read_unaligned();
                v = _mm256_or_si256(v, _mm256_maskz_set1_epi8(qh, 0x10));
            }
            _mm256_store_si256(dst.add(32 * n).cast(), v);
        }
    }
}

/// One block's product: tile 0 = the `A` tile (16 rows of 32 bytes at `a`, `a_stride` apart) x
/// the `B` tile (8 rows of 64 bytes at `b`), stored to `c` (16 rows of 16 i32). Signed x signed
/// for Q8_0, unsigned x signed for the 4- and 5-bit formats.
///
/// # Safety
/// The tiles are configured ([`TileConfig`]), the operands readable and `c` 1 KiB writable.
#[inline(always)]
unsafe fn multiply_block<const F: u8>(a: *const u8, a_stride: usize, b: *const u8, c: *mut Z) {
    macro_rules! product {
        ($op:literal) => {
            // SAFETY: the caller's contract.
            unsafe {
                asm!(
                    "tilezero tmm0",
                    "tileloadd tmm1, [{a} + {sa}*1]",
                    "tileloadd tmm2, [{b} + {s}*1]",
                    concat!($op, " tmm0, tmm1, tmm2"),
                    "tilestored [{c} + {s}*1], tmm0",
                    a = in(reg) a,
                    sa = in(reg) a_stride,
                    b = in(reg) b,
                    s = in(reg) 64usize,
                    c = in(reg) c,
                    options(nostack),
                )
            }
        };
    }
    if F == F_Q8_0 {
        product!("tdpbssd");
    } else {
        product!("tdpbusd");
    }
}

/// Writes a 16 x 16 tile of outputs kept transposed (`acc[n]` lane `i` is output row `row0 + i`,
/// column `col0 + n`) for its first `rows` rows.
///
/// # Safety
/// Those outputs are in bounds and owned by the caller's task.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn write_transposed(acc: &[__m512; T], rows: usize, out: OutPtr, row0: usize, col0: usize) {
    let mut tile = [Z([0; 64]); T];
    for (t, a) in tile.iter_mut().zip(acc) {
        // SAFETY: 64 bytes.
        unsafe { _mm512_store_ps(t.0.as_mut_ptr().cast(), *a) };
    }
    let column = _mm512_setr_epi32(
        0, 16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240,
    );
    for i in 0..rows {
        // SAFETY: `tile` is 256 floats; the caller's contract for the output.
        unsafe {
            let v = _mm512_i32gather_ps::<4>(
                _mm512_add_epi32(column, _mm512_set1_epi32(i as i32)),
                tile.as_ptr().cast(),
            );
            _mm512_storeu_ps(out.row_ptr(row0 + i, col0), v);
        }
    }
}

/// Rows `r0..r1` of the output for all activation rows: whole groups of 16 weight rows on the
/// tiles, the rest (and calls with fewer than [`MIN_M`] activation rows) on AVX-512.
///
/// # Safety
/// The CPU must have [`super::Isa::Amx`]'s features; rows `r0..r1` are in bounds and owned by
/// this task; `acts` holds the call's activations, prepared by [`prepare32`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn tile32<const F: u8>(w: &WeightMatrix, r0: usize, r1: usize, acts: &Acts, out: OutPtr) {
    let m = acts.m;
    let full = (r1 - r0) / T * T;
    if m < MIN_M || full == 0 || !acts.tiles_ready() {
        // SAFETY: the same contract.
        return unsafe { avx512::tile32::<F>(w, r0, r1, acts, out) };
    }
    let rb = w.row_bytes();
    let nb = w.cols() / 32;
    let bb = block_bytes(F);
    let base = w.data().as_ptr();
    let tiles = m.div_ceil(T);
    let act_tiles = acts.tiles_base();
    // Per block: 16 rows x 32 bytes of unpacked quants (not for Q8_0), then d and c.
    let per_block = if F == F_Q8_0 { 2 } else { 10 };
    let mut pack = PACK.with(|p| p.take());
    if pack.len() < nb * per_block {
        pack.resize(nb * per_block, Z([0; 64]));
    }
    let pk = pack.as_mut_ptr();
    let mut c = [Z([0; 64]); T];
    let config = TileConfig::new();
    // SAFETY: the tile state is granted (`available`); the configuration is valid.
    unsafe { asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack)) };
    let mut n0 = r0;
    while n0 < r0 + full {
        // SAFETY: rows `n0 .. n0 + 16` are in bounds; `pk` holds `nb · per_block` units.
        let wrow = unsafe { base.add(n0 * rb) };
        for b in 0..nb {
            // SAFETY: as above.
            unsafe {
                let u = pk.add(b * per_block);
                if F != F_Q8_0 {
                    unpack_block::<F>(wrow, rb, b, u.cast());
                }
                let (d, cw) = block_scales::<F>(wrow, rb, b);
                _mm512_store_ps(u.add(per_block - 2).cast(), d);
                _mm512_store_ps(u.add(per_block - 1).cast(), cw);
            }
        }
        for t in 0..tiles {
            let mut acc = [_mm512_setzero_ps(); T];
            for b in 0..nb {
                // SAFETY: the `A` tile is 16 rows of 32 bytes (the block's quants in the weights,
                // or unpacked in `pk`), the `B` tile 8 rows of 64 bytes of the prepared
                // activations; the sums go to `c` (16 x 64 bytes).
                unsafe {
                    let u = pk.add(b * per_block);
                    let (a, a_stride) = if F == F_Q8_0 {
                        (wrow.add(b * bb + 2), rb)
                    } else {
                        (u.cast::<u8>().cast_const(), 32)
                    };
                    let bt = act_tiles.add((t * nb + b) * ACT_UNITS * 64);
                    multiply_block::<F>(a, a_stride, bt, c.as_mut_ptr());
                    let dx = _mm512_load_ps(bt.add(8 * 64).cast());
                    let dw = u.add(per_block - 2).cast::<f32>();
                    for (n, (a, ci)) in acc.iter_mut().zip(&c).enumerate() {
                        let ci = _mm512_load_si512(ci.0.as_ptr().cast());
                        let scale = _mm512_mul_ps(dx, _mm512_set1_ps(*dw.add(n)));
                        *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ci), scale, *a);
                    }
                }
            }
            if F != F_Q8_0 {
                // The offsets' share, Σ_b c_b · s_b, summed apart and added last (as GGML does).
                let mut offs = [_mm512_setzero_ps(); T];
                for b in 0..nb {
                    // SAFETY: in bounds of `pk` and the prepared activations.
                    unsafe {
                        let sx = _mm512_load_ps(
                            act_tiles.add(((t * nb + b) * ACT_UNITS + 9) * 64).cast(),
                        );
                        let cw = pk.add(b * per_block + per_block - 1).cast::<f32>();
                        for (n, o) in offs.iter_mut().enumerate() {
                            *o = _mm512_fmadd_ps(sx, _mm512_set1_ps(*cw.add(n)), *o);
                        }
                    }
                }
                for (a, o) in acc.iter_mut().zip(offs) {
                    *a = _mm512_add_ps(*a, o);
                }
            }
            let rows = (m - T * t).min(T);
            // SAFETY: rows `T t .. T t + rows` (< m) and columns `n0 .. n0 + 16` are this task's.
            unsafe { write_transposed(&acc, rows, out, T * t, n0) };
        }
        n0 += T;
    }
    // SAFETY: leaves the tiles in their initial state (cheap context switches).
    unsafe { asm!("tilerelease", options(nostack)) };
    PACK.with(|p| p.replace(pack));
    if r0 + full < r1 {
        // SAFETY: the same contract, for the rows left.
        unsafe { avx512::tile32::<F>(w, r0 + full, r1, acts, out) };
    }
}

/// The activation preparation for kernel format `f` on AMX.
pub(super) fn prepare_fn(f: u8) -> Option<PrepareFn> {
    match f {
        F_Q4_0 | F_Q4_1 | F_Q5_0 | F_Q5_1 | F_Q8_0 => Some(prepare32),
        _ => None,
    }
}

/// The AMX tile kernel for kernel format `f` and its row grain (whole tiles of 16 rows).
pub(super) fn tile_fn(f: u8) -> Option<(TileFn, usize)> {
    let t: TileFn = match f {
        F_Q4_0 => tile32::<F_Q4_0>,
        F_Q4_1 => tile32::<F_Q4_1>,
        F_Q5_0 => tile32::<F_Q5_0>,
        F_Q5_1 => tile32::<F_Q5_1>,
        F_Q8_0 => tile32::<F_Q8_0>,
        _ => return None,
    };
    Some((t, T))
}
