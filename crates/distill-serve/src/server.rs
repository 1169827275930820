//! The HTTP server: OpenAI-compatible chat completions and a batch classify endpoint over the
//! served students, with the cascade (escalate unsure inputs to the teacher), the answer cache,
//! budgets, shadow traffic, metrics, auth, limits and graceful draining.

use crate::answer::{chat_completions, classify};
use crate::auth::ApiKeys;
use crate::batcher::{BatchOptions, Batcher};
use crate::budget::Budgets;
use crate::cache::Cache;
use crate::error::{Result, ServeError};
use crate::escalate::{CostEstimator, Escalator};
use crate::gateway::Gateway;
use crate::metrics::{Metrics, BATCH_BUCKETS};
use crate::shadow::ShadowRecorder;
use crate::student::{ModelCard, ServedStudent};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One student to serve, as the caller assembled it.
pub struct ModelEntry {
    /// The name clients put in `model`.
    pub name: String,
    /// A classifier ([`crate::student::Classifier`]) or a tagger ([`crate::student::Tagger`]).
    pub student: Arc<dyn ServedStudent>,
    /// Where unsure inputs go; `None` serves the student alone.
    pub escalator: Option<Arc<dyn Escalator>>,
    /// Prices a teacher call for `saved_usd`.
    pub estimator: CostEstimator,
    /// From the task spec: lower-case inputs before caching.
    pub case_insensitive: bool,
    /// This model's cascade threshold (from its own eval); `ServerOptions::threshold` when `None`.
    pub threshold: Option<f32>,
}

pub struct ServerOptions {
    /// Student confidence below which an input is escalated.
    pub threshold: f32,
    pub batch: BatchOptions,
    pub cache: Cache,
    pub budgets: Budgets,
    pub alert_webhook: Option<String>,
    /// Fraction of confidently answered requests also sent to the teacher.
    pub shadow_rate: f64,
    pub shadow: Option<ShadowRecorder>,
    pub api_keys: Option<ApiKeys>,
    /// Requests per second accepted on /v1 (token bucket, burst of one second).
    pub rate_limit: Option<f64>,
    pub max_body_bytes: usize,
    /// Input length limit in the model's tokens when the model declares no `max_len`, and
    /// always in the teacher's tokens for a model that escalates (every escalation pays for
    /// them): at most this many teacher tokens, and at most 16 characters per token.
    pub max_input_tokens: usize,
    /// Truncate over-long inputs instead of refusing them with 422.
    pub truncate: bool,
    pub teacher_timeout: Duration,
    /// Most inputs in one /v1/classify request.
    pub max_classify_inputs: usize,
    /// Routes for free-form traffic (`distill gateway`): requests whose `model` is not a
    /// served student go through them.
    pub gateway: Option<Arc<Gateway>>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            threshold: 0.7,
            batch: BatchOptions::default(),
            cache: Cache::Off,
            budgets: Budgets::default(),
            alert_webhook: None,
            shadow_rate: 0.0,
            shadow: None,
            api_keys: None,
            rate_limit: None,
            max_body_bytes: 1 << 20,
            max_input_tokens: 2048,
            truncate: false,
            teacher_timeout: Duration::from_secs(10),
            max_classify_inputs: 256,
            gateway: None,
        }
    }
}

pub struct ServedModel {
    pub name: String,
    /// What the model answers and how it writes answers (`card.notation`): every answer it
    /// returns, cached or escalated, reads in it.
    pub card: ModelCard,
    pub(crate) student: Arc<dyn ServedStudent>,
    pub(crate) batcher: Batcher,
    pub(crate) escalator: Option<Arc<dyn Escalator>>,
    pub(crate) estimator: CostEstimator,
    pub(crate) case_insensitive: bool,
    /// Escalate when the student's confidence is below this.
    pub(crate) threshold: f32,
    pub(crate) created: i64,
}

pub(crate) struct TokenBucket {
    pub(crate) rate: f64,
    pub(crate) state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    pub(crate) fn take(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let burst = self.rate.max(1.0);
        s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * self.rate).min(burst);
        s.1 = now;
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

pub struct AppState {
    pub models: BTreeMap<String, Arc<ServedModel>>,
    pub metrics: Arc<Metrics>,
    pub draining: AtomicBool,
    pub(crate) cache: Cache,
    pub(crate) budgets: Budgets,
    pub(crate) alert_webhook: Option<String>,
    pub(crate) shadow_rate: f64,
    pub(crate) shadow: Option<ShadowRecorder>,
    /// Shadow calls still waiting on the teacher: shutdown waits for them, since each one is
    /// paid for and its comparison would otherwise be lost.
    pub(crate) shadow_in_flight: tokio::sync::watch::Sender<usize>,
    pub(crate) api_keys: Option<ApiKeys>,
    pub(crate) rate: Option<TokenBucket>,
    pub(crate) max_body_bytes: usize,
    pub(crate) max_input_tokens: usize,
    pub(crate) truncate: bool,
    pub(crate) teacher_timeout: Duration,
    pub(crate) max_classify_inputs: usize,
    pub(crate) http: reqwest::Client,
    pub(crate) gateway: Option<Arc<Gateway>>,
}

impl AppState {
    pub fn cache_kind(&self) -> &'static str {
        self.cache.kind()
    }
    /// Blocks until shadow comparisons recorded so far are on disk.
    pub fn flush_shadow(&self) {
        if let Some(s) = &self.shadow {
            s.flush()
        }
    }
    /// Resolves once no shadow call is waiting on the teacher (each ends within the teacher
    /// timeout).
    pub async fn shadow_idle(&self) {
        let mut rx = self.shadow_in_flight.subscribe();
        let _ = rx.wait_for(|&n| n == 0).await;
    }
}

/// Counts one shadow call in flight for as long as it lives, however the call ends.
pub(crate) struct InFlight(pub(crate) tokio::sync::watch::Sender<usize>);

impl InFlight {
    pub(crate) fn start(counter: &tokio::sync::watch::Sender<usize>) -> Self {
        counter.send_modify(|n| *n += 1);
        Self(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        kind: &'static str,
        code: Option<&'static str>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code,
        }
    }
    pub(crate) fn bad_request(message: impl Into<String>, param: &str) -> Self {
        let mut e = Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            message,
        );
        e.param = Some(param.into());
        e
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }});
        let mut r = (self.status, Json(body)).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            r.headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
        }
        r
    }
}

/// One answered input, as reported in the `distill` object.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Answer {
    /// The answer in the model's notation: a label, a multilabel task's labels joined by
    /// its separator (`[]`: none), or an extract task's spans as compact JSON. Equal answers
    /// are equal strings (the cache and shadow traffic compare them).
    pub label: String,
    /// A multilabel model's answer as a list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    /// An extraction model's answer: `{slot, start, end, text}` spans of the input,
    /// offsets in Unicode characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spans: Option<Vec<distill_core::spans::Span>>,
    /// The student's calibrated confidence in its own label.
    pub confidence: f32,
    /// `student`, `teacher` or `cache`.
    pub source: &'static str,
    /// Dollars this answer cost (teacher calls only).
    pub cost_usd: f64,
    /// Estimated dollars saved versus asking the teacher.
    pub saved_usd: f64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub degraded: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub budget_capped: bool,
    /// The student's label when the teacher answered instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub student_label: Option<String>,
}

impl Answer {
    /// A free answer from `source` (the student or the cache), before the cascade adds
    /// anything to it.
    pub(crate) fn free(
        label: String,
        confidence: f32,
        source: &'static str,
        saved_usd: f64,
    ) -> Self {
        Self {
            label,
            labels: None,
            spans: None,
            confidence,
            source,
            cost_usd: 0.0,
            saved_usd,
            degraded: false,
            budget_capped: false,
            student_label: None,
        }
    }
}

pub struct Server {
    pub(crate) state: Arc<AppState>,
}

/// A server running on a background task (tests, embedding).
pub struct RunningServer {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    pub(crate) stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub(crate) join: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl RunningServer {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    /// Drains in-flight requests and stops.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.join
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?
    }
}

impl Server {
    pub fn new(models: Vec<ModelEntry>, opts: ServerOptions) -> Result<Self> {
        if models.is_empty() && opts.gateway.is_none() {
            return Err(ServeError::config("--model", "serve at least one model"));
        }
        let metrics = Arc::new(Metrics::default());
        let mut served = BTreeMap::new();
        for m in models {
            if served.contains_key(&m.name) {
                return Err(ServeError::config(
                    "--model",
                    format!("two models are named `{}`; name one with NAME=DIR", m.name),
                ));
            }
            let mm = metrics.clone();
            let label = m.name.clone();
            let batcher = Batcher::start(
                &m.name,
                m.student.clone(),
                opts.batch.clone(),
                Arc::new(move |n| {
                    mm.observe(
                        "distill_batch_size",
                        BATCH_BUCKETS,
                        &[("model", &label)],
                        n as f64,
                    )
                }),
            )
            .map_err(|e| ServeError::Other(format!("cannot start inference threads: {e}")))?;
            let card = m.student.card().clone();
            let created = chrono::DateTime::parse_from_rfc3339(&card.created)
                .map(|d| d.timestamp())
                .unwrap_or_else(|_| chrono::Utc::now().timestamp());
            served.insert(
                m.name.clone(),
                Arc::new(ServedModel {
                    name: m.name,
                    card,
                    student: m.student,
                    batcher,
                    escalator: m.escalator,
                    estimator: m.estimator,
                    case_insensitive: m.case_insensitive,
                    threshold: m.threshold.unwrap_or(opts.threshold),
                    created,
                }),
            );
        }
        if let Some(gw) = &opts.gateway {
            for r in &gw.routes {
                if let Some(student) = r.student().filter(|s| !served.contains_key(*s)) {
                    let known: Vec<&str> = served.keys().map(String::as_str).collect();
                    return Err(ServeError::config(
                        format!("route `{}`: student", r.cfg.name),
                        format!(
                            "no served model is named `{student}` (serve it with --model {student}=DIR; served: {})",
                            if known.is_empty() { "none".to_string() } else { known.join(", ") }
                        ),
                    ));
                }
            }
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| ServeError::Other(format!("cannot build HTTP client: {e}")))?;
        Ok(Self {
            state: Arc::new(AppState {
                models: served,
                metrics,
                draining: AtomicBool::new(false),
                cache: opts.cache,
                budgets: opts.budgets,
                alert_webhook: opts.alert_webhook,
                shadow_rate: opts.shadow_rate,
                shadow: opts.shadow,
                shadow_in_flight: tokio::sync::watch::Sender::new(0),
                api_keys: opts.api_keys,
                rate: opts.rate_limit.map(|rate| TokenBucket {
                    rate,
                    state: Mutex::new((rate.max(1.0), Instant::now())),
                }),
                max_body_bytes: opts.max_body_bytes,
                max_input_tokens: opts.max_input_tokens,
                truncate: opts.truncate,
                teacher_timeout: opts.teacher_timeout,
                max_classify_inputs: opts.max_classify_inputs,
                http,
                gateway: opts.gateway,
            }),
        })
    }

    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    pub fn router(&self) -> Router {
        let st = self.state.clone();
        let v1 = Router::new()
            .route(
                "/v1/chat/completions",
                post(chat_completions).fallback(method_not_allowed),
            )
            .route("/v1/classify", post(classify).fallback(method_not_allowed))
            // The same endpoint under a name that fits every task kind.
            .route("/v1/predict", post(classify).fallback(method_not_allowed))
            .route("/v1/models", get(list_models).fallback(method_not_allowed))
            .layer(axum::middleware::from_fn_with_state(st.clone(), guard));
        Router::new()
            .merge(v1)
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .fallback(|| async {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    Some("unknown_url"),
                    "no such endpoint",
                )
            })
            .layer(DefaultBodyLimit::max(st.max_body_bytes))
            .with_state(st)
    }

    /// Serves until `shutdown` resolves, then stops accepting, answers what is in flight,
    /// waits for shadow calls still out with the teacher and for gateway calls whose client
    /// went away, commits the ledger (/readyz says 503 meanwhile) and returns.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let state = self.state.clone();
        let router = self.router();
        let drain_state = state.clone();
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                shutdown.await;
                drain_state.draining.store(true, Ordering::SeqCst);
                tracing::info!("draining in-flight requests");
            })
            .await?;
        state.shadow_idle().await;
        if let Some(gw) = &state.gateway {
            gw.drain().await;
        }
        let s = state.clone();
        let _ = tokio::task::spawn_blocking(move || s.flush_shadow()).await;
        Ok(())
    }

    /// Binds `addr` and serves on a background task.
    pub async fn spawn(self, addr: SocketAddr) -> std::io::Result<RunningServer> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = self.state.clone();
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let join = tokio::spawn(self.serve(listener, async move {
            let _ = rx.await;
        }));
        Ok(RunningServer {
            addr,
            state,
            stop: Some(stop),
            join,
        })
    }
}

async fn guard(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let endpoint = req.uri().path().to_string();
    let refuse = |e: ApiError| {
        st.metrics.inc(
            "distill_http_errors_total",
            &[("endpoint", &endpoint), ("status", e.status.as_str())],
        );
        e.into_response()
    };
    if st.draining.load(Ordering::SeqCst) {
        return refuse(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            Some("server_draining"),
            "the server is shutting down; retry on another replica",
        ));
    }
    if let Some(keys) = &st.api_keys {
        let auth = req
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if !keys.allows(auth) {
            return refuse(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                Some("invalid_api_key"),
                "missing or invalid API key (send `Authorization: Bearer <key>`)",
            ));
        }
    }
    if let Some(bucket) = &st.rate {
        if !bucket.take() {
            return refuse(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "requests",
                Some("rate_limit_exceeded"),
                format!("rate limit of {} requests per second exceeded", bucket.rate),
            ));
        }
    }
    next.run(req).await
}

async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    if st.draining.load(Ordering::SeqCst) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "draining"})),
        )
            .into_response()
    } else {
        let models: Vec<&String> = st.models.keys().collect();
        let routes: Vec<&str> = st
            .gateway
            .iter()
            .flat_map(|g| g.routes.iter().map(|r| r.cfg.name.as_str()))
            .collect();
        Json(json!({"status": "ready", "models": models, "routes": routes})).into_response()
    }
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    for (budget, period, spent, capped) in st.budgets.snapshot() {
        let labels = [("tag", budget.as_str()), ("period", period.as_str())];
        st.metrics.set("distill_budget_spent_usd", &labels, spent);
        st.metrics.set(
            "distill_budget_capped",
            &labels,
            if capped { 1.0 } else { 0.0 },
        );
    }
    st.metrics.set(
        "distill_cache_errors_total",
        &[("cache", st.cache.kind())],
        st.cache.errors() as f64,
    );
    st.metrics.set(
        "distill_draining",
        &[],
        if st.draining.load(Ordering::SeqCst) {
            1.0
        } else {
            0.0
        },
    );
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.metrics.render(),
    )
        .into_response()
}

async fn list_models(State(st): State<Arc<AppState>>) -> Response {
    let mut data: Vec<Value> = st
        .models
        .values()
        .map(|m| {
            json!({
                "id": m.name,
                "object": "model",
                "created": m.created,
                "owned_by": "distill",
                "distill": model_json(m),
            })
        })
        .collect();
    if let Some(gw) = &st.gateway {
        for r in &gw.routes {
            for alias in r.cfg.models.iter().filter(|a| !st.models.contains_key(*a)) {
                if let Some(student) = r.student() {
                    data.push(json!({
                        "id": alias, "object": "model", "created": 0, "owned_by": "distill-gateway",
                        "distill": {"route": r.cfg.name, "policy": "student", "student": student},
                    }));
                    continue;
                }
                let tiers: Vec<&str> = std::iter::once(r.tier)
                    .chain(r.rules_tiers())
                    .map(|t| gw.tiers[t].name.as_str())
                    .collect();
                data.push(json!({
                    "id": alias,
                    "object": "model",
                    "created": 0,
                    "owned_by": "distill-gateway",
                    "distill": {
                        "route": r.cfg.name,
                        "policy": r.policy_name(),
                        "tiers": tiers,
                        "premium": gw.tiers[r.premium].name,
                        "max_tokens": r.cfg.max_tokens,
                        "cache": r.cfg.cache,
                    }
                }));
            }
        }
    }
    Json(json!({"object": "list", "data": data})).into_response()
}

/// A served model's `distill` object in `/v1/models`.
fn model_json(m: &ServedModel) -> Value {
    let c = &m.card;
    let (outputs, count) = match c.shape {
        crate::student::AnswerShape::Spans => ("slots", c.notation.names.len()),
        _ => ("labels", c.notation.names.len()),
    };
    let mut v = json!({
        "task": c.task,
        "kind": c.kind,
        outputs: count,
        "escalates_to": m.escalator.as_ref().map(|e| e.teacher_model()),
        "threshold": m.threshold,
    });
    if let Some((metric, value)) = c.dev_quality {
        v[metric] = value.into();
    }
    if !c.context_columns.is_empty() {
        v["context_columns"] = json!(c.context_columns);
    }
    v
}

/// A known endpoint asked with the wrong method: 405 in OpenAI's error shape (axum's own
/// 405 has an empty body, which clients cannot report).
async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        Some("method_not_allowed"),
        format!("{method} is not allowed on {}", uri.path()),
    )
}
