//! Streaming batch prediction over an input file (`distill predict`).
//!
//! Rows are read a bounded window at a time, sorted by length inside the window so each batch
//! holds texts of similar length (little padding for encoder students), predicted, and written
//! back in input order. Memory stays constant however large the file is, and the output appears
//! only when the whole file succeeded (AtomicFile).

use crate::error::{Result, TrainError};
use crate::student::Student;
use distill_core::fsutil::AtomicFile;
use distill_core::input::{count_rows, read_inputs, Columns, InputItem};
use serde::Serialize;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct PredictOptions {
    /// How many alternatives each output line lists in `top`.
    pub top_k: usize,
    /// Texts per model call.
    pub batch_size: usize,
    /// Batches per length-sorting window (the memory bound is `batch_size × window_batches` rows).
    pub window_batches: usize,
    pub columns: Columns,
    pub progress: bool,
}

impl Default for PredictOptions {
    fn default() -> Self {
        Self {
            top_k: 3,
            batch_size: 64,
            window_batches: 32,
            columns: Columns {
                context: Default::default(),
                text: "text".into(),
                gold: None,
                id: None,
                conversation: false,
            },
            progress: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PredictSummary {
    pub rows: u64,
    pub wall_s: f64,
    pub rows_per_s: f64,
    /// Accuracy against the gold labels the model knows (those in its label set), when the
    /// options named a gold column.
    pub accuracy: Option<f64>,
    /// Rows whose gold label is not in the model's label set: not scored (a model cannot be
    /// right about a label it does not have; scoring them as wrong hid a wrong column or task).
    pub unknown_gold: u64,
    /// Up to five of those labels, for the message.
    pub unknown_gold_examples: Vec<String>,
    /// The model answers label sets: `accuracy` is exact-set accuracy.
    pub multilabel: bool,
}

#[derive(Serialize)]
struct TopEntry<'a> {
    label: &'a str,
    p: f32,
}

/// One line of the predictions JSONL.
#[derive(Serialize)]
struct OutLine<'a> {
    id: &'a str,
    text: &'a str,
    label: &'a str,
    /// A multilabel model's answer as a list (`label` is it in the task's notation).
    #[serde(skip_serializing_if = "Option::is_none")]
    labels: Option<&'a [String]>,
    confidence: f32,
    top: Vec<TopEntry<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gold: Option<&'a str>,
}

/// Predicts every row of `input` (CSV or JSONL) and writes JSONL to `out`:
/// `{"id", "text", "label", "confidence", "top": [{"label", "p"}], "gold"?}`, in input order.
pub fn predict_file(
    student: &dyn Student,
    input: &Path,
    out: &Path,
    opts: &PredictOptions,
) -> Result<PredictSummary> {
    let start = Instant::now();
    let batch = opts.batch_size.max(1);
    let window = batch * opts.window_batches.max(1);
    let bar = if opts.progress {
        let n = count_rows(input, None)?;
        let b = indicatif::ProgressBar::new(n);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} predict [{bar:30}] {pos}/{len} {per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut file = AtomicFile::create(out)?;
    let mut rows = 0u64;
    let (mut right, mut with_gold) = (0u64, 0u64);
    // A gold answer is scored when the model knows all of it (one label, or a label set).
    let notation = student.meta().label_set();
    let (mut unknown_gold, mut unknown_gold_examples) = (0u64, Vec::<String>::new());
    let mut buf: Vec<InputItem> = Vec::with_capacity(window);
    let mut reader = read_inputs(input, None, &opts.columns)?;
    loop {
        buf.clear();
        for item in reader.by_ref() {
            buf.push(item?);
            if buf.len() == window {
                break;
            }
        }
        if buf.is_empty() {
            break;
        }
        let mut order: Vec<usize> = (0..buf.len()).collect();
        let lens: Vec<usize> = buf.iter().map(|it| student.token_len(&it.text)).collect();
        order.sort_by_key(|&i| lens[i]);
        let mut preds = vec![None; buf.len()];
        for chunk in order.chunks(batch) {
            let texts: Vec<&str> = chunk.iter().map(|&i| buf[i].text.as_str()).collect();
            let got = student.predict(&texts, opts.top_k)?;
            for (&i, p) in chunk.iter().zip(got) {
                preds[i] = Some(p);
            }
            bar.inc(chunk.len() as u64);
        }
        for (item, p) in buf.iter().zip(preds) {
            let p = p.ok_or_else(|| TrainError::Other("a batch returned too few rows".into()))?;
            if let Some(g) = &item.gold {
                if let Ok(gold) = notation.parse_set(g) {
                    with_gold += 1;
                    right += (notation.parse_set(&p.label).ok() == Some(gold)) as u64;
                } else {
                    unknown_gold += 1;
                    if unknown_gold_examples.len() < 5 && !unknown_gold_examples.contains(g) {
                        unknown_gold_examples.push(g.clone());
                    }
                }
            }
            let line = OutLine {
                id: &item.id,
                text: &item.text,
                label: &p.label,
                labels: p.labels.as_deref(),
                confidence: p.confidence,
                top: p
                    .top
                    .iter()
                    .map(|(l, p)| TopEntry { label: l, p: *p })
                    .collect(),
                gold: item.gold.as_deref(),
            };
            serde_json::to_writer(&mut file, &line)
                .map_err(|e| TrainError::Other(format!("{}: {e}", out.display())))?;
            file.write_all(b"\n").map_err(|e| TrainError::io(out, e))?;
            rows += 1;
        }
    }
    file.commit()?;
    bar.finish_and_clear();
    let wall_s = start.elapsed().as_secs_f64();
    Ok(PredictSummary {
        rows,
        wall_s,
        rows_per_s: if wall_s > 0.0 {
            rows as f64 / wall_s
        } else {
            0.0
        },
        accuracy: (with_gold > 0).then(|| right as f64 / with_gold as f64),
        unknown_gold,
        unknown_gold_examples,
        multilabel: student.meta().multilabel.is_some(),
    })
}
