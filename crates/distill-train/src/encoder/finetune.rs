//! The `encoder-finetune` student: every weight of a pretrained BERT-family encoder trained on
//! the task, with a fresh classification head. The recipe is the standard one from the BERT
//! paper and `transformers`' Trainer: AdamW (no decay on biases and LayerNorm), linear warm-up
//! then linear decay, clipping by global norm, dropout, and early stopping on dev accuracy.

use super::bert::{
    classifier_config_json, model_files, Batch, BertClassifier, BertConfig, LoadOptions,
};
use super::tokenize::TextTokenizer;
use super::weights;
use crate::device::device_name;
use crate::error::{Result, TrainError};
use crate::objective::Targets;
use crate::student::{
    fit_temperature, write_model_dir, ModelMeta, Student, StudentKind, TrainData, TrainOptions,
    DEFAULT_CPU_CORE_HOUR_USD, DEFAULT_GPU_HOUR_USD,
};
use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::Path;
use std::time::Instant;

mod adamw;
pub(crate) mod packed;
mod trainer;
pub use adamw::{AdamW, SparseRows};
pub use packed::PackedClassifier;
pub use trainer::{classification_loss, clip_grad_norm, grad_norm, token_loss, StepStats, Trainer};

/// Batch size for inference (dev evaluation and `predict`).
const INFER_BATCH: usize = 64;

/// The fresh pooler and classifier learn this many times faster than the pretrained body: with
/// all-MiniLM-L6-v2 on Banking77 (PyTorch, same recipe, 10 epochs) a 10x head rate reached 0.936
/// test accuracy against 0.930 without it, and 0.908 after two epochs against 0.830.
pub const DEFAULT_HEAD_LR_MULT: f64 = 10.0;

/// Epochs without a better dev accuracy before stopping. The learning rate decays linearly to
/// zero, so the last epochs are where the model settles: on Banking77 (gold labels, seed 42) dev
/// accuracy did not improve in epochs 6-8 and reached its best (0.924) in the last two; patience 3
/// stopped at epoch 8 with 0.928 test accuracy where the full schedule reached 0.932.
pub const DEFAULT_PATIENCE: usize = 5;

/// Tokens per text when `--max-len` is not given.
pub const DEFAULT_MAX_LEN: usize = 64;

/// Fine-tuning hyper-parameters after defaults are applied.
#[derive(Debug, Clone)]
pub struct Hyper {
    pub batch_size: usize,
    pub max_len: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub epochs: usize,
    pub warmup_frac: f64,
    pub clip_norm: f64,
    pub patience: usize,
    pub class_balanced: bool,
    pub seed: u64,
    /// Learning rate of the fresh head (pooler and classifier) relative to `lr`.
    pub head_lr_mult: f64,
}

impl Hyper {
    pub fn from_options(opts: &TrainOptions) -> Result<Self> {
        opts.validate()?;
        Ok(Hyper {
            batch_size: opts.batch_size.unwrap_or(32),
            max_len: opts.max_len.unwrap_or(DEFAULT_MAX_LEN),
            lr: opts.lr.unwrap_or(1e-4),
            weight_decay: opts.weight_decay.unwrap_or(0.01),
            epochs: opts.epochs.unwrap_or(10),
            warmup_frac: 0.1,
            clip_norm: 1.0,
            patience: opts.patience.unwrap_or(DEFAULT_PATIENCE),
            class_balanced: opts.class_balanced,
            seed: opts.seed,
            head_lr_mult: opts.head_lr_mult.unwrap_or(DEFAULT_HEAD_LR_MULT),
        })
    }

    /// Linear warm-up to `lr` over the first `warmup_frac` of steps, then linear decay to 0.
    pub fn lr_at(&self, step: usize, total: usize) -> f64 {
        let warmup = ((total as f64) * self.warmup_frac).ceil().max(1.0) as usize;
        if step < warmup {
            self.lr * (step + 1) as f64 / warmup as f64
        } else {
            let rest = total.saturating_sub(warmup).max(1);
            self.lr * (total.saturating_sub(step)) as f64 / rest as f64
        }
    }
}

/// Logits for already-tokenised texts, batched by length (so padding stays small) and
/// returned in input order.
pub fn logits_for_ids(
    model: &BertClassifier,
    ids: &[Vec<u32>],
    pad_id: u32,
    device: &Device,
) -> Result<Vec<Vec<f32>>> {
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| ids[i].len());
    let mut out = vec![Vec::new(); ids.len()];
    for chunk in order.chunks(INFER_BATCH) {
        let seqs: Vec<&[u32]> = chunk.iter().map(|&i| ids[i].as_slice()).collect();
        let batch = Batch::from_ids(&seqs, pad_id, device)?;
        let rows = model.forward(&batch, None)?.to_vec2::<f32>()?;
        for (&i, row) in chunk.iter().zip(rows) {
            out[i] = row;
        }
    }
    Ok(out)
}

fn accuracy_and_loss(logits: &[Vec<f32>], labels: &[usize]) -> (f64, f64) {
    if logits.is_empty() {
        return (0.0, 0.0);
    }
    let mut right = 0usize;
    let mut nll = 0f64;
    for (row, &y) in logits.iter().zip(labels) {
        let best = (0..row.len())
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap_or(0);
        right += usize::from(best == y);
        let p = crate::student::softmax(row, 1.0);
        nll -= (p[y].max(1e-12) as f64).ln();
    }
    (
        right as f64 / logits.len() as f64,
        nll / logits.len() as f64,
    )
}

/// The outcome of [`fit`].
#[derive(Debug, Clone)]
pub struct FitReport {
    pub epochs_run: usize,
    pub steps: usize,
    pub dev_accuracy: f64,
    pub dev_loss: f64,
    /// Dev logits of the kept (best) weights, for temperature fitting.
    pub dev_logits: Vec<Vec<f32>>,
    pub train_examples_per_s: f64,
    pub train_losses: Vec<f32>,
}

/// Tokenised examples: ids with their label index (and, for a multilabel task, their label
/// sets, which are then the targets).
pub struct Examples {
    pub ids: Vec<Vec<u32>>,
    pub labels: Vec<usize>,
    pub sets: Option<Vec<Vec<usize>>>,
}

impl Examples {
    fn targets(&self) -> Targets {
        match &self.sets {
            Some(s) => Targets::Sets(s.clone()),
            None => Targets::Single(self.labels.clone()),
        }
    }

    /// The targets of examples `idx` as [`crate::objective::loss_tensor`] takes them.
    fn batch_targets(&self, idx: &[usize], n_labels: usize, device: &Device) -> Result<Tensor> {
        let t = match &self.sets {
            Some(s) => Targets::Sets(idx.iter().map(|&i| s[i].clone()).collect()),
            None => Targets::Single(idx.iter().map(|&i| self.labels[i]).collect()),
        };
        Ok(t.tensor(n_labels, device)?)
    }
}

/// Length-bucketed batches: shuffle, cut into pools of 50 batches, sort each pool by length,
/// cut into batches, shuffle batch order. Padding stays small while batches stay random.
pub(crate) fn epoch_batches(
    ids: &[Vec<u32>],
    batch_size: usize,
    rng: &mut rand::rngs::StdRng,
) -> Vec<Vec<usize>> {
    let mut idx: Vec<usize> = (0..ids.len()).collect();
    idx.shuffle(rng);
    let mut batches = Vec::new();
    for pool in idx.chunks_mut(batch_size * 50) {
        pool.sort_by_key(|&i| ids[i].len());
        batches.extend(pool.chunks(batch_size).map(|c| c.to_vec()));
    }
    batches.shuffle(rng);
    batches
}

/// Trains `model` (built with `trainable`) in place and keeps the weights of the best dev epoch.
pub fn fit(
    model: &BertClassifier,
    pad_id: u32,
    train: &Examples,
    dev: &Examples,
    hp: &Hyper,
    device: &Device,
    progress: bool,
) -> Result<FitReport> {
    let n_labels = model.n_labels;
    let vars = model.vars();
    if vars.is_empty() {
        return Err(TrainError::Other(
            "model was not loaded as trainable".into(),
        ));
    }
    // Class weights balance one label per input; a label set has no single class to weigh.
    let class_weights = if hp.class_balanced && train.sets.is_none() {
        let mut counts = vec![0usize; n_labels];
        for &y in &train.labels {
            counts[y] += 1;
        }
        let n = train.labels.len() as f32;
        let present = counts.iter().filter(|&&c| c > 0).count().max(1) as f32;
        let w: Vec<f32> = counts
            .iter()
            .map(|&c| {
                if c == 0 {
                    0.0
                } else {
                    n / (present * c as f32)
                }
            })
            .collect();
        Some(Tensor::from_vec(w, n_labels, device)?)
    } else {
        None
    };

    let mut rng = rand::rngs::StdRng::seed_from_u64(hp.seed);
    let steps_per_epoch = train.ids.len().div_ceil(hp.batch_size);
    let total_steps = steps_per_epoch * hp.epochs;
    let mut trainer = Trainer::new(model, hp, total_steps, class_weights, device)?;
    let bar = if progress {
        let b = indicatif::ProgressBar::new((train.ids.len() * hp.epochs) as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "fine-tune {bar:30} {pos}/{len} examples {per_sec} ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };

    // (dev accuracy, dev loss, dev probabilities, weights) of the best epoch so far.
    type Best = (f64, f64, Vec<Vec<f32>>, Vec<Tensor>);
    let mut best: Option<Best> = None;
    let mut stale = 0usize;
    let mut step = 0usize;
    let mut train_time = 0f64;
    let mut examples_seen = 0usize;
    let mut epochs_run = 0usize;
    let mut losses = Vec::new();
    for epoch in 0..hp.epochs {
        epochs_run = epoch + 1;
        let t0 = Instant::now();
        let mut epoch_loss = 0f64;
        let batches = epoch_batches(&train.ids, hp.batch_size, &mut rng);
        let n_batches = batches.len();
        for chunk in batches {
            let seqs: Vec<&[u32]> = chunk.iter().map(|&i| train.ids[i].as_slice()).collect();
            let batch = Batch::from_ids(&seqs, pad_id, device)?;
            let labels = train.batch_targets(&chunk, n_labels, device)?;
            let stats = trainer.step(&batch, &labels)?;
            let loss_value = stats.loss;
            step += 1;
            examples_seen += chunk.len();
            epoch_loss += loss_value as f64;
            losses.push(loss_value);
            bar.inc(chunk.len() as u64);
            bar.set_message(format!("epoch {} loss {loss_value:.4}", epoch + 1));
        }
        train_time += t0.elapsed().as_secs_f64();
        if dev.ids.is_empty() {
            continue;
        }
        let logits = logits_for_ids(model, &dev.ids, pad_id, device)?;
        let (acc, loss) = match &dev.sets {
            None => accuracy_and_loss(&logits, &dev.labels),
            Some(_) => {
                let targets = dev.targets();
                let loss = crate::objective::dev_loss(&logits, &targets, 1.0, None);
                (targets.score(&logits), loss.unwrap_or(0.0))
            }
        };
        tracing::info!(
            epoch = epoch + 1,
            train_loss = epoch_loss / n_batches.max(1) as f64,
            dev_accuracy = acc,
            dev_loss = loss,
            "fine-tune epoch done"
        );
        say(
            &bar,
            progress,
            format!(
                "epoch {}: train loss {:.4}, dev accuracy {acc:.4}, dev loss {loss:.4}",
                epoch + 1,
                epoch_loss / n_batches.max(1) as f64
            ),
        );
        let improved = best.as_ref().map(|b| acc > b.0).unwrap_or(true);
        if improved {
            let snapshot = vars
                .iter()
                .map(|(_, v)| Ok(v.as_detached_tensor().copy()?))
                .collect::<Result<Vec<_>>>()?;
            best = Some((acc, loss, logits, snapshot));
            stale = 0;
        } else {
            stale += 1;
            if stale >= hp.patience {
                say(
                    &bar,
                    progress,
                    format!("early stop: dev accuracy has not improved for {stale} epoch(s)"),
                );
                break;
            }
        }
    }
    bar.finish_and_clear();
    let (dev_accuracy, dev_loss, dev_logits) = match best {
        Some((acc, loss, logits, snapshot)) => {
            for ((_, v), t) in vars.iter().zip(snapshot) {
                v.set(&t)?;
            }
            (acc, loss, logits)
        }
        None => (0.0, 0.0, Vec::new()),
    };
    Ok(FitReport {
        epochs_run,
        steps: step,
        dev_accuracy,
        dev_loss,
        dev_logits,
        train_examples_per_s: examples_seen as f64 / train_time.max(1e-9),
        train_losses: losses,
    })
}

/// A line above the progress bar. indicatif drops `println` when stderr is not a terminal
/// (a log file, CI), and the per-epoch dev accuracy is what such a log is read for.
pub(crate) fn say(bar: &indicatif::ProgressBar, progress: bool, line: String) {
    if !progress {
        return;
    }
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

fn tokenize_split(
    tok: &TextTokenizer,
    rows: &[(String, usize)],
    sets: Option<&Vec<Vec<usize>>>,
) -> Result<Examples> {
    let texts: Vec<&str> = rows.iter().map(|(t, _)| t.as_str()).collect();
    let mut ids = Vec::with_capacity(rows.len());
    for chunk in texts.chunks(4096) {
        ids.extend(tok.encode_batch(chunk)?);
    }
    Ok(Examples {
        ids,
        labels: rows.iter().map(|(_, y)| *y).collect(),
        sets: sets.cloned(),
    })
}

fn check_data(data: &TrainData) -> Result<()> {
    if data.train.is_empty() {
        return Err(TrainError::Data("no training examples".into()));
    }
    let n = data.labels.len();
    if n < 2 {
        return Err(TrainError::Data(
            "the task needs at least two labels to train a classifier".into(),
        ));
    }
    if let Some((_, y)) = data.train.iter().chain(&data.dev).find(|(_, y)| *y >= n) {
        return Err(TrainError::Data(format!(
            "label index {y} is outside the task's {n} labels"
        )));
    }
    let first = data.train[0].1;
    if data.sets.is_none() && data.train.iter().all(|(_, y)| *y == first) {
        return Err(TrainError::Data(format!(
            "all training examples have the same label `{}`; a classifier needs at least two classes",
            data.labels.names.get(first).map(String::as_str).unwrap_or("?")
        )));
    }
    Ok(())
}

/// `distill train --student encoder-finetune`: fine-tunes the base and writes the model directory.
pub fn train(data: &TrainData, opts: &TrainOptions) -> Result<ModelMeta> {
    let started = Instant::now();
    check_data(data)?;
    let hp = Hyper::from_options(opts)?;
    let base = super::base_of(opts)?;
    let base_dir = base.dir.clone();
    let (cfg_path, _, tok_path) = model_files(&base_dir);
    let (mut cfg, raw_cfg) = BertConfig::from_file(&cfg_path)?;
    if let Some(p) = opts.dropout {
        if !(0.0..1.0).contains(&p) {
            return Err(TrainError::Other(format!(
                "--dropout must be in [0, 1), got {p}"
            )));
        }
        cfg.hidden_dropout_prob = p;
        cfg.attention_probs_dropout_prob = p;
        cfg.classifier_dropout = None;
    }
    let max_len = hp.max_len.min(cfg.max_position_embeddings);
    let tok = TextTokenizer::from_file(&tok_path, max_len, cfg.pad_token_id)?;
    let labels = data.labels.names.clone();
    // model.safetensors, or a sharded checkpoint's shards merged; on the CPU first, as `load`.
    let tensors =
        candle_core::safetensors::load_buffer(&weights::read(&base_dir)?, &Device::Cpu)
            .map_err(|e| TrainError::model(&base_dir, format!("cannot read safetensors: {e}")))?;
    let (model, report) = BertClassifier::from_tensors(
        tensors,
        &base_dir,
        &cfg,
        labels.len(),
        &opts.device,
        LoadOptions {
            trainable: true,
            init_missing_head: true,
            seed: hp.seed,
        },
    )?;
    if !report.unused.is_empty() {
        tracing::warn!(unused = ?report.unused, "base checkpoint tensors not used by the classifier");
    }
    let sets = data.sets.as_ref();
    let train_ex = tokenize_split(&tok, &data.train, sets.map(|s| &s.train))?;
    let dev_ex = tokenize_split(&tok, &data.dev, sets.map(|s| &s.dev))?;
    let fit_report = fit(
        &model,
        tok.pad_id,
        &train_ex,
        &dev_ex,
        &hp,
        &opts.device,
        opts.progress,
    )?;
    let (temperature, multilabel, calibrated_loss) = if data.sets.is_some() {
        crate::linear::fit::calibrate(data, &fit_report.dev_logits)
    } else {
        (
            fit_temperature(&fit_report.dev_logits, &dev_ex.labels),
            None,
            None,
        )
    };
    let wall = started.elapsed().as_secs_f64();
    let is_cpu = opts.device.is_cpu();
    let train_cost_usd = if is_cpu {
        wall / 3600.0 * opts.threads.max(1) as f64 * DEFAULT_CPU_CORE_HOUR_USD
    } else {
        wall / 3600.0 * DEFAULT_GPU_HOUR_USD
    };
    let meta = ModelMeta {
        out_of_scope: data.labels.out_of_scope.clone(),
        format_version: 1,
        task: data.task.clone(),
        labels: labels.clone(),
        kind: StudentKind::EncoderFinetune,
        base_model: Some(base.source.clone()),
        data_hash: data.data_hash.clone(),
        label_source: data.label_source.clone(),
        n_train: data.train.len(),
        n_dev: data.dev.len(),
        dev_accuracy: fit_report.dev_accuracy,
        // A label-set student's dev loss is under its fitted per-label calibration.
        dev_loss: calibrated_loss.or((!data.dev.is_empty()).then_some(fit_report.dev_loss)),
        temperature,
        max_len: Some(max_len),
        epochs_run: fit_report.epochs_run,
        train_wall_s: wall,
        device: device_name(&opts.device),
        threads: opts.threads,
        examples_per_s: fit_report.train_examples_per_s,
        train_cost_usd,
        seed: hp.seed,
        created: chrono::Utc::now().to_rfc3339(),
        distill_version: env!("CARGO_PKG_VERSION").to_string(),
        hyper: serde_json::json!({
            "batch_size": hp.batch_size,
            "max_len": max_len,
            "lr": hp.lr,
            "head_lr": hp.lr * hp.head_lr_mult,
            "weight_decay": hp.weight_decay,
            "epochs_max": hp.epochs,
            "warmup_frac": hp.warmup_frac,
            "clip_norm": hp.clip_norm,
            "patience": hp.patience,
            "class_balanced": hp.class_balanced,
            "hidden_dropout": cfg.hidden_dropout_prob,
            "attention_dropout": cfg.attention_probs_dropout_prob,
            "steps": fit_report.steps,
            "optimizer": "AdamW (no decay on biases and LayerNorm; pooler and classifier at head_lr), linear warm-up and decay",
        }),
        quantization: None,
        multilabel,
    };
    let mut config_json = classifier_config_json(&raw_cfg, &labels);
    if data.sets.is_some() {
        // What `transformers` reads to apply a sigmoid per label (BCE-with-logits).
        config_json["problem_type"] = "multi_label_classification".into();
    }
    write_model_dir(&opts.out, opts.force, |tmp| {
        let write_json = |name: &str, v: &serde_json::Value| -> Result<()> {
            let p = tmp.join(name);
            let text = serde_json::to_string_pretty(v)
                .map_err(|e| TrainError::Other(format!("{name}: {e}")))?;
            std::fs::write(&p, text).map_err(|e| TrainError::io(&p, e))
        };
        write_json("config.json", &config_json)?;
        model.save(&tmp.join("model.safetensors"))?;
        copy_tokenizer_files(&base_dir, tmp)?;
        let meta_json = serde_json::to_value(&meta)
            .map_err(|e| TrainError::Other(format!("distill.json: {e}")))?;
        write_json("distill.json", &meta_json)
    })?;
    Ok(meta)
}

/// `tokenizer.json` plus the side files `transformers`' AutoTokenizer reads when present.
pub(crate) fn copy_tokenizer_files(from: &Path, to: &Path) -> Result<()> {
    for name in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.txt",
    ] {
        let src = from.join(name);
        if src.is_file() {
            std::fs::copy(&src, to.join(name)).map_err(|e| TrainError::io(&src, e))?;
        } else if name == "tokenizer.json" {
            return Err(TrainError::model(from, "tokenizer.json not found"));
        }
    }
    Ok(())
}

/// A fine-tuned encoder loaded for inference.
pub struct FinetuneStudent {
    meta: ModelMeta,
    model: FinetuneModel,
}

enum FinetuneModel {
    /// Our BERT (f32) on candle, on any device.
    Candle {
        model: Box<BertClassifier>,
        tok: Box<TextTokenizer>,
        device: Device,
    },
    /// An int8 model on the packed CPU forward.
    Packed(Box<PackedClassifier>),
}

impl FinetuneStudent {
    pub fn load(dir: &Path, meta: ModelMeta, device: &Device) -> Result<Self> {
        let (cfg_path, weights_path, tok_path) = model_files(dir);
        let (cfg, _) = BertConfig::from_file(&cfg_path)?;
        let max_len = meta.max_len.unwrap_or(128).min(cfg.max_position_embeddings);
        if meta.quantization.is_some() {
            let threads = candle_core::utils::get_num_threads().max(1);
            let model = PackedClassifier::load(dir, max_len, meta.labels.len(), threads, device)?;
            return Ok(FinetuneStudent {
                meta,
                model: FinetuneModel::Packed(Box::new(model)),
            });
        }
        let (model, report) = BertClassifier::load(
            &weights_path,
            &cfg,
            meta.labels.len(),
            device,
            LoadOptions::inference(),
        )?;
        report.refuse_unused(dir)?;
        let tok = TextTokenizer::from_file(&tok_path, max_len, cfg.pad_token_id)?;
        Ok(FinetuneStudent {
            meta,
            model: FinetuneModel::Candle {
                model: Box::new(model),
                tok: Box::new(tok),
                device: device.clone(),
            },
        })
    }
}

impl Student for FinetuneStudent {
    fn meta(&self) -> &ModelMeta {
        &self.meta
    }

    fn logits(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        match &self.model {
            FinetuneModel::Candle { model, tok, device } => {
                let ids = tok.encode_batch(texts)?;
                logits_for_ids(model, &ids, tok.pad_id, device)
            }
            FinetuneModel::Packed(m) => m.logits(texts),
        }
    }

    fn token_len(&self, text: &str) -> usize {
        match &self.model {
            FinetuneModel::Candle { tok, .. } => tok.token_len(text),
            FinetuneModel::Packed(m) => m.token_len(text),
        }
    }
}
