//! Malformed requests never break the server: valid requests to every POST endpoint, mutated at
//! random (a value of another type or size put anywhere in the body, a key dropped, an unknown key
//! added), get either an answer or an OpenAI-style error with a 4xx status, never a 5xx, a panic
//! or a broken stream, and the server keeps answering well-formed requests throughout.
//!
//! The mutations are drawn from a fixed seed, so a failure names a body that reproduces it;
//! `SWITCHYARD_FUZZ_SEED=<n>` draws another set (to hunt, not in CI).

mod server_common;

use serde_json::{json, Value};
use server_common::*;
use std::time::Duration;
use switchyard_server::serve::ServeArgs;
use switchyard_tests::fuzz::{mutate, seeded_rng};

/// Mutated requests sent per run (each endpoint's seeds in turn).
const ROUNDS: usize = 1500;

/// Valid bodies, one or more per endpoint, that exercise most of each endpoint's fields.
fn seeds() -> Vec<(&'static str, Value)> {
    let tool = json!({"type": "function", "function": {"name": "lookup", "description": "d",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"},
            "n": {"type": "integer", "minimum": 0}}, "required": ["q"]}}});
    let messages = json!([
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "find"}, {"type": "text", "text": "it"}]},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
            "function": {"name": "lookup", "arguments": "{\"q\": \"x\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "found"},
        {"role": "user", "content": "and then?"}
    ]);
    vec![
        (
            "/v1/chat/completions",
            json!({"model": "tiny-llama", "messages": messages, "max_tokens": 4,
                "temperature": 0.7, "top_p": 0.9, "top_k": 5, "min_p": 0.01, "seed": 3,
                "stop": ["zz"], "logprobs": true, "top_logprobs": 2, "n": 2,
                "presence_penalty": 0.1, "frequency_penalty": 0.1, "repetition_penalty": 1.1,
                "logit_bias": {"5": -1.0}, "tools": [tool], "tool_choice": "auto",
                "parallel_tool_calls": false, "user": "u"}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "tiny-llama", "stream": true,
                "stream_options": {"include_usage": true}, "max_completion_tokens": 6,
                "messages": [{"role": "user", "content": "json please"}],
                "response_format": {"type": "json_schema", "json_schema": {"name": "s",
                    "strict": true, "schema": {"type": "object",
                        "properties": {"x": {"type": "string", "maxLength": 3}},
                        "required": ["x"]}}}}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "auto", "reasoning_effort": "low", "max_tokens": 5,
                "messages": [{"role": "user", "content": "Solve 3x + 7 = 22"}],
                "chat_template_kwargs": {"enable_thinking": true}, "stream": true}),
        ),
        (
            "/v1/completions",
            json!({"model": "tiny-llama", "prompt": ["ab", "cd"], "max_tokens": 3,
                "echo": true, "logprobs": 2, "n": 1, "temperature": 0, "stop": "\n",
                "suffix": null, "stream": false}),
        ),
        (
            "/v1/completions",
            json!({"model": "tiny-llama", "prompt": [1, 2, 3], "max_tokens": 3, "stream": true,
                "stream_options": {"include_usage": true}, "cache_prompt": false}),
        ),
        (
            "/v1/route",
            json!({"model": "auto", "messages": [{"role": "user",
                "content": "My email is a@b.co, plan my week"}]}),
        ),
        (
            "/tokenize",
            json!({"model": "tiny-llama", "prompt": "hello there", "add_special_tokens": false,
                "return_token_strs": true}),
        ),
        (
            "/tokenize",
            json!({"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}],
                "chat_template_kwargs": {"enable_thinking": false}}),
        ),
        (
            "/detokenize",
            json!({"model": "tiny-llama", "tokens": [5, 6, 7]}),
        ),
    ]
}

/// Checks one answer: no 5xx; an error has the OpenAI shape; a success parses as JSON, or as
/// server-sent events whose payloads are JSON up to a final `[DONE]`.
async fn check_answer(r: reqwest::Response, what: &str) {
    let status = r.status().as_u16();
    let streamed = r
        .headers()
        .get("content-type")
        .is_some_and(|c| c.to_str().unwrap_or("").starts_with("text/event-stream"));
    let text = r
        .text()
        .await
        .unwrap_or_else(|e| panic!("{what}: body broke: {e}"));
    assert!(status < 500, "{what}: status {status}: {text}");
    if status >= 400 {
        let v: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: {e}: {text}"));
        assert!(v["error"]["message"].is_string(), "{what}: {v}");
        assert!(v["error"]["type"].is_string(), "{what}: {v}");
        return;
    }
    if streamed {
        let data = sse_data(&text);
        assert_eq!(
            data.last().map(String::as_str),
            Some("[DONE]"),
            "{what}: {text}"
        );
        for d in &data[..data.len() - 1] {
            let v: Value = serde_json::from_str(d).unwrap_or_else(|e| panic!("{what}: {e}: {d}"));
            assert!(v.get("error").is_none(), "{what}: an error event: {v}");
        }
    } else {
        serde_json::from_str::<Value>(&text).unwrap_or_else(|e| panic!("{what}: {e}: {text}"));
    }
}

/// Sends [`ROUNDS`] mutated requests to `base`, checking each answer, with a well-formed request
/// every 40 rounds; returns how many got a success and how many an error.
async fn fuzz(base: &str) -> (usize, usize) {
    let client = reqwest::Client::new();
    let seeds = seeds();
    let (seed, mut rng) = seeded_rng(0x5eed);
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for round in 0..ROUNDS {
        let (path, seed) = &seeds[round % seeds.len()];
        let mut body = mutate(seed, &mut rng);
        // Sampled answers reproduce too, unless the mutation itself touched the seed.
        if let Some(fields) = body.as_object_mut() {
            fields.entry("seed").or_insert(json!(7));
        }
        let what = format!("round {round}, POST {base}{path} {body}");
        let r = client
            .post(format!("{base}{path}"))
            .json(&body)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        *statuses.entry(r.status().as_u16()).or_default() += 1;
        check_answer(r, &what).await;
        if round % 40 == 39 {
            let r = post(
                base,
                "/v1/chat/completions",
                &chat("tiny-llama", "still there?", 2),
            )
            .await;
            assert_eq!(r.status(), 200, "after round {round}");
        }
    }
    eprintln!("{base}, seed {seed}: statuses {statuses:?}");
    assert_eq!(get_status(base, "/health").await, 200);
    statuses.iter().fold((0, 0), |(ok, bad), (&s, &n)| {
        if s < 300 {
            (ok + n, bad)
        } else {
            (ok, bad + n)
        }
    })
}

/// A generator with a small `max_tokens` ceiling, so that thousands of requests take seconds.
async fn generator() -> (switchyard_server::serve::Server, String) {
    server(ServeArgs {
        max_tokens: 8,
        ..args()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_requests_get_answers_or_client_errors_and_the_server_keeps_serving() {
    let (s, base) = generator().await;
    let (ok, refused) = fuzz(&base).await;
    // Both kinds of outcome were exercised, or the mutations say nothing.
    assert!(
        ok >= ROUNDS / 10 && refused >= ROUNDS / 10,
        "{ok} / {refused}"
    );
    s.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routing_proxy_answers_mutated_requests_as_the_server_does() {
    let (generator, upstream) = generator().await;
    let (proxy, base) = server(ServeArgs {
        upstream_timeout: 60,
        ..proxy_args(upstream)
    })
    .await;
    let (ok, refused) = fuzz(&base).await;
    assert!(
        ok >= ROUNDS / 10 && refused >= ROUNDS / 10,
        "{ok} / {refused}"
    );
    proxy.shutdown(Duration::from_secs(5)).await.unwrap();
    generator.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// Bodies that are not JSON, or JSON of the wrong shape, are 400s with the OpenAI error shape; a
/// routing proxy refuses them with the same status and code (and, for well-formed JSON of the
/// wrong shape, the same field: the proxy reads a body it does not route as JSON only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_are_not_request_objects_are_client_errors() {
    let (generator, base) = generator().await;
    let (proxy, proxy_base) = server(proxy_args(base.clone())).await;
    let direct = raw_bodies(&base).await;
    assert_eq!(raw_bodies(&proxy_base).await, direct);
    proxy.shutdown(Duration::from_secs(5)).await.unwrap();
    generator.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// Posts bodies that are no request to every endpoint; checks each is a 400 with the OpenAI error
/// shape and returns each error's `code`, and its `param` where the body is well-formed JSON.
async fn raw_bodies(base: &str) -> Vec<(Value, Value)> {
    let client = reqwest::Client::new();
    let raw: [&[u8]; 9] = [
        b"",
        b"{",
        b"null",
        b"[]",
        b"\"text\"",
        b"{\"model\": \"tiny-llama\", \"messages\": [}",
        b"\xff\xfe{}",
        b"{\"model\": \"tiny-llama\", \"messages\": [{\"role\": \"user\", \"content\": \"\xc3\"}]}",
        b"{\"model\": \"auto\", \"messages\": 7, \"prompt\": 7}",
    ];
    let mut errors = Vec::new();
    for path in [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/route",
        "/tokenize",
        "/detokenize",
    ] {
        for body in raw {
            let r = client
                .post(format!("{base}{path}"))
                .header("content-type", "application/json")
                .body(body.to_vec())
                .send()
                .await
                .unwrap();
            let what = format!("POST {base}{path} {:?}", String::from_utf8_lossy(body));
            let e = error_of(r, 400).await;
            assert!(
                e["code"] == "invalid_json" || e["code"] == "missing_required_parameter",
                "{what}: {e}"
            );
            assert_ne!(e["param"], "?", "{what}: {e}");
            let well_formed = serde_json::from_slice::<Value>(body).is_ok();
            let param = if well_formed {
                e["param"].clone()
            } else {
                Value::Null
            };
            errors.push((e["code"].clone(), param));
        }
    }
    errors
}
