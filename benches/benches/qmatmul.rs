//! Quantized matrix products on the CPU, at SmolLM2-135M's real shapes.
//!
//! - `qmatmul/<format>/<rows>x<cols>/m<m>/{fast,reference}`: one linear layer, `m` activation rows;
//!   throughput is weight bytes per second (the matrix stays in cache between iterations, so this
//!   is the kernel's speed, not DRAM's).
//! - `decode_step/<m>`: every linear of SmolLM2-135M-Instruct.Q4_1 (30 layers x 7 Q4_1 matrices,
//!   distinct buffers, 66 MB) plus the tied Q8_0 head (30 MB) — the model's whole matmul work for
//!   `m` tokens, with the weights streamed from DRAM as in real decoding. `m = 1` is one decode
//!   step; for `m > 1` the head runs for one row only, as in prefill. Throughput is tokens/s.
//! - `parallel_overhead`: cost of dispatching an empty parallel call, and of a small decode-sized
//!   matmul, on this crate's pool vs rayon vs a single thread.
//! - `by_isa/<shape>/m<m>/<isa>`: matrix-matrix products (prefill, batched decode, the router's
//!   encoders) on every SIMD instruction set the CPU has (`matmul_with_isa`: AVX2, AVX-512, AMX),
//!   side by side: the router's ModernBERT Q8_0 matrices (768 x 256 attention, 1024 x 256 and
//!   256 x 512 MLP), its sentence encoder's (MiniLM: 1536 x 384, 384 x 1536) and SmolLM2's Q4_1
//!   ones (1536 x 576, 576 x 1536), at 32 and 256 rows. Throughput is multiply-adds per second.
//!
//! Run: `cargo bench -p switchyard-benches --bench qmatmul` (filter with a trailing regex).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;
use switchyard_kernels::pool::{self, Backend};
use switchyard_kernels::{
    matmul, matmul_reference, matmul_with_isa, Isa, WeightFormat, WeightMatrix,
};

/// SmolLM2-135M: hidden 576, 9 heads / 3 KV heads of 64, FFN 1536, vocabulary 49152.
const SHAPES: [(&str, usize, usize); 5] = [
    ("q_o", 576, 576),
    ("k_v", 192, 576),
    ("gate_up", 1536, 576),
    ("down", 576, 1536),
    ("lm_head", 49152, 576),
];
const LAYERS: usize = 30;

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }
    fn f32(&mut self) -> f32 {
        self.next() as f32 / (1u64 << 31) as f32 * 2.0 - 1.0
    }
}

/// f32 -> IEEE half bits, for normal values in half's range (all this file needs).
fn f16_bits(v: f32) -> [u8; 2] {
    let b = v.to_bits();
    let sign = (b >> 16) & 0x8000;
    let exp = (((b >> 23) & 0xff) as i32 - 127 + 15) as u32;
    let mant = (b >> 13) & 0x3ff;
    ((sign | (exp << 10) | mant) as u16).to_le_bytes()
}

/// Random but well-formed blocks (timing does not depend on the values).
fn random_weights(format: WeightFormat, rows: usize, cols: usize, rng: &mut Lcg) -> Vec<u8> {
    let nblocks = rows * cols / 32;
    let mut out = Vec::with_capacity(nblocks * format.type_size());
    for _ in 0..nblocks {
        match format {
            WeightFormat::Q4_1 => {
                out.extend(f16_bits(0.004 + 0.002 * rng.f32()));
                out.extend(f16_bits(-0.03 + 0.01 * rng.f32()));
                out.extend((0..16).map(|_| rng.next() as u8));
            }
            WeightFormat::Q8_0 => {
                out.extend(f16_bits(0.0004 + 0.0002 * rng.f32()));
                out.extend((0..32).map(|_| (rng.next() % 255) as u8 ^ 0x80));
            }
            _ => unreachable!("only Q4_1 and Q8_0 are benchmarked"),
        }
    }
    out
}

fn random_x(m: usize, cols: usize, rng: &mut Lcg) -> Vec<f32> {
    (0..m * cols).map(|_| rng.f32()).collect()
}

fn single_matrices(c: &mut Criterion) {
    let mut rng = Lcg(1);
    for format in [WeightFormat::Q4_1, WeightFormat::Q8_0] {
        let mut group = c.benchmark_group(format!("qmatmul/{format:?}"));
        group
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1))
            .sample_size(10);
        for (name, rows, cols) in SHAPES {
            let bytes = random_weights(format, rows, cols, &mut rng);
            let w = WeightMatrix::new(format, rows, cols, &bytes).unwrap();
            group.throughput(Throughput::BytesDecimal(bytes.len() as u64));
            for m in [1usize, 4, 16, 64] {
                let x = random_x(m, cols, &mut rng);
                let mut out = vec![0f32; m * rows];
                let id = format!("{name}_{rows}x{cols}/m{m}");
                group.bench_function(BenchmarkId::new("fast", &id), |b| {
                    b.iter(|| matmul(black_box(&x), m, &w, &mut out).unwrap())
                });
                group.bench_function(BenchmarkId::new("reference", &id), |b| {
                    b.iter(|| matmul_reference(black_box(&x), m, &w, &mut out).unwrap())
                });
            }
        }
        group.finish();
    }
}

fn decode_step(c: &mut Criterion) {
    let mut rng = Lcg(2);
    // Per layer: q, k, v, o, gate, up, down.
    let layer_shapes = [
        (576, 576),
        (192, 576),
        (192, 576),
        (576, 576),
        (1536, 576),
        (1536, 576),
        (576, 1536),
    ];
    let layers: Vec<Vec<(Vec<u8>, usize, usize)>> = (0..LAYERS)
        .map(|_| {
            layer_shapes
                .iter()
                .map(|&(r, c)| (random_weights(WeightFormat::Q4_1, r, c, &mut rng), r, c))
                .collect()
        })
        .collect();
    let head = random_weights(WeightFormat::Q8_0, 49152, 576, &mut rng);
    let head = WeightMatrix::new(WeightFormat::Q8_0, 49152, 576, &head).unwrap();
    let mats: Vec<WeightMatrix> = layers
        .iter()
        .flatten()
        .map(|(b, r, c)| WeightMatrix::new(WeightFormat::Q4_1, *r, *c, b).unwrap())
        .collect();
    let total: usize = mats.iter().map(|w| w.data().len()).sum::<usize>() + head.data().len();
    eprintln!(
        "decode_step: {} matrices, {:.1} MB of weights",
        mats.len() + 1,
        total as f64 / 1e6
    );

    let mut group = c.benchmark_group("decode_step");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    for m in [1usize, 4, 16, 64] {
        let x576 = random_x(m, 576, &mut rng);
        let x1536 = random_x(m, 1536, &mut rng);
        let mut out = vec![0f32; m * 49152];
        group.throughput(Throughput::Elements(m as u64));
        group.bench_function(BenchmarkId::from_parameter(format!("m{m}")), |b| {
            b.iter(|| {
                for w in &mats {
                    let x = if w.cols() == 576 { &x576 } else { &x1536 };
                    matmul(black_box(x), m, w, &mut out[..m * w.rows()]).unwrap();
                }
                // The head: one row (decode, or the last position of a prefill chunk).
                matmul(&x576[..576], 1, &head, &mut out[..49152]).unwrap();
            })
        });
    }
    group.finish();
}

fn parallel_overhead(c: &mut Criterion) {
    let mut group = c.benchmark_group("parallel_overhead");
    group
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    for backend in [Backend::Pool, Backend::Rayon] {
        group.bench_function(format!("empty/{backend:?}"), |b| {
            pool::set_backend(backend);
            // Two one-row tasks with a no-op body: the dispatch path of a kernel call.
            b.iter(|| {
                pool::parallel_rows(2, 1, 1 << 20, &|r0, r1| {
                    black_box((r0, r1));
                })
            });
            pool::set_backend(Backend::Pool);
        });
    }
    let mut rng = Lcg(3);
    for (rows, cols) in [(192usize, 576usize), (576, 576), (1536, 576)] {
        let bytes = random_weights(WeightFormat::Q4_1, rows, cols, &mut rng);
        let w = WeightMatrix::new(WeightFormat::Q4_1, rows, cols, &bytes).unwrap();
        let x = random_x(1, cols, &mut rng);
        let mut out = vec![0f32; rows];
        for backend in [Backend::Pool, Backend::Rayon, Backend::Single] {
            group.bench_function(format!("q4_1_{rows}x{cols}_m1/{backend:?}"), |b| {
                pool::set_backend(backend);
                b.iter(|| matmul(black_box(&x), 1, &w, &mut out).unwrap());
                pool::set_backend(Backend::Pool);
            });
        }
    }
    group.finish();
}

fn by_isa(c: &mut Criterion) {
    let isas: Vec<Isa> = [Isa::Avx2, Isa::Avx512, Isa::Amx]
        .into_iter()
        .filter(|i| i.is_available())
        .collect();
    if isas.is_empty() {
        eprintln!("by_isa: no AVX2 on this CPU, skipped");
        return;
    }
    let mut rng = Lcg(4);
    let mut group = c.benchmark_group("by_isa");
    group
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20);
    for (name, format, rows, cols) in [
        ("router_qkv", WeightFormat::Q8_0, 768usize, 256usize),
        ("router_mlp_in", WeightFormat::Q8_0, 1024, 256),
        ("router_mlp_out", WeightFormat::Q8_0, 256, 512),
        ("minilm_mlp_in", WeightFormat::Q8_0, 1536, 384),
        ("minilm_mlp_out", WeightFormat::Q8_0, 384, 1536),
        ("smollm2_gate", WeightFormat::Q4_1, 1536, 576),
        ("smollm2_down", WeightFormat::Q4_1, 576, 1536),
    ] {
        let bytes = random_weights(format, rows, cols, &mut rng);
        let w = WeightMatrix::new(format, rows, cols, &bytes).unwrap();
        for m in [32usize, 256] {
            let x = random_x(m, cols, &mut rng);
            let mut out = vec![0f32; m * rows];
            group.throughput(Throughput::Elements((m * rows * cols) as u64));
            for &isa in &isas {
                let id = format!("{name}_{rows}x{cols}/m{m}/{}", isa.name());
                group.bench_function(BenchmarkId::from_parameter(id), |b| {
                    b.iter(|| matmul_with_isa(isa, black_box(&x), m, &w, &mut out).unwrap())
                });
            }
        }
    }
    group.finish();
}

criterion_group!(
    benches,
    single_matrices,
    decode_step,
    parallel_overhead,
    by_isa
);
criterion_main!(benches);
