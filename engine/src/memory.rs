//! The memory plan: how much of the device the KV caches of the served models may take.
//!
//! It is made once at start-up, after every model's weights (and the router's) are on the device,
//! from the memory the device reports free at that moment:
//!
//! ```text
//! room for KV = fraction × total − (total − free) − activation reserve − headroom
//! ```
//!
//! that is, the process (weights, router, runtime) and everyone else already using the device count
//! against `fraction × total`, as vLLM's `--gpu-memory-fraction` does. The activation reserve is the
//! largest model's, not the sum: the models share one device worker ([`crate::Engine::start_shared`]),
//! which runs one model's step at a time. An explicit byte budget
//! replaces the fraction (and is refused if it exceeds that room). Each model wants enough cache for
//! `max_num_seqs` sequences at its full context; when the room is smaller, the room is shared in
//! proportion to what each model wants. A model whose share cannot hold one long prefill step is an
//! error at start-up naming the flags to change; a share smaller than one full-length sequence
//! shortens that model's context to what fits (the engine then refuses longer prompts with a clear
//! error, so no request is ever admitted that the cache cannot hold).

use crate::config::EngineConfig;
use crate::error::{EngineError, Result};
use std::fmt;
use switchyard_models::decoder::{DecoderConfig, KvCache};
use switchyard_models::device::DeviceMemory;

/// Device bytes kept free on a GPU beyond the activation estimates (cuBLAS workspaces, allocator
/// slack, the kernels' modules).
pub const GPU_HEADROOM_BYTES: u64 = 256 << 20;

/// How the operator sized the KV cache.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KvBudget {
    /// Fraction of the device's total memory the whole process may use (`--gpu-memory-fraction`).
    Fraction(f64),
    /// Bytes for all the KV caches together (`--kv-cache-mib`).
    Bytes(u64),
}

impl KvBudget {
    /// The default: 90 % of the device.
    pub const DEFAULT: KvBudget = KvBudget::Fraction(0.9);
}

/// What one model needs from the plan.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelFootprint {
    /// Served name.
    pub name: String,
    /// Bytes of its weights (as mapped or uploaded).
    pub weight_bytes: u64,
    /// KV-cache bytes per token position.
    pub kv_bytes_per_position: u64,
    /// Its context (longest sequence), in tokens.
    pub context: u64,
    /// Positions it wants: `max_num_seqs` sequences at its full context.
    pub wanted_positions: u64,
    /// Fewest positions it can run with: one prefill step of `max_batch_tokens` (or its context).
    pub min_positions: u64,
    /// Upper estimate of the transient memory of its largest forward step.
    pub activation_bytes: u64,
}

impl ModelFootprint {
    /// The footprint of a decoder served with `engine`'s limits.
    pub fn new(
        name: impl Into<String>,
        config: &DecoderConfig,
        weight_bytes: usize,
        engine: &EngineConfig,
    ) -> Self {
        let context = engine
            .max_model_len
            .map_or(config.max_position_embeddings, |l| {
                l.min(config.max_position_embeddings)
            }) as u64;
        ModelFootprint {
            name: name.into(),
            weight_bytes: weight_bytes as u64,
            kv_bytes_per_position: KvCache::bytes_per_position(config, engine.kv_cache_dtype)
                as u64,
            context,
            wanted_positions: engine.max_num_seqs as u64 * context,
            min_positions: (engine.max_batch_tokens as u64).min(context),
            activation_bytes: activation_bytes(config, engine),
        }
    }

    fn wanted_bytes(&self) -> u64 {
        self.wanted_positions * self.kv_bytes_per_position
    }
}

/// Upper estimate of the transient bytes of one forward step of `engine.max_batch_tokens` tokens
/// (activations are f32): the residual stream and its normed copy, q/k/v and the attention output,
/// the MLP's gate / up / product, one weight matrix dequantized to f32 (what a quantized matmul may
/// unpack on a GPU), the logits of every row of the step on the device and on the host (a scored
/// prompt, [`crate::GenerationParams::prompt_logprobs`], has logits at every position, so a step
/// can have as many logits rows as tokens); doubled for the allocator's fragmentation. A warm-up
/// step at start-up checks it on a GPU.
pub fn activation_bytes(config: &DecoderConfig, engine: &EngineConfig) -> u64 {
    let tokens = engine.max_batch_tokens as u64;
    let hidden = config.hidden_size as u64;
    let per_token = 3 * hidden
        + config.q_dim() as u64 * 2
        + 2 * config.kv_dim() as u64
        + 3 * config.intermediate_size as u64;
    let largest_matrix = [
        config.vocab_size * config.hidden_size,
        config.intermediate_size * config.hidden_size,
        config.q_dim() * config.hidden_size,
    ]
    .into_iter()
    .max()
    .unwrap_or(0) as u64;
    let logit_rows = engine.max_num_seqs.max(engine.max_batch_tokens) as u64;
    let logits = 2 * logit_rows * config.vocab_size as u64;
    2 * 4 * (tokens * per_token + largest_matrix + logits)
}

/// One model's part of the plan.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelPlan {
    /// What it needs.
    pub footprint: ModelFootprint,
    /// KV-cache bytes it gets.
    pub kv_bytes: u64,
}

impl ModelPlan {
    /// Token positions its cache holds.
    pub fn kv_positions(&self) -> u64 {
        self.kv_bytes / self.footprint.kv_bytes_per_position.max(1)
    }
}

/// The start-up memory plan of a device.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryPlan {
    /// The device as it was when the plan was made (weights already loaded).
    pub device: DeviceMemory,
    /// How the KV caches were sized.
    pub budget: KvBudget,
    /// Bytes kept free beyond the activation estimates.
    pub headroom: u64,
    /// Bytes left for KV caches after everything else.
    pub room: u64,
    /// Each model's share.
    pub models: Vec<ModelPlan>,
}

impl MemoryPlan {
    /// Plans the KV caches of `models` on a device that reports `device` now (after loading).
    pub fn new(
        device: DeviceMemory,
        budget: KvBudget,
        headroom: u64,
        models: Vec<ModelFootprint>,
    ) -> Result<Self> {
        let invalid = |param, message: String| EngineError::InvalidParameter { param, message };
        let fraction = match budget {
            KvBudget::Fraction(f) if !(f > 0.0 && f <= 1.0) => {
                return Err(invalid(
                    "gpu_memory_fraction",
                    format!("{f} is not in (0, 1]"),
                ))
            }
            KvBudget::Fraction(f) => f,
            KvBudget::Bytes(_) => 1.0,
        };
        let used = device.total.saturating_sub(device.free);
        // One worker steps one model at a time: only the largest step's activations are live at once.
        let activations: u64 = models.iter().map(|m| m.activation_bytes).max().unwrap_or(0);
        let allowed = (fraction * device.total as f64) as u64;
        let room = allowed.saturating_sub(used + activations + headroom);
        let wanted: u64 = models.iter().map(ModelFootprint::wanted_bytes).sum();
        let total_kv = match budget {
            KvBudget::Fraction(_) => wanted.min(room),
            KvBudget::Bytes(bytes) if bytes > room => {
                return Err(invalid(
                    "kv_cache_bytes",
                    format!(
                        "{} of KV cache asked for, but {} has only {} left after the weights \
                         ({} used of {}) and {} of activation reserve and headroom",
                        mib(bytes),
                        device.name,
                        mib(room),
                        mib(used),
                        mib(device.total),
                        mib(activations + headroom)
                    ),
                ))
            }
            KvBudget::Bytes(bytes) => bytes,
        };
        let mut plans = Vec::with_capacity(models.len());
        for footprint in models {
            let kv_bytes = if wanted <= total_kv {
                footprint.wanted_bytes()
            } else {
                (total_kv as u128 * footprint.wanted_bytes() as u128 / wanted.max(1) as u128) as u64
            };
            let plan = ModelPlan {
                footprint,
                kv_bytes,
            };
            if plan.kv_positions() < plan.footprint.min_positions {
                return Err(invalid(
                    "kv_cache_bytes",
                    format!(
                        "model `{}` gets {} of KV cache ({} positions), less than one {}-token \
                         step; lower --max-num-seqs or --max-batch-tokens, serve fewer models, or \
                         allow more memory (--gpu-memory-fraction / --kv-cache-mib)",
                        plan.footprint.name,
                        mib(plan.kv_bytes),
                        plan.kv_positions(),
                        plan.footprint.min_positions
                    ),
                ));
            }
            plans.push(plan);
        }
        Ok(MemoryPlan {
            device,
            budget,
            headroom,
            room,
            models: plans,
        })
    }

    /// The KV-cache bytes planned for `model`.
    pub fn kv_bytes(&self, model: &str) -> Option<u64> {
        self.models
            .iter()
            .find(|m| m.footprint.name == model)
            .map(|m| m.kv_bytes)
    }
}

impl fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let budget = match self.budget {
            KvBudget::Fraction(x) => format!("fraction {x:.2} of the device"),
            KvBudget::Bytes(b) => format!("KV budget {}", mib(b)),
        };
        writeln!(
            f,
            "memory plan on {}: {} total, {} free after loading; {budget}; {} left for KV caches",
            self.device.name,
            mib(self.device.total),
            mib(self.device.free),
            mib(self.room)
        )?;
        for m in &self.models {
            let fp = &m.footprint;
            writeln!(
                f,
                "  {}: weights {}, activation reserve {}, KV cache {} ({} positions: {:.1} \
                 sequences of {} tokens)",
                fp.name,
                mib(fp.weight_bytes),
                mib(fp.activation_bytes),
                mib(m.kv_bytes),
                m.kv_positions(),
                m.kv_positions() as f64 / fp.context.max(1) as f64,
                fp.context
            )?;
        }
        if self.headroom > 0 {
            writeln!(f, "  headroom: {}", mib(self.headroom))?;
        }
        Ok(())
    }
}

/// Bytes as MiB / GiB for people.
fn mib(bytes: u64) -> String {
    if bytes >= 10 << 30 {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    fn device(total: u64, free: u64) -> DeviceMemory {
        DeviceMemory {
            name: "test GPU".into(),
            total,
            free,
        }
    }

    fn model(name: &str, per_position: u64, wanted: u64) -> ModelFootprint {
        ModelFootprint {
            name: name.into(),
            weight_bytes: GIB,
            kv_bytes_per_position: per_position,
            context: 4096,
            wanted_positions: wanted,
            min_positions: 512,
            activation_bytes: 100 * MIB,
        }
    }

    #[test]
    fn a_small_want_gets_all_it_wants() {
        let plan = MemoryPlan::new(
            device(80 * GIB, 70 * GIB),
            KvBudget::Fraction(0.9),
            0,
            vec![model("a", 1024, 16 * 4096)],
        )
        .unwrap();
        assert_eq!(plan.kv_bytes("a"), Some(1024 * 16 * 4096));
        assert_eq!(plan.kv_bytes("b"), None);
    }

    #[test]
    fn the_room_is_the_fraction_less_what_is_used_reserved_and_kept() {
        // 0.5 × 80 GiB = 40 GiB allowed; 10 GiB already used; 100 MiB activations (one model's step
        // at a time, each needs 100 MiB); 256 MiB kept.
        let want = 64 * GIB / 2048;
        let plan = MemoryPlan::new(
            device(80 * GIB, 70 * GIB),
            KvBudget::Fraction(0.5),
            256 * MIB,
            vec![model("a", 1024, want), model("b", 2048, want)],
        )
        .unwrap();
        let room = 40 * GIB - 10 * GIB - 100 * MIB - 256 * MIB;
        assert_eq!(plan.room, room);
        // Shared in proportion to what each wants (b wants twice as much as a).
        let (a, b) = (plan.kv_bytes("a").unwrap(), plan.kv_bytes("b").unwrap());
        assert!(a + b <= room && room - (a + b) < 4);
        assert!((b as f64 / a as f64 - 2.0).abs() < 1e-6, "{a} {b}");
    }

    #[test]
    fn an_explicit_budget_is_split_and_checked_against_the_room() {
        let plan = MemoryPlan::new(
            device(80 * GIB, 70 * GIB),
            KvBudget::Bytes(GIB),
            0,
            vec![model("a", 1024, 16 << 20)],
        )
        .unwrap();
        assert_eq!(plan.kv_bytes("a"), Some(GIB));
        let err = MemoryPlan::new(
            device(80 * GIB, 10 * GIB),
            KvBudget::Bytes(20 * GIB),
            0,
            vec![model("a", 1024, 16 << 20)],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("kv_cache_bytes") && err.contains("left after the weights"),
            "{err}"
        );
    }

    #[test]
    fn a_share_below_one_step_is_an_error_naming_the_model_and_the_flags() {
        let err = MemoryPlan::new(
            device(8 * GIB, GIB),
            KvBudget::Fraction(0.9),
            0,
            vec![model("big", 1 << 20, 16 * 4096)],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`big`") && err.contains("--gpu-memory-fraction"),
            "{err}"
        );
    }

    #[test]
    fn fractions_outside_zero_to_one_are_refused() {
        for f in [0.0, -0.5, 1.5, f64::NAN] {
            let r = MemoryPlan::new(device(GIB, GIB), KvBudget::Fraction(f), 0, vec![]);
            assert!(r.is_err(), "{f}");
        }
    }

    #[test]
    fn the_printed_plan_names_every_part() {
        let plan = MemoryPlan::new(
            device(80 * GIB, 70 * GIB),
            KvBudget::DEFAULT,
            GPU_HEADROOM_BYTES,
            vec![model("SmolLM2", 1024, 16 * 4096)],
        )
        .unwrap();
        let text = plan.to_string();
        for part in [
            "test GPU",
            "80.0 GiB total",
            "SmolLM2",
            "weights 1024.0 MiB",
            "KV cache 64.0 MiB",
            "65536 positions: 16.0 sequences of 4096 tokens",
            "headroom: 256.0 MiB",
        ] {
            assert!(text.contains(part), "`{part}` missing in:\n{text}");
        }
    }

    /// SmolLM2-135M's shape.
    pub(crate) fn smollm2_135m() -> DecoderConfig {
        DecoderConfig {
            vocab_size: 49152,
            hidden_size: 576,
            intermediate_size: 1536,
            num_heads: 9,
            num_kv_heads: 3,
            head_dim: 64,
            family: switchyard_models::decoder::Family::Llama,
            num_layers: 30,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: None,
            rope_style: switchyard_models::decoder::RopeStyle::HalfSplit,
            max_position_embeddings: 8192,
            tie_word_embeddings: true,
        }
    }

    #[test]
    fn activation_estimate_covers_a_dequantized_lm_head() {
        let config = smollm2_135m();
        let bytes = activation_bytes(&config, &EngineConfig::default());
        assert!(bytes > 49152 * 576 * 4, "{bytes}");
        assert!(bytes < 1 << 30, "{bytes}");
        // A step that scores a prompt has logits at every one of its tokens.
        let engine = EngineConfig::default();
        assert!(
            bytes > 4 * (engine.max_batch_tokens * 49152) as u64,
            "{bytes}"
        );
    }
}
