//! distill-core: the vocabulary every stage shares.
//!
//! distill is a pipeline of stages (teach → train → eval → serve) joined by plain files:
//! a TOML task spec, JSONL datasets, Hugging Face style model directories and eval JSON.
//! This crate owns those formats so each stage reads and writes exactly the same thing,
//! plus the money side (price table, SQLite ledger) that teach, eval and serve all touch.

pub mod conversation;
pub mod dataset;
pub mod error;
pub mod fsutil;
pub mod input;
pub mod label_set;
pub mod ledger;
pub mod prices;
pub mod record;
pub mod route;
pub mod spans;
pub mod spec;

pub use error::{CoreError, Result};
pub use record::{RecordStatus, TaskOutput, TeacherRecord, Usage};
pub use spec::{LabelSet, Provider, TaskKind, TaskSpec};
