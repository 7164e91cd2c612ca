//! Portable integer kernels: the fallback on CPUs without AVX2 (and on other architectures), and
//! the definition of the block formats' integer math that the SIMD kernels must agree with.
//!
//! Each weight row is decoded once into thread-local scratch (quants as `i16`, per-block float
//! scales), then dotted with every quantized activation row.

use super::act::Acts;
use super::layout::*;
use super::{OutPtr, WeightMatrix};
use std::cell::RefCell;

/// Decodes one 32-value block of format `F` at `p` into integer quants `q` and `(d, c)` such that the
/// block's value `k` is `d·q[k] + c`.
///
/// Q4_0 / Q5_0 are decoded unsigned (`q` in `0..16` / `0..32`, `c = -8d` / `-16d`), Q4_1 / Q5_1 as
/// `d·q + m`, Q8_0 signed with `c = 0`: the kernels use `c` with the activation block's `s = dx·Σqx`.
#[inline(always)]
pub(crate) fn decode_block32<const F: u8>(p: &[u8], q: &mut [i16; 32]) -> (f32, f32) {
    let d = f16_at(p, 0);
    match F {
        F_Q4_0 | F_Q4_1 => {
            let qs = &p[if F == F_Q4_0 { 2 } else { 4 }..][..16];
            for k in 0..16 {
                q[k] = (qs[k] & 0x0F) as i16;
                q[k + 16] = (qs[k] >> 4) as i16;
            }
            if F == F_Q4_0 {
                (d, -8.0 * d)
            } else {
                (d, f16_at(p, 2))
            }
        }
        F_Q5_0 | F_Q5_1 => {
            let (qh_at, qs_at) = if F == F_Q5_0 { (2, 6) } else { (4, 8) };
            let qh = u32::from_le_bytes([p[qh_at], p[qh_at + 1], p[qh_at + 2], p[qh_at + 3]]);
            let qs = &p[qs_at..][..16];
            for k in 0..16 {
                q[k] = ((qs[k] & 0x0F) | ((((qh >> k) & 1) as u8) << 4)) as i16;
                q[k + 16] = ((qs[k] >> 4) | ((((qh >> (k + 16)) & 1) as u8) << 4)) as i16;
            }
            if F == F_Q5_0 {
                (d, -16.0 * d)
            } else {
                (d, f16_at(p, 2))
            }
        }
        _ => {
            for (qv, &b) in q.iter_mut().zip(&p[2..34]) {
                *qv = b as i8 as i16;
            }
            (d, 0.0)
        }
    }
}

/// Integer dot product of 32 decoded weight quants with 32 activation quants.
#[inline(always)]
pub(crate) fn idot32(q: &[i16], x: &[i8]) -> i32 {
    q[..32]
        .iter()
        .zip(&x[..32])
        .map(|(&a, &b)| a as i32 * b as i32)
        .sum()
}

/// One decoded k-quant super-block: 256 quants, per-16 integer scales and minimums, and the two
/// float super-scales, such that value `k` is `d·sc[k/16]·q[k] - dmin·mn[k/16]`.
pub(crate) struct DecodedK {
    pub q: [i16; 256],
    pub sc: [i16; 16],
    pub mn: [i16; 16],
    pub d: f32,
    pub dmin: f32,
}

impl DecodedK {
    pub const fn new() -> Self {
        Self {
            q: [0; 256],
            sc: [0; 16],
            mn: [0; 16],
            d: 0.0,
            dmin: 0.0,
        }
    }
}

/// Decodes one k-quant super-block of format `F` (Q4K, Q5K or Q6K) at `p` into `out`.
#[inline(always)]
pub(crate) fn decode_block_k<const F: u8>(p: &[u8], out: &mut DecodedK) {
    match F {
        F_Q4K | F_Q5K => {
            out.d = f16_at(p, 0);
            out.dmin = f16_at(p, 2);
            let (sc, mn) = k4_scales(&p[4..16]);
            for k in 0..8 {
                out.sc[2 * k] = sc[k] as i16;
                out.sc[2 * k + 1] = sc[k] as i16;
                out.mn[2 * k] = mn[k] as i16;
                out.mn[2 * k + 1] = mn[k] as i16;
            }
            let qs_at = if F == F_Q4K { 16 } else { 48 };
            for g in 0..4 {
                let qs = &p[qs_at + 32 * g..][..32];
                for l in 0..32 {
                    let mut lo = qs[l] & 0x0F;
                    let mut hi = qs[l] >> 4;
                    if F == F_Q5K {
                        let qh = p[16 + l];
                        lo |= ((qh >> (2 * g)) & 1) << 4;
                        hi |= ((qh >> (2 * g + 1)) & 1) << 4;
                    }
                    out.q[64 * g + l] = lo as i16;
                    out.q[64 * g + 32 + l] = hi as i16;
                }
            }
        }
        _ => {
            // Q6K: ql[128], qh[64], scales[16] (i8), d.
            out.d = f16_at(p, 208);
            out.dmin = 0.0;
            for k in 0..16 {
                out.sc[k] = p[192 + k] as i8 as i16;
                out.mn[k] = 0;
            }
            for h in 0..2 {
                let ql = &p[64 * h..][..64];
                let qh = &p[128 + 32 * h..][..32];
                let q = &mut out.q[128 * h..][..128];
                for l in 0..32 {
                    let hb = qh[l];
                    q[l] = ((ql[l] & 0x0F) | ((hb & 3) << 4)) as i16 - 32;
                    q[l + 32] = ((ql[l + 32] & 0x0F) | (((hb >> 2) & 3) << 4)) as i16 - 32;
                    q[l + 64] = ((ql[l] >> 4) | (((hb >> 4) & 3) << 4)) as i16 - 32;
                    q[l + 96] = ((ql[l + 32] >> 4) | (((hb >> 6) & 3) << 4)) as i16 - 32;
                }
            }
        }
    }
}

/// `Σ_k value_k · x_k` for one decoded super-block against activation super-block `x` (scale `dx`,
/// per-16 sums `bsums`).
#[inline(always)]
pub(crate) fn dot_k(w: &DecodedK, x: &[i8], dx: f32, bsums: &[i16]) -> f32 {
    let mut isum = 0i32;
    let mut msum = 0i32;
    for k in 0..16 {
        let q = &w.q[16 * k..16 * k + 16];
        let xs = &x[16 * k..16 * k + 16];
        let dot: i32 = q.iter().zip(xs).map(|(&a, &b)| a as i32 * b as i32).sum();
        isum += w.sc[k] as i32 * dot;
        msum += w.mn[k] as i32 * bsums[k] as i32;
    }
    dx * (w.d * isum as f32 - w.dmin * msum as f32)
}

struct Scratch32 {
    q: Vec<i16>,
    dc: Vec<(f32, f32)>,
}

thread_local! {
    static SCRATCH32: RefCell<Scratch32> = const { RefCell::new(Scratch32 { q: Vec::new(), dc: Vec::new() }) };
    static SCRATCHK: RefCell<Vec<DecodedK>> = const { RefCell::new(Vec::new()) };
}

/// Rows `r0..r1` of `out = x · Wᵀ` for a 32-value block format `F`, against `Q8x32` activations.
pub(crate) fn tile_32<const F: u8>(
    w: &WeightMatrix,
    r0: usize,
    r1: usize,
    acts: &Acts,
    out: OutPtr,
) {
    let nb = w.cols() / 32;
    let bytes = block_bytes(F);
    let run = |sc: &mut Scratch32| {
        if sc.q.len() < nb * 32 {
            sc.q.resize(nb * 32, 0);
            sc.dc.resize(nb, (0.0, 0.0));
        }
        for r in r0..r1 {
            let row = w.row_data(r);
            for b in 0..nb {
                let q: &mut [i16; 32] = (&mut sc.q[b * 32..b * 32 + 32]).try_into().unwrap();
                sc.dc[b] = decode_block32::<F>(&row[b * bytes..(b + 1) * bytes], q);
            }
            for i in 0..acts.m {
                let (xq, dx, sx) = (acts.qs(i), acts.d(i), acts.s(i));
                let mut sum = 0f32;
                for b in 0..nb {
                    let dot = idot32(&sc.q[b * 32..], &xq[b * 32..]);
                    let (d, c) = sc.dc[b];
                    sum += d * dx[b] * dot as f32 + c * sx[b];
                }
                // SAFETY: `i < m`, `r < rows`; each (i, r) is written by exactly one task.
                unsafe { out.write(i, r, sum) };
            }
        }
    };
    SCRATCH32.with(|s| match s.try_borrow_mut() {
        Ok(mut s) => run(&mut s),
        Err(_) => run(&mut Scratch32 {
            q: Vec::new(),
            dc: Vec::new(),
        }),
    })
}

/// Rows `r0..r1` of `out = x · Wᵀ` for a k-quant format `F`, against `Q8K` activations.
pub(crate) fn tile_k<const F: u8>(
    w: &WeightMatrix,
    r0: usize,
    r1: usize,
    acts: &Acts,
    out: OutPtr,
) {
    let nsb = w.cols() / 256;
    let bytes = block_bytes(F);
    let run = |dec: &mut Vec<DecodedK>| {
        while dec.len() < nsb {
            dec.push(DecodedK::new());
        }
        for r in r0..r1 {
            let row = w.row_data(r);
            for (b, db) in dec.iter_mut().take(nsb).enumerate() {
                decode_block_k::<F>(&row[b * bytes..(b + 1) * bytes], db);
            }
            for i in 0..acts.m {
                let (xq, dx, bs) = (acts.qs(i), acts.d(i), acts.bsums(i));
                let mut sum = 0f32;
                for (b, db) in dec.iter().take(nsb).enumerate() {
                    sum += dot_k(db, &xq[b * 256..], dx[b], &bs[b * 16..]);
                }
                // SAFETY: as in `tile_32`.
                unsafe { out.write(i, r, sum) };
            }
        }
    };
    SCRATCHK.with(|s| match s.try_borrow_mut() {
        Ok(mut s) => run(&mut s),
        Err(_) => run(&mut Vec::new()),
    })
}
