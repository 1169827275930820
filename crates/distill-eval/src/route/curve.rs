//! The cost–quality curve of a routing policy and the metrics RouteLLM publishes, so a result
//! here is comparable with theirs (Ong et al. 2024, `routellm/evals/evaluate.py`):
//! - **PGR** (performance gap recovered) at a premium share: (quality − cheap tier's) /
//!   (premium tier's − cheap tier's);
//! - **APGR**: the area under PGR over the premium share from 0 to 100% (trapezoids);
//! - **CPT(x%)**: the premium share needed to recover x% of the gap (first crossing, linear
//!   between points).
//!
//! RouteLLM evaluates 11 thresholds at score quantiles; here every distinct score is a point
//! (the exact curve), which `scripts/verify/route_metrics.py` recomputes independently.
//!
//! A policy maps every item to a tier; `Outcomes` hold each item's pass/fail and cost per tier.

use crate::metrics::{wilson, Estimate};
use serde::{Deserialize, Serialize};

/// Per item and tier: whether the answer passes and what it costs.
#[derive(Debug, Clone)]
pub struct Outcomes {
    /// `pass[i][t]`.
    pub pass: Vec<Vec<bool>>,
    /// `cost[i][t]`, USD.
    pub cost: Vec<Vec<f64>>,
}

impl Outcomes {
    pub fn len(&self) -> usize {
        self.pass.len()
    }
    pub fn is_empty(&self) -> bool {
        self.pass.is_empty()
    }
    pub fn tiers(&self) -> usize {
        self.pass.first().map_or(0, Vec::len)
    }
    /// The subset at `idx`.
    pub fn select(&self, idx: &[usize]) -> Outcomes {
        Outcomes {
            pass: idx.iter().map(|&i| self.pass[i].clone()).collect(),
            cost: idx.iter().map(|&i| self.cost[i].clone()).collect(),
        }
    }
    /// Quality (pass rate) and mean cost of always using tier `t`.
    pub fn tier(&self, t: usize) -> Point {
        let choice = vec![t; self.len()];
        self.evaluate(&choice, f64::NAN)
    }
    /// A policy's point: its quality (with Wilson interval), premium share and mean cost.
    pub fn evaluate(&self, choice: &[usize], threshold: f64) -> Point {
        let n = self.len();
        let top = self.tiers().saturating_sub(1);
        let (mut passed, mut premium, mut cost) = (0usize, 0usize, 0f64);
        for (i, &t) in choice.iter().enumerate() {
            passed += usize::from(self.pass[i][t]);
            premium += usize::from(t == top);
            cost += self.cost[i][t];
        }
        let q = wilson(passed, n);
        Point {
            threshold,
            premium_share: premium as f64 / n.max(1) as f64,
            quality: q.value,
            quality_lo: q.lo,
            passed,
            n,
            cost_per_request_usd: cost / n.max(1) as f64,
        }
    }
}

/// One point of a curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// The threshold that produced it (NaN for fixed policies).
    pub threshold: f64,
    pub premium_share: f64,
    pub quality: f64,
    /// Lower 95% Wilson bound of quality.
    pub quality_lo: f64,
    pub passed: usize,
    pub n: usize,
    pub cost_per_request_usd: f64,
}

impl Point {
    pub fn quality_estimate(&self) -> Estimate {
        wilson(self.passed, self.n)
    }
}

/// The tier each item goes to at `threshold`: the cheapest routed tier whose score reaches
/// it, else the top tier. `scores[i][t]` covers every tier but the top.
pub fn decide(scores: &[Vec<f32>], threshold: f64) -> Vec<usize> {
    scores
        .iter()
        .map(|s| {
            s.iter()
                .position(|&p| p as f64 >= threshold)
                .unwrap_or(s.len())
        })
        .collect()
}

/// Every threshold that changes a decision: each distinct score, plus one above them all
/// (everything to the top tier). Sorted ascending (premium share non-decreasing).
pub fn thresholds(scores: &[Vec<f32>]) -> Vec<f64> {
    let mut t: Vec<f64> = scores.iter().flatten().map(|&p| p as f64).collect();
    t.sort_by(f64::total_cmp);
    t.dedup();
    let top = t.last().copied().unwrap_or(0.0);
    t.push(if top < 1.0 { 1.0 + 1e-9 } else { top + 1.0 });
    t
}

/// The curve of a scored policy over every threshold.
pub fn sweep(scores: &[Vec<f32>], outcomes: &Outcomes) -> Vec<Point> {
    thresholds(scores)
        .into_iter()
        .map(|t| outcomes.evaluate(&decide(scores, t), t))
        .collect()
}

/// The oracle: the premium tier only where the cheap tier fails and the premium passes, up to
/// each premium share (two tiers; RouteLLM's `get_optimal_accuracy`). Points at 0, 1, …, n.
pub fn oracle(outcomes: &Outcomes) -> Vec<Point> {
    let n = outcomes.len();
    let top = outcomes.tiers() - 1;
    // Items the premium tier fixes first, then the rest (premium share grows past them).
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| {
        let fixes = !outcomes.pass[i][0] && outcomes.pass[i][top];
        (!fixes, i)
    });
    let mut choice = vec![0usize; n];
    let mut points = vec![outcomes.evaluate(&choice, f64::NAN)];
    for &i in &order {
        choice[i] = top;
        points.push(outcomes.evaluate(&choice, f64::NAN));
    }
    points
}

/// RouteLLM's summary of a curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GapMetrics {
    /// Area under PGR over the premium share.
    pub apgr: f64,
    /// Premium share needed for 20%, 50%, 80% of the gap (None when never reached).
    pub cpt20: Option<f64>,
    pub cpt50: Option<f64>,
    pub cpt80: Option<f64>,
}

/// PGR of a quality between the cheap and the premium tier's.
pub fn pgr(quality: f64, cheap: f64, premium: f64) -> f64 {
    let gap = premium - cheap;
    if gap.abs() < 1e-12 {
        return f64::NAN;
    }
    (quality - cheap) / gap
}

/// APGR and CPTs of a curve (points in any order; sorted by premium share here).
pub fn gap_metrics(points: &[Point], cheap: f64, premium: f64) -> GapMetrics {
    let mut pts: Vec<(f64, f64)> = points
        .iter()
        .map(|p| (p.premium_share, pgr(p.quality, cheap, premium)))
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let mut apgr = 0.0;
    for w in pts.windows(2) {
        apgr += (w[1].0 - w[0].0) * (w[0].1 + w[1].1) / 2.0;
    }
    let cpt = |x: f64| -> Option<f64> {
        if let Some(first) = pts.first() {
            if first.1 >= x {
                return Some(first.0);
            }
        }
        for w in pts.windows(2) {
            let ((s0, g0), (s1, g1)) = (w[0], w[1]);
            if g0 < x && g1 >= x {
                let f = if (g1 - g0).abs() < 1e-15 {
                    1.0
                } else {
                    (x - g0) / (g1 - g0)
                };
                return Some(s0 + f * (s1 - s0));
            }
        }
        None
    };
    GapMetrics {
        apgr,
        cpt20: cpt(0.2),
        cpt50: cpt(0.5),
        cpt80: cpt(0.8),
    }
}

/// The random router's curve: the straight line between the two tiers (PGR = premium share).
pub fn random_line(outcomes: &Outcomes) -> Vec<Point> {
    let (c, p) = (outcomes.tier(0), outcomes.tier(outcomes.tiers() - 1));
    (0..=20)
        .map(|k| {
            let s = k as f64 / 20.0;
            Point {
                threshold: f64::NAN,
                premium_share: s,
                quality: c.quality + s * (p.quality - c.quality),
                quality_lo: f64::NAN,
                passed: 0,
                n: outcomes.len(),
                cost_per_request_usd: c.cost_per_request_usd
                    + s * (p.cost_per_request_usd - c.cost_per_request_usd),
            }
        })
        .collect()
}

/// The chosen threshold: on `calibration`, the cheapest point whose lower 95% bound of
/// quality reaches `floor` (a quality), or with `budget` (USD per request) the best quality
/// within it. `None` when no point qualifies.
pub fn choose(curve: &[Point], floor: Option<f64>, budget: Option<f64>) -> Option<Point> {
    match budget {
        Some(b) => curve
            .iter()
            .filter(|p| p.cost_per_request_usd <= b)
            .max_by(|a, b| {
                a.quality
                    .total_cmp(&b.quality)
                    .then(b.cost_per_request_usd.total_cmp(&a.cost_per_request_usd))
            })
            .copied(),
        None => curve
            .iter()
            .filter(|p| p.quality_lo >= floor.unwrap_or(0.0))
            .min_by(|a, b| a.cost_per_request_usd.total_cmp(&b.cost_per_request_usd))
            .copied(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcomes(pairs: &[(bool, bool)]) -> Outcomes {
        Outcomes {
            pass: pairs.iter().map(|&(a, b)| vec![a, b]).collect(),
            cost: pairs.iter().map(|_| vec![1.0, 10.0]).collect(),
        }
    }

    #[test]
    fn a_perfect_router_recovers_the_gap_with_the_fewest_premium_calls() {
        // 10 items: cheap right on 6, premium on 8; items 6, 7, 8 are the ones to send up.
        let o = outcomes(&[
            (true, true),
            (true, true),
            (true, true),
            (true, false),
            (true, true),
            (true, true),
            (false, true),
            (false, true),
            (false, true),
            (false, false),
        ]);
        // Scores = P(cheap passes): high for the first six.
        let scores: Vec<Vec<f32>> = (0..10)
            .map(|i| {
                vec![if i < 6 {
                    0.9 - i as f32 * 0.01
                } else {
                    0.1 + i as f32 * 0.01
                }]
            })
            .collect();
        let curve = sweep(&scores, &o);
        let (c, p) = (o.tier(0).quality, o.tier(1).quality);
        assert_eq!((c, p), (0.6, 0.8));
        // Threshold above every score: all premium; at 0: all cheap.
        assert_eq!(curve.last().unwrap().premium_share, 1.0);
        assert_eq!(curve.first().unwrap().premium_share, 0.0);
        let m = gap_metrics(&curve, c, p);
        // The low scores go up first: items 6, 7 close the gap at a 20% premium share.
        assert!(m.apgr > 0.75, "{m:?}");
        assert!(m.cpt50.unwrap() <= 0.2 + 1e-9, "{m:?}");
        let rand = gap_metrics(&random_line(&o), c, p);
        assert!((rand.apgr - 0.5).abs() < 1e-9 && (rand.cpt50.unwrap() - 0.5).abs() < 1e-9);
        let orc = gap_metrics(&oracle(&o), c, p);
        assert!(orc.apgr >= m.apgr - 1e-9, "{orc:?} vs {m:?}");
        // Oracle: PGR 0.5 at 10%, 1.0 at 20%: 80% of the gap at 16%.
        assert!((orc.cpt80.unwrap() - 0.16).abs() < 1e-9, "{orc:?}");
        // The floor picks the cheapest point whose lower bound reaches it.
        let pick = choose(&curve, Some(0.5), None).unwrap();
        assert!(pick.quality_lo >= 0.5);
        assert!(curve
            .iter()
            .filter(|p| p.quality_lo >= 0.5)
            .all(|p| p.cost_per_request_usd >= pick.cost_per_request_usd));
        let within = choose(&curve, None, Some(3.0)).unwrap();
        assert!(within.cost_per_request_usd <= 3.0);
        assert!(choose(&curve, Some(1.1), None).is_none());
    }

    #[test]
    fn three_tiers_take_the_cheapest_that_is_sure_enough() {
        let scores = vec![vec![0.9, 0.95], vec![0.2, 0.8], vec![0.1, 0.1]];
        assert_eq!(decide(&scores, 0.5), vec![0, 1, 2]);
        assert_eq!(decide(&scores, 0.0), vec![0, 0, 0]);
        assert_eq!(decide(&scores, 0.99), vec![2, 2, 2]);
    }
}
