//! `--dry-run`: what a job will cost and how long it will take, before anything is spent.
//!
//! Prompt tokens are counted with tiktoken-rs for OpenAI models (the model's own encoding,
//! `o200k_base` for unknown names). Anthropic and other providers do not publish their
//! tokenizers, so their prompts are approximated as `ceil(bytes / 3.5)` tokens — slightly
//! high for English, which is the safe direction for a budget. Output tokens are estimated
//! from the schema: the JSON `{"label": "<label>"}` with an average label (a multilabel task:
//! `{"labels": [...]}` with two average labels), capped at `max_tokens`; the worst case
//! assumes every reply uses all of `max_tokens`.

use crate::client::TeacherClient;
use crate::error::Result;
use distill_core::input::{read_inputs, Columns};
use distill_core::{Provider, TaskSpec, Usage};
use std::path::Path;
use std::time::Duration;
use tiktoken_rs::CoreBPE;

/// Typical per-request latency of a hosted model for a short classification reply; only
/// used for the time estimate.
const ASSUMED_LATENCY: Duration = Duration::from_millis(800);

pub struct Tokenizer {
    bpe: Option<CoreBPE>,
}

impl Tokenizer {
    pub fn for_model(provider: Provider, model: &str) -> Self {
        let bpe = match provider {
            Provider::Openai => tiktoken_rs::get_bpe_from_model(model)
                .or_else(|_| tiktoken_rs::o200k_base())
                .ok(),
            Provider::Anthropic => None,
        };
        Tokenizer { bpe }
    }
    pub fn count(&self, text: &str) -> u64 {
        match &self.bpe {
            Some(b) => b.encode_ordinary(text).len() as u64,
            None => (text.len() as f64 / 3.5).ceil() as u64,
        }
    }
    pub fn is_exact(&self) -> bool {
        self.bpe.is_some()
    }
    /// The longest prefix of `text` that is at most `max_tokens` tokens.
    pub fn truncate(&self, text: &str, max_tokens: usize) -> String {
        match &self.bpe {
            Some(b) => {
                let tokens = b.encode_ordinary(text);
                if tokens.len() <= max_tokens {
                    return text.to_string();
                }
                // A cut can split a character's bytes: drop the broken tail.
                let mut n = max_tokens;
                loop {
                    match b.decode(tokens[..n].to_vec()) {
                        Ok(s) => return s,
                        Err(_) if n > 0 => n -= 1,
                        Err(_) => return String::new(),
                    }
                }
            }
            None => {
                let max_bytes = (max_tokens as f64 * 3.5) as usize;
                let mut end = max_bytes.min(text.len());
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text[..end].to_string()
            }
        }
    }
}

/// Per-job constants for fast per-input estimates (used by `--max-spend` on the hot path).
#[derive(Debug, Clone)]
pub struct Estimator {
    /// Tokens of everything but the input text: system prompt, template, label list, framing.
    pub overhead_tokens: u64,
    /// Expected reply tokens.
    pub output_tokens: u64,
    pub max_tokens: u64,
}

impl Estimator {
    /// The client's estimator (its tokenizer is loaded once per client).
    pub fn new(_spec: &TaskSpec, client: &TeacherClient) -> Self {
        client.counter().1.clone()
    }

    pub fn with_tokenizer(spec: &TaskSpec, tok: &Tokenizer) -> Self {
        // ~4 tokens of chat framing per message, 3 to prime the reply (OpenAI's cookbook rule).
        let overhead =
            tok.count(&spec.teacher.system_prompt) + tok.count(&spec.render_user("")) + 11;
        let n = spec.labels.names.len().max(1) as u64;
        let avg_label: u64 = spec
            .labels
            .names
            .iter()
            .map(|l| tok.count(&spec.example_reply(l)))
            .sum::<u64>()
            / n;
        let max_tokens = u64::from(spec.teacher.max_tokens);
        Estimator {
            overhead_tokens: overhead,
            output_tokens: avg_label.clamp(1, max_tokens),
            max_tokens,
        }
    }

    /// A cheap upper bound (bytes / 3 for the text) for budget reservations.
    pub fn worst_case_cost(&self, client: &TeacherClient, text: &str) -> f64 {
        let usage = Usage {
            prompt_tokens: self.overhead_tokens + text.len() as u64 / 3 + 1,
            completion_tokens: self.max_tokens,
            ..Default::default()
        };
        client.cost(&usage, false)
    }
}

/// The dry-run report.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    pub model: String,
    pub requests: u64,
    /// First requests already in the response cache (free).
    pub cached: u64,
    pub prompt_tokens: u64,
    pub output_tokens: u64,
    pub tokens_exact: bool,
    pub expected_usd: f64,
    /// Every reply using all of `max_tokens`.
    pub worst_case_usd: f64,
    pub priced: bool,
    pub batch: bool,
    pub expected_time: Duration,
}

impl std::fmt::Display for Estimate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "dry run: {} requests to {}{} ({} already cached, free)",
            self.requests,
            self.model,
            if self.batch { " via the Batch API" } else { "" },
            self.cached
        )?;
        writeln!(
            f,
            "prompt tokens: {} ({}); expected output tokens: {}",
            self.prompt_tokens,
            if self.tokens_exact {
                "counted with tiktoken"
            } else {
                "approximated as bytes/3.5"
            },
            self.output_tokens
        )?;
        if self.priced {
            writeln!(
                f,
                "expected cost: ${:.4} (worst case ${:.4} if every reply used max_tokens)",
                self.expected_usd, self.worst_case_usd
            )?;
        } else {
            writeln!(
                f,
                "expected cost: unknown (model not in the price table; use --prices FILE)"
            )?;
        }
        write!(
            f,
            "expected time: ~{:.0}s{}",
            self.expected_time.as_secs_f64(),
            if self.batch {
                " plus batch queueing (up to 24 h)"
            } else {
                ""
            }
        )
    }
}

/// Counts a job's tokens and prices it. Nothing is sent.
pub fn estimate(
    spec: &TaskSpec,
    client: &TeacherClient,
    input: &Path,
    total: u64,
    concurrency: usize,
    batch: bool,
) -> Result<Estimate> {
    let (tok, est) = client.counter();
    let mut prompt = 0u64;
    let mut cached = 0u64;
    let mut requests = 0u64;
    for item in read_inputs(input, spec.input.format, &Columns::from(&spec.input))? {
        let item = item?;
        if requests >= total {
            break;
        }
        requests += 1;
        let (_, hash) = client.request_for(&item);
        if let Some(c) = client.cache() {
            if c.get(&hash)?.is_some() {
                cached += 1;
                continue;
            }
        }
        prompt += client.prompt_tokens(&item);
    }
    let paid = requests - cached;
    let output = paid * est.output_tokens;
    let usage = |completion| Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        ..Default::default()
    };
    let rpm = spec.teacher.rpm;
    let tpm = spec.teacher.tpm;
    let mut secs = paid as f64 * ASSUMED_LATENCY.as_secs_f64() / concurrency.max(1) as f64;
    if rpm > 0 {
        secs = secs.max(paid as f64 / rpm as f64 * 60.0);
    }
    if tpm > 0 {
        secs = secs.max((prompt + paid * est.max_tokens) as f64 / tpm as f64 * 60.0);
    }
    Ok(Estimate {
        model: client.model().to_string(),
        requests,
        cached,
        prompt_tokens: prompt,
        output_tokens: output,
        tokens_exact: tok.is_exact(),
        expected_usd: client.cost(&usage(output), batch),
        worst_case_usd: client.cost(&usage(paid * est.max_tokens), batch),
        priced: client.price().is_some(),
        batch,
        expected_time: Duration::from_secs_f64(secs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: &str) -> TaskSpec {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("task.toml");
        std::fs::write(
            &path,
            format!(
                "name = \"t\"\nkind = \"{kind}\"\n[input]\ntext_column = \"text\"\n[labels]\nvalues = [\"PlayMusic\", \"GetWeather\"]\n\
                 [teacher]\nprovider = \"openai\"\nmodel = \"gpt-4o\"\nmax_tokens = 48\n"
            ),
        )
        .unwrap();
        TaskSpec::load(&path).unwrap()
    }

    #[test]
    fn a_label_set_reply_is_estimated_longer_than_one_label() {
        let tok = Tokenizer::for_model(Provider::Openai, "gpt-4o");
        let one = Estimator::with_tokenizer(&spec("classify"), &tok).output_tokens;
        let set = Estimator::with_tokenizer(&spec("multilabel"), &tok).output_tokens;
        // Structured outputs come back compact, as serde_json writes them.
        let two = tok.count("{\"labels\":[\"PlayMusic\",\"PlayMusic\"]}");
        assert!(set > one, "set {set} vs one {one}");
        assert!(
            set.abs_diff(two) <= 1,
            "set {set} vs a two-label reply {two}"
        );
    }
}
