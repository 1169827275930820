//! `distill eval --predictions` on a fixture built from real Banking77 test rows, then
//! scikit-learn recomputes the metrics from the same predictions (scripts/verify/metrics_vs_sklearn.py).
//!
//! The Python side runs with `$DISTILL_TEST_PYTHON` (scripts/test.sh sets it to a venv with
//! scikit-learn); when that is unset and no `python3` with scikit-learn exists, the comparison
//! is skipped with a message, but the eval itself is still checked.

mod common;

use common::{banking77, python_with_sklearn, repo};
use std::path::{Path, PathBuf};
use std::process::Command;

fn unit(s: &str, salt: u64) -> f64 {
    let mut h: u64 = 1469598103934665603 ^ salt;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(1099511628211);
    }
    h ^= h >> 29;
    h = h.wrapping_mul(0xbf58476d1ce4e5b9);
    h ^= h >> 32;
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Writes task.toml and a predictions.jsonl for the first `n` Banking77 test rows: a teacher
/// right 94% of the time, and two students with label noise and confidences.
fn fixture(dir: &Path, n: usize) -> (PathBuf, PathBuf) {
    let cats = banking77().join("categories.json");
    let labels: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(&cats).unwrap()).unwrap();
    let task = dir.join("task.toml");
    std::fs::write(
        &task,
        format!(
            "name = \"banking77\"\nkind = \"classify\"\n[input]\ntext_column = \"text\"\n\
             gold_column = \"category\"\n[labels]\nfile = \"{}\"\n[teacher]\nprovider = \"openai\"\n\
             model = \"gpt-4o\"\n",
            cats.display()
        ),
    )
    .unwrap();
    let test = std::fs::read_to_string(banking77().join("test.csv")).unwrap();
    let mut out = String::new();
    let mut rdr = csv_lines(&test);
    for i in 0..n {
        let (text, gold) = rdr.next().unwrap();
        let g = labels.iter().position(|l| *l == gold).unwrap();
        let other = |k: usize| labels[(g + k) % labels.len()].clone();
        let teacher = if unit(&text, 1) < 0.94 {
            gold.clone()
        } else {
            other(1)
        };
        let mut preds = serde_json::Map::new();
        for (name, noise, salt) in [("linear", 0.2, 2u64), ("encoder-head", 0.1, 3)] {
            let u = unit(&text, salt);
            let (label, conf) = if u < noise {
                (
                    other(2 + (u * 1000.0) as usize % 5),
                    0.2 + 0.5 * unit(&text, salt + 9),
                )
            } else {
                (gold.clone(), 0.5 + 0.5 * unit(&text, salt + 9))
            };
            preds.insert(
                name.into(),
                serde_json::json!({"label": label, "confidence": conf}),
            );
        }
        let line = serde_json::json!({
            "id": (i + 1).to_string(), "text": text, "gold": gold, "teacher": teacher,
            "predictions": preds,
        });
        out.push_str(&line.to_string());
        out.push('\n');
    }
    let p = dir.join("predictions.jsonl");
    std::fs::write(&p, out).unwrap();
    (task, p)
}

/// Minimal reader for the two-column Banking77 CSV (quoted fields, doubled quotes).
fn csv_lines(s: &str) -> impl Iterator<Item = (String, String)> + '_ {
    let mut chars = s.chars().peekable();
    // Skip the header line.
    for c in chars.by_ref() {
        if c == '\n' {
            break;
        }
    }
    std::iter::from_fn(move || {
        let mut fields = vec![String::new()];
        let mut quoted = false;
        loop {
            let c = chars.next()?;
            match c {
                '"' if quoted && chars.peek() == Some(&'"') => {
                    chars.next();
                    fields.last_mut()?.push('"');
                }
                '"' => quoted = !quoted,
                ',' if !quoted => fields.push(String::new()),
                '\r' if !quoted => {}
                '\n' if !quoted => break,
                c => fields.last_mut()?.push(c),
            }
        }
        Some((
            fields[0].clone(),
            fields.get(1).cloned().unwrap_or_default(),
        ))
    })
}

fn distill(state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_distill"));
    c.env("DISTILL_STATE_DIR", state).arg("--quiet");
    c
}

#[test]
fn replayed_eval_matches_scikit_learn() {
    let d = tempfile::tempdir().unwrap();
    let (task, preds) = fixture(d.path(), 700);
    let out = d.path().join("eval");
    let o = distill(&d.path().join("state"))
        .args(["eval", "--task"])
        .arg(&task)
        .arg("--predictions")
        .arg(&preds)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        stdout.contains("linear") && stdout.contains("cascade:encoder-head"),
        "{stdout}"
    );
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert!(m["cascade"]["threshold"].is_number(), "{}", m["cascade"]);
    let Some(py) = python_with_sklearn() else {
        eprintln!("skipping the scikit-learn comparison: no python3 with scikit-learn (set DISTILL_TEST_PYTHON)");
        return;
    };
    let v = Command::new(py)
        .arg(repo().join("scripts/verify/metrics_vs_sklearn.py"))
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        v.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    // A tampered metric must be caught (the check can fail).
    let mut m2 = m.clone();
    let acc = m2["options"][2]["vs_gold"]["accuracy"]["value"]
        .as_f64()
        .unwrap();
    m2["options"][2]["vs_gold"]["accuracy"]["value"] = (acc + 1e-6).into();
    std::fs::write(out.join("metrics.json"), m2.to_string()).unwrap();
    let bad = Command::new(python_with_sklearn().unwrap())
        .arg(repo().join("scripts/verify/metrics_vs_sklearn.py"))
        .arg(&out)
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

#[test]
fn bad_flags_fail_with_clear_messages() {
    let d = tempfile::tempdir().unwrap();
    let (task, preds) = fixture(d.path(), 50);
    let run = |extra: &[&str]| {
        let o = distill(&d.path().join("state"))
            .args(["eval", "--task"])
            .arg(&task)
            .arg("--predictions")
            .arg(&preds)
            .args(["--out"])
            .arg(d.path().join("eval"))
            .args(extra)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    let (code, err) = run(&["--floor", "f1=0.9"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("unknown metric `f1`"), "{err}");
    let (code, err) = run(&["--core-hour-usd", "-1"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("--core-hour-usd must be a price above 0"),
        "{err}"
    );
    let (code, err) = run(&["--calibration-fraction", "1.5"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("--calibration-fraction"), "{err}");
    assert!(!d.path().join("eval/metrics.json").exists());
}
