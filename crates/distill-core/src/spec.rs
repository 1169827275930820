//! The task spec: one TOML file that describes a task end to end — what the inputs are,
//! which labels exist, which premium model teaches it and how it is prompted.
//!
//! Paths inside a spec are relative to the spec file's directory.

use crate::error::{CoreError, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::label_set::{load_labels, multilabel_set};

/// An input's context: column → value as text, for the prompt and the students.
pub type Context = BTreeMap<String, String>;

static NO_CONTEXT: Context = Context::new();

/// What the teacher is shown for one input: its text and its context.
#[derive(Debug, Clone, Copy)]
pub struct PromptInput<'a> {
    pub text: &'a str,
    pub context: &'a Context,
}

impl<'a> From<&'a str> for PromptInput<'a> {
    fn from(text: &'a str) -> Self {
        Self {
            text,
            context: &NO_CONTEXT,
        }
    }
}
impl<'a> From<&'a String> for PromptInput<'a> {
    fn from(text: &'a String) -> Self {
        text.as_str().into()
    }
}
impl<'a> From<&'a crate::input::InputItem> for PromptInput<'a> {
    fn from(item: &'a crate::input::InputItem) -> Self {
        Self {
            text: &item.text,
            context: &item.context,
        }
    }
}
impl<'a> From<&'a crate::record::TeacherRecord> for PromptInput<'a> {
    fn from(r: &'a crate::record::TeacherRecord) -> Self {
        Self {
            text: &r.text,
            context: &r.context,
        }
    }
}
pub use crate::label_set::{
    LabelSet, DEFAULT_OUT_OF_SCOPE_DESCRIPTION, DEFAULT_SET_SEPARATOR, EMPTY_SET,
};

/// What the task asks for. `Classify`, `Multilabel` and `Route` go through every stage;
/// `Extract` (spans of the input, see [`crate::spans`]) goes through teach, train (the
/// linear tagger), predict, eval and serve; `export` and active-learning teach refuse it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    Classify,
    Multilabel,
    Extract,
    /// Which model tier answers a free-form request well enough (see [`crate::route`]).
    Route,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    Csv,
    Jsonl,
}

impl InputFormat {
    /// Infers the format from a file extension (`.csv`, `.jsonl`, `.json`).
    pub fn from_path(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "csv" => Some(InputFormat::Csv),
            "jsonl" | "ndjson" | "json" => Some(InputFormat::Jsonl),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// OpenAI Chat Completions or any server that speaks it (vLLM, llama.cpp, the sim-teacher).
    Openai,
    /// Anthropic Messages.
    Anthropic,
}

impl Provider {
    pub fn as_str(&self) -> &'static str {
        match self {
            Provider::Openai => "openai",
            Provider::Anthropic => "anthropic",
        }
    }
    pub fn default_base_url(&self) -> &'static str {
        match self {
            Provider::Openai => "https://api.openai.com/v1",
            Provider::Anthropic => "https://api.anthropic.com/v1",
        }
    }
    pub fn default_api_key_env(&self) -> &'static str {
        match self {
            Provider::Openai => "OPENAI_API_KEY",
            Provider::Anthropic => "ANTHROPIC_API_KEY",
        }
    }
}

/// Which JSON field carries the output-token cap. Newer OpenAI models reject `max_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MaxTokensField {
    #[default]
    MaxTokens,
    MaxCompletionTokens,
}

/// How the teacher is asked to format its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ResponseFormat {
    /// OpenAI `response_format: {type: json_schema}` (strict); Anthropic gets the schema in the prompt.
    #[default]
    JsonSchema,
    /// `response_format: {type: json_object, schema}` as llama.cpp's server honours it.
    JsonObject,
    /// Free text: the reply is parsed leniently (a bare label is accepted).
    Text,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Default input file for `teach` (relative to the spec).
    pub path: Option<PathBuf>,
    /// Default held-out test file for `eval` (relative to the spec).
    #[serde(default)]
    pub test_path: Option<PathBuf>,
    /// `csv` or `jsonl`; inferred from the extension when absent.
    #[serde(default)]
    pub format: Option<InputFormat>,
    #[serde(default = "default_text_column")]
    pub text_column: String,
    /// Column with a known-correct label, if the data has one.
    #[serde(default)]
    pub gold_column: Option<String>,
    /// Column with a stable id; when absent the 1-based data row number is the id.
    #[serde(default)]
    pub id_column: Option<String>,
    /// Multi-turn prompts: a column holding the conversation, a JSON array of `{"role",
    /// "content"}` messages ending with the user's turn (in a CSV, as a JSON string). Read
    /// instead of `text_column`; the text is its transcript.
    #[serde(default)]
    pub messages_column: Option<String>,
    /// Multilabel: what separates the labels in a CSV gold cell (default `|`; an empty set
    /// is `[]`). A JSONL gold field is a list.
    #[serde(default)]
    pub gold_separator: Option<String>,
    /// Columns the teacher and the students see beside the text (e.g. which slot the
    /// assistant had just asked for): shown to the teacher through `{context}` in the user
    /// template, one `column: value` line each (a list's items joined by ", ").
    #[serde(default)]
    pub context_columns: Vec<String>,
}

fn default_text_column() -> String {
    "text".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelsSpec {
    /// Inline list of labels.
    #[serde(default)]
    pub values: Option<Vec<String>>,
    /// A JSON file holding a list of labels (or an object label → description).
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Optional one-line description per label, shown to the teacher.
    #[serde(default)]
    pub descriptions: BTreeMap<String, String>,
    /// The label for inputs that fit none of the others (e.g. `none`), making the task
    /// open-set: offered to the teacher as an explicit answer, learned by students as a
    /// class. Added to the label set (last) when the list does not hold it.
    #[serde(default)]
    pub out_of_scope: Option<String>,
    /// Multilabel: whether an input may carry no label (default true).
    #[serde(default)]
    pub allow_empty: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherSpec {
    pub provider: Provider,
    pub model: String,
    #[serde(default)]
    pub base_url: Option<String>,
    /// Name of the environment variable holding the API key (never the key itself).
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    #[serde(default)]
    pub max_tokens_field: MaxTokensField,
    #[serde(default)]
    pub temperature: f32,
    #[serde(default = "default_system_prompt")]
    pub system_prompt: String,
    #[serde(default = "default_user_template")]
    pub user_template: String,
    /// Requests per minute allowed by the provider account (0 = unlimited).
    #[serde(default)]
    pub rpm: u32,
    /// Tokens per minute allowed by the provider account (0 = unlimited).
    #[serde(default)]
    pub tpm: u32,
    /// Per-request timeout in seconds.
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
}

fn default_max_tokens() -> u32 {
    32
}
fn default_timeout() -> u64 {
    60
}
fn default_system_prompt() -> String {
    "You are a careful annotator. Classify the user's message into exactly one of the allowed labels. \
Reply with JSON only: {\"label\": \"<label>\"}."
        .into()
}
fn default_multilabel_prompt() -> String {
    "You are a careful annotator. Give every one of the allowed labels that applies to the \
user's message (possibly several, possibly none). Reply with JSON only: \
{\"labels\": [\"<label>\", ...]}."
        .into()
}

fn default_user_template() -> String {
    "Allowed labels:\n{labels}\n\nMessage:\n{text}".into()
}
fn default_extract_prompt() -> String {
    "You are a careful annotator. Find the values of the allowed slots in the user's message. \
Copy each value exactly as it is written in the message; leave out slots it does not give. \
Reply with JSON only: {\"spans\": [{\"slot\": \"<slot>\", \"text\": \"<text from the message>\"}, ...]}."
        .into()
}
fn default_extract_template() -> String {
    "Slots:\n{slots}\n\n{context}Message:\n{text}".into()
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    #[serde(default)]
    pub format: ResponseFormat,
}

/// The raw TOML document.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpecFile {
    pub name: String,
    pub kind: TaskKind,
    #[serde(default)]
    pub description: Option<String>,
    pub input: InputSpec,
    /// Required for classification; a route task's labels are `fail`/`pass`.
    #[serde(default)]
    pub labels: Option<LabelsSpec>,
    /// Extraction tasks: the slots spans are tagged with (names, optional descriptions), in
    /// the form of `[labels]`.
    #[serde(default)]
    pub slots: Option<LabelsSpec>,
    /// Required for classification; a route task's teacher is its judge (else its top tier).
    #[serde(default)]
    pub teacher: Option<TeacherSpec>,
    /// Route tasks: the model tiers, cheapest first (`[[tier]]`).
    #[serde(default)]
    pub tier: Vec<crate::route::TierSpec>,
    /// Route tasks: the model grading each tier's answer.
    #[serde(default)]
    pub judge: Option<crate::route::JudgeSpec>,
    /// Route tasks: extra columns and the heuristic baseline.
    #[serde(default)]
    pub route: Option<crate::route::RouteOptions>,
    #[serde(default)]
    pub output: OutputSpec,
    /// Lower-case inputs before caching/serving (for case-insensitive tasks).
    #[serde(default)]
    pub case_insensitive: bool,
}

/// A validated task spec with its label set loaded and paths resolved.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    /// The spec file this came from.
    pub path: PathBuf,
    pub name: String,
    pub kind: TaskKind,
    pub description: Option<String>,
    pub input: InputSpec,
    pub labels: LabelSet,
    pub teacher: TeacherSpec,
    pub output: OutputSpec,
    pub case_insensitive: bool,
    /// Route tasks: tiers, judge and heuristic.
    pub route: Option<crate::route::RouteSpec>,
}

/// Parses TOML into `T`, naming the failing key by its path (`teacher.rpm`,
/// `labels.descriptions.c`) and its line; toml's own message names only the bad value.
pub fn parse_toml<T: serde::de::DeserializeOwned>(text: &str, path: &Path) -> Result<T> {
    let mut track = serde_path_to_error::Track::new();
    let de = toml::Deserializer::new(text);
    let result = T::deserialize(serde_path_to_error::Deserializer::new(de, &mut track));
    result.map_err(|e| {
        let key = track.path().to_string();
        let message = e.message().trim().to_string();
        // An unknown key is reported at its table; name the key itself.
        let unknown = message
            .strip_prefix("unknown field `")
            .and_then(|r| r.split('`').next())
            .map(str::to_string);
        let field = match (unknown, key.as_str()) {
            (Some(u), "." | "") => u,
            (Some(u), k) if !k.ends_with(&format!(".{u}")) && k != u => format!("{k}.{u}"),
            (_, "." | "") => "(document)".to_string(),
            (_, k) => k.to_string(),
        };
        let at = e
            .span()
            .map(|s| format!(" (line {})", text[..s.start].lines().count().max(1)))
            .unwrap_or_default();
        CoreError::spec(path, &field, format!("{message}{at}"))
    })
}

impl TaskSpec {
    /// Reads, parses and validates a spec. Every error names the file and the field.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| CoreError::io(path, e))?;
        Self::parse(&text, path)
    }

    /// Parses spec text as if read from `path` (used for relative paths and messages).
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let file: TaskSpecFile = parse_toml(text, path)?;
        let dir = path.parent().unwrap_or(Path::new("")).to_path_buf();
        let resolve = |p: &PathBuf| {
            if p.is_absolute() {
                p.clone()
            } else {
                crate::fsutil::tidy_path(&dir.join(p))
            }
        };

        if file.name.trim().is_empty() {
            return Err(CoreError::spec(path, "name", "must not be empty"));
        }
        let mut file = file;
        if file.kind == TaskKind::Extract {
            // The slot set is read where a label set is: one mechanism for names and
            // descriptions, named `slots` in messages.
            if file.labels.is_some() {
                return Err(CoreError::spec(
                    path,
                    "labels",
                    "an extract task names its slots in [slots], not [labels]",
                ));
            }
            let Some(slots) = file.slots.take() else {
                return Err(CoreError::spec(
                    path,
                    "slots",
                    "missing: an extract task needs [slots] (values = [\"date\", ...])",
                ));
            };
            for (field, given) in [
                ("slots.out_of_scope", slots.out_of_scope.is_some()),
                ("slots.allow_empty", slots.allow_empty.is_some()),
                ("input.gold_separator", file.input.gold_separator.is_some()),
            ] {
                if given {
                    return Err(CoreError::spec(
                        path,
                        field,
                        "not for an extract task: its gold is a JSON list of spans, which may be empty",
                    ));
                }
            }
            file.labels = Some(slots);
        } else if file.slots.is_some() {
            return Err(CoreError::spec(
                path,
                "slots",
                "only extract tasks (kind = \"extract\") have [slots]",
            ));
        }
        let route = if file.kind == TaskKind::Route {
            if file.labels.is_some() {
                return Err(CoreError::spec(
                    path,
                    "labels",
                    "a route task has no label set (a router learns whether each tier passes)",
                ));
            }
            let spec = crate::route::RouteSpec::new(
                std::mem::take(&mut file.tier),
                file.judge.take(),
                file.route.take().unwrap_or_default(),
                path,
            )?;
            file.labels = Some(LabelsSpec {
                values: Some(vec!["fail".into(), "pass".into()]),
                file: None,
                descriptions: BTreeMap::new(),
                out_of_scope: None,
                allow_empty: None,
            });
            if file.teacher.is_none() {
                file.teacher = Some(match &spec.judge {
                    Some(j) => crate::route::RouteSpec::judge_teacher(j),
                    None => crate::route::RouteSpec::tier_teacher(
                        spec.tiers.last().expect("at least two tiers"),
                    ),
                });
            }
            Some(spec)
        } else {
            for (field, given) in [
                ("tier", !file.tier.is_empty()),
                ("judge", file.judge.is_some()),
                ("route", file.route.is_some()),
            ] {
                if given {
                    return Err(CoreError::spec(
                        path,
                        field,
                        "only route tasks (kind = \"route\") have tiers, a judge and [route]",
                    ));
                }
            }
            None
        };
        let Some(labels_spec) = file.labels.clone() else {
            return Err(CoreError::spec(
                path,
                "labels",
                "missing: a classification task needs [labels]",
            ));
        };
        if let Some(t) = file.teacher.as_mut() {
            let defaults = t.system_prompt == default_system_prompt();
            match file.kind {
                TaskKind::Multilabel if defaults => t.system_prompt = default_multilabel_prompt(),
                TaskKind::Extract => {
                    if defaults {
                        t.system_prompt = default_extract_prompt();
                    }
                    if t.user_template == default_user_template() {
                        t.user_template = default_extract_template();
                    }
                }
                _ => {}
            }
        }
        let Some(teacher) = file.teacher.clone() else {
            return Err(CoreError::spec(
                path,
                "teacher",
                "missing: a classification task needs [teacher]",
            ));
        };
        let (section, min) = match file.kind {
            TaskKind::Extract => ("slots", 1),
            _ => ("labels", 2),
        };
        let mut labels = load_labels(&labels_spec, section, min, path, &resolve)?;
        if file.kind == TaskKind::Multilabel {
            multilabel_set(&mut labels, &labels_spec, &file.input, path)?;
        } else {
            if labels_spec.allow_empty.is_some() {
                return Err(CoreError::spec(
                    path,
                    "labels.allow_empty",
                    "only multilabel tasks have label sets that may be empty",
                ));
            }
            if file.input.gold_separator.is_some() {
                return Err(CoreError::spec(
                    path,
                    "input.gold_separator",
                    "only multilabel tasks have several gold labels per input",
                ));
            }
        }
        if let Some(oos) = &labels_spec.out_of_scope {
            let oos = oos.trim();
            if oos.is_empty() {
                return Err(CoreError::spec(
                    path,
                    "labels.out_of_scope",
                    "must name a label (e.g. \"none\")",
                ));
            }
            if !labels.contains(oos) {
                labels.names.push(oos.to_string());
            }
            labels.out_of_scope = Some(oos.to_string());
        }
        for key in labels_spec.descriptions.keys() {
            if !labels.contains(key) {
                return Err(CoreError::spec(
                    path,
                    &format!("{section}.descriptions.{key}"),
                    format!("describes `{key}`, which is not in [{section}]"),
                ));
            }
        }
        let t = &teacher;
        if t.model.trim().is_empty() {
            return Err(CoreError::spec(path, "teacher.model", "must not be empty"));
        }
        if !t.user_template.contains("{text}") {
            return Err(CoreError::spec(
                path,
                "teacher.user_template",
                "must contain the placeholder {text}",
            ));
        }
        if !file.input.context_columns.is_empty() && file.kind != TaskKind::Extract {
            return Err(CoreError::spec(
                path,
                "input.context_columns",
                "only extract tasks read context columns so far (their students and eval see \
                 them; the other kinds' students and serve would not)",
            ));
        }
        if !file.input.context_columns.is_empty() && !t.user_template.contains("{context}") {
            return Err(CoreError::spec(
                path,
                "teacher.user_template",
                "input.context_columns are named, so the template must show them: add the \
                 placeholder {context} (one `column: value` line each)",
            ));
        }
        if let Some(c) = file.input.context_columns.iter().find(|c| {
            c.trim().is_empty()
                || **c == file.input.text_column
                || Some(*c) == file.input.gold_column.as_ref()
        }) {
            return Err(CoreError::spec(
                path,
                "input.context_columns",
                format!("`{c}` is empty, or the text or gold column"),
            ));
        }
        if t.max_tokens == 0 {
            return Err(CoreError::spec(path, "teacher.max_tokens", "must be > 0"));
        }
        if !(0.0..=2.0).contains(&t.temperature) {
            return Err(CoreError::spec(
                path,
                "teacher.temperature",
                "must be between 0 and 2",
            ));
        }
        if let Some(url) = &t.base_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(CoreError::spec(
                    path,
                    "teacher.base_url",
                    format!("`{url}` is not an http(s) URL"),
                ));
            }
        }
        if let Some(env) = &t.api_key_env {
            if env.is_empty() || env.starts_with("sk-") || env.contains(char::is_whitespace) {
                return Err(CoreError::spec(
                    path,
                    "teacher.api_key_env",
                    "must name an environment variable (e.g. OPENAI_API_KEY), not hold a key",
                ));
            }
        }
        if file.input.text_column.is_empty() {
            return Err(CoreError::spec(
                path,
                "input.text_column",
                "must not be empty",
            ));
        }
        let mut input = file.input.clone();
        input.path = input.path.as_ref().map(resolve);
        input.test_path = input.test_path.as_ref().map(resolve);
        labels.descriptions.extend(labels_spec.descriptions.clone());
        if let Some(oos) = labels.out_of_scope.clone() {
            labels
                .descriptions
                .entry(oos)
                .or_insert_with(|| DEFAULT_OUT_OF_SCOPE_DESCRIPTION.to_string());
        }
        Ok(TaskSpec {
            path: path.to_path_buf(),
            name: file.name,
            kind: file.kind,
            description: file.description,
            input,
            labels,
            teacher,
            output: file.output,
            case_insensitive: file.case_insensitive,
            route,
        })
    }

    pub fn base_url(&self) -> &str {
        self.teacher
            .base_url
            .as_deref()
            .unwrap_or_else(|| self.teacher.provider.default_base_url())
    }

    pub fn api_key_env(&self) -> &str {
        self.teacher
            .api_key_env
            .as_deref()
            .unwrap_or_else(|| self.teacher.provider.default_api_key_env())
    }

    /// The user message for one input without context.
    pub fn render_user(&self, text: &str) -> String {
        self.render_user_with(text, &Context::new())
    }

    /// The user message for one input: the template with the label (slot) list, the
    /// context lines (`column: value`, those with a value) and the text.
    pub fn render_user_with(&self, text: &str, context: &Context) -> String {
        let list = self.labels.prompt_list();
        let context: String = context
            .iter()
            .filter(|(_, v)| !v.trim().is_empty())
            .map(|(k, v)| format!("{k}: {v}\n"))
            .collect();
        self.teacher
            .user_template
            .replace("{labels}", &list)
            .replace("{slots}", &list)
            .replace("{context}", &context)
            .replace("{text}", text)
    }

    /// Checks a gold answer of a task whose gold has structure: a label set
    /// ([`LabelSet::parse_set`]) or a span list ([`crate::spans::parse_spans`], against the
    /// input's `text`). One-label gold is not checked: a label outside the set is scored as
    /// a wrong answer.
    pub fn check_gold(&self, gold: &str, text: &str) -> std::result::Result<(), String> {
        if self.is_extract() {
            crate::spans::parse_spans(gold, text, &self.labels).map(drop)
        } else if self.labels.is_multilabel() {
            self.labels.parse_set(gold).map(drop)
        } else {
            Ok(())
        }
    }

    /// True for a task whose answers are spans of the input.
    pub fn is_extract(&self) -> bool {
        self.kind == TaskKind::Extract
    }

    /// A typical teacher reply naming `label`, for estimating reply tokens before a call
    /// (dry runs, eval's cost of unanswered items, serve's dollars saved): `{"label": ...}`,
    /// or for a label set a two-label reply, as multi-intent inputs usually get.
    pub fn example_reply(&self, label: &str) -> String {
        if self.is_extract() {
            let span = serde_json::json!({ "slot": label, "text": "a few words" });
            return serde_json::json!({ "spans": [span, span] }).to_string();
        }
        if self.labels.is_multilabel() {
            serde_json::json!({ "labels": [label, label] }).to_string()
        } else {
            serde_json::json!({ "label": label }).to_string()
        }
    }

    /// The JSON schema the teacher's reply must satisfy: `{"label": <one of the labels>}`,
    /// or for a multilabel task `{"labels": [<labels>...]}` (duplicates are dropped when read:
    /// strict structured outputs do not take `uniqueItems`).
    pub fn output_schema(&self) -> serde_json::Value {
        if self.is_extract() {
            return serde_json::json!({
                "type": "object",
                "properties": {"spans": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "slot": {"type": "string", "enum": self.labels.names},
                            "text": {"type": "string"}
                        },
                        "required": ["slot", "text"],
                        "additionalProperties": false
                    }
                }},
                "required": ["spans"],
                "additionalProperties": false
            });
        }
        if self.labels.is_multilabel() {
            return serde_json::json!({
                "type": "object",
                "properties": {"labels": {
                    "type": "array",
                    "items": {"type": "string", "enum": self.labels.names}
                }},
                "required": ["labels"],
                "additionalProperties": false
            });
        }
        serde_json::json!({
            "type": "object",
            "properties": {"label": {"type": "string", "enum": self.labels.names}},
            "required": ["label"],
            "additionalProperties": false
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"
name = "toy"
kind = "classify"
[input]
path = "in.csv"
gold_column = "category"
[labels]
values = ["a", "b"]
descriptions = { a = "first" }
[teacher]
provider = "openai"
model = "gpt-4o-mini"
"#;

    #[test]
    fn parses_and_resolves_paths() {
        let s = TaskSpec::parse(SPEC, Path::new("/x/task.toml")).unwrap();
        assert_eq!(s.input.path.clone().unwrap(), PathBuf::from("/x/in.csv"));
        assert_eq!(s.labels.names, vec!["a", "b"]);
        assert!(s.render_user("hi").contains("- a: first\n- b\n"));
        assert_eq!(s.api_key_env(), "OPENAI_API_KEY");
    }

    #[test]
    fn only_extract_tasks_read_context_columns() {
        let with = SPEC.replace(
            "gold_column = \"category\"",
            "gold_column = \"category\"\ncontext_columns = [\"asked\"]",
        );
        let e = TaskSpec::parse(&with, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("input.context_columns") && e.contains("only extract"),
            "{e}"
        );
    }

    #[test]
    fn multilabel_sets_read_and_write_one_notation() {
        let ml = SPEC.replace("kind = \"classify\"", "kind = \"multilabel\"");
        let s = TaskSpec::parse(&ml, Path::new("t.toml")).unwrap();
        assert!(s.labels.is_multilabel());
        assert_eq!(s.labels.parse_set("b|a").unwrap(), vec![0, 1]);
        assert_eq!(
            s.labels.parse_set("[\"b\", \"a\", \"b\"]").unwrap(),
            vec![0, 1]
        );
        assert_eq!(s.labels.format_set(&[1, 0]), "a|b");
        assert_eq!(s.labels.parse_set("[]").unwrap(), Vec::<usize>::new());
        assert!(s.labels.parse_set("a|c").unwrap_err().contains("`c`"));
        // A label that opens like a JSON list could not be told from one.
        for bad in ["[a]", "a|b"] {
            let e = TaskSpec::parse(
                &ml.replace(
                    "values = [\"a\", \"b\"]",
                    &format!("values = [\"{bad}\", \"b\"]"),
                )
                .replace("descriptions = { a = \"first\" }", ""),
                Path::new("t.toml"),
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("labels") && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn out_of_scope_joins_the_label_set_with_a_description() {
        let open = SPEC.replace(
            "descriptions = { a = \"first\" }",
            "descriptions = { a = \"first\" }\nout_of_scope = \"none\"",
        );
        let s = TaskSpec::parse(&open, Path::new("/x/task.toml")).unwrap();
        assert_eq!(s.labels.names, vec!["a", "b", "none"]);
        assert_eq!(s.labels.out_of_scope_index(), Some(2));
        assert!(
            s.render_user("hi")
                .contains("- none: the message fits none"),
            "{}",
            s.render_user("hi")
        );
        let named = SPEC.replace("values = [\"a\", \"b\"]", "values = [\"a\", \"other\"]").replace(
            "descriptions = { a = \"first\" }",
            "descriptions = { a = \"first\", other = \"anything else\" }\nout_of_scope = \"other\"",
        );
        let s = TaskSpec::parse(&named, Path::new("/x/task.toml")).unwrap();
        assert_eq!(s.labels.names, vec!["a", "other"]);
        assert!(s.render_user("hi").contains("- other: anything else"));
        let bad = open.replace("out_of_scope = \"none\"", "out_of_scope = \" \"");
        let e = TaskSpec::parse(&bad, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("labels.out_of_scope"), "{e}");
    }

    #[test]
    fn errors_name_the_field() {
        let bad = SPEC.replace("model = \"gpt-4o-mini\"", "model = \"m\"\ntemprature = 1");
        let e = TaskSpec::parse(&bad, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("temprature"), "{e}");
        let bad = SPEC.replace(
            "descriptions = { a = \"first\" }",
            "descriptions = { c = \"x\" }",
        );
        let e = TaskSpec::parse(&bad, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("labels.descriptions.c"), "{e}");
        // Type errors name the key, not the value or "(document)".
        let bad = SPEC.replace("model = \"gpt-4o-mini\"", "model = \"m\"\nrpm = -5");
        let e = TaskSpec::parse(&bad, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("field `teacher.rpm`"), "{e}");
        let bad = SPEC.replace("model = \"gpt-4o-mini\"", "model = 5");
        let e = TaskSpec::parse(&bad, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("field `teacher.model`"), "{e}");
        let bad = format!("{SPEC}\nbogus = 1\n");
        let e = TaskSpec::parse(&bad, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("field `bogus`"), "{e}");
        let bad = SPEC.replace("values = [\"a\", \"b\"]", "values = [\"a\", \"a\"]");
        let e = TaskSpec::parse(&bad, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("appears twice"), "{e}");
    }
}
