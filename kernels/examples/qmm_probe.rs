//! Quick timing probe for `matmul` (medians of 7 runs, plain loops, no criterion):
//!
//! - `qmm_probe ROWS COLS M [COPIES] [FORMAT]`: one shape on the single-thread / pool / rayon
//!   backends (`PROBE_BACKENDS=single|pool|sp` to narrow); `COPIES` distinct matrices are cycled
//!   so that more than the caches can hold comes from DRAM; FORMAT: q4_0 q4_1 q5_0 q5_1 q8_0 q4k
//!   q5k q6k q2k q3k f16 f32.
//! - `qmm_probe decode M...`: all 211 matmuls of SmolLM2-135M Q4_1 for `M` tokens.
//!
//! `cargo run --release -p switchyard-kernels --example qmm_probe -- decode 1 64`; `PF=bytes`
//! overrides the prefetch distance, `SWITCHYARD_KERNEL_ISA` / `SWITCHYARD_THREADS` as usual.
use std::time::Instant;
use switchyard_kernels::pool::{self, Backend};
use switchyard_kernels::{matmul, WeightFormat, WeightMatrix};

/// Random blocks whose f16 scales are small normal numbers (timing does not depend on values).
fn random_bytes(fmt: WeightFormat, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    let nb = rows * cols / fmt.block_size();
    let ts = fmt.type_size();
    let mut bytes = vec![0u8; nb * ts];
    let mut s = seed;
    // High bytes of the f16 fields (scales, minimums), per format.
    let f16_hi: &[usize] = match fmt {
        WeightFormat::Q4_0 | WeightFormat::Q5_0 | WeightFormat::Q8_0 | WeightFormat::F16 => &[1],
        WeightFormat::Q4_1 | WeightFormat::Q5_1 | WeightFormat::Q4K | WeightFormat::Q5K => &[1, 3],
        WeightFormat::Q6K => &[209],
        WeightFormat::Q2K => &[81, 83],
        WeightFormat::Q3K => &[109],
        _ => &[],
    };
    for (k, b) in bytes.iter_mut().enumerate() {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *b = (s >> 40) as u8;
        let off = k % ts;
        if f16_hi.contains(&off) {
            *b = 0x1c;
        } else if fmt == WeightFormat::F32 && off == 3 {
            *b = 0x3c;
        }
    }
    bytes
}

fn decode(m: usize) {
    let shapes = [
        (576, 576),
        (192, 576),
        (192, 576),
        (576, 576),
        (1536, 576),
        (1536, 576),
        (576, 1536),
    ];
    let mut bufs = Vec::new();
    for l in 0..30 {
        for (k, &(r, c)) in shapes.iter().enumerate() {
            bufs.push((
                random_bytes(WeightFormat::Q4_1, r, c, (l * 10 + k) as u64 + 1),
                r,
                c,
            ));
        }
    }
    let head = random_bytes(WeightFormat::Q8_0, 49152, 576, 999);
    let mats: Vec<WeightMatrix> = bufs
        .iter()
        .map(|(b, r, c)| WeightMatrix::new(WeightFormat::Q4_1, *r, *c, b).unwrap())
        .collect();
    let head = WeightMatrix::new(WeightFormat::Q8_0, 49152, 576, &head).unwrap();
    let x: Vec<f32> = (0..m * 1536)
        .map(|k| ((k * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let mut out = vec![0f32; 49152 * m];
    let mut times = Vec::new();
    let mut layer_t = Vec::new();
    for _ in 0..40 {
        let t0 = Instant::now();
        for w in &mats {
            matmul(&x[..m * w.cols()], m, w, &mut out[..m * w.rows()]).unwrap();
        }
        let t1 = Instant::now();
        matmul(&x[..576], 1, &head, &mut out[..49152]).unwrap();
        times.push(t0.elapsed().as_secs_f64());
        layer_t.push((t1 - t0).as_secs_f64());
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    layer_t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "decode m={m}: median {:.3} ms (min {:.3}) per step, layers only {:.3} ms -> {:.0} tok/s",
        times[20] * 1e3,
        times[0] * 1e3,
        layer_t[20] * 1e3,
        m as f64 / times[20]
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(|s| s.as_str()) == Some("decode") {
        if let Ok(v) = std::env::var("PF") {
            switchyard_kernels::qmatmul::PREFETCH_DISTANCE
                .store(v.parse().unwrap(), std::sync::atomic::Ordering::Relaxed);
        }
        for m in args[2..].iter().map(|s| s.parse::<usize>().unwrap()) {
            decode(m);
        }
        return;
    }
    let rows: usize = args.get(1).map_or(1536, |s| s.parse().unwrap());
    let cols: usize = args.get(2).map_or(576, |s| s.parse().unwrap());
    let m: usize = args.get(3).map_or(1, |s| s.parse().unwrap());
    let copies: usize = args.get(4).map_or(1, |s| s.parse().unwrap());
    let fmt = match args.get(5).map(|s| s.as_str()) {
        Some("q8_0") => WeightFormat::Q8_0,
        Some("q4_0") => WeightFormat::Q4_0,
        Some("q5_0") => WeightFormat::Q5_0,
        Some("q5_1") => WeightFormat::Q5_1,
        Some("q4k") => WeightFormat::Q4K,
        Some("q5k") => WeightFormat::Q5K,
        Some("q6k") => WeightFormat::Q6K,
        Some("q2k") => WeightFormat::Q2K,
        Some("q3k") => WeightFormat::Q3K,
        Some("f16") => WeightFormat::F16,
        Some("f32") => WeightFormat::F32,
        _ => WeightFormat::Q4_1,
    };
    if let Ok(v) = std::env::var("PF") {
        switchyard_kernels::qmatmul::PREFETCH_DISTANCE
            .store(v.parse().unwrap(), std::sync::atomic::Ordering::Relaxed);
    }
    let nb = rows * cols / fmt.block_size();
    let mut bytes = Vec::new();
    for c in 0..copies {
        bytes.extend(random_bytes(fmt, rows, cols, c as u64 + 1));
    }
    let per = nb * fmt.type_size();
    let ws: Vec<WeightMatrix> = (0..copies)
        .map(|c| WeightMatrix::new(fmt, rows, cols, &bytes[c * per..(c + 1) * per]).unwrap())
        .collect();
    let x: Vec<f32> = (0..m * cols)
        .map(|k| ((k * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let mut out = vec![0f32; m * rows];
    let backends: Vec<Backend> = match std::env::var("PROBE_BACKENDS").as_deref() {
        Ok("single") => vec![Backend::Single],
        Ok("pool") => vec![Backend::Pool],
        Ok("sp") => vec![Backend::Single, Backend::Pool],
        _ => vec![Backend::Single, Backend::Pool, Backend::Rayon],
    };
    for backend in backends {
        pool::set_backend(backend);
        let iters = (2_000_000_000 / (rows * cols * m).max(1)).clamp(20, 20000);
        let mut times = Vec::new();
        for _ in 0..7 {
            let t0 = Instant::now();
            for it in 0..iters {
                matmul(&x, m, &ws[it % copies], &mut out).unwrap();
            }
            times.push(t0.elapsed().as_secs_f64() / iters as f64);
        }
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let t = times[times.len() / 2];
        println!(
            "{backend:?}: {rows}x{cols} m={m} {fmt:?}: {:.2} us/call (min {:.2}), {:.1} GB/s weights, {:.1} GMAC/s",
            t * 1e6,
            times[0] * 1e6,
            per as f64 / t / 1e9,
            (rows * cols * m) as f64 / t / 1e9
        );
    }
}
