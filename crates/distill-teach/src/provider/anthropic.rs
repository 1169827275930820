//! Anthropic Messages. The label schema goes into the system prompt (Messages has no
//! portable `response_format`); the reply parser is the same lenient JSON reader.

use super::{num, Msg, Reply, Wire};
use distill_core::spec::ResponseFormat;
use distill_core::Usage;
use serde_json::{json, Value};

pub fn system_text(wire: &Wire) -> String {
    match wire.format {
        ResponseFormat::Text => wire.system.clone(),
        _ => format!(
            "{}\n\nReply with a single JSON object matching this JSON schema and nothing else:\n{}",
            wire.system, wire.schema
        ),
    }
}

pub fn body(wire: &Wire, messages: &[Msg]) -> Value {
    // The Messages API takes system text apart from the turns: a conversation's own system
    // turns join the spec's system prompt there.
    let msgs: Vec<Value> = messages
        .iter()
        .filter(|m| m.role != "system")
        .map(|m| json!({"role": m.role, "content": m.content}))
        .collect();
    let mut b = json!({
        "model": wire.model,
        "max_tokens": wire.max_tokens,
        "temperature": wire.temperature.min(1.0),
        "messages": msgs,
    });
    let mut system = system_text(wire);
    for m in messages.iter().filter(|m| m.role == "system") {
        if !system.is_empty() {
            system.push_str("\n\n");
        }
        system.push_str(&m.content);
    }
    if !system.is_empty() {
        b["system"] = json!(system);
    }
    b
}

pub fn parse_reply(bytes: &[u8]) -> Result<Reply, String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("reply is not JSON: {e}"))?;
    message_reply(&v)
}

/// Reads a `Message` object (also the `message` of a batch result line).
pub fn message_reply(v: &Value) -> Result<Reply, String> {
    let content = v
        .get("content")
        .and_then(Value::as_array)
        .ok_or("reply has no content")?;
    let text = content
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str).unwrap_or("text") == "text")
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join("");
    Ok(Reply {
        text,
        usage: usage(v.get("usage").unwrap_or(&Value::Null)),
    })
}

/// Anthropic's `input_tokens` excludes cache reads and writes; distill's `prompt_tokens`
/// includes them (as OpenAI counts), so they are added back here.
pub fn usage(u: &Value) -> Usage {
    let read = num(u.get("cache_read_input_tokens"));
    let write = num(u.get("cache_creation_input_tokens"));
    Usage {
        prompt_tokens: num(u.get("input_tokens")) + read + write,
        cached_tokens: read,
        cache_write_tokens: write,
        completion_tokens: num(u.get("output_tokens")),
        reasoning_tokens: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_cache_tokens() {
        let r = parse_reply(
            br#"{"content":[{"type":"text","text":"{\"label\":\"a\"}"}],
                "usage":{"input_tokens":10,"output_tokens":5,"cache_read_input_tokens":100,"cache_creation_input_tokens":20}}"#,
        )
        .unwrap();
        assert_eq!(r.text, "{\"label\":\"a\"}");
        assert_eq!(r.usage.prompt_tokens, 130);
        assert_eq!(r.usage.cached_tokens, 100);
        assert_eq!(r.usage.cache_write_tokens, 20);
    }
}
