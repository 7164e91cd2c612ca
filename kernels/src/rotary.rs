//! Rotary position embedding applied in place (CPU twin of the CUDA kernel `rotary_f32`).

use crate::error::{KernelError, Result};

/// Which elements of a head rotate together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RotaryStyle {
    /// `(x[i], x[i + head_dim / 2])` (Hugging Face's `rotate_half`, GGUF llama after un-permuting).
    HalfSplit,
    /// `(x[2i], x[2i + 1])` (GPT-J / GGUF "normal" rope).
    Interleaved,
}

/// Rotates `x = [rows, heads, head_dim]` in place with per-row tables `cos`/`sin = [rows, head_dim / 2]`.
pub fn rotary_in_place(
    x: &mut [f32],
    cos: &[f32],
    sin: &[f32],
    head_dim: usize,
    style: RotaryStyle,
) -> Result<()> {
    let half = head_dim / 2;
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        return Err(KernelError::Length {
            what: "rotary head width (even)",
            expected: head_dim + 1,
            actual: head_dim,
        });
    }
    if cos.len() != sin.len() || !cos.len().is_multiple_of(half) {
        return Err(KernelError::Length {
            what: "rotary sin table",
            expected: cos.len(),
            actual: sin.len(),
        });
    }
    let rows = cos.len() / half;
    if rows == 0 || !x.len().is_multiple_of(rows * head_dim) {
        return Err(KernelError::Length {
            what: "rotary input (rows x heads x head_dim)",
            expected: rows * head_dim,
            actual: x.len(),
        });
    }
    let row_width = x.len() / rows;
    for (r, row) in x.chunks_exact_mut(row_width).enumerate() {
        let (c, s) = (&cos[r * half..][..half], &sin[r * half..][..half]);
        for head in row.chunks_exact_mut(head_dim) {
            for i in 0..half {
                let (a, b) = match style {
                    RotaryStyle::HalfSplit => (i, i + half),
                    RotaryStyle::Interleaved => (2 * i, 2 * i + 1),
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * c[i] - x1 * s[i];
                head[b] = x1 * c[i] + x0 * s[i];
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quarter_turn_moves_each_pair() {
        // One row, one head of 4: cos 0, sin 1 is a 90-degree turn.
        let mut x = [1.0f32, 2.0, 3.0, 4.0];
        rotary_in_place(&mut x, &[0.0, 0.0], &[1.0, 1.0], 4, RotaryStyle::HalfSplit).unwrap();
        assert_eq!(x, [-3.0, -4.0, 1.0, 2.0]);
        let mut y = [1.0f32, 2.0, 3.0, 4.0];
        rotary_in_place(
            &mut y,
            &[0.0, 0.0],
            &[1.0, 1.0],
            4,
            RotaryStyle::Interleaved,
        )
        .unwrap();
        assert_eq!(y, [-2.0, 1.0, -4.0, 3.0]);
    }

    #[test]
    fn odd_head_width_is_an_error() {
        let mut x = [0f32; 3];
        assert!(rotary_in_place(&mut x, &[1.0], &[0.0], 3, RotaryStyle::HalfSplit).is_err());
    }
}
