//! Hosted models as students (`--api provider:model`): a cheaper or fine-tuned API model is an
//! option too, and the playbook's comparison (premium vs mini vs fine-tuned vs local) needs its
//! real token costs. They are asked through the teach crate's client, so they get the same
//! prompt, retries, rate limits, response cache and ledger rows as the teacher.

use crate::error::{EvalError, Result};
use distill_core::spec::PromptInput;
use distill_core::spec::Provider;
use distill_core::TaskSpec;
use distill_teach::{CallContext, ClientOptions, LabelOutcome, TeacherClient};
use std::path::PathBuf;
use std::sync::Arc;

/// One `--api` argument: `provider:model`, optionally `@base-url` (e.g. a sim-teacher or a
/// self-hosted OpenAI-compatible server).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiStudentSpec {
    pub provider: Provider,
    pub model: String,
    pub base_url: Option<String>,
}

impl ApiStudentSpec {
    pub fn parse(arg: &str) -> Result<Self> {
        let bad = |why: &str| {
            EvalError::Invalid(format!(
                "--api `{arg}`: {why}; expected provider:model[@base-url], e.g. openai:gpt-4o-mini \
                 or openai:my-model@http://127.0.0.1:8089/v1"
            ))
        };
        let (head, base_url) = match arg.split_once('@') {
            Some((h, u)) if u.starts_with("http://") || u.starts_with("https://") => {
                (h, Some(u.trim_end_matches('/').to_string()))
            }
            Some(_) => {
                return Err(bad(
                    "the base URL after `@` must start with http:// or https://",
                ))
            }
            None => (arg, None),
        };
        let (provider, model) = head.split_once(':').ok_or_else(|| bad("no provider"))?;
        let provider = match provider {
            "openai" => Provider::Openai,
            "anthropic" => Provider::Anthropic,
            other => {
                return Err(bad(&format!(
                    "unknown provider `{other}` (openai, anthropic)"
                )))
            }
        };
        if model.trim().is_empty() {
            return Err(bad("no model name"));
        }
        Ok(Self {
            provider,
            model: model.trim().to_string(),
            base_url,
        })
    }

    /// The option's name in the report.
    pub fn name(&self) -> String {
        format!("{}:{}", self.provider.as_str(), self.model)
    }
}

/// What an API student answered and what it cost.
pub struct ApiRun {
    pub labels: Vec<Option<usize>>,
    pub bill: ApiBill,
}

/// What every kind's API run shares: its price per request and how its calls went.
pub struct ApiBill {
    /// Mean real-time cost per request at the model's price (cached answers priced as if paid,
    /// because in production they would be).
    pub per_request_usd: f64,
    pub batch_per_request_usd: f64,
    /// Latencies of the calls that went to the network.
    pub latency_ms: Vec<f64>,
    pub invalid: usize,
    pub failed: usize,
    pub priced: bool,
    pub base_url: String,
}

pub struct ApiRunOptions {
    pub cache_path: Option<PathBuf>,
    pub ledger_path: Option<PathBuf>,
    pub prices: Option<distill_core::prices::PriceTable>,
    pub concurrency: usize,
    pub progress: bool,
}

/// Asks `who` for every text. A fatal provider error (bad key, no quota) stops the eval; a
/// failed or invalid answer counts as wrong for that item.
pub fn run_api_student(
    spec: &TaskSpec,
    who: &ApiStudentSpec,
    texts: &[String],
    space: &crate::answer_space::AnswerSpace,
    opts: &ApiRunOptions,
) -> Result<ApiRun> {
    let inputs: Vec<PromptInput> = texts.iter().map(PromptInput::from).collect();
    let (outcomes, mut bill) = ask_all(spec, who, &inputs, opts)?;
    let mut labels = Vec::with_capacity(texts.len());
    for o in &outcomes {
        let answer = o.output.as_ref().and_then(|out| out.answer_text());
        let label = answer.as_deref().and_then(|l| space.index_of(l));
        match (&o.output, &answer, label) {
            (Some(_), Some(_), None) => bill.invalid += 1,
            (Some(_), None, _) => bill.failed += 1,
            _ => {}
        }
        labels.push(label);
    }
    Ok(ApiRun { labels, bill })
}

/// Asks `who` for every input (text and context) through the teach client, in input order:
/// the outcomes and the bill. `invalid` and `failed` count the outcomes the client itself
/// marked; a kind that rejects an answer it was given adds to `invalid`.
pub fn ask_all(
    spec: &TaskSpec,
    who: &ApiStudentSpec,
    inputs: &[PromptInput],
    opts: &ApiRunOptions,
) -> Result<(Vec<LabelOutcome>, ApiBill)> {
    let client = TeacherClient::new(
        spec,
        ClientOptions {
            base_url: who.base_url.clone(),
            provider: Some(who.provider),
            model: Some(who.model.clone()),
            cache_path: opts.cache_path.clone(),
            ledger_path: opts.ledger_path.clone(),
            prices: opts.prices.clone(),
            ..Default::default()
        },
    )
    .map_err(|e| EvalError::Other(format!("--api {}: {e}", who.name())))?;
    let client = Arc::new(client);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| EvalError::Other(format!("tokio runtime: {e}")))?;
    let bar = if opts.progress {
        let b = indicatif::ProgressBar::new(inputs.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} {bar:30} {pos}/{len} {per_sec} ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.set_prefix(who.name());
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let outcomes = rt.block_on(async {
        use futures::stream::{self, StreamExt};
        let ctx = CallContext::new("eval");
        let mut results = vec![None; inputs.len()];
        let mut spent = 0.0;
        let mut stream = stream::iter(inputs.iter().enumerate())
            .map(|(i, input)| {
                let client = client.clone();
                let ctx = ctx.clone();
                let input = *input;
                async move { (i, client.label(input, &ctx).await) }
            })
            .buffer_unordered(opts.concurrency.max(1));
        while let Some((i, r)) = stream.next().await {
            let o = r.map_err(|e| EvalError::Other(format!("--api {}: {e}", who.name())))?;
            if !o.cached {
                spent += o.cost_usd;
            }
            bar.set_message(format!("${spent:.4}"));
            bar.inc(1);
            results[i] = Some(o);
        }
        Ok::<_, EvalError>(results)
    })?;
    bar.finish_and_clear();
    let outcomes: Vec<LabelOutcome> = outcomes.into_iter().flatten().collect();
    let mut bill = ApiBill {
        per_request_usd: 0.0,
        batch_per_request_usd: 0.0,
        latency_ms: Vec::new(),
        invalid: 0,
        failed: 0,
        priced: client.price().is_some(),
        base_url: client.base_url().to_string(),
    };
    for o in &outcomes {
        bill.per_request_usd += client.cost(&o.usage, false);
        bill.batch_per_request_usd += client.cost(&o.usage, true);
        if !o.cached {
            bill.latency_ms.push(o.latency_ms as f64);
        }
        if o.output.is_none() {
            if o.status == distill_core::record::RecordStatus::Invalid {
                bill.invalid += 1;
            } else {
                bill.failed += 1;
            }
        }
    }
    let n = inputs.len().max(1) as f64;
    bill.per_request_usd /= n;
    bill.batch_per_request_usd /= n;
    Ok((outcomes, bill))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_provider_model_and_base_url() {
        let s = ApiStudentSpec::parse("openai:gpt-4o-mini").unwrap();
        assert_eq!(
            (s.provider, s.model.as_str(), s.base_url),
            (Provider::Openai, "gpt-4o-mini", None)
        );
        let s = ApiStudentSpec::parse("anthropic:claude-3-5-haiku-latest@http://127.0.0.1:9/v1/")
            .unwrap();
        assert_eq!(s.provider, Provider::Anthropic);
        assert_eq!(s.base_url.as_deref(), Some("http://127.0.0.1:9/v1"));
        assert_eq!(s.name(), "anthropic:claude-3-5-haiku-latest");
        for bad in ["gpt-4o", "google:gemini", "openai:", "openai:x@ftp://h"] {
            let e = ApiStudentSpec::parse(bad).unwrap_err().to_string();
            assert!(e.contains("provider:model"), "{bad}: {e}");
        }
    }
}
