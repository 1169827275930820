//! `distill quickstart --fast` end to end, through the real binary, on a copy of the Banking77
//! task with a slice of its data: the simulated teacher labels both files, a linear student
//! trains, eval writes its report with a cascade; a second run pays for nothing.

mod common;

use common::{banking77, head_csv, repo};
use std::path::Path;
use std::process::Command;

fn ledger_rows(state: &Path) -> usize {
    let l = distill_core::ledger::Ledger::open(state.join("ledger.db")).unwrap();
    l.rows_for_task("banking77").unwrap().len()
}

fn quickstart(dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_distill"))
        .current_dir(dir)
        .args([
            "--state-dir",
            "state",
            "quickstart",
            "--fast",
            "--task",
            "data/task.toml",
            "--models-dir",
            "models",
            "--evals-dir",
            "evals",
            "--threads",
            "2",
        ])
        .output()
        .unwrap()
}

#[test]
fn quickstart_fast_runs_the_whole_loop_and_pays_once() {
    let shared = banking77();
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::copy(
        repo().join("datasets/banking77/task.toml"),
        data.join("task.toml"),
    )
    .unwrap();
    std::fs::copy(shared.join("categories.json"), data.join("categories.json")).unwrap();
    // The whole training set (a smaller one leaves the linear student too unsure for a cascade
    // to beat the teacher's accuracy) and half the test set.
    head_csv(
        &shared.join("train.csv"),
        &data.join("train.csv"),
        usize::MAX,
    );
    head_csv(&shared.join("test.csv"), &data.join("test.csv"), 1500);

    let out = quickstart(d.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("banking77-linear") && stdout.contains("cascade:"),
        "{stdout}"
    );
    assert!(
        stdout.contains("report: evals/banking77-quickstart/report.html"),
        "{stdout}"
    );
    for f in ["teacher.jsonl", "teacher-test.jsonl"] {
        assert!(data.join(f).exists(), "{f} missing");
    }
    assert!(d
        .path()
        .join("models/banking77-linear/model.safetensors")
        .exists());
    let metrics: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(d.path().join("evals/banking77-quickstart/metrics.json")).unwrap(),
    )
    .unwrap();
    // The simulated teacher is 94% accurate on both files (the test file is gold for it too).
    let teacher = metrics["options"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == "teacher")
        .unwrap();
    let acc = teacher["vs_gold"]["accuracy"]["value"].as_f64().unwrap();
    assert!((acc - 0.94).abs() < 0.025, "teacher accuracy {acc}");
    // A real cascade: confident answers stay local, and the floor held on the held-out part.
    let cascade = &metrics["cascade"];
    let threshold = cascade["threshold"].as_f64().unwrap();
    assert!(threshold > 0.0 && threshold < 1.0, "{cascade}");
    let escalated = cascade["held_out"]["escalated_fraction"].as_f64().unwrap();
    assert!(escalated > 0.0 && escalated < 0.5, "{cascade}");
    assert_eq!(cascade["floor_held"], true, "{cascade}");
    // The cascade is bound to the model it was tuned on (what `serve --threshold` matches).
    let fingerprint =
        distill_train::model_fingerprint(&d.path().join("models/banking77-linear")).unwrap();
    assert_eq!(cascade["model_sha256"], fingerprint.as_str(), "{cascade}");
    assert_eq!(metrics["test"]["n"], 1500);
    let paid = ledger_rows(&d.path().join("state"));
    assert_eq!(paid, 10_003 + 1500, "one paid call per input");

    // Again: the finished teacher datasets are reused; nothing is paid twice.
    let again = quickstart(d.path());
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("reusing"));
    assert_eq!(ledger_rows(&d.path().join("state")), paid);
}

#[test]
fn quickstart_without_data_says_how_to_get_it() {
    let d = tempfile::tempdir().unwrap();
    std::fs::copy(
        repo().join("datasets/banking77/task.toml"),
        d.path().join("task.toml"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_distill"))
        .current_dir(d.path())
        .args([
            "--state-dir",
            "state",
            "quickstart",
            "--fast",
            "--task",
            "task.toml",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("scripts/setup.sh"), "{err}");
    assert!(
        !d.path().join("state/ledger.db").exists(),
        "nothing spent or written"
    );
}
