//! The shared answer cache against a real `redis-server` this test starts on an ephemeral
//! loopback port: two servers (replicas) share what either paid the teacher for, keep answering
//! when Redis dies (uncached, counted in /metrics), and pick the cache back up when it returns.
//!
//! CI installs `redis-server` (scripts/test.sh); without it these tests fail with a message saying
//! so, unless `DISTILL_SKIP_REDIS=1` is set.

mod common;

use common::*;
use distill_serve::cache::{Cache, RedisCache};
use distill_serve::teach_escalator::TeachEscalator;
use distill_serve::{Escalator, RunningServer, ServerOptions};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `redis-server` on PATH; `None` (skip) only when DISTILL_SKIP_REDIS=1.
fn redis_binary() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("redis-server"))
            .find(|p| p.is_file())
    });
    match found {
        Some(p) => Some(p),
        None if std::env::var("DISTILL_SKIP_REDIS").as_deref() == Ok("1") => {
            eprintln!("skipping: redis-server is not installed and DISTILL_SKIP_REDIS=1");
            None
        }
        None => panic!(
            "redis-server is not installed, so the shared-cache tests cannot run. Install it \
             (Debian: apt-get install redis-server; scripts/test.sh does this when root) or set \
             DISTILL_SKIP_REDIS=1 to skip them."
        ),
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// One RESP command over a fresh connection; `None` when Redis is not answering.
fn redis_cmd(port: u16, args: &[&str]) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    (!line.is_empty()).then(|| line.trim_end().to_string())
}

/// A `redis-server` child on 127.0.0.1, persistence off, killed on drop.
struct Redis {
    child: Option<Child>,
    port: u16,
    bin: PathBuf,
}

impl Redis {
    fn start(bin: PathBuf) -> Self {
        let mut r = Redis {
            child: None,
            port: free_port(),
            bin,
        };
        r.restart();
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// (Re)starts the server on its port and waits until it answers PING.
    fn restart(&mut self) {
        let port = self.port.to_string();
        let mut child = Command::new(&self.bin)
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .args([
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if redis_cmd(self.port, &["PING"]).as_deref() == Some("+PONG") {
                break;
            }
            if let Some(status) = child.try_wait().unwrap() {
                let mut out = String::new();
                if let Some(mut o) = child.stdout.take() {
                    let _ = o.read_to_string(&mut out);
                }
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut out);
                }
                panic!("redis-server exited ({status}) before answering PING:\n{out}");
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING within 15 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20)); // poll interval, bounded by the deadline
        }
        self.child = Some(child);
    }

    /// Kills the server (no shutdown courtesy: this is the outage) and reaps it.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn teach_escalator(
    spec: &distill_core::TaskSpec,
    base_url: &str,
    state: &std::path::Path,
) -> Arc<dyn Escalator> {
    // No response cache in the teacher client: a repeat reaching the teacher would be billed,
    // so "no new billable call" proves the serve cache answered.
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

async fn replica(
    spec: &distill_core::TaskSpec,
    sim_url: &str,
    state: &std::path::Path,
    redis_url: &str,
) -> RunningServer {
    let cache = RedisCache::new(redis_url, Duration::from_secs(600)).unwrap();
    cache.check().await.expect("Redis reachable at start-up");
    let student = Arc::new(FixedStudent::new(spec.labels.names.clone(), None));
    start(
        vec![entry(
            "b77",
            student,
            Some(teach_escalator(spec, sim_url, state)),
        )],
        ServerOptions {
            threshold: 0.7,
            cache: Cache::Redis(Box::new(cache)),
            ..Default::default()
        },
    )
    .await
}

/// One chat completion; asserts 200 and returns the body.
async fn chat(http: &reqwest::Client, server: &RunningServer, text: &str) -> Value {
    let r = http
        .post(format!("{}/v1/chat/completions", server.url()))
        .json(&json!({"model": "b77", "messages": [{"role": "user", "content": text}]}))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body = r.text().await.unwrap();
    assert_eq!(status, 200, "{} answered {status}: {body}", server.url());
    serde_json::from_str(&body).unwrap()
}

async fn metric(http: &reqwest::Client, server: &RunningServer, name: &str) -> f64 {
    series(&metrics_text(http, server).await, name)
}

/// The sum of every series of one metric family.
async fn metric_sum(http: &reqwest::Client, server: &RunningServer, family: &str) -> f64 {
    let text = http
        .get(format!("{}/metrics", server.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) || l.starts_with(&format!("{family} ")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

const ERRORS: &str = "distill_cache_errors_total{cache=\"redis\"}";
const HITS: &str = "distill_cache_hits_total{model=\"b77\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_redis_cache_and_survive_its_outage() {
    let Some(bin) = redis_binary() else { return };
    let mut redis = Redis::start(bin);
    let dir = tempfile::tempdir().unwrap();
    let spec = banking_task(dir.path());
    let sim = distill_sim::SimServer::start(
        distill_sim::SimConfig::new(spec.clone()),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let a = replica(&spec, &sim.base_url(), dir.path(), &redis.url()).await;
    let b = replica(&spec, &sim.base_url(), dir.path(), &redis.url()).await;
    let http = reqwest::Client::new();

    let all = sample_texts(40);
    let (first, later) = all.split_at(12);
    let unsure = first.iter().filter(|t| !is_sure(t)).count();
    assert!(
        unsure > 0 && unsure < first.len(),
        "the sample needs both kinds"
    );

    // Server A answers: confident inputs from the student, unsure ones from the teacher.
    let mut labels = Vec::new();
    for t in first {
        let r = chat(&http, &a, t).await;
        let want = if is_sure(t) { "student" } else { "teacher" };
        assert_eq!(r["distill"]["source"], want, "{t}: {r}");
        labels.push(r["choices"][0]["message"]["content"].clone());
    }
    assert_eq!(sim.stats().billable as usize, unsure);
    let keys: i64 = redis_cmd(redis.port, &["DBSIZE"]).unwrap()[1..]
        .parse()
        .unwrap();
    assert_eq!(
        keys as usize,
        first.len(),
        "one Redis entry per answered input"
    );

    // Server B has never seen these inputs, yet answers every one from the shared cache and
    // the teacher is not asked again.
    for (t, label) in first.iter().zip(&labels) {
        let r = chat(&http, &b, t).await;
        assert_eq!(r["distill"]["source"], "cache", "{t}: {r}");
        assert_eq!(&r["choices"][0]["message"]["content"], label, "{t}");
    }
    assert_eq!(sim.stats().billable as usize, unsure, "B paid the teacher");
    assert_eq!(metric(&http, &b, HITS).await, first.len() as f64);
    assert_eq!(metric(&http, &a, ERRORS).await, 0.0);

    // Redis dies. Both replicas keep answering, uncached; no request fails.
    redis.kill();
    let mut after = 0usize;
    for (i, t) in later.iter().enumerate() {
        let server = if i % 2 == 0 { &a } else { &b };
        let r = chat(&http, server, t).await;
        let src = r["distill"]["source"].as_str().unwrap();
        let want = if is_sure(t) { "student" } else { "teacher" };
        assert_eq!(src, want, "{t}: {r}");
        after += usize::from(!is_sure(t));
    }
    // Inputs cached before the outage are recomputed, not failed.
    for t in &first[..4] {
        for server in [&a, &b] {
            let r = chat(&http, server, t).await;
            assert_ne!(r["distill"]["source"], "cache", "{r}");
        }
    }
    let paid = sim.stats().billable as usize;
    assert!(
        paid >= unsure + after,
        "unsure inputs still escalate: {paid}"
    );
    for server in [&a, &b] {
        let errors = metric(&http, server, ERRORS).await;
        assert!(errors >= 1.0, "{}: cache errors {errors}", server.url());
        let ready = http
            .get(format!("{}/readyz", server.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), 200);
    }
    for server in [&a, &b] {
        let refused = metric_sum(&http, server, "distill_http_errors_total").await;
        assert_eq!(refused, 0.0, "{}", server.url());
        assert!(metric_sum(&http, server, "distill_requests_total").await > 0.0);
    }

    // Redis comes back on the same port: the replicas reconnect (at most once a second, so
    // poll with a deadline) and share again.
    redis.restart();
    let sure = later.iter().find(|t| is_sure(t)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        chat(&http, &a, sure).await;
        if redis_cmd(redis.port, &["DBSIZE"]).as_deref() != Some(":0") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "A never wrote to the restarted Redis"
        );
        tokio::time::sleep(Duration::from_millis(100)).await; // poll interval
    }
    loop {
        let r = chat(&http, &b, sure).await;
        if r["distill"]["source"] == "cache" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B never read the restarted Redis"
        );
        tokio::time::sleep(Duration::from_millis(100)).await; // poll interval
    }

    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_is_reported_at_start_up() {
    // Nobody listens on this port.
    let port = free_port();
    let cache = RedisCache::new(
        &format!("redis://127.0.0.1:{port}"),
        Duration::from_secs(60),
    )
    .unwrap();
    let err = cache.check().await.unwrap_err();
    assert!(!err.is_empty());
    assert!(RedisCache::new("redis://user:pw@127.0.0.1:1", Duration::from_secs(1)).is_err());
    assert!(RedisCache::new("http://127.0.0.1:1", Duration::from_secs(1)).is_err());
}

/// Two gateway replicas over one Redis: a free-form answer one paid for is the other's cache
/// hit (streamed or not); with Redis down both keep answering, paying the upstream; once Redis
/// is back they share again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_replicas_share_answers_through_redis_and_survive_its_restart() {
    let Some(bin) = redis_binary() else { return };
    let mut redis = Redis::start(bin);
    let dir = tempfile::tempdir().unwrap();
    let spec = banking_task(dir.path());
    let sim = distill_sim::SimServer::start(
        distill_sim::SimConfig::new(spec.clone()),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let config = format!(
        "[[tier]]\nname = \"cheap\"\nprovider = \"openai\"\nmodel = \"gpt-4o-mini\"\nbase_url = \"{}\"\n\
         [[route]]\nname = \"auto\"\nmodels = [\"auto\"]\npolicy = \"fixed\"\ntier = \"cheap\"\n",
        sim.base_url()
    );
    let gw_replica = |state: std::path::PathBuf| {
        let config = config.clone();
        let url = redis.url();
        async move {
            let cfg = distill_serve::gateway::config::GatewayConfig::parse(
                &config,
                std::path::Path::new("gateway.toml"),
            )
            .unwrap();
            let gw = distill_serve::gateway::Gateway::new(
                &cfg,
                &distill_serve::gateway::GatewayOptions {
                    ledger_path: Some(state.join("ledger.db")),
                    ..Default::default()
                },
            )
            .unwrap();
            let cache = RedisCache::new(&url, Duration::from_secs(600)).unwrap();
            cache.check().await.unwrap();
            start(
                vec![],
                ServerOptions {
                    cache: Cache::Redis(Box::new(cache)),
                    gateway: Some(Arc::new(gw)),
                    ..Default::default()
                },
            )
            .await
        }
    };
    let a = gw_replica(dir.path().join("a")).await;
    let b = gw_replica(dir.path().join("b")).await;
    let http = reqwest::Client::new();
    let ask = |server: &RunningServer, text: &str, stream: bool| {
        let req = http
            .post(format!("{}/v1/chat/completions", server.url()))
            .json(&json!({"model": "auto", "stream": stream,
                          "messages": [{"role": "user", "content": text}]}));
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 200);
            let hit = r.headers()["x-distill-cache"] == "hit";
            let body = r.text().await.unwrap();
            (hit, body)
        }
    };

    let (hit, plain) = ask(&a, "Where is my card?", false).await;
    assert!(!hit);
    let (hit, again) = ask(&b, "Where is my card?", false).await;
    assert!(hit, "B answers from what A paid for: {again}");
    let content = |body: &str| -> String {
        let v: Value = serde_json::from_str(body).unwrap();
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(content(&plain), content(&again));
    // A stream A paid for is B's cache hit too, replayed as a stream.
    let (hit, _) = ask(&a, "I was charged twice", true).await;
    assert!(!hit);
    let (hit, replay) = ask(&b, "I was charged twice", true).await;
    assert!(hit && replay.contains("[DONE]"), "{replay}");
    assert_eq!(sim.stats().billable, 2);

    // Redis dies: both replicas keep answering, every request paid.
    redis.kill();
    for server in [&a, &b] {
        let (hit, _) = ask(server, "Where is my card?", false).await;
        assert!(!hit);
    }
    assert_eq!(sim.stats().billable, 4);
    assert!(metric(&http, &a, ERRORS).await >= 1.0);

    // Back on the same port: A's next answer lands in Redis (it reconnects at most once a
    // second, so poll with a deadline) and B reads it.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut i = 0;
    let text = loop {
        i += 1;
        let t = format!("Is my transfer {i} done?");
        ask(&a, &t, false).await;
        if redis_cmd(redis.port, &["DBSIZE"]).as_deref() != Some(":0") {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "A never wrote to the restarted Redis"
        );
        tokio::time::sleep(Duration::from_millis(100)).await; // poll interval
    };
    let (hit, _) = ask(&b, &text, false).await;
    assert!(hit, "shared again after the restart");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
