//! The eval job: load the test items and students, run the students (timed), score every
//! option, price it, pick a cascade threshold and write the report. Students are reached only
//! through the [`Student`] trait, so any kind (or a test double) can be evaluated.

use crate::answer_space::AnswerSpace;
pub use crate::answers::label_map;
use crate::answers::Answers;
use crate::cascade::{self, CascadeItem, Floor, FloorMetric, DEFAULT_AGREEMENT_FLOOR};
use crate::cost::{self, HardwarePrices, DAYS_PER_MONTH};
use crate::data::{self, PredictionLine, StoredPrediction, TestItems};
use crate::error::{EvalError, Result};
use crate::metrics::Quality;
use crate::open_set;
use crate::report::{
    html, markdown, summary_text, CascadeReport, EvalReport, OptionCost, OptionKind, OptionReport,
    Settings, TeacherCostInfo, TestInfo, FORMAT_VERSION,
};
use distill_core::fsutil::write_atomic;
use distill_core::TaskSpec;
use distill_train::student::Student;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// Everything `distill eval` can be asked; [`EvalOptions::new`] gives the CLI's defaults.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Student model directories.
    pub models: Vec<PathBuf>,
    /// Hosted models to evaluate as students, as `provider:model`.
    pub api: Vec<String>,
    /// Test file; the spec's `input.test_path` when `None`.
    pub test: Option<PathBuf>,
    /// Teacher JSONL for the test items (from `distill teach` on the test file).
    pub teacher_labels: Option<PathBuf>,
    /// Replay the students' answers from a `predictions.jsonl` instead of running models.
    pub predictions: Option<PathBuf>,
    pub out: PathBuf,
    pub volume_per_day: f64,
    pub floor: Option<(FloorMetric, f64)>,
    pub calibration_fraction: f64,
    pub hardware: HardwarePrices,
    /// Price the teacher as this model (e.g. the sim-teacher as `gpt-4o`).
    pub teacher_price_model: Option<String>,
    /// A price-table override file.
    pub prices: Option<PathBuf>,
    /// The spend ledger; absent or missing file = no rows.
    pub ledger: Option<PathBuf>,
    /// Response cache for `--api` students, so a re-run pays nothing; `None` disables it.
    pub cache: Option<PathBuf>,
    /// Concurrent requests per `--api` student.
    pub api_concurrency: usize,
    pub seed: u64,
    /// `auto`, `cpu`, `cuda`, `cuda:N`.
    pub device: String,
    pub threads: Option<usize>,
    pub batch_size: usize,
    /// Single-request calls timed per student for the latency percentiles.
    pub latency_samples: usize,
    pub progress: bool,
    /// Replace `out` even when it is not a distill eval directory.
    pub force: bool,
    /// Files of inputs known to be out of scope (texts, or `distill teach`'s dataset of them)
    /// for an open-set task: appended to the test items with the out-of-scope label as gold.
    pub out_of_scope: Vec<PathBuf>,
    /// Out-of-scope share of the traffic to evaluate and choose the cascade on; the files'
    /// own ratio when `None`.
    pub oos_share: Option<f64>,
    /// Charge each student only for the examples it was trained on (at the ledger's mean $ per
    /// label), not for everything the ledger shows was labelled: learning-curve points ask what
    /// labelling that many would have cost.
    pub labelling_per_example: bool,
    /// A learning curve to carry into the report ([`crate::curve::run_curve`]).
    pub curve: Option<crate::curve::Curve>,
}

impl EvalOptions {
    pub fn new(out: impl Into<PathBuf>) -> Self {
        Self {
            models: vec![],
            api: vec![],
            test: None,
            teacher_labels: None,
            predictions: None,
            out: out.into(),
            volume_per_day: 10_000.0,
            floor: None,
            calibration_fraction: 0.3,
            hardware: HardwarePrices::default(),
            teacher_price_model: None,
            prices: None,
            ledger: None,
            cache: None,
            api_concurrency: 16,
            seed: 0,
            device: "cpu".into(),
            threads: None,
            batch_size: 64,
            latency_samples: 200,
            progress: false,
            force: false,
            out_of_scope: Vec::new(),
            oos_share: None,
            labelling_per_example: false,
            curve: None,
        }
    }

    fn validate(&self) -> Result<()> {
        self.hardware.validate()?;
        if !(self.volume_per_day.is_finite() && self.volume_per_day > 0.0) {
            return Err(EvalError::Invalid(format!(
                "--volume must be a number of requests per day above 0, got {}",
                self.volume_per_day
            )));
        }
        if !(self.calibration_fraction > 0.0 && self.calibration_fraction < 1.0) {
            return Err(EvalError::Invalid(format!(
                "--calibration-fraction must be between 0 and 1 (exclusive), got {}",
                self.calibration_fraction
            )));
        }
        if self.batch_size == 0 {
            return Err(EvalError::Invalid("batch size must be > 0".into()));
        }
        distill_core::fsutil::check_output_dir(
            &self.out,
            distill_core::fsutil::EVAL_DIR,
            self.force,
        )?;
        Ok(())
    }
}

/// A student to evaluate: its display name (the key in `predictions.jsonl`), where it came
/// from, and the model.
pub struct NamedStudent {
    pub name: String,
    pub path: Option<PathBuf>,
    pub student: Box<dyn Student>,
}

pub struct EvalOutcome {
    pub report: EvalReport,
    /// The summary table as aligned text (what the CLI prints).
    pub summary: String,
    pub out: PathBuf,
}

impl EvalOutcome {
    pub fn report_md(&self) -> PathBuf {
        self.out.join("report.md")
    }
    pub fn report_html(&self) -> PathBuf {
        self.out.join("report.html")
    }
    pub fn metrics_json(&self) -> PathBuf {
        self.out.join("metrics.json")
    }
}

/// Unique, readable option names from model paths (`models/a` → `a`).
pub fn model_names(paths: &[PathBuf]) -> Vec<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    paths
        .iter()
        .map(|p| {
            let base = p
                .file_name()
                .and_then(|s| s.to_str())
                .filter(|s| !s.is_empty())
                .unwrap_or("model")
                .to_string();
            let n = seen.entry(base.clone()).or_insert(0);
            *n += 1;
            if *n == 1 {
                base
            } else {
                format!("{base}-{n}")
            }
        })
        .collect()
}

/// Evaluates the students in `opts.models` (loaded from disk) or replays `opts.predictions`.
pub fn run_eval(spec: &TaskSpec, opts: &EvalOptions) -> Result<EvalOutcome> {
    opts.validate()?;
    let mut students = Vec::new();
    let mut resolved = opts.clone();
    if !opts.models.is_empty() {
        let device = distill_train::select_device(&opts.device)?;
        // `auto` becomes what it picked, so the hardware price matches the device that ran.
        resolved.device = distill_train::device::device_name(&device);
        for (path, name) in opts.models.iter().zip(model_names(&opts.models)) {
            let student = distill_train::load_student(path, &device)?;
            students.push(NamedStudent {
                name,
                path: Some(path.clone()),
                student,
            });
        }
    }
    run_eval_with(spec, &resolved, students)
}

/// Evaluates already-loaded students (and/or a replayed predictions file).
pub fn run_eval_with(
    spec: &TaskSpec,
    opts: &EvalOptions,
    students: Vec<NamedStudent>,
) -> Result<EvalOutcome> {
    opts.validate()?;
    let api_students = opts
        .api
        .iter()
        .map(|a| crate::api::ApiStudentSpec::parse(a))
        .collect::<Result<Vec<_>>>()?;
    let mut warnings: Vec<String> = Vec::new();
    let labels = &spec.labels;
    let space = AnswerSpace::new(labels);
    if opts.oos_share.is_some() && opts.out_of_scope.is_empty() && labels.out_of_scope.is_none() {
        return Err(EvalError::Invalid(
            "--oos-share needs out-of-scope items: an open-set task (labels.out_of_scope) and \
             --out-of-scope FILE"
                .into(),
        ));
    }

    // 1. The test items.
    let (mut items, replayed) = match &opts.predictions {
        Some(p) => {
            let (items, replayed) = data::load_predictions(&space, p)?;
            (items, replayed)
        }
        None => {
            let path = opts
                .test
                .clone()
                .or_else(|| spec.input.test_path.clone())
                .ok_or_else(|| {
                    EvalError::Invalid(format!(
                        "no test file: pass --test FILE or set input.test_path in {}",
                        spec.path.display()
                    ))
                })?;
            (data::load_test(spec, &space, &path)?, Vec::new())
        }
    };
    if let Some(t) = &opts.teacher_labels {
        data::attach_teacher_labels(&mut items, &space, t)?;
    }
    let oos_label = labels.out_of_scope_index();
    if !opts.out_of_scope.is_empty() {
        let Some(oos) = oos_label else {
            return Err(EvalError::Invalid(format!(
                "--out-of-scope needs an open-set task: set labels.out_of_scope (e.g. \"none\") \
                 in {}",
                spec.path.display()
            )));
        };
        for p in &opts.out_of_scope {
            let extra = data::load_out_of_scope(spec, &space, p, oos)?;
            if extra.n_teacher() == 0 && items.n_teacher() > 0 {
                warnings.push(format!(
                    "{}: no teacher answers for these out-of-scope inputs (pass the output of \
                     `distill teach --input {}` instead): escalating one counts as a teacher error",
                    p.display(),
                    p.display()
                ));
            }
            items.extend(extra);
        }
    }
    if students.is_empty() && replayed.is_empty() && api_students.is_empty() && opts.curve.is_none()
    {
        return Err(EvalError::Invalid(
            "nothing to evaluate: pass at least one --model (or --api)".into(),
        ));
    }
    let n = items.len();
    let has_gold = items.n_gold() > 0;
    let has_teacher = items.n_teacher() > 0;
    if !has_gold && !has_teacher {
        warnings.push(
            "the test file has no gold labels and no teacher labels were given (--teacher-labels): \
             neither accuracy nor agreement can be measured; only cost and speed are reported"
                .into(),
        );
    } else if !has_gold {
        warnings.push(
            "the test file has no gold labels: accuracy cannot be measured; quality is agreement \
             with the teacher's labels"
                .into(),
        );
    } else if !has_teacher {
        warnings.push(
            "no teacher labels for the test items (--teacher-labels): agreement with the teacher, \
             the teacher's own accuracy and the cascade cannot be measured"
                .into(),
        );
    }
    if has_teacher && items.n_teacher() < n {
        warnings.push(format!(
            "{} of {} test items have no teacher label (failed, invalid or missing): they are left \
             out of agreement, and count as teacher errors in the cascade",
            n - items.n_teacher(),
            n
        ));
    }

    // 2. Prices and the ledger.
    let pricing = crate::pricing::price_teacher(spec, opts, &items, &space, &mut warnings)?;
    let teacher_rt = pricing.per_request;

    // 3. Answers: teacher, students, replays.
    let mut answers = crate::answers::gather(
        spec,
        opts,
        &items,
        &pricing,
        &students,
        &api_students,
        &space,
        replayed,
        &mut warnings,
    )?;

    // 4. The population evaluated (the stated out-of-scope share of the traffic, for an
    // open-set task), and cascades on a seeded calibration split of it.
    let is_oos: Vec<bool> = items
        .gold
        .iter()
        .map(|g| oos_label.is_some() && *g == oos_label)
        .collect();
    let n_oos = is_oos.iter().filter(|&&o| o).count();
    let (population, share, share_source) = match opts.oos_share {
        Some(share) if n_oos > 0 && n_oos < n => (
            open_set::mix(&is_oos, share, opts.seed)?,
            share,
            "--oos-share",
        ),
        _ => (
            (0..n).collect::<Vec<usize>>(),
            n_oos as f64 / n.max(1) as f64,
            "as in the test files",
        ),
    };
    let (cal_pos, held_pos) =
        cascade::split(population.len(), opts.calibration_fraction, opts.seed);
    let cal_idx: Vec<usize> = cal_pos.iter().map(|&k| population[k]).collect();
    let held_idx: Vec<usize> = held_pos.iter().map(|&k| population[k]).collect();
    let mut split_of = vec!["not sampled"; n];
    for &i in &held_idx {
        split_of[i] = "held_out";
    }
    for &i in &cal_idx {
        split_of[i] = "calibration";
    }
    let floor = resolve_floor(opts, &items, &cal_idx)?;
    let mut cascades: Vec<CascadeReport> = Vec::new();
    let mut cascade_answers: Vec<Answers> = Vec::new();
    if has_teacher {
        for a in answers.iter().filter(|a| a.kind == OptionKind::Student) {
            let Some(conf) = &a.confidence else { continue };
            let reference = |i: usize| match floor.metric {
                FloorMetric::Accuracy => items.gold[i],
                FloorMetric::Agreement => items.teacher[i],
            };
            let to_items = |idx: &[usize]| -> Vec<CascadeItem> {
                idx.iter()
                    .filter_map(|&i| {
                        let r = reference(i)?;
                        let s = a.labels[i]?;
                        Some(CascadeItem {
                            confidence: conf[i],
                            student_right: s == r,
                            teacher_right: items.teacher[i] == Some(r),
                        })
                    })
                    .collect()
            };
            let choice = cascade::choose(
                &to_items(&cal_idx),
                &to_items(&held_idx),
                floor.value,
                a.per_request,
                Some(teacher_rt),
            );
            let escalated: Vec<bool> = conf.iter().map(|&c| c < choice.threshold).collect();
            let labels_mix: Vec<Option<usize>> = (0..n)
                .map(|i| {
                    if escalated[i] {
                        items.teacher[i]
                    } else {
                        a.labels[i]
                    }
                })
                .collect();
            cascade_answers.push(Answers {
                name: format!("cascade:{}", a.name),
                kind: OptionKind::Cascade,
                source: a.source.clone(),
                labels: labels_mix,
                confidence: None,
                per_request: choice.held_out.cost_per_request_usd,
                per_request_basis: format!(
                    "student + {} escalated × teacher (held-out)",
                    crate::report::fmt::pct(choice.held_out.escalated_fraction)
                ),
                escalated: Some(escalated),
                runtime: None,
                one_time: a.one_time.clone(),
                held_out_only: true,
                student_per_request: a.per_request,
            });
            let model_sha256 = match &a.source {
                Some(src) if Path::new(src).is_dir() => {
                    Some(distill_train::model_fingerprint(Path::new(src))?)
                }
                _ => None,
            };
            cascades.push(CascadeReport {
                model: a.name.clone(),
                model_path: a.source.clone(),
                model_sha256,
                floor: floor.clone(),
                choice,
            });
        }
    }
    answers.extend(cascade_answers);
    // Recommend by calibration evidence only: met the floor, then cheapest, then fewest escalations.
    let recommended = cascades
        .iter()
        .min_by(|a, b| {
            let key = |c: &CascadeReport| {
                (
                    !c.choice.floor_met_on_calibration,
                    c.choice
                        .calibration
                        .cost_per_request_usd
                        .unwrap_or(f64::MAX),
                    c.choice.calibration.escalated_fraction,
                )
            };
            let (ka, kb) = (key(a), key(b));
            ka.0.cmp(&kb.0)
                .then(ka.1.total_cmp(&kb.1))
                .then(ka.2.total_cmp(&kb.2))
        })
        .cloned();
    if let Some(c) = &recommended {
        let metric = if space.is_sets() {
            format!("exact-set {}", c.floor.metric.as_str())
        } else {
            c.floor.metric.as_str().to_string()
        };
        if !c.choice.floor_met_on_calibration {
            warnings.push(format!(
                "no cascade threshold met the floor ({} ≥ {}) on the calibration split: the \
                 recommended threshold escalates every request",
                metric,
                crate::report::fmt::pct(c.floor.value)
            ));
        } else if !c.choice.floor_held {
            warnings.push(format!(
                "the cascade's floor ({} ≥ {}) did NOT hold on the held-out split ({})",
                metric,
                crate::report::fmt::pct(c.floor.value),
                crate::report::fmt::pct(c.choice.held_out.quality.value)
            ));
        }
    }

    // 5. Score and price every option.
    let options: Vec<OptionReport> = answers
        .iter()
        .enumerate()
        .map(|(k, a)| {
            let scope: Vec<usize> = if a.held_out_only {
                held_idx.clone()
            } else {
                population.clone()
            };
            let seed = opts.seed.wrapping_add(k as u64 + 1);
            let score = |reference: &[Option<usize>], name: &str| -> Option<Quality> {
                let mut r = Vec::new();
                let mut p = Vec::new();
                let mut c = Vec::new();
                for &i in &scope {
                    if let (Some(ri), Some(pi)) = (reference[i], a.labels[i]) {
                        r.push(ri);
                        p.push(pi);
                        if let Some(conf) = &a.confidence {
                            c.push(conf[i]);
                        }
                    }
                }
                (!r.is_empty()).then(|| {
                    space.quality(
                        name,
                        &r,
                        &p,
                        a.confidence.as_ref().map(|_| c.as_slice()),
                        seed,
                    )
                })
            };
            let vs_gold = score(&items.gold, "gold");
            let vs_teacher = if matches!(a.kind, OptionKind::Teacher | OptionKind::TeacherBatch) {
                None
            } else {
                score(&items.teacher, "teacher")
            };
            let one_time_usd: f64 = a.one_time.iter().map(|c| c.usd).sum();
            let econ = a
                .per_request
                .map(|p| cost::economics(teacher_rt, p, one_time_usd, opts.volume_per_day));
            let is_teacher = matches!(a.kind, OptionKind::Teacher | OptionKind::TeacherBatch);
            OptionReport {
                name: a.name.clone(),
                kind: a.kind,
                source: a.source.clone(),
                evaluated_on: if a.held_out_only { "held_out" } else { "all" }.into(),
                vs_gold,
                vs_teacher,
                cost: OptionCost {
                    per_request_usd: a.per_request,
                    per_request_basis: a.per_request_basis.clone(),
                    one_time_usd,
                    one_time: a.one_time.clone(),
                    monthly_usd: econ.map(|e| e.monthly_usd),
                    saving: econ.and_then(|e| e.saving),
                    steady_monthly_usd: econ.map(|e| e.steady_monthly_usd),
                    steady_saving: econ.and_then(|e| e.steady_saving),
                    break_even_requests: if is_teacher {
                        None
                    } else {
                        econ.and_then(|e| e.break_even_requests)
                    },
                },
                runtime: a.runtime.clone(),
                escalated_fraction: a.escalated.as_ref().map(|e| {
                    let h: Vec<bool> = held_idx.iter().map(|&i| e[i]).collect();
                    h.iter().filter(|x| **x).count() as f64 / h.len().max(1) as f64
                }),
                // Every item the threshold was not chosen on (all out-of-scope items, not
                // only the sampled ones: recall needs them).
                open_set: oos_label.filter(|_| n_oos > 0).map(|oos| {
                    let scored: Vec<usize> = if a.held_out_only {
                        let cal: HashSet<usize> = cal_idx.iter().copied().collect();
                        (0..n).filter(|i| !cal.contains(i)).collect()
                    } else {
                        (0..n).collect()
                    };
                    open_set::score(
                        &items.gold,
                        &a.labels,
                        &scored,
                        oos,
                        share,
                        a.escalated.as_deref(),
                        a.per_request,
                        teacher_rt,
                        a.student_per_request,
                    )
                }),
            }
        })
        .collect();
    let quantized = crate::quantized::compare(
        &students,
        &answers,
        &items.gold,
        &items.teacher,
        &population,
        opts.seed,
    );
    let partial = !warnings.is_empty()
        && (!has_gold
            || !has_teacher
            || !pricing.priced()
            || options.iter().any(|o| o.cost.per_request_usd.is_none()));

    let report = EvalReport {
        format_version: FORMAT_VERSION,
        task: spec.name.clone(),
        created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        distill_version: env!("CARGO_PKG_VERSION").into(),
        partial,
        warnings,
        test: TestInfo {
            path: items.path.display().to_string(),
            n,
            n_gold: items.n_gold(),
            teacher_labels: items
                .teacher_source
                .as_ref()
                .map(|p| p.display().to_string()),
            n_teacher: items.n_teacher(),
            n_calibration: cal_idx.len(),
            n_held_out: held_idx.len(),
        },
        settings: Settings {
            volume_per_day: opts.volume_per_day,
            days_per_month: DAYS_PER_MONTH,
            core_hour_usd: opts.hardware.core_hour_usd,
            gpu_hour_usd: opts.hardware.gpu_hour_usd,
            teacher_price_model: pricing.price_model.clone(),
            price_version: pricing.table.version.clone(),
            seed: opts.seed,
            calibration_fraction: opts.calibration_fraction,
        },
        teacher: TeacherCostInfo {
            model: spec.teacher.model.clone(),
            price_model: pricing.price_model,
            per_request_usd: teacher_rt,
            per_request_batch_usd: pricing.per_request_batch,
            mean_prompt_tokens: pricing.mean_prompt,
            mean_completion_tokens: pricing.mean_completion,
            basis: pricing.basis.into(),
            basis_detail: pricing.basis_detail,
        },
        options,
        cascade: recommended,
        cascades,
        open_set: oos_label
            .filter(|_| n_oos > 0)
            .map(|oos| open_set::OpenSetInfo {
                label: space.name(oos),
                share,
                share_source: share_source.into(),
                n_in_scope: n - n_oos,
                n_out_of_scope: n_oos,
                population_in_scope: population.iter().filter(|&&i| !is_oos[i]).count(),
                population_out_of_scope: population.iter().filter(|&&i| is_oos[i]).count(),
            }),
        curve: opts.curve.clone(),
        quantized,
    };

    // 6. Write everything, each file atomically, only after everything was computed.
    let predictions = prediction_lines(&items, &answers, &split_of, &space);
    write_outputs(&opts.out, opts.force, &report, &predictions)?;
    Ok(EvalOutcome {
        summary: summary_text(&report),
        report,
        out: opts.out.clone(),
    })
}

fn resolve_floor(opts: &EvalOptions, items: &TestItems, cal_idx: &[usize]) -> Result<Floor> {
    let has_gold = items.n_gold() > 0;
    match opts.floor {
        Some((FloorMetric::Accuracy, _)) if !has_gold => Err(EvalError::Invalid(
            "--floor accuracy=… needs gold labels in the test file; use --floor agreement=… to \
             compare with the teacher's labels"
                .into(),
        )),
        Some((metric, value)) => Ok(Floor {
            metric,
            value,
            source: "--floor".into(),
        }),
        None => {
            let scored: Vec<bool> = cal_idx
                .iter()
                .filter_map(|&i| items.gold[i].map(|g| items.teacher[i] == Some(g)))
                .collect();
            if has_gold && items.n_teacher() > 0 && !scored.is_empty() {
                let acc = scored.iter().filter(|x| **x).count() as f64 / scored.len() as f64;
                Ok(Floor {
                    metric: FloorMetric::Accuracy,
                    value: acc,
                    source: "the teacher's own accuracy on the calibration split".into(),
                })
            } else {
                Ok(Floor {
                    metric: FloorMetric::Agreement,
                    value: DEFAULT_AGREEMENT_FLOOR,
                    source: "default".into(),
                })
            }
        }
    }
}

fn prediction_lines(
    items: &TestItems,
    answers: &[Answers],
    split_of: &[&str],
    space: &AnswerSpace,
) -> String {
    let name = |i: Option<usize>| i.map(|i| space.name(i));
    let mut out = String::new();
    for i in 0..items.len() {
        let mut predictions = BTreeMap::new();
        for a in answers {
            if a.kind == OptionKind::TeacherBatch {
                continue;
            }
            if let Some(l) = a.labels[i] {
                predictions.insert(
                    a.name.clone(),
                    StoredPrediction {
                        label: space.name(l),
                        confidence: a.confidence.as_ref().map(|c| c[i]),
                        escalated: a.escalated.as_ref().map(|e| e[i]),
                    },
                );
            }
        }
        let line = PredictionLine {
            id: items.ids[i].clone(),
            text: items.texts[i].clone(),
            gold: name(items.gold[i]),
            teacher: name(items.teacher[i]),
            split: split_of[i].into(),
            predictions,
        };
        if let Ok(s) = serde_json::to_string(&line) {
            out.push_str(&s);
            out.push('\n');
        }
    }
    out
}

/// Writes the four files as one directory that replaces `out` whole, so a report never sits
/// beside another run's metrics.
fn write_outputs(out: &Path, force: bool, report: &EvalReport, predictions: &str) -> Result<()> {
    let md = markdown::render(report);
    let page = html::render(report);
    distill_core::fsutil::replace_dir(out, distill_core::fsutil::EVAL_DIR, force, |dir| {
        write_atomic(dir.join("predictions.jsonl"), predictions.as_bytes())?;
        write_atomic(dir.join("report.md"), md.as_bytes())?;
        write_atomic(dir.join("report.html"), page.as_bytes())?;
        write_atomic(dir.join("metrics.json"), report.to_json().as_bytes())?;
        Ok::<(), EvalError>(())
    })
}
