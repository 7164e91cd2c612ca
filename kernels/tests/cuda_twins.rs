//! Every CUDA kernel against its CPU twin on random inputs (`switchyard_kernels::ops` on a CUDA tensor
//! vs the same call on a CPU tensor). Skips, saying why, when the build has no CUDA support or no GPU
//! can be opened.

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use switchyard_kernels::attention::cache_slot;
use switchyard_kernels::ops::{self, AttentionMeta};
use switchyard_kernels::{AttentionShape, RotaryStyle, SequenceSpan};

fn gpu() -> Option<Device> {
    match switchyard_kernels::device::cuda_device(0) {
        Ok(d) => Some(d),
        Err(reason) => {
            println!("skipped (no GPU): {reason}");
            None
        }
    }
}

fn random(rng: &mut impl Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect()
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// ‖a − b‖ / ‖b‖, failing on any non-finite value.
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut num, mut den) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        assert!(
            x.is_finite() && y.is_finite(),
            "non-finite value: {x} vs {y}"
        );
        num += ((x - y) as f64).powi(2);
        den += (*y as f64).powi(2);
    }
    (num / den.max(1e-30)).sqrt()
}

fn both(data: &[f32], shape: &[usize], gpu: &Device) -> (Tensor, Tensor) {
    (
        Tensor::from_slice(data, shape, &Device::Cpu).unwrap(),
        Tensor::from_slice(data, shape, gpu).unwrap(),
    )
}

#[test]
fn rms_norm_and_fused_residual_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for (rows, cols) in [(1, 576), (7, 896), (64, 64), (3, 1000), (130, 2048)] {
        let x = random(&mut rng, rows * cols);
        let r = random(&mut rng, rows * cols);
        let w = random(&mut rng, cols);
        let (xc, xg) = both(&x, &[rows, cols], &gpu);
        let (rc, rg) = both(&r, &[rows, cols], &gpu);
        let (wc, wg) = both(&w, &[cols], &gpu);
        let want = to_vec(&ops::rms_norm(&xc, &wc, 1e-5).unwrap());
        let got = to_vec(&ops::rms_norm(&xg, &wg, 1e-5).unwrap());
        let e = rel_err(&got, &want);
        assert!(e < 1e-5, "rms_norm {rows}x{cols}: {e}");

        let (sc, nc) = ops::add_rms_norm(&xc, &rc, &wc, 1e-6).unwrap();
        let (sg, ng) = ops::add_rms_norm(&xg, &rg, &wg, 1e-6).unwrap();
        let es = rel_err(&to_vec(&sg), &to_vec(&sc));
        let en = rel_err(&to_vec(&ng), &to_vec(&nc));
        assert!(
            es < 1e-6 && en < 1e-5,
            "add_rms_norm {rows}x{cols}: {es} {en}"
        );
    }
}

#[test]
fn rotary_matches_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    for (rows, heads, hd, style) in [
        (1, 9, 64, RotaryStyle::HalfSplit),
        (33, 14, 64, RotaryStyle::Interleaved),
        (5, 2, 128, RotaryStyle::HalfSplit),
        (300, 3, 64, RotaryStyle::HalfSplit),
    ] {
        let x = random(&mut rng, rows * heads * hd);
        let angles: Vec<f32> = random(&mut rng, rows * hd / 2);
        let cos: Vec<f32> = angles.iter().map(|a| (a * 3.0).cos()).collect();
        let sin: Vec<f32> = angles.iter().map(|a| (a * 3.0).sin()).collect();
        let (xc, xg) = both(&x, &[rows, heads * hd], &gpu);
        let (cc, cg) = both(&cos, &[rows, hd / 2], &gpu);
        let (sc, sg) = both(&sin, &[rows, hd / 2], &gpu);
        ops::rotary_in_place(&xc, &cc, &sc, hd, style).unwrap();
        ops::rotary_in_place(&xg, &cg, &sg, hd, style).unwrap();
        let e = rel_err(&to_vec(&xg), &to_vec(&xc));
        assert!(e < 1e-6, "rotary {rows}x{heads}x{hd} {style:?}: {e}");
        assert_ne!(to_vec(&xc), x, "rotary changed nothing");
    }
}

#[test]
fn kv_writes_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let (slots_total, width, rows) = (512, 192, 40);
    // Poisoned (random, not zero) cache: every untouched slot must survive, every touched one change.
    let cache = random(&mut rng, slots_total * width);
    let src = random(&mut rng, rows * width);
    let mut slots: Vec<u32> = (0..slots_total as u32).collect();
    for i in 0..rows {
        let j = rng.random_range(i..slots_total);
        slots.swap(i, j);
    }
    slots.truncate(rows);
    let max = *slots.iter().max().unwrap();
    let (cc, cg) = both(&cache, &[slots_total, width], &gpu);
    let (sc, sg) = both(&src, &[rows, width], &gpu);
    let slots_c = Tensor::from_slice(&slots, rows, &Device::Cpu).unwrap();
    let slots_g = Tensor::from_slice(&slots, rows, &gpu).unwrap();
    ops::write_kv(&cc, &sc, &slots_c, max).unwrap();
    ops::write_kv(&cg, &sg, &slots_g, max).unwrap();
    assert_eq!(to_vec(&cg), to_vec(&cc));
    let written = to_vec(&cc);
    assert_eq!(
        &written[slots[0] as usize * width..][..width],
        &src[..width]
    );

    // A caller that understates the largest slot: the device skips the row past the cache instead
    // of writing beyond it, and writes the others.
    let wild = Tensor::from_slice(&[1u32, 1_000_000, 2], 3, &gpu).unwrap();
    let rows3 = Tensor::from_slice(&src[..3 * width], (3, width), &gpu).unwrap();
    ops::write_kv(&cg, &rows3, &wild, 2).unwrap();
    let after = to_vec(&cg);
    assert_eq!(&after[width..][..width], &src[..width]);
    assert_eq!(&after[2 * width..][..width], &src[2 * width..][..width]);
    assert_eq!(after.len(), slots_total * width);
}

#[test]
fn paged_attention_matches_the_cpu_on_ragged_batches() {
    let Some(gpu) = gpu() else { return };
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    // (heads, kv_heads, head_dim, block_size, sequences as (cached positions, new rows))
    type Case = (usize, usize, usize, usize, Vec<(usize, usize)>);
    let cases: [Case; 4] = [
        (
            9,
            3,
            64,
            16,
            vec![(0, 1), (37, 1), (0, 23), (100, 1), (5, 9)],
        ),
        (14, 2, 64, 16, vec![(1000, 1), (12, 1), (0, 64), (255, 1)]),
        (4, 4, 128, 8, vec![(3, 1), (40, 7)]),
        (8, 1, 256, 32, vec![(70, 1), (0, 5), (300, 2)]),
    ];
    for (heads, kv_heads, head_dim, block_size, seqs) in cases {
        let shape = AttentionShape {
            heads,
            kv_heads,
            head_dim,
            block_size,
        };
        let blocks_needed: Vec<usize> = seqs
            .iter()
            .map(|(c, n)| (c + n).div_ceil(block_size))
            .collect();
        let num_blocks = blocks_needed.iter().sum::<usize>() + 7;
        // Shuffled block ids so sequences' blocks interleave in the pool.
        let mut ids: Vec<u32> = (0..num_blocks as u32).collect();
        for i in (1..ids.len()).rev() {
            ids.swap(i, rng.random_range(0..=i));
        }
        let mut tables = Vec::new();
        let mut at = 0;
        for &n in &blocks_needed {
            tables.push(ids[at..at + n].to_vec());
            at += n;
        }
        let kv_width = kv_heads * head_dim;
        let k = random(&mut rng, num_blocks * block_size * kv_width);
        let v = random(&mut rng, num_blocks * block_size * kv_width);
        let rows: usize = seqs.iter().map(|s| s.1).sum();
        let q = random(&mut rng, rows * heads * head_dim);
        let mut spans = Vec::new();
        let mut first = 0;
        for ((cached, n), t) in seqs.iter().zip(&tables) {
            spans.push(SequenceSpan {
                first_row: first,
                rows: *n,
                start_position: *cached,
                blocks: t,
            });
            first += n;
        }
        let cache_shape = [num_blocks * block_size, kv_width];
        let (kc, kg) = both(&k, &cache_shape, &gpu);
        let (vc, vg) = both(&v, &cache_shape, &gpu);
        let (qc, qg) = both(&q, &[rows, heads * head_dim], &gpu);
        let scale = 1.0 / (head_dim as f32).sqrt();
        let meta_c = AttentionMeta::new(&spans, block_size, &Device::Cpu).unwrap();
        let meta_g = AttentionMeta::new(&spans, block_size, &gpu).unwrap();
        let want = to_vec(&ops::paged_attention(&qc, &kc, &vc, &meta_c, shape, scale).unwrap());
        let got = to_vec(&ops::paged_attention(&qg, &kg, &vg, &meta_g, shape, scale).unwrap());
        let e = rel_err(&got, &want);
        assert!(
            e < 1e-5,
            "paged attention {heads}/{kv_heads}x{head_dim} bs {block_size}: {e}"
        );
        // Metadata on another device than the queries is refused, not read.
        if rows > 0 {
            assert!(ops::paged_attention(&qg, &kg, &vg, &meta_c, shape, scale).is_err());
        }
        // The slot helper agrees with where write_kv puts a position.
        let s = &spans[0];
        assert_eq!(
            cache_slot(block_size, s.blocks, 0) as usize,
            s.blocks[0] as usize * block_size
        );
    }
}

#[test]
fn ops_reject_out_of_range_blocks() {
    // Runs on the CPU too: the checks happen before any launch.
    let shape = AttentionShape {
        heads: 2,
        kv_heads: 1,
        head_dim: 4,
        block_size: 2,
    };
    let cache = Tensor::zeros((4, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
    let q = Tensor::zeros((1, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
    let spans = [SequenceSpan {
        first_row: 0,
        rows: 1,
        start_position: 0,
        blocks: &[5],
    }];
    let meta = AttentionMeta::new(&spans, 2, &Device::Cpu).unwrap();
    assert!(ops::paged_attention(&q, &cache, &cache, &meta, shape, 1.0).is_err());
    let src = Tensor::zeros((1, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
    let slots = Tensor::from_slice(&[9u32], 1, &Device::Cpu).unwrap();
    assert!(ops::write_kv(&cache, &src, &slots, 9).is_err());

    // Positions that wrap, or that the device's u32 loops could not count to, are refused before
    // anything is uploaded (a wrapped end would need no block table at all).
    for start_position in [usize::MAX, u32::MAX as usize, ops::MAX_DEVICE_POSITIONS] {
        let spans = [SequenceSpan {
            first_row: 0,
            rows: 1,
            start_position,
            blocks: &[],
        }];
        let e = AttentionMeta::new(&spans, 65536, &Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("attention positions"), "{e}");
    }
    // A zero head dimension is an error, not a division by zero.
    let flat = AttentionShape {
        head_dim: 0,
        ..shape
    };
    let meta = AttentionMeta::new(&[], 2, &Device::Cpu).unwrap();
    let empty = Tensor::zeros((0, 0), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(ops::paged_attention(&empty, &cache, &cache, &meta, flat, 1.0).is_err());
}
