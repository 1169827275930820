//! An extraction task through teach, on a real Restaurant-8k slice converted by
//! `scripts/convert_restaurant8k.py` with the worked spec (`datasets/restaurant8k/task.toml`):
//! the sim-teacher quotes spans (with its systematic mistakes, and the question the
//! assistant had asked in the prompt), teach aligns each quote to character offsets and
//! keeps the context in the records, and bad gold fails before anything is paid for.

mod common;

use common::{distill_in as run, repo, teach_via};
use std::path::Path;
use std::process::Command;

/// Every `step`-th turn of a Restaurant-8k split, converted to distill's span JSONL.
fn restaurant8k(split: &str, dir: &Path, step: usize) -> usize {
    let full = dir.join(format!("{split}-full.jsonl"));
    let o = Command::new("python3")
        .arg(repo().join("scripts/convert_restaurant8k.py"))
        .arg(repo().join(format!("../shared/datasets/restaurant8k/{split}.json")))
        .arg(&full)
        .arg(split)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("overlapping spans dropped"),
        "the converter says what it dropped"
    );
    let text = std::fs::read_to_string(&full).unwrap();
    let lines: Vec<&str> = text.lines().step_by(step).collect();
    std::fs::write(dir.join(format!("{split}.jsonl")), lines.join("\n") + "\n").unwrap();
    lines.len()
}

fn chars(s: &str, start: usize, end: usize) -> String {
    s.chars().skip(start).take(end - start).collect()
}

/// Every span's `text` is the characters its offsets cover in the row's `text`.
fn spans_cover_their_text(spans: &serde_json::Value, row: &serde_json::Value, line: &str) {
    let input = row["text"].as_str().unwrap();
    for s in spans.as_array().unwrap_or_else(|| panic!("{line}")) {
        let (start, end) = (
            s["start"].as_u64().unwrap() as usize,
            s["end"].as_u64().unwrap() as usize,
        );
        assert_eq!(
            chars(input, start, end),
            s["text"].as_str().unwrap(),
            "{line}"
        );
    }
}

#[test]
fn spans_are_taught_with_offsets_and_context() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let n = restaurant8k("train", dir, 10);
    // Before the sim starts: it reads the gold of the spec's train and test files.
    restaurant8k("test", dir, 10);
    std::fs::copy(
        repo().join("datasets/restaurant8k/task.toml"),
        dir.join("task.toml"),
    )
    .unwrap();
    // One first reply in ten quotes text that is not in the message (or is cut short).
    let (sim, url) = common::sim_teacher(dir, "task.toml", &["--invalid-rate", "0.1"]);
    let _sim = common::Proc {
        child: sim,
        stderr: Default::default(),
    };

    let o = common::distill_ok(
        dir,
        &[
            "teach",
            "--task",
            "task.toml",
            "--input",
            "train.jsonl",
            "--out",
            "dry.jsonl",
            "--dry-run",
        ],
    );
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(said.contains(&format!("{n} requests")), "{said}");
    assert!(!dir.join("dry.jsonl").exists());

    teach_via(dir, "task.toml", "train.jsonl", "teacher.jsonl", &url);
    let (mut ok, mut exact, mut with_context, mut gold_spans, mut found) = (0, 0, 0, 0, 0);
    let text = std::fs::read_to_string(dir.join("teacher.jsonl")).unwrap();
    for line in text.lines() {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(
            r["status"], "ok",
            "every invalid reply was repaired: {line}"
        );
        ok += 1;
        spans_cover_their_text(&r["output"]["spans"], &r, line);
        with_context += usize::from(r["context"]["requested_slots"].is_string());
        // The gold, as the teacher saw none of it: compare (slot, start, end).
        let key = |v: &serde_json::Value| {
            let mut k: Vec<(String, u64, u64)> = v
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    (
                        s["slot"].as_str().unwrap().to_string(),
                        s["start"].as_u64().unwrap(),
                        s["end"].as_u64().unwrap(),
                    )
                })
                .collect();
            k.sort();
            k
        };
        let gold: serde_json::Value =
            serde_json::from_str(r["gold"].as_str().unwrap_or("[]")).unwrap();
        let (g, t) = (key(&gold), key(&r["output"]["spans"]));
        gold_spans += g.len();
        found += g.iter().filter(|s| t.contains(s)).count();
        exact += usize::from(g == t);
    }
    assert_eq!(ok, n);
    let stats = common::get_json(&url.replace("/v1", "/stats"));
    let invalid = stats["errors_injected"]["invalid_replies"]
        .as_u64()
        .unwrap();
    assert!(invalid as f64 > 0.05 * n as f64, "{stats}");
    // A prompt asked twice (the same turn after the same question) is paid for once.
    let prompts: std::collections::HashSet<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["request_hash"].to_string())
        .collect();
    assert_eq!(
        stats["unique_billable"].as_u64(),
        Some(prompts.len() as u64 + invalid),
        "one repair per invalid reply: {stats}"
    );
    assert!(
        with_context > n / 5,
        "records keep the context: {with_context}"
    );
    // The sim finds the gold only through the whole prompt, context included: a prompt
    // without it would get no spans back for the turns that have one.
    let agreement = exact as f64 / ok as f64;
    let recall = found as f64 / gold_spans as f64;
    eprintln!(
        "teacher vs gold: exact {agreement:.3}, span recall {recall:.3} ({gold_spans} spans)"
    );
    assert!(
        (0.85..0.995).contains(&agreement),
        "exact agreement {agreement}"
    );
    assert!((0.9..0.999).contains(&recall), "span recall {recall}");

    // Through the Batch API (another state dir, so nothing comes from the response cache):
    // the same spans for every input.
    let b = dir.join("batch");
    std::fs::create_dir(&b).unwrap();
    for f in ["task.toml", "train.jsonl"] {
        std::fs::copy(dir.join(f), b.join(f)).unwrap();
    }
    let o = common::distill_ok(
        &b,
        &[
            "teach",
            "--task",
            "task.toml",
            "--input",
            "train.jsonl",
            "--out",
            "../teacher-batch.jsonl",
            "--base-url",
            &url,
            "--batch",
            "--poll-secs",
            "0.05",
        ],
    );
    let spans_by_id = |file: &str| -> std::collections::BTreeMap<String, serde_json::Value> {
        std::fs::read_to_string(dir.join(file))
            .unwrap()
            .lines()
            .map(|l| {
                let r: serde_json::Value = serde_json::from_str(l).unwrap();
                (r["id"].to_string(), r["output"]["spans"].clone())
            })
            .collect()
    };
    assert_eq!(
        spans_by_id("teacher-batch.jsonl"),
        spans_by_id("teacher.jsonl"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        common::get_json(&url.replace("/v1", "/stats"))["batches"]["created"].as_u64() > Some(0)
    );

    // The linear tagger learns the teacher's spans; predict tags held-out turns with the
    // question asked, and scores them against gold.
    let o = common::distill_ok(
        dir,
        &[
            "train",
            "--task",
            "task.toml",
            "--data",
            "teacher.jsonl",
            "--out",
            "tagger",
        ],
    );
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(said.contains("dev span F1"), "{said}");
    let o = run(
        dir,
        &[
            "train",
            "--task",
            "task.toml",
            "--data",
            "teacher.jsonl",
            "--dev",
            "test.jsonl",
            "--out",
            "tagger-dev",
        ],
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--dev: a tagger holds out"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = common::distill_ok(
        dir,
        &[
            "predict",
            "--model",
            "tagger",
            "--input",
            "test.jsonl",
            "--gold-column",
            "spans",
            "--out",
            "tagged.jsonl",
        ],
    );
    let said = String::from_utf8_lossy(&o.stdout);
    let f1: f64 = said
        .split("span F1 vs gold ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|f| f.parse().ok())
        .unwrap_or_else(|| panic!("{said}"));
    eprintln!("linear tagger on the teacher's labels of {n} turns: test span F1 {f1:.4}");
    assert!(f1 > 0.7, "{said}");
    for line in std::fs::read_to_string(dir.join("tagged.jsonl"))
        .unwrap()
        .lines()
    {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        spans_cover_their_text(&r["spans"], &r, line);
        let c = r["confidence"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&c), "{line}");
    }

    // eval: the tagger and the teacher against gold, the cascade behind the teacher's floor,
    // and the same predictions recomputed by seqeval.
    teach_via(dir, "task.toml", "test.jsonl", "teacher-test.jsonl", &url);
    let eval = |labels: &str, out: &str| -> serde_json::Value {
        let o = common::distill_ok(
            dir,
            &[
                "eval",
                "--task",
                "task.toml",
                "--model",
                "tagger",
                "--test",
                "test.jsonl",
                "--teacher-labels",
                labels,
                "--out",
                out,
            ],
        );
        eprintln!("{}", String::from_utf8_lossy(&o.stdout));
        serde_json::from_str(&std::fs::read_to_string(dir.join(out).join("metrics.json")).unwrap())
            .unwrap()
    };
    let m = eval("teacher-test.jsonl", "evals");
    let student = m["student_vs_gold"]["exact"]["f1"]["value"]
        .as_f64()
        .unwrap();
    let teacher = m["teacher_vs_gold"]["exact"]["f1"]["value"]
        .as_f64()
        .unwrap();
    assert!(
        (student - f1).abs() < 1e-4,
        "eval and predict agree: {student} vs {f1}"
    );
    assert!(teacher > student, "{m}");
    assert_eq!(m["reference"], "gold");
    let c = &m["cascade"];
    assert!(
        c["held_out"]["escalated_fraction"].as_f64().unwrap() > 0.0,
        "{c}"
    );
    assert!(
        c["held_out"]["quality"]["value"].as_f64().unwrap()
            > c["held_out"]["student_quality"]["value"].as_f64().unwrap(),
        "the cascade beats the student alone: {c}"
    );
    // The bill: the cascade pays the tagger on every input and the teacher on what it escalates;
    // labelling is charged as the inputs the tagger learned from at the teacher's price.
    let k = &m["costs"];
    let num = |v: &serde_json::Value| v.as_f64().unwrap_or_else(|| panic!("{k}"));
    let teacher_usd = num(&k["teacher_per_request_usd"]);
    assert_eq!(teacher_usd, num(&m["teacher_cost_per_request_usd"]), "{k}");
    let student_usd = num(&k["student_per_request_usd"]);
    assert!(
        student_usd > 0.0 && student_usd < teacher_usd / 100.0,
        "{k}"
    );
    let escalated = num(&c["held_out"]["escalated_fraction"]);
    let cascade_usd = num(&k["cascade_per_request_usd"]);
    assert!(
        (cascade_usd - (student_usd + escalated * teacher_usd)).abs() < 1e-12,
        "{k}"
    );
    assert!(
        (num(&k["cascade"]["steady_saving"]) - (1.0 - cascade_usd / teacher_usd)).abs() < 1e-9,
        "{k}"
    );
    let learned = num(&m["student"]["train_inputs"]) + num(&m["student"]["dev_inputs"]);
    assert_eq!(k["one_time"][0]["what"], "labelling", "{k}");
    assert!(
        (num(&k["one_time"][0]["usd"]) - learned * teacher_usd).abs() < 1e-9,
        "{k}"
    );
    assert_eq!(k["one_time"][1]["what"], "training", "{k}");
    assert!(
        num(&k["cascade"]["monthly_usd"]) > num(&k["cascade"]["steady_monthly_usd"]),
        "month 1 carries the one-time costs: {k}"
    );
    // Labels for half the test inputs: the teacher is scored on those, not charged for the rest.
    let half: Vec<String> = std::fs::read_to_string(dir.join("teacher-test.jsonl"))
        .unwrap()
        .lines()
        .step_by(2)
        .map(str::to_string)
        .collect();
    std::fs::write(dir.join("teacher-half.jsonl"), half.join("\n") + "\n").unwrap();
    let h = eval("teacher-half.jsonl", "evals-half");
    assert_eq!(
        h["teacher_matched"].as_u64(),
        Some(half.len() as u64),
        "{h}"
    );
    assert!(
        h["teacher_vs_gold"]["exact"]["f1"]["value"]
            .as_f64()
            .unwrap()
            > 0.9,
        "{h}"
    );
    let report = std::fs::read_to_string(dir.join("evals/report.md")).unwrap();
    for want in [
        "student vs gold",
        "teacher vs gold",
        "Per slot",
        "first_name",
        "Cascade",
        "Cost at 10000 requests a day",
        "| cascade |",
    ] {
        assert!(report.contains(want), "report.md lacks {want}:\n{report}");
    }
    // The HTML report holds the same tables and draws the cascade's sweep.
    let page = std::fs::read_to_string(dir.join("evals/report.html")).unwrap();
    for want in [
        "<td>student vs gold</td>",
        "<td>first_name</td>",
        "data-chart=\"cascade\"",
        "<svg",
        "Cost at 10000 requests a day",
        "<td>cascade</td>",
    ] {
        assert!(page.contains(want), "report.html lacks {want}");
    }
    if let Some(py) = common::python_with("seqeval") {
        let v = Command::new(&py)
            .arg(repo().join("scripts/verify/spans_vs_seqeval.py"))
            .arg(dir.join("evals/spans.json"))
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&v.stdout);
        assert!(v.status.success() && out.contains("figures agree"), "{out}");
    }

    api_through_the_cli(dir, &url, teacher_usd);
    curve_through_the_cli(dir, teacher_usd, num(&m["floor"]));
    serve_answers_spans(dir, &url);
    encoder_tagger_through_the_cli(dir);
}

/// `eval --api` on an extract task: a hosted model (the sim, priced as gpt-4o-mini) asked for
/// every test input's spans with the question as context, scored against gold and the teacher,
/// priced per input, and answered from the response cache on a second run.
fn api_through_the_cli(dir: &Path, url: &str, teacher_usd: f64) {
    let api = format!("openai:gpt-4o-mini@{url}");
    let eval = |out: &str| {
        let o = common::distill_ok(
            dir,
            &[
                "eval",
                "--task",
                "task.toml",
                "--model",
                "tagger",
                "--test",
                "test.jsonl",
                "--teacher-labels",
                "teacher-test.jsonl",
                "--api",
                &api,
                "--out",
                out,
            ],
        );
        let m: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(out).join("metrics.json")).unwrap(),
        )
        .unwrap();
        (String::from_utf8_lossy(&o.stdout).into_owned(), m)
    };
    let stats = || {
        common::get_json(&url.replace("/v1", "/stats"))["billable"]
            .as_u64()
            .unwrap()
    };
    let before = stats();
    let (said, m) = eval("evals-api");
    let n = m["n"].as_u64().unwrap();
    let paid = stats() - before;
    // One call per input, and a repair for the replies quoting text that is not there (the sim
    // runs with --invalid-rate 0.1).
    assert!(
        paid > n && paid < n + n / 4,
        "{paid} paid calls for {n} inputs"
    );
    assert!(
        said.contains("openai:gpt-4o-mini vs gold: span F1"),
        "{said}"
    );
    let a = &m["api"][0];
    assert_eq!(a["name"], "openai:gpt-4o-mini", "{a}");
    assert_eq!(a["base_url"].as_str(), Some(url), "{a}");
    let f1 = a["vs_gold"]["exact"]["f1"]["value"].as_f64().unwrap();
    assert!(
        f1 > 0.8 && f1 <= 1.0,
        "the sim answers from gold with mistakes: {a}"
    );
    assert!(
        a["vs_teacher"]["exact"]["f1"]["value"].as_f64().is_some(),
        "{a}"
    );
    let per = a["per_request_usd"].as_f64().unwrap();
    assert!(
        per > 0.0 && per < teacher_usd,
        "gpt-4o-mini costs less than gpt-4o: {a}"
    );
    let steady = a["economics"]["steady_saving"].as_f64().unwrap();
    assert!((steady - (1.0 - per / teacher_usd)).abs() < 1e-9, "{a}");
    let md = std::fs::read_to_string(dir.join("evals-api/report.md")).unwrap();
    assert!(
        md.contains("| openai:gpt-4o-mini vs gold |") && md.contains("| openai:gpt-4o-mini |"),
        "{md}"
    );

    // Again: every answer from the response cache, nothing paid, the same scores.
    let (_, again) = eval("evals-api-again");
    assert_eq!(stats() - before, paid, "the second run paid for calls");
    assert_eq!(again["api"][0]["vs_gold"], a["vs_gold"]);

    // Teacher records without a cost: no Cost table, and the hosted model's $/input still shown.
    let free: Vec<String> = std::fs::read_to_string(dir.join("teacher-test.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut r: serde_json::Value = serde_json::from_str(l).unwrap();
            r["cost_usd"] = 0.0.into();
            r.to_string()
        })
        .collect();
    std::fs::write(dir.join("teacher-free.jsonl"), free.join("\n") + "\n").unwrap();
    common::distill_ok(
        dir,
        &[
            "eval",
            "--task",
            "task.toml",
            "--model",
            "tagger",
            "--test",
            "test.jsonl",
            "--teacher-labels",
            "teacher-free.jsonl",
            "--api",
            &api,
            "--out",
            "evals-api-free",
        ],
    );
    assert_eq!(stats() - before, paid, "cached again");
    let md = std::fs::read_to_string(dir.join("evals-api-free/report.md")).unwrap();
    assert!(!md.contains("## Cost at"), "{md}");
    assert!(
        md.contains("## Hosted models")
            && md.contains(&format!(
                "- openai:gpt-4o-mini: {}",
                distill_eval::report::fmt::usd(per)
            )),
        "{md}"
    );
}

/// `eval --curve` on an extract task: linear taggers on 100, 300 and all of the teacher's
/// usable records, two seeds each, every point evaluated like the tagger above (same floor),
/// labelling charged for its records only, the curve in metrics.json, both reports and stdout.
fn curve_through_the_cli(dir: &Path, teacher_usd: f64, floor: f64) {
    let args = |extra: &[&'static str]| {
        let mut a = vec![
            "eval",
            "--task",
            "task.toml",
            "--model",
            "tagger",
            "--test",
            "test.jsonl",
            "--teacher-labels",
            "teacher-test.jsonl",
        ];
        a.extend_from_slice(extra);
        a
    };
    let o = run(
        dir,
        &args(&["--curve", "100,300", "--out", "evals-no-train"]),
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--curve needs --train"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = run(
        dir,
        &args(&[
            "--curve",
            "100",
            "--curve-student",
            "encoder-head",
            "--train",
            "teacher.jsonl",
            "--out",
            "evals-head",
        ]),
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--curve-student encoder-head"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!dir.join("evals-head").exists(), "nothing half-written");

    let o = common::distill_ok(
        dir,
        &args(&[
            "--curve",
            "300,100,all",
            "--curve-seeds",
            "2",
            "--train",
            "teacher.jsonl",
            "--out",
            "evals-curve",
        ]),
    );
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(said.contains("Learning curve: `linear` students"), "{said}");
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("evals-curve/metrics.json")).unwrap(),
    )
    .unwrap();
    let c = &m["curve"];
    assert_eq!(c["student"], "linear", "{c}");
    assert_eq!(c["metric"], "span F1", "{c}");
    assert_eq!(c["floor_metric"], "exact inputs", "{c}");
    // The same test inputs, teacher and calibration split: the same floor as the eval above.
    assert!((c["floor"].as_f64().unwrap() - floor).abs() < 1e-12, "{c}");
    let usable = std::fs::read_to_string(dir.join("teacher.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| {
            let r: serde_json::Value = serde_json::from_str(l).unwrap();
            r["status"] == "ok"
        })
        .count();
    let rows = c["rows"].as_array().unwrap();
    let sizes: Vec<u64> = rows
        .iter()
        .map(|r| r["n_labels"].as_u64().unwrap())
        .collect();
    assert_eq!(
        sizes,
        [100, 300, usable as u64],
        "sorted, `all` = every usable record"
    );
    let points = c["points"].as_array().unwrap();
    assert_eq!(points.len(), 6, "{c}");
    for p in points {
        let n = p["n_labels"].as_f64().unwrap();
        assert!(
            (p["labelling_usd"].as_f64().unwrap() - n * teacher_usd).abs() < 1e-9,
            "labelling is charged for the point's records only: {p}"
        );
        let q = p["student_quality"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&q), "{p}");
        assert!(
            p["escalated"].as_f64().is_some() && p["month1_usd"].as_f64().is_some(),
            "{p}"
        );
    }
    let mean = |r: &serde_json::Value, k: &str| r[k]["mean"].as_f64().unwrap();
    assert!(
        mean(&rows[2], "student_quality") > mean(&rows[0], "student_quality"),
        "more labels, a better tagger: {c}"
    );
    // Each row's verdict follows the stated rule.
    let full = mean(&rows[2], "escalated");
    for r in rows {
        let want =
            mean(r, "cascade_quality") >= floor && mean(r, "escalated") <= full + 0.02 + 1e-12;
        assert_eq!(r["sufficient"].as_bool(), Some(want), "{r}");
    }
    let cheapest = rows
        .iter()
        .find(|r| r["sufficient"] == true)
        .map(|r| r["n_labels"].clone());
    assert_eq!(
        c["cheapest_sufficient"],
        cheapest.unwrap_or(serde_json::Value::Null)
    );
    let md = std::fs::read_to_string(dir.join("evals-curve/report.md")).unwrap();
    assert!(
        md.contains("## Learning curve") && md.contains("student span F1"),
        "{md}"
    );
    let page = std::fs::read_to_string(dir.join("evals-curve/report.html")).unwrap();
    assert!(page.contains("data-chart=\"curve\"") && page.contains("cascade (exact inputs)"));
}

/// The fine-tuned tagger through the same commands: train (one epoch on the slice), predict
/// against gold, eval, and serve with the question as context.
fn encoder_tagger_through_the_cli(dir: &Path) {
    let base = repo().join("models/base/all-MiniLM-L6-v2");
    let o = common::distill_ok(
        dir,
        &[
            "train",
            "--task",
            "task.toml",
            "--data",
            "teacher.jsonl",
            "--student",
            "encoder-finetune",
            "--base",
            base.to_str().unwrap(),
            "--epochs",
            "2",
            "--max-len",
            "32",
            "--out",
            "encoder-tagger",
        ],
    );
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        said.contains("encoder tagger:") && said.contains("dev span F1"),
        "{said}"
    );
    let distill_json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("encoder-tagger/distill.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(distill_json["student"], "encoder-tagger");
    let o = common::distill_ok(
        dir,
        &[
            "predict",
            "--model",
            "encoder-tagger",
            "--input",
            "test.jsonl",
            "--gold-column",
            "spans",
            "--out",
            "encoder-tagged.jsonl",
        ],
    );
    let said = String::from_utf8_lossy(&o.stdout);
    let f1: f64 = said
        .split("span F1 vs gold ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|f| f.parse().ok())
        .unwrap_or_else(|| panic!("{said}"));
    eprintln!("encoder tagger, 2 epochs on the slice: test span F1 {f1:.4}");
    assert!(f1 > 0.6, "{said}");
    let m = {
        common::distill_ok(
            dir,
            &[
                "eval",
                "--task",
                "task.toml",
                "--model",
                "encoder-tagger",
                "--test",
                "test.jsonl",
                "--teacher-labels",
                "teacher-test.jsonl",
                "--out",
                "evals-encoder",
            ],
        );
        let text = std::fs::read_to_string(dir.join("evals-encoder/metrics.json")).unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()
    };
    let eval_f1 = m["student_vs_gold"]["exact"]["f1"]["value"]
        .as_f64()
        .unwrap();
    assert!(
        (eval_f1 - f1).abs() < 1e-4,
        "eval {eval_f1} vs predict {f1}"
    );
    assert_eq!(m["student"]["student"], "encoder-tagger");

    let model = dir.join("encoder-tagger");
    let (_serve, addr) = common::start_serve(
        &["--model", model.to_str().unwrap(), "--escalate-to", "none"],
        &dir.join("serve-state-encoder"),
    );
    let row: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(dir.join("test.jsonl"))
            .unwrap()
            .lines()
            .find(|l| l.contains("\"slot\""))
            .unwrap(),
    )
    .unwrap();
    let req = serde_json::json!({"model": "encoder-tagger", "inputs": [{"text": row["text"],
        "context": {"requested_slots": row["requested_slots"]}}]})
    .to_string();
    let (status, body) = common::http(&addr, "POST", "/v1/predict", &req).unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["results"][0]["source"], "student", "{body}");
    spans_cover_their_text(&v["results"][0]["spans"], &row, &body);
    let (_, models) = common::http(&addr, "GET", "/v1/models", "").unwrap();
    assert!(models.contains("\"kind\":\"encoder-tagger\""), "{models}");
}

/// A list context column as records keep it: its items joined by ", ".
fn asked_text(v: &serde_json::Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|i| i.as_str().unwrap_or_default())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// `distill serve` on the tagger, escalating to the sim-teacher behind the threshold eval
/// chose for it: spans of the exact text asked, with the context the request gives.
fn serve_answers_spans(dir: &Path, teacher_url: &str) {
    let path = |p: &str| dir.join(p).to_str().unwrap().to_string();
    // On this slice the teacher is almost always exactly right, so only escalating every
    // input holds its floor: serve is refused that cascade, saying why.
    let refused = common::serve_refused(
        &[
            "--model",
            &path("tagger"),
            "--threshold",
            &path("evals/metrics.json"),
        ],
        &dir.join("serve-state"),
    );
    assert!(refused.contains("escalates every input"), "{refused}");
    // A floor the tagger can hold with a real threshold.
    common::distill_ok(
        dir,
        &[
            "eval",
            "--task",
            "task.toml",
            "--model",
            "tagger",
            "--test",
            "test.jsonl",
            "--teacher-labels",
            "teacher-test.jsonl",
            "--floor",
            "accuracy=0.95",
            "--out",
            "evals-serve",
        ],
    );
    let (serve, addr) = common::start_serve(
        &[
            "--model",
            &path("tagger"),
            "--task",
            &path("task.toml"),
            "--teacher-base-url",
            teacher_url,
            "--threshold",
            &path("evals-serve/metrics.json"),
            "--cache",
            "memory",
        ],
        &dir.join("serve-state"),
    );
    let log = serve.stderr.lock().unwrap().clone();
    assert!(log.contains("tagger (linear-tagger, 5 slots"), "{log}");
    let metrics: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("evals-serve/metrics.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        metrics["cascade"]["floor_met_on_calibration"], true,
        "{metrics}"
    );
    let (status, models) = common::http(&addr, "GET", "/v1/models", "").unwrap();
    assert_eq!(status, 200, "{models}");
    let models: serde_json::Value = serde_json::from_str(&models).unwrap();
    let card = &models["data"][0]["distill"];
    assert_eq!(card["slots"], 5, "{card}");
    assert_eq!(
        card["context_columns"],
        serde_json::json!(["requested_slots"])
    );
    assert!(card["dev_span_f1"].as_f64().is_some(), "{card}");
    let threshold = metrics["cascades"][0]["threshold"].as_f64().unwrap();
    assert!(
        (card["threshold"].as_f64().unwrap() - threshold).abs() < 1e-6,
        "the eval's threshold for this model: {card} vs {threshold}"
    );

    // /v1/predict with each test row's context: spans point into the exact text, and the
    // unsure inputs the teacher answered carry the spans it gave at teach time (the sim
    // knows a row's gold only by its whole prompt, context included).
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("test.jsonl"))
        .unwrap()
        .lines()
        .take(60)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let taught: std::collections::HashMap<(String, String), serde_json::Value> =
        std::fs::read_to_string(dir.join("teacher-test.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|r| {
                let key = (
                    r["text"].as_str().unwrap().to_string(),
                    r["context"]["requested_slots"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                );
                (key, r["output"]["spans"].clone())
            })
            .collect();
    let inputs: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({"text": r["text"],
                "context": {"requested_slots": r["requested_slots"]}})
        })
        .collect();
    let req = serde_json::json!({"model": "tagger", "inputs": inputs}).to_string();
    let (status, body) = common::http(&addr, "POST", "/v1/predict", &req).unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), rows.len());
    let (mut by_teacher, mut as_taught) = (0, 0);
    for (r, row) in results.iter().zip(&rows) {
        spans_cover_their_text(&r["spans"], row, &r.to_string());
        let listed: serde_json::Value = serde_json::from_str(r["label"].as_str().unwrap()).unwrap();
        assert_eq!(
            listed, r["spans"],
            "label is the spans as compact JSON: {r}"
        );
        if r["source"] == "teacher" {
            by_teacher += 1;
            let key = (
                row["text"].as_str().unwrap().to_string(),
                asked_text(&row["requested_slots"]),
            );
            let strip = |v: &serde_json::Value| -> Vec<(String, u64, u64)> {
                v.as_array()
                    .map(|a| {
                        a.iter()
                            .map(|s| {
                                (
                                    s["slot"].as_str().unwrap().to_string(),
                                    s["start"].as_u64().unwrap(),
                                    s["end"].as_u64().unwrap(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            };
            if taught
                .get(&key)
                .is_some_and(|t| strip(t) == strip(&r["spans"]))
            {
                as_taught += 1;
            }
        }
    }
    let by_student = results.iter().filter(|r| r["source"] == "student").count();
    eprintln!(
        "serve: {by_student} by the tagger, {by_teacher} by the teacher ({as_taught} as taught)"
    );
    assert!(by_student > 0 && by_teacher > 0, "{body}");
    assert!(
        as_taught * 10 >= by_teacher * 9,
        "{as_taught} of {by_teacher} teacher answers match teach's records: {body}"
    );

    // Chat: the context rides in the body; the reply is the spans as JSON. A test turn with
    // spans, so the teacher (the sim knows the gold of the turns in the task's files) has
    // some to give if the tagger is unsure.
    let chat = |text: &str, asked: &serde_json::Value| {
        serde_json::json!({"model": "tagger",
            "messages": [{"role": "user", "content": text}],
            "context": {"requested_slots": asked}})
        .to_string()
    };
    let row = rows
        .iter()
        .find(|r| r["spans"].as_array().unwrap().len() >= 2)
        .unwrap();
    let (text, asked) = (row["text"].as_str().unwrap(), &row["requested_slots"]);
    let (status, body) =
        common::http(&addr, "POST", "/v1/chat/completions", &chat(text, asked)).unwrap();
    assert_eq!(status, 200, "{body}");
    let first: serde_json::Value = serde_json::from_str(&body).unwrap();
    let content: serde_json::Value =
        serde_json::from_str(first["choices"][0]["message"]["content"].as_str().unwrap())
            .unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(content["spans"], first["distill"]["spans"], "{body}");
    spans_cover_their_text(&content["spans"], row, &body);
    assert!(
        !content["spans"].as_array().unwrap().is_empty(),
        "a turn with spans has spans: {body}"
    );
    let (_, again) =
        common::http(&addr, "POST", "/v1/chat/completions", &chat(text, asked)).unwrap();
    let again: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(again["distill"]["source"], "cache", "{again}");
    assert_eq!(again["distill"]["spans"], first["distill"]["spans"]);
    // The same text asked after another question is another input, not a cache hit.
    let other_question = serde_json::json!(["a question never asked"]);
    let (_, other) = common::http(
        &addr,
        "POST",
        "/v1/chat/completions",
        &chat(text, &other_question),
    )
    .unwrap();
    let other: serde_json::Value = serde_json::from_str(&other).unwrap();
    assert_ne!(other["distill"]["source"], "cache", "{other}");

    // A context field the model does not read is refused, naming it.
    let bad = serde_json::json!({"model": "tagger",
        "inputs": [{"text": "for two", "context": {"colour": "red"}}]})
    .to_string();
    let (status, body) = common::http(&addr, "POST", "/v1/predict", &bad).unwrap();
    assert_eq!(status, 400, "{body}");
    let e: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["error"]["param"], "inputs[0].context.colour", "{body}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("requested_slots"),
        "{body}"
    );
    drop(serve);

    // Without a task or a teacher, and with --truncate: an over-long input is still refused
    // (spans past a cut would be lost), and a short one is answered.
    let (_serve, addr) = common::start_serve(
        &[
            "--model",
            &path("tagger"),
            "--escalate-to",
            "none",
            "--truncate",
            "--max-input-tokens",
            "6",
        ],
        &dir.join("serve-state-2"),
    );
    let long = serde_json::json!({"model": "tagger",
        "inputs": ["a table for 4 tomorrow at 7pm under Maria Lopez please"]})
    .to_string();
    let (status, body) = common::http(&addr, "POST", "/v1/predict", &long).unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("does not cut inputs"), "{body}");
    let short = serde_json::json!({"model": "tagger", "inputs": ["for 4 at 7pm"]}).to_string();
    let (status, body) = common::http(&addr, "POST", "/v1/predict", &short).unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["results"][0]["source"], "student", "{body}");
    spans_cover_their_text(
        &v["results"][0]["spans"],
        &serde_json::json!({"text": "for 4 at 7pm"}),
        &body,
    );
}

#[test]
fn bad_gold_spans_fail_naming_file_line_and_field() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    std::fs::copy(
        repo().join("datasets/restaurant8k/task.toml"),
        dir.join("task.toml"),
    )
    .unwrap();
    let good = r#"{"text": "for 4 at 7pm", "requested_slots": [], "spans": [{"slot": "people", "start": 4, "end": 5}]}"#;
    for (spans, want) in [
        (
            r#"[{"slot": "people", "start": 4, "end": 5}, {"slot": "time", "start": 4, "end": 12}]"#,
            "spans overlap",
        ),
        (
            r#"[{"slot": "time", "start": 9, "end": 20}]"#,
            "inside the text",
        ),
        (r#"[{"slot": "table", "start": 0, "end": 3}]"#, "`table`"),
        (
            r#"[{"slot": "time", "start": 9, "end": 12, "text": "8pm"}]"#,
            "`8pm`",
        ),
    ] {
        let bad =
            format!(r#"{{"text": "for 4 at 7pm", "requested_slots": ["time"], "spans": {spans}}}"#);
        std::fs::write(dir.join("train.jsonl"), format!("{good}\n{good}\n{bad}\n")).unwrap();
        let o = run(
            dir,
            &[
                "teach",
                "--task",
                "task.toml",
                "--input",
                "train.jsonl",
                "--out",
                "teacher.jsonl",
                "--base-url",
                "http://127.0.0.1:9",
            ],
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.contains("train.jsonl:3") && err.contains("spans"),
            "{err}"
        );
        assert!(err.contains(want), "{want}: {err}");
        assert!(
            !dir.join("teacher.jsonl").exists(),
            "nothing written, nothing paid"
        );
    }
    // A template that would hide the context from the teacher is refused where it is set.
    let spec = std::fs::read_to_string(dir.join("task.toml")).unwrap();
    std::fs::write(dir.join("task.toml"), spec.replace("{context}", "")).unwrap();
    let o = run(dir, &["teach", "--task", "task.toml", "--dry-run"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("teacher.user_template") && err.contains("{context}"),
        "{err}"
    );
}

/// `distill quickstart --example restaurant8k` on the whole data set: the simulated teacher
/// labels it, the tagger trains on its spans, and the cascade holds the teacher's floor.
#[test]
fn quickstart_distils_a_slot_extractor() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    restaurant8k("train", &data, 1);
    restaurant8k("test", &data, 1);
    std::fs::copy(
        repo().join("datasets/restaurant8k/task.toml"),
        data.join("task.toml"),
    )
    .unwrap();
    let o = common::distill_ok(
        d.path(),
        &[
            "quickstart",
            "--example",
            "restaurant8k",
            "--task",
            "data/task.toml",
            "--models-dir",
            "models",
            "--evals-dir",
            "evals",
        ],
    );
    let said = String::from_utf8_lossy(&o.stdout);
    eprintln!("{said}");
    let f1: f64 = said
        .split("tagger vs gold : span F1 ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|f| f.parse().ok())
        .unwrap_or_else(|| panic!("{said}"));
    assert!(f1 > 0.88, "{said}");
    assert!(said.contains(", held), escalating"), "{said}");
    assert!(
        said.contains("cost at 10000/day: teacher alone $"),
        "{said}"
    );
    let saving: f64 = said
        .split("after (saving ")
        .nth(1)
        .and_then(|r| r.split('%').next())
        .and_then(|f| f.parse().ok())
        .unwrap_or_else(|| panic!("{said}"));
    assert!(saving > 50.0, "{said}");
    assert!(d
        .path()
        .join("evals/restaurant8k-quickstart/report.md")
        .is_file());
}

/// The worked MixSNIPS slot spec (`datasets/mixsnips-slots/task.toml`, which reads the MixSNIPS
/// copy beside it) on a slice of the real data: teach validates every gold span against its
/// 39 slots and labels the requests through the sim, the linear tagger trains on the teacher's
/// spans, and eval scores it against gold on the spec's own test file.
#[test]
fn mixsnips_slot_spec_runs_teach_train_and_eval() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("mixsnips");
    let dir = d.path().join("mixsnips-slots");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    let shared = repo().join("../shared/datasets/mixsnips");
    for (split, rows) in [("dev", 400), ("test", 300)] {
        let text = std::fs::read_to_string(shared.join(format!("{split}.jsonl"))).unwrap();
        let slice: Vec<&str> = text.lines().take(rows).collect();
        std::fs::write(data.join(format!("{split}.jsonl")), slice.join("\n") + "\n").unwrap();
    }
    std::fs::copy(shared.join("slots.json"), data.join("slots.json")).unwrap();
    std::fs::copy(
        repo().join("datasets/mixsnips-slots/task.toml"),
        dir.join("task.toml"),
    )
    .unwrap();
    let (sim, url) = common::sim_teacher(&dir, "task.toml", &[]);
    let _sim = common::Proc {
        child: sim,
        stderr: Default::default(),
    };
    teach_via(
        &dir,
        "task.toml",
        "../mixsnips/dev.jsonl",
        "teacher.jsonl",
        &url,
    );
    teach_via(
        &dir,
        "task.toml",
        "../mixsnips/test.jsonl",
        "teacher-test.jsonl",
        &url,
    );
    let records = std::fs::read_to_string(dir.join("teacher.jsonl")).unwrap();
    assert_eq!(records.lines().count(), 400);
    for line in records.lines() {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        spans_cover_their_text(&r["output"]["spans"], &r, line);
    }
    common::distill_ok(
        &dir,
        &[
            "train",
            "--task",
            "task.toml",
            "--data",
            "teacher.jsonl",
            "--student",
            "linear",
            "--out",
            "tagger",
        ],
    );
    common::distill_ok(
        &dir,
        &[
            "eval",
            "--task",
            "task.toml",
            "--model",
            "tagger",
            "--teacher-labels",
            "teacher-test.jsonl",
            "--out",
            "evals",
        ],
    );
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("evals/metrics.json")).unwrap())
            .unwrap();
    assert_eq!(m["n"], 300, "the spec's test file: {m}");
    assert_eq!(m["student"]["slots"].as_array().unwrap().len(), 39);
    let f1 = |k: &str| m[k]["exact"]["f1"]["value"].as_f64().unwrap();
    assert!(f1("teacher_vs_gold") > 0.9, "{m}");
    // 400 labelled requests are few for 39 slots; the tagger still finds most values.
    assert!(
        f1("student_vs_gold") > 0.4 && f1("student_vs_gold") < f1("teacher_vs_gold"),
        "{m}"
    );
}
