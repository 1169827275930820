//! One optimisation step of fine-tuning, shared by every fine-tuned student (classifier and
//! tagger): the loss, its gradient, clipping by global norm and the AdamW update (no decay on
//! biases and LayerNorm; the fresh head at its own rate).

use super::{AdamW, Hyper, SparseRows};
use crate::encoder::bert::{Batch, BertClassifier, Dropout};
use crate::error::{Result, TrainError};
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, Device, Storage, Tensor, Var};
use rayon::prelude::*;
use std::time::Instant;

/// Mean cross-entropy, optionally weighted per class (`weights`: (C,) f32).
pub fn classification_loss(
    logits: &Tensor,
    labels: &Tensor,
    weights: Option<&Tensor>,
) -> Result<Tensor> {
    match weights {
        None => Ok(candle_nn::loss::cross_entropy(logits, labels)?),
        Some(w) => {
            let logp = candle_nn::ops::log_softmax(logits, 1)?;
            let picked = logp.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?;
            let w = w.index_select(labels, 0)?;
            let total = (picked * &w)?.sum_all()?;
            Ok((total.neg()? / w.sum_all()?)?)
        }
    }
}

/// Mean cross-entropy over the positions that count: `logits` (b, s, tags), `tags` (b·s) u32,
/// `weight` (b·s) f32 (1 where a position's tag counts).
pub fn token_loss(logits: &Tensor, tags: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let (b, s, t) = logits.dims3()?;
    let logp = candle_nn::ops::log_softmax(&logits.reshape((b * s, t))?, 1)?;
    let picked = logp.gather(&tags.unsqueeze(1)?, 1)?.squeeze(1)?;
    let total = (picked * weight)?.sum_all()?;
    Ok((total.neg()? / weight.sum_all()?.maximum(1.0)?)?)
}

/// Global L2 norm of the gradients of `vars`.
pub fn grad_norm(grads: &GradStore, vars: &[(String, Var)]) -> Result<f32> {
    let mut total = 0f64;
    let mut on_device = Vec::new();
    for (_, v) in vars {
        let Some(g) = grads.get(v) else { continue };
        match cpu_sum_squares(g) {
            Some(s) => total += s,
            None => on_device.push(g.sqr()?.sum_all()?),
        }
    }
    if !on_device.is_empty() {
        total += Tensor::stack(&on_device, 0)?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
    }
    Ok(total.sqrt() as f32)
}

/// Sum of squares of a contiguous f32 CPU tensor, in parallel; `None` elsewhere.
fn cpu_sum_squares(t: &Tensor) -> Option<f64> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
        return None;
    };
    let (a, b) = layout.contiguous_offsets()?;
    Some(
        data[a..b]
            .par_chunks(1 << 14)
            .map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
            .sum(),
    )
}

/// Scales gradients so their global L2 norm is at most `max_norm`; returns the norm before.
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[(String, Var)], max_norm: f64) -> Result<f32> {
    let norm = grad_norm(grads, vars)?;
    let factor = clip_factor(norm, max_norm);
    if factor != 1.0 {
        for (_, v) in vars {
            if let Some(g) = grads.get(v) {
                let scaled = (g * factor)?;
                grads.insert(v, scaled);
            }
        }
    }
    Ok(norm)
}

/// The factor `clip_grad_norm_` multiplies gradients by (1 when the norm is within bounds).
fn clip_factor(norm: f32, max_norm: f64) -> f64 {
    if norm.is_finite() && norm as f64 > max_norm {
        max_norm / (norm as f64 + 1e-6)
    } else {
        1.0
    }
}

/// Statistics of one optimisation step.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepStats {
    pub loss: f32,
    pub grad_norm: f32,
    pub lr: f64,
    /// Seconds in the forward pass, the backward pass and the optimiser.
    pub forward_s: f64,
    pub backward_s: f64,
    pub update_s: f64,
}

/// Whether a parameter is excluded from weight decay (biases and LayerNorm, as in BERT).
fn is_no_decay(name: &str) -> bool {
    name.ends_with(".bias") || name.contains("LayerNorm")
}

/// Whether a parameter belongs to the freshly initialised head (pooler and classifier).
fn is_head(name: &str) -> bool {
    name.starts_with("classifier.") || name.starts_with("bert.pooler.")
}

/// The training step of [`fit`]: forward with dropout, loss, backward, clipping, AdamW with the
/// warm-up/decay schedule. Public so benchmarks time exactly what training runs.
pub struct Trainer<'m> {
    model: &'m BertClassifier,
    opt: AdamW,
    dropout: Dropout,
    class_weights: Option<Tensor>,
    hp: Hyper,
    total_steps: usize,
    step: usize,
    /// The word-embedding gradient as sparse rows (CPU f32; see [`SparseRows`]).
    sparse_word_grad: bool,
}

impl<'m> Trainer<'m> {
    /// Turns the sparse word-embedding gradient off (on by default on the CPU): tests compare
    /// both paths.
    pub fn with_sparse_word_grad(mut self, on: bool) -> Self {
        self.sparse_word_grad = on && self.sparse_word_grad_possible();
        self
    }

    fn sparse_word_grad_possible(&self) -> bool {
        self.model
            .word_embeddings_var()
            .is_some_and(|v| v.device().is_cpu() && v.dtype() == DType::F32)
    }

    pub fn new(
        model: &'m BertClassifier,
        hp: &Hyper,
        total_steps: usize,
        class_weights: Option<Tensor>,
        device: &Device,
    ) -> Result<Self> {
        let vars = model.vars();
        if vars.is_empty() {
            return Err(TrainError::Other(
                "model was not loaded as trainable".into(),
            ));
        }
        if device.is_cpu() {
            crate::alloc::keep_freed_memory();
        }
        let groups = vars
            .iter()
            .map(|(n, v)| {
                let wd = if is_no_decay(n) { 0.0 } else { hp.weight_decay };
                let mult = if is_head(n) { hp.head_lr_mult } else { 1.0 };
                (v.clone(), wd, mult)
            })
            .collect();
        let mut trainer = Trainer {
            model,
            opt: AdamW::new(groups)?,
            dropout: Dropout::new(hp.seed, device)?,
            class_weights,
            hp: hp.clone(),
            total_steps: total_steps.max(1),
            step: 0,
            sparse_word_grad: false,
        };
        trainer.sparse_word_grad = trainer.sparse_word_grad_possible();
        Ok(trainer)
    }

    /// Steps taken so far.
    pub fn steps(&self) -> usize {
        self.step
    }

    pub fn step(&mut self, batch: &Batch, labels: &Tensor) -> Result<StepStats> {
        let class_weights = self.class_weights.clone();
        self.step_with(batch, |logits| {
            // Multi-hot targets (`[n, labels]`, a multilabel task) take the per-label sigmoid
            // loss.
            if labels.rank() == 2 {
                Ok(crate::objective::loss_tensor(logits, labels, true)?)
            } else {
                classification_loss(logits, labels, class_weights.as_ref())
            }
        })
    }

    /// A step of a token-head model: `tags` (b·s, u32) the tag of each position, `weight`
    /// (b·s, f32) 1 where a tag counts and 0 elsewhere (padding, `[CLS]`, `[SEP]`, context).
    pub fn step_tags(
        &mut self,
        batch: &Batch,
        tags: &Tensor,
        weight: &Tensor,
    ) -> Result<StepStats> {
        self.step_with(batch, |logits| token_loss(logits, tags, weight))
    }

    fn step_with(
        &mut self,
        batch: &Batch,
        loss_of: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<StepStats> {
        let step = self.step;
        let lr = self.hp.lr_at(step, self.total_steps);
        let t0 = Instant::now();
        let (logits, word_rows) = if self.sparse_word_grad {
            let (logits, rows) = self
                .model
                .forward_with_word_rows(batch, Some(&mut self.dropout))?;
            (logits, Some(rows))
        } else {
            (self.model.forward(batch, Some(&mut self.dropout))?, None)
        };
        let loss = loss_of(&logits)?;
        let loss_value = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        if !loss_value.is_finite() {
            return Err(TrainError::NonFinite {
                step,
                lr,
                loss: loss_value,
            });
        }
        let t1 = Instant::now();
        let grads = loss.backward()?;
        let t2 = Instant::now();
        let vars = self.model.vars();
        let sparse = match (&word_rows, self.model.word_embeddings_var()) {
            (Some(r), Some(var)) => match grads.get(r.leaf.as_tensor()) {
                Some(g) => Some((var, SparseRows::accumulate(&r.ids, g)?)),
                None => None,
            },
            _ => None,
        };
        let dense = grad_norm(&grads, vars)?;
        let norm = match &sparse {
            Some((_, rows)) => ((dense as f64).powi(2) + rows.sum_squares()).sqrt() as f32,
            None => dense,
        };
        if !norm.is_finite() {
            return Err(TrainError::NonFinite {
                step,
                lr,
                loss: norm,
            });
        }
        self.opt.step(
            &grads,
            lr,
            clip_factor(norm, self.hp.clip_norm),
            sparse.as_ref().map(|(v, r)| (*v, r)),
        )?;
        drop(grads);
        self.step += 1;
        Ok(StepStats {
            loss: loss_value,
            grad_norm: norm,
            lr,
            forward_s: (t1 - t0).as_secs_f64(),
            backward_s: (t2 - t1).as_secs_f64(),
            update_s: t2.elapsed().as_secs_f64(),
        })
    }
}
