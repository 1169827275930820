//! The server end to end over HTTP on 127.0.0.1: cascade against the sim-teacher, outages,
//! budgets with a webhook receiver, the cache, errors in OpenAI's shape and streaming.

mod common;

use common::*;
use distill_serve::budget::Budgets;
use distill_serve::cache::{Cache, MemoryCache};
use distill_serve::teach_escalator::TeachEscalator;
use distill_serve::{
    CallContext, EscalateError, Escalation, Escalator, RunningServer, ServerOptions,
};
use futures::future::BoxFuture;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn teach_escalator(
    spec: &distill_core::TaskSpec,
    base_url: &str,
    state: &std::path::Path,
) -> Arc<dyn Escalator> {
    let client = distill_teach::TeacherClient::new(
        spec,
        distill_teach::ClientOptions {
            base_url: Some(base_url.to_string()),
            ledger_path: Some(state.join("ledger.db")),
            max_retries: Some(0),
            ..Default::default()
        },
    )
    .unwrap();
    Arc::new(TeachEscalator::new(client))
}

fn memory_cache() -> Cache {
    Cache::Memory(MemoryCache::new(Duration::from_secs(600), 10_000))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cascade_escalates_exactly_the_unsure_inputs_and_caches_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let spec = banking_task(dir.path());
    let sim = distill_sim::SimServer::start(
        distill_sim::SimConfig::new(spec.clone()),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let student = Arc::new(FixedStudent::new(spec.labels.names.clone(), None));
    let esc = teach_escalator(&spec, &sim.base_url(), dir.path());
    let server = start(
        vec![entry("b77", student, Some(esc))],
        ServerOptions {
            threshold: 0.7,
            cache: memory_cache(),
            ..Default::default()
        },
    )
    .await;
    let http = reqwest::Client::new();
    let texts = sample_texts(12);
    let unsure: Vec<&String> = texts.iter().filter(|t| !is_sure(t)).collect();
    assert!(
        !unsure.is_empty() && unsure.len() < texts.len(),
        "the sample needs both kinds"
    );

    let out = classify(&http, &server.url(), "b77", &texts, Some("support")).await;
    let results = out["results"].as_array().unwrap();
    for (t, r) in texts.iter().zip(results) {
        let want = if is_sure(t) { "student" } else { "teacher" };
        assert_eq!(r["source"], want, "{t}: {r}");
        assert!(r["label"].as_str().is_some_and(|l| spec.labels.contains(l)));
    }
    let stats = sim.stats();
    assert_eq!(stats.billable as usize, unsure.len(), "{stats:?}");
    let paid: f64 = results
        .iter()
        .map(|r| r["cost_usd"].as_f64().unwrap())
        .sum();
    assert!(paid > 0.0);

    // Repeats (with different spacing) come from the cache and pay nothing.
    let spaced: Vec<String> = texts
        .iter()
        .map(|t| format!("  {}  ", t.replace(' ', "  ")))
        .collect();
    let again = classify(&http, &server.url(), "b77", &spaced, Some("support")).await;
    for (a, b) in again["results"].as_array().unwrap().iter().zip(results) {
        assert_eq!(a["source"], "cache");
        assert_eq!(a["label"], b["label"]);
    }
    assert_eq!(sim.stats().billable as usize, unsure.len());

    // The OpenAI-shaped endpoint answers the same way, with the distill object.
    let r: Value = http
        .post(format!("{}/v1/chat/completions", server.url()))
        .json(&json!({"model": "b77", "messages": [{"role": "user", "content": unsure[0]}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["object"], "chat.completion");
    assert_eq!(r["distill"]["source"], "cache");
    assert!(spec
        .labels
        .contains(r["choices"][0]["message"]["content"].as_str().unwrap()));

    let metrics = http
        .get(format!("{}/metrics", server.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let want = format!(
        "distill_escalations_total{{model=\"b77\",tag=\"support\",outcome=\"ok\"}} {}",
        unsure.len()
    );
    assert!(metrics.contains(&want), "{metrics}");
    assert!(
        metrics.contains("distill_cache_hits_total{model=\"b77\"} 13"),
        "{metrics}"
    );
    assert!(metrics.contains("distill_escalation_spend_usd_total{model=\"b77\",tag=\"support\"}"));
    server.shutdown().await.unwrap();
    sim.shutdown().await;
}

/// A server shadowing every confident answer to a sim-teacher that takes `latency_ms`, and the
/// confident inputs of a Banking77 sample.
struct ShadowRig {
    _dir: tempfile::TempDir,
    db: std::path::PathBuf,
    sim: distill_sim::SimServer,
    server: RunningServer,
    sure: Vec<String>,
}

impl ShadowRig {
    async fn start(latency_ms: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let spec = banking_task(dir.path());
        let mut cfg = distill_sim::SimConfig::new(spec.clone());
        cfg.latency_ms = latency_ms;
        let sim = distill_sim::SimServer::start(cfg, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let student = Arc::new(FixedStudent::new(spec.labels.names.clone(), None));
        let esc = teach_escalator(&spec, &sim.base_url(), dir.path());
        let db = dir.path().join("shadow.db");
        let recorder = distill_serve::shadow::ShadowRecorder::open(&db);
        let server = start(
            vec![entry("b77", student, Some(esc))],
            ServerOptions {
                threshold: 0.7,
                shadow_rate: 1.0,
                shadow: Some(recorder.unwrap()),
                ..Default::default()
            },
        )
        .await;
        let sure: Vec<String> = sample_texts(24)
            .into_iter()
            .filter(|t| is_sure(t))
            .collect();
        assert!(sure.len() >= 5, "the sample needs confident inputs");
        Self {
            _dir: dir,
            db,
            sim,
            server,
            sure,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_traffic_checks_confident_answers_off_the_latency_path_and_feeds_drift() {
    // A slow teacher: confident answers must not wait for their shadow call.
    let ShadowRig {
        _dir,
        db,
        sim,
        server,
        sure,
    } = ShadowRig::start(1500).await;
    let http = reqwest::Client::new();

    let out = classify(&http, &server.url(), "b77", &sure, Some("shadowed")).await;
    let results = out["results"].as_array().unwrap();
    assert!(results.iter().all(|r| r["source"] == "student"), "{out}");
    // Answered while every shadow call is still with the slow teacher.
    assert_eq!(
        sim.stats().billable,
        0,
        "confident answers waited for the teacher"
    );

    server.state.shadow_idle().await;
    assert_eq!(sim.stats().billable as usize, sure.len());
    let metrics = metrics_text(&http, &server).await;
    assert_eq!(
        series(&metrics, "distill_shadow_total{model=\"b77\"}") as usize,
        sure.len(),
        "{metrics}"
    );
    let agreed = series(&metrics, "distill_shadow_agree_total{model=\"b77\"}") as u64;

    server.shutdown().await.unwrap();
    let drift = distill_serve::shadow::drift_report(&db, Some("b77"), 1).unwrap();
    assert_eq!(drift.total.n as usize, sure.len());
    assert_eq!(drift.total.agree, agreed);
    assert_eq!(drift.by_day.len(), 1);
    assert_eq!(
        drift.by_label.iter().map(|r| r.n).sum::<u64>() as usize,
        sure.len()
    );
    // The store keeps hashes, never the inputs.
    let raw = std::fs::read(&db).unwrap();
    let raw = String::from_utf8_lossy(&raw);
    assert!(sure.iter().all(|t| !raw.contains(t.as_str())));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_shadow_calls_still_with_the_teacher() {
    let ShadowRig {
        _dir,
        db,
        sim,
        server,
        sure,
    } = ShadowRig::start(400).await;
    let http = reqwest::Client::new();
    classify(&http, &server.url(), "b77", &sure, None).await;
    // Straight to shutdown while every shadow call is still with the slow teacher.
    server.shutdown().await.unwrap();
    let drift = distill_serve::shadow::drift_report(&db, Some("b77"), 1).unwrap();
    assert_eq!(drift.total.n as usize, sure.len());
    assert_eq!(sim.stats().billable as usize, sure.len());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teacher_outage_gives_degraded_student_answers() {
    let dir = tempfile::tempdir().unwrap();
    let spec = banking_task(dir.path());
    // A port with nobody listening: the teacher is down.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/v1", dead.local_addr().unwrap());
    drop(dead);
    let student = Arc::new(FixedStudent::new(spec.labels.names.clone(), None));
    let server = start(
        vec![entry(
            "b77",
            student,
            Some(teach_escalator(&spec, &dead_url, dir.path())),
        )],
        ServerOptions::default(),
    )
    .await;
    let http = reqwest::Client::new();
    let texts = sample_texts(8);
    let out = classify(&http, &server.url(), "b77", &texts, None).await;
    for (t, r) in texts.iter().zip(out["results"].as_array().unwrap()) {
        assert_eq!(r["source"], "student");
        assert_eq!(r.get("degraded").is_some(), !is_sure(t), "{r}");
    }
    server.shutdown().await.unwrap();
}

/// A teacher that charges a fixed price and counts its calls.
struct PricedTeacher {
    calls: AtomicUsize,
    cost: f64,
}

impl Escalator for PricedTeacher {
    fn label<'a>(
        &'a self,
        _input: distill_core::spec::PromptInput<'a>,
        _ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<Escalation, EscalateError>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(Escalation {
                label: "refund_not_showing_up".into(),
                usage: Default::default(),
                cost_usd: self.cost,
                cached: false,
            })
        })
    }
    fn teacher_model(&self) -> String {
        "priced".into()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_exhaustion_stops_escalation_and_alerts_once() {
    let dir = tempfile::tempdir().unwrap();
    let spec = banking_task(dir.path());
    // The webhook receiver: forwards every alert body to the test.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let app = axum::Router::new().route(
        "/alert",
        axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(v);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/alert", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let teacher = Arc::new(PricedTeacher {
        calls: AtomicUsize::new(0),
        cost: 0.01,
    });
    let student = Arc::new(FixedStudent::new(spec.labels.names.clone(), None));
    let server = start(
        vec![entry("b77", student, Some(teacher.clone()))],
        ServerOptions {
            budgets: Budgets::parse(&["ops=daily:0.015".into()]).unwrap(),
            alert_webhook: Some(hook),
            ..Default::default()
        },
    )
    .await;
    let http = reqwest::Client::new();
    let unsure: Vec<String> = sample_texts(60)
        .into_iter()
        .filter(|t| !is_sure(t))
        .take(5)
        .collect();
    let mut sources = Vec::new();
    for t in &unsure {
        let out = classify(
            &http,
            &server.url(),
            "b77",
            std::slice::from_ref(t),
            Some("ops"),
        )
        .await;
        let r = &out["results"][0];
        sources.push((
            r["source"].as_str().unwrap().to_string(),
            r.get("budget_capped").is_some(),
        ));
    }
    assert_eq!(teacher.calls.load(Ordering::SeqCst), 2, "{sources:?}");
    assert_eq!(
        &sources[..2],
        &[("teacher".into(), false), ("teacher".into(), false)]
    );
    assert!(
        sources[2..].iter().all(|(s, c)| s == "student" && *c),
        "{sources:?}"
    );
    // Other tags still escalate.
    let out = classify(&http, &server.url(), "b77", &unsure[..1], Some("other")).await;
    assert_eq!(out["results"][0]["source"], "teacher");

    let alert = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(alert["tag"], "ops");
    assert_eq!(alert["period"], "daily");
    let metrics = http
        .get(format!("{}/metrics", server.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("distill_budget_capped{tag=\"ops\",period=\"daily\"} 1"),
        "{metrics}"
    );
    server.shutdown().await.unwrap();
    // Exactly one alert per cap: nothing else arrived.
    assert!(rx.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_have_openai_shape_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let spec = banking_task(dir.path());
    let student = Arc::new(FixedStudent::new(spec.labels.names.clone(), Some(8)));
    let server = start(
        vec![entry("b77", student, None)],
        ServerOptions {
            api_keys: Some(distill_serve::auth::ApiKeys::from_lines("sk-good\n")),
            max_body_bytes: 4096,
            ..Default::default()
        },
    )
    .await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", server.url());
    let send = |body: String, key: Option<&'static str>| {
        let mut r = http
            .post(&url)
            .header("content-type", "application/json")
            .body(body);
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        r.send()
    };
    let msg = |model: &str, text: &str| {
        json!({"model": model, "messages": [{"role": "user", "content": text}]}).to_string()
    };
    let cases = [
        (
            send(msg("b77", "hi"), None).await.unwrap(),
            401,
            "invalid_api_key",
        ),
        (
            send(msg("b77", "hi"), Some("sk-bad")).await.unwrap(),
            401,
            "invalid_api_key",
        ),
        (
            send(msg("nope", "hi"), Some("sk-good")).await.unwrap(),
            404,
            "model_not_found",
        ),
        (
            send("{not json".into(), Some("sk-good")).await.unwrap(),
            400,
            "",
        ),
        (
            send(json!({"model": "b77"}).to_string(), Some("sk-good"))
                .await
                .unwrap(),
            400,
            "",
        ),
        (
            send(msg("b77", &"word ".repeat(2000)), Some("sk-good"))
                .await
                .unwrap(),
            413,
            "request_too_large",
        ),
        (
            send(msg("b77", &"word ".repeat(20)), Some("sk-good"))
                .await
                .unwrap(),
            422,
            "context_length_exceeded",
        ),
    ];
    for (resp, status, code) in cases {
        assert_eq!(resp.status().as_u16(), status);
        let v: Value = resp.json().await.unwrap();
        let e = &v["error"];
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(
            e["type"].is_string() && e.get("param").is_some() && e.get("code").is_some(),
            "{v}"
        );
        if !code.is_empty() {
            assert_eq!(e["code"], code, "{v}");
        }
    }
    let ok = send(msg("b77", "where is my card"), Some("sk-good"))
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    // Health endpoints need no key.
    assert_eq!(
        http.get(format!("{}/readyz", server.url()))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_is_one_chunk_then_done_and_json_mode_wraps_the_label() {
    let dir = tempfile::tempdir().unwrap();
    let spec = banking_task(dir.path());
    let student = Arc::new(FixedStudent::new(spec.labels.names.clone(), None));
    let server = start(
        vec![entry("b77", student.clone(), None)],
        ServerOptions::default(),
    )
    .await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", server.url());
    let text = "I still have not received my new card";
    let want = distill_train::Student::predict(&*student, &[text], 1).unwrap()[0]
        .label
        .clone();
    let body = http
        .post(&url)
        .json(&json!({"model": "b77", "stream": true, "stream_options": {"include_usage": true},
                      "messages": [{"role": "system", "content": "x"}, {"role": "user", "content": text}]}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{body}");
    let first: Value = serde_json::from_str(events[0]).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["content"], want.as_str());
    let stop: Value = serde_json::from_str(events[1]).unwrap();
    assert_eq!(stop["choices"][0]["finish_reason"], "stop");
    let usage: Value = serde_json::from_str(events[2]).unwrap();
    assert!(usage["usage"]["prompt_tokens"].as_u64().unwrap() > 0);

    let r: Value = http
        .post(&url)
        .json(
            &json!({"model": "b77", "response_format": {"type": "json_object"},
                      "messages": [{"role": "user", "content": text}]}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let content: Value =
        serde_json::from_str(r["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert_eq!(content["label"], want.as_str());
    let models: Value = http
        .get(format!("{}/v1/models", server.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "b77");
    server.shutdown().await.unwrap();
}

/// One 100,000-character "word" is one token to a word-counting student, but tens of
/// thousands to the teacher, and escalating it bills them all. Inputs are checked in the
/// teacher's tokens (and a character bound) before escalating: 422, or cut with --truncate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_too_long_for_the_teacher_are_refused_or_cut_before_escalating() {
    let dir = tempfile::tempdir().unwrap();
    let spec = banking_task(dir.path());
    let sim = distill_sim::SimServer::start(
        distill_sim::SimConfig::new(spec.clone()),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let post = |server: String, content: String| {
        let http = http.clone();
        async move {
            let r = http
                .post(format!("{server}/v1/chat/completions"))
                .json(&json!({"model": "b77", "messages": [{"role": "user", "content": content}]}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    let student = || Arc::new(FixedStudent::new(spec.labels.names.clone(), None));
    let strict = start(
        vec![entry(
            "b77",
            student(),
            Some(teach_escalator(&spec, &sim.base_url(), dir.path())),
        )],
        ServerOptions {
            threshold: 0.7,
            ..Default::default()
        },
    )
    .await;
    let huge = "a".repeat(100_000);
    assert_eq!(
        distill_train::Student::token_len(
            &FixedStudent::new(spec.labels.names.clone(), None),
            &huge
        ),
        1
    );
    let (status, body) = post(strict.url(), huge.clone()).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "context_length_exceeded", "{body}");
    // Under the character bound but over the teacher's token limit.
    let dense: String = (0..6_000)
        .map(|i| format!("{:x}", i * 7919 % 4096))
        .collect();
    assert!(dense.len() < 2048 * 16);
    let (status, body) = post(strict.url(), dense).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("teacher"),
        "{body}"
    );
    for empty in ["", " \n\t "] {
        let (status, body) = post(strict.url(), empty.to_string()).await;
        assert_eq!(status, 400, "{body}");
    }
    assert_eq!(sim.stats().requests, 0, "nothing reached the teacher");

    let cutting = start(
        vec![entry(
            "b77",
            student(),
            Some(teach_escalator(&spec, &sim.base_url(), dir.path())),
        )],
        ServerOptions {
            threshold: 0.7,
            truncate: true,
            ..Default::default()
        },
    )
    .await;
    let (status, body) = post(cutting.url(), huge).await;
    assert_eq!(status, 200, "{body}");
    let stats = sim.stats();
    assert_eq!(stats.billable, 1, "{stats:?}");
    assert!(
        stats.tokens.prompt <= 2048 + 1_500,
        "billed {} prompt tokens (the label list is ~1,000)",
        stats.tokens.prompt
    );
}
