//! `report.md` snapshot (insta): an eval of test-double students on 300 Banking77 test rows,
//! replayed from its predictions so the report has no timing-dependent numbers.

mod common;

use common::*;
use distill_core::TaskSpec;
use distill_eval::report::markdown;
use distill_eval::{run_eval_with, EvalOptions, NamedStudent};

#[test]
fn markdown_report_snapshot() {
    let n = 300;
    let d = task_dir(n, true);
    let spec = TaskSpec::load(d.path().join("task.toml")).unwrap();
    let teacher = d.path().join("teacher.jsonl");
    write_teacher_labels(&teacher, n, 0.94);
    let mut first = EvalOptions::new(d.path().join("first"));
    first.teacher_labels = Some(teacher.clone());
    first.latency_samples = 5;
    let students = vec![
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
    ];
    run_eval_with(&spec, &first, students).unwrap();

    let mut replay = EvalOptions::new(d.path().join("replay"));
    replay.predictions = Some(d.path().join("first/predictions.jsonl"));
    replay.teacher_labels = Some(teacher);
    // 90 calibration items cannot vouch for the teacher's own accuracy; a lower floor shows a
    // working cascade in the snapshot.
    replay.floor = Some((distill_eval::cascade::FloorMetric::Accuracy, 0.85));
    let mut r = run_eval_with(&spec, &replay, vec![]).unwrap().report;
    r.test.path = "predictions.jsonl".into();
    r.test.teacher_labels = Some("teacher.jsonl".into());
    insta::assert_snapshot!(markdown::render(&r));
}
