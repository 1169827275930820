//! The eval's inputs joined into one table of test items: text, gold label, the teacher's
//! label (and what the teacher's call cost), read from a test file, a teacher dataset or a
//! predictions file written by an earlier eval.

use crate::answer_space::AnswerSpace;
use crate::error::{EvalError, Result};
use distill_core::dataset::{is_teacher_dataset, load_examples};
use distill_core::input::Columns;
use distill_core::{CoreError, TaskSpec, TeacherRecord, Usage};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::{Path, PathBuf};

/// The test set, one entry per item in file order. Answers are indices into the eval's
/// [`AnswerSpace`] (the task's labels, or the label sets seen).
#[derive(Debug, Clone, Default)]
pub struct TestItems {
    pub path: PathBuf,
    pub ids: Vec<String>,
    pub texts: Vec<String>,
    pub gold: Vec<Option<usize>>,
    pub teacher: Vec<Option<usize>>,
    /// Billed usage of the teacher's call for the item, when a teacher record carried it.
    pub teacher_usage: Vec<Option<Usage>>,
    pub teacher_hash: Vec<Option<String>>,
    /// The file the teacher labels came from, if any.
    pub teacher_source: Option<PathBuf>,
}

impl TestItems {
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
    pub fn n_gold(&self) -> usize {
        self.gold.iter().flatten().count()
    }
    pub fn n_teacher(&self) -> usize {
        self.teacher.iter().flatten().count()
    }
    /// Appends another set's items (out-of-scope inputs after the test file's).
    pub fn extend(&mut self, other: TestItems) {
        self.ids.extend(other.ids);
        self.texts.extend(other.texts);
        self.gold.extend(other.gold);
        self.teacher.extend(other.teacher);
        self.teacher_usage.extend(other.teacher_usage);
        self.teacher_hash.extend(other.teacher_hash);
    }
}

/// Inputs known to be out of scope (`--out-of-scope`): a CSV/JSONL of texts (the spec's text
/// column) or a teacher dataset of them (`distill teach --input FILE`, whose answers are the
/// teacher's). Gold is the out-of-scope label `oos`; ids are prefixed `oos:` so they never
/// collide with the test file's.
pub fn load_out_of_scope(
    spec: &TaskSpec,
    space: &AnswerSpace,
    path: &Path,
    oos: usize,
) -> Result<TestItems> {
    let mut items = TestItems {
        path: path.to_path_buf(),
        ..Default::default()
    };
    if is_teacher_dataset(path)? {
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
            let teacher = teacher_answer(space, &rec, path, line_no)?;
            items.ids.push(format!("oos:{}", rec.id));
            items.texts.push(rec.text);
            items.gold.push(Some(oos));
            items.teacher.push(teacher);
            items
                .teacher_usage
                .push((rec.usage != Usage::default()).then_some(rec.usage));
            items
                .teacher_hash
                .push((!rec.request_hash.is_empty()).then_some(rec.request_hash));
        }
    } else {
        let cols = Columns {
            gold: None,
            id: None,
            ..Columns::from(&spec.input)
        };
        for item in distill_core::input::read_inputs(path, None, &cols)? {
            let item = item?;
            items.ids.push(format!("oos:{}", item.id));
            items.texts.push(item.text);
            items.gold.push(Some(oos));
            items.teacher.push(None);
            items.teacher_usage.push(None);
            items.teacher_hash.push(None);
        }
    }
    if items.is_empty() {
        return Err(CoreError::file(path, "no out-of-scope inputs").into());
    }
    Ok(items)
}

/// Reads the test file (CSV/JSONL with the spec's columns, or a teacher dataset).
pub fn load_test(spec: &TaskSpec, space: &AnswerSpace, path: &Path) -> Result<TestItems> {
    let cols = Columns::from(&spec.input);
    let loaded = load_examples(path, &cols, &spec.labels)?;
    if loaded.examples.is_empty() {
        return Err(CoreError::file(path, "the test file has no items").into());
    }
    let idx = |l: &Option<String>| l.as_deref().and_then(|l| space.index_of(l));
    let n = loaded.examples.len();
    let mut items = TestItems {
        path: path.to_path_buf(),
        ids: loaded.examples.iter().map(|e| e.id.clone()).collect(),
        texts: loaded.examples.iter().map(|e| e.text.clone()).collect(),
        gold: loaded.examples.iter().map(|e| idx(&e.gold)).collect(),
        teacher: vec![None; n],
        teacher_usage: vec![None; n],
        teacher_hash: vec![None; n],
        teacher_source: None,
    };
    if loaded.from_teacher {
        attach_teacher_labels(&mut items, space, path)?;
    }
    Ok(items)
}

/// Joins a teacher JSONL (from `distill teach` on the test inputs) to the items by id. A
/// record whose text differs from the test item's is an error: the file was taught from
/// different data and its labels would silently score the wrong sentences.
pub fn attach_teacher_labels(
    items: &mut TestItems,
    space: &AnswerSpace,
    path: &Path,
) -> Result<()> {
    let by_id: HashMap<&str, usize> = items
        .ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let f = std::fs::File::open(path).map_err(|e| CoreError::io(path, e))?;
    let mut teacher = vec![None; items.len()];
    let mut usage = vec![None; items.len()];
    let mut hash = vec![None; items.len()];
    let (mut matched, mut records) = (0usize, 0usize);
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line_no = i as u64 + 1;
        let line = line.map_err(|e| CoreError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        records += 1;
        let rec: TeacherRecord = serde_json::from_str(&line).map_err(|e| {
            CoreError::data(
                path,
                line_no,
                "record",
                format!("not a teacher record: {e}"),
            )
        })?;
        let Some(&at) = by_id.get(rec.id.as_str()) else {
            continue;
        };
        if rec.text != items.texts[at] {
            return Err(CoreError::data(
                path,
                line_no,
                "text",
                format!(
                    "id `{}` has a different text than in the test file {}; were these labels taught \
                     from this test file?",
                    rec.id,
                    items.path.display()
                ),
            )
            .into());
        }
        matched += 1;
        teacher[at] = teacher_answer(space, &rec, path, line_no)?;
        if rec.usage != Usage::default() {
            usage[at] = Some(rec.usage);
        }
        if !rec.request_hash.is_empty() {
            hash[at] = Some(rec.request_hash.clone());
        }
    }
    if matched == 0 {
        return Err(CoreError::file(
            path,
            format!(
                "none of its {records} records has the id of an item in the test file {}; teach the \
                 test file itself (`distill teach --input {}`)",
                items.path.display(),
                items.path.display()
            ),
        )
        .into());
    }
    items.teacher = teacher;
    items.teacher_usage = usage;
    items.teacher_hash = hash;
    items.teacher_source = Some(path.to_path_buf());
    Ok(())
}

/// One option's answer for one item, as `predictions.jsonl` stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredPrediction {
    pub label: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalated: Option<bool>,
}

/// One line of `predictions.jsonl`: everything needed to recompute the metrics elsewhere.
/// `split` is `calibration` or `held_out` (the cascade split); `predictions` is keyed by the
/// option names of `metrics.json` (`teacher` included when there are teacher labels).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictionLine {
    pub id: String,
    pub text: String,
    pub gold: Option<String>,
    pub teacher: Option<String>,
    #[serde(default)]
    pub split: String,
    pub predictions: BTreeMap<String, StoredPrediction>,
}

/// Student predictions replayed from a predictions file: name → per-item (label, confidence).
pub type Replayed = Vec<(String, Vec<Option<usize>>, Option<Vec<f64>>)>;

/// Reads a `predictions.jsonl` back into test items and the students' answers. Cascade and
/// teacher entries are skipped: the eval recomputes them.
pub fn load_predictions(space: &AnswerSpace, path: &Path) -> Result<(TestItems, Replayed)> {
    let f = std::fs::File::open(path).map_err(|e| CoreError::io(path, e))?;
    let mut items = TestItems {
        path: path.to_path_buf(),
        ..Default::default()
    };
    let mut names: Vec<String> = Vec::new();
    // name → (labels, confidences), filled item by item.
    type Column = (Vec<Option<usize>>, Vec<Option<f64>>);
    let mut preds: HashMap<String, Column> = HashMap::new();
    let idx = |v: &Option<String>, line: u64, field: &str| -> Result<Option<usize>> {
        match v {
            None => Ok(None),
            Some(l) => space
                .parse(l)
                .map(Some)
                .map_err(|why| EvalError::from(CoreError::data(path, line, field, why))),
        }
    };
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line_no = i as u64 + 1;
        let line = line.map_err(|e| CoreError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let p: PredictionLine = serde_json::from_str(&line).map_err(|e| {
            CoreError::data(
                path,
                line_no,
                "line",
                format!("not a predictions line: {e}"),
            )
        })?;
        let at = items.ids.len();
        items.ids.push(p.id);
        items.texts.push(p.text);
        items.gold.push(idx(&p.gold, line_no, "gold")?);
        items.teacher.push(idx(&p.teacher, line_no, "teacher")?);
        items.teacher_usage.push(None);
        items.teacher_hash.push(None);
        for (name, sp) in p.predictions {
            if name == "teacher" || name.starts_with("cascade:") {
                continue;
            }
            let field = format!("predictions.{name}.label");
            let label = idx(&Some(sp.label), line_no, &field)?;
            let e = preds.entry(name.clone()).or_insert_with(|| {
                names.push(name.clone());
                (Vec::new(), Vec::new())
            });
            e.0.resize(at, None);
            e.1.resize(at, None);
            e.0.push(label);
            e.1.push(sp.confidence);
        }
    }
    if items.is_empty() {
        return Err(CoreError::file(path, "the predictions file has no items").into());
    }
    let n = items.len();
    if items.n_teacher() > 0 {
        items.teacher_source = Some(path.to_path_buf());
    }
    let replayed = names
        .into_iter()
        .filter_map(|name| {
            let (mut l, mut c) = preds.remove(&name)?;
            l.resize(n, None);
            c.resize(n, None);
            // Confidences only count when every answered item has one.
            let conf = l
                .iter()
                .zip(&c)
                .all(|(l, c)| l.is_none() || c.is_some())
                .then(|| c.iter().map(|c| c.unwrap_or(0.0)).collect());
            Some((name, l, conf))
        })
        .collect();
    Ok((items, replayed))
}

/// A usable record's answer as an answer index; an answer outside the task is an error naming
/// the line and field.
fn teacher_answer(
    space: &AnswerSpace,
    rec: &TeacherRecord,
    path: &Path,
    line_no: u64,
) -> Result<Option<usize>> {
    let Some(text) = rec.answer_text() else {
        return Ok(None);
    };
    let field = if space.is_sets() {
        "output.labels"
    } else {
        "output.label"
    };
    space
        .parse(&text)
        .map(Some)
        .map_err(|why| CoreError::data(path, line_no, field, why).into())
}

/// True when the test file is itself a teacher dataset.
pub fn test_is_teacher_dataset(path: &Path) -> Result<bool> {
    Ok(is_teacher_dataset(path)?)
}
