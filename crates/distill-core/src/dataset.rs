//! Labelled examples for training and evaluation, read from either a teacher dataset
//! (the JSONL `distill teach` writes) or any CSV/JSONL with a text and a label column.

use crate::error::{CoreError, Result};
use crate::input::{read_inputs, Columns};
use crate::record::TeacherRecord;
use crate::spec::{InputFormat, LabelSet};
use std::io::BufRead;
use std::path::Path;

/// One example. `label` is what a student learns from (the teacher's label in a teacher
/// dataset, else the label column); `gold` is the known-correct label when there is one.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub id: String,
    pub text: String,
    pub label: Option<String>,
    pub gold: Option<String>,
}

/// What was read, and what was skipped and why (reported to the user, never silent).
#[derive(Debug, Clone, Default)]
pub struct LoadedExamples {
    pub examples: Vec<Example>,
    /// Teacher records that were `invalid` or `failed` and so carry no label.
    pub skipped_unlabelled: usize,
    /// True when the file was a teacher dataset.
    pub from_teacher: bool,
}

/// True when `path` looks like a teacher dataset (JSONL whose first record has `status`).
pub fn is_teacher_dataset(path: &Path) -> Result<bool> {
    if InputFormat::from_path(path) != Some(InputFormat::Jsonl) {
        return Ok(false);
    }
    let f = std::fs::File::open(path).map_err(|e| CoreError::io(path, e))?;
    for line in std::io::BufReader::new(f).lines() {
        let line = line.map_err(|e| CoreError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| CoreError::data(path, 1, "line", format!("not valid JSON: {e}")))?;
        return Ok(v.get("status").is_some() && v.get("output").is_some()
            || v.get("status").is_some() && v.get("provider").is_some());
    }
    Ok(false)
}

/// Loads examples. For a teacher dataset the label is the teacher's and `gold` its gold;
/// otherwise `cols.gold` names the label column (and that label is also the gold).
/// Every label must be in `labels`; an unknown one is an error naming file, line and field.
pub fn load_examples(path: &Path, cols: &Columns, labels: &LabelSet) -> Result<LoadedExamples> {
    let mut out = LoadedExamples::default();
    if is_teacher_dataset(path)? {
        out.from_teacher = true;
        let f = std::fs::File::open(path).map_err(|e| CoreError::io(path, e))?;
        for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
            let line_no = i as u64 + 1;
            let line = line.map_err(|e| CoreError::io(path, e))?;
            if line.trim().is_empty() {
                continue;
            }
            let rec: TeacherRecord = serde_json::from_str(&line).map_err(|e| {
                CoreError::data(
                    path,
                    line_no,
                    "record",
                    format!("not a teacher record: {e}"),
                )
            })?;
            if rec.status == crate::record::RecordStatus::Ok {
                if let Some(crate::record::TaskOutput::Multilabel { labels: ls }) = &rec.output {
                    if let Some(l) = ls.iter().find(|l| !labels.contains(l)) {
                        return Err(CoreError::data(
                            path,
                            line_no,
                            "output.labels",
                            format!("label `{l}` is not in the task's label set"),
                        ));
                    }
                }
            }
            let label = rec.answer(labels);
            if label.is_none() {
                out.skipped_unlabelled += 1;
            }
            let field = if labels.is_multilabel() {
                "output.labels"
            } else {
                "output.label"
            };
            for (field, l) in [(field, &label), ("gold", &rec.gold)] {
                if let Some(l) = l {
                    if let Err(e) = labels.parse_set(l) {
                        return Err(CoreError::data(path, line_no, field, e));
                    }
                }
            }
            out.examples.push(Example {
                id: rec.id,
                text: rec.text,
                label,
                gold: rec.gold,
            });
        }
    } else {
        for item in read_inputs(path, None, cols)? {
            let item = item?;
            if let Some(l) = &item.gold {
                if let Err(e) = labels.parse_set(l) {
                    return Err(CoreError::data(
                        path,
                        item.line,
                        cols.gold.as_deref().unwrap_or("label"),
                        e,
                    ));
                }
            }
            out.examples.push(Example {
                id: item.id,
                text: item.text,
                label: item.gold.clone(),
                gold: item.gold,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_csv_and_rejects_unknown_labels() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t.csv");
        std::fs::write(&p, "text,category\nhi,a\nyo,b\n").unwrap();
        let labels = LabelSet::new(vec!["a".into(), "b".into()]);
        let cols = Columns {
            context: Default::default(),
            text: "text".into(),
            gold: Some("category".into()),
            id: None,
            conversation: false,
        };
        let got = load_examples(&p, &cols, &labels).unwrap();
        assert_eq!(got.examples.len(), 2);
        assert!(!got.from_teacher);
        std::fs::write(&p, "text,category\nhi,a\nyo,zzz\n").unwrap();
        let e = load_examples(&p, &cols, &labels).unwrap_err().to_string();
        assert!(e.contains("t.csv:3: field `category`"), "{e}");
    }
}
