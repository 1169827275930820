//! Which unlabelled inputs to send to the teacher next. Pure functions of the student's
//! probabilities (and, for `diverse`, embeddings), so each rule is tested on its own.

use distill_train::objective::SigmoidHead;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

/// How a round picks its inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Everything, in file order (what `distill teach` does without `--strategy`).
    All,
    /// A seeded random sample each round.
    Random,
    /// The inputs the current student is least sure about.
    Uncertainty,
    /// Uncertain inputs spread over the embedding space (k-centre greedy), so a round is not
    /// a cluster of near-duplicates.
    Diverse,
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "all" => Ok(Self::All),
            "random" => Ok(Self::Random),
            "uncertainty" => Ok(Self::Uncertainty),
            "diverse" => Ok(Self::Diverse),
            _ => Err(format!(
                "`{s}` is not a strategy: all, random, uncertainty or diverse"
            )),
        }
    }
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Random => "random",
            Self::Uncertainty => "uncertainty",
            Self::Diverse => "diverse",
        }
    }
}

/// How unsure a probability vector is; higher = more worth labelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Measure {
    /// 1 − the top probability.
    LeastConfidence,
    /// 1 − (top − second): small margins between the two best labels.
    Margin,
    /// Shannon entropy of the distribution.
    Entropy,
}

impl std::str::FromStr for Measure {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "least-confidence" => Ok(Self::LeastConfidence),
            "margin" => Ok(Self::Margin),
            "entropy" => Ok(Self::Entropy),
            _ => Err(format!(
                "`{s}` is not an uncertainty measure: least-confidence, margin or entropy"
            )),
        }
    }
}

/// How unsure the student is of one input under `m`; higher = more worth labelling. `head` is
/// a multilabel student's decision rule: its answer is one yes/no decision per label, so each
/// measure is taken over those decisions rather than over `p` as one distribution (where two
/// confidently given labels would look like a tie):
/// - least confidence: 1 − the probability of the least sure decision (the cascade's confidence);
/// - margin: 1 − the smallest distance of a label's probability from its threshold, as a
///   fraction of the room on that side (0 at the threshold, 1 at 0 or 1);
/// - entropy: the label set's entropy with labels independent (the sum of the binary entropies;
///   conditioned on a non-empty set where the task forbids the empty answer).
///
/// A label given only because the task forbids an empty answer and none cleared its threshold
/// counts as a decision with no margin.
pub fn uncertainty(p: &[f32], head: Option<&SigmoidHead>, m: Measure) -> f64 {
    match head {
        None => distribution_uncertainty(p, m),
        Some(h) => decisions_uncertainty(p, h, m),
    }
}

fn distribution_uncertainty(p: &[f32], m: Measure) -> f64 {
    let mut top = [0f64; 2];
    for &x in p {
        let x = x as f64;
        if x > top[0] {
            top = [x, top[0]];
        } else if x > top[1] {
            top[1] = x;
        }
    }
    match m {
        Measure::LeastConfidence => 1.0 - top[0],
        Measure::Margin => 1.0 - (top[0] - top[1]),
        Measure::Entropy => p.iter().map(|&x| plogp(x as f64)).sum(),
    }
}

fn decisions_uncertainty(p: &[f32], head: &SigmoidHead, m: Measure) -> f64 {
    let (set, confidence) = head.decide(p);
    match m {
        Measure::LeastConfidence => 1.0 - confidence as f64,
        Measure::Margin => {
            // A label given although below its threshold (the task forbids an empty answer and
            // none cleared it) is a decision with no margin at all.
            let nearest = p
                .iter()
                .zip(&head.thresholds)
                .enumerate()
                .map(|(j, (&x, &t))| {
                    let (x, t) = (x as f64, t as f64);
                    match (set.binary_search(&j).is_ok(), x >= t) {
                        (true, true) => (x - t) / (1.0 - t).max(1e-6),
                        (false, false) => (t - x) / t.max(1e-6),
                        _ => 0.0,
                    }
                })
                .fold(1.0f64, f64::min);
            1.0 - nearest
        }
        Measure::Entropy => set_entropy(p, head.allow_empty),
    }
}

/// The entropy of the label set with labels independent: the sum of the binary entropies, or,
/// where the empty set is no answer, that of the distribution conditioned on a non-empty set
/// (H(S | S ≠ ∅) = (H(S) + P(∅) ln P(∅)) / Z + ln Z, Z = 1 − P(∅)), so a student that gives
/// every label a low probability is unsure which one to force, not sure of the answer.
fn set_entropy(p: &[f32], allow_empty: bool) -> f64 {
    let h: f64 = p
        .iter()
        .map(|&x| plogp(x as f64) + plogp(1.0 - x as f64))
        .sum();
    if allow_empty {
        return h;
    }
    let p_empty: f64 = p
        .iter()
        .map(|&x| 1.0 - (x as f64).clamp(0.0, 1.0))
        .product();
    let z = 1.0 - p_empty;
    if z < 1e-9 {
        // Every label near 0: the non-empty sets are then almost all single labels, in
        // proportion to their probabilities.
        let total: f64 = p.iter().map(|&x| (x as f64).max(0.0)).sum();
        if total <= 0.0 {
            return (p.len().max(1) as f64).ln();
        }
        return p.iter().map(|&x| plogp((x as f64).max(0.0) / total)).sum();
    }
    ((h - plogp(p_empty)) / z + z.ln()).max(0.0)
}

/// −x ln x, 0 at 0.
fn plogp(x: f64) -> f64 {
    if x > 0.0 {
        -x * x.ln()
    } else {
        0.0
    }
}

/// A seeded sample of `k` of `0..n`, in a random order.
pub fn random_pick(n: usize, k: usize, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    idx.shuffle(&mut rng);
    idx.truncate(k);
    idx
}

/// The `k` most uncertain, most uncertain first (ties by position, so the pick is stable).
pub fn top_uncertain(scores: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// k-centre greedy (Sener & Savarese 2018) over `candidates`: repeatedly take the candidate
/// farthest (cosine distance) from everything chosen or already labelled (`centres`).
pub fn k_centre(
    candidates: &[usize],
    embeddings: &[Vec<f32>],
    centres: &[Vec<f32>],
    k: usize,
) -> Vec<usize> {
    let dist = |a: &[f32], b: &[f32]| {
        let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
        for (x, y) in a.iter().zip(b) {
            dot += (*x as f64) * (*y as f64);
            na += (*x as f64) * (*x as f64);
            nb += (*y as f64) * (*y as f64);
        }
        1.0 - dot / (na.sqrt() * nb.sqrt()).max(1e-12)
    };
    let mut nearest: Vec<f64> = candidates
        .iter()
        .map(|&c| {
            centres
                .iter()
                .map(|z| dist(&embeddings[c], z))
                .fold(f64::INFINITY, f64::min)
        })
        .collect();
    let mut taken = vec![false; candidates.len()];
    let mut out = Vec::with_capacity(k.min(candidates.len()));
    while out.len() < k.min(candidates.len()) {
        // With no centres yet every distance is infinite: the first candidate (the most
        // uncertain, as the caller orders them) starts.
        let Some(best) = (0..candidates.len())
            .filter(|&i| !taken[i])
            .max_by(|&a, &b| nearest[a].total_cmp(&nearest[b]).then(b.cmp(&a)))
        else {
            break;
        };
        taken[best] = true;
        out.push(candidates[best]);
        let chosen = &embeddings[candidates[best]];
        for (i, &c) in candidates.iter().enumerate() {
            if !taken[i] {
                nearest[i] = nearest[i].min(dist(&embeddings[c], chosen));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_rank_unsure_distributions_higher() {
        let sure = [0.9f32, 0.05, 0.05];
        let split = [0.45f32, 0.45, 0.1];
        let flat = [0.34f32, 0.33, 0.33];
        for m in [Measure::LeastConfidence, Measure::Margin, Measure::Entropy] {
            assert!(
                uncertainty(&sure, None, m) < uncertainty(&split, None, m),
                "{m:?}"
            );
            assert!(
                uncertainty(&sure, None, m) < uncertainty(&flat, None, m),
                "{m:?}"
            );
        }
        // Margin sees a two-way tie as the most uncertain; least confidence the flat one.
        assert!(
            uncertainty(&split, None, Measure::Margin)
                > uncertainty(&flat, None, Measure::Margin) - 0.02
        );
        assert!(
            uncertainty(&flat, None, Measure::LeastConfidence)
                > uncertainty(&split, None, Measure::LeastConfidence)
        );
        assert!(
            (uncertainty(&[0.5, 0.5], None, Measure::Entropy) - 2f64.ln() / 2.0 * 2.0).abs() < 1e-6
        );
    }

    /// A multilabel decision rule with these thresholds, no temperatures, no empty answer.
    fn head(thresholds: &[f32]) -> SigmoidHead {
        SigmoidHead {
            temperatures: vec![1.0; thresholds.len()],
            thresholds: thresholds.to_vec(),
            separator: "|".into(),
            allow_empty: false,
        }
    }

    #[test]
    fn a_multilabel_student_is_unsure_of_its_decisions_not_of_a_distribution() {
        let head = head(&[0.5, 0.5, 0.2]);
        // Two labels given with certainty is a sure answer, though as a distribution it is a tie.
        let two_sure = [0.99f32, 0.99, 0.01];
        let one_unsure = [0.99f32, 0.01, 0.25];
        for m in [Measure::LeastConfidence, Measure::Margin, Measure::Entropy] {
            assert!(
                uncertainty(&two_sure, Some(&head), m) < uncertainty(&one_unsure, Some(&head), m),
                "{m:?}"
            );
        }
        assert!(
            uncertainty(&two_sure, None, Measure::Margin)
                > uncertainty(&one_unsure, None, Measure::Margin),
            "read as one distribution, the sure pair looks like a tie"
        );
        // Margin is measured from each label's own threshold: 0.25 is just past label 2's 0.2.
        let m = uncertainty(&one_unsure, Some(&head), Measure::Margin);
        assert!((m - (1.0 - 0.05 / 0.8)).abs() < 1e-6, "{m}");
        // Least confidence is 1 − the cascade's confidence of the whole set: label 2 is given
        // at probability 0.25.
        let lc = uncertainty(&one_unsure, Some(&head), Measure::LeastConfidence);
        assert!((lc - 0.75).abs() < 1e-6, "{lc}");
        let e = uncertainty(&[0.5, 0.5, 0.0], Some(&head), Measure::Entropy);
        let conditioned = (2.0 * 2f64.ln() - plogp(0.25)) / 0.75 + 0.75f64.ln();
        assert!((e - conditioned).abs() < 1e-6, "{e} vs {conditioned}");
        let open = SigmoidHead {
            allow_empty: true,
            ..head.clone()
        };
        let e = uncertainty(&[0.5, 0.5, 0.0], Some(&open), Measure::Entropy);
        assert!((e - 2.0 * 2f64.ln()).abs() < 1e-6, "{e}");
    }

    #[test]
    fn a_label_forced_because_none_cleared_its_threshold_is_an_unsure_decision() {
        // The task forbids an empty answer: with nothing above threshold the likeliest label is
        // given at p = 0.05. That is a guess, not a sure "no" to every label.
        let head = head(&[0.5; 3]);
        let guess = [0.05f32, 0.05, 0.01];
        let clear = [0.6f32, 0.01, 0.01];
        for m in [Measure::LeastConfidence, Measure::Margin, Measure::Entropy] {
            assert!(
                uncertainty(&guess, Some(&head), m) > uncertainty(&clear, Some(&head), m),
                "{m:?}"
            );
        }
        assert_eq!(uncertainty(&guess, Some(&head), Measure::Margin), 1.0);
        // All near zero: the conditioned entropy stays finite (the labels' shares of a single pick).
        let e = uncertainty(&[1e-12, 1e-12, 2e-12], Some(&head), Measure::Entropy);
        assert!(
            e.is_finite() && (e - (2.0 * plogp(0.25) + plogp(0.5))).abs() < 1e-6,
            "{e}"
        );
        // Where the empty set is an answer, nothing above threshold is a sure empty answer.
        let open = SigmoidHead {
            allow_empty: true,
            ..head
        };
        assert!(
            uncertainty(&guess, Some(&open), Measure::Margin)
                < uncertainty(&clear, Some(&open), Measure::Margin)
        );
    }

    #[test]
    fn top_uncertain_is_stable_and_random_pick_is_seeded() {
        assert_eq!(top_uncertain(&[0.1, 0.9, 0.5, 0.9], 3), vec![1, 3, 2]);
        let a = random_pick(100, 10, 7);
        assert_eq!(a, random_pick(100, 10, 7));
        assert_ne!(a, random_pick(100, 10, 8));
        let mut s = a.clone();
        s.sort_unstable();
        s.dedup();
        assert_eq!(s.len(), 10);
    }

    #[test]
    fn k_centre_spreads_over_clusters_instead_of_taking_near_duplicates() {
        // Two tight clusters; the candidates are ordered so that the first three are all in
        // cluster A (as an uncertainty ranking might put them).
        let e = vec![
            vec![1.0, 0.0],
            vec![0.99, 0.01],
            vec![0.98, 0.02],
            vec![0.0, 1.0],
            vec![0.01, 0.99],
        ];
        let picked = k_centre(&[0, 1, 2, 3, 4], &e, &[], 2);
        assert_eq!(picked[0], 0);
        assert!(picked[1] >= 3, "{picked:?}");
        // An already-labelled centre in cluster B pushes the first pick to cluster A.
        let picked = k_centre(&[3, 4, 0], &e, &[vec![0.0, 1.0]], 1);
        assert_eq!(picked, vec![0]);
    }
}
