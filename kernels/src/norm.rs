//! RMSNorm, plain and fused with the residual add (CPU twins of the CUDA kernel `rms_norm_f32`).

use crate::error::{KernelError, Result};

fn check(what: &'static str, expected: usize, actual: usize) -> Result<()> {
    if expected == actual {
        Ok(())
    } else {
        Err(KernelError::Length {
            what,
            expected,
            actual,
        })
    }
}

fn rows_of(x_len: usize, cols: usize) -> Result<usize> {
    if cols == 0 || !x_len.is_multiple_of(cols) {
        return Err(KernelError::Length {
            what: "RMSNorm input (a whole number of weight-wide rows)",
            expected: x_len.div_ceil(cols.max(1)) * cols,
            actual: x_len,
        });
    }
    Ok(x_len / cols)
}

#[inline]
fn norm_row(s: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let ms = s.iter().map(|v| v * v).sum::<f32>() / weight.len() as f32;
    let inv = 1.0 / (ms + eps).sqrt();
    for ((o, v), w) in out.iter_mut().zip(s).zip(weight) {
        *o = v * inv * w;
    }
}

/// `out = x / sqrt(mean(x²) + eps) * weight` for each `weight.len()`-wide row of `x`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) -> Result<()> {
    let cols = weight.len();
    rows_of(x.len(), cols)?;
    check("RMSNorm output", x.len(), out.len())?;
    for (xr, or) in x.chunks_exact(cols).zip(out.chunks_exact_mut(cols)) {
        norm_row(xr, weight, eps, or);
    }
    Ok(())
}

/// RMSNorm of each `weight.len()`-wide row of `x`, in place (the per-head q/k norms).
pub fn rms_norm_in_place(x: &mut [f32], weight: &[f32], eps: f32) -> Result<()> {
    let cols = weight.len();
    rows_of(x.len(), cols)?;
    let mut tmp = vec![0f32; cols];
    for xr in x.chunks_exact_mut(cols) {
        norm_row(xr, weight, eps, &mut tmp);
        xr.copy_from_slice(&tmp);
    }
    Ok(())
}

/// The residual step of a pre-norm block: `x += residual`, then `out = rms_norm(x)`.
pub fn add_rms_norm(
    x: &mut [f32],
    residual: &[f32],
    weight: &[f32],
    eps: f32,
    out: &mut [f32],
) -> Result<()> {
    let cols = weight.len();
    rows_of(x.len(), cols)?;
    check("RMSNorm residual", x.len(), residual.len())?;
    check("RMSNorm output", x.len(), out.len())?;
    for ((xr, rr), or) in x
        .chunks_exact_mut(cols)
        .zip(residual.chunks_exact(cols))
        .zip(out.chunks_exact_mut(cols))
    {
        xr.iter_mut().zip(rr).for_each(|(a, b)| *a += b);
        norm_row(xr, weight, eps, or);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_of_a_known_row() {
        let x = [3.0f32, 4.0, 0.0, 0.0];
        let w = [1.0f32, 2.0, 1.0, 1.0];
        let mut out = [0f32; 4];
        rms_norm(&x, &w, 0.0, &mut out).unwrap();
        // mean square 25/4, rms 2.5
        assert_eq!(out, [1.2, 3.2, 0.0, 0.0]);
    }

    #[test]
    fn fused_residual_equals_add_then_norm() {
        let mut x: Vec<f32> = (0..12).map(|i| i as f32 * 0.3 - 1.0).collect();
        let r: Vec<f32> = (0..12).map(|i| (i as f32).sin()).collect();
        let w = [0.5f32, 1.5, -1.0];
        let sum: Vec<f32> = x.iter().zip(&r).map(|(a, b)| a + b).collect();
        let mut want = vec![0f32; 12];
        rms_norm(&sum, &w, 1e-6, &mut want).unwrap();
        let mut out = vec![0f32; 12];
        add_rms_norm(&mut x, &r, &w, 1e-6, &mut out).unwrap();
        assert_eq!(x, sum);
        assert_eq!(out, want);
        let mut inplace = sum.clone();
        rms_norm_in_place(&mut inplace, &w, 1e-6).unwrap();
        assert_eq!(inplace, want);
    }

    #[test]
    fn ragged_input_is_an_error() {
        let mut out = [0f32; 5];
        assert!(rms_norm(&[0.0; 5], &[1.0; 2], 1e-6, &mut out).is_err());
    }
}
