//! Route tasks end to end through the binary, on slices of RouteLLM's recorded outcomes:
//! import (MMLU), train a linear router, eval against the baselines; and the full offline
//! loop on GSM8K: the sim-teacher replays both models and the judge, `teach` asks every tier
//! and grades every answer (resumable, nothing paid twice), and the judged dataset equals the
//! recorded outcomes.

mod common;

use common::{distill_in as distill, get_json, repo, sim_teacher};
use std::path::{Path, PathBuf};
use std::process::Output;

fn routellm() -> PathBuf {
    repo().join("../shared/datasets/routellm")
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Starts `distill sim-teacher --replay` in `dir` on an ephemeral port; returns it and its URL.
fn replay_sim(dir: &Path, replay: &str, extra: &[&str]) -> (std::process::Child, String) {
    let mut args = vec!["--replay", replay, "--retry-after-ms", "5"];
    args.extend(extra);
    sim_teacher(dir, "task.toml", &args)
}

/// The recorded problems' texts as `dir/prompts.jsonl`, what a route teach asks.
fn write_prompts(dir: &Path, recorded: &[serde_json::Value]) {
    let prompts: String = recorded
        .iter()
        .map(|r| format!("{}\n", serde_json::json!({"prompt": r["text"]})))
        .collect();
    std::fs::write(dir.join("prompts.jsonl"), prompts).unwrap();
}

/// `distill teach` of `dir/prompts.jsonl` into `out` through the sim at `url`, without rate
/// limits, plus `extra`.
fn teach_routes(dir: &Path, url: &str, out: &str, extra: &[&str]) -> Output {
    distill(
        dir,
        &common::teach_args("task.toml", "prompts.jsonl", out, url, extra),
    )
}

/// Imports the first `n` GSM8K outcomes into `dir/recorded.jsonl` (with `task.toml` there).
fn gsm8k_recorded(dir: &Path, n: usize) -> Vec<serde_json::Value> {
    std::fs::copy(
        repo().join("datasets/gsm8k-routing/task.toml"),
        dir.join("task.toml"),
    )
    .unwrap();
    let src = std::fs::read_to_string(routellm().join("gsm8k/gsm8k_responses.csv")).unwrap();
    let mut rdr = csv::Reader::from_reader(src.as_bytes());
    let mut w = csv::Writer::from_path(dir.join("outcomes.csv")).unwrap();
    w.write_record(rdr.headers().unwrap()).unwrap();
    for r in rdr.records().take(n) {
        w.write_record(&r.unwrap()).unwrap();
    }
    w.flush().unwrap();
    ok(distill(
        dir,
        &[
            "teach",
            "--task",
            "task.toml",
            "--import-outcomes",
            "outcomes.csv",
            "--out",
            "recorded.jsonl",
        ],
    ));
    std::fs::read_to_string(dir.join("recorded.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn mmlu_outcomes_import_train_and_eval_against_the_baselines() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    std::fs::copy(
        repo().join("datasets/mmlu-routing/task.toml"),
        dir.join("task.toml"),
    )
    .unwrap();
    let mmlu = routellm().join("mmlu/responses");
    let files: Vec<String> = [
        "conceptual_physics",
        "formal_logic",
        "college_computer_science",
        "marketing",
        "world_religions",
    ]
    .iter()
    .map(|s| mmlu.join(format!("mmlu_{s}.csv")).display().to_string())
    .collect();
    let mut args = vec!["teach", "--task", "task.toml", "--import-outcomes"];
    args.extend(files.iter().map(String::as_str));
    let exclude = routellm().join("mmlu/contaminated_prompts.jsonl");
    let exclude = exclude.display().to_string();
    args.extend([
        "--exclude",
        &exclude,
        "--out",
        "routes.jsonl",
        "--split",
        "0.5",
    ]);
    let out = ok(distill(dir, &args));
    assert!(out.contains("imported") && out.contains("split:"), "{out}");
    let test: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("routes.test.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(test.len() > 300, "{}", test.len());
    assert!(test
        .iter()
        .all(|r| r["tiers"][0]["cost_usd"].as_f64().unwrap() > 0.0));

    let out = ok(distill(
        dir,
        &[
            "train",
            "--task",
            "task.toml",
            "--data",
            "routes.train.jsonl",
            "--out",
            "router",
        ],
    ));
    assert!(out.contains("tier mixtral: pass/fail student"), "{out}");
    assert!(dir.join("router/tiers/mixtral/model.safetensors").is_file());
    // A router is not a single student: predict says so.
    let p = distill(
        dir,
        &[
            "predict",
            "--model",
            "router",
            "--input",
            "routes.test.jsonl",
            "--out",
            "p.jsonl",
        ],
    );
    assert_eq!(p.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&p.stderr).contains("router"));
    // Nor does it take a dev file: it holds out --dev-fraction of its outcomes per tier.
    let t = distill(
        dir,
        &[
            "train",
            "--task",
            "task.toml",
            "--data",
            "routes.train.jsonl",
            "--dev",
            "routes.test.jsonl",
            "--out",
            "router-dev",
        ],
    );
    let err = String::from_utf8_lossy(&t.stderr);
    assert_eq!(t.status.code(), Some(1), "{err}");
    assert!(err.contains("--dev") && err.contains("router"), "{err}");
    assert!(!dir.join("router-dev").exists());

    let out = ok(distill(
        dir,
        &[
            "eval",
            "--task",
            "task.toml",
            "--model",
            "router",
            "--test",
            "routes.test.jsonl",
            "--train",
            "routes.train.jsonl",
            "--out",
            "evals",
        ],
    ));
    assert!(
        out.contains("APGR") && out.contains("oracle") && out.contains("category prior"),
        "{out}"
    );
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("evals/metrics.json")).unwrap())
            .unwrap();
    assert_eq!(m["kind"], "route");
    let names: Vec<&str> = m["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for want in [
        "router",
        "always mixtral",
        "always gpt-4",
        "random",
        "oracle",
        "heuristic",
        "category prior",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let s = &m["summary"];
    eprintln!("{out}\n{s}");
    assert!((s["random_apgr"].as_f64().unwrap() - 0.5).abs() < 1e-9);
    assert!(s["oracle_apgr"].as_f64().unwrap() > s["apgr"].as_f64().unwrap());
    assert!(s["apgr"].as_f64().unwrap().is_finite());
    let html = std::fs::read_to_string(dir.join("evals/report.html")).unwrap();
    assert_eq!(html.matches("<svg").count(), 2, "both cost axes");
    assert!(html.contains("$ per 1,000 requests") && html.contains("<h2>Tiers</h2>"));
}

#[test]
fn gsm8k_loop_offline_through_the_replaying_sim_and_the_judge() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    // 150 problems with both models' answers and correctness.
    let recorded = gsm8k_recorded(dir, 150);
    write_prompts(dir, &recorded);

    let (mut sim, url) = replay_sim(dir, "recorded.jsonl", &["--error-rate", "0.05"]);
    let teach = |extra: &[&str]| teach_routes(dir, &url, "routes.jsonl", extra);
    // A budget stops it part-way (journalled); the rerun finishes without paying twice.
    let first = teach(&["--max-spend", "0.2"]);
    assert_eq!(
        first.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&first.stdout)
    );
    assert!(String::from_utf8_lossy(&first.stdout).contains("--max-spend"));
    ok(teach(&["--split", "0.5"]));
    let stats = get_json(&url.replace("/v1", "/stats"));
    let _ = sim.kill();
    let _ = sim.wait();
    assert_eq!(stats["duplicates"], 0, "{stats}");
    // 2 tiers + 2 judge verdicts per prompt.
    assert_eq!(stats["unique_billable"], 150 * 4, "{stats}");

    let judged: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("routes.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(judged.len(), 150);
    for (j, r) in judged.iter().zip(&recorded) {
        assert_eq!(j["text"], r["text"]);
        assert_eq!(j["source"], "judged");
        for t in 0..2 {
            assert_eq!(
                j["tiers"][t]["passed"], r["tiers"][t]["passed"],
                "{}",
                j["id"]
            );
            assert_eq!(j["tiers"][t]["answer"], r["tiers"][t]["answer"]);
            assert!(j["tiers"][t]["judge_cost_usd"].as_f64().unwrap() > 0.0);
        }
    }
    ok(distill(
        dir,
        &[
            "train",
            "--task",
            "task.toml",
            "--data",
            "routes.train.jsonl",
            "--out",
            "router",
        ],
    ));
    let out = ok(distill(
        dir,
        &[
            "eval",
            "--task",
            "task.toml",
            "--model",
            "router",
            "--test",
            "routes.test.jsonl",
            "--out",
            "evals",
            "--quality-floor",
            "0.9",
        ],
    ));
    assert!(out.contains("APGR"), "{out}");
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("evals/metrics.json")).unwrap())
            .unwrap();
    assert_eq!(
        m["settings"]["floor_fraction"], 0.9,
        "--floor is --quality-floor"
    );
    let spend = ok(distill(dir, &["spend", "--by", "model", "--json"]));
    let rows: serde_json::Value = serde_json::from_str(&spend).unwrap();
    let models: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["keys"][0].as_str().unwrap())
        .collect();
    for m in [
        "gpt-4-1106-preview",
        "gpt-4o",
        "mistralai/Mixtral-8x7B-Instruct-v0.1",
    ] {
        assert!(
            models.contains(&m),
            "{m} missing from the ledger: {models:?}"
        );
    }
}

#[test]
fn multi_turn_prompts_are_asked_as_conversations_and_cached_answers_keep_their_price() {
    use distill_core::conversation::{transcript, Role, Turn};
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let mut recorded = gsm8k_recorded(dir, 30);
    // Each problem becomes the last turn of a conversation; the replay knows it by that.
    let mut prompts = String::new();
    for r in &mut recorded {
        let turns = vec![
            Turn {
                role: Role::System,
                content: "You are a careful maths tutor.".into(),
            },
            Turn {
                role: Role::User,
                content: "I have a word problem for you.".into(),
            },
            Turn {
                role: Role::Assistant,
                content: "Go ahead.".into(),
            },
            Turn {
                role: Role::User,
                content: r["text"].as_str().unwrap().to_string(),
            },
        ];
        r["text"] = transcript(&turns).into();
        r["turns"] = serde_json::to_value(&turns).unwrap();
        prompts.push_str(&format!("{}\n", serde_json::json!({"messages": &turns})));
    }
    let replay: String = recorded.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(dir.join("replay.jsonl"), replay).unwrap();
    std::fs::write(dir.join("prompts.jsonl"), prompts).unwrap();
    let spec = std::fs::read_to_string(dir.join("task.toml")).unwrap();
    std::fs::write(
        dir.join("task.toml"),
        spec.replace(
            "text_column = \"prompt\"",
            "text_column = \"prompt\"\nmessages_column = \"messages\"",
        ),
    )
    .unwrap();
    let (mut sim, url) = replay_sim(dir, "replay.jsonl", &["--error-rate", "0"]);
    let teach = |out: &str, extra: &[&str]| ok(teach_routes(dir, &url, out, extra));
    teach("routes.jsonl", &[]);
    // The same prompts again: every answer from the cache, nothing paid...
    let again = teach("again.jsonl", &[]);
    let stats = get_json(&url.replace("/v1", "/stats"));
    let _ = sim.kill();
    let _ = sim.wait();
    assert!(again.contains("(30 from the cache"), "{again}");
    assert_eq!(stats["unique_billable"], 30 * 4, "{stats}");
    let read = |f: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join(f))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (judged, cached) = (read("routes.jsonl"), read("again.jsonl"));
    assert_eq!(judged.len(), 30);
    for ((j, c), r) in judged.iter().zip(&cached).zip(&recorded) {
        assert_eq!(j["text"], r["text"]);
        assert_eq!(j["turns"], r["turns"], "the record keeps the conversation");
        for t in 0..2 {
            // The replay answered each tier the recorded answer: it was asked this conversation.
            assert_eq!(
                j["tiers"][t]["answer"], r["tiers"][t]["answer"],
                "{}",
                j["id"]
            );
            assert_eq!(j["tiers"][t]["passed"], r["tiers"][t]["passed"]);
            // ...and a cached answer still costs what routing to its tier costs.
            let cost = j["tiers"][t]["cost_usd"].as_f64().unwrap();
            assert!(cost > 0.0);
            assert_eq!(c["tiers"][t]["cost_usd"].as_f64().unwrap(), cost);
            assert_eq!(
                c["tiers"][t]["judge_cost_usd"],
                j["tiers"][t]["judge_cost_usd"]
            );
        }
    }
}

/// `--batch` on a route task: the tiers' answers, then the judge's gradings, through the
/// Batch API at batch prices; `--no-wait` runs pick their batches up instead of resubmitting;
/// what a batch left unanswered is asked in real time; the records equal a real-time run's.
#[test]
fn route_teach_through_the_batch_api_in_two_rounds() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let recorded = gsm8k_recorded(dir, 40);
    write_prompts(dir, &recorded);
    // Each batch answers its first 30 requests; the rest expire.
    let (mut sim, url) = replay_sim(
        dir,
        "recorded.jsonl",
        &[
            "--error-rate",
            "0",
            "--batch-expire-after",
            "30",
            "--batch-completion-ms",
            "0",
        ],
    );
    let teach = |extra: &[&str]| {
        let mut a = vec!["--batch", "--poll-secs", "0.02"];
        a.extend(extra);
        teach_routes(dir, &url, "routes.jsonl", &a)
    };
    // 1: submits the tier round and leaves.
    let first = ok(teach(&["--no-wait"]));
    assert!(first.contains("--resume"), "{first}");
    assert!(!dir.join("routes.jsonl").exists());
    let stats = get_json(&url.replace("/v1", "/stats"));
    assert_eq!(stats["batches"]["created"], 2, "{stats}");
    // A smaller --limit, or --restart, would forget the submitted batches (paid for, nowhere
    // else): refused, the journal kept, nothing submitted.
    for (extra, says) in [
        (&["--resume", "--limit", "10"][..], "--limit that run had"),
        (
            &["--restart"][..],
            "--restart would forget 2 submitted batch(es)",
        ),
    ] {
        let o = teach(&[&["--no-wait"], extra].concat());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains(says),
            "{extra:?}: {err}"
        );
        assert!(dir.join("routes.jsonl.partial").exists());
    }
    let stats = get_json(&url.replace("/v1", "/stats"));
    assert_eq!(stats["batches"]["created"], 2, "{stats}");
    assert_eq!(stats["requests"], 0, "{stats}");
    // 2: collects the tiers' batches, submits the judge round, leaves.
    ok(teach(&["--no-wait", "--resume"]));
    assert!(!dir.join("routes.jsonl").exists());
    let stats = get_json(&url.replace("/v1", "/stats"));
    assert_eq!(stats["batches"]["created"], 4, "{stats}");
    // 3: collects the judge's, asks the expired requests in real time, writes the records.
    let last = ok(teach(&["--resume"]));
    assert!(last.contains("wrote"), "{last}");
    let stats = get_json(&url.replace("/v1", "/stats"));
    let _ = sim.kill();
    let _ = sim.wait();
    // One batch per tier, then one per tier's gradings: nothing resubmitted.
    assert_eq!(stats["batches"]["created"], 4, "{stats}");
    // Tiers: 40 requests each, 30 answered. Judge: the 30 answered per tier, all answered.
    assert_eq!(stats["batches"]["requests"], 40 * 2 + 30 * 2, "{stats}");
    assert_eq!(stats["batches"]["expired"], 10 * 2, "{stats}");
    // Every request paid once: 4 per prompt; the 20 expired answers (and their gradings)
    // were asked in real time.
    assert_eq!(stats["duplicates"], 0, "{stats}");
    assert_eq!(stats["unique_billable"], 40 * 4, "{stats}");
    assert_eq!(stats["requests"], 20 * 2, "{stats}");

    let judged: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("routes.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(judged.len(), 40);
    for (j, r) in judged.iter().zip(&recorded) {
        assert_eq!(j["status"], "ok");
        for t in 0..2 {
            assert_eq!(
                j["tiers"][t]["passed"], r["tiers"][t]["passed"],
                "{}",
                j["id"]
            );
            assert_eq!(j["tiers"][t]["answer"], r["tiers"][t]["answer"]);
            assert!(j["tiers"][t]["cost_usd"].as_f64().unwrap() > 0.0);
        }
    }
    // The ledger holds every paid call once: 120 at batch prices (with their batch ids),
    // 40 in real time.
    let spend = ok(distill(dir, &["spend", "--by", "mode", "--json"]));
    let rows: serde_json::Value = serde_json::from_str(&spend).unwrap();
    let calls = |mode: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["keys"][0] == mode)
            .map_or(0, |r| r["calls"].as_u64().unwrap())
    };
    let (batched, realtime) = (calls("batch"), calls("real-time"));
    assert_eq!((batched, realtime), (120, 40), "{spend}");
}

#[test]
fn route_specs_are_checked_and_a_route_teach_needs_a_judge() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let spec = std::fs::read_to_string(repo().join("datasets/gsm8k-routing/task.toml")).unwrap();
    let no_judge =
        spec[..spec.find("[judge]").unwrap()].to_string() + &spec[spec.find("[route]").unwrap()..];
    std::fs::write(dir.join("t.toml"), &no_judge).unwrap();
    std::fs::write(dir.join("p.jsonl"), "{\"prompt\": \"2+2?\"}\n").unwrap();
    let o = distill(
        dir,
        &[
            "teach",
            "--task",
            "t.toml",
            "--input",
            "p.jsonl",
            "--base-url",
            "http://127.0.0.1:9/v1",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("[judge]"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let one_tier = spec.replacen("[[tier]]", "[[tierx]]", 1);
    std::fs::write(dir.join("bad.toml"), one_tier).unwrap();
    let o = distill(dir, &["teach", "--task", "bad.toml", "--dry-run"]);
    assert_eq!(o.status.code(), Some(1));
    let labels = spec.replace("[route]", "[labels]\nvalues = [\"a\", \"b\"]\n\n[route]");
    std::fs::write(dir.join("labels.toml"), labels).unwrap();
    let o = distill(dir, &["teach", "--task", "labels.toml", "--dry-run"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("field `labels`"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
