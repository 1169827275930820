//! An extraction student's model directory: `distill.json` (`"kind": "tagger"`, which
//! student, the slots, the context columns it reads, how it was trained) and
//! `model.safetensors`: the linear tagger's `weights` [buckets × tags] and `bias` [tags], or
//! the encoder tagger's `BertForTokenClassification` (with `config.json` and the tokenizer,
//! see [`super::encoder`]). Written whole or not at all.

use super::linear::{LinearTagger, TaggerTrainStats};
use super::SpanTagger;
use crate::error::{Result, TrainError};
use distill_core::spans::Span;
use distill_core::spec::{Context, TaskSpec};
use distill_core::TeacherRecord;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaggerMeta {
    /// Always `tagger`: what tells this directory from a classifier's.
    pub kind: String,
    /// `linear-tagger` or `encoder-tagger`.
    pub student: String,
    pub task: String,
    pub slots: Vec<String>,
    /// The input columns shown to the student beside the text (`[input] context_columns`).
    pub context_columns: Vec<String>,
    pub buckets: usize,
    pub created: String,
    pub train_inputs: usize,
    pub dev_inputs: usize,
    /// Exact-match span F1 on the dev split (absent without one).
    pub dev_span_f1: Option<f64>,
    /// Training spans the word tokens could not represent exactly (learned widened).
    pub widened_spans: usize,
    /// The encoder tagger's base model, window (tokens) and epochs; absent for linear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_len: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs_run: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Training's wall seconds and CPU threads: what eval charges as its one-time cost
    /// (absent in models from before they were recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_wall_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
}

pub const KIND: &str = "tagger";

/// True for a directory [`save`] wrote.
pub fn is_tagger_dir(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("distill.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| v.get("kind").and_then(|k| k.as_str()) == Some(KIND))
}

pub fn save(out: &Path, force: bool, tagger: &LinearTagger, meta: &TaggerMeta) -> Result<()> {
    crate::write_model_dir(out, force, |dir| {
        let (weights, bias) = tagger.parameters();
        let cpu = candle_core::Device::Cpu;
        let n = tagger.tags.len();
        let tensors = HashMap::from([
            (
                "weights".to_string(),
                candle_core::Tensor::from_slice(weights, (weights.len() / n, n), &cpu)?,
            ),
            (
                "bias".to_string(),
                candle_core::Tensor::from_slice(bias, n, &cpu)?,
            ),
        ]);
        candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
        let json = serde_json::to_string_pretty(meta)
            .map_err(|e| TrainError::Other(format!("distill.json: {e}")))?;
        std::fs::write(dir.join("distill.json"), json)
            .map_err(|e| TrainError::io(dir.join("distill.json"), e))
    })
}

fn read_meta(dir: &Path) -> Result<TaggerMeta> {
    let text = std::fs::read_to_string(dir.join("distill.json"))
        .map_err(|e| TrainError::model(dir, format!("cannot read distill.json ({e})")))?;
    serde_json::from_str(&text).map_err(|e| TrainError::model(dir, format!("distill.json: {e}")))
}

/// Loads any extraction student (the encoder tagger on `device`).
pub fn load(dir: &Path, device: &candle_core::Device) -> Result<(Box<dyn SpanTagger>, TaggerMeta)> {
    let meta = read_meta(dir)?;
    match meta.student.as_str() {
        super::encoder::STUDENT => {
            let t = super::encoder::load(dir, &meta, device)?;
            Ok((Box::new(t), meta))
        }
        _ => {
            let (t, meta) = load_linear(dir)?;
            Ok((Box::new(t), meta))
        }
    }
}

/// Loads a linear tagger's directory.
pub fn load_linear(dir: &Path) -> Result<(LinearTagger, TaggerMeta)> {
    let meta = read_meta(dir)?;
    if meta.student != "linear-tagger" {
        return Err(TrainError::model(
            dir,
            format!("a `{}` student, not a linear tagger", meta.student),
        ));
    }
    let st =
        candle_core::safetensors::load(dir.join("model.safetensors"), &candle_core::Device::Cpu)
            .map_err(|e| TrainError::model(dir, format!("model.safetensors: {e}")))?;
    let get = |name: &str| -> Result<Vec<f32>> {
        let t = st
            .get(name)
            .ok_or_else(|| TrainError::model(dir, format!("model.safetensors has no `{name}`")))?;
        Ok(t.flatten_all()?.to_vec1::<f32>()?)
    };
    let tagger = LinearTagger::from_parameters(
        meta.slots.clone(),
        meta.buckets,
        get("weights")?,
        get("bias")?,
    )
    .map_err(|m| TrainError::model(dir, m))?;
    Ok((tagger, meta))
}

/// One record of an extraction teacher dataset: its input, its spans (`None` when the
/// record has no usable answer: invalid or failed) and what it cost.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub text: String,
    pub context: Context,
    pub spans: Option<Vec<Span>>,
    pub cost_usd: f64,
}

/// Every record of an extraction teacher dataset, each usable answer checked against its
/// text and the task's slots (errors name file, line and field).
pub fn read_records(path: &Path, spec: &TaskSpec) -> Result<Vec<SpanRecord>> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    parse_records(path, &text, spec)
}

/// [`read_records`] of `text`, already read from `path` (errors name it): one record per
/// non-blank line, in order.
pub fn parse_records(path: &Path, text: &str, spec: &TaskSpec) -> Result<Vec<SpanRecord>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at =
            |field: &str, e: String| distill_core::CoreError::data(path, i as u64 + 1, field, e);
        let r: TeacherRecord = serde_json::from_str(line)
            .map_err(|e| at("line", format!("not a teacher record: {e}")))?;
        let spans = r
            .answer_text()
            .map(|a| distill_core::spans::parse_spans(&a, &r.text, &spec.labels))
            .transpose()
            .map_err(|e| at("output.spans", e))?;
        out.push(SpanRecord {
            text: r.text,
            context: r.context,
            spans,
            cost_usd: r.cost_usd,
        });
    }
    Ok(out)
}

/// Whether two spans are the same answer: slot, start and end (the text follows).
pub fn same_span(a: &Span, b: &Span) -> bool {
    a.slot == b.slot && a.start == b.start && a.end == b.end
}

/// Whether two answers (span lists in position order) are the same.
pub fn same_spans(a: &[Span], b: &[Span]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same_span(x, y))
}

/// Exact-match micro span F1 (as seqeval counts it) of `predicted` against `reference`.
pub fn span_f1(reference: &[Vec<Span>], predicted: &[Vec<Span>]) -> f64 {
    let (mut hit, mut n) = (0usize, 0usize);
    for (r, p) in reference.iter().zip(predicted) {
        n += r.len() + p.len();
        hit += p
            .iter()
            .filter(|s| r.iter().any(|x| same_span(x, s)))
            .count();
    }
    if n == 0 {
        0.0
    } else {
        2.0 * hit as f64 / n as f64
    }
}

/// What `distill train` reports for a tagger.
#[derive(Debug, Clone)]
pub struct TaggerReport {
    pub meta: TaggerMeta,
    pub stats: TaggerTrainStats,
    pub seconds: f64,
}

/// Trains a linear tagger on a teacher dataset (a seeded `dev_fraction` held out to report
/// span F1) and writes its model directory.
pub fn train_linear(
    spec: &TaskSpec,
    data: &Path,
    out: &Path,
    force: bool,
    dev_fraction: f64,
    seed: u64,
) -> Result<TaggerReport> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let started = std::time::Instant::now();
    // Records without a usable answer teach nothing.
    let mut records: Vec<(String, Context, Vec<Span>)> = read_records(data, spec)?
        .into_iter()
        .filter_map(|r| Some((r.text, r.context, r.spans?)))
        .collect();
    if records.is_empty() {
        return Err(distill_core::CoreError::data(
            data,
            1,
            "output.spans",
            "no usable (status ok) extraction records",
        )
        .into());
    }
    records.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    let n_dev = ((records.len() as f64 * dev_fraction) as usize).min(records.len() - 1);
    let (dev, train) = records.split_at(n_dev);
    let examples: Vec<super::linear::TagExample> = train
        .iter()
        .map(|(text, context, spans)| super::linear::TagExample {
            text,
            context,
            spans,
        })
        .collect();
    let cfg = super::linear::LinearTaggerConfig {
        seed,
        ..Default::default()
    };
    let (tagger, stats) = LinearTagger::train(&examples, spec.labels.names.clone(), &cfg);
    let dev_span_f1 = (!dev.is_empty()).then(|| {
        let reference: Vec<Vec<Span>> = dev.iter().map(|d| d.2.clone()).collect();
        let predicted: Vec<Vec<Span>> = dev.iter().map(|d| tagger.predict(&d.0, &d.1).0).collect();
        span_f1(&reference, &predicted)
    });
    let meta = TaggerMeta {
        kind: KIND.into(),
        student: "linear-tagger".into(),
        task: spec.name.clone(),
        slots: spec.labels.names.clone(),
        context_columns: spec.input.context_columns.clone(),
        buckets: cfg.buckets,
        created: chrono::Utc::now().to_rfc3339(),
        train_inputs: train.len(),
        dev_inputs: dev.len(),
        dev_span_f1,
        widened_spans: stats.widened,
        base_model: None,
        max_len: None,
        epochs_run: None,
        device: None,
        // The linear tagger trains on one thread.
        train_wall_s: Some(started.elapsed().as_secs_f64()),
        threads: Some(1),
    };
    save(out, force, &tagger, &meta)?;
    Ok(TaggerReport {
        meta,
        stats,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// What [`predict_file`] did.
#[derive(Debug, Clone)]
pub struct TagPredictSummary {
    pub rows: usize,
    /// Rows with a gold span list (the ones `span_f1` is over).
    pub scored: usize,
    /// Exact-match span F1 against the gold column, when there is one.
    pub span_f1: Option<f64>,
    pub wall_s: f64,
}

/// Tags every row of `input` into `out` (JSONL, written whole or not at all): `{"id", "text",
/// "spans": [{"slot", "start", "end", "text"}], "confidence"[, "gold"]}`. The tagger reads
/// the context columns it was trained with.
pub fn predict_file(
    tagger: &dyn SpanTagger,
    meta: &TaggerMeta,
    input: &Path,
    out: &Path,
    mut cols: distill_core::input::Columns,
) -> Result<TagPredictSummary> {
    use std::io::Write;
    let started = std::time::Instant::now();
    cols.context = meta.context_columns.clone();
    let gold_field = cols.gold.clone().unwrap_or_default();
    let slots = distill_core::LabelSet::new(meta.slots.clone());
    let mut w = distill_core::fsutil::AtomicFile::create(out)?;
    let (mut reference, mut predicted) = (Vec::new(), Vec::new());
    let mut rows = 0;
    let mut pending: Vec<distill_core::input::InputItem> = Vec::new();
    let mut items = distill_core::input::read_inputs(input, None, &cols)?.peekable();
    while let Some(item) = items.next() {
        pending.push(item?);
        if pending.len() < 64 && items.peek().is_some() {
            continue;
        }
        let asked: Vec<(&str, &Context)> = pending
            .iter()
            .map(|i| (i.text.as_str(), &i.context))
            .collect();
        for (item, (spans, confidence)) in pending.iter().zip(tagger.predict_batch(&asked)?) {
            let mut row = serde_json::json!({
                "id": item.id, "text": item.text, "spans": spans, "confidence": confidence,
            });
            if let Some(g) = &item.gold {
                let gold = distill_core::spans::parse_spans(g, &item.text, &slots)
                    .map_err(|e| distill_core::CoreError::data(input, item.line, &gold_field, e))?;
                row["gold"] = serde_json::to_value(&gold).unwrap_or_default();
                reference.push(gold);
                predicted.push(spans);
            }
            writeln!(w, "{row}").map_err(|e| TrainError::io(out, e))?;
            rows += 1;
        }
        pending.clear();
    }
    if cols.gold.is_some() && reference.is_empty() && rows > 0 {
        return Err(distill_core::CoreError::data(
            input,
            1,
            &gold_field,
            "no row has this gold field (a JSON list of spans)",
        )
        .into());
    }
    w.commit()?;
    Ok(TagPredictSummary {
        rows,
        scored: reference.len(),
        span_f1: (!reference.is_empty()).then(|| span_f1(&reference, &predicted)),
        wall_s: started.elapsed().as_secs_f64(),
    })
}
