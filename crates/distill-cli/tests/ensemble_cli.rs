//! `distill ensemble` as a user runs it, on a linear and an encoder-head student (the real
//! all-MiniLM-L6-v2) trained on a Banking77 slice: the ensemble's probabilities are the mean of
//! its members' (recomputed here from their own `predict` output), `serve` answers with them,
//! `eval` scores it with a cascade against the simulated teacher's labels and binds the
//! threshold to every file of it, members included, and what cannot be averaged is refused
//! with exit 1, naming the member and why, writing nothing.

mod common;

use common::{
    banking77, distill_in as distill, distill_ok, every_nth_csv, mixsnips_every_nth, mixsnips_task,
    read_json, repo, sim_teacher, teach_via,
};
use std::collections::HashMap;
use std::path::Path;

/// Each row's probabilities by label, from `predict --top-k 77` output.
fn probabilities(path: &Path) -> Vec<(String, HashMap<String, f64>)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let r: serde_json::Value = serde_json::from_str(l).unwrap();
            let p = r["top"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| {
                    (
                        t["label"].as_str().unwrap().to_string(),
                        t["p"].as_f64().unwrap(),
                    )
                })
                .collect();
            (r["label"].as_str().unwrap().to_string(), p)
        })
        .collect()
}

fn refused(dir: &Path, args: &[&str]) -> String {
    let o = distill(dir, args);
    assert_eq!(o.status.code(), Some(1), "{args:?} should be refused");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn an_ensemble_answers_with_its_members_mean_and_is_evaluated_like_any_student() {
    let base = common::minilm();
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    every_nth_csv(&banking77().join("train.csv"), &dir.join("train.csv"), 8);
    every_nth_csv(&banking77().join("test.csv"), &dir.join("test.csv"), 10);
    let task = repo().join("datasets/banking77/task.toml");
    let task = task.to_str().unwrap();
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--task",
            task,
            "--data",
            "train.csv",
            "--threads",
            "2",
        ];
        args.extend_from_slice(extra);
        distill_ok(dir, &args);
    };
    train(&["--student", "linear", "--out", "lin"]);
    train(&[
        "--student",
        "encoder-head",
        "--base",
        base.to_str().unwrap(),
        "--device",
        "cpu",
        "--out",
        "head",
    ]);

    let o = distill_ok(
        dir,
        &[
            "ensemble", "--model", "lin", "--model", "head", "--out", "ens",
        ],
    );
    let printed = String::from_utf8_lossy(&o.stdout);
    assert!(
        printed.contains("ensemble of 2 students (linear + encoder-head)"),
        "{printed}"
    );
    let meta = read_json(&dir.join("ens/distill.json"));
    assert_eq!(meta["kind"], "ensemble");
    assert_eq!(meta["hyper"]["members"][1]["dir"], "members/1-encoder-head");
    assert!(dir
        .join("ens/members/1-encoder-head/model.safetensors")
        .is_file());

    for m in ["lin", "head", "ens"] {
        distill_ok(
            dir,
            &[
                "predict",
                "--model",
                m,
                "--input",
                "test.csv",
                "--top-k",
                "77",
                "--out",
                &format!("{m}.jsonl"),
            ],
        );
    }
    let (lin, head, ens) = (
        probabilities(&dir.join("lin.jsonl")),
        probabilities(&dir.join("head.jsonl")),
        probabilities(&dir.join("ens.jsonl")),
    );
    assert!(ens.len() > 250);
    let mut members_disagree = 0;
    for ((e, l), h) in ens.iter().zip(&lin).zip(&head) {
        assert_eq!(e.1.len(), 77, "every label's probability is listed");
        let mean = |k: &str| (l.1[k] + h.1[k]) / 2.0;
        for (k, p) in &e.1 {
            assert!((p - mean(k)).abs() < 1e-5, "{k}: {p} vs mean {}", mean(k));
        }
        let best =
            e.1.keys()
                .max_by(|a, b| mean(a).total_cmp(&mean(b)))
                .unwrap();
        assert_eq!(&e.0, best);
        members_disagree += (l.0 != h.0) as usize;
    }
    assert!(
        members_disagree > 0,
        "the members never disagree: a weak test"
    );

    let (mut sim, url) = sim_teacher(dir, task, &[]);
    teach_via(dir, task, "test.csv", "teacher-test.jsonl", &url);
    sim.kill().unwrap();
    sim.wait().unwrap();
    distill_ok(
        dir,
        &[
            "eval",
            "--task",
            task,
            "--test",
            "test.csv",
            "--teacher-labels",
            "teacher-test.jsonl",
            "--model",
            "ens",
            "--out",
            "ev",
        ],
    );
    let metrics = read_json(&dir.join("ev/metrics.json"));
    let sha = metrics["cascade"]["model_sha256"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(metrics["cascade"]["model"], "ens");
    let fingerprint = || distill_train::model_fingerprint(&dir.join("ens")).unwrap();
    assert_eq!(fingerprint(), sha);

    // Served, it answers as `predict` does: the members' mean, the student answering every
    // input at threshold 0 (no teacher is configured).
    let texts: Vec<String> = std::fs::read_to_string(dir.join("ens.jsonl"))
        .unwrap()
        .lines()
        .take(30)
        .map(|l| {
            let r: serde_json::Value = serde_json::from_str(l).unwrap();
            r["text"].as_str().unwrap().to_string()
        })
        .collect();
    let model = format!("b77={}", dir.join("ens").display());
    let (serve, addr) = common::start_serve(
        &["--model", &model, "--threshold", "0"],
        &dir.join("serve-state"),
    );
    let req = serde_json::json!({"model": "b77", "inputs": texts}).to_string();
    let (status, body) = common::http(&addr, "POST", "/v1/classify", &req).unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), texts.len(), "{body}");
    for (a, (label, p)) in results.iter().zip(&ens) {
        assert_eq!(a["source"], "student", "{a}");
        assert_eq!(a["label"].as_str().unwrap(), label, "{a}");
        let c = a["confidence"].as_f64().unwrap();
        assert!(
            (c - p[label]).abs() < 1e-5,
            "served {c}, predict {}",
            p[label]
        );
    }
    drop(serve);
    // A directory that is not the model's (a `.git`, a hub cache) leaves the identity alone.
    std::fs::create_dir_all(dir.join("ens/.cache")).unwrap();
    std::fs::write(dir.join("ens/.cache/x"), b"1").unwrap();
    assert_eq!(fingerprint(), sha);
    // The threshold is bound to the members' files too: changing one changes the identity.
    let cfg = dir.join("ens/members/0-linear/config.json");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push('\n');
    std::fs::write(&cfg, text).unwrap();
    assert_ne!(fingerprint(), sha);

    // Refusals: one member, an ensemble as a member, --out inside a member, a multilabel member.
    let e = refused(dir, &["ensemble", "--model", "lin", "--out", "one"]);
    assert!(e.contains("at least two students, got 1"), "{e}");
    let e = refused(
        dir,
        &[
            "ensemble", "--model", "ens", "--model", "lin", "--out", "nested",
        ],
    );
    assert!(
        e.contains("model ens:") && e.contains("is an ensemble already"),
        "{e}"
    );
    let e = refused(
        dir,
        &[
            "ensemble", "--model", "lin", "--model", "head", "--out", "lin/ens",
        ],
    );
    assert!(e.contains("is this member or inside it"), "{e}");
    mixsnips_task(dir);
    mixsnips_every_nth("train.jsonl", &dir.join("mix.jsonl"), 40);
    distill_ok(
        dir,
        &[
            "train",
            "--task",
            "task.toml",
            "--data",
            "mix.jsonl",
            "--out",
            "mix",
        ],
    );
    let e = refused(
        dir,
        &[
            "ensemble", "--model", "lin", "--model", "mix", "--out", "multi",
        ],
    );
    assert!(
        e.contains("model mix:") && e.contains("is a multilabel student"),
        "{e}"
    );
    for out in ["one", "nested", "multi", "lin/ens"] {
        assert!(!dir.join(out).exists(), "{out} was written");
    }
}
