//! An open-set task end to end through the binary: Banking77 with `out_of_scope = "none"`,
//! MixSNIPS utterances (another domain) as the out-of-scope traffic. The sim-teacher answers
//! texts it has no gold for with `none`; a linear student learns `none` from teacher-labelled
//! out-of-scope examples; eval scores out-of-scope recall and prices the out-of-scope traffic
//! at a stated share beside a closed-set student of the same kind.

mod common;

use common::{banking77, distill_ok as distill, head_csv, repo, sim_teacher, teach_via};
use std::path::Path;
use std::process::Command;

/// The first `n` MixSNIPS texts of `file` as a JSONL of `{"text"}`.
fn mixsnips(file: &str, dst: &Path, skip: usize, n: usize) {
    let src = repo().join("../shared/datasets/mixsnips").join(file);
    let text = std::fs::read_to_string(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    let out: String = text
        .lines()
        .skip(skip)
        .take(n)
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            format!("{}\n", serde_json::json!({"text": v["text"]}))
        })
        .collect();
    std::fs::write(dst, out).unwrap();
}

#[test]
fn out_of_scope_is_learned_scored_and_priced_against_a_closed_set_student() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    head_csv(&banking77().join("train.csv"), &dir.join("train.csv"), 4000);
    head_csv(&banking77().join("test.csv"), &dir.join("test.csv"), 1000);
    std::fs::copy(
        banking77().join("categories.json"),
        dir.join("categories.json"),
    )
    .unwrap();
    mixsnips("train.jsonl", &dir.join("oos-train.jsonl"), 0, 600);
    mixsnips("test.jsonl", &dir.join("oos-test.jsonl"), 0, 400);
    let closed = std::fs::read_to_string(repo().join("datasets/banking77/task.toml")).unwrap();
    std::fs::write(dir.join("closed.toml"), &closed).unwrap();
    let open = closed.replacen("[labels]\n", "[labels]\nout_of_scope = \"none\"\n", 1);
    assert_ne!(open, closed, "the worked spec has a [labels] table");
    std::fs::write(dir.join("open.toml"), open).unwrap();

    // The (simulated) teacher: the Banking77 files are its gold; MixSNIPS texts are unknown to
    // it, so an open-set teacher calls them `none` (at its 94% accuracy).
    let (mut sim, url) = sim_teacher(dir, "open.toml", &["--error-rate", "0"]);
    let teach = |input: &str, out: &str| teach_via(dir, "open.toml", input, out, &url);
    teach("oos-train.jsonl", "teacher-oos-train.jsonl");
    teach("oos-test.jsonl", "teacher-oos-test.jsonl");
    teach("test.csv", "teacher-test.jsonl");
    let _ = sim.kill();
    let _ = sim.wait();
    let oos_answers = std::fs::read_to_string(dir.join("teacher-oos-test.jsonl")).unwrap();
    let none = oos_answers.matches("\"label\":\"none\"").count();
    assert!(
        none > 340,
        "the open-set teacher calls MixSNIPS out of scope: {none}/400"
    );

    // Students: open-set (gold Banking77 + the teacher's out-of-scope labels), closed-set.
    distill(
        dir,
        &[
            "train",
            "--task",
            "open.toml",
            "--data",
            "train.csv",
            "--data",
            "teacher-oos-train.jsonl",
            "--out",
            "open-linear",
        ],
    );
    distill(
        dir,
        &[
            "train",
            "--task",
            "closed.toml",
            "--data",
            "train.csv",
            "--out",
            "closed-linear",
        ],
    );
    // The same from examples the user supplies (plain texts, each an example of `none`).
    distill(
        dir,
        &[
            "train",
            "--task",
            "open.toml",
            "--data",
            "train.csv",
            "--out-of-scope-examples",
            "oos-train.jsonl",
            "--out",
            "open-linear-examples",
        ],
    );
    let bad = Command::new(env!("CARGO_BIN_EXE_distill"))
        .current_dir(dir)
        .args([
            "-q",
            "train",
            "--task",
            "closed.toml",
            "--data",
            "train.csv",
        ])
        .args(["--out-of-scope-examples", "oos-train.jsonl", "--out", "x"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("labels.out_of_scope"));
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("open-linear/distill.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(meta["out_of_scope"], "none");

    let o = distill(
        dir,
        &[
            "eval",
            "--task",
            "open.toml",
            "--model",
            "open-linear",
            "--model",
            "closed-linear",
            "--model",
            "open-linear-examples",
            "--test",
            "test.csv",
            "--teacher-labels",
            "teacher-test.jsonl",
            "--out-of-scope",
            "teacher-oos-test.jsonl",
            "--oos-share",
            "0.1",
            "--out",
            "evals",
        ],
    );
    let summary = String::from_utf8_lossy(&o.stdout);
    eprintln!("{summary}");
    assert!(
        summary.contains("out-of-scope traffic (10.0% of requests"),
        "{summary}"
    );
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("evals/metrics.json")).unwrap())
            .unwrap();
    assert_eq!(m["open_set"]["share"], 0.1);
    assert_eq!(m["open_set"]["n_out_of_scope"], 400);
    let pop_oos = m["open_set"]["population_out_of_scope"].as_f64().unwrap();
    let pop_in = m["open_set"]["population_in_scope"].as_f64().unwrap();
    assert!(
        (pop_oos / (pop_oos + pop_in) - 0.1).abs() < 0.01,
        "{}",
        m["open_set"]
    );
    let option = |name: &str| {
        m["options"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == name)
            .unwrap_or_else(|| panic!("no option {name}"))
            .clone()
    };
    let open_q = &option("open-linear")["open_set"];
    let closed_q = &option("closed-linear")["open_set"];
    let recall = open_q["oos_recall"]["value"].as_f64().unwrap();
    assert!(
        recall > 0.85,
        "open-set student's out-of-scope recall {recall}"
    );
    assert_eq!(closed_q["oos_recall"]["value"], 0.0);
    let examples_recall = option("open-linear-examples")["open_set"]["oos_recall"]["value"]
        .as_f64()
        .unwrap();
    assert!(examples_recall > 0.85, "{examples_recall}");
    assert!(closed_q["oos_precision_at_mix"].is_null());
    let in_open = open_q["in_scope_accuracy"]["value"].as_f64().unwrap();
    let in_closed = closed_q["in_scope_accuracy"]["value"].as_f64().unwrap();
    assert!(
        in_open > in_closed - 0.03,
        "in-scope accuracy {in_open} vs closed {in_closed}"
    );
    // The open-set cascade answers most out-of-scope requests locally; the closed-set one
    // escalates them (pays the teacher) or answers them wrongly.
    let casc_open = &option("cascade:open-linear")["open_set"];
    let casc_closed = &option("cascade:closed-linear")["open_set"];
    assert!(
        casc_open["accuracy_at_mix"].as_f64().unwrap()
            > casc_closed["accuracy_at_mix"].as_f64().unwrap() - 0.005,
        "{casc_open} vs {casc_closed}"
    );
    assert!(
        casc_open["oos_escalated"].as_f64().unwrap()
            < casc_closed["oos_escalated"].as_f64().unwrap(),
        "{casc_open} vs {casc_closed}"
    );
    let report = std::fs::read_to_string(dir.join("evals/report.md")).unwrap();
    assert!(report.contains("## Out-of-scope traffic"), "{report}");
    assert!(m["warnings"].as_array().unwrap().iter().any(|w| w
        .as_str()
        .unwrap()
        .contains("closed-linear")
        && w.as_str().unwrap().contains("closed-set")));
}
