//! Damaged model files are errors, never panics or aborts: the tiny SPM llama GGUF with bytes of
//! its header, metadata and tensor table overwritten, or cut short, either fails to load with an
//! error (a server pointed at a corrupt download must say so), or loads, and then renders its chat
//! template, tokenizes, computes logits and detokenizes with answers or errors.
//!
//! The damage is drawn from a fixed seed, so a failure names a file that reproduces it;
//! `SWITCHYARD_FUZZ_SEED=<n>` draws another set (to hunt, not in CI).

use rand::rngs::StdRng;
use rand::Rng;
use switchyard_models::decoder::{BlockTable, KvCache, KvDtype, LogitRows, SequenceInput};
use switchyard_models::loader::load_generation_model;
use switchyard_models::text::ChatMessage;
use switchyard_models::GenerationModel;
use switchyard_tests::fixtures;
use switchyard_tests::fuzz::{outcome, seeded_rng};

/// Damaged copies loaded per run.
const ROUNDS: usize = 300;

/// How a copy is damaged (its fields are read through `Debug`, in the failure message).
#[derive(Debug)]
#[allow(dead_code)]
enum Damage {
    /// Bytes at these offsets set to these values.
    Bytes(Vec<(usize, u8)>),
    /// An 8-byte little-endian value at an offset (a length or count made huge or odd).
    Word(usize, u64),
    /// The file cut to this length.
    Cut(usize),
}

fn damage(original: &[u8], header_end: usize, rng: &mut StdRng) -> (Damage, Vec<u8>) {
    let mut bytes = original.to_vec();
    let d = match rng.random_range(0..3) {
        0 => {
            let edits = (0..rng.random_range(1..4))
                .map(|_| (rng.random_range(0..header_end), rng.random::<u8>()))
                .collect::<Vec<_>>();
            for &(at, v) in &edits {
                bytes[at] = v;
            }
            Damage::Bytes(edits)
        }
        1 => {
            let at = rng.random_range(0..header_end - 8);
            let words = [u64::MAX, 1 << 40, 1 << 62, 0, 7, u32::MAX as u64 + 1];
            let w = words[rng.random_range(0..words.len())];
            bytes[at..at + 8].copy_from_slice(&w.to_le_bytes());
            Damage::Word(at, w)
        }
        _ => {
            let len = rng.random_range(0..original.len());
            bytes.truncate(len);
            Damage::Cut(len)
        }
    };
    (d, bytes)
}

/// What a server does with a model first: render a chat, tokenize it, compute the next token's
/// logits and detokenize. Any step may fail; none may panic.
fn use_model(model: &GenerationModel) -> Result<(), String> {
    let messages = [ChatMessage::new("user", "Hello there")];
    let text = match &model.chat_template {
        Some(t) => t.render(&messages, true, None).map_err(|e| e.to_string())?,
        None => "Hello there".to_string(),
    };
    let tokens = model
        .tokenizer
        .encode_prompt(&text)
        .map_err(|e| e.to_string())?;
    if tokens.is_empty() {
        return Ok(());
    }
    let mut cache = KvCache::with_dtype(
        model.decoder.config(),
        16,
        tokens.len().div_ceil(16),
        &candle_core::Device::Cpu,
        KvDtype::F32,
    )
    .map_err(|e| e.to_string())?;
    let mut table = BlockTable::default();
    if !cache.reserve(&mut table, tokens.len()) {
        return Err("no cache room".into());
    }
    let logits = model
        .decoder
        .forward_all(
            &[SequenceInput {
                tokens: &tokens,
                start_position: 0,
                blocks: &table,
                logits: LogitRows::Last,
            }],
            &mut cache,
        )
        .map_err(|e| e.to_string())?;
    let best = logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i as u32);
    model
        .tokenizer
        .decode(&[best])
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Loads the model at `path` and uses it: see [`outcome`].
fn load_and_use(path: &std::path::Path) -> Option<bool> {
    outcome(|| {
        load_generation_model(path)
            .map_err(|e| e.to_string())
            .and_then(|model| use_model(&model))
    })
}

#[test]
fn damaged_gguf_files_are_errors_not_panics() {
    let path = fixtures().join("spm-llama/model.gguf");
    let original = std::fs::read(&path).unwrap();
    // Damage goes where the parser reads lengths and counts: the header, the metadata and the
    // tensor table (the first part of the file; the rest is tensor data).
    let header_end = original.len().min(64 * 1024);
    let (seed, mut rng) = seeded_rng(0x6775);
    let dir = tempfile::tempdir().unwrap();
    let (mut loaded, mut refused) = (0, 0);
    for round in 0..ROUNDS {
        let (how, bytes) = damage(&original, header_end, &mut rng);
        let file = dir.path().join("damaged.gguf");
        std::fs::write(&file, &bytes).unwrap();
        match load_and_use(&file) {
            Some(true) => loaded += 1,
            Some(false) => refused += 1,
            None => panic!("seed {seed}, round {round}: {how:?} panicked"),
        }
    }
    eprintln!("seed {seed}: {loaded} loaded and used, {refused} refused");
    assert!(refused >= ROUNDS / 4, "{loaded} loaded, {refused} refused");
}

/// A number in place of a config value: the edges shape arithmetic trips on.
fn odd_number(rng: &mut StdRng) -> serde_json::Value {
    let edges = [
        serde_json::json!(0),
        serde_json::json!(1),
        serde_json::json!(3),
        serde_json::json!(-1),
        serde_json::json!(1_000_000_000u64),
        serde_json::json!(u64::MAX),
        serde_json::json!(0.0),
        serde_json::json!(-1e30),
        serde_json::json!(1e300),
        serde_json::Value::Null,
        serde_json::json!("16"),
        serde_json::json!({"rope_type": "llama3", "factor": 0}),
    ];
    edges[rng.random_range(0..edges.len())].clone()
}

#[test]
fn checkpoints_with_damaged_configs_are_errors_not_panics() {
    let (seed, mut rng) = seeded_rng(0x6366);
    let (mut loaded, mut refused) = (0, 0);
    for source in ["tiny-llama", "tiny-qwen3"] {
        let from = fixtures().join("hf").join(source);
        let dir = tempfile::tempdir().unwrap();
        for file in [
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            "generation_config.json",
        ] {
            std::fs::copy(from.join(file), dir.path().join(file)).unwrap();
        }
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(from.join("config.json")).unwrap()).unwrap();
        let keys: Vec<String> = config.as_object().unwrap().keys().cloned().collect();
        for round in 0..ROUNDS / 2 {
            let mut damaged = config.clone();
            let edits: Vec<(String, serde_json::Value)> = (0..rng.random_range(1..3))
                .map(|_| {
                    (
                        keys[rng.random_range(0..keys.len())].clone(),
                        odd_number(&mut rng),
                    )
                })
                .collect();
            for (key, value) in &edits {
                damaged[key.as_str()] = value.clone();
            }
            std::fs::write(dir.path().join("config.json"), damaged.to_string()).unwrap();
            match load_and_use(dir.path()) {
                Some(true) => loaded += 1,
                Some(false) => refused += 1,
                None => panic!("seed {seed}, {source} round {round}: {edits:?} panicked"),
            }
        }
    }
    eprintln!("seed {seed}: {loaded} loaded and used, {refused} refused");
    assert!(refused >= ROUNDS / 4, "{loaded} loaded, {refused} refused");
}

#[test]
fn checkpoints_with_damaged_tokenizer_files_are_errors_not_panics() {
    use switchyard_tests::fuzz::mutate;
    let (seed, mut rng) = seeded_rng(0x7031);
    // The side files a checkpoint's text handling is read from; the weights stay intact.
    let editable = [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ];
    let (mut loaded, mut refused) = (0, 0);
    for source in ["tiny-llama", "tiny-qwen3"] {
        let from = fixtures().join("hf").join(source);
        let dir = tempfile::tempdir().unwrap();
        for file in ["model.safetensors", "config.json"] {
            std::fs::copy(from.join(file), dir.path().join(file)).unwrap();
        }
        for round in 0..ROUNDS / 4 {
            let damaged = editable[rng.random_range(0..editable.len())];
            for file in editable {
                let text = std::fs::read(from.join(file)).unwrap();
                let text = if file == damaged {
                    let json: serde_json::Value = serde_json::from_slice(&text).unwrap();
                    mutate(&json, &mut rng).to_string().into_bytes()
                } else {
                    text
                };
                std::fs::write(dir.path().join(file), text).unwrap();
            }
            match load_and_use(dir.path()) {
                Some(true) => loaded += 1,
                Some(false) => refused += 1,
                None => panic!("seed {seed}, {source} round {round}: {damaged} panicked"),
            }
        }
    }
    eprintln!("seed {seed}: {loaded} loaded and used, {refused} refused");
    assert!(
        loaded > 0 && refused > 0,
        "{loaded} loaded, {refused} refused"
    );
}
