//! The teach stage: label a task's inputs with a premium model, cached, resumable,
//! budget-capped and ledgered.
//!
//! Why it exists: the teacher's labels are the most expensive thing distill makes, so this
//! crate is built around never paying twice (a response cache keyed by the normalised
//! request, a fsync'd journal that survives `kill -9`) and never paying more than allowed
//! (`--max-spend`, rate limits, no retries on errors that cannot succeed).
//!
//! Public API used by other stages:
//! - [`TeacherClient`] + [`CallContext`] → [`LabelOutcome`]: label one text (eval's API
//!   students, serve's escalations).
//! - [`run_teach`] with [`TeachOptions`] → [`TeachSummary`]: the whole `distill teach` job.
//! - [`export::export_openai`]: the OpenAI fine-tuning chat format.

pub mod batch;
pub mod cache;
pub mod client;
pub mod dry_run;
pub mod error;
pub mod export;
pub mod journal;
pub mod label;
pub mod ledger_writer;
pub mod lock;
pub mod provider;
pub mod ratelimit;
pub mod route;
pub mod runner;

pub use client::{CallContext, ClientOptions, LabelOutcome, TeacherClient};
pub use error::{Result, TeachError};
pub use runner::{default_out, run_teach, TeachOptions, TeachSummary};
