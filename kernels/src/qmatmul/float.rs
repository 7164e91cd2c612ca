//! The float path: F32 / F16 / BF16 weights, and the block formats without an integer kernel
//! (Q2K, Q3K, Q8_1, Q8K).
//!
//! Each task walks its rows in panels of [`NR`]: F32 rows that are suitably aligned are used in
//! place, everything else is dequantized into a thread-local f32 panel, and a register-tiled f32
//! FMA micro-kernel multiplies the panel with up to 4 activation rows at a time; on AVX2 with at
//! least [`avx2_float::MIN_ROWS`] activation rows, [`avx2_float`]'s packed kernel runs instead. The
//! result is the reference computation up to the order of f32 additions.

#[cfg(target_arch = "x86_64")]
use super::avx2_float;
use super::{dequantize, Isa, OutPtr, WeightFormat, WeightMatrix};
use std::cell::RefCell;

/// Weight rows per panel.
const NR: usize = 4;

thread_local! {
    static PANEL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// The calling thread's buffer for packed activations (AVX2 kernel).
    static PACKED_X: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

pub(super) fn matmul(isa: Isa, x: &[f32], m: usize, w: &WeightMatrix, out: OutPtr) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 && m >= avx2_float::MIN_ROWS {
        let packed = avx2_float::Packed::new(x, m, w.cols(), PACKED_X.take());
        crate::pool::parallel_rows(w.rows(), avx2_float::NR, m * w.cols(), &|r0, r1| {
            PANEL.with(|p| match p.try_borrow_mut() {
                Ok(mut p) => avx2_rows(&packed, w, r0, r1, out, &mut p),
                Err(_) => avx2_rows(&packed, w, r0, r1, out, &mut Vec::new()),
            })
        });
        PACKED_X.set(packed.into_buffer());
        return;
    }
    crate::pool::parallel_rows(w.rows(), NR, m * w.cols(), &|r0, r1| {
        PANEL.with(|p| match p.try_borrow_mut() {
            Ok(mut p) => tile(isa, x, m, w, r0, r1, out, &mut p),
            Err(_) => tile(isa, x, m, w, r0, r1, out, &mut Vec::new()),
        })
    });
}

/// Row `r` of `w` as f32: in place when possible, else dequantized into `buf`.
fn row_f32(isa: Isa, w: &WeightMatrix, r: usize, buf: &mut [f32]) -> *const f32 {
    let bytes = w.row_data(r);
    match w.format() {
        WeightFormat::F32
            if (bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<f32>()) =>
        {
            return bytes.as_ptr().cast();
        }
        #[cfg(target_arch = "x86_64")]
        WeightFormat::F16 if isa >= Isa::Avx2 => {
            // SAFETY: `isa` is available (checked by `matmul_with_isa`).
            unsafe { super::avx2::f16_to_f32(bytes, buf) };
        }
        WeightFormat::BF16 => {
            for (o, c) in buf.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
            }
        }
        f => {
            // Cannot fail: `bytes` is one whole row of `f` and `buf` holds `cols` values.
            let _ = dequantize(f, bytes, buf);
        }
    }
    let _ = isa;
    buf.as_ptr()
}

/// Weight rows `r0..r1` through the AVX2 packed kernel, [`avx2_float::NR`] at a time.
#[cfg(target_arch = "x86_64")]
fn avx2_rows(
    packed: &avx2_float::Packed,
    w: &WeightMatrix,
    r0: usize,
    r1: usize,
    out: OutPtr,
    panel: &mut Vec<f32>,
) {
    const TILE: usize = avx2_float::NR;
    let n = w.cols();
    if panel.len() < TILE * n {
        panel.resize(TILE * n, 0.0);
    }
    let mut r = r0;
    while r < r1 {
        let nr = (r1 - r).min(TILE);
        let mut ptrs = [std::ptr::null::<f32>(); TILE];
        for (j, chunk) in panel.chunks_exact_mut(n).take(nr).enumerate() {
            ptrs[j] = row_f32(Isa::Avx2, w, r + j, chunk);
        }
        for j in nr..TILE {
            ptrs[j] = ptrs[0];
        }
        // SAFETY: AVX2 and FMA were checked by `matmul_with_isa`; every pointer addresses `n`
        // floats (a weight row or a panel row) alive for this call; rows `r..r + nr` are this
        // task's.
        unsafe { packed.rows_times(ptrs, r, nr, out) };
        r += nr;
    }
}

#[allow(clippy::too_many_arguments)]
fn tile(
    isa: Isa,
    x: &[f32],
    m: usize,
    w: &WeightMatrix,
    r0: usize,
    r1: usize,
    out: OutPtr,
    panel: &mut Vec<f32>,
) {
    let n = w.cols();
    if panel.len() < NR * n {
        panel.resize(NR * n, 0.0);
    }
    let mut r = r0;
    while r < r1 {
        let nr = if r1 - r >= NR { NR } else { 1 };
        let mut ptrs = [std::ptr::null::<f32>(); NR];
        for (j, chunk) in panel.chunks_exact_mut(n).take(nr).enumerate() {
            ptrs[j] = row_f32(isa, w, r + j, chunk);
        }
        let mut i = 0;
        while i < m {
            let mr = (m - i).min(4);
            // SAFETY: each pointer addresses `n` floats (a weight row or a panel row) that stay
            // alive and unmodified for this call; `x` holds `m` rows of `n`; `isa` is available.
            unsafe {
                match (isa, nr) {
                    #[cfg(target_arch = "x86_64")]
                    (Isa::Avx512 | Isa::Amx, NR) => {
                        super::avx512::float_tile::<NR>(x, n, i, mr, ptrs, r, out)
                    }
                    #[cfg(target_arch = "x86_64")]
                    (Isa::Avx512 | Isa::Amx, _) => {
                        super::avx512::float_tile::<1>(x, n, i, mr, [ptrs[0]], r, out)
                    }
                    #[cfg(target_arch = "x86_64")]
                    (Isa::Avx2, NR) => super::avx2::float_tile::<NR>(x, n, i, mr, ptrs, r, out),
                    #[cfg(target_arch = "x86_64")]
                    (Isa::Avx2, _) => super::avx2::float_tile::<1>(x, n, i, mr, [ptrs[0]], r, out),
                    _ => {
                        for (j, &p) in ptrs.iter().enumerate().take(nr) {
                            let wr = std::slice::from_raw_parts(p, n);
                            for ii in i..i + mr {
                                out.write(ii, r + j, dot(&x[ii * n..(ii + 1) * n], wr));
                            }
                        }
                    }
                }
            }
            i += mr;
        }
        r += nr;
    }
}

/// Portable f32 dot product, written with 8 independent partial sums so it vectorizes.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let tail: f32 = ar.iter().zip(br).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}
