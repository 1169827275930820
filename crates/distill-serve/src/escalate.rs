//! Escalation: asking the premium teacher when the student is unsure.
//!
//! The server only knows the small [`Escalator`] trait, so the cascade can be tested with any
//! teacher; `distill serve` plugs in the teach crate's client
//! ([`crate::teach_escalator::TeachEscalator`]).

use distill_core::prices::ModelPrice;
use distill_core::spec::PromptInput;
use distill_core::{TaskSpec, Usage};
use futures::future::BoxFuture;
use std::time::Duration;

/// Who is asking, for the ledger and metrics: the endpoint and the caller's `X-Distill-Tag`.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    /// `serve.chat`, `serve.classify` or `serve.shadow`.
    pub source: String,
    pub tag: Option<String>,
}

/// The teacher's answer for one input.
#[derive(Debug, Clone, PartialEq)]
pub struct Escalation {
    pub label: String,
    pub usage: Usage,
    /// Dollars this call cost (0 when it came from a response cache).
    pub cost_usd: f64,
    /// Answered from the teach cache without a paid call.
    pub cached: bool,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum EscalateError {
    #[error("teacher timed out after {0:?}")]
    Timeout(Duration),
    /// The message never contains the API key: providers do not echo it and we never add it.
    #[error("teacher call failed: {0}")]
    Failed(String),
    #[error("teacher answered `{0}`, which is not one of the task's labels")]
    InvalidLabel(String),
}

/// Answers one input (its text and context) with the premium model, in the served model's
/// notation.
pub trait Escalator: Send + Sync {
    fn label<'a>(
        &'a self,
        input: PromptInput<'a>,
        ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<Escalation, EscalateError>>;

    /// The teacher model's name, for metrics and `saved_usd` estimates.
    fn teacher_model(&self) -> String;

    /// `text`'s length in the teacher's tokens, when this escalator can count them.
    fn input_tokens(&self, _text: &str) -> Option<usize> {
        None
    }

    /// `text` cut to at most `max_tokens` of the teacher's tokens.
    fn truncate_input(&self, text: &str, max_tokens: usize) -> String {
        text.chars().take(max_tokens.saturating_mul(4)).collect()
    }
}

/// What one teacher call would cost for `text`, to report dollars saved when the student answers.
/// Token counts are estimated at 4 characters per token: the exact count needs the provider's
/// tokenizer, and the saving is an estimate either way.
#[derive(Debug, Clone)]
pub struct CostEstimator {
    price: Option<ModelPrice>,
    fixed_prompt_chars: usize,
    completion_tokens: u64,
}

impl CostEstimator {
    pub fn new(spec: &TaskSpec, price: Option<ModelPrice>) -> Self {
        let fixed_prompt_chars = spec.teacher.system_prompt.len() + spec.render_user("").len();
        Self {
            price,
            fixed_prompt_chars,
            // The task's typical reply with its longest label.
            completion_tokens: spec
                .labels
                .names
                .iter()
                .map(|l| spec.example_reply(l).len() as u64 / 4 + 1)
                .max()
                .unwrap_or(1),
        }
    }
    pub fn none() -> Self {
        Self {
            price: None,
            fixed_prompt_chars: 0,
            completion_tokens: 0,
        }
    }
    pub fn estimate(&self, text: &str) -> f64 {
        match &self.price {
            None => 0.0,
            Some(p) => p.cost(
                &Usage {
                    // Chat framing adds a handful of tokens per message.
                    prompt_tokens: ((self.fixed_prompt_chars + text.len()) / 4 + 1) as u64 + 10,
                    completion_tokens: self.completion_tokens,
                    ..Default::default()
                },
                false,
            ),
        }
    }
}
