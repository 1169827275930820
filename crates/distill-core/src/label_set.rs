//! The label set of a task: its labels in a fixed order, their descriptions, and the one
//! notation every stage writes answers in (a label, a multilabel task's joined set, an
//! extraction task's slot names). Loaded from a spec's `[labels]` (or `[slots]`).

use crate::error::{CoreError, Result};
use crate::spec::{InputSpec, LabelsSpec};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// The label set, in a fixed order (the order of the spec), with optional descriptions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelSet {
    pub names: Vec<String>,
    #[serde(default)]
    pub descriptions: BTreeMap<String, String>,
    /// The open-set label (`labels.out_of_scope`), one of `names`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_of_scope: Option<String>,
    /// A multilabel task's answers are sets of labels, written as one string: the labels
    /// joined by this separator (in label-set order), the empty set as `[]` (see
    /// [`LabelSet::parse_set`]). `None`: one label per answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_separator: Option<String>,
    /// Multilabel: whether an input may have no label at all.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub allow_empty: bool,
}

fn yes() -> bool {
    true
}
fn is_true(b: &bool) -> bool {
    *b
}

/// The default separator of a multilabel gold column in CSV (and of label sets in records).
pub const DEFAULT_SET_SEPARATOR: &str = "|";
/// How an empty label set is written where a string is expected.
pub const EMPTY_SET: &str = "[]";

/// What the teacher is told the out-of-scope label means, unless the spec describes it.
pub const DEFAULT_OUT_OF_SCOPE_DESCRIPTION: &str =
    "the message fits none of the other labels (out of scope)";

impl LabelSet {
    pub fn new(names: Vec<String>) -> Self {
        Self {
            names,
            descriptions: BTreeMap::new(),
            out_of_scope: None,
            set_separator: None,
            allow_empty: true,
        }
    }
    /// True when answers are sets of labels (a multilabel task).
    pub fn is_multilabel(&self) -> bool {
        self.set_separator.is_some()
    }
    /// Reads one answer string (a gold cell, a record's label) as label indices, sorted and
    /// unique. A single-label set accepts exactly one label. Errors say what is wrong.
    pub fn parse_set(&self, answer: &str) -> std::result::Result<Vec<usize>, String> {
        let one = |l: &str| {
            self.index_of(l.trim())
                .ok_or_else(|| format!("label `{}` is not in the task's label set", l.trim()))
        };
        let Some(sep) = &self.set_separator else {
            return one(answer).map(|i| vec![i]);
        };
        let answer = answer.trim();
        let mut set: Vec<usize> = if answer == EMPTY_SET {
            Vec::new()
        } else if answer.starts_with('[') {
            let items: Vec<String> = serde_json::from_str(answer)
                .map_err(|_| format!("`{answer}` is not a JSON list of labels"))?;
            items
                .iter()
                .map(|l| one(l))
                .collect::<std::result::Result<_, _>>()?
        } else {
            answer
                .split(sep.as_str())
                .map(one)
                .collect::<std::result::Result<_, _>>()?
        };
        set.sort_unstable();
        set.dedup();
        if set.is_empty() && !self.allow_empty {
            return Err(
                "an empty label set, and the task says every input has a label \
                        (labels.allow_empty = false)"
                    .into(),
            );
        }
        Ok(set)
    }
    /// The answer string of a set of label indices (the inverse of [`Self::parse_set`]).
    pub fn format_set(&self, set: &[usize]) -> String {
        match &self.set_separator {
            None => set
                .first()
                .map(|&i| self.names[i].clone())
                .unwrap_or_default(),
            Some(_) if set.is_empty() => EMPTY_SET.to_string(),
            Some(sep) => {
                let mut set = set.to_vec();
                set.sort_unstable();
                set.dedup();
                set.iter()
                    .map(|&i| self.names[i].as_str())
                    .collect::<Vec<_>>()
                    .join(sep)
            }
        }
    }
    /// Index of the out-of-scope label, for an open-set task.
    pub fn out_of_scope_index(&self) -> Option<usize> {
        self.out_of_scope.as_deref().and_then(|l| self.index_of(l))
    }
    pub fn len(&self) -> usize {
        self.names.len()
    }
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
    pub fn index_of(&self, label: &str) -> Option<usize> {
        self.names.iter().position(|l| l == label)
    }
    pub fn contains(&self, label: &str) -> bool {
        self.index_of(label).is_some()
    }
    /// The `{labels}` text for prompts: one label per line, with its description if any.
    pub fn prompt_list(&self) -> String {
        let mut s = String::new();
        for l in &self.names {
            s.push_str("- ");
            s.push_str(l);
            if let Some(d) = self.descriptions.get(l) {
                s.push_str(": ");
                s.push_str(d);
            }
            s.push('\n');
        }
        s
    }
}

/// A multilabel task's label set: answers are sets, joined by the gold separator.
pub(crate) fn multilabel_set(
    labels: &mut LabelSet,
    spec: &LabelsSpec,
    input: &InputSpec,
    path: &Path,
) -> Result<()> {
    if spec.out_of_scope.is_some() {
        return Err(CoreError::spec(
            path,
            "labels.out_of_scope",
            "a multilabel task answers \"none of these\" with the empty set \
             (labels.allow_empty = true), not with a label",
        ));
    }
    let sep = input
        .gold_separator
        .clone()
        .unwrap_or_else(|| DEFAULT_SET_SEPARATOR.to_string());
    if sep.trim().is_empty() {
        return Err(CoreError::spec(
            path,
            "input.gold_separator",
            "must not be empty or blank",
        ));
    }
    if let Some(l) = labels
        .names
        .iter()
        .find(|l| l.contains(sep.as_str()) || l.trim_start().starts_with('['))
    {
        return Err(CoreError::spec(
            path,
            "labels",
            format!(
                "label `{l}` contains the gold separator `{sep}` or starts with `[` (which \
                 opens a JSON list or `{EMPTY_SET}`); rename it, or choose another \
                 input.gold_separator"
            ),
        ));
    }
    labels.set_separator = Some(sep);
    labels.allow_empty = spec.allow_empty.unwrap_or(true);
    Ok(())
}

/// Reads a `[labels]` (or `[slots]`: `section`) table; at least `min` names, none empty or
/// repeated.
pub(crate) fn load_labels(
    spec: &LabelsSpec,
    section: &str,
    min: usize,
    path: &Path,
    resolve: &dyn Fn(&PathBuf) -> PathBuf,
) -> Result<LabelSet> {
    let file_field = format!("{section}.file");
    let mut set = match (&spec.values, &spec.file) {
        (Some(_), Some(_)) => {
            return Err(CoreError::spec(
                path,
                section,
                "give either `values` or `file`, not both",
            ))
        }
        (None, None) => {
            return Err(CoreError::spec(
                path,
                section,
                "give the label set as `values = [...]` or `file = \"labels.json\"`",
            ))
        }
        (Some(v), None) => LabelSet::new(v.clone()),
        (None, Some(f)) => {
            let file = resolve(f);
            let text = std::fs::read_to_string(&file).map_err(|e| {
                CoreError::spec(path, &file_field, format!("{}: {e}", file.display()))
            })?;
            let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                CoreError::spec(path, &file_field, format!("{}: {e}", file.display()))
            })?;
            match value {
                serde_json::Value::Array(items) => {
                    let mut names = Vec::with_capacity(items.len());
                    for (i, it) in items.into_iter().enumerate() {
                        match it {
                            serde_json::Value::String(s) => names.push(s),
                            _ => {
                                return Err(CoreError::spec(
                                    path,
                                    &file_field,
                                    format!("{}: item {i} is not a string", file.display()),
                                ))
                            }
                        }
                    }
                    LabelSet::new(names)
                }
                serde_json::Value::Object(map) => {
                    let mut set = LabelSet::new(map.keys().cloned().collect());
                    for (k, v) in map {
                        if let serde_json::Value::String(d) = v {
                            set.descriptions.insert(k, d);
                        }
                    }
                    set
                }
                _ => {
                    return Err(CoreError::spec(
                        path,
                        &file_field,
                        format!(
                            "{}: expected a JSON list of labels or an object label → description",
                            file.display()
                        ),
                    ))
                }
            }
        }
    };
    if set.names.len() < min {
        return Err(CoreError::spec(
            path,
            section,
            format!("the task needs at least {min} {section}"),
        ));
    }
    let mut seen = HashSet::new();
    for l in &set.names {
        if l.trim().is_empty() {
            return Err(CoreError::spec(path, section, "a name is empty"));
        }
        if !seen.insert(l.as_str()) {
            return Err(CoreError::spec(
                path,
                section,
                format!("`{l}` appears twice"),
            ));
        }
    }
    set.names.shrink_to_fit();
    Ok(set)
}
