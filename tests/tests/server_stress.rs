//! A storm of concurrent clients that share prompt prefixes, stream or not, ask for several
//! choices of two models on one worker, routed or not, and hang up at random moments leaves nothing
//! behind, on the server and behind a routing proxy: once it is over no sequence is waiting or running, no KV-cache block is
//! held, no stream is counted open, and a greedy request answers exactly what it answered before
//! the storm (the prefix cache the storm filled and emptied gives the same tokens).

mod server_common;

use std::time::Duration;

use futures::StreamExt;
use rand::Rng;
use serde_json::{json, Value};
use server_common::*;
use switchyard_server::serve::ServeArgs;
use switchyard_tests::fixtures;
use switchyard_tests::fuzz::seeded_rng;

/// Clients in the storm.
const CLIENTS: usize = 64;

/// How a client of the storm behaves.
#[derive(Debug, Clone, Copy)]
enum Client {
    /// Reads the whole answer.
    Patient,
    /// Reads the first chunk of the body, then hangs up.
    FirstChunk,
    /// Hangs up after this many milliseconds, wherever the answer is.
    Timeout(u64),
}

async fn storm_client(base: String, body: Value, client: Client) {
    let http = reqwest::Client::new();
    let request = http.post(format!("{base}/v1/chat/completions")).json(&body);
    match client {
        Client::Patient => {
            let r = request.send().await.expect("sent");
            assert_eq!(r.status(), 200, "{body}");
            r.bytes().await.expect("the whole answer");
        }
        Client::FirstChunk => {
            let r = request.send().await.expect("sent");
            assert_eq!(r.status(), 200, "{body}");
            let mut chunks = r.bytes_stream();
            let _ = chunks.next().await;
        }
        Client::Timeout(ms) => {
            // The answer, or the hang-up: both are fine here.
            let _ = request.timeout(Duration::from_millis(ms)).send().await;
        }
    }
}

/// Sends the storm to `base` and checks that `generator` (the server behind `base`, or `base`
/// itself) is left with nothing held and answers `greedy` as it did before. (A proxy holds no
/// sequences or streams of its own to check: what it relays, the generator holds.)
async fn storm(base: &str, generator: &switchyard_server::serve::Server, generator_base: &str) {
    let greedy = chat(
        MODELS[0],
        "The shared opening of every prompt in this test, then more",
        24,
    );
    let before: Value = post(generator_base, "/v1/chat/completions", &greedy)
        .await
        .json()
        .await
        .unwrap();

    let (seed, mut rng) = seeded_rng(0x5707);
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let max_tokens = [1, 8, 64][rng.random_range(0..3)];
        let temperature = [0.0, 1.0][rng.random_range(0..2)];
        let model = MODELS[rng.random_range(0..MODELS.len())];
        let body = json!({
            "model": model,
            "messages": [
                {"role": "system", "content": "The shared opening of every prompt in this test"},
                {"role": "user", "content": format!("request {} of the storm", i % 5)}],
            "max_tokens": max_tokens,
            "n": rng.random_range(1..=3),
            "temperature": temperature,
            "stream": rng.random::<bool>(),
        });
        let client = match rng.random_range(0..3) {
            0 => Client::Patient,
            1 => Client::FirstChunk,
            _ => Client::Timeout(rng.random_range(1..200)),
        };
        clients.push(tokio::spawn(storm_client(base.to_string(), body, client)));
    }
    for c in clients {
        c.await
            .unwrap_or_else(|e| panic!("seed {seed}: a client failed: {e}"));
    }

    // Everything the storm started ends, and lets go of what it held (polled together: a body
    // the server has not dropped yet still holds its stream for a moment).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let counted = metrics(generator_base).await;
        let mut left: Vec<String> = Vec::new();
        let mut cancelled = 0;
        if !counted.contains("switchyard_open_streams 0") {
            left.push("open streams".into());
        }
        for name in &MODELS[..2] {
            let now = generator.state.engines[*name].stats().snapshot();
            cancelled += now.cancelled;
            if now.waiting + now.running + now.kv_blocks_used > 0 {
                left.push(format!("{name}: {now:?}"));
            }
            for gauge in [
                format!("switchyard_kv_cache_blocks_used{{model=\"{name}\"}} 0"),
                format!("switchyard_running_sequences{{model=\"{name}\"}} 0"),
            ] {
                if !counted.contains(&gauge) {
                    left.push(gauge);
                }
            }
        }
        if left.is_empty() {
            // How many the storm cancelled depends on timing; the test holds either way.
            eprintln!("seed {seed}: {cancelled} sequences cancelled");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "seed {seed}: not yet {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The same greedy answer as before the storm.
    let after: Value = post(generator_base, "/v1/chat/completions", &greedy)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        after["choices"][0]["message"],
        before["choices"][0]["message"]
    );
}

/// The models a storm's clients name: the tiny Llama under the name the shipped routing config
/// targets (so `auto` routes to it), and the tiny Qwen3.
const MODELS: [&str; 3] = ["SmolLM2-135M-Instruct", "tiny-qwen3", "auto"];

/// The generator of both tests: the tiny Llama and the tiny Qwen3 on one worker, answers of up to
/// 64 tokens.
fn generator_args() -> ServeArgs {
    ServeArgs {
        max_tokens: 64,
        models: vec![
            format!(
                "SmolLM2-135M-Instruct={}",
                fixtures().join("hf/tiny-llama").display()
            ),
            fixtures()
                .join("hf/tiny-qwen3")
                .to_string_lossy()
                .into_owned(),
        ],
        ..args()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_clients_that_hang_up_leaves_nothing_behind() {
    let (s, base) = server(generator_args()).await;
    storm(&base, &s, &base).await;
    s.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_through_a_routing_proxy_leaves_nothing_behind_upstream() {
    let (generator, generator_base) = server(generator_args()).await;
    let (proxy, proxy_base) = server(proxy_args(generator_base.clone())).await;
    storm(&proxy_base, &generator, &generator_base).await;
    proxy.shutdown(Duration::from_secs(5)).await.unwrap();
    generator.shutdown(Duration::from_secs(5)).await.unwrap();
}
