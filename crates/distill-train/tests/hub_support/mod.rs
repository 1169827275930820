//! A local stand-in for the Hugging Face Hub: an axum server on 127.0.0.1 that serves model
//! repositories on the Hub's URL scheme, with the headers `hf-hub` and Python's
//! `huggingface_hub` read, so `HF_ENDPOINT` can point at it. Shared by the distill-train and
//! distill-cli tests (the latter include it by path, with `encoder_bert_support`).
//!
//! Routes, as the Hub answers them:
//! - `GET /api/models/{repo}/revision/{rev}`: `{"id", "sha", "siblings": [{"rfilename"}]}`.
//! - `GET|HEAD /{repo}/resolve/{rev}/{file}`: `X-Repo-Commit` and `ETag` on every answer. A
//!   small file is served directly (ranges honoured: hf-hub asks for `bytes=0-0` to read
//!   `Content-Range`); a large-file-storage one (`.safetensors`, `.bin`) answers 302 to an
//!   absolute `Location` on the CDN with `X-Linked-Etag` (its SHA-256, the blob name both
//!   clients use) and `X-Linked-Size`.
//! - `GET|HEAD /lfs/{sha256}` on a second port, the CDN: another origin, as on the Hub, so
//!   clients take the file's metadata from the redirect itself (ranges honoured).
//! - Errors carry `X-Error-Code`: an unknown or private repo without the right bearer token is
//!   401 `RepoNotFound`, an unknown revision 404 `RevisionNotFound`, a missing file 404
//!   `EntryNotFound` (with `X-Repo-Commit`).
#![allow(dead_code)]

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::future::IntoFuture;
use std::sync::{Arc, Mutex};

/// One commit's files.
#[derive(Clone)]
pub struct Commit {
    pub sha: String,
    pub files: Vec<(String, Vec<u8>)>,
}

/// A model repository: commits oldest first; `main` is the newest unless moved.
#[derive(Clone)]
pub struct HubRepo {
    pub id: String,
    pub commits: Vec<Commit>,
    refs: HashMap<String, String>,
    token: Option<String>,
}

impl HubRepo {
    pub fn new(id: &str) -> Self {
        HubRepo {
            id: id.to_string(),
            commits: Vec::new(),
            refs: HashMap::new(),
            token: None,
        }
    }

    /// Adds a commit (its sha is derived from the repo and the contents) and points `main` at it.
    pub fn commit(mut self, files: Vec<(String, Vec<u8>)>) -> Self {
        let mut h = Sha256::new();
        h.update(self.id.as_bytes());
        h.update(self.commits.len().to_le_bytes());
        for (name, bytes) in &files {
            h.update(name.as_bytes());
            h.update(bytes);
        }
        let sha = hex::encode(h.finalize())[..40].to_string();
        self.refs.insert("main".into(), sha.clone());
        self.commits.push(Commit { sha, files });
        self
    }

    /// Names commit `i` (0 = oldest) with a tag or branch.
    pub fn tag(mut self, name: &str, i: usize) -> Self {
        let sha = self.commits[i].sha.clone();
        self.refs.insert(name.to_string(), sha);
        self
    }

    /// Only requests with `Authorization: Bearer <token>` see it.
    pub fn private(mut self, token: &str) -> Self {
        self.token = Some(token.to_string());
        self
    }

    pub fn sha(&self, i: usize) -> &str {
        &self.commits[i].sha
    }

    fn commit_at(&self, rev: &str) -> Option<&Commit> {
        let sha = self.refs.get(rev).map(String::as_str).unwrap_or(rev);
        self.commits.iter().find(|c| c.sha == sha)
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn is_lfs(file: &str) -> bool {
    file.ends_with(".safetensors") || file.ends_with(".bin")
}

struct Hub {
    cdn: String,
    repos: Vec<HubRepo>,
    blobs: HashMap<String, Vec<u8>>,
    log: Mutex<Vec<String>>,
}

/// The running server; dropping it (or [`HubServer::stop`]) closes the port.
pub struct HubServer {
    endpoint: String,
    hub: Arc<Hub>,
    shutdown: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HubServer {
    /// Binds 127.0.0.1 on an ephemeral port (before returning, so no wait is needed) and serves.
    pub fn start(repos: Vec<HubRepo>) -> Self {
        let bind = || {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.set_nonblocking(true).unwrap();
            let url = format!("http://{}", l.local_addr().unwrap());
            (l, url)
        };
        let (listener, endpoint) = bind();
        let (cdn_listener, cdn) = bind();
        let blobs = repos
            .iter()
            .flat_map(|r| &r.commits)
            .flat_map(|c| &c.files)
            .map(|(_, b)| (sha256_hex(b), b.clone()))
            .collect();
        let hub = Arc::new(Hub {
            cdn,
            repos,
            blobs,
            log: Mutex::new(Vec::new()),
        });
        let (tx, rx) = tokio::sync::watch::channel(false);
        let app = axum::Router::new().fallback(route).with_state(hub.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let serve = |l: std::net::TcpListener| {
                    let mut rx = rx.clone();
                    let l = tokio::net::TcpListener::from_std(l).unwrap();
                    axum::serve(l, app.clone())
                        .with_graceful_shutdown(async move {
                            let _ = rx.wait_for(|stop| *stop).await;
                        })
                        .into_future()
                };
                let (a, b) = tokio::join!(serve(listener), serve(cdn_listener));
                a.unwrap();
                b.unwrap();
            });
        });
        HubServer {
            endpoint,
            hub,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:<port>`, what `HF_ENDPOINT` is set to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Every request so far, as `METHOD /path`.
    pub fn requests(&self) -> Vec<String> {
        self.hub.log.lock().unwrap().clone()
    }

    /// Stops serving and waits until both ports are closed.
    pub fn stop(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        self.shut();
    }
}

/// Percent-decoding (revisions arrive as `refs%2Fpr%2F1`).
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

fn reply(status: StatusCode, headers: Vec<(&str, String)>, body: Vec<u8>) -> Response {
    let mut r = Response::builder().status(status);
    for (k, v) in headers {
        r = r.header(k, HeaderValue::from_str(&v).unwrap());
    }
    r.header(header::CONTENT_LENGTH, body.len())
        .body(Body::from(body))
        .unwrap()
}

fn error(status: StatusCode, code: &str, commit: Option<&str>) -> Response {
    let mut h = vec![("x-error-code", code.to_string())];
    if let Some(c) = commit {
        h.push(("x-repo-commit", c.to_string()));
    }
    let body = serde_json::json!({ "error": code })
        .to_string()
        .into_bytes();
    h.push(("content-type", "application/json".into()));
    reply(status, h, body)
}

/// The whole body, or the one `bytes=a-b` / `bytes=a-` range asked for.
fn ranged(headers: &HeaderMap, bytes: &[u8], mut extra: Vec<(&str, String)>) -> Response {
    let n = bytes.len();
    extra.push(("accept-ranges", "bytes".into()));
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.split_once('-'));
    let Some((a, b)) = range.filter(|_| n > 0) else {
        return reply(StatusCode::OK, extra, bytes.to_vec());
    };
    let start: usize = a.parse().unwrap_or(0);
    let end: usize = b.parse().map(|e: usize| e.min(n - 1)).unwrap_or(n - 1);
    if start >= n || start > end {
        extra.push(("content-range", format!("bytes */{n}")));
        return reply(StatusCode::RANGE_NOT_SATISFIABLE, extra, Vec::new());
    }
    extra.push(("content-range", format!("bytes {start}-{end}/{n}")));
    reply(
        StatusCode::PARTIAL_CONTENT,
        extra,
        bytes[start..=end].to_vec(),
    )
}

async fn route(
    State(hub): State<Arc<Hub>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let path = uri.path().to_string();
    hub.log.lock().unwrap().push(format!("{method} {path}"));
    if method != Method::GET && method != Method::HEAD {
        return error(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", None);
    }
    if let Some(sha) = path.strip_prefix("/lfs/") {
        return match hub.blobs.get(sha) {
            Some(b) => ranged(&headers, b, vec![("etag", format!("\"{sha}\""))]),
            None => error(StatusCode::NOT_FOUND, "NotFound", None),
        };
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let find = |id: &str| {
        hub.repos
            .iter()
            .find(|r| r.id == id && (r.token.is_none() || r.token == bearer))
    };
    if let Some(rest) = path.strip_prefix("/api/models/") {
        let Some((id, rev)) = rest.split_once("/revision/") else {
            return error(StatusCode::NOT_FOUND, "NotFound", None);
        };
        let Some(repo) = find(id) else {
            return error(StatusCode::UNAUTHORIZED, "RepoNotFound", None);
        };
        let Some(c) = repo.commit_at(&decode(rev)) else {
            return error(StatusCode::NOT_FOUND, "RevisionNotFound", None);
        };
        let siblings: Vec<_> = c
            .files
            .iter()
            .map(|(f, _)| serde_json::json!({ "rfilename": f }))
            .collect();
        let body = serde_json::json!({
            "_id": repo.id, "id": repo.id, "modelId": repo.id, "sha": c.sha,
            "private": repo.token.is_some(), "gated": false, "disabled": false,
            "tags": [], "siblings": siblings,
        });
        return reply(
            StatusCode::OK,
            vec![("content-type", "application/json".into())],
            body.to_string().into_bytes(),
        );
    }
    let Some((id, rest)) = path.trim_start_matches('/').split_once("/resolve/") else {
        return error(StatusCode::NOT_FOUND, "NotFound", None);
    };
    let Some((rev, file)) = rest.split_once('/') else {
        return error(StatusCode::NOT_FOUND, "NotFound", None);
    };
    let (rev, file) = (decode(rev), decode(file));
    let Some(repo) = find(id) else {
        return error(StatusCode::UNAUTHORIZED, "RepoNotFound", None);
    };
    let Some(c) = repo.commit_at(&rev) else {
        return error(StatusCode::NOT_FOUND, "RevisionNotFound", None);
    };
    let Some((_, bytes)) = c.files.iter().find(|(f, _)| *f == file) else {
        return error(StatusCode::NOT_FOUND, "EntryNotFound", Some(&c.sha));
    };
    let sha = sha256_hex(bytes);
    let commit = ("x-repo-commit", c.sha.clone());
    if is_lfs(&file) {
        // The Hub answers with the pointer's ETag and the blob's in X-Linked-Etag.
        let pointer = format!("\"{}\"", &sha256_hex(sha.as_bytes())[..40]);
        return reply(
            StatusCode::FOUND,
            vec![
                commit,
                ("etag", pointer),
                ("x-linked-etag", format!("\"{sha}\"")),
                ("x-linked-size", bytes.len().to_string()),
                ("location", format!("{}/lfs/{sha}", hub.cdn)),
            ],
            Vec::new(),
        );
    }
    ranged(
        &headers,
        bytes,
        vec![commit, ("etag", format!("\"{sha}\""))],
    )
}

/// The files of a tiny random BERT (2 layers, 32 wide, word-level tokenizer) in Hub layout:
/// `config.json`, `tokenizer.json`, `model.safetensors`.
pub fn tiny_bert(seed: u64) -> Vec<(String, Vec<u8>)> {
    use crate::encoder_bert_support::{tiny_config, write_sentence_encoder_base};
    let d = tempfile::tempdir().unwrap();
    write_sentence_encoder_base(d.path(), &tiny_config(), seed);
    ["config.json", "tokenizer.json", "model.safetensors"]
        .into_iter()
        .map(|f| (f.to_string(), std::fs::read(d.path().join(f)).unwrap()))
        .collect()
}
