//! Matrix products against weights stored in GGML block formats (or plain f32/f16/bf16).
//!
//! A [`WeightMatrix`] borrows the raw bytes of a `[rows, cols]` row-major matrix, typically straight
//! from a memory-mapped GGUF or safetensors file, so weights stay quantized (and shared) in memory.
//! [`matmul`] computes `out[m, rows] = x[m, cols] · Wᵀ`, the shape every linear layer of a decoder
//! needs: `m = 1` for single-sequence decode, `m > 1` for prefill and batched decode.
//!
//! # How the fast path works
//!
//! Like llama.cpp's CPU backend, [`matmul`] never dequantizes the integer formats: it quantizes
//! the activations once per call to 8 bits (see `act.rs`: per-32 scales for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0,
//! per-256 scales and per-16 sums for Q4K/Q5K/Q6K) and takes integer dot products of the weight
//! blocks' quants with them, applying the float scales once per block:
//!
//! - `Amx`: Intel AMX tile multiplies (`tdpbssd` / `tdpbusd`, 16 weight rows x 16 activation rows
//!   x one 32-value block per instruction) for the 32-value formats when a call has more than 4
//!   activation rows (`amx.rs`); everything else as `Avx512`;
//! - `Avx512`: 512-bit `vpdpbusd` (AVX512-VNNI) two 32-value blocks at a time, `vpmaddubsw` +
//!   `vpdpwssd` for the k-quants' 16-bit sub-block scales;
//! - `Avx2`: 256-bit `vpmaddubsw` + `vpmaddwd`;
//! - `Scalar`: portable integer code (also the definition the SIMD kernels are tested against).
//!
//! The instruction set is chosen at run time ([`Isa::best`]); nothing depends on
//! `-C target-cpu=native`. Every SIMD kernel is register-tiled: a micro-kernel computes an
//! `MR x NR` tile of outputs (`MR` activation rows x `NR` weight rows), decoding each weight block
//! once for `MR` activation rows and loading each activation block once for `NR` weight rows.
//! For `m = 1` (decode) the kernels stream the weights once, with a software prefetcher running
//! ahead of each task ([`PREFETCH_DISTANCE`]). For `m > 4` (prefill, batched decode) the AVX-512
//! kernels decode each tile of weight rows once per call into scratch, block-interleaved (16, 8 or
//! 4 blocks side by side, filling every register lane), so integer dot products of a group of
//! blocks accumulate in one register and the float scaling is paid once per group: prefill is
//! bound by `vpdpbusd` throughput, not by memory or by float work. On AVX2 the 32-value formats get the
//! same scheme with 8 blocks per register for `m >= 4` (`avx2_packed.rs`). (Details and
//! measurements: `kernels/README.md`.)
//!
//! F32 / F16 / BF16 and the formats without an integer kernel here (Q2K, Q3K, and Q8_1 / Q8K as
//! weights) take the float path: a panel of weight rows is dequantized to f32 in thread-local
//! scratch and multiplied with f32 SIMD FMAs, register-tiled the same way.
//!
//! Output rows are split across threads by [`crate::pool`] (see there for why a small spinning pool
//! and not rayon). No call allocates once the thread-local scratch has grown to the largest shape.

use crate::error::{checked_size, KernelError, Result};
use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8K, BlockQ8_0, BlockQ8_1, GgmlType,
};
use half::{bf16, f16};

mod act;
#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx2_float;
#[cfg(target_arch = "x86_64")]
mod avx2_packed;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod float;
mod layout;
mod scalar;

use act::{ActKind, Acts};
use layout::*;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

/// Storage format of a weight matrix: the GGML type enumeration (F32, F16, BF16, Q4_0 ... Q8K).
pub type WeightFormat = candle_core::quantized::GgmlDType;

/// A borrowed `[rows, cols]` row-major weight matrix in one of the [`WeightFormat`]s.
#[derive(Clone, Copy, Debug)]
pub struct WeightMatrix<'a> {
    format: WeightFormat,
    rows: usize,
    cols: usize,
    data: &'a [u8],
    act_scales: ActScales,
}

/// How the scales of the 8-bit activation blocks (32 values each; the formats up to Q8_0) are kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ActScales {
    /// f32: the least rounding.
    #[default]
    F32,
    /// Rounded to f16 as GGML's Q8_0 / Q8_1 blocks store them (the scale `d`, and Q8_1's
    /// `s = d·Σq` computed from the unrounded `d`): the products then equal llama.cpp's up to
    /// the order of summation, so a GGUF model's activations quantize as they do there.
    Ggml,
}

impl<'a> WeightMatrix<'a> {
    /// Wraps `data` as a `[rows, cols]` matrix, checking that its size matches the format.
    pub fn new(format: WeightFormat, rows: usize, cols: usize, data: &'a [u8]) -> Result<Self> {
        let block = format.block_size();
        if !cols.is_multiple_of(block) {
            return Err(KernelError::RaggedRow {
                format,
                cols,
                block,
            });
        }
        let expected = checked_size("weight bytes", &[rows, cols / block, format.type_size()])?;
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
            act_scales: ActScales::F32,
        })
    }

    /// This matrix with the activations' block scales kept as `scales`.
    pub fn with_act_scales(mut self, scales: ActScales) -> Self {
        self.act_scales = scales;
        self
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
    if (bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()) {
        // SAFETY: GGML block types are plain `repr(C)` data with no invalid bit patterns, the pointer is
        // aligned for `T` and `n * size_of::<T>()` bytes are in bounds.
        std::borrow::Cow::Borrowed(unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast(), n) })
    } else {
        let mut owned = vec![T::zeros(); n];
        // SAFETY: `owned` holds exactly `n * size` writable bytes and does not overlap `bytes`.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), owned.as_mut_ptr().cast::<u8>(), n * size)
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
    check_len(
        "matmul input",
        checked_size("matmul input", &[m, w.cols])?,
        x.len(),
    )?;
    check_len(
        "matmul output",
        checked_size("matmul output", &[m, w.rows])?,
        out.len(),
    )
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

/// The SIMD instruction sets the kernels are written for, from slowest to fastest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Portable Rust, no explicit SIMD.
    Scalar,
    /// AVX2 + FMA + F16C (Haswell / Zen 1 and newer).
    Avx2,
    /// AVX-512 F/BW/VL + VNNI (Ice Lake / Zen 4 and newer), on top of `Avx2`.
    Avx512,
    /// AMX-TILE + AMX-INT8 (Sapphire Rapids and newer Xeons), on top of `Avx512`: tile
    /// multiplies for the 32-value formats when a call has more than 4 activation rows.
    Amx,
}

impl Isa {
    /// Every variant, slowest first.
    pub const ALL: [Isa; 4] = [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Amx];

    /// Whether this CPU can run the kernels written for `self`.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                Isa::Avx2.is_available()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Amx => Isa::Avx512.is_available() && amx::available(),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The fastest available instruction set, detected once. The environment variable
    /// `SWITCHYARD_KERNEL_ISA=scalar|avx2|avx512|amx` caps it (for comparisons and debugging).
    pub fn best() -> Isa {
        static BEST: AtomicU8 = AtomicU8::new(u8::MAX);
        let v = BEST.load(Ordering::Relaxed);
        if v != u8::MAX {
            return Isa::ALL[v as usize];
        }
        let cap = match std::env::var("SWITCHYARD_KERNEL_ISA").as_deref() {
            Ok("scalar") => Isa::Scalar,
            Ok("avx2") => Isa::Avx2,
            Ok("avx512") => Isa::Avx512,
            _ => Isa::Amx,
        };
        let best = Isa::ALL
            .into_iter()
            .filter(|i| *i <= cap && i.is_available())
            .max()
            .unwrap_or(Isa::Scalar);
        BEST.store(best as u8, Ordering::Relaxed);
        best
    }

    /// Lower-case name, as accepted by `SWITCHYARD_KERNEL_ISA`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Amx => "amx",
        }
    }
}

/// Where a tile kernel writes: `out[i * rows + r]`. Tasks write disjoint `(i, r)` sets.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr {
    ptr: *mut f32,
    rows: usize,
}

// SAFETY: an `OutPtr` is only handed to tasks that write disjoint elements of one live buffer.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// Writes `out[i * rows + r] = v`.
    ///
    /// # Safety
    /// `(i, r)` must be in bounds of the buffer and written by no other thread during the call.
    #[inline(always)]
    pub(crate) unsafe fn write(self, i: usize, r: usize, v: f32) {
        // SAFETY: the caller's contract.
        unsafe { *self.ptr.add(i * self.rows + r) = v };
    }

    /// Where `out[i * rows + r]` is, for writing several consecutive `r` at once.
    ///
    /// # Safety
    /// `(i, r)` must be in bounds of the buffer, and every element written through the pointer
    /// owned by the caller's task.
    #[inline(always)]
    pub(crate) unsafe fn row_ptr(self, i: usize, r: usize) -> *mut f32 {
        // SAFETY: the caller's contract.
        unsafe { self.ptr.add(i * self.rows + r) }
    }
}

/// How far ahead of the rows being multiplied a task prefetches its weight bytes. Decoding reads
/// each weight once, straight from DRAM; the hardware prefetchers alone leave a core at about
/// half the streaming bandwidth (measured: 12.6 -> 28.5 GB/s for one core on a 110 MB Q4_1 set
/// with 8 KiB look-ahead), since every task's range is short and starts cold. 0 (the default)
/// takes [`default_prefetch_distance`].
#[doc(hidden)]
pub static PREFETCH_DISTANCE: AtomicUsize = AtomicUsize::new(0);

/// The look-ahead measured best on each machine the project has: 8 KiB on the AVX-512 one (Zen 5);
/// 4 KiB on the AVX2-only Zen 3, where 8 KiB made the Q6K matrix-vector product 1.25-1.3x slower
/// (896 x 4864, 2 threads: 146-203 vs 113-165 µs) and the other formats were the same within noise.
pub fn default_prefetch_distance() -> usize {
    static DEFAULT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *DEFAULT.get_or_init(|| match Isa::best() {
        Isa::Avx512 | Isa::Amx => 8192,
        _ => 4096,
    })
}

/// Software prefetch over one task's contiguous weight bytes `[start, end)`: keeps a cursor up to
/// [`PREFETCH_DISTANCE`] bytes ahead of the kernel, one prefetch per cache line, never past `end`.
pub(crate) struct Prefetcher {
    base: *const u8,
    next: usize,
    end: usize,
    dist: usize,
}

impl Prefetcher {
    pub(crate) fn new(base: *const u8, start: usize, end: usize) -> Self {
        Self {
            base,
            next: start & !63,
            end,
            dist: match PREFETCH_DISTANCE.load(Ordering::Relaxed) {
                0 => default_prefetch_distance(),
                d => d,
            },
        }
    }

    /// The kernel is about to read bytes up to `upto`: prefetch up to `upto + distance`.
    #[inline(always)]
    pub(crate) fn advance(&mut self, upto: usize) {
        let target = (upto + self.dist).min(self.end);
        while self.next < target {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: prefetch never faults; the address is inside the weight buffer.
            unsafe {
                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                _mm_prefetch::<_MM_HINT_T0>(self.base.wrapping_add(self.next).cast());
            }
            self.next += 64;
        }
    }
}

/// Extra preparation of the quantized activations a kernel wants (once per call).
pub(crate) type PrepareFn = unsafe fn(&mut Acts);

/// A kernel computing rows `r0..r1` of the output (for all `m` activation rows).
pub(crate) type TileFn = unsafe fn(&WeightMatrix, usize, usize, &Acts, OutPtr);

/// How `matmul` handles a format on an instruction set.
enum Plan {
    /// Quantize the activations to `ActKind` (then prepare them), then run the integer tile
    /// kernel with its row grain.
    Int(ActKind, TileFn, usize, Option<PrepareFn>),
    /// Dequantize weight panels to f32.
    Float,
}

fn plan(isa: Isa, format: WeightFormat, cols: usize) -> Plan {
    use ActKind::{Q8x32, Q8K};
    let f = match format {
        WeightFormat::Q4_0 => F_Q4_0,
        WeightFormat::Q4_1 => F_Q4_1,
        WeightFormat::Q5_0 => F_Q5_0,
        WeightFormat::Q5_1 => F_Q5_1,
        WeightFormat::Q8_0 => F_Q8_0,
        WeightFormat::Q4K => F_Q4K,
        WeightFormat::Q5K => F_Q5K,
        WeightFormat::Q6K => F_Q6K,
        _ => return Plan::Float,
    };
    let kind = if f >= F_Q4K { Q8K } else { Q8x32 };
    #[cfg(target_arch = "x86_64")]
    {
        // The AMX kernels gather 16 rows at 32-bit offsets: only where those cannot wrap.
        if isa == Isa::Amx && cols <= amx::MAX_COLS {
            if let Some((tile, grain)) = amx::tile_fn(f) {
                return Plan::Int(kind, tile, grain, amx::prepare_fn(f));
            }
        }
        if isa >= Isa::Avx512 {
            if let Some((tile, grain)) = avx512::tile_fn(f) {
                return Plan::Int(kind, tile, grain, avx512::prepare_fn(f));
            }
        }
        if isa >= Isa::Avx2 {
            if let Some((tile, grain)) = avx2::tile_fn(f) {
                return Plan::Int(kind, tile, grain, avx2::prepare_fn(f));
            }
        }
    }
    let _ = (isa, cols);
    let tile: TileFn = match f {
        F_Q4_0 => scalar::tile_32::<F_Q4_0>,
        F_Q4_1 => scalar::tile_32::<F_Q4_1>,
        F_Q5_0 => scalar::tile_32::<F_Q5_0>,
        F_Q5_1 => scalar::tile_32::<F_Q5_1>,
        F_Q8_0 => scalar::tile_32::<F_Q8_0>,
        F_Q4K => scalar::tile_k::<F_Q4K>,
        F_Q5K => scalar::tile_k::<F_Q5K>,
        _ => scalar::tile_k::<F_Q6K>,
    };
    Plan::Int(kind, tile, 1, None)
}

thread_local! {
    static ACTS: RefCell<Acts> = const { RefCell::new(Acts::new()) };
}

/// `out[m, rows] = x[m, cols] · Wᵀ`, the fast path: integer SIMD kernels chosen for this CPU
/// ([`Isa::best`]), parallel over output rows.
///
/// Results differ from [`matmul_reference`] by the rounding of the activations to 8 bits (for the
/// integer formats; see `act.rs`): for each 32-value (Q4_0..Q8_0) or 256-value (k-quants) block of
/// `x` with largest magnitude `a`, the error is at most `a / 254 · Σ|w|` over that block.
pub fn matmul(x: &[f32], m: usize, w: &WeightMatrix, out: &mut [f32]) -> Result<()> {
    matmul_with_isa(Isa::best(), x, m, w, out)
}

/// [`matmul`] on a given instruction set (for tests and comparisons); fails with
/// [`KernelError::UnsupportedIsa`] if this CPU lacks it.
pub fn matmul_with_isa(
    isa: Isa,
    x: &[f32],
    m: usize,
    w: &WeightMatrix,
    out: &mut [f32],
) -> Result<()> {
    check_matmul(x, m, w, out)?;
    if !isa.is_available() {
        return Err(KernelError::UnsupportedIsa(isa.name()));
    }
    if m == 0 || w.rows == 0 {
        return Ok(());
    }
    if w.cols == 0 {
        out.fill(0.0);
        return Ok(());
    }
    let dst = OutPtr {
        ptr: out.as_mut_ptr(),
        rows: w.rows,
    };
    match plan(isa, w.format, w.cols) {
        Plan::Int(kind, tile, grain, prepare) => {
            let run = |acts: &mut Acts| {
                acts.quantize(kind, x, m, w.cols, isa, w.act_scales);
                if let Some(prepare) = prepare {
                    // SAFETY: chosen for an available `isa`.
                    unsafe { prepare(acts) };
                }
                let acts = &*acts;
                crate::pool::parallel_rows(w.rows, grain, m * w.cols, &|r0, r1| {
                    // SAFETY: `tile` was chosen for an available `isa`; rows `r0..r1` are in bounds
                    // and owned by this task; `acts` holds `m` rows of `cols` values.
                    unsafe { tile(w, r0, r1, acts, dst) }
                });
            };
            ACTS.with(|a| match a.try_borrow_mut() {
                Ok(mut a) => run(&mut a),
                Err(_) => run(&mut Acts::new()),
            });
        }
        Plan::Float => float::matmul(isa, x, m, w, dst),
    }
    Ok(())
}
