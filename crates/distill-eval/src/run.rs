//! The eval job: load the test items and students, run the students (timed), score every
//! option, price it, pick a cascade threshold and write the report. Students are reached only
//! through the [`Student`] trait, so any kind (or a test double) can be evaluated.

use crate::cascade::{self, CascadeItem, Floor, FloorMetric, DEFAULT_AGREEMENT_FLOOR};
use crate::cost::{self, HardwarePrices, DAYS_PER_MONTH};
use crate::data::{self, PredictionLine, StoredPrediction, TestItems};
use crate::error::{EvalError, Result};
use crate::metrics::{self, Quality};
use crate::open_set;
use crate::report::{
    html, markdown, summary_text, CascadeReport, CostItem, EvalReport, OptionCost, OptionKind,
    OptionReport, Runtime, Settings, TeacherCostInfo, TestInfo, FORMAT_VERSION,
};
use distill_core::fsutil::write_atomic;
use distill_core::ledger::{Ledger, LedgerRow};
use distill_core::prices::PriceTable;
use distill_core::{TaskSpec, Usage};
use distill_train::student::{ModelMeta, Student};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

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

/// One option's per-item answers plus what it costs.
struct Answers {
    name: String,
    kind: OptionKind,
    source: Option<String>,
    labels: Vec<Option<usize>>,
    confidence: Option<Vec<f64>>,
    escalated: Option<Vec<bool>>,
    runtime: Option<Runtime>,
    per_request: Option<f64>,
    per_request_basis: String,
    one_time: Vec<CostItem>,
    held_out_only: bool,
    /// Cascades: the student's own per-request cost (for pricing out-of-scope traffic).
    student_per_request: Option<f64>,
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
            let (items, replayed) = data::load_predictions(labels, p)?;
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
            (data::load_test(spec, &path)?, Vec::new())
        }
    };
    if let Some(t) = &opts.teacher_labels {
        data::attach_teacher_labels(&mut items, labels, t)?;
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
            let extra = data::load_out_of_scope(spec, p, oos)?;
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
    if students.is_empty() && replayed.is_empty() && api_students.is_empty() {
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
    let table = match &opts.prices {
        Some(p) => PriceTable::with_overrides(p)?,
        None => PriceTable::builtin(),
    };
    let price_model = opts
        .teacher_price_model
        .clone()
        .unwrap_or_else(|| spec.teacher.model.clone());
    let price = table.get(&price_model).cloned().ok_or_else(|| {
        EvalError::Invalid(format!(
            "no price for `{price_model}` in the price table (version {}); pass \
             --teacher-price-model with a known model (e.g. gpt-4o) or --prices FILE",
            table.version
        ))
    })?;
    let ledger_rows: Vec<LedgerRow> = match &opts.ledger {
        Some(p) if p.exists() => Ledger::open(p)?
            .rows_for_task(&spec.name)?
            .into_iter()
            .filter(|r| r.source == "teach")
            .collect(),
        _ => vec![],
    };
    let test_hashes: HashSet<&str> = items
        .teacher_hash
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    // Calls whose outcome was never recorded (a killed run) carry estimated tokens: they count
    // towards what labelling cost, not towards the measured per-request price.
    let (test_rows, train_rows): (Vec<&LedgerRow>, Vec<&LedgerRow>) = ledger_rows
        .iter()
        .partition(|r| test_hashes.contains(r.request_hash.as_str()));
    let measured = |rows: &[&LedgerRow]| -> Vec<Usage> {
        rows.iter()
            .filter(|r| r.status != distill_core::ledger::IN_FLIGHT)
            .map(|r| r.usage)
            .collect()
    };
    let record_usages: Vec<Usage> = items.teacher_usage.iter().flatten().copied().collect();
    let (test_usages, train_usages) = (measured(&test_rows), measured(&train_rows));
    let (usages, basis, basis_detail): (Vec<Usage>, &str, String) = if !test_usages.is_empty() {
        let n = test_usages.len();
        (
            test_usages,
            "ledger",
            format!("mean of {n} ledger calls for the test items, real tokens × price"),
        )
    } else if !train_usages.is_empty() {
        let n = train_usages.len();
        (
            train_usages,
            "ledger",
            format!(
                "mean of {n} ledger calls for task `{}` (same prompt), real tokens × price",
                spec.name
            ),
        )
    } else if !record_usages.is_empty() {
        (
            record_usages.clone(),
            "teacher records",
            format!(
                "mean usage of {} teacher records for the test items",
                record_usages.len()
            ),
        )
    } else {
        warnings.push(format!(
            "the ledger has no rows for task `{}`: the teacher's cost per request is estimated from \
             tiktoken counts of the prompt, and the labelling cost from the number of training examples",
            spec.name
        ));
        let texts: Vec<&str> = items.texts.iter().map(String::as_str).collect();
        let replies: Vec<Option<&str>> = items
            .teacher
            .iter()
            .zip(&items.gold)
            .map(|(t, g)| t.or(*g).map(|i| labels.names[i].as_str()))
            .collect();
        (
            cost::estimate_usages(spec, &price_model, &texts, &replies)?,
            "estimated",
            "tiktoken count of the rendered prompt and a {\"label\": ...} reply; the provider's \
             response-format overhead is not counted"
                .to_string(),
        )
    };
    let (teacher_rt, teacher_batch) = cost::mean_cost(&usages, &price);
    let (mean_prompt, mean_completion) = cost::mean_usage(&usages);
    let teacher_priced = teacher_rt > 0.0;
    if !teacher_priced {
        warnings.push(format!(
            "the teacher costs $0 per request at `{price_model}`'s price: savings and break-even are \
             not defined (pass --teacher-price-model or --prices)"
        ));
    }
    let labelling_paid: f64 = train_rows.iter().map(|r| r.cost_usd).sum();

    // 3. Answers: teacher, students, replays.
    let mut answers: Vec<Answers> = Vec::new();
    if has_teacher {
        let teacher_answers = |name: &str, kind, per_request, basis: &str| Answers {
            name: name.into(),
            kind,
            source: Some(spec.teacher.model.clone()),
            labels: items.teacher.clone(),
            confidence: None,
            escalated: None,
            runtime: None,
            per_request: Some(per_request),
            per_request_basis: basis.into(),
            one_time: vec![],
            held_out_only: false,
            student_per_request: None,
        };
        answers.push(teacher_answers(
            "teacher",
            OptionKind::Teacher,
            teacher_rt,
            "real-time API price",
        ));
        answers.push(teacher_answers(
            "teacher (batch API)",
            OptionKind::TeacherBatch,
            teacher_batch,
            "Batch API price (asynchronous, up to 24 h)",
        ));
    } else {
        // The teacher's row still anchors the cost comparison.
        answers.push(Answers {
            name: "teacher".into(),
            kind: OptionKind::Teacher,
            source: Some(spec.teacher.model.clone()),
            labels: vec![None; n],
            confidence: None,
            escalated: None,
            runtime: None,
            per_request: Some(teacher_rt),
            per_request_basis: "real-time API price".into(),
            one_time: vec![],
            held_out_only: false,
            student_per_request: None,
        });
    }
    let threads = opts.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| EvalError::Other(format!("thread pool: {e}")))?;
    let texts: Vec<&str> = items.texts.iter().map(String::as_str).collect();
    for s in &students {
        let meta = s.student.meta();
        let where_ = s.path.clone().unwrap_or_else(|| PathBuf::from(&s.name));
        let map = label_map(meta, labels, &where_)?;
        if map.len() < labels.len() {
            warnings.push(format!(
                "model `{}` has no `{}` label (trained closed-set): it answers every out-of-scope \
                 input with an in-scope label",
                s.name,
                labels.out_of_scope.as_deref().unwrap_or("out-of-scope")
            ));
        }
        if meta.task != spec.name {
            warnings.push(format!(
                "model `{}` was trained for task `{}`, not `{}` (its labels match, so it is evaluated)",
                s.name, meta.task, spec.name
            ));
        }
        let run = pool.install(|| run_student(s, &texts, &map, opts))?;
        // Priced by where it runs now, not where it was trained.
        let device = if opts.device.starts_with("cuda") || opts.device == "metal" {
            opts.device.clone()
        } else {
            "cpu".to_string()
        };
        let per_second = opts.hardware.usd_per_second(&device, threads);
        let mut one_time = Vec::new();
        if meta.label_source == "teacher" {
            if labelling_paid > 0.0 {
                one_time.push(CostItem {
                    what: "labelling".into(),
                    usd: labelling_paid,
                    basis: format!(
                        "ledger: {} teach calls for task `{}`",
                        train_rows.len(),
                        spec.name
                    ),
                });
            } else {
                let k = (meta.n_train + meta.n_dev) as f64;
                one_time.push(CostItem {
                    what: "labelling".into(),
                    usd: k * teacher_rt,
                    basis: format!(
                        "estimated: {k:.0} examples × teacher $/request (no ledger rows)"
                    ),
                });
            }
        }
        let train_rate = opts.hardware.usd_per_second(
            if meta.device.starts_with("cpu") {
                "cpu"
            } else {
                "cuda"
            },
            meta.threads,
        );
        one_time.push(CostItem {
            what: "training".into(),
            usd: meta.train_wall_s * train_rate,
            basis: format!(
                "{:.1} s on {} × {} threads (distill.json)",
                meta.train_wall_s, meta.device, meta.threads
            ),
        });
        let per_request = run.batch_seconds_per_request * per_second;
        answers.push(Answers {
            name: s.name.clone(),
            kind: OptionKind::Student,
            source: s.path.as_ref().map(|p| p.display().to_string()),
            labels: run.labels.into_iter().map(Some).collect(),
            confidence: Some(run.confidence),
            escalated: None,
            per_request: Some(per_request),
            per_request_basis: format!(
                "{:.3} ms/request batched × {} per {}",
                run.batch_seconds_per_request * 1e3,
                crate::report::fmt::usd(per_second * 3600.0),
                if device == "cpu" {
                    format!("hour of {threads} cores")
                } else {
                    "GPU-hour".into()
                }
            ),
            runtime: Some(Runtime {
                device,
                threads,
                batch_size: opts.batch_size,
                batch_seconds_per_request: run.batch_seconds_per_request,
                latency: cost::latency(run.latency_ms),
            }),
            one_time,
            held_out_only: false,
            student_per_request: None,
        });
    }
    for who in &api_students {
        let run = crate::api::run_api_student(
            spec,
            who,
            &items.texts,
            labels,
            &crate::api::ApiRunOptions {
                cache_path: opts.cache.clone(),
                ledger_path: opts.ledger.clone(),
                prices: Some(table.clone()),
                concurrency: opts.api_concurrency,
                progress: opts.progress,
            },
        )?;
        if !run.priced {
            warnings.push(format!(
                "`{}` is not in the price table: its cost is shown as $0 (pass --prices FILE)",
                who.model
            ));
        }
        if run.invalid + run.failed > 0 {
            warnings.push(format!(
                "{}: {} invalid and {} failed answers of {} count as wrong",
                who.name(),
                run.invalid,
                run.failed,
                n
            ));
        }
        answers.push(Answers {
            name: who.name(),
            kind: OptionKind::Api,
            source: Some(run.base_url.clone()),
            labels: run.labels,
            confidence: None,
            escalated: None,
            runtime: Some(Runtime {
                device: "api".into(),
                threads: opts.api_concurrency,
                batch_size: 1,
                batch_seconds_per_request: 0.0,
                latency: cost::latency(run.latency_ms),
            }),
            per_request: Some(run.per_request_usd),
            per_request_basis: format!(
                "real tokens × `{}` price, mean of {n} calls (Batch API: {})",
                who.model,
                crate::report::fmt::usd(run.batch_per_request_usd)
            ),
            one_time: vec![],
            held_out_only: false,
            student_per_request: None,
        });
    }
    if !replayed.is_empty() {
        warnings.push(
            "students replayed from a predictions file: their speed and cost were not measured"
                .into(),
        );
    }
    for (name, l, conf) in replayed {
        answers.push(Answers {
            name,
            kind: OptionKind::Student,
            source: None,
            labels: l,
            confidence: conf,
            escalated: None,
            runtime: None,
            per_request: None,
            per_request_basis: "not measured (replayed predictions)".into(),
            one_time: vec![],
            held_out_only: false,
            student_per_request: None,
        });
    }

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
        if !c.choice.floor_met_on_calibration {
            warnings.push(format!(
                "no cascade threshold met the floor ({} ≥ {}) on the calibration split: the \
                 recommended threshold escalates every request",
                c.floor.metric.as_str(),
                crate::report::fmt::pct(c.floor.value)
            ));
        } else if !c.choice.floor_held {
            warnings.push(format!(
                "the cascade's floor ({} ≥ {}) did NOT hold on the held-out split ({})",
                c.floor.metric.as_str(),
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
                    metrics::quality(
                        name,
                        &labels.names,
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
    let partial = !warnings.is_empty()
        && (!has_gold
            || !has_teacher
            || !teacher_priced
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
            teacher_price_model: price_model.clone(),
            price_version: table.version.clone(),
            seed: opts.seed,
            calibration_fraction: opts.calibration_fraction,
        },
        teacher: TeacherCostInfo {
            model: spec.teacher.model.clone(),
            price_model,
            per_request_usd: teacher_rt,
            per_request_batch_usd: teacher_batch,
            mean_prompt_tokens: mean_prompt,
            mean_completion_tokens: mean_completion,
            basis: basis.into(),
            basis_detail,
        },
        options,
        cascade: recommended,
        cascades,
        open_set: oos_label
            .filter(|_| n_oos > 0)
            .map(|oos| open_set::OpenSetInfo {
                label: labels.names[oos].clone(),
                share,
                share_source: share_source.into(),
                n_in_scope: n - n_oos,
                n_out_of_scope: n_oos,
                population_in_scope: population.iter().filter(|&&i| !is_oos[i]).count(),
                population_out_of_scope: population.iter().filter(|&&i| is_oos[i]).count(),
            }),
    };

    // 6. Write everything, each file atomically, only after everything was computed.
    let predictions = prediction_lines(&items, &answers, &split_of, labels);
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

/// Maps the student's label columns to the task's label indices; any difference in the label
/// sets is an error (a student cannot be scored on labels it does not know).
pub fn label_map(
    meta: &ModelMeta,
    labels: &distill_core::LabelSet,
    model: &Path,
) -> Result<Vec<usize>> {
    let mine: HashSet<&str> = meta.labels.iter().map(String::as_str).collect();
    let missing: Vec<&str> = labels
        .names
        .iter()
        .map(String::as_str)
        .filter(|l| !mine.contains(l))
        .collect();
    let extra: Vec<&str> = meta
        .labels
        .iter()
        .map(String::as_str)
        .filter(|l| !labels.contains(l))
        .collect();
    // A closed-set student of an open-set task lacks only the out-of-scope label: it is
    // evaluated (it answers every out-of-scope input in scope), which is what to compare with.
    let closed_set = extra.is_empty()
        && labels
            .out_of_scope
            .as_deref()
            .is_some_and(|o| missing == [o]);
    if !closed_set && (!missing.is_empty() || !extra.is_empty()) {
        let list = |v: &[&str]| {
            let mut s = v.iter().take(5).copied().collect::<Vec<_>>().join(", ");
            if v.len() > 5 {
                s.push_str(&format!(" and {} more", v.len() - 5));
            }
            s
        };
        let mut parts = Vec::new();
        if !missing.is_empty() {
            parts.push(format!("task labels the model lacks: {}", list(&missing)));
        }
        if !extra.is_empty() {
            parts.push(format!("model labels not in the task: {}", list(&extra)));
        }
        return Err(EvalError::LabelMismatch {
            model: model.to_path_buf(),
            detail: parts.join("; "),
        });
    }
    if meta.labels.len() + usize::from(closed_set) != labels.len() {
        return Err(EvalError::LabelMismatch {
            model: model.to_path_buf(),
            detail: "the model lists a label more than once".into(),
        });
    }
    Ok(meta
        .labels
        .iter()
        .filter_map(|l| labels.index_of(l))
        .collect())
}

struct StudentRun {
    labels: Vec<usize>,
    confidence: Vec<f64>,
    batch_seconds_per_request: f64,
    latency_ms: Vec<f64>,
}

fn run_student(
    s: &NamedStudent,
    texts: &[&str],
    map: &[usize],
    opts: &EvalOptions,
) -> Result<StudentRun> {
    let n = texts.len();
    let bar = progress_bar(opts.progress, n as u64, &s.name);
    let mut labels = Vec::with_capacity(n);
    let mut confidence = Vec::with_capacity(n);
    // Warm-up (lazy allocations, caches) outside the timed pass.
    s.student.predict_proba(&texts[..n.min(2)])?;
    let start = Instant::now();
    for chunk in texts.chunks(opts.batch_size) {
        let probs = s.student.predict_proba(chunk)?;
        if probs.len() != chunk.len() {
            return Err(EvalError::Other(format!(
                "model {}: returned {} predictions for {} texts",
                s.name,
                probs.len(),
                chunk.len()
            )));
        }
        for row in probs {
            if row.len() != map.len() {
                return Err(EvalError::Other(format!(
                    "model {}: returned {} probabilities, it has {} labels",
                    s.name,
                    row.len(),
                    map.len()
                )));
            }
            let (best, p) =
                row.iter()
                    .enumerate()
                    .fold((0usize, f32::NEG_INFINITY), |acc, (i, &p)| {
                        if p > acc.1 {
                            (i, p)
                        } else {
                            acc
                        }
                    });
            labels.push(map[best]);
            confidence.push(if p.is_finite() { p as f64 } else { 0.0 });
        }
        if let Some(b) = &bar {
            b.inc(chunk.len() as u64);
        }
    }
    let batch_seconds_per_request = start.elapsed().as_secs_f64() / n.max(1) as f64;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let k = opts.latency_samples.min(n);
    let mut latency_ms = Vec::with_capacity(k);
    for j in 0..k {
        let i = j * n / k.max(1);
        let t = Instant::now();
        s.student.predict_proba(&texts[i..=i])?;
        latency_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(StudentRun {
        labels,
        confidence,
        batch_seconds_per_request,
        latency_ms,
    })
}

fn progress_bar(show: bool, len: u64, name: &str) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !show || !std::io::stderr().is_terminal() {
        return None;
    }
    let b = indicatif::ProgressBar::new(len);
    b.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b.set_message(format!("eval {name}"));
    Some(b)
}

fn prediction_lines(
    items: &TestItems,
    answers: &[Answers],
    split_of: &[&str],
    labels: &distill_core::LabelSet,
) -> String {
    let name = |i: Option<usize>| i.map(|i| labels.names[i].clone());
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
                        label: labels.names[l].clone(),
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
