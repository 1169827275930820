//! A multilabel task end to end through the binary, on real MixSNIPS slices with the worked
//! spec (`datasets/mixsnips/task.toml`): the sim-teacher labels sets (with its systematic
//! mistakes), a linear student learns them, `predict` answers label lists, and `eval` scores
//! exact-set accuracy, micro/macro F1 and the Hamming loss, which scikit-learn recomputes from
//! the same predictions (scripts/verify/metrics_vs_sklearn.py).

mod common;

use common::{distill_in as run, distill_ok as distill, python_with_sklearn, repo, teach_via};
use std::path::Path;
use std::process::Command;

/// Every `step`-th line of a MixSNIPS file (the files are grouped by intent mix: a spread
/// slice keeps every intent present), as is.
fn mixsnips(file: &str, dst: &Path, step: usize) -> usize {
    let src = repo().join("../shared/datasets/mixsnips").join(file);
    let text = std::fs::read_to_string(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    let lines: Vec<&str> = text.lines().step_by(step).collect();
    std::fs::write(dst, lines.join("\n") + "\n").unwrap();
    lines.len()
}

#[test]
fn label_sets_are_taught_learned_predicted_and_scored() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let n_train = mixsnips("train.jsonl", &dir.join("train.jsonl"), 8);
    let n_test = mixsnips("test.jsonl", &dir.join("test.jsonl"), 5);
    std::fs::copy(
        repo().join("../shared/datasets/mixsnips/intents.json"),
        dir.join("intents.json"),
    )
    .unwrap();
    std::fs::copy(
        repo().join("datasets/mixsnips/task.toml"),
        dir.join("task.toml"),
    )
    .unwrap();

    let (sim, url) = common::sim_teacher(dir, "task.toml", &[]);
    let _sim = common::Proc {
        child: sim,
        stderr: Default::default(),
    };
    let teach = |input: &str, out: &str| teach_via(dir, "task.toml", input, out, &url);
    teach("train.jsonl", "teacher-train.jsonl");
    teach("test.jsonl", "teacher-test.jsonl");

    // The records keep the reserved `output.labels` format, and the teacher's sets are
    // mostly, not always, the gold ones (its mistakes are systematic, not absent).
    let (mut ok, mut exact) = (0, 0);
    for line in std::fs::read_to_string(dir.join("teacher-train.jsonl"))
        .unwrap()
        .lines()
    {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        if r["status"] != "ok" {
            continue;
        }
        ok += 1;
        let mut got: Vec<String> = serde_json::from_value(r["output"]["labels"].clone())
            .unwrap_or_else(|e| panic!("{e}: {line}"));
        got.sort();
        let gold: Vec<String> =
            serde_json::from_str(r["gold"].as_str().unwrap_or("[]")).unwrap_or_default();
        exact += usize::from(got == gold);
    }
    assert!(ok as f64 > 0.9 * n_train as f64, "{ok} of {n_train} ok");
    let teacher_exact = exact as f64 / ok as f64;
    assert!(
        (0.85..0.995).contains(&teacher_exact),
        "teacher exact-set agreement with gold {teacher_exact}"
    );

    distill(
        dir,
        &[
            "train",
            "--task",
            "task.toml",
            "--data",
            "teacher-train.jsonl",
            "--student",
            "linear",
            "--out",
            "linear",
        ],
    );
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("linear/distill.json")).unwrap())
            .unwrap();
    assert!(meta["multilabel"].is_object(), "{meta}");

    std::fs::write(
        dir.join("ask.jsonl"),
        "{\"text\": \"play some jazz and then tell me the weather in paris tomorrow\", \
         \"intents\": [\"GetWeather\", \"PlayMusic\"]}\n",
    )
    .unwrap();
    let o = distill(
        dir,
        &[
            "predict",
            "--model",
            "linear",
            "--input",
            "ask.jsonl",
            "--gold-column",
            "intents",
            "--out",
            "ask-out.jsonl",
        ],
    );
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(said.contains("exact-set accuracy vs gold 1.0000"), "{said}");
    let line = std::fs::read_to_string(dir.join("ask-out.jsonl")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        v["labels"],
        serde_json::json!(["GetWeather", "PlayMusic"]),
        "{line}"
    );
    assert_eq!(v["label"], "GetWeather|PlayMusic", "{line}");

    serve_answers_label_lists(dir, &url);

    let o = distill(
        dir,
        &[
            "eval",
            "--task",
            "task.toml",
            "--model",
            "linear",
            "--test",
            "test.jsonl",
            "--teacher-labels",
            "teacher-test.jsonl",
            "--out",
            "evals",
        ],
    );
    let summary = String::from_utf8_lossy(&o.stdout);
    eprintln!("{summary}");
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("evals/metrics.json")).unwrap())
            .unwrap();
    let option = |name: &str| {
        m["options"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == name)
            .unwrap_or_else(|| panic!("no option {name}: {}", m["options"]))
            .clone()
    };
    let linear = option("linear");
    let q = &linear["vs_gold"];
    assert_eq!(q["n"], n_test);
    let exact_set = q["accuracy"]["value"].as_f64().unwrap();
    let micro = q["sets"]["micro_f1"]["value"].as_f64().unwrap();
    let hamming = q["sets"]["hamming_loss"]["value"].as_f64().unwrap();
    eprintln!("linear: exact-set {exact_set:.4}, micro F1 {micro:.4}, Hamming {hamming:.4}");
    assert!(exact_set > 0.6 && exact_set < micro, "{q}");
    assert!(micro > 0.85 && hamming < 0.08, "{q}");
    assert_eq!(q["per_class"].as_array().unwrap().len(), 7);
    assert!(m["cascade"]["threshold"].is_number(), "{}", m["cascade"]);
    let report = std::fs::read_to_string(dir.join("evals/report.md")).unwrap();
    for want in ["exact-set accuracy", "micro F1", "Hamming loss"] {
        assert!(report.contains(want), "report.md lacks {want}:\n{report}");
    }

    let Some(py) = python_with_sklearn() else {
        eprintln!("skipping the scikit-learn comparison: no python3 with scikit-learn (set DISTILL_TEST_PYTHON)");
        return;
    };
    let check = |dir: &Path| {
        Command::new(&py)
            .arg(repo().join("scripts/verify/metrics_vs_sklearn.py"))
            .arg(dir)
            .output()
            .unwrap()
    };
    let v = check(&dir.join("evals"));
    let out = String::from_utf8_lossy(&v.stdout);
    assert!(
        v.status.success() && out.contains("exact-set accuracy"),
        "{out}\n{}",
        String::from_utf8_lossy(&v.stderr)
    );
    // A tampered set metric must be caught (the check can fail).
    let mut bad = m.clone();
    let i = m["options"]
        .as_array()
        .unwrap()
        .iter()
        .position(|o| o["name"] == "linear")
        .unwrap();
    bad["options"][i]["vs_gold"]["sets"]["hamming_loss"]["value"] = (hamming + 1e-6).into();
    std::fs::write(dir.join("evals/metrics.json"), bad.to_string()).unwrap();
    assert!(!check(&dir.join("evals")).status.success());
}

/// `distill serve` with the student and the (sim) teacher behind it: chat completions answer
/// `{"labels": [...]}` (again from the cache), `/v1/predict` (and `/v1/classify`) list each
/// answer's labels, whether the student or the escalated teacher gave it.
fn serve_answers_label_lists(dir: &Path, teacher_url: &str) {
    let model = format!("mix={}", dir.join("linear").display());
    let task = dir.join("task.toml");
    let (_serve, addr) = common::start_serve(
        &[
            "--model",
            &model,
            "--task",
            task.to_str().unwrap(),
            "--teacher-base-url",
            teacher_url,
            "--threshold",
            "0.9",
            "--cache",
            "memory",
        ],
        &dir.join("serve-state"),
    );
    let chat = serde_json::json!({"model": "mix", "messages": [{"role": "user",
        "content": "add this song to my workout playlist and then play some jazz"}]});
    let (status, body) =
        common::http(&addr, "POST", "/v1/chat/completions", &chat.to_string()).unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let content: serde_json::Value =
        serde_json::from_str(v["choices"][0]["message"]["content"].as_str().unwrap())
            .unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(content["labels"], v["distill"]["labels"], "{body}");
    assert!(!content["labels"].as_array().unwrap().is_empty(), "{body}");
    // The same request again is answered from the cache, with the same list.
    let (_, again) =
        common::http(&addr, "POST", "/v1/chat/completions", &chat.to_string()).unwrap();
    let again: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(again["distill"]["source"], "cache", "{again}");
    assert_eq!(
        again["distill"]["labels"], v["distill"]["labels"],
        "{again}"
    );

    let texts: Vec<String> = std::fs::read_to_string(dir.join("test.jsonl"))
        .unwrap()
        .lines()
        .take(40)
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let req = serde_json::json!({"model": "mix", "inputs": texts}).to_string();
    let (status, predict) = common::http(&addr, "POST", "/v1/predict", &req).unwrap();
    assert_eq!(status, 200, "{predict}");
    let (status, classify) = common::http(&addr, "POST", "/v1/classify", &req).unwrap();
    assert_eq!(status, 200, "{classify}");
    let results = |body: &str| -> Vec<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        v["results"].as_array().unwrap().clone()
    };
    let (p, c) = (results(&predict), results(&classify));
    assert_eq!(p.len(), 40);
    let labels_of = |r: &[serde_json::Value]| -> Vec<serde_json::Value> {
        r.iter().map(|a| a["labels"].clone()).collect()
    };
    assert_eq!(labels_of(&p), labels_of(&c), "one endpoint under two names");
    let mut sources = std::collections::BTreeSet::new();
    for a in &p {
        sources.insert(a["source"].as_str().unwrap().to_string());
        let labels: Vec<String> =
            serde_json::from_value(a["labels"].clone()).unwrap_or_else(|e| panic!("{e}: {a}"));
        assert!(!labels.is_empty(), "allow_empty = false: {a}");
        assert_eq!(a["label"], labels.join("|"), "{a}");
    }
    assert!(
        sources.contains("student") && sources.contains("teacher"),
        "threshold 0.9 keeps some answers and escalates others: {sources:?}"
    );
}

#[test]
fn bad_label_sets_fail_naming_file_line_and_field() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    std::fs::copy(
        repo().join("../shared/datasets/mixsnips/intents.json"),
        dir.join("intents.json"),
    )
    .unwrap();
    let spec = std::fs::read_to_string(repo().join("datasets/mixsnips/task.toml")).unwrap();
    std::fs::write(dir.join("task.toml"), &spec).unwrap();
    let good = r#"{"text": "play jazz", "intents": ["PlayMusic"]}"#;
    let train = || {
        run(
            dir,
            &[
                "train",
                "--task",
                "task.toml",
                "--data",
                "train.jsonl",
                "--out",
                "m",
            ],
        )
    };
    for (bad, want) in [
        (
            r#"{"text": "play jazz", "intents": ["PlayMusic", "Dance"]}"#,
            "label `Dance` is not in the task's label set",
        ),
        (r#"{"text": "hello", "intents": []}"#, "empty"),
    ] {
        std::fs::write(dir.join("train.jsonl"), format!("{good}\n{good}\n{bad}\n")).unwrap();
        let o = train();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.contains("train.jsonl:3") && err.contains("intents"),
            "{err}"
        );
        assert!(err.contains(want), "{err}");
        assert!(!dir.join("m").exists(), "nothing half-written");
    }
    // A separator inside a label is refused where it is set.
    std::fs::write(
        dir.join("task.toml"),
        spec.replacen("[input]\n", "[input]\ngold_separator = \"o\"\n", 1),
    )
    .unwrap();
    let o = train();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("gold_separator"), "{err}");
}
