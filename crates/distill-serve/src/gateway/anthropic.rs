//! Anthropic tiers. The gateway speaks Chat Completions to its clients; a tier whose provider
//! is Anthropic gets each request as a Messages request, and its answer (whole, or streamed
//! event by event) back as a chat completion, so the cache, the meter and the stream relay
//! downstream never see which provider answered.
//!
//! Translated: system and developer turns (into `system`), user and assistant turns with text
//! content, `max_tokens` / `max_completion_tokens` (Messages requires one: [`DEFAULT_MAX_TOKENS`]
//! when the client sets none), `temperature` (clamped to Messages' 0..1), `top_p`, `stop`,
//! `user`, and a JSON `response_format` (as an instruction in `system`, the way `distill teach`
//! asks Anthropic for JSON). Refused with a 400 naming the field: what has no faithful
//! translation here (tools, function calls, images, `n` > 1, logprobs).

use super::relay::usage_json;
use crate::server::ApiError;
use axum::body::Bytes;
use distill_core::Usage;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

/// The output cap sent when the client names none (Messages has no default).
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

fn refuse(field: &str, why: &str) -> ApiError {
    ApiError::bad_request(
        format!("`{field}` cannot be sent to this route's Anthropic tier: {why}"),
        field,
    )
}

/// Text of a Chat Completions `content`: a string, or an array of `text` parts.
fn text_of(content: &Value, field: &str) -> Result<String, ApiError> {
    match content {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut out = Vec::new();
            for p in parts {
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        out.push(p.get("text").and_then(Value::as_str).unwrap_or_default())
                    }
                    other => {
                        return Err(refuse(
                            field,
                            &format!(
                                "content parts of type `{}` are not translated (text only)",
                                other.unwrap_or("?")
                            ),
                        ))
                    }
                }
            }
            Ok(out.join("\n"))
        }
        _ => Err(refuse(
            field,
            "content must be a string or an array of parts",
        )),
    }
}

/// A Chat Completions request body as a Messages request for `model`.
pub fn request(chat: &Value, model: &str) -> Result<Value, ApiError> {
    let empty = serde_json::Map::new();
    let req = chat.as_object().unwrap_or(&empty);
    for field in [
        "tools",
        "tool_choice",
        "functions",
        "function_call",
        "logprobs",
        "top_logprobs",
        "audio",
    ] {
        if req
            .get(field)
            .is_some_and(|v| !v.is_null() && v != &json!(false))
        {
            return Err(refuse(field, "it has no translation to Messages here"));
        }
    }
    if req.get("n").and_then(Value::as_u64).unwrap_or(1) > 1 {
        return Err(refuse("n", "Messages answers one choice per request"));
    }
    let mut system = Vec::new();
    let mut messages = Vec::new();
    for (i, m) in req
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let field = format!("messages[{i}].content");
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        let text = text_of(m.get("content").unwrap_or(&Value::Null), &field)?;
        match role {
            "system" | "developer" => system.push(text),
            "user" | "assistant" => {
                if m.get("tool_calls").is_some_and(|t| !t.is_null()) {
                    return Err(refuse(
                        &format!("messages[{i}].tool_calls"),
                        "tools are not translated",
                    ));
                }
                messages.push(json!({"role": role, "content": text}));
            }
            other => {
                return Err(refuse(
                    &format!("messages[{i}].role"),
                    &format!("role `{other}` has no Messages equivalent here"),
                ))
            }
        }
    }
    match req
        .get("response_format")
        .and_then(|f| f.get("type"))
        .and_then(Value::as_str)
    {
        Some("json_schema") => {
            let schema = chat
                .pointer("/response_format/json_schema/schema")
                .cloned()
                .unwrap_or(Value::Null);
            system.push(format!(
                "Reply with a single JSON object matching this JSON schema and nothing else:\n{schema}"
            ));
        }
        Some("json_object") => {
            system.push("Reply with a single JSON object and nothing else.".into())
        }
        _ => {}
    }
    let max_tokens = req
        .get("max_completion_tokens")
        .or_else(|| req.get("max_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_MAX_TOKENS);
    let mut out = json!({"model": model, "max_tokens": max_tokens, "messages": messages});
    let system = system
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>();
    if !system.is_empty() {
        out["system"] = json!(system.join("\n\n"));
    }
    if let Some(t) = req.get("temperature").and_then(Value::as_f64) {
        out["temperature"] = json!(t.clamp(0.0, 1.0));
    }
    if let Some(p) = req.get("top_p").filter(|p| p.is_number()) {
        out["top_p"] = p.clone();
    }
    match req.get("stop") {
        Some(Value::String(s)) => out["stop_sequences"] = json!([s]),
        Some(Value::Array(a)) if !a.is_empty() => out["stop_sequences"] = json!(a),
        _ => {}
    }
    if let Some(u) = req.get("user").and_then(Value::as_str) {
        out["metadata"] = json!({"user_id": u});
    }
    if req.get("stream").and_then(Value::as_bool) == Some(true) {
        out["stream"] = json!(true);
    }
    Ok(out)
}

fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens") | Some("model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        _ => "stop",
    }
}

/// A Messages `Message` as a chat completion, with the usage billed.
pub fn completion(message: &Value) -> (Value, Usage) {
    let usage =
        distill_teach::provider::anthropic::usage(message.get("usage").unwrap_or(&Value::Null));
    let text = distill_teach::provider::anthropic::message_reply(message)
        .map(|r| r.text)
        .unwrap_or_default();
    let c = json!({
        "id": message.get("id").cloned().unwrap_or(Value::Null),
        "object": "chat.completion",
        "created": now_unix(),
        "model": message.get("model").cloned().unwrap_or(Value::Null),
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": null,
            "finish_reason": finish_reason(message.get("stop_reason").and_then(Value::as_str)),
        }],
        "usage": usage_json(&usage),
    });
    (c, usage)
}

/// An Anthropic error body in OpenAI's shape (what the gateway's clients parse).
pub fn error_body(body: &[u8]) -> Vec<u8> {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let kind = v
        .pointer("/error/type")
        .and_then(Value::as_str)
        .unwrap_or("api_error");
    let message = v
        .pointer("/error/message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(500).collect());
    json!({"error": {"message": message, "type": kind, "param": null, "code": null}})
        .to_string()
        .into_bytes()
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Messages' server-sent events in, Chat Completions chunks out: a role chunk at
/// `message_start`, a content chunk per text delta, the finish chunk at `message_delta`, then
/// the usage chunk (the relay always asks for one) and `[DONE]` at `message_stop`.
#[derive(Default)]
pub struct StreamTranslator {
    buf: Vec<u8>,
    id: Value,
    model: Value,
    created: u64,
    usage: Usage,
    finish: Option<&'static str>,
    /// `usage` as last reported, for the relay to bill (cache writes included, which the
    /// Chat Completions usage chunk has no field for).
    shared: Arc<Mutex<Option<Usage>>>,
}

impl StreamTranslator {
    pub fn new() -> Self {
        Self {
            created: now_unix(),
            ..Default::default()
        }
    }

    /// The usage the provider has reported so far (none before `message_start`).
    pub fn usage_so_far(&self) -> Arc<Mutex<Option<Usage>>> {
        self.shared.clone()
    }

    fn report(&self) {
        *self.shared.lock().unwrap_or_else(|p| p.into_inner()) = Some(self.usage);
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> String {
        let c = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        format!("data: {c}\n\n")
    }

    /// Takes the next bytes of the upstream stream; returns the chunks they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Bytes {
        self.buf.extend_from_slice(bytes);
        let mut out = String::new();
        while let Some((len, sep)) = super::stream::find_event_end(&self.buf) {
            let event: Vec<u8> = self.buf.drain(..len + sep).collect();
            let text = String::from_utf8_lossy(&event[..len]);
            let data: String = text
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|l| l.strip_prefix(' ').unwrap_or(l))
                .collect::<Vec<_>>()
                .join("\n");
            let Ok(v) = serde_json::from_str::<Value>(&data) else {
                continue;
            };
            match v.get("type").and_then(Value::as_str) {
                Some("message_start") => {
                    let m = v.get("message").unwrap_or(&Value::Null);
                    self.id = m.get("id").cloned().unwrap_or(Value::Null);
                    self.model = m.get("model").cloned().unwrap_or(Value::Null);
                    let u = distill_teach::provider::anthropic::usage(
                        m.get("usage").unwrap_or(&Value::Null),
                    );
                    self.usage.prompt_tokens = u.prompt_tokens;
                    self.usage.cached_tokens = u.cached_tokens;
                    self.usage.cache_write_tokens = u.cache_write_tokens;
                    self.usage.completion_tokens = u.completion_tokens;
                    self.report();
                    out += &self.chunk(json!({"role": "assistant", "content": ""}), None);
                }
                Some("content_block_delta") => {
                    if let Some(t) = v.pointer("/delta/text").and_then(Value::as_str) {
                        out += &self.chunk(json!({"content": t}), None);
                    }
                }
                Some("message_delta") => {
                    if let Some(n) = v.pointer("/usage/output_tokens").and_then(Value::as_u64) {
                        self.usage.completion_tokens = n;
                    }
                    self.report();
                    self.finish = Some(finish_reason(
                        v.pointer("/delta/stop_reason").and_then(Value::as_str),
                    ));
                    out += &self.chunk(json!({}), self.finish);
                }
                Some("message_stop") => {
                    let c = json!({
                        "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                        "model": self.model, "choices": [], "usage": usage_json(&self.usage),
                    });
                    out += &format!("data: {c}\n\ndata: [DONE]\n\n");
                }
                Some("error") => {
                    let e = v.get("error").cloned().unwrap_or(Value::Null);
                    out += &format!("data: {}\n\n", json!({"error": e}));
                }
                _ => {} // ping, content_block_start/stop
            }
        }
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translates_a_chat_request() {
        let chat = json!({
            "model": "auto", "temperature": 1.7, "stop": "END", "max_tokens": 50, "user": "u1",
            "stream": true, "stream_options": {"include_usage": true},
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "again"},
            ],
        });
        let m = request(&chat, "claude-x").unwrap();
        assert_eq!(
            m,
            json!({
                "model": "claude-x", "max_tokens": 50, "system": "Be brief.", "temperature": 1.0,
                "stop_sequences": ["END"], "metadata": {"user_id": "u1"}, "stream": true,
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello"},
                    {"role": "user", "content": "again"},
                ],
            })
        );
        let bare = request(
            &json!({"messages": [{"role": "user", "content": "q"}]}),
            "c",
        )
        .unwrap();
        assert_eq!(bare["max_tokens"], DEFAULT_MAX_TOKENS);
        for (body, field) in [
            (json!({"messages": [], "tools": [{}]}), "tools"),
            (json!({"messages": [], "n": 2}), "n"),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
                "messages[0].content",
            ),
            (
                json!({"messages": [{"role": "tool", "content": "x"}]}),
                "messages[0].role",
            ),
        ] {
            let e = request(&body, "c").unwrap_err();
            assert_eq!(e.param.as_deref(), Some(field), "{e:?}");
            assert!(e.message.contains(&format!("`{field}`")), "{e:?}");
        }
    }

    #[test]
    fn translates_a_message_and_its_stream() {
        let usage = json!({"input_tokens": 10, "output_tokens": 3, "cache_read_input_tokens": 5,
                           "cache_creation_input_tokens": 0});
        let msg = json!({"id": "msg_1", "type": "message", "model": "claude-x",
                         "content": [{"type": "text", "text": "Paris"}],
                         "stop_reason": "max_tokens", "usage": usage});
        let (c, u) = completion(&msg);
        assert_eq!(c["choices"][0]["message"]["content"], "Paris");
        assert_eq!(c["choices"][0]["finish_reason"], "length");
        assert_eq!(
            (u.prompt_tokens, u.cached_tokens, u.completion_tokens),
            (15, 5, 3)
        );
        assert_eq!(c["usage"]["prompt_tokens"], 15);

        let events = [
            r#"{"type":"message_start","message":{"id":"msg_1","model":"claude-x","usage":{"input_tokens":10,"output_tokens":1}}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            r#"{"type":"ping"}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Par"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"is"}}"#,
            r#"{"type":"content_block_stop","index":0}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":2}}"#,
            r#"{"type":"message_stop"}"#,
        ];
        let wire: String = events
            .iter()
            .map(|e| format!("event: x\ndata: {e}\n\n"))
            .collect();
        // Fed in awkward pieces: events split across reads.
        let mut t = StreamTranslator::new();
        let mut out = Vec::new();
        for piece in wire.as_bytes().chunks(7) {
            out.extend_from_slice(&t.push(piece));
        }
        let out = String::from_utf8(out).unwrap();
        let datas: Vec<&str> = out
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .collect();
        assert_eq!(datas.last(), Some(&"[DONE]"));
        let chunks: Vec<Value> = datas[..datas.len() - 1]
            .iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        let text: String = chunks
            .iter()
            .filter_map(|c| {
                c.pointer("/choices/0/delta/content")
                    .and_then(Value::as_str)
            })
            .collect();
        assert_eq!(text, "Paris");
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let finish: Vec<&Value> = chunks
            .iter()
            .filter_map(|c| c.pointer("/choices/0/finish_reason"))
            .filter(|f| !f.is_null())
            .collect();
        assert_eq!(finish, [&json!("stop")]);
        let last = chunks.last().unwrap();
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"]["prompt_tokens"], 10);
        assert_eq!(last["usage"]["completion_tokens"], 2);
        let billed = t.usage_so_far().lock().unwrap().unwrap();
        assert_eq!((billed.prompt_tokens, billed.completion_tokens), (10, 2));
    }

    #[test]
    fn a_stream_reports_cache_writes_and_its_input_before_it_ends() {
        let mut t = StreamTranslator::new();
        let usage = t.usage_so_far();
        assert!(usage.lock().unwrap().is_none());
        t.push(
            b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":              {\"input_tokens\":7,\"output_tokens\":1,\"cache_read_input_tokens\":20,\"cache_creation_input_tokens\":30}}}\n\n",
        );
        // Cut here (an overload, a dropped connection): the input is known exactly.
        let u = usage.lock().unwrap().unwrap();
        assert_eq!(
            (
                u.prompt_tokens,
                u.cached_tokens,
                u.cache_write_tokens,
                u.completion_tokens
            ),
            (57, 20, 30, 1)
        );
        let out = t.push(
            b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
        );
        let e: Value = serde_json::from_str(
            std::str::from_utf8(&out)
                .unwrap()
                .trim()
                .strip_prefix("data: ")
                .unwrap(),
        )
        .unwrap();
        assert_eq!(e["error"]["type"], "overloaded_error");
    }
}
