//! [`TeacherClient`]: one labelled answer per input text, whatever it takes — the response
//! cache first, then the provider under rate limits with retries, then one repair request
//! if the reply is not a valid label. Every paid call becomes a ledger row.
//!
//! Servers that take `response_format: {"type": "json_object", "schema": ...}` but not
//! `json_schema` (llama-cpp-python's server answers the latter with HTTP 500 and a validation
//! error) are detected on the first rejection: the request is resent at once with the schema
//! in a `json_object` format, and so is every later request of this client. The cache key
//! stays that of the spec's request, so a rerun hits the cache either way.
//!
//! This is the public entry point other stages use: `eval` runs `--api provider:model`
//! students through it and `serve` escalates unsure inputs to it.

use crate::cache::{CacheEntry, ResponseCache};
use crate::error::{redact, Result, TeachError};
use crate::label::{parse_reply, repair_for};
use crate::provider::{Msg, Reply, Wire};
use crate::ratelimit::RateLimiter;
use distill_core::conversation::Turn;
use distill_core::input::InputItem;
use distill_core::ledger::{Ledger, LedgerRow, UNANSWERED};
use distill_core::prices::{ModelPrice, PriceTable};
use distill_core::spec::{PromptInput, ResponseFormat};
use distill_core::{Provider, RecordStatus, TaskOutput, TaskSpec, TeacherRecord, Usage};
use rand::Rng;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

mod forward;
mod transport;

pub use forward::{Accepted, Forwarded, PaidCall};

/// How a [`TeacherClient`] differs from what the task spec says.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Overrides `teacher.base_url` (e.g. the sim-teacher's `http://127.0.0.1:8089/v1`).
    pub base_url: Option<String>,
    pub provider: Option<Provider>,
    pub model: Option<String>,
    /// The API key itself; when `None` it is read from the env var `spec.api_key_env()`.
    pub api_key: Option<String>,
    /// Response cache database; `None` disables caching.
    pub cache_path: Option<PathBuf>,
    /// Spend ledger database; `None` records nothing.
    pub ledger_path: Option<PathBuf>,
    /// Records [`TeacherClient::forward`]'s calls through this batching writer (shared by a
    /// gateway's tiers) instead of the client's own connection to `ledger_path`.
    pub ledger_writer: Option<std::sync::Arc<crate::ledger_writer::LedgerWriter>>,
    /// Price table; the built-in one when `None`.
    pub prices: Option<PriceTable>,
    /// Price the model as this price-table entry (a route tier's `price_as`).
    pub price_as: Option<String>,
    /// Retries after the first attempt on retryable errors (default 6).
    pub max_retries: Option<u32>,
    /// First backoff delay (default 250 ms); doubles per retry up to 8 s, with jitter.
    pub backoff_base: Option<Duration>,
}

/// Who is spending: recorded on every ledger row.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// `teach`, `eval` or `serve`.
    pub source: String,
    /// Free-form tag (serve's `X-Distill-Tag`).
    pub tag: Option<String>,
    /// The job's budget, asked before a retry that follows an unanswered attempt.
    pub guard: Option<SpendGuard>,
}

/// Asked before retrying a call whose last attempt went unanswered (and may be billed): `true`
/// when the job's budget has room for another attempt costing the given dollars, and holds
/// it; `false` to give the call up. A call's reservation covers one answer; each unanswered
/// attempt costs as much again, so without this a run of timeouts could overshoot the cap.
#[derive(Clone)]
pub struct SpendGuard(pub std::sync::Arc<dyn Fn(f64) -> bool + Send + Sync>);

impl std::fmt::Debug for SpendGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpendGuard")
    }
}

impl CallContext {
    pub fn new(source: impl Into<String>) -> Self {
        CallContext {
            source: source.into(),
            tag: None,
            guard: None,
        }
    }
    pub fn teach() -> Self {
        Self::new("teach")
    }
}

/// The result of labelling one text.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelOutcome {
    /// The validated output (canonical spelling) when `status` is `Ok`.
    pub output: Option<TaskOutput>,
    pub status: RecordStatus,
    /// The teacher's last raw reply, if any.
    pub raw: Option<String>,
    /// Why the outcome is `Invalid` or `Failed`.
    pub error: Option<String>,
    /// Usage summed over every call made for this text (cached ones included).
    pub usage: Usage,
    /// Dollars actually spent now (0 when every call was answered from the cache).
    pub cost_usd: f64,
    pub latency_ms: u64,
    /// True when no call reached the provider.
    pub cached: bool,
    /// Hash of the first request: joins the outcome to its ledger row and cache entry.
    pub request_hash: String,
    /// Provider calls paid for (0, 1, or 2 with a repair).
    pub paid_calls: u32,
}

impl LabelOutcome {
    /// The teach dataset line for this outcome.
    pub fn to_record(
        &self,
        item: &InputItem,
        provider: &str,
        model: &str,
        batch: bool,
    ) -> TeacherRecord {
        TeacherRecord {
            context: item.context.clone(),
            id: item.id.clone(),
            text: item.text.clone(),
            status: self.status,
            output: self.output.clone(),
            gold: item.gold.clone(),
            raw: self.raw.clone(),
            error: self.error.clone(),
            provider: provider.to_string(),
            model: model.to_string(),
            usage: self.usage,
            cost_usd: self.cost_usd,
            latency_ms: self.latency_ms,
            cached: self.cached,
            batch,
            request_hash: self.request_hash.clone(),
        }
    }
}

/// A free-form answer ([`TeacherClient::complete_deferred`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The reply, or `None` when the request failed (see `error`).
    pub text: Option<String>,
    pub error: Option<String>,
    pub usage: Usage,
    pub cost_usd: f64,
    pub latency_ms: u64,
    /// Answered from the cache (nothing paid).
    pub cached: bool,
    /// Attempts that may be billed: the one answered and any unanswered before it.
    pub paid_calls: u32,
    pub request_hash: String,
}

/// Ledger rows and cache entries not yet written (the runner writes them with its journal).
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct Pending {
    #[serde(default, rename = "l")]
    pub ledger: Vec<LedgerRow>,
    #[serde(default, rename = "c")]
    pub cache: Vec<CacheEntry>,
}

pub struct TeacherClient {
    spec: TaskSpec,
    wire: Wire,
    http: reqwest::Client,
    key: String,
    cache: Option<ResponseCache>,
    ledger: Option<std::sync::Arc<Ledger>>,
    ledger_writer: Option<std::sync::Arc<crate::ledger_writer::LedgerWriter>>,
    prices: PriceTable,
    price: Option<ModelPrice>,
    limiter: RateLimiter,
    max_retries: u32,
    backoff_base: Duration,
    timeout: Duration,
    /// Paid replies not yet committed to the cache, so duplicates in flight never pay twice.
    recent: Mutex<HashMap<String, Reply>>,
    inflight: Mutex<HashMap<String, watch::Receiver<bool>>>,
    /// Set once the server rejected `json_schema`: the schema goes as `json_object` from then on.
    schema_as_json_object: AtomicBool,
    /// The teacher's tokenizer and the job's fixed prompt tokens (loaded on first use): the
    /// rate limiter and in-flight ledger rows count prompts as the provider does.
    counter: OnceLock<(crate::dry_run::Tokenizer, crate::dry_run::Estimator)>,
}

/// True when an error reply says the server does not accept `response_format` of type
/// `json_schema`, e.g. llama-cpp-python's `500 ... 'loc': ('body', 'response_format', 'type'),
/// 'msg': "Input should be 'text' or 'json_object'", 'input': 'json_schema'`. Rate-limit and
/// quota statuses never count; a complaint about the schema itself does not name the
/// alternatives, so it is not mistaken for one.
pub(crate) fn rejects_json_schema(status: u16, message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    matches!(status, 400 | 404 | 415 | 422 | 500 | 501)
        && m.contains("json_schema")
        && [
            "json_object",
            "not supported",
            "unsupported",
            "unknown variant",
        ]
        .iter()
        .any(|w| m.contains(w))
}

/// True for `localhost`, `127.x.x.x` and `[::1]` URLs: where a dummy key is acceptable.
pub fn is_loopback(url: &str) -> bool {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let host_port = rest.split('/').next().unwrap_or("");
    let host = if let Some(h) = host_port.strip_prefix('[') {
        h.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    host == "localhost" || host.starts_with("127.") || host == "::1"
}

/// The API key for a teacher: explicit, else the env var, else (loopback only) a dummy.
pub fn resolve_api_key(spec: &TaskSpec, base_url: &str, explicit: Option<&str>) -> Result<String> {
    if let Some(k) = explicit.filter(|k| !k.is_empty()) {
        return Ok(k.to_string());
    }
    let var = spec.api_key_env();
    match std::env::var(var) {
        Ok(k) if !k.trim().is_empty() => Ok(k.trim().to_string()),
        _ if is_loopback(base_url) => Ok("distill-local".to_string()),
        _ => Err(TeachError::MissingKey {
            var: var.to_string(),
        }),
    }
}

pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok()) {
        return Some(Duration::from_secs_f64((ms / 1000.0).clamp(0.0, 60.0)));
    }
    get("retry-after")
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|s| Duration::from_secs_f64(s.clamp(0.0, 60.0)))
}

impl TeacherClient {
    /// Builds a client. Fails fast on a missing API key, an unreadable cache or ledger.
    pub fn new(spec: &TaskSpec, opts: ClientOptions) -> Result<Self> {
        let provider = opts.provider.unwrap_or(spec.teacher.provider);
        let base_url = opts.base_url.clone().unwrap_or_else(|| {
            if opts.provider.is_some_and(|p| p != spec.teacher.provider) {
                provider.default_base_url().to_string()
            } else {
                spec.base_url().to_string()
            }
        });
        let model = opts
            .model
            .clone()
            .unwrap_or_else(|| spec.teacher.model.clone());
        let mut key_spec = spec.clone();
        if provider != spec.teacher.provider && spec.teacher.api_key_env.is_none() {
            key_spec.teacher.provider = provider;
        }
        let key = resolve_api_key(&key_spec, &base_url, opts.api_key.as_deref())?;
        let wire = Wire::from_spec(spec, &base_url, provider, &model);
        // A connection that is not made in time fails as a connection error (never sent, not
        // billed) before the request's own timeout can fire and count it as unanswered.
        let timeout = Duration::from_secs(spec.teacher.timeout_s.max(1));
        let mut http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(1024)
            .connect_timeout(Duration::from_secs(10).min(timeout / 2));
        if is_loopback(&base_url) {
            http = http.no_proxy();
        }
        let http = http
            .build()
            .map_err(|e| TeachError::Invalid(format!("cannot build the HTTP client: {e}")))?;
        let cache = opts
            .cache_path
            .as_ref()
            .map(ResponseCache::open)
            .transpose()?;
        let ledger = opts
            .ledger_path
            .as_ref()
            .map(|p| Ledger::open(p).map(std::sync::Arc::new))
            .transpose()?;
        let prices = opts.prices.clone().unwrap_or_else(PriceTable::builtin);
        let price_model = opts.price_as.clone().unwrap_or_else(|| model.clone());
        let price = prices.get(&price_model).cloned();
        if price.is_none() {
            tracing::warn!("model `{price_model}` is not in the price table; costs are recorded as $0 (use --prices FILE)");
        }
        Ok(TeacherClient {
            limiter: RateLimiter::new(spec.teacher.rpm, spec.teacher.tpm),
            spec: spec.clone(),
            wire,
            http,
            key,
            cache,
            ledger,
            ledger_writer: opts.ledger_writer.clone(),
            prices,
            price,
            max_retries: opts.max_retries.unwrap_or(6),
            backoff_base: opts.backoff_base.unwrap_or(Duration::from_millis(250)),
            timeout,
            recent: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            schema_as_json_object: AtomicBool::new(false),
            counter: OnceLock::new(),
        })
    }

    pub fn provider(&self) -> Provider {
        self.wire.provider
    }
    pub fn model(&self) -> &str {
        &self.wire.model
    }
    pub fn base_url(&self) -> &str {
        &self.wire.base_url
    }
    pub fn spec(&self) -> &TaskSpec {
        &self.spec
    }
    pub fn wire(&self) -> &Wire {
        &self.wire
    }
    pub fn prices(&self) -> &PriceTable {
        &self.prices
    }
    /// The teacher model's price, when the table knows it.
    pub fn price(&self) -> Option<&ModelPrice> {
        self.price.as_ref()
    }
    pub fn cache(&self) -> Option<&ResponseCache> {
        self.cache.as_ref()
    }
    pub fn ledger(&self) -> Option<&Ledger> {
        self.ledger.as_deref()
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }
    /// The API key, for the batch endpoints' headers (never for messages: see [`redact`]).
    pub(crate) fn key(&self) -> &str {
        &self.key
    }
    pub(crate) fn max_retries(&self) -> u32 {
        self.max_retries
    }
    pub(crate) fn retry_delay(&self, attempt: u32) -> Duration {
        self.backoff(attempt)
    }

    /// Makes a reply obtained elsewhere (a batch result) answer `hash` until it is persisted.
    pub(crate) fn remember(&self, hash: &str, reply: Reply) {
        self.recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(hash.to_string(), reply);
    }

    /// Cost of a call at this client's model price (0 when the model has no price).
    pub fn cost(&self, usage: &Usage, batch: bool) -> f64 {
        self.price
            .as_ref()
            .map(|p| p.cost(usage, batch))
            .unwrap_or(0.0)
    }

    /// The first request for a text: its JSON body and its cache key.
    pub fn request_for<'a>(
        &self,
        input: impl Into<PromptInput<'a>>,
    ) -> (serde_json::Value, String) {
        let input = input.into();
        let msgs = [Msg::user(
            self.spec.render_user_with(input.text, input.context),
        )];
        let body = self.wire.body(&msgs);
        let hash = self.hash_body(&body);
        (body, hash)
    }

    /// Everything that shapes this client's requests, component by component (see
    /// [`crate::journal::RequestShape`]): a journal made under another shape is not resumed.
    pub fn request_shape(&self) -> crate::journal::RequestShape {
        let short = |s: &str| distill_core::fsutil::sha256_hex(s.as_bytes())[..16].to_string();
        let spec = &self.spec;
        let labels: Vec<(&String, Option<&String>)> = spec
            .labels
            .names
            .iter()
            .map(|n| (n, spec.labels.descriptions.get(n)))
            .collect();
        let mut m = crate::journal::RequestShape::new();
        m.insert("provider".into(), self.wire.provider.as_str().into());
        m.insert("endpoint".into(), self.wire.endpoint());
        m.insert("model".into(), self.wire.model.clone());
        m.insert("system_prompt".into(), short(&self.wire.system));
        m.insert("user_template".into(), short(&spec.teacher.user_template));
        m.insert(
            "label_set".into(),
            short(&serde_json::to_string(&labels).unwrap_or_default()),
        );
        m.insert(
            "output_schema".into(),
            short(&format!("{:?} {}", self.wire.format, self.wire.schema)),
        );
        m.insert(
            "parameters".into(),
            format!(
                "{:?}={} temperature={}",
                self.wire.max_tokens_field, self.wire.max_tokens, self.wire.temperature
            ),
        );
        m.insert("request".into(), self.request_for("").1[..16].to_string());
        m
    }

    pub(crate) fn counter(&self) -> &(crate::dry_run::Tokenizer, crate::dry_run::Estimator) {
        self.counter.get_or_init(|| {
            let tok = crate::dry_run::Tokenizer::for_model(self.wire.provider, &self.wire.model);
            let est = crate::dry_run::Estimator::with_tokenizer(&self.spec, &tok);
            (tok, est)
        })
    }

    /// Prompt tokens of the first request for `text`, counted with the teacher's tokenizer
    /// (as `--dry-run` does): the fixed part is counted once per job.
    pub fn prompt_tokens<'a>(&self, input: impl Into<PromptInput<'a>>) -> u64 {
        let input = input.into();
        let (tok, est) = self.counter();
        let context: u64 = input
            .context
            .iter()
            .map(|(k, v)| tok.count(k) + tok.count(v) + 1)
            .sum();
        est.overhead_tokens + tok.count(input.text) + context
    }

    /// Tokens this client's requests were counted as against the tokens-per-minute limit:
    /// each request's prompt (the teacher's tokenizer) plus its `max_tokens`.
    pub fn rate_limit_tokens(&self) -> u64 {
        self.limiter.tokens_reserved()
    }

    /// `text` alone in the teacher's tokens.
    pub fn text_tokens(&self, text: &str) -> u64 {
        self.counter().0.count(text)
    }

    /// `text` cut to at most `max_tokens` of the teacher's tokens.
    pub fn truncate_text(&self, text: &str, max_tokens: usize) -> String {
        self.counter().0.truncate(text, max_tokens)
    }

    /// The cache key: provider, endpoint and the canonical request body (model, messages,
    /// parameters). The endpoint is part of it so sim-teacher answers never stand in for a
    /// real provider's.
    pub fn hash_body(&self, body: &serde_json::Value) -> String {
        let mut bytes = Vec::with_capacity(512);
        bytes.extend_from_slice(self.wire.provider.as_str().as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(self.wire.endpoint().as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(&serde_json::to_vec(body).unwrap_or_default());
        distill_core::fsutil::sha256_hex(&bytes)
    }

    /// Labels one text, writing ledger rows and cache entries before returning.
    pub async fn label<'a>(
        &self,
        input: impl Into<PromptInput<'a>>,
        ctx: &CallContext,
    ) -> Result<LabelOutcome> {
        let (out, pending) = self.label_deferred(input, ctx).await?;
        self.persist(&pending)?;
        Ok(out)
    }

    /// `result`, after writing `pending` when it is an error: the job stops there, and what a
    /// record's earlier calls were billed stays in the ledger.
    pub fn persist_on_error<T>(&self, result: Result<T>, pending: &Pending) -> Result<T> {
        if result.is_err() {
            self.persist(pending)?;
        }
        result
    }

    /// Writes pending ledger rows and cache entries, then drops them from the in-memory map.
    pub fn persist(&self, pending: &Pending) -> Result<()> {
        if let Some(l) = &self.ledger {
            if !pending.ledger.is_empty() {
                l.append_many(&pending.ledger)?;
            }
        }
        if let Some(c) = &self.cache {
            c.put_many(&pending.cache)?;
        }
        self.forget(pending.cache.iter().map(|e| e.hash.as_str()));
        Ok(())
    }

    /// Drops committed replies from the in-memory map.
    pub fn forget<'a>(&self, hashes: impl Iterator<Item = &'a str>) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        for h in hashes {
            recent.remove(h);
        }
    }

    /// The reply to the request `hash` if this client has it (the response cache, or a reply
    /// not yet committed to it), without asking anyone.
    pub fn cached_reply(&self, hash: &str) -> Result<Option<Reply>> {
        self.lookup(hash)
    }

    fn lookup(&self, hash: &str) -> Result<Option<Reply>> {
        if let Some(r) = self
            .recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(hash)
        {
            return Ok(Some(r.clone()));
        }
        match &self.cache {
            Some(c) => c.get(hash),
            None => Ok(None),
        }
    }

    /// Labels one text without writing anything; the caller persists `Pending`.
    pub async fn label_deferred<'a>(
        &self,
        input: impl Into<PromptInput<'a>>,
        ctx: &CallContext,
    ) -> Result<(LabelOutcome, Pending)> {
        let input = input.into();
        let text = input.text;
        let mut pending = Pending::default();
        let mut msgs = vec![Msg::user(self.spec.render_user_with(text, input.context))];
        let mut out = LabelOutcome {
            output: None,
            status: RecordStatus::Failed,
            raw: None,
            error: None,
            usage: Usage::default(),
            cost_usd: 0.0,
            latency_ms: 0,
            cached: true,
            request_hash: String::new(),
            paid_calls: 0,
        };
        let mut prompt_tokens = self.prompt_tokens(input);
        for attempt in 0..2 {
            let exchanged = self.exchange(&msgs, ctx, &mut pending, prompt_tokens).await;
            let ex = match self.persist_on_error(exchanged, &pending)? {
                Ok(ex) => ex,
                Err(failure) => {
                    if attempt == 0 {
                        out.request_hash = self.hash_body(&self.wire.body(&msgs));
                        out.cached = false;
                    }
                    out.status = RecordStatus::Failed;
                    out.error = Some(failure.message);
                    out.cost_usd += failure.cost;
                    out.paid_calls += failure.paid_calls;
                    return Ok((out, pending));
                }
            };
            if attempt == 0 {
                out.request_hash = ex.hash.clone();
            }
            out.usage.add(&ex.reply.usage);
            out.cost_usd += ex.cost;
            out.latency_ms += ex.latency_ms;
            out.cached &= ex.cached;
            out.paid_calls += ex.paid_calls;
            out.raw = Some(ex.reply.text.clone());
            let parsed = parse_reply(&ex.reply.text, &self.spec, text, self.wire.format);
            if let Some(row) = pending
                .ledger
                .iter_mut()
                .find(|r| r.request_hash == ex.hash && r.status != UNANSWERED)
            {
                row.status = if parsed.is_ok() { "ok" } else { "invalid" }.into();
            }
            match parsed {
                Ok(output) => {
                    out.output = Some(output);
                    out.status = RecordStatus::Ok;
                    out.error = None;
                    return Ok((out, pending));
                }
                Err(e) => {
                    out.status = RecordStatus::Invalid;
                    out.error = Some(e.clone());
                    let repair = repair_for(&e, &self.spec);
                    let tok = &self.counter().0;
                    prompt_tokens += tok.count(&ex.reply.text) + tok.count(&repair) + 8;
                    msgs.push(Msg::assistant(ex.reply.text));
                    msgs.push(Msg::user(repair));
                }
            }
        }
        Ok((out, pending))
    }

    /// One free-form answer to `text` (rendered with the spec's user template): cached,
    /// rate-limited, retried and ledgered like a label, without parsing or repair. Route
    /// tasks ask their tiers and their judge through it.
    pub async fn complete_deferred(
        &self,
        text: &str,
        ctx: &CallContext,
    ) -> Result<(Completion, Pending)> {
        let msgs = [Msg::user(self.spec.render_user(text))];
        self.complete_msgs_deferred(&msgs, self.prompt_tokens(text), ctx)
            .await
    }

    /// [`Self::complete_deferred`] for a conversation: its turns are sent as they are (no
    /// user template), after the spec's system prompt if it has one.
    pub async fn complete_turns_deferred(
        &self,
        turns: &[Turn],
        ctx: &CallContext,
    ) -> Result<(Completion, Pending)> {
        let tokens = self.prompt_tokens(&distill_core::conversation::transcript(turns));
        self.complete_msgs_deferred(&turn_msgs(turns), tokens, ctx)
            .await
    }

    /// The request for a conversation: its JSON body and its cache key.
    pub fn request_for_turns(&self, turns: &[Turn]) -> (serde_json::Value, String) {
        let body = self.wire.body(&turn_msgs(turns));
        let hash = self.hash_body(&body);
        (body, hash)
    }

    async fn complete_msgs_deferred(
        &self,
        msgs: &[Msg],
        tokens: u64,
        ctx: &CallContext,
    ) -> Result<(Completion, Pending)> {
        let mut pending = Pending::default();
        let out = match self.exchange(msgs, ctx, &mut pending, tokens).await? {
            Ok(ex) => Completion {
                text: Some(ex.reply.text),
                error: None,
                usage: ex.reply.usage,
                cost_usd: ex.cost,
                latency_ms: ex.latency_ms,
                cached: ex.cached,
                paid_calls: ex.paid_calls,
                request_hash: ex.hash,
            },
            Err(failure) => Completion {
                text: None,
                error: Some(failure.message),
                usage: Usage::default(),
                cost_usd: failure.cost,
                latency_ms: 0,
                cached: false,
                paid_calls: failure.paid_calls,
                request_hash: self.hash_body(&self.wire.body(msgs)),
            },
        };
        Ok((out, pending))
    }
}

/// A conversation as chat messages.
fn turn_msgs(turns: &[Turn]) -> Vec<Msg> {
    turns
        .iter()
        .map(|t| Msg {
            role: t.role.as_str(),
            content: t.content.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use std::sync::Arc;

    /// llama-cpp-python's reply to `response_format: {"type": "json_schema", ...}`.
    const LLAMA_CPP_REJECTION: &str = r#"{"error":{"message":"1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), 'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema', 'ctx': {'expected': \"'text' or 'json_object'\"}}\n\n  File \"llama_cpp/server/app.py\", line 376, in create_chat_completion\n    POST /v1/chat/completions","type":"internal_server_error","param":null,"code":null}}"#;

    fn spec(dir: &std::path::Path) -> TaskSpec {
        std::fs::write(
            dir.join("task.toml"),
            r#"
name = "t"
kind = "classify"
[input]
path = "in.csv"
[labels]
values = ["card_arrival", "refund"]
[teacher]
provider = "openai"
model = "smollm2"
"#,
        )
        .unwrap();
        TaskSpec::load(dir.join("task.toml")).unwrap()
    }

    /// A fake llama-cpp-python: 500 on json_schema, the enum's first label on json_object
    /// with the schema; records every response_format it saw.
    async fn fake_llama_cpp() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let app = axum::Router::new().route(
            "/v1/chat/completions",
            axum::routing::post(move |body: String| {
                let s = s.clone();
                async move {
                    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                    let rf = v["response_format"].clone();
                    s.lock().unwrap().push(rf.clone());
                    if rf["type"] != "json_object" {
                        return (StatusCode::INTERNAL_SERVER_ERROR, LLAMA_CPP_REJECTION)
                            .into_response();
                    }
                    let label = rf["schema"]["properties"]["label"]["enum"][0].clone();
                    let content = serde_json::json!({ "label": label }).to_string();
                    axum::Json(serde_json::json!({
                        "object": "chat.completion",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                     "logprobs": null, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 70, "completion_tokens": 9, "total_tokens": 79}
                    }))
                    .into_response()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, seen)
    }

    /// A provider answering its requests in turn as `script` says: `hang` (accepts the
    /// request and never answers), `garbage` (200 with a body that is not a reply), `502` (a
    /// proxy's Bad Gateway), anything else the first label; the last entry repeats.
    async fn scripted_provider(script: &'static [&'static str]) -> String {
        let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let app = axum::Router::new().route(
            "/v1/chat/completions",
            axum::routing::post(move || {
                let i = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move {
                    match script[i.min(script.len() - 1)] {
                        "hang" => std::future::pending().await,
                        "garbage" => (StatusCode::OK, "<html>upstream proxy</html>").into_response(),
                        "502" => (StatusCode::BAD_GATEWAY, "<html>502</html>").into_response(),
                        _ => axum::Json(serde_json::json!({
                            "object": "chat.completion",
                            "choices": [{"index": 0, "finish_reason": "stop",
                                "message": {"role": "assistant", "content": "{\"label\": \"refund\"}"}}],
                            "usage": {"prompt_tokens": 70, "completion_tokens": 9, "total_tokens": 79}
                        }))
                        .into_response(),
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    /// [`spec`] with a priced model and a 1 s timeout, so unanswered attempts cost something
    /// and come quickly.
    fn priced_spec(dir: &std::path::Path) -> TaskSpec {
        spec(dir);
        let toml = std::fs::read_to_string(dir.join("task.toml"))
            .unwrap()
            .replace(
                "model = \"smollm2\"",
                "model = \"gpt-4o-mini\"\ntimeout_s = 1",
            );
        std::fs::write(dir.join("task.toml"), toml).unwrap();
        TaskSpec::load(dir.join("task.toml")).unwrap()
    }

    /// A client of `url` retrying `max_retries` times at once, ledgering to `ledger`.
    fn scripted_client(
        spec: &TaskSpec,
        url: String,
        max_retries: u32,
        ledger: Option<PathBuf>,
    ) -> TeacherClient {
        TeacherClient::new(
            spec,
            ClientOptions {
                base_url: Some(url),
                api_key: Some("k".into()),
                ledger_path: ledger,
                max_retries: Some(max_retries),
                backoff_base: Some(Duration::from_millis(1)),
                ..Default::default()
            },
        )
        .unwrap()
    }

    /// Providers finish and bill a request whose client stopped waiting, and bill a 2xx whose
    /// body is unreadable: such attempts stay in the ledger at their estimate and in the
    /// record's cost (what --max-spend sums), instead of vanishing with the in-flight row.
    #[tokio::test]
    async fn attempts_without_a_usable_reply_stay_in_the_ledger_and_the_cost() {
        let d = tempfile::tempdir().unwrap();
        let spec = priced_spec(d.path());
        let url = scripted_provider(&["hang", "hang", "hang", "ok", "garbage", "502", "ok"]).await;
        let ledger_path = d.path().join("ledger.db");
        let c = scripted_client(&spec, url, 1, Some(ledger_path.clone()));
        let ctx = CallContext::teach();
        let ledger = Ledger::open(&ledger_path).unwrap();
        let statuses = |hash: &str| -> Vec<String> {
            let rows = ledger.rows_for_task("t").unwrap();
            rows.into_iter()
                .filter(|r| r.request_hash == hash)
                .map(|r| r.status)
                .collect()
        };

        // Both attempts time out: the record fails and still costs two estimates.
        let a = c.label("where is my card?", &ctx).await.unwrap();
        assert_eq!(a.status, RecordStatus::Failed);
        assert!(
            a.error.as_deref().unwrap().contains("timed out"),
            "{:?}",
            a.error
        );
        assert_eq!(a.paid_calls, 2);
        assert!(a.cost_usd > 0.0);
        assert_eq!(statuses(&a.request_hash), ["unanswered", "unanswered"]);

        // The first attempt times out, the retry is answered: both are paid for.
        let b = c.label("I want a refund", &ctx).await.unwrap();
        assert_eq!(b.status, RecordStatus::Ok, "{:?}", b.error);
        assert_eq!(b.paid_calls, 2);
        // The answered attempt completes the row begun before the first was sent.
        assert_eq!(statuses(&b.request_hash), ["ok", "unanswered"]);
        let rows = ledger.rows_for_task("t").unwrap();
        let cost_of = |status: &str| -> f64 {
            rows.iter()
                .filter(|r| r.request_hash == b.request_hash && r.status == status)
                .map(|r| r.cost_usd)
                .sum()
        };
        let answered = c.price().unwrap().cost(&b.usage, false);
        assert!((cost_of("ok") - answered).abs() < 1e-12);
        // The unanswered attempt is priced as if it wrote all of max_tokens.
        assert!(cost_of("unanswered") > answered);
        assert!((b.cost_usd - answered - cost_of("unanswered")).abs() < 1e-12);

        // A 200 that is not a reply was billed all the same; it is not retried.
        let g = c.label("hello there", &ctx).await.unwrap();
        assert_eq!(g.status, RecordStatus::Failed);
        assert_eq!(g.paid_calls, 1);
        assert_eq!(statuses(&g.request_hash), ["unanswered"]);

        // A proxy's 502 does not say the provider did not go on: retried, and charged.
        let p = c.label("my card is late", &ctx).await.unwrap();
        assert_eq!((p.status, p.paid_calls), (RecordStatus::Ok, 2));
        assert_eq!(statuses(&p.request_hash), ["ok", "unanswered"]);

        let s = &ledger.summary(&[], None).unwrap()[0];
        assert_eq!((s.calls, s.unanswered, s.in_flight), (7, 5, 0));
        let total = a.cost_usd + b.cost_usd + g.cost_usd + p.cost_usd;
        assert!(
            (s.cost_usd - total).abs() < 1e-12,
            "{} vs {total}",
            s.cost_usd
        );
    }

    /// `--max-spend`'s guard is asked before a retry that follows an unanswered attempt (which
    /// costs as much as an answer): refused, the call gives up instead of overshooting.
    #[tokio::test]
    async fn a_retry_after_an_unanswered_attempt_asks_the_budget_first() {
        let d = tempfile::tempdir().unwrap();
        let spec = priced_spec(d.path());
        let url = scripted_provider(&["hang"]).await;
        let c = scripted_client(&spec, url, 3, None);
        for room in [0usize, 1] {
            let asked = Arc::new(Mutex::new(Vec::new()));
            let a = asked.clone();
            let mut ctx = CallContext::teach();
            ctx.guard = Some(SpendGuard(Arc::new(move |usd| {
                let mut a = a.lock().unwrap();
                a.push(usd);
                a.len() <= room
            })));
            let o = c
                .label(&format!("where is my card {room}?"), &ctx)
                .await
                .unwrap();
            assert_eq!(o.status, RecordStatus::Failed);
            assert!(
                o.error.as_deref().unwrap().contains("--max-spend"),
                "{:?}",
                o.error
            );
            // Each unanswered attempt but the last asked for room; the first refusal stops it.
            assert_eq!(o.paid_calls as usize, room + 1, "{o:?}");
            let asked = asked.lock().unwrap();
            assert_eq!(asked.len(), room + 1);
            assert!(
                (asked[0] * (room + 1) as f64 - o.cost_usd).abs() < 1e-12,
                "{asked:?} {o:?}"
            );
        }
    }

    #[test]
    fn recognises_servers_that_reject_json_schema_only() {
        let llama = serde_json::from_str::<serde_json::Value>(LLAMA_CPP_REJECTION).unwrap();
        let msg = llama["error"]["message"].as_str().unwrap();
        assert!(rejects_json_schema(500, msg));
        assert!(rejects_json_schema(
            400,
            "response_format type json_schema is not supported by this model"
        ));
        assert!(!rejects_json_schema(429, msg));
        assert!(!rejects_json_schema(500, "oops"));
        assert!(!rejects_json_schema(
            400,
            "Invalid schema for response_format 'label': 'additionalProperties' is required"
        ));
    }

    #[tokio::test]
    async fn falls_back_to_json_object_when_the_server_rejects_json_schema() {
        let d = tempfile::tempdir().unwrap();
        let spec = spec(d.path());
        assert_eq!(spec.output.format, ResponseFormat::JsonSchema);
        let (url, seen) = fake_llama_cpp().await;
        let opts = || ClientOptions {
            base_url: Some(url.clone()),
            cache_path: Some(d.path().join("cache.db")),
            ledger_path: Some(d.path().join("ledger.db")),
            backoff_base: Some(Duration::from_millis(1)),
            ..Default::default()
        };
        let c = TeacherClient::new(&spec, opts()).unwrap();
        let ctx = CallContext::teach();
        let a = c.label("where is my card?", &ctx).await.unwrap();
        assert_eq!(a.status, RecordStatus::Ok, "{:?}", a.error);
        assert_eq!(
            a.output.as_ref().and_then(|o| o.label()),
            Some("card_arrival")
        );
        assert_eq!((a.paid_calls, a.usage.prompt_tokens), (1, 70));
        // One rejection, resent at once (no retries of the 500); later requests skip it.
        let b = c.label("I want a refund", &ctx).await.unwrap();
        assert_eq!(b.status, RecordStatus::Ok);
        let types: Vec<_> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|r| r["type"].clone())
            .collect();
        assert_eq!(types, ["json_schema", "json_object", "json_object"]);
        let sent = seen.lock().unwrap()[1].clone();
        assert_eq!(sent["schema"], spec.output_schema());
        // The cache key is the spec's request: a new client (a rerun) pays nothing.
        let c2 = TeacherClient::new(&spec, opts()).unwrap();
        let again = c2.label("where is my card?", &ctx).await.unwrap();
        assert!(again.cached);
        assert_eq!(again.request_hash, a.request_hash);
        assert_eq!(seen.lock().unwrap().len(), 3);
    }
}
