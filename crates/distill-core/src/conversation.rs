//! Multi-turn prompts: a conversation as the chat APIs take it (`[{"role", "content"}, ...]`).
//!
//! A task reads one from its input's messages column (`[input] messages_column`). Everything
//! that needs plain text — a student, the router, the judge, the response cache of a replay —
//! reads the conversation's [`transcript`], so one conversation has one text everywhere; the
//! models being asked (a route task's tiers) get the turns themselves.

use serde::{Deserialize, Serialize};

/// Who said a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
    fn title(self) -> &'static str {
        match self {
            Role::System => "System",
            Role::User => "User",
            Role::Assistant => "Assistant",
        }
    }
}

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    pub role: Role,
    pub content: String,
}

/// Reads a conversation from a JSON value: an array of `{"role", "content"}` objects, or a
/// string holding one (a CSV cell). It must end with the user's turn, which is what gets
/// answered. The error says which message and which field is wrong.
pub fn parse_turns(value: &serde_json::Value) -> Result<Vec<Turn>, String> {
    let parsed;
    let value = match value {
        serde_json::Value::String(s) => {
            parsed = serde_json::from_str::<serde_json::Value>(s).map_err(|e| {
                format!("must be a JSON array of {{\"role\", \"content\"}} messages ({e})")
            })?;
            &parsed
        }
        v => v,
    };
    let items = value
        .as_array()
        .ok_or("must be a JSON array of {\"role\", \"content\"} messages")?;
    if items.is_empty() {
        return Err("is an empty conversation".into());
    }
    let mut turns = Vec::with_capacity(items.len());
    for (i, m) in items.iter().enumerate() {
        let n = i + 1;
        let role = match m.get("role").and_then(serde_json::Value::as_str) {
            Some("system") | Some("developer") => Role::System,
            Some("user") => Role::User,
            Some("assistant") => Role::Assistant,
            Some(other) => {
                return Err(format!(
                    "message {n}: role `{other}` is not one of system, user, assistant"
                ))
            }
            None => return Err(format!("message {n}: missing `role`")),
        };
        let content = match m.get("content") {
            Some(serde_json::Value::String(s)) => s.clone(),
            // The array form of content: its text parts, joined.
            Some(serde_json::Value::Array(parts)) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(serde_json::Value::as_str))
                .collect::<Vec<_>>()
                .join("\n"),
            Some(_) => return Err(format!("message {n}: `content` must be a string")),
            None => return Err(format!("message {n}: missing `content`")),
        };
        if content.trim().is_empty() {
            return Err(format!("message {n}: `content` is empty"));
        }
        turns.push(Turn { role, content });
    }
    if turns.last().map(|t| t.role) != Some(Role::User) {
        return Err(format!(
            "message {}: a conversation must end with the user's turn (the one to answer)",
            turns.len()
        ));
    }
    Ok(turns)
}

/// The conversation as one text: a lone user turn is its content unchanged (so a one-turn
/// conversation and the same plain prompt are one input), anything longer is
/// `Role: content` paragraphs.
pub fn transcript(turns: &[Turn]) -> String {
    if let [only] = turns {
        if only.role == Role::User {
            return only.content.clone();
        }
    }
    turns
        .iter()
        .map(|t| format!("{}: {}", t.role.title(), t.content))
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// The transcript of the user and assistant turns only: what identifies a conversation
/// when a system prompt may have been added in front of it (a replayed request).
pub fn dialogue_transcript(turns: &[Turn]) -> String {
    let dialogue: Vec<Turn> = turns
        .iter()
        .filter(|t| t.role != Role::System)
        .cloned()
        .collect();
    transcript(&dialogue)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_arrays_and_json_strings() {
        let v = json!([{"role": "system", "content": "Be brief."},
                       {"role": "user", "content": "Hi"},
                       {"role": "assistant", "content": "Hello!"},
                       {"role": "user", "content": [{"type": "text", "text": "2+2?"}]}]);
        let turns = parse_turns(&v).unwrap();
        assert_eq!(turns.len(), 4);
        assert_eq!(turns[3].content, "2+2?");
        assert_eq!(
            parse_turns(&json!(v.to_string())).unwrap(),
            turns,
            "a CSV cell holds the same conversation as a string"
        );
        assert_eq!(
            transcript(&turns),
            "System: Be brief.\n\nUser: Hi\n\nAssistant: Hello!\n\nUser: 2+2?"
        );
        assert_eq!(
            dialogue_transcript(&turns),
            "User: Hi\n\nAssistant: Hello!\n\nUser: 2+2?"
        );
        let one = parse_turns(&json!([{"role": "user", "content": "plain"}])).unwrap();
        assert_eq!(transcript(&one), "plain");
    }

    #[test]
    fn bad_conversations_say_which_message_and_field() {
        let cases = [
            (json!("not json"), "must be a JSON array"),
            (json!({"role": "user"}), "must be a JSON array"),
            (json!([]), "empty conversation"),
            (json!([{"content": "x"}]), "message 1: missing `role`"),
            (
                json!([{"role": "bot", "content": "x"}]),
                "message 1: role `bot`",
            ),
            (json!([{"role": "user"}]), "message 1: missing `content`"),
            (
                json!([{"role": "user", "content": 3}]),
                "message 1: `content` must be a string",
            ),
            (
                json!([{"role": "user", "content": "  "}]),
                "message 1: `content` is empty",
            ),
            (
                json!([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]),
                "message 2: a conversation must end with the user's turn",
            ),
        ];
        for (v, want) in cases {
            let e = parse_turns(&v).unwrap_err();
            assert!(e.contains(want), "{v}: {e}");
        }
    }
}
