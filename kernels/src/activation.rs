//! Element-wise `exp` and GELU (erf form) over slices, 8 lanes at a time on AVX2 + FMA.
//!
//! The encoders' MLPs apply GELU to every intermediate value: for the router's two encoders that is
//! ~230 k values per 25-token request, which took ~1.8 ms per request one libm `expf` at a time on
//! the AVX2 machine (a fifth of the router's time). Here `exp` is the Cephes single-precision
//! scheme (`x = n·ln2 + r`, a degree-6 polynomial for `e^r`, `2^n` put into the exponent bits), and
//! `erf` the Abramowitz & Stegun 7.1.26 formula (|error| < 1.5e-7) on top of it. The scalar
//! functions compute the same formulas in the same order, so both paths agree to a few ulps and the
//! SIMD path is tested against them.

/// ln 2 split in two so that `n · ln2` is exact in its high part.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Taylor-like coefficients of `e^r` on |r| <= ln2 / 2 (Cephes `expf`), highest degree first.
const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];
/// Above this `exp` saturates (at ~1.65e38) instead of overflowing the exponent bits; below
/// `EXP_MIN` (where the result would be subnormal) it is zero, so `exp(-inf)` is exactly 0.
const EXP_MAX: f32 = 88.0;
const EXP_MIN: f32 = -87.336_55;
/// Abramowitz & Stegun 7.1.26.
const ERF_P: f32 = 0.327_591_1;
const ERF_A: [f32; 5] = [
    0.254_829_6,
    -0.284_496_74,
    1.421_413_7,
    -1.453_152_1,
    1.061_405_4,
];

/// `e^x` by the same scheme as the SIMD path: NaN stays NaN, `x` above 88 counts as 88, and below
/// -87.3 (subnormal results, `-inf`) the result is 0.
pub fn exp(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    if x < EXP_MIN {
        return 0.0;
    }
    let x = x.min(EXP_MAX);
    let n = (x * std::f32::consts::LOG2_E).round();
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = EXP_POLY[0];
    for c in &EXP_POLY[1..] {
        p = p * r + c;
    }
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// erf, Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7 in exact arithmetic, a few f32 ulps more).
pub fn erf(x: f32) -> f32 {
    let z = x.abs();
    let t = 1.0 / (1.0 + ERF_P * z);
    let poly = t * (ERF_A[0] + t * (ERF_A[1] + t * (ERF_A[2] + t * (ERF_A[3] + t * ERF_A[4]))));
    let y = 1.0 - poly * exp(-z * z);
    y.copysign(x)
}

/// GELU, erf form: `x/2 · (1 + erf(x/√2))`.
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `v = e^v` for every value.
pub fn exp_in_place(v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: AVX2 and FMA were detected.
        unsafe { avx2::exp_in_place(v) };
        return;
    }
    v.iter_mut().for_each(|x| *x = exp(*x));
}

/// `v = softmax(v)`: `e^(v - max)` normalised to sum 1 (an empty slice stays empty; a slice of
/// `-inf` only is not a distribution and comes out NaN, as the definition gives).
pub fn softmax_in_place(v: &mut [f32]) {
    if v.is_empty() {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: AVX2 and FMA were detected.
        unsafe { avx2::softmax_in_place(v) };
        return;
    }
    let max = v.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    v.iter_mut().for_each(|x| *x = exp(*x - max));
    let inv = 1.0 / v.iter().sum::<f32>();
    v.iter_mut().for_each(|x| *x *= inv);
}

/// `ln Σ e^v`, computed as `max + ln Σ e^(v - max)` with the sum in f64 (blocks of f32 lanes), so
/// it neither overflows nor loses the small terms of a long row (a vocabulary's logits): the
/// normaliser of a log-softmax. An empty slice gives `-inf`.
pub fn log_sum_exp(v: &[f32]) -> f32 {
    if v.is_empty() {
        return f32::NEG_INFINITY;
    }
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: AVX2 and FMA were detected.
        return unsafe { avx2::log_sum_exp(v) };
    }
    log_sum_exp_portable(v)
}

/// [`log_sum_exp`] one value at a time (`v` not empty).
fn log_sum_exp_portable(v: &[f32]) -> f32 {
    let max = v.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    if max == f32::NEG_INFINITY || max.is_nan() {
        return max;
    }
    let sum: f64 = v.iter().map(|&x| f64::from(exp(x - max))).sum();
    max + sum.ln() as f32
}

/// `gate = silu(gate) · up` element by element (the SwiGLU of llama-family MLPs), with
/// `silu(g) = g / (1 + e^-g)`.
///
/// # Panics
/// If the two slices differ in length.
pub fn silu_mul_in_place(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "silu_mul_in_place: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: AVX2 and FMA were detected.
        unsafe { avx2::silu_mul_in_place(gate, up) };
        return;
    }
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + exp(-*g)) * u;
    }
}

/// `v = gelu(v)` for every value.
pub fn gelu_in_place(v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: AVX2 and FMA were detected.
        unsafe { avx2::gelu_in_place(v) };
        return;
    }
    v.iter_mut().for_each(|x| *x = gelu(*x));
}

#[cfg(target_arch = "x86_64")]
fn avx2_fma() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    /// Eight `e^x` (NaN stays NaN through the clamp: `max`/`min` return their second operand for it).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn exp8(x: __m256) -> __m256 {
        let underflow = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(EXP_MIN));
        let x = _mm256_min_ps(_mm256_set1_ps(EXP_MAX), x);
        let x = _mm256_max_ps(_mm256_set1_ps(EXP_MIN), x);
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
        let mut p = _mm256_set1_ps(EXP_POLY[0]);
        for c in &EXP_POLY[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
        }
        let y = _mm256_fmadd_ps(
            _mm256_mul_ps(p, r),
            r,
            _mm256_add_ps(r, _mm256_set1_ps(1.0)),
        );
        let e = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        _mm256_andnot_ps(underflow, _mm256_mul_ps(y, _mm256_castsi256_ps(e)))
    }

    /// Eight GELUs.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn gelu8(x: __m256) -> __m256 {
        let sign = _mm256_set1_ps(-0.0);
        let u = _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
        let z = _mm256_andnot_ps(sign, u);
        let one = _mm256_set1_ps(1.0);
        let t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(ERF_P), z, one));
        let mut poly = _mm256_set1_ps(ERF_A[4]);
        for a in ERF_A[..4].iter().rev() {
            poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(*a));
        }
        let poly = _mm256_mul_ps(poly, t);
        let minus_z2 = _mm256_mul_ps(_mm256_xor_ps(z, sign), z);
        let erf_abs = _mm256_fnmadd_ps(poly, exp8(minus_z2), one);
        let erf = _mm256_or_ps(erf_abs, _mm256_and_ps(u, sign));
        _mm256_mul_ps(
            _mm256_mul_ps(_mm256_set1_ps(0.5), x),
            _mm256_add_ps(one, erf),
        )
    }

    /// # Safety
    /// AVX2 and FMA available.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_in_place(v: &mut [f32]) {
        let mut chunks = v.chunks_exact_mut(8);
        for c in &mut chunks {
            // SAFETY: `c` holds 8 floats.
            unsafe { _mm256_storeu_ps(c.as_mut_ptr(), exp8(_mm256_loadu_ps(c.as_ptr()))) };
        }
        chunks
            .into_remainder()
            .iter_mut()
            .for_each(|x| *x = exp(*x));
    }

    /// The largest value of `v`, eight lanes at a time.
    ///
    /// # Safety
    /// AVX2 available.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn max(v: &[f32]) -> f32 {
        let mut chunks = v.chunks_exact(8);
        let mut m8 = _mm256_set1_ps(f32::NEG_INFINITY);
        for c in &mut chunks {
            // SAFETY: `c` holds 8 floats.
            m8 = _mm256_max_ps(m8, unsafe { _mm256_loadu_ps(c.as_ptr()) });
        }
        let mut lanes = [0f32; 8];
        // SAFETY: 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), m8) };
        chunks
            .remainder()
            .iter()
            .chain(&lanes)
            .fold(f32::NEG_INFINITY, |m, &x| m.max(x))
    }

    /// # Safety
    /// AVX2 and FMA available; `v` is not empty.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn softmax_in_place(v: &mut [f32]) {
        // SAFETY: AVX2 is available (this function's contract).
        let max = unsafe { max(v) };
        let mut lanes = [0f32; 8];
        let mut chunks = v.chunks_exact_mut(8);
        let mut s8 = _mm256_setzero_ps();
        for c in &mut chunks {
            // SAFETY: `c` holds 8 floats.
            unsafe {
                let e = exp8(_mm256_sub_ps(
                    _mm256_loadu_ps(c.as_ptr()),
                    _mm256_set1_ps(max),
                ));
                s8 = _mm256_add_ps(s8, e);
                _mm256_storeu_ps(c.as_mut_ptr(), e);
            }
        }
        let rest = chunks.into_remainder();
        rest.iter_mut().for_each(|x| *x = exp(*x - max));
        // SAFETY: 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), s8) };
        let inv = 1.0 / (lanes.iter().sum::<f32>() + rest.iter().sum::<f32>());
        let mut chunks = v.chunks_exact_mut(8);
        for c in &mut chunks {
            // SAFETY: `c` holds 8 floats.
            unsafe {
                let p = c.as_mut_ptr();
                _mm256_storeu_ps(p, _mm256_mul_ps(_mm256_loadu_ps(p), _mm256_set1_ps(inv)));
            }
        }
        chunks.into_remainder().iter_mut().for_each(|x| *x *= inv);
    }

    /// # Safety
    /// AVX2 and FMA available; `v` is not empty.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn log_sum_exp(v: &[f32]) -> f32 {
        // SAFETY: AVX2 is available (this function's contract).
        let max = unsafe { max(v) };
        let mut lanes = [0f32; 8];
        if max == f32::NEG_INFINITY || max.is_nan() {
            return max;
        }
        // Each block of 256 values is summed in f32 lanes (every term is at most 1), the blocks
        // in f64.
        let mut total = 0f64;
        let mut blocks = v.chunks_exact(256);
        for block in &mut blocks {
            let mut s8 = _mm256_setzero_ps();
            for c in block.chunks_exact(8) {
                // SAFETY: `c` holds 8 floats.
                s8 = _mm256_add_ps(s8, unsafe {
                    exp8(_mm256_sub_ps(
                        _mm256_loadu_ps(c.as_ptr()),
                        _mm256_set1_ps(max),
                    ))
                });
            }
            // SAFETY: 8 floats.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), s8) };
            total += lanes.iter().map(|&x| f64::from(x)).sum::<f64>();
        }
        total += blocks
            .remainder()
            .iter()
            .map(|&x| f64::from(exp(x - max)))
            .sum::<f64>();
        max + total.ln() as f32
    }

    /// # Safety
    /// AVX2 and FMA available; `gate` and `up` of one length.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn silu_mul_in_place(gate: &mut [f32], up: &[f32]) {
        let mut g8 = gate.chunks_exact_mut(8);
        let mut u8 = up.chunks_exact(8);
        for (g, u) in (&mut g8).zip(&mut u8) {
            // SAFETY: 8 floats each.
            unsafe {
                let x = _mm256_loadu_ps(g.as_ptr());
                let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));
                let s = _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0), e));
                _mm256_storeu_ps(
                    g.as_mut_ptr(),
                    _mm256_mul_ps(s, _mm256_loadu_ps(u.as_ptr())),
                );
            }
        }
        for (g, u) in g8.into_remainder().iter_mut().zip(u8.remainder()) {
            *g = *g / (1.0 + exp(-*g)) * u;
        }
    }

    /// # Safety
    /// AVX2 and FMA available.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn gelu_in_place(v: &mut [f32]) {
        let mut chunks = v.chunks_exact_mut(8);
        for c in &mut chunks {
            // SAFETY: `c` holds 8 floats.
            unsafe { _mm256_storeu_ps(c.as_mut_ptr(), gelu8(_mm256_loadu_ps(c.as_ptr()))) };
        }
        chunks
            .into_remainder()
            .iter_mut()
            .for_each(|x| *x = gelu(*x));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from -30 to 30 (and the ends of exp's range), not multiples of 8 long.
    fn inputs() -> Vec<f32> {
        let mut v: Vec<f32> = (0..6001).map(|i| (i as f32 - 3000.0) / 100.0).collect();
        v.extend([
            -100.0, -88.0, -87.0, 87.0, 88.0, 100.0, 0.0, -0.0, 1e-30, -1e-30,
        ]);
        v
    }

    #[test]
    fn exp_matches_libm() {
        for x in inputs().into_iter().filter(|x| (-87.0..=88.0).contains(x)) {
            let (a, b) = (exp(x), x.exp());
            assert!((a - b).abs() <= 3e-7 * b, "exp({x}) = {a}, libm {b}");
        }
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(EXP_MIN) > 0.0);
        assert!(exp(100.0).is_finite());
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn log_sum_exp_matches_the_definition_in_f64() {
        for len in [1usize, 7, 8, 255, 256, 257, 49152 + 3] {
            let v: Vec<f32> = (0..len)
                .map(|i| ((i * 7919) % 1013) as f32 * 0.03 - 15.0)
                .collect();
            let max = v.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
            let want = max + v.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
            for got in [log_sum_exp(&v), log_sum_exp_portable(&v)] {
                let got = got as f64;
                let tolerance = 2e-6 * want.abs().max(1.0);
                assert!(
                    (got - want).abs() <= tolerance,
                    "len {len}: {got} vs {want}"
                );
            }
        }
        // No overflow far from zero; -inf terms weigh nothing; edge cases.
        assert!((log_sum_exp(&[1000.0, 1000.0]) - (1000.0 + 2f32.ln())).abs() < 1e-3);
        let with_inf = [0.5, f32::NEG_INFINITY, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5];
        assert!((log_sum_exp(&with_inf) - (0.5 + 8f32.ln())).abs() < 1e-6);
        assert_eq!(log_sum_exp(&[]), f32::NEG_INFINITY);
        assert_eq!(log_sum_exp(&[f32::NEG_INFINITY; 9]), f32::NEG_INFINITY);
        assert_eq!(
            log_sum_exp_portable(&[f32::NEG_INFINITY; 9]),
            f32::NEG_INFINITY
        );
    }

    #[test]
    fn softmax_matches_the_definition_in_f64() {
        for len in [1usize, 3, 8, 9, 17, 64, 130] {
            let v: Vec<f32> = (0..len)
                .map(|i| ((i * 7919) % 23) as f32 * 0.9 - 10.0)
                .collect();
            let max = v.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
            let e: Vec<f64> = v.iter().map(|&x| (x as f64 - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            let mut got = v.clone();
            softmax_in_place(&mut got);
            for (g, w) in got.iter().zip(&e) {
                assert!(
                    (*g as f64 - w / sum).abs() <= 1e-6,
                    "len {len}: {g} vs {}",
                    w / sum
                );
            }
        }
        // Large values do not overflow; -inf entries get zero weight.
        let mut v = vec![1000.0, 999.0, f32::NEG_INFINITY];
        softmax_in_place(&mut v);
        assert!((v[0] - 0.731_058_6).abs() < 1e-6 && v[2] == 0.0, "{v:?}");
        softmax_in_place(&mut []);
    }

    #[test]
    fn silu_mul_matches_libm() {
        let x = inputs();
        let up: Vec<f32> = x.iter().map(|v| 0.5 - v / 40.0).collect();
        let mut got = x.clone();
        silu_mul_in_place(&mut got, &up);
        for ((g, x), u) in got.iter().zip(&x).zip(&up) {
            let want = (*x as f64 / (1.0 + (-*x as f64).exp()) * *u as f64) as f32;
            assert!(
                (g - want).abs() <= 1e-6 * want.abs().max(1.0),
                "silu({x}) * {u} = {g}, want {want}"
            );
        }
    }

    #[test]
    fn erf_and_gelu_match_known_values() {
        // erf(0.5), erf(1), erf(2) to 7 digits; GELU(1) = 0.8413447.
        for (x, want) in [
            (0.5f32, 0.520_499_9),
            (1.0, 0.842_700_8),
            (2.0, 0.995_322_3),
        ] {
            assert!((erf(x) - want).abs() < 5e-7, "erf({x}) = {}", erf(x));
            assert!((erf(-x) + want).abs() < 5e-7);
        }
        assert!((gelu(1.0) - 0.841_344_7).abs() < 1e-6);
        assert_eq!(gelu(0.0), 0.0);
        assert!(gelu(-30.0).abs() < 1e-30 && (gelu(30.0) - 30.0).abs() < 1e-5);
    }

    #[test]
    fn slice_paths_agree_with_the_scalar_functions() {
        let x = inputs();
        let mut e = x.clone();
        exp_in_place(&mut e);
        let mut g = x.clone();
        gelu_in_place(&mut g);
        for (i, &v) in x.iter().enumerate() {
            let (se, sg) = (exp(v), gelu(v));
            assert!(
                (e[i] - se).abs() <= 4.0 * f32::EPSILON * se.abs(),
                "exp({v}): {} vs {se}",
                e[i]
            );
            assert!(
                (g[i] - sg).abs() <= 4.0 * f32::EPSILON * v.abs().max(1.0),
                "gelu({v}): {} vs {sg}",
                g[i]
            );
        }
        let mut nan = vec![f32::NAN; 9];
        exp_in_place(&mut nan);
        assert!(nan.iter().all(|v| v.is_nan()));
        let mut masked = vec![f32::NEG_INFINITY; 9];
        exp_in_place(&mut masked);
        assert!(masked.iter().all(|&v| v == 0.0));
    }
}
