//! Quality of span answers (an extract task) against reference spans.
//!
//! - **Exact** (the headline, as in CoNLL and seqeval): a predicted span counts when a
//!   reference span has the same slot, start and end. Micro precision, recall and F1 over
//!   every span, and per slot.
//! - **Partial**: a predicted span counts when it overlaps a reference span of the same slot;
//!   spans are paired one to one (each reference span at most once), so a span split in two
//!   gets one hit and one false positive.
//! - **Exact inputs**: the share of inputs whose whole answer is right (every span, nothing
//!   extra), Wilson interval; the per-input measure a cascade floor can be set on.
//!
//! F1 intervals come from a bootstrap over inputs. `scripts/verify/spans_vs_seqeval.py`
//! recomputes the exact figures with seqeval (strict IOB2 over character tokens, which makes
//! its entity match exactly this span match) and the others directly.

use crate::metrics::{percentile_interval, wilson, Estimate, BOOTSTRAP_RESAMPLES};
use distill_core::spans::Span;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Precision, recall and F1 (with its interval) of one way of matching.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prf {
    pub precision: f64,
    pub recall: f64,
    pub f1: Estimate,
}

/// One slot's exact-match figures; `support` is its reference spans.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotScores {
    pub slot: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanScores {
    pub n: usize,
    pub exact: Prf,
    pub partial: Prf,
    pub exact_inputs: Estimate,
    pub per_slot: Vec<SlotScores>,
    pub reference_spans: u64,
    pub predicted_spans: u64,
}

/// Hits of one input: (exact, partial) per slot, and the span counts.
#[derive(Clone, Default)]
struct Counts {
    exact: Vec<u64>,
    partial: Vec<u64>,
    reference: Vec<u64>,
    predicted: Vec<u64>,
}

impl Counts {
    fn new(slots: usize) -> Self {
        Self {
            exact: vec![0; slots],
            partial: vec![0; slots],
            reference: vec![0; slots],
            predicted: vec![0; slots],
        }
    }
    fn add(&mut self, o: &Counts) {
        for (a, b) in [
            (&mut self.exact, &o.exact),
            (&mut self.partial, &o.partial),
            (&mut self.reference, &o.reference),
            (&mut self.predicted, &o.predicted),
        ] {
            a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
        }
    }
}

fn count(reference: &[Span], predicted: &[Span], slots: &[String]) -> Counts {
    let mut c = Counts::new(slots.len());
    let slot = |s: &Span| slots.iter().position(|n| *n == s.slot);
    for r in reference {
        if let Some(j) = slot(r) {
            c.reference[j] += 1;
        }
    }
    let mut paired = vec![false; reference.len()];
    for p in predicted {
        let Some(j) = slot(p) else { continue };
        c.predicted[j] += 1;
        if reference
            .iter()
            .any(|r| r.slot == p.slot && r.start == p.start && r.end == p.end)
        {
            c.exact[j] += 1;
        }
        if let Some(i) = (0..reference.len()).find(|&i| {
            let r = &reference[i];
            !paired[i] && r.slot == p.slot && r.start < p.end && p.start < r.end
        }) {
            paired[i] = true;
            c.partial[j] += 1;
        }
    }
    c
}

/// An answer's spans as sorted (slot, start, end), to compare answers as wholes.
fn span_key(spans: &[Span]) -> Vec<(&str, usize, usize)> {
    let mut k: Vec<(&str, usize, usize)> = spans
        .iter()
        .map(|s| (s.slot.as_str(), s.start, s.end))
        .collect();
    k.sort_unstable();
    k
}

fn ratio(k: u64, n: u64) -> f64 {
    if n == 0 {
        0.0
    } else {
        k as f64 / n as f64
    }
}

fn f1(hits: u64, predicted: u64, reference: u64) -> f64 {
    ratio(2 * hits, predicted + reference)
}

fn micro(c: &Counts) -> (f64, f64) {
    let (e, p, r, pr) = (
        c.exact.iter().sum(),
        c.partial.iter().sum(),
        c.reference.iter().sum(),
        c.predicted.iter().sum(),
    );
    (f1(e, pr, r), f1(p, pr, r))
}

/// Every span figure of `predicted` against `reference` (one span list per input, in
/// input order). Spans of slots outside `slots` are ignored.
pub fn span_quality(
    reference: &[Vec<Span>],
    predicted: &[Vec<Span>],
    slots: &[String],
    seed: u64,
) -> SpanScores {
    let n = reference.len();
    let per_input: Vec<Counts> = reference
        .iter()
        .zip(predicted)
        .map(|(r, p)| count(r, p, slots))
        .collect();
    let mut total = Counts::new(slots.len());
    per_input.iter().for_each(|c| total.add(c));
    let right = reference
        .iter()
        .zip(predicted)
        .filter(|(r, p)| span_key(r) == span_key(p))
        .count();

    let mut rng = StdRng::seed_from_u64(seed);
    let (mut b_exact, mut b_partial) = (Vec::new(), Vec::new());
    if n > 0 {
        for _ in 0..BOOTSTRAP_RESAMPLES {
            let mut c = Counts::new(slots.len());
            for _ in 0..n {
                c.add(&per_input[rng.gen_range(0..n)]);
            }
            let (e, p) = micro(&c);
            b_exact.push(e);
            b_partial.push(p);
        }
    }
    let (exact_f1, partial_f1) = micro(&total);
    let sum = |v: &[u64]| v.iter().sum::<u64>();
    let (r, p) = (sum(&total.reference), sum(&total.predicted));
    SpanScores {
        n,
        exact: Prf {
            precision: ratio(sum(&total.exact), p),
            recall: ratio(sum(&total.exact), r),
            f1: percentile_interval(exact_f1, &mut b_exact),
        },
        partial: Prf {
            precision: ratio(sum(&total.partial), p),
            recall: ratio(sum(&total.partial), r),
            f1: percentile_interval(partial_f1, &mut b_partial),
        },
        exact_inputs: wilson(right, n),
        per_slot: slots
            .iter()
            .enumerate()
            .map(|(j, slot)| SlotScores {
                slot: slot.clone(),
                precision: ratio(total.exact[j], total.predicted[j]),
                recall: ratio(total.exact[j], total.reference[j]),
                f1: f1(total.exact[j], total.predicted[j], total.reference[j]),
                support: total.reference[j],
            })
            .collect(),
        reference_spans: r,
        predicted_spans: p,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(slot: &str, start: usize, end: usize) -> Span {
        Span {
            slot: slot.into(),
            start,
            end,
            text: String::new(),
        }
    }

    #[test]
    fn exact_partial_and_per_slot_counts() {
        let slots = vec!["time".to_string(), "people".to_string()];
        let reference = vec![
            vec![s("time", 0, 4), s("people", 10, 12)],
            vec![s("people", 3, 9)],
            vec![],
        ];
        let predicted = vec![
            vec![s("time", 0, 4), s("people", 10, 13)], // one exact, one partial
            vec![s("people", 3, 5), s("people", 6, 9)], // split: one partial pair, one extra
            vec![s("time", 1, 2)],                      // a false positive
        ];
        let q = span_quality(&reference, &predicted, &slots, 7);
        assert_eq!((q.reference_spans, q.predicted_spans), (3, 5));
        assert!((q.exact.precision - 1.0 / 5.0).abs() < 1e-12);
        assert!((q.exact.recall - 1.0 / 3.0).abs() < 1e-12);
        assert!((q.exact.f1.value - 2.0 / 8.0).abs() < 1e-12);
        assert!((q.partial.precision - 3.0 / 5.0).abs() < 1e-12);
        assert!((q.partial.recall - 1.0).abs() < 1e-12);
        assert!(q.exact.f1.lo <= q.exact.f1.value && q.exact.f1.value <= q.exact.f1.hi);
        assert_eq!(q.exact_inputs.value, 0.0);
        assert_eq!(q.per_slot[0].support, 1);
        assert!((q.per_slot[0].precision - 0.5).abs() < 1e-12);
        assert_eq!(q.per_slot[1].f1, 0.0);
        let all = span_quality(&reference, &reference, &slots, 7);
        assert_eq!((all.exact.f1.value, all.exact_inputs.value), (1.0, 1.0));
    }
}
