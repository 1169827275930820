//! The simulated teacher: an OpenAI- and Anthropic-compatible server that answers a task's
//! prompts from a gold-labelled file, so a labelling job can be rehearsed, tested and
//! benchmarked without spending money or needing the network.
//!
//! It behaves like a real premium model where that matters to distill: it is right with a
//! configurable probability and wrong in systematic, plausible ways (each label has a fixed
//! "confusable" neighbour); it reports usage counted with the imitated model's real
//! tokenizer; it can be slow, rate-limit (429 with `retry-after`), fail (500), reply with
//! malformed output, and let a batch expire part-way. `/stats` counts every billable
//! response per request hash, so tests can prove nothing was paid for twice.
//!
//! ```no_run
//! # fn demo(task: distill_core::TaskSpec) -> distill_sim::Result<()> {
//! let sim = distill_sim::SimServer::spawn(distill_sim::SimConfig::new(task))?;
//! println!("point the client at {}", sim.base_url());
//! println!("billable so far: {}", sim.stats().billable);
//! # Ok(()) }
//! ```

mod anthropic;
mod config;
mod engine;
mod error;
mod openai;
pub mod oracle;
pub mod replay;
mod server;
mod spans;
mod stats;

pub use config::SimConfig;
pub use error::{Result, SimError};
pub use server::{SimHandle, SimServer};
pub use stats::{request_hash, BatchStats, ErrorsInjected, Stats, TokenStats};
