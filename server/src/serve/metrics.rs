//! Prometheus metrics (`GET /metrics`): requests by route, category and reasoning mode; routing
//! latency; time to first token; inter-token latency; tokens; and, read at scrape time, the engines'
//! queue depth, running batch size and KV-cache use, and the open streams.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use super::State;

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    /// Finished requests by endpoint, model, category, reasoning mode and outcome.
    pub requests: IntCounterVec,
    /// Routing decision time, seconds.
    pub route_seconds: HistogramVec,
    /// Time to first token, seconds.
    pub ttft_seconds: HistogramVec,
    /// Time between streamed tokens, seconds.
    pub inter_token_seconds: HistogramVec,
    /// Tokens by kind (prompt, cached_prompt: the part of it found in the prefix cache, completion, reasoning).
    pub tokens: IntCounterVec,
    queue_depth: IntGaugeVec,
    running: IntGaugeVec,
    kv_blocks_used: IntGaugeVec,
    kv_blocks_cached: IntGaugeVec,
    kv_blocks_total: IntGaugeVec,
    open_streams: IntGauge,
}

fn buckets(start: f64, factor: f64, n: usize) -> Vec<f64> {
    prometheus::exponential_buckets(start, factor, n).expect("valid buckets")
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("switchyard_requests_total", "Finished requests"),
            &["endpoint", "model", "category", "reasoning", "status"],
        )?;
        let route_seconds = HistogramVec::new(
            HistogramOpts::new("switchyard_route_seconds", "Routing decision time")
                .buckets(buckets(0.0005, 2.0, 14)),
            &["category"],
        )?;
        let ttft_seconds = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_time_to_first_token_seconds",
                "Time to first token",
            )
            .buckets(buckets(0.005, 2.0, 14)),
            &["model"],
        )?;
        let inter_token_seconds = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_inter_token_seconds",
                "Time between streamed tokens",
            )
            .buckets(buckets(0.001, 2.0, 12)),
            &["model"],
        )?;
        let tokens = IntCounterVec::new(
            Opts::new("switchyard_tokens_total", "Tokens processed"),
            &["model", "kind"],
        )?;
        let gauge = |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), &["model"]);
        let queue_depth = gauge("switchyard_queue_depth", "Requests waiting for admission")?;
        let running = gauge(
            "switchyard_running_sequences",
            "Sequences in the running batch",
        )?;
        let kv_blocks_used = gauge("switchyard_kv_cache_blocks_used", "KV-cache blocks in use")?;
        let kv_blocks_cached = gauge(
            "switchyard_kv_cache_blocks_cached",
            "KV-cache blocks no sequence holds that keep a prompt prefix for reuse",
        )?;
        let kv_blocks_total = gauge("switchyard_kv_cache_blocks_total", "KV-cache blocks in all")?;
        let open_streams = IntGauge::new("switchyard_open_streams", "Streamed responses open")?;
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(route_seconds.clone()),
            Box::new(ttft_seconds.clone()),
            Box::new(inter_token_seconds.clone()),
            Box::new(tokens.clone()),
            Box::new(queue_depth.clone()),
            Box::new(running.clone()),
            Box::new(kv_blocks_used.clone()),
            Box::new(kv_blocks_cached.clone()),
            Box::new(kv_blocks_total.clone()),
            Box::new(open_streams.clone()),
        ] {
            registry.register(c)?;
        }
        Ok(Metrics {
            registry,
            requests,
            route_seconds,
            ttft_seconds,
            inter_token_seconds,
            tokens,
            queue_depth,
            running,
            kv_blocks_used,
            kv_blocks_cached,
            kv_blocks_total,
            open_streams,
        })
    }

    /// The text exposition, with the engine gauges read now.
    pub fn render(&self, state: &State) -> String {
        for (name, engine) in &state.engines {
            let s = engine.stats().snapshot();
            self.queue_depth
                .with_label_values(&[name])
                .set(s.waiting as i64);
            self.running
                .with_label_values(&[name])
                .set(s.running as i64);
            self.kv_blocks_used
                .with_label_values(&[name])
                .set(s.kv_blocks_used as i64);
            self.kv_blocks_cached
                .with_label_values(&[name])
                .set(s.kv_blocks_cached as i64);
            self.kv_blocks_total
                .with_label_values(&[name])
                .set(s.kv_blocks_total as i64);
        }
        self.open_streams.set(
            state
                .limits
                .streams
                .saturating_sub(state.streams.available_permits()) as i64,
        );
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!("encoding metrics: {e}");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}
