//! The gateway end to end over HTTP on 127.0.0.1: routes and rules, output caps and brevity,
//! the cache (plain and streamed), fallback on an outage, budgets, metering in the ledger and
//! /metrics, a client that hangs up mid-stream, a tier that never answers, per-route cache-key
//! folding, and students served beside the routes.
//! Upstreams: the sim-teacher, and a recording upstream that shows what the gateway sent.

mod common;

use common::*;
use distill_core::ledger::Ledger;
use distill_serve::budget::Budgets;
use distill_serve::cache::{Cache, MemoryCache};
use distill_serve::gateway::config::GatewayConfig;
use distill_serve::gateway::{Gateway, GatewayOptions};
use distill_serve::{RunningServer, Server, ServerOptions};
use futures::StreamExt;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn memory_cache() -> Cache {
    Cache::Memory(MemoryCache::new(Duration::from_secs(600), 10_000))
}

fn gateway(text: &str, state: &Path) -> Arc<Gateway> {
    let cfg = GatewayConfig::parse(text, Path::new("gateway.toml")).unwrap();
    Arc::new(
        Gateway::new(
            &cfg,
            &GatewayOptions {
                ledger_path: Some(state.join("ledger.db")),
                prices: None,
                backoff_base: Some(Duration::from_millis(1)),
            },
        )
        .unwrap(),
    )
}

async fn start_gateway(gw: Arc<Gateway>, budgets: Budgets) -> RunningServer {
    let mut b = budgets;
    for (k, c) in gw.budget_caps() {
        b = b.with_cap(k, c);
    }
    start(
        vec![],
        ServerOptions {
            cache: memory_cache(),
            budgets: b,
            gateway: Some(gw),
            ..Default::default()
        },
    )
    .await
}

async fn chat(http: &reqwest::Client, url: &str, body: Value) -> (u16, Value) {
    let r = http
        .post(format!("{url}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn user(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

/// Reads an SSE response: the JSON events (in order) and whether `[DONE]` ended it.
async fn read_stream(r: reqwest::Response) -> (Vec<Value>, bool) {
    let text = r.text().await.unwrap();
    let mut events = Vec::new();
    let mut done = false;
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let data = block.strip_prefix("data: ").unwrap_or(block);
        if data == "[DONE]" {
            done = true;
        } else {
            events.push(serde_json::from_str(data).unwrap());
        }
    }
    (events, done)
}

fn streamed_content(events: &[Value]) -> String {
    events
        .iter()
        .filter_map(|e| {
            e.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
        })
        .collect()
}

const SIM_CONFIG: &str = r#"
[[tier]]
name = "cheap"
provider = "openai"
model = "gpt-4o-mini"
base_url = "SIM"

[[tier]]
name = "premium"
provider = "openai"
model = "gpt-4o"
base_url = "SIM"

[[route]]
name = "auto"
models = ["auto"]
policy = "rules"
tier = "cheap"
premium = "premium"
max_tokens = 400

[[route.rule]]
tier = "premium"
keywords = ["prove"]

[[route]]
name = "creative"
models = ["poet"]
policy = "fixed"
tier = "premium"
cache_max_temperature = 0.5
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_rules_caches_repeats_and_meters_every_upstream_call() {
    let dir = tempfile::tempdir().unwrap();
    let spec = banking_task(dir.path());
    let sim = start_sim(spec).await;
    let gw = gateway(&SIM_CONFIG.replace("SIM", &sim.base_url()), dir.path());
    let server = start_gateway(gw, Budgets::default()).await;
    let http = reqwest::Client::new();
    let url = server.url();

    let (s, a) = chat(&http, &url, user("auto", "Where is my new card?")).await;
    assert_eq!(s, 200, "{a}");
    assert_eq!(a["distill"]["route"], "auto");
    assert_eq!(a["distill"]["tier"], "cheap");
    assert_eq!(a["distill"]["reason"], "default");
    assert_eq!(a["distill"]["cache_hit"], false);
    let cost = a["distill"]["cost_usd"].as_f64().unwrap();
    let saved = a["distill"]["saved_usd"].as_f64().unwrap();
    assert!(cost > 0.0 && saved > 0.0, "{a}");
    assert!(a["choices"][0]["message"]["content"]
        .as_str()
        .is_some_and(|c| !c.is_empty()));
    assert_eq!(sim.stats().billable, 1);

    // The same request with other whitespace: from the cache, nothing paid.
    let (_, b) = chat(&http, &url, user("auto", "  Where is my   new card? ")).await;
    assert_eq!(b["distill"]["cache_hit"], true, "{b}");
    assert_eq!(b["distill"]["cost_usd"], 0.0);
    assert_eq!(b["choices"][0]["message"], a["choices"][0]["message"]);
    assert_eq!(sim.stats().billable, 1);

    // A rule sends proofs to the premium tier.
    let (_, p) = chat(
        &http,
        &url,
        user("auto", "Prove that my card was charged twice"),
    )
    .await;
    assert_eq!(p["distill"]["tier"], "premium", "{p}");
    assert_eq!(p["distill"]["reason"], "rule 1");
    assert_eq!(p["model"], "gpt-4o");

    // Hot requests on a creative route are never cached.
    for _ in 0..2 {
        let mut req = user("poet", "A poem about fees");
        req["temperature"] = json!(0.9);
        let (_, c) = chat(&http, &url, req).await;
        assert_eq!(c["distill"]["cache_hit"], false, "{c}");
    }
    assert_eq!(sim.stats().billable, 4);

    // Unknown model: OpenAI's error, naming what is served.
    let (s, e) = chat(&http, &url, user("gpt-5", "hi")).await;
    assert_eq!(s, 404);
    assert_eq!(e["error"]["code"], "model_not_found");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("auto"),
        "{e}"
    );

    // One ledger row per upstream call, priced, under the route; none for the cache hit.
    let ledger = Ledger::open(dir.path().join("ledger.db")).unwrap();
    let rows = ledger.rows_for_task("auto").unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows
        .iter()
        .all(|r| r.status == "ok" && r.source == "gateway"));
    assert_eq!(rows[0].model, "gpt-4o-mini");
    assert!((rows[0].cost_usd - cost).abs() < 1e-12);
    assert_eq!(rows[1].model, "gpt-4o");
    assert_eq!(ledger.rows_for_task("creative").unwrap().len(), 2);

    let m = metrics_text(&http, &server).await;
    assert_eq!(
        series(&m, "distill_gateway_requests_total{route=\"auto\",tier=\"cheap\",tag=\"default\",source=\"cache\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(series(&m, "distill_cache_hits_total{model=\"auto\"}"), 1.0);
    assert!(
        series(
            &m,
            "distill_gateway_spend_usd_total{route=\"auto\",tier=\"cheap\",tag=\"default\"}"
        ) > 0.0
    );

    // /v1/models lists the aliases.
    let models: Value = http
        .get(format!("{url}/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["auto", "poet"]);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_relayed_metered_cached_and_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let spec = banking_task(dir.path());
    let sim = start_sim(spec).await;
    let gw = gateway(&SIM_CONFIG.replace("SIM", &sim.base_url()), dir.path());
    let server = start_gateway(gw, Budgets::default()).await;
    let http = reqwest::Client::new();
    let url = server.url();
    let plain = sim_content(&sim.base_url(), "I was charged twice for one coffee").await;

    let mut req = user("auto", "I was charged twice for one coffee");
    req["stream"] = json!(true);
    req["stream_options"] = json!({"include_usage": true});
    let r = http
        .post(format!("{url}/v1/chat/completions"))
        .json(&req)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    assert_eq!(r.headers()["x-distill-tier"], "cheap");
    assert_eq!(r.headers()["x-distill-cache"], "miss");
    let (events, done) = read_stream(r).await;
    assert!(done);
    assert_eq!(streamed_content(&events), plain);
    let usage = events.last().unwrap();
    assert!(usage["choices"].as_array().unwrap().is_empty(), "{usage}");
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    assert!(usage["distill"]["cost_usd"].as_f64().unwrap() > 0.0);
    let rows = Ledger::open(dir.path().join("ledger.db"))
        .unwrap()
        .rows_for_task("auto")
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, "ok");
    assert_eq!(
        rows[0].usage.completion_tokens,
        usage["usage"]["completion_tokens"].as_u64().unwrap()
    );

    // Again, without include_usage: replayed from the cache as a stream, no usage chunk.
    req.as_object_mut().unwrap().remove("stream_options");
    let r = http
        .post(format!("{url}/v1/chat/completions"))
        .json(&req)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-distill-cache"], "hit");
    let (events, done) = read_stream(r).await;
    assert!(done);
    assert_eq!(streamed_content(&events), plain);
    assert!(
        events.iter().all(|e| e.get("usage").is_none()),
        "{events:?}"
    );
    // And the streamed answer answers a plain request too.
    let (_, c) = chat(
        &http,
        &url,
        user("auto", "I was charged twice for one coffee"),
    )
    .await;
    assert_eq!(c["distill"]["cache_hit"], true);
    assert_eq!(c["choices"][0]["message"]["content"], plain.as_str());
    assert_eq!(sim.stats().billable, 2, "one paid stream, one direct call");
    server.shutdown().await.unwrap();
}

/// The sim's answer to a text, asked directly.
async fn sim_content(base: &str, text: &str) -> String {
    let r: Value = reqwest::Client::new()
        .post(format!("{base}/chat/completions"))
        .bearer_auth("test")
        .json(&json!({"model": "gpt-4o-mini", "max_tokens": 400,
                      "messages": [{"role": "user", "content": text}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

/// An upstream that records what it is sent. Prompts containing `reject` get a 400, those
/// containing `garbage` a 200 whose body is not JSON; streams
/// containing `hang` send one chunk and then nothing, until the test ends; prompts containing
/// `slow` are answered once the gate is notified.
async fn recording_upstream() -> (String, Arc<Mutex<Vec<Value>>>) {
    recording_upstream_gated(Arc::new(tokio::sync::Notify::new())).await
}

async fn recording_upstream_gated(
    gate: Arc<tokio::sync::Notify>,
) -> (String, Arc<Mutex<Vec<Value>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |body: String| {
            let s = s.clone();
            let gate = gate.clone();
            async move {
                use axum::response::IntoResponse;
                let v: Value = serde_json::from_str(&body).unwrap();
                s.lock().unwrap().push(v.clone());
                let text = v.to_string();
                if text.contains("slow") {
                    gate.notified().await;
                }
                if text.contains("garbage") {
                    return (axum::http::StatusCode::OK, "<html>upstream proxy</html>").into_response();
                }
                if text.contains("reject") {
                    return (
                        axum::http::StatusCode::BAD_REQUEST,
                        axum::Json(json!({"error": {"message": "bad thing", "type": "invalid_request_error", "param": null, "code": null}})),
                    )
                        .into_response();
                }
                let chunk = |content: &str| {
                    format!(
                        "data: {}\n\n",
                        json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                               "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]})
                    )
                };
                if v["stream"] == true {
                    let first = futures::stream::once(async move {
                        Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(chunk("Hel")))
                    });
                    let rest: futures::stream::BoxStream<'static, _> = if text.contains("hang") {
                        futures::stream::pending().boxed()
                    } else {
                        futures::stream::iter(vec![Ok(axum::body::Bytes::from("data: [DONE]\n\n"))]).boxed()
                    };
                    let mut r = axum::body::Body::from_stream(first.chain(rest)).into_response();
                    r.headers_mut().insert("content-type", "text/event-stream".parse().unwrap());
                    return r;
                }
                axum::Json(json!({
                    "id": "c1", "object": "chat.completion", "created": 1, "model": v["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
                }))
                .into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_output_adds_brevity_and_relays_upstream_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (up, seen) = recording_upstream().await;
    let cfg = format!(
        r#"
[[tier]]
name = "only"
provider = "openai"
model = "gpt-4o-mini"
base_url = "{up}"

[[route]]
name = "capped"
models = ["auto"]
policy = "fixed"
tier = "only"
max_tokens = 100
brevity = "Be brief."
cache = false

[[route]]
name = "set"
models = ["auto"]
tags = ["batch-jobs"]
policy = "fixed"
tier = "only"
max_tokens = 50
max_tokens_mode = "set"
cache = false
"#
    );
    let server = start_gateway(gateway(&cfg, dir.path()), Budgets::default()).await;
    let http = reqwest::Client::new();
    let url = server.url();

    let mut req = json!({"model": "auto", "max_tokens": 1000, "messages": [
        {"role": "system", "content": "You help."}, {"role": "user", "content": "hi"}]});
    chat(&http, &url, req.clone()).await;
    req["max_tokens"] = json!(20);
    chat(&http, &url, req.clone()).await;
    let mut newer = user("auto", "hi");
    newer["max_completion_tokens"] = json!(5000);
    chat(&http, &url, newer).await;
    // A tag picks the route that sets the cap whatever the client asked.
    let r = http
        .post(format!("{url}/v1/chat/completions"))
        .header("x-distill-tag", "batch-jobs")
        .json(&req)
        .send()
        .await
        .unwrap();
    let tagged: Value = r.json().await.unwrap();
    assert_eq!(tagged["distill"]["route"], "set");
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0]["max_tokens"], 100, "clamped");
        assert_eq!(seen[0]["model"], "gpt-4o-mini");
        assert_eq!(seen[0]["messages"][0]["content"], "You help.\n\nBe brief.");
        assert_eq!(seen[1]["max_tokens"], 20, "already under the cap");
        assert_eq!(seen[2]["max_completion_tokens"], 100, "the client's field");
        assert!(seen[2].get("max_tokens").is_none());
        assert_eq!(
            seen[2]["messages"][0],
            json!({"role": "system", "content": "Be brief."})
        );
        assert_eq!(seen[3]["max_tokens"], 50, "set");
    }

    // The upstream's own 4xx reaches the client as it was, and is not billed.
    let (s, e) = chat(&http, &url, user("auto", "please reject this")).await;
    assert_eq!(s, 400);
    assert_eq!(e["error"]["message"], "bad thing");
    let ledger = Ledger::open(dir.path().join("ledger.db")).unwrap();
    assert_eq!(ledger.rows_for_task("capped").unwrap().len(), 3);

    // A 200 that is not an answer was billed with no usage to read: charged at its estimate
    // (its prompt and all 100 capped tokens), in the ledger and in the spend metric.
    let (s, e) = chat(&http, &url, user("auto", "garbage please")).await;
    assert_eq!(s, 502, "{e}");
    let rows = ledger.rows_for_task("capped").unwrap();
    let last = rows.last().unwrap();
    assert_eq!(last.status, "unanswered", "{rows:?}");
    assert_eq!(last.usage.completion_tokens, 100, "{last:?}");
    assert!(last.cost_usd > 0.0);
    let m = metrics_text(&http, &server).await;
    let spent: f64 = rows.iter().map(|r| r.cost_usd).sum();
    let metered = series(
        &m,
        "distill_gateway_spend_usd_total{route=\"capped\",tier=\"only\",tag=\"default\"}",
    );
    assert!((metered - spent).abs() < 1e-9, "{metered} vs {spent}\n{m}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_mid_stream_is_still_metered() {
    let dir = tempfile::tempdir().unwrap();
    let (up, _seen) = recording_upstream().await;
    let cfg = format!(
        "[[tier]]\nname = \"only\"\nprovider = \"openai\"\nmodel = \"gpt-4o\"\nbase_url = \"{up}\"\ntimeout_s = 2\n\
         [[route]]\nname = \"r\"\nmodels = [\"auto\"]\npolicy = \"fixed\"\ntier = \"only\"\n"
    );
    let server = start_gateway(gateway(&cfg, dir.path()), Budgets::default()).await;
    let mut req = user("auto", "please hang after a word");
    req["stream"] = json!(true);
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.url()))
        .json(&req)
        .send()
        .await
        .unwrap();
    let mut body = r.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("Hel"));
    drop(body);
    // The row is settled when the gateway sees the hang-up, or at the latest when the stalled
    // upstream's chunk timeout (2 s) ends the relay.
    let ledger = Ledger::open(dir.path().join("ledger.db")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let row = loop {
        let rows = ledger.rows_for_task("r").unwrap();
        if rows.first().is_some_and(|r| r.status != "in_flight") {
            break rows[0].clone();
        }
        assert!(Instant::now() < deadline, "never settled: {rows:?}");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(row.status, "cut");
    assert_eq!(row.usage.completion_tokens, 1, "`Hel` is one token");
    assert!(row.cost_usd > 0.0);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_outage_falls_back_and_budgets_stop_premium_calls() {
    let dir = tempfile::tempdir().unwrap();
    let spec = banking_task(dir.path());
    let mut down = distill_sim::SimConfig::new(spec.clone());
    down.error_rate = 1.0;
    down.retry_after_ms = 1;
    let down = distill_sim::SimServer::start(down, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let up = distill_sim::SimServer::start(
        distill_sim::SimConfig::new(spec),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let cfg = format!(
        r#"
[[tier]]
name = "flaky"
provider = "openai"
model = "gpt-4o-mini"
base_url = "{down}"
max_retries = 1
fallback = "steady"

[[tier]]
name = "steady"
provider = "openai"
model = "gpt-4o-mini"
base_url = "{up}"

[[tier]]
name = "premium"
provider = "openai"
model = "gpt-4o"
base_url = "{up}"

[[tier]]
name = "dead"
provider = "openai"
model = "gpt-4o"
base_url = "{down}"
max_retries = 0

[[route]]
name = "auto"
models = ["auto"]
policy = "rules"
tier = "flaky"
daily_usd = 0.0000001
cache = false

[[route.rule]]
tier = "premium"
keywords = ["prove"]

[[route]]
name = "strict"
models = ["strict"]
policy = "fixed"
tier = "premium"
daily_usd = 0.0000001
on_budget = "refuse"

[[route]]
name = "nowhere"
models = ["nowhere"]
policy = "fixed"
tier = "dead"
"#,
        down = down.base_url(),
        up = up.base_url()
    );
    let server = start_gateway(gateway(&cfg, dir.path()), Budgets::default()).await;
    let http = reqwest::Client::new();
    let url = server.url();

    let (s, a) = chat(&http, &url, user("auto", "Where is my card?")).await;
    assert_eq!(s, 200, "{a}");
    assert_eq!(a["distill"]["tier"], "steady");
    assert_eq!(a["distill"]["fallback_from"], "flaky");
    assert_eq!(down.stats().requests, 2, "one try and one retry");

    // The first call spent the route's budget: a proof now goes to the cheapest tier.
    let (_, p) = chat(&http, &url, user("auto", "Prove my card works")).await;
    assert_eq!(p["distill"]["reason"], "fallback", "{p}");
    assert_ne!(p["distill"]["tier"], "premium");
    // A refusing route says so in OpenAI's shape once its budget is spent.
    let (s, _) = chat(&http, &url, user("strict", "one")).await;
    assert_eq!(s, 200);
    let (s, e) = chat(&http, &url, user("strict", "two")).await;
    assert_eq!(s, 429, "{e}");
    assert_eq!(e["error"]["code"], "budget_exceeded");

    // Every tier down: one 502 in OpenAI's shape, nothing billed.
    let (s, e) = chat(&http, &url, user("nowhere", "hello")).await;
    assert_eq!(s, 502);
    assert_eq!(e["error"]["code"], "upstream_unavailable");
    let ledger = Ledger::open(dir.path().join("ledger.db")).unwrap();
    assert!(ledger.rows_for_task("nowhere").unwrap().is_empty());
    let m = metrics_text(&http, &server).await;
    assert!(
        series(
            &m,
            "distill_gateway_fallbacks_total{route=\"auto\",from=\"flaky\",to=\"steady\"}"
        ) >= 1.0,
        "{m}"
    );
    server.shutdown().await.unwrap();
}

/// A tier that accepts the request and never answers is given up on at its `timeout_s`, and
/// the route's fallback answers: the client sees one answer, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tier_that_never_answers_times_out_to_its_fallback() {
    let dir = tempfile::tempdir().unwrap();
    // The gate is never opened: every "slow" request waits forever.
    let (stuck, seen) = recording_upstream().await;
    let sim = start_sim(banking_task(dir.path())).await;
    let cfg = format!(
        r#"
[[tier]]
name = "stuck"
provider = "openai"
model = "gpt-4o-mini"
base_url = "{stuck}"
timeout_s = 1
max_retries = 0
fallback = "steady"

[[tier]]
name = "steady"
provider = "openai"
model = "gpt-4o-mini"
base_url = "{sim}"

[[route]]
name = "auto"
models = ["auto"]
policy = "fixed"
tier = "stuck"
cache = false
"#,
        sim = sim.base_url()
    );
    let server = start_gateway(gateway(&cfg, dir.path()), Budgets::default()).await;
    // A gateway that waited forever fails this test instead of hanging it.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let url = server.url();

    let t0 = Instant::now();
    let (s, a) = chat(&http, &url, user("auto", "a slow question about my card")).await;
    let waited = t0.elapsed();
    assert_eq!(s, 200, "{a}");
    assert_eq!(a["distill"]["tier"], "steady");
    assert_eq!(a["distill"]["fallback_from"], "stuck");
    assert_eq!(a["distill"]["reason"], "fallback");
    assert_eq!(seen.lock().unwrap().len(), 1, "asked once, no retry");
    assert_eq!(sim.stats().billable, 1);
    // Given up at the tier's timeout, not at the client's or never.
    assert!(waited >= Duration::from_secs(1), "{waited:?}");
    // The abandoned call reached the tier, which may finish and bill it: it stays in the
    // ledger as unanswered, at its estimate, beside the fallback's answered call; the spend
    // metric counts both.
    let ledger = Ledger::open(dir.path().join("ledger.db")).unwrap();
    let rows = ledger.rows_for_task("auto").unwrap();
    let statuses: Vec<_> = rows.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(statuses, ["unanswered", "ok"], "{rows:?}");
    assert_eq!(rows[0].model, "gpt-4o-mini");
    assert!(rows[0].cost_usd > 0.0, "{rows:?}");
    let spent: f64 = rows.iter().map(|r| r.cost_usd).sum();
    let m = metrics_text(&http, &server).await;
    let metered = |tier: &str| {
        series(
            &m,
            &format!(
                "distill_gateway_spend_usd_total{{route=\"auto\",tier=\"{tier}\",tag=\"default\"}}"
            ),
        )
    };
    assert!((metered("stuck") - rows[0].cost_usd).abs() < 1e-9, "{m}");
    assert!(
        (metered("stuck") + metered("steady") - spent).abs() < 1e-9,
        "{m}"
    );

    // A tier that answers in time is not held to the timeout.
    let (s, b) = chat(&http, &url, user("auto", "a quick question")).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["distill"]["tier"], "stuck");
    assert_eq!(b["distill"]["reason"], "default");
    server.shutdown().await.unwrap();
}

/// `case_fold` and `strip_punctuation` widen one route's cache key and only that route's; the
/// upstream is always sent the client's own text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folded_routes_share_cache_entries_that_exact_routes_keep_apart() {
    let dir = tempfile::tempdir().unwrap();
    let (up, seen) = recording_upstream().await;
    let cfg = format!(
        r#"
[[tier]]
name = "only"
provider = "openai"
model = "gpt-4o-mini"
base_url = "{up}"

[[route]]
name = "folded"
models = ["folded"]
policy = "fixed"
tier = "only"
cache_max_temperature = 2.0
case_fold = true
strip_punctuation = true

[[route]]
name = "exact"
models = ["exact"]
policy = "fixed"
tier = "only"
cache_max_temperature = 2.0
"#
    );
    let server = start_gateway(gateway(&cfg, dir.path()), Budgets::default()).await;
    let http = reqwest::Client::new();
    let url = server.url();
    let hit = |v: &Value| v["distill"]["cache_hit"].as_bool().unwrap();

    let (s, first) = chat(&http, &url, user("folded", "Where is my card?")).await;
    assert_eq!(s, 200, "{first}");
    assert!(!hit(&first));
    for same in [
        "where IS my card",
        "Where is my card ?!",
        "WHERE is my   card…",
        "where is my card？",
    ] {
        let (_, r) = chat(&http, &url, user("folded", same)).await;
        assert!(hit(&r), "{same:?} should share the entry: {r}");
    }
    // Folding is not forgetting: other words, or punctuation inside, are other prompts.
    for other in [
        "Where is my card? Today",
        "Where is my old card?",
        "Where, is my card?",
    ] {
        let (_, r) = chat(&http, &url, user("folded", other)).await;
        assert!(!hit(&r), "{other:?} is another prompt: {r}");
    }

    // The exact route keeps case and punctuation apart (whitespace is always collapsed).
    let (_, a) = chat(&http, &url, user("exact", "Where is my card?")).await;
    assert!(!hit(&a), "routes never share entries: {a}");
    let (_, b) = chat(&http, &url, user("exact", "  Where is my  card? ")).await;
    assert!(hit(&b), "{b}");
    for apart in ["where is my card?", "Where is my card"] {
        let (_, r) = chat(&http, &url, user("exact", apart)).await;
        assert!(!hit(&r), "{apart:?}: {r}");
    }

    // Upstream calls: 1 + 3 on the folded route, 1 + 2 on the exact one, each as the client wrote it.
    let sent: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|v| v["messages"][0]["content"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        sent,
        [
            "Where is my card?",
            "Where is my card? Today",
            "Where is my old card?",
            "Where, is my card?",
            "Where is my card?",
            "where is my card?",
            "Where is my card",
        ]
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn students_are_served_beside_the_routes() {
    let dir = tempfile::tempdir().unwrap();
    let spec = banking_task(dir.path());
    let (up, _) = recording_upstream().await;
    let cfg = format!(
        "[[tier]]\nname = \"only\"\nprovider = \"openai\"\nmodel = \"gpt-4o-mini\"\nbase_url = \"{up}\"\n\
         [[route]]\nname = \"r\"\nmodels = [\"auto\"]\npolicy = \"fixed\"\ntier = \"only\"\n\
         [[route]]\nname = \"support\"\nmodels = [\"support-bot\"]\npolicy = \"student\"\nstudent = \"b77\"\n\
         [[route]]\nname = \"intents\"\ntags = [\"intents\"]\npolicy = \"student\"\nstudent = \"b77\"\n"
    );
    let student = Arc::new(FixedStudent::new(spec.labels.names.clone(), None));

    // A student route naming a model that is not served is refused at start, by name.
    let e = Server::new(
        vec![],
        ServerOptions {
            gateway: Some(gateway(&cfg, dir.path())),
            ..Default::default()
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("route `support`: student") && e.contains("--model b77=DIR"),
        "{e}"
    );

    let server = start(
        vec![entry("b77", student, None)],
        ServerOptions {
            gateway: Some(gateway(&cfg, dir.path())),
            ..Default::default()
        },
    )
    .await;
    let http = reqwest::Client::new();
    let url = server.url();
    let (_, s) = chat(&http, &url, user("b77", "Where is my card?")).await;
    assert_eq!(s["distill"]["source"], "student", "{s}");
    let (_, g) = chat(&http, &url, user("auto", "Where is my card?")).await;
    assert_eq!(g["distill"]["route"], "r", "{g}");
    assert_eq!(g["choices"][0]["message"]["content"], "ok");

    // The student answers its route's alias, and its tag on the shared alias; no tier is called.
    let (_, a) = chat(&http, &url, user("support-bot", "Where is my card?")).await;
    assert_eq!(a["distill"]["source"], "student", "{a}");
    assert_eq!(a["choices"][0]["message"], s["choices"][0]["message"]);
    let r = http
        .post(format!("{url}/v1/chat/completions"))
        .header("x-distill-tag", "intents")
        .json(&user("auto", "Where is my card?"))
        .send()
        .await
        .unwrap();
    let t: Value = r.json().await.unwrap();
    assert_eq!(t["distill"]["source"], "student", "{t}");
    // A body that is not an object, on the student's tag: a 400, not a dropped connection.
    let r = http
        .post(format!("{url}/v1/chat/completions"))
        .header("x-distill-tag", "intents")
        .json(&json!([1]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let rows = Ledger::open(dir.path().join("ledger.db"))
        .unwrap()
        .summary(&[], None)
        .unwrap();
    assert_eq!(
        rows[0].calls, 1,
        "only the `r` route's call is in the ledger: {rows:?}"
    );

    let models: Value = http
        .get(format!("{url}/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bot = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "support-bot")
        .unwrap();
    assert_eq!(bot["distill"]["policy"], "student");
    assert_eq!(bot["distill"]["student"], "b77");
    server.shutdown().await.unwrap();
}

/// A gateway with one gated upstream, and a paid call to it whose client gave up (timed out)
/// while the upstream was still working on it. `gate` lets the upstream answer.
async fn a_call_its_client_left() -> (
    tempfile::TempDir,
    Arc<tokio::sync::Notify>,
    Arc<Mutex<Vec<Value>>>,
    RunningServer,
) {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(tokio::sync::Notify::new());
    let (up, seen) = recording_upstream_gated(gate.clone()).await;
    let cfg = format!(
        "[[tier]]\nname = \"only\"\nprovider = \"openai\"\nmodel = \"gpt-4o\"\nbase_url = \"{up}\"\n\
         [[route]]\nname = \"r\"\nmodels = [\"auto\"]\npolicy = \"fixed\"\ntier = \"only\"\n"
    );
    let server = start_gateway(gateway(&cfg, dir.path()), Budgets::default()).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let r = impatient
        .post(format!("{}/v1/chat/completions", server.url()))
        .json(&user("auto", "a slow question"))
        .send()
        .await;
    assert!(r.is_err_and(|e| e.is_timeout()));
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "the call reached the upstream"
    );
    (dir, gate, seen, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_gives_up_on_a_paid_call_still_gets_it_metered_and_cached() {
    // The client gives up while the upstream is still working on it...
    let (dir, gate, seen, server) = a_call_its_client_left().await;
    let url = server.url();
    // ...which then answers: the paid answer is recorded and cached, not thrown away.
    gate.notify_one();
    let ledger = Ledger::open(dir.path().join("ledger.db")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = ledger.rows_for_task("r").unwrap();
        if rows.first().is_some_and(|r| r.status == "ok") {
            assert_eq!(rows[0].usage.completion_tokens, 5);
            break;
        }
        assert!(Instant::now() < deadline, "never settled: {rows:?}");
        tokio::time::sleep(Duration::from_millis(20)).await; // poll interval
    }
    let (s, again) = chat(
        &reqwest::Client::new(),
        &url,
        user("auto", "a slow question"),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(again["distill"]["cache_hit"], true, "{again}");
    assert_eq!(seen.lock().unwrap().len(), 1, "not paid twice");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_gateway_meters_the_paid_calls_its_clients_left() {
    let (dir, gate, _seen, server) = a_call_its_client_left().await;
    // No client is left, but a paid call is: the gateway does not stop before it is metered.
    let mut stopping = tokio::spawn(server.shutdown());
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut stopping)
            .await
            .is_err(),
        "stopped with a paid call still out"
    );
    gate.notify_one();
    stopping.await.unwrap().unwrap();
    let rows = Ledger::open(dir.path().join("ledger.db"))
        .unwrap()
        .rows_for_task("r")
        .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].status, "ok", "{rows:?}");
    assert_eq!(rows[0].usage.completion_tokens, 5);
}

const ANTHROPIC_CONFIG: &str = r#"
[[tier]]
name = "claude"
provider = "anthropic"
model = "claude-sonnet-4-5"
base_url = "SIM"

[[tier]]
name = "down"
provider = "openai"
model = "gpt-4o"
base_url = "DOWN"
max_retries = 0
fallback = "claude"

[[route]]
name = "claude"
models = ["claude"]
policy = "fixed"
tier = "claude"

[[route]]
name = "down-first"
models = ["fallback"]
policy = "fixed"
tier = "down"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_tiers_answer_in_chat_completions_shape() {
    let dir = tempfile::tempdir().unwrap();
    let spec = banking_task(dir.path());
    let sim = start_sim(spec).await;
    // A port nothing listens on: the `down` tier's outage.
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/v1", l.local_addr().unwrap())
    };
    let gw = gateway(
        &ANTHROPIC_CONFIG
            .replace("SIM", &sim.base_url())
            .replace("DOWN", &down),
        dir.path(),
    );
    let server = start_gateway(gw, Budgets::default()).await;
    let http = reqwest::Client::new();
    let url = server.url();

    // Whole: a chat completion, billed at the Anthropic model's price, one ledger row.
    let mut req = user("claude", "Where is my new card?");
    req["messages"]
        .as_array_mut()
        .unwrap()
        .insert(0, json!({"role": "system", "content": "Answer briefly."}));
    let (s, a) = chat(&http, &url, req).await;
    assert_eq!(s, 200, "{a}");
    assert_eq!(a["object"], "chat.completion");
    assert_eq!(a["model"], "claude-sonnet-4-5");
    assert_eq!(a["choices"][0]["finish_reason"], "stop");
    assert!(a["choices"][0]["message"]["content"]
        .as_str()
        .is_some_and(|c| !c.is_empty()));
    let prompt = a["usage"]["prompt_tokens"].as_u64().unwrap();
    let completion = a["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(prompt > 0 && completion > 0, "{a}");
    let cost = a["distill"]["cost_usd"].as_f64().unwrap();
    // claude-sonnet-4-5: $3 in, $15 out per million.
    let want = (prompt as f64 * 3.0 + completion as f64 * 15.0) / 1e6;
    assert!((cost - want).abs() < 1e-12, "{cost} vs {want}");

    // Streamed: Messages events relayed as Chat Completions chunks, metered, then cached whole.
    let mut req = user("claude", "I was charged twice for one coffee");
    req["stream"] = json!(true);
    req["stream_options"] = json!({"include_usage": true});
    let r = http
        .post(format!("{url}/v1/chat/completions"))
        .json(&req)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-distill-tier"], "claude");
    let (events, done) = read_stream(r).await;
    assert!(done, "{events:?}");
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed = streamed_content(&events);
    assert!(!streamed.is_empty());
    let finishes: Vec<&Value> = events
        .iter()
        .filter_map(|e| e.pointer("/choices/0/finish_reason"))
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finishes, [&json!("stop")]);
    let last = events.last().unwrap();
    assert!(last["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    assert!(
        last["distill"]["cost_usd"].as_f64().unwrap() > 0.0,
        "{last}"
    );
    req.as_object_mut().unwrap().remove("stream");
    req.as_object_mut().unwrap().remove("stream_options");
    let (_, hit) = chat(&http, &url, req).await;
    assert_eq!(hit["distill"]["cache_hit"], true, "{hit}");
    assert_eq!(hit["choices"][0]["message"]["content"], streamed.as_str());
    assert_eq!(sim.stats().billable, 2);

    // A cap reaches Messages as its max_tokens; its stop reason comes back as `length`.
    let mut req = user("claude", "Tell me everything about card payments abroad");
    req["max_tokens"] = json!(2);
    let (_, c) = chat(&http, &url, req).await;
    assert_eq!(c["choices"][0]["finish_reason"], "length", "{c}");
    assert_eq!(c["usage"]["completion_tokens"], 2);

    // What Messages cannot take is refused before any call; the upstream's own refusals
    // come back in OpenAI's error shape.
    let mut req = user("claude", "hi");
    req["tools"] = json!([{"type": "function", "function": {"name": "f"}}]);
    let (s, e) = chat(&http, &url, req).await;
    assert_eq!(s, 400, "{e}");
    assert_eq!(e["error"]["param"], "tools");
    let (s, e) = chat(
        &http,
        &url,
        json!({"model": "claude", "messages": [{"role": "assistant", "content": "hello"}]}),
    )
    .await;
    assert_eq!(s, 400, "{e}");
    assert_eq!(e["error"]["type"], "invalid_request_error");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("first message"),
        "{e}"
    );
    assert_eq!(sim.stats().billable, 3);

    // An outage falls back to the Anthropic tier; a request that tier cannot take is then
    // the outage's 502 (retryable), not a 400 blaming the client.
    let (s, f) = chat(&http, &url, user("fallback", "Where is my refund?")).await;
    assert_eq!(s, 200, "{f}");
    assert_eq!(f["distill"]["tier"], "claude");
    assert_eq!(f["distill"]["reason"], "fallback");
    let mut req = user("fallback", "hi");
    req["tools"] = json!([{"type": "function", "function": {"name": "f"}}]);
    let (s, e) = chat(&http, &url, req).await;
    assert_eq!(s, 502, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("tools"),
        "{e}"
    );
    assert_eq!(sim.stats().billable, 4);

    let rows = Ledger::open(dir.path().join("ledger.db"))
        .unwrap()
        .rows_for_task("claude")
        .unwrap();
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(rows
        .iter()
        .all(|r| r.provider == "anthropic" && r.status == "ok"));
    assert!((rows[0].cost_usd - cost).abs() < 1e-12);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_without_upstream_usage_still_ends_with_the_usage_chunk_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let (up, _) = recording_upstream().await;
    let cfg = format!(
        "[[tier]]\nname = \"only\"\nprovider = \"openai\"\nmodel = \"gpt-4o-mini\"\nbase_url = \"{up}\"\n\
         [[route]]\nname = \"r\"\nmodels = [\"auto\"]\npolicy = \"fixed\"\ntier = \"only\"\n"
    );
    let server = start_gateway(gateway(&cfg, dir.path()), Budgets::default()).await;
    let mut req = user("auto", "Say hello");
    req["stream"] = json!(true);
    req["stream_options"] = json!({"include_usage": true});
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.url()))
        .json(&req)
        .send()
        .await
        .unwrap();
    let (events, done) = read_stream(r).await;
    assert!(done);
    assert_eq!(streamed_content(&events), "Hel");
    // The upstream sent no usage: the gateway's own count, billed and passed on.
    let last = events.last().unwrap();
    assert_eq!(last["choices"], json!([]), "{events:?}");
    assert_eq!(last["id"], "c1");
    let completion = last["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(completion > 0 && last["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    assert!(
        last["distill"]["cost_usd"].as_f64().unwrap() > 0.0,
        "{last}"
    );
    let rows = Ledger::open(dir.path().join("ledger.db"))
        .unwrap()
        .rows_for_task("r")
        .unwrap();
    assert_eq!(rows[0].usage.completion_tokens, completion);
    server.shutdown().await.unwrap();
}
