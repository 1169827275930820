//! The teacher dataset record: one JSONL line per input, written by `distill teach`
//! and read by train and eval. Documented in the README ("File formats").

use serde::{Deserialize, Serialize};

/// What the teacher answered, shaped by the task kind. Serialised untagged so a
/// classification record reads naturally: `"output": {"label": "card_arrival"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TaskOutput {
    Classify { label: String },
    Multilabel { labels: Vec<String> },
    Extract { spans: Vec<Span> },
}

impl TaskOutput {
    /// The output as one answer string in `labels`' notation (see
    /// [`crate::LabelSet::parse_set`]): the label, or the joined label set.
    pub fn answer(&self, labels: &crate::LabelSet) -> Option<String> {
        match self {
            TaskOutput::Classify { label } => Some(label.clone()),
            // A label set is no answer to a one-label task, even with one label in it.
            TaskOutput::Multilabel { .. } if !labels.is_multilabel() => None,
            TaskOutput::Multilabel { labels: ls } => {
                let idx: Option<Vec<usize>> = ls.iter().map(|l| labels.index_of(l)).collect();
                Some(labels.format_set(&idx?))
            }
            TaskOutput::Extract { spans } => spans
                .iter()
                .all(|s| labels.contains(&s.slot))
                .then(|| crate::spans::format_spans(spans)),
        }
    }

    /// The answer as one string [`crate::LabelSet::parse_set`] reads, unchecked (so a reader
    /// can say which label is unknown): the label, or the labels as a JSON list.
    pub fn answer_text(&self) -> Option<String> {
        match self {
            TaskOutput::Classify { label } => Some(label.clone()),
            TaskOutput::Multilabel { labels } => serde_json::to_string(labels).ok(),
            TaskOutput::Extract { spans } => Some(crate::spans::format_spans(spans)),
        }
    }

    /// The single label of a classification output.
    pub fn label(&self) -> Option<&str> {
        match self {
            TaskOutput::Classify { label } => Some(label),
            _ => None,
        }
    }
}

/// An extracted span (for `extract` tasks): character offsets into the input text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Span {
    pub slot: String,
    pub start: usize,
    pub end: usize,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordStatus {
    /// A valid output; used for training.
    Ok,
    /// The teacher answered, but not with a valid output (even after one repair); kept for audit.
    Invalid,
    /// No usable answer (error after retries, budget stop...); `error` says why.
    Failed,
}

/// Token usage as billed. `cached_tokens` is the part of `prompt_tokens` served from the
/// provider's prompt cache; `cache_write_tokens` is Anthropic's cache creation count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub cached_tokens: u64,
    #[serde(default)]
    pub cache_write_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub reasoning_tokens: u64,
}

impl Usage {
    pub fn add(&mut self, o: &Usage) {
        self.prompt_tokens += o.prompt_tokens;
        self.cached_tokens += o.cached_tokens;
        self.cache_write_tokens += o.cache_write_tokens;
        self.completion_tokens += o.completion_tokens;
        self.reasoning_tokens += o.reasoning_tokens;
    }
}

/// One line of a teacher dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TeacherRecord {
    pub id: String,
    pub text: String,
    /// The input's context columns, as the teacher saw them (students see them too).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub context: crate::spec::Context,
    pub status: RecordStatus,
    /// The teacher's output when `status` is `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<TaskOutput>,
    /// The known-correct output, when the input had a gold column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gold: Option<String>,
    /// The teacher's raw reply text (last attempt), for audit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub provider: String,
    pub model: String,
    #[serde(default)]
    pub usage: Usage,
    /// Dollars this record cost (0 when answered from the cache).
    #[serde(default)]
    pub cost_usd: f64,
    #[serde(default)]
    pub latency_ms: u64,
    /// True when answered from distill's response cache (no money spent).
    #[serde(default)]
    pub cached: bool,
    /// True when labelled through a Batch API (batch prices).
    #[serde(default)]
    pub batch: bool,
    /// Hash of the normalised request; joins the record to its ledger row and cache entry.
    #[serde(default)]
    pub request_hash: String,
}

impl TeacherRecord {
    /// The teacher's answer in `labels`' notation, when the record is usable for training:
    /// the label, or the joined label set of a multilabel task. `None` also when a label is
    /// not in the set.
    pub fn answer(&self, labels: &crate::LabelSet) -> Option<String> {
        if self.status != RecordStatus::Ok {
            return None;
        }
        self.output.as_ref().and_then(|o| o.answer(labels))
    }

    /// [`TaskOutput::answer_text`] of a usable record.
    pub fn answer_text(&self) -> Option<String> {
        if self.status != RecordStatus::Ok {
            return None;
        }
        self.output.as_ref().and_then(|o| o.answer_text())
    }

    /// The teacher's label, when the record is usable for training.
    pub fn label(&self) -> Option<&str> {
        if self.status == RecordStatus::Ok {
            self.output.as_ref().and_then(|o| o.label())
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_set_answers_only_a_multilabel_task() {
        let out = TaskOutput::Multilabel {
            labels: vec!["b".into(), "a".into()],
        };
        let one = crate::LabelSet::new(vec!["a".into(), "b".into()]);
        assert_eq!(out.answer(&one), None);
        let mut set = one.clone();
        set.set_separator = Some("|".into());
        assert_eq!(out.answer(&set).as_deref(), Some("a|b"));
        let unknown = TaskOutput::Multilabel {
            labels: vec!["c".into()],
        };
        assert_eq!(unknown.answer(&set), None);
    }

    #[test]
    fn round_trips_and_reads_label() {
        let r = TeacherRecord {
            context: Default::default(),
            id: "1".into(),
            text: "where is my card".into(),
            status: RecordStatus::Ok,
            output: Some(TaskOutput::Classify {
                label: "card_arrival".into(),
            }),
            gold: Some("card_arrival".into()),
            raw: Some("{\"label\":\"card_arrival\"}".into()),
            error: None,
            provider: "openai".into(),
            model: "gpt-4o".into(),
            usage: Usage::default(),
            cost_usd: 0.001,
            latency_ms: 5,
            cached: false,
            batch: false,
            request_hash: "h".into(),
        };
        let line = serde_json::to_string(&r).unwrap();
        assert!(line.contains("\"output\":{\"label\":\"card_arrival\"}"));
        let back: TeacherRecord = serde_json::from_str(&line).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.label(), Some("card_arrival"));
    }
}
