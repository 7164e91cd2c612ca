//! `bench models`: two generation models busy on one device at once, served the way `serve` does it
//! (one worker thread owns both and steps them in turn, `Engine::start_shared`) against one worker
//! thread per model (two owners of the device racing for it), side by side in one run.
//!
//! Each round gives each model `concurrency` chat requests of `new_tokens` tokens at the same
//! moment; the two arrangements alternate round by round, so the host's drift hits both alike.

use crate::bench::{finish, machine_name, request, write_results, QUESTIONS};
use crate::generate::resolve_model;
use crate::stats::median;
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;
use switchyard_engine::{Engine, EngineConfig, GenerationStream, Thinking};
use switchyard_models::text::ChatMessage;

/// Options of `bench models`.
#[derive(clap::Args, Debug)]
pub struct ModelsBenchArgs {
    /// First model (default: the default model).
    #[arg(long, env = "SWITCHYARD_MODEL")]
    model: Option<PathBuf>,
    /// Second model (default: the packaged thinking model, fetched on first use).
    #[arg(long)]
    second_model: Option<PathBuf>,
    /// Concurrent requests per model.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// New tokens per request.
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    /// Rounds per arrangement (alternating; the median is reported).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Folder for `models.json` and `models.md`.
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
}

/// One arrangement's medians over its rounds.
#[derive(Serialize, Debug, Clone)]
struct Arrangement {
    name: String,
    /// Seconds from submitting every request to the last one's end.
    wall_s: f64,
    /// New tokens of both models per second of wall time.
    tokens_per_s: f64,
    /// Seconds until each model's last request ended.
    finished_s: [f64; 2],
}

#[derive(Serialize, Debug)]
struct Report {
    machine: String,
    models: [String; 2],
    concurrency: usize,
    new_tokens: usize,
    repeats: usize,
    one_worker: Arrangement,
    worker_per_model: Arrangement,
}

/// Both models' engines in one arrangement, with each model's rendered prompts.
struct Pair {
    engines: [Engine; 2],
    prompts: [Vec<Vec<u32>>; 2],
}

fn config(concurrency: usize) -> EngineConfig {
    EngineConfig {
        max_num_seqs: concurrency.max(1),
        max_model_len: Some(1024),
        // Prompts repeat across runs: each must cost what a new one does.
        prefix_caching: false,
        ..EngineConfig::default()
    }
}

fn load(path: &Path) -> Result<switchyard_models::GenerationModel> {
    switchyard_models::load_generation_model(path)
        .with_context(|| format!("loading {}", path.display()))
}

fn prompts(engine: &Engine, n: usize) -> Result<Vec<Vec<u32>>> {
    (0..n)
        .map(|i| {
            let text = engine.render_chat(
                &[ChatMessage::new("user", QUESTIONS[i % QUESTIONS.len()])],
                Thinking::Off,
            )?;
            Ok(engine.tokenizer().encode_prompt(&text)?)
        })
        .collect()
}

impl Pair {
    fn new(engines: [Engine; 2], concurrency: usize) -> Result<Pair> {
        let prompts = [
            prompts(&engines[0], concurrency)?,
            prompts(&engines[1], concurrency)?,
        ];
        Ok(Pair { engines, prompts })
    }

    /// One round: every request of both models submitted at once; (wall, each model's end) in s.
    fn round(&self, new_tokens: usize) -> Result<(f64, [f64; 2])> {
        let t0 = Instant::now();
        let mut streams: Vec<(usize, Instant, GenerationStream)> = Vec::new();
        for (m, engine) in self.engines.iter().enumerate() {
            for p in &self.prompts[m] {
                let at = Instant::now();
                streams.push((m, at, engine.submit(request(p.clone(), new_tokens))?));
            }
        }
        let mut ends = [0f64; 2];
        for (m, at, stream) in streams {
            let (_, end) = finish(at, stream)?;
            ends[m] = ends[m].max((end - t0).as_secs_f64());
        }
        Ok((ends[0].max(ends[1]), ends))
    }
}

/// Runs `bench models`.
pub fn run(args: ModelsBenchArgs) -> Result<()> {
    let first = resolve_model(args.model.clone())?;
    let second = match &args.second_model {
        Some(p) => p.clone(),
        None => switchyard_server::fetch::THINKING_MODEL
            .ensure(&switchyard_server::fetch::cache_dir())?,
    };
    let c = args.concurrency.max(1);
    let shared = Engine::start_shared(vec![
        (load(&first)?, config(c)),
        (load(&second)?, config(c)),
    ])?;
    let [a, b]: [Engine; 2] = shared
        .try_into()
        .map_err(|_| anyhow::anyhow!("two engines expected"))?;
    let arrangements = [
        ("one worker (serve)", Pair::new([a, b], c)?),
        (
            "a worker per model",
            Pair::new(
                [
                    Engine::start(load(&first)?, config(c))?,
                    Engine::start(load(&second)?, config(c))?,
                ],
                c,
            )?,
        ),
    ];
    let bar = ProgressBar::new((2 * (args.repeats + 1)) as u64).with_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}").expect("valid template"),
    );
    let mut rounds: [Vec<(f64, [f64; 2])>; 2] = [Vec::new(), Vec::new()];
    // A first untimed round each pages the weights in; then the arrangements alternate, each going
    // first in every other round (so neither always runs on the other's warm caches).
    for r in 0..=args.repeats {
        let order = if r % 2 == 0 { [0, 1] } else { [1, 0] };
        for k in order {
            let (name, pair) = &arrangements[k];
            bar.set_message(format!("{name}, round {r}"));
            let result = pair.round(args.new_tokens)?;
            if r > 0 {
                rounds[k].push(result);
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let total_tokens = (2 * c * args.new_tokens) as f64;
    let summarise = |k: usize| {
        let runs = &rounds[k];
        let wall = median(runs.iter().map(|r| r.0).collect());
        Arrangement {
            name: arrangements[k].0.to_string(),
            wall_s: wall,
            tokens_per_s: total_tokens / wall,
            finished_s: [
                median(runs.iter().map(|r| r.1[0]).collect()),
                median(runs.iter().map(|r| r.1[1]).collect()),
            ],
        }
    };
    let report = Report {
        machine: machine_name(),
        models: [
            arrangements[0].1.engines[0].model_name().to_string(),
            arrangements[0].1.engines[1].model_name().to_string(),
        ],
        concurrency: c,
        new_tokens: args.new_tokens,
        repeats: args.repeats,
        one_worker: summarise(0),
        worker_per_model: summarise(1),
    };
    write_results(&args.out, "models", &report, &markdown(&report))
}

fn markdown(r: &Report) -> String {
    let mut s = format!(
        "Two models busy at once ({}; `{}` and `{}`, {} requests each of {} new tokens, \
         median of {} alternating rounds)\n\n\
         | arrangement | wall s | tokens/s (both models) | `{}` done at s | `{}` done at s |\n\
         |---|---:|---:|---:|---:|\n",
        r.machine,
        r.models[0],
        r.models[1],
        r.concurrency,
        r.new_tokens,
        r.repeats,
        r.models[0],
        r.models[1],
    );
    for a in [&r.one_worker, &r.worker_per_model] {
        s.push_str(&format!(
            "| {} | {:.2} | {:.1} | {:.2} | {:.2} |\n",
            a.name, a.wall_s, a.tokens_per_s, a.finished_s[0], a.finished_s[1]
        ));
    }
    s.push_str(&format!(
        "\nOne worker / a worker per model, tokens per second: {:.2}x\n",
        r.one_worker.tokens_per_s / r.worker_per_model.tokens_per_s
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrangement(name: &str, wall_s: f64) -> Arrangement {
        Arrangement {
            name: name.into(),
            wall_s,
            tokens_per_s: 512.0 / wall_s,
            finished_s: [wall_s / 2.0, wall_s],
        }
    }

    #[test]
    fn the_table_has_both_arrangements_and_their_ratio() {
        let r = Report {
            machine: "test machine".into(),
            models: ["a".into(), "b".into()],
            concurrency: 4,
            new_tokens: 64,
            repeats: 3,
            one_worker: arrangement("one worker (serve)", 2.0),
            worker_per_model: arrangement("a worker per model", 4.0),
        };
        let md = markdown(&r);
        assert!(
            md.contains("| one worker (serve) | 2.00 | 256.0 | 1.00 | 2.00 |"),
            "{md}"
        );
        assert!(
            md.contains("| a worker per model | 4.00 | 128.0 | 2.00 | 4.00 |"),
            "{md}"
        );
        assert!(md.contains("tokens per second: 2.00x"), "{md}");
    }
}
