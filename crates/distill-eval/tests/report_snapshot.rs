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

/// `report.md` of a multilabel eval: 200 real MixSNIPS test requests with gold intent sets, a
/// teacher right 93% of the time and a student 75%, each wrong answer a dropped or an added
/// label, replayed from a predictions file.
#[test]
fn multilabel_markdown_report_snapshot() {
    let d = tempfile::tempdir().unwrap();
    let mix =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/datasets/mixsnips");
    std::fs::write(
        d.path().join("task.toml"),
        format!(
            "name = \"mixsnips\"\nkind = \"multilabel\"\n[input]\nformat = \"jsonl\"\n\
             text_column = \"text\"\ngold_column = \"intents\"\n[labels]\nfile = \"{}\"\n\
             allow_empty = false\n[teacher]\nprovider = \"openai\"\nmodel = \"gpt-4o\"\n",
            mix.join("intents.json").display()
        ),
    )
    .unwrap();
    let spec = TaskSpec::load(d.path().join("task.toml")).unwrap();
    let names = spec.labels.names.clone();
    let text = std::fs::read_to_string(mix.join("test.jsonl")).unwrap();
    let mut out = String::new();
    for (i, line) in text.lines().step_by(11).take(200).enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let text = v["text"].as_str().unwrap().to_string();
        let gold: Vec<String> = serde_json::from_value(v["intents"].clone()).unwrap();
        // A wrong answer: drop a label when there are several, else add the next one.
        let wrong = |salt: u64| {
            let mut s = gold.clone();
            if s.len() > 1 && unit(&text, salt + 100) < 0.5 {
                s.remove(0);
            } else {
                let extra = names.iter().find(|l| !s.contains(l)).unwrap().clone();
                s.push(extra);
            }
            s
        };
        let join = |mut s: Vec<String>| {
            s.sort_by_key(|l| names.iter().position(|n| n == l));
            s.join("|")
        };
        let teacher = if unit(&text, 1) < 0.93 {
            gold.clone()
        } else {
            wrong(1)
        };
        let right = unit(&text, 2) < 0.75;
        let student = if right { gold.clone() } else { wrong(2) };
        let confidence = if right {
            0.55 + 0.45 * unit(&text, 3)
        } else {
            0.2 + 0.6 * unit(&text, 4)
        };
        let row = serde_json::json!({
            "id": (i + 1).to_string(), "text": text, "gold": join(gold.clone()),
            "teacher": join(teacher),
            "predictions": {"linear": {"label": join(student), "confidence": confidence}},
        });
        out.push_str(&row.to_string());
        out.push('\n');
    }
    std::fs::write(d.path().join("predictions.jsonl"), out).unwrap();
    let mut opts = EvalOptions::new(d.path().join("eval"));
    opts.predictions = Some(d.path().join("predictions.jsonl"));
    opts.floor = Some((distill_eval::cascade::FloorMetric::Accuracy, 0.85));
    let mut r = run_eval_with(&spec, &opts, vec![]).unwrap().report;
    r.test.path = "predictions.jsonl".into();
    let q = r.options.iter().find(|o| o.name == "linear").unwrap();
    let sets = q.vs_gold.as_ref().unwrap().sets.as_ref().unwrap();
    assert!(sets.micro_f1.value > q.vs_gold.as_ref().unwrap().accuracy.value);
    insta::assert_snapshot!(markdown::render(&r));
}
