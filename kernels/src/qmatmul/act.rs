//! Quantization of the activations (`x`) to 8-bit integers, once per [`super::matmul`] call.
//!
//! Two layouts, matching GGML's "vec-dot types":
//! - [`ActKind::Q8x32`] (GGML's Q8_0 / Q8_1): one f32 scale `d` per 32 values, plus `s = d·Σq` per
//!   32 values (what Q8_1 adds over Q8_0), so kernels for the offset formats (Q4_1, Q5_1, and Q4_0 /
//!   Q5_0 through their unsigned `q - 8` / `q - 16` form) can account for the offset with one product.
//! - [`ActKind::Q8K`] (GGML's Q8_K): one f32 scale per 256 values, plus the integer sums of each 16
//!   values (`bsums`), for the k-quant formats' per-sub-block minimums / offsets.
//!
//! Values are quantized symmetrically, `q = round(x / d)` (ties to even, as the SIMD conversions
//! do, so every instruction set sees identical quants) with `d = max|x| / 127`, so `|q| <= 127`
//! (never -128: the Q8_0 kernels negate `q`) and `|x - d·q| <= d / 2` for every element. Scales are
//! kept in f32 (GGML stores the Q8_0 scale in f16; f32 costs nothing here and loses less), or
//! rounded as GGML rounds them ([`super::ActScales::Ggml`]) where matching llama.cpp matters more.
//!
//! The buffers are reused between calls (the owner keeps an [`Acts`] in thread-local scratch), so a
//! steady-state call allocates nothing.

use super::{ActScales, Isa};

/// Which activation layout a weight format's kernel consumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ActKind {
    /// 32-value blocks: `d` and `s = d·Σq` per block.
    Q8x32,
    /// 256-value super-blocks: `d` per super-block, `bsums` per 16 values.
    Q8K,
}

/// 64 bytes, 64-byte aligned: the unit of the quantized-row storage, so that every row starts on a
/// cache line (and a 512-bit boundary).
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([i8; 64]);

/// `m` rows of quantized activations.
pub(crate) struct Acts {
    pub kind: ActKind,
    pub m: usize,
    pub cols: usize,
    /// Bytes between consecutive rows of `qs` (a multiple of 64).
    stride: usize,
    lines: Vec<Line>,
    /// Per block (`Q8x32`: 32 values; `Q8K`: 256 values) scale, `[m][blocks]`.
    d: Vec<f32>,
    /// `Q8x32` only: `d·Σq` per 32-value block, `[m][cols / 32]`.
    s: Vec<f32>,
    /// `Q8K` only: `Σq` per 16 values, `[m][cols / 16]`.
    bsums: Vec<i16>,
    /// Optional kernel-specific layout of `qs` (see `avx512::prepare32`): `grouped_units` units of
    /// 64 bytes per row; 0 when not prepared for this call.
    grouped: Vec<Line>,
    grouped_units: usize,
    /// Optional layout of the whole call for the AMX kernels (see `amx::prepare32`); `tiles_units`
    /// 64-byte units, 0 when not prepared for this call.
    tiles: Vec<Line>,
    tiles_units: usize,
}

fn grow<T: Copy + Default>(v: &mut Vec<T>, n: usize) {
    if v.len() < n {
        v.resize(n, T::default());
    }
}

impl Default for Line {
    fn default() -> Self {
        Line([0; 64])
    }
}

impl Acts {
    pub const fn new() -> Self {
        Self {
            kind: ActKind::Q8x32,
            m: 0,
            cols: 0,
            stride: 0,
            lines: Vec::new(),
            d: Vec::new(),
            s: Vec::new(),
            bsums: Vec::new(),
            grouped: Vec::new(),
            grouped_units: 0,
            tiles: Vec::new(),
            tiles_units: 0,
        }
    }

    /// Storage for a kernel-specific layout of `units` units (64 bytes) per row, marked ready for
    /// this call.
    pub fn grouped_mut(&mut self, units: usize) -> *mut i8 {
        grow(&mut self.grouped, self.m * units);
        self.grouped_units = units;
        self.grouped.as_mut_ptr().cast()
    }

    /// Whether `grouped_mut(units)` was filled for this call.
    pub fn grouped_ready(&self, units: usize) -> bool {
        units > 0 && self.grouped_units == units
    }

    /// Row `i` in the kernel-specific layout.
    pub fn grouped_row(&self, i: usize) -> *const i8 {
        // Checked in release builds too: a safe method must not hand out a pointer past the buffer
        // (one compare per row, not per value).
        assert!(
            i < self.m && self.grouped_units > 0,
            "row {i} of {}",
            self.m
        );
        // SAFETY: in bounds of `grouped` (`m * grouped_units` units).
        unsafe { self.grouped.as_ptr().add(i * self.grouped_units).cast() }
    }

    /// Storage for the AMX kernels' layout of the call (`units` units of 64 bytes), marked ready.
    pub fn tiles_mut(&mut self, units: usize) -> *mut i8 {
        grow(&mut self.tiles, units);
        self.tiles_units = units;
        self.tiles.as_mut_ptr().cast()
    }

    /// Whether `tiles_mut` was filled for this call.
    pub fn tiles_ready(&self) -> bool {
        self.tiles_units > 0
    }

    /// Start of the AMX layout (see `tiles_mut`).
    pub fn tiles_base(&self) -> *const u8 {
        self.tiles.as_ptr().cast()
    }

    /// Bytes between consecutive rows of the quantized values.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Row 0's quantized values; row `i` starts `i · stride()` bytes later.
    pub fn qs_base(&self) -> *const i8 {
        self.lines.as_ptr().cast()
    }

    /// Every row's per-block scales, `[m][blocks]`.
    pub fn d_base(&self) -> *const f32 {
        self.d.as_ptr()
    }

    /// Every row's per-32 `d·Σq`, `[m][cols / 32]` (`Q8x32` only).
    pub fn s_base(&self) -> *const f32 {
        self.s.as_ptr()
    }

    fn block(&self) -> usize {
        match self.kind {
            ActKind::Q8x32 => 32,
            ActKind::Q8K => 256,
        }
    }

    /// Number of scale blocks per row.
    pub fn blocks_per_row(&self) -> usize {
        self.cols / self.block()
    }

    /// Quantized values of row `i` (`cols` of them; the row is followed by zero padding up to a
    /// multiple of 64 bytes).
    pub fn qs(&self, i: usize) -> &[i8] {
        assert!(i < self.m, "row {i} of {}", self.m);
        // SAFETY: `lines` holds `m * stride` initialized bytes (see `quantize`), `i < m`.
        unsafe {
            let base = self.lines.as_ptr().cast::<i8>().add(i * self.stride);
            std::slice::from_raw_parts(base, self.cols)
        }
    }

    /// Pointer to row `i`'s quantized values (64-byte aligned; `stride` readable bytes).
    pub fn qs_ptr(&self, i: usize) -> *const i8 {
        assert!(i < self.m, "row {i} of {}", self.m);
        // SAFETY: in bounds of `lines` (see `qs`).
        unsafe { self.lines.as_ptr().cast::<i8>().add(i * self.stride) }
    }

    /// Row `i`'s per-block scales.
    pub fn d(&self, i: usize) -> &[f32] {
        let nb = self.blocks_per_row();
        &self.d[i * nb..(i + 1) * nb]
    }

    /// Row `i`'s per-32 `d·Σq` (`Q8x32` only).
    pub fn s(&self, i: usize) -> &[f32] {
        debug_assert_eq!(self.kind, ActKind::Q8x32);
        let nb = self.cols / 32;
        &self.s[i * nb..(i + 1) * nb]
    }

    /// Row `i`'s per-16 `Σq` (`Q8K` only).
    pub fn bsums(&self, i: usize) -> &[i16] {
        debug_assert_eq!(self.kind, ActKind::Q8K);
        let n = self.cols / 16;
        &self.bsums[i * n..(i + 1) * n]
    }

    /// Quantizes `x` (`m` rows of `cols` values; `cols` a multiple of the layout's block) into `self`.
    pub fn quantize(
        &mut self,
        kind: ActKind,
        x: &[f32],
        m: usize,
        cols: usize,
        isa: Isa,
        scales: ActScales,
    ) {
        self.kind = kind;
        self.m = m;
        self.cols = cols;
        self.grouped_units = 0;
        self.tiles_units = 0;
        let block = self.block();
        debug_assert_eq!(cols % block, 0);
        debug_assert_eq!(x.len(), m * cols);
        self.stride = cols.div_ceil(64) * 64;
        let nb = cols / block;
        grow(&mut self.lines, m * self.stride / 64);
        grow(&mut self.d, m * nb);
        match kind {
            ActKind::Q8x32 => grow(&mut self.s, m * nb),
            ActKind::Q8K => grow(&mut self.bsums, m * cols / 16),
        }
        for i in 0..m {
            let xr = &x[i * cols..(i + 1) * cols];
            // SAFETY: row `i` of `lines` is `stride >= cols` initialized bytes, borrowed mutably once.
            let q = unsafe {
                let base = self.lines.as_mut_ptr().cast::<i8>().add(i * self.stride);
                std::slice::from_raw_parts_mut(base, self.stride)
            };
            // Zero padding, so 512-bit loads past `cols` read zeros.
            q[cols..].fill(0);
            let q = &mut q[..cols];
            let d = &mut self.d[i * nb..(i + 1) * nb];
            match kind {
                ActKind::Q8x32 => {
                    let s = &mut self.s[i * nb..(i + 1) * nb];
                    quantize_row_q8x32(xr, q, d, s, isa);
                    if scales == ActScales::Ggml {
                        // `s` was computed from the unrounded `d`, as GGML computes it.
                        for v in d.iter_mut().chain(s.iter_mut()) {
                            *v = half::f16::from_f32(*v).to_f32();
                        }
                    }
                }
                ActKind::Q8K => {
                    let bs = &mut self.bsums[i * cols / 16..(i + 1) * cols / 16];
                    quantize_row_q8k(xr, q, d, bs, isa);
                }
            }
        }
    }
}

fn quantize_row_q8x32(x: &[f32], q: &mut [i8], d: &mut [f32], s: &mut [f32], isa: Isa) {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        // SAFETY: `isa` is only ever Avx2/Avx512 when the CPU supports AVX2 + FMA + F16C.
        unsafe { super::avx2::quantize_row_q8x32(x, q, d, s) };
        return;
    }
    let _ = isa;
    for (b, (xb, qb)) in x.chunks_exact(32).zip(q.chunks_exact_mut(32)).enumerate() {
        let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
        let (db, id) = scales(amax);
        let mut sum = 0i32;
        for (qv, xv) in qb.iter_mut().zip(xb) {
            let v = (xv * id).round_ties_even() as i32;
            let v = v.clamp(-127, 127);
            *qv = v as i8;
            sum += v;
        }
        d[b] = db;
        s[b] = db * sum as f32;
    }
}

fn quantize_row_q8k(x: &[f32], q: &mut [i8], d: &mut [f32], bsums: &mut [i16], isa: Isa) {
    for (b, (xb, qb)) in x.chunks_exact(256).zip(q.chunks_exact_mut(256)).enumerate() {
        #[cfg(target_arch = "x86_64")]
        if isa != Isa::Scalar {
            // SAFETY: `isa` is only ever Avx2/Avx512 when the CPU supports AVX2 + FMA + F16C.
            unsafe {
                let (db, id) = scales(super::avx2::amax(xb));
                d[b] = db;
                super::avx2::quantize_scaled(xb, qb, id);
            }
        } else {
            let (db, id) = scales(xb.iter().fold(0f32, |a, v| a.max(v.abs())));
            d[b] = db;
            quantize_scaled_scalar(xb, qb, id);
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = isa;
            let (db, id) = scales(xb.iter().fold(0f32, |a, v| a.max(v.abs())));
            d[b] = db;
            quantize_scaled_scalar(xb, qb, id);
        }
        for (k, c) in qb.chunks_exact(16).enumerate() {
            bsums[b * 16 + k] = c.iter().map(|&v| v as i16).sum();
        }
    }
}

fn quantize_scaled_scalar(x: &[f32], q: &mut [i8], id: f32) {
    for (qv, xv) in q.iter_mut().zip(x) {
        *qv = ((xv * id).round_ties_even() as i32).clamp(-127, 127) as i8;
    }
}

/// `(d, 1/d)` for a block whose largest magnitude is `amax`.
#[inline]
pub(crate) fn scales(amax: f32) -> (f32, f32) {
    if amax > 0.0 {
        (amax / 127.0, 127.0 / amax)
    } else {
        (0.0, 0.0)
    }
}
