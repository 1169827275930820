//! OpenAI Chat Completions: also what vLLM, llama.cpp and the sim-teacher speak.

use super::{num, Msg, Reply, Wire};
use distill_core::spec::{MaxTokensField, ResponseFormat};
use distill_core::Usage;
use serde_json::{json, Value};

pub fn messages_json(wire: &Wire, messages: &[Msg]) -> Vec<Value> {
    let mut out = Vec::with_capacity(messages.len() + 1);
    // A free-form request (a route tier) has no system prompt: none is sent.
    if !wire.system.is_empty() {
        out.push(json!({"role": "system", "content": wire.system}));
    }
    for m in messages {
        out.push(json!({"role": m.role, "content": m.content}));
    }
    out
}

pub fn body(wire: &Wire, messages: &[Msg]) -> Value {
    let mut b = json!({
        "model": wire.model,
        "messages": messages_json(wire, messages),
        "temperature": wire.temperature,
    });
    let field = match wire.max_tokens_field {
        MaxTokensField::MaxTokens => "max_tokens",
        MaxTokensField::MaxCompletionTokens => "max_completion_tokens",
    };
    b[field] = json!(wire.max_tokens);
    match wire.format {
        ResponseFormat::JsonSchema => {
            b["response_format"] = json!({
                "type": "json_schema",
                "json_schema": {"name": "label", "strict": true, "schema": wire.schema}
            });
        }
        ResponseFormat::JsonObject => {
            b["response_format"] = json!({"type": "json_object", "schema": wire.schema});
        }
        ResponseFormat::Text => {}
    }
    b
}

/// Lenient: only `choices[0].message.content` is required; usage fields default to 0.
pub fn parse_reply(bytes: &[u8]) -> Result<Reply, String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("reply is not JSON: {e}"))?;
    let choice = v
        .get("choices")
        .and_then(|c| c.get(0))
        .ok_or("reply has no choices")?;
    let msg = choice.get("message").unwrap_or(&Value::Null);
    let text = match msg.get("content") {
        Some(Value::String(s)) => s.clone(),
        // Content as parts: join the text parts.
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => match msg.get("refusal").and_then(Value::as_str) {
            Some(r) => format!("(refusal) {r}"),
            None => String::new(),
        },
    };
    Ok(Reply {
        text,
        usage: usage(v.get("usage").unwrap_or(&Value::Null)),
    })
}

pub fn usage(u: &Value) -> Usage {
    let details = u.get("prompt_tokens_details").unwrap_or(&Value::Null);
    Usage {
        prompt_tokens: num(u.get("prompt_tokens")),
        cached_tokens: num(details.get("cached_tokens")),
        cache_write_tokens: num(details.get("cache_write_tokens")),
        completion_tokens: num(u.get("completion_tokens")),
        reasoning_tokens: num(u
            .get("completion_tokens_details")
            .and_then(|d| d.get("reasoning_tokens"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_minimal_and_full_replies() {
        let r =
            parse_reply(br#"{"choices":[{"message":{"content":"{\"label\":\"a\"}"}}]}"#).unwrap();
        assert_eq!(r.text, "{\"label\":\"a\"}");
        assert_eq!(r.usage, Usage::default());
        let r = parse_reply(
            br#"{"choices":[{"message":{"content":"x"},"finish_reason":"eos_token"}],
                "usage":{"prompt_tokens":10,"completion_tokens":"3","prompt_tokens_details":{"cached_tokens":4},
                "completion_tokens_details":{"reasoning_tokens":1}}}"#,
        )
        .unwrap();
        assert_eq!(r.usage.prompt_tokens, 10);
        assert_eq!(r.usage.completion_tokens, 3);
        assert_eq!(r.usage.cached_tokens, 4);
        assert_eq!(r.usage.reasoning_tokens, 1);
        assert!(parse_reply(b"{}").is_err());
    }
}
