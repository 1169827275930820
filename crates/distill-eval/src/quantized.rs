//! int8 students beside their f32 parents (`distill quantize`): what the quantisation cost in
//! accuracy, with a paired bootstrap interval (both answered the same items, so the difference
//! is far tighter than two separate intervals suggest), and what it bought in latency and cost.

use crate::answers::Answers;
use crate::metrics::{percentile_interval, Estimate};
use crate::run::NamedStudent;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Paired resamples for the interval of the difference.
const RESAMPLES: usize = 1000;

/// One int8 student against its f32 parent, on the items both were scored on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantizedComparison {
    pub student: String,
    pub parent: String,
    pub scheme: String,
    /// What accuracy is measured against: `gold`, else `teacher` (agreement).
    pub reference: String,
    pub n: usize,
    pub student_accuracy: f64,
    pub parent_accuracy: f64,
    /// int8 − f32 accuracy with its 95% paired-bootstrap interval.
    pub delta: Estimate,
    /// Share of the items on which the two give the same label.
    pub same_label: f64,
    pub student_p50_ms: Option<f64>,
    pub parent_p50_ms: Option<f64>,
    pub student_per_request_usd: Option<f64>,
    pub parent_per_request_usd: Option<f64>,
}

/// Pairs every quantised student with its parent when both were evaluated. `scope` is the
/// items the options are scored on.
pub(crate) fn compare(
    students: &[NamedStudent],
    answers: &[Answers],
    gold: &[Option<usize>],
    teacher: &[Option<usize>],
    scope: &[usize],
    seed: u64,
) -> Vec<QuantizedComparison> {
    let answers_of = |name: &str| answers.iter().find(|a| a.name == name);
    let use_gold = scope.iter().any(|&i| gold[i].is_some());
    let (reference, reference_name) = if use_gold {
        (gold, "gold")
    } else {
        (teacher, "teacher")
    };
    let mut out = Vec::new();
    for s in students {
        let Some(q) = &s.student.meta().quantization else {
            continue;
        };
        let Some(p) = students.iter().find(|p| q.parent.is(p.student.meta())) else {
            continue;
        };
        let (Some(a), Some(b)) = (answers_of(&s.name), answers_of(&p.name)) else {
            continue;
        };
        // (int8 right, f32 right, same label) per item scored for both.
        let pairs: Vec<(bool, bool, bool)> = scope
            .iter()
            .filter_map(|&i| {
                let r = reference[i]?;
                let (x, y) = (a.labels[i]?, b.labels[i]?);
                Some((x == r, y == r, x == y))
            })
            .collect();
        if pairs.is_empty() {
            continue;
        }
        let n = pairs.len();
        let share = |pick: fn(&(bool, bool, bool)) -> bool| {
            pairs.iter().filter(|p| pick(p)).count() as f64 / n as f64
        };
        let student_accuracy = share(|p| p.0);
        let parent_accuracy = share(|p| p.1);
        let mut rng = StdRng::seed_from_u64(seed);
        let mut reps: Vec<f64> = (0..RESAMPLES)
            .map(|_| {
                let mut d = 0i64;
                for _ in 0..n {
                    let (x, y, _) = pairs[rng.gen_range(0..n)];
                    d += x as i64 - y as i64;
                }
                d as f64 / n as f64
            })
            .collect();
        let p50 = |a: &Answers| {
            a.runtime
                .as_ref()
                .and_then(|r| r.latency.as_ref())
                .map(|l| l.p50_ms)
        };
        out.push(QuantizedComparison {
            student: s.name.clone(),
            parent: p.name.clone(),
            scheme: q.scheme.clone(),
            reference: reference_name.into(),
            n,
            student_accuracy,
            parent_accuracy,
            delta: percentile_interval(student_accuracy - parent_accuracy, &mut reps),
            same_label: share(|p| p.2),
            student_p50_ms: p50(a),
            parent_p50_ms: p50(b),
            student_per_request_usd: a.per_request,
            parent_per_request_usd: b.per_request,
        });
    }
    out
}
