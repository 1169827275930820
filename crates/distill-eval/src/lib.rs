//! distill-eval: the stage that answers "is the small model good enough, how much do I save,
//! and when does distillation pay for itself?"
//!
//! Quality ([`metrics`]), money ([`cost`]) and the cascade threshold ([`cascade`]) are pure
//! functions over predictions, so each is unit-tested without a model and cross-checked
//! against scikit-learn in CI. [`run`] is the only part that touches students, and only
//! through the `Student` trait. [`report`] renders `metrics.json`, `report.md` and a
//! self-contained `report.html`; its module docs hold the `metrics.json` schema.

pub mod answer_space;
pub mod answers;
pub mod api;
pub mod cascade;
pub mod cost;
pub mod curve;
pub mod data;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod open_set;
mod pricing;
pub mod quantized;
pub mod report;
pub mod route;
pub mod run;
pub mod set_metrics;
pub mod span_metrics;

pub use error::{EvalError, Result};
pub use report::EvalReport;
pub use run::{run_eval, run_eval_with, EvalOptions, EvalOutcome, NamedStudent};
