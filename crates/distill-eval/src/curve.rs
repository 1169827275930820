//! Learning curves: how good a student and its cascade get, and what they cost, as the number of
//! teacher labels grows, so "how many examples do I need to label?" has a measured answer.
//!
//! Each point trains the chosen student kind on the first `n` examples of the teacher dataset
//! (in its recorded order, which is the selection order when the labels were chosen actively, or
//! in a seeded random order) and evaluates it exactly as `distill eval` evaluates any model: same
//! test set, same calibration split, same floor, with the labelling charged for those `n` labels
//! only. Several seeds give each size a spread. The cheapest size that is *sufficient* is marked:
//! its cascade's held-out quality, averaged over the seeds, meets the floor while escalating on
//! average no more than [`ESCALATION_SLACK`] above the largest size's cascade. (The mean, not
//! every seed: whether one seed's held-out split lands a hair above or below a floor set at the
//! teacher's own accuracy is noise; how many seeds held it is reported beside.)

use crate::error::{EvalError, Result};
use crate::report::OptionKind;
use crate::run::{run_eval_with, EvalOptions, NamedStudent};
use distill_core::TaskSpec;
use distill_train::student::{Student, StudentKind, TrainData, TrainOptions};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

/// How far above the largest size's escalation a sufficient size's cascade may escalate.
pub const ESCALATION_SLACK: f64 = 0.02;

/// Which labels a point of `n` uses: the dataset's first `n` as recorded, or a seeded shuffle's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CurveOrder {
    /// The file's order: for a dataset labelled in rounds of active selection, its selection order.
    Recorded,
    /// A fresh seeded shuffle per seed (what labelling a random sample would have given).
    Random,
}

impl std::str::FromStr for CurveOrder {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "recorded" => Ok(Self::Recorded),
            "random" => Ok(Self::Random),
            _ => Err(format!("`{s}` is not an order: recorded or random")),
        }
    }
}

/// One requested size: a number of labels, or all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CurveSize {
    Count(usize),
    All,
}

/// Parses `500,1000,2000,all`.
pub fn parse_sizes(s: &str) -> std::result::Result<Vec<CurveSize>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if part.eq_ignore_ascii_case("all") {
            out.push(CurveSize::All);
            continue;
        }
        match part.replace('_', "").parse::<usize>() {
            Ok(n) if n >= 2 => out.push(CurveSize::Count(n)),
            _ => {
                return Err(format!(
                    "`{part}` is not a number of labels (2 or more) or `all`"
                ))
            }
        }
    }
    if out.is_empty() {
        return Err("no sizes: give e.g. 500,1000,2000,all".into());
    }
    Ok(out)
}

/// What to draw the curve of.
#[derive(Debug, Clone)]
pub struct CurveOptions {
    /// The teacher dataset (or a labelled CSV/JSONL) whose prefixes are trained on.
    pub train: PathBuf,
    pub sizes: Vec<CurveSize>,
    pub student: StudentKind,
    /// Seeds per size (the subset, the dev split and the training seed all follow it).
    pub seeds: usize,
    pub order: CurveOrder,
    pub dev_fraction: f64,
    /// Device, threads, base encoder, embedding cache; `out` and `seed` are set per point.
    pub train_opts: TrainOptions,
}

/// One trained-and-evaluated student.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    pub n_labels: usize,
    pub seed: u64,
    pub labelling_usd: f64,
    pub training_usd: f64,
    /// The student alone: accuracy against gold, else agreement with the teacher.
    pub student_quality: Option<f64>,
    /// The cascade on the held-out split (what `distill serve` would do with this student).
    pub cascade_quality: Option<f64>,
    pub escalated: Option<f64>,
    pub floor_held: bool,
    /// The cascade's month 1 (one-time costs included) and every later month, and their savings.
    pub month1_usd: Option<f64>,
    pub saving: Option<f64>,
    pub steady_monthly_usd: Option<f64>,
    pub steady_saving: Option<f64>,
    pub break_even_requests: Option<f64>,
}

/// Mean, lowest and highest over the seeds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    fn of(xs: impl IntoIterator<Item = Option<f64>>) -> Option<Self> {
        let xs: Vec<f64> = xs.into_iter().collect::<Option<Vec<_>>>()?;
        if xs.is_empty() {
            return None;
        }
        Some(Self {
            mean: xs.iter().sum::<f64>() / xs.len() as f64,
            min: xs.iter().copied().fold(f64::INFINITY, f64::min),
            max: xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        })
    }
}

/// One size, over its seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurveRow {
    pub n_labels: usize,
    pub labelling_usd: f64,
    pub student_quality: Option<Spread>,
    pub cascade_quality: Option<Spread>,
    pub escalated: Option<Spread>,
    /// Seeds whose cascade held the floor on the held-out split.
    pub floor_held: usize,
    pub seeds: usize,
    pub month1_usd: Option<Spread>,
    pub saving: Option<Spread>,
    pub steady_monthly_usd: Option<Spread>,
    pub steady_saving: Option<Spread>,
    pub sufficient: bool,
}

/// The learning curve as `metrics.json` carries it (`curve`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Curve {
    pub student: String,
    pub order: CurveOrder,
    pub seeds: usize,
    pub train: String,
    /// `accuracy` (against gold) or `agreement` (with the teacher).
    pub metric: String,
    /// The cascade's floor (the same for every point) and its metric.
    pub floor: Option<f64>,
    pub floor_metric: Option<String>,
    pub rows: Vec<CurveRow>,
    pub points: Vec<CurvePoint>,
    /// The fewest labels that are sufficient (see `rule`), if any size is.
    pub cheapest_sufficient: Option<usize>,
    pub rule: String,
}

/// What one point's eval says, whatever the task kind: the figures of its [`CurvePoint`] (the
/// size and seed are filled in by [`draw`]) and the metrics they are in.
pub(crate) struct Scored {
    pub(crate) point: CurvePoint,
    /// The student's quality metric (`accuracy`, `agreement`, `span F1`...).
    pub(crate) metric: String,
    /// The cascade's floor and its metric, when the point had a cascade.
    pub(crate) floor: Option<(f64, String)>,
}

/// The loop every kind shares: per seed an example order, per size the prefix handed to
/// `score` (trains and evaluates one student in `work`), progress, then each size summarised
/// and the cheapest sufficient one marked.
pub(crate) fn draw(
    total: usize,
    opts: &CurveOptions,
    progress: bool,
    mut score: impl FnMut(&[usize], u64, &std::path::Path) -> Result<Scored>,
) -> Result<Curve> {
    if opts.seeds == 0 {
        return Err(EvalError::Invalid(
            "--curve-seeds must be at least 1".into(),
        ));
    }
    let mut sizes: Vec<usize> = opts
        .sizes
        .iter()
        .map(|s| match s {
            CurveSize::Count(n) => *n,
            CurveSize::All => total,
        })
        .collect();
    if let Some(&n) = sizes.iter().find(|&&n| n > total) {
        return Err(EvalError::Invalid(format!(
            "--curve asks for {n} labels but {} has {total} labelled examples (use `all`)",
            opts.train.display()
        )));
    }
    sizes.sort_unstable();
    sizes.dedup();

    let work = tempfile::tempdir().map_err(|e| EvalError::Other(format!("temp dir: {e}")))?;
    let what = format!("learning curve ({})", opts.student.as_str());
    let bar =
        crate::answers::progress_bar(progress, (sizes.len() * opts.seeds) as u64, what.clone());
    let mut points = Vec::new();
    let mut metric = "accuracy".to_string();
    let (mut floor, mut floor_metric) = (None, None);
    for seed in 0..opts.seeds as u64 {
        let order = example_order(total, opts.order, seed);
        for &n in &sizes {
            if let Some(b) = &bar {
                b.set_message(format!("{what}: {n} labels, seed {seed}"));
            }
            let point_dir = work.path().join(format!("point-{n}-{seed}"));
            let scored = score(&order[..n], seed, &point_dir)?;
            let _ = std::fs::remove_dir_all(&point_dir);
            metric = scored.metric;
            if let (None, Some((f, m))) = (floor, scored.floor) {
                floor = Some(f);
                floor_metric = Some(m);
            }
            points.push(CurvePoint {
                n_labels: n,
                seed,
                ..scored.point
            });
            if let Some(b) = &bar {
                b.inc(1);
            }
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let rows = summarise(&sizes, &points, opts.seeds, floor);
    let cheapest_sufficient = rows.iter().find(|r| r.sufficient).map(|r| r.n_labels);
    let rule = format!(
        "sufficient: the cascade's held-out {}, averaged over the seeds, meets the floor{} \
         while escalating on average at most {:.0} points more than at the largest size",
        floor_metric.as_deref().unwrap_or(metric.as_str()),
        floor
            .map(|f| format!(" ({:.1}%)", f * 100.0))
            .unwrap_or_default(),
        ESCALATION_SLACK * 100.0
    );
    Ok(Curve {
        student: opts.student.as_str().to_string(),
        order: opts.order,
        seeds: opts.seeds,
        train: opts.train.display().to_string(),
        metric,
        floor,
        floor_metric,
        rows,
        points,
        cheapest_sufficient,
        rule,
    })
}

/// A classification (or multilabel) task's curve: each point trains on the prefix through
/// `distill train`'s own split and is evaluated by [`run_eval_with`] with the labelling
/// charged per example.
pub fn run_curve(spec: &TaskSpec, eval: &EvalOptions, opts: &CurveOptions) -> Result<Curve> {
    if spec.route.is_some() {
        return Err(EvalError::Invalid(
            "--curve is for classification tasks; a route task's routers are compared with \
             `distill eval --model`"
                .into(),
        ));
    }
    if opts.student == StudentKind::Ensemble && spec.labels.is_multilabel() {
        return Err(EvalError::Invalid(
            "--curve-student ensemble averages single-label students; a multilabel task's \
             curve trains `linear` or `encoder-head`"
                .into(),
        ));
    }
    let sources = distill_train::train::TrainSources {
        data: vec![opts.train.clone()],
        out_of_scope: vec![],
    };
    // Every labelled example in the file's order (no dev split yet: each point splits its own).
    let (all, _) = distill_train::train::load_train_sources(spec, &sources, 0.0, 0, None)?;
    let device = distill_train::select_device(&eval.device)?;
    // Every point's encoder-head shares the frozen `--base` encoder: the test set is embedded
    // once for the whole curve, not once per point. (So a later point's timed compute is its
    // head's; the encoder's share of a student's cost, about $0.01 a month at 10k requests a
    // day on a CPU, is left out of those points' month-1 and later-month figures.)
    let memo = Arc::new(distill_train::encoder::head::EmbeddingMemo::default());
    draw(all.train.len(), opts, eval.progress, |picked, seed, dir| {
        let n = picked.len();
        let prefix: Vec<(String, usize)> = picked.iter().map(|&i| all.train[i].clone()).collect();
        let prefix_sets: Option<Vec<Vec<usize>>> = all
            .sets
            .as_ref()
            .map(|s| picked.iter().map(|&i| s.train[i].clone()).collect());
        let present = {
            let mut seen = vec![false; spec.labels.len()];
            match &prefix_sets {
                Some(sets) => sets.iter().flatten().for_each(|&y| seen[y] = true),
                None => prefix.iter().for_each(|(_, y)| seen[*y] = true),
            }
            seen.iter().filter(|s| **s).count()
        };
        if present < 2 {
            return Err(EvalError::Invalid(format!(
                "the first {n} labelled examples of {} hold only one label: a curve point \
                 needs at least two classes (start the curve at a larger size)",
                opts.train.display()
            )));
        }
        // The same seeded, stratified split as `distill train`.
        let examples: Vec<(String, Vec<usize>)> = match &prefix_sets {
            Some(sets) => prefix
                .into_iter()
                .map(|(t, _)| t)
                .zip(sets.clone())
                .collect(),
            None => prefix.into_iter().map(|(t, y)| (t, vec![y])).collect(),
        };
        let (train, dev, sets) = distill_train::train::split_label_sets(
            examples,
            spec.labels.len(),
            prefix_sets.is_some(),
            opts.dev_fraction,
            seed,
        );
        let data = TrainData {
            task: spec.name.clone(),
            labels: spec.labels.clone(),
            train,
            dev,
            sets,
            data_hash: format!("{}:{:?}:{seed}:{n}", all.data_hash, opts.order),
            label_source: all.label_source.clone(),
        };
        let model_dir = dir.join("model");
        let train_one = |kind: StudentKind, out: PathBuf| -> Result<Box<dyn Student>> {
            let mut t = opts.train_opts.clone();
            t.out = out.clone();
            t.seed = 42 + seed;
            t.progress = false;
            t.force = true;
            distill_train::train::train_on(&data, kind, &t)?;
            Ok(match kind {
                StudentKind::EncoderHead => Box::new(
                    distill_train::encoder::head::open(&out, &device, 0)?.with_memo(memo.clone()),
                ),
                _ => distill_train::load_student(&out, &device)?,
            })
        };
        let student: Box<dyn Student> = if opts.student == StudentKind::Ensemble {
            // What the quickstart ships: a linear student and an encoder-head trained on the
            // same prefix, averaged. Its meta (summed training time, label source) is the one
            // `distill ensemble` writes; the members are averaged as loaded, not copied into
            // an ensemble directory (the encoder-head's is the whole encoder, ~90 MB a point).
            let kinds = [StudentKind::Linear, StudentKind::EncoderHead];
            let dirs: Vec<PathBuf> = kinds
                .iter()
                .map(|k| dir.join(format!("member-{}", k.as_str())))
                .collect();
            let members = kinds
                .iter()
                .zip(&dirs)
                .map(|(&k, d)| train_one(k, d.clone()))
                .collect::<Result<Vec<_>>>()?;
            let meta = distill_train::ensemble::describe(&dirs)?;
            Box::new(distill_train::ensemble::EnsembleStudent::from_members(
                meta, members,
            ))
        } else {
            train_one(opts.student, model_dir.clone())?
        };
        let mut e = eval.clone();
        e.out = dir.join("eval");
        e.force = true;
        e.progress = false;
        e.models = vec![];
        e.api = vec![];
        e.latency_samples = 0;
        e.labelling_per_example = true;
        e.curve = None;
        let outcome = run_eval_with(
            spec,
            &e,
            vec![NamedStudent {
                name: "student".into(),
                path: Some(model_dir.clone()),
                student,
            }],
        )?;
        let r = outcome.report;
        let find = |kind: OptionKind| r.options.iter().find(|o| o.kind == kind);
        let student_row = find(OptionKind::Student);
        let cascade = r.cascades.first();
        let priced = find(OptionKind::Cascade).or(student_row);
        let one_time = |what: &str| {
            student_row
                .map(|o| {
                    o.cost
                        .one_time
                        .iter()
                        .filter(|c| c.what == what)
                        .map(|c| c.usd)
                        .sum()
                })
                .unwrap_or(0.0)
        };
        Ok(Scored {
            metric: r.headline_metric().to_string(),
            floor: cascade.map(|c| (c.floor.value, c.floor.metric.as_str().to_string())),
            point: CurvePoint {
                n_labels: n,
                seed,
                labelling_usd: one_time("labelling"),
                training_usd: one_time("training"),
                student_quality: student_row
                    .and_then(|o| o.headline())
                    .map(|q| q.accuracy.value),
                cascade_quality: cascade.map(|c| c.choice.held_out.quality.value),
                escalated: cascade.map(|c| c.choice.held_out.escalated_fraction),
                floor_held: cascade.is_some_and(|c| c.choice.floor_held),
                month1_usd: priced.and_then(|o| o.cost.monthly_usd),
                saving: priced.and_then(|o| o.cost.saving),
                steady_monthly_usd: priced.and_then(|o| o.cost.steady_monthly_usd),
                steady_saving: priced.and_then(|o| o.cost.steady_saving),
                break_even_requests: priced.and_then(|o| o.cost.break_even_requests),
            },
        })
    })
}

/// Example indices in the order a point takes its prefix from.
fn example_order(total: usize, order: CurveOrder, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..total).collect();
    if order == CurveOrder::Random {
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(0xc0ffee ^ seed);
        idx.shuffle(&mut rng);
    }
    idx
}

/// Per size: the spread over seeds, and whether the size is sufficient.
fn summarise(
    sizes: &[usize],
    points: &[CurvePoint],
    seeds: usize,
    floor: Option<f64>,
) -> Vec<CurveRow> {
    let mut rows: Vec<CurveRow> = sizes
        .iter()
        .map(|&n| {
            let ps: Vec<&CurvePoint> = points.iter().filter(|p| p.n_labels == n).collect();
            let spread =
                |f: &dyn Fn(&CurvePoint) -> Option<f64>| Spread::of(ps.iter().map(|p| f(p)));
            CurveRow {
                n_labels: n,
                labelling_usd: ps.iter().map(|p| p.labelling_usd).sum::<f64>()
                    / ps.len().max(1) as f64,
                student_quality: spread(&|p| p.student_quality),
                cascade_quality: spread(&|p| p.cascade_quality),
                escalated: spread(&|p| p.escalated),
                floor_held: ps.iter().filter(|p| p.floor_held).count(),
                seeds,
                month1_usd: spread(&|p| p.month1_usd),
                saving: spread(&|p| p.saving),
                steady_monthly_usd: spread(&|p| p.steady_monthly_usd),
                steady_saving: spread(&|p| p.steady_saving),
                sufficient: false,
            }
        })
        .collect();
    let full = rows.last().and_then(|r| r.escalated).map(|s| s.mean);
    for r in &mut rows {
        r.sufficient = match (r.cascade_quality, r.escalated, full, floor) {
            (Some(q), Some(e), Some(f), Some(floor)) => {
                q.mean >= floor && e.mean <= f + ESCALATION_SLACK + 1e-12
            }
            _ => false,
        };
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_bad_ones_are_named() {
        assert_eq!(
            parse_sizes("500, 1_000,all").unwrap(),
            vec![
                CurveSize::Count(500),
                CurveSize::Count(1000),
                CurveSize::All
            ]
        );
        assert!(parse_sizes("500,lots").unwrap_err().contains("`lots`"));
        assert!(parse_sizes("1").is_err());
        assert!(parse_sizes("").is_err());
    }

    fn point(n: usize, seed: u64, quality: f64, esc: f64) -> CurvePoint {
        CurvePoint {
            n_labels: n,
            seed,
            labelling_usd: n as f64 * 0.001,
            training_usd: 0.0,
            student_quality: Some(0.8),
            cascade_quality: Some(quality),
            escalated: Some(esc),
            floor_held: quality >= 0.94,
            month1_usd: None,
            saving: None,
            steady_monthly_usd: None,
            steady_saving: None,
            break_even_requests: None,
        }
    }

    #[test]
    fn the_cheapest_sufficient_size_meets_the_floor_on_average_near_full_escalation() {
        let pts = vec![
            // 100: below the floor on average.
            point(100, 0, 0.945, 0.30),
            point(100, 1, 0.925, 0.30),
            // 200: above it, but escalates 5 points more than the full size.
            point(200, 0, 0.95, 0.17),
            point(200, 1, 0.95, 0.17),
            // 400: above it on average (one seed a hair under), within 2 points.
            point(400, 0, 0.95, 0.13),
            point(400, 1, 0.939, 0.14),
            point(800, 0, 0.96, 0.12),
            point(800, 1, 0.96, 0.12),
        ];
        let rows = summarise(&[100, 200, 400, 800], &pts, 2, Some(0.94));
        let suff: Vec<usize> = rows
            .iter()
            .filter(|r| r.sufficient)
            .map(|r| r.n_labels)
            .collect();
        assert_eq!(suff, vec![400, 800]);
        assert_eq!(rows[0].floor_held, 1);
        assert_eq!(rows[2].floor_held, 1);
        // Without a floor (no teacher labels on the test set) nothing can be called sufficient.
        assert!(summarise(&[100, 800], &pts, 2, None)
            .iter()
            .all(|r| !r.sufficient));
        let e = rows[2].escalated.unwrap();
        assert!((e.mean - 0.135).abs() < 1e-12 && e.min == 0.13 && e.max == 0.14);
        assert!((rows[1].labelling_usd - 0.2).abs() < 1e-12);
    }

    #[test]
    fn random_order_is_a_seeded_permutation_and_recorded_keeps_the_file() {
        let a = example_order(50, CurveOrder::Random, 1);
        assert_eq!(a, example_order(50, CurveOrder::Random, 1));
        assert_ne!(a, example_order(50, CurveOrder::Random, 2));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_eq!(
            example_order(5, CurveOrder::Recorded, 3),
            vec![0, 1, 2, 3, 4]
        );
    }
}
