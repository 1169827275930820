//! `distill quantize` as a user runs it, on an encoder-head student of the real all-MiniLM-L6-v2
//! (installed by scripts/setup.sh, which the test command runs) trained on a Banking77 slice:
//! the int8 copy predicts, `distill eval` sets it beside its f32 parent (paired Δ, latency,
//! cost) in metrics.json and both reports, `train --quantize int8` writes the same copy, and
//! what cannot be quantised is refused with exit 1, naming why, writing nothing.

mod common;

use common::{banking77, distill_in as distill, every_nth_csv, repo};
use std::path::Path;
use std::process::Output;

fn ok(out: Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn an_int8_student_predicts_and_is_evaluated_beside_its_f32_parent() {
    let base = common::minilm();
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    every_nth_csv(&banking77().join("train.csv"), &dir.join("train.csv"), 10);
    every_nth_csv(&banking77().join("test.csv"), &dir.join("test.csv"), 10);
    let task = repo().join("datasets/banking77/task.toml");
    let task = task.to_str().unwrap();
    let base = base.to_str().unwrap();
    let train = |out: &str, extra: &[&str]| {
        let mut args = vec![
            "train",
            "--task",
            task,
            "--data",
            "train.csv",
            "--student",
            "encoder-head",
            "--base",
            base,
            "--out",
            out,
            "--threads",
            "2",
            "--device",
            "cpu",
        ];
        args.extend_from_slice(extra);
        ok(distill(dir, &args))
    };
    let printed = train("head", &["--quantize", "int8"]);
    assert!(printed.contains("model: head-int8"), "{printed}");
    assert!(printed.contains("dense layers int8"), "{printed}");

    // The same copy through `distill quantize` (only the int8 model's creation time differs).
    let printed = ok(distill(
        dir,
        &["quantize", "--model", "head", "--out", "q8"],
    ));
    assert!(printed.contains("36 dense layers int8"), "{printed}");
    let meta = |p: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join(p).join("distill.json")).unwrap()).unwrap()
    };
    assert_eq!(meta("q8")["quantization"]["scheme"], "int8-dynamic");
    assert_eq!(meta("q8")["quantization"]["parent"]["path"], "head");
    assert_eq!(
        meta("q8")["quantization"]["parent"]["created"],
        meta("head")["created"]
    );
    assert_eq!(
        std::fs::read(dir.join("q8/model.safetensors")).unwrap(),
        std::fs::read(dir.join("head-int8/model.safetensors")).unwrap()
    );

    let predicted = ok(distill(
        dir,
        &[
            "predict",
            "--model",
            "q8",
            "--input",
            "test.csv",
            "--out",
            "p.jsonl",
            "--gold-column",
            "category",
        ],
    ));
    assert!(predicted.contains("accuracy vs gold"), "{predicted}");
    assert!(
        std::fs::read_to_string(dir.join("p.jsonl"))
            .unwrap()
            .lines()
            .count()
            > 250
    );

    ok(distill(
        dir,
        &[
            "eval", "--task", task, "--test", "test.csv", "--model", "head", "--model", "q8",
            "--out", "ev",
        ],
    ));
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("ev/metrics.json")).unwrap()).unwrap();
    let q = &metrics["quantized"][0];
    assert_eq!(q["student"], "q8");
    assert_eq!(q["parent"], "head");
    assert_eq!(q["reference"], "gold");
    let (delta, lo, hi) = (
        q["delta"]["value"].as_f64().unwrap(),
        q["delta"]["lo"].as_f64().unwrap(),
        q["delta"]["hi"].as_f64().unwrap(),
    );
    assert!(lo <= delta && delta <= hi, "{q}");
    let acc = |name: &str| {
        metrics["options"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == name)
            .unwrap()["vs_gold"]["accuracy"]["value"]
            .as_f64()
            .unwrap()
    };
    assert!((delta - (acc("q8") - acc("head"))).abs() < 1e-9, "{q}");
    assert!(delta.abs() <= 0.02, "int8 moved accuracy by {delta}");
    assert!(q["same_label"].as_f64().unwrap() >= 0.95, "{q}");
    assert!(q["student_p50_ms"].as_f64().unwrap() > 0.0, "{q}");
    for report in ["ev/report.md", "ev/report.html"] {
        let text = std::fs::read_to_string(dir.join(report)).unwrap();
        assert!(
            text.contains("int8 students beside their f32 parents"),
            "{report}"
        );
    }

    // Refusals: a linear student, an int8 model, --out on the model itself. Nothing written.
    train_linear(dir, task);
    for (args, want) in [
        (
            vec!["quantize", "--model", "lin", "--out", "x"],
            "no encoder",
        ),
        (
            vec!["quantize", "--model", "q8", "--out", "x"],
            "already int8",
        ),
        (
            vec!["quantize", "--model", "head", "--out", "head"],
            "beside",
        ),
    ] {
        let out = distill(dir, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    assert!(!dir.join("x").exists());
    let out = distill(
        dir,
        &[
            "train",
            "--task",
            task,
            "--data",
            "train.csv",
            "--out",
            "lin2",
            "--quantize",
            "int8",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("encoder students"));
    assert!(!dir.join("lin2").exists());
}

fn train_linear(dir: &Path, task: &str) {
    ok(distill(
        dir,
        &[
            "train",
            "--task",
            task,
            "--data",
            "train.csv",
            "--out",
            "lin",
        ],
    ));
}
