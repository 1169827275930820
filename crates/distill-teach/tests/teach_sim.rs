//! `run_teach` and `TeacherClient` end to end over real HTTP on 127.0.0.1: against the
//! sim-teacher on a Banking77 slice, and against small fakes for exact error behaviour.

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use distill_core::ledger::Ledger;
use distill_core::{RecordStatus, TaskSpec, TeacherRecord};
use distill_sim::{SimConfig, SimServer};
use distill_teach::{
    run_teach, CallContext, ClientOptions, TeachError, TeachOptions, TeacherClient,
};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn banking_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/datasets/banking77")
}

/// A Banking77 task over the first `rows` rows of train.csv, in `dir`.
fn task(dir: &Path, rows: usize, extra_teacher: &str) -> TaskSpec {
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
provider = "openai"
model = "gpt-4o"
max_tokens = 24
{extra_teacher}
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

async fn sim(spec: &TaskSpec, error_rate: f64, invalid_rate: f64) -> SimServer {
    let mut c = SimConfig::new(spec.clone());
    c.error_rate = error_rate;
    c.invalid_rate = invalid_rate;
    c.retry_after_ms = 5;
    SimServer::start(c, SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_a_banking_slice_through_errors_and_never_pays_twice() {
    let d = tempfile::tempdir().unwrap();
    let spec = task(d.path(), 150, "");
    let sim = sim(&spec, 0.1, 0.1).await;
    let s = run_teach(&spec, opts(d.path(), &sim.base_url(), "teacher.jsonl"))
        .await
        .unwrap();
    assert!(s.complete, "{s}");
    assert_eq!(s.total, 150);
    let recs = read_records(&d.path().join("teacher.jsonl"));
    let ids: Vec<String> = recs.iter().map(|r| r.id.clone()).collect();
    let want: Vec<String> = (1..=150).map(|i| i.to_string()).collect();
    assert_eq!(ids, want, "every input exactly once, in input order");
    assert!(!d.path().join("teacher.jsonl.partial").exists());
    let ok = recs.iter().filter(|r| r.status == RecordStatus::Ok).count();
    assert!(
        ok >= 140,
        "repairs and retries should rescue nearly all: {ok}"
    );
    assert!(recs.iter().all(|r| r.gold.is_some()));
    let agree = recs
        .iter()
        .filter(|r| r.label().is_some() && r.label() == r.gold.as_deref())
        .count();
    assert!(agree > 120, "the sim is 94% accurate: {agree}");

    let stats = sim.stats();
    assert_eq!(stats.duplicates, 0, "{stats:?}");
    assert!(stats.errors_injected.rate_limited_429 + stats.errors_injected.server_error_500 > 0);
    let ledger = Ledger::open(d.path().join("state/ledger.db")).unwrap();
    let rows = ledger.rows_for_task("banking77").unwrap();
    assert_eq!(
        rows.len() as u64,
        stats.billable,
        "one ledger row per paid call"
    );
    let record_cost: f64 = recs.iter().map(|r| r.cost_usd).sum();
    let ledger_cost = ledger.total_cost("banking77").unwrap();
    assert!(
        (record_cost - ledger_cost).abs() < 1e-9,
        "{record_cost} vs {ledger_cost}"
    );
    assert!(ledger_cost > 0.0);

    // The same job again: everything from the cache, nothing paid.
    let billable = stats.billable;
    let again = run_teach(&spec, opts(d.path(), &sim.base_url(), "again.jsonl"))
        .await
        .unwrap();
    assert_eq!(again.paid_calls, 0, "{again}");
    assert_eq!(sim.stats().billable, billable);
    assert_eq!(again.cost_usd, 0.0);
    let recs2 = read_records(&d.path().join("again.jsonl"));
    assert_eq!(recs2.len(), 150);
    assert!(recs2
        .iter()
        .all(|r| r.cached || r.status == RecordStatus::Failed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_stops_scheduling_and_a_rerun_finishes() {
    let d = tempfile::tempdir().unwrap();
    let spec = task(d.path(), 60, "");
    let sim = sim(&spec, 0.0, 0.0).await;
    let mut o = opts(d.path(), &sim.base_url(), "t.jsonl");
    o.max_spend = Some(0.03);
    let s = run_teach(&spec, o).await.unwrap();
    assert!(s.stopped_by_budget && !s.complete, "{s}");
    assert!(s.cost_usd <= 0.03, "{}", s.cost_usd);
    assert!(s.ok > 0 && s.ok < 60);
    assert!(!d.path().join("t.jsonl").exists(), "no partial output");
    let s2 = run_teach(&spec, opts(d.path(), &sim.base_url(), "t.jsonl"))
        .await
        .unwrap();
    assert!(s2.complete);
    assert_eq!(s2.resumed, s.ok);
    assert_eq!(read_records(&d.path().join("t.jsonl")).len(), 60);
    assert_eq!(sim.stats().duplicates, 0);
}

#[tokio::test]
async fn missing_key_is_an_error_before_any_call() {
    let d = tempfile::tempdir().unwrap();
    let spec = task(d.path(), 5, "api_key_env = \"DISTILL_TEST_UNSET_KEY\"");
    let mut o = opts(d.path(), "https://api.openai.com/v1", "t.jsonl");
    o.base_url = None;
    let e = run_teach(&spec, o).await.unwrap_err();
    assert!(matches!(e, TeachError::MissingKey { .. }), "{e}");
    assert!(e.to_string().contains("DISTILL_TEST_UNSET_KEY"), "{e}");
    assert!(!d.path().join("t.jsonl").exists());
    assert!(!d.path().join("t.jsonl.partial").exists());
}

#[tokio::test]
async fn bad_input_fails_before_spending_and_writes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let spec = task(d.path(), 5, "");
    let cases: [(&str, &[u8], &str); 4] = [
        (
            "missing.csv",
            b"txt,category\nhello,a\n",
            "missing.csv:1: field `text`",
        ),
        ("quote.csv", b"text,category\n\"open,a\nb,c\n", "quote.csv:"),
        (
            "empty.csv",
            b"text,category\nfine,a\n   ,b\n",
            "empty.csv:3: field `text`: empty text",
        ),
        ("utf8.csv", b"text,category\nok\xff,a\n", "utf8.csv:2"),
    ];
    for (name, body, want) in cases {
        let input = d.path().join(name);
        std::fs::write(&input, body).unwrap();
        let mut o = opts(d.path(), "http://127.0.0.1:9/v1", "bad.jsonl");
        o.input = Some(input);
        let e = run_teach(&spec, o).await.unwrap_err().to_string();
        assert!(e.contains(want), "{name}: {e}");
        assert!(!d.path().join("bad.jsonl").exists());
        assert!(!d.path().join("bad.jsonl.partial").exists());
    }
    let dup = d.path().join("dup.jsonl");
    std::fs::write(
        &dup,
        "{\"id\":1,\"text\":\"a\"}\n{\"id\":1,\"text\":\"b\"}\n",
    )
    .unwrap();
    let mut spec2 = spec.clone();
    spec2.input.id_column = Some("id".into());
    let mut o = opts(d.path(), "http://127.0.0.1:9/v1", "bad.jsonl");
    o.input = Some(dup);
    let e = run_teach(&spec2, o).await.unwrap_err().to_string();
    assert!(
        e.contains("dup.jsonl:2: field `id`: duplicate id `1`"),
        "{e}"
    );
}

#[tokio::test]
async fn unreachable_provider_is_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let spec = task(d.path(), 3, "");
    // Bind then drop a listener: the port is free, so connections are refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut o = opts(d.path(), &format!("http://127.0.0.1:{port}/v1"), "t.jsonl");
    o.max_retries = Some(1);
    let e = run_teach(&spec, o).await.unwrap_err();
    assert!(matches!(e, TeachError::Unreachable { .. }), "{e}");
    assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
    assert!(!d.path().join("t.jsonl").exists());
}

/// One scripted reply: status, headers, body.
type Scripted = (u16, Vec<(&'static str, &'static str)>, &'static str);

/// A fake provider: replies with `script[n]` (status, headers) for the n-th request, then 200.
async fn fake(script: Vec<Scripted>) -> (String, Arc<AtomicU64>) {
    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    let script = Arc::new(script);
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(move |_headers: HeaderMap, _body: String| {
            let n = h.fetch_add(1, Ordering::SeqCst) as usize;
            let script = script.clone();
            async move {
                match script.get(n) {
                    Some((status, headers, body)) => {
                        let mut hm = HeaderMap::new();
                        for (k, v) in headers {
                            hm.insert(*k, v.parse().unwrap());
                        }
                        (StatusCode::from_u16(*status).unwrap(), hm, body.to_string()).into_response()
                    }
                    None => (
                        StatusCode::OK,
                        r#"{"choices":[{"message":{"content":"{\"label\":\"card_arrival\"}"}}],"usage":{"prompt_tokens":100,"completion_tokens":5}}"#,
                    )
                        .into_response(),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, hits)
}

fn client(dir: &Path, spec: &TaskSpec, url: &str) -> TeacherClient {
    TeacherClient::new(
        spec,
        ClientOptions {
            base_url: Some(url.into()),
            api_key: Some("sk-secretsecret123".into()),
            ledger_path: Some(dir.join("ledger.db")),
            cache_path: Some(dir.join("cache.db")),
            backoff_base: Some(Duration::from_millis(5)),
            ..Default::default()
        },
    )
    .unwrap()
}

#[tokio::test]
async fn honours_retry_after_and_retries_5xx() {
    let d = tempfile::tempdir().unwrap();
    let spec = task(d.path(), 3, "");
    let (url, hits) = fake(vec![
        (
            429,
            vec![("retry-after-ms", "20")],
            r#"{"error":{"message":"slow down","type":"tokens","code":"rate_limit_exceeded"}}"#,
        ),
        (500, vec![], "oops"),
        (
            529,
            vec![("retry-after", "0")],
            r#"{"type":"error","error":{"type":"overloaded_error","message":"busy"}}"#,
        ),
    ])
    .await;
    let c = client(d.path(), &spec, &url);
    let out = c
        .label("where is my card?", &CallContext::teach())
        .await
        .unwrap();
    assert_eq!(out.status, RecordStatus::Ok);
    assert_eq!(
        out.output.as_ref().and_then(|o| o.label()),
        Some("card_arrival")
    );
    assert_eq!(hits.load(Ordering::SeqCst), 4);
    assert!(out.cost_usd > 0.0);
    // Cached now: no further request.
    let again = c
        .label("where is my card?", &CallContext::new("serve"))
        .await
        .unwrap();
    assert!(again.cached);
    assert_eq!(hits.load(Ordering::SeqCst), 4);
    let ledger = Ledger::open(d.path().join("ledger.db")).unwrap();
    assert_eq!(ledger.rows_for_task("banking77").unwrap().len(), 1);
}

#[tokio::test]
async fn never_retries_auth_or_quota_errors_and_never_leaks_the_key() {
    let d = tempfile::tempdir().unwrap();
    let spec = task(d.path(), 3, "");
    for (status, body) in [
        (
            401,
            r#"{"error":{"message":"Incorrect API key provided: sk-secretsecret123","type":"invalid_request_error","code":"invalid_api_key"}}"#,
        ),
        (
            429,
            r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#,
        ),
        (
            400,
            r#"{"error":{"message":"bad schema","type":"invalid_request_error"}}"#,
        ),
    ] {
        let (url, hits) = fake(vec![(status, vec![], body)]).await;
        let c = client(d.path(), &spec, &url);
        let e = c.label("hello", &CallContext::teach()).await.unwrap_err();
        assert!(matches!(e, TeachError::Fatal { .. }), "{e}");
        let msg = e.to_string();
        assert!(!msg.contains("secretsecret"), "{msg}");
        assert!(msg.contains(&status.to_string()), "{msg}");
        assert_eq!(hits.load(Ordering::SeqCst), 1, "no retry on {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_prices_without_sending_and_export_writes_chat_jsonl() {
    let d = tempfile::tempdir().unwrap();
    let spec = task(d.path(), 20, "");
    let sim = sim(&spec, 0.0, 0.0).await;
    let mut o = opts(d.path(), &sim.base_url(), "t.jsonl");
    o.dry_run = true;
    let s = run_teach(&spec, o).await.unwrap();
    let e = s.estimate.clone().unwrap();
    assert_eq!(e.requests, 20);
    assert!(e.tokens_exact && e.prompt_tokens > 20 * 300, "{e}");
    assert!(e.expected_usd > 0.0 && e.worst_case_usd >= e.expected_usd);
    assert_eq!(sim.stats().requests, 0, "a dry run sends nothing");

    run_teach(&spec, opts(d.path(), &sim.base_url(), "t.jsonl"))
        .await
        .unwrap();
    let ft = d.path().join("ft.jsonl");
    let x = distill_teach::export::export_openai(&spec, &d.path().join("t.jsonl"), &ft).unwrap();
    assert_eq!(x.written + x.skipped, 20);
    let first: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&ft)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let msgs = first["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 3);
    assert_eq!(msgs[2]["role"], "assistant");
    let label: serde_json::Value =
        serde_json::from_str(msgs[2]["content"].as_str().unwrap()).unwrap();
    assert!(spec.labels.contains(label["label"].as_str().unwrap()));
    // A dry run after the job: everything is cached, so nothing to pay.
    let mut o = opts(d.path(), &sim.base_url(), "t.jsonl");
    o.dry_run = true;
    let e = run_teach(&spec, o).await.unwrap().estimate.unwrap();
    assert_eq!(e.cached, 20);
    assert_eq!(e.expected_usd, 0.0);
}

/// Rewrites the spec in `dir` with `from` replaced by `to` (a prompt edit between runs).
fn edit_spec(dir: &Path, from: &str, to: &str) -> TaskSpec {
    let p = dir.join("task.toml");
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.contains(from), "{from}");
    std::fs::write(&p, text.replace(from, to)).unwrap();
    TaskSpec::load(&p).unwrap()
}

/// A run stopped early (budget) leaves a journal; after the system prompt changes, resuming
/// it would mix answers to two prompts. It is refused, naming what changed; `--restart`
/// labels everything under the new prompt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_prompt_is_never_resumed_silently() {
    let d = tempfile::tempdir().unwrap();
    let spec = task(d.path(), 40, "");
    let sim = sim(&spec, 0.0, 0.0).await;
    let mut o = opts(d.path(), &sim.base_url(), "t.jsonl");
    o.max_spend = Some(0.02);
    let s = run_teach(&spec, o).await.unwrap();
    assert!(s.stopped_by_budget && s.ok > 0, "{s}");

    let edited = edit_spec(
        d.path(),
        "with their intent",
        "with the intent they express",
    );
    let e = run_teach(&edited, opts(d.path(), &sim.base_url(), "t.jsonl"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("system prompt") && e.contains("--restart"),
        "{e}"
    );
    assert!(
        !e.contains("user template"),
        "only what changed is named: {e}"
    );
    let edited = edit_spec(d.path(), "Message: {text}", "Customer message: {text}");
    let e = run_teach(&edited, opts(d.path(), &sim.base_url(), "t.jsonl"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("system prompt") && e.contains("user template"),
        "{e}"
    );
    let mut restart = opts(d.path(), &sim.base_url(), "t.jsonl");
    restart.restart = true;
    let s2 = run_teach(&edited, restart).await.unwrap();
    assert!(s2.complete && s2.resumed == 0, "{s2}");
    let client = client(d.path(), &edited, &sim.base_url());
    for r in read_records(&d.path().join("t.jsonl")) {
        assert_eq!(
            r.request_hash,
            client.request_for(&r.text).1,
            "every record answers the current prompt"
        );
    }
}

/// Attempts that time out are billed (the provider finishes them), so each costs what an
/// answer would. A retry after one asks the budget first: a run of timeouts stops the job as
/// over budget, under its cap, with its journal kept, instead of retrying past the cap (or
/// finishing "complete" with the spend forgotten).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_after_timeouts_stay_within_max_spend() {
    let d = tempfile::tempdir().unwrap();
    let spec = task(d.path(), 8, "timeout_s = 1");
    let mut c = SimConfig::new(spec.clone());
    c.latency_ms = 3_000;
    let sim = SimServer::start(c, SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let client = client(d.path(), &spec, &sim.base_url());
    let estimate = distill_teach::dry_run::Estimator::new(&spec, &client)
        .worst_case_cost(&client, &read_inputs_of(&spec)[0]);
    let cap = 20.0 * estimate;
    let run = || {
        let mut o = opts(d.path(), &sim.base_url(), "t.jsonl");
        o.max_spend = Some(cap);
        o.max_retries = Some(3);
        o
    };
    let s = run_teach(&spec, run()).await.unwrap();
    assert!(s.stopped_by_budget && !s.complete, "{s}");
    assert_eq!(s.failed, 8, "{s}");
    assert!(
        s.cost_usd <= cap + 1e-12,
        "{} over the cap {cap}",
        s.cost_usd
    );
    // More than one attempt each on average: retries went out while there was room.
    assert!(s.paid_calls > 8, "{s}");
    let rows = Ledger::open(d.path().join("state/ledger.db"))
        .unwrap()
        .rows_for_task("banking77")
        .unwrap();
    assert!(rows.iter().all(|r| r.status == "unanswered"), "{rows:?}");
    let ledgered: f64 = rows.iter().map(|r| r.cost_usd).sum();
    assert!((ledgered - s.cost_usd).abs() < 1e-9, "{ledgered} vs {s}");
    assert!(
        d.path().join("t.jsonl.partial").exists(),
        "the journal is kept"
    );
    // The next run knows what the first spent.
    let s2 = run_teach(&spec, run()).await.unwrap();
    assert!((s2.earlier_cost_usd - s.cost_usd).abs() < 1e-9, "{s2}");
    assert!(s.cost_usd + s2.cost_usd <= cap + 1e-12, "{s2}");
}

/// `--max-spend` caps the job: re-running a job stopped by its budget spends nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_spend_caps_the_job_across_runs() {
    let d = tempfile::tempdir().unwrap();
    let spec = task(d.path(), 60, "");
    let sim = sim(&spec, 0.0, 0.0).await;
    let run = || {
        let mut o = opts(d.path(), &sim.base_url(), "t.jsonl");
        o.max_spend = Some(0.03);
        o
    };
    let s1 = run_teach(&spec, run()).await.unwrap();
    assert!(s1.stopped_by_budget, "{s1}");
    let s2 = run_teach(&spec, run()).await.unwrap();
    assert!(s2.stopped_by_budget, "{s2}");
    assert!(
        (s2.earlier_cost_usd - s1.cost_usd).abs() < 1e-9,
        "the journal carries the first run's spend: {s2}"
    );
    let job = s1.cost_usd + s2.cost_usd;
    assert!(
        job <= 0.03 + 1e-9,
        "the job spent ${job}, over its $0.03 cap"
    );
    assert!((sim.stats().cost_usd - job).abs() < 1e-6);
    assert!(s2.to_string().contains("caps the whole job"), "{s2}");
}

/// The token rate limiter counts a request as providers do: its prompt tokens (the teacher's
/// tokenizer, as `--dry-run` counts them) plus max_tokens; not bytes / 4, which is twice that
/// for a Banking77 prompt and halved the throughput a `tpm` allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limiter_counts_prompt_tokens_like_the_provider() {
    let d = tempfile::tempdir().unwrap();
    let spec = task(d.path(), 30, "tpm = 100000000");
    let sim = sim(&spec, 0.0, 0.0).await;
    let c = client(d.path(), &spec, &sim.base_url());
    let texts: Vec<String> = read_inputs_of(&spec);
    // The dry run's time estimate uses the same model of the limiter: the same token count.
    let input = spec.input.path.clone().unwrap();
    let dry = distill_teach::dry_run::estimate(&spec, &c, &input, 30, 8, false).unwrap();
    let dry_tokens = dry.prompt_tokens + 30 * u64::from(spec.teacher.max_tokens);
    let mut billed = 0u64;
    for t in &texts {
        let o = c.label(t, &CallContext::teach()).await.unwrap();
        assert_eq!(o.paid_calls, 1, "{o:?}");
        billed += o.usage.prompt_tokens + u64::from(spec.teacher.max_tokens);
    }
    let counted = c.rate_limit_tokens();
    assert_eq!(
        counted, dry_tokens,
        "the dry run counts what the limiter counts"
    );
    let ratio = counted as f64 / billed as f64;
    assert!(
        (0.97..=1.03).contains(&ratio),
        "limiter counted {counted} tokens for {billed} billed prompt + max_tokens ({ratio:.3})"
    );
}

fn read_inputs_of(spec: &TaskSpec) -> Vec<String> {
    distill_core::input::read_inputs(
        spec.input.path.as_ref().unwrap(),
        spec.input.format,
        &distill_core::input::Columns::from(&spec.input),
    )
    .unwrap()
    .map(|i| i.unwrap().text)
    .collect()
}

/// An explicit `--input` is read in its own extension's format, whatever the spec's input
/// says; and an `--out` that is a directory is refused before anything is paid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_format_follows_the_file_and_a_directory_out_pays_nothing() {
    let d = tempfile::tempdir().unwrap();
    let spec = task(d.path(), 10, "");
    let text = std::fs::read_to_string(d.path().join("task.toml")).unwrap();
    std::fs::write(
        d.path().join("task.toml"),
        text.replace(
            "path = \"train.csv\"",
            "path = \"train.csv\"\nformat = \"csv\"",
        ),
    )
    .unwrap();
    let spec = TaskSpec::load(d.path().join("task.toml")).unwrap_or(spec);
    let jsonl: String = read_inputs_of(&spec)
        .iter()
        .map(|t| {
            format!(
                "{}\n",
                serde_json::json!({"text": t, "category": "card_arrival"})
            )
        })
        .collect();
    std::fs::write(d.path().join("more.jsonl"), jsonl).unwrap();
    let sim = sim(&spec, 0.0, 0.0).await;

    let out_dir = d.path().join("outdir");
    std::fs::create_dir(&out_dir).unwrap();
    let mut o = opts(d.path(), &sim.base_url(), "outdir");
    o.input = Some(d.path().join("more.jsonl"));
    let e = run_teach(&spec, o).await.unwrap_err().to_string();
    assert!(e.contains("directory") && e.contains("outdir"), "{e}");
    assert_eq!(sim.stats().requests, 0, "refused before the first call");

    let mut o = opts(d.path(), &sim.base_url(), "more-teacher.jsonl");
    o.input = Some(d.path().join("more.jsonl"));
    let s = run_teach(&spec, o).await.unwrap();
    assert!(s.complete && s.ok == 10, "{s}");
}

/// A dry run sends nothing, so it needs no API key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_needs_no_api_key() {
    let d = tempfile::tempdir().unwrap();
    let spec = task(d.path(), 5, "api_key_env = \"DISTILL_TEST_NO_SUCH_KEY\"");
    let mut o = opts(d.path(), "https://api.openai.com/v1", "t.jsonl");
    o.dry_run = true;
    let s = run_teach(&spec, o).await.unwrap();
    assert_eq!(s.estimate.unwrap().requests, 5);
}

/// Two runs on the same output at once would both pay for every input: the second is
/// refused, naming the PID that holds the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_on_the_same_output_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let spec = task(d.path(), 5, "");
    let sim = sim(&spec, 0.0, 0.0).await;
    let held = distill_teach::lock::JobLock::acquire(&d.path().join("t.jsonl")).unwrap();
    let e = run_teach(&spec, opts(d.path(), &sim.base_url(), "t.jsonl"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains(&format!("PID {}", std::process::id())), "{e}");
    assert_eq!(sim.stats().requests, 0);
    drop(held);
    let s = run_teach(&spec, opts(d.path(), &sim.base_url(), "t.jsonl"))
        .await
        .unwrap();
    assert!(s.complete);
}
