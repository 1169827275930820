//! `--batch` (OpenAI Batch API and Anthropic Message Batches) and the Anthropic real-time
//! path, end to end over real HTTP against the sim-teacher on Banking77 slices, with real
//! SQLite cache and ledger files in temp dirs.

use distill_core::ledger::{Ledger, LedgerRow};
use distill_core::prices::PriceTable;
use distill_core::{RecordStatus, TaskSpec, TeacherRecord};
use distill_sim::{SimConfig, SimServer, Stats};
use distill_teach::{
    run_teach, ClientOptions, TeachError, TeachOptions, TeachSummary, TeacherClient,
};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn banking_dir() -> PathBuf {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/datasets/banking77");
    if shared.join("train.csv").exists() {
        shared
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/banking77")
    }
}

/// A Banking77 task over the first `rows` rows of train.csv, in `dir`.
fn task(dir: &Path, rows: usize, provider: &str, model: &str) -> TaskSpec {
    let src =
        std::fs::read_to_string(banking_dir().join("train.csv")).expect("banking77 train.csv");
    let mut rdr = csv::Reader::from_reader(src.as_bytes());
    let mut w = csv::Writer::from_path(dir.join("train.csv")).unwrap();
    w.write_record(["text", "category"]).unwrap();
    for r in rdr.records().take(rows) {
        w.write_record(&r.unwrap()).unwrap();
    }
    w.flush().unwrap();
    std::fs::copy(
        banking_dir().join("categories.json"),
        dir.join("categories.json"),
    )
    .unwrap();
    let spec = format!(
        r#"
name = "banking77"
kind = "classify"
[input]
path = "train.csv"
text_column = "text"
gold_column = "category"
[labels]
file = "categories.json"
[teacher]
provider = "{provider}"
model = "{model}"
max_tokens = 24
system_prompt = "You label customer messages sent to an online bank with their intent. Reply with JSON only: {{\"label\": \"<label>\"}}."
user_template = "Labels:\n{{labels}}\nMessage: {{text}}"
"#
    );
    std::fs::write(dir.join("task.toml"), spec).unwrap();
    TaskSpec::load(dir.join("task.toml")).unwrap()
}

fn opts(dir: &Path, base_url: &str, out: &str) -> TeachOptions {
    TeachOptions {
        out: Some(dir.join(out)),
        base_url: Some(base_url.to_string()),
        concurrency: 8,
        batch: true,
        batch_poll: Duration::from_millis(40),
        cache_path: dir.join("state/cache.db"),
        ledger_path: dir.join("state/ledger.db"),
        backoff_base: Some(Duration::from_millis(5)),
        ..Default::default()
    }
}

fn read_records(path: &Path) -> Vec<TeacherRecord> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn sim(spec: &TaskSpec, tweak: impl FnOnce(&mut SimConfig)) -> SimServer {
    let mut c = SimConfig::new(spec.clone());
    c.batch_completion_ms = 30;
    c.retry_after_ms = 5;
    tweak(&mut c);
    SimServer::start(c, SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap()
}

/// Every input exactly once, in input order.
fn assert_every_input_once(recs: &[TeacherRecord], n: usize) {
    let ids: Vec<String> = recs.iter().map(|r| r.id.clone()).collect();
    let want: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
    assert_eq!(ids, want, "every input exactly once, in input order");
}

fn ledger_rows(dir: &Path) -> Vec<LedgerRow> {
    Ledger::open(dir.join("state/ledger.db"))
        .unwrap()
        .rows_for_task("banking77")
        .unwrap()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// Nothing paid twice, and every billable response has exactly one ledger row.
fn assert_paid_once(stats: &Stats, rows: &[LedgerRow]) {
    assert_eq!(stats.duplicates, 0, "{stats:?}");
    assert_eq!(
        rows.len() as u64,
        stats.billable,
        "one ledger row per paid response"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_batch_labels_every_input_once_at_batch_prices() {
    let d = tempfile::tempdir().unwrap();
    let spec = task(d.path(), 120, "openai", "gpt-4o");
    let sim = sim(&spec, |c| c.invalid_rate = 0.1).await;
    // Warm the cache with the first 10 inputs in real time: the batch must not resubmit them.
    let mut warm = opts(d.path(), &sim.base_url(), "warm.jsonl");
    warm.batch = false;
    warm.limit = Some(10);
    assert!(run_teach(&spec, warm).await.unwrap().complete);
    let warm_billable = sim.stats().billable;
    sim.reset_stats();

    let mut o = opts(d.path(), &sim.base_url(), "teacher.jsonl");
    o.batch_size = 50;
    let s = run_teach(&spec, o).await.unwrap();
    assert!(s.complete, "{s}");
    assert!(!d.path().join("teacher.jsonl.partial").exists());
    let recs = read_records(&d.path().join("teacher.jsonl"));
    assert_every_input_once(&recs, 120);

    let stats = sim.stats();
    // 110 uncached requests, split 50 + 50 + 10.
    assert_eq!(s.batch_ids.len(), 3, "{s}");
    assert_eq!(stats.batches.created, 3, "{stats:?}");
    assert_eq!(
        stats.batches.requests, 110,
        "cached inputs are not submitted"
    );
    assert_eq!(stats.batches.succeeded, 110);
    // Real-time requests in this run are the repairs of invalid batch replies.
    assert!(stats.errors_injected.invalid_replies > 0, "{stats:?}");
    assert_eq!(stats.requests, stats.errors_injected.invalid_replies);
    assert_eq!(stats.billable, 110 + stats.requests, "{stats:?}");
    assert!(recs[..10]
        .iter()
        .all(|r| r.cached && !r.batch && r.cost_usd == 0.0));
    assert!(recs[10..]
        .iter()
        .all(|r| r.batch && !r.cached && r.cost_usd > 0.0));
    let ok = recs.iter().filter(|r| r.status == RecordStatus::Ok).count();
    assert_eq!(ok, 120, "every invalid batch reply was repaired");
    let agree = recs
        .iter()
        .filter(|r| r.label().is_some() && r.label() == r.gold.as_deref())
        .count();
    assert!(agree > 100, "the sim is 94% accurate: {agree}");

    // Ledger: one row per paid response; batch rows carry their batch id and batch prices.
    let rows = ledger_rows(d.path());
    assert_eq!(rows.len() as u64, warm_billable + stats.billable);
    let price = PriceTable::builtin().get("gpt-4o").cloned().unwrap();
    let batch_rows: Vec<&LedgerRow> = rows.iter().filter(|r| r.batch_id.is_some()).collect();
    assert_eq!(batch_rows.len(), 110);
    let ids: HashSet<&str> = batch_rows
        .iter()
        .map(|r| r.batch_id.as_deref().unwrap())
        .collect();
    let want: HashSet<&str> = s.batch_ids.iter().map(String::as_str).collect();
    assert_eq!(ids, want);
    for r in &batch_rows {
        assert!(close(r.cost_usd, price.cost(&r.usage, true)), "{r:?}");
        assert!(
            close(r.cost_usd, price.cost(&r.usage, false) / 2.0),
            "{r:?}"
        );
    }
    let this_run: f64 = recs.iter().map(|r| r.cost_usd).sum();
    assert!(close(this_run, s.cost_usd), "{this_run} vs {}", s.cost_usd);
    let warm_cost: f64 = read_records(&d.path().join("warm.jsonl"))
        .iter()
        .map(|r| r.cost_usd)
        .sum();
    let ledger_total: f64 = rows.iter().map(|r| r.cost_usd).sum();
    assert!(close(ledger_total, warm_cost + this_run));
    assert!(close(stats.cost_usd, this_run) || (stats.cost_usd - this_run).abs() < 1e-6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_batch_items_are_retried_in_real_time() {
    let d = tempfile::tempdir().unwrap();
    let spec = task(d.path(), 80, "openai", "gpt-4o");
    let sim = sim(&spec, |c| c.batch_expire_after = Some(30)).await;
    let s = run_teach(&spec, opts(d.path(), &sim.base_url(), "t.jsonl"))
        .await
        .unwrap();
    assert!(s.complete, "{s}");
    let recs = read_records(&d.path().join("t.jsonl"));
    assert_every_input_once(&recs, 80);
    let stats = sim.stats();
    assert_eq!(stats.batches.created, 1);
    assert_eq!(stats.batches.expired, 50, "{stats:?}");
    assert_eq!(
        stats.requests, 50,
        "the 50 expired items went out in real time"
    );
    assert_eq!(stats.billable, 80);
    let rows = ledger_rows(d.path());
    assert_paid_once(&stats, &rows);
    assert_eq!(rows.iter().filter(|r| r.batch_id.is_some()).count(), 30);
    assert_eq!(recs.iter().filter(|r| r.batch).count(), 30);
    assert!(recs.iter().all(|r| r.status == RecordStatus::Ok));
    let record_cost: f64 = recs.iter().map(|r| r.cost_usd).sum();
    let ledger_cost: f64 = rows.iter().map(|r| r.cost_usd).sum();
    assert!(close(record_cost, ledger_cost));
}

/// Submit and stop (as if the process died while waiting), then resume: the batch is picked
/// up by the id in the journal, never submitted again.
async fn resume_picks_up_the_batch(provider: &str, model: &str) {
    let d = tempfile::tempdir().unwrap();
    let spec = task(d.path(), 60, provider, model);
    let sim = sim(&spec, |c| c.invalid_rate = 0.1).await;
    let mut first = opts(d.path(), &sim.base_url(), "t.jsonl");
    first.batch_no_wait = true;
    let s = run_teach(&spec, first).await.unwrap();
    assert!(s.awaiting_batches && !s.complete, "{s}");
    assert_eq!(s.batch_ids.len(), 1);
    assert!(
        !d.path().join("t.jsonl").exists(),
        "no output until collected"
    );
    let journal = std::fs::read_to_string(d.path().join("t.jsonl.partial")).unwrap();
    assert!(journal.contains(&s.batch_ids[0]), "{journal}");
    assert_eq!(sim.stats().batches.created, 1);
    assert_eq!(sim.stats().requests, 0, "nothing sent in real time yet");

    // Without --batch the submitted inputs would be paid for twice: refused.
    let mut real_time = opts(d.path(), &sim.base_url(), "t.jsonl");
    real_time.batch = false;
    let e = run_teach(&spec, real_time).await.unwrap_err().to_string();
    assert!(e.contains(&s.batch_ids[0]) && e.contains("--batch"), "{e}");

    let mut again = opts(d.path(), &sim.base_url(), "t.jsonl");
    again.resume = true;
    let s2 = run_teach(&spec, again).await.unwrap();
    assert!(s2.complete, "{s2}");
    assert_eq!(s2.batch_ids, s.batch_ids, "the same batch, by id");
    let stats = sim.stats();
    assert_eq!(stats.batches.created, 1, "not resubmitted: {stats:?}");
    assert_eq!(stats.billable, 60 + stats.requests, "{stats:?}");
    let recs = read_records(&d.path().join("t.jsonl"));
    assert_every_input_once(&recs, 60);
    assert!(recs.iter().all(|r| r.provider == provider && r.batch));
    let rows = ledger_rows(d.path());
    assert_paid_once(&stats, &rows);
    assert!(rows
        .iter()
        .filter(|r| r.batch_id.is_some())
        .all(|r| r.batch_id == Some(s.batch_ids[0].clone())));
    let price = PriceTable::builtin().get(model).cloned().unwrap();
    for r in rows.iter().filter(|r| r.batch_id.is_some()) {
        assert!(close(r.cost_usd, price.cost(&r.usage, true)), "{r:?}");
    }
    let record_cost: f64 = recs.iter().map(|r| r.cost_usd).sum();
    let ledger_cost: f64 = rows.iter().map(|r| r.cost_usd).sum();
    assert!(
        close(record_cost, ledger_cost),
        "{record_cost} vs {ledger_cost}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_resume_picks_up_the_submitted_batch() {
    resume_picks_up_the_batch("openai", "gpt-4o").await;
}

/// A 60-input job that submits its one batch and leaves (`--no-wait`), writing `t.jsonl`'s
/// journal in `dir`.
async fn submit_and_leave(dir: &Path) -> (TaskSpec, SimServer, TeachSummary) {
    let spec = task(dir, 60, "openai", "gpt-4o");
    let sim = sim(&spec, |_| {}).await;
    let mut first = opts(dir, &sim.base_url(), "t.jsonl");
    first.batch_no_wait = true;
    let s = run_teach(&spec, first).await.unwrap();
    assert_eq!(s.batch_ids.len(), 1, "{s}");
    (spec, sim, s)
}

/// A rerun with a smaller --limit than the run that submitted a batch is refused: collecting
/// only its first inputs and retiring the journal would forget the batch, and the full run
/// after it would buy the rest again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smaller_limit_never_forgets_a_submitted_batch() {
    let d = tempfile::tempdir().unwrap();
    let (spec, sim, s) = submit_and_leave(d.path()).await;

    let mut fewer = opts(d.path(), &sim.base_url(), "t.jsonl");
    fewer.resume = true;
    fewer.limit = Some(10);
    let e = run_teach(&spec, fewer).await.unwrap_err().to_string();
    assert!(
        e.contains(&s.batch_ids[0]) && e.contains("--limit 60"),
        "{e}"
    );
    assert!(
        d.path().join("t.jsonl.partial").exists(),
        "the journal is kept"
    );
    assert!(!d.path().join("t.jsonl").exists());

    let mut all = opts(d.path(), &sim.base_url(), "t.jsonl");
    all.resume = true;
    let s2 = run_teach(&spec, all).await.unwrap();
    assert!(s2.complete, "{s2}");
    let stats = sim.stats();
    assert_eq!(stats.batches.created, 1, "{stats:?}");
    assert_eq!(stats.requests, 0, "nothing bought in real time: {stats:?}");
    assert_eq!(stats.billable, 60, "every input paid for once: {stats:?}");
    assert_every_input_once(&read_records(&d.path().join("t.jsonl")), 60);
    assert_paid_once(&stats, &ledger_rows(d.path()));
}

/// `--restart` while a submitted batch is uncollected is refused: deleting the journal would
/// forget a batch that is paid for, and the fresh run would submit (and pay for) every input
/// again. Once collected, nothing stops a restart, and it is free (the cache answers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_never_forgets_a_submitted_batch() {
    let d = tempfile::tempdir().unwrap();
    let (spec, sim, s) = submit_and_leave(d.path()).await;

    let mut again = opts(d.path(), &sim.base_url(), "t.jsonl");
    again.restart = true;
    let e = run_teach(&spec, again).await.unwrap_err().to_string();
    assert!(
        e.contains(&s.batch_ids[0])
            && e.contains("--restart would forget")
            && e.contains("t.jsonl.partial"),
        "{e}"
    );
    assert!(
        d.path().join("t.jsonl.partial").exists(),
        "the journal is kept"
    );
    assert_eq!(sim.stats().batches.created, 1);

    let mut collect = opts(d.path(), &sim.base_url(), "t.jsonl");
    collect.resume = true;
    assert!(run_teach(&spec, collect).await.unwrap().complete);
    let mut restart = opts(d.path(), &sim.base_url(), "t.jsonl");
    restart.restart = true;
    let s3 = run_teach(&spec, restart).await.unwrap();
    assert!(s3.complete, "{s3}");
    assert_eq!(s3.cached, 60, "{s3}");
    let stats = sim.stats();
    assert_eq!(stats.batches.created, 1, "{stats:?}");
    assert_eq!(stats.billable, 60, "every input paid for once: {stats:?}");
    assert_paid_once(&stats, &ledger_rows(d.path()));
}

/// A batch creation answered 502 may have been carried out (a proxy gave up waiting while
/// the provider went on). Sending it again made a second batch, every request billed twice.
/// OpenAI: the batch is found by its metadata and used. Anthropic (no metadata): the run stops
/// and says how to check, rather than risk a second batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_created_behind_a_502_is_found_not_created_twice() {
    let d = tempfile::tempdir().unwrap();
    let spec = task(d.path(), 40, "openai", "gpt-4o");
    let openai = sim(&spec, |c| c.batch_creates_lost = 1).await;
    let s = run_teach(&spec, opts(d.path(), &openai.base_url(), "t.jsonl"))
        .await
        .unwrap();
    assert!(s.complete, "{s}");
    assert_every_input_once(&read_records(&d.path().join("t.jsonl")), 40);
    let stats = openai.stats();
    assert_eq!(stats.batches.created, 1, "{stats:?}");
    assert_eq!(stats.billable, 40, "every input paid for once: {stats:?}");
    assert_paid_once(&stats, &ledger_rows(d.path()));

    let d = tempfile::tempdir().unwrap();
    let spec = task(d.path(), 40, "anthropic", "claude-haiku-4-5");
    let claude = sim(&spec, |c| c.batch_creates_lost = 1).await;
    let e = run_teach(&spec, opts(d.path(), &claude.base_url(), "t.jsonl"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("502") && e.contains("may or may not have happened") && e.contains("Console"),
        "{e}"
    );
    assert_eq!(claude.stats().batches.created, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_resume_picks_up_the_submitted_batch() {
    resume_picks_up_the_batch("anthropic", "claude-haiku-4-5").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_batch_with_expiry_labels_every_input_once() {
    let d = tempfile::tempdir().unwrap();
    let spec = task(d.path(), 70, "anthropic", "claude-haiku-4-5");
    let sim = sim(&spec, |c| c.batch_expire_after = Some(20)).await;
    let mut o = opts(d.path(), &sim.base_url(), "t.jsonl");
    o.batch_size = 40;
    let s = run_teach(&spec, o).await.unwrap();
    assert!(s.complete, "{s}");
    let recs = read_records(&d.path().join("t.jsonl"));
    assert_every_input_once(&recs, 70);
    let stats = sim.stats();
    // 40 + 30, each expiring after 20.
    assert_eq!(stats.batches.created, 2);
    assert_eq!(stats.batches.expired, 30, "{stats:?}");
    assert_eq!(stats.requests, 30);
    assert_eq!(stats.billable, 70);
    let rows = ledger_rows(d.path());
    assert_paid_once(&stats, &rows);
    assert_eq!(rows.iter().filter(|r| r.batch_id.is_some()).count(), 40);
    // claude-haiku-4-5 has no batch price in the table: half the real-time price.
    let price = PriceTable::builtin()
        .get("claude-haiku-4-5")
        .cloned()
        .unwrap();
    for r in rows.iter().filter(|r| r.batch_id.is_some()) {
        assert!(
            close(r.cost_usd, price.cost(&r.usage, false) / 2.0),
            "{r:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_created_but_not_journalled_is_adopted_not_resubmitted() {
    let d = tempfile::tempdir().unwrap();
    let spec = task(d.path(), 40, "openai", "gpt-4o");
    let sim = sim(&spec, |_| {}).await;
    let mut first = opts(d.path(), &sim.base_url(), "t.jsonl");
    first.batch_no_wait = true;
    let s = run_teach(&spec, first).await.unwrap();
    assert!(s.awaiting_batches);
    // Simulate a kill after the provider accepted the batch but before the journal line
    // reached the disk: drop the batch line.
    let jpath = d.path().join("t.jsonl.partial");
    let journal = std::fs::read_to_string(&jpath).unwrap();
    let kept: String = journal
        .lines()
        .filter(|l| !l.contains(&s.batch_ids[0]))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(kept.lines().count(), 1, "only the header is left");
    std::fs::write(&jpath, kept).unwrap();

    let mut again = opts(d.path(), &sim.base_url(), "t.jsonl");
    again.resume = true;
    let s2 = run_teach(&spec, again).await.unwrap();
    assert!(s2.complete, "{s2}");
    assert_eq!(
        s2.batch_ids, s.batch_ids,
        "found by its metadata and adopted"
    );
    let stats = sim.stats();
    assert_eq!(stats.batches.created, 1, "{stats:?}");
    assert_eq!(stats.billable, 40);
    assert_every_input_once(&read_records(&d.path().join("t.jsonl")), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_budget_stops_submitting_and_a_rerun_finishes() {
    let d = tempfile::tempdir().unwrap();
    let spec = task(d.path(), 60, "openai", "gpt-4o");
    let sim = sim(&spec, |_| {}).await;
    let mut o = opts(d.path(), &sim.base_url(), "t.jsonl");
    o.max_spend = Some(0.03);
    let s = run_teach(&spec, o).await.unwrap();
    assert!(s.stopped_by_budget && !s.complete, "{s}");
    assert!(s.cost_usd <= 0.03, "{}", s.cost_usd);
    let submitted = sim.stats().batches.requests;
    assert!(submitted > 0 && submitted < 60, "{submitted}");
    assert!(!d.path().join("t.jsonl").exists(), "no partial output");
    let s2 = run_teach(&spec, opts(d.path(), &sim.base_url(), "t.jsonl"))
        .await
        .unwrap();
    assert!(s2.complete, "{s2}");
    assert_eq!(s2.resumed, submitted);
    assert_eq!(sim.stats().batches.requests, 60);
    assert_eq!(sim.stats().duplicates, 0);
    assert_every_input_once(&read_records(&d.path().join("t.jsonl")), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_without_a_journal_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    let spec = task(d.path(), 5, "openai", "gpt-4o");
    let mut o = opts(d.path(), "http://127.0.0.1:9/v1", "t.jsonl");
    o.resume = true;
    let e = run_teach(&spec, o).await.unwrap_err();
    assert!(matches!(e, TeachError::File { .. }), "{e}");
    assert!(e.to_string().contains("t.jsonl.partial"), "{e}");
}

/// The Anthropic Messages path in real time, through injected 429/500s and invalid replies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_real_time_labels_through_errors_and_never_pays_twice() {
    let d = tempfile::tempdir().unwrap();
    let spec = task(d.path(), 100, "anthropic", "claude-haiku-4-5");
    let sim = sim(&spec, |c| {
        c.error_rate = 0.1;
        c.invalid_rate = 0.1;
    })
    .await;
    let mut o = opts(d.path(), &sim.base_url(), "t.jsonl");
    o.batch = false;
    let s = run_teach(&spec, o).await.unwrap();
    assert!(s.complete, "{s}");
    let recs = read_records(&d.path().join("t.jsonl"));
    assert_every_input_once(&recs, 100);
    assert!(recs.iter().all(|r| r.provider == "anthropic" && !r.batch));
    assert!(recs.iter().all(|r| r.status == RecordStatus::Ok), "{s}");
    let stats = sim.stats();
    assert!(stats.errors_injected.rate_limited_429 + stats.errors_injected.server_error_500 > 0);
    assert!(stats.errors_injected.invalid_replies > 0);
    assert_eq!(stats.billable, 100 + stats.errors_injected.invalid_replies);
    let rows = ledger_rows(d.path());
    assert_paid_once(&stats, &rows);
    let price = PriceTable::builtin()
        .get("claude-haiku-4-5")
        .cloned()
        .unwrap();
    for r in &rows {
        assert!(r.batch_id.is_none());
        assert!(close(r.cost_usd, price.cost(&r.usage, false)), "{r:?}");
        assert!(r.usage.prompt_tokens > 0 && r.usage.completion_tokens > 0);
    }
    let record_cost: f64 = recs.iter().map(|r| r.cost_usd).sum();
    let ledger_cost: f64 = rows.iter().map(|r| r.cost_usd).sum();
    assert!(close(record_cost, ledger_cost) && ledger_cost > 0.0);
}

/// A finished job left its batches on the provider. Another job (other prompt, output and
/// state directory; same task name and inputs) resumed with `--batch --resume` must submit
/// its own batch, never adopt the other job's answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_another_job_is_never_adopted() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let spec_a = task(a.path(), 30, "openai", "gpt-4o");
    let spec_b = task(b.path(), 30, "openai", "gpt-4o");
    let text = std::fs::read_to_string(b.path().join("task.toml")).unwrap();
    std::fs::write(
        b.path().join("task.toml"),
        text.replace("with their intent", "with the one intent that fits best"),
    )
    .unwrap();
    let spec_b = TaskSpec::load(b.path().join("task.toml")).unwrap_or(spec_b);
    let sim = sim(&spec_a, |_| {}).await;
    let sa = run_teach(&spec_a, opts(a.path(), &sim.base_url(), "a.jsonl"))
        .await
        .unwrap();
    assert!(sa.complete && sa.batch_ids.len() == 1, "{sa}");

    // Job B leaves a journal without a batch (its budget stops it before submitting) ...
    let mut first = opts(b.path(), &sim.base_url(), "b.jsonl");
    first.max_spend = Some(1e-9);
    let s = run_teach(&spec_b, first).await.unwrap();
    assert!(s.stopped_by_budget && s.batch_ids.is_empty(), "{s}");
    // ... and resumes: it looks for batches an interrupted run of *its* job submitted.
    let mut again = opts(b.path(), &sim.base_url(), "b.jsonl");
    again.resume = true;
    let sb = run_teach(&spec_b, again).await.unwrap();
    assert!(sb.complete, "{sb}");
    assert_eq!(sim.stats().batches.created, 2, "B submitted its own batch");
    assert_ne!(sb.batch_ids, sa.batch_ids);
    let client = TeacherClient::new(
        &spec_b,
        ClientOptions {
            base_url: Some(sim.base_url()),
            ..Default::default()
        },
    )
    .unwrap();
    for r in read_records(&b.path().join("b.jsonl")) {
        assert_eq!(r.request_hash, client.request_for(&r.text).1, "{r:?}");
    }
    assert!(ledger_rows(b.path())
        .iter()
        .all(|r| r.batch_id.as_deref() != Some(sa.batch_ids[0].as_str())));
}

/// `distill spend --reconcile`'s source: the provider's count of answered requests per batch
/// matches the ledger once collected, and shows what was billed but never collected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_counts_reconcile_with_the_ledger() {
    let d = tempfile::tempdir().unwrap();
    let spec = task(d.path(), 25, "openai", "gpt-4o");
    let sim = sim(&spec, |_| {}).await;
    let mut o = opts(d.path(), &sim.base_url(), "t.jsonl");
    o.batch_no_wait = true;
    let s = run_teach(&spec, o).await.unwrap();
    let client = TeacherClient::new(
        &spec,
        ClientOptions {
            base_url: Some(sim.base_url()),
            ..Default::default()
        },
    )
    .unwrap();
    let id = &s.batch_ids[0];
    let ledger = Ledger::open(d.path().join("state/ledger.db")).unwrap();
    // Polled until the sim's batch has ended (it takes batch_completion_ms).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let answered = loop {
        let n = distill_teach::batch::answered_count(&client, id)
            .await
            .unwrap();
        if n == 25 || std::time::Instant::now() > deadline {
            break n;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(answered, 25);
    assert!(
        ledger.batch_rows("banking77").unwrap().is_empty(),
        "not collected yet"
    );
    let mut again = opts(d.path(), &sim.base_url(), "t.jsonl");
    again.resume = true;
    run_teach(&spec, again).await.unwrap();
    assert_eq!(
        ledger.batch_rows("banking77").unwrap(),
        vec![(id.clone(), 25)]
    );
}
