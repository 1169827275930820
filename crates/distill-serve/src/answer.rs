//! Answering requests: the chat completions and classify (predict) handlers, which read and
//! check what is asked (the model, the text, its context, its length) and shape the reply.
//! The decision each input gets is [`crate::cascade`]'s; the server around them (state,
//! routes, auth, limits, draining) is [`crate::server`]'s.

use crate::budget::DEFAULT_TAG;
use crate::cascade::answer_many;
use crate::metrics::LATENCY_BUCKETS;
use crate::server::{ApiError, AppState, ServedModel};
use crate::student::{AnswerShape, Input};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use distill_core::spec::Context;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Instant;

fn parse_body(
    body: std::result::Result<Bytes, BytesRejection>,
    limit: usize,
) -> std::result::Result<Value, ApiError> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                Some("request_too_large"),
                format!("request body is larger than the {limit}-byte limit"),
            )
        } else {
            ApiError::bad_request(format!("cannot read the request body: {e}"), "body")
        }
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}"), "body"))
}

fn model_of(st: &AppState, body: &Value) -> std::result::Result<Arc<ServedModel>, ApiError> {
    let name = body.get("model").and_then(Value::as_str).ok_or_else(|| {
        ApiError::bad_request(
            "missing required field `model` (a served model's name)",
            "model",
        )
    })?;
    st.models.get(name).cloned().ok_or_else(|| {
        let mut known: Vec<&str> = st.models.keys().map(String::as_str).collect();
        if let Some(gw) = &st.gateway {
            known.extend(gw.aliases());
        }
        let mut e = ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("model_not_found"),
            format!(
                "the model `{name}` is not served here (served: {})",
                known.join(", ")
            ),
        );
        e.param = Some("model".into());
        e
    })
}

fn tag_of(headers: &HeaderMap) -> std::result::Result<String, ApiError> {
    let Some(v) = headers.get("x-distill-tag") else {
        return Ok(DEFAULT_TAG.to_string());
    };
    let t = v.to_str().unwrap_or("");
    let ok = !t.is_empty()
        && t.len() <= 64
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c));
    if ok {
        Ok(t.to_string())
    } else {
        Err(ApiError::bad_request(
            "X-Distill-Tag must be 1-64 characters of letters, digits and - _ . : /",
            "X-Distill-Tag",
        ))
    }
}

/// Most characters per allowed token: a cheap bound checked before any tokenizer runs (BPE on
/// one 100,000-character "word" is slow, and a student may count such a word as one token).
const MAX_CHARS_PER_TOKEN: usize = 16;

/// Applies the length limits: 422 (or truncation with `--truncate`). An input must fit the
/// model's tokens and, for a model that escalates, the teacher's tokens too. Empty input is a
/// 400. Returns the text to answer and its length in the model's tokens (tokenised once
/// here, reused for `usage`). A span model's input is never cut: spans past the cut would
/// be lost without a word, so an over-long input is refused even with `--truncate`.
fn check_len(
    st: &AppState,
    m: &ServedModel,
    text: String,
    param: &str,
) -> std::result::Result<(String, usize), ApiError> {
    if text.trim().is_empty() {
        return Err(ApiError::bad_request(
            "the input is empty (or only whitespace): there is nothing to answer",
            param,
        ));
    }
    let spans = m.card.shape == AnswerShape::Spans;
    let truncate = st.truncate && !spans;
    let too_long = |message: String| {
        let advice = if spans {
            "an extraction model does not cut inputs, since spans past the cut would be lost; \
             split the input, or raise --max-input-tokens"
        } else {
            "start the server with --truncate to cut long inputs"
        };
        let mut e = ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request_error",
            Some("context_length_exceeded"),
            format!("{message} ({advice})"),
        );
        e.param = Some(param.into());
        e
    };
    let mut text = text;
    let char_cap = st.max_input_tokens.saturating_mul(MAX_CHARS_PER_TOKEN);
    if text.len() > char_cap {
        let chars = text.chars().count();
        if chars > char_cap {
            if !truncate {
                return Err(too_long(format!(
                    "the input is {chars} characters; at most {char_cap} are accepted \
                     ({MAX_CHARS_PER_TOKEN} per token of --max-input-tokens {})",
                    st.max_input_tokens
                )));
            }
            text = text.chars().take(char_cap).collect();
        }
    }
    let limit = m.card.max_len.unwrap_or(st.max_input_tokens);
    let mut n = m.student.token_len(&text);
    if n > limit {
        if !truncate {
            return Err(too_long(format!(
                "the input is {n} tokens; model `{}` accepts at most {limit}",
                m.name
            )));
        }
        // The model truncates to its own tokens too; cutting words bounds the work before that.
        text = text
            .split_whitespace()
            .take(limit)
            .collect::<Vec<_>>()
            .join(" ");
        n = m.student.token_len(&text).min(limit);
    }
    if let Some(esc) = &m.escalator {
        let teacher_limit = st.max_input_tokens;
        if let Some(tn) = esc.input_tokens(&text).filter(|&tn| tn > teacher_limit) {
            if !truncate {
                return Err(too_long(format!(
                    "the input is {tn} tokens for the teacher ({}); an input that may be \
                     escalated is at most {teacher_limit} (--max-input-tokens)",
                    esc.teacher_model()
                )));
            }
            text = esc.truncate_input(&text, teacher_limit);
            n = m.student.token_len(&text).min(limit);
        }
    }
    Ok((text, n))
}

/// A request's `context` for model `m`: an object of the model's context fields, each a
/// string, a number or a list of them (read as in a data file: a list's items joined by
/// ", "). Fields left out are empty; a field the model does not read is refused, since an
/// answer that silently ignored it would not be the one the client asked for.
fn context_of(
    m: &ServedModel,
    v: Option<&Value>,
    param: &str,
) -> std::result::Result<Context, ApiError> {
    let mut context: Context = m
        .card
        .context_columns
        .iter()
        .map(|c| (c.clone(), String::new()))
        .collect();
    let fields = match v {
        None | Some(Value::Null) => return Ok(context),
        Some(Value::Object(o)) => o,
        Some(_) => {
            return Err(ApiError::bad_request(
                format!("`{param}` must be an object of context fields"),
                param,
            ))
        }
    };
    for (k, v) in fields {
        let field = format!("{param}.{k}");
        if !context.contains_key(k) {
            let known = if m.card.context_columns.is_empty() {
                "it reads none".to_string()
            } else {
                format!("it reads {}", m.card.context_columns.join(", "))
            };
            return Err(ApiError::bad_request(
                format!("model `{}` reads no context field `{k}` ({known})", m.name),
                &field,
            ));
        }
        let text = distill_core::input::context_text(Some(v)).ok_or_else(|| {
            ApiError::bad_request(
                format!("`{field}` must be a string, a number or a list of them"),
                &field,
            )
        })?;
        context.insert(k.clone(), text);
    }
    Ok(context)
}

fn finish(
    st: &AppState,
    endpoint: &str,
    model: Option<&str>,
    started: Instant,
    r: std::result::Result<Response, ApiError>,
) -> Response {
    let resp = match r {
        Ok(r) => r,
        Err(e) => {
            st.metrics.inc(
                "distill_http_errors_total",
                &[("endpoint", endpoint), ("status", e.status.as_str())],
            );
            e.into_response()
        }
    };
    st.metrics.observe(
        "distill_request_duration_seconds",
        LATENCY_BUCKETS,
        &[("model", model.unwrap_or("")), ("endpoint", endpoint)],
        started.elapsed().as_secs_f64(),
    );
    resp
}

fn user_text(body: &Value) -> std::result::Result<String, ApiError> {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(
                "missing required field `messages` (a non-empty array)",
                "messages",
            )
        })?;
    let last = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .ok_or_else(|| {
            ApiError::bad_request("`messages` has no user message to classify", "messages")
        })?;
    match last.get("content") {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let texts: Vec<&str> = parts
                .iter()
                .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect();
            if texts.is_empty() {
                Err(ApiError::bad_request(
                    "the last user message has no text part",
                    "messages",
                ))
            } else {
                Ok(texts.join("\n"))
            }
        }
        _ => Err(ApiError::bad_request(
            "the last user message has no `content` string",
            "messages",
        )),
    }
}

pub(crate) async fn chat_completions(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let mut model_name = None;
    let r = chat_inner(&st, &headers, body, &mut model_name).await;
    finish(&st, "chat", model_name.as_deref(), started, r)
}

async fn chat_inner(
    st: &Arc<AppState>,
    headers: &HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
    model_name: &mut Option<String>,
) -> std::result::Result<Response, ApiError> {
    let mut body = parse_body(body, st.max_body_bytes)?;
    let tag = tag_of(headers)?;
    if let Some(gw) = &st.gateway {
        let name = body.get("model").and_then(Value::as_str);
        if !name.is_some_and(|n| st.models.contains_key(n)) {
            if let Some(ri) = gw.route_for(name, &tag) {
                match gw.routes[ri].student() {
                    // Answered below by the student, exactly as if it had been named.
                    Some(student) => match body.as_object_mut() {
                        Some(o) => {
                            o.insert("model".into(), student.into());
                        }
                        None => {
                            return Err(ApiError::bad_request(
                                "the body must be a JSON object",
                                "body",
                            ))
                        }
                    },
                    None => {
                        *model_name = Some(gw.routes[ri].cfg.name.clone());
                        return crate::gateway::relay::chat(st, gw, ri, &tag, body).await;
                    }
                }
            }
        }
    }
    let m = model_of(st, &body)?;
    *model_name = Some(m.name.clone());
    let text = user_text(&body)?;
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::bad_request(
                "`stream` must be true or false",
                "stream",
            ))
        }
    };
    let context = context_of(&m, body.get("context"), "context")?;
    let (text, prompt_tokens) = check_len(st, &m, text, "messages")?;
    let prompt_tokens = prompt_tokens as u64;
    let answer = answer_many(st, &m, vec![Input { text, context }], &tag, "chat")
        .await?
        .pop()
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                None,
                "no answer",
            )
        })?;
    let json_reply = matches!(
        body.pointer("/response_format/type")
            .and_then(Value::as_str),
        Some("json_object" | "json_schema")
    );
    // A label set or spans are JSON whether or not the client asked for it: joined names or
    // offsets are not something a client should have to parse out of prose.
    let content = if let Some(labels) = &answer.labels {
        json!({ "labels": labels }).to_string()
    } else if let Some(spans) = &answer.spans {
        json!({ "spans": spans }).to_string()
    } else if json_reply {
        json!({"label": answer.label}).to_string()
    } else {
        answer.label.clone()
    };
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 1,
        "total_tokens": prompt_tokens + 1,
    });
    let id = format!("chatcmpl-distill-{:016x}", rand::random::<u64>());
    let created = chrono::Utc::now().timestamp();
    if !stream {
        return Ok(Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": m.name,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": null},
                "logprobs": null,
                "finish_reason": "stop",
            }],
            "usage": usage,
            "system_fingerprint": null,
            "distill": answer,
        }))
        .into_response());
    }
    // The whole answer exists already, so the stream is one content chunk, a stop chunk,
    // the usage chunk when asked for, and [DONE] — exactly what OpenAI clients expect.
    let chunk = |delta: Value, finish: Value| {
        json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": m.name,
            "system_fingerprint": null,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        })
    };
    let mut first = chunk(
        json!({"role": "assistant", "content": content}),
        Value::Null,
    );
    first["distill"] = serde_json::to_value(&answer).unwrap_or(Value::Null);
    let mut events = vec![first, chunk(json!({}), json!("stop"))];
    if body
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true)
    {
        events.push(json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": m.name,
            "choices": [], "usage": usage,
        }));
    }
    let mut out: Vec<std::result::Result<Event, std::convert::Infallible>> = events
        .into_iter()
        .map(|v| Ok(Event::default().data(v.to_string())))
        .collect();
    out.push(Ok(Event::default().data("[DONE]")));
    Ok(Sse::new(futures::stream::iter(out)).into_response())
}

pub(crate) async fn classify(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let mut model_name = None;
    let r = classify_inner(&st, &headers, body, &mut model_name).await;
    finish(&st, "classify", model_name.as_deref(), started, r)
}

async fn classify_inner(
    st: &Arc<AppState>,
    headers: &HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
    model_name: &mut Option<String>,
) -> std::result::Result<Response, ApiError> {
    let body = parse_body(body, st.max_body_bytes)?;
    let m = model_of(st, &body)?;
    *model_name = Some(m.name.clone());
    let inputs = body
        .get("inputs")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            ApiError::bad_request(
                "missing required field `inputs` (an array of strings, or of \
                 {\"text\", \"context\"} objects)",
                "inputs",
            )
        })?;
    if inputs.len() > st.max_classify_inputs {
        return Err(ApiError::bad_request(
            format!(
                "at most {} inputs per request, got {}",
                st.max_classify_inputs,
                inputs.len()
            ),
            "inputs",
        ));
    }
    let tag = tag_of(headers)?;
    let mut items = Vec::with_capacity(inputs.len());
    let mut prompt_tokens = 0usize;
    for (i, v) in inputs.iter().enumerate() {
        let param = format!("inputs[{i}]");
        let (s, context) = match v {
            Value::String(s) => (s.as_str(), context_of(&m, None, &param)?),
            Value::Object(o) => {
                let s = o.get("text").and_then(Value::as_str).ok_or_else(|| {
                    ApiError::bad_request(
                        format!("{param}.text is missing or not a string"),
                        &format!("{param}.text"),
                    )
                })?;
                if let Some(k) = o.keys().find(|k| *k != "text" && *k != "context") {
                    return Err(ApiError::bad_request(
                        format!("{param} has an unknown field `{k}` (text, context)"),
                        &format!("{param}.{k}"),
                    ));
                }
                (
                    s,
                    context_of(&m, o.get("context"), &format!("{param}.context"))?,
                )
            }
            _ => {
                return Err(ApiError::bad_request(
                    format!("{param} is neither a string nor a {{\"text\", \"context\"}} object"),
                    &param,
                ))
            }
        };
        let (text, n) = check_len(st, &m, s.to_string(), &param)?;
        prompt_tokens += n;
        items.push(Input { text, context });
    }
    let answers = answer_many(st, &m, items, &tag, "classify").await?;
    Ok(Json(json!({
        "object": "list",
        "model": m.name,
        "results": answers,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }))
    .into_response())
}
