//! Byte layouts of the GGML block formats the integer kernels read directly.
//!
//! | format | bytes | layout |
//! |---|---|---|
//! | Q4_0 | 18 | `d: f16, qs: [u8; 16]` (value k: low nibbles k < 16, high nibbles k >= 16) |
//! | Q4_1 | 20 | `d: f16, m: f16, qs: [u8; 16]` |
//! | Q5_0 | 22 | `d: f16, qh: u32, qs: [u8; 16]` (bit k of `qh` is bit 4 of value k) |
//! | Q5_1 | 24 | `d: f16, m: f16, qh: u32, qs: [u8; 16]` |
//! | Q8_0 | 34 | `d: f16, qs: [i8; 32]` |
//! | Q4K | 144 | `d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]` |
//! | Q5K | 176 | `d: f16, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128]` |
//! | Q6K | 210 | `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16` |

pub(crate) const F_Q4_0: u8 = 0;
pub(crate) const F_Q4_1: u8 = 1;
pub(crate) const F_Q5_0: u8 = 2;
pub(crate) const F_Q5_1: u8 = 3;
pub(crate) const F_Q8_0: u8 = 4;
pub(crate) const F_Q4K: u8 = 5;
pub(crate) const F_Q5K: u8 = 6;
pub(crate) const F_Q6K: u8 = 7;

/// Bytes per block of kernel format `f`.
pub(crate) const fn block_bytes(f: u8) -> usize {
    match f {
        F_Q4_0 => 18,
        F_Q4_1 => 20,
        F_Q5_0 => 22,
        F_Q5_1 => 24,
        F_Q8_0 => 34,
        F_Q4K => 144,
        F_Q5K => 176,
        _ => 210,
    }
}

/// The little-endian f16 at byte `at` of `p`, as f32.
#[inline(always)]
pub(crate) fn f16_at(p: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([p[at], p[at + 1]]).to_f32()
}

/// Unpacks the 12 packed bytes of a Q4K / Q5K super-block's 6-bit scales and minimums into eight
/// scales and eight minimums (one per 32-value sub-block).
#[inline(always)]
pub(crate) fn k4_scales(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let u0 = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    let u1 = u32::from_le_bytes([s[4], s[5], s[6], s[7]]);
    let u2 = u32::from_le_bytes([s[8], s[9], s[10], s[11]]);
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    // Sub-blocks 0..4 keep their 6 bits in bytes 0..4 (scales) and 4..8 (minimums); sub-blocks
    // 4..8 take their low 4 bits from bytes 8..12 and their top 2 bits from the top of bytes 0..8.
    let sc_lo = u0 & LOW6;
    let sc_hi = (u2 & LOW4) | (((u0 >> 6) & LOW2) << 4);
    let mn_lo = u1 & LOW6;
    let mn_hi = ((u2 >> 4) & LOW4) | (((u1 >> 6) & LOW2) << 4);
    let sc = (sc_lo as u64 | (sc_hi as u64) << 32).to_le_bytes();
    let mn = (mn_lo as u64 | (mn_hi as u64) << 32).to_le_bytes();
    (sc, mn)
}
