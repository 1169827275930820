//! `distill eval` for an extract task: the tagger's spans (and the teacher's, from its
//! labels of the test inputs) against gold with [`span_quality`], the student against the
//! teacher, and the cascade behind a floor. Teacher records are matched to test inputs by
//! text and context; the teacher's figures and the cascade cover the matched inputs.
//!
//! The cascade works on inputs, as for every kind: an input is right when its whole answer
//! is (every span, nothing extra, the "exact inputs" figure); the student's confidence is its
//! least sure token. The threshold is chosen on a seeded calibration split against the floor
//! (by default the teacher's exact-input rate there) and checked on the rest, with
//! [`crate::cascade::choose`]. Without gold, "right" means "as the teacher answered".
//!
//! Cost as for every kind ([`crate::cost`]): the teacher's mean $/input from its records, the
//! tagger's batched inference seconds per input × the hardware price, the cascade's tagger on
//! every input plus the teacher on the held-out escalated share; labelling (the inputs the
//! tagger learned from × the teacher's $/input) and training (its recorded wall seconds) are
//! one-time costs charged to month 1, and the steady months are shown beside it.
//!
//! Writes `metrics.json` (this module's [`ExtractReport`]), `report.md` and `report.html`
//! ([`crate::report::extract`]), and `spans.json`
//! (texts, reference and predicted spans, scores) for `scripts/verify/spans_vs_seqeval.py`.

use crate::api::{ask_all, ApiRunOptions, ApiStudentSpec};
use crate::cascade::{choose, split, CascadeChoice, CascadeItem};
use crate::cost::{economics, Economics, HardwarePrices};
use crate::curve::{draw, Curve, CurveOptions, CurvePoint, Scored};
use crate::error::{EvalError, Result};
use crate::report::CostItem;
use crate::span_metrics::{span_quality, SpanScores};
use distill_core::input::{read_inputs, Columns};
use distill_core::spans::{parse_spans, Span};
use distill_core::TaskSpec;
use distill_train::tagging::model::{load, parse_records, read_records, same_spans, TaggerMeta};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExtractReport {
    pub task: String,
    pub kind: String,
    pub model: String,
    pub student: TaggerMeta,
    pub n: usize,
    /// Test inputs the teacher's labels have a record for (text and context alike); the
    /// teacher's figures and the cascade are over these.
    pub teacher_matched: usize,
    /// The student against gold (absent without a gold column).
    pub student_vs_gold: Option<SpanScores>,
    pub teacher_vs_gold: Option<SpanScores>,
    pub student_vs_teacher: Option<SpanScores>,
    /// What "right" means for the cascade: `gold` or `teacher`.
    pub reference: String,
    pub floor: f64,
    pub floor_source: String,
    pub cascade: Option<CascadeChoice>,
    /// The cascade's threshold keyed by the model's fingerprint, in the form every eval
    /// writes, so `distill serve --threshold metrics.json` takes it for this model only.
    #[serde(default)]
    pub cascades: Vec<ServedThreshold>,
    /// The teacher's mean dollars per input, from its records.
    pub teacher_cost_per_request_usd: Option<f64>,
    /// What the tagger and its cascade cost against the teacher alone (absent when the
    /// teacher's records carry no cost).
    #[serde(default)]
    pub costs: Option<ExtractCosts>,
    /// Present when the eval drew a learning curve (`--curve`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curve: Option<Curve>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api: Vec<ApiExtract>,
}

/// The tagger's and the cascade's bill against sending every input to the teacher.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExtractCosts {
    pub volume_per_day: f64,
    pub teacher_per_request_usd: f64,
    pub teacher_monthly_usd: f64,
    pub student_per_request_usd: f64,
    pub student_per_request_basis: String,
    /// Labelling and training, charged in full to month 1.
    pub one_time: Vec<CostItem>,
    pub student: Economics,
    /// The tagger on every input plus the teacher on the held-out escalated share.
    pub cascade_per_request_usd: Option<f64>,
    pub cascade: Option<Economics>,
}

/// What `distill serve --threshold metrics.json` reads of a cascade.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServedThreshold {
    pub model: String,
    pub model_path: String,
    /// [`distill_train::model_fingerprint`] of the model directory.
    pub model_sha256: String,
    pub threshold: f64,
}

pub struct ExtractEvalOptions<'a> {
    pub test: &'a Path,
    pub teacher_labels: Option<&'a Path>,
    pub floor: Option<f64>,
    pub calibration_fraction: f64,
    pub seed: u64,
    /// Replace an existing eval directory.
    pub force: bool,
    /// Where an encoder tagger runs.
    pub device: &'a distill_train::Device,
    /// Requests per day for the monthly projection.
    pub volume_per_day: f64,
    pub hardware: HardwarePrices,
    /// A learning curve drawn before (see [`curve`]), carried into the report.
    pub curve: Option<&'a Curve>,
    /// Hosted models asked for the test inputs' spans (`--api`), and how to ask them.
    pub api: Option<(&'a [ApiStudentSpec], &'a ApiRunOptions)>,
}

/// A hosted model asked for every test input's spans (`--api`, with the task's prompt and
/// context, through the teach client: cache, ledger, retries), scored like the tagger.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiExtract {
    pub name: String,
    pub base_url: String,
    pub vs_gold: Option<SpanScores>,
    /// Over the inputs the teacher has records for.
    pub vs_teacher: Option<SpanScores>,
    pub per_request_usd: f64,
    pub batch_per_request_usd: f64,
    /// Answers with no usable spans (counted as no spans).
    pub invalid: usize,
    pub failed: usize,
    pub priced: bool,
    /// Against the teacher alone, nothing one-time (absent without the teacher's cost).
    pub economics: Option<Economics>,
}

fn other(e: impl std::fmt::Display) -> EvalError {
    EvalError::Other(e.to_string())
}

pub fn run(
    spec: &TaskSpec,
    model: &Path,
    out: &Path,
    o: &ExtractEvalOptions,
) -> Result<ExtractReport> {
    let (tagger, meta) = load(model, o.device).map_err(other)?;
    let mut cols = Columns::from(&spec.input);
    cols.context = meta.context_columns.clone();
    let gold_field = cols.gold.clone().unwrap_or_default();
    let slots = &spec.labels;
    let (mut texts, mut gold, mut pred, mut conf, mut keys) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut contexts = Vec::new();
    let mut without_gold: Option<u64> = None;
    // A test input and a teacher record are the same input when text and context are.
    let key = |text: &str, context: &distill_core::spec::Context| {
        serde_json::to_string(&(text, context)).unwrap_or_default()
    };
    let items: Vec<distill_core::input::InputItem> =
        read_inputs(o.test, spec.input.format, &cols)?.collect::<std::result::Result<_, _>>()?;
    let asked: Vec<(&str, &distill_core::spec::Context)> = items
        .iter()
        .map(|i| (i.text.as_str(), &i.context))
        .collect();
    o.hardware.validate()?;
    if !(o.volume_per_day.is_finite() && o.volume_per_day > 0.0) {
        return Err(EvalError::Invalid(format!(
            "--volume must be a number of requests per day above 0, got {}",
            o.volume_per_day
        )));
    }
    let timer = std::time::Instant::now();
    let answers = tagger.predict_batch(&asked).map_err(other)?;
    let predict_s = timer.elapsed().as_secs_f64();
    for (item, (spans, c)) in items.into_iter().zip(answers) {
        match &item.gold {
            Some(g) => {
                gold.push(parse_spans(g, &item.text, slots).map_err(|e| {
                    distill_core::CoreError::data(o.test, item.line, &gold_field, e)
                })?)
            }
            None => {
                without_gold.get_or_insert(item.line);
            }
        }
        keys.push(key(&item.text, &item.context));
        contexts.push(item.context);
        texts.push(item.text);
        pred.push(spans);
        conf.push(c as f64);
    }
    let n = texts.len();
    if n == 0 {
        return Err(other(format!("{}: no test inputs", o.test.display())));
    }
    if let (Some(line), false) = (without_gold, gold.is_empty()) {
        return Err(distill_core::CoreError::data(
            o.test,
            line,
            &gold_field,
            "no gold spans here, while other rows have them: give every row its gold (`[]` for none)",
        )
        .into());
    }
    let has_gold = gold.len() == n;
    // The teacher's answers by input: `Some(None)` is a record without a usable answer.
    let mut teacher: Vec<Option<Option<Vec<Span>>>> = vec![None; n];
    let mut cost = Vec::new();
    if let Some(path) = o.teacher_labels {
        let by_input: HashMap<String, (Option<Vec<Span>>, f64)> = read_records(path, spec)
            .map_err(other)?
            .into_iter()
            .map(|r| (key(&r.text, &r.context), (r.spans, r.cost_usd)))
            .collect();
        for (i, k) in keys.iter().enumerate() {
            if let Some((s, c)) = by_input.get(k) {
                teacher[i] = Some(s.clone());
                cost.push(*c);
            }
        }
        if cost.is_empty() {
            return Err(other(format!(
                "{}: no record is one of the {n} test inputs of {} (same text and context)",
                path.display(),
                o.test.display()
            )));
        }
    }
    // Teacher figures are over the inputs it has records for; a record without a usable
    // answer counts as no spans (and as wrong in the cascade).
    let matched: Vec<usize> = (0..n).filter(|&i| teacher[i].is_some()).collect();
    let have_teacher = !matched.is_empty();
    let names = &slots.names;
    let seed = o.seed;
    let on = |v: &[Vec<Span>], idx: &[usize]| idx.iter().map(|&i| v[i].clone()).collect::<Vec<_>>();
    let teacher_spans: Vec<Vec<Span>> = teacher
        .iter()
        .map(|t| t.clone().flatten().unwrap_or_default())
        .collect();
    let student_vs_gold = has_gold.then(|| span_quality(&gold, &pred, names, seed));
    let teacher_vs_gold = (has_gold && have_teacher).then(|| {
        span_quality(
            &on(&gold, &matched),
            &on(&teacher_spans, &matched),
            names,
            seed,
        )
    });
    let student_vs_teacher = have_teacher.then(|| {
        span_quality(
            &on(&teacher_spans, &matched),
            &on(&pred, &matched),
            names,
            seed,
        )
    });

    let reference: &[Vec<Span>] = if has_gold { &gold } else { &teacher_spans };
    let items: Vec<CascadeItem> = matched
        .iter()
        .map(|&i| CascadeItem {
            confidence: conf[i],
            student_right: same_spans(&pred[i], &reference[i]),
            teacher_right: teacher[i]
                .as_ref()
                .and_then(Option::as_ref)
                .is_some_and(|t| same_spans(t, &reference[i])),
        })
        .collect();
    let (cal, held) = split(items.len(), o.calibration_fraction, seed);
    let pick = |idx: &[usize]| idx.iter().map(|&i| items[i]).collect::<Vec<_>>();
    let (cal_items, held_items) = (pick(&cal), pick(&held));
    let teacher_cal =
        cal_items.iter().filter(|i| i.teacher_right).count() as f64 / cal_items.len().max(1) as f64;
    let (floor, floor_source) = match o.floor {
        Some(f) => (f, "--floor".to_string()),
        None if has_gold && have_teacher => (
            teacher_cal,
            "the teacher's exact-input rate on the calibration split".to_string(),
        ),
        None => (
            crate::cascade::DEFAULT_AGREEMENT_FLOOR,
            "default".to_string(),
        ),
    };
    let teacher_cost = (!cost.is_empty()).then(|| cost.iter().sum::<f64>() / cost.len() as f64);
    let cascade = (have_teacher && !cal_items.is_empty() && !held_items.is_empty())
        .then(|| choose(&cal_items, &held_items, floor, Some(0.0), teacher_cost));

    let costs = teacher_cost
        .filter(|&t| t > 0.0)
        .map(|t| extract_costs(t, predict_s / n as f64, &meta, cascade.as_ref(), o));

    let mut api = Vec::new();
    let asked: Vec<(&ApiStudentSpec, &ApiRunOptions)> =
        o.api.map_or(Vec::new(), |(models, opts)| {
            models.iter().map(|m| (m, opts)).collect()
        });
    for (who, opts) in asked {
        let inputs: Vec<distill_core::spec::PromptInput> = texts
            .iter()
            .zip(&contexts)
            .map(|(text, context)| distill_core::spec::PromptInput { text, context })
            .collect();
        let (outcomes, mut bill) = ask_all(spec, who, &inputs, opts)?;
        let mut spans = Vec::with_capacity(n);
        for (out, text) in outcomes.iter().zip(&texts) {
            match out.output.as_ref().and_then(|x| x.answer_text()) {
                Some(a) => spans.push(parse_spans(&a, text, slots).unwrap_or_else(|_| {
                    bill.invalid += 1;
                    Vec::new()
                })),
                None => spans.push(Vec::new()),
            }
        }
        api.push(ApiExtract {
            name: who.name(),
            base_url: bill.base_url.clone(),
            vs_gold: has_gold.then(|| span_quality(&gold, &spans, names, seed)),
            vs_teacher: have_teacher.then(|| {
                span_quality(
                    &on(&teacher_spans, &matched),
                    &on(&spans, &matched),
                    names,
                    seed,
                )
            }),
            per_request_usd: bill.per_request_usd,
            batch_per_request_usd: bill.batch_per_request_usd,
            invalid: bill.invalid,
            failed: bill.failed,
            priced: bill.priced,
            economics: teacher_cost
                .filter(|&t| t > 0.0)
                .map(|t| economics(t, bill.per_request_usd, 0.0, o.volume_per_day)),
        });
    }

    let cascades = match &cascade {
        Some(c) => vec![ServedThreshold {
            model: model
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| model.display().to_string()),
            model_path: model.display().to_string(),
            model_sha256: distill_train::model_fingerprint(model).map_err(other)?,
            threshold: c.threshold,
        }],
        None => Vec::new(),
    };
    let report = ExtractReport {
        task: spec.name.clone(),
        kind: "extract".into(),
        model: model.display().to_string(),
        student: meta,
        n,
        teacher_matched: matched.len(),
        student_vs_gold,
        teacher_vs_gold,
        student_vs_teacher,
        reference: if has_gold { "gold" } else { "teacher" }.into(),
        floor,
        floor_source,
        cascade,
        cascades,
        teacher_cost_per_request_usd: teacher_cost,
        costs,
        curve: o.curve.cloned(),
        api,
    };
    // What seqeval recomputes: every input against gold, else the matched ones against the
    // teacher (as `student_vs_teacher` is scored).
    let idx: Vec<usize> = if has_gold {
        (0..n).collect()
    } else {
        matched.clone()
    };
    let spans_doc = serde_json::json!({
        "texts": idx.iter().map(|&i| &texts[i]).collect::<Vec<_>>(), "slots": names,
        "reference": on(reference, &idx), "predicted": on(&pred, &idx),
        "scores": report.student_vs_gold.as_ref().or(report.student_vs_teacher.as_ref()),
    });
    let json = serde_json::to_string_pretty(&report).map_err(other)?;
    let md = crate::report::extract::render_markdown(&report);
    let html = crate::report::extract::render_html(&report);
    distill_core::fsutil::replace_dir(out, distill_core::fsutil::EVAL_DIR, o.force, |dir| {
        let w = |name: &str, body: &[u8]| {
            distill_core::fsutil::write_atomic(dir.join(name), body).map_err(EvalError::from)
        };
        w("metrics.json", json.as_bytes())?;
        w("report.md", md.as_bytes())?;
        w("report.html", html.as_bytes())?;
        w("spans.json", spans_doc.to_string().as_bytes())
    })?;
    Ok(report)
}

/// The bill of the tagger and its cascade; `seconds_per_input` is the batched inference time.
fn extract_costs(
    teacher: f64,
    seconds_per_input: f64,
    meta: &TaggerMeta,
    cascade: Option<&CascadeChoice>,
    o: &ExtractEvalOptions,
) -> ExtractCosts {
    let device = distill_train::device::device_name(o.device);
    let threads = rayon::current_num_threads();
    let per_second = o.hardware.usd_per_second(&device, threads);
    let student = seconds_per_input * per_second;
    let learned = (meta.train_inputs + meta.dev_inputs) as f64;
    let mut one_time = vec![CostItem {
        what: "labelling".into(),
        usd: learned * teacher,
        basis: format!(
            "estimated: {learned:.0} inputs learned from × the teacher's ${teacher:.3e} per input"
        ),
    }];
    if let Some(s) = meta.train_wall_s {
        let trained_on = meta.device.as_deref().unwrap_or("cpu");
        let threads = meta.threads.unwrap_or(1);
        one_time.push(CostItem {
            what: "training".into(),
            usd: s * o.hardware.usd_per_second(trained_on, threads),
            basis: format!("{s:.1} s on {trained_on} × {threads} threads (distill.json)"),
        });
    }
    let once: f64 = one_time.iter().map(|c| c.usd).sum();
    let cascade_per_request = cascade.map(|c| student + c.held_out.escalated_fraction * teacher);
    ExtractCosts {
        volume_per_day: o.volume_per_day,
        teacher_per_request_usd: teacher,
        teacher_monthly_usd: teacher * crate::cost::DAYS_PER_MONTH * o.volume_per_day,
        student_per_request_usd: student,
        student_per_request_basis: format!(
            "{:.3} ms/input batched on {device} × {threads} threads",
            seconds_per_input * 1e3
        ),
        one_time,
        student: economics(teacher, student, once, o.volume_per_day),
        cascade_per_request_usd: cascade_per_request,
        cascade: cascade_per_request.map(|c| economics(teacher, c, once, o.volume_per_day)),
    }
}

/// An extract task's learning curve: each point writes the chosen records of `opts.train` (the
/// usable ones, in the curve's order) to a file, trains the tagger on it as `distill train`
/// would (`linear` or `encoder-finetune`, the same seeded dev split), and evaluates it with
/// [`run`] under `o`: span F1 for the student, exact inputs for the cascade and its floor, the
/// labelling charged for those records only.
pub fn curve(
    spec: &TaskSpec,
    o: &ExtractEvalOptions,
    opts: &CurveOptions,
    progress: bool,
) -> Result<Curve> {
    use distill_train::StudentKind;
    if matches!(
        opts.student,
        StudentKind::EncoderHead | StudentKind::Ensemble
    ) {
        return Err(EvalError::Invalid(format!(
            "--curve-student {}: an extract task's curve trains `linear` (the linear tagger) or \
             `encoder-finetune`",
            opts.student.as_str()
        )));
    }
    let text = std::fs::read_to_string(&opts.train)
        .map_err(|e| EvalError::Other(format!("{}: {e}", opts.train.display())))?;
    // parse_records checks every record and skips blank lines, as this does: one line each.
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let records = parse_records(&opts.train, &text, spec).map_err(other)?;
    let usable: Vec<&str> = lines
        .iter()
        .zip(&records)
        .filter(|(_, r)| r.spans.is_some())
        .map(|(l, _)| *l)
        .collect();
    draw(usable.len(), opts, progress, |picked, seed, dir| {
        std::fs::create_dir_all(dir)
            .map_err(|e| EvalError::Other(format!("{}: {e}", dir.display())))?;
        let data = dir.join("train.jsonl");
        let mut body = String::new();
        for &i in picked {
            body.push_str(usable[i]);
            body.push('\n');
        }
        std::fs::write(&data, body)
            .map_err(|e| EvalError::Other(format!("{}: {e}", data.display())))?;
        let model_dir = dir.join("model");
        let train_seed = 42 + seed;
        match opts.student {
            StudentKind::Linear => {
                distill_train::tagging::model::train_linear(
                    spec,
                    &data,
                    &model_dir,
                    true,
                    opts.dev_fraction,
                    train_seed,
                )
                .map_err(other)?;
            }
            _ => {
                let mut t = opts.train_opts.clone();
                t.out = model_dir.clone();
                t.seed = train_seed;
                t.progress = false;
                t.force = true;
                distill_train::tagging::encoder::train(spec, &data, &t, opts.dev_fraction)
                    .map_err(other)?;
            }
        }
        let point = ExtractEvalOptions {
            force: true,
            curve: None,
            api: None,
            ..*o
        };
        let r = run(spec, &model_dir, &dir.join("eval"), &point)?;
        let student = r.student_vs_gold.as_ref().or(r.student_vs_teacher.as_ref());
        let one_time = |what: &str| {
            r.costs.as_ref().map_or(0.0, |c| {
                c.one_time
                    .iter()
                    .filter(|i| i.what == what)
                    .map(|i| i.usd)
                    .sum()
            })
        };
        let priced = r
            .costs
            .as_ref()
            .map(|c| c.cascade.as_ref().unwrap_or(&c.student));
        Ok(Scored {
            metric: if r.student_vs_gold.is_some() {
                "span F1".into()
            } else {
                "span F1 vs teacher".into()
            },
            floor: r
                .cascade
                .as_ref()
                .map(|_| (r.floor, "exact inputs".to_string())),
            point: CurvePoint {
                n_labels: picked.len(),
                seed,
                labelling_usd: one_time("labelling"),
                training_usd: one_time("training"),
                student_quality: student.map(|q| q.exact.f1.value),
                cascade_quality: r.cascade.as_ref().map(|c| c.held_out.quality.value),
                escalated: r.cascade.as_ref().map(|c| c.held_out.escalated_fraction),
                floor_held: r.cascade.as_ref().is_some_and(|c| c.floor_held),
                month1_usd: priced.map(|e| e.monthly_usd),
                saving: priced.and_then(|e| e.saving),
                steady_monthly_usd: priced.map(|e| e.steady_monthly_usd),
                steady_saving: priced.and_then(|e| e.steady_saving),
                break_even_requests: priced.and_then(|e| e.break_even_requests),
            },
        })
    })
}
