//! The OpenAI-compatible surface: Chat Completions, models, files and the Batch API, with
//! the same JSON shapes, status codes and headers as api.openai.com.

use crate::engine::{Injected, Reply, ReplyStyle, Turn};
use crate::server::{has_api_key, json_response, now_unix, read, write, Shared};
use axum::body::Bytes;
use axum::extract::{Multipart, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Deserialize;
use serde_json::{json, Value};
use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;

#[derive(Deserialize)]
pub(crate) struct ChatRequest {
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub response_format: Option<ResponseFormat>,
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// The reply is cut to this many completion tokens (`finish_reason: "length"`).
    #[serde(default, alias = "max_completion_tokens")]
    pub max_tokens: Option<u64>,
}

#[derive(Deserialize)]
pub(crate) struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Deserialize)]
pub(crate) struct ChatMessage {
    #[serde(default)]
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

/// Message content: a string, or a list of parts of which the text parts count.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum Content {
    Text(String),
    Parts(Vec<Part>),
    Other(serde::de::IgnoredAny),
}

#[derive(Deserialize)]
pub(crate) struct Part {
    #[serde(default)]
    pub text: Option<String>,
}

impl Content {
    pub fn text(&self) -> Cow<'_, str> {
        match self {
            Content::Text(s) => Cow::Borrowed(s),
            Content::Parts(parts) => Cow::Owned(
                parts
                    .iter()
                    .filter_map(|p| p.text.as_deref())
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
            Content::Other(_) => Cow::Borrowed(""),
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct ResponseFormat {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub json_schema: Option<Value>,
}

/// The JSON key the reply carries the label under: `label` unless the schema names a
/// different single string property.
pub(crate) fn schema_key(schema: Option<&Value>) -> String {
    let props = schema
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object);
    match props {
        Some(p) if !p.contains_key("label") => p
            .iter()
            .find(|(_, v)| v.get("type").and_then(Value::as_str) == Some("string"))
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| "label".into()),
        _ => "label".into(),
    }
}

/// json_schema and json_object get JSON; text gets JSON when the prompt asks for JSON (as
/// distill's default prompts do), else the bare label.
fn reply_style(req: &ChatRequest, turns: &[Turn<'_>]) -> ReplyStyle {
    match req.response_format.as_ref().map(|f| f.kind.as_str()) {
        Some("json_schema") => ReplyStyle::Json(schema_key(
            req.response_format
                .as_ref()
                .and_then(|f| f.json_schema.as_ref())
                .and_then(|j| j.get("schema")),
        )),
        Some("json_object") => ReplyStyle::Json("label".into()),
        _ => {
            if turns.iter().any(|t| t.content.contains("JSON")) {
                ReplyStyle::Json("label".into())
            } else {
                ReplyStyle::Text
            }
        }
    }
}

pub(crate) fn error_response(
    status: StatusCode,
    kind: &str,
    code: Option<&str>,
    message: &str,
) -> Response {
    json_response(
        status,
        &json!({"error": {"message": message, "type": kind, "param": null, "code": code}}),
    )
}

pub(crate) fn missing_key() -> Response {
    error_response(
        StatusCode::UNAUTHORIZED,
        "invalid_request_error",
        Some("invalid_api_key"),
        "You didn't provide an API key. Send `Authorization: Bearer <key>`; the sim-teacher accepts any key.",
    )
}

pub(crate) fn injected_response(state: &Shared, model: &str, what: Injected) -> Response {
    match what {
        Injected::RateLimited => {
            let ms = state.retry_after_ms;
            let mut r = error_response(
                StatusCode::TOO_MANY_REQUESTS,
                "requests",
                Some("rate_limit_exceeded"),
                &format!(
                    "Rate limit reached for {model} (simulated by distill sim-teacher) on requests per min (RPM). Please try again in {ms}ms."
                ),
            );
            add_retry_headers(r.headers_mut(), ms);
            r
        }
        Injected::ServerError => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            None,
            "The server had an error while processing your request (simulated by distill sim-teacher). Retry your request.",
        ),
    }
}

pub(crate) fn add_retry_headers(h: &mut HeaderMap, ms: u64) {
    h.insert("retry-after-ms", HeaderValue::from(ms));
    h.insert("retry-after", HeaderValue::from(ms.div_ceil(1000).max(1)));
    h.insert(
        "x-ratelimit-remaining-requests",
        HeaderValue::from_static("0"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("{ms}ms")) {
        h.insert("x-ratelimit-reset-requests", v);
    }
}

fn turns_of(req: &ChatRequest) -> Vec<Turn<'_>> {
    req.messages
        .iter()
        .map(|m| Turn {
            role: m.role.as_str(),
            content: m
                .content
                .as_ref()
                .map(Content::text)
                .unwrap_or(Cow::Borrowed("")),
        })
        .collect()
}

/// Validates a chat request the way OpenAI does for the fields the sim relies on.
fn check_request(req: &ChatRequest) -> Result<(), String> {
    if req.model.trim().is_empty() {
        return Err("you must provide a model parameter".into());
    }
    if req.messages.is_empty() {
        return Err("'messages' must contain at least one message".into());
    }
    if let Some(n) = req.n {
        if !(1..=128).contains(&n) {
            return Err(format!("{n} is not a valid value for 'n': must be 1..128"));
        }
    }
    Ok(())
}

/// The chat.completion object for a reply (also the body of a batch output line).
pub(crate) fn completion_body(id: &str, model: &str, reply: &Reply, n: u32) -> Value {
    completion_body_finishing(id, model, reply, n, "stop")
}

fn completion_body_finishing(id: &str, model: &str, reply: &Reply, n: u32, finish: &str) -> Value {
    let choices: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "index": i,
                "message": {"role": "assistant", "content": reply.content, "refusal": null},
                "logprobs": null,
                "finish_reason": finish
            })
        })
        .collect();
    json!({
        "id": id,
        "object": "chat.completion",
        "created": now_unix(),
        "model": model,
        "system_fingerprint": "fp_distill_sim",
        "service_tier": "default",
        "choices": choices,
        "usage": usage_json(reply, n),
    })
}

fn usage_json(reply: &Reply, n: u32) -> Value {
    let completion = reply.completion_tokens * n as u64;
    json!({
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": reply.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": reply.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": reply.reasoning_tokens * n as u64,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0
            }
    })
}

/// Cuts a reply to `max` visible completion tokens, as a model stopped by `max_tokens` is:
/// the content's share of its tokens kept, `finish_reason: "length"`. True when it was cut.
/// (Simulated reasoning tokens are not counted against the cap.)
pub(crate) fn cap_reply(reply: &mut Reply, max: Option<u64>) -> bool {
    let visible = reply.completion_tokens - reply.reasoning_tokens;
    let Some(max) = max.filter(|&m| m < visible) else {
        return false;
    };
    let chars = reply.content.chars().count() as u64;
    let keep = (chars * max).div_ceil(visible.max(1)) as usize;
    reply.content = reply.content.chars().take(keep).collect();
    reply.completion_tokens = max + reply.reasoning_tokens;
    true
}

/// A completion as Chat Completions streams it: a role chunk, the content in pieces of a few
/// characters, a finish chunk, the usage chunk when `include_usage` asked for it, `[DONE]`.
fn stream_events(id: &str, model: &str, reply: &Reply, finish: &str, usage: bool) -> Vec<String> {
    let created = now_unix();
    let chunk = |delta: Value, finish: Value| {
        json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": "fp_distill_sim",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        })
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    let chars: Vec<char> = reply.content.chars().collect();
    for piece in chars.chunks(8) {
        let text: String = piece.iter().collect();
        events.push(chunk(json!({"content": text}), Value::Null));
    }
    events.push(chunk(json!({}), json!(finish)));
    if usage {
        events.push(json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": "fp_distill_sim", "choices": [], "usage": usage_json(reply, 1),
        }));
    }
    let mut out: Vec<String> = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    out.push("data: [DONE]\n\n".into());
    out
}

pub(crate) async fn chat_completions(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let counters = &state.engine.counters;
    counters.request();
    let response = chat_inner(&state, &headers, &body).await;
    counters.status(response.status().as_u16());
    response
}

async fn chat_inner(state: &Shared, headers: &HeaderMap, body: &[u8]) -> Response {
    if state.require_api_key && !has_api_key(headers) {
        return missing_key();
    }
    let req: ChatRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                None,
                &format!("We could not parse the JSON body of your request: {e}"),
            )
        }
    };
    if let Err(m) = check_request(&req) {
        return error_response(StatusCode::BAD_REQUEST, "invalid_request_error", None, &m);
    }
    if let Some(what) = state.engine.inject() {
        return injected_response(state, &req.model, what);
    }
    let started = std::time::Instant::now();
    let turns = turns_of(&req);
    let style = reply_style(&req, &turns);
    let mut reply = state.engine.answer(&req.model, None, &turns, &style, false);
    // Recorded answers (replay) are returned whole: their recorded costs are the figures.
    let cap = req.max_tokens.filter(|_| state.engine.replay.is_none());
    let finish = if cap_reply(&mut reply, cap) {
        "length"
    } else {
        "stop"
    };
    let n = req.n.unwrap_or(1);
    let id = state.next_id("chatcmpl-");
    let body = completion_body_finishing(&id, &req.model, &reply, n, finish);
    if !state.latency.is_zero() {
        tokio::time::sleep(state.latency).await;
    }
    // Billed only once the reply is certain to be sent: a client that gave up (dropped the
    // connection) during the latency is not charged, which matches what it can observe.
    let mut billed = reply.clone();
    billed.completion_tokens *= n as u64;
    billed.reasoning_tokens *= n as u64;
    state.engine.bill(&billed, false);
    let mut r = if req.stream {
        let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
        let events = stream_events(&id, &req.model, &reply, finish, include_usage);
        let chunks = futures::stream::iter(
            events
                .into_iter()
                .map(|e| Ok::<_, std::convert::Infallible>(Bytes::from(e))),
        );
        let mut r = axum::body::Body::from_stream(chunks).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        r
    } else {
        json_response(StatusCode::OK, &body)
    };
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&id) {
        h.insert("x-request-id", v);
    }
    h.insert(
        "openai-processing-ms",
        HeaderValue::from(started.elapsed().as_millis() as u64),
    );
    r
}

pub(crate) async fn list_models(State(state): State<Shared>) -> Response {
    let data: Vec<Value> = state
        .models
        .iter()
        .map(|m| json!({"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "distill-sim"}))
        .collect();
    json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
}

// ---------- files ----------

#[derive(Clone)]
pub(crate) struct StoredFile {
    pub id: String,
    pub filename: String,
    pub purpose: String,
    pub created_at: i64,
    pub bytes: Bytes,
}

impl StoredFile {
    fn object(&self) -> Value {
        json!({
            "id": self.id,
            "object": "file",
            "bytes": self.bytes.len(),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": null
        })
    }
}

fn store_file(state: &Shared, filename: &str, purpose: &str, bytes: Bytes) -> String {
    let id = state.next_id("file-");
    write(&state.files).insert(
        id.clone(),
        StoredFile {
            id: id.clone(),
            filename: filename.to_string(),
            purpose: purpose.to_string(),
            created_at: now_unix(),
            bytes,
        },
    );
    id
}

fn bad_request(message: &str) -> Response {
    error_response(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        None,
        message,
    )
}

fn not_found(what: &str, id: &str) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        None,
        &format!("No such {what}: '{id}'"),
    )
}

pub(crate) async fn upload_file(
    State(state): State<Shared>,
    headers: HeaderMap,
    mut form: Multipart,
) -> Response {
    if state.require_api_key && !has_api_key(&headers) {
        return missing_key();
    }
    let mut purpose = None;
    let mut file = None;
    loop {
        match form.next_field().await {
            Ok(Some(field)) => {
                let name = field.name().unwrap_or_default().to_string();
                let filename = field.file_name().unwrap_or("upload.jsonl").to_string();
                let data = match field.bytes().await {
                    Ok(d) => d,
                    Err(e) => return bad_request(&format!("could not read field `{name}`: {e}")),
                };
                match name.as_str() {
                    "purpose" => purpose = Some(String::from_utf8_lossy(&data).to_string()),
                    "file" => file = Some((filename, data)),
                    _ => {}
                }
            }
            Ok(None) => break,
            Err(e) => return bad_request(&format!("malformed multipart body: {e}")),
        }
    }
    let Some(purpose) = purpose else {
        return bad_request("Missing required parameter: 'purpose'.");
    };
    let Some((filename, data)) = file else {
        return bad_request("Missing required parameter: 'file'.");
    };
    if ![
        "batch",
        "fine-tune",
        "assistants",
        "vision",
        "user_data",
        "evals",
    ]
    .contains(&purpose.as_str())
    {
        return bad_request(&format!("'{purpose}' is not a valid purpose"));
    }
    let id = store_file(&state, &filename, &purpose, data);
    let obj = read(&state.files).get(&id).map(StoredFile::object);
    json_response(StatusCode::OK, &obj.unwrap_or(Value::Null))
}

pub(crate) async fn get_file(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    match read(&state.files).get(&id) {
        Some(f) => json_response(StatusCode::OK, &f.object()),
        None => not_found("file", &id),
    }
}

pub(crate) async fn file_content(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    let bytes = read(&state.files).get(&id).map(|f| f.bytes.clone());
    match bytes {
        Some(b) => ([(header::CONTENT_TYPE, "application/octet-stream")], b).into_response(),
        None => not_found("file", &id),
    }
}

// ---------- batches ----------

#[derive(Clone)]
pub(crate) struct Batch {
    pub id: String,
    pub input_file_id: String,
    pub endpoint: String,
    pub completion_window: String,
    pub metadata: Value,
    pub model: Option<String>,
    pub status: &'static str,
    pub errors: Option<Value>,
    pub created_at: i64,
    pub in_progress_at: Option<i64>,
    pub finalizing_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub failed_at: Option<i64>,
    pub expired_at: Option<i64>,
    pub cancelling_at: Option<i64>,
    pub cancelled_at: Option<i64>,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    pub total: u64,
    pub completed: u64,
    pub failed: u64,
    pub usage: [u64; 4],
    pub cancel: Arc<tokio::sync::Notify>,
}

impl Batch {
    fn object(&self) -> Value {
        json!({
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "model": self.model,
            "errors": self.errors,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "in_progress_at": self.in_progress_at,
            "expires_at": self.created_at + 24 * 3600,
            "finalizing_at": self.finalizing_at,
            "completed_at": self.completed_at,
            "failed_at": self.failed_at,
            "expired_at": self.expired_at,
            "cancelling_at": self.cancelling_at,
            "cancelled_at": self.cancelled_at,
            "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
            "usage": {
                "input_tokens": self.usage[0],
                "input_tokens_details": {"cached_tokens": self.usage[1]},
                "output_tokens": self.usage[2],
                "output_tokens_details": {"reasoning_tokens": self.usage[3]},
                "total_tokens": self.usage[0] + self.usage[2]
            },
            "metadata": self.metadata
        })
    }
}

#[derive(Deserialize)]
pub(crate) struct CreateBatch {
    #[serde(default)]
    input_file_id: String,
    #[serde(default)]
    endpoint: String,
    #[serde(default)]
    completion_window: String,
    #[serde(default)]
    metadata: Value,
}

/// One parsed line of a batch input file.
struct BatchLine {
    custom_id: String,
    body: ChatRequest,
}

/// Parses and validates an input file as OpenAI does: every line must be a POST to the
/// batch's endpoint with a unique custom_id. Returns OpenAI-style line errors otherwise.
fn parse_batch_file(bytes: &[u8], endpoint: &str) -> Result<Vec<BatchLine>, Vec<Value>> {
    let mut lines = Vec::new();
    let mut errors = Vec::new();
    let mut seen = HashSet::new();
    for (i, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let line_no = i + 1;
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let mut err = |code: &str, message: String| {
            errors.push(json!({"code": code, "message": message, "param": null, "line": line_no}));
        };
        #[derive(Deserialize)]
        struct Raw {
            #[serde(default)]
            custom_id: Option<String>,
            #[serde(default)]
            method: Option<String>,
            #[serde(default)]
            url: Option<String>,
            #[serde(default)]
            body: Option<Value>,
        }
        let parsed: Raw = match serde_json::from_slice(raw) {
            Ok(r) => r,
            Err(e) => {
                err(
                    "invalid_json_line",
                    format!("This line is not parseable as valid JSON: {e}"),
                );
                continue;
            }
        };
        let Some(custom_id) = parsed.custom_id.filter(|c| !c.is_empty()) else {
            err(
                "missing_required_parameter",
                "Missing required parameter: 'custom_id'.".into(),
            );
            continue;
        };
        if parsed.method.as_deref() != Some("POST") {
            err("invalid_method", "The 'method' must be 'POST'.".into());
            continue;
        }
        if parsed.url.as_deref() != Some(endpoint) {
            err(
                "mismatched_endpoint",
                format!("The 'url' of this request does not match the batch endpoint {endpoint}."),
            );
            continue;
        }
        let body: ChatRequest = match parsed.body.map(serde_json::from_value) {
            Some(Ok(b)) => b,
            Some(Err(e)) => {
                err(
                    "invalid_request",
                    format!("The 'body' is not a chat request: {e}"),
                );
                continue;
            }
            None => {
                err(
                    "missing_required_parameter",
                    "Missing required parameter: 'body'.".into(),
                );
                continue;
            }
        };
        if let Err(m) = check_request(&body) {
            err("invalid_request", m);
            continue;
        }
        if !seen.insert(custom_id.clone()) {
            err(
                "duplicate_custom_id",
                format!("The custom_id '{custom_id}' is used more than once in this batch."),
            );
            continue;
        }
        lines.push(BatchLine { custom_id, body });
    }
    if errors.is_empty() && lines.is_empty() {
        errors.push(json!({"code": "empty_file", "message": "The batch input file is empty.", "param": null, "line": null}));
    }
    if errors.is_empty() {
        Ok(lines)
    } else {
        Err(errors)
    }
}

pub(crate) async fn create_batch(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if state.require_api_key && !has_api_key(&headers) {
        return missing_key();
    }
    let req: CreateBatch = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return bad_request(&format!(
                "We could not parse the JSON body of your request: {e}"
            ))
        }
    };
    if req.endpoint != "/v1/chat/completions" {
        return bad_request(&format!(
            "The sim-teacher supports batches for '/v1/chat/completions' only, not '{}'.",
            req.endpoint
        ));
    }
    if req.completion_window != "24h" {
        return bad_request("Invalid 'completion_window': only '24h' is supported.");
    }
    let file = read(&state.files).get(&req.input_file_id).cloned();
    let Some(file) = file else {
        return not_found("file", &req.input_file_id);
    };
    if file.purpose != "batch" {
        return bad_request("The input file must be uploaded with purpose 'batch'.");
    }
    let id = state.next_id("batch_");
    let now = now_unix();
    let mut batch = Batch {
        id: id.clone(),
        input_file_id: req.input_file_id.clone(),
        endpoint: req.endpoint.clone(),
        completion_window: req.completion_window.clone(),
        metadata: req.metadata,
        model: None,
        status: "in_progress",
        errors: None,
        created_at: now,
        in_progress_at: Some(now),
        finalizing_at: None,
        completed_at: None,
        failed_at: None,
        expired_at: None,
        cancelling_at: None,
        cancelled_at: None,
        output_file_id: None,
        error_file_id: None,
        total: 0,
        completed: 0,
        failed: 0,
        usage: [0; 4],
        cancel: Arc::new(tokio::sync::Notify::new()),
    };
    match parse_batch_file(&file.bytes, &req.endpoint) {
        Err(errors) => {
            batch.status = "failed";
            batch.in_progress_at = None;
            batch.failed_at = Some(now);
            batch.errors = Some(json!({"object": "list", "data": errors}));
        }
        Ok(lines) => {
            batch.total = lines.len() as u64;
            batch.model = lines.first().map(|l| l.body.model.clone());
            state.engine.counters.batch_created(lines.len() as u64);
            let cancel = batch.cancel.clone();
            let st = state.clone();
            let bid = id.clone();
            // Registered before the worker starts, so a zero completion time cannot finish
            // a batch that is not in the map yet.
            write(&state.batches).insert(id.clone(), batch.clone());
            tokio::spawn(async move {
                let cancelled = tokio::select! {
                    _ = tokio::time::sleep(st.batch_completion) => false,
                    _ = cancel.notified() => true,
                };
                if cancelled {
                    finish_cancelled(&st, &bid, lines.len() as u64);
                    return;
                }
                let st2 = st.clone();
                let bid2 = bid.clone();
                let _ = tokio::task::spawn_blocking(move || run_batch(&st2, &bid2, lines)).await;
            });
        }
    }
    let obj = batch.object();
    write(&state.batches).entry(id).or_insert(batch);
    if state.lose_batch_create() {
        return bad_gateway();
    }
    json_response(StatusCode::OK, &obj)
}

/// What a proxy in front of the provider answers when it gave up waiting for it.
pub(crate) fn bad_gateway() -> Response {
    (
        StatusCode::BAD_GATEWAY,
        "<html><body><h1>502 Bad Gateway</h1></body></html>",
    )
        .into_response()
}

fn finish_cancelled(state: &Shared, id: &str, lines: u64) {
    state.engine.counters.batch_outcome(0, 0, lines, 0);
    if let Some(b) = write(&state.batches).get_mut(id) {
        b.status = "cancelled";
        b.cancelled_at = Some(now_unix());
    }
}

/// Answers every line (up to the expiry point), writes output and error files in a
/// shuffled order, as OpenAI does not keep input order, and bills each succeeded line.
fn run_batch(state: &Shared, id: &str, lines: Vec<BatchLine>) {
    let limit = state.batch_expire_after.unwrap_or(usize::MAX);
    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut usage = [0u64; 4];
    let (mut ok, mut expired) = (0u64, 0u64);
    for (i, line) in lines.iter().enumerate() {
        let req_id = format!(
            "batch_req_{:016x}",
            crate::oracle::mix64(i as u64 ^ state.seed)
        );
        if i >= limit {
            expired += 1;
            err.push(json!({
                "id": req_id, "custom_id": line.custom_id, "response": null,
                "error": {"code": "batch_expired", "message": "This request could not be executed before the completion window expired."}
            }));
            continue;
        }
        let turns = turns_of(&line.body);
        let style = reply_style(&line.body, &turns);
        let reply = state
            .engine
            .answer(&line.body.model, None, &turns, &style, false);
        let n = line.body.n.unwrap_or(1);
        let body = completion_body(&state.next_id("chatcmpl-"), &line.body.model, &reply, n);
        let mut billed = reply.clone();
        billed.completion_tokens *= n as u64;
        billed.reasoning_tokens *= n as u64;
        state.engine.bill(&billed, true);
        usage[0] += billed.prompt_tokens;
        usage[1] += billed.cached_tokens;
        usage[2] += billed.completion_tokens;
        usage[3] += billed.reasoning_tokens;
        ok += 1;
        out.push(json!({
            "id": req_id, "custom_id": line.custom_id,
            "response": {"status_code": 200, "request_id": req_id, "body": body},
            "error": null
        }));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(state.seed ^ lines.len() as u64);
    out.shuffle(&mut rng);
    err.shuffle(&mut rng);
    let to_jsonl = |v: &[Value]| {
        let mut s = String::new();
        for l in v {
            s.push_str(&l.to_string());
            s.push('\n');
        }
        Bytes::from(s)
    };
    let output_file_id = (!out.is_empty()).then(|| {
        store_file(
            state,
            &format!("{id}_output.jsonl"),
            "batch_output",
            to_jsonl(&out),
        )
    });
    let error_file_id = (!err.is_empty()).then(|| {
        store_file(
            state,
            &format!("{id}_error.jsonl"),
            "batch_output",
            to_jsonl(&err),
        )
    });
    state.engine.counters.batch_outcome(ok, expired, 0, 0);
    let now = now_unix();
    if let Some(b) = write(&state.batches).get_mut(id) {
        b.finalizing_at = Some(now);
        b.output_file_id = output_file_id;
        b.error_file_id = error_file_id;
        b.completed = ok;
        b.failed = expired;
        b.usage = usage;
        if expired > 0 {
            b.status = "expired";
            b.expired_at = Some(now);
        } else {
            b.status = "completed";
            b.completed_at = Some(now);
        }
    }
}

pub(crate) async fn get_batch(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    match read(&state.batches).get(&id) {
        Some(b) => json_response(StatusCode::OK, &b.object()),
        None => not_found("batch", &id),
    }
}

pub(crate) async fn list_batches(State(state): State<Shared>) -> Response {
    let mut all: Vec<(i64, String, Value)> = read(&state.batches)
        .values()
        .map(|b| (b.created_at, b.id.clone(), b.object()))
        .collect();
    all.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
    let data: Vec<Value> = all.into_iter().map(|x| x.2).collect();
    json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": data, "has_more": false}),
    )
}

pub(crate) async fn cancel_batch(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    let mut batches = write(&state.batches);
    let Some(b) = batches.get_mut(&id) else {
        return not_found("batch", &id);
    };
    match b.status {
        "in_progress" | "validating" => {
            b.status = "cancelling";
            b.cancelling_at = Some(now_unix());
            // notify_one stores a permit, so the cancel is seen even if the batch task
            // has not reached its select yet.
            b.cancel.notify_one();
            json_response(StatusCode::OK, &b.object())
        }
        "cancelling" | "cancelled" => json_response(StatusCode::OK, &b.object()),
        other => error_response(
            StatusCode::CONFLICT,
            "invalid_request_error",
            None,
            &format!("Cannot cancel a batch with status '{other}'."),
        ),
    }
}
