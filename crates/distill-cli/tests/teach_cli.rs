//! The real `distill` binary: `teach` killed with SIGKILL mid-run (real time and `--batch`)
//! and resumed, against an in-process sim-teacher on 127.0.0.1; and `teach` writing its
//! output to a full filesystem.
//!
//! Synchronisation is by polling observable state (the journal on disk) with a deadline,
//! never by sleeping for a guessed duration.

use distill_core::input::{read_inputs, Columns};
use distill_core::ledger::Ledger;
use distill_core::{TaskSpec, TeacherRecord};
use distill_sim::{SimConfig, SimHandle, SimServer};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_distill");

fn banking_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let shared = root.join("../shared/datasets/banking77");
    if shared.join("train.csv").exists() {
        shared
    } else {
        root.join("datasets/banking77")
    }
}

/// A Banking77 task over the first `rows` training rows (as JSONL) in `dir`.
fn task(dir: &Path, rows: usize, provider: &str, model: &str) -> PathBuf {
    let src = banking_dir();
    let cols = Columns {
        context: Default::default(),
        text: "text".into(),
        gold: Some("category".into()),
        id: None,
        conversation: false,
    };
    let mut jsonl = String::new();
    for item in read_inputs(&src.join("train.csv"), None, &cols)
        .unwrap()
        .take(rows)
    {
        let item = item.unwrap();
        jsonl.push_str(
            &serde_json::json!({"text": item.text, "category": item.gold.unwrap()}).to_string(),
        );
        jsonl.push('\n');
    }
    std::fs::write(dir.join("train.jsonl"), jsonl).unwrap();
    std::fs::copy(src.join("categories.json"), dir.join("categories.json")).unwrap();
    let spec = format!(
        r#"
name = "banking77"
kind = "classify"
[input]
path = "train.jsonl"
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
    let path = dir.join("task.toml");
    std::fs::write(&path, spec).unwrap();
    path
}

fn sim(task: &Path, tweak: impl FnOnce(&mut SimConfig)) -> SimHandle {
    let mut c = SimConfig::new(TaskSpec::load(task).unwrap());
    c.retry_after_ms = 5;
    tweak(&mut c);
    SimServer::spawn(c).unwrap()
}

fn teach(dir: &Path, task: &Path, url: &str, out: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--state-dir")
        .arg(dir.join("state"))
        .arg("-q")
        .arg("teach")
        .arg("--task")
        .arg(task)
        .arg("--base-url")
        .arg(url)
        .arg("--out")
        .arg(out)
        .args(extra)
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("DISTILL_STATE_DIR");
    c
}

fn run_ok(mut c: Command) -> Output {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "distill failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn read_records(path: &Path) -> Vec<TeacherRecord> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn assert_every_input_once(recs: &[TeacherRecord], n: usize) {
    let ids: Vec<String> = recs.iter().map(|r| r.id.clone()).collect();
    let want: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
    assert_eq!(ids, want, "every input exactly once, in input order");
}

/// Polls `cond` until it holds, the child exits, or the deadline passes; then SIGKILLs the
/// child. Panics when the condition never held while the child was running (the test could
/// not observe a mid-run kill).
fn kill_when(child: &mut Child, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("distill exited ({status}) before {what}: the test could not kill it mid-run");
        }
        if cond() {
            break;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
    }
    child.kill().unwrap(); // SIGKILL on Unix
    let status = child.wait().unwrap();
    assert!(!status.success(), "{status}");
}

fn journal_records(journal: &Path) -> usize {
    std::fs::read(journal)
        .map(|b| {
            b.split(|c| *c == b'\n')
                .filter(|l| l.starts_with(b"{\"i\":"))
                .count()
        })
        .unwrap_or(0)
}

fn spend_total(dir: &Path) -> (u64, f64) {
    let out = run_ok({
        let mut c = Command::new(BIN);
        c.arg("--state-dir")
            .arg(dir.join("state"))
            .args(["spend", "--by", "task", "--json"]);
        c
    });
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    (
        rows[0]["calls"].as_u64().unwrap(),
        rows[0]["cost_usd"].as_f64().unwrap(),
    )
}

#[test]
fn sigkill_mid_run_then_resume_pays_once_and_the_ledger_matches_the_records() {
    let d = tempfile::tempdir().unwrap();
    let n = 300;
    let concurrency = 4;
    let task = task(d.path(), n, "openai", "gpt-4o");
    let sim = sim(&task, |c| {
        c.latency_ms = 20;
        c.error_rate = 0.05;
    });
    let out = d.path().join("teacher.jsonl");
    let journal = d.path().join("teacher.jsonl.partial");
    let conc = concurrency.to_string();
    let args = ["--concurrency", conc.as_str()];

    let mut child = teach(d.path(), &task, &sim.base_url(), &out, &args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    kill_when(&mut child, "40 journalled records", || {
        journal_records(&journal) >= 40
    });
    assert!(!out.exists(), "no output from a killed run");
    let before = journal_records(&journal);
    assert!(before >= 40 && before < n, "{before}");

    let mut again = args.to_vec();
    again.push("--resume");
    let res = run_ok(teach(d.path(), &task, &sim.base_url(), &out, &again));
    let stdout = String::from_utf8_lossy(&res.stdout);
    assert!(stdout.contains("resumed from an earlier run"), "{stdout}");
    assert!(!journal.exists());
    let recs = read_records(&out);
    assert_every_input_once(&recs, n);

    let stats = sim.stats();
    assert_eq!(stats.unique_billable, n as u64, "{stats:?}");
    assert!(
        stats.billable <= n as u64 + concurrency as u64,
        "at most the requests in flight at the kill are paid twice: {stats:?}"
    );
    // The ledger: one row per record's paid call, plus the calls that were out at the kill,
    // still `in_flight` (the provider may have billed them): never less than was billed.
    let rows = Ledger::open(d.path().join("state/ledger.db"))
        .unwrap()
        .rows_for_task("banking77")
        .unwrap();
    let completed: Vec<_> = rows.iter().filter(|r| r.status != "in_flight").collect();
    assert_eq!(
        completed.len(),
        n,
        "one completed ledger row per labelled input"
    );
    assert!(
        stats.billable as usize <= rows.len() && rows.len() <= n + concurrency,
        "billed {} vs ledger {}",
        stats.billable,
        rows.len()
    );
    let record_cost: f64 = recs.iter().map(|r| r.cost_usd).sum();
    let completed_cost: f64 = completed.iter().map(|r| r.cost_usd).sum();
    assert!(
        (completed_cost - record_cost).abs() < 1e-9 && record_cost > 0.0,
        "ledger {completed_cost} vs records {record_cost}"
    );
    let (calls, spend) = spend_total(d.path());
    assert_eq!(calls, rows.len() as u64);
    assert!(
        spend >= stats.cost_usd - 1e-9,
        "distill spend ${spend} must not be below what the provider billed (${})",
        stats.cost_usd
    );
}

/// Right after a kill, before any rerun, `distill spend` already counts the calls that were
/// out (as in_flight): it is never below what the provider billed.
#[test]
fn after_a_sigkill_the_ledger_is_not_below_the_bill() {
    let d = tempfile::tempdir().unwrap();
    let n = 300;
    let concurrency = 4u64;
    let task = task(d.path(), n, "openai", "gpt-4o");
    let sim = sim(&task, |c| c.latency_ms = 20);
    let out = d.path().join("teacher.jsonl");
    let journal = d.path().join("teacher.jsonl.partial");
    let mut child = teach(
        d.path(),
        &task,
        &sim.base_url(),
        &out,
        &["--concurrency", "4"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    kill_when(&mut child, "30 journalled records", || {
        journal_records(&journal) >= 30
    });
    let billed = sim.stats();
    let ledger = Ledger::open(d.path().join("state/ledger.db")).unwrap();
    let total = &ledger.summary(&[], None).unwrap()[0];
    assert!(
        total.calls >= billed.billable && total.cost_usd >= billed.cost_usd - 1e-9,
        "ledger {} calls ${} vs billed {} ${}",
        total.calls,
        total.cost_usd,
        billed.billable,
        billed.cost_usd
    );
    assert!(
        (1..=concurrency).contains(&total.in_flight),
        "the calls out at the kill are in flight: {total:?}"
    );
    let spend = run_ok({
        let mut c = Command::new(BIN);
        c.arg("--state-dir")
            .arg(d.path().join("state"))
            .arg("spend");
        c
    });
    let text = String::from_utf8_lossy(&spend.stdout);
    assert!(text.contains("outcome was never recorded"), "{text}");
}

/// Batch items retried in real time are journalled as each answer arrives: a kill while
/// they run pays again for at most the calls in flight (it used to be every retried item
/// answered so far, up to 2,048).
#[test]
fn sigkill_during_real_time_retries_of_a_batch_pays_at_most_the_in_flight_again() {
    let d = tempfile::tempdir().unwrap();
    let n = 300;
    let concurrency = 4u64;
    let task = task(d.path(), n, "openai", "gpt-4o");
    // Every item of the batch but the first expires, so the rest are retried in real time.
    let sim = sim(&task, |c| {
        c.batch_expire_after = Some(1);
        c.latency_ms = 10;
    });
    let out = d.path().join("teacher.jsonl");
    let args = ["--batch", "--poll-secs", "0.05", "--concurrency", "4"];
    let mut child = teach(d.path(), &task, &sim.base_url(), &out, &args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    kill_when(&mut child, "100 real-time retries paid", || {
        sim.stats().billable >= 100
    });
    let mut again = args.to_vec();
    again.push("--resume");
    run_ok(teach(d.path(), &task, &sim.base_url(), &out, &again));
    assert_every_input_once(&read_records(&out), n);
    let stats = sim.stats();
    assert_eq!(stats.unique_billable, n as u64, "{stats:?}");
    assert!(
        stats.duplicates <= concurrency,
        "paid twice: {} (in flight at most {concurrency}) {stats:?}",
        stats.duplicates
    );
    let rows = Ledger::open(d.path().join("state/ledger.db"))
        .unwrap()
        .rows_for_task("banking77")
        .unwrap();
    assert!(
        stats.billable as usize <= rows.len() && rows.len() as u64 <= n as u64 + concurrency,
        "billed {} vs ledger {}",
        stats.billable,
        rows.len()
    );
}

/// Kill, change the prompt, run again: refused, naming what changed, never a dataset mixing
/// two prompts; `--restart` labels everything under the new prompt.
#[test]
fn after_a_sigkill_a_changed_prompt_is_refused_until_restart() {
    let d = tempfile::tempdir().unwrap();
    let n = 200;
    let task = task(d.path(), n, "openai", "gpt-4o");
    let sim = sim(&task, |c| c.latency_ms = 10);
    let out = d.path().join("teacher.jsonl");
    let journal = d.path().join("teacher.jsonl.partial");
    let mut child = teach(
        d.path(),
        &task,
        &sim.base_url(),
        &out,
        &["--concurrency", "4"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    kill_when(&mut child, "40 journalled records", || {
        journal_records(&journal) >= 40
    });
    let spec = std::fs::read_to_string(&task).unwrap();
    std::fs::write(&task, spec.replace("with their intent", "with one intent")).unwrap();
    let res = teach(d.path(), &task, &sim.base_url(), &out, &[])
        .output()
        .unwrap();
    assert_eq!(res.status.code(), Some(1));
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(
        err.contains("system prompt") && err.contains("--restart"),
        "{err}"
    );
    assert!(!out.exists());
    run_ok(teach(
        d.path(),
        &task,
        &sim.base_url(),
        &out,
        &["--restart"],
    ));
    let recs = read_records(&out);
    assert_every_input_once(&recs, n);
    let raw: Vec<String> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(raw.len(), n);
    // Every record was asked with the new prompt: no resumed record from the first run.
    assert!(String::from_utf8_lossy(
        &run_ok(teach(
            d.path(),
            &task,
            &sim.base_url(),
            &d.path().join("again.jsonl"),
            &[]
        ))
        .stdout
    )
    .contains(&format!("{n} from the cache")));
}

/// Two `distill teach` on one output: the second is refused naming the first's PID, and
/// nothing is paid twice.
#[test]
fn a_concurrent_second_run_on_the_same_output_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let n = 200;
    let task = task(d.path(), n, "openai", "gpt-4o");
    let sim = sim(&task, |c| c.latency_ms = 20);
    let out = d.path().join("teacher.jsonl");
    let journal = d.path().join("teacher.jsonl.partial");
    let mut first = teach(
        d.path(),
        &task,
        &sim.base_url(),
        &out,
        &["--concurrency", "2"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while journal_records(&journal) < 5 {
        assert!(
            first.try_wait().unwrap().is_none(),
            "the first run ended too soon"
        );
        assert!(Instant::now() < deadline);
        std::thread::yield_now();
    }
    let second = teach(d.path(), &task, &sim.base_url(), &out, &[])
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains(&format!("PID {}", first.id())), "{err}");
    assert!(first.wait().unwrap().success());
    assert_every_input_once(&read_records(&out), n);
    assert_eq!(sim.stats().duplicates, 0);
    assert!(!d.path().join("teacher.jsonl.lock").exists());
}

#[test]
fn sigkill_while_a_batch_runs_then_resume_collects_it_by_id() {
    let d = tempfile::tempdir().unwrap();
    let n = 100;
    let task = task(d.path(), n, "openai", "gpt-4o");
    let sim = sim(&task, |c| c.batch_completion_ms = 1500);
    let out = d.path().join("teacher.jsonl");
    let journal = d.path().join("teacher.jsonl.partial");
    let args = ["--batch", "--poll-secs", "0.05"];
    let mut child = teach(d.path(), &task, &sim.base_url(), &out, &args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let batch_line = || {
        std::fs::read_to_string(&journal).ok().and_then(|j| {
            j.lines()
                .find(|l| l.starts_with("{\"batch\":"))
                .map(str::to_string)
        })
    };
    kill_when(&mut child, "the batch id in the journal", || {
        batch_line().is_some()
    });
    let line: serde_json::Value = serde_json::from_str(&batch_line().unwrap()).unwrap();
    let id = line["batch"]["id"].as_str().unwrap().to_string();
    assert_eq!(sim.stats().batches.created, 1);

    let mut again = args.to_vec();
    again.push("--resume");
    let res = run_ok(teach(d.path(), &task, &sim.base_url(), &out, &again));
    assert!(String::from_utf8_lossy(&res.stdout).contains(&id));
    let stats = sim.stats();
    assert_eq!(
        stats.batches.created, 1,
        "picked up, not resubmitted: {stats:?}"
    );
    assert_eq!(stats.billable, n as u64, "{stats:?}");
    let recs = read_records(&out);
    assert_every_input_once(&recs, n);
    assert!(recs.iter().all(|r| r.batch));
    let rows = Ledger::open(d.path().join("state/ledger.db"))
        .unwrap()
        .rows_for_task("banking77")
        .unwrap();
    assert_eq!(rows.len(), n);
    assert!(rows
        .iter()
        .all(|r| r.batch_id.as_deref() == Some(id.as_str())));
    let record_cost: f64 = recs.iter().map(|r| r.cost_usd).sum();
    let (_, spend) = spend_total(d.path());
    assert!(
        (spend - record_cost).abs() < 1e-9,
        "{spend} vs {record_cost}"
    );
    // The provider's own count of the batch's answers matches the ledger.
    let out = run_ok({
        let mut c = Command::new(BIN);
        c.arg("--state-dir")
            .arg(d.path().join("state"))
            .args(["spend", "--reconcile", "--task"])
            .arg(&task)
            .args(["--base-url", &sim.base_url()])
            .env_remove("OPENAI_API_KEY");
        c
    });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("{id}  {n}  {n}  +0")) && text.contains("every batch matches"),
        "{text}"
    );
}

fn user_namespaces_work() -> bool {
    Command::new("unshare")
        .args(["-r", "-m", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn list_dir(path: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// Labels `n` inputs once into `warm.jsonl`, so later runs are answered from the cache.
/// Returns the sim, the task and the size of the output.
fn warmed(dir: &Path, n: usize) -> (SimHandle, PathBuf, u64) {
    let task = task(dir, n, "openai", "gpt-4o");
    let sim = sim(&task, |_| {});
    let warm = dir.join("warm.jsonl");
    run_ok(teach(dir, &task, &sim.base_url(), &warm, &[]));
    assert_eq!(sim.stats().billable, n as u64);
    let size = std::fs::metadata(&warm).unwrap().len();
    (sim, task, size)
}

/// `--out` on a full filesystem: a clear error naming the file, no partial output, the
/// journal kept; after space is freed a rerun writes the file and pays nothing.
///
/// The filesystem is really full: a small tmpfs mounted in a private user + mount namespace
/// (`unshare -r -m`, no root needed), sized to hold the journal but not the journal and the
/// output together, so the failing write is the final output's. Where user namespaces are
/// not available this test says so and checks nothing; the file-size-limit test below
/// covers the same guarantee everywhere.
#[test]
fn full_disk_gives_a_clear_error_and_no_partial_output() {
    if !user_namespaces_work() {
        eprintln!("SKIPPED: user namespaces are unavailable, cannot mount a small tmpfs");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let n = 300;
    let (sim, task, size) = warmed(d.path(), n);
    let full = d.path().join("full");
    std::fs::create_dir(&full).unwrap();
    // Journal lines of cached records are about the size of the output's.
    let tmpfs_kib = (size * 3 / 2).div_ceil(4096) * 4;
    let script = r#"
        mount -t tmpfs -o size="$SIZE" tmpfs "$FULL" || exit 90
        "$BIN" --state-dir "$DIR/state" -q teach --task "$TASK" --base-url "$URL" --out "$FULL/t.jsonl" \
            >"$DIR/run1.out" 2>"$DIR/run1.err"
        echo $? >"$DIR/run1.code"
        ls -A "$FULL" >"$DIR/ls1.txt"
        mount -o remount,size=64m "$FULL" || exit 91
        "$BIN" --state-dir "$DIR/state" -q teach --task "$TASK" --base-url "$URL" --out "$FULL/t.jsonl" --resume \
            >"$DIR/run2.out" 2>"$DIR/run2.err"
        echo $? >"$DIR/run2.code"
        ls -A "$FULL" >"$DIR/ls2.txt"
        cp "$FULL/t.jsonl" "$DIR/final.jsonl" 2>/dev/null
        exit 0
    "#;
    let status = Command::new("unshare")
        .args(["-r", "-m", "sh", "-c", script])
        .env("SIZE", format!("{tmpfs_kib}k"))
        .env("FULL", &full)
        .env("BIN", BIN)
        .env("DIR", d.path())
        .env("TASK", &task)
        .env("URL", sim.base_url())
        .env_remove("OPENAI_API_KEY")
        .env_remove("DISTILL_STATE_DIR")
        .status()
        .unwrap();
    assert!(status.success(), "namespace script: {status}");
    let read = |f: &str| std::fs::read_to_string(d.path().join(f)).unwrap();
    assert_ne!(
        read("run1.code").trim(),
        "0",
        "the full disk must fail the run"
    );
    let err = read("run1.err");
    assert!(
        err.contains("full/t.jsonl: cannot write the output: No space left on device"),
        "{err}"
    );
    assert!(err.contains("No partial file was left"), "{err}");
    assert_eq!(
        list_dir(&d.path().join("ls1.txt")),
        vec!["t.jsonl.partial".to_string()],
        "no output and no temporary file; the journal is kept"
    );
    assert_eq!(read("run2.code").trim(), "0", "{}", read("run2.err"));
    assert!(
        read("run2.out").contains(&format!("{n} resumed")),
        "{}",
        read("run2.out")
    );
    assert_eq!(
        list_dir(&d.path().join("ls2.txt")),
        vec!["t.jsonl".to_string()]
    );
    assert_every_input_once(&read_records(&d.path().join("final.jsonl")), n);
    assert_eq!(sim.stats().billable, n as u64, "nothing paid again");
}

/// The same guarantee without namespaces: a per-process file size limit (`ulimit -f`, with
/// SIGXFSZ ignored) makes the kernel fail the journal's writes (EFBIG) part-way.
#[test]
fn a_failing_write_part_way_leaves_no_partial_output() {
    let d = tempfile::tempdir().unwrap();
    let n = 300;
    let (sim, task, size) = warmed(d.path(), n);
    assert!(size > 64 * 1024, "the limit must cut the journal: {size}");
    let out = d.path().join("t.jsonl");
    let base = teach(d.path(), &task, &sim.base_url(), &out, &[]);
    let res = Command::new("bash")
        .arg("-c")
        .arg(r#"ulimit -f 64; trap '' XFSZ; exec "$@""#)
        .arg("bash")
        .arg(BIN)
        .args(base.get_args())
        .env_remove("OPENAI_API_KEY")
        .env_remove("DISTILL_STATE_DIR")
        .output()
        .unwrap();
    assert!(!res.status.success());
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(
        err.contains("t.jsonl.partial") && err.contains("File too large"),
        "{err}"
    );
    assert!(!out.exists(), "no partial output");
    let leftovers: Vec<String> = std::fs::read_dir(d.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let res = run_ok(teach(d.path(), &task, &sim.base_url(), &out, &["--resume"]));
    assert!(String::from_utf8_lossy(&res.stdout).contains("resumed from an earlier run"));
    assert_every_input_once(&read_records(&out), n);
    assert_eq!(sim.stats().billable, n as u64, "nothing paid again");
}

#[test]
fn teach_help_documents_the_batch_and_resume_flags() {
    let out = run_ok({
        let mut c = Command::new(BIN);
        c.args(["teach", "--help"]);
        c
    });
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--batch",
        "--no-wait",
        "--batch-size",
        "--poll-secs",
        "--resume",
        "--max-spend",
        "--concurrency",
        "--dry-run",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    // --no-wait without --batch is a usage error.
    let bad = Command::new(BIN)
        .args(["teach", "--task", "t.toml", "--no-wait"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}
