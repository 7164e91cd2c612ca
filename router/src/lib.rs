//! The semantic router: turns a chat request into a routing decision (target model, fast or thinking
//! with a budget, system prompt, block or mask), in-process.
//!
//! * [`config`]: the routing YAML, validated at load.
//! * [`signals`]: what the classifiers say about a request.
//! * [`decision`]: the policy that turns signals into a [`Decision`].

pub mod config;
pub mod decision;
pub mod signals;

pub use config::RouterConfig;
pub use decision::{decide, Action, BlockReason, Decision, Reasoning};
pub use signals::{ClassifierOutput, PiiEntity, Signals};
