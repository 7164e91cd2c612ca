//! Switchyard's generation engine.
//!
//! One device worker thread owns the device's models and their paged KV caches (one model, or
//! several started together with [`Engine::start_shared`], sharing device time evenly); callers submit requests
//! through an [`Engine`] handle per model (prompt rendering and tokenization happen on the caller's thread) and read
//! [`Event`]s from a per-request [`GenerationStream`]. The worker runs continuous batching: new
//! sequences join between steps, long prompts are prefilled in chunks under a token budget, and
//! finished or cancelled sequences leave and free their cache blocks at once.

mod config;
mod detokenize;
mod engine;
mod error;
pub mod grammar;
pub mod memory;
mod request;
pub mod sampling;
mod schedule;
mod sequence;
mod stats;
pub mod stop;
pub mod thinking;
pub mod token_bytes;
pub mod tools;
mod turns;
mod worker;

pub use config::EngineConfig;
pub use detokenize::Detokenizer;
pub use engine::{Engine, EngineExecutor, GenerationStream};
pub use error::{EngineError, Result};
pub use memory::{KvBudget, MemoryPlan, ModelFootprint};
pub use request::{
    DeltaKind, Event, FinishReason, GenerationParams, GenerationRequest, Prompt, ResponseFormat,
    Thinking, TokenLogprob, Usage, MAX_STOP_STRINGS, MAX_STOP_TOKEN_IDS, MAX_TOP_LOGPROBS,
};
pub use sampling::SamplingParams;
pub use stats::{EngineStats, StatsSnapshot};
pub use thinking::ThinkingStyle;
