//! The engine end to end on tiny fixture models: greedy parity with `transformers`, batch
//! invariance under continuous batching, seeds, stop strings, cancellation, thinking budgets,
//! limits, preemption and prefix caching.

use std::time::{Duration, Instant};
use switchyard_engine::{
    DeltaKind, Engine, EngineConfig, EngineError, Event, FinishReason, GenerationParams,
    GenerationRequest, GenerationStream, Prompt, ResponseFormat, SamplingParams, Thinking,
    ThinkingStyle, TokenLogprob, Usage, MAX_STOP_STRINGS, MAX_STOP_TOKEN_IDS,
};
use switchyard_models::load_generation_model;
use switchyard_models::text::ChatMessage;
use switchyard_tests::{fixtures, ids, read_json, read_tensor};

fn engine(name: &str, config: EngineConfig) -> Engine {
    let model = load_generation_model(&fixtures().join("hf").join(name)).unwrap();
    Engine::start(model, config).unwrap()
}

/// tiny-llama with `config` and a KV cache of room for `positions` f32 positions.
fn engine_with_cache(positions: usize, config: EngineConfig) -> Engine {
    let model = load_generation_model(&fixtures().join("hf/tiny-llama")).unwrap();
    let per_position = switchyard_models::decoder::KvCache::bytes_per_position(
        model.decoder.config(),
        switchyard_models::decoder::KvDtype::F32,
    );
    let config = EngineConfig {
        kv_cache_bytes: Some(per_position * positions),
        ..config
    };
    Engine::start(model, config).unwrap()
}

fn prompts(name: &str) -> Vec<(Vec<u32>, Vec<u32>)> {
    let reference = read_json(&fixtures().join("hf").join(name).join("reference.json"));
    reference["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (ids(&p["ids"]), ids(&p["greedy"])))
        .collect()
}

fn greedy(tokens: Vec<u32>, max_tokens: usize) -> GenerationRequest {
    GenerationRequest {
        prompt: Prompt::Tokens(tokens),
        params: GenerationParams {
            max_tokens: Some(max_tokens),
            ignore_eos: true,
            ..Default::default()
        },
    }
}

/// Everything a finished stream produced.
#[derive(Debug, Default)]
struct Outcome {
    reasoning: String,
    content: String,
    reason: Option<FinishReason>,
    usage: Usage,
    ids: Vec<u32>,
    logprobs: Vec<TokenLogprob>,
    prompt_logprobs: Vec<TokenLogprob>,
}

fn drain(stream: GenerationStream) -> Outcome {
    let mut out = Outcome::default();
    for event in stream.collect() {
        match event {
            Event::Delta {
                kind: DeltaKind::Reasoning,
                text,
            } => out.reasoning.push_str(&text),
            Event::Delta { text, .. } => out.content.push_str(&text),
            Event::Finished {
                reason,
                usage,
                output_ids,
            } => {
                out.reason = Some(reason);
                out.usage = usage;
                out.ids = output_ids;
            }
            Event::Logprob(lp) => out.logprobs.push(lp),
            Event::PromptLogprob(lp) => {
                assert!(
                    out.logprobs.is_empty() && out.content.is_empty() && out.reasoning.is_empty(),
                    "a prompt log-probability after generated output"
                );
                out.prompt_logprobs.push(lp)
            }
            Event::Error(e) => panic!("engine error: {e}"),
        }
    }
    assert!(out.reason.is_some(), "stream ended without Finished");
    out
}

/// Blocks the engine's worker until something is sent on the returned channel.
fn hold_worker(engine: &Engine) -> std::sync::mpsc::Sender<()> {
    use switchyard_models::executor::DeviceExecutor;
    let (release, hold) = std::sync::mpsc::channel::<()>();
    engine
        .executor()
        .execute(Box::new(move || {
            let _ = hold.recv();
        }))
        .unwrap_or_else(|_| panic!("engine stopped"));
    release
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn greedy_generation_matches_transformers() {
    for name in ["tiny-llama", "tiny-qwen2", "tiny-qwen3"] {
        let engine = engine(name, EngineConfig::default());
        for (prompt, want) in prompts(name) {
            let out = drain(engine.submit(greedy(prompt, want.len())).unwrap());
            assert_eq!(out.ids, want, "{name}");
            assert_eq!(out.reason, Some(FinishReason::Length));
            assert_eq!(out.usage.completion_tokens, want.len());
        }
    }
}

#[test]
fn batched_decoding_is_token_identical_to_decoding_alone() {
    // A small token budget forces chunked prefill of the longer prompts alongside decode steps.
    let config = EngineConfig {
        max_batch_tokens: 16,
        // The second round must compute its prompts, not find them cached.
        prefix_caching: false,
        ..Default::default()
    };
    let engine = engine("tiny-llama", config);
    let cases = prompts("tiny-llama");
    assert!(cases.len() >= 6);
    let alone: Vec<Vec<u32>> = cases
        .iter()
        .map(|(p, w)| drain(engine.submit(greedy(p.clone(), w.len())).unwrap()).ids)
        .collect();
    let streams: Vec<GenerationStream> = cases
        .iter()
        .map(|(p, w)| engine.submit(greedy(p.clone(), w.len())).unwrap())
        .collect();
    let together: Vec<Vec<u32>> = streams.into_iter().map(|s| drain(s).ids).collect();
    assert_eq!(together, alone);
    for ((_, want), got) in cases.iter().zip(&together) {
        assert_eq!(got, want);
    }
    let stats = engine.stats().snapshot();
    assert!(
        stats.step_tokens > stats.steps,
        "some steps batched several tokens: {stats:?}"
    );
}

#[test]
fn the_statistics_count_an_answers_tokens_before_the_answer_ends() {
    // A client that reads the statistics right after its closing event sees its own tokens; the
    // worker once counted them after sending that event, and a test through the server raced it.
    let engine = engine("tiny-llama", EngineConfig::default());
    let (prompt, _) = prompts("tiny-llama").remove(0);
    let mut counted = 0;
    for max_tokens in (1..=4).cycle().take(40) {
        let stream = engine.submit(greedy(prompt.clone(), max_tokens)).unwrap();
        let usage = loop {
            match stream.recv().expect("a closing event") {
                Event::Finished { usage, .. } => break usage,
                Event::Error(e) => panic!("{e}"),
                _ => {}
            }
        };
        counted += usage.completion_tokens as u64;
        assert_eq!(engine.stats().snapshot().generated_tokens, counted);
    }
}

#[test]
fn a_seed_reproduces_sampled_output_whatever_runs_beside_it() {
    let engine = engine("tiny-qwen2", EngineConfig::default());
    let (prompt, _) = prompts("tiny-qwen2").remove(2);
    let sampled = |seed| GenerationRequest {
        prompt: Prompt::Tokens(prompt.clone()),
        params: GenerationParams {
            sampling: SamplingParams {
                temperature: 1.0,
                top_p: 0.95,
                seed: Some(seed),
                ..Default::default()
            },
            max_tokens: Some(24),
            ignore_eos: true,
            ..Default::default()
        },
    };
    let first = drain(engine.submit(sampled(7)).unwrap()).ids;
    let neighbour = engine.submit(greedy(prompt.clone(), 24)).unwrap();
    let again = drain(engine.submit(sampled(7)).unwrap()).ids;
    drain(neighbour);
    let other = drain(engine.submit(sampled(8)).unwrap()).ids;
    assert_eq!(first, again);
    assert_ne!(first, other);
}

#[test]
fn stop_strings_end_generation_across_token_boundaries() {
    let engine = engine("tiny-llama", EngineConfig::default());
    let (prompt, _) = prompts("tiny-llama").remove(1);
    let full = drain(engine.submit(greedy(prompt.clone(), 24)).unwrap());
    let tokenizer = engine.tokenizer();
    // A stop string made of the end of one token's text and the start of the next.
    let t1 = tokenizer.decode(&full.ids[..5]).unwrap();
    let t2 = tokenizer.decode(&full.ids[..6]).unwrap();
    assert!(
        t2.len() > t1.len() + 1 && t1.len() >= 2,
        "tokens long enough: {t1:?} / {t2:?}"
    );
    let stop: String = full.content[t1.len() - 1..t1.len() + 1].to_string();
    let cut = full.content.find(&stop).unwrap();
    let mut request = greedy(prompt, 24);
    request.params.stop = vec![stop.clone()];
    let stopped = drain(engine.submit(request).unwrap());
    assert_eq!(stopped.reason, Some(FinishReason::Stop));
    assert_eq!(stopped.content, full.content[..cut], "stop {stop:?}");
    assert!(!stopped.content.contains(&stop));
}

#[test]
fn a_stop_string_in_text_held_back_at_the_last_token_still_stops() {
    // `<` could start a thinking marker, so the answer's splitter holds it back; the token limit
    // then flushes it into the stop string.
    let engine = engine("tiny-llama", EngineConfig::default());
    let lt = engine.tokenizer().encode("<").unwrap();
    assert_eq!(lt.len(), 1, "{lt:?}");
    let (prompt, _) = prompts("tiny-llama").remove(1);
    let mut request = greedy(prompt, 1);
    request.params.sampling.logit_bias = vec![(lt[0], 100.0)];
    request.params.stop = vec!["<".into()];
    let out = drain(engine.submit(request).unwrap());
    assert_eq!(out.ids, lt);
    assert_eq!(out.content, "");
    assert_eq!(out.reason, Some(FinishReason::Stop));
}

#[test]
fn dropping_the_stream_cancels_and_frees_the_cache() {
    let engine = engine("tiny-llama", EngineConfig::default());
    let (prompt, _) = prompts("tiny-llama").remove(3);
    let stream = engine.submit(greedy(prompt, 400)).unwrap();
    assert!(matches!(stream.recv(), Some(Event::Delta { .. })));
    drop(stream);
    let stats = engine.stats();
    wait_until("the cancelled sequence to leave", || {
        let s = stats.snapshot();
        s.cancelled == 1 && s.running == 0 && s.kv_blocks_used == 0
    });
    assert!(stats.snapshot().generated_tokens < 400);
}

#[test]
fn thinking_budget_forces_the_end_marker_and_the_answer_follows() {
    for name in ["tiny-qwen3", "tiny-llama"] {
        let engine = engine(name, EngineConfig::default());
        let budget = 5;
        let request = GenerationRequest {
            // A prompt that has opened the thinking section, as thinking templates do.
            prompt: Prompt::Text(
                "<|im_start|>user\nwhy<|im_end|>\n<|im_start|>assistant\n<think>\n".into(),
            ),
            params: GenerationParams {
                max_tokens: Some(20),
                ignore_eos: true,
                thinking: Thinking::On {
                    budget: Some(budget),
                },
                ..Default::default()
            },
        };
        let out = drain(engine.submit(request).unwrap());
        let marker = engine.tokenizer().encode("\n</think>\n\n").unwrap();
        assert_eq!(out.usage.reasoning_tokens, budget, "{name}");
        assert_eq!(
            &out.ids[budget..budget + marker.len()],
            marker.as_slice(),
            "{name}"
        );
        assert_eq!(out.usage.completion_tokens, 20);
        assert!(
            !out.reasoning.is_empty() && !out.content.is_empty(),
            "{name}: {out:?}"
        );
        assert!(!out.content.contains("</think>") && !out.reasoning.contains("</think>"));
        // `max_tokens` counts the marker: one that would not fit ends the sequence at the budget,
        // never past `max_tokens` nor inside the marker.
        for max_tokens in [budget, budget + marker.len() - 1, budget + marker.len()] {
            let request = GenerationRequest {
                prompt: Prompt::Text(
                    "<|im_start|>user\nwhy<|im_end|>\n<|im_start|>assistant\n<think>\n".into(),
                ),
                params: GenerationParams {
                    max_tokens: Some(max_tokens),
                    ignore_eos: true,
                    thinking: Thinking::On {
                        budget: Some(budget),
                    },
                    ..Default::default()
                },
            };
            let out = drain(engine.submit(request).unwrap());
            assert_eq!(
                out.reason,
                Some(FinishReason::Length),
                "{name} {max_tokens}"
            );
            let fits = max_tokens >= budget + marker.len();
            let want = if fits { budget + marker.len() } else { budget };
            assert_eq!(out.usage.completion_tokens, want, "{name} {max_tokens}");
            assert!(
                !out.reasoning.contains("</"),
                "{name} {max_tokens}: {out:?}"
            );
        }
    }
}

#[test]
fn thinking_mode_is_rendered_the_way_each_family_wants() {
    let user = [ChatMessage::new("user", "What is 2+2?")];
    let qwen3 = engine("tiny-qwen3", EngineConfig::default());
    assert_eq!(qwen3.thinking_style(), ThinkingStyle::TemplateFlag);
    let model = load_generation_model(&fixtures().join("hf/tiny-qwen3")).unwrap();
    let template = model.chat_template.unwrap();
    let on = qwen3
        .render_chat(&user, Thinking::On { budget: None })
        .unwrap();
    assert_eq!(on, template.render(&user, true, Some(true)).unwrap());
    let off = qwen3.render_chat(&user, Thinking::Off).unwrap();
    assert_eq!(off, template.render(&user, true, Some(false)).unwrap());
    assert!(off.ends_with("<think>\n\n</think>\n\n"));

    let llama = engine("tiny-llama", EngineConfig::default());
    assert_eq!(llama.thinking_style(), ThinkingStyle::Prompted);
    let on = llama
        .render_chat(&user, Thinking::On { budget: None })
        .unwrap();
    assert!(on.contains(switchyard_engine::thinking::REASONING_INSTRUCTION));
    assert!(on.ends_with("<|im_start|>assistant\n<think>\n"));
    let off = llama.render_chat(&user, Thinking::Off).unwrap();
    assert!(!off.contains("<think>"));

    // A template that opens the block itself (DeepSeek-R1 distills): no second `<think>` and no
    // instruction when thinking; closed at once when not.
    let mut model = load_generation_model(&fixtures().join("hf/tiny-llama")).unwrap();
    model.chat_template = Some(
        switchyard_models::text::ChatTemplate::new(
            "{% if custom_flag %}[flag]{% endif %}\
             {% for m in messages %}<|User|>{{ m.content }}{% endfor %}\
             {% if add_generation_prompt %}<|Assistant|><think>\n{% endif %}",
            "",
            "",
        )
        .unwrap(),
    );
    let r1 = Engine::start(model, EngineConfig::default()).unwrap();
    assert_eq!(r1.thinking_style(), ThinkingStyle::TemplateOpens);
    let on = r1
        .render_chat(&user, Thinking::On { budget: None })
        .unwrap();
    assert_eq!(on, "<|User|>What is 2+2?<|Assistant|><think>\n");
    let off = r1.render_chat(&user, Thinking::Off).unwrap();
    assert_eq!(
        off,
        "<|User|>What is 2+2?<|Assistant|><think>\n\n</think>\n\n"
    );
    // A request's extra template variables reach the template its prompt is rendered with.
    let params = GenerationParams {
        template_vars: [("custom_flag".to_string(), serde_json::json!(true))]
            .into_iter()
            .collect(),
        ..Default::default()
    };
    let (ids, _) = r1
        .prompt_tokens(&Prompt::Chat(user.to_vec()), &params)
        .unwrap();
    let text = r1.tokenizer().decode(&ids).unwrap();
    assert!(text.starts_with("[flag]<|User|>"), "{text}");
}

#[test]
fn a_prompt_rendered_once_is_queued_as_submit_queues_it() {
    // What `n` choices share: the template rendered once, each choice queued from it.
    let llama = engine("tiny-llama", EngineConfig::default());
    let request = GenerationRequest {
        prompt: Prompt::Chat(vec![ChatMessage::new("user", "What is 2+2?")]),
        params: GenerationParams {
            max_tokens: Some(10),
            ignore_eos: true,
            thinking: Thinking::On { budget: Some(3) },
            ..Default::default()
        },
    };
    let rendered = llama
        .prompt_tokens(&request.prompt, &request.params)
        .unwrap();
    // The prompted convention leaves the turn inside the thinking section.
    assert_eq!(rendered.1, switchyard_engine::thinking::Section::Thinking);
    let direct = drain(llama.submit(request.clone()).unwrap());
    let queued = drain(
        llama
            .submit_rendered(rendered.clone(), request.params.clone())
            .unwrap(),
    );
    assert_eq!(queued.ids, direct.ids);
    assert_eq!(queued.reasoning, direct.reasoning);
    assert_eq!(queued.content, direct.content);
    assert!(!direct.reasoning.is_empty() && !direct.content.is_empty());
    assert_eq!(queued.usage.prompt_tokens, rendered.0.len());
    assert_eq!(queued.usage.reasoning_tokens, direct.usage.reasoning_tokens);

    // It checks what submit checks: the parameters, and the tokens against the vocabulary.
    let mut bad = request.params.clone();
    bad.sampling.temperature = -1.0;
    assert!(matches!(
        llama.submit_rendered(rendered.clone(), bad),
        Err(EngineError::InvalidParameter { .. })
    ));
    let outside = (vec![1, u32::MAX], rendered.1);
    assert!(matches!(
        llama.submit_rendered(outside, request.params),
        Err(EngineError::InvalidParameter {
            param: "prompt",
            ..
        })
    ));
}

#[test]
fn limits_are_enforced_with_clear_errors() {
    let engine = engine(
        "tiny-llama",
        EngineConfig {
            max_model_len: Some(32),
            max_num_seqs: 1,
            max_waiting: 1,
            ..Default::default()
        },
    );
    let long = vec![5u32; 40];
    match engine.submit(greedy(long, 4)) {
        Err(EngineError::PromptTooLong {
            prompt_tokens: 40,
            limit: 31,
            ..
        }) => {}
        other => panic!("expected PromptTooLong, got {:?}", other.err()),
    }
    assert!(matches!(
        engine.submit(greedy(vec![], 4)),
        Err(EngineError::EmptyPrompt)
    ));
    assert!(matches!(
        engine.submit(greedy(vec![100_000], 4)),
        Err(EngineError::InvalidParameter {
            param: "prompt",
            ..
        })
    ));
    let mut bad = greedy(vec![5, 6], 4);
    bad.params.sampling.temperature = -1.0;
    assert!(matches!(
        engine.submit(bad),
        Err(EngineError::InvalidParameter {
            param: "temperature",
            ..
        })
    ));
    // Stop conditions are checked on the device thread for every token: their number is bounded,
    // repeats are dropped, and an id the model cannot produce is refused.
    let refused = |f: &dyn Fn(&mut GenerationRequest), param: &str| {
        let mut r = greedy(vec![5, 6], 4);
        f(&mut r);
        match engine.submit(r) {
            Err(EngineError::InvalidParameter { param: p, message }) => {
                assert_eq!(p, param, "{message}")
            }
            other => panic!("{param}: expected a refusal, got {:?}", other.err()),
        }
    };
    refused(
        &|r| r.params.stop = (0..=MAX_STOP_STRINGS).map(|i| format!("s{i}")).collect(),
        "stop",
    );
    refused(
        &|r| r.params.stop_token_ids = (0..=MAX_STOP_TOKEN_IDS as u32).collect(),
        "stop_token_ids",
    );
    refused(
        &|r| r.params.stop_token_ids = vec![3, 100_000],
        "stop_token_ids",
    );
    let mut repeated = greedy(vec![5, 6], 2);
    repeated.params.stop_token_ids = vec![3; 100_000];
    assert!(drain(engine.submit(repeated).unwrap()).reason.is_some());
    // max_tokens is capped by the context: a 30-token prompt in a 32-token context gets 2.
    let out = drain(engine.submit(greedy(vec![5; 30], 100)).unwrap());
    assert_eq!(out.reason, Some(FinishReason::Length));
    assert_eq!(out.usage.completion_tokens, 2);
}

#[test]
fn a_context_with_no_room_for_a_prompt_and_an_answer_is_refused_at_start() {
    for len in [0, 1] {
        let model = load_generation_model(&fixtures().join("hf/tiny-llama")).unwrap();
        let config = EngineConfig {
            max_model_len: Some(len),
            ..Default::default()
        };
        assert!(
            matches!(
                Engine::start(model, config),
                Err(EngineError::InvalidParameter {
                    param: "max_model_len",
                    ..
                })
            ),
            "max_model_len {len}"
        );
    }
}

#[test]
fn a_token_the_tokenizer_knows_but_the_model_does_not_is_refused_alone() {
    // tiny-llama with one added token past its 512 embedding rows.
    let dir = tempfile::tempdir().unwrap();
    let from = fixtures().join("hf/tiny-llama");
    for file in std::fs::read_dir(&from).unwrap() {
        let file = file.unwrap().path();
        std::fs::copy(&file, dir.path().join(file.file_name().unwrap())).unwrap();
    }
    let mut tokenizer = read_json(&from.join("tokenizer.json"));
    tokenizer["added_tokens"].as_array_mut().unwrap().push(
        serde_json::json!({"id": 512, "content": "<|extra|>", "single_word": false,
            "lstrip": false, "rstrip": false, "normalized": false, "special": true}),
    );
    std::fs::write(dir.path().join("tokenizer.json"), tokenizer.to_string()).unwrap();
    let model = load_generation_model(dir.path()).unwrap();
    assert_eq!(model.tokenizer.vocab_size(), 513);
    let engine = Engine::start(model, EngineConfig::default()).unwrap();
    let (prompt, _) = prompts("tiny-llama").remove(0);
    // A request beside it, which the refused one must not take down.
    let beside = engine.submit(greedy(prompt.clone(), 8)).unwrap();
    for bad in [
        Prompt::Tokens(vec![5, 512]),
        Prompt::Text("a <|extra|> b".into()),
    ] {
        let refused = engine.submit(GenerationRequest {
            prompt: bad,
            params: GenerationParams {
                max_tokens: Some(4),
                ..Default::default()
            },
        });
        assert!(
            matches!(
                refused,
                Err(EngineError::InvalidParameter {
                    param: "prompt",
                    ..
                })
            ),
            "{:?}",
            refused.err()
        );
    }
    assert_eq!(drain(beside).usage.completion_tokens, 8);
}

#[test]
fn a_full_queue_refuses_new_requests() {
    let engine = engine(
        "tiny-llama",
        EngineConfig {
            max_num_seqs: 1,
            max_waiting: 1,
            ..Default::default()
        },
    );
    // One running (long enough to still run while we submit), one waiting, the next is refused.
    let running = engine.submit(greedy(vec![5, 6, 7], 480)).unwrap();
    wait_until("the first request to run", || {
        engine.stats().snapshot().running == 1
    });
    let waiting = engine.submit(greedy(vec![5, 6, 7], 8)).unwrap();
    assert!(matches!(
        engine.submit(greedy(vec![5, 6, 7], 4)),
        Err(EngineError::QueueFull(1))
    ));
    drain(running);
    drain(waiting);
}

#[test]
fn concurrent_submissions_never_overshoot_the_queue_limit() {
    let engine = engine(
        "tiny-llama",
        EngineConfig {
            max_waiting: 2,
            ..Default::default()
        },
    );
    // The worker is held, so nothing leaves the queue while 16 threads submit at once.
    let release = hold_worker(&engine);
    let barrier = std::sync::Barrier::new(16);
    let accepted: Vec<GenerationStream> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..16)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    engine.submit(greedy(vec![5, 6, 7], 2))
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().unwrap().ok())
            .collect()
    });
    assert_eq!(accepted.len(), 2);
    release.send(()).unwrap();
    for stream in accepted {
        assert_eq!(drain(stream).usage.completion_tokens, 2);
    }
}

#[test]
fn a_short_cache_preempts_and_still_produces_identical_output() {
    // With prefix caching on, the cached prefixes of the first round are evicted under pressure
    // and the preempted sequences may readmit with their own prefixes.
    for prefix_caching in [false, true] {
        // Room for 96 positions: four sequences of ~60 positions each cannot all stay resident.
        let engine = engine_with_cache(
            96,
            EngineConfig {
                block_size: 8,
                max_batch_tokens: 64,
                prefix_caching,
                ..Default::default()
            },
        );
        let cases: Vec<(Vec<u32>, Vec<u32>)> = prompts("tiny-llama")
            .into_iter()
            .filter(|(p, _)| p.len() < 30)
            .take(4)
            .collect();
        let alone: Vec<Vec<u32>> = cases
            .iter()
            .map(|(p, _)| drain(engine.submit(greedy(p.clone(), 36)).unwrap()).ids)
            .collect();
        for ((_, want), got) in cases.iter().zip(&alone) {
            let n = want.len().min(got.len());
            assert_eq!(got[..n], want[..n], "prefix caching {prefix_caching}");
        }
        // Hold the worker until all four are queued, so they are admitted together however the
        // threads are scheduled (on a busy machine the first could otherwise finish before the
        // others arrive).
        let release = hold_worker(&engine);
        let streams: Vec<_> = cases
            .iter()
            .map(|(p, _)| engine.submit(greedy(p.clone(), 36)).unwrap())
            .collect();
        release.send(()).unwrap();
        let together: Vec<Vec<u32>> = streams.into_iter().map(|s| drain(s).ids).collect();
        assert_eq!(together, alone, "prefix caching {prefix_caching}");
        assert!(
            engine.stats().snapshot().preempted > 0,
            "the cache was short enough to preempt (prefix caching {prefix_caching})"
        );
        // The last sequence's blocks are freed by the worker right after its final event.
        wait_until("every block to be freed", || {
            engine.stats().snapshot().kv_blocks_used == 0
        });
    }
}

/// An engine on tiny-llama with 4-position blocks, so that short prompts have full blocks to share.
fn small_block_engine(prefix_caching: bool) -> Engine {
    engine(
        "tiny-llama",
        EngineConfig {
            block_size: 4,
            prefix_caching,
            ..Default::default()
        },
    )
}

/// Positions of `tokens` a sequence can take from the cache: whole 4-position blocks, short of the
/// last token.
fn shareable(tokens: &[u32]) -> usize {
    (tokens.len() - 1) / 4 * 4
}

#[test]
fn a_cached_prefix_is_reused_and_the_output_is_still_the_references() {
    let engine = small_block_engine(true);
    for (prompt, want) in prompts("tiny-llama") {
        let first = drain(engine.submit(greedy(prompt.clone(), want.len())).unwrap());
        assert_eq!(first.ids, want);
        let again = drain(engine.submit(greedy(prompt.clone(), want.len())).unwrap());
        assert_eq!(again.ids, want, "prompt of {}", prompt.len());
        assert_eq!(again.usage.cached_tokens, shareable(&prompt));
        assert_eq!(again.usage.prompt_tokens, prompt.len());
        // The next turn of a conversation: the first answer's blocks are cached too.
        let k = want.len() / 2;
        let turn: Vec<u32> = prompt.iter().chain(&want[..k]).copied().collect();
        let next = drain(engine.submit(greedy(turn.clone(), want.len() - k)).unwrap());
        assert_eq!(next.ids, want[k..], "prompt of {}", prompt.len());
        assert_eq!(next.usage.cached_tokens, shareable(&turn));
    }
    let stats = engine.stats().snapshot();
    assert!(stats.cached_prompt_tokens > 0);
    wait_until("every block to be released", || {
        let s = engine.stats().snapshot();
        s.kv_blocks_used == 0 && s.kv_blocks_cached > 0
    });
}

#[test]
fn without_prefix_caching_every_prompt_is_computed() {
    let engine = small_block_engine(false);
    let (prompt, want) = prompts("tiny-llama").pop().unwrap();
    for _ in 0..2 {
        let out = drain(engine.submit(greedy(prompt.clone(), want.len())).unwrap());
        assert_eq!(out.ids, want);
        assert_eq!(out.usage.cached_tokens, 0);
    }
    assert_eq!(engine.stats().snapshot().cached_prompt_tokens, 0);
    assert_eq!(engine.stats().snapshot().kv_blocks_cached, 0);
}

#[test]
fn a_request_may_compute_its_prompt_in_full_on_a_caching_engine() {
    let engine = small_block_engine(true);
    let (prompt, want) = prompts("tiny-llama").pop().unwrap();
    let in_full = |prompt: &Vec<u32>| {
        let mut request = greedy(prompt.clone(), want.len());
        request.params.use_prefix_cache = false;
        drain(engine.submit(request).unwrap())
    };
    // Computed in full, and its blocks still offered to later requests.
    let first = in_full(&prompt);
    assert_eq!(first.ids, want);
    assert_eq!(first.usage.cached_tokens, 0);
    let again = in_full(&prompt);
    assert_eq!(again.ids, want);
    assert_eq!(again.usage.cached_tokens, 0);
    let reused = drain(engine.submit(greedy(prompt.clone(), want.len())).unwrap());
    assert_eq!(reused.ids, want);
    assert_eq!(reused.usage.cached_tokens, shareable(&prompt));
}

#[test]
fn sequences_that_arrive_together_compute_their_common_prefix_once() {
    let engine = small_block_engine(true);
    let (prompt, want) = prompts("tiny-llama").pop().unwrap();
    // A different prompt queued between them is not held up by the wait for the prefix.
    let (other, other_want) = prompts("tiny-llama").remove(1);
    let release = hold_worker(&engine);
    let streams: Vec<_> = [&prompt, &other, &prompt, &prompt]
        .iter()
        .map(|p| engine.submit(greedy((*p).clone(), want.len())).unwrap())
        .collect();
    release.send(()).unwrap();
    let outs: Vec<Outcome> = streams.into_iter().map(drain).collect();
    assert_eq!(outs[1].ids, other_want);
    assert_eq!(outs[1].usage.cached_tokens, 0);
    let cached: Vec<usize> = [0, 2, 3]
        .iter()
        .map(|&i| {
            assert_eq!(outs[i].ids, want);
            outs[i].usage.cached_tokens
        })
        .collect();
    let s = shareable(&prompt);
    assert_eq!(cached, [0, s, s]);
    let stats = engine.stats().snapshot();
    assert_eq!(stats.cached_prompt_tokens, 2 * s as u64);
    assert_eq!(
        stats.admitted_prompt_tokens,
        (3 * prompt.len() + other.len()) as u64
    );
}

#[test]
fn prefix_caching_under_memory_pressure_changes_no_output() {
    // Prompts made of a few shared prefixes (whole blocks and not) and short suffixes, some repeated
    // exactly, in waves on a cache too small for a wave (eviction of cached prefixes, preemption of
    // sequences that share blocks), some cancelled after their first token: every answer equals the
    // one an engine without prefix caching gives the prompt alone.
    let start = |prefix_caching| {
        engine_with_cache(
            120,
            EngineConfig {
                block_size: 4,
                max_batch_tokens: 24,
                max_num_seqs: 8,
                prefix_caching,
                ..Default::default()
            },
        )
    };
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = |bound: u32| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % bound as u64) as u32
    };
    let prefixes: Vec<Vec<u32>> = [13, 8, 21]
        .iter()
        .map(|&n| (0..n).map(|_| 3 + next(200)).collect())
        .collect();
    let mut prompts: Vec<Vec<u32>> = Vec::new();
    for k in 0..24 {
        let prompt = if k % 7 == 6 {
            prompts[k / 2].clone()
        } else {
            let mut p = prefixes[k % 3].clone();
            p.extend((0..1 + next(10)).map(|_| 3 + next(200)));
            p
        };
        prompts.push(prompt);
    }
    let plain = start(false);
    let want: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| drain(plain.submit(greedy(p.clone(), 12)).unwrap()).ids)
        .collect();
    drop(plain);
    let cached = start(true);
    for (wave, chunk) in prompts.chunks(8).enumerate() {
        let release = hold_worker(&cached);
        let streams: Vec<_> = chunk
            .iter()
            .map(|p| cached.submit(greedy(p.clone(), 12)).unwrap())
            .collect();
        release.send(()).unwrap();
        for (i, stream) in streams.into_iter().enumerate() {
            let k = wave * 8 + i;
            if k % 5 == 4 {
                assert!(matches!(stream.recv(), Some(Event::Delta { .. })));
                drop(stream);
                continue;
            }
            assert_eq!(drain(stream).ids, want[k], "prompt {k}");
        }
    }
    let stats = cached.stats().snapshot();
    assert!(stats.cached_prompt_tokens > 0, "{stats:?}");
    assert!(
        stats.preempted > 0,
        "the cache was short enough to preempt: {stats:?}"
    );
    wait_until("every block to be released", || {
        cached.stats().snapshot().kv_blocks_used == 0
    });
}

#[test]
fn a_cache_smaller_than_the_context_shortens_it_so_every_admitted_request_fits() {
    let engine = engine_with_cache(
        64,
        EngineConfig {
            block_size: 16,
            max_batch_tokens: 32,
            max_model_len: Some(512),
            ..Default::default()
        },
    );
    assert_eq!(engine.max_model_len(), 64);
    // A prompt the cache could never hold is refused up front, naming the shortened context ...
    match engine.submit(greedy(vec![5; 80], 4)) {
        Err(EngineError::PromptTooLong {
            max_model_len: 64, ..
        }) => {}
        other => panic!("expected PromptTooLong, got {:?}", other.err()),
    }
    // ... and one that fits runs to the end of the cache, not into a failure.
    let out = drain(engine.submit(greedy(vec![5; 50], 100)).unwrap());
    assert_eq!(out.reason, Some(FinishReason::Length));
    assert_eq!(out.usage.completion_tokens, 14);
}

#[test]
fn executor_jobs_run_on_the_worker_between_steps_of_a_running_generation() {
    use switchyard_models::executor::DeviceExecutor;
    let engine = engine("tiny-llama", EngineConfig::default());
    let submitted = Instant::now();
    let stream = engine.submit(greedy(vec![5, 6, 7], 480)).unwrap();
    assert!(matches!(stream.recv(), Some(Event::Delta { .. })));
    let (job_tx, rx) = std::sync::mpsc::channel();
    let exec = engine.executor();
    exec.execute(Box::new(move || {
        let name = std::thread::current().name().map(str::to_string);
        job_tx.send((name, Instant::now())).unwrap();
    }))
    .unwrap_or_else(|_| panic!("engine stopped"));
    let (ran_on, ran_at) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(ran_on.as_deref(), Some("switchyard-engine"));
    let out = drain(stream);
    assert_eq!(out.usage.completion_tokens, 480);
    // The job did not wait for the 480-token generation to end.
    let finished_at = submitted + Duration::from_secs_f64(out.usage.total_time);
    assert!(
        ran_at < finished_at,
        "the job ran before the generation finished"
    );
}

#[test]
fn a_panicking_device_job_leaves_the_worker_serving() {
    use switchyard_models::executor::DeviceExecutor;
    let engine = engine("tiny-llama", EngineConfig::default());
    let running = engine.submit(greedy(vec![5, 6, 7], 40)).unwrap();
    engine
        .executor()
        .execute(Box::new(|| panic!("a job's own bug")))
        .unwrap_or_else(|_| panic!("engine stopped"));
    // The generation running beside it and a new one both complete, and the worker still runs.
    assert_eq!(drain(running).usage.completion_tokens, 40);
    let after = drain(engine.submit(greedy(vec![5, 6], 3)).unwrap());
    assert_eq!(after.usage.completion_tokens, 3);
    assert!(engine.worker_alive());
}

#[test]
fn inconsistent_limits_are_refused_by_name() {
    let model = || load_generation_model(&fixtures().join("hf/tiny-llama")).unwrap();
    for (config, param) in [
        (
            EngineConfig {
                max_num_seqs: 0,
                ..Default::default()
            },
            "max_num_seqs",
        ),
        (
            EngineConfig {
                block_size: 0,
                ..Default::default()
            },
            "block_size",
        ),
        // A step too small for every running sequence's decode token would starve the last ones.
        (
            EngineConfig {
                max_num_seqs: 16,
                max_batch_tokens: 8,
                ..Default::default()
            },
            "max_batch_tokens",
        ),
    ] {
        match Engine::start(model(), config) {
            Err(EngineError::InvalidParameter { param: p, .. }) => assert_eq!(p, param),
            Err(e) => panic!("{param}: {e}"),
            Ok(_) => panic!("{param}: accepted"),
        }
    }
}

#[test]
fn a_short_prompt_behind_a_long_one_is_answered_before_the_long_prefill_ends() {
    // 8 tokens per step: the 400-token prompt needs 50 steps of prefill.
    let engine = engine(
        "tiny-llama",
        EngineConfig {
            max_batch_tokens: 8,
            max_num_seqs: 8,
            ..EngineConfig::default()
        },
    );
    // Hold the worker so that both requests are waiting when it next plans a step.
    let release = hold_worker(&engine);
    let long_at = Instant::now();
    let long = engine
        .submit(greedy((0..400).map(|i| i % 50 + 3).collect(), 1))
        .unwrap();
    let short_at = Instant::now();
    let short = engine.submit(greedy(vec![5, 6, 7], 2)).unwrap();
    release.send(()).unwrap();
    let short = drain(short);
    let long = drain(long);
    let short_first = short_at + Duration::from_secs_f64(short.usage.time_to_first_token);
    let long_first = long_at + Duration::from_secs_f64(long.usage.time_to_first_token);
    assert!(
        short_first < long_first,
        "the short prompt waited for the long prefill ({:?} after it)",
        short_first - long_first
    );
    assert_eq!(long.usage.prompt_tokens, 400);
}

/// One engine per fixture model, all on one worker.
fn shared(names: &[&str]) -> Vec<Engine> {
    let models = names
        .iter()
        .map(|name| {
            let model = load_generation_model(&fixtures().join("hf").join(name)).unwrap();
            (model, EngineConfig::default())
        })
        .collect();
    Engine::start_shared(models).unwrap()
}

#[test]
fn models_started_together_share_one_worker_and_each_still_matches_transformers() {
    let names = ["tiny-llama", "tiny-qwen2", "tiny-qwen3"];
    let engines = shared(&names);
    assert_eq!(engines.len(), names.len());
    for e in &engines {
        assert!(e.shares_worker_with(&engines[0]));
    }
    // Every prompt of every model in flight at once: the worker interleaves the three models' steps.
    let streams: Vec<(&str, Vec<u32>, GenerationStream)> = engines
        .iter()
        .zip(names)
        .flat_map(|(engine, name)| {
            prompts(name).into_iter().map(move |(prompt, want)| {
                let stream = engine.submit(greedy(prompt, want.len())).unwrap();
                (name, want, stream)
            })
        })
        .collect();
    for (name, want, stream) in streams {
        assert_eq!(drain(stream).ids, want, "{name}");
    }
    // Engines started apart do not share a worker.
    let alone = engine("tiny-llama", EngineConfig::default());
    assert!(!alone.shares_worker_with(&engines[0]));
}

#[test]
fn a_model_sharing_the_worker_is_served_while_another_generates_at_length() {
    let engines = shared(&["tiny-llama", "tiny-qwen3"]);
    let submitted = Instant::now();
    let long = engines[0].submit(greedy(vec![5, 6, 7], 480)).unwrap();
    assert!(matches!(long.recv(), Some(Event::Delta { .. })));
    let (prompt, want) = prompts("tiny-qwen3").remove(0);
    let short = drain(engines[1].submit(greedy(prompt, want.len())).unwrap());
    let short_done = Instant::now();
    assert_eq!(short.ids, want);
    let long = drain(long);
    assert_eq!(long.usage.completion_tokens, 480);
    // The models took turns: the short request did not wait for the long generation to end.
    let long_done = submitted + Duration::from_secs_f64(long.usage.total_time);
    assert!(short_done < long_done, "the short request finished first");
}

#[test]
fn dropping_one_engine_of_a_shared_worker_leaves_the_others_serving() {
    let mut engines = shared(&["tiny-llama", "tiny-qwen3"]);
    let qwen = engines.pop().unwrap();
    drop(engines);
    let (prompt, want) = prompts("tiny-qwen3").remove(0);
    assert_eq!(
        drain(qwen.submit(greedy(prompt, want.len())).unwrap()).ids,
        want
    );
}

#[test]
fn a_shared_worker_needs_at_least_one_model() {
    assert!(matches!(
        Engine::start_shared(Vec::new()),
        Err(EngineError::InvalidParameter {
            param: "models",
            ..
        })
    ));
}

#[test]
fn log_probabilities_are_the_log_softmax_of_the_models_logits() {
    let dir = fixtures().join("hf").join("tiny-llama");
    let engine = engine("tiny-llama", EngineConfig::default());
    let (prompt, want) = prompts("tiny-llama").remove(0);
    // transformers' logits at the prompt's last position give the first new token's distribution.
    let (shape, logits) = read_tensor(&dir.join("reference.safetensors"), "logits.0");
    let vocab = *shape.last().unwrap();
    let last = &logits[(prompt.len() - 1) * vocab..prompt.len() * vocab];
    let max = last.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + last.iter().map(|l| (l - max).exp()).sum::<f32>().ln();
    let mut request = greedy(prompt, want.len());
    request.params.logprobs = Some(3);
    let out = drain(engine.submit(request).unwrap());
    assert_eq!(out.ids, want);
    // One per generated token, for the token generated, its best alternatives sorted.
    assert_eq!(out.logprobs.len(), want.len());
    for (lp, &id) in out.logprobs.iter().zip(&want) {
        assert_eq!(lp.id, id);
        assert_eq!(lp.top.len(), 3);
        assert!(lp.top.windows(2).all(|w| w[0].1 >= w[1].1), "{lp:?}");
        // Greedy: the token taken is the most likely one.
        assert_eq!(lp.top[0], (id, lp.logprob));
        assert!(lp.logprob <= 0.0);
    }
    let first = &out.logprobs[0];
    assert!(
        (first.logprob - (last[want[0] as usize] - lse)).abs() < 1e-4,
        "{first:?}"
    );
    for &(id, l) in &first.top {
        assert!((l - (last[id as usize] - lse)).abs() < 1e-4, "{id}: {l}");
    }
    // Raw logits: a temperature does not change them.
    let (prompt, _) = prompts("tiny-llama").remove(0);
    let mut hot = greedy(prompt, 1);
    hot.params.sampling.temperature = 1.5;
    hot.params.sampling.seed = Some(3);
    hot.params.logprobs = Some(0);
    let out = drain(engine.submit(hot).unwrap());
    let lp = &out.logprobs[0];
    assert!(lp.top.is_empty());
    assert!(
        (lp.logprob - (last[lp.id as usize] - lse)).abs() < 1e-4,
        "{lp:?}"
    );
}

/// The log-softmax of `row` at `id`.
fn log_softmax_at(row: &[f32], id: u32) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + row.iter().map(|l| (l - max).exp()).sum::<f32>().ln();
    row[id as usize] - lse
}

#[test]
fn prompt_log_probabilities_are_transformers_next_token_probabilities() {
    // Each prompt token after the first, scored under transformers' logits of the position before
    // it: in one step, in prefill chunks of 3 tokens beside other sequences, and again once the
    // prompt is in the prefix cache (which must not skip the scoring).
    let dir = fixtures().join("hf").join("tiny-llama");
    let cases = prompts("tiny-llama");
    for max_batch_tokens in [512, 3] {
        let engine = engine(
            "tiny-llama",
            EngineConfig {
                max_batch_tokens,
                max_num_seqs: max_batch_tokens.min(16),
                block_size: 4,
                ..Default::default()
            },
        );
        for round in 0..2 {
            let streams: Vec<GenerationStream> = cases
                .iter()
                .map(|(prompt, want)| {
                    let mut r = greedy(prompt.clone(), want.len());
                    r.params.prompt_logprobs = Some(2);
                    engine.submit(r).unwrap()
                })
                .collect();
            for (i, ((prompt, want), stream)) in cases.iter().zip(streams).enumerate() {
                let out = drain(stream);
                let at = format!("prompt {i}, max_batch_tokens {max_batch_tokens}, round {round}");
                assert_eq!(&out.ids, want, "{at}: scoring changed the generation");
                assert_eq!(
                    out.usage.cached_tokens, 0,
                    "{at}: a scored prompt is computed in full"
                );
                let (shape, logits) =
                    read_tensor(&dir.join("reference.safetensors"), &format!("logits.{i}"));
                let vocab = shape[1];
                let got: Vec<u32> = out.prompt_logprobs.iter().map(|lp| lp.id).collect();
                assert_eq!(
                    got,
                    prompt[1..],
                    "{at}: one per prompt token after the first"
                );
                for (p, lp) in out.prompt_logprobs.iter().enumerate() {
                    let row = &logits[p * vocab..(p + 1) * vocab];
                    let want = log_softmax_at(row, lp.id);
                    assert!(
                        (lp.logprob - want).abs() < 1e-4,
                        "{at}, position {}: {lp:?} vs {want}",
                        p + 1
                    );
                    assert_eq!(lp.top.len(), 2);
                    assert_eq!(
                        lp.top[0].0,
                        switchyard_engine::sampling::argmax(row),
                        "{at}"
                    );
                    assert!((lp.top[0].1 - log_softmax_at(row, lp.top[0].0)).abs() < 1e-4);
                }
            }
        }
    }
}

#[test]
fn a_preempted_scored_prompt_sends_each_log_probability_once() {
    // Four scored sequences on a cache that cannot hold them all: the preempted ones recompute
    // their prompts, and still send every prompt token's entry exactly once, as scored alone.
    let engine = engine_with_cache(
        96,
        EngineConfig {
            block_size: 8,
            max_batch_tokens: 64,
            ..Default::default()
        },
    );
    let scored = |prompt: &[u32]| {
        let mut r = greedy(prompt.to_vec(), 36);
        r.params.prompt_logprobs = Some(1);
        r
    };
    let cases: Vec<Vec<u32>> = prompts("tiny-llama")
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| p.len() < 30)
        .take(4)
        .collect();
    let alone: Vec<Outcome> = cases
        .iter()
        .map(|p| drain(engine.submit(scored(p)).unwrap()))
        .collect();
    let release = hold_worker(&engine);
    let streams: Vec<_> = cases
        .iter()
        .map(|p| engine.submit(scored(p)).unwrap())
        .collect();
    release.send(()).unwrap();
    for ((prompt, stream), alone) in cases.iter().zip(streams).zip(&alone) {
        let together = drain(stream);
        assert_eq!(together.ids, alone.ids);
        assert_eq!(together.prompt_logprobs.len(), prompt.len() - 1);
        for (a, b) in together.prompt_logprobs.iter().zip(&alone.prompt_logprobs) {
            assert_eq!((a.id, a.top[0].0), (b.id, b.top[0].0));
            assert!((a.logprob - b.logprob).abs() < 1e-4, "{a:?} vs {b:?}");
        }
    }
    assert!(
        engine.stats().snapshot().preempted > 0,
        "the cache was short enough to preempt"
    );
}

#[test]
fn max_tokens_zero_computes_the_prompt_and_generates_nothing() {
    let engine = small_block_engine(true);
    let (prompt, _) = prompts("tiny-llama").remove(1);
    let mut score = greedy(prompt.clone(), 0);
    score.params.prompt_logprobs = Some(0);
    let out = drain(engine.submit(score).unwrap());
    assert_eq!(out.reason, Some(FinishReason::Length));
    assert!(out.ids.is_empty() && out.content.is_empty() && out.logprobs.is_empty());
    assert_eq!(out.usage.completion_tokens, 0);
    assert_eq!(out.prompt_logprobs.len(), prompt.len() - 1);
    assert!(out.prompt_logprobs.iter().all(|lp| lp.top.is_empty()));
    // Without scoring it fills the prefix cache: the same prompt then starts from it.
    let mut warm = greedy(prompt.clone(), 0);
    warm.params.prompt_logprobs = None;
    drain(engine.submit(warm).unwrap());
    let again = drain(engine.submit(greedy(prompt.clone(), 1)).unwrap());
    assert_eq!(
        again.usage.cached_tokens,
        shareable(&prompt),
        "{:?}",
        again.usage
    );
    let mut over = greedy(prompt, 1);
    over.params.prompt_logprobs = Some(21);
    assert!(matches!(
        engine.submit(over),
        Err(EngineError::InvalidParameter {
            param: "prompt_logprobs",
            ..
        })
    ));
}

#[test]
fn raw_output_keeps_what_the_thinking_split_would_remove() {
    // Qwen3's template thinks; as a raw prompt, `<think>` in the prompt's continuation is text.
    let engine = engine("tiny-qwen3", EngineConfig::default());
    let (prompt, want) = prompts("tiny-qwen3").remove(0);
    let mut raw = greedy(prompt.clone(), want.len());
    raw.params.split_thinking = false;
    let raw = drain(engine.submit(raw).unwrap());
    assert_eq!(raw.ids, want);
    assert!(raw.reasoning.is_empty());
    let tokenizer = engine.tokenizer();
    assert_eq!(
        raw.content,
        tokenizer.decode(&want).unwrap(),
        "every token's text, as written"
    );
    let mut thinking = greedy(prompt, 4);
    thinking.params.split_thinking = false;
    thinking.params.thinking = Thinking::On { budget: None };
    assert!(matches!(
        engine.submit(thinking),
        Err(EngineError::InvalidParameter {
            param: "thinking",
            ..
        })
    ));
}

#[test]
fn more_than_twenty_alternatives_are_refused_and_none_are_sent_unasked() {
    let engine = engine("tiny-llama", EngineConfig::default());
    let mut request = greedy(vec![5, 6, 7], 4);
    request.params.logprobs = Some(21);
    assert!(matches!(
        engine.submit(request),
        Err(EngineError::InvalidParameter {
            param: "top_logprobs",
            ..
        })
    ));
    let out = drain(engine.submit(greedy(vec![5, 6, 7], 4)).unwrap());
    assert!(out.logprobs.is_empty());
}

#[test]
fn an_f16_cache_stays_close_to_the_f32_logits() {
    use switchyard_models::decoder::KvDtype;
    let model = load_generation_model(&fixtures().join("hf").join("tiny-llama")).unwrap();
    let tokens: Vec<u32> = (0..200).map(|i| (i * 7 % 250 + 3) as u32).collect();
    let exact = switchyard_tests::teacher_forced(&model, &tokens, KvDtype::F32);
    let half = switchyard_tests::teacher_forced(&model, &tokens, KvDtype::F16);
    let worst = exact
        .iter()
        .zip(&half)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let scale = exact.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert!(worst > 0.0, "the f16 cache was not used");
    // f16 keeps 11 significant bits: ~5e-4 relative per value, a few times that through the layers.
    assert!(worst < 5e-3 * scale, "{worst} against logits up to {scale}");
    // And it halves the cache's size.
    let c = model.decoder.config();
    assert_eq!(
        2 * switchyard_models::decoder::KvCache::bytes_per_position(c, KvDtype::F16),
        switchyard_models::decoder::KvCache::bytes_per_position(c, KvDtype::F32)
    );
}

/// The real SmolLM2 in an engine with the default limits (`None`, with a note, when the model is
/// not here).
fn smollm2_engine() -> Option<Engine> {
    let path = switchyard_tests::smollm2_gguf()?;
    Some(
        Engine::start(
            load_generation_model(&path).unwrap(),
            EngineConfig::default(),
        )
        .unwrap(),
    )
}

/// Samples `n` answers in JSON mode; returns each one's text and finish reason.
fn json_answers(
    engine: &Engine,
    prompt: Prompt,
    n: u64,
    max_tokens: usize,
    logit_bias: Vec<(u32, f32)>,
) -> Vec<(String, FinishReason)> {
    constrained_answers(
        engine,
        prompt,
        n,
        max_tokens,
        logit_bias,
        ResponseFormat::JsonObject,
    )
}

/// Samples `n` answers (seeds 0..n) in `format`; returns each one's text and finish reason.
fn constrained_answers(
    engine: &Engine,
    prompt: Prompt,
    n: u64,
    max_tokens: usize,
    logit_bias: Vec<(u32, f32)>,
    format: ResponseFormat,
) -> Vec<(String, FinishReason)> {
    (0..n)
        .map(|seed| {
            let out = drain(
                engine
                    .submit(GenerationRequest {
                        prompt: prompt.clone(),
                        params: GenerationParams {
                            sampling: SamplingParams {
                                temperature: 0.8,
                                seed: Some(seed),
                                logit_bias: logit_bias.clone(),
                                ..Default::default()
                            },
                            max_tokens: Some(max_tokens),
                            response_format: format.clone(),
                            ..Default::default()
                        },
                    })
                    .unwrap(),
            );
            (out.content, out.reason.unwrap())
        })
        .collect()
}

#[test]
fn json_mode_answers_are_json_objects_even_from_random_weights() {
    let engine = engine("tiny-llama", EngineConfig::default());
    let tokenizer = engine.tokenizer();
    // Random weights would rarely close a string or an object: nudge them toward it.
    let bias = ["\"", "}"]
        .iter()
        .map(|t| (tokenizer.token_id(t).unwrap(), 6.0))
        .collect();
    let answers = json_answers(&engine, Prompt::Text("Hello".into()), 12, 64, bias);
    let mut complete = 0;
    for (text, reason) in &answers {
        let parsed = serde_json::from_str::<serde_json::Value>(text);
        match reason {
            FinishReason::Stop => {
                assert!(parsed.is_ok_and(|v| v.is_object()), "{text:?}");
                complete += 1;
            }
            FinishReason::Length => assert!(parsed.is_err(), "{text:?}"),
        }
    }
    assert!(complete >= 6, "{answers:?}");
    // Without JSON mode the same sampling is free text.
    let free = drain(
        engine
            .submit(GenerationRequest {
                prompt: Prompt::Text("Hello".into()),
                params: GenerationParams {
                    sampling: SamplingParams {
                        temperature: 0.8,
                        seed: Some(0),
                        ..Default::default()
                    },
                    max_tokens: Some(64),
                    ..Default::default()
                },
            })
            .unwrap(),
    );
    assert!(
        !free.content.trim_start().starts_with('{'),
        "{:?}",
        free.content
    );
}

#[test]
fn json_mode_on_the_real_model_gives_the_objects_it_was_asked_for() {
    let Some(engine) = smollm2_engine() else {
        return;
    };
    let prompt = Prompt::Chat(vec![ChatMessage::new(
        "user",
        "Describe a fictional person as a JSON object with name, age and city.",
    )]);
    // Sampled at temperature 0.8, some answers nest or list until `max_tokens`; which ones is a
    // draw that moves with the kernels' summation order (2 of 4 ran out once where 3 had finished
    // before), so a majority of eight is asked for.
    let answers = json_answers(&engine, prompt, 8, 120, Vec::new());
    let objects: Vec<serde_json::Value> = answers
        .iter()
        .filter(|(_, reason)| *reason == FinishReason::Stop)
        .map(|(text, _)| serde_json::from_str(text).unwrap())
        .collect();
    assert!(objects.len() >= 5, "{answers:?}");
    assert!(
        objects.iter().all(|o| o.get("name").is_some()),
        "{objects:?}"
    );
}

/// A person: a name, an age in [0, 150] and a city, nothing else.
fn person_schema() -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 40},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "city": {"type": "string", "maxLength": 40}
        },
        "required": ["name", "age", "city"],
        "additionalProperties": false
    })
}

/// Whether `v` is a [`person_schema`] person.
fn is_person(v: &serde_json::Value) -> bool {
    let Some(o) = v.as_object() else {
        return false;
    };
    let short = |k: &str| o[k].as_str().is_some_and(|s| s.chars().count() <= 40);
    o.len() == 3
        && short("name")
        && short("city")
        && o["age"].as_i64().is_some_and(|a| (0..=150).contains(&a))
}

#[test]
fn json_schema_answers_match_the_schema_even_from_random_weights() {
    let engine = engine("tiny-llama", EngineConfig::default());
    let format = ResponseFormat::JsonSchema(std::sync::Arc::new(person_schema()));
    let tokenizer = engine.tokenizer();
    // Random weights would rarely close a string: nudge them toward it.
    let bias = vec![(tokenizer.token_id("\"").unwrap(), 6.0)];
    let answers = constrained_answers(&engine, Prompt::Text("Hello".into()), 12, 80, bias, format);
    let mut complete = 0;
    for (text, reason) in &answers {
        if *reason == FinishReason::Stop {
            let v: serde_json::Value = serde_json::from_str(text).unwrap();
            assert!(is_person(&v), "{text:?}");
            complete += 1;
        } else {
            assert!(
                serde_json::from_str::<serde_json::Value>(text).is_err(),
                "{text:?}"
            );
        }
    }
    assert!(complete >= 6, "{answers:?}");
}

#[test]
fn json_schema_on_the_real_model_gives_what_the_schema_asks_for() {
    let Some(engine) = smollm2_engine() else {
        return;
    };
    let prompt = Prompt::Chat(vec![ChatMessage::new(
        "user",
        "Describe a fictional person with their name, age and city.",
    )]);
    let format = ResponseFormat::JsonSchema(std::sync::Arc::new(person_schema()));
    let answers = constrained_answers(&engine, prompt, 6, 120, Vec::new(), format);
    for (text, reason) in &answers {
        assert_eq!(*reason, FinishReason::Stop, "{text:?}");
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        assert!(is_person(&v), "{text:?}");
    }
    // An enum leaves the model a choice between its values only, greedy or not.
    let choice = serde_json::json!({
        "type": "object",
        "properties": {"answer": {"enum": ["yes", "no"]}},
        "required": ["answer"],
        "additionalProperties": false
    });
    let prompt = Prompt::Chat(vec![ChatMessage::new("user", "Is the sky blue?")]);
    let answers = constrained_answers(
        &engine,
        prompt,
        3,
        40,
        Vec::new(),
        ResponseFormat::JsonSchema(std::sync::Arc::new(choice)),
    );
    for (text, reason) in &answers {
        assert_eq!(*reason, FinishReason::Stop, "{text:?}");
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        assert!(
            v == serde_json::json!({"answer": "yes"}) || v == serde_json::json!({"answer": "no"}),
            "{text:?}"
        );
    }
}

#[test]
fn a_schema_that_cannot_be_enforced_is_refused_when_submitted() {
    let engine = engine("tiny-llama", EngineConfig::default());
    for (schema, why) in [
        (serde_json::json!({"$ref": "#/$defs/missing"}), "missing"),
        (serde_json::json!([1, 2]), "must be an object"),
        (serde_json::json!({"type": "strin"}), "strin"),
    ] {
        let mut request = greedy(vec![5, 6, 7], 4);
        request.params.response_format = ResponseFormat::JsonSchema(std::sync::Arc::new(schema));
        match engine.submit(request) {
            Err(EngineError::InvalidParameter {
                param: "response_format",
                message,
            }) => assert!(message.contains(why), "{message}"),
            other => panic!("{why}: {:?}", other.map(|_| ())),
        }
    }
    // The engine goes on serving.
    let out = drain(engine.submit(greedy(vec![5, 6, 7], 4)).unwrap());
    assert_eq!(out.ids.len(), 4);
}

#[test]
fn a_schema_constrains_the_answer_after_thinking_not_the_thinking() {
    let engine = engine("tiny-qwen3", EngineConfig::default());
    let verdict = serde_json::json!({
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": false
    });
    // A sampled answer to `prompt` under the schema, thinking within a budget of 6.
    let answer = |prompt: Prompt, seed: u64| {
        let request = GenerationRequest {
            prompt,
            params: GenerationParams {
                sampling: SamplingParams {
                    temperature: 1.0,
                    seed: Some(seed),
                    ..Default::default()
                },
                max_tokens: Some(80),
                thinking: Thinking::On { budget: Some(6) },
                response_format: ResponseFormat::JsonSchema(std::sync::Arc::new(verdict.clone())),
                ..Default::default()
            },
        };
        let out = drain(engine.submit(request).unwrap());
        let answer: serde_json::Value = serde_json::from_str(&out.content).unwrap();
        assert!(answer["ok"].is_boolean(), "{out:?}");
        out
    };
    for seed in 0..3 {
        let opened = "<|im_start|>user\nwhy<|im_end|>\n<|im_start|>assistant\n<think>\n";
        let out = answer(Prompt::Text(opened.into()), seed);
        // Random weights think in random tokens, not in JSON, and may close the section
        // themselves (no JSON grammar would allow `</think>`)...
        assert!((1..=6).contains(&out.usage.reasoning_tokens), "{out:?}");
        assert!(!out.reasoning.trim_start().starts_with('{'), "{out:?}");
        // ...and then answer as the schema says.
        assert_eq!(out.reason, Some(FinishReason::Stop), "{out:?}");
    }
    // Qwen3's template leaves `<think>` to the model, which the schema would forbid: the engine
    // opens the section itself, and the model thinks (within its budget) before the answer.
    let messages = vec![ChatMessage::new("user", "why")];
    let rendered = engine
        .render_chat(&messages, Thinking::On { budget: Some(6) })
        .unwrap();
    assert!(!rendered.trim_end().ends_with("<think>"), "the premise");
    for seed in 0..3 {
        let out = answer(Prompt::Chat(messages.clone()), seed);
        assert!((1..=6).contains(&out.usage.reasoning_tokens), "{out:?}");
    }
}

/// A sampled answer (at most 60 tokens) to `question` with `tools` offered.
fn tool_answer(
    engine: &Engine,
    question: &str,
    tools: &switchyard_engine::tools::ToolUse,
    temperature: f32,
    seed: u64,
) -> Outcome {
    let request = GenerationRequest {
        prompt: Prompt::Chat(vec![ChatMessage::new("user", question)]),
        params: GenerationParams {
            sampling: SamplingParams {
                temperature,
                seed: Some(seed),
                ..Default::default()
            },
            max_tokens: Some(60),
            tools: Some(tools.clone()),
            ..Default::default()
        },
    };
    drain(engine.submit(request).unwrap())
}

/// One function, `weather(city)`, offered with `choice`.
fn weather_tool(choice: switchyard_engine::tools::ToolChoice) -> switchyard_engine::tools::ToolUse {
    switchyard_engine::tools::ToolUse {
        functions: std::sync::Arc::new(vec![switchyard_engine::tools::Function {
            name: "weather".into(),
            description: Some("Current weather in a city".into()),
            parameters: serde_json::json!({"type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"], "additionalProperties": false}),
        }]),
        choice,
        parallel: false,
    }
}

#[test]
fn parallel_tool_calls_are_the_default_only_where_the_template_renders_them() {
    assert!(!engine("tiny-llama", EngineConfig::default()).parallel_tool_calls_by_default());
    assert!(engine("tiny-qwen3", EngineConfig::default()).parallel_tool_calls_by_default());
}

#[test]
fn tools_are_offered_by_templates_that_know_them_and_described_to_those_that_do_not() {
    use switchyard_engine::tools::ToolChoice;
    let tools = weather_tool(ToolChoice::Auto);
    let mut call = ChatMessage::new("assistant", "");
    call.tool_calls = Some(vec![serde_json::json!({"type": "function",
        "function": {"name": "weather", "arguments": {"city": "Oslo"}}})]);
    let history = [
        ChatMessage::new("user", "Weather in Oslo?"),
        call,
        ChatMessage::new("tool", "12 C"),
    ];
    // Both renderings write the call and the result in the same convention.
    let has_call_and_result = |text: &str| {
        assert!(
            text.contains(
                "<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Oslo\"}}"
            ),
            "{text}"
        );
        assert!(
            text.contains("<tool_response>\n12 C\n</tool_response>"),
            "{text}"
        );
    };
    // Qwen3's template renders the tools, the call and the result itself.
    let qwen3 = engine("tiny-qwen3", EngineConfig::default());
    let text = qwen3
        .render_chat_with_tools(&history, Thinking::Off, Some(&tools))
        .unwrap();
    // The functions and the call's arguments as transformers writes them (its `tojson` is
    // Python's `json.dumps`), keys in their order.
    let function = "{\"type\": \"function\", \"function\": {\"name\": \"weather\", \
                    \"description\": \"Current weather in a city\", \"parameters\": \
                    {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}}, \
                    \"required\": [\"city\"], \"additionalProperties\": false}}}";
    assert!(
        text.contains(&format!("<tools>\n{function}\n</tools>")),
        "{text}"
    );
    has_call_and_result(&text);
    // The tiny Llama's template knows no tools: they are described in a system message, and the
    // history is written out in the same convention.
    let llama = engine("tiny-llama", EngineConfig::default());
    let text = llama
        .render_chat_with_tools(&history, Thinking::Off, Some(&tools))
        .unwrap();
    assert!(text.contains("<tools>\n{\"name\": \"weather\""), "{text}");
    has_call_and_result(&text);
    // Without tools, the plain rendering is unchanged.
    let plain = [ChatMessage::new("user", "hi")];
    assert_eq!(
        llama
            .render_chat_with_tools(&plain, Thinking::Off, None)
            .unwrap(),
        llama.render_chat(&plain, Thinking::Off).unwrap()
    );

    // A model with a `tool_use` variant (Hermes 2 Pro's layout) whose default template knows no
    // tools: a conversation with a call but no tools offered is rendered by the default one, so
    // its history is written out too, not dropped.
    let mut model = load_generation_model(&fixtures().join("hf/tiny-llama")).unwrap();
    let mut template = switchyard_models::text::ChatTemplate::new(
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}",
        "",
        "",
    )
    .unwrap();
    template
        .set_tool_use("{{ tools | length }} tools{% for m in messages %}<{{ m.role }}>{% endfor %}")
        .unwrap();
    model.chat_template = Some(template);
    let hermes = Engine::start(model, EngineConfig::default()).unwrap();
    let text = hermes
        .render_chat_with_tools(&history, Thinking::Off, None)
        .unwrap();
    has_call_and_result(&text);
    let text = hermes
        .render_chat_with_tools(&history, Thinking::Off, Some(&tools))
        .unwrap();
    assert!(text.starts_with("1 tools<user><assistant><tool>"), "{text}");
}

#[test]
fn a_required_call_on_the_real_model_is_a_valid_call() {
    use switchyard_engine::tools::{parse_tool_calls, ToolChoice};
    let Some(engine) = smollm2_engine() else {
        return;
    };
    let tools = weather_tool(ToolChoice::Required);
    for seed in 0..3 {
        let out = tool_answer(
            &engine,
            "What's the weather like in Paris today?",
            &tools,
            0.7,
            seed,
        );
        assert_eq!(out.reason, Some(FinishReason::Stop), "{out:?}");
        let (before, calls) = parse_tool_calls(&out.content, &tools.functions).unwrap();
        assert_eq!(before, "");
        assert_eq!(calls.len(), 1, "{out:?}");
        assert!(calls[0].arguments["city"].is_string(), "{out:?}");
    }
}

#[test]
fn a_call_the_model_opens_itself_is_constrained_to_the_functions() {
    use switchyard_engine::tools::{parse_tool_calls, Function, ToolChoice, ToolUse};
    let Some(engine) = smollm2_engine() else {
        return;
    };
    let weather = |city: serde_json::Value| ToolUse {
        functions: std::sync::Arc::new(vec![Function {
            name: "weather".into(),
            description: None,
            parameters: serde_json::json!({"type": "object", "properties": {"city": city},
                "required": ["city"], "additionalProperties": false}),
        }]),
        choice: ToolChoice::Auto,
        parallel: false,
    };
    // A worked example in the prompt, so that greedy SmolLM2 opens a block by itself.
    let example =
        "<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>";
    let history = vec![
        ChatMessage::new("user", "Weather in Oslo?"),
        ChatMessage::new("assistant", example),
        ChatMessage::new("user", "Weather in Paris?"),
        ChatMessage::new("assistant", example.replace("Oslo", "Paris")),
        ChatMessage::new("user", "Weather in Rome?"),
    ];
    let city_in = |tools: &ToolUse| {
        let request = GenerationRequest {
            prompt: Prompt::Chat(history.clone()),
            params: GenerationParams {
                sampling: SamplingParams {
                    temperature: 0.0,
                    ..Default::default()
                },
                max_tokens: Some(40),
                tools: Some(tools.clone()),
                ..Default::default()
            },
        };
        let out = drain(engine.submit(request).unwrap());
        let (_, calls) = parse_tool_calls(&out.content, &tools.functions).expect("a call");
        calls[0].arguments["city"].as_str().unwrap().to_string()
    };
    // Any city: SmolLM2 asks for Rome. One of two: once it has opened the block it is held to them.
    assert_eq!(
        city_in(&weather(serde_json::json!({"type": "string"}))),
        "Rome"
    );
    let city = city_in(&weather(serde_json::json!({"enum": ["Paris", "Oslo"]})));
    assert!(city == "Paris" || city == "Oslo", "{city}");
}

#[test]
fn a_required_call_through_a_template_that_knows_tools_is_a_valid_call() {
    use switchyard_engine::tools::{parse_tool_calls, Function, ToolChoice, ToolUse};
    // Qwen3's template renders the tools itself; random weights are held to a call of `ping`.
    let engine = engine("tiny-qwen3", EngineConfig::default());
    let tools = ToolUse {
        functions: std::sync::Arc::new(vec![Function {
            name: "ping".into(),
            description: None,
            parameters: serde_json::json!({"type": "object",
                "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
                "required": ["n"], "additionalProperties": false}),
        }]),
        choice: ToolChoice::Required,
        parallel: false,
    };
    for seed in 0..3 {
        let out = tool_answer(&engine, "ping", &tools, 1.0, seed);
        assert_eq!(out.reason, Some(FinishReason::Stop), "{out:?}");
        let (_, calls) = parse_tool_calls(&out.content, &tools.functions).expect("a call");
        let n = calls[0].arguments["n"].as_i64().unwrap();
        assert!((0..=9).contains(&n), "{out:?}");
    }
}

#[test]
fn a_requested_stop_id_ends_even_a_thinking_section() {
    // The model's end of sequence closes an open thinking section (the answer follows); an id the
    // request asked to stop at ends generation there, as vLLM's `stop_token_ids` do.
    let engine = engine("tiny-qwen3", EngineConfig::default());
    let token = engine.tokenizer().encode("hello").unwrap()[0];
    let request = |stop_token_ids: Vec<u32>, ignore_eos: bool, favoured: u32| {
        let mut request = GenerationRequest {
            prompt: Prompt::Text(
                "<|im_start|>user\nwhy<|im_end|>\n<|im_start|>assistant\n<think>\n".into(),
            ),
            params: GenerationParams {
                max_tokens: Some(12),
                ignore_eos,
                stop_token_ids,
                thinking: Thinking::On { budget: None },
                ..Default::default()
            },
        };
        request.params.sampling.logit_bias = vec![(favoured, 100.0)];
        request
    };
    let out = drain(engine.submit(request(vec![token], true, token)).unwrap());
    assert_eq!(out.ids, vec![token], "{out:?}");
    assert_eq!(out.reason, Some(FinishReason::Stop));

    let eos = engine.tokenizer().eos()[0];
    let out = drain(engine.submit(request(Vec::new(), false, eos)).unwrap());
    let marker = engine.tokenizer().encode("\n</think>\n\n").unwrap();
    assert_eq!(&out.ids[..marker.len()], marker.as_slice(), "{out:?}");
}

#[test]
fn an_end_of_sequence_generated_past_adds_no_text() {
    // With `ignore_eos` the model may generate its end-of-sequence id and go on; like vLLM (which
    // skips special tokens' text), the answer holds no `</s>` or `<|im_end|>`.
    let engine = engine("tiny-llama", EngineConfig::default());
    let eos = engine.tokenizer().eos()[0];
    let mut request = greedy(engine.tokenizer().encode("Hello").unwrap(), 3);
    request.params.sampling.logit_bias = vec![(eos, 100.0)];
    let out = drain(engine.submit(request).unwrap());
    assert_eq!(out.ids, vec![eos; 3]);
    assert_eq!(out.content, "", "{out:?}");
    assert_eq!(out.reason, Some(FinishReason::Length));
}

#[test]
fn a_generated_special_token_shows_no_text() {
    // `<|im_start|>` is special and no end of sequence: generated, it adds no text (vLLM's
    // `skip_special_tokens`), while a plain token favoured the same way does.
    let engine = engine("tiny-llama", EngineConfig::default());
    let start = engine.tokenizer().token_id("<|im_start|>").unwrap();
    assert!(engine.tokenizer().is_special(start));
    assert!(!engine.tokenizer().eos().contains(&start));
    let run = |favoured: u32| {
        let mut request = greedy(vec![5, 6], 3);
        request.params.sampling.logit_bias = vec![(favoured, 100.0)];
        drain(engine.submit(request).unwrap())
    };
    let out = run(start);
    assert_eq!(out.ids, vec![start; 3], "{out:?}");
    assert_eq!(out.content, "");
    let plain = engine.tokenizer().encode("hello").unwrap()[0];
    assert!(!engine.tokenizer().is_special(plain));
    assert!(!run(plain).content.is_empty());
}
