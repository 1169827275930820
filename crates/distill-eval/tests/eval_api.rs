//! `--api` students against the simulated teacher: asked through the teach client, scored,
//! priced by their real tokens at their own model's price, cached so a re-run pays nothing.

mod common;

use common::*;
use distill_core::ledger::Ledger;
use distill_core::TaskSpec;
use distill_eval::report::OptionKind;
use distill_eval::{run_eval_with, EvalOptions};

#[test]
fn api_student_is_scored_priced_and_never_paid_twice() {
    let n = 300;
    let d = task_dir(n, true);
    let spec = TaskSpec::load(d.path().join("task.toml")).unwrap();
    write_teacher_labels(&d.path().join("teacher.jsonl"), n, 0.94);
    let mut sim = distill_sim::SimConfig::new(spec.clone());
    sim.accuracy = 0.8;
    sim.price_as = "gpt-4o-mini".into();
    sim.require_api_key = false;
    let sim = distill_sim::SimServer::spawn(sim).unwrap();

    let mut o = EvalOptions::new(d.path().join("out"));
    o.threads = Some(1);
    o.teacher_labels = Some(d.path().join("teacher.jsonl"));
    o.api = vec![format!("openai:gpt-4o-mini@{}", sim.base_url())];
    o.ledger = Some(d.path().join("ledger.sqlite"));
    o.cache = Some(d.path().join("cache.sqlite"));
    o.api_concurrency = 8;
    let out = run_eval_with(&spec, &o, vec![]).unwrap();
    let api = out
        .report
        .options
        .iter()
        .find(|x| x.kind == OptionKind::Api)
        .expect("the API student is in the report");
    assert_eq!(api.name, "openai:gpt-4o-mini");
    let acc = api.vs_gold.as_ref().unwrap().accuracy.value;
    assert!((acc - 0.8).abs() < 0.08, "accuracy {acc}");
    // Real tokens × gpt-4o-mini's price: a few hundred prompt tokens at $0.15/M.
    let per = api.cost.per_request_usd.unwrap();
    let teacher = out.report.teacher.per_request_usd;
    assert!(
        per > 0.0 && per < teacher / 5.0,
        "{per} vs teacher {teacher}"
    );
    let paid = sim.stats().billable;
    assert_eq!(paid, n as u64, "one paid call per test item");
    let rows = Ledger::open(d.path().join("ledger.sqlite"))
        .unwrap()
        .rows_for_task("banking77")
        .unwrap();
    assert_eq!(rows.len(), n);
    assert!(rows
        .iter()
        .all(|r| r.source == "eval" && r.model == "gpt-4o-mini"));
    let ledger_mean: f64 = rows.iter().map(|r| r.cost_usd).sum::<f64>() / n as f64;
    assert!((ledger_mean - per).abs() < 1e-12, "{ledger_mean} vs {per}");
    assert!(out.report_md().exists());
    let md = std::fs::read_to_string(out.report_md()).unwrap();
    assert!(md.contains("openai:gpt-4o-mini"), "{md}");

    // Re-running the same eval is answered from the cache: nothing is paid twice, same numbers.
    let again = run_eval_with(&spec, &o, vec![]).unwrap();
    assert_eq!(sim.stats().billable, paid);
    let api2 = again
        .report
        .options
        .iter()
        .find(|x| x.kind == OptionKind::Api)
        .unwrap();
    assert_eq!(api2.vs_gold, api.vs_gold);
    assert_eq!(api2.cost.per_request_usd, api.cost.per_request_usd);
}

#[test]
fn bad_api_argument_is_a_clear_error() {
    let d = task_dir(20, true);
    let spec = TaskSpec::load(d.path().join("task.toml")).unwrap();
    let mut o = EvalOptions::new(d.path().join("out"));
    o.api = vec!["gemini-pro".into()];
    let e = run_eval_with(&spec, &o, vec![]).err().unwrap().to_string();
    assert!(
        e.contains("--api `gemini-pro`") && e.contains("provider:model"),
        "{e}"
    );
    assert!(
        !d.path().join("out").exists(),
        "nothing written on bad input"
    );
}
