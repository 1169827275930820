//! Out-of-scope traffic for open-set tasks (`labels.out_of_scope` in the spec).
//!
//! Real traffic holds requests that fit no label. An eval given `--out-of-scope FILE` (texts
//! known to be outside the label set, or `distill teach`'s dataset of them) appends them to the
//! test items with the out-of-scope label as gold, and then:
//! - scores every option on them separately: **in-scope accuracy** (items whose gold is an
//!   in-scope label), **out-of-scope recall** (out-of-scope items answered out of scope) and
//!   **precision at the stated mix** (of the answers "out of scope", the share that is, when
//!   out-of-scope requests are `share` of the traffic);
//! - evaluates the summary table and chooses the cascade on the stated traffic mix
//!   (`--oos-share`): the population is every in-scope item plus a seeded sample of the
//!   out-of-scope ones (or the reverse, when there are too few), so the threshold is not
//!   tuned on in-scope data alone;
//! - prices what an out-of-scope request costs under each option (a cascade pays the teacher
//!   for those it escalates).
//!
//! A closed-set student (trained without the out-of-scope label) is evaluated too: it answers
//! every out-of-scope request with an in-scope label, which is today's behaviour to beat.

use crate::error::{EvalError, Result};
use crate::metrics::{wilson, Estimate};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

/// The open-set figures of one option.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenSetQuality {
    /// Accuracy on items whose gold label is in scope.
    pub in_scope_accuracy: Estimate,
    /// Out-of-scope items answered with the out-of-scope label.
    pub oos_recall: Estimate,
    /// In-scope items answered "out of scope" (wrongly turned away).
    pub in_scope_rejected: Estimate,
    /// Of the answers "out of scope" at the stated mix, the share that is: share·recall /
    /// (share·recall + (1 − share)·rejected); None when the option never answers it.
    pub oos_precision_at_mix: Option<f64>,
    /// (1 − share)·in-scope accuracy + share·recall.
    pub accuracy_at_mix: f64,
    /// Cascades: the share of in-scope and of out-of-scope items escalated.
    pub in_scope_escalated: Option<f64>,
    pub oos_escalated: Option<f64>,
    /// What one out-of-scope request costs this option (a cascade: student + escalated
    /// share × teacher), and one request of the stated mix.
    pub per_oos_request_usd: Option<f64>,
    pub per_request_at_mix_usd: Option<f64>,
}

/// What the eval knew about out-of-scope traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenSetInfo {
    pub label: String,
    /// Out-of-scope share of the traffic the table and the cascade were evaluated on.
    pub share: f64,
    /// `--oos-share`, or `as in the test files`.
    pub share_source: String,
    pub n_in_scope: usize,
    pub n_out_of_scope: usize,
    /// Items of each kind in the evaluated population (after sampling to the share).
    pub population_in_scope: usize,
    pub population_out_of_scope: usize,
}

/// The evaluated population: every item of the scarcer side relative to `share`, and a seeded
/// sample of the other, so out-of-scope items make up `share` of it. Sorted item indices.
pub fn mix(is_oos: &[bool], share: f64, seed: u64) -> Result<Vec<usize>> {
    if !(share > 0.0 && share < 1.0) {
        return Err(EvalError::Invalid(format!(
            "--oos-share must be between 0 and 1 (exclusive), got {share}"
        )));
    }
    let (mut oos, mut ins): (Vec<usize>, Vec<usize>) = (0..is_oos.len()).partition(|&i| is_oos[i]);
    if oos.is_empty() || ins.is_empty() {
        return Ok((0..is_oos.len()).collect());
    }
    let want_oos = (share / (1.0 - share) * ins.len() as f64).round() as usize;
    let mut rng = StdRng::seed_from_u64(seed ^ 0x005c_09e5);
    if want_oos <= oos.len() {
        oos.shuffle(&mut rng);
        oos.truncate(want_oos.max(1));
    } else {
        let want_in = ((1.0 - share) / share * oos.len() as f64).round() as usize;
        ins.shuffle(&mut rng);
        ins.truncate(want_in.max(1));
    }
    let mut pop: Vec<usize> = ins.into_iter().chain(oos).collect();
    pop.sort_unstable();
    Ok(pop)
}

/// One option's answers scored for open-set traffic. `gold` and `pred` are label indices per
/// item (None = no answer, counted wrong); `items` the indices scored; `escalated` the
/// cascade's per-item decision.
#[allow(clippy::too_many_arguments)]
pub fn score(
    gold: &[Option<usize>],
    pred: &[Option<usize>],
    items: &[usize],
    oos: usize,
    share: f64,
    escalated: Option<&[bool]>,
    per_request: Option<f64>,
    teacher_per_request: f64,
    student_per_request: Option<f64>,
) -> OpenSetQuality {
    let (mut in_n, mut in_right, mut in_rejected) = (0usize, 0usize, 0usize);
    let (mut oos_n, mut oos_right) = (0usize, 0usize);
    let (mut in_esc, mut oos_esc) = (0usize, 0usize);
    for &i in items {
        let Some(g) = gold[i] else { continue };
        let p = pred[i];
        let esc = escalated.is_some_and(|e| e[i]);
        if g == oos {
            oos_n += 1;
            oos_right += usize::from(p == Some(oos));
            oos_esc += usize::from(esc);
        } else {
            in_n += 1;
            in_right += usize::from(p == Some(g));
            in_rejected += usize::from(p == Some(oos));
            in_esc += usize::from(esc);
        }
    }
    let in_acc = wilson(in_right, in_n);
    let recall = wilson(oos_right, oos_n);
    let rejected = wilson(in_rejected, in_n);
    let called_oos = share * recall.value + (1.0 - share) * rejected.value;
    let frac = |k: usize, n: usize| (n > 0).then(|| k as f64 / n as f64);
    let (in_escalated, oos_escalated) = match escalated {
        Some(_) => (frac(in_esc, in_n), frac(oos_esc, oos_n)),
        None => (None, None),
    };
    let (per_oos, at_mix) = match (oos_escalated, student_per_request) {
        (Some(oe), Some(s)) => {
            let ie = in_escalated.unwrap_or(0.0);
            (
                Some(s + oe * teacher_per_request),
                Some(s + ((1.0 - share) * ie + share * oe) * teacher_per_request),
            )
        }
        _ => (per_request, per_request),
    };
    OpenSetQuality {
        in_scope_accuracy: in_acc,
        oos_recall: recall,
        in_scope_rejected: rejected,
        oos_precision_at_mix: (called_oos > 0.0).then(|| share * recall.value / called_oos),
        accuracy_at_mix: (1.0 - share) * in_acc.value + share * recall.value,
        in_scope_escalated: in_escalated,
        oos_escalated,
        per_oos_request_usd: per_oos,
        per_request_at_mix_usd: at_mix,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_population_holds_the_stated_share() {
        let mut is_oos = vec![false; 900];
        is_oos.extend(vec![true; 500]);
        let pop = mix(&is_oos, 0.1, 1).unwrap();
        let k = pop.iter().filter(|&&i| is_oos[i]).count();
        assert_eq!((pop.len() - k, k), (900, 100));
        assert_eq!(mix(&is_oos, 0.1, 1).unwrap(), pop, "seeded");
        // Too few out-of-scope items for the share: in-scope ones are sampled instead.
        let pop = mix(&is_oos, 0.8, 1).unwrap();
        let k = pop.iter().filter(|&&i| is_oos[i]).count();
        assert_eq!((pop.len() - k, k), (125, 500));
        assert!(mix(&is_oos, 1.0, 1).is_err());
    }

    #[test]
    fn scores_recall_rejections_precision_and_the_price_of_an_out_of_scope_request() {
        // Labels 0, 1 in scope, 2 out of scope. 4 in-scope items (one turned away), 4 oos
        // (3 caught); the cascade escalates one oos and one in-scope item.
        let gold: Vec<Option<usize>> = [0, 1, 0, 1, 2, 2, 2, 2].map(Some).to_vec();
        let pred: Vec<Option<usize>> = [0, 1, 1, 2, 2, 2, 2, 0].map(Some).to_vec();
        let items: Vec<usize> = (0..8).collect();
        let esc = [false, false, true, false, false, false, false, true];
        let q = score(
            &gold,
            &pred,
            &items,
            2,
            0.5,
            Some(&esc),
            None,
            1.0,
            Some(0.01),
        );
        assert_eq!(q.in_scope_accuracy.value, 0.5);
        assert_eq!(q.oos_recall.value, 0.75);
        assert_eq!(q.in_scope_rejected.value, 0.25);
        assert!((q.oos_precision_at_mix.unwrap() - 0.75).abs() < 1e-12);
        assert!((q.accuracy_at_mix - 0.625).abs() < 1e-12);
        assert_eq!(q.oos_escalated, Some(0.25));
        assert!((q.per_oos_request_usd.unwrap() - 0.26).abs() < 1e-12);
        assert!((q.per_request_at_mix_usd.unwrap() - 0.26).abs() < 1e-12);
        // A closed-set student never answers out of scope: no precision, zero recall.
        let closed: Vec<Option<usize>> = [0, 1, 1, 0, 0, 1, 0, 1].map(Some).to_vec();
        let q = score(
            &gold,
            &closed,
            &items,
            2,
            0.1,
            None,
            Some(0.01),
            1.0,
            Some(0.01),
        );
        assert_eq!(q.oos_recall.value, 0.0);
        assert_eq!(q.oos_precision_at_mix, None);
        assert_eq!(q.per_oos_request_usd, Some(0.01));
    }
}
