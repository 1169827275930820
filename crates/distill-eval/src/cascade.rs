//! The cascade: answer with the student when its calibrated confidence is at least a threshold,
//! escalate to the teacher below it. The threshold is chosen against a quality *floor* on a
//! calibration split and then checked on the rest of the test set, so the promise in the report
//! is one the held-out data could have broken.
//!
//! Rule (shared with `distill serve`): escalate when `confidence < threshold`. A threshold
//! above 1 ([`ALWAYS_ESCALATE`]) sends everything to the teacher.
//!
//! Selection: among all thresholds, the cheapest (fewest escalations) whose *lower* 95% Wilson
//! bound of mix quality on the calibration split is at least the floor. Budget searches
//! (FrugalGPT) or strong-call shares (RouteLLM) optimise a point estimate; a lower bound keeps
//! a lucky calibration sample from promising quality the deployment will not see.

use crate::metrics::{wilson, Estimate};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

/// Threshold meaning "escalate everything" (confidences never exceed 1).
pub const ALWAYS_ESCALATE: f64 = 1.01;
/// Default floor on agreement with the teacher when there is no gold to measure accuracy.
pub const DEFAULT_AGREEMENT_FLOOR: f64 = 0.95;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FloorMetric {
    /// Accuracy against gold labels.
    Accuracy,
    /// Agreement with the teacher's labels.
    Agreement,
}

impl FloorMetric {
    pub fn as_str(&self) -> &'static str {
        match self {
            FloorMetric::Accuracy => "accuracy",
            FloorMetric::Agreement => "agreement",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Floor {
    pub metric: FloorMetric,
    pub value: f64,
    /// Where the value came from: `--floor`, `teacher accuracy on the calibration split`,
    /// or `default`.
    pub source: String,
}

/// Parses `accuracy=0.94` or `agreement=0.95`.
pub fn parse_floor(s: &str) -> Result<(FloorMetric, f64), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("--floor: expected accuracy=X or agreement=X, got `{s}`"))?;
    let metric = match k.trim() {
        "accuracy" => FloorMetric::Accuracy,
        "agreement" => FloorMetric::Agreement,
        other => {
            return Err(format!(
                "--floor: unknown metric `{other}` (expected accuracy or agreement)"
            ))
        }
    };
    let value: f64 = v
        .trim()
        .parse()
        .map_err(|_| format!("--floor: `{v}` is not a number"))?;
    if !(0.0..=1.0).contains(&value) || value == 0.0 {
        return Err(format!("--floor: {value} must be in (0, 1]"));
    }
    Ok((metric, value))
}

/// Seeded split of `0..n` into (calibration, held-out) index lists, each sorted.
pub fn split(n: usize, calibration_fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut StdRng::seed_from_u64(seed));
    let k = ((n as f64 * calibration_fraction).round() as usize).min(n);
    let mut cal = idx[..k].to_vec();
    let mut rest = idx[k..].to_vec();
    cal.sort_unstable();
    rest.sort_unstable();
    (cal, rest)
}

/// One scored item: the student's answer and confidence, and whether the student's and the
/// teacher's answers are right against the floor's reference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CascadeItem {
    pub confidence: f64,
    pub student_right: bool,
    /// A teacher failure (no label) counts as wrong.
    pub teacher_right: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SweepPoint {
    pub threshold: f64,
    pub escalated_fraction: f64,
    pub quality: f64,
    pub quality_lo: f64,
    /// None when the student's or teacher's per-request cost is unknown.
    pub cost_per_request_usd: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitResult {
    pub n: usize,
    pub escalated_fraction: f64,
    /// Mix quality (accuracy or agreement, per the floor) with its Wilson interval.
    pub quality: Estimate,
    /// The teacher alone on the same items and metric, for comparison.
    pub teacher_quality: Estimate,
    pub student_quality: Estimate,
    pub cost_per_request_usd: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CascadeChoice {
    pub threshold: f64,
    /// False when no threshold met the floor on calibration (the threshold then escalates all).
    pub floor_met_on_calibration: bool,
    pub calibration: SplitResult,
    pub held_out: SplitResult,
    /// Held-out mix quality ≥ floor.
    pub floor_held: bool,
    /// The calibration sweep, thinned to at most ~100 points for the chart.
    pub sweep: Vec<SweepPoint>,
}

fn cost_at(frac: f64, student: Option<f64>, teacher: Option<f64>) -> Option<f64> {
    Some(student? + frac * teacher?)
}

/// Applies a threshold to a set of items.
pub fn evaluate(
    items: &[CascadeItem],
    threshold: f64,
    student_cost: Option<f64>,
    teacher_cost: Option<f64>,
) -> SplitResult {
    let n = items.len();
    let mut esc = 0;
    let mut right = 0;
    for it in items {
        if it.confidence < threshold {
            esc += 1;
            right += it.teacher_right as usize;
        } else {
            right += it.student_right as usize;
        }
    }
    let frac = if n == 0 { 0.0 } else { esc as f64 / n as f64 };
    SplitResult {
        n,
        escalated_fraction: frac,
        quality: wilson(right, n),
        teacher_quality: wilson(items.iter().filter(|i| i.teacher_right).count(), n),
        student_quality: wilson(items.iter().filter(|i| i.student_right).count(), n),
        cost_per_request_usd: cost_at(frac, student_cost, teacher_cost),
    }
}

/// Sweeps thresholds on `calibration`, picks one against `floor` and checks it on `held_out`.
pub fn choose(
    calibration: &[CascadeItem],
    held_out: &[CascadeItem],
    floor: f64,
    student_cost: Option<f64>,
    teacher_cost: Option<f64>,
) -> CascadeChoice {
    let n = calibration.len();
    let mut sorted: Vec<CascadeItem> = calibration.to_vec();
    sorted.sort_by(|a, b| a.confidence.total_cmp(&b.confidence));
    // Escalating the k least confident items: right = teacher on [0,k) + student on [k,n).
    let mut student_suffix = vec![0usize; n + 1];
    for k in (0..n).rev() {
        student_suffix[k] = student_suffix[k + 1] + sorted[k].student_right as usize;
    }
    let mut sweep = Vec::new();
    let mut chosen: Option<f64> = None;
    let mut teacher_prefix = 0usize;
    for k in 0..=n {
        if k > 0 {
            teacher_prefix += sorted[k - 1].teacher_right as usize;
        }
        // A threshold can only fall between distinct confidences.
        let cut = k == 0 || k == n || sorted[k - 1].confidence < sorted[k].confidence;
        if !cut {
            continue;
        }
        let threshold = if k == n {
            ALWAYS_ESCALATE
        } else {
            sorted[k].confidence
        };
        let w = wilson(teacher_prefix + student_suffix[k], n);
        let frac = if n == 0 { 0.0 } else { k as f64 / n as f64 };
        if chosen.is_none() && w.lo >= floor {
            chosen = Some(threshold);
        }
        sweep.push(SweepPoint {
            threshold,
            escalated_fraction: frac,
            quality: w.value,
            quality_lo: w.lo,
            cost_per_request_usd: cost_at(frac, student_cost, teacher_cost),
        });
    }
    let floor_met_on_calibration = chosen.is_some();
    let threshold = chosen.unwrap_or(ALWAYS_ESCALATE);
    let held = evaluate(held_out, threshold, student_cost, teacher_cost);
    CascadeChoice {
        threshold,
        floor_met_on_calibration,
        calibration: evaluate(calibration, threshold, student_cost, teacher_cost),
        floor_held: held.quality.value >= floor,
        held_out: held,
        sweep: thin(sweep, 100),
    }
}

/// Keeps at most about `max` points, always the first and last.
fn thin(points: Vec<SweepPoint>, max: usize) -> Vec<SweepPoint> {
    if points.len() <= max {
        return points;
    }
    let step = points.len().div_ceil(max);
    let last = points.len() - 1;
    points
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % step == 0 || *i == last)
        .map(|(_, p)| p)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(confidence: f64, student_right: bool, teacher_right: bool) -> CascadeItem {
        CascadeItem {
            confidence,
            student_right,
            teacher_right,
        }
    }

    #[test]
    fn picks_the_cheapest_threshold_whose_lower_bound_meets_the_floor() {
        // 1000 items: confident ones (0.9+) always right, unsure ones (<0.5) right 50%;
        // the teacher is always right.
        let items: Vec<CascadeItem> = (0..1000)
            .map(|i| {
                if i % 4 == 0 {
                    item(0.1 + (i % 40) as f64 / 100.0, i % 8 == 0, true)
                } else {
                    item(0.9 + (i % 10) as f64 / 100.0, true, true)
                }
            })
            .collect();
        let c = choose(&items, &items, 0.97, Some(0.0), Some(1.0));
        assert!(c.floor_met_on_calibration);
        // Escalating exactly the unsure quarter gives 100%; fewer leaves ~12.5% of them wrong.
        assert!(c.threshold > 0.5 && c.threshold <= 0.9, "{}", c.threshold);
        assert!(c.calibration.quality.lo >= 0.97);
        assert!(
            (c.held_out.escalated_fraction - 0.25).abs() < 0.01
                || c.held_out.escalated_fraction < 0.25
        );
        assert!(c.floor_held);
        // Cost grows with escalation and the sweep is monotone in it.
        assert!(c
            .sweep
            .windows(2)
            .all(|w| w[0].escalated_fraction <= w[1].escalated_fraction));
        assert_eq!(c.sweep.last().unwrap().threshold, ALWAYS_ESCALATE);
    }

    #[test]
    fn unreachable_floor_escalates_everything_and_says_so() {
        let items: Vec<CascadeItem> = (0..100)
            .map(|i| item(0.5, i % 2 == 0, i % 3 != 0))
            .collect();
        let c = choose(&items, &items, 0.99, None, None);
        assert!(!c.floor_met_on_calibration);
        assert_eq!(c.threshold, ALWAYS_ESCALATE);
        assert_eq!(c.held_out.escalated_fraction, 1.0);
        assert!(!c.floor_held);
        assert_eq!(c.held_out.cost_per_request_usd, None);
    }

    #[test]
    fn split_is_seeded_and_disjoint() {
        let (a, b) = split(100, 0.3, 1);
        assert_eq!((a.len(), b.len()), (30, 70));
        assert_eq!(split(100, 0.3, 1).0, a);
        assert_ne!(split(100, 0.3, 2).0, a);
        assert!(a.iter().all(|i| !b.contains(i)));
    }

    #[test]
    fn parses_floors() {
        assert_eq!(
            parse_floor("accuracy=0.94").unwrap(),
            (FloorMetric::Accuracy, 0.94)
        );
        assert_eq!(
            parse_floor("agreement = 0.9").unwrap(),
            (FloorMetric::Agreement, 0.9)
        );
        assert!(parse_floor("f1=0.9").is_err());
        assert!(parse_floor("accuracy=1.5").is_err());
        assert!(parse_floor("accuracy").is_err());
    }
}
