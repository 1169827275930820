//! The HTTP server: routes, shared state, start/stop, and the blocking handle for sync code.

use crate::config::SimConfig;
use crate::engine::Engine;
use crate::error::{Result, SimError};
use crate::oracle::Oracle;
use crate::stats::Stats;
use crate::{anthropic, openai};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::oneshot;

/// Batch files can be large (OpenAI allows 200 MB); chat requests use axum's 2 MB default.
const UPLOAD_LIMIT: usize = 256 * 1024 * 1024;

pub(crate) struct AppState {
    pub engine: Engine,
    pub latency: Duration,
    pub retry_after_ms: u64,
    pub require_api_key: bool,
    pub batch_expire_after: Option<usize>,
    pub batch_completion: Duration,
    /// Batch creations still to be answered 502 after they are carried out.
    pub batch_creates_lost: std::sync::atomic::AtomicUsize,
    pub seed: u64,
    /// `http://host:port`, for URLs the server hands out (Anthropic `results_url`).
    pub origin: String,
    pub models: Vec<String>,
    pub ids: AtomicU64,
    pub files: RwLock<HashMap<String, openai::StoredFile>>,
    pub batches: RwLock<HashMap<String, openai::Batch>>,
    pub message_batches: RwLock<HashMap<String, anthropic::MessageBatch>>,
}

impl AppState {
    /// Whether this batch creation's answer is lost on its way back (see
    /// [`crate::SimConfig::batch_creates_lost`]).
    pub fn lose_batch_create(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        self.batch_creates_lost
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    pub fn next_id(&self, prefix: &str) -> String {
        let n = self.ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!(
            "{prefix}{:016x}",
            crate::oracle::mix64(n ^ self.seed.rotate_left(17))
        )
    }
}

pub(crate) type Shared = Arc<AppState>;

/// Reads a lock even if a panicking request poisoned it: the maps stay consistent because
/// every write is a single insert or field update.
pub(crate) fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}
pub(crate) fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A running simulated teacher on a tokio runtime the caller owns.
pub struct SimServer {
    addr: SocketAddr,
    state: Shared,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl SimServer {
    /// Loads the gold file, builds the tokenizer and starts serving on `addr`
    /// (`127.0.0.1:0` picks a free port).
    pub async fn start(config: SimConfig, addr: SocketAddr) -> Result<SimServer> {
        config.validate()?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| SimError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| SimError::Bind { addr, source })?;
        let state = tokio::task::spawn_blocking(move || build_state(config, addr))
            .await
            .map_err(|e| SimError::Runtime(e.to_string()))??;
        let state = Arc::new(state);
        let app = router(state.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = rx.await;
            });
            if let Err(e) = serve.await {
                tracing::error!("sim-teacher server stopped: {e}");
            }
        });
        Ok(SimServer {
            addr,
            state,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// Starts on `127.0.0.1:0` on a runtime of its own, for synchronous callers.
    pub fn spawn(config: SimConfig) -> Result<SimHandle> {
        SimHandle::start(config, SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/v1`: what a client uses as its OpenAI or Anthropic base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn stats(&self) -> Stats {
        self.state
            .engine
            .counters
            .snapshot(&self.state.engine.price_as)
    }

    pub fn reset_stats(&self) {
        self.state.engine.counters.reset();
    }

    /// Number of texts in the gold file.
    pub fn gold_len(&self) -> usize {
        self.state.engine.oracle.gold_len()
    }

    /// Stops accepting connections and waits for in-flight requests to finish.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A simulated teacher running on its own thread and runtime; stops when dropped.
pub struct SimHandle {
    addr: SocketAddr,
    state: Shared,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SimHandle {
    pub fn start(config: SimConfig, addr: SocketAddr) -> Result<SimHandle> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(SocketAddr, Shared)>>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("distill-sim".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(SimError::Runtime(e.to_string())));
                        return;
                    }
                };
                rt.block_on(async move {
                    match SimServer::start(config, addr).await {
                        Ok(server) => {
                            let _ = ready_tx.send(Ok((server.addr, server.state.clone())));
                            let _ = stop_rx.await;
                            server.shutdown().await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
            })
            .map_err(|e| SimError::Runtime(e.to_string()))?;
        let (addr, state) = ready_rx
            .recv()
            .map_err(|_| SimError::Runtime("the server thread exited while starting".into()))??;
        Ok(SimHandle {
            addr,
            state,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
    pub fn stats(&self) -> Stats {
        self.state
            .engine
            .counters
            .snapshot(&self.state.engine.price_as)
    }
    pub fn reset_stats(&self) {
        self.state.engine.counters.reset();
    }
    /// Stops the server and waits for its thread.
    pub fn stop(mut self) {
        self.stop_now();
    }
    fn stop_now(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.stop_now();
    }
}

fn build_state(config: SimConfig, addr: SocketAddr) -> Result<AppState> {
    let oracle = Oracle::new(&config)?;
    let mut engine = Engine::new(oracle, &config.price_as, config.seed, config.error_rate);
    if let Some(p) = &config.replay {
        engine.replay = Some(crate::replay::Replay::load(p, &config.task)?);
    }
    let mut models = vec![config.task.teacher.model.clone()];
    if !models.contains(&config.price_as) {
        models.push(config.price_as.clone());
    }
    Ok(AppState {
        engine,
        latency: Duration::from_millis(config.latency_ms),
        retry_after_ms: config.retry_after_ms,
        require_api_key: config.require_api_key,
        batch_expire_after: config.batch_expire_after,
        batch_completion: Duration::from_millis(config.batch_completion_ms),
        batch_creates_lost: std::sync::atomic::AtomicUsize::new(config.batch_creates_lost),
        seed: config.seed,
        origin: format!("http://{addr}"),
        models,
        ids: AtomicU64::new(1),
        files: RwLock::new(HashMap::new()),
        batches: RwLock::new(HashMap::new()),
        message_batches: RwLock::new(HashMap::new()),
    })
}

fn router(state: Shared) -> Router {
    let uploads = Router::new()
        .route("/v1/files", post(openai::upload_file))
        .route(
            "/v1/batches",
            post(openai::create_batch).get(openai::list_batches),
        )
        .route("/v1/messages/batches", post(anthropic::create_batch))
        .layer(DefaultBodyLimit::max(UPLOAD_LIMIT));
    Router::new()
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/models", get(openai::list_models))
        .route("/v1/files/{id}", get(openai::get_file))
        .route("/v1/files/{id}/content", get(openai::file_content))
        .route("/v1/batches/{id}", get(openai::get_batch))
        .route("/v1/batches/{id}/cancel", post(openai::cancel_batch))
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/messages/batches/{id}", get(anthropic::get_batch))
        .route(
            "/v1/messages/batches/{id}/results",
            get(anthropic::batch_results),
        )
        .route(
            "/v1/messages/batches/{id}/cancel",
            post(anthropic::cancel_batch),
        )
        .route("/stats", get(stats))
        .route("/v1/stats", get(stats))
        .route("/stats/reset", post(reset_stats))
        .route("/v1/stats/reset", post(reset_stats))
        .route("/health", get(|| async { "ok" }))
        .merge(uploads)
        .fallback(not_found)
        .with_state(state)
}

async fn stats(State(s): State<Shared>) -> Json<Stats> {
    Json(s.engine.counters.snapshot(&s.engine.price_as))
}

async fn reset_stats(State(s): State<Shared>) -> StatusCode {
    s.engine.counters.reset();
    StatusCode::NO_CONTENT
}

async fn not_found(uri: axum::http::Uri) -> Response {
    openai::error_response(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        Some("unknown_url"),
        &format!("Unrecognized request URL ({}). The sim-teacher serves /v1/chat/completions, /v1/models, /v1/files, /v1/batches, /v1/messages, /v1/messages/batches and /stats.", uri.path()),
    )
}

/// Whether the request carries an API key the way the provider expects (any value passes).
pub(crate) fn has_api_key(headers: &HeaderMap) -> bool {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|k| !k.trim().is_empty());
    let x_api_key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|k| !k.trim().is_empty());
    // Either header passes for either API: compatible gateways accept both.
    bearer || x_api_key
}

pub(crate) fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    (status, Json(body)).into_response()
}
