//! End-to-end eval on a real Banking77 slice with `Student` test doubles: every output file,
//! the cascade promise, and each kind of bad input.

mod common;

use common::*;
use distill_core::ledger::{Ledger, LedgerRow};
use distill_core::{TaskSpec, Usage};
use distill_eval::report::OptionKind;
use distill_eval::{run_eval_with, EvalError, EvalOptions, NamedStudent};

fn students(n: usize) -> Vec<NamedStudent> {
    vec![
        NamedStudent {
            name: "good".into(),
            path: None,
            student: Box::new(FixedStudent::new(n, 0.12, 11)),
        },
        NamedStudent {
            name: "weak".into(),
            path: None,
            student: Box::new(FixedStudent::new(n, 0.35, 23)),
        },
    ]
}

fn opts(dir: &std::path::Path) -> EvalOptions {
    let mut o = EvalOptions::new(dir.join("out"));
    o.latency_samples = 20;
    o.threads = Some(1);
    o
}

#[test]
fn full_eval_writes_every_file_and_a_cascade_that_holds() {
    // The whole test set: the calibration split must be large enough for its lower bound.
    let n = 3080;
    let d = task_dir(n, true);
    let spec = TaskSpec::load(d.path().join("task.toml")).unwrap();
    write_teacher_labels(&d.path().join("teacher.jsonl"), n, 0.94);
    let mut o = opts(d.path());
    o.teacher_labels = Some(d.path().join("teacher.jsonl"));
    let out = run_eval_with(&spec, &o, students(n)).unwrap();
    for f in [
        "report.md",
        "report.html",
        "metrics.json",
        "predictions.jsonl",
    ] {
        assert!(out.out.join(f).exists(), "{f} missing");
    }
    let r = &out.report;
    assert!(!r.partial, "{:?}", r.warnings);
    assert_eq!(r.test.n, n);
    assert_eq!(r.teacher.basis, "teacher records");
    // 600 prompt + 8 completion tokens at gpt-4o's $2.5/$10 per M.
    assert!((r.teacher.per_request_usd - (600.0 * 2.5 + 8.0 * 10.0) / 1e6).abs() < 1e-12);
    assert!((r.teacher.per_request_batch_usd - r.teacher.per_request_usd / 2.0).abs() < 1e-12);
    let good = r.options.iter().find(|o| o.name == "good").unwrap();
    let acc = good.vs_gold.as_ref().unwrap().accuracy;
    assert!(acc.value > 0.85 && acc.value < 0.92, "{acc:?}");
    assert!(acc.lo < acc.value && acc.value < acc.hi);
    let teacher = r
        .options
        .iter()
        .find(|o| o.kind == OptionKind::Teacher)
        .unwrap();
    let t_acc = teacher.vs_gold.as_ref().unwrap().accuracy.value;
    assert!((t_acc - 0.94).abs() < 0.03, "{t_acc}");
    // The cascade: the default floor is the teacher's accuracy; the good student's confident
    // answers beat it, so a threshold exists, escalates a minority and holds on held-out.
    let c = r.cascade.as_ref().expect("a cascade");
    assert_eq!(c.model, "good");
    assert_eq!(c.floor.metric.as_str(), "accuracy");
    assert!(c.choice.floor_met_on_calibration);
    assert!(c.choice.calibration.quality.lo >= c.floor.value);
    assert!(
        c.choice.held_out.escalated_fraction < 0.3,
        "{:?}",
        c.choice.held_out
    );
    assert!(c.choice.floor_held, "{:?}", c.choice.held_out);
    let cascade_row = r.options.iter().find(|o| o.name == "cascade:good").unwrap();
    assert_eq!(cascade_row.evaluated_on, "held_out");
    assert!(
        cascade_row.cost.saving.unwrap() > 0.6,
        "{:?}",
        cascade_row.cost
    );
    // Month 1 carries the one-time costs, later months only the traffic.
    let cost = &cascade_row.cost;
    assert!(cost.one_time_usd > 0.0, "{cost:?}");
    let steady = cost.steady_monthly_usd.unwrap();
    assert!((cost.monthly_usd.unwrap() - steady - cost.one_time_usd).abs() < 1e-9);
    assert!(
        cost.steady_saving.unwrap() > cost.saving.unwrap(),
        "{cost:?}"
    );
    // metrics.json carries the threshold where serve reads it.
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.metrics_json()).unwrap()).unwrap();
    assert_eq!(
        j["cascade"]["threshold"].as_f64().unwrap(),
        c.choice.threshold
    );
    assert_eq!(j["cascade"]["model"], "good");
    // predictions.jsonl: one line per item, with every option's answer.
    let preds = std::fs::read_to_string(out.out.join("predictions.jsonl")).unwrap();
    assert_eq!(preds.lines().count(), n);
    let first: serde_json::Value = serde_json::from_str(preds.lines().next().unwrap()).unwrap();
    for k in ["good", "weak", "teacher", "cascade:good"] {
        assert!(first["predictions"][k]["label"].is_string(), "{k}: {first}");
    }
    // The HTML has the four charts, each with drawn data.
    let html = std::fs::read_to_string(out.report_html()).unwrap();
    assert_eq!(html.matches("<svg").count(), 4);
    for id in ["frontier", "cascade", "confusion", "reliability"] {
        assert!(html.contains(&format!("data-chart=\"{id}\"")), "{id}");
    }
    assert!(!html.contains("http://") || html.contains("http://www.w3.org/2000/svg"));
    // Keep a copy for scripts/check_report.sh (CI renders it in Chromium).
    let keep = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("eval-fixture");
    let _ = std::fs::remove_dir_all(&keep);
    std::fs::create_dir_all(&keep).unwrap();
    for f in [
        "report.md",
        "report.html",
        "metrics.json",
        "predictions.jsonl",
    ] {
        std::fs::copy(out.out.join(f), keep.join(f)).unwrap();
    }
    // The summary names every option.
    for name in ["teacher", "good", "weak", "cascade:good"] {
        assert!(out.summary.contains(name), "{}", out.summary);
    }
}

#[test]
fn student_with_a_different_label_set_is_refused() {
    let n = 50;
    let d = task_dir(n, true);
    let spec = TaskSpec::load(d.path().join("task.toml")).unwrap();
    let mut s = FixedStudent::new(n, 0.1, 1);
    s.meta.labels.pop();
    s.meta.labels.push("not_a_banking_intent".into());
    let e = run_eval_with(
        &spec,
        &opts(d.path()),
        vec![NamedStudent {
            name: "odd".into(),
            path: Some("models/odd".into()),
            student: Box::new(s),
        }],
    )
    .err()
    .unwrap();
    assert!(matches!(e, EvalError::LabelMismatch { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("models/odd") && msg.contains("not_a_banking_intent"),
        "{msg}"
    );
    assert!(!d.path().join("out/metrics.json").exists());
}

#[test]
fn no_gold_and_no_teacher_labels_gives_a_labelled_partial_report() {
    let n = 60;
    let d = task_dir(n, false);
    let spec = TaskSpec::load(d.path().join("task.toml")).unwrap();
    let out = run_eval_with(&spec, &opts(d.path()), students(n)).unwrap();
    let r = &out.report;
    assert!(r.partial);
    assert!(r
        .warnings
        .iter()
        .any(|w| w.contains("no gold labels and no teacher labels")));
    assert!(r
        .options
        .iter()
        .all(|o| o.vs_gold.is_none() && o.vs_teacher.is_none()));
    assert!(r.cascade.is_none());
    // Cost is still reported, from a tiktoken estimate (no ledger given).
    assert_eq!(r.teacher.basis, "estimated");
    assert!(r.teacher.per_request_usd > 0.0);
    let md = std::fs::read_to_string(out.report_md()).unwrap();
    assert!(md.contains("Partial report"));
    let html = std::fs::read_to_string(out.report_html()).unwrap();
    assert!(html.contains("Partial report"));
}

#[test]
fn no_gold_uses_agreement_with_the_teacher() {
    let n = 400;
    let d = task_dir(n, false);
    let spec = TaskSpec::load(d.path().join("task.toml")).unwrap();
    write_teacher_labels(&d.path().join("teacher.jsonl"), n, 0.94);
    let mut o = opts(d.path());
    o.teacher_labels = Some(d.path().join("teacher.jsonl"));
    let r = run_eval_with(&spec, &o, students(n)).unwrap().report;
    assert!(r.warnings.iter().any(|w| w.contains("no gold labels")));
    assert_eq!(r.headline_metric(), "agreement");
    let c = r.cascade.unwrap();
    assert_eq!(c.floor.metric.as_str(), "agreement");
    assert_eq!(c.floor.value, 0.95);
    assert_eq!(c.floor.source, "default");
    // --floor accuracy without gold is refused.
    let mut bad = opts(d.path());
    bad.teacher_labels = Some(d.path().join("teacher.jsonl"));
    bad.floor = Some((distill_eval::cascade::FloorMetric::Accuracy, 0.9));
    let e = run_eval_with(&spec, &bad, students(n))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("needs gold labels"), "{e}");
}

fn ledger_row(hash: &str, prompt: u64, cost: f64) -> LedgerRow {
    LedgerRow {
        id: None,
        ts: LedgerRow::now(),
        task: "banking77".into(),
        provider: "openai".into(),
        model: "gpt-4o".into(),
        request_hash: hash.into(),
        usage: Usage {
            prompt_tokens: prompt,
            completion_tokens: 10,
            ..Default::default()
        },
        cost_usd: cost,
        latency_ms: 100,
        status: "ok".into(),
        batch_id: None,
        price_version: "v".into(),
        source: "teach".into(),
        tag: None,
    }
}

#[test]
fn ledger_rows_price_the_teacher_and_the_labelling() {
    let n = 100;
    let d = task_dir(n, true);
    let spec = TaskSpec::load(d.path().join("task.toml")).unwrap();
    write_teacher_labels(&d.path().join("teacher.jsonl"), n, 0.94);
    let ledger_path = d.path().join("state/ledger.db");
    let l = Ledger::open(&ledger_path).unwrap();
    // Training-set labelling (other hashes) and the test items' own calls (h1.., see fixture).
    l.append_many(&[
        ledger_row("train-1", 1000, 3.0),
        ledger_row("train-2", 1000, 4.0),
    ])
    .unwrap();
    l.append_many(
        &(1..=n)
            .map(|i| ledger_row(&format!("h{i}"), 800, 0.002))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    drop(l);
    let mut o = opts(d.path());
    o.teacher_labels = Some(d.path().join("teacher.jsonl"));
    o.ledger = Some(ledger_path);
    let r = run_eval_with(&spec, &o, students(n)).unwrap().report;
    assert_eq!(r.teacher.basis, "ledger");
    assert!(r.teacher.basis_detail.contains("test items"));
    assert!((r.teacher.per_request_usd - (800.0 * 2.5 + 10.0 * 10.0) / 1e6).abs() < 1e-12);
    let good = r.options.iter().find(|o| o.name == "good").unwrap();
    let labelling = good
        .cost
        .one_time
        .iter()
        .find(|c| c.what == "labelling")
        .unwrap();
    // Only the training-set calls are labelling; the test items' calls are the eval's own.
    assert!((labelling.usd - 7.0).abs() < 1e-9, "{labelling:?}");
    let training = good
        .cost
        .one_time
        .iter()
        .find(|c| c.what == "training")
        .unwrap();
    assert!((training.usd - 60.0 * 2.0 * 0.02 / 3600.0).abs() < 1e-12);
    let be = good.cost.break_even_requests.unwrap();
    let expected =
        good.cost.one_time_usd / (r.teacher.per_request_usd - good.cost.per_request_usd.unwrap());
    assert!((be - expected).abs() < 1e-6 * expected);
}

#[test]
fn empty_ledger_is_estimated_and_says_so() {
    let n = 80;
    let d = task_dir(n, true);
    let spec = TaskSpec::load(d.path().join("task.toml")).unwrap();
    let ledger_path = d.path().join("ledger.db");
    Ledger::open(&ledger_path).unwrap();
    let mut o = opts(d.path());
    o.ledger = Some(ledger_path);
    let r = run_eval_with(&spec, &o, students(n)).unwrap().report;
    assert_eq!(r.teacher.basis, "estimated");
    assert!(r
        .warnings
        .iter()
        .any(|w| w.contains("no rows for task `banking77`")));
    // The Banking77 prompt lists 77 labels: hundreds of tokens.
    assert!(
        r.teacher.mean_prompt_tokens > 300.0,
        "{}",
        r.teacher.mean_prompt_tokens
    );
    let good = r.options.iter().find(|o| o.name == "good").unwrap();
    let labelling = good
        .cost
        .one_time
        .iter()
        .find(|c| c.what == "labelling")
        .unwrap();
    assert!(labelling.basis.starts_with("estimated"));
    assert!((labelling.usd - 10_000.0 * r.teacher.per_request_usd).abs() < 1e-9);
}

#[test]
fn zero_and_negative_prices_are_refused_or_flagged() {
    let n = 40;
    let d = task_dir(n, true);
    let spec = TaskSpec::load(d.path().join("task.toml")).unwrap();
    let mut o = opts(d.path());
    o.hardware.core_hour_usd = 0.0;
    let e = run_eval_with(&spec, &o, students(n))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("--core-hour-usd"), "{e}");
    o.hardware.core_hour_usd = -1.0;
    assert!(run_eval_with(&spec, &o, students(n)).is_err());
    assert!(!d.path().join("out/metrics.json").exists());

    // A teacher priced at $0 (a price-table override): a partial report, no savings claimed.
    let prices = d.path().join("prices.json");
    std::fs::write(
        &prices,
        r#"{"version":"free","models":{"free-model":{"provider":"openai","input":0,"output":0}}}"#,
    )
    .unwrap();
    let mut o = opts(d.path());
    o.prices = Some(prices);
    o.teacher_price_model = Some("free-model".into());
    let r = run_eval_with(&spec, &o, students(n)).unwrap().report;
    assert!(r.partial);
    assert!(r.warnings.iter().any(|w| w.contains("$0 per request")));
    assert!(r
        .options
        .iter()
        .all(|o| o.cost.saving.is_none() && o.cost.break_even_requests.is_none()));

    // An unknown price model is an error that says what to do.
    let mut o = opts(d.path());
    o.teacher_price_model = Some("no-such-model".into());
    let e = run_eval_with(&spec, &o, students(n))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("no-such-model") && e.contains("--teacher-price-model"),
        "{e}"
    );
}

#[test]
fn teacher_labels_for_other_texts_are_refused_with_file_and_line() {
    let n = 30;
    let d = task_dir(n, true);
    let spec = TaskSpec::load(d.path().join("task.toml")).unwrap();
    let p = d.path().join("teacher.jsonl");
    write_teacher_labels(&p, n, 0.94);
    let text = std::fs::read_to_string(&p).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut v: serde_json::Value = serde_json::from_str(&lines[2]).unwrap();
    v["text"] = "something else entirely".into();
    lines[2] = v.to_string();
    std::fs::write(&p, lines.join("\n")).unwrap();
    let mut o = opts(d.path());
    o.teacher_labels = Some(p);
    let e = run_eval_with(&spec, &o, students(n))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("teacher.jsonl:3: field `text`"), "{e}");
}
