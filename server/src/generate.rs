//! `switchyard generate`: one prompt, streamed to the terminal.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::PathBuf;
use switchyard_engine::{
    DeltaKind, Engine, EngineConfig, Event, GenerationParams, GenerationRequest, Prompt,
    SamplingParams, Thinking,
};
use switchyard_models::device::DeviceSpec;
use switchyard_models::text::ChatMessage;
use switchyard_server::fetch;
use switchyard_server::serve::KvCacheDtype;

/// Options of `generate`.
#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// The prompt (a user message, unless --raw).
    #[arg(long, short)]
    prompt: String,
    /// Model: a .gguf file or a Hugging Face checkpoint directory (default: SmolLM2-135M-Instruct Q4_1, fetched on first use).
    #[arg(long, short, env = "SWITCHYARD_MODEL")]
    model: Option<PathBuf>,
    /// System message.
    #[arg(long)]
    system: Option<String>,
    /// Send the prompt as raw text instead of rendering the chat template.
    #[arg(long)]
    raw: bool,
    /// Most new tokens.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Keep only the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Drop tokens below min_p × the top probability.
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    /// Repetition penalty (1 = off).
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Frequency penalty.
    #[arg(long, default_value_t = 0.0)]
    frequency_penalty: f32,
    /// Presence penalty.
    #[arg(long, default_value_t = 0.0)]
    presence_penalty: f32,
    /// Seed for sampling.
    #[arg(long)]
    seed: Option<u64>,
    /// Stop strings (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Think before answering.
    #[arg(long)]
    think: bool,
    /// Most thinking tokens before the answer is forced (implies --think).
    #[arg(long)]
    thinking_budget: Option<usize>,
    /// Hide the thinking text (it is shown dimmed on stderr by default).
    #[arg(long)]
    hide_thinking: bool,
    /// Where the model runs: `cpu`, `cuda:N` (needs a `--features cuda` build) or `auto` (CUDA device 0
    /// if one opens, else the CPU, saying why).
    #[arg(long, default_value = "cpu", env = "SWITCHYARD_DEVICE")]
    device: DeviceSpec,
    /// Element type of the KV cache: `auto` (f16 on the CPU, f32 on a GPU), `f32` or `f16`.
    #[arg(long, env = "SWITCHYARD_KV_CACHE_DTYPE", value_enum, default_value_t = KvCacheDtype::Auto)]
    kv_cache_dtype: KvCacheDtype,
}

/// The model to load: the given path, or the default model (fetched if needed).
pub fn resolve_model(path: Option<PathBuf>) -> Result<PathBuf> {
    match path {
        Some(p) => Ok(p),
        None => fetch::DEFAULT_MODEL.ensure(&fetch::cache_dir()),
    }
}

/// Runs `generate`.
pub fn run(args: GenerateArgs) -> Result<()> {
    let path = resolve_model(args.model)?;
    let mut model = switchyard_models::load_generation_model(&path)
        .with_context(|| format!("loading {}", path.display()))?;
    let device = args.device.open()?;
    model.decoder = model.decoder.to_device(&device)?;
    let engine = Engine::start(
        model,
        EngineConfig {
            kv_cache_dtype: args.kv_cache_dtype.resolve(&device),
            ..EngineConfig::default()
        },
    )?;
    let thinking = if args.think || args.thinking_budget.is_some() {
        Thinking::On {
            budget: args.thinking_budget,
        }
    } else {
        Thinking::Off
    };
    let prompt = if args.raw {
        Prompt::Text(args.prompt)
    } else {
        let mut messages = Vec::new();
        if let Some(s) = args.system {
            messages.push(ChatMessage::new("system", s));
        }
        messages.push(ChatMessage::new("user", args.prompt));
        Prompt::Chat(messages)
    };
    let request = GenerationRequest {
        prompt,
        params: GenerationParams {
            sampling: SamplingParams {
                temperature: args.temperature,
                top_p: args.top_p,
                top_k: args.top_k,
                min_p: args.min_p,
                repetition_penalty: args.repetition_penalty,
                frequency_penalty: args.frequency_penalty,
                presence_penalty: args.presence_penalty,
                seed: args.seed,
                logit_bias: Vec::new(),
            },
            max_tokens: Some(args.max_tokens),
            stop: args.stop,
            thinking,
            ..Default::default()
        },
    };
    let stream = engine.submit(request)?;
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    while let Some(event) = stream.recv() {
        match event {
            Event::Delta {
                kind: DeltaKind::Reasoning,
                text,
            } => {
                if !args.hide_thinking {
                    write!(err, "\x1b[2m{text}\x1b[0m")?;
                    err.flush()?;
                }
            }
            Event::Delta { text, .. } => {
                write!(out, "{text}")?;
                out.flush()?;
            }
            Event::Finished { reason, usage, .. } => {
                writeln!(out)?;
                let decode = usage.total_time - usage.time_to_first_token;
                let rate = if decode > 0.0 && usage.completion_tokens > 1 {
                    (usage.completion_tokens - 1) as f64 / decode
                } else {
                    0.0
                };
                writeln!(
                    err,
                    "[{}: {} prompt + {} new tokens ({} thinking); first token {:.0} ms; {:.1} tok/s]",
                    reason.as_str(),
                    usage.prompt_tokens,
                    usage.completion_tokens,
                    usage.reasoning_tokens,
                    usage.time_to_first_token * 1e3,
                    rate
                )?;
            }
            Event::Logprob(_) | Event::PromptLogprob(_) => {} // `generate` does not ask for them
            Event::Error(e) => anyhow::bail!("generation failed: {e}"),
        }
    }
    Ok(())
}
