//! Turning a teacher's reply into a validated label. Replies are parsed leniently (code
//! fences, prose around the JSON, a bare label, different case) because a near-miss is
//! still a correct answer; anything else becomes the error text of the one repair request.

use distill_core::spans::{align, Quote};
use distill_core::spec::ResponseFormat;
use distill_core::{LabelSet, TaskOutput, TaskSpec};
use serde_json::Value;

/// The task's output from a reply to the prompt for `text`: [`parse_output`], or for an
/// extraction task the spans, each quoted text found in `text` ([`align`]).
pub fn parse_reply(
    reply: &str,
    spec: &TaskSpec,
    text: &str,
    format: ResponseFormat,
) -> Result<TaskOutput, String> {
    if !spec.is_extract() {
        return parse_output(reply, &spec.labels, format);
    }
    let quotes = parse_quotes(reply, &spec.labels)?;
    align(text, &quotes).map(|spans| TaskOutput::Extract { spans })
}

/// What a repair request asks for after an invalid reply ([`repair_request`], or the span
/// form for an extraction task).
pub fn repair_for(error: &str, spec: &TaskSpec) -> String {
    if spec.is_extract() {
        return format!(
            "That reply is not valid: {error}. Answer again with JSON only, \
             {{\"spans\": [{{\"slot\": \"<slot>\", \"text\": \"<text copied from the message>\"}}, ...]}}, \
             using only the allowed slots."
        );
    }
    repair_request(error, &spec.labels)
}

/// `{"spans": [{"slot", "text"}, ...]}` (or the bare list), slots matched as labels are.
fn parse_quotes(reply: &str, slots: &LabelSet) -> Result<Vec<Quote>, String> {
    let list = match json_in(reply) {
        Some(Value::Object(m)) => match m.get("spans") {
            Some(Value::Array(a)) => a.clone(),
            Some(_) => return Err("the `spans` field must be a list of spans".into()),
            None => return Err("the JSON object has no `spans` field".into()),
        },
        Some(Value::Array(a)) => a,
        _ => {
            return Err("the reply is not a JSON object of the form \
                 {\"spans\": [{\"slot\": \"<slot>\", \"text\": \"<text>\"}, ...]}"
                .into())
        }
    };
    list.iter()
        .map(|item| {
            let (Some(Value::String(slot)), Some(Value::String(text))) =
                (item.get("slot"), item.get("text"))
            else {
                return Err("every span must be an object with string `slot` and `text`".into());
            };
            let slot = canonical(slot.trim(), slots)
                .ok_or_else(|| format!("`{}` is not one of the allowed slots", slot.trim()))?;
            Ok(Quote {
                slot,
                text: text.clone(),
            })
        })
        .collect()
}

/// The JSON value in a reply: the whole text (fences stripped), else its outermost
/// object or list.
fn json_in(reply: &str) -> Option<Value> {
    let text = strip_fences(reply.trim());
    serde_json::from_str(text).ok().or_else(|| {
        let (start, end) = (text.find(['{', '['])?, text.rfind(['}', ']'])?);
        (end > start)
            .then(|| serde_json::from_str(&text[start..=end]).ok())
            .flatten()
    })
}

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
    let parsed = json_in(reply);
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
    fn span_replies_are_aligned_to_the_message() {
        let spec = TaskSpec::parse(
            "name = \"t\"\nkind = \"extract\"\n[input]\n[slots]\nvalues = [\"time\", \"people\"]\n\
             [teacher]\nprovider = \"openai\"\nmodel = \"gpt-4o\"\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        let f = ResponseFormat::JsonSchema;
        let text = "A table for 4 at 7pm, please";
        let got = parse_reply(
            "```json\n{\"spans\": [{\"slot\": \"People\", \"text\": \"4\"}, {\"slot\": \"time\", \"text\": \"7PM\"}]}\n```",
            &spec,
            text,
            f,
        )
        .unwrap();
        let TaskOutput::Extract { spans } = got else {
            panic!("{got:?}")
        };
        let at: Vec<_> = spans
            .iter()
            .map(|s| (s.slot.as_str(), s.start, s.end, s.text.as_str()))
            .collect();
        assert_eq!(at, [("people", 12, 13, "4"), ("time", 17, 20, "7pm")]);
        for (reply, says) in [
            (
                "{\"spans\": [{\"slot\": \"time\", \"text\": \"8pm\"}]}",
                "not in the message",
            ),
            (
                "{\"spans\": [{\"slot\": \"date\", \"text\": \"4\"}]}",
                "`date`",
            ),
            (
                "{\"spans\": [{\"slot\": \"time\"}]}",
                "string `slot` and `text`",
            ),
            ("{\"label\": \"time\"}", "no `spans`"),
            ("at 7pm", "not a JSON object"),
        ] {
            let e = parse_reply(reply, &spec, text, f).unwrap_err();
            assert!(e.contains(says), "{reply}: {e}");
        }
        assert!(parse_reply("{\"spans\": []}", &spec, text, f).is_ok());
        assert!(repair_for("x", &spec).contains("\"spans\""));
        assert!(spec.render_user(text).contains("- people\n"));
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
