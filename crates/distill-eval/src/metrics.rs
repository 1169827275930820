//! Quality metrics over predictions: pure functions of (reference, predicted, confidence),
//! so every number in a report can be recomputed (scikit-learn does, in CI) and unit-tested
//! without a model.
//!
//! Conventions match scikit-learn's defaults so `scripts/verify/metrics_vs_sklearn.py` can
//! compare to 1e-9: F1 per class is `2·tp / (2·tp + fp + fn)` (0 when undefined); macro F1
//! averages over the labels that occur in the reference or the predictions; weighted F1
//! weights each class by its support in the reference.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// z for a two-sided 95% interval.
pub const Z95: f64 = 1.959_963_984_540_054;
/// Bootstrap resamples for F1 and ECE intervals: enough for stable 95% percentiles, cheap
/// enough (77 classes × 3,080 items) to stay far inside the eval time budget.
pub const BOOTSTRAP_RESAMPLES: usize = 200;
/// Equal-width confidence bins for ECE and the reliability diagram.
pub const CALIBRATION_BINS: usize = 15;

/// A number with its 95% confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub value: f64,
    pub lo: f64,
    pub hi: f64,
}

/// Wilson score interval for `k` successes out of `n` (Wilson 1927): unlike the normal
/// approximation it stays inside [0, 1] and behaves near 0 and 1, where good models live.
pub fn wilson(k: usize, n: usize) -> Estimate {
    if n == 0 {
        return Estimate {
            value: f64::NAN,
            lo: 0.0,
            hi: 1.0,
        };
    }
    let n_f = n as f64;
    let p = k as f64 / n_f;
    let z2 = Z95 * Z95;
    let denom = 1.0 + z2 / n_f;
    let centre = p + z2 / (2.0 * n_f);
    let half = Z95 * (p * (1.0 - p) / n_f + z2 / (4.0 * n_f * n_f)).sqrt();
    // At 0 and n the exact bounds are 0 and 1; rounding would otherwise leave 1 − ε.
    Estimate {
        value: p,
        lo: if k == 0 {
            0.0
        } else {
            ((centre - half) / denom).max(0.0)
        },
        hi: if k >= n {
            1.0
        } else {
            ((centre + half) / denom).min(1.0)
        },
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Confusion {
    /// Row = reference label, column = predicted label, both in this order.
    pub labels: Vec<String>,
    pub matrix: Vec<Vec<u32>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopConfusion {
    pub reference: String,
    pub predicted: String,
    pub count: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityBin {
    pub lo: f64,
    pub hi: f64,
    pub count: usize,
    pub mean_confidence: f64,
    pub accuracy: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Expected calibration error: Σ_b (n_b / n)·|accuracy_b − confidence_b|.
    pub ece: Estimate,
    pub bins: Vec<ReliabilityBin>,
}

/// One point of the coverage–accuracy (risk) curve: answer only the `coverage` most
/// confident fraction, and this is how often those answers are right.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CoveragePoint {
    pub coverage: f64,
    pub accuracy: f64,
    /// The lowest confidence among the answered items.
    pub min_confidence: f64,
}

/// Every quality figure of one option against one reference (gold or the teacher's labels).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quality {
    /// `gold` or `teacher`.
    pub reference: String,
    /// Items scored (those with both a reference label and a prediction).
    pub n: usize,
    pub correct: usize,
    pub accuracy: Estimate,
    pub macro_f1: Estimate,
    pub weighted_f1: Estimate,
    pub per_class: Vec<ClassMetrics>,
    pub confusion: Confusion,
    pub top_confusions: Vec<TopConfusion>,
    /// Absent for options without confidences (the teacher, API students).
    pub calibration: Option<Calibration>,
    pub coverage_curve: Option<Vec<CoveragePoint>>,
    /// Label-set answers only: micro F1, Hamming loss ([`crate::set_metrics`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sets: Option<crate::set_metrics::SetScores>,
}

/// Per-class counts from which every F1 flavour is derived.
struct Counts {
    tp: Vec<u64>,
    fp: Vec<u64>,
    fn_: Vec<u64>,
    support: Vec<u64>,
}

fn counts(reference: &[usize], predicted: &[usize], n_labels: usize) -> Counts {
    let mut c = Counts {
        tp: vec![0; n_labels],
        fp: vec![0; n_labels],
        fn_: vec![0; n_labels],
        support: vec![0; n_labels],
    };
    for (&r, &p) in reference.iter().zip(predicted) {
        c.support[r] += 1;
        if r == p {
            c.tp[r] += 1;
        } else {
            c.fp[p] += 1;
            c.fn_[r] += 1;
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

/// (macro F1, weighted F1) as scikit-learn computes them with default arguments.
fn f1s(c: &Counts) -> (f64, f64) {
    let mut macro_sum = 0.0;
    let mut present = 0usize;
    let mut weighted = 0.0;
    let mut total = 0u64;
    for i in 0..c.tp.len() {
        // Present = occurs in the reference or the predictions (sklearn's unique_labels).
        if c.support[i] == 0 && c.tp[i] + c.fp[i] == 0 {
            continue;
        }
        let f = f1_of(c.tp[i], c.fp[i], c.fn_[i]);
        macro_sum += f;
        present += 1;
        weighted += f * c.support[i] as f64;
        total += c.support[i];
    }
    let macro_f1 = if present == 0 {
        0.0
    } else {
        macro_sum / present as f64
    };
    let weighted_f1 = if total == 0 {
        0.0
    } else {
        weighted / total as f64
    };
    (macro_f1, weighted_f1)
}

/// Macro and weighted F1 of label indices.
pub fn f1_scores(reference: &[usize], predicted: &[usize], n_labels: usize) -> (f64, f64) {
    f1s(&counts(reference, predicted, n_labels))
}

pub fn confusion_matrix(
    reference: &[usize],
    predicted: &[usize],
    n_labels: usize,
) -> Vec<Vec<u32>> {
    let mut m = vec![vec![0u32; n_labels]; n_labels];
    for (&r, &p) in reference.iter().zip(predicted) {
        m[r][p] += 1;
    }
    m
}

/// The largest off-diagonal cells, largest first (ties by label order, for stable reports).
pub fn top_confusions(matrix: &[Vec<u32>], labels: &[String], k: usize) -> Vec<TopConfusion> {
    let mut cells: Vec<(usize, usize, u32)> = Vec::new();
    for (r, row) in matrix.iter().enumerate() {
        for (p, &n) in row.iter().enumerate() {
            if r != p && n > 0 {
                cells.push((r, p, n));
            }
        }
    }
    cells.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)).then(a.1.cmp(&b.1)));
    cells
        .into_iter()
        .take(k)
        .map(|(r, p, n)| TopConfusion {
            reference: labels[r].clone(),
            predicted: labels[p].clone(),
            count: n,
        })
        .collect()
}

/// ECE and its reliability bins. A confidence of exactly 0 falls in the first bin; bins are
/// otherwise (lo, hi].
pub fn calibration_bins(correct: &[bool], confidence: &[f64]) -> (f64, Vec<ReliabilityBin>) {
    let b = CALIBRATION_BINS;
    let mut count = vec![0usize; b];
    let mut conf_sum = vec![0f64; b];
    let mut right = vec![0usize; b];
    for (&ok, &c) in correct.iter().zip(confidence) {
        let i = bin_of(c, b);
        count[i] += 1;
        conf_sum[i] += c;
        right[i] += ok as usize;
    }
    let n: usize = count.iter().sum();
    let mut ece = 0.0;
    let bins = (0..b)
        .map(|i| {
            let (mean_confidence, accuracy) = if count[i] == 0 {
                (0.0, 0.0)
            } else {
                (
                    conf_sum[i] / count[i] as f64,
                    right[i] as f64 / count[i] as f64,
                )
            };
            if n > 0 {
                ece += count[i] as f64 / n as f64 * (accuracy - mean_confidence).abs();
            }
            ReliabilityBin {
                lo: i as f64 / b as f64,
                hi: (i + 1) as f64 / b as f64,
                count: count[i],
                mean_confidence,
                accuracy,
            }
        })
        .collect();
    (ece, bins)
}

fn bin_of(c: f64, b: usize) -> usize {
    let c = c.clamp(0.0, 1.0);
    ((c * b as f64).ceil() as usize)
        .saturating_sub(1)
        .min(b - 1)
}

/// Coverage–accuracy curve at 5% steps of coverage, most confident items first.
pub fn coverage_curve(correct: &[bool], confidence: &[f64]) -> Vec<CoveragePoint> {
    let n = correct.len();
    if n == 0 {
        return vec![];
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| confidence[b].total_cmp(&confidence[a]).then(a.cmp(&b)));
    let mut prefix = Vec::with_capacity(n + 1);
    prefix.push(0usize);
    for &i in &order {
        prefix.push(prefix.last().copied().unwrap_or(0) + correct[i] as usize);
    }
    (1..=20)
        .map(|step| {
            let coverage = step as f64 / 20.0;
            let k = ((coverage * n as f64).ceil() as usize).clamp(1, n);
            CoveragePoint {
                coverage,
                accuracy: prefix[k] as f64 / k as f64,
                min_confidence: confidence[order[k - 1]],
            }
        })
        .collect()
}

/// All quality figures of `predicted` against `reference` (label indices into `labels`).
/// `confidence`, when given, is parallel to the predictions. `seed` drives the bootstrap.
pub fn quality(
    reference_name: &str,
    labels: &[String],
    reference: &[usize],
    predicted: &[usize],
    confidence: Option<&[f64]>,
    seed: u64,
) -> Quality {
    let n_labels = labels.len();
    let n = reference.len();
    let c = counts(reference, predicted, n_labels);
    let correct_n: usize = c.tp.iter().map(|&x| x as usize).sum();
    let (macro_f1, weighted_f1) = f1s(&c);
    let correct: Vec<bool> = reference
        .iter()
        .zip(predicted)
        .map(|(r, p)| r == p)
        .collect();

    let mut rng = StdRng::seed_from_u64(seed);
    let mut boot_macro = Vec::with_capacity(BOOTSTRAP_RESAMPLES);
    let mut boot_weighted = Vec::with_capacity(BOOTSTRAP_RESAMPLES);
    let mut boot_ece = Vec::with_capacity(BOOTSTRAP_RESAMPLES);
    if n > 0 {
        let mut r_s = vec![0usize; n];
        let mut p_s = vec![0usize; n];
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
            let (m, w) = f1_scores(&r_s, &p_s, n_labels);
            boot_macro.push(m);
            boot_weighted.push(w);
            if confidence.is_some() {
                boot_ece.push(calibration_bins(&ok_s, &c_s).0);
            }
        }
    }

    let matrix = confusion_matrix(reference, predicted, n_labels);
    let calibration = confidence.map(|conf| {
        let (ece, bins) = calibration_bins(&correct, conf);
        Calibration {
            ece: percentile_interval(ece, &mut boot_ece),
            bins,
        }
    });
    Quality {
        reference: reference_name.to_string(),
        n,
        correct: correct_n,
        accuracy: wilson(correct_n, n),
        macro_f1: percentile_interval(macro_f1, &mut boot_macro),
        weighted_f1: percentile_interval(weighted_f1, &mut boot_weighted),
        per_class: (0..n_labels)
            .map(|i| {
                let pd = c.tp[i] + c.fp[i];
                let rd = c.tp[i] + c.fn_[i];
                ClassMetrics {
                    label: labels[i].clone(),
                    precision: if pd == 0 {
                        0.0
                    } else {
                        c.tp[i] as f64 / pd as f64
                    },
                    recall: if rd == 0 {
                        0.0
                    } else {
                        c.tp[i] as f64 / rd as f64
                    },
                    f1: f1_of(c.tp[i], c.fp[i], c.fn_[i]),
                    support: c.support[i] as usize,
                }
            })
            .collect(),
        top_confusions: top_confusions(&matrix, labels, 10),
        confusion: Confusion {
            labels: labels.to_vec(),
            matrix,
        },
        calibration,
        coverage_curve: confidence.map(|conf| coverage_curve(&correct, conf)),
        sets: None,
    }
}

/// The 2.5th and 97.5th percentiles of bootstrap replicates around a point estimate.
pub(crate) fn percentile_interval(value: f64, reps: &mut [f64]) -> Estimate {
    if reps.is_empty() {
        return Estimate {
            value,
            lo: value,
            hi: value,
        };
    }
    reps.sort_by(f64::total_cmp);
    let at = |q: f64| reps[((q * (reps.len() - 1) as f64).round() as usize).min(reps.len() - 1)];
    Estimate {
        value,
        lo: at(0.025).min(value),
        hi: at(0.975).max(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("l{i}")).collect()
    }

    #[test]
    fn wilson_matches_known_values() {
        // 81 of 263 (the textbook example): 0.2553 – 0.3662.
        let e = wilson(81, 263);
        assert!(
            (e.lo - 0.2553).abs() < 1e-4 && (e.hi - 0.3662).abs() < 1e-4,
            "{e:?}"
        );
        let all = wilson(10, 10);
        assert_eq!(all.hi, 1.0);
        assert!(all.lo > 0.69 && all.lo < 0.73, "{all:?}");
        assert!(wilson(0, 0).value.is_nan());
    }

    #[test]
    fn f1_matches_hand_computed_sklearn_values() {
        // sklearn: f1_score([0,0,1,1,2], [0,1,1,1,0], average=...) macro 0.4888.., weighted 0.5733..
        let r = [0, 0, 1, 1, 2];
        let p = [0, 1, 1, 1, 0];
        let (m, w) = f1_scores(&r, &p, 4);
        // class 0: tp1 fp1 fn1 → 0.5; class 1: tp2 fp1 fn0 → 0.8; class 2: 0. Label 3 absent.
        assert!((m - (0.5 + 0.8 + 0.0) / 3.0).abs() < 1e-12, "{m}");
        assert!((w - (0.5 * 2.0 + 0.8 * 2.0) / 5.0).abs() < 1e-12, "{w}");
    }

    #[test]
    fn quality_counts_confusions_and_intervals() {
        let r = vec![0, 0, 1, 1, 2, 2, 2, 2];
        let p = vec![0, 1, 1, 1, 2, 0, 0, 2];
        let conf = vec![0.9, 0.4, 0.8, 0.7, 0.95, 0.3, 0.35, 0.99];
        let q = quality("gold", &labels(3), &r, &p, Some(&conf), 7);
        assert_eq!(q.correct, 5);
        assert_eq!(q.confusion.matrix[2][0], 2);
        assert_eq!(q.top_confusions[0].reference, "l2");
        assert_eq!(q.top_confusions[0].predicted, "l0");
        assert_eq!(q.top_confusions[0].count, 2);
        assert!(q.macro_f1.lo <= q.macro_f1.value && q.macro_f1.value <= q.macro_f1.hi);
        let cal = q.calibration.unwrap();
        assert_eq!(cal.bins.iter().map(|b| b.count).sum::<usize>(), 8);
        // Same seed, same intervals.
        let again = quality("gold", &labels(3), &r, &p, Some(&conf), 7);
        assert_eq!(again.macro_f1, q.macro_f1);
        let curve = q.coverage_curve.unwrap();
        assert_eq!(curve.last().unwrap().accuracy, 5.0 / 8.0);
        // The most confident 25% (2 items: 0.99, 0.95) are both right.
        assert_eq!(curve[4].accuracy, 1.0);
    }

    #[test]
    fn perfectly_calibrated_bins_have_zero_ece() {
        // Confidence 0.5, right half the time; confidence 1.0, always right.
        let correct = [true, false, true, false, true, true];
        let conf = [0.5, 0.5, 0.5, 0.5, 1.0, 1.0];
        let (ece, bins) = calibration_bins(&correct, &conf);
        assert!(ece.abs() < 1e-12, "{ece}");
        assert_eq!(bins[7].count, 4); // (7/15, 8/15] holds 0.5
        assert_eq!(bins[14].count, 2);
        let (bad, _) = calibration_bins(&[false, false], &[1.0, 1.0]);
        assert!((bad - 1.0).abs() < 1e-12);
    }
}
