//! Fitting the linear student: mini-batch AdamW on the exact sparse softmax cross-entropy
//! gradient, with lazy moments (only rows a batch touches are updated, as in LazyAdam), decoupled
//! weight decay on those rows, and early stopping on dev accuracy.
//!
//! Determinism: the batch order comes from the seed, the forward pass is per example, and the
//! gradient is accumulated in example order, so two runs with one seed give identical weights
//! whatever the thread count.

use super::features::{FeatureConfig, SparseRow, Vocab};
use super::{logits_into, LinearModel, LinearStudent};
use crate::device::device_name;
use crate::error::{Result, TrainError};
use crate::objective::{dev_loss, SigmoidHead, Targets};
use crate::student::{
    fit_temperature, write_model_dir, ModelMeta, Student, StudentKind, TrainData, TrainOptions,
    DEFAULT_CPU_CORE_HOUR_USD,
};
use crate::train::SplitMix64;
use rayon::prelude::*;
use serde::Serialize;
use std::time::Instant;

/// Hyper-parameters, recorded in `distill.json` under `hyper`.
#[derive(Debug, Clone, Serialize)]
pub struct LinearHyper {
    pub lr: f64,
    pub weight_decay: f64,
    pub batch_size: usize,
    pub max_epochs: usize,
    pub patience: usize,
    pub class_balanced: bool,
    pub features: FeatureConfig,
}

impl LinearHyper {
    /// Defaults tuned on Banking77 (a dev split of the training set), overridable by flags.
    pub fn from_options(opts: &TrainOptions) -> Self {
        Self {
            lr: opts.lr.unwrap_or(0.02),
            weight_decay: opts.weight_decay.unwrap_or(1e-4),
            batch_size: opts.batch_size.unwrap_or(64).max(1),
            max_epochs: opts.epochs.unwrap_or(30).max(1),
            patience: opts.patience.unwrap_or(3),
            class_balanced: opts.class_balanced,
            features: FeatureConfig::default(),
        }
    }
}

/// Trains a linear student on `data`, writes its model directory to `opts.out` and returns its
/// `distill.json`.
pub fn train_linear(data: &TrainData, opts: &TrainOptions) -> Result<ModelMeta> {
    let hyper = LinearHyper::from_options(opts);
    let (model, stats) = fit(data, &hyper, opts.seed, opts.progress)?;
    let labels = data.labels.names.clone();

    let dev_logits: Vec<Vec<f32>> = data
        .dev
        .par_iter()
        .map(|(t, _)| model.logits_row(&model.featurize(t)))
        .collect();
    let (temperature, multilabel, dev_loss) = calibrate(data, &dev_logits);

    let wall = stats.wall_s;
    let meta = ModelMeta {
        out_of_scope: data.labels.out_of_scope.clone(),
        format_version: 1,
        task: data.task.clone(),
        labels: labels.clone(),
        kind: StudentKind::Linear,
        base_model: None,
        data_hash: data.data_hash.clone(),
        label_source: data.label_source.clone(),
        n_train: data.train.len(),
        n_dev: data.dev.len(),
        dev_accuracy: stats.best_dev_accuracy,
        dev_loss,
        temperature,
        max_len: None,
        epochs_run: stats.epochs_run,
        train_wall_s: wall,
        // The sparse solver runs on the CPU whatever --device says; record what really ran.
        device: device_name(&candle_core::Device::Cpu),
        threads: opts.threads,
        examples_per_s: if wall > 0.0 {
            (data.train.len() * stats.epochs_run) as f64 / wall
        } else {
            0.0
        },
        train_cost_usd: wall / 3600.0 * opts.threads.max(1) as f64 * DEFAULT_CPU_CORE_HOUR_USD,
        seed: opts.seed,
        created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        distill_version: env!("CARGO_PKG_VERSION").to_string(),
        hyper: serde_json::json!({
            "lr": hyper.lr,
            "weight_decay": hyper.weight_decay,
            "batch_size": hyper.batch_size,
            "max_epochs": hyper.max_epochs,
            "patience": hyper.patience,
            "class_balanced": hyper.class_balanced,
            "best_epoch": stats.best_epoch,
            "num_features": model.vocab.len(),
            "optimizer": "lazy AdamW, exact sparse gradient",
        }),
        quantization: None,
        multilabel,
    };
    let student = LinearStudent::from_parts(meta.clone(), model);
    write_model_dir(&opts.out, opts.force, |dir| {
        student.model().save(dir, &labels)?;
        student.meta().write(dir)
    })?;
    Ok(meta)
}

/// The calibration every student fits on its dev logits: a softmax temperature, or a
/// multilabel student's per-label temperatures and thresholds; and the dev loss under it.
pub fn calibrate(
    data: &TrainData,
    dev_logits: &[Vec<f32>],
) -> (f32, Option<SigmoidHead>, Option<f64>) {
    let targets = data.dev_targets();
    match &targets {
        Targets::Single(ys) => {
            let t = fit_temperature(dev_logits, ys);
            (t, None, dev_loss(dev_logits, &targets, t, None))
        }
        Targets::Sets(sets) => {
            let head = SigmoidHead::fit(dev_logits, sets, data.labels.len(), &data.labels);
            let loss = dev_loss(dev_logits, &targets, 1.0, Some(&head));
            (1.0, Some(head), loss)
        }
    }
}

#[derive(Debug, Clone)]
pub struct FitStats {
    pub epochs_run: usize,
    pub best_epoch: usize,
    pub best_dev_accuracy: f64,
    pub wall_s: f64,
}

fn dev_score(model: &LinearModel, rows: &[SparseRow], targets: &Targets) -> f64 {
    let logits: Vec<Vec<f32>> = rows.par_iter().map(|r| model.logits_row(r)).collect();
    targets.score(&logits)
}

/// Fits the model in memory (no files). Early stopping keeps the weights of the best dev epoch;
/// with no dev split it runs all epochs and keeps the last.
pub fn fit(
    data: &TrainData,
    h: &LinearHyper,
    seed: u64,
    progress: bool,
) -> Result<(LinearModel, FitStats)> {
    let start = Instant::now();
    let cfg = h.features.clone();
    let c = data.labels.names.len();
    let counts: Vec<_> = data
        .train
        .par_iter()
        .map(|(t, _)| cfg.hashed_counts(t))
        .collect();
    let vocab = Vocab::fit(&cfg, &counts);
    let rows: Vec<SparseRow> = counts
        .par_iter()
        .map(|k| vocab.transform(&cfg, k))
        .collect();
    drop(counts);
    let ys: Vec<usize> = data.train.iter().map(|(_, y)| *y).collect();
    let targets = data.train_targets();
    let r = vocab.len();
    let mut model = LinearModel {
        cfg: cfg.clone(),
        vocab,
        weight: vec![0.0; r * c],
        bias: vec![0.0; c],
        n_classes: c,
    };
    let dev_rows: Vec<SparseRow> = data
        .dev
        .par_iter()
        .map(|(t, _)| model.featurize(t))
        .collect();
    let dev_targets = data.dev_targets();

    // Class weights n / (C · n_c): each class contributes equally to the loss.
    let class_w: Vec<f32> = if h.class_balanced {
        let mut n_c = vec![0usize; c];
        for &y in &ys {
            n_c[y] += 1;
        }
        n_c.iter()
            .map(|&k| {
                if k == 0 {
                    0.0
                } else {
                    ys.len() as f32 / (c as f32 * k as f32)
                }
            })
            .collect()
    } else {
        vec![1.0; c]
    };

    let bar = if progress {
        let b = indicatif::ProgressBar::new(h.max_epochs as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} linear [{bar:30}] epoch {pos}/{len} {per_sec} ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };

    let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
    let lr = h.lr as f32;
    let wd = h.weight_decay as f32;
    let mut m = vec![0.0f32; r * c];
    let mut v = vec![0.0f32; r * c];
    let (mut mb, mut vb) = (vec![0.0f32; c], vec![0.0f32; c]);
    // Scratch for the sparse gradient: slot_of[row] is the row's place in `touched`.
    let mut slot_of = vec![u32::MAX; r];
    let mut touched: Vec<u32> = Vec::new();
    let mut grad: Vec<f32> = Vec::new();
    let mut gb = vec![0.0f32; c];

    let mut order: Vec<usize> = (0..rows.len()).collect();
    let mut rng = SplitMix64::new(seed);
    let mut step = 0usize;
    let mut best = (f64::NEG_INFINITY, 0usize);
    let mut best_w: Option<(Vec<f32>, Vec<f32>)> = None;
    let mut since_best = 0usize;
    let mut epochs_run = 0usize;

    for epoch in 1..=h.max_epochs {
        rng.shuffle(&mut order);
        let mut loss_sum = 0.0f64;
        for batch in order.chunks(h.batch_size) {
            step += 1;
            let scale = 1.0 / batch.len() as f32;
            // Forward: per-example dL/dlogits / |batch| (the objective's gradient).
            let d: Vec<(f32, Vec<f32>)> = batch
                .par_iter()
                .with_min_len(8)
                .map(|&i| {
                    let mut z = model.bias.clone();
                    logits_into(&model.weight, c, &rows[i], &mut z);
                    let loss = targets.loss_and_grad(i, &mut z, &class_w, scale);
                    (loss, z)
                })
                .collect();

            // Backward: accumulate the sparse gradient in example order (deterministic).
            touched.clear();
            grad.clear();
            gb.iter_mut().for_each(|g| *g = 0.0);
            for (&i, (loss, di)) in batch.iter().zip(&d) {
                loss_sum += *loss as f64;
                for (g, x) in gb.iter_mut().zip(di) {
                    *g += x;
                }
                let row = &rows[i];
                for (&f, &val) in row.idx.iter().zip(&row.val) {
                    let mut s = slot_of[f as usize];
                    if s == u32::MAX {
                        s = touched.len() as u32;
                        slot_of[f as usize] = s;
                        touched.push(f);
                        grad.extend(std::iter::repeat_n(0.0, c));
                    }
                    let g = &mut grad[s as usize * c..(s as usize + 1) * c];
                    for (gi, x) in g.iter_mut().zip(di) {
                        *gi += val * x;
                    }
                }
            }
            let batch_loss: f32 = d.iter().map(|(l, _)| *l).sum::<f32>() * scale;
            if !batch_loss.is_finite() {
                bar.finish_and_clear();
                return Err(TrainError::NonFinite {
                    step,
                    lr: h.lr,
                    loss: batch_loss,
                });
            }

            // Lazy AdamW step on the touched rows only.
            let t = step as i32;
            let bc1 = 1.0 - b1.powi(t);
            let bc2 = 1.0 - b2.powi(t);
            let step_size = lr / bc1;
            let upd = |w: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], decay: bool| {
                for j in 0..g.len() {
                    m[j] = b1 * m[j] + (1.0 - b1) * g[j];
                    v[j] = b2 * v[j] + (1.0 - b2) * g[j] * g[j];
                    if decay {
                        w[j] -= lr * wd * w[j];
                    }
                    w[j] -= step_size * m[j] / ((v[j] / bc2).sqrt() + eps);
                }
            };
            for (s, &f) in touched.iter().enumerate() {
                let f = f as usize;
                let span = f * c..(f + 1) * c;
                upd(
                    &mut model.weight[span.clone()],
                    &mut m[span.clone()],
                    &mut v[span],
                    &grad[s * c..(s + 1) * c],
                    true,
                );
                slot_of[f] = u32::MAX;
            }
            upd(&mut model.bias, &mut mb, &mut vb, &gb, false);
        }
        epochs_run = epoch;
        let train_loss = loss_sum / rows.len().max(1) as f64;
        bar.inc(1);
        if dev_rows.is_empty() {
            bar.set_message(format!("loss {train_loss:.4}"));
            continue;
        }
        let acc = dev_score(&model, &dev_rows, &dev_targets);
        bar.set_message(format!(
            "loss {train_loss:.4} dev acc {acc:.4} (best {:.4})",
            best.0.max(acc)
        ));
        tracing::info!(epoch, train_loss, dev_accuracy = acc, "linear epoch");
        if acc > best.0 {
            best = (acc, epoch);
            best_w = Some((model.weight.clone(), model.bias.clone()));
            since_best = 0;
        } else {
            since_best += 1;
            if since_best >= h.patience {
                break;
            }
        }
    }
    bar.finish_and_clear();
    if let Some((w, b)) = best_w {
        model.weight = w;
        model.bias = b;
    } else {
        best = (0.0, epochs_run);
    }
    Ok((
        model,
        FitStats {
            epochs_run,
            best_epoch: best.1,
            best_dev_accuracy: best.0,
            wall_s: start.elapsed().as_secs_f64(),
        },
    ))
}
