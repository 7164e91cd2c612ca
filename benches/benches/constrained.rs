//! Constrained decoding's cost per answer token, on SmolLM2-135M's vocabulary (49,152 tokens).
//!
//! - `constrained/<format>`: compiling the constraint, then masking the logits before each token
//!   of a fixed JSON answer and recording the token, for JSON mode (`json_object`, the schema
//!   `{"type": "object"}`) and a three-property schema (`schema_person`). Throughput is answer
//!   tokens per second.
//! - `schema_setup/{vocabulary,compile_person}`: indexing the vocabulary for schemas (once per
//!   engine) and compiling one schema (once per request).
//!
//! Needs the default model (`cargo run --release -- fetch-model`, or `SWITCHYARD_TEST_GGUF`).
//! Run: `cargo bench -p switchyard-benches --bench constrained`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;
use switchyard_engine::grammar::GrammarCompiler;
use switchyard_engine::token_bytes::TokenBytes;
use switchyard_models::text::TextTokenizer;
use switchyard_models::weights::GgufFile;

const ANSWER: &str =
    "{\n  \"name\": \"Elena Rodriguez\",\n  \"age\": 25,\n  \"city\": \"San Diego\"\n}";

fn tokenizer() -> Option<TextTokenizer> {
    let path = std::env::var_os("SWITCHYARD_TEST_GGUF")
        .map(PathBuf::from)
        .or_else(|| {
            // The binary's model cache, as `switchyard fetch-model` fills it.
            let cache = switchyard_router::embedding::cache_dir();
            Some(cache.join("models/SmolLM2-135M-Instruct.Q4_1.gguf"))
        })
        .filter(|p| p.exists());
    let Some(path) = path else {
        eprintln!("skipping: SmolLM2 GGUF not found (run `cargo run --release -- fetch-model`)");
        return None;
    };
    Some(TextTokenizer::from_gguf(&GgufFile::open(&path).expect("GGUF opens")).expect("tokenizer"))
}

fn person() -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer", "minimum": 0},
            "city": {"type": "string"}
        },
        "required": ["name", "age", "city"],
        "additionalProperties": false
    })
}

fn bench(c: &mut Criterion) {
    let Some(tokenizer) = tokenizer() else {
        return;
    };
    let answer = tokenizer.encode(ANSWER).expect("encodes");
    let end = tokenizer.eos().to_vec();
    let vocab = tokenizer.vocab_size();
    let bytes = TokenBytes::new(&tokenizer).expect("token bytes");
    let schemas = GrammarCompiler::new(&tokenizer, Ok(&bytes)).expect("vocabulary indexes");

    let mut group = c.benchmark_group("constrained");
    group.throughput(Throughput::Elements(answer.len() as u64));
    group.measurement_time(Duration::from_secs(5));
    let mut logits = vec![0f32; vocab];
    for (name, schema) in [
        ("json_object", serde_json::json!({"type": "object"})),
        ("schema_person", person()),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut constraint = schemas.compile(&schema).expect("compiles");
                for &t in &answer {
                    logits.fill(0.0);
                    assert!(constraint.mask(&mut logits, &end).expect("masks"));
                    assert!(logits[t as usize].is_finite());
                    constraint.push(t).expect("accepted");
                }
                black_box(constraint)
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("schema_setup");
    group.sample_size(10);
    group.bench_function("vocabulary", |b| {
        b.iter(|| {
            let bytes = TokenBytes::new(&tokenizer).expect("token bytes");
            black_box(GrammarCompiler::new(&tokenizer, Ok(&bytes)).expect("indexes"))
        })
    });
    let schema = person();
    group.bench_function("compile_person", |b| {
        b.iter(|| black_box(schemas.compile(&schema).expect("compiles")))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
