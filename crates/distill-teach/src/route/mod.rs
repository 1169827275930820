//! Route tasks in the teach stage: build the route dataset, either from recorded outcomes
//! ([`import`]: RouteLLM's files, or any CSV of per-model correctness) or by asking every tier
//! and grading each answer with the judge ([`judge`]).

pub mod import;
pub mod judge;

pub use import::{import_outcomes, write_route_dataset, ImportOptions, ImportReport};
pub use judge::{parse_verdict, run_route_teach};
