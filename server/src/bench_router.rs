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
use switchyard_router::{
    BatchingOptions, Router, RouterConfig, RouterModel, RouterOptions, DEFAULT_MAX_INPUT_TOKENS,
    DEFAULT_MODEL_DIR,
};

use crate::bench::machine_name;
use crate::bench_decisions::{self, read_labelled, summarise, DecisionSummary, Outcome};

/// Options of `bench router`.
#[derive(Args, Debug, Clone)]
pub struct RouterBenchArgs {
    /// Router directory (default: the shipped router).
    #[arg(long, default_value = DEFAULT_MODEL_DIR)]
    pub router_dir: PathBuf,
    /// Leave the embedding signal out (as if the configuration disabled it).
    #[arg(long)]
    pub no_embedding: bool,
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
    torch_p50_ms: Option<f64>,
    torch_p99_ms: Option<f64>,
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
    /// The embedding signal both sides ran, if any.
    embedding: Option<String>,
    classify: Vec<Latency>,
    route_p50_ms: f64,
    route_p99_ms: f64,
    /// `route()` at batch 1 without the embedding signal (when it is on).
    route_without_embedding_p50_ms: Option<f64>,
    route_without_embedding_p99_ms: Option<f64>,
    concurrency: Vec<Concurrency>,
    /// What the router decided on the texts (shipped configuration, each text once).
    decisions: DecisionSummary,
}

/// `q`-quantile (nearest rank) of samples in ms.
fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let i = ((s.len() as f64 - 1.0) * q).round() as usize;
    s[i]
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
    let loaded = Router::load(options(&args, false, args.no_embedding)?)?;
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
        for i in 0..args.warmup + args.iterations {
            let batch: Vec<&str> = (0..b)
                .map(|j| texts[(i * b + j) % texts.len()].as_str())
                .collect();
            let start = Instant::now();
            let encoded = batch
                .iter()
                .map(|t| model.encode(t))
                .collect::<Result<Vec<_>, _>>()?;
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
            }
            pb.inc(1);
        }
        pb.finish_and_clear();
        classify.push(Latency {
            batch: b,
            p50_ms: quantile(&runs, 0.5),
            p99_ms: quantile(&runs, 0.99),
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
    let route_runs = route_batch_1(&args, &texts, args.no_embedding)?;
    let without = match embedding {
        Some(_) => Some(route_batch_1(&args, &texts, true)?),
        None => None,
    };

    // 4. Concurrent callers, micro-batching on and off.
    let mut concurrency = Vec::new();
    let mut cdfs = Vec::new();
    for batching in [true, false] {
        let router = Arc::new(Router::load(options(&args, batching, args.no_embedding)?)?);
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
    let router = Router::load(options(&args, false, args.no_embedding)?)?;
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
        embedding,
        classify,
        route_p50_ms: quantile(&route_runs, 0.5),
        route_p99_ms: quantile(&route_runs, 0.99),
        route_without_embedding_p50_ms: without.as_ref().map(|r| quantile(r, 0.5)),
        route_without_embedding_p99_ms: without.as_ref().map(|r| quantile(r, 0.99)),
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

/// `route()` latencies (ms) at batch 1, one caller, after the warm-up.
fn route_batch_1(args: &RouterBenchArgs, texts: &[String], no_embedding: bool) -> Result<Vec<f64>> {
    let router = Router::load(options(args, true, no_embedding)?)?;
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

fn options(args: &RouterBenchArgs, batching: bool, no_embedding: bool) -> Result<RouterOptions> {
    let mut o = RouterOptions::new(RouterConfig::shipped_default()?);
    o.model_dir = Some(args.router_dir.clone());
    if no_embedding {
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
            "\nPyTorch {t}, f32, eager attention, `torch.inference_mode()`.\n"
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
    s.push_str(".\n\n");
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
