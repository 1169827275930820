//! The providers' Batch API endpoints: building a batch's request file, creating, adopting
//! and polling batches, and reading their results back by `custom_id`. What a job does with
//! the answers is the caller's ([`super::run_batch`] for labels, [`super::prefetch`] for the
//! answers a route task needs).

use crate::client::TeacherClient;
use crate::error::{redact, Result, TeachError};
use crate::journal::BatchRef;
use crate::provider::{anthropic, Reply};
use distill_core::{Provider, TaskSpec};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// The `custom_id` of the request for input ordinal `i` whose cache key is `request_hash`
/// (valid for both providers: at most 64 characters of `[A-Za-z0-9_-]`).
pub fn custom_id(ordinal: u64, request_hash: &str) -> String {
    format!(
        "in-{ordinal}-{}",
        request_hash.get(..16).unwrap_or(request_hash)
    )
}

/// The input ordinal a `custom_id` names.
pub(crate) fn ordinal_of(custom_id: &str) -> Option<u64> {
    let rest = custom_id.strip_prefix("in-")?;
    rest.split('-').next()?.parse().ok()
}

/// What a batch said about one request.
#[derive(Debug, Clone)]
pub(crate) enum ItemResult {
    Reply(Reply),
    /// Not answered (expired, cancelled, transient error, missing): retried in real time.
    Retry(String),
    /// Rejected by the provider: recorded as failed.
    Failed(String),
}

/// A finished batch's results by `custom_id`.
pub(crate) type Results = HashMap<String, ItemResult>;

pub(crate) enum Poll {
    Running { finished: u64 },
    Ended(Results),
}

/// Requests being gathered into one batch.
#[derive(Default)]
pub(crate) struct Chunk {
    pub(crate) ordinals: Vec<u64>,
    /// The `custom_id` of each request, in the same order.
    pub(crate) ids: Vec<String>,
    pub(crate) bytes: Vec<u8>,
}

impl Chunk {
    pub(crate) fn ranges(&self) -> Vec<[u64; 2]> {
        let mut out: Vec<[u64; 2]> = Vec::new();
        for &i in &self.ordinals {
            match out.last_mut() {
                Some(r) if r[1] == i => r[1] = i + 1,
                _ => out.push([i, i + 1]),
            }
        }
        out
    }
}

/// How often running batches are polled: first at an eighth of the longest wait, then twice
/// as long each time, up to it.
pub(crate) struct Pace {
    delay: Duration,
    max: Duration,
}

impl Pace {
    pub(crate) fn new(max: Duration) -> Self {
        let max = max.max(Duration::from_millis(10));
        Pace {
            delay: (max / 8).max(Duration::from_millis(10)).min(max),
            max,
        }
    }

    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(self.max);
    }
}

/// The progress bar's message while batches run.
pub(crate) fn running_message(batches: usize, spent_usd: f64) -> String {
    format!("{batches} batch(es) running, ${spent_usd:.4}")
}

/// How many of a batch's requests the provider says it answered (OpenAI `completed`,
/// Anthropic `succeeded`): what it bills, for `distill spend --reconcile`.
pub async fn answered_count(client: &TeacherClient, batch_id: &str) -> Result<u64> {
    let api = Api {
        client,
        spec: client.spec(),
    };
    let url = match client.provider() {
        Provider::Openai => format!("{}/batches/{batch_id}", api.base()),
        Provider::Anthropic => format!("{}/messages/batches/{batch_id}", api.base()),
    };
    let v = api
        .call("reading the batch", &url, Body::None, true)
        .await?;
    let counts = v.get("request_counts").unwrap_or(&Value::Null);
    let key = match client.provider() {
        Provider::Openai => "completed",
        Provider::Anthropic => "succeeded",
    };
    counts
        .get(key)
        .and_then(Value::as_u64)
        .ok_or_else(|| TeachError::Invalid(format!("batch {batch_id} has no request_counts.{key}")))
}

/// A batch found on the provider, tagged with this job's key, that the journal does not list.
#[derive(Clone)]
pub(crate) struct Orphan {
    pub(crate) id: String,
    pub(crate) input_file_id: String,
}

/// The provider's batch endpoints.
pub(crate) struct Api<'a> {
    pub(crate) client: &'a TeacherClient,
    pub(crate) spec: &'a TaskSpec,
}

pub(crate) enum Body {
    None,
    Json(Vec<u8>),
    /// A JSONL file for `/v1/files` with `purpose=batch`.
    Upload(Vec<u8>),
}

impl Api<'_> {
    pub(crate) fn provider(&self) -> Provider {
        self.client.provider()
    }
    pub(crate) fn base(&self) -> &str {
        self.client.base_url()
    }

    /// Serialises one request into the chunk.
    pub(crate) fn add(&self, chunk: &mut Chunk, ordinal: u64, request_hash: &str, body: &Value) {
        let cid = custom_id(ordinal, request_hash);
        match self.provider() {
            Provider::Openai => {
                let line = json!({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body});
                let _ = serde_json::to_writer(&mut chunk.bytes, &line);
                chunk.bytes.push(b'\n');
            }
            Provider::Anthropic => {
                if !chunk.bytes.is_empty() {
                    chunk.bytes.push(b',');
                }
                let _ = serde_json::to_writer(
                    &mut chunk.bytes,
                    &json!({"custom_id": cid, "params": body}),
                );
            }
        }
        chunk.ordinals.push(ordinal);
        chunk.ids.push(cid);
    }

    /// Creates a batch for the chunk (or adopts the OpenAI batch an interrupted run created
    /// for exactly these inputs) and returns its reference, not yet journalled.
    pub(crate) async fn submit(
        &self,
        chunk: Chunk,
        job_key: &str,
        look_for_orphans: bool,
        known: &HashSet<String>,
        adoptable: &mut Option<HashMap<String, Orphan>>,
    ) -> Result<BatchRef> {
        let ranges = chunk.ranges();
        let n = chunk.ordinals.len() as u64;
        let provider = self.provider();
        let id = match provider {
            Provider::Openai => {
                let chunk_key = distill_core::fsutil::sha256_hex(
                    &serde_json::to_vec(&chunk.ids).unwrap_or_default(),
                )[..16]
                    .to_string();
                if look_for_orphans && adoptable.is_none() {
                    // Best effort: without the listing, a batch is submitted as if none were.
                    *adoptable = Some(self.orphans(job_key, known).await.unwrap_or_else(|e| {
                        tracing::warn!(
                            "cannot list batches to find one an interrupted run submitted: {e}"
                        );
                        HashMap::new()
                    }));
                }
                let orphan = adoptable.as_mut().and_then(|m| m.remove(&chunk_key));
                let holds = match &orphan {
                    Some(o) => self.holds_exactly(o, &chunk.ids).await?,
                    None => false,
                };
                let adopted = match orphan {
                    Some(o) if holds => {
                        tracing::info!(
                            "adopting batch {}, submitted by an interrupted run of this job",
                            o.id
                        );
                        Some(o.id)
                    }
                    Some(o) => {
                        tracing::warn!(
                            "not adopting batch {}: its requests are not exactly this job's",
                            o.id
                        );
                        None
                    }
                    None => None,
                };
                if let Some(id) = adopted {
                    id
                } else {
                    let file = self
                        .call(
                            "uploading the batch file",
                            &format!("{}/files", self.base()),
                            Body::Upload(chunk.bytes),
                            true,
                        )
                        .await?;
                    let file_id = str_field(&file, "id", "the file upload reply")?;
                    let create = json!({
                        "input_file_id": file_id,
                        "endpoint": "/v1/chat/completions",
                        "completion_window": "24h",
                        "metadata": {"distill_job": job_key, "distill_chunk": chunk_key, "distill_task": self.spec.name},
                    });
                    self.create_once(&create, &chunk_key, &chunk.ids, job_key, known)
                        .await?
                }
            }
            Provider::Anthropic => {
                let mut body = Vec::with_capacity(chunk.bytes.len() + 16);
                body.extend_from_slice(b"{\"requests\":[");
                body.extend_from_slice(&chunk.bytes);
                body.extend_from_slice(b"]}");
                let batch = self
                    .call(
                        "creating the message batch",
                        &format!("{}/messages/batches", self.base()),
                        Body::Json(body),
                        false,
                    )
                    .await
                    .map_err(|e| match e {
                        TeachError::Uncertain { what, url, message } => TeachError::Uncertain {
                            what,
                            url,
                            message: format!(
                                "{message}. Anthropic message batches carry no tag to find them \
                                 by, so the run stops here rather than risk a second batch: look \
                                 for a new one in the Console (Message Batches) and cancel it \
                                 before running again, or the rerun pays for these {n} requests \
                                 twice"
                            ),
                        },
                        e => e,
                    })?;
                str_field(&batch, "id", "the message batch reply")?
            }
        };
        Ok(BatchRef {
            id,
            provider: provider.as_str().to_string(),
            n,
            ranges,
            round: None,
        })
    }

    /// Creates an OpenAI batch from an uploaded file, exactly once. A creation whose outcome is
    /// uncertain (a 502 from a proxy that gave up while OpenAI went on) is not simply sent
    /// again: the batch would exist twice, each billed. The batches listing is asked first
    /// for one tagged with this chunk's key that holds exactly its requests; only when there
    /// is none is the creation retried.
    async fn create_once(
        &self,
        create: &Value,
        chunk_key: &str,
        ids: &[String],
        job_key: &str,
        known: &HashSet<String>,
    ) -> Result<String> {
        let url = format!("{}/batches", self.base());
        let body = serde_json::to_vec(create).unwrap_or_default();
        let max = self.client.max_retries();
        let mut attempt = 0;
        loop {
            let message = match self
                .call("creating the batch", &url, Body::Json(body.clone()), false)
                .await
            {
                Ok(batch) => {
                    let id = str_field(&batch, "id", "the batch reply")?;
                    if batch.get("status").and_then(Value::as_str) == Some("failed") {
                        tracing::warn!(
                            "batch {id} failed validation: {}; its requests will be sent in real time",
                            batch.get("errors").cloned().unwrap_or(serde_json::Value::Null)
                        );
                    }
                    return Ok(id);
                }
                Err(TeachError::Uncertain { message, .. }) => message,
                Err(e) => return Err(e),
            };
            // A listing can lag a batch just made: look a few times before deciding it was not.
            let mut found = None;
            for look in 0..3 {
                tokio::time::sleep(self.client.retry_delay(attempt + look + 2)).await;
                let listed = self.orphans(job_key, known).await.map_err(|e| {
                    uncertain(
                        "creating the batch",
                        &url,
                        format!(
                            "{message}; and listing batches to see whether it was created \
                             failed ({e}). Run the same command again: it looks for the batch \
                             (tagged distill_chunk={chunk_key}) before creating another"
                        ),
                    )
                })?;
                if let Some(o) = listed.get(chunk_key) {
                    found = Some(o.clone());
                    break;
                }
            }
            match found {
                // Its tag is a hash of exactly these requests' ids: never create another.
                Some(o) if self.holds_exactly(&o, ids).await? => {
                    tracing::info!(
                        "creating the batch failed ({message}), but it was created: using {}",
                        o.id
                    );
                    return Ok(o.id);
                }
                Some(o) => {
                    return Err(uncertain(
                        "creating the batch",
                        &url,
                        format!(
                            "{message}; batch {} carries this chunk's tag but holds other \
                             requests: look at it before running again",
                            o.id
                        ),
                    ))
                }
                None if attempt < max => {
                    tracing::warn!(
                        "creating the batch failed ({message}); it was not created, trying again"
                    );
                    attempt += 1;
                }
                None => {
                    return Err(TeachError::Unreachable {
                        url,
                        message: format!(
                            "creating the batch: {message} (after {} attempts)",
                            attempt + 1
                        ),
                    })
                }
            }
        }
    }

    /// Whether an orphan batch's input file holds exactly the requests `ids` (each
    /// `custom_id` carries its input's ordinal and request hash); an error when the file
    /// cannot be read, which says neither.
    pub(crate) async fn holds_exactly(&self, orphan: &Orphan, ids: &[String]) -> Result<bool> {
        let url = format!("{}/files/{}/content", self.base(), orphan.input_file_id);
        let bytes = match self
            .raw(
                "reading an earlier batch's input file",
                &url,
                Body::None,
                true,
            )
            .await
        {
            Ok(b) => b,
            Err(e) => {
                return Err(uncertain(
                    "checking an earlier batch",
                    &url,
                    format!(
                        "cannot read the input file of batch {}, tagged as this job's ({e}); \
                         the run stops rather than risk creating a second batch: run the same \
                         command again",
                        orphan.id
                    ),
                ))
            }
        };
        let mut theirs: Vec<String> = Vec::with_capacity(ids.len());
        for line in bytes.split(|b| *b == b'\n') {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let Some(cid) = serde_json::from_slice::<Value>(line).ok().and_then(|v| {
                v.get("custom_id")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            }) else {
                return Ok(false);
            };
            theirs.push(cid);
        }
        let mut ours = ids.to_vec();
        ours.sort_unstable();
        theirs.sort_unstable();
        Ok(ours == theirs)
    }

    /// OpenAI batches tagged with this job's key that the journal does not know:
    /// `distill_chunk` → the batch.
    pub(crate) async fn orphans(
        &self,
        job_key: &str,
        known: &HashSet<String>,
    ) -> Result<HashMap<String, Orphan>> {
        let mut out = HashMap::new();
        let mut after: Option<String> = None;
        for _ in 0..10 {
            let mut url = format!("{}/batches?limit=100", self.base());
            if let Some(a) = &after {
                url.push_str(&format!("&after={a}"));
            }
            let page = self.call("listing batches", &url, Body::None, true).await?;
            let data = page.get("data").and_then(Value::as_array);
            for b in data.into_iter().flatten() {
                let meta = b.get("metadata").unwrap_or(&Value::Null);
                let id = b.get("id").and_then(Value::as_str).unwrap_or_default();
                let status = b.get("status").and_then(Value::as_str).unwrap_or_default();
                if meta.get("distill_job").and_then(Value::as_str) == Some(job_key)
                    && !known.contains(id)
                    && !matches!(status, "failed" | "cancelled" | "cancelling")
                {
                    let input_file_id = b.get("input_file_id").and_then(Value::as_str);
                    if let (Some(c), Some(f)) = (
                        meta.get("distill_chunk").and_then(Value::as_str),
                        input_file_id,
                    ) {
                        out.entry(c.to_string()).or_insert_with(|| Orphan {
                            id: id.to_string(),
                            input_file_id: f.to_string(),
                        });
                    }
                }
                after = Some(id.to_string());
            }
            if page.get("has_more").and_then(Value::as_bool) != Some(true) {
                break;
            }
        }
        Ok(out)
    }

    pub(crate) async fn poll(&self, b: &BatchRef) -> Result<Poll> {
        match self.provider() {
            Provider::Openai => {
                let v = self
                    .call(
                        "polling the batch",
                        &format!("{}/batches/{}", self.base(), b.id),
                        Body::None,
                        true,
                    )
                    .await?;
                let status = v.get("status").and_then(Value::as_str).unwrap_or_default();
                let counts = v.get("request_counts").unwrap_or(&Value::Null);
                let count = |k: &str| counts.get(k).and_then(Value::as_u64).unwrap_or(0);
                if !matches!(status, "completed" | "failed" | "expired" | "cancelled") {
                    return Ok(Poll::Running {
                        finished: count("completed") + count("failed"),
                    });
                }
                let mut results = Results::new();
                for field in ["output_file_id", "error_file_id"] {
                    if let Some(fid) = v.get(field).and_then(Value::as_str) {
                        let url = format!("{}/files/{fid}/content", self.base());
                        let bytes = self
                            .raw("downloading the batch results", &url, Body::None, true)
                            .await?;
                        parse_openai_results(&bytes, &mut results, &b.id);
                    }
                }
                if status != "completed" {
                    tracing::warn!("batch {} ended as `{status}`", b.id);
                }
                Ok(Poll::Ended(results))
            }
            Provider::Anthropic => {
                let v = self
                    .call(
                        "polling the message batch",
                        &format!("{}/messages/batches/{}", self.base(), b.id),
                        Body::None,
                        true,
                    )
                    .await?;
                let counts = v.get("request_counts").unwrap_or(&Value::Null);
                let count = |k: &str| counts.get(k).and_then(Value::as_u64).unwrap_or(0);
                if v.get("processing_status").and_then(Value::as_str) != Some("ended") {
                    return Ok(Poll::Running {
                        finished: count("succeeded")
                            + count("errored")
                            + count("canceled")
                            + count("expired"),
                    });
                }
                let url = v
                    .get("results_url")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| {
                        format!("{}/messages/batches/{}/results", self.base(), b.id)
                    });
                let bytes = self
                    .raw(
                        "downloading the message batch results",
                        &url,
                        Body::None,
                        true,
                    )
                    .await?;
                let mut results = Results::new();
                parse_anthropic_results(&bytes, &mut results, &b.id);
                Ok(Poll::Ended(results))
            }
        }
    }

    pub(crate) async fn call(
        &self,
        what: &str,
        url: &str,
        body: Body,
        idempotent: bool,
    ) -> Result<Value> {
        let bytes = self.raw(what, url, body, idempotent).await?;
        serde_json::from_slice(&bytes).map_err(|e| {
            TeachError::Invalid(format!(
                "{what}: {url} did not answer JSON ({e}): {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ))
        })
    }

    /// One batch-API call with retries on 408/409/429/5xx and connection errors. A call that
    /// is not `idempotent` (creating a batch) is only retried when it certainly did not run:
    /// the connection failed, or the provider answered 429 (rate limited) or 529 (overloaded).
    /// Any other failure of it (a 5xx, often a proxy that gave up waiting while the provider
    /// went on; a timeout; a cut reply) is [`TeachError::Uncertain`]: the caller finds out.
    pub(crate) async fn raw(
        &self,
        what: &str,
        url: &str,
        body: Body,
        idempotent: bool,
    ) -> Result<Vec<u8>> {
        let c = self.client;
        let wire = c.wire();
        let max = c.max_retries();
        let mut last = String::new();
        for attempt in 0..=max {
            let mut req = match &body {
                Body::None => c.http().get(url),
                Body::Json(b) => c
                    .http()
                    .post(url)
                    .header("content-type", "application/json")
                    .body(b.clone()),
                Body::Upload(b) => {
                    let part = reqwest::multipart::Part::bytes(b.clone())
                        .file_name("distill-batch.jsonl")
                        .mime_str("application/jsonl")
                        .map_err(|e| TeachError::Invalid(e.to_string()))?;
                    let form = reqwest::multipart::Form::new()
                        .text("purpose", "batch")
                        .part("file", part);
                    c.http().post(url).multipart(form)
                }
            };
            req = req.timeout(Duration::from_secs(600));
            for (k, v) in wire.auth_headers(c.key()) {
                req = req.header(k, v);
            }
            let wait = match req.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let after = crate::client::retry_after(resp.headers());
                    match resp.bytes().await {
                        Ok(bytes) if (200..300).contains(&status) => return Ok(bytes.to_vec()),
                        Ok(bytes) => {
                            let err = wire.parse_error(status, &bytes);
                            let message = redact(&err.message, c.key());
                            if !(matches!(status, 408 | 409 | 429) || status >= 500) {
                                return Err(TeachError::Fatal {
                                    provider: format!(
                                        "{} batch API ({what}, {url})",
                                        wire.provider.as_str()
                                    ),
                                    status,
                                    kind: err.kind,
                                    message,
                                });
                            }
                            last = format!("HTTP {status} {}: {message}", err.kind);
                            if !idempotent && !matches!(status, 429 | 529) {
                                return Err(uncertain(what, url, last));
                            }
                            after.unwrap_or_else(|| c.retry_delay(attempt))
                        }
                        Err(e) => {
                            last =
                                format!("reading the reply: {}", redact(&e.to_string(), c.key()));
                            if !idempotent {
                                return Err(uncertain(what, url, last));
                            }
                            c.retry_delay(attempt)
                        }
                    }
                }
                Err(e) => {
                    last = redact(&e.to_string(), c.key());
                    if !idempotent && !e.is_connect() {
                        return Err(uncertain(what, url, last));
                    }
                    c.retry_delay(attempt)
                }
            };
            if attempt < max {
                tracing::debug!("{what}: retrying in {wait:?}: {last}");
                tokio::time::sleep(wait).await;
            }
        }
        Err(TeachError::Unreachable {
            url: url.to_string(),
            message: format!("{what}: {last}"),
        })
    }
}

fn uncertain(what: &str, url: &str, message: String) -> TeachError {
    TeachError::Uncertain {
        what: what.to_string(),
        url: url.to_string(),
        message,
    }
}

pub(crate) fn str_field(v: &Value, field: &str, what: &str) -> Result<String> {
    v.get(field)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| TeachError::Invalid(format!("{what} has no `{field}`: {v}")))
}

/// Whether an OpenAI per-request error code means the request itself is bad (so retrying it
/// cannot help) rather than that it was not run.
pub(crate) fn is_rejection(code: &str) -> bool {
    ["invalid", "missing", "mismatch", "duplicate", "unsupported"]
        .iter()
        .any(|k| code.contains(k))
}

/// Reads a batch's results file (JSONL, one line per request, any order): each line with one
/// of our `custom_id`s becomes `item(line)`; unreadable lines are skipped with a warning.
fn parse_results(
    bytes: &[u8],
    out: &mut Results,
    batch: &str,
    item: fn(&Value, &str) -> ItemResult,
) {
    for line in bytes.split(|b| *b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Ok(v) = serde_json::from_slice::<Value>(line) else {
            tracing::warn!("batch {batch}: skipping an unreadable result line");
            continue;
        };
        let Some(cid) = v
            .get("custom_id")
            .and_then(Value::as_str)
            .filter(|c| ordinal_of(c).is_some())
        else {
            continue;
        };
        out.insert(cid.to_string(), item(&v, batch));
    }
}

pub(crate) fn parse_openai_results(bytes: &[u8], out: &mut Results, batch: &str) {
    parse_results(bytes, out, batch, openai_item)
}

pub(crate) fn parse_anthropic_results(bytes: &[u8], out: &mut Results, batch: &str) {
    parse_results(bytes, out, batch, anthropic_item)
}

/// One line of an OpenAI batch's output: `response` (status and body) or `error`.
fn openai_item(v: &Value, batch: &str) -> ItemResult {
    let resp = v.get("response").filter(|r| !r.is_null());
    match resp {
        Some(r) => {
            let status = r.get("status_code").and_then(Value::as_u64).unwrap_or(0);
            let body = r.get("body").unwrap_or(&Value::Null);
            if status == 200 {
                match crate::provider::openai::parse_reply(
                    &serde_json::to_vec(body).unwrap_or_default(),
                ) {
                    Ok(reply) => ItemResult::Reply(reply),
                    Err(m) => ItemResult::Failed(format!("batch {batch}: {m}")),
                }
            } else {
                let msg = body
                    .get("error")
                    .and_then(|e| e.get("message"))
                    .and_then(Value::as_str)
                    .unwrap_or("error");
                let m = format!("batch {batch}: HTTP {status}: {msg}");
                if matches!(status, 408 | 409 | 429) || status >= 500 {
                    ItemResult::Retry(m)
                } else {
                    ItemResult::Failed(m)
                }
            }
        }
        None => {
            let err = v.get("error").unwrap_or(&Value::Null);
            let code = err.get("code").and_then(Value::as_str).unwrap_or("error");
            let msg = err.get("message").and_then(Value::as_str).unwrap_or("");
            let m = format!("batch {batch}: {code}: {msg}");
            if is_rejection(code) {
                ItemResult::Failed(m)
            } else {
                ItemResult::Retry(m)
            }
        }
    }
}

/// One line of an Anthropic message batch's output: `result` succeeded, errored or other.
fn anthropic_item(v: &Value, batch: &str) -> ItemResult {
    let r = v.get("result").unwrap_or(&Value::Null);
    let kind = r.get("type").and_then(Value::as_str).unwrap_or_default();
    match kind {
        "succeeded" => match anthropic::message_reply(r.get("message").unwrap_or(&Value::Null)) {
            Ok(reply) => ItemResult::Reply(reply),
            Err(m) => ItemResult::Failed(format!("batch {batch}: {m}")),
        },
        "errored" => {
            let e = r.get("error").map(|e| e.get("error").unwrap_or(e));
            let t = e
                .and_then(|e| e.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("error");
            let msg = e
                .and_then(|e| e.get("message"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let m = format!("batch {batch}: {t}: {msg}");
            if t == "invalid_request_error" {
                ItemResult::Failed(m)
            } else {
                ItemResult::Retry(m)
            }
        }
        other => ItemResult::Retry(format!("batch {batch}: request {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_ids_round_trip_and_ranges_compress() {
        let id = custom_id(42, "0123456789abcdef0123");
        assert_eq!(id, "in-42-0123456789abcdef");
        assert_eq!(ordinal_of(&id), Some(42));
        assert_eq!(ordinal_of("x-1"), None);
        let c = Chunk {
            ordinals: vec![0, 1, 2, 5, 6, 9],
            ..Default::default()
        };
        assert_eq!(c.ranges(), vec![[0, 3], [5, 7], [9, 10]]);
    }

    #[test]
    fn classifies_result_lines() {
        let mut r = Results::new();
        let lines = concat!(
            r#"{"custom_id":"in-0-h","response":{"status_code":200,"body":{"choices":[{"message":{"content":"{\"label\":\"a\"}"}}],"usage":{"prompt_tokens":5,"completion_tokens":2}}},"error":null}"#,
            "\n",
            r#"{"custom_id":"in-1-h","response":null,"error":{"code":"batch_expired","message":"late"}}"#,
            "\n",
            r#"{"custom_id":"in-2-h","response":{"status_code":400,"body":{"error":{"message":"bad"}}},"error":null}"#,
            "\n",
            r#"{"custom_id":"in-3-h","response":{"status_code":500,"body":{}},"error":null}"#,
            "\n"
        );
        parse_openai_results(lines.as_bytes(), &mut r, "b1");
        assert!(matches!(&r["in-0-h"], ItemResult::Reply(x) if x.usage.prompt_tokens == 5));
        assert!(matches!(&r["in-1-h"], ItemResult::Retry(_)));
        assert!(matches!(&r["in-2-h"], ItemResult::Failed(m) if m.contains("bad")));
        assert!(matches!(&r["in-3-h"], ItemResult::Retry(_)));
        let mut a = Results::new();
        let lines = concat!(
            r#"{"custom_id":"in-7-h","result":{"type":"succeeded","message":{"content":[{"type":"text","text":"x"}],"usage":{"input_tokens":3,"output_tokens":1}}}}"#,
            "\n",
            r#"{"custom_id":"in-8-h","result":{"type":"expired"}}"#,
            "\n",
            r#"{"custom_id":"in-9-h","result":{"type":"errored","error":{"type":"error","error":{"type":"invalid_request_error","message":"no"}}}}"#,
            "\n"
        );
        parse_anthropic_results(lines.as_bytes(), &mut a, "m1");
        assert!(matches!(&a["in-7-h"], ItemResult::Reply(x) if x.text == "x"));
        assert!(matches!(&a["in-8-h"], ItemResult::Retry(_)));
        assert!(matches!(&a["in-9-h"], ItemResult::Failed(_)));
    }
}
