//! `bench busy`: the router's latency while the generator is busy, and what routing costs the
//! generation, with the router's batches on a thread of their own and on the engine's device worker
//! (`serve --router-executor thread | engine`), side by side in one run.
//!
//! A fixed number of sequences keeps generating (each caller resubmits as soon as its request ends)
//! while `route()` is called back to back at batch 1, one caller. The generation's decode rate is
//! read from the engine's counters over each phase, and once more with no routing at all.

use crate::bench::{machine_name, write_results, QUESTIONS};
use crate::bench_decisions::read_labelled;
use crate::generate::resolve_model;
use crate::stats::{median, quantile};
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_engine::{
    Engine, EngineConfig, Event, GenerationParams, GenerationRequest, Prompt, Thinking,
};
use switchyard_models::text::ChatMessage;
use switchyard_router::{Router, RouterConfig, RouterOptions};

/// Options of `bench busy`.
#[derive(clap::Args, Debug)]
pub struct BusyBenchArgs {
    /// Generation model (default: the default model).
    #[arg(long, env = "SWITCHYARD_MODEL")]
    model: Option<PathBuf>,
    /// Sequences generating while the router is timed.
    #[arg(long, default_value_t = 8)]
    sequences: usize,
    /// Timed `route()` calls per phase.
    #[arg(long, default_value_t = 200)]
    routes: usize,
    /// Texts to route (JSONL with a `text` field).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../router/data/chat_style/validation.jsonl"))]
    texts: PathBuf,
    /// Folder for `busy.json` and `busy.md`.
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
}

/// One phase's measurements.
#[derive(Serialize, Debug, Clone)]
struct Phase {
    name: String,
    route_p50_ms: Option<f64>,
    route_p99_ms: Option<f64>,
    /// The generation's new tokens per second over the phase (`None`: nothing was generating).
    decode_tok_s: Option<f64>,
}

#[derive(Serialize, Debug)]
struct Report {
    machine: String,
    model: String,
    sequences: usize,
    routes: usize,
    phases: Vec<Phase>,
}

/// Sequences that keep generating until dropped.
struct Load {
    stop: Arc<AtomicBool>,
    callers: Vec<std::thread::JoinHandle<Result<()>>>,
}

impl Load {
    fn start(engine: &Arc<Engine>, sequences: usize) -> Result<Load> {
        let stop = Arc::new(AtomicBool::new(false));
        let callers = (0..sequences)
            .map(|i| {
                let (engine, stop) = (Arc::clone(engine), Arc::clone(&stop));
                let question = QUESTIONS[i % QUESTIONS.len()];
                std::thread::Builder::new()
                    .name(format!("bench-busy-{i}"))
                    .spawn(move || -> Result<()> {
                        while !stop.load(Ordering::Relaxed) {
                            let stream = engine.submit(GenerationRequest {
                                prompt: Prompt::Chat(vec![ChatMessage::new("user", question)]),
                                params: GenerationParams {
                                    max_tokens: Some(128),
                                    ignore_eos: true,
                                    thinking: Thinking::Off,
                                    ..Default::default()
                                },
                            })?;
                            while let Some(event) = stream.recv() {
                                if let Event::Error(e) = event {
                                    anyhow::bail!("generation failed: {e}");
                                }
                                if stop.load(Ordering::Relaxed) {
                                    break; // dropping the stream cancels the sequence
                                }
                            }
                        }
                        Ok(())
                    })
                    .context("starting a generating caller")
            })
            .collect::<Result<_>>()?;
        Ok(Load { stop, callers })
    }

    fn finish(self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.callers {
            c.join()
                .map_err(|_| anyhow::anyhow!("a generating caller panicked"))??;
        }
        Ok(())
    }
}

/// Generated tokens per second while `during` runs.
fn decode_rate<T>(engine: &Engine, during: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let (t0, n0) = (Instant::now(), engine.stats().snapshot().generated_tokens);
    let out = during()?;
    let (t1, n1) = (Instant::now(), engine.stats().snapshot().generated_tokens);
    Ok((out, (n1 - n0) as f64 / (t1 - t0).as_secs_f64()))
}

/// `route()` latencies in ms, back to back over `texts`.
fn route_times(router: &Router, texts: &[String], n: usize, bar: &ProgressBar) -> Result<Vec<f64>> {
    route_times_from(router, texts, 0, n, bar)
}

/// [`route_times`] starting at text `first` (cyclically).
fn route_times_from(
    router: &Router,
    texts: &[String],
    first: usize,
    n: usize,
    bar: &ProgressBar,
) -> Result<Vec<f64>> {
    texts
        .iter()
        .cycle()
        .skip(first)
        .take(n)
        .map(|t| {
            let start = Instant::now();
            router.route(&[ChatMessage::new("user", t.clone())])?;
            bar.inc(1);
            Ok(start.elapsed().as_secs_f64() * 1e3)
        })
        .collect()
}

/// Runs `bench busy`.
pub fn run(args: BusyBenchArgs) -> Result<()> {
    let path = resolve_model(args.model.clone())?;
    let model = switchyard_models::load_generation_model(&path)
        .with_context(|| format!("loading {}", path.display()))?;
    let name = model.name.clone();
    let engine = Arc::new(Engine::start(
        model,
        EngineConfig {
            max_num_seqs: args.sequences.max(1),
            max_model_len: Some(1024),
            // Prompts repeat across runs: each must cost what a new one does.
            prefix_caching: false,
            ..EngineConfig::default()
        },
    )?);
    let texts: Vec<String> = read_labelled(&args.texts)?
        .into_iter()
        .map(|t| t.text)
        .collect();
    anyhow::ensure!(!texts.is_empty(), "no texts in {}", args.texts.display());
    let own_thread = Router::load(RouterOptions::new(RouterConfig::shipped_default()?))?;
    let on_worker = Router::load(RouterOptions {
        executor: Some(Arc::new(engine.executor())),
        ..RouterOptions::new(RouterConfig::shipped_default()?)
    })?;
    let bar = ProgressBar::new((args.routes + 4 * args.routes.div_ceil(2)) as u64).with_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}").expect("valid template"),
    );
    let n = args.routes.max(1);
    let mut phases = Vec::new();

    bar.set_message("router alone");
    // Both routers warmed up alike (first-use costs stay out of the timed phases).
    route_times(&own_thread, &texts, 10, &ProgressBar::hidden())?;
    route_times(&on_worker, &texts, 10, &ProgressBar::hidden())?;
    let idle = route_times(&own_thread, &texts, n, &bar)?;
    phases.push(Phase {
        name: "generator idle".into(),
        route_p50_ms: Some(quantile(&idle, 0.5)),
        route_p99_ms: Some(quantile(&idle, 0.99)),
        decode_tok_s: None,
    });

    let load = Load::start(&engine, args.sequences)?;
    // Let every sequence get past its prefill before anything is timed.
    std::thread::sleep(Duration::from_secs(2));
    // The two arrangements in A-B-B-A order, half the routes each time, so that neither always
    // meets the generator earlier or later in its run.
    let loaded = [
        ("generating, router on its own thread", &own_thread),
        ("generating, router on the engine's worker", &on_worker),
    ];
    let mut samples: [(Vec<f64>, Vec<f64>); 2] = Default::default();
    let half = n.div_ceil(2);
    for k in [0, 1, 1, 0] {
        let (phase, router) = loaded[k];
        bar.set_message(phase);
        // Each arrangement's second half routes the texts after its first half's.
        let first = samples[k].0.len();
        let (times, rate) = decode_rate(&engine, || {
            route_times_from(router, &texts, first, half, &bar)
        })?;
        samples[k].0.extend(times);
        samples[k].1.push(rate);
    }
    for (k, (phase, _)) in loaded.iter().enumerate() {
        let (times, rates) = &samples[k];
        phases.push(Phase {
            name: (*phase).into(),
            route_p50_ms: Some(quantile(times, 0.5)),
            route_p99_ms: Some(quantile(times, 0.99)),
            decode_tok_s: Some(rates.iter().sum::<f64>() / rates.len() as f64),
        });
    }
    bar.set_message("generating, no routing");
    let idle_for = |d: Duration| -> Result<()> {
        std::thread::sleep(d);
        Ok(())
    };
    let rates = (0..3)
        .map(|_| Ok(decode_rate(&engine, || idle_for(Duration::from_secs(2)))?.1))
        .collect::<Result<Vec<f64>>>()?;
    phases.push(Phase {
        name: "generating, no routing".into(),
        route_p50_ms: None,
        route_p99_ms: None,
        decode_tok_s: Some(median(rates)),
    });
    load.finish()?;
    bar.finish_and_clear();

    let report = Report {
        machine: machine_name(),
        model: name,
        sequences: args.sequences,
        routes: n,
        phases,
    };
    write_results(&args.out, "busy", &report, &markdown(&report))
}

fn markdown(r: &Report) -> String {
    let cell =
        |v: Option<f64>, digits: usize| v.map_or("–".to_string(), |v| format!("{v:.digits$}"));
    let mut s = format!(
        "The router while the generator is busy ({}; `{}` decoding {} sequences; default router, \
         `route()` at batch 1, {} calls per phase)\n\n\
         | phase | route() p50 ms | p99 ms | decode tok/s |\n|---|---:|---:|---:|\n",
        r.machine, r.model, r.sequences, r.routes
    );
    for p in &r.phases {
        s.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            p.name,
            cell(p.route_p50_ms, 2),
            cell(p.route_p99_ms, 2),
            cell(p.decode_tok_s, 1)
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_every_phase_and_dashes_for_what_a_phase_did_not_measure() {
        let phase = |name: &str, route: Option<f64>, rate: Option<f64>| Phase {
            name: name.into(),
            route_p50_ms: route,
            route_p99_ms: route.map(|r| 2.0 * r),
            decode_tok_s: rate,
        };
        let r = Report {
            machine: "test machine".into(),
            model: "m".into(),
            sequences: 8,
            routes: 200,
            phases: vec![
                phase("generator idle", Some(5.0), None),
                phase(
                    "generating, router on its own thread",
                    Some(9.0),
                    Some(250.0),
                ),
                phase("generating, no routing", None, Some(300.0)),
            ],
        };
        let md = markdown(&r);
        assert!(md.contains("| generator idle | 5.00 | 10.00 | – |"), "{md}");
        assert!(
            md.contains("| generating, router on its own thread | 9.00 | 18.00 | 250.0 |"),
            "{md}"
        );
        assert!(
            md.contains("| generating, no routing | – | – | 300.0 |"),
            "{md}"
        );
    }
}
