//! `distill eval --curve`: a learning curve drawn through the binary from a real teacher dataset
//! (the sim-teacher labelling a Banking77 slice): one student per size and seed, each evaluated
//! like any model, labelling charged for its labels only, the cheapest sufficient size marked.

mod common;

use common::{
    banking77, distill_in as run, distill_ok as ok, every_nth_csv, read_json, sim_teacher,
    teach_via,
};
use std::path::Path;

/// `distill eval --curve SIZES` of the sim-teacher's `teacher.jsonl` on `test.csv` into `out`,
/// `extra` flags added.
fn curve(dir: &Path, sizes: &str, out: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "eval",
        "--task",
        "task.toml",
        "--test",
        "test.csv",
        "--teacher-labels",
        "teacher-test.jsonl",
        "--train",
        "teacher.jsonl",
        "--curve",
        sizes,
        "--curve-seeds",
        "2",
        "--threads",
        "2",
        "--out",
        out,
    ];
    args.extend_from_slice(extra);
    ok(dir, &args)
}

#[test]
fn a_learning_curve_prices_each_size_by_its_own_labels_and_marks_the_cheapest_sufficient() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let n_train = every_nth_csv(&banking77().join("train.csv"), &dir.join("train.csv"), 5);
    every_nth_csv(&banking77().join("test.csv"), &dir.join("test.csv"), 3);
    common::banking77_task(dir);

    let (mut sim, url) = sim_teacher(dir, "task.toml", &["--error-rate", "0"]);
    for (input, out) in [
        ("train.csv", "teacher.jsonl"),
        ("test.csv", "teacher-test.jsonl"),
    ] {
        teach_via(dir, "task.toml", input, out, &url);
    }
    let _ = sim.kill();
    let _ = sim.wait();

    let o = curve(dir, "200,600,all", "evals", &[]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("Learning curve: `linear` students"),
        "{stdout}"
    );

    let m = read_json(&dir.join("evals/metrics.json"));
    let c = &m["curve"];
    let rows = c["rows"].as_array().unwrap();
    let points = c["points"].as_array().unwrap();
    let sizes: Vec<u64> = rows
        .iter()
        .map(|r| r["n_labels"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, vec![200, 600, n_train as u64]);
    assert_eq!(points.len(), 6);
    assert_eq!(c["seeds"], 2);
    assert_eq!(c["order"], "random");

    // Labelling is charged per label at what this dataset's labels cost on average.
    let records = std::fs::read_to_string(dir.join("teacher.jsonl")).unwrap();
    let costs: Vec<f64> = records
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["cost_usd"]
                .as_f64()
                .unwrap()
        })
        .collect();
    let per_label = costs.iter().sum::<f64>() / costs.len() as f64;
    assert!(per_label > 0.0);
    for p in points {
        let n = p["n_labels"].as_f64().unwrap();
        let labelling = p["labelling_usd"].as_f64().unwrap();
        assert!(
            (labelling - n * per_label).abs() < 1e-9 * n.max(1.0),
            "{n} labels charged {labelling}, expected {}",
            n * per_label
        );
        // Month 1 is the run rate plus that point's one-time costs.
        let one_time = labelling + p["training_usd"].as_f64().unwrap();
        let month1 = p["month1_usd"].as_f64().unwrap();
        let steady = p["steady_monthly_usd"].as_f64().unwrap();
        assert!((month1 - steady - one_time).abs() < 1e-6, "{p}");
    }

    // More labels, a better student.
    let mean = |r: &serde_json::Value, k: &str| r[k]["mean"].as_f64().unwrap();
    assert!(
        mean(&rows[0], "student_quality") + 0.1 < mean(&rows[2], "student_quality"),
        "{rows:?}"
    );
    // The verdict follows the stated rule from the rows themselves.
    let floor = c["floor"].as_f64().unwrap();
    let full = mean(&rows[2], "escalated");
    let sufficient: Vec<u64> = rows
        .iter()
        .filter(|r| {
            mean(r, "cascade_quality") >= floor && mean(r, "escalated") <= full + 0.02 + 1e-12
        })
        .map(|r| r["n_labels"].as_u64().unwrap())
        .collect();
    for r in rows {
        let n = r["n_labels"].as_u64().unwrap();
        assert_eq!(
            r["sufficient"].as_bool().unwrap(),
            sufficient.contains(&n),
            "{r}"
        );
    }
    assert_eq!(
        c["cheapest_sufficient"].as_u64(),
        sufficient.first().copied()
    );

    // An encoder-head curve (its points share one embedding of the test set) draws the same way;
    // at 600 labels the frozen encoder's head beats the linear student, as it does when trained
    // and evaluated alone (an answer from another sentence's embedding would be near chance).
    let base = common::minilm();
    curve(
        dir,
        "200,600",
        "evals-head",
        &[
            "--curve-student",
            "encoder-head",
            "--base",
            base.to_str().unwrap(),
        ],
    );
    let head = read_json(&dir.join("evals-head/metrics.json"));
    let head_rows = head["curve"]["rows"].as_array().unwrap();
    assert_eq!(head_rows.len(), 2);
    let (linear_600, head_600) = (
        mean(&rows[1], "student_quality"),
        mean(&head_rows[1], "student_quality"),
    );
    assert!(
        head_600 > 0.6 && head_600 > linear_600,
        "encoder-head {head_600} vs linear {linear_600} at 600 labels"
    );

    // An ensemble curve trains both of those students per point (same prefix, split and seed)
    // and averages them, as the quickstart ships; the mean beats the linear student alone. A
    // member answering from the wrong embeddings would drag it below the linear student.
    curve(
        dir,
        "200,600",
        "evals-ensemble",
        &[
            "--curve-student",
            "ensemble",
            "--base",
            base.to_str().unwrap(),
        ],
    );
    let ens = read_json(&dir.join("evals-ensemble/metrics.json"));
    assert_eq!(ens["curve"]["student"], "ensemble");
    let ens_rows = ens["curve"]["rows"].as_array().unwrap();
    let ens_600 = mean(&ens_rows[1], "student_quality");
    assert!(
        ens_600 > linear_600 + 0.05,
        "ensemble {ens_600} vs linear {linear_600} (encoder-head {head_600}) at 600 labels"
    );

    let md = std::fs::read_to_string(dir.join("evals/report.md")).unwrap();
    assert!(md.contains("## Learning curve"), "{md}");
    let html = std::fs::read_to_string(dir.join("evals/report.html")).unwrap();
    let at = html
        .find("<h2>Learning curve</h2>")
        .expect("a learning-curve section");
    assert!(html[at..].contains("<svg"), "the chart is drawn");

    // Mistakes are named, not half-done: `eval --task task.toml ARGS --out e2` exits with
    // `code`; its stderr.
    let refused = |args: &[&str], code: i32| -> String {
        let mut all = vec!["eval", "--task", "task.toml"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--out", "e2"]);
        let o = run(dir, &all);
        assert_eq!(o.status.code(), Some(code), "{args:?}");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let err = refused(&["--test", "test.csv", "--curve", "200"], 1);
    assert!(err.contains("--train"));
    let err = refused(
        &[
            "--test",
            "test.csv",
            "--train",
            "teacher.jsonl",
            "--curve",
            "200,99999",
        ],
        1,
    );
    assert!(
        err.contains("99999") && err.contains("teacher.jsonl"),
        "{err}"
    );
    let err = refused(&["--curve", "200,lots"], 2);
    assert!(err.contains("`lots`"));
    let err = refused(&["--curve", "200", "--curve-student", "forest"], 2);
    assert!(
        err.contains("`forest`") && err.contains("ensemble"),
        "{err}"
    );
    assert!(
        !dir.join("e2").exists(),
        "nothing is written for a refused curve"
    );
}
