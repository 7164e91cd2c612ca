//! Decode throughput and router latency on one device (`--device cuda:0`, or `cpu`).
//!
//! ```text
//! cargo run --release -p switchyard-benches --features cuda --example device_bench -- \
//!     --device cuda:0 [--router DIR]... [--steps 64] [--conc 1,16,64] [--gguf PATH]
//! ```
//!
//! - Decode: a random-weight GGUF with SmolLM2-135M's shapes (Q4_1 linear weights, Q8_0 embeddings, as the
//!   shipped SmolLM2 file) is written to a temporary file (or `--gguf` is used), loaded, and moved to the
//!   device. For each concurrency N: N sequences prefill a 128-token prompt, then `--steps` decode steps
//!   of all N run together; reported: tokens/s, step time, and the bytes a step must read (every weight
//!   once, plus each sequence's cached keys and values) over the step time, beside the device's copy
//!   bandwidth measured in the same run. Before timing, the device's logits are checked against the CPU
//!   decoder's on the same file.
//! - Router: each `--router` directory (ModernBERT, Hugging Face layout) is loaded in bf16 on the device
//!   (f32 on the CPU) and timed at batch 1 and 32 on 64-token inputs (median of 30 after 5 warm-ups,
//!   logits copied back to the host as the router does).
//! - Router while the generator is busy (`--busy-router DIR`, with `--busy-conc N`, default 16): one
//!   engine owns the device and decodes N long sequences of the random model; the router runs its
//!   batches on the engine's worker between decode steps (as `serve` does). Reported: `route()` latency
//!   idle and while the N sequences decode (median / p90 of 40 calls 20 ms apart), and the mean decode
//!   step time meanwhile: the wait a routed request pays is at most about one step.
//!   `--router-own-thread` runs the router on a thread of its own instead (a CPU-only alternative:
//!   no wait for the step, but the two share the cores).

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::time::Instant;
use switchyard_models::decoder::{BlockTable, Decoder, KvCache, LogitRows, SequenceInput};
use switchyard_models::encoder::MultiHeadClassifier;
use switchyard_models::weights::GgufFile;
use switchyard_models::DeviceSpec;
use switchyard_models::GenerationModel;

type Res<T> = std::result::Result<T, Box<dyn std::error::Error>>;

struct Shape {
    vocab: usize,
    hidden: usize,
    ff: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
}

const SMOLLM2_135M: Shape = Shape {
    vocab: 49152,
    hidden: 576,
    ff: 1536,
    layers: 30,
    heads: 9,
    kv_heads: 3,
};

fn random_gguf(path: &Path, s: &Shape) -> Res<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let dev = Device::Cpu;
    let mut mat = |rows: usize, cols: usize, scale: f32, dtype: GgmlDType| -> Res<QTensor> {
        let v: Vec<f32> = (0..rows * cols)
            .map(|_| rng.random_range(-scale..scale))
            .collect();
        Ok(QTensor::quantize(
            &Tensor::from_vec(v, (rows, cols), &dev)?,
            dtype,
        )?)
    };
    let hd = s.hidden / s.heads;
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    tensors.push((
        "token_embd.weight".into(),
        mat(s.vocab, s.hidden, 0.5, GgmlDType::Q8_0)?,
    ));
    let ones = |n: usize| -> Res<QTensor> {
        Ok(QTensor::quantize(
            &Tensor::ones(n, DType::F32, &dev)?,
            GgmlDType::F32,
        )?)
    };
    tensors.push(("output_norm.weight".into(), ones(s.hidden)?));
    let w = 1.0 / (s.hidden as f32).sqrt();
    let wf = 1.0 / (s.ff as f32).sqrt();
    for i in 0..s.layers {
        let p = |n: &str| format!("blk.{i}.{n}");
        tensors.push((p("attn_norm.weight"), ones(s.hidden)?));
        tensors.push((p("ffn_norm.weight"), ones(s.hidden)?));
        tensors.push((
            p("attn_q.weight"),
            mat(s.heads * hd, s.hidden, w, GgmlDType::Q4_1)?,
        ));
        tensors.push((
            p("attn_k.weight"),
            mat(s.kv_heads * hd, s.hidden, w, GgmlDType::Q4_1)?,
        ));
        tensors.push((
            p("attn_v.weight"),
            mat(s.kv_heads * hd, s.hidden, w, GgmlDType::Q4_1)?,
        ));
        tensors.push((
            p("attn_output.weight"),
            mat(s.hidden, s.heads * hd, w, GgmlDType::Q4_1)?,
        ));
        tensors.push((
            p("ffn_gate.weight"),
            mat(s.ff, s.hidden, w, GgmlDType::Q4_1)?,
        ));
        tensors.push((p("ffn_up.weight"), mat(s.ff, s.hidden, w, GgmlDType::Q4_1)?));
        tensors.push((
            p("ffn_down.weight"),
            mat(s.hidden, s.ff, wf, GgmlDType::Q4_1)?,
        ));
    }
    let u = |v: usize| Value::U32(v as u32);
    let meta: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.vocab_size", u(s.vocab)),
        ("llama.embedding_length", u(s.hidden)),
        ("llama.feed_forward_length", u(s.ff)),
        ("llama.block_count", u(s.layers)),
        ("llama.attention.head_count", u(s.heads)),
        ("llama.attention.head_count_kv", u(s.kv_heads)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.rope.freq_base", Value::F32(100000.0)),
        ("llama.context_length", u(8192)),
    ];
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path)?;
    gguf_file::write(&mut f, &meta_refs, &tensor_refs)?;
    Ok(())
}

fn load_decoder(path: &Path, device: &Device) -> Res<Decoder> {
    let gguf = GgufFile::open(path)?;
    Ok(Decoder::from_gguf(&gguf)?.to_device(device)?)
}

/// Device-to-device copy bandwidth (bytes read + written per second) over a 1 GiB buffer.
fn copy_bandwidth(device: &Device) -> Res<f64> {
    let n = 1usize << 28; // 1 GiB of f32
    let t = Tensor::ones(n, DType::F32, device)?;
    let _ = t.copy()?;
    device.synchronize()?;
    let reps = 10;
    let start = Instant::now();
    for _ in 0..reps {
        let _c = t.copy()?;
    }
    device.synchronize()?;
    Ok((2 * 4 * n * reps) as f64 / start.elapsed().as_secs_f64())
}

fn check_against_cpu(path: &Path, gpu: &Decoder, device: &Device) -> Res<()> {
    if device.is_cpu() {
        return Ok(());
    }
    let cpu = load_decoder(path, &Device::Cpu)?;
    let c = cpu.config().clone();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let prompt: Vec<u32> = (0..48)
        .map(|_| rng.random_range(0..c.vocab_size as u32))
        .collect();
    let mut results = Vec::new();
    for (d, dev) in [(&cpu, Device::Cpu), (gpu, device.clone())] {
        let mut cache = KvCache::new_on(&c, 16, 8, &dev)?;
        let mut t = BlockTable::default();
        assert!(cache.reserve(&mut t, prompt.len()));
        let batch = [SequenceInput {
            tokens: &prompt,
            start_position: 0,
            blocks: &t,
            logits: LogitRows::Last,
        }];
        results.push(d.forward_all(&batch, &mut cache)?);
    }
    let (a, b) = (&results[0], &results[1]);
    let v = c.vocab_size;
    let agree = a
        .chunks_exact(v)
        .zip(b.chunks_exact(v))
        .filter(|(x, y)| argmax(x) == argmax(y))
        .count();
    let (ma, mb) = (mean(a), mean(b));
    let cov: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - ma) * (*y as f64 - mb))
        .sum();
    let va: f64 = a.iter().map(|x| (*x as f64 - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (*y as f64 - mb).powi(2)).sum();
    let corr = cov / (va * vb).sqrt();
    println!(
        "check: device vs CPU decoder on the same Q4_1 file, 48 prefill positions: argmax agrees at {agree}/48, logit correlation {corr:.5}"
    );
    if corr < 0.99 {
        return Err(
            format!("device logits disagree with the CPU decoder (correlation {corr})").into(),
        );
    }
    Ok(())
}

fn mean(v: &[f32]) -> f64 {
    v.iter().map(|x| *x as f64).sum::<f64>() / v.len() as f64
}

fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

fn decode_bench(decoder: &Decoder, device: &Device, conc: usize, steps: usize, bw: f64) -> Res<()> {
    let c = decoder.config().clone();
    let prompt_len = 128;
    let block = 16;
    let per_seq = (prompt_len + steps).div_ceil(block);
    let mut cache = KvCache::new_on(&c, block, per_seq * conc, device)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(conc as u64);
    let prompts: Vec<Vec<u32>> = (0..conc)
        .map(|_| {
            (0..prompt_len)
                .map(|_| rng.random_range(0..c.vocab_size as u32))
                .collect()
        })
        .collect();
    let mut tables: Vec<BlockTable> = (0..conc).map(|_| BlockTable::default()).collect();
    for t in tables.iter_mut() {
        assert!(cache.reserve(t, prompt_len + steps));
    }
    // Prefill, a few sequences per call.
    for chunk in (0..conc).collect::<Vec<_>>().chunks(8) {
        let batch: Vec<SequenceInput> = chunk
            .iter()
            .map(|&i| SequenceInput {
                tokens: &prompts[i],
                start_position: 0,
                blocks: &tables[i],
                logits: LogitRows::Last,
            })
            .collect();
        decoder.forward(&batch, &mut cache)?;
    }
    let mut next: Vec<[u32; 1]> = (0..conc).map(|i| [i as u32 + 1]).collect();
    let mut step_times = Vec::new();
    let start = Instant::now();
    for s in 0..steps {
        let t0 = Instant::now();
        let batch: Vec<SequenceInput> = (0..conc)
            .map(|i| SequenceInput {
                tokens: &next[i],
                start_position: prompt_len + s,
                blocks: &tables[i],
                logits: LogitRows::Last,
            })
            .collect();
        let logits = decoder.forward(&batch, &mut cache)?;
        for (i, row) in logits.chunks_exact(c.vocab_size).enumerate() {
            next[i] = [argmax(row) as u32];
        }
        step_times.push(t0.elapsed().as_secs_f64());
    }
    let total = start.elapsed().as_secs_f64();
    step_times.sort_by(f64::total_cmp);
    let median = step_times[step_times.len() / 2];
    // Bytes a step must read: every weight once, plus the cached keys and values of every sequence at
    // its mean position during the run.
    let mean_ctx = prompt_len + steps / 2;
    let kv_bytes =
        conc * mean_ctx * KvCache::bytes_per_position(&c, switchyard_models::decoder::KvDtype::F32);
    let bytes = decoder.weight_bytes() + kv_bytes;
    let achieved = bytes as f64 / median;
    println!(
        "decode conc {conc:>3}: {:>8.0} tok/s, step median {:.3} ms, bytes/step {:.1} MB (weights {:.1} + KV {:.1}), {:.0} GB/s = {:.1}% of copy bandwidth",
        (conc * steps) as f64 / total,
        median * 1e3,
        bytes as f64 / 1e6,
        decoder.weight_bytes() as f64 / 1e6,
        kv_bytes as f64 / 1e6,
        achieved / 1e9,
        100.0 * achieved / bw
    );
    Ok(())
}

fn router_bench(dir: &Path, device: &Device) -> Res<()> {
    let dtype = switchyard_models::device::encoder_dtype(device);
    let model = MultiHeadClassifier::load(dir, device, dtype)?;
    let cfg = model.backbone().config().clone();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for batch in [1usize, 32] {
        let len = 64;
        let ids: Vec<Vec<u32>> = (0..batch)
            .map(|_| {
                (0..len)
                    .map(|_| rng.random_range(5..cfg.vocab_size as u32))
                    .collect()
            })
            .collect();
        let mut times = Vec::new();
        for i in 0..35 {
            let t0 = Instant::now();
            let (input, mask) = model.batch_inputs(&ids)?;
            let out = model.forward(&input, &mask)?;
            for h in &out {
                let _ = h.logits.flatten_all()?.to_vec1::<f32>()?;
            }
            if i >= 5 {
                times.push(t0.elapsed().as_secs_f64());
            }
        }
        times.sort_by(f64::total_cmp);
        println!(
            "router {} ({:?}, {} layers, hidden {}, {} classifier heads): batch {batch:>2} x {len} tokens: median {:.2} ms, p90 {:.2} ms",
            dir.display(),
            dtype,
            cfg.num_layers,
            cfg.hidden_size,
            model.heads().len(),
            times[times.len() / 2] * 1e3,
            times[times.len() * 9 / 10] * 1e3
        );
    }
    Ok(())
}

/// A word-level tokenizer with one made-up word per id of the random model's vocabulary.
fn numbered_tokenizer(vocab: usize) -> Res<switchyard_models::text::TextTokenizer> {
    use tokenizers::models::wordlevel::WordLevel;
    let words = (0..vocab).map(|i| (format!("t{i}"), i as u32)).collect();
    let model = WordLevel::builder()
        .vocab(words)
        .unk_token("t0".into())
        .build()
        .map_err(|e| e.to_string())?;
    let inner = tokenizers::Tokenizer::new(model);
    Ok(switchyard_models::text::TextTokenizer::new(
        inner,
        None,
        Vec::new(),
    ))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// `route()` latency idle and while one engine on the same device decodes `conc` sequences.
fn busy_router_bench(
    gguf: &Path,
    router_dir: &Path,
    device: &Device,
    conc: usize,
    own_thread: bool,
) -> Res<()> {
    use switchyard_engine::{
        Engine, EngineConfig, GenerationParams, GenerationRequest, Prompt, SamplingParams, Thinking,
    };
    use switchyard_models::text::ChatMessage;
    let decoder = load_decoder(gguf, device)?;
    let vocab = decoder.config().vocab_size;
    let model = GenerationModel {
        name: "random".into(),
        decoder,
        tokenizer: numbered_tokenizer(vocab)?,
        chat_template: None,
    };
    let engine = Engine::start(
        model,
        EngineConfig {
            max_num_seqs: conc.max(1),
            ..EngineConfig::default()
        },
    )?;
    let mut options =
        switchyard_router::RouterOptions::new(switchyard_router::RouterConfig::shipped_default()?);
    options.model_dir = Some(router_dir.to_path_buf());
    options.device = device.clone();
    options.dtype = switchyard_models::device::encoder_dtype(device);
    if !own_thread {
        options.executor = Some(std::sync::Arc::new(engine.executor()));
    }
    let router = switchyard_router::Router::load(options)?;
    let question = [ChatMessage::new(
        "user",
        "A train leaves at 3 pm at 80 km/h and another at 4 pm at 100 km/h; when does the second catch up?",
    )];
    let time_routes = |n: usize| -> Res<Vec<f64>> {
        let mut t = Vec::with_capacity(n);
        for _ in 0..n {
            let t0 = Instant::now();
            router.route(&question)?;
            t.push(t0.elapsed().as_secs_f64() * 1e3);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        t.sort_by(f64::total_cmp);
        Ok(t)
    };
    time_routes(5)?;
    let idle = time_routes(40)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let streams: Vec<_> = (0..conc)
        .map(|_| {
            let tokens = (0..128)
                .map(|_| rng.random_range(5..vocab as u32))
                .collect();
            engine.submit(GenerationRequest {
                prompt: Prompt::Tokens(tokens),
                params: GenerationParams {
                    sampling: SamplingParams::default(),
                    max_tokens: Some(100_000),
                    stop: Vec::new(),
                    stop_token_ids: Vec::new(),
                    ignore_eos: true,
                    thinking: Thinking::Off,
                    logprobs: None,
                    ..GenerationParams::default()
                },
            })
        })
        .collect::<Result<_, _>>()?;
    while engine.stats().snapshot().generated_tokens < 2 * conc as u64 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let before = engine.stats().snapshot();
    let t0 = Instant::now();
    let busy = time_routes(40)?;
    let after = engine.stats().snapshot();
    let steps = after.steps.saturating_sub(before.steps).max(1);
    let step_ms = t0.elapsed().as_secs_f64() * 1e3 / steps as f64;
    drop(streams);
    println!(
        "router {} on {}: idle median {:.2} ms, p90 {:.2} ms; while decoding {conc} \
         sequences: median {:.2} ms, p90 {:.2} ms (decode step {:.2} ms, {} steps meanwhile)",
        router_dir.display(),
        if own_thread {
            "a thread of its own"
        } else {
            "the engine's worker"
        },
        percentile(&idle, 0.5),
        percentile(&idle, 0.9),
        percentile(&busy, 0.5),
        percentile(&busy, 0.9),
        step_ms,
        steps
    );
    Ok(())
}

fn main() -> Res<()> {
    let mut args = std::env::args().skip(1);
    let mut device = DeviceSpec::Cpu;
    let mut routers = Vec::new();
    let mut steps = 64;
    let mut concs = vec![1, 16, 64];
    let mut gguf: Option<PathBuf> = None;
    let mut busy_router: Option<PathBuf> = None;
    let mut busy_conc = 16;
    let mut router_thread = false;
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--device" => device = val()?.parse()?,
            "--router" => routers.push(PathBuf::from(val()?)),
            "--steps" => steps = val()?.parse()?,
            "--conc" => {
                concs = val()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--gguf" => gguf = Some(PathBuf::from(val()?)),
            "--busy-router" => busy_router = Some(PathBuf::from(val()?)),
            "--busy-conc" => busy_conc = val()?.parse()?,
            "--router-own-thread" => router_thread = true,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let device = device.open()?;
    println!("device: {device:?}");
    for dir in &routers {
        router_bench(dir, &device)?;
    }
    if steps == 0 && busy_router.is_none() {
        return Ok(());
    }
    let path = match gguf {
        Some(p) => p,
        None => {
            let p = std::env::temp_dir().join("switchyard-random-smollm2-135m-q4_1.gguf");
            let t = Instant::now();
            random_gguf(&p, &SMOLLM2_135M)?;
            println!(
                "wrote random-weight SmolLM2-135M-shaped Q4_1 GGUF in {:.1} s",
                t.elapsed().as_secs_f32()
            );
            p
        }
    };
    if let Some(dir) = &busy_router {
        busy_router_bench(&path, dir, &device, busy_conc, router_thread)?;
    }
    if steps == 0 {
        return Ok(());
    }
    let decoder = load_decoder(&path, &device)?;
    check_against_cpu(&path, &decoder, &device)?;
    let bw = if device.is_cpu() {
        f64::NAN
    } else {
        copy_bandwidth(&device)?
    };
    println!("device copy bandwidth (read + write): {:.0} GB/s", bw / 1e9);
    for conc in concs {
        decode_bench(&decoder, &device, conc, steps, bw)?;
    }
    Ok(())
}
