//! `distill train --base org/name` against a local Hugging Face Hub (`hub_support`, with
//! `HF_ENDPOINT` pointing at it) serving a tiny random BERT: the first run downloads into a
//! temporary `HF_HUB_CACHE` and trains; with the server stopped and `HF_HUB_OFFLINE=1` the
//! cache alone trains; `@revision` pins a commit; a missing file and a `.bin`-only repository
//! are refused before any download; a cache written by Python's `huggingface_hub` is used
//! without a request, and Python reads what distill downloaded.
//!
//! The Python side runs with `$DISTILL_TEST_PYTHON` (scripts/test.sh sets it to a venv with
//! `huggingface_hub`); without it and without a `python3` that has the package, that test says
//! so and checks nothing more.

mod common;
#[path = "../../distill-train/tests/encoder_bert_support/mod.rs"]
mod encoder_bert_support;
#[path = "../../distill-train/tests/hub_support/mod.rs"]
mod hub_support;

use hub_support::{tiny_bert, HubRepo, HubServer};
use std::path::Path;
use std::process::{Command, Output};

/// A two-label task over the tiny BERT's vocabulary, with 80 training rows, in `dir`.
fn workdir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("task.toml"),
        "name = \"sentiment\"\nkind = \"classify\"\n[input]\ntext_column = \"text\"\n\
         gold_column = \"label\"\n[labels]\nvalues = [\"pos\", \"neg\"]\n[teacher]\n\
         provider = \"openai\"\nmodel = \"gpt-4o\"\n",
    )
    .unwrap();
    let mut csv = String::from("text,label\n");
    for (text, y) in encoder_bert_support::sentiment_rows(80, 0) {
        csv.push_str(&format!("{text},{}\n", ["pos", "neg"][y]));
    }
    std::fs::write(d.path().join("train.csv"), csv).unwrap();
    d
}

/// The Hub's variables for a child process: this endpoint, `<dir>/hub` as the cache and
/// `<dir>/hf-home` as `HF_HOME` (so no real token file is read); every other Hub, offline and
/// proxy variable of the test's own environment removed.
fn hub_env(c: &mut Command, dir: &Path, endpoint: &str) {
    for k in [
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_TOKEN_PATH",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HUGGINGFACE_HUB_CACHE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        c.env_remove(k);
    }
    c.env("HF_ENDPOINT", endpoint)
        .env("HF_HUB_CACHE", dir.join("hub"))
        .env("HF_HOME", dir.join("hf-home"))
        .env("NO_PROXY", "127.0.0.1,localhost");
}

/// `distill train --student <kind> --base <base> --out <out>` in `dir`, with `env` on top of
/// [`hub_env`].
fn train(
    dir: &Path,
    endpoint: &str,
    base: &str,
    out: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_distill"));
    hub_env(&mut c, dir, endpoint);
    c.current_dir(dir)
        .args(["--state-dir", "state", "train", "--task", "task.toml"])
        .args(["--data", "train.csv", "--base", base, "--out", out])
        .args(["--threads", "1", "--device", "cpu", "--max-len", "16"])
        .args(args)
        .envs(env.iter().copied());
    c.output().unwrap()
}

fn head(dir: &Path, endpoint: &str, base: &str, out: &str, env: &[(&str, &str)]) -> Output {
    train(
        dir,
        endpoint,
        base,
        out,
        &["--student", "encoder-head"],
        env,
    )
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: &Output) {
    assert!(o.status.success(), "{}", stderr(o));
}

/// What `distill.json` recorded as the base model.
fn base_model(dir: &Path, out: &str) -> String {
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(out).join("distill.json")).unwrap())
            .unwrap();
    meta["base_model"].as_str().unwrap().to_string()
}

/// A failed run: exit 1, no model directory, and every `want` in stderr.
fn refused(o: &Output, dir: &Path, out: &str, want: &[&str]) -> String {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(!dir.join(out).exists(), "{out} written despite:\n{e}");
    for w in want {
        assert!(e.contains(w), "{w:?} not in:\n{e}");
    }
    e
}

#[test]
fn downloads_once_then_trains_offline_from_the_cache_with_the_server_stopped() {
    let mut files = tiny_bert(1);
    files.push(("pytorch_model.bin".into(), b"pickle".to_vec()));
    files.push(("README.md".into(), b"# tiny".to_vec()));
    let repo = HubRepo::new("org/tiny").commit(files);
    let sha = repo.sha(0).to_string();
    let hub = HubServer::start(vec![repo]);
    let endpoint = hub.endpoint().to_string();
    let d = workdir();
    let dir = d.path();

    ok(&head(dir, &endpoint, "org/tiny", "m1", &[]));
    assert_eq!(base_model(dir, "m1"), format!("org/tiny@{sha}"));
    let cached = dir.join("hub/models--org--tiny");
    assert_eq!(
        std::fs::read_to_string(cached.join("refs/main")).unwrap(),
        sha
    );
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        assert!(cached.join("snapshots").join(&sha).join(f).is_file(), "{f}");
    }
    let log = hub.requests();
    assert!(
        log.contains(&"GET /api/models/org/tiny/revision/main".to_string()),
        "{log:?}"
    );
    assert!(
        !log.iter()
            .any(|r| r.contains("pytorch_model.bin") || r.contains("README")),
        "fetched more than the model needs: {log:?}"
    );

    hub.stop();
    ok(&head(
        dir,
        &endpoint,
        "org/tiny",
        "m2",
        &[("HF_HUB_OFFLINE", "1")],
    ));
    assert_eq!(base_model(dir, "m2"), format!("org/tiny@{sha}"));

    // An empty cache offline, then online with the server gone: the error names all three
    // places and what to do.
    let empty = dir.join("empty").display().to_string();
    let o = train(
        dir,
        &endpoint,
        "org/tiny",
        "m3",
        &["--student", "encoder-head", "--offline"],
        &[("HF_HUB_CACHE", &empty)],
    );
    refused(
        &o,
        dir,
        "m3",
        &[
            "1. local directory org/tiny: does not exist",
            &format!("2. Hugging Face cache {empty}/models--org--tiny: not cached"),
            &format!("3. download of org/tiny@main from {endpoint}: skipped: offline (--offline)"),
            "next: run once online",
        ],
    );
    let o = head(
        dir,
        &endpoint,
        "org/tiny",
        "m3",
        &[("HF_HUB_CACHE", &empty)],
    );
    refused(
        &o,
        dir,
        "m3",
        &["cannot reach the endpoint", "set HF_HUB_OFFLINE=1"],
    );
}

#[test]
fn revision_pins_a_commit_by_tag_or_by_sha() {
    let repo = HubRepo::new("org/tiny")
        .commit(tiny_bert(1))
        .tag("v1", 0)
        .commit(tiny_bert(2));
    let (old, new) = (repo.sha(0).to_string(), repo.sha(1).to_string());
    let hub = HubServer::start(vec![repo]);
    let endpoint = hub.endpoint().to_string();
    let d = workdir();
    let dir = d.path();

    // A fine-tune on the tagged commit: the other student kind goes through the same resolver.
    let o = train(
        dir,
        &endpoint,
        "org/tiny@v1",
        "ft",
        &[
            "--student",
            "encoder-finetune",
            "--epochs",
            "1",
            "--batch-size",
            "16",
        ],
        &[],
    );
    ok(&o);
    assert_eq!(base_model(dir, "ft"), format!("org/tiny@{old}"));
    let cached = dir.join("hub/models--org--tiny");
    assert_eq!(
        std::fs::read_to_string(cached.join("refs/v1")).unwrap(),
        old
    );
    assert!(
        hub.requests()
            .iter()
            .any(|r| r == "GET /org/tiny/resolve/v1/model.safetensors"),
        "{:?}",
        hub.requests()
    );

    ok(&head(dir, &endpoint, "org/tiny", "main", &[]));
    assert_eq!(base_model(dir, "main"), format!("org/tiny@{new}"));

    // A commit pin is found in the cache by its snapshot alone (no ref names it).
    hub.stop();
    let pinned = format!("org/tiny@{old}");
    ok(&head(
        dir,
        &endpoint,
        &pinned,
        "sha",
        &[("HF_HUB_OFFLINE", "1")],
    ));
    assert_eq!(base_model(dir, "sha"), pinned);
}

#[test]
fn missing_file_and_bin_only_repositories_are_refused_before_any_download() {
    let no_tokenizer: Vec<_> = tiny_bert(1)
        .into_iter()
        .filter(|(f, _)| f != "tokenizer.json")
        .collect();
    let mut pickled: Vec<_> = tiny_bert(1)
        .into_iter()
        .filter(|(f, _)| f != "model.safetensors")
        .collect();
    pickled.push(("pytorch_model.bin".into(), b"pickle".to_vec()));
    let (a, b) = (
        HubRepo::new("org/notok").commit(no_tokenizer),
        HubRepo::new("org/pickled").commit(pickled),
    );
    let (sha_a, sha_b) = (a.sha(0).to_string(), b.sha(0).to_string());
    let hub = HubServer::start(vec![a, b]);
    let endpoint = hub.endpoint().to_string();
    let d = workdir();
    let dir = d.path();
    // A token is sent (these repositories are public) and never printed.
    let secret = "hf_CliSecretToken789";

    let o = head(dir, &endpoint, "org/notok", "m", &[("HF_TOKEN", secret)]);
    let e = refused(
        &o,
        dir,
        "m",
        &[
            &format!("3. download of org/notok@main from {endpoint}: commit {sha_a} has no tokenizer.json"),
            "next: distill needs config.json, tokenizer.json and model.safetensors",
        ],
    );
    assert!(!e.contains(secret), "{e}");

    let o = head(dir, &endpoint, "org/pickled", "m", &[("HF_TOKEN", secret)]);
    let e = refused(
        &o,
        dir,
        "m",
        &[
            &format!("commit {sha_b} has only PyTorch pickle weights (pytorch_model.bin)"),
            "distill loads safetensors only, because unpickling a .bin file can run arbitrary code",
            "org/pickled@refs/pr/<N>",
        ],
    );
    assert!(!e.contains(secret), "{e}");
    let downloads: Vec<String> = hub
        .requests()
        .into_iter()
        .filter(|r| r.contains("/resolve/") || r.contains("/lfs/"))
        .collect();
    assert!(downloads.is_empty(), "{downloads:?}");
}

/// `$DISTILL_TEST_PYTHON`, else `python3`, if it can import `huggingface_hub`.
fn python_with_hub() -> Option<String> {
    let explicit = std::env::var("DISTILL_TEST_PYTHON").ok();
    let py = explicit.clone().unwrap_or_else(|| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", "import huggingface_hub"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok && explicit.is_some() {
        panic!("DISTILL_TEST_PYTHON={py} cannot import huggingface_hub");
    }
    ok.then_some(py)
}

/// Python's `hf_hub_download` of the model's files, printing each cached path.
fn python_download(py: &str, dir: &Path, endpoint: &str, repo: &str, env: &[(&str, &str)]) {
    let script = format!(
        "import sys\nfrom huggingface_hub import hf_hub_download\n\
         for f in ['config.json', 'tokenizer.json', 'model.safetensors']:\n    \
         print(hf_hub_download({repo:?}, f))\n"
    );
    let mut c = Command::new(py);
    hub_env(&mut c, dir, endpoint);
    let o = c
        .args(["-c", &script])
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        .env("HF_HUB_DISABLE_UPDATE_CHECK", "1")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
}

#[test]
fn python_huggingface_hub_and_distill_share_one_cache() {
    let Some(py) = python_with_hub() else {
        eprintln!(
            "skipping: no python3 with huggingface_hub (set DISTILL_TEST_PYTHON; scripts/test.sh does)"
        );
        return;
    };
    let (a, b) = (
        HubRepo::new("org/from-python").commit(tiny_bert(1)),
        HubRepo::new("org/from-distill").commit(tiny_bert(2)),
    );
    let (sha_a, sha_b) = (a.sha(0).to_string(), b.sha(0).to_string());
    let hub = HubServer::start(vec![a, b]);
    let endpoint = hub.endpoint().to_string();
    let d = workdir();
    let dir = d.path();

    // Python fills the cache; distill, online, trains from it without a single request.
    python_download(&py, dir, &endpoint, "org/from-python", &[]);
    let before = hub.requests().len();
    assert!(before > 0, "Python made no request");
    ok(&head(dir, &endpoint, "org/from-python", "m", &[]));
    assert_eq!(base_model(dir, "m"), format!("org/from-python@{sha_a}"));
    let after = hub.requests();
    assert!(
        after.len() == before,
        "distill went to the Hub for a model Python had cached: {:?}",
        &after[before..]
    );

    // The other way round: what distill downloads, Python finds offline.
    ok(&head(dir, &endpoint, "org/from-distill", "m2", &[]));
    assert_eq!(base_model(dir, "m2"), format!("org/from-distill@{sha_b}"));
    hub.stop();
    python_download(
        &py,
        dir,
        &endpoint,
        "org/from-distill",
        &[("HF_HUB_OFFLINE", "1")],
    );
}
