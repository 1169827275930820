//! The `encoder-head` student: a frozen pretrained sentence encoder (mean-pooled, L2-normalised
//! BERT-family embeddings, see [`super::embed`]) with a small trained head on top — multinomial
//! logistic regression or a one-hidden-layer MLP.
//!
//! Why this kind exists: a frozen encoder already separates intents well, so only a few thousand
//! head parameters need training. Embeddings are cached on disk ([`super::embed_cache`]) keyed by
//! encoder fingerprint and text, so after the first run retraining the head (new labels, other
//! hyper-parameters) never touches the encoder and takes seconds.
//!
//! Model directory: `config.json` (the base encoder's config plus `id2label`/`label2id` and a
//! `distill_head` object), `model.safetensors` (the base encoder's tensors unchanged plus the head
//! as `distill_head.*`, so `transformers.AutoModel` still loads the encoder), `tokenizer.json`,
//! `distill.json`.

use super::embed::{transpose, FrozenEncoder};
use super::embed_cache::{text_key, EmbeddingCache, TextKey, DEFAULT_CACHE_DIR};
use crate::error::{Result, TrainError};
use crate::objective::{loss_tensor, Targets};
use crate::student::{
    write_model_dir, ModelMeta, Student, StudentKind, TrainData, TrainOptions,
    DEFAULT_CPU_CORE_HOUR_USD, DEFAULT_GPU_HOUR_USD,
};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub use super::base::DEFAULT_BASE;
/// Sentences per encoder forward pass.
pub const EMBED_BATCH: usize = 64;
/// Tensor-name prefix of the head inside `model.safetensors`.
pub const HEAD_PREFIX: &str = "distill_head.";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadKind {
    Logistic,
    Mlp,
}

impl std::str::FromStr for HeadKind {
    type Err = TrainError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "logistic" | "linear" | "lr" => Ok(HeadKind::Logistic),
            "mlp" => Ok(HeadKind::Mlp),
            other => Err(TrainError::Other(format!(
                "--head: expected `logistic` or `mlp`, got `{other}`"
            ))),
        }
    }
}

/// The `distill_head` object in `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadConfig {
    pub kind: HeadKind,
    pub input_dim: usize,
    /// Hidden width of the MLP; absent for logistic.
    #[serde(default)]
    pub hidden: Option<usize>,
    pub n_labels: usize,
    /// Always `mean` (over non-padding tokens) for now.
    pub pooling: String,
    pub normalize: bool,
    /// Embeddings are standardised with `input_mean`/`input_scale` before the head.
    pub standardize: bool,
}

/// Head weights in inference layout: matrices transposed to (in, out) row-major.
#[derive(Debug, Clone, PartialEq)]
struct HeadWeights {
    mean: Vec<f32>,
    scale: Vec<f32>,
    /// MLP hidden layer (absent for logistic).
    hidden: Option<(Vec<f32>, Vec<f32>)>,
    out_w: Vec<f32>,
    out_b: Vec<f32>,
}

struct Head {
    cfg: HeadConfig,
    w: HeadWeights,
}

impl Head {
    /// Logits for `n` embeddings stored row-major in `emb`.
    fn logits(&self, emb: &[f32], n: usize) -> Vec<Vec<f32>> {
        let d = self.cfg.input_dim;
        let c = self.cfg.n_labels;
        let mut x = emb.to_vec();
        for row in x.chunks_exact_mut(d) {
            for ((v, m), s) in row.iter_mut().zip(&self.w.mean).zip(&self.w.scale) {
                *v = (*v - m) * s;
            }
        }
        let (x, k) = match (&self.w.hidden, self.cfg.hidden) {
            (Some((w1, b1)), Some(hdim)) => {
                let mut hbuf = vec![0f32; n * hdim];
                super::embed::fill_rows(&mut hbuf, b1);
                super::embed::matmul_acc(&mut hbuf, &x, w1, n, d, hdim, gemm::Parallelism::None);
                hbuf.iter_mut().for_each(|v| *v = v.max(0.0));
                (hbuf, hdim)
            }
            _ => (x, d),
        };
        let mut out = vec![0f32; n * c];
        super::embed::fill_rows(&mut out, &self.w.out_b);
        super::embed::matmul_acc(
            &mut out,
            &x,
            &self.w.out_w,
            n,
            k,
            c,
            gemm::Parallelism::None,
        );
        out.chunks_exact(c).map(|r| r.to_vec()).collect()
    }

    fn tensors(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let d = self.cfg.input_dim;
        let c = self.cfg.n_labels;
        let mut t = vec![
            (
                format!("{HEAD_PREFIX}input_mean"),
                vec![d],
                self.w.mean.clone(),
            ),
            (
                format!("{HEAD_PREFIX}input_scale"),
                vec![d],
                self.w.scale.clone(),
            ),
        ];
        let k = match (&self.w.hidden, self.cfg.hidden) {
            (Some((w1, b1)), Some(h)) => {
                // Stored (out, in) like torch.nn.Linear.
                t.push((
                    format!("{HEAD_PREFIX}dense.weight"),
                    vec![h, d],
                    transpose(w1, d, h),
                ));
                t.push((format!("{HEAD_PREFIX}dense.bias"), vec![h], b1.clone()));
                h
            }
            _ => d,
        };
        t.push((
            format!("{HEAD_PREFIX}out_proj.weight"),
            vec![c, k],
            transpose(&self.w.out_w, k, c),
        ));
        t.push((
            format!("{HEAD_PREFIX}out_proj.bias"),
            vec![c],
            self.w.out_b.clone(),
        ));
        t
    }

    fn from_tensors(
        dir: &Path,
        cfg: HeadConfig,
        mut t: HashMap<String, (Vec<usize>, Vec<f32>)>,
    ) -> Result<Self> {
        let mut take = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            let full = format!("{HEAD_PREFIX}{name}");
            let (s, v) = t.remove(&full).ok_or_else(|| {
                TrainError::model(dir, format!("model.safetensors: missing tensor `{full}`"))
            })?;
            if s != shape {
                return Err(TrainError::model(
                    dir,
                    format!("model.safetensors: `{full}` has shape {s:?}, config.json implies {shape:?}"),
                ));
            }
            Ok(v)
        };
        let d = cfg.input_dim;
        let c = cfg.n_labels;
        let mean = take("input_mean", &[d])?;
        let scale = take("input_scale", &[d])?;
        let (hidden, k) = match (cfg.kind, cfg.hidden) {
            (HeadKind::Mlp, Some(h)) => {
                let w1 = take("dense.weight", &[h, d])?;
                let b1 = take("dense.bias", &[h])?;
                (Some((transpose(&w1, h, d), b1)), h)
            }
            (HeadKind::Mlp, None) => {
                return Err(TrainError::model(
                    dir,
                    "config.json: distill_head.kind is mlp but `hidden` is missing",
                ))
            }
            (HeadKind::Logistic, _) => (None, d),
        };
        let out_w = take("out_proj.weight", &[c, k])?;
        let out_b = take("out_proj.bias", &[c])?;
        Ok(Head {
            cfg,
            w: HeadWeights {
                mean,
                scale,
                hidden,
                out_w: transpose(&out_w, c, k),
                out_b,
            },
        })
    }
}

/// A loaded `encoder-head` model.
pub struct EncoderHeadStudent {
    meta: ModelMeta,
    encoder: FrozenEncoder,
    head: Head,
    memo: Option<Arc<EmbeddingMemo>>,
}

/// Sentence embeddings shared in memory by `encoder-head` models over one frozen encoder, so
/// evaluating many heads on one test set (a learning curve: a model per size and seed) runs the
/// encoder on each sentence once. Only models whose encoder is the same checkpoint and maximum
/// length may share one: the models a curve trains from one `--base` are.
#[derive(Default)]
pub struct EmbeddingMemo {
    /// An in-memory [`EmbeddingCache`], made at the first model's dimension.
    cache: Mutex<Option<EmbeddingCache>>,
}

impl EncoderHeadStudent {
    /// The embeddings this model computes (unit length, one row of `dim` floats per text).
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<f32>> {
        self.encoder.embed(texts, EMBED_BATCH)
    }
    pub fn encoder(&self) -> &FrozenEncoder {
        &self.encoder
    }
    /// Embeds through `memo`: a sentence any model sharing it embedded is not embedded again.
    /// (A model timed through a warm memo measures its head, not its encoder.)
    pub fn with_memo(mut self, memo: Arc<EmbeddingMemo>) -> Self {
        self.memo = Some(memo);
        self
    }
    fn embed_rows(&self, texts: &[&str]) -> Result<Vec<f32>> {
        let Some(memo) = &self.memo else {
            return self.encoder.embed(texts, EMBED_BATCH);
        };
        let mut guard = memo.cache.lock().unwrap_or_else(|e| e.into_inner());
        let dim = self.encoder.dim();
        let cache = guard.get_or_insert_with(|| EmbeddingCache::in_memory(dim));
        if cache.dim() != dim {
            return Err(TrainError::Other(format!(
                "an embedding memo of {}-dimensional rows shared with a {dim}-dimensional encoder",
                cache.dim()
            )));
        }
        Ok(embed_with_cache(&self.encoder, cache, texts, false)?.0)
    }
    /// Calibrated probabilities for texts already embedded by this model's encoder (rows of
    /// [`Self::embed`] or [`embed_cached`] with the options it was trained with): what
    /// [`Student::predict_proba`] gives for those texts, without running the encoder again.
    pub fn proba_of_embeddings(&self, emb: &[f32]) -> Vec<Vec<f32>> {
        let n = emb.len() / self.encoder.dim().max(1);
        self.head
            .logits(emb, n)
            .iter()
            .map(|row| self.meta.calibrated(row))
            .collect()
    }
}

impl Student for EncoderHeadStudent {
    fn meta(&self) -> &ModelMeta {
        &self.meta
    }
    fn logits(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let emb = self.embed_rows(texts)?;
        Ok(self.head.logits(&emb, texts.len()))
    }
    fn token_len(&self, text: &str) -> usize {
        self.encoder.token_len(text)
    }
}

/// Threads for inference when nobody said: `RAYON_NUM_THREADS`, else the physical cores.
fn default_threads() -> usize {
    candle_core::utils::get_num_threads().max(1)
}

/// `opts.threads`, or [`default_threads`] for 0.
fn threads_of(opts: &TrainOptions) -> usize {
    if opts.threads == 0 {
        default_threads()
    } else {
        opts.threads
    }
}

/// Loads an `encoder-head` model directory.
pub fn load(dir: &Path, meta: ModelMeta, device: &Device) -> Result<Box<dyn Student>> {
    Ok(Box::new(load_student(
        dir,
        meta,
        device,
        default_threads(),
    )?))
}

/// [`load_student`] reading the directory's own `distill.json`.
pub fn open(dir: &Path, device: &Device, threads: usize) -> Result<EncoderHeadStudent> {
    load_student(dir, ModelMeta::load(dir)?, device, threads)
}

/// [`load`] with the concrete type and an explicit thread count (0: the default).
pub fn load_student(
    dir: &Path,
    meta: ModelMeta,
    device: &Device,
    threads: usize,
) -> Result<EncoderHeadStudent> {
    let threads = if threads == 0 {
        default_threads()
    } else {
        threads
    };
    if meta.kind != StudentKind::EncoderHead {
        return Err(TrainError::model(
            dir,
            format!(
                "distill.json: kind is {}, not encoder-head",
                meta.kind.as_str()
            ),
        ));
    }
    let cfg_text = std::fs::read_to_string(dir.join("config.json"))
        .map_err(|e| TrainError::model(dir, format!("cannot read config.json: {e}")))?;
    let cfg_json: serde_json::Value = serde_json::from_str(&cfg_text)
        .map_err(|e| TrainError::model(dir, format!("config.json: {e}")))?;
    let head_cfg: HeadConfig = serde_json::from_value(
        cfg_json
            .get("distill_head")
            .cloned()
            .ok_or_else(|| TrainError::model(dir, "config.json: no `distill_head` object"))?,
    )
    .map_err(|e| TrainError::model(dir, format!("config.json: distill_head: {e}")))?;
    if head_cfg.n_labels != meta.labels.len() {
        return Err(TrainError::model(
            dir,
            format!(
                "config.json says {} labels, distill.json lists {}",
                head_cfg.n_labels,
                meta.labels.len()
            ),
        ));
    }
    let (encoder, extra) =
        FrozenEncoder::load_with_extra(dir, meta.max_len, threads, device, &[HEAD_PREFIX])?;
    if head_cfg.input_dim != encoder.dim() {
        return Err(TrainError::model(
            dir,
            format!(
                "head expects {}-dimensional embeddings, the encoder's hidden_size is {}",
                head_cfg.input_dim,
                encoder.dim()
            ),
        ));
    }
    let head = Head::from_tensors(dir, head_cfg, extra)?;
    Ok(EncoderHeadStudent {
        meta,
        encoder,
        head,
        memo: None,
    })
}

/// Hyper-parameters of one head fit.
#[derive(Debug, Clone, Serialize)]
struct HeadHyper {
    kind: HeadKind,
    hidden: usize,
    lr: f64,
    /// Coefficient of ½‖W‖² added to the mean cross-entropy (biases are not penalised).
    l2: f64,
    dropout: f32,
    batch_size: usize,
    max_epochs: usize,
    patience: usize,
}

impl HeadHyper {
    fn from_opts(opts: &TrainOptions) -> Result<Self> {
        let kind: HeadKind = opts.head.as_deref().unwrap_or("logistic").parse()?;
        let (lr, l2, epochs) = match kind {
            HeadKind::Logistic => (1e-3, 1e-4, 100),
            HeadKind::Mlp => (1e-3, 1e-4, 60),
        };
        Ok(Self {
            kind,
            hidden: 512,
            lr: opts.lr.unwrap_or(lr),
            l2: opts.weight_decay.unwrap_or(l2),
            dropout: opts.dropout.unwrap_or(match kind {
                HeadKind::Logistic => 0.0,
                HeadKind::Mlp => 0.2,
            }),
            batch_size: opts.batch_size.unwrap_or(128).max(1),
            max_epochs: opts.epochs.unwrap_or(epochs).max(1),
            // Head epochs take milliseconds and dev accuracy is noisy epoch to epoch, so wait a
            // little longer than the linear student does before stopping.
            patience: opts.patience.unwrap_or(5),
        })
    }
}

/// What the embedding step did (recorded in `distill.json` under `hyper`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct EmbedStats {
    pub computed: usize,
    pub from_cache: usize,
    pub forward_calls: usize,
    pub seconds: f64,
}

/// The on-disk embedding cache of `encoder` under `opts.cache_dir` (or the default).
fn open_cache(opts: &TrainOptions, encoder: &FrozenEncoder) -> Result<EmbeddingCache> {
    let cache_dir = opts
        .cache_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE_DIR));
    EmbeddingCache::open(&cache_dir, &encoder.fingerprint()?, encoder.dim())
}

/// `texts` embedded by the base encoder an `encoder-head` trained with `opts` uses (row-major,
/// [`FrozenEncoder::dim`] floats per text), through the same on-disk cache as training: a text
/// embedded once is never embedded again, by this call or a later fit. Returns the rows and `dim`.
pub fn embed_cached(
    opts: &TrainOptions,
    texts: &[&str],
    progress: bool,
) -> Result<(Vec<f32>, usize)> {
    let base = super::base_of(opts)?.dir;
    let threads = threads_of(opts);
    let encoder = FrozenEncoder::load(&base, opts.max_len, threads, &opts.device)?;
    let mut cache = open_cache(opts, &encoder)?;
    let (rows, _) = embed_with_cache(&encoder, &mut cache, texts, progress)?;
    Ok((rows, encoder.dim()))
}

/// Embeds `texts` through the cache: only texts the cache lacks reach the encoder.
fn embed_with_cache(
    encoder: &FrozenEncoder,
    cache: &mut EmbeddingCache,
    texts: &[&str],
    progress: bool,
) -> Result<(Vec<f32>, EmbedStats)> {
    let t0 = Instant::now();
    let calls0 = encoder.forward_calls();
    let keys: Vec<TextKey> = texts.iter().map(|t| text_key(t)).collect();
    let mut seen = HashSet::new();
    let mut missing: Vec<usize> = (0..texts.len())
        .filter(|&i| cache.get(&keys[i]).is_none() && seen.insert(keys[i]))
        .collect();
    // Similar lengths together keep every forward pass uniformly sized.
    missing.sort_by_key(|&i| texts[i].len());
    let bar = if progress && !missing.is_empty() {
        let b = indicatif::ProgressBar::new(missing.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "embedding {bar:30} {pos}/{len} sentences {per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let dim = encoder.dim();
    // Chunks are flushed to the cache as they finish, so an interrupted run keeps its work.
    for chunk in missing.chunks(EMBED_BATCH * 16) {
        let chunk_texts: Vec<&str> = chunk.iter().map(|&i| texts[i]).collect();
        let rows = encoder.embed(&chunk_texts, EMBED_BATCH)?;
        let chunk_keys: Vec<TextKey> = chunk.iter().map(|&i| keys[i]).collect();
        cache.insert_many(&chunk_keys, &rows)?;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let mut out = Vec::with_capacity(texts.len() * dim);
    for k in &keys {
        let row = cache.get(k).ok_or_else(|| {
            TrainError::Other("embedding cache lost an entry it just stored".into())
        })?;
        out.extend_from_slice(row);
    }
    Ok((
        out,
        EmbedStats {
            computed: missing.len(),
            from_cache: texts.len() - missing.len(),
            forward_calls: encoder.forward_calls() - calls0,
            seconds: t0.elapsed().as_secs_f64(),
        },
    ))
}

/// Per-feature mean and 1/std over the training rows.
fn standardizer(x: &[f32], d: usize) -> (Vec<f32>, Vec<f32>) {
    let n = (x.len() / d).max(1) as f64;
    let mut mean = vec![0f64; d];
    for row in x.chunks_exact(d) {
        for (m, v) in mean.iter_mut().zip(row) {
            *m += *v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n);
    let mut var = vec![0f64; d];
    for row in x.chunks_exact(d) {
        for ((s, v), m) in var.iter_mut().zip(row).zip(&mean) {
            *s += (*v as f64 - m).powi(2);
        }
    }
    let scale = var
        .iter()
        .map(|s| (1.0 / ((s / n).sqrt() + 1e-6)) as f32)
        .collect();
    (mean.into_iter().map(|m| m as f32).collect(), scale)
}

fn standardize(x: &mut [f32], mean: &[f32], scale: &[f32]) {
    for row in x.chunks_exact_mut(mean.len()) {
        for ((v, m), s) in row.iter_mut().zip(mean).zip(scale) {
            *v = (*v - m) * s;
        }
    }
}

struct FitResult {
    weights: HeadWeights,
    dev_accuracy: f64,
    dev_loss: f64,
    epochs_run: usize,
    best_epoch: usize,
}

/// Trains the head with AdamW on standardised embeddings, keeping the weights of the epoch with
/// the best dev accuracy (ties: lower dev loss).
#[allow(clippy::too_many_arguments)]
fn fit_head(
    x_train: &[f32],
    y_train: &Targets,
    x_dev: &[f32],
    y_dev: &Targets,
    dim: usize,
    n_labels: usize,
    hp: &HeadHyper,
    seed: u64,
) -> Result<FitResult> {
    let dev = Device::Cpu;
    let (mean, scale) = standardizer(x_train, dim);
    let mut xt = x_train.to_vec();
    standardize(&mut xt, &mean, &scale);
    let mut xd = x_dev.to_vec();
    standardize(&mut xd, &mean, &scale);
    let n = y_train.len();
    let sets = y_train.is_sets();
    let xt = Tensor::from_vec(xt, (n, dim), &dev)?;
    let yt = y_train.tensor(n_labels, &dev)?;
    // Without a dev split, select on the training data (the best we can do).
    let (xd, yd_targets) = if y_dev.is_empty() {
        (xt.clone(), y_train.clone())
    } else {
        (
            Tensor::from_vec(xd, (y_dev.len(), dim), &dev)?,
            y_dev.clone(),
        )
    };
    let yd = yd_targets.tensor(n_labels, &dev)?;

    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut uniform = |rows: usize, cols: usize, bound: f32| -> Result<Var> {
        let v: Vec<f32> = (0..rows * cols)
            .map(|_| rng.gen_range(-bound..bound))
            .collect();
        Ok(Var::from_tensor(&Tensor::from_vec(v, (rows, cols), &dev)?)?)
    };
    let (hidden_layer, k) = match hp.kind {
        HeadKind::Mlp => {
            let w1 = uniform(dim, hp.hidden, 1.0 / (dim as f32).sqrt())?;
            let b1 = Var::zeros(hp.hidden, DType::F32, &dev)?;
            (Some((w1, b1)), hp.hidden)
        }
        HeadKind::Logistic => (None, dim),
    };
    let out_w = match hp.kind {
        HeadKind::Logistic => Var::zeros((dim, n_labels), DType::F32, &dev)?,
        HeadKind::Mlp => uniform(k, n_labels, 1.0 / (k as f32).sqrt())?,
    };
    let out_b = Var::zeros(n_labels, DType::F32, &dev)?;
    let mut vars = vec![out_w.clone(), out_b.clone()];
    if let Some((w1, b1)) = &hidden_layer {
        vars.push(w1.clone());
        vars.push(b1.clone());
    }
    let mut opt = AdamW::new(
        vars,
        ParamsAdamW {
            lr: hp.lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;

    let forward = |x: &Tensor, drop_mask: Option<&Tensor>| -> Result<Tensor> {
        let h = match &hidden_layer {
            Some((w1, b1)) => {
                let h = x
                    .matmul(w1.as_tensor())?
                    .broadcast_add(b1.as_tensor())?
                    .relu()?;
                match drop_mask {
                    Some(m) => h.mul(m)?,
                    None => h,
                }
            }
            None => x.clone(),
        };
        Ok(h.matmul(out_w.as_tensor())?
            .broadcast_add(out_b.as_tensor())?)
    };
    let penalty = || -> Result<Tensor> {
        let mut p = out_w.as_tensor().sqr()?.sum_all()?;
        if let Some((w1, _)) = &hidden_layer {
            p = (p + w1.as_tensor().sqr()?.sum_all()?)?;
        }
        Ok((p * (0.5 * hp.l2))?)
    };
    let snapshot = || -> Result<HeadWeights> {
        let flat = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1::<f32>()?) };
        Ok(HeadWeights {
            mean: mean.clone(),
            scale: scale.clone(),
            hidden: match &hidden_layer {
                Some((w1, b1)) => Some((flat(w1.as_tensor())?, flat(b1.as_tensor())?)),
                None => None,
            },
            out_w: flat(out_w.as_tensor())?,
            out_b: flat(out_b.as_tensor())?,
        })
    };
    let evaluate = || -> Result<(f64, f64)> {
        let logits = forward(&xd, None)?;
        let loss = loss_tensor(&logits, &yd, sets)?.to_scalar::<f32>()? as f64;
        Ok((yd_targets.score(&logits.to_vec2::<f32>()?), loss))
    };

    let mut order: Vec<u32> = (0..n as u32).collect();
    let mut best: Option<(f64, f64, usize, HeadWeights)> = None;
    let mut since_best = 0usize;
    let mut step = 0usize;
    let mut epochs_run = 0usize;
    for epoch in 1..=hp.max_epochs {
        epochs_run = epoch;
        order.shuffle(&mut rng);
        for batch in order.chunks(hp.batch_size) {
            step += 1;
            let idx = Tensor::from_slice(batch, batch.len(), &dev)?;
            let xb = xt.index_select(&idx, 0)?;
            let yb = yt.index_select(&idx, 0)?;
            let mask = if hp.kind == HeadKind::Mlp && hp.dropout > 0.0 {
                let keep = 1.0 - hp.dropout;
                let m: Vec<f32> = (0..batch.len() * k)
                    .map(|_| {
                        if rng.gen::<f32>() < keep {
                            1.0 / keep
                        } else {
                            0.0
                        }
                    })
                    .collect();
                Some(Tensor::from_vec(m, (batch.len(), k), &dev)?)
            } else {
                None
            };
            let logits = forward(&xb, mask.as_ref())?;
            let ce = loss_tensor(&logits, &yb, sets)?;
            let loss = (ce + penalty()?)?;
            let lv = loss.to_scalar::<f32>()?;
            if !lv.is_finite() {
                return Err(TrainError::NonFinite {
                    step,
                    lr: hp.lr,
                    loss: lv,
                });
            }
            opt.backward_step(&loss)?;
        }
        let (acc, loss) = evaluate()?;
        let better = match &best {
            None => true,
            Some((ba, bl, _, _)) => acc > *ba || (acc == *ba && loss < *bl),
        };
        if better {
            best = Some((acc, loss, epoch, snapshot()?));
            since_best = 0;
        } else {
            since_best += 1;
            if since_best >= hp.patience {
                break;
            }
        }
    }
    let (dev_accuracy, dev_loss, best_epoch, weights) =
        best.ok_or_else(|| TrainError::Other("head training ran no epoch".into()))?;
    Ok(FitResult {
        weights,
        dev_accuracy,
        dev_loss,
        epochs_run,
        best_epoch,
    })
}

fn check_data(data: &TrainData) -> Result<()> {
    if data.train.is_empty() {
        return Err(TrainError::Data(
            "no training examples: the dataset is empty after splitting".into(),
        ));
    }
    let n_labels = data.labels.len();
    if let Some((_, y)) = data
        .train
        .iter()
        .chain(&data.dev)
        .find(|(_, y)| *y >= n_labels)
    {
        return Err(TrainError::Data(format!(
            "label index {y} is outside the task's {n_labels} labels"
        )));
    }
    let classes: HashSet<usize> = data.train.iter().map(|(_, y)| *y).collect();
    if classes.len() < 2 && data.sets.is_none() {
        return Err(TrainError::Data(format!(
            "the training data has a single class ({}); a classifier needs at least two",
            data.train
                .first()
                .map(|(_, y)| data.labels.names[*y].as_str())
                .unwrap_or("?")
        )));
    }
    Ok(())
}

/// Trains an `encoder-head` student on `data` and writes its model directory to `opts.out`.
pub fn train(data: &TrainData, opts: &TrainOptions) -> Result<ModelMeta> {
    let t0 = Instant::now();
    check_data(data)?;
    let hp = HeadHyper::from_opts(opts)?;
    let resolved = super::base_of(opts)?;
    let base = resolved.dir.clone();
    let threads = threads_of(opts);
    let encoder = FrozenEncoder::load(&base, opts.max_len, threads, &opts.device)?;
    let mut cache = open_cache(opts, &encoder)?;

    let texts: Vec<&str> = data
        .train
        .iter()
        .chain(&data.dev)
        .map(|(t, _)| t.as_str())
        .collect();
    let (emb, stats) = embed_with_cache(&encoder, &mut cache, &texts, opts.progress)?;
    let dim = encoder.dim();
    let n_train = data.train.len();
    let (x_train, x_dev) = emb.split_at(n_train * dim);
    let y_train = data.train_targets();
    let y_dev = data.dev_targets();

    let t_head = Instant::now();
    let fit = fit_head(
        x_train,
        &y_train,
        x_dev,
        &y_dev,
        dim,
        data.labels.len(),
        &hp,
        opts.seed,
    )?;
    let head = Head {
        cfg: HeadConfig {
            kind: hp.kind,
            input_dim: dim,
            hidden: (hp.kind == HeadKind::Mlp).then_some(hp.hidden),
            n_labels: data.labels.len(),
            pooling: "mean".into(),
            normalize: true,
            standardize: true,
        },
        w: fit.weights,
    };
    // With no dev split a label-set student still gets its sigmoid head (thresholds 0.5).
    let (temperature, multilabel) = if y_dev.is_empty() && data.sets.is_none() {
        (1.0, None)
    } else {
        let (t, ml, _) = crate::linear::fit::calibrate(data, &head.logits(x_dev, y_dev.len()));
        (t, ml)
    };
    let head_s = t_head.elapsed().as_secs_f64();

    let device_name = crate::device::device_name(&opts.device);
    let mut meta = ModelMeta {
        out_of_scope: data.labels.out_of_scope.clone(),
        format_version: 1,
        task: data.task.clone(),
        labels: data.labels.names.clone(),
        kind: StudentKind::EncoderHead,
        base_model: Some(resolved.source.clone()),
        data_hash: data.data_hash.clone(),
        label_source: data.label_source.clone(),
        n_train,
        n_dev: data.dev.len(),
        dev_accuracy: fit.dev_accuracy,
        dev_loss: Some(fit.dev_loss),
        temperature,
        max_len: Some(encoder.max_len()),
        epochs_run: fit.epochs_run,
        train_wall_s: 0.0,
        device: device_name.clone(),
        threads,
        examples_per_s: 0.0,
        train_cost_usd: 0.0,
        seed: opts.seed,
        created: chrono::Utc::now().to_rfc3339(),
        distill_version: env!("CARGO_PKG_VERSION").to_string(),
        hyper: serde_json::Value::Null,
        quantization: None,
        multilabel,
    };
    let hyper = serde_json::json!({
        "head": hp,
        "best_epoch": fit.best_epoch,
        "encoder_backend": encoder.backend().as_str(),
        "encoder_fingerprint": encoder.fingerprint()?,
        "embeddings_computed": stats.computed,
        "embeddings_from_cache": stats.from_cache,
        "encoder_forward_calls": stats.forward_calls,
        "embed_s": stats.seconds,
        "head_s": head_s,
        "embedding_cache": cache.path().map(|p| p.display().to_string()),
    });
    meta.hyper = hyper;

    write_model_dir(&opts.out, opts.force, |tmp| {
        write_files(tmp, &base, &head, &data.labels.names)?;
        // Wall time and cost cover everything up to the finished directory.
        let wall = t0.elapsed().as_secs_f64();
        meta.train_wall_s = wall;
        meta.examples_per_s = texts.len() as f64 / wall.max(1e-9);
        meta.train_cost_usd = if opts.device.is_cpu() {
            wall / 3600.0 * threads as f64 * DEFAULT_CPU_CORE_HOUR_USD
        } else {
            wall / 3600.0 * DEFAULT_GPU_HOUR_USD
        };
        let json = serde_json::to_vec_pretty(&meta)
            .map_err(|e| TrainError::Other(format!("distill.json: {e}")))?;
        std::fs::write(tmp.join("distill.json"), json)
            .map_err(|e| TrainError::io(tmp.join("distill.json"), e))
    })?;
    Ok(meta)
}

/// Fills a model directory: config.json, merged model.safetensors, tokenizer.json.
fn write_files(tmp: &Path, base: &Path, head: &Head, labels: &[String]) -> Result<()> {
    let cfg_text = std::fs::read_to_string(base.join("config.json"))
        .map_err(|e| TrainError::io(base.join("config.json"), e))?;
    let mut cfg: serde_json::Value = serde_json::from_str(&cfg_text)
        .map_err(|e| TrainError::model(base, format!("config.json: {e}")))?;
    let obj = cfg
        .as_object_mut()
        .ok_or_else(|| TrainError::model(base, "config.json is not a JSON object"))?;
    obj.insert("architectures".into(), serde_json::json!(["BertModel"]));
    obj.insert(
        "id2label".into(),
        serde_json::Value::Object(
            labels
                .iter()
                .enumerate()
                .map(|(i, l)| (i.to_string(), serde_json::json!(l)))
                .collect(),
        ),
    );
    obj.insert(
        "label2id".into(),
        serde_json::Value::Object(
            labels
                .iter()
                .enumerate()
                .map(|(i, l)| (l.clone(), serde_json::json!(i)))
                .collect(),
        ),
    );
    obj.insert(
        "distill_head".into(),
        serde_json::to_value(&head.cfg).map_err(|e| TrainError::Other(e.to_string()))?,
    );
    let cfg_out = tmp.join("config.json");
    std::fs::write(
        &cfg_out,
        serde_json::to_vec_pretty(&cfg).map_err(|e| TrainError::Other(e.to_string()))?,
    )
    .map_err(|e| TrainError::io(&cfg_out, e))?;

    let tok = base.join("tokenizer.json");
    std::fs::copy(&tok, tmp.join("tokenizer.json")).map_err(|e| TrainError::io(&tok, e))?;

    // The encoder's tensors go in unchanged (same names, dtypes, bytes) beside the head's.
    let bytes = super::weights::read(base)?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| TrainError::model(base, format!("model.safetensors: {e}")))?;
    let head_tensors: Vec<(String, Vec<usize>, Vec<u8>)> = head
        .tensors()
        .into_iter()
        .map(|(name, shape, v)| {
            (
                name,
                shape,
                v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
            )
        })
        .collect();
    let mut views: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .filter(|(name, _)| !name.starts_with(HEAD_PREFIX))
        .collect();
    for (name, shape, data) in &head_tensors {
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                .map_err(|e| TrainError::Other(format!("head tensor {name}: {e}")))?;
        views.push((name.clone(), view));
    }
    let mut info = HashMap::new();
    info.insert("format".to_string(), "pt".to_string());
    let out = tmp.join("model.safetensors");
    safetensors::serialize_to_file(views, Some(info), &out)
        .map_err(|e| TrainError::Other(format!("{}: {e}", out.display())))?;
    Ok(())
}
