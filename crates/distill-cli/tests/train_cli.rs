//! `distill train` as a user runs it with stderr going to a log file: the per-epoch dev
//! accuracy of a fine-tune reaches the log (indicatif drops its bar and anything printed through
//! it when stderr is not a terminal), `--quiet` silences it, and an explicit `--patience` is the
//! one recorded. The real all-MiniLM-L6-v2 (installed by scripts/setup.sh, which the test
//! command runs) on a Banking77 slice, one epoch.

mod common;

use common::{banking77, head_csv, read_json, repo};
use std::path::Path;
use std::process::{Command, Output};

/// `distill` run in `dir` with its state there, on the Banking77 task.
fn distill_train(dir: &Path, global: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_distill"));
    c.current_dir(dir)
        .args(["--state-dir", "state"])
        .args(global)
        .args(["train", "--task"])
        .arg(repo().join("datasets/banking77/task.toml"))
        .args(["--data", "train.csv"]);
    c
}

/// One epoch of encoder-finetune on the real MiniLM.
fn finetune(dir: &Path, out: &str, global: &[&str]) -> Output {
    distill_train(dir, global)
        .args(["--student", "encoder-finetune", "--base"])
        .arg(repo().join("models/base/all-MiniLM-L6-v2"))
        .args([
            "--out",
            out,
            "--epochs",
            "1",
            "--patience",
            "1",
            "--threads",
            "2",
        ])
        .args(["--max-len", "32", "--device", "cpu"])
        .output()
        .unwrap()
}

#[test]
fn finetune_epoch_lines_reach_a_log_file_and_quiet_silences_them() {
    let base = repo().join("models/base/all-MiniLM-L6-v2/model.safetensors");
    assert!(
        base.is_file(),
        "{} missing: run scripts/setup.sh",
        base.display()
    );
    let d = tempfile::tempdir().unwrap();
    // Three intents (the file is ordered by intent).
    head_csv(
        &banking77().join("train.csv"),
        &d.path().join("train.csv"),
        240,
    );

    let out = finetune(d.path(), "m", &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let epoch = stderr
        .lines()
        .find(|l| l.starts_with("epoch 1: train loss "))
        .unwrap_or_else(|| panic!("no epoch line in:\n{stderr}"));
    assert!(epoch.contains(", dev accuracy "), "{epoch}");
    assert!(
        !stderr.contains('\r'),
        "a progress bar was drawn into the log:\n{stderr}"
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.path().join("m/distill.json")).unwrap()).unwrap();
    assert_eq!(meta["epochs_run"], 1);
    assert_eq!(meta["hyper"]["patience"], 1);

    let quiet = finetune(d.path(), "q", &["--quiet"]);
    let stderr = String::from_utf8_lossy(&quiet.stderr);
    assert!(quiet.status.success(), "{stderr}");
    assert!(
        !stderr.contains("epoch 1"),
        "--quiet still printed:\n{stderr}"
    );
}

#[test]
fn zero_patience_is_refused_naming_the_flag_and_writes_nothing() {
    let d = tempfile::tempdir().unwrap();
    head_csv(
        &banking77().join("train.csv"),
        &d.path().join("train.csv"),
        240,
    );
    let out = distill_train(d.path(), &[])
        .args(["--out", "m", "--patience", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--patience must be at least 1, got 0"),
        "{stderr}"
    );
    assert!(!d.path().join("m").exists());
}

#[test]
fn a_dev_file_of_one_class_calibrates_and_an_empty_one_is_named() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    head_csv(&banking77().join("train.csv"), &dir.join("train.csv"), 240);
    // Held-out rows of the first intent only: a dev file need not hold every class (training
    // data must).
    head_csv(&banking77().join("test.csv"), &dir.join("dev.csv"), 20);
    std::fs::copy(
        banking77().join("categories.json"),
        dir.join("categories.json"),
    )
    .unwrap();
    let train = |dev: &str, out: &str| {
        distill_train(dir, &[])
            .args(["--student", "linear", "--dev", dev, "--out", out])
            .output()
            .unwrap()
    };
    let o = train("dev.csv", "m");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let meta = read_json(&dir.join("m/distill.json"));
    assert_eq!(meta["n_dev"], 20, "{meta}");
    assert_eq!(meta["n_train"], 240, "every --data example trains: {meta}");
    // One class calibrates nothing: no temperature is fitted, and the user is told.
    assert_eq!(meta["temperature"], 1.0, "{meta}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("warning: --dev dev.csv: every example has the label `card_arrival`"),
        "{err}"
    );

    // A header and no rows: named as the dev file, with nothing written.
    std::fs::write(dir.join("empty.csv"), "text,category\n").unwrap();
    let o = train("empty.csv", "e");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("empty.csv") && err.contains("no labelled examples for the dev split"),
        "{err}"
    );
    assert!(!dir.join("e").exists());
}
