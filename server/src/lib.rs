//! The Switchyard server as a library: the default-model fetcher and the OpenAI-compatible HTTP
//! server (`serve`), so that tests and benchmarks can start it in-process. The `switchyard` binary
//! (`main.rs`) adds the other commands.

pub mod fetch;
pub mod serve;
