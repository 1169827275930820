//! What a student's logits mean, shared by every student kind: one label per input (softmax
//! over the labels, cross-entropy) or a set of labels (an independent sigmoid per label,
//! binary cross-entropy). The loss gradient, the dev score early stopping watches, the
//! calibration fitted on dev and the decoding of logits into an answer live here, once, so a
//! student kind only produces logits and steps its optimiser.

use crate::student::{fit_temperature, softmax};
use serde::{Deserialize, Serialize};

/// The training targets of a split, in example order.
#[derive(Debug, Clone)]
pub enum Targets {
    /// One label index per example.
    Single(Vec<usize>),
    /// A sorted set of label indices per example (possibly empty).
    Sets(Vec<Vec<usize>>),
}

impl Targets {
    pub fn len(&self) -> usize {
        match self {
            Targets::Single(y) => y.len(),
            Targets::Sets(y) => y.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Turns example `i`'s logits `z` into `weight · dL/dz` in place and returns `weight · L`
    /// (mean over nothing: the caller scales). Softmax: cross-entropy, weighted by the true
    /// class's `class_w`. Sets: the sum of each label's binary cross-entropy.
    pub fn loss_and_grad(&self, i: usize, z: &mut [f32], class_w: &[f32], weight: f32) -> f32 {
        match self {
            Targets::Single(ys) => {
                let y = ys[i];
                let mx = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let mut s = 0.0f32;
                for x in z.iter_mut() {
                    *x = (*x - mx).exp();
                    s += *x;
                }
                // An overflowing weight shows up as a non-finite logit, not a loss (the clamp
                // would hide it).
                let loss = if s.is_finite() && mx.is_finite() {
                    -(z[y] / s).max(1e-30).ln() * class_w[y]
                } else {
                    f32::NAN
                };
                let k = class_w[y] * weight;
                for x in z.iter_mut() {
                    *x = *x / s * k;
                }
                z[y] -= k;
                loss
            }
            Targets::Sets(sets) => {
                let set = &sets[i];
                let mut loss = 0.0f32;
                for (j, x) in z.iter_mut().enumerate() {
                    let y = if set.binary_search(&j).is_ok() {
                        1.0
                    } else {
                        0.0
                    };
                    // log(1 + e^-|x|) form: stable for large |x|.
                    let v = *x;
                    loss += v.max(0.0) - v * y + (-v.abs()).exp().ln_1p();
                    *x = (sigmoid(v) - y) * weight;
                }
                if !loss.is_finite() {
                    return f32::NAN;
                }
                loss
            }
        }
    }

    /// The dev score early stopping maximises: accuracy, or exact-set accuracy with every
    /// label decided at probability 0.5 (thresholds are tuned only after training).
    pub fn score(&self, logits: &[Vec<f32>]) -> f64 {
        if logits.is_empty() {
            return 0.0;
        }
        let right = logits
            .iter()
            .enumerate()
            .filter(|(i, z)| match self {
                Targets::Single(ys) => argmax(z) == ys[*i],
                Targets::Sets(sets) => decide(z, None).as_slice() == sets[*i].as_slice(),
            })
            .count();
        right as f64 / logits.len() as f64
    }
}

/// The batch's loss as a differentiable tensor (students trained through candle's autograd):
/// cross-entropy against `y` (u32 label indices, `[n]`), or for sets the per-label binary
/// cross-entropy against `y` (multi-hot f32, `[n, labels]`) summed over labels, in the stable
/// `max(x, 0) - x·y + ln(1 + e^-|x|)` form (candle's own takes the log of a saturated
/// sigmoid), averaged over the batch.
pub fn loss_tensor(
    logits: &candle_core::Tensor,
    y: &candle_core::Tensor,
    sets: bool,
) -> candle_core::Result<candle_core::Tensor> {
    if !sets {
        return candle_nn::loss::cross_entropy(logits, y);
    }
    let n = logits.dim(0)?.max(1) as f64;
    let soft = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?;
    let per = ((logits.relu()? - logits.mul(y)?)? + soft)?;
    per.sum_all()? / n
}

impl Targets {
    /// The targets as a tensor for [`loss_tensor`]: u32 indices, or multi-hot f32 rows.
    pub fn tensor(
        &self,
        n_labels: usize,
        device: &candle_core::Device,
    ) -> candle_core::Result<candle_core::Tensor> {
        match self {
            Targets::Single(ys) => candle_core::Tensor::from_vec(
                ys.iter().map(|&y| y as u32).collect::<Vec<_>>(),
                ys.len(),
                device,
            ),
            Targets::Sets(sets) => {
                let mut hot = vec![0f32; sets.len() * n_labels];
                for (i, set) in sets.iter().enumerate() {
                    for &j in set {
                        hot[i * n_labels + j] = 1.0;
                    }
                }
                candle_core::Tensor::from_vec(hot, (sets.len(), n_labels), device)
            }
        }
    }
    pub fn is_sets(&self) -> bool {
        matches!(self, Targets::Sets(_))
    }
}

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// The labels whose logit clears its threshold (probability 0.5 when `thresholds` is `None`,
/// i.e. logit 0; calibration does not move that point).
fn decide(z: &[f32], thresholds: Option<&[f32]>) -> Vec<usize> {
    (0..z.len())
        .filter(|&j| match thresholds {
            Some(t) => sigmoid(z[j]) >= t[j],
            None => z[j] >= 0.0,
        })
        .collect()
}

/// A multilabel student's calibration and decision rule, fitted on the dev split and kept in
/// `distill.json`: label `j`'s probability is `sigmoid(logit_j / temperatures[j])`, and the
/// label is given when that is at least `thresholds[j]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SigmoidHead {
    pub temperatures: Vec<f32>,
    pub thresholds: Vec<f32>,
    /// How answers are written (the task's gold separator) and whether the empty set is one.
    pub separator: String,
    #[serde(default = "yes")]
    pub allow_empty: bool,
}

fn yes() -> bool {
    true
}

impl SigmoidHead {
    /// Fits each label's temperature (binary NLL on dev, as [`fit_temperature`] does for
    /// softmax) and then its threshold: the calibrated probability that maximises the
    /// label's dev F1 (0.5 where dev has no positive of the label, so nothing can be tuned).
    pub fn fit(
        dev_logits: &[Vec<f32>],
        dev_sets: &[Vec<usize>],
        n_labels: usize,
        labels: &distill_core::LabelSet,
    ) -> Self {
        let mut temperatures = vec![1.0f32; n_labels];
        let mut thresholds = vec![0.5f32; n_labels];
        for j in 0..n_labels {
            let (z, y): (Vec<f32>, Vec<bool>) = dev_logits
                .iter()
                .zip(dev_sets)
                .map(|(row, set)| (row[j], set.binary_search(&j).is_ok()))
                .unzip();
            let positives = y.iter().filter(|&&b| b).count();
            if positives == 0 || positives == y.len() {
                continue;
            }
            // A binary sigmoid is a two-class softmax over (0, z).
            let pairs: Vec<Vec<f32>> = z.iter().map(|&x| vec![0.0, x]).collect();
            let ys: Vec<usize> = y.iter().map(|&b| b as usize).collect();
            temperatures[j] = fit_temperature(&pairs, &ys);
            let p: Vec<f32> = z.iter().map(|&x| sigmoid(x / temperatures[j])).collect();
            thresholds[j] = best_f1_threshold(&p, &y);
        }
        SigmoidHead {
            temperatures,
            thresholds,
            separator: labels
                .set_separator
                .clone()
                .unwrap_or_else(|| distill_core::spec::DEFAULT_SET_SEPARATOR.into()),
            allow_empty: labels.allow_empty,
        }
    }

    /// Calibrated per-label probabilities.
    pub fn proba(&self, z: &[f32]) -> Vec<f32> {
        z.iter()
            .zip(&self.temperatures)
            .map(|(&x, &t)| sigmoid(x / t.max(1e-3)))
            .collect()
    }

    /// The answer from calibrated probabilities: the labels at or above their threshold (the
    /// most likely one when none is and the task forbids the empty set), and the confidence
    /// of the whole set: the probability of the least sure per-label decision (`p` for a
    /// label given, `1 - p` for one left out).
    pub fn decide(&self, p: &[f32]) -> (Vec<usize>, f32) {
        let mut set: Vec<usize> = (0..p.len())
            .filter(|&j| p[j] >= self.thresholds[j])
            .collect();
        if set.is_empty() && !self.allow_empty && !p.is_empty() {
            set.push(argmax(p));
        }
        let confidence = (0..p.len())
            .map(|j| {
                if set.binary_search(&j).is_ok() {
                    p[j]
                } else {
                    1.0 - p[j]
                }
            })
            .fold(1.0f32, f32::min);
        (set, confidence)
    }
}

/// The threshold on `p` that maximises F1 against `y` (ties: the one nearest 0.5).
fn best_f1_threshold(p: &[f32], y: &[bool]) -> f32 {
    let mut idx: Vec<usize> = (0..p.len()).collect();
    idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
    let positives = y.iter().filter(|&&b| b).count() as f64;
    let (mut tp, mut fp) = (0.0f64, 0.0f64);
    let mut best = (f64::NEG_INFINITY, 0.5f32);
    for (k, &i) in idx.iter().enumerate() {
        if y[i] {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        // A cut is only possible between distinct probabilities.
        if k + 1 < idx.len() && p[idx[k + 1]] == p[i] {
            continue;
        }
        let f1 = 2.0 * tp / (tp + fp + positives);
        // Halfway to the next probability down, so the tuned point is not on a dev example.
        let cut = match idx.get(k + 1) {
            Some(&n) => (p[i] + p[n]) / 2.0,
            None => p[i] / 2.0,
        };
        let nearer = (cut - 0.5).abs() < (best.1 - 0.5).abs();
        if f1 > best.0 + 1e-12 || ((f1 - best.0).abs() <= 1e-12 && nearer) {
            best = (f1, cut);
        }
    }
    best.1.clamp(0.01, 0.99)
}

/// Mean dev loss under the fitted calibration: cross-entropy, or per-label binary
/// cross-entropy summed over labels.
pub fn dev_loss(
    logits: &[Vec<f32>],
    targets: &Targets,
    temperature: f32,
    head: Option<&SigmoidHead>,
) -> Option<f64> {
    if logits.is_empty() {
        return None;
    }
    let total: f64 = match targets {
        Targets::Sets(sets) => logits
            .iter()
            .zip(sets)
            .map(|(z, set)| {
                // Uncalibrated (one sigmoid per logit) while training, before a head is fitted.
                let p: Vec<f32> = match head {
                    Some(h) => h.proba(z),
                    None => z.iter().map(|&x| sigmoid(x)).collect(),
                };
                p.iter()
                    .enumerate()
                    .map(|(j, &p)| {
                        let p = if set.binary_search(&j).is_ok() {
                            p
                        } else {
                            1.0 - p
                        };
                        -(p.max(1e-12) as f64).ln()
                    })
                    .sum::<f64>()
            })
            .sum(),
        Targets::Single(ys) => logits
            .iter()
            .zip(ys)
            .map(|(z, &y)| -(softmax(z, temperature)[y].max(1e-12) as f64).ln())
            .sum(),
    };
    Some(total / logits.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigmoid_gradient_matches_finite_differences() {
        let sets = vec![vec![0usize, 2]];
        let t = Targets::Sets(sets);
        let z0 = vec![0.3f32, -1.2, 2.0];
        let mut g = z0.clone();
        t.loss_and_grad(0, &mut g, &[], 1.0);
        for j in 0..3 {
            let (mut a, mut b) = (z0.clone(), z0.clone());
            a[j] += 1e-3;
            b[j] -= 1e-3;
            let la = t.loss_and_grad(0, &mut a, &[], 1.0);
            let lb = t.loss_and_grad(0, &mut b, &[], 1.0);
            let numeric = (la - lb) / 2e-3;
            assert!(
                (numeric - g[j]).abs() < 1e-2,
                "label {j}: {numeric} vs {}",
                g[j]
            );
        }
    }

    #[test]
    fn the_tensor_loss_is_the_hand_written_one_and_has_a_gradient() {
        let dev = candle_core::Device::Cpu;
        let sets = Targets::Sets(vec![vec![0usize, 2], vec![]]);
        let z = [0.3f32, -1.2, 30.0, -40.0, 2.0, 0.0];
        let v = candle_core::Var::from_tensor(
            &candle_core::Tensor::from_slice(&z, (2, 3), &dev).unwrap(),
        )
        .unwrap();
        let loss = loss_tensor(v.as_tensor(), &sets.tensor(3, &dev).unwrap(), true).unwrap();
        let by_hand: f32 = (0..2)
            .map(|i| sets.loss_and_grad(i, &mut z[i * 3..i * 3 + 3].to_vec(), &[], 1.0))
            .sum::<f32>()
            / 2.0;
        let got = loss.to_scalar::<f32>().unwrap();
        assert!((got - by_hand).abs() < 1e-4, "{got} vs {by_hand}");
        let grads = loss.backward().unwrap();
        let g = grads.get(v.as_tensor()).expect("a gradient");
        let g = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(g.iter().all(|x| x.is_finite()) && g.iter().any(|x| *x != 0.0));
    }

    #[test]
    fn thresholds_separate_and_confidence_is_the_least_sure_decision() {
        let p = [0.9, 0.8, 0.3, 0.2, 0.1];
        let y = [true, true, false, true, false];
        let t = best_f1_threshold(&p, &y);
        assert!(t > 0.1 && t < 0.8, "{t}");
        let head = SigmoidHead {
            temperatures: vec![1.0; 3],
            thresholds: vec![0.5, 0.5, 0.7],
            separator: "|".into(),
            allow_empty: false,
        };
        let (set, c) = head.decide(&[0.9, 0.4, 0.65]);
        assert_eq!(set, vec![0]);
        assert!((c - 0.35).abs() < 1e-6, "{c}");
        // None clears its threshold and the empty set is not an answer: the likeliest label.
        assert_eq!(head.decide(&[0.2, 0.4, 0.1]).0, vec![1]);
    }
}
