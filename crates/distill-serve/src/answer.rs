//! Answering requests: the chat completions and classify handlers, and the decision each
//! input gets (the answer cache, the student, the cascade's escalation to the teacher, budgets,
//! shadow traffic). The server around them (state, routes, auth, limits, draining) is
//! [`crate::server`]'s.

use crate::batcher::BatchError;
use crate::budget::{CapHit, DEFAULT_TAG};
use crate::cache::{cache_key, normalise, Cache, CachedAnswer};
use crate::escalate::{CallContext, Escalator};
use crate::metrics::LATENCY_BUCKETS;
use crate::server::{Answer, ApiError, AppState, InFlight, ServedModel};
use crate::shadow::ShadowRow;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use distill_train::Prediction;
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
/// here, reused for `usage`).
fn check_len(
    st: &AppState,
    m: &ServedModel,
    text: String,
    param: &str,
) -> std::result::Result<(String, usize), ApiError> {
    if text.trim().is_empty() {
        return Err(ApiError::bad_request(
            "the input is empty (or only whitespace): there is nothing to classify",
            param,
        ));
    }
    let too_long = |message: String| {
        let mut e = ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request_error",
            Some("context_length_exceeded"),
            format!("{message} (start the server with --truncate to cut long inputs)"),
        );
        e.param = Some(param.into());
        e
    };
    let mut text = text;
    let char_cap = st.max_input_tokens.saturating_mul(MAX_CHARS_PER_TOKEN);
    if text.len() > char_cap {
        let chars = text.chars().count();
        if chars > char_cap {
            if !st.truncate {
                return Err(too_long(format!(
                    "the input is {chars} characters; at most {char_cap} are accepted \
                     ({MAX_CHARS_PER_TOKEN} per token of --max-input-tokens {})",
                    st.max_input_tokens
                )));
            }
            text = text.chars().take(char_cap).collect();
        }
    }
    let limit = m.meta.max_len.unwrap_or(st.max_input_tokens);
    let mut n = m.student.token_len(&text);
    if n > limit {
        if !st.truncate {
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
            if !st.truncate {
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
    let (text, prompt_tokens) = check_len(st, &m, text, "messages")?;
    let prompt_tokens = prompt_tokens as u64;
    let answer = answer_many(st, &m, vec![text], &tag, "chat")
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
    let content = if let Some(labels) = &answer.labels {
        // A label set is JSON whether or not the client asked for it: joined names are not
        // something a client should have to split.
        json!({ "labels": labels }).to_string()
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
                "missing required field `inputs` (an array of strings)",
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
    let mut texts = Vec::with_capacity(inputs.len());
    let mut prompt_tokens = 0usize;
    for (i, v) in inputs.iter().enumerate() {
        let s = v.as_str().ok_or_else(|| {
            ApiError::bad_request(
                format!("inputs[{i}] is not a string"),
                &format!("inputs[{i}]"),
            )
        })?;
        let (text, n) = check_len(st, &m, s.to_string(), &format!("inputs[{i}]"))?;
        prompt_tokens += n;
        texts.push(text);
    }
    let answers = answer_many(st, &m, texts, &tag, "classify").await?;
    Ok(Json(json!({
        "object": "list",
        "model": m.name,
        "results": answers,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }))
    .into_response())
}

/// The cascade for a batch of inputs: cache, then one micro-batched student pass for the
/// misses, then the teacher (concurrently) for those below the threshold.
async fn answer_many(
    st: &Arc<AppState>,
    m: &Arc<ServedModel>,
    texts: Vec<String>,
    tag: &str,
    endpoint: &'static str,
) -> std::result::Result<Vec<Answer>, ApiError> {
    let norm: Vec<String> = texts
        .iter()
        .map(|t| normalise(t, m.case_insensitive))
        .collect();
    let keys: Vec<String> = norm.iter().map(|n| cache_key(&m.name, n)).collect();
    // An entry this model cannot read (written by a retrained model with other labels, in a
    // shared cache) is a miss, not an answer outside its labels.
    let cached: Vec<Option<CachedAnswer>> =
        futures::future::join_all(keys.iter().map(|k| st.cache.get(k)))
            .await
            .into_iter()
            .map(|c: Option<CachedAnswer>| c.filter(|c| m.notation.parse_set(&c.label).is_ok()))
            .collect();
    let miss_idx: Vec<usize> = (0..texts.len()).filter(|&i| cached[i].is_none()).collect();
    let caching = !matches!(st.cache, Cache::Off);
    if caching {
        let hits = (texts.len() - miss_idx.len()) as f64;
        let model = [("model", m.name.as_str())];
        st.metrics.add("distill_cache_hits_total", &model, hits);
        st.metrics
            .add("distill_cache_misses_total", &model, miss_idx.len() as f64);
    }
    let preds = if miss_idx.is_empty() {
        Vec::new()
    } else {
        m.batcher
            .predict(miss_idx.iter().map(|&i| norm[i].clone()).collect())
            .await
            .map_err(|e| match e {
                BatchError::Overloaded => ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    Some("overloaded"),
                    e.to_string(),
                ),
                other => {
                    tracing::error!("model `{}`: {other}", m.name);
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "server_error",
                        None,
                        format!("model `{}` failed", m.name),
                    )
                }
            })?
    };
    let mut pred_of = vec![None; texts.len()];
    for (i, p) in miss_idx.into_iter().zip(preds) {
        pred_of[i] = Some(p);
    }
    let futs = (0..texts.len()).map(|i| {
        let cached = cached[i].clone();
        let pred = pred_of[i].take();
        let norm = &norm[i];
        let key = &keys[i];
        async move {
            let saved = m.estimator.estimate(norm);
            match (cached, pred) {
                (Some(c), _) => Answer {
                    label: c.label,
                    confidence: c.confidence,
                    source: "cache",
                    cost_usd: 0.0,
                    saved_usd: saved,
                    degraded: false,
                    budget_capped: false,
                    student_label: None,
                    labels: None,
                },
                (None, Some(p)) => decide(st, m, norm, key, p, tag, endpoint, saved).await,
                (None, None) => unreachable!("every cache miss has a prediction"),
            }
        }
    });
    let mut answers = futures::future::join_all(futs).await;
    if m.notation.is_multilabel() {
        for a in &mut answers {
            // Every answer is in the model's notation (its own, the cache's, the teacher's
            // through `TeachEscalator::answering_in`); a label set is a list either way.
            let set = m.notation.parse_set(&a.label).unwrap_or_else(|e| {
                tracing::error!("model `{}`: answer `{}`: {e}", m.name, a.label);
                Vec::new()
            });
            a.labels = Some(set.iter().map(|&i| m.notation.names[i].clone()).collect());
        }
    }
    for a in &answers {
        st.metrics.inc(
            "distill_requests_total",
            &[
                ("model", &m.name),
                ("endpoint", endpoint),
                ("tag", tag),
                ("source", a.source),
            ],
        );
        st.metrics.add(
            "distill_saved_usd_total",
            &[("model", &m.name), ("tag", tag)],
            a.saved_usd,
        );
    }
    Ok(answers)
}

#[allow(clippy::too_many_arguments)]
async fn decide(
    st: &Arc<AppState>,
    m: &Arc<ServedModel>,
    text: &str,
    key: &str,
    p: Prediction,
    tag: &str,
    endpoint: &'static str,
    saved: f64,
) -> Answer {
    let student = Answer {
        label: p.label.clone(),
        confidence: p.confidence,
        source: "student",
        cost_usd: 0.0,
        saved_usd: saved,
        degraded: false,
        budget_capped: false,
        student_label: None,
        labels: None,
    };
    let Some(esc) = m.escalator.clone() else {
        st.cache
            .put(
                key,
                &CachedAnswer {
                    label: p.label,
                    confidence: p.confidence,
                    origin: "student".into(),
                },
                None,
            )
            .await;
        return student;
    };
    if p.confidence >= m.threshold {
        if st.shadow.is_some() && st.shadow_rate > 0.0 && rand::random::<f64>() < st.shadow_rate {
            shadow(
                st.clone(),
                m.clone(),
                esc,
                text.to_string(),
                p.clone(),
                tag.to_string(),
            );
        }
        st.cache
            .put(
                key,
                &CachedAnswer {
                    label: p.label,
                    confidence: p.confidence,
                    origin: "student".into(),
                },
                None,
            )
            .await;
        return student;
    }
    let labels = [("model", m.name.as_str()), ("tag", tag)];
    if let Some(hit) = st.budgets.check(tag) {
        capped(st, &hit, "answering from the student");
        st.metrics.inc(
            "distill_escalations_total",
            &[labels[0], labels[1], ("outcome", "budget_capped")],
        );
        return Answer {
            budget_capped: true,
            ..student
        };
    }
    let ctx = CallContext {
        source: format!("serve.{endpoint}"),
        tag: (tag != DEFAULT_TAG).then(|| tag.to_string()),
    };
    let outcome = tokio::time::timeout(st.teacher_timeout, esc.label(text, &ctx)).await;
    match outcome {
        Ok(Ok(e)) => {
            st.budgets.record(tag, e.cost_usd);
            st.metrics
                .add("distill_escalation_spend_usd_total", &labels, e.cost_usd);
            st.metrics.inc(
                "distill_escalations_total",
                &[labels[0], labels[1], ("outcome", "ok")],
            );
            st.cache
                .put(
                    key,
                    &CachedAnswer {
                        label: e.label.clone(),
                        confidence: p.confidence,
                        origin: "teacher".into(),
                    },
                    None,
                )
                .await;
            Answer {
                student_label: Some(p.label),
                label: e.label,
                source: "teacher",
                cost_usd: e.cost_usd,
                saved_usd: if e.cached { saved } else { 0.0 },
                ..student
            }
        }
        failure => {
            let why = match failure {
                Ok(Err(e)) => e.to_string(),
                _ => format!("no answer within {:?}", st.teacher_timeout),
            };
            tracing::warn!(model = %m.name, "escalation failed, answering from the student: {why}");
            st.metrics.inc(
                "distill_escalations_total",
                &[labels[0], labels[1], ("outcome", "failed")],
            );
            Answer {
                degraded: true,
                ..student
            }
        }
    }
}

/// A budget was found spent: warns and alerts once per cap and period. `consequence` says
/// what the server does about it.
pub(crate) fn capped(st: &Arc<AppState>, hit: &CapHit, consequence: &str) {
    if !st.budgets.first_hit(hit) {
        return;
    }
    tracing::warn!(
        "budget `{}` ({}, ${:.2}) is spent (${:.4}); {consequence}",
        hit.budget,
        hit.period.as_str(),
        hit.cap_usd,
        hit.spent_usd
    );
    if let Some(url) = st.alert_webhook.clone() {
        let http = st.http.clone();
        let body = hit.alert_json(consequence);
        tokio::spawn(async move {
            if let Err(e) = http
                .post(&url)
                .json(&body)
                .send()
                .await
                .and_then(|r| r.error_for_status())
            {
                tracing::warn!("budget alert webhook failed: {}", e.without_url());
            }
        });
    }
}

/// Off the latency path: asks the teacher about a confidently answered input and records
/// whether it agrees. Shadow calls count against the tag's budget like escalations.
fn shadow(
    st: Arc<AppState>,
    m: Arc<ServedModel>,
    esc: Arc<dyn Escalator>,
    text: String,
    p: Prediction,
    tag: String,
) {
    let in_flight = InFlight::start(&st.shadow_in_flight);
    tokio::spawn(async move {
        let _in_flight = in_flight;
        if st.budgets.check(&tag).is_some() {
            return;
        }
        let ctx = CallContext {
            source: "serve.shadow".into(),
            tag: (tag != DEFAULT_TAG).then(|| tag.clone()),
        };
        let Ok(Ok(e)) = tokio::time::timeout(st.teacher_timeout, esc.label(&text, &ctx)).await
        else {
            return;
        };
        st.budgets.record(&tag, e.cost_usd);
        let labels = [("model", m.name.as_str()), ("tag", tag.as_str())];
        st.metrics
            .add("distill_escalation_spend_usd_total", &labels, e.cost_usd);
        let model = [("model", m.name.as_str())];
        st.metrics.inc("distill_shadow_total", &model);
        if e.label == p.label {
            st.metrics.inc("distill_shadow_agree_total", &model);
        }
        if let Some(rec) = &st.shadow {
            rec.record(ShadowRow {
                ts: distill_core::ledger::LedgerRow::now(),
                model: m.name.clone(),
                tag,
                input_hash: distill_core::fsutil::sha256_hex(text.as_bytes()),
                student_label: p.label,
                confidence: p.confidence,
                teacher_label: e.label,
                cost_usd: e.cost_usd,
            });
        }
    });
}
