//! The `linear` student: hashed word and character n-grams, TF-IDF weighted, into a
//! multinomial logistic regression. It is the "tiny classifier that costs pennies": it trains in
//! seconds on two cores and predicts tens of thousands of texts per second, and it is the floor
//! every encoder student has to beat to be worth its cost.
//!
//! Training computes the exact sparse gradient by hand instead of going through candle's
//! autograd: a batch touches a few thousand of the ~10^5 weight rows, and a dense optimiser step
//! over all of them (what `candle_nn::AdamW` does) costs more than the whole forward/backward.
//! candle still owns the model file: weights are saved and loaded as safetensors through it.

pub mod features;
pub mod fit;

pub use features::{FeatureConfig, SparseRow, Vocab};
pub use fit::{train_linear, LinearHyper};

use crate::error::{Result, TrainError};
use crate::student::{ModelMeta, Student};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// `config.json` of a linear model directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinearConfig {
    pub model_type: String,
    pub architectures: Vec<String>,
    /// How n-grams are hashed; see [`features`].
    pub hashing: String,
    pub features: FeatureConfig,
    pub num_labels: usize,
    pub num_features: usize,
    pub id2label: BTreeMap<String, String>,
    pub label2id: BTreeMap<String, usize>,
}

pub const MODEL_TYPE: &str = "distill-hashed-linear";
pub const HASHING: &str = "fnv1a64-fmix64";

/// The weights and featuriser; shared by training (dev scoring) and the loaded student.
#[derive(Debug, Clone)]
pub struct LinearModel {
    pub cfg: FeatureConfig,
    pub vocab: Vocab,
    /// Row-major `[vocab.len(), n_classes]`.
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub n_classes: usize,
}

impl LinearModel {
    pub fn featurize(&self, text: &str) -> SparseRow {
        self.vocab
            .transform(&self.cfg, &self.cfg.hashed_counts(text))
    }

    pub fn logits_row(&self, row: &SparseRow) -> Vec<f32> {
        let mut out = self.bias.clone();
        logits_into(&self.weight, self.n_classes, row, &mut out);
        out
    }

    fn config(&self, labels: &[String]) -> LinearConfig {
        LinearConfig {
            model_type: MODEL_TYPE.into(),
            architectures: vec!["DistillHashedLinear".into()],
            hashing: HASHING.into(),
            features: self.cfg.clone(),
            num_labels: self.n_classes,
            num_features: self.vocab.len(),
            id2label: labels
                .iter()
                .enumerate()
                .map(|(i, l)| (i.to_string(), l.clone()))
                .collect(),
            label2id: labels
                .iter()
                .enumerate()
                .map(|(i, l)| (l.clone(), i))
                .collect(),
        }
    }

    /// Writes `config.json` and `model.safetensors` into `dir`.
    pub fn save(&self, dir: &Path, labels: &[String]) -> Result<()> {
        let cfg = serde_json::to_vec_pretty(&self.config(labels))
            .map_err(|e| TrainError::Other(format!("config.json: {e}")))?;
        let p = dir.join("config.json");
        std::fs::write(&p, cfg).map_err(|e| TrainError::io(&p, e))?;
        let dev = Device::Cpu;
        let r = self.vocab.len();
        let mut t: HashMap<String, Tensor> = HashMap::new();
        t.insert(
            "linear.weight".into(),
            Tensor::from_slice(&self.weight, (r, self.n_classes), &dev)?,
        );
        t.insert(
            "linear.bias".into(),
            Tensor::from_slice(&self.bias, self.n_classes, &dev)?,
        );
        t.insert(
            "features.buckets".into(),
            Tensor::from_slice(&self.vocab.buckets, r, &dev)?,
        );
        t.insert(
            "features.idf".into(),
            Tensor::from_slice(&self.vocab.idf, r, &dev)?,
        );
        t.insert(
            "features.family".into(),
            Tensor::from_slice(&self.vocab.family, r, &dev)?,
        );
        candle_core::safetensors::save(&t, dir.join("model.safetensors"))?;
        Ok(())
    }

    /// Reads a model directory written by [`LinearModel::save`], checking every shape.
    pub fn load(dir: &Path, labels: &[String]) -> Result<Self> {
        let bad = |m: String| TrainError::model(dir, m);
        let cp = dir.join("config.json");
        let text = std::fs::read_to_string(&cp)
            .map_err(|e| bad(format!("cannot read config.json: {e}")))?;
        let cfg: LinearConfig =
            serde_json::from_str(&text).map_err(|e| bad(format!("config.json: {e}")))?;
        if cfg.model_type != MODEL_TYPE || cfg.hashing != HASHING {
            return Err(bad(format!(
                "config.json: model_type `{}` / hashing `{}` is not a distill linear model \
                 ({MODEL_TYPE} / {HASHING})",
                cfg.model_type, cfg.hashing
            )));
        }
        if !(8..=28).contains(&cfg.features.hash_bits) {
            return Err(bad(format!(
                "config.json: features.hash_bits {} is out of range 8..=28",
                cfg.features.hash_bits
            )));
        }
        let c = labels.len();
        if cfg.num_labels != c {
            return Err(bad(format!(
                "config.json has {} labels but distill.json has {c}",
                cfg.num_labels
            )));
        }
        for (i, l) in labels.iter().enumerate() {
            if cfg.id2label.get(&i.to_string()) != Some(l) {
                return Err(bad(format!(
                    "config.json id2label[{i}] does not match distill.json label `{l}`"
                )));
            }
        }
        let mp = dir.join("model.safetensors");
        if !mp.exists() {
            return Err(bad("missing model.safetensors".into()));
        }
        let mut t = candle_core::safetensors::load(&mp, &Device::Cpu)
            .map_err(|e| bad(format!("model.safetensors: {e}")))?;
        let mut take = |name: &str, dtype: DType, shape: &[usize]| -> Result<Tensor> {
            let x = t
                .remove(name)
                .ok_or_else(|| bad(format!("model.safetensors: missing tensor `{name}`")))?;
            if x.dtype() != dtype || x.dims() != shape {
                return Err(bad(format!(
                    "model.safetensors: tensor `{name}` is {:?} {:?}, expected {dtype:?} {shape:?}",
                    x.dtype(),
                    x.dims()
                )));
            }
            Ok(x)
        };
        let r = cfg.num_features;
        let weight = take("linear.weight", DType::F32, &[r, c])?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let bias = take("linear.bias", DType::F32, &[c])?.to_vec1::<f32>()?;
        let buckets = take("features.buckets", DType::U32, &[r])?.to_vec1::<u32>()?;
        let idf = take("features.idf", DType::F32, &[r])?.to_vec1::<f32>()?;
        let family = take("features.family", DType::U8, &[r])?.to_vec1::<u8>()?;
        let vocab = Vocab::from_parts(&cfg.features, buckets, idf, family)
            .ok_or_else(|| bad("model.safetensors: a feature bucket is out of range".into()))?;
        Ok(Self {
            cfg: cfg.features,
            vocab,
            weight,
            bias,
            n_classes: c,
        })
    }
}

/// `out += Σ val · weight[idx]` (out already holds the bias).
#[inline]
pub(crate) fn logits_into(weight: &[f32], c: usize, row: &SparseRow, out: &mut [f32]) {
    for (&i, &v) in row.idx.iter().zip(&row.val) {
        let w = &weight[i as usize * c..(i as usize + 1) * c];
        for (o, wi) in out.iter_mut().zip(w) {
            *o += v * wi;
        }
    }
}

pub struct LinearStudent {
    meta: ModelMeta,
    model: LinearModel,
}

impl LinearStudent {
    pub fn load(dir: &Path, meta: ModelMeta) -> Result<Self> {
        let model = LinearModel::load(dir, &meta.labels)?;
        Ok(Self { meta, model })
    }

    pub fn from_parts(meta: ModelMeta, model: LinearModel) -> Self {
        Self { meta, model }
    }

    pub fn model(&self) -> &LinearModel {
        &self.model
    }
}

impl Student for LinearStudent {
    fn meta(&self) -> &ModelMeta {
        &self.meta
    }

    fn logits(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let one = |t: &&str| self.model.logits_row(&self.model.featurize(t));
        // Small batches (serve's single requests) are cheaper without the thread hop.
        if texts.len() < 32 {
            Ok(texts.iter().map(one).collect())
        } else {
            Ok(texts.par_iter().map(one).collect())
        }
    }
}
