//! The server's lifecycle end to end: graceful shutdown (open streams finish; past the grace period
//! they end with an error and their sequences are cancelled) and clients that go away.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use server_common::*;
use switchyard_server::serve::start;

mod server_common;

/// A greedy stream that runs long enough to be in flight while the test acts on it.
fn long_stream(max_tokens: usize) -> Value {
    let mut body = chat("tiny-llama", "Tell me a long story", max_tokens);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    body["ignore_eos"] = json!(true);
    body
}

/// Waits until `check` holds on the engine's counters (10 s at most).
async fn wait_for_engine(
    engine: &switchyard_engine::Engine,
    what: &str,
    check: impl Fn(&switchyard_engine::StatsSnapshot) -> bool,
) -> switchyard_engine::StatsSnapshot {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let snap = engine.stats().snapshot();
        if check(&snap) {
            return snap;
        }
        assert!(Instant::now() < deadline, "{what}: {snap:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_and_lets_open_streams_finish() {
    let mut a = args();
    a.max_tokens = 400;
    let (s, base) = server(a).await;
    let state = s.state.clone();
    let addr = s.addr;
    let r = post(&base, "/v1/chat/completions", &long_stream(400)).await;
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let mut text = String::from_utf8(body.next().await.unwrap().unwrap().to_vec()).unwrap();
    // Shut down while the sequence is still being decoded.
    wait_for_engine(
        &state.engines["tiny-llama"],
        "the stream is decoding",
        |s| s.running == 1,
    )
    .await;
    assert!(metrics(&base)
        .await
        .contains("\nswitchyard_open_streams 1\n"));
    let shutdown = tokio::spawn(s.shutdown(Duration::from_secs(30)));
    // New connections are refused once shutdown has begun...
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting connections");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // ... and the open stream runs to its end.
    while let Some(bytes) = body.next().await {
        text.push_str(std::str::from_utf8(&bytes.unwrap()).unwrap());
    }
    let (content, _, finish, usage) = assemble(&sse_data(&text));
    assert!(!content.is_empty());
    assert_eq!(finish.as_deref(), Some("length"));
    assert_eq!(usage.unwrap()["completion_tokens"], 400);
    shutdown.await.unwrap().unwrap();
    assert_eq!(state.engines["tiny-llama"].stats().snapshot().cancelled, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_open_when_the_grace_period_ends_get_an_error_and_are_cancelled() {
    let mut a = args();
    a.max_tokens = 480;
    let (s, base) = server(a).await;
    let state = s.state.clone();
    let r = post(&base, "/v1/chat/completions", &long_stream(480)).await;
    let mut body = r.bytes_stream();
    let mut text = String::from_utf8(body.next().await.unwrap().unwrap().to_vec()).unwrap();
    wait_for_engine(
        &state.engines["tiny-llama"],
        "the stream is decoding",
        |s| s.running == 1,
    )
    .await;
    let started = Instant::now();
    s.shutdown(Duration::ZERO).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    while let Some(bytes) = body.next().await {
        text.push_str(std::str::from_utf8(&bytes.unwrap()).unwrap());
    }
    let data = sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    let last: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(last["error"]["code"], "server_shutdown", "{last}");
    assert_eq!(last["error"]["type"], "server_error");
    let engine = &state.engines["tiny-llama"];
    let snap = wait_for_engine(engine, "the cut-off sequence is freed", |s| {
        s.running == 0 && s.kv_blocks_used == 0
    })
    .await;
    assert_eq!(snap.cancelled, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_streaming_client_that_goes_away_cancels_its_sequence() {
    let mut a = args();
    a.max_tokens = 480;
    let (s, base) = server(a).await;
    let engine = &s.state.engines["tiny-llama"];
    let mut body = chat("tiny-llama", "Tell me a long story", 480);
    body["ignore_eos"] = json!(true);
    let request = {
        let base = base.clone();
        tokio::spawn(async move { post(&base, "/v1/chat/completions", &body).await })
    };
    wait_for_engine(engine, "the request is decoding", |s| s.running == 1).await;
    request.abort();
    let snap = wait_for_engine(engine, "the abandoned sequence is freed", |s| {
        s.running == 0 && s.kv_blocks_used == 0
    })
    .await;
    assert_eq!(snap.cancelled, 1);
    assert!(snap.generated_tokens < 480, "{snap:?}");
    // It counts as cancelled, not as served.
    let text = metrics(&base).await;
    assert!(
        text.contains(
            "switchyard_requests_total{category=\"\",endpoint=\"chat\",model=\"tiny-llama\",reasoning=\"off\",status=\"cancelled\"} 1"
        ),
        "{text}"
    );
    assert!(!text.contains("status=\"200\""), "{text}");
    s.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_dropped_mid_way_counts_as_cancelled() {
    let (s, base) = server(args()).await;
    let mut body = chat("tiny-llama", "Tell me a long story", 250);
    body["stream"] = json!(true);
    body["ignore_eos"] = json!(true);
    let r = post(&base, "/v1/chat/completions", &body).await;
    let mut chunks = r.bytes_stream();
    chunks.next().await.unwrap().unwrap();
    drop(chunks);
    let engine = &s.state.engines["tiny-llama"];
    wait_for_engine(engine, "the sequence is cancelled", |s| {
        s.cancelled == 1 && s.running == 0
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = metrics(&base).await;
        if text.contains("status=\"cancelled\"} 1") {
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    s.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_plan_sizes_each_models_cache_and_refuses_what_cannot_fit() {
    // Default: a fraction of the device, capped at what the model wants; the engine gets the plan's size.
    let (first, _) = server(args()).await;
    let plan = first.state.memory_plan.clone().expect("a plan");
    let planned = plan.kv_bytes("tiny-llama").expect("planned") as usize;
    let engine = &first.state.engines["tiny-llama"];
    let model = &plan.models[0];
    assert_eq!(
        model.kv_positions(),
        model.footprint.wanted_positions,
        "a tiny model gets all it wants"
    );
    assert!(engine.kv_cache_bytes() <= planned && planned - engine.kv_cache_bytes() < 1 << 20);
    assert!(plan.to_string().contains("tiny-llama: weights"));
    first.shutdown(Duration::from_secs(1)).await.unwrap();

    // Two models share an explicit budget in proportion to what they want (here: equally).
    let path = fixtures_model();
    let mut two = args();
    two.models = vec![format!("a={path}"), format!("b={path}")];
    two.no_router = true;
    two.kv_cache_mib = Some(2);
    let (shared, _) = server(two).await;
    let (a, b) = (
        shared.state.engines["a"].kv_cache_bytes(),
        shared.state.engines["b"].kv_cache_bytes(),
    );
    assert_eq!(a, b);
    assert!(a + b <= 2 << 20 && a + b > (2 << 20) * 9 / 10, "{a} + {b}");
    shared.shutdown(Duration::from_secs(1)).await.unwrap();

    // More than the device has, or a fraction out of range: a start-up error that says why.
    let mut huge = args();
    huge.kv_cache_mib = Some(1 << 30);
    let err = format!("{:#}", start(huge).await.err().expect("refused"));
    assert!(
        err.contains("kv_cache_bytes") && err.contains("left after the weights"),
        "{err}"
    );
    let mut bad = args();
    bad.gpu_memory_fraction = 1.5;
    let err = format!("{:#}", start(bad).await.err().expect("refused"));
    assert!(err.contains("gpu_memory_fraction"), "{err}");
}

fn fixtures_model() -> String {
    switchyard_tests::fixtures()
        .join("hf/tiny-llama")
        .to_string_lossy()
        .into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_port_or_a_bad_flag_is_refused_before_any_model_loads() {
    // The model path does not exist: an error about it would mean it was tried first.
    let missing = || vec!["/nonexistent/switchyard-model.gguf".to_string()];
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut a = args();
    a.models = missing();
    a.port = port;
    let err = start(a).await.err().expect("a busy port").to_string();
    assert!(err.contains("binding"), "{err}");

    let mut a = args();
    a.models = missing();
    a.max_batch_tokens = 4;
    let err = start(a).await.err().expect("refused").to_string();
    assert!(err.contains("--max-batch-tokens"), "{err}");

    let mut a = args();
    a.upstream = Some("http://127.0.0.1:9".into());
    let err = start(a).await.err().expect("refused").to_string();
    assert!(err.contains("--upstream serves no model"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_while_its_request_is_routed_counts_as_cancelled() {
    use switchyard_models::executor::DeviceExecutor;
    // The router's batches run on the engine's worker, which the test holds: the request waits
    // in routing, before it has anything that would count it.
    let mut a = args();
    a.models = vec![format!("SmolLM2-135M-Instruct={}", fixtures_model())];
    a.router_executor = switchyard_server::serve::RouterExecutor::Engine;
    let (s, base) = server(a).await;
    let (release, hold) = std::sync::mpsc::channel::<()>();
    s.state.engines["SmolLM2-135M-Instruct"]
        .executor()
        .execute(Box::new(move || {
            let _ = hold.recv();
        }))
        .unwrap_or_else(|_| panic!("engine stopped"));
    let request = {
        let base = base.clone();
        tokio::spawn(
            async move { post(&base, "/v1/chat/completions", &chat("auto", "hi", 2)).await },
        )
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    request.abort();
    let counted = "switchyard_requests_total{category=\"\",endpoint=\"chat\",model=\"\",reasoning=\"\",status=\"cancelled\"} 1";
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut text = metrics(&base).await;
    while !text.contains(counted) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        text = metrics(&base).await;
    }
    assert!(text.contains(counted), "{text}");
    release.send(()).unwrap();
    s.shutdown(Duration::from_secs(5)).await.unwrap();
}
