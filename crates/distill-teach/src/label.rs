//! Turning a teacher's reply into a validated label. Replies are parsed leniently (code
//! fences, prose around the JSON, a bare label, different case) because a near-miss is
//! still a correct answer; anything else becomes the error text of the one repair request.

use distill_core::spec::ResponseFormat;
use distill_core::LabelSet;
use serde_json::Value;

/// Returns the canonical label, or a message explaining what is wrong with the reply.
pub fn parse_label(
    reply: &str,
    labels: &LabelSet,
    format: ResponseFormat,
) -> Result<String, String> {
    let text = strip_fences(reply.trim());
    let from_json = json_label(text);
    let candidate = match (from_json, format) {
        (Some(Ok(l)), _) => l,
        (Some(Err(e)), _) => return Err(e),
        (None, ResponseFormat::Text) => text
            .trim_matches(|c| c == '"' || c == '\'' || c == '.')
            .trim()
            .to_string(),
        (None, _) => {
            // A bare label is a fine answer even when JSON was asked for.
            let bare = text.trim_matches('"').trim();
            if canonical(bare, labels).is_some() {
                bare.to_string()
            } else {
                return Err(
                    "the reply is not a JSON object of the form {\"label\": \"<label>\"}".into(),
                );
            }
        }
    };
    canonical(&candidate, labels)
        .ok_or_else(|| format!("`{candidate}` is not one of the allowed labels"))
}

fn canonical(candidate: &str, labels: &LabelSet) -> Option<String> {
    if labels.contains(candidate) {
        return Some(candidate.to_string());
    }
    labels
        .names
        .iter()
        .find(|l| l.eq_ignore_ascii_case(candidate))
        .cloned()
}

fn strip_fences(s: &str) -> &str {
    let s = s
        .strip_prefix("```json")
        .or_else(|| s.strip_prefix("```"))
        .unwrap_or(s);
    s.strip_suffix("```").unwrap_or(s).trim()
}

/// `None` when there is no JSON object in the text at all.
fn json_label(text: &str) -> Option<Result<String, String>> {
    let v: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) => {
            let start = text.find('{')?;
            let end = text.rfind('}')?;
            if end <= start {
                return None;
            }
            serde_json::from_str(&text[start..=end]).ok()?
        }
    };
    match &v {
        Value::Object(m) => match m.get("label") {
            Some(Value::String(s)) => Some(Ok(s.trim().to_string())),
            Some(_) => Some(Err("the `label` field must be a string".into())),
            None => Some(Err("the JSON object has no `label` field".into())),
        },
        Value::String(s) => Some(Ok(s.trim().to_string())),
        _ => Some(Err(
            "the reply must be a JSON object with a `label` field".into()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_near_misses_and_rejects_unknown_labels() {
        let labels = LabelSet::new(vec!["card_arrival".into(), "refund".into()]);
        let f = ResponseFormat::JsonSchema;
        assert_eq!(
            parse_label("{\"label\":\"refund\"}", &labels, f).unwrap(),
            "refund"
        );
        assert_eq!(
            parse_label("```json\n{\"label\": \"Card_Arrival\"}\n```", &labels, f).unwrap(),
            "card_arrival"
        );
        assert_eq!(
            parse_label("Sure! {\"label\":\"refund\"} done", &labels, f).unwrap(),
            "refund"
        );
        assert_eq!(parse_label("refund", &labels, f).unwrap(), "refund");
        assert!(parse_label("{\"label\":\"cash\"}", &labels, f)
            .unwrap_err()
            .contains("`cash`"));
        assert!(parse_label("I think it is cash", &labels, f).is_err());
        assert!(parse_label("{\"lbl\":\"refund\"}", &labels, f)
            .unwrap_err()
            .contains("no `label`"));
        assert_eq!(
            parse_label("\"refund\".", &labels, ResponseFormat::Text).unwrap(),
            "refund"
        );
    }
}
