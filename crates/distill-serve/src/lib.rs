//! The serve stage: students behind an OpenAI-compatible HTTP API with a cascade to the premium
//! model. This is where distillation pays: an app swaps its base URL, confident inputs are
//! answered locally for free, unsure ones still get the premium model's answer, and every
//! dollar spent or saved is counted. Every task kind is served alike: a model is a
//! [`ServedStudent`] answering in its own notation (a label, a label set, spans).

mod answer;
pub mod auth;
pub mod batcher;
pub mod budget;
pub mod cache;
mod cascade;
pub mod error;
pub mod escalate;
pub mod gateway;
pub mod metrics;
pub mod server;
pub mod shadow;
pub mod student;
pub mod teach_escalator;
pub mod threshold;

pub use error::{Result, ServeError};
pub use escalate::{CallContext, CostEstimator, EscalateError, Escalation, Escalator};
pub use server::{Answer, ModelEntry, RunningServer, Server, ServerOptions};
pub use student::{Classifier, Input, ModelCard, ServedStudent, Tagger};
