//! Every option's answers to the test items, with what each costs to run: the teacher (its
//! labels, at real-time and Batch API prices), each student (run here and timed), each hosted
//! model asked as a student, and replayed predictions.

use crate::answer_space::AnswerSpace;
use crate::cost;
use crate::data::{Replayed, TestItems};
use crate::error::{EvalError, Result};
use crate::pricing::TeacherPricing;
use crate::report::{CostItem, OptionKind, Runtime};
use crate::run::{EvalOptions, NamedStudent};
use distill_core::TaskSpec;
use distill_train::student::ModelMeta;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// One option's per-item answers plus what it costs.
pub(crate) struct Answers {
    pub(crate) name: String,
    pub(crate) kind: OptionKind,
    pub(crate) source: Option<String>,
    pub(crate) labels: Vec<Option<usize>>,
    pub(crate) confidence: Option<Vec<f64>>,
    pub(crate) escalated: Option<Vec<bool>>,
    pub(crate) runtime: Option<Runtime>,
    pub(crate) per_request: Option<f64>,
    pub(crate) per_request_basis: String,
    pub(crate) one_time: Vec<CostItem>,
    pub(crate) held_out_only: bool,
    /// Cascades: the student's own per-request cost (for pricing out-of-scope traffic).
    pub(crate) student_per_request: Option<f64>,
}

/// The answers of every option: the teacher first, then students, hosted models, replays.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gather(
    spec: &TaskSpec,
    opts: &EvalOptions,
    items: &TestItems,
    pricing: &TeacherPricing,
    students: &[NamedStudent],
    api_students: &[crate::api::ApiStudentSpec],
    space: &AnswerSpace,
    replayed: Replayed,
    warnings: &mut Vec<String>,
) -> Result<Vec<Answers>> {
    let labels = space.labels();
    let n = items.len();
    let has_teacher = items.n_teacher() > 0;
    let teacher_rt = pricing.per_request;
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
            pricing.per_request_batch,
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
    for s in students {
        let meta = s.student.meta();
        let where_ = s.path.clone().unwrap_or_else(|| PathBuf::from(&s.name));
        let map = label_map(meta, labels, &where_)?;
        if meta.multilabel.is_some() != space.is_sets() {
            return Err(EvalError::LabelMismatch {
                model: where_.clone(),
                detail: if space.is_sets() {
                    "the task is multilabel and the model answers one label".into()
                } else {
                    "the model answers label sets (multilabel) and the task one label".into()
                },
            });
        }
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
        let run = pool.install(|| run_student(s, &texts, &map, space, opts))?;
        // Priced by where it runs now, not where it was trained.
        let device = if opts.device.starts_with("cuda") || opts.device == "metal" {
            opts.device.clone()
        } else {
            "cpu".to_string()
        };
        let per_second = opts.hardware.usd_per_second(&device, threads);
        let mut one_time = Vec::new();
        if meta.label_source == "teacher" {
            let k = (meta.n_train + meta.n_dev) as f64;
            if opts.labelling_per_example && pricing.labelling_calls > 0 {
                let per_label = pricing.labelling_paid / pricing.labelling_calls as f64;
                one_time.push(CostItem {
                    what: "labelling".into(),
                    usd: k * per_label,
                    basis: format!(
                        "{k:.0} examples × ${per_label:.3e} per label (the ledger's mean over {} \
                         teach calls for task `{}`)",
                        pricing.labelling_calls, spec.name
                    ),
                });
            } else if pricing.labelling_paid > 0.0 {
                one_time.push(CostItem {
                    what: "labelling".into(),
                    usd: pricing.labelling_paid,
                    basis: format!(
                        "ledger: {} teach calls for task `{}`",
                        pricing.labelling_calls, spec.name
                    ),
                });
            } else {
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
    for who in api_students {
        let crate::api::ApiRun { labels, bill: run } = crate::api::run_api_student(
            spec,
            who,
            &items.texts,
            space,
            &crate::api::ApiRunOptions {
                cache_path: opts.cache.clone(),
                ledger_path: opts.ledger.clone(),
                prices: Some(pricing.table.clone()),
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
            labels,
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
    Ok(answers)
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
    space: &AnswerSpace,
    opts: &EvalOptions,
) -> Result<StudentRun> {
    let set_head = s.student.meta().multilabel.as_ref();
    let n = texts.len();
    let bar = progress_bar(opts.progress, n as u64, format!("eval {}", s.name));
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
            let (answer, p) =
                match set_head {
                    Some(head) => {
                        let (set, p) = head.decide(&row);
                        let set: Vec<usize> = set.iter().map(|&j| map[j]).collect();
                        (space.index_of_set(&set), p)
                    }
                    None => {
                        let (best, p) = row.iter().enumerate().fold(
                            (0usize, f32::NEG_INFINITY),
                            |acc, (i, &p)| if p > acc.1 { (i, p) } else { acc },
                        );
                        (map[best], p)
                    }
                };
            labels.push(answer);
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

/// A bar on a terminal's stderr with rate and ETA (none elsewhere, or when not `show`n).
pub(crate) fn progress_bar(show: bool, len: u64, msg: String) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !show || !std::io::stderr().is_terminal() {
        return None;
    }
    let b = indicatif::ProgressBar::new(len);
    b.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b.set_message(msg);
    Some(b)
}
