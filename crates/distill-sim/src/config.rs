use crate::error::{Result, SimError};
use distill_core::TaskSpec;
use std::path::PathBuf;

/// How the simulated teacher behaves. Build one with [`SimConfig::new`] and adjust fields.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The task whose prompts it answers (label set, user template, gold column).
    pub task: TaskSpec,
    /// Gold-labelled file (CSV/JSONL with the task's text and gold columns). Default: the
    /// task's input file.
    pub gold: Option<PathBuf>,
    /// Probability that an answer for a known text is the gold label.
    pub accuracy: f64,
    /// Simulated processing time of every successful synchronous reply.
    pub latency_ms: u64,
    /// Fraction of synchronous requests answered with an injected error, split evenly
    /// between 429 (with `retry-after-ms` / `retry-after`) and 500.
    pub error_rate: f64,
    /// Fraction of texts whose first reply is not a valid label (to exercise repair). A
    /// request carrying a repair turn always gets a valid answer.
    pub invalid_rate: f64,
    /// Model whose tokenizer (and prices, for `/stats` cost) it imitates.
    pub price_as: String,
    /// Seeds every decision: which answers are wrong, which attempts fail.
    pub seed: u64,
    /// When set, each batch stops after this many requests and expires: the rest come back
    /// as `batch_expired` errors (OpenAI) or `expired` results (Anthropic).
    pub batch_expire_after: Option<usize>,
    /// Time a batch stays `in_progress` before its results appear.
    pub batch_completion_ms: u64,
    /// The first N batch creations are carried out (the batch exists and runs) but answered
    /// `502 Bad Gateway`, as a proxy in front of the provider does when it gives up waiting.
    pub batch_creates_lost: usize,
    /// The delay advertised in `retry-after-ms` on injected 429s (`retry-after` rounds it up
    /// to whole seconds).
    pub retry_after_ms: u64,
    /// Reject requests without an API key header, as the real providers do (any key is
    /// accepted).
    pub require_api_key: bool,
    /// Route tasks: answer from this route dataset's recorded outcomes ([`crate::replay`]).
    pub replay: Option<PathBuf>,
}

impl SimConfig {
    /// The defaults: 94% accurate, no latency, no injected errors, priced as gpt-4o.
    pub fn new(task: TaskSpec) -> Self {
        SimConfig {
            task,
            gold: None,
            accuracy: 0.94,
            latency_ms: 0,
            error_rate: 0.0,
            invalid_rate: 0.0,
            price_as: "gpt-4o".into(),
            seed: 0,
            batch_expire_after: None,
            batch_completion_ms: 200,
            batch_creates_lost: 0,
            retry_after_ms: 100,
            require_api_key: true,
            replay: None,
        }
    }

    /// Rejects settings outside their range before anything starts.
    pub fn validate(&self) -> Result<()> {
        let fraction = |setting: &'static str, v: f64| {
            if v.is_finite() && (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(SimError::Config {
                    setting,
                    message: format!("must be between 0 and 1, got {v}"),
                })
            }
        };
        fraction("accuracy", self.accuracy)?;
        fraction("error_rate", self.error_rate)?;
        fraction("invalid_rate", self.invalid_rate)?;
        if self.price_as.trim().is_empty() {
            return Err(SimError::Config {
                setting: "price_as",
                message: "must name a model, e.g. gpt-4o".into(),
            });
        }
        if self.batch_expire_after == Some(0) {
            // Zero would expire every request, which no real batch does; use 1 for "almost all".
            return Err(SimError::Config {
                setting: "batch_expire_after",
                message: "must be at least 1".into(),
            });
        }
        Ok(())
    }

    /// The gold files in use: `gold`, else the task's input file and (when it exists) its test
    /// file, so that both the training and the test set can be taught.
    pub fn gold_paths(&self) -> Result<Vec<PathBuf>> {
        if let Some(p) = &self.gold {
            return Ok(vec![p.clone()]);
        }
        let Some(train) = &self.task.input.path else {
            return Err(SimError::Config {
                setting: "gold",
                message: format!(
                    "the task {} has no input.path; give a gold-labelled file",
                    self.task.path.display()
                ),
            });
        };
        let mut paths = vec![train.clone()];
        if let Some(test) = self.task.input.test_path.as_ref().filter(|t| t.exists()) {
            if test != train {
                paths.push(test.clone());
            }
        }
        Ok(paths)
    }
}
