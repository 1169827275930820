//! `distill teach --strategy`: labelling a pool in rounds against the sim-teacher. Each round is
//! journalled before it is labelled and labelled once; a rerun pays nothing; a changed plan is
//! refused; the output lists the labels in selection order for `eval --curve --curve-order recorded`.

mod common;

use common::{
    banking77, distill_in as run, every_nth_csv, get_json, mixsnips_every_nth, read_json,
    sim_teacher,
};
use std::collections::HashSet;
use std::path::Path;

fn ok(dir: &Path, args: &[&str]) -> String {
    String::from_utf8_lossy(&common::distill_ok(dir, args).stdout).into_owned()
}

fn ids(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// `distill teach --task task.toml` of `input` into `out` through the (sim) teacher at `url`,
/// without rate limits, on 2 threads, with `flags` (the strategy and its stops).
fn teach_args<'a>(input: &'a str, out: &'a str, url: &'a str, flags: &[&'a str]) -> Vec<&'a str> {
    let mut args = common::teach_args("task.toml", input, out, url, &["--threads", "2"]);
    args.extend_from_slice(flags);
    args
}

/// The input ids of each round journalled for the output `out`, in selection order.
fn journal_rounds(dir: &Path, out: &str) -> Vec<Vec<String>> {
    std::fs::read_to_string(dir.join(format!("{out}.rounds/selection.jsonl")))
        .unwrap()
        .lines()
        .map(|l| {
            let r: serde_json::Value = serde_json::from_str(l).unwrap();
            r["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect()
        })
        .collect()
}

/// [`journal_rounds`], each round as a set.
fn journal_round_sets(dir: &Path, out: &str) -> Vec<HashSet<String>> {
    journal_rounds(dir, out)
        .into_iter()
        .map(|r| r.into_iter().collect())
        .collect()
}

/// `eval --curve SIZES --curve-order recorded` of `active.jsonl` on `test`: its metrics.json.
fn recorded_curve(dir: &Path, test: &str, sizes: &str) -> serde_json::Value {
    ok(
        dir,
        &[
            "eval",
            "--task",
            "task.toml",
            "--test",
            test,
            "--train",
            "active.jsonl",
            "--curve",
            sizes,
            "--curve-order",
            "recorded",
            "--curve-seeds",
            "1",
            "--out",
            "ev",
        ],
    );
    read_json(&dir.join("ev/metrics.json"))
}

#[test]
fn rounds_are_chosen_by_the_student_labelled_once_and_resumed_for_free() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let pool = every_nth_csv(&banking77().join("train.csv"), &dir.join("train.csv"), 3);
    every_nth_csv(&banking77().join("test.csv"), &dir.join("test.csv"), 4);
    common::banking77_task(dir);
    let (mut sim, url) = sim_teacher(dir, "task.toml", &["--error-rate", "0"]);
    let teach = |strategy: &'static str, out: &'static str, round: &'static str| {
        let flags = [
            "--strategy",
            strategy,
            "--limit",
            "600",
            "--round-size",
            round,
        ];
        teach_args("train.csv", out, &url, &flags)
    };
    let a = teach("uncertainty", "active.jsonl", "200");
    let out = ok(dir, &a);
    assert!(out.contains("labelled 600 of"), "{out}");
    assert!(out.contains("stopped: the label limit (600)"), "{out}");

    let picked = ids(&dir.join("active.jsonl"));
    assert_eq!(picked.len(), 600);
    assert_eq!(
        picked.iter().collect::<HashSet<_>>().len(),
        600,
        "no input labelled twice"
    );
    let rounds = journal_rounds(dir, "active.jsonl");
    assert_eq!(rounds.len(), 3);
    // The output is the rounds' labels in selection order.
    let journalled: Vec<String> = rounds.concat();
    assert_eq!(journalled, picked);
    let pool_ids: HashSet<String> = (1..=pool).map(|i| i.to_string()).collect();
    assert!(picked.iter().all(|id| pool_ids.contains(id)));
    let stats = get_json(&url.replace("/v1", "/stats"));
    assert_eq!(stats["unique_billable"], 600, "{stats}");
    assert_eq!(stats["duplicates"], 0, "{stats}");

    // The uncertainty rounds are not a random sample: the same seed's random rounds differ.
    ok(dir, &teach("random", "random.jsonl", "200"));
    let random = ids(&dir.join("random.jsonl"));
    assert_eq!(
        random[..200],
        picked[..200],
        "the seed round is random in both"
    );
    let overlap = random[200..]
        .iter()
        .filter(|id| picked[200..].contains(id))
        .count();
    assert!(
        overlap < 100,
        "uncertainty rounds 1-2 share {overlap} of 400 with random ones"
    );

    // A rerun finds every round labelled: nothing is asked again and the output is unchanged.
    let before = std::fs::read_to_string(dir.join("active.jsonl")).unwrap();
    let calls = get_json(&url.replace("/v1", "/stats"))["requests"].clone();
    ok(dir, &a);
    assert_eq!(get_json(&url.replace("/v1", "/stats"))["requests"], calls);
    assert!(
        std::fs::read_to_string(dir.join("active.jsonl")).unwrap() == before,
        "the rerun changed the output"
    );

    // Another plan is refused, naming what changed, until --restart.
    let o = run(dir, &teach("uncertainty", "active.jsonl", "300"));
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("round_size") && err.contains("--restart"),
        "{err}"
    );

    // A budget ends the labelling between rounds, the last round shrunk to what it can afford.
    let mut budget = teach("random", "budget.jsonl", "200");
    budget.extend(["--max-spend", "0.5", "--select-seed", "9"]);
    let out = ok(dir, &budget);
    assert!(
        out.contains("stopped: the budget (") && out.contains("wrote budget.jsonl"),
        "{out}"
    );
    let spent: f64 = std::fs::read_to_string(dir.join("budget.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["cost_usd"]
                .as_f64()
                .unwrap()
        })
        .sum();
    let n = ids(&dir.join("budget.jsonl")).len();
    assert!(
        spent <= 0.5 && spent > 0.45 && n > 300 && n < 600,
        "{n} labels for ${spent}"
    );

    // The labels in selection order draw the curve of exactly this labelling.
    let m = recorded_curve(dir, "test.csv", "200,600");
    assert_eq!(m["curve"]["order"], "recorded");
    assert_eq!(m["curve"]["rows"].as_array().unwrap().len(), 2);
    let _ = sim.kill();
    let _ = sim.wait();
}

#[test]
fn a_multilabel_round_takes_the_inputs_whose_least_sure_label_decision_is_least_sure() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    mixsnips_every_nth("train.jsonl", &dir.join("train.jsonl"), 25);
    mixsnips_every_nth("test.jsonl", &dir.join("test.jsonl"), 5);
    common::mixsnips_task(dir);
    let (mut sim, url) = sim_teacher(dir, "task.toml", &[]);
    let flags = [
        "--strategy",
        "uncertainty",
        "--uncertainty",
        "least-confidence",
        "--limit",
        "450",
        "--round-size",
        "150",
    ];
    let out = ok(
        dir,
        &teach_args("train.jsonl", "active.jsonl", &url, &flags),
    );
    assert!(out.contains("labelled 450 of"), "{out}");
    let rounds = journal_round_sets(dir, "active.jsonl");
    assert_eq!(rounds.len(), 3);

    // The scorer left behind is the one that picked the last round: by its own confidence (the
    // cascade's: the least sure label decision), every pick is below every input left unlabelled.
    // Read as one softmax-like distribution (1 − the top label's probability), it is not.
    ok(
        dir,
        &[
            "predict",
            "--model",
            "active.jsonl.rounds/student",
            "--input",
            "train.jsonl",
            "--threads",
            "2",
            "--out",
            "scored.jsonl",
        ],
    );
    let (mut picked_max, mut rest_min) = (0f64, 1f64);
    let (mut picked_top_max, mut rest_top_min) = (0f64, 1f64);
    for line in std::fs::read_to_string(dir.join("scored.jsonl"))
        .unwrap()
        .lines()
    {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = r["id"].as_str().unwrap();
        let c = r["confidence"].as_f64().unwrap();
        let top = r["top"][0]["p"].as_f64().unwrap();
        if rounds[2].contains(id) {
            picked_max = picked_max.max(c);
            picked_top_max = picked_top_max.max(top);
        } else if !rounds[0].contains(id) && !rounds[1].contains(id) {
            rest_min = rest_min.min(c);
            rest_top_min = rest_top_min.min(top);
        }
    }
    assert!(
        picked_max <= rest_min + 1e-6,
        "a pick at confidence {picked_max} while {rest_min} was left"
    );
    assert!(
        picked_top_max > rest_top_min,
        "the top label's probability ranks the same way: the test cannot tell the measures apart"
    );

    // The recorded order draws a multilabel learning curve.
    let m = recorded_curve(dir, "test.jsonl", "150,450");
    let rows = m["curve"]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{}", m["curve"]);
    assert_eq!(m["curve"]["points"][1]["n_labels"], 450);
    let _ = sim.kill();
    let _ = sim.wait();
}

/// The least-confident `round` of `student_dir`'s own `predict` output over `pool`, leaving out
/// the ids in `labelled`: (the largest confidence among `picked`, the `k`-th smallest confidence
/// among the inputs left, the ids of the `picked.len()` least confident).
fn rank_by_own_predict(
    dir: &Path,
    student_dir: &str,
    pool: &str,
    labelled: &HashSet<String>,
    picked: &HashSet<String>,
    k: usize,
) -> (f64, f64, HashSet<String>) {
    ok(
        dir,
        &[
            "predict",
            "--model",
            student_dir,
            "--input",
            pool,
            "--threads",
            "2",
            "--out",
            "scored.jsonl",
        ],
    );
    let mut picked_max = 0f64;
    let mut left: Vec<(f64, String)> = Vec::new();
    for line in std::fs::read_to_string(dir.join("scored.jsonl"))
        .unwrap()
        .lines()
    {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = r["id"].as_str().unwrap().to_string();
        let c = r["confidence"].as_f64().unwrap();
        if picked.contains(&id) {
            picked_max = picked_max.max(c);
        }
        if !labelled.contains(&id) {
            left.push((c, id));
        }
    }
    left.sort_by(|a, b| a.0.total_cmp(&b.0));
    let least: HashSet<String> = left[..picked.len()]
        .iter()
        .map(|(_, id)| id.clone())
        .collect();
    (picked_max, left[k - 1].0, least)
}

#[test]
fn an_encoder_head_scorer_picks_by_its_own_predictions_from_a_pool_embedded_once() {
    let base = common::minilm();
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let pool = every_nth_csv(&banking77().join("train.csv"), &dir.join("train.csv"), 10);
    common::banking77_task(dir);
    let (mut sim, url) = sim_teacher(dir, "task.toml", &[]);
    let teach = |strategy: &str, out: &str| {
        let flags = [
            "--strategy",
            strategy,
            "--uncertainty",
            "least-confidence",
            "--select-student",
            "encoder-head",
            "--base",
            base.to_str().unwrap(),
            "--limit",
            "300",
            "--round-size",
            "100",
        ];
        let o = ok(dir, &teach_args("train.csv", out, &url, &flags));
        assert!(o.contains("labelled 300 of"), "{o}");
        let rounds = journal_round_sets(dir, out);
        assert_eq!(rounds.len(), 3);
        rounds
    };

    // Uncertainty: the scorer left behind picked the last round, from the pool's cached
    // embeddings. By its own `predict` output (the encoder run again on every text) each pick
    // is at most as confident as every input left unlabelled.
    let rounds = teach("uncertainty", "active.jsonl");
    let labelled: HashSet<String> = rounds[0].union(&rounds[1]).cloned().collect();
    let (picked_max, least_left, _) = rank_by_own_predict(
        dir,
        "active.jsonl.rounds/student",
        "train.csv",
        &labelled,
        &rounds[2],
        101,
    );
    assert!(
        picked_max <= least_left + 1e-5,
        "a pick at confidence {picked_max} while {least_left} was left"
    );
    // The pool was embedded once, into the cache the scorer's fits read: it holds each distinct
    // pool text once and nothing else (16-byte header, 32-byte key + 384 f32 per text).
    let texts: HashSet<String> = std::fs::read_to_string(dir.join("train.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(String::from)
        .collect();
    let caches: Vec<_> = std::fs::read_dir(dir.join("state/embeddings"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(caches.len(), 1, "{caches:?}");
    let n = (std::fs::metadata(&caches[0]).unwrap().len() - 16) / (32 + 4 * 384);
    assert!(
        n as usize <= texts.len() && n as usize + 5 >= texts.len(),
        "{n} cached embeddings for {} distinct pool lines of {pool}",
        texts.len()
    );

    // Diverse: the round is drawn from the 4×100 least confident, spread out, so it is not
    // simply the 100 least confident.
    let rounds = teach("diverse", "diverse.jsonl");
    let labelled: HashSet<String> = rounds[0].union(&rounds[1]).cloned().collect();
    let (picked_max, fourth_k, least) = rank_by_own_predict(
        dir,
        "diverse.jsonl.rounds/student",
        "train.csv",
        &labelled,
        &rounds[2],
        400,
    );
    assert!(
        picked_max <= fourth_k + 1e-5,
        "a diverse pick at confidence {picked_max}, above the 400th least confident ({fourth_k})"
    );
    let same = rounds[2].intersection(&least).count();
    assert!(
        same < 90,
        "{same} of 100 diverse picks are the least confident"
    );
    let stats = get_json(&url.replace("/v1", "/stats"));
    assert_eq!(stats["duplicates"], 0, "{stats}");
    let _ = sim.kill();
    let _ = sim.wait();
}

#[test]
fn a_resumed_stop_gain_run_stops_where_an_uninterrupted_one_does() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    every_nth_csv(&banking77().join("train.csv"), &dir.join("train.csv"), 3);
    common::banking77_task(dir);
    let (mut sim, url) = sim_teacher(dir, "task.toml", &[]);
    // A gain no round reaches: the rule stops at its first chance, the third scorer (round 3).
    let teach = |out: &str, limit: &str| {
        let flags = [
            "--strategy",
            "uncertainty",
            "--round-size",
            "250",
            "--stop-gain",
            "1",
            "--limit",
            limit,
        ];
        ok(dir, &teach_args("train.csv", out, &url, &flags))
    };
    let whole = teach("whole.jsonl", "1500");
    assert!(
        whole.contains("labelled 750 of") && whole.contains("< --stop-gain 1"),
        "{whole}"
    );
    // The same run cut short after round 2 (here by its limit; kill -9 leaves the same journal),
    // then continued: the scorers of rounds 1 and 2 come from the journal, so the third stops
    // it at once, with nothing more bought.
    let cut = teach("resumed.jsonl", "750");
    assert!(cut.contains("stopped: the label limit (750)"), "{cut}");
    let requests = get_json(&url.replace("/v1", "/stats"))["requests"].clone();
    let resumed = teach("resumed.jsonl", "1500");
    assert!(
        resumed.contains("labelled 750 of") && resumed.contains("< --stop-gain 1"),
        "{resumed}"
    );
    assert_eq!(
        get_json(&url.replace("/v1", "/stats"))["requests"],
        requests
    );
    assert_eq!(
        ids(&dir.join("resumed.jsonl")),
        ids(&dir.join("whole.jsonl"))
    );
    let _ = sim.kill();
    let _ = sim.wait();
}

/// With the Batch API each round is one batch; `--no-wait` submits a round and exits, and the
/// same command again collects it and goes on: every input is paid for once.
#[test]
fn batch_rounds_are_one_batch_each_and_a_rerun_collects_them() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    every_nth_csv(&banking77().join("train.csv"), &dir.join("train.csv"), 10);
    common::banking77_task(dir);
    let (mut sim, url) = sim_teacher(dir, "task.toml", &["--error-rate", "0"]);
    let flags = [
        "--strategy",
        "random",
        "--limit",
        "200",
        "--round-size",
        "100",
        "--batch",
        "--poll-secs",
        "0.01",
    ];
    let mut submit = teach_args("train.csv", "active.jsonl", &url, &flags);
    submit.push("--no-wait");
    let out = ok(dir, &submit);
    assert!(
        out.contains("run the same command again to collect it"),
        "{out}"
    );
    assert!(!dir.join("active.jsonl").exists(), "{out}");
    let stats = get_json(&url.replace("/v1", "/stats"));
    assert_eq!(stats["batches"]["created"], 1, "{stats}");
    // --restart would delete the round's journal, and with it the batch paid for: refused.
    let mut restart = teach_args("train.csv", "active.jsonl", &url, &flags);
    restart.push("--restart");
    let o = run(dir, &restart);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("--restart would forget 1 submitted batch(es)"),
        "{err}"
    );
    assert!(dir
        .join("active.jsonl.rounds/round-000.jsonl.partial")
        .exists());

    let out = ok(dir, &teach_args("train.csv", "active.jsonl", &url, &flags));
    assert!(out.contains("labelled 200 of"), "{out}");
    assert_eq!(ids(&dir.join("active.jsonl")).len(), 200);
    let stats = get_json(&url.replace("/v1", "/stats"));
    assert_eq!(
        stats["batches"]["created"], 2,
        "one batch per round: {stats}"
    );
    assert_eq!(stats["requests"], 0, "nothing in real time: {stats}");
    assert_eq!(stats["unique_billable"], 200, "{stats}");
    assert_eq!(stats["duplicates"], 0, "{stats}");
    let _ = sim.kill();
    let _ = sim.wait();
}

/// A round whose inputs got no answer (errors after every retry) is not counted as labelled:
/// the run stops and says so, and the same command again asks only those inputs, keeping the
/// answered records as they were (nothing bought twice).
#[test]
fn a_round_with_failed_records_is_retried_by_a_rerun() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    every_nth_csv(&banking77().join("train.csv"), &dir.join("train.csv"), 200);
    common::banking77_task(dir);
    // Most requests fail, so most inputs are still unanswered after the client's retries.
    let (mut sim, url) = sim_teacher(
        dir,
        "task.toml",
        &["--error-rate", "0.95", "--retry-after-ms", "1"],
    );
    let flags = [
        "--strategy",
        "random",
        "--limit",
        "20",
        "--round-size",
        "20",
    ];
    let args = teach_args("train.csv", "active.jsonl", &url, &flags);
    let round = dir.join("active.jsonl.rounds/round-000.jsonl");
    let lines = |p: &Path| -> Vec<(String, String, String)> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let id = v["id"].as_str().unwrap().to_string();
                (id, v["status"].as_str().unwrap().to_string(), l.to_string())
            })
            .collect()
    };
    let out = ok(dir, &args);
    let first = lines(&round);
    let failed = first.iter().filter(|(_, s, _)| s == "failed").count();
    assert!(failed > 0, "the sim failed no input after retries: {out}");
    assert!(
        out.contains(&format!("round 0 has {failed} failed records")),
        "{out}"
    );
    assert!(!dir.join("active.jsonl").exists(), "{out}");
    let requests = |url: &str| {
        get_json(&url.replace("/v1", "/stats"))["requests"]
            .as_u64()
            .unwrap()
    };
    let before = requests(&url);

    let out = ok(dir, &args);
    // Each failed input is asked again (at least once); the answered ones are not.
    assert!(
        requests(&url) >= before + failed as u64,
        "{failed} failed inputs, {} requests after {before}: {out}",
        requests(&url)
    );
    let second = lines(&round);
    assert_eq!(second.len(), 20);
    for (id, status, line) in &first {
        if status != "failed" {
            let again = second.iter().find(|(i, _, _)| i == id).unwrap();
            assert_eq!(&again.2, line, "an answered record is kept as it was");
        }
    }
    let stats = get_json(&url.replace("/v1", "/stats"));
    assert_eq!(stats["duplicates"], 0, "nothing bought twice: {stats}");
    let _ = sim.kill();
    let _ = sim.wait();
}
