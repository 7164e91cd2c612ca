//! Helpers for Switchyard's end-to-end and reference-parity tests (the tests live in `tests/`).
//!
//! Fixtures (tiny checkpoints and reference outputs made by committed scripts) are under
//! `tests/fixtures/`; see its README.

pub mod fuzz;

use std::path::{Path, PathBuf};

/// The fixtures directory.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// A JSON fixture file.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// A tensor from a safetensors fixture as `(shape, f32 values)`; f16/bf16/f32 are accepted.
pub fn read_tensor(path: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
    let t = st
        .tensor(name)
        .unwrap_or_else(|e| panic!("{}: tensor {name}: {e}", path.display()));
    let data = t.data();
    let values = match t.dtype() {
        safetensors::Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        safetensors::Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        safetensors::Dtype::BF16 => data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        safetensors::Dtype::I64 => data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect(),
        other => panic!("{name}: unsupported fixture dtype {other:?}"),
    };
    (t.shape().to_vec(), values)
}

/// Ids from a JSON array.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("an array of ids")
        .iter()
        .map(|x| x.as_u64().expect("an id") as u32)
        .collect()
}

/// Largest absolute difference between two slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The binary's model cache (`$SWITCHYARD_CACHE`, else `$XDG_CACHE_HOME/switchyard`, else
/// `~/.cache/switchyard`: where `switchyard fetch-model` puts the models), `models/` in it.
fn model_cache() -> PathBuf {
    switchyard_router::embedding::cache_dir().join("models")
}

/// The real SmolLM2-135M-Instruct Q4_1 GGUF, if it is available: `$SWITCHYARD_TEST_GGUF`, else the
/// binary's model cache. When `$SWITCHYARD_REQUIRE_MODEL` is set (CI), a missing file is a failure.
pub fn smollm2_gguf() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("SWITCHYARD_TEST_GGUF").map(PathBuf::from),
        Some(model_cache().join("SmolLM2-135M-Instruct.Q4_1.gguf")),
    ];
    let found = candidates.into_iter().flatten().find(|p| p.exists());
    if found.is_none() {
        if std::env::var_os("SWITCHYARD_REQUIRE_MODEL").is_some() {
            panic!("SWITCHYARD_REQUIRE_MODEL is set but the SmolLM2 GGUF was not found; run `cargo run --release -- fetch-model`");
        }
        eprintln!("skipping: SmolLM2 GGUF not found (run `cargo run --release -- fetch-model` or set SWITCHYARD_TEST_GGUF)");
    }
    found
}

/// The all-MiniLM-L6-v2 encoder directory of the router's embedding signal in the binary's model
/// cache, if it is there. When `$SWITCHYARD_REQUIRE_MODEL` is set (CI), a missing encoder is a
/// failure.
pub fn minilm_dir() -> Option<PathBuf> {
    let dir = model_cache().join("all-MiniLM-L6-v2");
    let found = dir.join("model.safetensors").exists().then_some(dir);
    if found.is_none() {
        if std::env::var_os("SWITCHYARD_REQUIRE_MODEL").is_some() {
            panic!("SWITCHYARD_REQUIRE_MODEL is set but the all-MiniLM-L6-v2 encoder was not found; run `cargo run --release -- fetch-model`");
        }
        eprintln!("skipping: the all-MiniLM-L6-v2 encoder was not found (run `cargo run --release -- fetch-model`)");
    }
    found
}

/// Logits at every position of `tokens`, in one prefill pass, over a KV cache of `dtype` (to
/// compare with llama.cpp, use the cache type its reference was made with).
pub fn teacher_forced(
    model: &switchyard_models::GenerationModel,
    tokens: &[u32],
    dtype: switchyard_models::decoder::KvDtype,
) -> Vec<f32> {
    let mut cache = switchyard_models::decoder::KvCache::with_dtype(
        model.decoder.config(),
        16,
        tokens.len().div_ceil(16),
        &candle_core::Device::Cpu,
        dtype,
    )
    .unwrap();
    let mut table = switchyard_models::decoder::BlockTable::default();
    assert!(cache.reserve(&mut table, tokens.len()));
    model
        .decoder
        .forward_all(
            &[switchyard_models::decoder::SequenceInput {
                tokens,
                start_position: 0,
                blocks: &table,
                logits: switchyard_models::decoder::LogitRows::Last,
            }],
            &mut cache,
        )
        .unwrap()
}
