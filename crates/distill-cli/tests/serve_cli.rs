//! `distill serve` as a process: its flags, its refusals at start-up, and a graceful drain on
//! SIGTERM (the in-flight request is answered, then the process exits 0). Real parts only: a
//! linear student trained by `distill train` on a Banking77 slice, `distill sim-teacher` as the
//! slow teacher, HTTP over 127.0.0.1 on ports the processes pick themselves.

mod common;

use common::{banking77, http, start_serve, Proc};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_distill")
}

/// A task spec over the Banking77 labels and a linear model trained on every 5th training row,
/// built once per test binary.
struct Fixture {
    _dir: tempfile::TempDir,
    task: PathBuf,
    model: PathBuf,
    texts: Vec<String>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("serve_cli")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        let data = banking77();
        let task = dir.path().join("task.toml");
        std::fs::write(
            &task,
            format!(
                "name = \"banking77\"\nkind = \"classify\"\n[input]\npath = {:?}\ntext_column = \"text\"\n\
                 gold_column = \"category\"\n[labels]\nfile = {:?}\n[teacher]\nprovider = \"openai\"\n\
                 model = \"gpt-4o\"\n",
                data.join("train.csv").display().to_string(),
                data.join("categories.json").display().to_string(),
            ),
        )
        .unwrap();
        // Every 5th training row (the file is sorted by intent, so all 77 are present), as JSONL.
        let rows = csv_records(&std::fs::read_to_string(data.join("train.csv")).unwrap());
        let mut slice = String::new();
        let mut texts = Vec::new();
        for (i, r) in rows.iter().skip(1).enumerate() {
            if i % 5 == 0 {
                let line = serde_json::json!({"text": r[0], "category": r[1]});
                slice.push_str(&format!("{line}\n"));
                if texts.len() < 50 {
                    texts.push(r[0].clone());
                }
            }
        }
        let csv = dir.path().join("slice.jsonl");
        std::fs::write(&csv, slice).unwrap();
        let model = dir.path().join("b77-linear");
        let out = Command::new(bin())
            .args(["--quiet", "train", "--student", "linear", "--epochs", "3"])
            .arg("--task")
            .arg(&task)
            .arg("--data")
            .arg(&csv)
            .arg("--out")
            .arg(&model)
            .env("DISTILL_STATE_DIR", dir.path().join("state"))
            .output()
            .unwrap();
        assert!(out.status.success(), "distill train failed: {out:?}");
        Fixture {
            _dir: dir,
            task,
            model,
            texts,
        }
    })
}

/// RFC 4180 records (quoted fields may hold commas, quotes and newlines).
fn csv_records(text: &str) -> Vec<Vec<String>> {
    let (mut rows, mut row, mut field) = (Vec::new(), Vec::new(), String::new());
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    rows
}

fn chat_body(text: &str) -> String {
    serde_json::json!({"model": "b77", "messages": [{"role": "user", "content": text}]}).to_string()
}

fn run(args: &[&str], state: &Path) -> Output {
    Command::new(bin())
        .args(args)
        .env("DISTILL_STATE_DIR", state)
        .output()
        .unwrap()
}

#[test]
fn serve_help_lists_the_flags() {
    let state = tempfile::tempdir().unwrap();
    let out = run(&["serve", "--help"], state.path());
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--model",
        "--task",
        "--threshold",
        "--escalate-to",
        "--teacher-base-url",
        "--teacher-timeout-s",
        "--host",
        "--port",
        "--api-keys-file",
        "--cache",
        "--cache-ttl-s",
        "--budget",
        "--alert-webhook",
        "--shadow-rate",
        "--rate-limit",
        "--max-body-bytes",
        "--truncate",
        "--max-batch",
        "--batch-wait-ms",
        "--workers",
        "--device",
    ] {
        assert!(
            help.contains(flag),
            "`distill serve --help` lacks {flag}:\n{help}"
        );
    }
}

#[test]
fn serve_refuses_bad_start_up_settings_with_exit_1() {
    let state = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let dir = empty.path().to_str().unwrap();
    let out = run(&["serve", "--model", dir, "--port", "0"], state.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--model") && err.contains(dir) && err.contains("distill.json"),
        "unclear message: {err}"
    );

    let missing = empty.path().join("no-such-model");
    let out = run(
        &["serve", "--model", missing.to_str().unwrap(), "--port", "0"],
        state.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-model"));

    let f = fixture();
    let model = format!("b77={}", f.model.display());

    // A metrics.json whose cascades were tuned for other models: refused, not applied.
    let metrics = empty.path().join("metrics.json");
    std::fs::write(
        &metrics,
        serde_json::json!({"cascade": {"model": "head", "threshold": 0.31},
            "cascades": [{"model": "head", "model_path": "models/b77-head",
                          "model_sha256": "00ff", "threshold": 0.31}]})
        .to_string(),
    )
    .unwrap();
    let out = run(
        &[
            "serve",
            "--model",
            &model,
            "--port",
            "0",
            "--threshold",
            metrics.to_str().unwrap(),
        ],
        state.path(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no cascade for model `b77`") && err.contains("head"),
        "{err}"
    );

    let out = run(
        &[
            "serve",
            "--model",
            &model,
            "--threshold",
            "1.5",
            "--port",
            "0",
        ],
        state.path(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("threshold"), "{err}");
}

/// A free port below the kernel's ephemeral range, so that nothing (not the HTTP clients'
/// own outgoing connections) takes it before the Redis server this test starts later does.
fn free_port() -> u16 {
    let low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let span = low.saturating_sub(10_000).max(1);
    let start = (std::process::id() as u64 * 7919
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::from(d.subsec_nanos())))
        % u64::from(span);
    (0..span)
        .map(|k| 10_000 + ((start + u64::from(k)) % u64::from(span)) as u16)
        .find(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        .expect("no free port below the ephemeral range")
}

fn metric(addr: &str, name: &str) -> f64 {
    let (_, text) = http(addr, "GET", "/metrics", "").unwrap();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Redis down at start-up must not keep the service down: it starts, warns (plain text in a
/// log, no colour codes), answers uncached, and uses Redis once it is there.
#[test]
fn serve_starts_without_redis_and_picks_it_up_when_it_comes() {
    let f = fixture();
    let state = tempfile::tempdir().unwrap();
    let port = free_port();
    let cache = format!("redis://127.0.0.1:{port}");
    let model = format!("b77={}", f.model.display());
    let (proc, addr) = start_serve(&["--model", &model, "--cache", &cache], state.path());
    let log = proc.stderr.lock().unwrap().clone();
    assert!(log.contains("cannot reach Redis"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log file: {log:?}"
    );
    let body = chat_body(&f.texts[0]);
    for _ in 0..2 {
        let (status, text) = http(&addr, "POST", "/v1/chat/completions", &body).unwrap();
        assert_eq!(status, 200, "{text}");
    }
    assert_eq!(metric(&addr, "distill_cache_hits_total"), 0.0);

    let Some(redis_bin) = which("redis-server") else {
        if std::env::var("DISTILL_SKIP_REDIS").as_deref() == Ok("1") {
            eprintln!("skipping the reconnect half: redis-server is not installed");
            return;
        }
        panic!("redis-server is not installed (scripts/test.sh installs it; DISTILL_SKIP_REDIS=1 skips)");
    };
    let redis = Command::new(redis_bin)
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _redis = Proc {
        child: redis,
        stderr: Arc::new(Mutex::new(String::new())),
    };
    // Reconnection is tried at most once a second: ask until an answer comes from Redis.
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&addr, "distill_cache_hits_total") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "never used Redis: {}",
            proc.stderr.lock().unwrap()
        );
        let (status, _) = http(&addr, "POST", "/v1/chat/completions", &body).unwrap();
        assert_eq!(status, 200);
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Wrong methods and malformed fields get OpenAI-shaped errors.
#[test]
fn wrong_method_and_bad_stream_get_openai_errors() {
    let f = fixture();
    let state = tempfile::tempdir().unwrap();
    let model = format!("b77={}", f.model.display());
    let (_proc, addr) = start_serve(&["--model", &model], state.path());
    let (status, body) = http(&addr, "GET", "/v1/chat/completions", "").unwrap();
    assert_eq!(status, 405);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error", "{body}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("GET"),
        "{body}"
    );
    let bad = serde_json::json!({"model": "b77", "stream": "yes",
        "messages": [{"role": "user", "content": "hi"}]});
    let (status, body) = http(&addr, "POST", "/v1/chat/completions", &bad.to_string()).unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("stream"), "{body}");
    for empty in ["", "   \n\t "] {
        let (status, body) =
            http(&addr, "POST", "/v1/chat/completions", &chat_body(empty)).unwrap();
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("empty"), "{body}");
    }
}

#[cfg(unix)]
#[test]
fn sigterm_drains_the_in_flight_request_then_exits_0() {
    let f = fixture();
    let state = tempfile::tempdir().unwrap();
    // A slow teacher: every answer takes 2 s, so a request is provably in flight when we signal.
    let mut sim = Command::new(bin())
        .args([
            "--quiet",
            "sim-teacher",
            "--port",
            "0",
            "--latency-ms",
            "2000",
        ])
        .args(["--error-rate", "0", "--accuracy", "1"])
        .arg("--task")
        .arg(&f.task)
        .env("DISTILL_STATE_DIR", state.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(sim.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let sim = Proc {
        child: sim,
        stderr: Default::default(),
    };
    let teacher_url = first.trim().to_string();
    assert!(
        teacher_url.starts_with("http://127.0.0.1:"),
        "{teacher_url}"
    );
    let sim_addr = teacher_url
        .trim_start_matches("http://")
        .trim_end_matches("/v1")
        .to_string();

    let model = format!("b77={}", f.model.display());
    // Threshold 1: every input escalates to the (slow) teacher.
    let (mut serve, addr) = start_serve(
        &[
            "--model",
            &model,
            "--task",
            f.task.to_str().unwrap(),
            "--teacher-base-url",
            &teacher_url,
            "--threshold",
            "1",
            "--cache",
            "off",
        ],
        state.path(),
    );
    let (status, _) = http(&addr, "GET", "/readyz", "").unwrap();
    assert_eq!(status, 200);

    let text = f.texts[0].clone();
    let a = addr.clone();
    let in_flight = std::thread::spawn(move || {
        let r = http(&a, "POST", "/v1/chat/completions", &chat_body(&text));
        (r, Instant::now())
    });
    // Wait until the teacher has the request: then it is in flight inside the server.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, stats) = http(&sim_addr, "GET", "/stats", "").unwrap();
        let v: serde_json::Value = serde_json::from_str(&stats).unwrap();
        if v["requests"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the teacher never got the request"
        );
        std::thread::sleep(Duration::from_millis(10)); // poll interval
    }
    let signalled = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &serve.child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());

    // New work is refused (503 while draining, or the listener is already closed) …
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match http(&addr, "GET", "/readyz", "") {
            Ok((503, _)) | Err(_) => break,
            Ok(_) => {}
        }
        assert!(Instant::now() < deadline, "still ready after SIGTERM");
        std::thread::sleep(Duration::from_millis(10)); // poll interval
    }
    // … while the in-flight request is answered in full, by the teacher.
    let (r, answered) = in_flight.join().unwrap();
    assert!(
        answered > signalled,
        "the request was not in flight at SIGTERM"
    );
    let (status, body) = r.expect("in-flight request failed");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["distill"]["source"], "teacher", "{v}");
    assert!(v["choices"][0]["message"]["content"].is_string());

    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(s) = serve.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "serve did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20)); // poll interval
    };
    assert_eq!(code.code(), Some(0), "{}", serve.stderr.lock().unwrap());
    // Give the reader thread the last lines: it ends at EOF, which exit guarantees.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !serve.stderr.lock().unwrap().contains("stopped") {
        assert!(
            Instant::now() < deadline,
            "{}",
            serve.stderr.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(sim);
}
