//! Seeded mutation of JSON documents, for the tests that feed damaged input to the server, the
//! loaders and the router's configuration.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// A generator seeded with `SWITCHYARD_FUZZ_SEED` when it is set (to hunt for failures, not in
/// CI), else with `default`; returns the seed with it, for the failure message.
pub fn seeded_rng(default: u64) -> (u64, StdRng) {
    let seed = std::env::var("SWITCHYARD_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    (seed, StdRng::seed_from_u64(seed))
}

/// Runs `attempt`, which either works or is refused with an error: `Some(true)` if it worked,
/// `Some(false)` if it was refused with an error that says something, `None` if it panicked.
pub fn outcome(
    attempt: impl FnOnce() -> Result<(), String> + std::panic::UnwindSafe,
) -> Option<bool> {
    match std::panic::catch_unwind(attempt) {
        Ok(Ok(())) => Some(true),
        Ok(Err(e)) => {
            assert!(!e.is_empty(), "an error that says nothing");
            Some(false)
        }
        Err(_) => None,
    }
}

/// A value in place of `old`: half the time one of the same type (an edge of its range), else one
/// of a random type and size, biased to the edges that parsers and limits trip on.
pub fn odd_value(old: &Value, rng: &mut StdRng) -> Value {
    if rng.random::<bool>() {
        match old {
            Value::Bool(b) => return json!(!b),
            Value::Number(_) => {
                let edges = [
                    json!(0),
                    json!(1),
                    json!(-1),
                    json!(2),
                    json!(0.5),
                    json!(100),
                    json!(-2.5),
                    json!(1e9),
                    json!(i64::MAX),
                    json!(-0.0),
                ];
                return edges[rng.random_range(0..edges.len())].clone();
            }
            Value::String(_) => {
                let edges = [
                    json!(""),
                    json!(" "),
                    json!("\u{0}\u{feff}é😀\u{202e}"),
                    json!("x".repeat(rng.random_range(1..3000))),
                    json!("auto"),
                    json!("tiny-llama"),
                    json!("{\"q\": 1}"),
                    json!("<think>"),
                    json!("none"),
                    json!("required"),
                ];
                return edges[rng.random_range(0..edges.len())].clone();
            }
            _ => {}
        }
    }
    match rng.random_range(0..20) {
        0 => Value::Null,
        1 => json!(rng.random::<bool>()),
        2 => json!(0),
        3 => json!(-1),
        4 => json!(i64::MIN),
        5 => json!(u64::MAX),
        6 => json!(1e300),
        7 => json!(-0.0),
        8 => json!(0.5),
        9 => json!(""),
        10 => json!("\u{0}\u{feff}é😀\u{202e}"),
        11 => json!("x".repeat(rng.random_range(1..3000))),
        12 => json!([]),
        13 => json!([[[]]]),
        14 => json!({}),
        15 => json!({"type": "function", "function": {}}),
        16 => json!([{"role": "user"}]),
        17 => json!("none"),
        18 => json!(rng.random_range(0..100_000)),
        _ => json!([1, "a", null, {"b": []}]),
    }
}

/// Every path to a value in `v`, as keys and indices.
fn paths(v: &Value, at: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    out.push(at.clone());
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                at.push(Step::Key(k.clone()));
                paths(child, at, out);
                at.pop();
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                at.push(Step::Index(i));
                paths(child, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

#[derive(Clone, Debug)]
enum Step {
    Key(String),
    Index(usize),
}

fn at_mut<'a>(v: &'a mut Value, path: &[Step]) -> &'a mut Value {
    path.iter().fold(v, |v, step| match step {
        Step::Key(k) => &mut v[k.as_str()],
        Step::Index(i) => &mut v[*i],
    })
}

/// One random edit of `body` (a quarter of the time two): replace a value, drop a key, or add
/// an unknown key.
pub fn mutate(body: &Value, rng: &mut StdRng) -> Value {
    let mut body = body.clone();
    let edits = if rng.random_range(0..4) == 0 { 2 } else { 1 };
    for _ in 0..edits {
        let mut all = Vec::new();
        paths(&body, &mut Vec::new(), &mut all);
        let path = &all[rng.random_range(0..all.len())];
        let target = at_mut(&mut body, path);
        match (rng.random_range(0..6), target) {
            (0, Value::Object(m)) if !m.is_empty() => {
                let key = m.keys().nth(rng.random_range(0..m.len())).unwrap().clone();
                m.remove(&key);
            }
            (1, Value::Object(m)) => {
                m.insert("unexpected_field".into(), odd_value(&Value::Null, rng));
            }
            (2, Value::Array(a)) if !a.is_empty() => {
                let twin = a[rng.random_range(0..a.len())].clone();
                a.push(odd_value(&twin, rng));
            }
            (_, target) => *target = odd_value(target, rng),
        }
    }
    body
}
