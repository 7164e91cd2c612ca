//! Matrix products against weights stored in GGML block formats (or plain f32/f16/bf16).
//!
//! A [`WeightMatrix`] borrows the raw bytes of a `[rows, cols]` row-major matrix, typically straight
//! from a memory-mapped GGUF or safetensors file, so weights stay quantized (and shared) in memory.
//! [`matmul`] computes `out[m, rows] = x[m, cols] · Wᵀ`, the shape every linear layer of a decoder
//! needs: `m = 1` for single-sequence decode, `m > 1` for prefill and batched decode.

use crate::error::{KernelError, Result};
use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8K, BlockQ8_0, BlockQ8_1, GgmlType,
};
use half::{bf16, f16};
use rayon::prelude::*;

/// Storage format of a weight matrix: the GGML type enumeration (F32, F16, BF16, Q4_0 ... Q8K).
pub type WeightFormat = candle_core::quantized::GgmlDType;

/// A borrowed `[rows, cols]` row-major weight matrix in one of the [`WeightFormat`]s.
#[derive(Clone, Copy, Debug)]
pub struct WeightMatrix<'a> {
    format: WeightFormat,
    rows: usize,
    cols: usize,
    data: &'a [u8],
}

impl<'a> WeightMatrix<'a> {
    /// Wraps `data` as a `[rows, cols]` matrix, checking that its size matches the format.
    pub fn new(format: WeightFormat, rows: usize, cols: usize, data: &'a [u8]) -> Result<Self> {
        let block = format.block_size();
        if cols % block != 0 {
            return Err(KernelError::RaggedRow {
                format,
                cols,
                block,
            });
        }
        let expected = rows * (cols / block) * format.type_size();
        if data.len() != expected {
            return Err(KernelError::Length {
                what: "weight bytes",
                expected,
                actual: data.len(),
            });
        }
        Ok(Self {
            format,
            rows,
            cols,
            data,
        })
    }

    /// The storage format.
    pub fn format(&self) -> WeightFormat {
        self.format
    }

    /// Number of rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (input features).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The raw bytes of the whole matrix.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// Bytes used by one row.
    pub fn row_bytes(&self) -> usize {
        self.cols / self.format.block_size() * self.format.type_size()
    }

    /// The raw bytes of row `row`.
    pub fn row_data(&self, row: usize) -> &'a [u8] {
        let n = self.row_bytes();
        &self.data[row * n..(row + 1) * n]
    }

    /// Dequantizes row `row` into `out` (`out.len() == cols`).
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) -> Result<()> {
        check_len("dequantized row", self.cols, out.len())?;
        dequantize(self.format, self.row_data(row), out)
    }
}

fn check_len(what: &'static str, expected: usize, actual: usize) -> Result<()> {
    if expected != actual {
        return Err(KernelError::Length {
            what,
            expected,
            actual,
        });
    }
    Ok(())
}

/// Reinterprets raw bytes as GGML blocks, copying only when the bytes are misaligned.
fn blocks<T: GgmlType>(bytes: &[u8]) -> std::borrow::Cow<'_, [T]> {
    let size = std::mem::size_of::<T>();
    let n = bytes.len() / size;
    if (bytes.as_ptr() as usize) % std::mem::align_of::<T>() == 0 {
        // SAFETY: GGML block types are plain `repr(C)` data with no invalid bit patterns, the pointer is
        // aligned for `T` and `n * size_of::<T>()` bytes are in bounds.
        std::borrow::Cow::Borrowed(unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast(), n) })
    } else {
        let mut owned = vec![T::zeros(); n];
        // SAFETY: `owned` holds exactly `n * size` writable bytes and does not overlap `bytes`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                owned.as_mut_ptr().cast::<u8>(),
                n * size,
            )
        };
        std::borrow::Cow::Owned(owned)
    }
}

/// Dequantizes one or more whole rows' worth of bytes in `format` into `out`.
pub fn dequantize(format: WeightFormat, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    fn go<T: GgmlType>(bytes: &[u8], out: &mut [f32]) {
        T::to_float(&blocks::<T>(bytes), out)
    }
    match format {
        WeightFormat::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        WeightFormat::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        WeightFormat::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        WeightFormat::Q4_0 => go::<BlockQ4_0>(bytes, out),
        WeightFormat::Q4_1 => go::<BlockQ4_1>(bytes, out),
        WeightFormat::Q5_0 => go::<BlockQ5_0>(bytes, out),
        WeightFormat::Q5_1 => go::<BlockQ5_1>(bytes, out),
        WeightFormat::Q8_0 => go::<BlockQ8_0>(bytes, out),
        WeightFormat::Q8_1 => go::<BlockQ8_1>(bytes, out),
        WeightFormat::Q2K => go::<BlockQ2K>(bytes, out),
        WeightFormat::Q3K => go::<BlockQ3K>(bytes, out),
        WeightFormat::Q4K => go::<BlockQ4K>(bytes, out),
        WeightFormat::Q5K => go::<BlockQ5K>(bytes, out),
        WeightFormat::Q6K => go::<BlockQ6K>(bytes, out),
        WeightFormat::Q8K => go::<BlockQ8K>(bytes, out),
    }
    Ok(())
}

fn check_matmul(x: &[f32], m: usize, w: &WeightMatrix, out: &[f32]) -> Result<()> {
    check_len("matmul input", m * w.cols, x.len())?;
    check_len("matmul output", m * w.rows, out.len())
}

/// Plain reference: dequantize each weight row to f32 and take f32 dot products.
///
/// Slow but obviously right; the fast kernels are tested against it.
pub fn matmul_reference(x: &[f32], m: usize, w: &WeightMatrix, out: &mut [f32]) -> Result<()> {
    check_matmul(x, m, w, out)?;
    let mut row = vec![0f32; w.cols];
    for r in 0..w.rows {
        w.dequantize_row(r, &mut row)?;
        for i in 0..m {
            let xi = &x[i * w.cols..(i + 1) * w.cols];
            out[i * w.rows + r] = xi.iter().zip(&row).map(|(a, b)| a * b).sum();
        }
    }
    Ok(())
}

/// `out[m, rows] = x[m, cols] · Wᵀ`, the fast path (parallel over output rows).
pub fn matmul(x: &[f32], m: usize, w: &WeightMatrix, out: &mut [f32]) -> Result<()> {
    check_matmul(x, m, w, out)?;
    const ROWS_PER_TASK: usize = 64;
    let cols = w.cols;
    let rows = w.rows;
    // Compute into a transposed scratch [rows, m] so each task owns a contiguous chunk.
    let mut out_t = vec![0f32; rows * m];
    out_t
        .par_chunks_mut(ROWS_PER_TASK * m)
        .enumerate()
        .try_for_each(|(chunk, dst)| -> Result<()> {
            let mut row = vec![0f32; cols];
            for (j, d) in dst.chunks_mut(m).enumerate() {
                w.dequantize_row(chunk * ROWS_PER_TASK + j, &mut row)?;
                for (i, di) in d.iter_mut().enumerate() {
                    let xi = &x[i * cols..(i + 1) * cols];
                    *di = xi.iter().zip(&row).map(|(a, b)| a * b).sum();
                }
            }
            Ok(())
        })?;
    for r in 0..rows {
        for i in 0..m {
            out[i * rows + r] = out_t[r * m + i];
        }
    }
    Ok(())
}
