//! Paths and data slices shared by the CLI tests.
#![allow(dead_code)] // each test binary uses its own subset

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The Banking77 data: the set-up script's copy in `datasets/`, else `../shared/datasets/`.
pub fn banking77() -> PathBuf {
    let local = repo().join("datasets/banking77");
    if local.join("train.csv").is_file() {
        local
    } else {
        repo().join("../shared/datasets/banking77")
    }
}

/// Every `step`-th line of a MixSNIPS file, as is (the files are grouped by intent mix: a
/// spread slice keeps every intent present); returns how many lines it wrote.
pub fn mixsnips_every_nth(file: &str, dst: &Path, step: usize) -> usize {
    let src = repo().join("../shared/datasets/mixsnips").join(file);
    let text = std::fs::read_to_string(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    let lines: Vec<&str> = text.lines().step_by(step).collect();
    std::fs::write(dst, lines.join("\n") + "\n").unwrap();
    lines.len()
}

/// A JSON file (a model's `distill.json`, an eval's `metrics.json`), parsed.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The worked MixSNIPS multilabel spec and its label file, copied into `dir`.
pub fn mixsnips_task(dir: &Path) {
    worked_task(
        dir,
        "mixsnips",
        &repo().join("../shared/datasets/mixsnips/intents.json"),
    );
}

/// The worked Banking77 spec and its label file, copied into `dir` (`task.toml`).
pub fn banking77_task(dir: &Path) {
    worked_task(dir, "banking77", &banking77().join("categories.json"));
}

/// `datasets/<example>/task.toml` and the label file it names (`labels`), copied into `dir`.
fn worked_task(dir: &Path, example: &str, labels: &Path) {
    std::fs::copy(labels, dir.join(labels.file_name().unwrap())).unwrap();
    std::fs::copy(
        repo().join(format!("datasets/{example}/task.toml")),
        dir.join("task.toml"),
    )
    .unwrap();
}

/// The base encoder scripts/setup.sh installs (all-MiniLM-L6-v2); fails the test when missing.
pub fn minilm() -> PathBuf {
    let base = repo().join("models/base/all-MiniLM-L6-v2");
    assert!(
        base.join("model.safetensors").is_file(),
        "{} missing: run scripts/setup.sh",
        base.display()
    );
    base
}

/// The header and the first `rows` records of a CSV (Banking77 has quoted multi-line fields,
/// so records are cut with a quote-aware scan, not by lines).
pub fn head_csv(src: &Path, dst: &Path, rows: usize) {
    let text = std::fs::read_to_string(src).unwrap();
    let (mut quoted, mut records, mut end) = (false, 0usize, text.len());
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '\n' if !quoted => {
                records += 1;
                if records == rows.saturating_add(1) {
                    end = i + 1;
                    break;
                }
            }
            _ => {}
        }
    }
    std::fs::write(dst, &text[..end]).unwrap();
}

/// The header and every `step`-th record of a CSV (Banking77 is sorted by label: a spread
/// slice keeps every label present).
pub fn every_nth_csv(src: &Path, dst: &Path, step: usize) -> usize {
    let mut rdr = csv::Reader::from_path(src).unwrap();
    let mut w = csv::Writer::from_path(dst).unwrap();
    w.write_record(rdr.headers().unwrap()).unwrap();
    let mut n = 0;
    for (i, rec) in rdr.records().enumerate() {
        if i % step == 0 {
            w.write_record(&rec.unwrap()).unwrap();
            n += 1;
        }
    }
    w.flush().unwrap();
    n
}

/// `distill ARGS` run in `dir`, quiet, with its state in `dir/state` and no provider keys from
/// the environment (a test must never reach a real provider).
pub fn distill_in(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_distill"))
        .current_dir(dir)
        .args(["--state-dir", "state", "-q"])
        .args(args)
        .env_remove("OPENAI_API_KEY")
        .env_remove("TOGETHER_API_KEY")
        .output()
        .unwrap()
}

/// [`distill_in`], asserting it succeeded (its stdout and stderr are the message).
pub fn distill_ok(dir: &Path, args: &[&str]) -> std::process::Output {
    let o = distill_in(dir, args);
    assert!(
        o.status.success(),
        "distill {args:?}: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// The arguments of `distill teach --task TASK` of `input` into `out` through a (sim) teacher
/// at `url`, without the real account's rate limits, then `extra`.
pub fn teach_args<'a>(
    task: &'a str,
    input: &'a str,
    out: &'a str,
    url: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "teach",
        "--task",
        task,
        "--input",
        input,
        "--out",
        out,
        "--base-url",
        url,
        "--rpm",
        "0",
        "--tpm",
        "0",
    ];
    args.extend_from_slice(extra);
    args
}

/// [`teach_args`] run with 32 concurrent requests; asserts it succeeded.
pub fn teach_via(
    dir: &Path,
    task: &str,
    input: &str,
    out: &str,
    url: &str,
) -> std::process::Output {
    distill_ok(
        dir,
        &teach_args(task, input, out, url, &["--concurrency", "32"]),
    )
}

/// `$DISTILL_TEST_PYTHON` (else `python3`) when it can import scikit-learn; a set variable that
/// cannot is an error, not a skip.
pub fn python_with_sklearn() -> Option<String> {
    python_with("sklearn")
}

/// `$DISTILL_TEST_PYTHON` (else `python3`) when it can import `module`; a set variable that
/// cannot is an error, not a skip (scripts/test.sh installs what the tests import).
pub fn python_with(module: &str) -> Option<String> {
    let explicit = std::env::var("DISTILL_TEST_PYTHON").ok();
    let py = explicit.clone().unwrap_or_else(|| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", &format!("import {module}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok && explicit.is_some() {
        panic!("DISTILL_TEST_PYTHON={py} cannot import {module}");
    }
    ok.then_some(py)
}

/// GET a JSON body over a plain connection (the sim-teacher's `/stats`).
pub fn get_json(url: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(
        s,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let body = raw.split_once("\r\n\r\n").unwrap().1;
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Starts `distill sim-teacher --task TASK --port 0 --latency-ms 0 ARGS` in `dir`; returns it
/// and the base URL it prints first.
pub fn sim_teacher(dir: &Path, task: &str, args: &[&str]) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut sim = std::process::Command::new(env!("CARGO_BIN_EXE_distill"))
        .current_dir(dir)
        .args(["-q", "sim-teacher", "--task", task, "--port", "0"])
        .args(["--latency-ms", "0"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut url = String::new();
    std::io::BufReader::new(sim.stdout.take().unwrap())
        .read_line(&mut url)
        .unwrap();
    (sim, url.trim().to_string())
}

/// A child process killed (and reaped) when dropped, so a failed assertion leaves nothing behind.
pub struct Proc {
    pub child: Child,
    pub stderr: Arc<Mutex<String>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `distill serve ARGS --port 0` with its state in `state`, stderr piped.
fn serve_command(args: &[&str], state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_distill"));
    c.arg("serve")
        .args(args)
        .args(["--port", "0"])
        .env("DISTILL_STATE_DIR", state)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// Starts `distill serve ARGS --port 0` and waits for the line that names its address.
pub fn start_serve(args: &[&str], state: &Path) -> (Proc, String) {
    let mut child = serve_command(args, state).spawn().unwrap();
    let stderr = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = mpsc::channel();
    let pipe = child.stderr.take().unwrap();
    let log = stderr.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if let Some(addr) = line.split("listening on http://").nth(1) {
                let _ = tx.send(addr.trim().to_string());
            }
            let mut l = log.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    let proc = Proc { child, stderr };
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| {
            panic!(
                "distill serve did not report its address:\n{}",
                proc.stderr.lock().unwrap()
            )
        });
    (proc, addr)
}

/// Runs `distill serve ARGS --port 0`, which must exit 1 before it listens; returns its
/// stderr. A server that starts instead is killed after a minute and fails the test.
pub fn serve_refused(args: &[&str], state: &Path) -> String {
    let child = serve_command(args, state).spawn().unwrap();
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let Ok(o) = rx.recv_timeout(Duration::from_secs(60)) else {
        let _ = Command::new("kill").arg(pid.to_string()).status();
        panic!("distill serve {args:?} started instead of refusing");
    };
    let o = o.unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{err}");
    err
}

/// One HTTP/1.1 request on a fresh connection: (status, body).
pub fn http(addr: &str, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {raw:?}")))?;
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((status, body.to_string()))
}
