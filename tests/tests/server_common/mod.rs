//! Helpers shared by the `server_*` end-to-end tests: a real server on an ephemeral loopback port
//! (the tiny fixture Llama, the shipped router) and a real HTTP client.
#![allow(dead_code)] // each test binary uses its own part

use serde_json::{json, Value};
use switchyard_server::serve::{start, ServeArgs, Server};
use switchyard_tests::fixtures;

/// Serve the tiny fixture Llama on a free loopback port.
pub fn args() -> ServeArgs {
    ServeArgs {
        port: 0,
        models: vec![fixtures()
            .join("hf/tiny-llama")
            .to_string_lossy()
            .into_owned()],
        max_tokens: 256,
        ..ServeArgs::default()
    }
}

/// A router-only proxy on a free loopback port in front of `upstream`.
pub fn proxy_args(upstream: String) -> ServeArgs {
    ServeArgs {
        port: 0,
        upstream: Some(upstream),
        ..ServeArgs::default()
    }
}

/// Starts a server; returns it and its base URL.
pub async fn server(args: ServeArgs) -> (Server, String) {
    let s = start(args).await.expect("server starts");
    let base = format!("http://{}", s.addr);
    (s, base)
}

/// A greedy one-turn chat request body.
pub fn chat(model: &str, content: &str, max_tokens: usize) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": content}],
           "max_tokens": max_tokens, "temperature": 0})
}

/// POSTs a JSON body.
pub async fn post(base: &str, path: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(body)
        .send()
        .await
        .expect("request sent")
}

/// Parses an SSE body into its `data:` payloads.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|event| {
            event
                .lines()
                .find_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
                .map(str::to_string)
        })
        .collect()
}

/// Content and reasoning text of a streamed completion, its finish reason, and its usage chunk.
pub fn assemble(data: &[String]) -> (String, String, Option<String>, Option<Value>) {
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    let (mut content, mut reasoning, mut finish, mut usage) =
        (String::new(), String::new(), None, None);
    for d in &data[..data.len() - 1] {
        let v: Value = serde_json::from_str(d).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk", "{v}");
        if let Some(u) = v.get("usage") {
            usage = Some(u.clone());
        }
        if let Some(c) = v["choices"].get(0) {
            content.push_str(c["delta"]["content"].as_str().unwrap_or(""));
            reasoning.push_str(c["delta"]["reasoning_content"].as_str().unwrap_or(""));
            if let Some(f) = c["finish_reason"].as_str() {
                finish = Some(f.to_string());
            }
        }
    }
    (content, reasoning, finish, usage)
}

/// Checks the status and the OpenAI error shape; returns the `error` object.
pub async fn error_of(r: reqwest::Response, status: u16) -> Value {
    assert_eq!(r.status().as_u16(), status);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["message"].is_string(), "{v}");
    assert!(v["error"]["type"].is_string(), "{v}");
    v["error"].clone()
}

/// The `/metrics` text.
pub async fn metrics(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The status of an unauthenticated `GET` of `path`.
pub async fn get_status(base: &str, path: &str) -> u16 {
    reqwest::get(format!("{base}{path}"))
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The JSON body of an unauthenticated `GET` of `path`.
pub async fn get_json(base: &str, path: &str) -> Value {
    reqwest::get(format!("{base}{path}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The ids of a `/v1/models` list, in order.
pub fn model_ids(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}
