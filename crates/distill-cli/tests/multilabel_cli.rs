//! A multilabel task end to end through the binary, on real MixSNIPS slices with the worked
//! spec (`datasets/mixsnips/task.toml`): the sim-teacher labels sets (with its systematic
//! mistakes), a linear student learns them, `predict` answers label lists, and `eval` scores
//! exact-set accuracy, micro/macro F1 and the Hamming loss, which scikit-learn recomputes from
//! the same predictions (scripts/verify/metrics_vs_sklearn.py).

mod common;

use common::{
    distill_in as run, distill_ok as distill, mixsnips_every_nth, python_with_sklearn, repo,
    teach_via,
};
use std::path::Path;
use std::process::Command;

#[test]
fn label_sets_are_taught_learned_predicted_and_scored() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let n_train = mixsnips_every_nth("train.jsonl", &dir.join("train.jsonl"), 8);
    let n_test = mixsnips_every_nth("test.jsonl", &dir.join("test.jsonl"), 5);
    common::mixsnips_task(dir);

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
    dev_file_replaces_the_split(dir, &meta);

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

/// `train --dev FILE`: every teacher record trains, MixSNIPS's own dev split (gold) stops early
/// and calibrates; a bad dev file is named (extract_cli checks that a tagger refuses the flag).
fn dev_file_replaces_the_split(dir: &Path, split_meta: &serde_json::Value) {
    let n_dev = mixsnips_every_nth("dev.jsonl", &dir.join("dev.jsonl"), 4);
    let args = |dev: &'static str, out: &'static str| {
        vec![
            "train",
            "--task",
            "task.toml",
            "--data",
            "teacher-train.jsonl",
            "--student",
            "linear",
            "--dev",
            dev,
            "--out",
            out,
        ]
    };
    distill(dir, &args("dev.jsonl", "linear-dev"));
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("linear-dev/distill.json")).unwrap(),
    )
    .unwrap();
    let split_total =
        split_meta["n_train"].as_u64().unwrap() + split_meta["n_dev"].as_u64().unwrap();
    assert_eq!(
        meta["n_train"].as_u64(),
        Some(split_total),
        "no split of --data: {meta}"
    );
    assert_eq!(meta["n_dev"].as_u64(), Some(n_dev as u64), "{meta}");
    assert_ne!(
        meta["data_hash"], split_meta["data_hash"],
        "the dev file is in the hash"
    );
    assert_ne!(meta["dev_accuracy"], split_meta["dev_accuracy"], "{meta}");

    std::fs::write(
        dir.join("bad-dev.jsonl"),
        "{\"text\": \"play jazz\", \"intents\": [\"PlayMusic\"]}\n{\"text\": \"x\", \"intents\": [\"Nope\"]}\n",
    )
    .unwrap();
    let o = run(dir, &args("bad-dev.jsonl", "linear-bad"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("bad-dev.jsonl") && err.contains("Nope"),
        "{err}"
    );
    assert!(!dir.join("linear-bad").exists(), "nothing half-written");
    // A dev file replaces the split: asking for both is a usage error, not a silent choice.
    let mut both = args("dev.jsonl", "linear-both");
    both.extend(["--dev-fraction", "0.2"]);
    let o = run(dir, &both);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("cannot be used with"),
        "{err}"
    );
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

    let texts = first_texts(dir, 40);
    let req = serde_json::json!({"model": "mix", "inputs": texts}).to_string();
    let (status, predict) = common::http(&addr, "POST", "/v1/predict", &req).unwrap();
    assert_eq!(status, 200, "{predict}");
    let (status, classify) = common::http(&addr, "POST", "/v1/classify", &req).unwrap();
    assert_eq!(status, 200, "{classify}");
    let labels_of = |r: &[serde_json::Value]| -> Vec<serde_json::Value> {
        r.iter().map(|a| a["labels"].clone()).collect()
    };
    let p = results_in_model_notation(&predict, dir);
    student_and_teacher_answered(&p);
    assert_eq!(
        labels_of(&p),
        labels_of(&results_in_model_notation(&classify, dir)),
        "one endpoint under two names"
    );
    drop(_serve);

    // Answers in the model's notation whatever the task's label order, and with no task at
    // all (the spec is made from the model: a label-set task, not a one-label one).
    let reversed: Vec<String> = {
        let mut l: Vec<String> =
            serde_json::from_str(&std::fs::read_to_string(dir.join("intents.json")).unwrap())
                .unwrap();
        l.reverse();
        l
    };
    std::fs::write(
        dir.join("task-reversed.toml"),
        std::fs::read_to_string(&task).unwrap().replace(
            "file = \"intents.json\"",
            &format!("values = {}", serde_json::to_string(&reversed).unwrap()),
        ),
    )
    .unwrap();
    let reversed_task = dir.join("task-reversed.toml");
    // A sim reading the reversed task's prompts answers its gold sets (in its label order).
    let (sim, reversed_url) = common::sim_teacher(dir, "task-reversed.toml", &[]);
    let _sim = common::Proc {
        child: sim,
        stderr: Default::default(),
    };
    for (how, teacher_url) in [
        (
            ["--task", reversed_task.to_str().unwrap()],
            reversed_url.as_str(),
        ),
        (["--escalate-to", "openai:gpt-4o"], teacher_url),
    ] {
        let (_serve, addr) = common::start_serve(
            &[
                "--model",
                &model,
                how[0],
                how[1],
                "--teacher-base-url",
                teacher_url,
                "--threshold",
                "0.9",
            ],
            &dir.join("serve-state"),
        );
        let (status, body) = common::http(&addr, "POST", "/v1/predict", &req).unwrap();
        assert_eq!(status, 200, "{how:?}: {body}");
        let r = results_in_model_notation(&body, dir);
        student_and_teacher_answered(&r);
        if how[0] == "--task" {
            let sets = |r: &[serde_json::Value]| {
                r.iter()
                    .filter(|a| a["labels"].as_array().unwrap().len() > 1)
                    .count()
            };
            assert!(sets(&r) > 5, "the teacher's label sets were read: {body}");
        }
    }
}

/// The `text` of the first `n` test inputs.
fn first_texts(dir: &Path, n: usize) -> Vec<String> {
    std::fs::read_to_string(dir.join("test.jsonl"))
        .unwrap()
        .lines()
        .take(n)
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// A `/v1/predict` reply's results, checked: every answer lists its labels in the model's
/// label order, `label` joins them, and none is empty (`allow_empty = false`).
fn results_in_model_notation(body: &str, dir: &Path) -> Vec<serde_json::Value> {
    let order: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("intents.json")).unwrap()).unwrap();
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    let results = v["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 40, "{body}");
    for a in &results {
        let labels: Vec<String> =
            serde_json::from_value(a["labels"].clone()).unwrap_or_else(|e| panic!("{e}: {a}"));
        assert!(!labels.is_empty(), "allow_empty = false: {a}");
        let mut sorted = labels.clone();
        sorted.sort_by_key(|l| order.iter().position(|o| o == l).expect("a model label"));
        assert_eq!(labels, sorted, "in the model's label order: {a}");
        assert_eq!(a["label"], labels.join("|"), "{a}");
    }
    results
}

/// Fresh answers: threshold 0.9 keeps some of the student's and escalates others.
fn student_and_teacher_answered(results: &[serde_json::Value]) {
    let sources: std::collections::BTreeSet<&str> = results
        .iter()
        .map(|a| a["source"].as_str().unwrap())
        .collect();
    assert!(
        sources.contains("student") && sources.contains("teacher"),
        "{sources:?}"
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
