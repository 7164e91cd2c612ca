//! `switchyard bench router`: latency of the router's classification at several batch sizes, side by
//! side with the same checkpoint in PyTorch `transformers` (benches/router_torch_bench.py) in one run,
//! and `route()` throughput under concurrent callers with micro-batching on and off.
//!
//! When the shipped configuration enables the embedding signal, both sides run its encoder too
//! (all-MiniLM-L6-v2 from the model cache: Switchyard as configured, Q8_0; PyTorch in f32), and
//! `route()` is also timed without the signal, so its cost is measured in the same run.
//!
//! Texts are the project's chat-style validation requests (router/data/chat_style/validation.jsonl),
//! taken cyclically: batch `i` of size `b` is texts `[i*b, i*b + b)` modulo their number, on both sides.
//! Last, each text is routed once and what the router decided is summarised against the texts'
//! labels where they have them (`bench_decisions`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use switchyard_models::text::ChatMessage;
use switchyard_router::classifier::EMBED_ALONGSIDE_MAX_BATCH;
use switchyard_router::{
    BatchingOptions, Router, RouterConfig, RouterModel, RouterOptions, DEFAULT_MAX_INPUT_TOKENS,
    DEFAULT_MODEL_DIR,
};

use crate::bench::machine_name;
use crate::bench_decisions::{self, read_labelled, summarise, DecisionSummary, Outcome};
use crate::stats::quantile;

/// Options of `bench router`.
#[derive(Args, Debug, Clone)]
pub struct RouterBenchArgs {
    /// Router directory (default: the shipped router).
    #[arg(long, default_value = DEFAULT_MODEL_DIR)]
    pub router_dir: PathBuf,
    /// Leave the embedding signal out (as if the configuration disabled it).
    #[arg(long)]
    pub no_embedding: bool,
    /// Override `classifier.embedding.skip_when_confident`: a probability in [0, 1], or `off` to run
    /// the sentence encoder on every request.
    #[arg(long, value_parser = parse_skip)]
    pub skip_when_confident: Option<Skip>,
    /// Texts to classify: a JSONL file with a `text` field (and optionally `domain` and `reasoning`
    /// labels, which the summary of decisions is scored against).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../router/data/chat_style/validation.jsonl"))]
    pub texts: PathBuf,
    /// Batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    batches: Vec<usize>,
    /// Timed batches per size.
    #[arg(long, default_value_t = 100)]
    iterations: usize,
    /// Untimed batches first.
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Concurrent callers for the micro-batching comparison.
    #[arg(long, default_value_t = 16)]
    callers: usize,
    /// `route()` calls per caller.
    #[arg(long, default_value_t = 20)]
    calls_per_caller: usize,
    /// Idle pause (ms) before each of the "after idle" `route()` calls, as between a server's
    /// requests (0 skips that measurement).
    #[arg(long, default_value_t = 50)]
    idle_ms: u64,
    /// Python with torch + transformers for the PyTorch side (skipped if absent).
    #[arg(long, env = "SWITCHYARD_BENCH_PYTHON")]
    pub python: Option<PathBuf>,
    /// Threads for PyTorch (Candle uses all cores).
    #[arg(long, default_value_t = std::thread::available_parallelism().map_or(1, |n| n.get()))]
    threads: usize,
    /// Output folder for router.json and router.md.
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
}

#[derive(Serialize)]
struct Latency {
    batch: usize,
    p50_ms: f64,
    p99_ms: f64,
    /// Where the time goes (p50 of each stage over the same batches).
    stages: Stages,
    torch_p50_ms: Option<f64>,
    torch_p99_ms: Option<f64>,
}

/// p50 of each stage of classification, in ms: tokenization and the lexical models' text features
/// (`RouterModel::encode`), the backbone pass with its heads, and the embedding signal's encoder and
/// head (when it is on). The rest of a batch's time is fusion and softmax.
#[derive(Serialize, Default)]
struct Stages {
    encode_p50_ms: f64,
    backbone_p50_ms: f64,
    embedding_p50_ms: Option<f64>,
}

/// One batch's stage times in ms: (encode, backbone, embedding if it ran).
type StageSample = (f64, f64, Option<f64>);

impl Stages {
    /// From per-batch samples.
    fn from_samples(samples: &[StageSample]) -> Stages {
        let column = |f: fn(&StageSample) -> Option<f64>| -> Option<f64> {
            let v: Vec<f64> = samples.iter().filter_map(f).collect();
            (!v.is_empty()).then(|| quantile(&v, 0.5))
        };
        Stages {
            encode_p50_ms: column(|s| Some(s.0)).unwrap_or(0.0),
            backbone_p50_ms: column(|s| Some(s.1)).unwrap_or(0.0),
            embedding_p50_ms: column(|s| s.2),
        }
    }
}

/// The backbone's time and the embedding signal's time in one text's signals: every backbone head
/// reports the shared pass; the domain signal adds the embedding encoder's time when it fuses it.
fn stage_times(s: &switchyard_router::Signals, embedding: bool) -> (f64, Option<f64>) {
    let backbone = s
        .pii_latency
        .or(s.reasoning.as_ref().map(|r| r.latency))
        .or(s.jailbreak.as_ref().map(|r| r.latency))
        .map_or(0.0, ms);
    let embedding = embedding
        .then(|| {
            s.domain
                .as_ref()
                .map(|d| (ms(d.latency) - backbone).max(0.0))
        })
        .flatten();
    (backbone, embedding)
}

#[derive(Serialize)]
struct Concurrency {
    micro_batching: bool,
    callers: usize,
    routes_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    mean_batch: f64,
}

#[derive(Serialize)]
struct Report {
    machine: String,
    router_dir: String,
    texts: usize,
    iterations: usize,
    max_input_tokens: usize,
    torch: Option<String>,
    /// How Switchyard ran the backbone's linear layers (`classifier.cpu_weights`: `q8_0` or `f32`;
    /// PyTorch runs f32).
    backbone_weights: String,
    /// The embedding signal both sides ran, if any.
    embedding: Option<String>,
    classify: Vec<Latency>,
    route_p50_ms: f64,
    route_p99_ms: f64,
    /// `route()` at batch 1 without the embedding signal (when it is on).
    route_without_embedding_p50_ms: Option<f64>,
    route_without_embedding_p99_ms: Option<f64>,
    /// The fast-signal confidence from which the sentence encoder is skipped, if it is.
    skip_when_confident: Option<f32>,
    /// `route()` at batch 1 with the skip and with the encoder on every request (when it is skipped
    /// for confident ones), paired.
    skip_vs_always: Option<SkipVsAlways>,
    /// `route()` at batch 1 with the sentence encoder beside the backbone and after it, paired.
    encoder_beside_vs_after: Option<BesideVsAfter>,
    /// `route()` at batch 1 with the kernels' nested jobs helped by an idle thread and run alone,
    /// paired (when the encoder runs beside the backbone).
    nested_help: Option<NestedHelp>,
    /// `route()` at batch 1 right after another call and after an idle pause, paired.
    after_idle: Option<AfterIdle>,
    concurrency: Vec<Concurrency>,
    /// What the router decided on the texts (shipped configuration, each text once).
    decisions: DecisionSummary,
}

/// A `--skip-when-confident` value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Skip {
    /// Run the encoder on every request.
    Off,
    /// Skip it from this fast-signal confidence.
    From(f32),
}

fn parse_skip(s: &str) -> Result<Skip, String> {
    if s == "off" {
        return Ok(Skip::Off);
    }
    match s.parse::<f32>() {
        Ok(t) if (0.0..=1.0).contains(&t) => Ok(Skip::From(t)),
        _ => Err(format!(
            "expected a probability in [0, 1] or `off`, got `{s}`"
        )),
    }
}

/// How `route()` is timed with respect to the embedding signal.
#[derive(Debug, Clone, Copy, PartialEq)]
enum EmbeddingMode {
    /// As the configuration (and `--skip-when-confident`) say.
    Configured,
    /// The encoder on every request.
    Always,
    /// No embedding signal.
    Never,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:>28} [{bar:30}] {pos}/{len} {elapsed}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// Runs the benchmark and writes `router.json` and `router.md` under `--out`; returns the Markdown.
pub fn run(args: RouterBenchArgs) -> Result<String> {
    let labelled = read_labelled(&args.texts)?;
    let texts: Vec<String> = labelled.iter().map(|t| t.text.clone()).collect();
    // The classifiers as the configuration loads them (with the embedding signal when it is on).
    let mode = if args.no_embedding {
        EmbeddingMode::Never
    } else {
        EmbeddingMode::Configured
    };
    let loaded = Router::load(options(&args, false, mode)?)?;
    let skip = loaded.model().embedding_skip_threshold();
    let model: &RouterModel = loaded.model();
    let embedding = model.embedding().map(|e| {
        format!(
            "{} ({}{}, inputs cut to {} tokens) + linear head",
            e.head.encoder,
            e.head
                .layers
                .map_or(String::new(), |n| format!("first {n} layers, ")),
            if e.head.quantized { "Q8_0" } else { "f32" },
            e.head.max_tokens
        )
    });
    let encoder_dir = model
        .embedding()
        .map(|_| switchyard_router::embedding::default_encoder_dir());

    // 1. Classification latency per batch size (tokenization included), on this thread.
    let mut classify = Vec::new();
    for &b in &args.batches {
        let pb = bar(
            (args.warmup + args.iterations) as u64,
            &format!("classify, batch {b}"),
        );
        let mut runs = Vec::with_capacity(args.iterations);
        let mut stages = Vec::with_capacity(args.iterations);
        for i in 0..args.warmup + args.iterations {
            let batch: Vec<&str> = (0..b)
                .map(|j| texts[(i * b + j) % texts.len()].as_str())
                .collect();
            let start = Instant::now();
            let encoded = batch
                .iter()
                .map(|t| model.encode(t))
                .collect::<Result<Vec<_>, _>>()?;
            let encode_ms = ms(start.elapsed());
            let refs: Vec<_> = encoded.iter().collect();
            let signals = model.classify(&refs)?;
            let elapsed = start.elapsed();
            anyhow::ensure!(
                signals.len() == b,
                "{} signals for a batch of {b}",
                signals.len()
            );
            if i >= args.warmup {
                runs.push(ms(elapsed));
                let (backbone, embedding) = stage_times(&signals[0], model.embedding().is_some());
                stages.push((encode_ms, backbone, embedding));
            }
            pb.inc(1);
        }
        pb.finish_and_clear();
        classify.push(Latency {
            batch: b,
            p50_ms: quantile(&runs, 0.5),
            p99_ms: quantile(&runs, 0.99),
            stages: Stages::from_samples(&stages),
            torch_p50_ms: None,
            torch_p99_ms: None,
        });
    }

    // 2. The PyTorch side, same texts and protocol.
    std::fs::create_dir_all(&args.out)?;
    let mut torch_version = None;
    if let Some(python) = &args.python {
        let texts_file = args.out.join("router-texts.json");
        std::fs::write(
            &texts_file,
            serde_json::to_vec(&serde_json::json!({ "texts": texts }))?,
        )?;
        let result_file = args.out.join("router-torch.json");
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../benches/router_torch_bench.py"
        );
        let batches: Vec<String> = args.batches.iter().map(usize::to_string).collect();
        eprintln!("running the PyTorch side ({})", python.display());
        let status = std::process::Command::new(python)
            .arg(script)
            .arg("--router-dir")
            .arg(&args.router_dir)
            .arg("--texts-file")
            .arg(&texts_file)
            .args(["--batches", &batches.join(",")])
            .args(["--iterations", &args.iterations.to_string()])
            .args(["--warmup", &args.warmup.to_string()])
            .args(["--threads", &args.threads.to_string()])
            .args(["--max-tokens", &DEFAULT_MAX_INPUT_TOKENS.to_string()])
            .args(
                encoder_dir
                    .iter()
                    .flat_map(|d| [std::ffi::OsString::from("--encoder-dir"), d.into()]),
            )
            .arg("--out")
            .arg(&result_file)
            .status()
            .with_context(|| format!("starting {}", python.display()))?;
        if !status.success() {
            bail!("the PyTorch side failed ({status}); see its output above");
        }
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&result_file)?)?;
        torch_version = v["torch"].as_str().map(str::to_string);
        for l in &mut classify {
            let r = &v["batches"][l.batch.to_string()];
            l.torch_p50_ms = r["p50_ms"].as_f64();
            l.torch_p99_ms = r["p99_ms"].as_f64();
        }
    }

    // 3. route() at batch 1, policy included (and without the embedding signal, when it is on).
    drop(loaded);
    let route_runs = route_batch_1(&args, &texts, mode)?;
    let without = match embedding {
        Some(_) => Some(route_batch_1(&args, &texts, EmbeddingMode::Never)?),
        None => None,
    };
    let skip_vs_always = match skip {
        Some(_) => Some(skip_vs_always(&args, &texts, mode)?),
        None => None,
    };
    let after_idle = (args.idle_ms > 0)
        .then(|| route_after_idle(&args, &texts, mode))
        .transpose()?;
    let beside_vs_after = match embedding {
        Some(_) => Some(encoder_beside_vs_after(&args, &texts, mode)?),
        None => None,
    };
    let nested_help = match embedding {
        Some(_) => Some(nested_help(&args, &texts, mode)?),
        None => None,
    };

    // 4. Concurrent callers, micro-batching on and off.
    let mut concurrency = Vec::new();
    let mut cdfs = Vec::new();
    for batching in [true, false] {
        let router = Arc::new(Router::load(options(&args, batching, mode)?)?);
        let before = router.stats();
        let pb = bar(
            (args.callers * args.calls_per_caller) as u64,
            &format!(
                "{} callers, batching {}",
                args.callers,
                if batching { "on" } else { "off" }
            ),
        );
        let start = Instant::now();
        let handles: Vec<_> = (0..args.callers)
            .map(|c| {
                let (router, texts, pb) = (router.clone(), texts.clone(), pb.clone());
                let calls = args.calls_per_caller;
                std::thread::spawn(move || -> Result<Vec<f64>> {
                    let mut lat = Vec::with_capacity(calls);
                    for k in 0..calls {
                        let t = &texts[(c * calls + k) % texts.len()];
                        let s = Instant::now();
                        router.route(&[ChatMessage::new("user", t.clone())])?;
                        lat.push(ms(s.elapsed()));
                        pb.inc(1);
                    }
                    Ok(lat)
                })
            })
            .collect();
        let mut lat = Vec::new();
        for h in handles {
            lat.extend(
                h.join()
                    .map_err(|_| anyhow::anyhow!("a caller panicked"))??,
            );
        }
        let elapsed = start.elapsed().as_secs_f64();
        pb.finish_and_clear();
        let after = router.stats();
        cdfs.push((
            format!("micro-batching {}", if batching { "on" } else { "off" }),
            lat.clone(),
        ));
        concurrency.push(Concurrency {
            micro_batching: batching,
            callers: args.callers,
            routes_per_s: lat.len() as f64 / elapsed,
            p50_ms: quantile(&lat, 0.5),
            p99_ms: quantile(&lat, 0.99),
            mean_batch: (after.texts - before.texts) as f64
                / (after.batches - before.batches).max(1) as f64,
        });
    }

    // 5. What the router decides, each text once.
    let router = Router::load(options(&args, false, mode)?)?;
    let pb = bar(labelled.len() as u64, "decisions");
    let mut outcomes = Vec::with_capacity(labelled.len());
    for t in &labelled {
        let d = router.route(&[ChatMessage::new("user", t.text.clone())])?;
        outcomes.push((Outcome::from(&d), t));
        pb.inc(1);
    }
    pb.finish_and_clear();
    let decisions = summarise(&outcomes);

    let report = Report {
        machine: machine_name(),
        router_dir: args.router_dir.display().to_string(),
        texts: texts.len(),
        iterations: args.iterations,
        max_input_tokens: DEFAULT_MAX_INPUT_TOKENS,
        torch: torch_version,
        backbone_weights: match options(&args, true, EmbeddingMode::Configured)?
            .config
            .classifier
            .cpu_weights
        {
            switchyard_router::config::CpuWeights::Q8_0 => "q8_0".into(),
            switchyard_router::config::CpuWeights::F32 => "f32".into(),
        },
        embedding,
        classify,
        route_p50_ms: quantile(&route_runs, 0.5),
        route_p99_ms: quantile(&route_runs, 0.99),
        route_without_embedding_p50_ms: without.as_ref().map(|r| quantile(r, 0.5)),
        route_without_embedding_p99_ms: without.as_ref().map(|r| quantile(r, 0.99)),
        skip_when_confident: skip,
        skip_vs_always,
        encoder_beside_vs_after: beside_vs_after,
        nested_help,
        after_idle,
        concurrency,
        decisions,
    };
    std::fs::write(
        args.out.join("router.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    crate::plots::cdf(
        &args.out.join("router-latency-cdf.svg"),
        &format!("route() latency, {} concurrent callers", args.callers),
        "milliseconds",
        &cdfs,
    )?;
    let md = markdown(&report);
    std::fs::write(args.out.join("router.md"), &md)?;
    Ok(md)
}

/// `route()` at batch 1 with the sentence encoder running beside the backbone (the default, which
/// falls back to after it while most texts skip the encoder) and always after it, the same texts
/// sent to both routers in turn (the order alternating).
#[derive(Serialize)]
struct BesideVsAfter {
    beside_p50_ms: f64,
    beside_p99_ms: f64,
    after_p50_ms: f64,
    after_p99_ms: f64,
    /// Median over texts of (after − beside), ms.
    paired_saving_p50_ms: f64,
}

fn encoder_beside_vs_after(
    args: &RouterBenchArgs,
    texts: &[String],
    mode: EmbeddingMode,
) -> Result<BesideVsAfter> {
    let load = |alongside: usize| -> Result<Router> {
        let mut o = options(args, true, mode)?;
        o.embed_alongside_max_batch = alongside;
        Ok(Router::load(o)?)
    };
    let [beside, after] = in_turns(
        args,
        texts,
        &[load(EMBED_ALONGSIDE_MAX_BATCH.max(1))?, load(0)?],
    )?;
    Ok(BesideVsAfter {
        beside_p50_ms: quantile(&beside, 0.5),
        beside_p99_ms: quantile(&beside, 0.99),
        after_p50_ms: quantile(&after, 0.5),
        after_p99_ms: quantile(&after, 0.99),
        paired_saving_p50_ms: quantile(&paired_differences(&after, &beside), 0.5),
    })
}

/// `route()` at batch 1 with the products of the backbone and the encoder (each on one thread,
/// beside the other) published as nested jobs, so that the thread whose half finished first helps
/// with the other's (the default), vs each run on its own thread alone
/// (`switchyard_kernels::pool::set_nested_jobs`), the same texts in turn.
#[derive(Serialize)]
struct NestedHelp {
    helped_p50_ms: f64,
    helped_p99_ms: f64,
    alone_p50_ms: f64,
    alone_p99_ms: f64,
    /// Median over texts of (alone − helped), ms.
    paired_saving_p50_ms: f64,
}

fn nested_help(
    args: &RouterBenchArgs,
    texts: &[String],
    mode: EmbeddingMode,
) -> Result<NestedHelp> {
    let router = Router::load(options(args, true, mode)?)?;
    let times = in_turns_by(args, texts, |k, messages| {
        switchyard_kernels::pool::set_nested_jobs(k == 0);
        router.route(messages)?;
        Ok(())
    });
    switchyard_kernels::pool::set_nested_jobs(true);
    let [helped, alone] = times?;
    Ok(NestedHelp {
        helped_p50_ms: quantile(&helped, 0.5),
        helped_p99_ms: quantile(&helped, 0.99),
        alone_p50_ms: quantile(&alone, 0.5),
        alone_p99_ms: quantile(&alone, 0.99),
        paired_saving_p50_ms: quantile(&paired_differences(&alone, &helped), 0.5),
    })
}

/// `route()` at batch 1 skipping the sentence encoder for confident texts vs running it on every
/// text, the same texts to both in turn. The skip saves the encoder's work, but whether it saves
/// time depends on the machine: beside the backbone, the encoder costs little wall time.
#[derive(Serialize)]
struct SkipVsAlways {
    skip_p50_ms: f64,
    skip_p99_ms: f64,
    always_p50_ms: f64,
    always_p99_ms: f64,
    /// Median over texts of (always − skip), ms.
    paired_saving_p50_ms: f64,
}

fn skip_vs_always(
    args: &RouterBenchArgs,
    texts: &[String],
    mode: EmbeddingMode,
) -> Result<SkipVsAlways> {
    let [skip, always] = in_turns(
        args,
        texts,
        &[
            Router::load(options(args, true, mode)?)?,
            Router::load(options(args, true, EmbeddingMode::Always)?)?,
        ],
    )?;
    Ok(SkipVsAlways {
        skip_p50_ms: quantile(&skip, 0.5),
        skip_p99_ms: quantile(&skip, 0.99),
        always_p50_ms: quantile(&always, 0.5),
        always_p99_ms: quantile(&always, 0.99),
        paired_saving_p50_ms: quantile(&paired_differences(&always, &skip), 0.5),
    })
}

/// `route()` at batch 1 of two routers on the same texts in turn (which goes first alternates), so
/// the host's drift between minutes falls on both alike: each router's times, text by text.
fn in_turns(
    args: &RouterBenchArgs,
    texts: &[String],
    routers: &[Router; 2],
) -> Result<[Vec<f64>; 2]> {
    in_turns_by(args, texts, |k, messages| {
        routers[k].route(messages)?;
        Ok(())
    })
}

/// [`in_turns`] for any two ways `route(k, messages)` (`k` 0 or 1) of routing a text.
fn in_turns_by(
    args: &RouterBenchArgs,
    texts: &[String],
    route: impl Fn(usize, &[ChatMessage]) -> Result<()>,
) -> Result<[Vec<f64>; 2]> {
    let mut times = [Vec::new(), Vec::new()];
    for (i, t) in texts
        .iter()
        .cycle()
        .take(args.warmup + args.iterations)
        .enumerate()
    {
        let messages = [ChatMessage::new("user", t.clone())];
        let mut took = [0.0; 2];
        for k in [i % 2, 1 - i % 2] {
            let start = Instant::now();
            route(k, &messages)?;
            took[k] = ms(start.elapsed());
        }
        if i >= args.warmup {
            times[0].push(took[0]);
            times[1].push(took[1]);
        }
    }
    Ok(times)
}

/// `a[i] − b[i]` for each pair.
fn paired_differences(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(a, b)| a - b).collect()
}

/// `route()` at batch 1 on the same text twice: right after another call, and after an idle pause.
/// A server's requests arrive with gaps, during which the machine's caches fill with other work;
/// the figures of `route()` in a loop are the router's best case. (On a shared 2-core VM the call
/// right after a paused one was still slow: the caches take more than one pass to recover.)
#[derive(Serialize)]
struct AfterIdle {
    idle_ms: u64,
    back_to_back_p50_ms: f64,
    after_idle_p50_ms: f64,
    after_idle_p99_ms: f64,
    /// Median over texts of (after idle − back to back), ms.
    paired_cost_p50_ms: f64,
}

fn route_after_idle(
    args: &RouterBenchArgs,
    texts: &[String],
    mode: EmbeddingMode,
) -> Result<AfterIdle> {
    let router = Router::load(options(args, true, mode)?)?;
    let timed = |messages: &[ChatMessage]| -> Result<f64> {
        let start = Instant::now();
        router.route(messages)?;
        Ok(ms(start.elapsed()))
    };
    let (mut warm, mut cold, mut cost) = (Vec::new(), Vec::new(), Vec::new());
    // Each call sleeps, so the count is capped to keep the bench short.
    let n = args.iterations.min(200);
    let pb = bar(n as u64, "route() after idle");
    for (i, t) in texts.iter().cycle().take(args.warmup + n).enumerate() {
        let messages = [ChatMessage::new("user", t.clone())];
        std::thread::sleep(Duration::from_millis(args.idle_ms));
        let after_idle = timed(&messages)?;
        let back_to_back = timed(&messages)?;
        if i >= args.warmup {
            warm.push(back_to_back);
            cold.push(after_idle);
            cost.push(after_idle - back_to_back);
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    Ok(AfterIdle {
        idle_ms: args.idle_ms,
        back_to_back_p50_ms: quantile(&warm, 0.5),
        after_idle_p50_ms: quantile(&cold, 0.5),
        after_idle_p99_ms: quantile(&cold, 0.99),
        paired_cost_p50_ms: quantile(&cost, 0.5),
    })
}

/// `route()` latencies (ms) at batch 1, one caller, after the warm-up.
fn route_batch_1(
    args: &RouterBenchArgs,
    texts: &[String],
    mode: EmbeddingMode,
) -> Result<Vec<f64>> {
    let router = Router::load(options(args, true, mode)?)?;
    let mut runs = Vec::new();
    for (i, t) in texts
        .iter()
        .cycle()
        .take(args.warmup + args.iterations)
        .enumerate()
    {
        let start = Instant::now();
        router.route(&[ChatMessage::new("user", t.clone())])?;
        if i >= args.warmup {
            runs.push(ms(start.elapsed()));
        }
    }
    Ok(runs)
}

fn options(args: &RouterBenchArgs, batching: bool, mode: EmbeddingMode) -> Result<RouterOptions> {
    let mut o = RouterOptions::new(RouterConfig::shipped_default()?);
    o.model_dir = Some(args.router_dir.clone());
    if let Some(e) = o.config.classifier.embedding.as_mut() {
        match args.skip_when_confident {
            Some(Skip::Off) => e.skip_when_confident = None,
            Some(Skip::From(t)) => e.skip_when_confident = Some(t),
            None => {}
        }
        if mode == EmbeddingMode::Always {
            e.skip_when_confident = None;
        }
    }
    if mode == EmbeddingMode::Never {
        o.config.classifier.embedding = None;
    }
    o.batching = if batching {
        BatchingOptions::default()
    } else {
        BatchingOptions {
            max_batch_size: 1,
            max_wait: Duration::ZERO,
        }
    };
    Ok(o)
}

fn markdown(r: &Report) -> String {
    let mut s = format!(
        "Router classification latency ({}; {} chat-style texts, {} timed batches per size, inputs cut to {} tokens; tokenization included)\n\n",
        r.machine, r.texts, r.iterations, r.max_input_tokens
    );
    s.push_str("| batch | Switchyard p50 ms | p99 ms | PyTorch p50 ms | p99 ms | PyTorch / Switchyard (p50) |\n|---|---|---|---|---|---|\n");
    for l in &r.classify {
        let (tp50, tp99, ratio) = match (l.torch_p50_ms, l.torch_p99_ms) {
            (Some(a), Some(b)) => (
                format!("{a:.2}"),
                format!("{b:.2}"),
                format!("{:.2}x", a / l.p50_ms),
            ),
            _ => ("-".into(), "-".into(), "-".into()),
        };
        s.push_str(&format!(
            "| {} | {:.2} | {:.2} | {tp50} | {tp99} | {ratio} |\n",
            l.batch, l.p50_ms, l.p99_ms
        ));
    }
    if let Some(t) = &r.torch {
        s.push_str(&format!(
            "\nPyTorch {t}, f32, eager attention, `torch.inference_mode()`. Switchyard runs the \
             backbone's linear layers in {} (`classifier.cpu_weights`){}.\n",
            r.backbone_weights,
            if r.backbone_weights == "f32" {
                ""
            } else {
                ", so the ratio includes 8-bit weights (about 1.5x faster products at this size)"
            }
        ));
    }
    s.push_str(
        "\nWhere Switchyard's time goes (p50 of each stage, ms): tokenization with the lexical models' \
         text features, the backbone pass with its heads, the embedding signal's encoder with its head (0 for a batch whose texts all skipped it; it runs beside the backbone, so this is the time it took beyond the backbone pass, 0 when it finished first).\n\n\
         | batch | encode | backbone | embedding |\n|---|---|---|---|\n",
    );
    for l in &r.classify {
        let st = &l.stages;
        s.push_str(&format!(
            "| {} | {:.2} | {:.2} | {} |\n",
            l.batch,
            st.encode_p50_ms,
            st.backbone_p50_ms,
            st.embedding_p50_ms
                .map_or("-".to_string(), |e| format!("{e:.2}"))
        ));
    }
    if let Some(e) = &r.embedding {
        s.push_str(&format!(
            "\nBoth sides run the router (ModernBERT, four heads) and the embedding signal's encoder, {e} \
             (PyTorch: the same encoder in f32); the lexical signals run on the Switchyard side only.\n"
        ));
    }
    s.push_str(&format!(
        "\n`route()` at batch 1 (classification + policy): p50 {:.2} ms, p99 {:.2} ms",
        r.route_p50_ms, r.route_p99_ms
    ));
    if let (Some(p50), Some(p99)) = (
        r.route_without_embedding_p50_ms,
        r.route_without_embedding_p99_ms,
    ) {
        s.push_str(&format!(
            "; without the embedding signal: p50 {p50:.2} ms, p99 {p99:.2} ms"
        ));
    }
    if let Some(t) = r.skip_when_confident {
        s.push_str(&format!(
            "; the sentence encoder is skipped when head + lexical reach {t}"
        ));
    }
    s.push_str(".\n\n");
    if let (Some(t), Some(p)) = (r.skip_when_confident, &r.skip_vs_always) {
        s.push_str(&format!(
            "Skipping the sentence encoder when head + lexical reach {t} vs running it on every request: `route()` at batch 1, the same texts to both in turn: p50 {:.2} vs {:.2} ms, p99 {:.2} vs {:.2} ms; median paired saving of the skip {:.2} ms.\n\n",
            p.skip_p50_ms, p.always_p50_ms, p.skip_p99_ms, p.always_p99_ms, p.paired_saving_p50_ms
        ));
    }
    if let Some(b) = &r.encoder_beside_vs_after {
        s.push_str(&format!(
            "Sentence encoder beside the backbone, each on one thread (the default while under a fifth of recent texts skip the encoder; after the backbone otherwise), vs always after it (each product split over the threads): `route()` at batch 1, the same texts to both in turn: p50 {:.2} vs {:.2} ms, p99 {:.2} vs {:.2} ms; median paired saving {:.2} ms.\n\n",
            b.beside_p50_ms, b.after_p50_ms, b.beside_p99_ms, b.after_p99_ms, b.paired_saving_p50_ms
        ));
    }
    if let Some(n) = &r.nested_help {
        s.push_str(&format!(
            "Beside the backbone, the products of the one that finishes second helped by the thread of the one that finished first (nested kernel jobs) vs each on its own thread alone: `route()` at batch 1, the same texts to both in turn: p50 {:.2} vs {:.2} ms, p99 {:.2} vs {:.2} ms; median paired saving {:.2} ms.\n\n",
            n.helped_p50_ms, n.alone_p50_ms, n.helped_p99_ms, n.alone_p99_ms, n.paired_saving_p50_ms
        ));
    }
    if let Some(a) = &r.after_idle {
        s.push_str(&format!(
            "`route()` after {} ms idle (as between a server's requests) vs right after another call, the same text: p50 {:.2} vs {:.2} ms (p99 after idle {:.2} ms; in a loop, above: p50 {:.2} ms); median paired cost of the pause {:.2} ms.\n\n",
            a.idle_ms, a.after_idle_p50_ms, a.back_to_back_p50_ms, a.after_idle_p99_ms, r.route_p50_ms, a.paired_cost_p50_ms
        ));
    }
    s.push_str("| callers | micro-batching | routes/s | p50 ms | p99 ms | mean batch |\n|---|---|---|---|---|---|\n");
    for c in &r.concurrency {
        s.push_str(&format!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.1} |\n",
            c.callers,
            if c.micro_batching { "on" } else { "off" },
            c.routes_per_s,
            c.p50_ms,
            c.p99_ms,
            c.mean_batch
        ));
    }
    s.push('\n');
    s.push_str(&bench_decisions::markdown(&r.decisions));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_router::{ClassifierOutput, Signals};

    fn output(ms: u64) -> Option<ClassifierOutput> {
        Some(ClassifierOutput::top("x", 0.9, Duration::from_millis(ms)))
    }

    #[test]
    fn stage_times_split_the_backbone_from_the_embedding() {
        let s = Signals {
            domain: output(7),
            reasoning: output(3),
            jailbreak: output(3),
            pii_latency: Some(Duration::from_millis(3)),
            ..Signals::default()
        };
        assert_eq!(stage_times(&s, true), (3.0, Some(4.0)));
        assert_eq!(stage_times(&s, false), (3.0, None));
        let only_domain = Signals {
            domain: output(5),
            ..Signals::default()
        };
        assert_eq!(stage_times(&only_domain, true), (0.0, Some(5.0)));
    }

    #[test]
    fn paired_differences_subtract_text_by_text() {
        // A saving is the other router's time minus this one's, for the same text.
        assert_eq!(
            paired_differences(&[3.0, 5.0, 2.0], &[1.0, 6.0, 2.0]),
            [2.0, -1.0, 0.0]
        );
    }

    #[test]
    fn skip_values_parse() {
        assert_eq!(parse_skip("off"), Ok(Skip::Off));
        assert_eq!(parse_skip("0.8"), Ok(Skip::From(0.8)));
        assert!(parse_skip("1.5").is_err());
        assert!(parse_skip("high").is_err());
    }

    #[test]
    fn stages_take_the_median_of_each_column() {
        let st = Stages::from_samples(&[
            (1.0, 10.0, Some(5.0)),
            (3.0, 30.0, None),
            (2.0, 20.0, Some(7.0)),
        ]);
        assert_eq!(st.encode_p50_ms, 2.0);
        assert_eq!(st.backbone_p50_ms, 20.0);
        // Nearest rank over the samples that have the stage: [5, 7] -> index round(0.5) = 1.
        assert_eq!(st.embedding_p50_ms, Some(7.0));
        assert_eq!(Stages::from_samples(&[]).embedding_p50_ms, None);
    }
}
