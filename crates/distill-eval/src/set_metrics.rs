//! Quality of label-set answers (a multilabel task), in the same [`Quality`] shape as one
//! label's so reports, the cascade and `metrics.json` readers need no second path.
//!
//! - `accuracy` is **exact-set** accuracy (every label right, none extra), Wilson interval;
//!   it is what the cascade's floor and the calibration figures are measured on.
//! - `per_class` is per *label*: precision, recall and F1 of deciding that label, support =
//!   references that hold it. `macro_f1` averages it over the labels that occur in the
//!   references or the predictions (as for one label); `weighted_f1` weights by support.
//! - `sets` adds micro F1 (over every label decision) and the Hamming loss (the fraction of
//!   label decisions that are wrong), each with a bootstrap interval.
//! - `confusion` has one extra row and column, `(none)`: a reference label the answer missed
//!   pairs with each label it wrongly added, or with `(none)` when it added none (and a wrong
//!   addition with nothing missed is in the `(none)` row). The diagonal counts labels found.
//!
//! `scripts/verify/metrics_vs_sklearn.py` recomputes all of these with scikit-learn's
//! `accuracy_score`, `f1_score(average=micro|macro|weighted)`, `precision_recall_fscore_support`
//! and `hamming_loss` on the indicator matrices.

use crate::metrics::{
    calibration_bins, coverage_curve, percentile_interval, top_confusions, wilson, Calibration,
    ClassMetrics, Confusion, Estimate, Quality, BOOTSTRAP_RESAMPLES,
};
use distill_core::LabelSet;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// The figures only label sets have.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetScores {
    pub micro_f1: Estimate,
    pub hamming_loss: Estimate,
    /// Mean labels per reference and per answer.
    pub mean_reference_labels: f64,
    pub mean_predicted_labels: f64,
    /// How the answer strings (in `predictions.jsonl`, the confusion's cells) join labels;
    /// the empty set is written `[]`.
    pub separator: String,
}

/// The label name of the extra confusion row and column.
pub const NO_LABEL: &str = "(none)";

#[derive(Clone)]
struct Counts {
    tp: Vec<u64>,
    fp: Vec<u64>,
    fn_: Vec<u64>,
}

fn counts(reference: &[&[usize]], predicted: &[&[usize]], n_labels: usize) -> Counts {
    let mut c = Counts {
        tp: vec![0; n_labels],
        fp: vec![0; n_labels],
        fn_: vec![0; n_labels],
    };
    for (r, p) in reference.iter().zip(predicted) {
        for &j in *p {
            if r.contains(&j) {
                c.tp[j] += 1;
            } else {
                c.fp[j] += 1;
            }
        }
        for &j in *r {
            if !p.contains(&j) {
                c.fn_[j] += 1;
            }
        }
    }
    c
}

fn f1_of(tp: u64, fp: u64, fn_: u64) -> f64 {
    let d = 2 * tp + fp + fn_;
    if d == 0 {
        0.0
    } else {
        (2 * tp) as f64 / d as f64
    }
}

/// (micro F1, macro F1, weighted F1, Hamming loss) of one sample of items.
fn scores(c: &Counts, n_items: usize) -> (f64, f64, f64, f64) {
    let (tp, fp, fn_) = (
        c.tp.iter().sum::<u64>(),
        c.fp.iter().sum::<u64>(),
        c.fn_.iter().sum::<u64>(),
    );
    let micro = f1_of(tp, fp, fn_);
    let (mut macro_sum, mut present, mut weighted, mut support) = (0.0, 0usize, 0.0, 0u64);
    for j in 0..c.tp.len() {
        let s = c.tp[j] + c.fn_[j];
        if s == 0 && c.fp[j] == 0 {
            continue;
        }
        let f = f1_of(c.tp[j], c.fp[j], c.fn_[j]);
        macro_sum += f;
        present += 1;
        weighted += f * s as f64;
        support += s;
    }
    let macro_f1 = if present == 0 {
        0.0
    } else {
        macro_sum / present as f64
    };
    let weighted_f1 = if support == 0 {
        0.0
    } else {
        weighted / support as f64
    };
    let decisions = (n_items * c.tp.len()).max(1) as f64;
    (micro, macro_f1, weighted_f1, (fp + fn_) as f64 / decisions)
}

/// Every quality figure of label-set answers against reference sets (sorted label indices).
pub fn quality(
    reference_name: &str,
    labels: &LabelSet,
    reference: &[&[usize]],
    predicted: &[&[usize]],
    confidence: Option<&[f64]>,
    seed: u64,
) -> Quality {
    let n_labels = labels.len();
    let n = reference.len();
    let c = counts(reference, predicted, n_labels);
    let (micro, macro_f1, weighted_f1, hamming) = scores(&c, n);
    let correct: Vec<bool> = reference
        .iter()
        .zip(predicted)
        .map(|(r, p)| r == p)
        .collect();
    let correct_n = correct.iter().filter(|&&b| b).count();

    let mut rng = StdRng::seed_from_u64(seed);
    let mut boot: [Vec<f64>; 5] = Default::default();
    if n > 0 {
        let mut r_s: Vec<&[usize]> = vec![&[]; n];
        let mut p_s: Vec<&[usize]> = vec![&[]; n];
        let mut ok_s = vec![false; n];
        let mut c_s = vec![0f64; n];
        for _ in 0..BOOTSTRAP_RESAMPLES {
            for j in 0..n {
                let i = rng.gen_range(0..n);
                r_s[j] = reference[i];
                p_s[j] = predicted[i];
                ok_s[j] = correct[i];
                if let Some(conf) = confidence {
                    c_s[j] = conf[i];
                }
            }
            let (mi, ma, we, ha) = scores(&counts(&r_s, &p_s, n_labels), n);
            boot[0].push(mi);
            boot[1].push(ma);
            boot[2].push(we);
            boot[3].push(ha);
            if confidence.is_some() {
                boot[4].push(calibration_bins(&ok_s, &c_s).0);
            }
        }
    }
    let [b_micro, b_macro, b_weighted, b_hamming, b_ece] = &mut boot;

    let mut names = labels.names.clone();
    names.push(NO_LABEL.to_string());
    let none = n_labels;
    let mut matrix = vec![vec![0u32; n_labels + 1]; n_labels + 1];
    for (r, p) in reference.iter().zip(predicted) {
        let missed: Vec<usize> = r.iter().copied().filter(|j| !p.contains(j)).collect();
        let added: Vec<usize> = p.iter().copied().filter(|j| !r.contains(j)).collect();
        for &j in r.iter().filter(|j| p.contains(j)) {
            matrix[j][j] += 1;
        }
        match (missed.is_empty(), added.is_empty()) {
            (true, true) => {}
            (false, true) => missed.iter().for_each(|&m| matrix[m][none] += 1),
            (true, false) => added.iter().for_each(|&a| matrix[none][a] += 1),
            (false, false) => {
                for &m in &missed {
                    for &a in &added {
                        matrix[m][a] += 1;
                    }
                }
            }
        }
    }
    let per_label = |j: usize| {
        let pd = c.tp[j] + c.fp[j];
        let rd = c.tp[j] + c.fn_[j];
        ClassMetrics {
            label: labels.names[j].clone(),
            precision: if pd == 0 {
                0.0
            } else {
                c.tp[j] as f64 / pd as f64
            },
            recall: if rd == 0 {
                0.0
            } else {
                c.tp[j] as f64 / rd as f64
            },
            f1: f1_of(c.tp[j], c.fp[j], c.fn_[j]),
            support: rd as usize,
        }
    };
    let mean_len =
        |sets: &[&[usize]]| sets.iter().map(|s| s.len()).sum::<usize>() as f64 / n.max(1) as f64;
    Quality {
        reference: reference_name.to_string(),
        n,
        correct: correct_n,
        accuracy: wilson(correct_n, n),
        macro_f1: percentile_interval(macro_f1, b_macro),
        weighted_f1: percentile_interval(weighted_f1, b_weighted),
        per_class: (0..n_labels).map(per_label).collect(),
        top_confusions: top_confusions(&matrix, &names, 10),
        confusion: Confusion {
            labels: names,
            matrix,
        },
        calibration: confidence.map(|conf| {
            let (ece, bins) = calibration_bins(&correct, conf);
            Calibration {
                ece: percentile_interval(ece, b_ece),
                bins,
            }
        }),
        coverage_curve: confidence.map(|conf| coverage_curve(&correct, conf)),
        sets: Some(SetScores {
            micro_f1: percentile_interval(micro, b_micro),
            hamming_loss: percentile_interval(hamming, b_hamming),
            mean_reference_labels: mean_len(reference),
            mean_predicted_labels: mean_len(predicted),
            separator: labels
                .set_separator
                .clone()
                .unwrap_or_else(|| distill_core::spec::DEFAULT_SET_SEPARATOR.to_string()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> LabelSet {
        let mut l = LabelSet::new(vec!["a".into(), "b".into(), "c".into()]);
        l.set_separator = Some("|".into());
        l
    }

    #[test]
    fn hand_computed_figures() {
        // Items: {a,b}->{a,b} exact; {a}->{a,c} adds c; {b,c}->{b} misses c; {c}->{a}
        // swaps c for a.
        let r: Vec<&[usize]> = vec![&[0, 1], &[0], &[1, 2], &[2]];
        let p: Vec<&[usize]> = vec![&[0, 1], &[0, 2], &[1], &[0]];
        let q = quality("gold", &labels(), &r, &p, Some(&[0.9, 0.8, 0.7, 0.6]), 1);
        assert_eq!((q.n, q.correct), (4, 1));
        let s = q.sets.as_ref().unwrap();
        // tp: a2 b2 c0; fp: a1 c1; fn: c2.
        assert!((s.micro_f1.value - 8.0 / 12.0).abs() < 1e-12);
        assert!((s.hamming_loss.value - 4.0 / 12.0).abs() < 1e-12);
        let f = [4.0 / 5.0, 1.0, 0.0];
        assert!((q.macro_f1.value - f.iter().sum::<f64>() / 3.0).abs() < 1e-12);
        assert!((q.weighted_f1.value - (f[0] * 2.0 + f[1] * 2.0) / 6.0).abs() < 1e-12);
        assert_eq!(q.per_class[2].support, 2);
        // c missed while a added: the (c, a) cell; c added alone: the (none, c) cell.
        let m = &q.confusion.matrix;
        assert_eq!((m[2][0], m[3][2], m[2][3]), (1, 1, 1));
        assert_eq!((m[0][0], m[1][1]), (2, 2));
    }
}
