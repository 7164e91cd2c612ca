//! `switchyard bench overhead`: what routing adds to a request, in-process versus the proxy hop.
//!
//! Three paths, the same chat requests, streamed:
//! * **direct**: a concrete model id, no routing;
//! * **in-process**: `model: "auto"` on the same server (the router runs on the engine's device
//!   thread, between decode steps);
//! * **proxy**: `model: "auto"` sent to a second process of this binary started as a router-only
//!   proxy (`serve --upstream`), which routes, re-serialises the body and forwards it over loopback
//!   HTTP to the same inference server (the vLLM Semantic Router's deployment).
//!
//! To compare like with like, every request asks for no thinking (`enable_thinking: false`) and the
//! routing config is the shipped one without its system prompts, so all three paths generate the
//! same tokens from the same prompt (greedy); what differs is the routing and the hop. Reported per
//! path and concurrency: time to first token and total latency (p50 / p99), and the overhead against
//! the direct path in milliseconds and in percent of the request.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::json;
use switchyard_server::serve::{start, ServeArgs};

use crate::bench::machine_name;

/// Options of `bench overhead`.
#[derive(Args, Debug, Clone)]
pub struct OverheadArgs {
    /// Generation model (default: the default model).
    #[arg(long, env = "SWITCHYARD_MODEL")]
    pub model: Option<PathBuf>,
    /// Requests per path and concurrency.
    #[arg(long, default_value_t = 40)]
    pub requests: usize,
    /// Tokens generated per request.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// Concurrent clients.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    pub concurrency: Vec<usize>,
    /// Chat texts (JSONL with a `text` field).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../router/data/chat_style/validation.jsonl"))]
    pub texts: PathBuf,
    /// Output folder.
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
}

/// One path at one concurrency.
#[derive(Debug, Clone, Serialize)]
pub struct PathResult {
    /// `direct`, `in-process` or `proxy`.
    pub path: String,
    /// Concurrent clients.
    pub concurrency: usize,
    /// Time to first token, p50 / p99, ms.
    pub ttft_p50_ms: f64,
    /// p99.
    pub ttft_p99_ms: f64,
    /// Total latency p50, ms.
    pub total_p50_ms: f64,
    /// p99.
    pub total_p99_ms: f64,
    /// Router's own time (its header), p50, ms.
    pub route_p50_ms: Option<f64>,
    /// p50 TTFT minus the direct path's, ms.
    pub overhead_ttft_ms: f64,
    /// That, in % of the direct path's p50 total latency.
    pub overhead_pct: f64,
    /// Per-request TTFTs (for the plot).
    #[serde(skip)]
    pub ttfts: Vec<f64>,
}

/// The report.
#[derive(Debug, Clone, Serialize)]
pub struct OverheadReport {
    /// Machine.
    pub machine: String,
    /// Requests per cell.
    pub requests: usize,
    /// Tokens per request.
    pub max_tokens: usize,
    /// Results.
    pub results: Vec<PathResult>,
}

fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() as f64 - 1.0) * q).round() as usize]
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_ready(client: &reqwest::Client, base: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(r) = client.get(format!("{base}/ready")).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("{base} did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// (TTFT ms, total ms, route ms) of one streamed request.
async fn one(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
) -> Result<(f64, f64, Option<f64>)> {
    let start = Instant::now();
    let r = client.post(url).json(body).send().await?;
    if !r.status().is_success() {
        bail!(
            "{url}: {} {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
    }
    let route_ms = r
        .headers()
        .get("x-switchyard-route-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let mut stream = r.bytes_stream();
    let mut ttft = None;
    let mut seen = String::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if ttft.is_none() {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            // The first chunk carries only the role; the first token is the next `data:` event.
            if seen.matches("data:").count() >= 2 {
                ttft = Some(start.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    let total = start.elapsed().as_secs_f64() * 1e3;
    Ok((ttft.unwrap_or(total), total, route_ms))
}

/// Runs the benchmark.
pub fn run(args: OverheadArgs) -> Result<OverheadReport> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: OverheadArgs) -> Result<OverheadReport> {
    std::fs::create_dir_all(&args.out)?;
    let config = args.out.join("overhead-routing.yaml");
    let yaml: String = switchyard_router::config::DEFAULT_CONFIG_YAML
        .lines()
        .filter(|l| !l.trim_start().starts_with("system_prompt"))
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        .replace(
            "model_dir: router/models/default",
            &format!("model_dir: {}", switchyard_router::DEFAULT_MODEL_DIR),
        );
    std::fs::write(&config, yaml)?;
    let model_path = crate::generate::resolve_model(args.model.clone())?;
    let model_arg = model_path.display().to_string();
    let max_c = args.concurrency.iter().copied().max().unwrap_or(1);

    // The inference server (direct and in-process paths), in this process.
    let server = start(ServeArgs {
        port: 0,
        models: vec![model_arg.clone()],
        config: Some(config.clone()),
        max_num_seqs: max_c.max(8),
        max_tokens: args.max_tokens,
        ..ServeArgs::default()
    })
    .await?;
    let base = format!("http://{}", server.addr);
    let served = server.state.served()[0].clone();

    // The router-only proxy, a separate process of this binary.
    let proxy_port = free_port()?;
    let exe = std::env::current_exe()?;
    let child = Command::new(exe)
        .args([
            "serve",
            "--port",
            &proxy_port.to_string(),
            "--upstream",
            &base,
        ])
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the proxy process")?;
    let _guard = ChildGuard(child);
    let proxy = format!("http://127.0.0.1:{proxy_port}");
    let client = reqwest::Client::new();
    wait_ready(&client, &proxy).await?;

    let texts: Vec<String> = std::fs::read_to_string(&args.texts)
        .with_context(|| format!("reading {}", args.texts.display()))?
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["text"].as_str().map(str::to_string))
        .take(args.requests)
        .collect();
    if texts.is_empty() {
        bail!("no texts in {}", args.texts.display());
    }
    let paths = [
        ("direct", base.clone(), served.as_str()),
        ("in-process", base.clone(), "auto"),
        ("proxy", proxy.clone(), "auto"),
    ];

    // Warm-up: every path once.
    for (_, b, m) in &paths {
        let body = json!({"model": m, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4,
                          "temperature": 0, "stream": true, "chat_template_kwargs": {"enable_thinking": false}});
        one(&client, &format!("{b}/v1/chat/completions"), &body).await?;
    }

    let pb = ProgressBar::new((paths.len() * args.concurrency.len() * texts.len()) as u64);
    pb.set_style(
        ProgressStyle::with_template("{msg:>22} [{bar:30}] {pos}/{len} {elapsed}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let mut results = Vec::new();
    for &c in &args.concurrency {
        for (name, b, m) in &paths {
            pb.set_message(format!("{name}, {c} clients"));
            let url = format!("{b}/v1/chat/completions");
            let queue = std::sync::Arc::new(std::sync::Mutex::new(texts.clone()));
            let mut tasks = Vec::new();
            for _ in 0..c {
                let (queue, client, url, m, pb) = (
                    queue.clone(),
                    client.clone(),
                    url.clone(),
                    m.to_string(),
                    pb.clone(),
                );
                let max_tokens = args.max_tokens;
                tasks.push(tokio::spawn(async move {
                    let mut out = Vec::new();
                    loop {
                        let Some(text) = queue.lock().expect("queue").pop() else { break };
                        let body = json!({"model": m, "messages": [{"role": "user", "content": text}],
                                          "max_tokens": max_tokens, "temperature": 0, "stream": true,
                                          "chat_template_kwargs": {"enable_thinking": false}});
                        out.push(one(&client, &url, &body).await?);
                        pb.inc(1);
                    }
                    Ok::<_, anyhow::Error>(out)
                }));
            }
            let mut samples = Vec::new();
            for t in tasks {
                samples.extend(t.await??);
            }
            let ttfts: Vec<f64> = samples.iter().map(|s| s.0).collect();
            let totals: Vec<f64> = samples.iter().map(|s| s.1).collect();
            let routes: Vec<f64> = samples.iter().filter_map(|s| s.2).collect();
            results.push(PathResult {
                path: name.to_string(),
                concurrency: c,
                ttft_p50_ms: quantile(&ttfts, 0.5),
                ttft_p99_ms: quantile(&ttfts, 0.99),
                total_p50_ms: quantile(&totals, 0.5),
                total_p99_ms: quantile(&totals, 0.99),
                route_p50_ms: (!routes.is_empty()).then(|| quantile(&routes, 0.5)),
                overhead_ttft_ms: 0.0,
                overhead_pct: 0.0,
                ttfts,
            });
        }
    }
    pb.finish_and_clear();
    for c in &args.concurrency {
        let direct = results
            .iter()
            .find(|r| r.path == "direct" && r.concurrency == *c)
            .map(|r| (r.ttft_p50_ms, r.total_p50_ms))
            .expect("direct measured");
        for r in results.iter_mut().filter(|r| r.concurrency == *c) {
            r.overhead_ttft_ms = r.ttft_p50_ms - direct.0;
            r.overhead_pct = r.overhead_ttft_ms / direct.1 * 100.0;
        }
    }
    server.shutdown(Duration::from_secs(5)).await?;

    let report = OverheadReport {
        machine: machine_name(),
        requests: texts.len(),
        max_tokens: args.max_tokens,
        results,
    };
    std::fs::write(
        args.out.join("overhead.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(args.out.join("overhead.md"), markdown(&report))?;
    let c1 = args.concurrency[0];
    crate::plots::cdf(
        &args.out.join("overhead-ttft-cdf.svg"),
        &format!(
            "Time to first token, {c1} client(s), {} requests",
            report.requests
        ),
        "milliseconds",
        &report
            .results
            .iter()
            .filter(|r| r.concurrency == c1)
            .map(|r| (r.path.clone(), r.ttfts.clone()))
            .collect::<Vec<_>>(),
    )?;
    Ok(report)
}

/// The Markdown table.
pub fn markdown(r: &OverheadReport) -> String {
    let mut s = format!(
        "Routing overhead in the request path ({}; {} chat-style requests per cell, {} tokens each, streamed, no thinking)\n\n",
        r.machine, r.requests, r.max_tokens
    );
    s.push_str("| clients | path | TTFT p50 ms | TTFT p99 ms | total p50 ms | total p99 ms | router ms (p50) | overhead vs direct (TTFT p50) |\n|---|---|---|---|---|---|---|---|\n");
    for x in &r.results {
        s.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} |\n",
            x.concurrency,
            x.path,
            x.ttft_p50_ms,
            x.ttft_p99_ms,
            x.total_p50_ms,
            x.total_p99_ms,
            x.route_p50_ms.map_or("-".into(), |v| format!("{v:.2}")),
            if x.path == "direct" {
                "-".into()
            } else {
                format!("{:+.1} ms ({:+.1} %)", x.overhead_ttft_ms, x.overhead_pct)
            }
        ));
    }
    let mut ratios = Vec::new();
    for c in r
        .results
        .iter()
        .map(|x| x.concurrency)
        .collect::<std::collections::BTreeSet<_>>()
    {
        let get = |p: &str| {
            r.results
                .iter()
                .find(|x| x.path == p && x.concurrency == c)
                .map(|x| x.overhead_ttft_ms)
        };
        if let (Some(i), Some(p)) = (get("in-process"), get("proxy")) {
            ratios.push(format!(
                "{c} client(s): proxy {p:+.1} ms vs in-process {i:+.1} ms"
            ));
        }
    }
    s.push_str(&format!("\n{}\n", ratios.join("; ")));
    s
}
