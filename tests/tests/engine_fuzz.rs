//! The engine as a library takes any parameters without panicking: requests with sampling values
//! at and past their edges (NaN, infinities, negatives, huge), odd stop strings and stop ids, any
//! token limits, thinking budgets and log-probability counts are refused at submission with an
//! error, or run to a finish, several at once on one worker, which keeps serving afterwards
//! (seeded; see `switchyard_tests::fuzz`).

use rand::rngs::StdRng;
use rand::Rng;
use switchyard_engine::{
    Engine, EngineConfig, Event, GenerationParams, GenerationRequest, Prompt, SamplingParams,
    Thinking,
};
use switchyard_models::load_generation_model;
use switchyard_tests::fixtures;
use switchyard_tests::fuzz::seeded_rng;

/// Requests per run, submitted in waves of [`WAVE`].
const ROUNDS: usize = 400;
const WAVE: usize = 8;

/// `usual` most of the time, else a value at or past an edge (so that most requests have one odd
/// field or none, and get past the checks of the others).
fn float(rng: &mut StdRng, usual: f32) -> f32 {
    if rng.random_range(0..6) > 0 {
        return usual;
    }
    let edges = [
        0.0,
        -0.0,
        1.0,
        0.5,
        -1.0,
        2.0,
        1e-30,
        1e30,
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MIN_POSITIVE,
    ];
    edges[rng.random_range(0..edges.len())]
}

fn count(rng: &mut StdRng) -> usize {
    [0, 1, 2, 5, 20, 21, 1000, usize::MAX][rng.random_range(0..8)]
}

fn usually(rng: &mut StdRng, usual: usize) -> usize {
    if rng.random_range(0..6) > 0 {
        usual
    } else {
        count(rng)
    }
}

fn params(rng: &mut StdRng) -> GenerationParams {
    let vocab_edge = [0u32, 1, 2, 7, 9, 100, 511, 512, u32::MAX];
    let mut p = GenerationParams {
        sampling: SamplingParams {
            temperature: float(rng, 0.7),
            top_p: float(rng, 0.9),
            top_k: usually(rng, 0),
            min_p: float(rng, 0.0),
            repetition_penalty: float(rng, 1.0),
            frequency_penalty: float(rng, 0.0),
            presence_penalty: float(rng, 0.0),
            seed: rng.random::<bool>().then(|| rng.random()),
            logit_bias: (0..rng.random_range(0..3))
                .map(|_| (vocab_edge[rng.random_range(0..9)], float(rng, 1.0)))
                .collect(),
        },
        max_tokens: rng
            .random::<bool>()
            .then(|| [0, 1, 6, 10_000, usize::MAX][rng.random_range(0..5)]),
        stop: (0..rng.random_range(0..3))
            .map(|_| {
                ["", "a", " ", "<", "</think>", "\u{0}", "é😀"][rng.random_range(0..7)].to_string()
            })
            .collect(),
        stop_token_ids: (0..rng.random_range(0..3))
            .map(|_| vocab_edge[rng.random_range(0..9)])
            .collect(),
        ignore_eos: rng.random(),
        thinking: match rng.random_range(0..3) {
            0 => Thinking::Off,
            1 => Thinking::On { budget: None },
            _ => Thinking::On {
                budget: Some(count(rng)),
            },
        },
        logprobs: (rng.random_range(0..4) == 0).then(|| count(rng)),
        prompt_logprobs: (rng.random_range(0..4) == 0).then(|| count(rng)),
        split_thinking: rng.random_range(0..6) > 0,
        ..Default::default()
    };
    // Keep the run short where the limit would otherwise be the context.
    if p.max_tokens.is_none_or(|m| m > 6) && rng.random_range(0..4) > 0 {
        p.max_tokens = Some(6);
    }
    p
}

fn prompt(rng: &mut StdRng) -> Prompt {
    match rng.random_range(0..8) {
        0 => Prompt::Text(String::new()),
        1 => Prompt::Tokens(vec![]),
        2..5 => Prompt::Text("Hello there, é😀 <think>".into()),
        _ => Prompt::Tokens(vec![5, 6, 7]),
    }
}

#[test]
fn requests_with_parameters_at_and_past_their_edges_are_refused_or_finish() {
    for name in ["tiny-llama", "tiny-qwen3"] {
        let model = load_generation_model(&fixtures().join("hf").join(name)).unwrap();
        let engine = Engine::start(model, EngineConfig::default()).unwrap();
        let (seed, mut rng) = seeded_rng(0xe9e1);
        let (mut finished, mut refused) = (0, 0);
        for wave in 0..ROUNDS / WAVE {
            let mut streams = Vec::new();
            for _ in 0..WAVE {
                let request = GenerationRequest {
                    prompt: prompt(&mut rng),
                    params: params(&mut rng),
                };
                let what = format!("{name}, seed {seed}, wave {wave}: {request:?}");
                match engine.submit(request) {
                    Ok(stream) => streams.push((what, stream)),
                    Err(e) => {
                        assert!(!e.to_string().is_empty(), "{what}");
                        refused += 1;
                    }
                }
            }
            for (what, stream) in streams {
                let events = stream.collect();
                assert!(
                    matches!(events.last(), Some(Event::Finished { .. })),
                    "{what}: {events:?}"
                );
                assert!(
                    !events.iter().any(|e| matches!(e, Event::Error(_))),
                    "{what}: {events:?}"
                );
                finished += 1;
            }
        }
        eprintln!("{name}, seed {seed}: {finished} finished, {refused} refused");
        assert!(finished > 0 && refused > 0, "{finished} / {refused}");
        // The worker still serves.
        let ok = engine
            .submit(GenerationRequest {
                prompt: Prompt::Tokens(vec![5, 6, 7]),
                params: GenerationParams {
                    max_tokens: Some(3),
                    ..Default::default()
                },
            })
            .unwrap()
            .collect();
        assert!(matches!(ok.last(), Some(Event::Finished { .. })), "{ok:?}");
    }
}
