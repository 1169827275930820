//! Escalation: asking the premium teacher when the student is unsure.
//!
//! The server only knows the small [`Escalator`] trait, so the cascade can be tested with any
//! teacher and swapped between the teach crate's client and the plain HTTP one here.

use distill_core::prices::ModelPrice;
use distill_core::{TaskSpec, Usage};
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// Labels one text with the premium model.
pub trait Escalator: Send + Sync {
    fn label<'a>(
        &'a self,
        text: &'a str,
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

/// A direct OpenAI-compatible Chat Completions escalator (OpenAI, vLLM, llama.cpp, the
/// sim-teacher). Used when the teach crate's client is not wired in; writes the same ledger rows.
pub struct HttpEscalator {
    http: reqwest::Client,
    spec: Arc<TaskSpec>,
    url: String,
    /// Read from the env var the spec names; only ever put in the Authorization header.
    api_key: Option<String>,
    price: Option<ModelPrice>,
    price_version: String,
    ledger: Option<Arc<distill_core::ledger::Ledger>>,
}

impl HttpEscalator {
    pub fn new(
        spec: Arc<TaskSpec>,
        base_url: Option<&str>,
        ledger: Option<Arc<distill_core::ledger::Ledger>>,
        timeout: Duration,
    ) -> Result<Self, EscalateError> {
        let table = distill_core::prices::PriceTable::builtin();
        let base = base_url
            .unwrap_or_else(|| spec.base_url())
            .trim_end_matches('/');
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| EscalateError::Failed(format!("cannot build HTTP client: {e}")))?;
        Ok(Self {
            http,
            url: format!("{base}/chat/completions"),
            api_key: std::env::var(spec.api_key_env())
                .ok()
                .filter(|k| !k.is_empty()),
            price: table.get(&spec.teacher.model).cloned(),
            price_version: table.version.clone(),
            spec,
            ledger,
        })
    }

    fn request_body(&self, text: &str) -> serde_json::Value {
        let t = &self.spec.teacher;
        let mut body = serde_json::json!({
            "model": t.model,
            "messages": [
                {"role": "system", "content": t.system_prompt},
                {"role": "user", "content": self.spec.render_user(text)},
            ],
            "temperature": t.temperature,
        });
        let field = match t.max_tokens_field {
            distill_core::spec::MaxTokensField::MaxTokens => "max_tokens",
            distill_core::spec::MaxTokensField::MaxCompletionTokens => "max_completion_tokens",
        };
        body[field] = t.max_tokens.into();
        match self.spec.output.format {
            distill_core::spec::ResponseFormat::JsonSchema => {
                body["response_format"] = serde_json::json!({
                    "type": "json_schema",
                    "json_schema": {"name": "label", "strict": true, "schema": self.spec.output_schema()}
                })
            }
            distill_core::spec::ResponseFormat::JsonObject => {
                body["response_format"] =
                    serde_json::json!({"type": "json_object", "schema": self.spec.output_schema()})
            }
            distill_core::spec::ResponseFormat::Text => {}
        }
        body
    }

    fn record(
        &self,
        text: &str,
        usage: Usage,
        cost: f64,
        started: Instant,
        status: &str,
        ctx: &CallContext,
    ) {
        let Some(ledger) = &self.ledger else { return };
        let row = distill_core::ledger::LedgerRow {
            id: None,
            ts: distill_core::ledger::LedgerRow::now(),
            task: self.spec.name.clone(),
            provider: self.spec.teacher.provider.as_str().into(),
            model: self.spec.teacher.model.clone(),
            request_hash: distill_core::fsutil::sha256_hex(text.as_bytes()),
            usage,
            cost_usd: cost,
            latency_ms: started.elapsed().as_millis() as u64,
            status: status.into(),
            batch_id: None,
            price_version: self.price_version.clone(),
            source: ctx.source.clone(),
            tag: ctx.tag.clone(),
        };
        if let Err(e) = ledger.append(&row) {
            tracing::warn!("could not write the escalation to the ledger: {e}");
        }
    }
}

/// Pulls the label out of a teacher reply: `{"label": "x"}`, or a bare label.
pub fn parse_label_reply(content: &str) -> String {
    let trimmed = content.trim();
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(trimmed) {
        if let Some(l) = v.get("label").and_then(|l| l.as_str()) {
            return l.trim().to_string();
        }
        if let Some(l) = v.as_str() {
            return l.trim().to_string();
        }
    }
    trimmed.trim_matches('"').trim().to_string()
}

impl Escalator for HttpEscalator {
    fn label<'a>(
        &'a self,
        text: &'a str,
        ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<Escalation, EscalateError>> {
        Box::pin(async move {
            let started = Instant::now();
            let mut req = self.http.post(&self.url).json(&self.request_body(text));
            if let Some(k) = &self.api_key {
                req = req.bearer_auth(k);
            }
            let resp = req.send().await.map_err(|e| {
                if e.is_timeout() {
                    EscalateError::Timeout(started.elapsed())
                } else {
                    // without_url: the URL may carry credentials for some self-hosted servers.
                    EscalateError::Failed(e.without_url().to_string())
                }
            })?;
            let status = resp.status();
            let body: serde_json::Value = resp.json().await.map_err(|e| {
                EscalateError::Failed(format!("unreadable reply: {}", e.without_url()))
            })?;
            if !status.is_success() {
                let msg = body["error"]["message"].as_str().unwrap_or("no message");
                return Err(EscalateError::Failed(format!("HTTP {status}: {msg}")));
            }
            let u = &body["usage"];
            let usage = Usage {
                prompt_tokens: u["prompt_tokens"].as_u64().unwrap_or(0),
                cached_tokens: u["prompt_tokens_details"]["cached_tokens"]
                    .as_u64()
                    .unwrap_or(0),
                completion_tokens: u["completion_tokens"].as_u64().unwrap_or(0),
                reasoning_tokens: u["completion_tokens_details"]["reasoning_tokens"]
                    .as_u64()
                    .unwrap_or(0),
                cache_write_tokens: 0,
            };
            let cost = self
                .price
                .as_ref()
                .map(|p| p.cost(&usage, false))
                .unwrap_or(0.0);
            let content = body["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or("");
            let label = parse_label_reply(content);
            if !self.spec.labels.contains(&label) {
                self.record(text, usage, cost, started, "invalid", ctx);
                return Err(EscalateError::InvalidLabel(label));
            }
            self.record(text, usage, cost, started, "ok", ctx);
            Ok(Escalation {
                label,
                usage,
                cost_usd: cost,
                cached: false,
            })
        })
    }

    fn teacher_model(&self) -> String {
        self.spec.teacher.model.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_json_and_bare_labels() {
        assert_eq!(parse_label_reply(r#" {"label": "refund"} "#), "refund");
        assert_eq!(parse_label_reply("\"refund\""), "refund");
        assert_eq!(parse_label_reply("refund\n"), "refund");
    }
}
