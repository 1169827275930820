//! End-to-end tests of the simulated teacher over real HTTP on 127.0.0.1, with a Banking77
//! slice as the gold file.

use distill_core::TaskSpec;
use distill_sim::{SimConfig, SimServer};
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn banking_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/datasets/banking77")
}

/// A Banking77 task over the first `rows` rows of train.csv, in a temp dir.
fn task(dir: &Path, rows: usize) -> TaskSpec {
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
    let spec = r#"
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
system_prompt = "You label customer messages sent to an online bank with their intent. Reply with JSON only: {\"label\": \"<label>\"}."
user_template = "Labels:\n{labels}\nMessage: {text}"
"#;
    std::fs::write(dir.join("task.toml"), spec).unwrap();
    TaskSpec::load(dir.join("task.toml")).unwrap()
}

fn gold_rows(dir: &Path) -> Vec<(String, String)> {
    let mut rdr = csv::Reader::from_path(dir.join("train.csv")).unwrap();
    let mut seen = HashSet::new();
    rdr.records()
        .map(|r| r.unwrap())
        .map(|r| (r[0].to_string(), r[1].to_string()))
        .filter(|(t, _)| seen.insert(t.clone()))
        .collect()
}

async fn start(config: SimConfig) -> SimServer {
    SimServer::start(config, SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap()
}

fn chat_body(task: &TaskSpec, text: &str) -> Value {
    json!({
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": task.teacher.system_prompt},
            {"role": "user", "content": task.render_user(text)}
        ],
        "max_tokens": 24,
        "response_format": {"type": "json_schema", "json_schema": {"name": "label", "strict": true, "schema": task.output_schema()}}
    })
}

async fn post(client: &reqwest::Client, url: &str, body: &Value) -> reqwest::Response {
    client
        .post(url)
        .bearer_auth("sk-test")
        .json(body)
        .send()
        .await
        .unwrap()
}

fn label_of(resp: &Value) -> String {
    let content = resp["choices"][0]["message"]["content"].as_str().unwrap();
    let v: Value = serde_json::from_str(content).unwrap();
    v["label"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_accurate_deterministic_and_systematically_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let task = task(dir.path(), 2300);
    let rows: Vec<_> = gold_rows(dir.path()).into_iter().take(2000).collect();
    assert!(rows.len() >= 1900, "{}", rows.len());
    let sim = start(SimConfig::new(task.clone())).await;
    let url = format!("{}/chat/completions", sim.base_url());
    let client = reqwest::Client::new();

    let answers: Vec<(String, String, Value)> = futures::stream::iter(rows.iter().cloned())
        .map(|(text, gold)| {
            let (client, url, body) = (client.clone(), url.clone(), chat_body(&task, &text));
            async move {
                let r = post(&client, &url, &body).await;
                assert_eq!(r.status(), 200);
                (text, gold, r.json::<Value>().await.unwrap())
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;

    let correct = answers.iter().filter(|(_, g, r)| &label_of(r) == g).count();
    let accuracy = correct as f64 / answers.len() as f64;
    assert!((accuracy - 0.94).abs() < 0.025, "accuracy {accuracy}");

    // Wrong answers concentrate on one confusable label per gold label.
    let mut errors: HashMap<String, HashMap<String, usize>> = HashMap::new();
    for (_, g, r) in &answers {
        let l = label_of(r);
        assert!(task.labels.contains(&l), "{l} is not a label");
        if &l != g {
            *errors.entry(g.clone()).or_default().entry(l).or_default() += 1;
        }
    }
    let total: usize = errors.values().flat_map(|m| m.values()).sum();
    let top: usize = errors.values().map(|m| *m.values().max().unwrap()).sum();
    assert!(total > 50, "too few errors to judge: {total}");
    assert!(
        top as f64 / total as f64 > 0.6,
        "errors are not systematic: {top} of {total} on the top confusion"
    );

    // Usage is counted, and the same question gets the same answer.
    let usage = &answers[0].2["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 300, "{usage}");
    assert!(usage["completion_tokens"].as_u64().unwrap() >= 4, "{usage}");
    assert!(usage["prompt_tokens_details"]["cached_tokens"].is_u64());
    assert!(usage["completion_tokens_details"]["reasoning_tokens"].is_u64());
    for (text, _, first) in answers.iter().take(100) {
        let again = post(&client, &url, &chat_body(&task, text)).await;
        assert_eq!(label_of(&again.json().await.unwrap()), label_of(first));
    }

    let stats = sim.stats();
    assert_eq!(stats.billable, answers.len() as u64 + 100);
    assert_eq!(stats.unique_billable, answers.len() as u64);
    assert_eq!(stats.duplicates, 100);
    assert_eq!(stats.max_billed_per_request, 2);
    assert!(stats.cost_usd > 0.0);
    sim.shutdown().await;
}

#[tokio::test]
async fn prompt_tokens_match_the_real_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let task = task(dir.path(), 300);
    let oracle = distill_sim::oracle::Oracle::new(&SimConfig::new(task.clone())).unwrap();
    let bpe = tiktoken_rs::o200k_base().unwrap();
    for (text, _) in gold_rows(dir.path()) {
        let msg = task.render_user(&text);
        assert_eq!(
            oracle.tokens.count(&msg),
            bpe.encode_ordinary(&msg).len(),
            "{text}"
        );
    }
}

#[tokio::test]
async fn injected_errors_carry_retry_after_and_are_not_billed() {
    let dir = tempfile::tempdir().unwrap();
    let task = task(dir.path(), 50);
    let mut config = SimConfig::new(task.clone());
    config.error_rate = 1.0;
    config.retry_after_ms = 250;
    let sim = start(config).await;
    let url = format!("{}/chat/completions", sim.base_url());
    let client = reqwest::Client::new();
    let (mut n429, mut n500) = (0, 0);
    for _ in 0..40 {
        let r = post(
            &client,
            &url,
            &chat_body(&task, "I am still waiting on my card?"),
        )
        .await;
        match r.status().as_u16() {
            429 => {
                n429 += 1;
                assert_eq!(r.headers()["retry-after-ms"], "250");
                assert_eq!(r.headers()["retry-after"], "1");
                let body: Value = r.json().await.unwrap();
                assert_eq!(body["error"]["code"], "rate_limit_exceeded");
            }
            500 => {
                n500 += 1;
                let body: Value = r.json().await.unwrap();
                assert_eq!(body["error"]["type"], "server_error");
            }
            s => panic!("unexpected status {s}"),
        }
    }
    assert!(n429 > 5 && n500 > 5, "429: {n429}, 500: {n500}");
    let stats = sim.stats();
    assert_eq!(stats.billable, 0);
    assert_eq!(stats.errors_injected.rate_limited_429, n429);
    assert_eq!(stats.errors_injected.server_error_500, n500);
    assert_eq!(stats.status.get("429").copied(), Some(n429));
    assert_eq!(stats.requests, 40);
}

#[tokio::test]
async fn retries_eventually_succeed_at_a_partial_error_rate() {
    let dir = tempfile::tempdir().unwrap();
    let task = task(dir.path(), 50);
    let mut config = SimConfig::new(task.clone());
    config.error_rate = 0.5;
    let sim = start(config).await;
    let url = format!("{}/chat/completions", sim.base_url());
    let client = reqwest::Client::new();
    for (text, _) in gold_rows(dir.path()).into_iter().take(20) {
        let mut attempts = 0;
        loop {
            attempts += 1;
            assert!(attempts < 60, "never succeeded");
            if post(&client, &url, &chat_body(&task, &text)).await.status() == 200 {
                break;
            }
        }
    }
    let stats = sim.stats();
    assert_eq!(stats.billable, 20);
    assert_eq!(stats.duplicates, 0);
}

#[tokio::test]
async fn invalid_replies_are_repaired_by_a_second_turn() {
    let dir = tempfile::tempdir().unwrap();
    let task = task(dir.path(), 50);
    let mut config = SimConfig::new(task.clone());
    config.invalid_rate = 1.0;
    let sim = start(config).await;
    let url = format!("{}/chat/completions", sim.base_url());
    let client = reqwest::Client::new();
    let text = "What can I do if my card still hasn't arrived after 2 weeks?";
    let body = chat_body(&task, text);
    let first: Value = post(&client, &url, &body).await.json().await.unwrap();
    let raw = first["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let valid = serde_json::from_str::<Value>(&raw)
        .ok()
        .and_then(|v| v["label"].as_str().map(|l| task.labels.contains(l)))
        .unwrap_or(false);
    assert!(!valid, "expected an invalid reply, got {raw}");

    let mut repair = body.clone();
    let msgs = repair["messages"].as_array_mut().unwrap();
    msgs.push(json!({"role": "assistant", "content": raw}));
    msgs.push(json!({"role": "user", "content": "That is not one of the allowed labels. Reply with JSON {\"label\": ...} using one label from the list."}));
    let fixed: Value = post(&client, &url, &repair).await.json().await.unwrap();
    assert!(task.labels.contains(&label_of(&fixed)));
    let stats = sim.stats();
    assert_eq!(stats.errors_injected.invalid_replies, 1);
    assert_eq!(stats.billable, 2);
    assert_eq!(
        stats.unique_billable, 2,
        "a repair turn is a different request"
    );
}

async fn poll<F: Fn(&Value) -> bool>(
    client: &reqwest::Client,
    url: &str,
    anthropic: bool,
    done: F,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut req = client.get(url);
        req = if anthropic {
            req.header("x-api-key", "k")
                .header("anthropic-version", "2023-06-01")
        } else {
            req.bearer_auth("k")
        };
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "batch did not finish: {v}");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn openai_batch_round_trip_with_partial_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let task = task(dir.path(), 100);
    let mut config = SimConfig::new(task.clone());
    config.batch_expire_after = Some(30);
    config.batch_completion_ms = 50;
    let sim = start(config).await;
    let base = sim.base_url();
    let client = reqwest::Client::new();
    let rows: Vec<_> = gold_rows(dir.path()).into_iter().take(50).collect();
    let mut jsonl = String::new();
    for (i, (text, _)) in rows.iter().enumerate() {
        let line = json!({"custom_id": format!("row-{i}"), "method": "POST", "url": "/v1/chat/completions", "body": chat_body(&task, text)});
        jsonl.push_str(&line.to_string());
        jsonl.push('\n');
    }
    let form = reqwest::multipart::Form::new()
        .text("purpose", "batch")
        .part(
            "file",
            reqwest::multipart::Part::bytes(jsonl.into_bytes()).file_name("in.jsonl"),
        );
    let file: Value = client
        .post(format!("{base}/files"))
        .bearer_auth("k")
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(file["object"], "file");
    assert_eq!(file["purpose"], "batch");
    let fid = file["id"].as_str().unwrap();
    let got: Value = client
        .get(format!("{base}/files/{fid}"))
        .bearer_auth("k")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["id"], fid);

    let batch: Value = post(
        &client,
        &format!("{base}/batches"),
        &json!({"input_file_id": fid, "endpoint": "/v1/chat/completions", "completion_window": "24h"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(batch["status"], "in_progress", "{batch}");
    let id = batch["id"].as_str().unwrap();
    let done = poll(&client, &format!("{base}/batches/{id}"), false, |v| {
        ["completed", "expired", "failed", "cancelled"]
            .contains(&v["status"].as_str().unwrap_or(""))
    })
    .await;
    assert_eq!(done["status"], "expired", "{done}");
    assert_eq!(done["request_counts"]["total"], 50);
    assert_eq!(done["request_counts"]["completed"], 30);

    let fetch = |fid: String| {
        let client = client.clone();
        let base = base.clone();
        async move {
            client
                .get(format!("{base}/files/{fid}/content"))
                .bearer_auth("k")
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    let out = fetch(done["output_file_id"].as_str().unwrap().to_string()).await;
    let err = fetch(done["error_file_id"].as_str().unwrap().to_string()).await;
    let mut ids = HashSet::new();
    for l in out.lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["response"]["status_code"], 200);
        assert!(task.labels.contains(&label_of(&v["response"]["body"])));
        assert!(
            v["response"]["body"]["usage"]["prompt_tokens"]
                .as_u64()
                .unwrap()
                > 0
        );
        assert!(ids.insert(v["custom_id"].as_str().unwrap().to_string()));
    }
    for l in err.lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["error"]["code"], "batch_expired");
        assert!(v["response"].is_null());
        assert!(ids.insert(v["custom_id"].as_str().unwrap().to_string()));
    }
    assert_eq!(out.lines().count(), 30);
    assert_eq!(ids.len(), 50, "every request is in exactly one file");
    let stats = sim.stats();
    assert_eq!(stats.billable, 30);
    assert_eq!(stats.batches.requests, 50);
    assert_eq!(stats.batches.expired, 20);
}

#[tokio::test]
async fn openai_batch_rejects_bad_lines_and_can_be_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let task = task(dir.path(), 20);
    let mut config = SimConfig::new(task.clone());
    config.batch_completion_ms = 60_000;
    let sim = start(config).await;
    let base = sim.base_url();
    let client = reqwest::Client::new();
    let upload = |body: String| {
        let client = client.clone();
        let base = base.clone();
        async move {
            let form = reqwest::multipart::Form::new()
                .text("purpose", "batch")
                .part(
                    "file",
                    reqwest::multipart::Part::bytes(body.into_bytes()).file_name("b.jsonl"),
                );
            let v: Value = client
                .post(format!("{base}/files"))
                .bearer_auth("k")
                .multipart(form)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["id"].as_str().unwrap().to_string()
        }
    };
    let line = |id: &str| {
        json!({"custom_id": id, "method": "POST", "url": "/v1/chat/completions", "body": chat_body(&task, "hello")}).to_string()
    };
    let dup = upload(format!("{}\n{}\n", line("a"), line("a"))).await;
    let b: Value = post(&client, &format!("{base}/batches"), &json!({"input_file_id": dup, "endpoint": "/v1/chat/completions", "completion_window": "24h"})).await.json().await.unwrap();
    assert_eq!(b["status"], "failed");
    assert_eq!(b["errors"]["data"][0]["code"], "duplicate_custom_id");
    assert_eq!(b["errors"]["data"][0]["line"], 2);

    let ok = upload(format!("{}\n{}\n", line("a"), line("b"))).await;
    let b: Value = post(&client, &format!("{base}/batches"), &json!({"input_file_id": ok, "endpoint": "/v1/chat/completions", "completion_window": "24h"})).await.json().await.unwrap();
    let id = b["id"].as_str().unwrap();
    let c: Value = client
        .post(format!("{base}/batches/{id}/cancel"))
        .bearer_auth("k")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(c["status"], "cancelling");
    let done = poll(&client, &format!("{base}/batches/{id}"), false, |v| {
        v["status"] == "cancelled"
    })
    .await;
    assert!(done["output_file_id"].is_null());
    assert_eq!(sim.stats().billable, 0);
}

fn anthropic_body(task: &TaskSpec, text: &str) -> Value {
    json!({
        "model": "claude-haiku-4-5",
        "max_tokens": 24,
        "system": [{"type": "text", "text": task.teacher.system_prompt, "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": task.render_user(text)}]}],
        "output_config": {"format": {"type": "json_schema", "schema": task.output_schema()}}
    })
}

#[tokio::test]
async fn anthropic_messages_and_batches() {
    let dir = tempfile::tempdir().unwrap();
    let task = task(dir.path(), 100);
    let mut config = SimConfig::new(task.clone());
    config.price_as = "claude-haiku-4-5".into();
    config.batch_completion_ms = 20;
    config.batch_expire_after = Some(3);
    let sim = start(config).await;
    let base = sim.base_url();
    let client = reqwest::Client::new();
    let rows = gold_rows(dir.path());
    let send = |body: Value, version: bool| {
        let mut r = client
            .post(format!("{base}/messages"))
            .header("x-api-key", "k");
        if version {
            r = r.header("anthropic-version", "2023-06-01");
        }
        r.json(&body).send()
    };
    let r = send(anthropic_body(&task, &rows[0].0), true).await.unwrap();
    assert_eq!(r.status(), 200);
    let m: Value = r.json().await.unwrap();
    assert_eq!(m["type"], "message");
    assert_eq!(m["role"], "assistant");
    assert_eq!(m["content"][0]["type"], "text");
    let v: Value = serde_json::from_str(m["content"][0]["text"].as_str().unwrap()).unwrap();
    assert!(task.labels.contains(v["label"].as_str().unwrap()));
    for k in [
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    ] {
        assert!(m["usage"][k].is_u64(), "{k}: {m}");
    }
    assert!(m["usage"]["input_tokens"].as_u64().unwrap() > 100);

    let r = send(anthropic_body(&task, &rows[0].0), false)
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["type"], "error");
    assert_eq!(e["error"]["type"], "invalid_request_error");

    let requests: Vec<Value> = rows
        .iter()
        .take(5)
        .enumerate()
        .map(|(i, (t, _))| json!({"custom_id": format!("r-{i}"), "params": anthropic_body(&task, t)}))
        .collect();
    let b: Value = client
        .post(format!("{base}/messages/batches"))
        .header("x-api-key", "k")
        .header("anthropic-version", "2023-06-01")
        .json(&json!({"requests": requests}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(b["type"], "message_batch");
    assert_eq!(b["processing_status"], "in_progress");
    assert_eq!(b["request_counts"]["processing"], 5);
    let id = b["id"].as_str().unwrap();
    let done = poll(
        &client,
        &format!("{base}/messages/batches/{id}"),
        true,
        |v| v["processing_status"] == "ended",
    )
    .await;
    assert_eq!(done["request_counts"]["succeeded"], 3);
    assert_eq!(done["request_counts"]["expired"], 2);
    let results = client
        .get(done["results_url"].as_str().unwrap())
        .header("x-api-key", "k")
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let kinds: Vec<String> = results
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["result"]["type"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(kinds.iter().filter(|k| *k == "succeeded").count(), 3);
    assert_eq!(kinds.iter().filter(|k| *k == "expired").count(), 2);
    assert_eq!(sim.stats().billable, 4);
}

#[tokio::test]
async fn stats_count_duplicates_and_reset() {
    let dir = tempfile::tempdir().unwrap();
    let task = task(dir.path(), 20);
    let sim = start(SimConfig::new(task.clone())).await;
    let base = sim.base_url();
    let client = reqwest::Client::new();
    let url = format!("{base}/chat/completions");
    for text in ["a", "b", "a"] {
        assert_eq!(
            post(&client, &url, &chat_body(&task, text)).await.status(),
            200
        );
    }
    let r = client
        .post(&url)
        .json(&chat_body(&task, "a"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "no API key");
    let origin = base.trim_end_matches("/v1");
    let s: distill_sim::Stats = client
        .get(format!("{origin}/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(s.billable, 3);
    assert_eq!(s.unique_billable, 2);
    assert_eq!(s.duplicates, 1);
    assert_eq!(s.duplicate_hashes.len(), 1);
    assert_eq!(s.status.get("401").copied(), Some(1));
    assert_eq!(s.status.get("200").copied(), Some(3));
    let models: Value = client
        .get(format!("{base}/models"))
        .bearer_auth("k")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "gpt-4o");
    assert_eq!(
        client
            .post(format!("{origin}/stats/reset"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        sim.stats(),
        distill_sim::Stats {
            price_as: "gpt-4o".into(),
            ..Default::default()
        }
    );
}

#[test]
fn bad_configuration_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let task = task(dir.path(), 20);
    let mut c = SimConfig::new(task.clone());
    c.accuracy = 1.5;
    let e = SimServer::spawn(c).err().unwrap().to_string();
    assert!(
        e.contains("accuracy") && e.contains("between 0 and 1"),
        "{e}"
    );

    std::fs::write(
        dir.path().join("bad.csv"),
        "text,category\nhello,card_arrival\nhi,no_such_label\n",
    )
    .unwrap();
    let mut c = SimConfig::new(task.clone());
    c.gold = Some(dir.path().join("bad.csv"));
    let e = SimServer::spawn(c).err().unwrap().to_string();
    assert!(
        e.contains("bad.csv:3") && e.contains("category") && e.contains("no_such_label"),
        "{e}"
    );

    std::fs::write(
        dir.path().join("nogold.csv"),
        "text,label\nhello,card_arrival\n",
    )
    .unwrap();
    let mut c = SimConfig::new(task.clone());
    c.gold = Some(dir.path().join("nogold.csv"));
    let e = SimServer::spawn(c).err().unwrap().to_string();
    assert!(e.contains("nogold.csv:1") && e.contains("category"), "{e}");

    // The blocking handle serves and stops on drop.
    let h = SimServer::spawn(SimConfig::new(task)).unwrap();
    let addr = h.addr();
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    drop(h);
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still listening after drop"
    );
}

/// With no `--gold`, the task's test file is gold too: teaching the test set (as quickstart and
/// eval do) gets the configured accuracy, not the answers for unknown texts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_file_is_gold_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = task(dir.path(), 50);
    let src = std::fs::read_to_string(banking_dir().join("test.csv")).unwrap();
    let mut rdr = csv::Reader::from_reader(src.as_bytes());
    let mut w = csv::Writer::from_path(dir.path().join("test.csv")).unwrap();
    w.write_record(["text", "category"]).unwrap();
    let mut rows = Vec::new();
    for r in rdr.records().take(400) {
        let r = r.unwrap();
        rows.push((r[0].to_string(), r[1].to_string()));
        w.write_record(&r).unwrap();
    }
    w.flush().unwrap();
    spec.input.test_path = Some(dir.path().join("test.csv"));
    let mut cfg = SimConfig::new(spec.clone());
    cfg.accuracy = 1.0;
    let sim = start(cfg).await;
    let url = format!("{}/chat/completions", sim.base_url());
    let client = reqwest::Client::new();
    let mut correct = 0;
    for (text, gold) in &rows {
        let r = post(&client, &url, &chat_body(&spec, text)).await;
        assert_eq!(r.status(), 200);
        correct += (label_of(&r.json::<Value>().await.unwrap()) == *gold) as usize;
    }
    assert_eq!(
        correct,
        rows.len(),
        "every test text answered with its gold label"
    );
}
