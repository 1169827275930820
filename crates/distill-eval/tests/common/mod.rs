//! Fixtures shared by the eval tests: a real Banking77 slice, a task spec pointing at it, a
//! teacher JSONL with a known error rate, and a `Student` test double with fixed logits.
#![allow(dead_code)]

use distill_core::{RecordStatus, TaskOutput, TeacherRecord, Usage};
use distill_train::student::{ModelMeta, Student, StudentKind};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub fn banking77() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/datasets/banking77")
}

pub fn labels() -> Vec<String> {
    let text = std::fs::read_to_string(banking77().join("categories.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The first `n` rows of the Banking77 test set as (text, category).
pub fn test_rows(n: usize) -> Vec<(String, String)> {
    let mut r = csv::Reader::from_path(banking77().join("test.csv")).unwrap();
    r.records()
        .take(n)
        .map(|x| {
            let x = x.unwrap();
            (x[0].to_string(), x[1].to_string())
        })
        .collect()
}

/// A temp dir with `task.toml` (labels from the shared categories.json) and `test.csv` holding
/// the first `n` test rows. `gold` false drops the category column.
pub fn task_dir(n: usize, gold: bool) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let cats = banking77().join("categories.json");
    let gold_line = if gold {
        "gold_column = \"category\"\n"
    } else {
        ""
    };
    std::fs::write(
        d.path().join("task.toml"),
        format!(
            "name = \"banking77\"\nkind = \"classify\"\n[input]\npath = \"test.csv\"\ntest_path = \"test.csv\"\n\
             text_column = \"text\"\n{gold_line}[labels]\nfile = \"{}\"\n[teacher]\nprovider = \"openai\"\n\
             model = \"gpt-4o\"\n",
            cats.display()
        ),
    )
    .unwrap();
    let mut w = csv::Writer::from_path(d.path().join("test.csv")).unwrap();
    if gold {
        w.write_record(["text", "category"]).unwrap();
    } else {
        w.write_record(["text"]).unwrap();
    }
    for (t, c) in test_rows(n) {
        if gold {
            w.write_record([t.as_str(), c.as_str()]).unwrap();
        } else {
            w.write_record([t.as_str()]).unwrap();
        }
    }
    w.flush().unwrap();
    d
}

/// Deterministic pseudo-random number in [0, 1) from a string and a salt.
pub fn unit(s: &str, salt: u64) -> f64 {
    let mut h: u64 = 1469598103934665603 ^ salt;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(1099511628211);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51afd7ed558ccd);
    h ^= h >> 33;
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Teacher records for the first `n` test rows: right with probability `accuracy`.
pub fn write_teacher_labels(path: &Path, n: usize, accuracy: f64) -> Vec<Option<String>> {
    let labels = labels();
    let mut out = String::new();
    let mut given = Vec::new();
    for (i, (text, gold)) in test_rows(n).into_iter().enumerate() {
        let label = if unit(&text, 1) < accuracy {
            gold.clone()
        } else {
            let j = (labels.iter().position(|l| *l == gold).unwrap() + 1) % labels.len();
            labels[j].clone()
        };
        given.push(Some(label.clone()));
        let rec = TeacherRecord {
            context: Default::default(),
            id: (i + 1).to_string(),
            text,
            status: RecordStatus::Ok,
            output: Some(TaskOutput::Classify { label }),
            gold: Some(gold),
            raw: None,
            error: None,
            provider: "openai".into(),
            model: "gpt-4o".into(),
            usage: Usage {
                prompt_tokens: 600,
                completion_tokens: 8,
                ..Default::default()
            },
            cost_usd: 0.00158,
            latency_ms: 300,
            cached: false,
            batch: false,
            request_hash: format!("h{}", i + 1),
        };
        out.push_str(&serde_json::to_string(&rec).unwrap());
        out.push('\n');
    }
    std::fs::write(path, out).unwrap();
    given
}

pub fn meta(labels: Vec<String>) -> ModelMeta {
    ModelMeta {
        out_of_scope: None,
        format_version: 1,
        task: "banking77".into(),
        labels,
        kind: StudentKind::Linear,
        base_model: None,
        data_hash: "x".into(),
        label_source: "teacher".into(),
        n_train: 9000,
        n_dev: 1000,
        dev_accuracy: 0.9,
        dev_loss: None,
        temperature: 1.0,
        max_len: None,
        epochs_run: 3,
        train_wall_s: 60.0,
        device: "cpu".into(),
        threads: 2,
        examples_per_s: 100.0,
        train_cost_usd: 0.0,
        seed: 0,
        created: "2026-01-01T00:00:00Z".into(),
        distill_version: "0.1.0".into(),
        hyper: serde_json::Value::Null,
        quantization: None,
        multilabel: None,
    }
}

/// A student that "knows" the gold label of each test text and is wrong on a `noise` share of
/// them, with low confidence where it is wrong (so a cascade has something to find) and a few
/// confident mistakes (so it cannot be perfect).
pub struct FixedStudent {
    pub meta: ModelMeta,
    pub answers: HashMap<String, usize>,
    pub noise: f64,
    pub salt: u64,
}

impl FixedStudent {
    pub fn new(n: usize, noise: f64, salt: u64) -> Self {
        let labels = labels();
        let answers = test_rows(n)
            .into_iter()
            .map(|(t, g)| {
                let i = labels.iter().position(|l| *l == g).unwrap();
                (t, i)
            })
            .collect();
        Self {
            meta: meta(labels),
            answers,
            noise,
            salt,
        }
    }
}

impl Student for FixedStudent {
    fn meta(&self) -> &ModelMeta {
        &self.meta
    }
    fn logits(&self, texts: &[&str]) -> distill_train::Result<Vec<Vec<f32>>> {
        let k = self.meta.labels.len();
        Ok(texts
            .iter()
            .map(|t| {
                let gold = self.answers.get(*t).copied().unwrap_or(0);
                let mut row = vec![0f32; k];
                let u = unit(t, self.salt);
                if u < self.noise {
                    // Wrong, mostly unsure.
                    let wrong = (gold + 3) % k;
                    row[wrong] = if u < self.noise * 0.1 { 6.0 } else { 2.0 };
                    row[gold] = 1.5;
                } else {
                    row[gold] = 4.0 + 4.0 * unit(t, self.salt + 7) as f32;
                }
                row
            })
            .collect())
    }
}
