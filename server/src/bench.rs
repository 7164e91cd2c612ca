//! `switchyard bench engine`: prefill and decode throughput of the engine on one GGUF, side by side
//! with llama.cpp (through llama-cpp-python) on the same file, the same prompts and thread count.
//!
//! Protocol (the same on both sides):
//! - prefill: one prompt of `--prefill-tokens` tokens, time to its first token;
//! - decode at batch 1: after that prefill, `--new-tokens` greedy steps, tokens / time;
//! - score: the log-probability of every token of that prompt (logits at every position, then
//!   their log-softmax at the next token), as an evaluation harness asks `/v1/completions` with
//!   `echo` and `logprobs`; prompt tokens / time;
//! - aggregate decode at N concurrent sequences: N short chat prompts prefilled together, then
//!   `--new-tokens` steps of N tokens each; N × new tokens / time of those steps.
//!
//! All of those compute every prompt in full (prefix caching off). Then, Switchyard alone, with
//! prefix caching off and on: time to first token of a follow-up turn (the prefill prompt + 32
//! tokens; with caching on, right after the engine served the prefill prompt), and the time until
//! all of 4 sequences of one prompt submitted together (an `n = 4` request) have their first token.
//!
//! Every number is the median of `--repeats` runs.

use crate::generate::resolve_model;
use crate::stats::median;
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;
use switchyard_engine::{
    Engine, EngineConfig, Event, GenerationParams, GenerationRequest, GenerationStream, Prompt,
    Usage,
};
use switchyard_models::text::ChatMessage;

/// Options of `bench engine`.
#[derive(clap::Args, Debug)]
pub struct EngineBenchArgs {
    /// GGUF model (default: the default model).
    #[arg(long, env = "SWITCHYARD_MODEL")]
    model: Option<PathBuf>,
    /// Tokens in the prefill prompt.
    #[arg(long, default_value_t = 267)]
    prefill_tokens: usize,
    /// New tokens per sequence in the decode measurements.
    #[arg(long, default_value_t = 128)]
    new_tokens: usize,
    /// Concurrency levels for aggregate decode.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    concurrency: Vec<usize>,
    /// Runs per measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Python with llama-cpp-python installed, to measure llama.cpp side by side.
    #[arg(long)]
    llama_python: Option<PathBuf>,
    /// Threads llama.cpp may use (match the cores Switchyard uses).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Folder for results (`engine.json`, `engine.md`).
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Element type of the KV cache (`auto`: f16, as `serve` uses on the CPU).
    #[arg(long, value_enum, default_value_t = switchyard_server::serve::KvCacheDtype::Auto)]
    kv_cache_dtype: switchyard_server::serve::KvCacheDtype,
}

#[derive(Serialize, Debug, Clone, Default)]
struct Aggregate {
    concurrency: usize,
    decode_tok_s: f64,
    prefill_s: f64,
}

#[derive(Serialize, Debug, Clone, Default)]
struct EngineResult {
    engine: String,
    prefill_tokens: usize,
    prefill_tok_s: f64,
    decode_tok_s: f64,
    /// Prompt tokens scored per second.
    score_tok_s: f64,
    aggregate: Vec<Aggregate>,
    prefix_cache: PrefixCacheResult,
}

/// Time to first token of a follow-up turn, computed in full and with its prefix cached.
#[derive(Serialize, Debug, Clone, Default)]
struct PrefixCacheResult {
    prompt_tokens: usize,
    cached_tokens: usize,
    full_ttft_ms: f64,
    cached_ttft_ms: f64,
    /// Sequences of one prompt submitted together.
    choices: usize,
    /// Time until all of them have their first token, caching off / on.
    choices_full_ms: f64,
    choices_cached_ms: f64,
}

#[derive(Serialize)]
struct Report {
    machine: String,
    model: String,
    new_tokens: usize,
    repeats: usize,
    switchyard: EngineResult,
    llama_cpp: Option<serde_json::Value>,
}

pub(crate) const QUESTIONS: [&str; 16] = [
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
    "Explain photosynthesis in simple words.",
    "How do I reverse a list in Python?",
    "Give me three tips for better sleep.",
    "What is 17 times 23?",
    "Why is the sky blue?",
    "Name a famous painting by Monet.",
    "Summarize the plot of Romeo and Juliet.",
    "What does HTTP stand for?",
    "Suggest a name for a grey cat.",
    "How many legs does a spider have?",
    "What is the boiling point of water?",
    "Translate 'good morning' into Spanish.",
    "What is a prime number?",
    "Describe the ocean in one sentence.",
];

const LONG_TEXT: &str =
    "The history of railways is a story of engineering, commerce and ambition. \
Early wagonways used wooden rails to move coal from mines to rivers, and horses pulled the wagons. \
In the nineteenth century steam locomotives changed everything: goods and people could travel \
farther and faster than ever before, towns grew around stations, and time itself was standardized \
so that timetables could work. Switchyards, where cars are sorted onto different tracks to form \
new trains, became the nerve centres of freight networks. ";

/// The machine, in words: CPU model, core count and the instruction set the CPU kernels use
/// (the same CPU model name covers AVX2-only and AVX-512 machines).
pub fn machine_name() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let isa = switchyard_kernels::Isa::best().name();
    format!("{cpu}, {cores} cores, {isa} kernels")
}

pub(crate) fn request(tokens: Vec<u32>, max_tokens: usize) -> GenerationRequest {
    GenerationRequest {
        prompt: Prompt::Tokens(tokens),
        params: GenerationParams {
            max_tokens: Some(max_tokens),
            ignore_eos: true,
            ..Default::default()
        },
    }
}

/// Waits for a stream's end; returns its (first-token, end) instants, taken from the engine's own
/// timings so that reading several streams one after another does not skew them.
pub(crate) fn finish(submitted: Instant, stream: GenerationStream) -> Result<(Instant, Instant)> {
    let usage = finished_usage(stream)?;
    let at = |s: f64| submitted + std::time::Duration::from_secs_f64(s);
    Ok((at(usage.time_to_first_token), at(usage.total_time)))
}

/// Waits for a stream's end; returns its usage.
fn finished_usage(stream: GenerationStream) -> Result<Usage> {
    loop {
        match stream.recv() {
            Some(Event::Delta { .. } | Event::Logprob(_) | Event::PromptLogprob(_)) => {}
            Some(Event::Finished { usage, .. }) => return Ok(usage),
            Some(Event::Error(e)) => bail!("generation failed: {e}"),
            None => bail!("stream ended early"),
        }
    }
}

/// Sequences of one prompt submitted together in the prefix-cache measurement.
const CHOICES: usize = 4;

/// Submits [`CHOICES`] sequences of `prompt` at once; returns the milliseconds until the last of
/// them has its first token.
fn all_first_tokens(engine: &Engine, prompt: &[u32]) -> Result<f64> {
    let streams: Vec<GenerationStream> = (0..CHOICES)
        .map(|_| engine.submit(request(prompt.to_vec(), 1)))
        .collect::<std::result::Result<_, _>>()?;
    let mut last = 0f64;
    for stream in streams {
        last = last.max(finished_usage(stream)?.time_to_first_token);
    }
    Ok(last * 1e3)
}

/// Tokens a follow-up turn adds to the first turn's prompt.
const FOLLOW_UP_TOKENS: usize = 32;

/// The `r`-th first turn (`prompt` rotated, so that no two share a prefix) and its follow-up (the
/// first turn and [`FOLLOW_UP_TOKENS`] more).
fn follow_up(prompt: &[u32], r: usize) -> (Vec<u32>, Vec<u32>) {
    let mut first = prompt.to_vec();
    first.rotate_left((r * 7) % prompt.len().max(1));
    let mut turn = first.clone();
    turn.extend(prompt.iter().cycle().take(FOLLOW_UP_TOKENS));
    (first, turn)
}

/// Runs `bench engine`.
pub fn run(args: EngineBenchArgs) -> Result<()> {
    let path = resolve_model(args.model)?;
    let model = switchyard_models::load_generation_model(&path)
        .with_context(|| format!("loading {}", path.display()))?;
    let max_c = args.concurrency.iter().copied().max().unwrap_or(1);
    let config = EngineConfig {
        max_num_seqs: max_c.max(CHOICES),
        max_batch_tokens: 512.max(args.prefill_tokens + FOLLOW_UP_TOKENS),
        kv_cache_dtype: args.kv_cache_dtype.resolve(&candle_core::Device::Cpu),
        prefix_caching: false,
        ..Default::default()
    };
    let engine = Engine::start(model, config.clone())?;
    let tok = engine.tokenizer();
    let mut prefill_prompt = Vec::new();
    while prefill_prompt.len() < args.prefill_tokens {
        prefill_prompt.extend(tok.encode(LONG_TEXT)?);
    }
    prefill_prompt.truncate(args.prefill_tokens);
    let decode_prompts: Vec<Vec<u32>> = (0..max_c)
        .map(|i| {
            let text = engine.render_chat(
                &[ChatMessage::new("user", QUESTIONS[i % QUESTIONS.len()])],
                switchyard_engine::Thinking::Off,
            )?;
            Ok(tok.encode_prompt(&text)?)
        })
        .collect::<Result<_>>()?;

    std::fs::create_dir_all(&args.out)?;
    let steps =
        args.repeats * (4 + args.concurrency.len()) + usize::from(args.llama_python.is_some());
    let bar = ProgressBar::new(steps as u64).with_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}").expect("valid template"),
    );
    // Warm-up: page the weights in.
    finish(
        Instant::now(),
        engine.submit(request(prefill_prompt.clone(), 2))?,
    )?;

    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    for _ in 0..args.repeats {
        bar.set_message("switchyard prefill + batch-1 decode");
        let t0 = Instant::now();
        let (first, end) = finish(
            t0,
            engine.submit(request(prefill_prompt.clone(), args.new_tokens + 1))?,
        )?;
        prefill.push(args.prefill_tokens as f64 / (first - t0).as_secs_f64());
        bar.inc(1);
        decode.push(args.new_tokens as f64 / (end - first).as_secs_f64());
        bar.inc(1);
    }
    let mut score = Vec::new();
    for _ in 0..args.repeats {
        bar.set_message("switchyard scoring the prompt");
        let mut scored = request(prefill_prompt.clone(), 0);
        scored.params.prompt_logprobs = Some(0);
        let t0 = Instant::now();
        let stream = engine.submit(scored)?;
        let mut logprobs = 0;
        loop {
            match stream.recv() {
                Some(Event::PromptLogprob(_)) => logprobs += 1,
                Some(Event::Finished { .. }) => break,
                Some(Event::Error(e)) => bail!("scoring failed: {e}"),
                Some(_) => {}
                None => bail!("stream ended early"),
            }
        }
        if logprobs + 1 != prefill_prompt.len() {
            bail!(
                "{logprobs} log-probabilities for a {}-token prompt",
                prefill_prompt.len()
            );
        }
        score.push(args.prefill_tokens as f64 / t0.elapsed().as_secs_f64());
        bar.inc(1);
    }
    // The decode window runs from the last first token to the last end, so tokens decoded before
    // it would be counted without their time: a step budget wide enough for every prompt of a run
    // lets the sequences, submitted back to back, start together (a sequence the worker admits a
    // step late still decodes a token or so outside the window).
    let prompts_total: usize = decode_prompts.iter().map(Vec::len).sum();
    let wide = if prompts_total > config.max_batch_tokens {
        Some(Engine::start(
            switchyard_models::load_generation_model(&path)?,
            EngineConfig {
                max_batch_tokens: prompts_total,
                ..config.clone()
            },
        )?)
    } else {
        None
    };
    let decode_engine = wide.as_ref().unwrap_or(&engine);
    if wide.is_some() {
        // The same warm-up the first engine had from the runs above.
        finished_usage(decode_engine.submit(request(decode_prompts[0].clone(), 2))?)?;
    }
    let mut aggregate = Vec::new();
    for &c in &args.concurrency {
        let (mut rates, mut prefills) = (Vec::new(), Vec::new());
        for _ in 0..args.repeats {
            bar.set_message(format!("switchyard {c} concurrent sequences"));
            let t0 = Instant::now();
            let streams: Vec<(Instant, GenerationStream)> = decode_prompts[..c]
                .iter()
                .map(|p| {
                    Ok((
                        Instant::now(),
                        decode_engine.submit(request(p.clone(), args.new_tokens + 1))?,
                    ))
                })
                .collect::<Result<_>>()?;
            let times: Vec<(Instant, Instant)> = streams
                .into_iter()
                .map(|(at, s)| finish(at, s))
                .collect::<Result<_>>()?;
            let all_first = times.iter().map(|t| t.0).max().expect("c >= 1");
            let all_end = times.iter().map(|t| t.1).max().expect("c >= 1");
            prefills.push((all_first - t0).as_secs_f64());
            rates.push((c * args.new_tokens) as f64 / (all_end - all_first).as_secs_f64());
            bar.inc(1);
        }
        aggregate.push(Aggregate {
            concurrency: c,
            decode_tok_s: median(rates),
            prefill_s: median(prefills),
        });
    }
    drop(wide);
    bar.set_message("switchyard follow-up turn, prefix cached or not");
    let follow_ups: Vec<(Vec<u32>, Vec<u32>)> = (0..args.repeats)
        .map(|r| follow_up(&prefill_prompt, r))
        .collect();
    let choice_prompts: Vec<Vec<u32>> = (0..args.repeats)
        .map(|r| {
            let mut p = prefill_prompt.clone();
            let by = (r * 7 + 3) % p.len().max(1);
            p.rotate_left(by);
            p
        })
        .collect();
    let (mut full_ttft, mut choices_full) = (Vec::new(), Vec::new());
    for ((_, turn), prompt) in follow_ups.iter().zip(&choice_prompts) {
        let usage = finished_usage(engine.submit(request(turn.clone(), 1))?)?;
        full_ttft.push(usage.time_to_first_token * 1e3);
        choices_full.push(all_first_tokens(&engine, prompt)?);
    }
    drop(engine);
    let cached = Engine::start(
        switchyard_models::load_generation_model(&path)?,
        EngineConfig {
            prefix_caching: true,
            ..config
        },
    )?;
    let (mut cached_ttft, mut cached_tokens, mut choices_cached) = (Vec::new(), 0, Vec::new());
    for ((first_turn, turn), prompt) in follow_ups.iter().zip(&choice_prompts) {
        finished_usage(cached.submit(request(first_turn.clone(), 1))?)?;
        let usage = finished_usage(cached.submit(request(turn.clone(), 1))?)?;
        cached_ttft.push(usage.time_to_first_token * 1e3);
        cached_tokens = usage.cached_tokens;
        choices_cached.push(all_first_tokens(&cached, prompt)?);
        bar.inc(1);
    }
    drop(cached);
    let ours = EngineResult {
        engine: "switchyard".into(),
        prefill_tokens: args.prefill_tokens,
        prefill_tok_s: median(prefill),
        decode_tok_s: median(decode),
        score_tok_s: median(score),
        aggregate,
        prefix_cache: PrefixCacheResult {
            prompt_tokens: args.prefill_tokens + FOLLOW_UP_TOKENS,
            cached_tokens,
            full_ttft_ms: median(full_ttft),
            cached_ttft_ms: median(cached_ttft),
            choices: CHOICES,
            choices_full_ms: median(choices_full),
            choices_cached_ms: median(choices_cached),
        },
    };

    let llama_cpp = match &args.llama_python {
        Some(python) => {
            bar.set_message("llama.cpp (llama-cpp-python)");
            let tokens_file = args.out.join("bench-prompts.json");
            std::fs::write(
                &tokens_file,
                serde_json::to_string(&serde_json::json!({
                    "prefill_prompt": prefill_prompt,
                    "decode_prompts": decode_prompts,
                }))?,
            )?;
            let result_file = args.out.join("llamacpp.json");
            let script =
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../benches/llamacpp_bench.py");
            let concurrency: Vec<String> = args.concurrency.iter().map(|c| c.to_string()).collect();
            let status = std::process::Command::new(python)
                .arg(&script)
                .arg("--model")
                .arg(&path)
                .args(["--threads", &args.threads.to_string()])
                .arg("--prompt-tokens-file")
                .arg(&tokens_file)
                .args(["--new-tokens", &args.new_tokens.to_string()])
                .args(["--concurrency", &concurrency.join(",")])
                .args(["--repeats", &args.repeats.to_string()])
                .arg("--out")
                .arg(&result_file)
                .status()
                .with_context(|| format!("running {}", python.display()))?;
            if !status.success() {
                bail!("the llama.cpp benchmark failed ({status})");
            }
            bar.inc(1);
            Some(serde_json::from_str::<serde_json::Value>(
                &std::fs::read_to_string(&result_file)?,
            )?)
        }
        None => None,
    };
    bar.finish_and_clear();

    let report = Report {
        machine: machine_name(),
        model: path.display().to_string(),
        new_tokens: args.new_tokens,
        repeats: args.repeats,
        switchyard: ours,
        llama_cpp,
    };
    write_results(&args.out, "engine", &report, &markdown(&report))
}

/// Prints `table` and writes `{stem}.json` (every number) and `{stem}.md` (the table) into `out`.
pub(crate) fn write_results(
    out: &std::path::Path,
    stem: &str,
    report: &impl Serialize,
    table: &str,
) -> Result<()> {
    println!("{table}");
    std::fs::create_dir_all(out)?;
    std::fs::write(
        out.join(format!("{stem}.json")),
        serde_json::to_string_pretty(report)?,
    )?;
    std::fs::write(out.join(format!("{stem}.md")), table)?;
    eprintln!("results written to {}", out.display());
    Ok(())
}

fn markdown(r: &Report) -> String {
    let theirs = |key: &str| r.llama_cpp.as_ref().and_then(|v| v[key].as_f64());
    let their_agg = |c: usize| {
        r.llama_cpp.as_ref().and_then(|v| {
            v["aggregate"]
                .as_array()?
                .iter()
                .find(|a| a["concurrency"].as_u64() == Some(c as u64))?["decode_tok_s"]
                .as_f64()
        })
    };
    let cell = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.1}"));
    let ratio = |a: f64, b: Option<f64>| b.map_or("–".to_string(), |b| format!("{:.2}×", a / b));
    let s = &r.switchyard;
    let mut out = format!(
        "Machine: {}. Model: `{}`. {} new tokens, median of {} runs.\n\n\
         | measurement | switchyard (tok/s) | llama.cpp (tok/s) | ratio |\n|---|---:|---:|---:|\n",
        r.machine,
        std::path::Path::new(&r.model)
            .file_name()
            .map_or(r.model.clone(), |f| f.to_string_lossy().into_owned()),
        r.new_tokens,
        r.repeats
    );
    // A row of one measurement both sides report under `key`.
    let row = |label: String, ours: f64, key: &str| {
        format!(
            "| {label} | {ours:.1} | {} | {} |\n",
            cell(theirs(key)),
            ratio(ours, theirs(key))
        )
    };
    out += &row(
        format!("prefill, {} tokens", s.prefill_tokens),
        s.prefill_tok_s,
        "prefill_tok_s",
    );
    out += &row("decode, batch 1".into(), s.decode_tok_s, "decode_tok_s");
    out += &row(
        format!(
            "score a {}-token prompt (every token's log-probability)",
            s.prefill_tokens
        ),
        s.score_tok_s,
        "score_tok_s",
    );
    for a in &s.aggregate {
        out += &format!(
            "| aggregate decode, {} sequences | {:.1} | {} | {} |\n",
            a.concurrency,
            a.decode_tok_s,
            cell(their_agg(a.concurrency)),
            ratio(a.decode_tok_s, their_agg(a.concurrency))
        );
    }
    if let (Some(one), Some(max)) = (s.aggregate.first(), s.aggregate.last()) {
        out += &format!(
            "\nSwitchyard's batching gain: {:.2}× the single-sequence decode rate at {} sequences.\n",
            max.decode_tok_s / one.decode_tok_s,
            max.concurrency
        );
    }
    let p = &s.prefix_cache;
    out += &format!(
        "\nPrefix caching: a {}-token follow-up turn's time to first token is {:.1} ms computed in full \
         and {:.1} ms with its first {} tokens cached ({:.2}× faster).\n",
        p.prompt_tokens,
        p.full_ttft_ms,
        p.cached_ttft_ms,
        p.cached_tokens,
        p.full_ttft_ms / p.cached_ttft_ms
    );
    out += &format!(
        "{} sequences of the {}-token prompt submitted together (an `n = {}` request) all have their \
         first token after {:.1} ms computed in full, {:.1} ms with prefix caching ({:.2}× faster).\n",
        p.choices,
        s.prefill_tokens,
        p.choices,
        p.choices_full_ms,
        p.choices_cached_ms,
        p.choices_full_ms / p.choices_cached_ms
    );
    out
}
