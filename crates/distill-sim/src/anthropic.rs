//! The Anthropic-compatible surface: Messages and Message Batches, with Anthropic's shapes
//! (content blocks, additive cache usage, RFC 3339 batch timestamps, typed error bodies).

use crate::engine::{Injected, Reply, ReplyStyle, Turn};
use crate::openai::schema_key;
use crate::server::{has_api_key, json_response, read, write, Shared};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};
use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;

#[derive(Deserialize)]
pub(crate) struct MessagesRequest {
    #[serde(default)]
    model: String,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    system: Option<System>,
    #[serde(default)]
    messages: Vec<Message>,
    #[serde(default)]
    output_config: Option<Value>,
    #[serde(default)]
    stream: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum System {
    Text(String),
    Blocks(Vec<Block>),
}

#[derive(Deserialize)]
struct Block {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    cache_control: Option<Value>,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    role: String,
    #[serde(default)]
    content: Option<MessageContent>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum MessageContent {
    Text(String),
    Blocks(Vec<Block>),
}

fn blocks_text(blocks: &[Block]) -> String {
    blocks
        .iter()
        .filter(|b| b.kind == "text" || b.kind.is_empty())
        .filter_map(|b| b.text.as_deref())
        .collect::<Vec<_>>()
        .join("\n")
}

impl MessagesRequest {
    fn system_text(&self) -> Option<Cow<'_, str>> {
        match &self.system {
            None => None,
            Some(System::Text(s)) => Some(Cow::Borrowed(s)),
            Some(System::Blocks(b)) => Some(Cow::Owned(blocks_text(b))),
        }
    }
    /// Whether any part of the prompt is marked for caching.
    fn cacheable(&self) -> bool {
        let sys = matches!(&self.system, Some(System::Blocks(b)) if b.iter().any(|x| x.cache_control.is_some()));
        let msgs = self.messages.iter().any(|m| {
            matches!(&m.content, Some(MessageContent::Blocks(b)) if b.iter().any(|x| x.cache_control.is_some()))
        });
        sys || msgs
    }
    fn turns(&self) -> Vec<Turn<'_>> {
        self.messages
            .iter()
            .map(|m| Turn {
                role: m.role.as_str(),
                content: match &m.content {
                    Some(MessageContent::Text(s)) => Cow::Borrowed(s.as_str()),
                    Some(MessageContent::Blocks(b)) => Cow::Owned(blocks_text(b)),
                    None => Cow::Borrowed(""),
                },
            })
            .collect()
    }
    fn check(&self) -> Result<(), String> {
        if self.model.trim().is_empty() {
            return Err("model: Field required".into());
        }
        match self.max_tokens {
            None => return Err("max_tokens: Field required".into()),
            Some(0) => return Err("max_tokens: must be greater than or equal to 1".into()),
            _ => {}
        }
        if self.messages.is_empty() {
            return Err("messages: at least one message is required".into());
        }
        if self.messages.first().is_some_and(|m| m.role != "user") {
            return Err("messages: first message must use the \"user\" role".into());
        }
        if let Some(m) = self
            .messages
            .iter()
            .find(|m| m.role != "user" && m.role != "assistant")
        {
            return Err(format!(
                "messages: Unexpected role \"{}\". Allowed roles are \"user\" and \"assistant\"; put system text in the top-level `system` field",
                m.role
            ));
        }
        Ok(())
    }
    /// A schema in `output_config` gets JSON under its key; otherwise JSON when the prompt
    /// asks for it (distill's prompts do), else the bare label, as Chat Completions answers.
    fn style(&self) -> ReplyStyle {
        let schema = self
            .output_config
            .as_ref()
            .and_then(|o| o.get("format"))
            .filter(|f| f.get("type").and_then(Value::as_str) == Some("json_schema"))
            .and_then(|f| f.get("schema"));
        let asks_json = self.system_text().is_some_and(|s| s.contains("JSON"))
            || self.turns().iter().any(|t| t.content.contains("JSON"));
        if schema.is_some() || asks_json {
            ReplyStyle::Json(schema_key(schema))
        } else {
            ReplyStyle::Text
        }
    }
}

pub(crate) fn error_response(status: StatusCode, kind: &str, message: &str) -> Response {
    json_response(
        status,
        &json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_distill_sim"}),
    )
}

fn usage_body(reply: &Reply, output_tokens: u64) -> Value {
    let input = reply
        .prompt_tokens
        .saturating_sub(reply.cached_tokens + reply.cache_write_tokens);
    json!({
        "input_tokens": input,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": reply.cache_write_tokens,
        "cache_read_input_tokens": reply.cached_tokens,
        "cache_creation": {"ephemeral_5m_input_tokens": reply.cache_write_tokens, "ephemeral_1h_input_tokens": 0},
        "service_tier": "standard"
    })
}

fn message_body(id: &str, model: &str, reply: &Reply, stop_reason: &str) -> Value {
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": reply.content}],
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": usage_body(reply, reply.completion_tokens),
    })
}

/// A message as Messages streams it: `message_start` (input usage), one text block in
/// pieces of a few characters, `message_delta` (stop reason, output usage), `message_stop`.
fn stream_events(id: &str, model: &str, reply: &Reply, stop_reason: &str) -> Vec<String> {
    let event = |kind: &str, data: Value| format!("event: {kind}\ndata: {data}\n\n");
    let mut start = message_body(id, model, reply, stop_reason);
    start["content"] = json!([]);
    start["stop_reason"] = Value::Null;
    start["usage"] = usage_body(reply, 1);
    let mut out = vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": start}),
        ),
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        event("ping", json!({"type": "ping"})),
    ];
    let chars: Vec<char> = reply.content.chars().collect();
    for piece in chars.chunks(8) {
        let text: String = piece.iter().collect();
        out.push(event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
        ));
    }
    out.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    out.push(event(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null},
               "usage": {"output_tokens": reply.completion_tokens}}),
    ));
    out.push(event("message_stop", json!({"type": "message_stop"})));
    out
}

fn answer(state: &Shared, req: &MessagesRequest) -> Reply {
    let system = req.system_text();
    let turns = req.turns();
    state.engine.answer(
        &req.model,
        system.as_deref(),
        &turns,
        &req.style(),
        req.cacheable(),
    )
}

pub(crate) async fn messages(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let counters = &state.engine.counters;
    counters.request();
    let r = messages_inner(&state, &headers, &body).await;
    counters.status(r.status().as_u16());
    r
}

fn check_headers(state: &Shared, headers: &HeaderMap) -> Option<Response> {
    if state.require_api_key && !has_api_key(headers) {
        return Some(error_response(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "x-api-key header is required (the sim-teacher accepts any key)",
        ));
    }
    if !headers.contains_key("anthropic-version") {
        return Some(error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "anthropic-version: header is required",
        ));
    }
    None
}

async fn messages_inner(state: &Shared, headers: &HeaderMap, body: &[u8]) -> Response {
    if let Some(r) = check_headers(state, headers) {
        return r;
    }
    let req: MessagesRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &format!("invalid JSON body: {e}"),
            )
        }
    };
    if let Err(m) = req.check() {
        return error_response(StatusCode::BAD_REQUEST, "invalid_request_error", &m);
    }
    match state.engine.inject() {
        Some(Injected::RateLimited) => {
            let mut r = error_response(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "Number of requests has exceeded your per-minute rate limit (simulated by distill sim-teacher)",
            );
            crate::openai::add_retry_headers(r.headers_mut(), state.retry_after_ms);
            return r;
        }
        Some(Injected::ServerError) => {
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "api_error",
                "Internal server error (simulated by distill sim-teacher)",
            )
        }
        None => {}
    }
    let mut reply = answer(state, &req);
    // Recorded answers (replay) are returned whole: their recorded costs are the figures.
    let cap = req.max_tokens.filter(|_| state.engine.replay.is_none());
    let stop_reason = if crate::openai::cap_reply(&mut reply, cap) {
        "max_tokens"
    } else {
        "end_turn"
    };
    let id = state.next_id("msg_");
    if !state.latency.is_zero() {
        tokio::time::sleep(state.latency).await;
    }
    state.engine.bill(&reply, false);
    if req.stream {
        let events = stream_events(&id, &req.model, &reply, stop_reason);
        let chunks = futures::stream::iter(
            events
                .into_iter()
                .map(|e| Ok::<_, std::convert::Infallible>(Bytes::from(e))),
        );
        let mut r = axum::body::Body::from_stream(chunks).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("text/event-stream"),
        );
        return r;
    }
    json_response(
        StatusCode::OK,
        &message_body(&id, &req.model, &reply, stop_reason),
    )
}

// ---------- message batches ----------

#[derive(Clone)]
pub(crate) struct MessageBatch {
    id: String,
    ended: bool,
    cancel_requested: bool,
    created_at: String,
    ended_at: Option<String>,
    cancel_initiated_at: Option<String>,
    /// processing, succeeded, errored, canceled, expired
    counts: [u64; 5],
    results: Option<Bytes>,
    cancel: Arc<tokio::sync::Notify>,
}

fn rfc3339_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

impl MessageBatch {
    fn object(&self, origin: &str) -> Value {
        let status = if self.ended {
            "ended"
        } else if self.cancel_requested {
            "canceling"
        } else {
            "in_progress"
        };
        json!({
            "id": self.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": {
                "processing": self.counts[0], "succeeded": self.counts[1], "errored": self.counts[2],
                "canceled": self.counts[3], "expired": self.counts[4]
            },
            "ended_at": self.ended_at,
            "created_at": self.created_at,
            "expires_at": self.created_at,
            "archived_at": null,
            "cancel_initiated_at": self.cancel_initiated_at,
            "results_url": self.ended.then(|| format!("{origin}/v1/messages/batches/{}/results", self.id)),
        })
    }
}

#[derive(Deserialize)]
struct CreateMessageBatch {
    #[serde(default)]
    requests: Vec<BatchRequest>,
}

#[derive(Deserialize)]
struct BatchRequest {
    #[serde(default)]
    custom_id: String,
    params: MessagesRequest,
}

pub(crate) async fn create_batch(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = check_headers(&state, &headers) {
        return r;
    }
    let req: CreateMessageBatch = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &format!("invalid JSON body: {e}"),
            )
        }
    };
    if req.requests.is_empty() {
        return error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "requests: at least one request is required",
        );
    }
    if req.requests.len() > 100_000 {
        return error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "requests: at most 100,000 requests per batch",
        );
    }
    let mut seen = HashSet::new();
    for (i, r) in req.requests.iter().enumerate() {
        let valid_id = !r.custom_id.is_empty()
            && r.custom_id.len() <= 64
            && r.custom_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid_id {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &format!("requests.{i}.custom_id: must be 1-64 characters of [a-zA-Z0-9_-]"),
            );
        }
        if !seen.insert(r.custom_id.as_str()) {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &format!(
                    "requests.{i}.custom_id: '{}' is used more than once",
                    r.custom_id
                ),
            );
        }
        if let Err(m) = r.params.check() {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &format!("requests.{i}.params.{m}"),
            );
        }
    }
    let id = state.next_id("msgbatch_");
    let n = req.requests.len() as u64;
    let batch = MessageBatch {
        id: id.clone(),
        ended: false,
        cancel_requested: false,
        created_at: rfc3339_now(),
        ended_at: None,
        cancel_initiated_at: None,
        counts: [n, 0, 0, 0, 0],
        results: None,
        cancel: Arc::new(tokio::sync::Notify::new()),
    };
    state.engine.counters.batch_created(n);
    let obj = batch.object(&state.origin);
    let cancel = batch.cancel.clone();
    write(&state.message_batches).insert(id.clone(), batch);
    let st = state.clone();
    tokio::spawn(async move {
        let cancelled = tokio::select! {
            _ = tokio::time::sleep(st.batch_completion) => false,
            _ = cancel.notified() => true,
        };
        let st2 = st.clone();
        let _ = tokio::task::spawn_blocking(move || run_batch(&st2, &id, req.requests, cancelled))
            .await;
    });
    if state.lose_batch_create() {
        return crate::openai::bad_gateway();
    }
    json_response(StatusCode::OK, &obj)
}

fn run_batch(state: &Shared, id: &str, requests: Vec<BatchRequest>, cancelled: bool) {
    let limit = state.batch_expire_after.unwrap_or(usize::MAX);
    let mut lines = String::new();
    let mut counts = [0u64; 5];
    for (i, r) in requests.iter().enumerate() {
        let result = if cancelled {
            counts[3] += 1;
            json!({"type": "canceled"})
        } else if i >= limit {
            counts[4] += 1;
            json!({"type": "expired"})
        } else {
            let reply = answer(state, &r.params);
            state.engine.bill(&reply, true);
            counts[1] += 1;
            json!({"type": "succeeded", "message": message_body(&state.next_id("msg_"), &r.params.model, &reply, "end_turn")})
        };
        lines.push_str(&json!({"custom_id": r.custom_id, "result": result}).to_string());
        lines.push('\n');
    }
    state
        .engine
        .counters
        .batch_outcome(counts[1], counts[4], counts[3], counts[2]);
    if let Some(b) = write(&state.message_batches).get_mut(id) {
        b.ended = true;
        b.ended_at = Some(rfc3339_now());
        b.counts = counts;
        b.results = Some(Bytes::from(lines));
    }
}

fn not_found(id: &str) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "not_found_error",
        &format!("No message batch with id '{id}'"),
    )
}

pub(crate) async fn get_batch(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    match read(&state.message_batches).get(&id) {
        Some(b) => json_response(StatusCode::OK, &b.object(&state.origin)),
        None => not_found(&id),
    }
}

pub(crate) async fn batch_results(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    let batches = read(&state.message_batches);
    match batches.get(&id) {
        None => not_found(&id),
        Some(b) => match &b.results {
            Some(bytes) => ([(header::CONTENT_TYPE, "application/x-jsonl")], bytes.clone()).into_response(),
            None => error_response(
                StatusCode::NOT_FOUND,
                "not_found_error",
                &format!("Message batch '{id}' has not finished processing; poll until processing_status is 'ended'"),
            ),
        },
    }
}

pub(crate) async fn cancel_batch(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    let mut batches = write(&state.message_batches);
    let Some(b) = batches.get_mut(&id) else {
        return not_found(&id);
    };
    if !b.ended && !b.cancel_requested {
        b.cancel_requested = true;
        b.cancel_initiated_at = Some(rfc3339_now());
        b.cancel.notify_one();
    }
    json_response(StatusCode::OK, &b.object(&state.origin))
}
