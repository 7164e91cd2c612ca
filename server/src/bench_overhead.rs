//! `switchyard bench overhead`: what routing adds to a request, in-process versus the proxy hop.
//!
//! Three paths, the same chat requests, streamed:
//! * **direct**: a concrete model id, no routing;
//! * **in-process**: `model: "auto"` on the same server (the router's batches run where
//!   `--router-executor` puts them: on the CPU a thread of their own, on a GPU the engine's device
//!   thread between decode steps);
//! * **proxy**: `model: "auto"` sent to a second process of this binary started as a router-only
//!   proxy (`serve --upstream`), which routes, re-serialises the body and forwards it over loopback
//!   HTTP to the same inference server (the vLLM Semantic Router's deployment).
//!
//! The inference server and the proxy are child processes of the bench, so the client's own work
//! (this process) shares no runtime or threads with either path's server.
//!
//! To compare like with like, every request asks for no thinking (`enable_thinking: false`) and the
//! routing config is the shipped one without its system prompts, so all three paths generate the
//! same tokens from the same prompt (greedy); what differs is the routing and the hop.
//!
//! The paths are interleaved: the texts go out in rounds of `concurrency` requests, and each round
//! is sent on all three paths one after the other, in an order that rotates from round to round. So
//! every text is measured on every path within a second or two, and the overhead is the median of
//! per-text differences (with a distribution-free 95 % interval), which a shared host's drift
//! between minutes does not bias the way separate blocks of requests per path would. Reported per
//! path and concurrency: time to first token and total latency (p50 / p99), and the paired overhead
//! against the direct path in milliseconds and in percent of the request; per concurrency, the
//! proxy's paired TTFT against in-process routing.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::json;

use crate::bench::machine_name;
use crate::stats::{median, median_ci, quantile, MedianCi};

/// Options of `bench overhead`.
#[derive(Args, Debug, Clone)]
pub struct OverheadArgs {
    /// Generation model (default: the default model).
    #[arg(long, env = "SWITCHYARD_MODEL")]
    pub model: Option<PathBuf>,
    /// Texts, each sent once on every path at every concurrency.
    #[arg(long, default_value_t = 80)]
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
    /// The server's own time before generating (`Server-Timing: admit`; for the proxy, from its
    /// arrival to the upstream's response head, the hop included), p50, ms.
    pub admit_p50_ms: Option<f64>,
    /// Median over texts of this path's `admit` minus the direct path's, with its 95 % interval:
    /// the overhead as the servers measure it, without the client's and the host's noise around it.
    pub overhead_admit_ci: Option<MedianCi>,
    /// Median over texts of this path's TTFT minus the direct path's on the same text (same
    /// round), ms; 0 for the direct path.
    pub overhead_ttft_ms: f64,
    /// Its 95 % interval (`None` for the direct path or under 6 texts).
    pub overhead_ttft_ci: Option<MedianCi>,
    /// The overhead in % of the direct path's p50 total latency.
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
    /// Per concurrency, the proxy against in-process routing.
    pub proxy_vs_in_process: Vec<ProxyVsInProcess>,
}

/// The proxy hop against in-process routing at one concurrency.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyVsInProcess {
    /// Concurrent clients.
    pub concurrency: usize,
    /// Median over texts of the proxy's TTFT minus in-process routing's on the same text, ms, with
    /// its 95 % interval.
    pub ttft_difference_ms: Option<MedianCi>,
    /// The proxy's paired overhead over in-process routing's (both against direct); the issue's
    /// target is 5. `None` when in-process routing's overhead is not positive.
    pub overhead_ratio: Option<f64>,
    /// The same two comparisons on the servers' own `admit` times.
    pub admit_difference_ms: Option<MedianCi>,
    /// Proxy over in-process, on `admit` overheads.
    pub admit_overhead_ratio: Option<f64>,
}

/// One request's (TTFT ms, total ms, route ms, server admit ms).
type Sample = (f64, f64, Option<f64>, Option<f64>);

/// A metric's duration from a `Server-Timing` header value.
fn timing_metric(header: &str, name: &str) -> Option<f64> {
    header.split(',').find_map(|m| {
        let (n, dur) = m.trim().split_once(";dur=")?;
        (n == name).then(|| dur.parse().ok()).flatten()
    })
}

/// The path measured `k`-th in round `round` (of `paths`): the order rotates every round, so each
/// path goes first, second and third equally often.
fn path_order(round: usize, k: usize, paths: usize) -> usize {
    (round + k) % paths
}

/// `a[i] - b[i]` for paired samples.
fn differences(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(a, b)| a - b).collect()
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

/// Starts `serve --port <port> --config <config> <args>` as a child process of this binary,
/// stopped when the guard drops.
fn spawn_serve(
    what: &str,
    port: u16,
    config: &std::path::Path,
    args: &[&str],
) -> Result<ChildGuard> {
    let child = Command::new(std::env::current_exe()?)
        // Each process gets its models from `args` alone (a proxy serves none of its own).
        .env_remove("SWITCHYARD_MODEL")
        .args(["serve", "--port", &port.to_string()])
        .arg("--config")
        .arg(config)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting the {what} process"))?;
    Ok(ChildGuard(child))
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

/// The inference server's first concrete model (not its routed alias).
async fn served_model(client: &reqwest::Client, base: &str) -> Result<String> {
    let models: serde_json::Value = client
        .get(format!("{base}/v1/models"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    models["data"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["routed"].as_bool() != Some(true))
        .and_then(|m| m["id"].as_str())
        .map(str::to_string)
        .context("the inference server lists no model")
}

/// The [`Sample`] of one streamed request.
async fn one(client: &reqwest::Client, url: &str, body: &serde_json::Value) -> Result<Sample> {
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
    let admit_ms = r
        .headers()
        .get("server-timing")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| timing_metric(v, "admit"));
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
    Ok((ttft.unwrap_or(total), total, route_ms, admit_ms))
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

    let client = reqwest::Client::new();
    // The inference server (direct and in-process paths) and the router-only proxy, each a process
    // of this binary of its own, so that neither shares a runtime or threads with this client.
    let server_port = free_port()?;
    let base = format!("http://127.0.0.1:{server_port}");
    let max_seqs = max_c.max(8).to_string();
    let max_tokens = args.max_tokens.to_string();
    let _server = spawn_serve(
        "inference server",
        server_port,
        &config,
        &[
            "--model",
            &model_arg,
            "--max-num-seqs",
            &max_seqs,
            "--max-tokens",
            &max_tokens,
            // The bench repeats its prompts: each must cost what a new one does.
            "--no-prefix-caching",
        ],
    )?;
    wait_ready(&client, &base).await?;
    let served = served_model(&client, &base).await?;

    let proxy_port = free_port()?;
    let _proxy = spawn_serve("proxy", proxy_port, &config, &["--upstream", &base])?;
    let proxy = format!("http://127.0.0.1:{proxy_port}");
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
    let mut proxy_vs_in_process = Vec::new();
    for &c in &args.concurrency {
        pb.set_message(format!("{c} clients"));
        // Per path, one sample per text, in text order.
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); paths.len()];
        for (round, chunk) in texts.chunks(c.max(1)).enumerate() {
            for k in 0..paths.len() {
                let p = path_order(round, k, paths.len());
                let (_, b, m) = &paths[p];
                let url = format!("{b}/v1/chat/completions");
                let requests = chunk.iter().map(|text| {
                    let body = json!({"model": m, "messages": [{"role": "user", "content": text}],
                                      "max_tokens": args.max_tokens, "temperature": 0, "stream": true,
                                      "chat_template_kwargs": {"enable_thinking": false}});
                    let (client, url) = (client.clone(), url.clone());
                    async move { one(&client, &url, &body).await }
                });
                for sample in futures::future::join_all(requests).await {
                    samples[p].push(sample?);
                }
                pb.inc(chunk.len() as u64);
            }
        }
        let ttfts: Vec<Vec<f64>> = samples
            .iter()
            .map(|s| s.iter().map(|x| x.0).collect())
            .collect();
        let direct_total_p50 = quantile(&samples[0].iter().map(|x| x.1).collect::<Vec<_>>(), 0.5);
        // The servers' own `admit` times, when every response carried one.
        let admits: Vec<Option<Vec<f64>>> = samples
            .iter()
            .map(|s| s.iter().map(|x| x.3).collect())
            .collect();
        let admit_overhead = |p: usize| match (&admits[p], &admits[0]) {
            (Some(a), Some(d)) => Some(differences(a, d)),
            _ => None,
        };
        // Each path's paired TTFT overhead over direct (0 for direct itself).
        let mut overhead_ms = [0.0; 3];
        for (p, (name, _, _)) in paths.iter().enumerate() {
            let totals: Vec<f64> = samples[p].iter().map(|s| s.1).collect();
            let routes: Vec<f64> = samples[p].iter().filter_map(|s| s.2).collect();
            let overhead = (p > 0).then(|| differences(&ttfts[p], &ttfts[0]));
            let overhead_ttft_ms = overhead.clone().map_or(0.0, median);
            overhead_ms[p] = overhead_ttft_ms;
            results.push(PathResult {
                path: name.to_string(),
                concurrency: c,
                ttft_p50_ms: quantile(&ttfts[p], 0.5),
                ttft_p99_ms: quantile(&ttfts[p], 0.99),
                total_p50_ms: quantile(&totals, 0.5),
                total_p99_ms: quantile(&totals, 0.99),
                route_p50_ms: (!routes.is_empty()).then(|| quantile(&routes, 0.5)),
                admit_p50_ms: admits[p].as_deref().map(|a| quantile(a, 0.5)),
                overhead_admit_ci: (p > 0)
                    .then(|| admit_overhead(p))
                    .flatten()
                    .as_deref()
                    .and_then(median_ci),
                overhead_ttft_ms,
                overhead_ttft_ci: overhead.as_deref().and_then(median_ci),
                overhead_pct: overhead_ttft_ms / direct_total_p50 * 100.0,
                ttfts: ttfts[p].clone(),
            });
        }
        let [_, in_process, proxy] = overhead_ms;
        let admit_ratio = match (admit_overhead(1), admit_overhead(2)) {
            (Some(i), Some(p)) => Some((median(i), median(p))),
            _ => None,
        };
        proxy_vs_in_process.push(ProxyVsInProcess {
            concurrency: c,
            ttft_difference_ms: median_ci(&differences(&ttfts[2], &ttfts[1])),
            overhead_ratio: (in_process > 0.0).then(|| proxy / in_process),
            admit_difference_ms: match (&admits[2], &admits[1]) {
                (Some(p), Some(i)) => median_ci(&differences(p, i)),
                _ => None,
            },
            admit_overhead_ratio: admit_ratio.filter(|(i, _)| *i > 0.0).map(|(i, p)| p / i),
        });
    }
    pb.finish_and_clear();

    let report = OverheadReport {
        machine: machine_name(),
        requests: texts.len(),
        max_tokens: args.max_tokens,
        results,
        proxy_vs_in_process,
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

/// `median [low, high]` in ms, or `-`.
fn ci_cell(ci: Option<MedianCi>) -> String {
    ci.map_or("-".into(), |c| {
        format!("{:+.1} [{:+.1}, {:+.1}]", c.median, c.low, c.high)
    })
}

/// [`ci_cell`] to two decimals (the servers' own times are far less noisy).
fn ci_cell2(ci: Option<MedianCi>) -> String {
    ci.map_or("-".into(), |c| {
        format!("{:+.2} [{:+.2}, {:+.2}]", c.median, c.low, c.high)
    })
}

/// The Markdown tables.
pub fn markdown(r: &OverheadReport) -> String {
    let mut s = format!(
        "Routing overhead in the request path ({}; {} chat-style requests per path and concurrency, {} tokens each, streamed, no thinking; paths interleaved round by round)\n\n",
        r.machine, r.requests, r.max_tokens
    );
    s.push_str("| clients | path | TTFT p50 ms | TTFT p99 ms | total p50 ms | total p99 ms | router ms (p50) | TTFT overhead vs direct, paired: median [95 % CI] ms | % of the request | server admit ms (p50) | admit overhead vs direct, paired ms |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
    for x in &r.results {
        let direct = x.path == "direct";
        s.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} | {} |\n",
            x.concurrency,
            x.path,
            x.ttft_p50_ms,
            x.ttft_p99_ms,
            x.total_p50_ms,
            x.total_p99_ms,
            x.route_p50_ms.map_or("-".into(), |v| format!("{v:.2}")),
            if direct {
                "-".into()
            } else {
                ci_cell(x.overhead_ttft_ci)
            },
            if direct {
                "-".into()
            } else {
                format!("{:+.1} %", x.overhead_pct)
            },
            x.admit_p50_ms.map_or("-".into(), |v| format!("{v:.2}")),
            if direct {
                "-".into()
            } else {
                ci_cell2(x.overhead_admit_ci)
            },
        ));
    }
    s.push_str("\n| clients | proxy TTFT minus in-process TTFT, paired: median [95 % CI] ms | proxy overhead / in-process overhead (target 5) | proxy admit minus in-process admit, paired ms | the same ratio on admit overheads |\n|---|---|---|---|---|\n");
    let ratio = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}x"));
    for x in &r.proxy_vs_in_process {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            x.concurrency,
            ci_cell(x.ttft_difference_ms),
            ratio(x.overhead_ratio),
            ci_cell2(x.admit_difference_ms),
            ratio(x.admit_overhead_ratio),
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_takes_every_place_in_the_order_equally_often() {
        let mut places = [[0usize; 3]; 3];
        for round in 0..30 {
            let order: Vec<usize> = (0..3).map(|k| path_order(round, k, 3)).collect();
            let mut sorted = order.clone();
            sorted.sort();
            assert_eq!(sorted, vec![0, 1, 2], "each path once per round");
            for (k, p) in order.into_iter().enumerate() {
                places[p][k] += 1;
            }
        }
        assert!(places.iter().flatten().all(|&n| n == 10), "{places:?}");
    }

    #[test]
    fn overheads_are_paired_differences() {
        assert_eq!(differences(&[5.0, 7.0], &[4.0, 9.0]), vec![1.0, -2.0]);
    }

    #[test]
    fn the_tables_show_paired_overheads_and_the_proxy_comparison() {
        let path = |name: &str, overhead: f64| PathResult {
            path: name.into(),
            concurrency: 1,
            ttft_p50_ms: 50.0 + overhead,
            ttft_p99_ms: 80.0,
            total_p50_ms: 200.0,
            total_p99_ms: 250.0,
            route_p50_ms: (name != "direct").then_some(3.0),
            admit_p50_ms: Some(0.5 + overhead),
            overhead_admit_ci: (name != "direct").then_some(MedianCi {
                median: overhead,
                low: overhead - 0.25,
                high: overhead + 0.25,
            }),
            overhead_ttft_ms: overhead,
            overhead_ttft_ci: (name != "direct").then_some(MedianCi {
                median: overhead,
                low: overhead - 1.0,
                high: overhead + 1.0,
            }),
            overhead_pct: overhead / 2.0,
            ttfts: Vec::new(),
        };
        let report = OverheadReport {
            machine: "test machine".into(),
            requests: 40,
            max_tokens: 64,
            results: vec![
                path("direct", 0.0),
                path("in-process", 3.0),
                path("proxy", 4.5),
            ],
            proxy_vs_in_process: vec![ProxyVsInProcess {
                concurrency: 1,
                ttft_difference_ms: Some(MedianCi {
                    median: 1.5,
                    low: 0.5,
                    high: 2.5,
                }),
                overhead_ratio: Some(1.5),
                admit_difference_ms: Some(MedianCi {
                    median: 1.5,
                    low: 1.25,
                    high: 1.75,
                }),
                admit_overhead_ratio: Some(1.5),
            }],
        };
        let md = markdown(&report);
        assert!(md.contains("| 1 | in-process | 53.0 | 80.0 | 200.0 | 250.0 | 3.00 | +3.0 [+2.0, +4.0] | +1.5 % | 3.50 | +3.00 [+2.75, +3.25] |"), "{md}");
        assert!(
            md.contains("| 1 | direct | 50.0 | 80.0 | 200.0 | 250.0 | - | - | - | 0.50 | - |"),
            "{md}"
        );
        assert!(
            md.contains("| 1 | +1.5 [+0.5, +2.5] | 1.50x | +1.50 [+1.25, +1.75] | 1.50x |"),
            "{md}"
        );
    }

    #[test]
    fn server_timing_metrics_are_read_by_name() {
        let h = "route;dur=3.500, admit;dur=5.250, upstream-admit;dur=0.700";
        assert_eq!(timing_metric(h, "admit"), Some(5.25));
        assert_eq!(timing_metric(h, "route"), Some(3.5));
        assert_eq!(timing_metric(h, "upstream-admit"), Some(0.7));
        assert_eq!(timing_metric(h, "hop"), None);
        assert_eq!(timing_metric("admit;dur=x", "admit"), None);
    }
}
