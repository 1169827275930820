//! Turning a teacher's reply into a validated label. Replies are parsed leniently (code
//! fences, prose around the JSON, a bare label, different case) because a near-miss is
//! still a correct answer; anything else becomes the error text of the one repair request.

use distill_core::spec::ResponseFormat;
use distill_core::{LabelSet, TaskOutput};
use serde_json::Value;

/// The task's output from a reply: a label, or a multilabel task's set of labels (in
/// label-set order, duplicates dropped). Errors explain what is wrong, for the repair request.
pub fn parse_output(
    reply: &str,
    labels: &LabelSet,
    format: ResponseFormat,
) -> Result<TaskOutput, String> {
    if labels.is_multilabel() {
        return parse_label_set(reply, labels).map(|labels| TaskOutput::Multilabel { labels });
    }
    parse_label(reply, labels, format).map(|label| TaskOutput::Classify { label })
}

/// What a repair request asks for after an invalid reply.
pub fn repair_request(error: &str, labels: &LabelSet) -> String {
    if labels.is_multilabel() {
        format!(
            "That reply is not valid: {error}. Answer again with JSON only, \
             {{\"labels\": [\"<label>\", ...]}}, using only the allowed labels."
        )
    } else {
        format!(
            "That reply is not valid: {error}. Answer again with JSON only, \
             {{\"label\": \"<label>\"}}, using exactly one of the allowed labels."
        )
    }
}

fn parse_label_set(reply: &str, labels: &LabelSet) -> Result<Vec<String>, String> {
    let text = strip_fences(reply.trim());
    let parsed: Option<Value> = serde_json::from_str(text).ok().or_else(|| {
        let (start, end) = (text.find(['{', '['])?, text.rfind(['}', ']'])?);
        (end > start)
            .then(|| serde_json::from_str(&text[start..=end]).ok())
            .flatten()
    });
    let list = match &parsed {
        Some(Value::Object(m)) => match m.get("labels") {
            Some(Value::Array(a)) => a,
            Some(_) => return Err("the `labels` field must be a list of labels".into()),
            None => return Err("the JSON object has no `labels` field".into()),
        },
        Some(Value::Array(a)) => a,
        _ => {
            return Err(
                "the reply is not a JSON object of the form {\"labels\": [\"<label>\", ...]}"
                    .into(),
            )
        }
    };
    let mut idx = Vec::with_capacity(list.len());
    for item in list {
        let Value::String(l) = item else {
            return Err("every item of `labels` must be a string".into());
        };
        let l = canonical(l.trim(), labels)
            .ok_or_else(|| format!("`{}` is not one of the allowed labels", l.trim()))?;
        idx.push(labels.index_of(&l).expect("canonical"));
    }
    idx.sort_unstable();
    idx.dedup();
    if idx.is_empty() && !labels.allow_empty {
        return Err("every message has at least one label; give the ones that apply".into());
    }
    Ok(idx.into_iter().map(|i| labels.names[i].clone()).collect())
}

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
    fn label_sets_are_read_in_label_order_without_duplicates() {
        let mut labels = LabelSet::new(vec!["PlayMusic".into(), "GetWeather".into()]);
        labels.set_separator = Some("|".into());
        let f = ResponseFormat::JsonSchema;
        let set = |reply: &str, labels: &LabelSet| match parse_output(reply, labels, f) {
            Ok(TaskOutput::Multilabel { labels }) => Ok(labels),
            Ok(other) => panic!("not a set: {other:?}"),
            Err(e) => Err(e),
        };
        assert_eq!(
            set(
                "{\"labels\": [\"GetWeather\", \"playmusic\", \"GetWeather\"]}",
                &labels
            )
            .unwrap(),
            ["PlayMusic", "GetWeather"]
        );
        assert_eq!(
            set("```json\n[\"GetWeather\"]\n```", &labels).unwrap(),
            ["GetWeather"]
        );
        assert!(set("{\"labels\": []}", &labels).unwrap().is_empty());
        assert!(set("{\"labels\": [\"Dance\"]}", &labels)
            .unwrap_err()
            .contains("`Dance`"));
        assert!(set("{\"labels\": \"PlayMusic\"}", &labels)
            .unwrap_err()
            .contains("list"));
        assert!(set("{\"label\": \"PlayMusic\"}", &labels)
            .unwrap_err()
            .contains("no `labels`"));
        assert!(set("It is about music.", &labels).is_err());
        labels.allow_empty = false;
        assert!(set("{\"labels\": []}", &labels)
            .unwrap_err()
            .contains("at least one"));
        assert!(repair_request("x", &labels).contains("\"labels\""));
    }

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
