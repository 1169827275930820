//! The two wire protocols distill speaks to teachers: OpenAI Chat Completions (and every
//! server that imitates it) and Anthropic Messages. Each module builds request bodies and
//! reads replies with our own lenient types, because compatible servers omit or vary fields
//! that strict SDK types insist on.

pub mod anthropic;
pub mod openai;

use distill_core::spec::{MaxTokensField, ResponseFormat};
use distill_core::{Provider, TaskSpec, Usage};
use serde_json::Value;

/// One chat turn.
#[derive(Debug, Clone, PartialEq)]
pub struct Msg {
    pub role: &'static str,
    pub content: String,
}

impl Msg {
    pub fn user(content: impl Into<String>) -> Self {
        Msg {
            role: "user",
            content: content.into(),
        }
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Msg {
            role: "assistant",
            content: content.into(),
        }
    }
}

/// What a provider answered: the reply text and the usage it bills.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Reply {
    pub text: String,
    pub usage: Usage,
}

/// A provider error body, normalised.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    /// `type`/`code` of the body (`insufficient_quota`, `rate_limit_error`, ...).
    pub kind: String,
    pub message: String,
}

/// Everything needed to build a request for one teacher, fixed for a whole job.
#[derive(Debug, Clone)]
pub struct Wire {
    pub provider: Provider,
    pub base_url: String,
    pub model: String,
    pub max_tokens: u32,
    pub max_tokens_field: MaxTokensField,
    pub temperature: f32,
    pub format: ResponseFormat,
    pub system: String,
    pub schema: Value,
}

impl Wire {
    pub fn from_spec(spec: &TaskSpec, base_url: &str, provider: Provider, model: &str) -> Self {
        Wire {
            provider,
            base_url: base_url.trim_end_matches('/').to_string(),
            model: model.to_string(),
            max_tokens: spec.teacher.max_tokens,
            max_tokens_field: spec.teacher.max_tokens_field,
            temperature: spec.teacher.temperature,
            format: spec.output.format,
            system: spec.teacher.system_prompt.clone(),
            schema: spec.output_schema(),
        }
    }

    pub fn endpoint(&self) -> String {
        match self.provider {
            Provider::Openai => format!("{}/chat/completions", self.base_url),
            Provider::Anthropic => format!("{}/messages", self.base_url),
        }
    }

    /// The JSON body for a conversation (the system prompt is added here).
    pub fn body(&self, messages: &[Msg]) -> Value {
        match self.provider {
            Provider::Openai => openai::body(self, messages),
            Provider::Anthropic => anthropic::body(self, messages),
        }
    }

    pub fn auth_headers(&self, key: &str) -> Vec<(&'static str, String)> {
        match self.provider {
            Provider::Openai => vec![("authorization", format!("Bearer {key}"))],
            Provider::Anthropic => vec![
                ("x-api-key", key.to_string()),
                ("anthropic-version", "2023-06-01".to_string()),
            ],
        }
    }

    pub fn parse_reply(&self, bytes: &[u8]) -> Result<Reply, String> {
        match self.provider {
            Provider::Openai => openai::parse_reply(bytes),
            Provider::Anthropic => anthropic::parse_reply(bytes),
        }
    }

    pub fn parse_error(&self, status: u16, bytes: &[u8]) -> ApiError {
        let v: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
        let err = v.get("error").unwrap_or(&Value::Null);
        let as_str = |x: Option<&Value>| match x {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        // OpenAI puts the specific reason in `code` (insufficient_quota), Anthropic in `type`.
        let kind = as_str(err.get("code"))
            .filter(|c| c.parse::<u16>().is_err())
            .or_else(|| as_str(err.get("type")))
            .unwrap_or_else(|| "error".into());
        let message = as_str(err.get("message"))
            .or_else(|| as_str(v.get("message")))
            .unwrap_or_else(|| {
                let t = String::from_utf8_lossy(bytes);
                t.chars().take(300).collect()
            });
        ApiError {
            status,
            kind,
            message,
        }
    }
}

/// Reads an integer that servers sometimes send as a string or a float.
pub(crate) fn num(v: Option<&Value>) -> u64 {
    match v {
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().map(|f| f.max(0.0) as u64))
            .unwrap_or(0),
        Some(Value::String(s)) => s.trim().parse().unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn wire(provider: Provider, system: &str) -> Wire {
        Wire {
            provider,
            base_url: "http://127.0.0.1:9/v1".into(),
            model: "m".into(),
            max_tokens: 64,
            max_tokens_field: MaxTokensField::MaxTokens,
            temperature: 0.0,
            format: ResponseFormat::Text,
            system: system.into(),
            schema: Value::Null,
        }
    }

    /// A multi-turn prompt reaches the model as its turns, with the system text where each
    /// API wants it.
    #[test]
    fn conversations_are_sent_as_turns() {
        let turns = [
            Msg {
                role: "system",
                content: "Be brief.".into(),
            },
            Msg::user("Hi"),
            Msg::assistant("Hello!"),
            Msg::user("2+2?"),
        ];
        let o = wire(Provider::Openai, "").body(&turns);
        assert_eq!(
            o["messages"],
            json!([{"role": "system", "content": "Be brief."},
                   {"role": "user", "content": "Hi"},
                   {"role": "assistant", "content": "Hello!"},
                   {"role": "user", "content": "2+2?"}])
        );
        let a = wire(Provider::Anthropic, "Spec prompt.").body(&turns);
        assert_eq!(a["system"], "Spec prompt.\n\nBe brief.");
        assert_eq!(
            a["messages"],
            json!([{"role": "user", "content": "Hi"},
                   {"role": "assistant", "content": "Hello!"},
                   {"role": "user", "content": "2+2?"}])
        );
    }
}
