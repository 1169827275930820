//! The contract between stages: the [`Student`] trait that eval and serve call, and the model
//! directory (`config.json`, `model.safetensors`, `tokenizer.json` where the kind has one, plus
//! `distill.json` described by [`ModelMeta`]).

use crate::error::{Result, TrainError};
use distill_core::LabelSet;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StudentKind {
    Linear,
    EncoderHead,
    EncoderFinetune,
    /// Several trained students averaged (`distill ensemble`; not a `--student` of train).
    Ensemble,
}

impl StudentKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            StudentKind::Linear => "linear",
            StudentKind::EncoderHead => "encoder-head",
            StudentKind::EncoderFinetune => "encoder-finetune",
            StudentKind::Ensemble => "ensemble",
        }
    }
}

impl std::str::FromStr for StudentKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "linear" => Ok(StudentKind::Linear),
            "encoder-head" => Ok(StudentKind::EncoderHead),
            "encoder-finetune" => Ok(StudentKind::EncoderFinetune),
            _ => Err(format!(
                "unknown student kind `{s}` (expected linear, encoder-head or encoder-finetune)"
            )),
        }
    }
}

/// `distill.json`: everything later stages need to know about a trained student.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    pub format_version: u32,
    pub task: String,
    pub labels: Vec<String>,
    /// The open-set label (the task's `labels.out_of_scope`), one of `labels`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_of_scope: Option<String>,
    pub kind: StudentKind,
    /// The pretrained encoder this student started from (path or hub id), if any.
    #[serde(default)]
    pub base_model: Option<String>,
    /// SHA-256 of the training data file.
    pub data_hash: String,
    /// Where the labels came from: `teacher` (a teacher dataset) or `gold` (a labelled file).
    pub label_source: String,
    pub n_train: usize,
    pub n_dev: usize,
    pub dev_accuracy: f64,
    #[serde(default)]
    pub dev_loss: Option<f64>,
    /// Softmax temperature fitted on the dev split (calibrated confidence = softmax(logits / T)).
    pub temperature: f32,
    /// Longest input in tokens the model accepts (longer inputs are truncated).
    #[serde(default)]
    pub max_len: Option<usize>,
    pub epochs_run: usize,
    pub train_wall_s: f64,
    pub device: String,
    pub threads: usize,
    pub examples_per_s: f64,
    /// Hardware cost of training at the default price (`DEFAULT_CPU_CORE_HOUR_USD` per core-hour
    /// or `DEFAULT_GPU_HOUR_USD` per GPU-hour); eval may re-price it from `train_wall_s`.
    pub train_cost_usd: f64,
    pub seed: u64,
    pub created: String,
    pub distill_version: String,
    /// Free-form hyper-parameters, for the record.
    #[serde(default)]
    pub hyper: serde_json::Value,
    /// Set on an int8 copy made by `distill quantize`: the scheme and the f32 parent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<crate::quantize::Quantization>,
    /// A multilabel student (one sigmoid per label): its per-label calibration and
    /// thresholds. `None`: a softmax over the labels (`temperature`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multilabel: Option<crate::objective::SigmoidHead>,
}

/// Default hardware prices (USD), documented in the README; eval can override them.
pub const DEFAULT_CPU_CORE_HOUR_USD: f64 = 0.02;
pub const DEFAULT_GPU_HOUR_USD: f64 = 2.5;

impl ModelMeta {
    /// One row of raw logits as calibrated probabilities: softmax(logits / temperature), or for
    /// a multilabel student each label's sigmoid(logit / its temperature).
    pub fn calibrated(&self, logits: &[f32]) -> Vec<f32> {
        match &self.multilabel {
            Some(h) => h.proba(logits),
            None => softmax(logits, self.temperature.max(1e-3)),
        }
    }

    pub fn load(dir: &Path) -> Result<Self> {
        let p = dir.join("distill.json");
        let text = std::fs::read_to_string(&p).map_err(|e| {
            TrainError::model(
                dir,
                format!("cannot read distill.json ({e}); is this a distill model directory?"),
            )
        })?;
        if crate::tagging::model::is_tagger_dir(dir) {
            return Err(TrainError::model(
                dir,
                "this is an extraction tagger: `distill predict`, `distill eval` and \
                 `distill serve` run it; it is not a classifier",
            ));
        }
        if crate::route::is_router_dir(dir) {
            return Err(TrainError::model(
                dir,
                "this is a router (a route task's model): `distill eval` takes it with its route \
                 task; it does not label single inputs",
            ));
        }
        serde_json::from_str(&text)
            .map_err(|e| TrainError::model(dir, format!("distill.json: {e}")))
    }
    /// Writes `dir/distill.json`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let p = dir.join("distill.json");
        let body = serde_json::to_vec_pretty(self)
            .map_err(|e| TrainError::Other(format!("distill.json: {e}")))?;
        std::fs::write(&p, body).map_err(|e| TrainError::io(&p, e))
    }
    pub fn label_set(&self) -> LabelSet {
        let mut set = LabelSet::new(self.labels.clone());
        set.out_of_scope = self.out_of_scope.clone();
        if let Some(h) = &self.multilabel {
            set.set_separator = Some(h.separator.clone());
            set.allow_empty = h.allow_empty;
        }
        set
    }
}

/// One prediction: calibrated probabilities over the labels, best first in `top`.
///
/// For a multilabel student `label` is the answer in the task's notation (the labels given,
/// joined by its separator; `[]` for none), `labels` lists them, `top` holds each label's own
/// probability, and `confidence` is the probability of the least sure per-label decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub label: String,
    pub confidence: f32,
    /// Up to k (label, probability) pairs, most likely first.
    pub top: Vec<(String, f32)>,
    /// Multilabel: the labels given, in label-set order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
}

/// A trained student. Implementations are cheap to share across threads.
pub trait Student: Send + Sync {
    fn meta(&self) -> &ModelMeta;

    /// Raw (uncalibrated) logits, one row per text, columns in `meta().labels` order.
    fn logits(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>>;

    /// Number of tokens `text` has for this model (for length limits and batching).
    fn token_len(&self, text: &str) -> usize {
        text.split_whitespace().count()
    }

    /// Calibrated probabilities: softmax(logits / temperature), or for a multilabel student
    /// each label's sigmoid(logit / its temperature).
    fn predict_proba(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let meta = self.meta();
        Ok(self
            .logits(texts)?
            .iter()
            .map(|row| meta.calibrated(row))
            .collect())
    }

    /// Labels with calibrated confidence and the top `k` alternatives (a multilabel
    /// student: the label set, see [`Prediction`]).
    fn predict(&self, texts: &[&str], k: usize) -> Result<Vec<Prediction>> {
        let meta = self.meta();
        let labels = &meta.labels;
        let set_notation = meta.label_set();
        Ok(self
            .predict_proba(texts)?
            .into_iter()
            .map(|p| {
                let mut idx: Vec<usize> = (0..p.len()).collect();
                idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
                let top: Vec<(String, f32)> = idx
                    .iter()
                    .take(k.max(1))
                    .map(|&i| (labels[i].clone(), p[i]))
                    .collect();
                match &meta.multilabel {
                    Some(h) => {
                        let (set, confidence) = h.decide(&p);
                        Prediction {
                            label: set_notation.format_set(&set),
                            confidence,
                            top,
                            labels: Some(set.iter().map(|&i| labels[i].clone()).collect()),
                        }
                    }
                    None => Prediction {
                        label: top[0].0.clone(),
                        confidence: top[0].1,
                        top,
                        labels: None,
                    },
                }
            })
            .collect())
    }
}

pub fn softmax(row: &[f32], temperature: f32) -> Vec<f32> {
    let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = row.iter().map(|x| ((x - m) / temperature).exp()).collect();
    let s: f32 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

/// Fits the softmax temperature minimising dev negative log-likelihood (Guo et al. 2017),
/// by golden-section search on log T in [0.05, 20]. A dev split of one class calibrates
/// nothing (a student right on all of it drives T to the bound, every confidence to 1): T = 1.
pub fn fit_temperature(logits: &[Vec<f32>], labels: &[usize]) -> f32 {
    if logits.is_empty() || labels.iter().all(|&y| y == labels[0]) {
        return 1.0;
    }
    let nll = |t: f32| -> f64 {
        logits
            .iter()
            .zip(labels)
            .map(|(row, &y)| -(softmax(row, t)[y].max(1e-12) as f64).ln())
            .sum::<f64>()
    };
    let (mut a, mut b) = (0.05f32.ln(), 20f32.ln());
    let g = 0.618_034f32;
    for _ in 0..60 {
        let c = b - g * (b - a);
        let d = a + g * (b - a);
        if nll(c.exp()) < nll(d.exp()) {
            b = d;
        } else {
            a = c;
        }
    }
    ((a + b) / 2.0).exp()
}

/// The identity of a trained model: SHA-256 over every file of its directory and, for an
/// ensemble, of its `members/` tree (names relative to `dir` and contents, in name order). Other
/// subdirectories (a `.git`, a hub download's `.cache`) are not the model and are left out, as
/// they always were; symlinked directories are not followed. Two directories answer alike
/// exactly when this matches, whatever their paths; an eval's cascade threshold is bound to it.
pub fn model_fingerprint(dir: &Path) -> Result<String> {
    use sha2::Digest;
    fn files(dir: &Path, prefix: &str, out: &mut Vec<(String, PathBuf)>) -> Result<()> {
        for e in std::fs::read_dir(dir).map_err(|e| TrainError::io(dir, e))? {
            let e = e.map_err(|e| TrainError::io(dir, e))?;
            let p = e.path();
            let name = p
                .file_name()
                .map(|n| format!("{prefix}{}", n.to_string_lossy()))
                .unwrap_or_default();
            let real_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if real_dir {
                if !prefix.is_empty() || name == crate::ensemble::MEMBERS_DIR {
                    files(&p, &format!("{name}/"), out)?;
                }
            } else if p.is_file() {
                out.push((name, p));
            }
        }
        Ok(())
    }
    let mut names = Vec::new();
    files(dir, "", &mut names)?;
    names.sort();
    let mut h = sha2::Sha256::new();
    for (name, p) in names {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        let mut f = std::fs::File::open(&p).map_err(|e| TrainError::io(&p, e))?;
        let n = std::io::copy(&mut f, &mut h).map_err(|e| TrainError::io(&p, e))?;
        h.update(n.to_le_bytes());
    }
    Ok(hex::encode(h.finalize()))
}

/// Loads any student from its model directory.
pub fn load_student(dir: &Path, device: &candle_core::Device) -> Result<Box<dyn Student>> {
    let meta = ModelMeta::load(dir)?;
    match meta.kind {
        StudentKind::Linear => Ok(Box::new(crate::linear::LinearStudent::load(dir, meta)?)),
        StudentKind::EncoderHead | StudentKind::EncoderFinetune => {
            crate::encoder::load(dir, meta, device)
        }
        StudentKind::Ensemble => Ok(Box::new(crate::ensemble::EnsembleStudent::load(
            dir, meta, device,
        )?)),
    }
}

/// A multilabel task's label sets, parallel to [`TrainData::train`] and [`TrainData::dev`].
#[derive(Debug, Clone, Default)]
pub struct SplitSets {
    pub train: Vec<Vec<usize>>,
    pub dev: Vec<Vec<usize>>,
}

/// Training data after splitting: texts with label indices into `labels`.
#[derive(Debug, Clone)]
pub struct TrainData {
    pub task: String,
    pub labels: LabelSet,
    /// Texts with their label (a multilabel example: its first label, or 0 for none; the
    /// sets are in `sets`).
    pub train: Vec<(String, usize)>,
    pub dev: Vec<(String, usize)>,
    /// Set for a multilabel task: the examples' label sets.
    pub sets: Option<SplitSets>,
    /// SHA-256 of the source file.
    pub data_hash: String,
    /// `teacher` or `gold`.
    pub label_source: String,
}

impl TrainData {
    /// The training targets (see [`crate::objective::Targets`]).
    pub fn train_targets(&self) -> crate::objective::Targets {
        Self::targets(&self.train, self.sets.as_ref().map(|s| &s.train))
    }
    /// The one label of a single-label dev split that holds no other (nothing to calibrate
    /// against: see [`fit_temperature`]).
    pub fn dev_single_class(&self) -> Option<usize> {
        let (_, first) = self.dev.first()?;
        (self.sets.is_none() && self.dev.iter().all(|(_, y)| y == first)).then_some(*first)
    }
    /// The dev targets.
    pub fn dev_targets(&self) -> crate::objective::Targets {
        Self::targets(&self.dev, self.sets.as_ref().map(|s| &s.dev))
    }
    fn targets(
        split: &[(String, usize)],
        sets: Option<&Vec<Vec<usize>>>,
    ) -> crate::objective::Targets {
        match sets {
            Some(s) => crate::objective::Targets::Sets(s.clone()),
            None => crate::objective::Targets::Single(split.iter().map(|(_, y)| *y).collect()),
        }
    }
}

/// Options shared by all kinds; each kind ignores what does not apply to it.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub out: PathBuf,
    pub seed: u64,
    pub device: candle_core::Device,
    pub threads: usize,
    /// Upper bound on epochs; early stopping may end sooner.
    pub epochs: Option<usize>,
    pub batch_size: Option<usize>,
    pub lr: Option<f64>,
    /// encoder-finetune: learning rate of the fresh head (pooler, classifier) relative to `lr`.
    pub head_lr_mult: Option<f64>,
    pub weight_decay: Option<f64>,
    pub max_len: Option<usize>,
    /// Epochs without dev improvement before stopping (each kind has its own default).
    pub patience: Option<usize>,
    pub class_balanced: bool,
    pub dropout: Option<f32>,
    /// Base encoder for encoder kinds: a local directory, or a Hugging Face repo id
    /// (`org/name[@revision]`) from the hub cache or downloaded into it.
    pub base: Option<String>,
    /// Never download the base (`--offline`; `HF_HUB_OFFLINE=1` does the same).
    pub offline: bool,
    /// `logistic` or `mlp` for encoder-head.
    pub head: Option<String>,
    /// Directory for the embedding cache (encoder-head).
    pub cache_dir: Option<PathBuf>,
    pub progress: bool,
    /// Replace `out` even when it is not a distill model directory.
    pub force: bool,
}

impl TrainOptions {
    /// Rejects hyper-parameters no student can train with, naming the flag, before any work
    /// (a negative or NaN learning rate would otherwise train a useless model without a word).
    pub fn validate(&self) -> Result<()> {
        let bad = |flag: &str, v: String, want: &str| {
            Err(TrainError::Other(format!(
                "--{flag} must be {want}, got {v}"
            )))
        };
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if let Some(lr) = self.lr.filter(|&x| !positive(x)) {
            return bad("lr", lr.to_string(), "a positive number");
        }
        if let Some(m) = self.head_lr_mult.filter(|&x| !positive(x)) {
            return bad("head-lr-mult", m.to_string(), "a positive number");
        }
        if let Some(wd) = self.weight_decay.filter(|&x| !(x.is_finite() && x >= 0.0)) {
            return bad("weight-decay", wd.to_string(), "zero or more");
        }
        if let Some(p) = self.dropout.filter(|&x| !(0.0..1.0).contains(&x)) {
            return bad("dropout", p.to_string(), "at least 0 and below 1");
        }
        for (flag, v) in [
            ("epochs", self.epochs),
            ("batch-size", self.batch_size),
            ("max-len", self.max_len),
            ("patience", self.patience),
        ] {
            if v == Some(0) {
                return bad(flag, "0".into(), "at least 1");
            }
        }
        Ok(())
    }

    /// Defaults for everything but the output directory: seed 42, CPU, the rayon pool's thread
    /// count, each kind's own defaults for epochs/batch/lr/patience, progress hidden.
    pub fn new(out: impl Into<PathBuf>) -> Self {
        Self {
            out: out.into(),
            seed: 42,
            device: candle_core::Device::Cpu,
            threads: rayon::current_num_threads(),
            epochs: None,
            batch_size: None,
            lr: None,
            head_lr_mult: None,
            weight_decay: None,
            max_len: None,
            patience: None,
            class_balanced: false,
            dropout: None,
            base: None,
            offline: false,
            head: None,
            cache_dir: None,
            progress: false,
            force: false,
        }
    }
}

/// Writes a model directory atomically: `fill` writes into a fresh temporary directory beside
/// `out`, which then replaces `out` as a whole. A failure leaves `out` untouched, and only a
/// distill model directory (or, with `force`, anything) is ever replaced.
pub fn write_model_dir(
    out: &Path,
    force: bool,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    distill_core::fsutil::replace_dir(out, distill_core::fsutil::MODEL_DIR, force, fill)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperature_fit_softens_overconfident_logits() {
        // Confident logits that are right only half the time want T > 1.
        let logits: Vec<Vec<f32>> = (0..100).map(|_| vec![5.0, 0.0]).collect();
        let labels: Vec<usize> = (0..100).map(|i| i % 2).collect();
        assert!(fit_temperature(&logits, &labels) > 5.0);
        // Right every time, over two classes: sharpen.
        let sure: Vec<Vec<f32>> = (0..100)
            .map(|i| {
                if i % 2 == 0 {
                    vec![1.0, 0.0]
                } else {
                    vec![0.0, 1.0]
                }
            })
            .collect();
        assert!(fit_temperature(&sure, &labels) < 1.0);
        // One class calibrates nothing, however right the logits are.
        let one: Vec<usize> = vec![0; 100];
        assert_eq!(fit_temperature(&logits, &one), 1.0);
    }

    #[test]
    fn failed_fill_leaves_no_directory() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("m");
        let r = write_model_dir(&out, false, |tmp| {
            std::fs::write(tmp.join("x"), b"1").unwrap();
            Err(TrainError::Other("boom".into()))
        });
        assert!(r.is_err());
        assert!(!out.exists());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
        write_model_dir(&out, false, |tmp| {
            std::fs::write(tmp.join("distill.json"), b"{}").map_err(|e| TrainError::io(tmp, e))?;
            std::fs::write(tmp.join("x"), b"2").map_err(|e| TrainError::io(tmp, e))
        })
        .unwrap();
        assert_eq!(std::fs::read(out.join("x")).unwrap(), b"2");
    }
}
