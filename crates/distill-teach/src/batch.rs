//! `--batch`: label through the providers' Batch APIs at batch prices.
//!
//! - **OpenAI**: the requests go into a JSONL file uploaded to `/v1/files`
//!   (`purpose=batch`), a batch is created on `/v1/batches` (`endpoint
//!   /v1/chat/completions`, `completion_window 24h`), polled until it ends, and its
//!   `output_file_id` and `error_file_id` are downloaded and matched back by `custom_id`.
//! - **Anthropic**: one `/v1/messages/batches` request carries the requests; it is polled
//!   until `processing_status` is `ended` and its `results_url` JSONL is read.
//!
//! What it guarantees:
//! - Inputs whose request is already in the response cache are answered from it and never
//!   submitted; identical requests are submitted once.
//! - At most [`MAX_BATCH_REQUESTS`] requests (and [`MAX_BATCH_BYTES`]) go in one batch.
//! - Each batch id is appended (and fsync'd) to the journal (`<out>.partial`) the moment the
//!   provider accepts it. A rerun (`--resume`, or simply the same command) polls those batches
//!   by id instead of submitting their inputs again, so a crash while waiting costs nothing.
//!   OpenAI batches are also tagged with `metadata` (`distill_job`, `distill_chunk`); a rerun
//!   adopts a tagged batch it finds in `GET /v1/batches`, which closes the gap between the
//!   provider accepting a batch and the journal line reaching the disk. The job key covers
//!   everything that shapes the requests (the journal's
//!   [`RequestShape`](crate::journal::RequestShape)), and a batch is
//!   adopted only when its input file holds exactly this chunk's requests: every `custom_id`
//!   (`in-<ordinal>-<request hash>`) must be one this job would send. A batch another job left
//!   behind (another prompt, output or state directory) is never adopted. (Anthropic batches
//!   have no metadata: a kill inside that gap of a few milliseconds would resubmit.)
//! - A result is used only when its `custom_id` carries the request hash of the request this
//!   job sends for that input; anything else is retried in real time.
//! - Answers are journalled as they arrive (group commits of whatever is ready), including
//!   items retried in real time, so a kill pays again for at most the calls in flight.
//! - Replies are priced at the table's batch prices (half the real-time price when it has
//!   none); every ledger row carries its batch id and every record has `batch: true`.
//! - **Items a batch did not answer are retried in real time** (at real-time prices): expired
//!   or cancelled items, items with a 408/429/5xx result, items missing from the results and
//!   every item of a batch that failed as a whole. Items the provider rejected as invalid
//!   (a 4xx result) are recorded as `failed` with the provider's message, as in the
//!   real-time path; a rerun tries them again.
//! - A reply that is not a valid label gets the same one repair request as the real-time
//!   path, sent in real time; a reply still invalid after it is recorded as `invalid`.
//! - `--max-spend` reserves each submitted request's real-time worst case (reply at
//!   `max_tokens`, plus a repair), because an expired item is retried in real time; inputs
//!   that do not fit are not submitted and the run stops as over budget.

use crate::client::{CallContext, LabelOutcome, Pending, TeacherClient};
use crate::error::{redact, Result, TeachError};
use crate::journal::{encode_batch_line, encode_line, BatchRef, Journal, JournalHeader, Ordinals};
use crate::label::parse_label;
use crate::provider::{anthropic, Reply};
use crate::runner::{finish, progress_bar, reconcile, TeachOptions, TeachSummary};
use distill_core::input::{read_inputs, Columns, InputItem};
use distill_core::ledger::LedgerRow;
use distill_core::{Provider, RecordStatus, TaskSpec, TeacherRecord};
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most requests distill puts in one provider batch (OpenAI allows 50,000; Anthropic 100,000).
pub const MAX_BATCH_REQUESTS: usize = 50_000;
/// Most bytes of requests in one batch: under OpenAI's 200 MB input file limit (Anthropic
/// allows 256 MB).
pub const MAX_BATCH_BYTES: usize = 190 * 1024 * 1024;

/// Records written to the journal per fsync while collecting results.
const WRITE_GROUP: usize = 2048;

/// The `custom_id` of the request for input ordinal `i` whose cache key is `request_hash`
/// (valid for both providers: at most 64 characters of `[A-Za-z0-9_-]`).
pub fn custom_id(ordinal: u64, request_hash: &str) -> String {
    format!(
        "in-{ordinal}-{}",
        request_hash.get(..16).unwrap_or(request_hash)
    )
}

/// The input ordinal a `custom_id` names.
fn ordinal_of(custom_id: &str) -> Option<u64> {
    let rest = custom_id.strip_prefix("in-")?;
    rest.split('-').next()?.parse().ok()
}

/// What a batch said about one request.
#[derive(Debug, Clone)]
enum ItemResult {
    Reply(Reply),
    /// Not answered (expired, cancelled, transient error, missing): retried in real time.
    Retry(String),
    /// Rejected by the provider: recorded as failed.
    Failed(String),
}

/// A finished batch's results by `custom_id`.
type Results = HashMap<String, ItemResult>;

enum Poll {
    Running { finished: u64 },
    Ended(Results),
}

/// Requests being gathered into one batch.
#[derive(Default)]
struct Chunk {
    ordinals: Vec<u64>,
    /// The `custom_id` of each request, in the same order.
    ids: Vec<String>,
    bytes: Vec<u8>,
}

impl Chunk {
    fn ranges(&self) -> Vec<[u64; 2]> {
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

/// Journal, counters and the set of inputs with a final record.
struct Sink {
    journal: Journal,
    done: Ordinals,
    summary: TeachSummary,
    buf: Vec<u8>,
}

struct Done {
    ordinal: u64,
    record: TeacherRecord,
    pending: Pending,
    outcome: LabelOutcome,
}

impl Sink {
    /// Appends records to the journal (one fsync), then their ledger rows and cache entries.
    fn write(&mut self, client: &TeacherClient, items: Vec<Done>) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        self.buf.clear();
        let b = self.journal.next_batch;
        for d in &items {
            encode_line(&mut self.buf, d.ordinal, b, &d.record, &d.pending);
        }
        self.journal.append(&self.buf)?;
        let mut merged = Pending::default();
        for d in items {
            let o = &d.outcome;
            let s = &mut self.summary;
            match o.status {
                RecordStatus::Ok => s.ok += 1,
                RecordStatus::Invalid => s.invalid += 1,
                RecordStatus::Failed => s.failed += 1,
            }
            if o.status != RecordStatus::Failed {
                self.done.insert(d.ordinal);
            }
            s.cached += u64::from(o.cached);
            s.paid_calls += u64::from(o.paid_calls);
            s.usage.add(&o.usage);
            s.cost_usd += o.cost_usd;
            merged.ledger.extend(d.pending.ledger);
            merged.cache.extend(d.pending.cache);
        }
        client.persist(&merged)
    }
}

/// The whole `--batch` job; called by [`crate::run_teach`] after the common checks.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_batch(
    spec: &TaskSpec,
    opts: &TeachOptions,
    client: Arc<TeacherClient>,
    input: &Path,
    out: &Path,
    jpath: &Path,
    header: JournalHeader,
    total: u64,
    started: Instant,
) -> Result<TeachSummary> {
    let had_journal = jpath.exists() && !opts.restart;
    let job_key = header.job_key();
    let (journal, recovered) = Journal::open(jpath, &header, opts.restart)?;
    reconcile(&client, &recovered.last_batch)?;
    let done = recovered.done;
    let resumed = (0..total).filter(|i| done.contains(*i)).count() as u64;
    let spent_before = recovered.spent_usd;
    let mut sink = Sink {
        journal,
        done,
        summary: TeachSummary {
            out: out.to_path_buf(),
            total,
            resumed,
            earlier_cost_usd: spent_before,
            ..Default::default()
        },
        buf: Vec::with_capacity(1 << 20),
    };
    let api = Api {
        client: &client,
        spec,
    };
    let ctx = CallContext::teach();
    let cols = Columns::from(&spec.input);
    let concurrency = opts.concurrency.max(1);
    let batch_size = opts.batch_size.clamp(1, MAX_BATCH_REQUESTS);

    // Batches from an earlier run that still owe records.
    let known: HashSet<String> = recovered.batches.iter().map(|b| b.id.clone()).collect();
    let mut waiting: Vec<BatchRef> = recovered
        .batches
        .into_iter()
        .filter(|b| b.ordinals().any(|i| i < total && !sink.done.contains(i)))
        .collect();
    let mut in_batch = Ordinals::default();
    for b in &waiting {
        b.ordinals().for_each(|i| in_batch.insert(i));
    }
    // Request hashes already submitted, so an identical request is never submitted twice.
    let mut submitted: HashSet<u128> = HashSet::new();
    let estimator = crate::dry_run::Estimator::new(spec, &client);
    // --max-spend caps the job: earlier runs' spending and the worst case of the requests
    // still out in their batches count.
    let mut reserved = spent_before;
    if !waiting.is_empty() {
        let reader = read_inputs(input, spec.input.format, &cols)?;
        for (ordinal, item) in (0u64..).zip(reader) {
            if ordinal >= total {
                break;
            }
            let item = item?;
            if in_batch.contains(ordinal) && !sink.done.contains(ordinal) {
                submitted.insert(short_hash(&client.request_for(&item.text).1));
                reserved += 2.0 * estimator.worst_case_cost(&client, &item.text);
            }
        }
    }

    // Plan the rest: cache hits are answered now, misses go into new batches, duplicates of a
    // submitted request wait for its answer.
    let mut stopped_by_budget = false;
    let mut deferred: Vec<u64> = Vec::new();
    let mut from_cache: Vec<(u64, InputItem)> = Vec::new();
    let mut chunk = Chunk::default();
    let mut adoptable: Option<HashMap<String, Orphan>> = None;
    let mut new_batches = 0u64;
    let reader = read_inputs(input, spec.input.format, &cols)?;
    for (ordinal, item) in (0u64..).zip(reader) {
        if ordinal >= total {
            break;
        }
        let item = item?;
        if sink.done.contains(ordinal) || in_batch.contains(ordinal) {
            continue;
        }
        let (body, hash) = client.request_for(&item.text);
        if submitted.contains(&short_hash(&hash)) {
            deferred.push(ordinal);
            continue;
        }
        let cached = match client.cache() {
            Some(c) => c.get(&hash)?.is_some(),
            None => false,
        };
        if cached {
            from_cache.push((ordinal, item));
            if from_cache.len() >= WRITE_GROUP {
                let items = std::mem::take(&mut from_cache)
                    .into_iter()
                    .map(|(o, it)| (o, it, None))
                    .collect();
                resolve(&client, &ctx, &mut sink, items, None, concurrency).await?;
            }
            continue;
        }
        if let Some(max) = opts.max_spend {
            let worst = 2.0 * estimator.worst_case_cost(&client, &item.text);
            if reserved + worst > max {
                stopped_by_budget = true;
                break;
            }
            reserved += worst;
        }
        submitted.insert(short_hash(&hash));
        api.add(&mut chunk, ordinal, &hash, &body);
        if chunk.ordinals.len() >= batch_size || chunk.bytes.len() >= MAX_BATCH_BYTES {
            let c = std::mem::take(&mut chunk);
            let b = api
                .submit(c, &job_key, had_journal, &known, &mut adoptable)
                .await?;
            sink.journal.append(&encode_batch_line(&b))?;
            new_batches += 1;
            waiting.push(b);
        }
    }
    if !chunk.ordinals.is_empty() {
        let b = api
            .submit(chunk, &job_key, had_journal, &known, &mut adoptable)
            .await?;
        sink.journal.append(&encode_batch_line(&b))?;
        new_batches += 1;
        waiting.push(b);
    }
    let items = from_cache
        .into_iter()
        .map(|(o, it)| (o, it, None))
        .collect();
    resolve(&client, &ctx, &mut sink, items, None, concurrency).await?;
    sink.summary.batch_ids = waiting.iter().map(|b| b.id.clone()).collect();
    if new_batches > 0 {
        tracing::info!(
            "submitted {new_batches} batch(es) of {} requests; ids recorded in {}",
            waiting.iter().map(|b| b.n).sum::<u64>(),
            jpath.display()
        );
    }

    if opts.batch_no_wait && !waiting.is_empty() {
        let mut s = sink.summary;
        s.awaiting_batches = true;
        s.stopped_by_budget = stopped_by_budget;
        s.elapsed = started.elapsed();
        return Ok(s);
    }

    // Wait for every batch, collecting each as soon as it ends.
    let bar = progress_bar(opts.progress, waiting.iter().map(|b| b.n).sum(), 0);
    let mut collected = 0u64;
    let mut delay = (opts.batch_poll / 8)
        .max(Duration::from_millis(10))
        .min(opts.batch_poll.max(Duration::from_millis(10)));
    while !waiting.is_empty() {
        let mut still = Vec::with_capacity(waiting.len());
        let mut running = 0u64;
        for b in waiting {
            match api.poll(&b).await.map_err(|e| hint(e, &b, jpath))? {
                Poll::Running { finished } => {
                    running += finished;
                    still.push(b);
                }
                Poll::Ended(results) => {
                    collect(
                        &client,
                        &ctx,
                        &mut sink,
                        &b,
                        results,
                        input,
                        spec,
                        total,
                        concurrency,
                    )
                    .await?;
                    collected += b.n;
                }
            }
        }
        waiting = still;
        bar.set_position(collected + running);
        bar.set_message(format!(
            "{} batch(es) running, ${:.4}",
            waiting.len(),
            sink.summary.cost_usd
        ));
        if !waiting.is_empty() {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(opts.batch_poll.max(Duration::from_millis(10)));
        }
    }
    bar.finish_and_clear();

    // Duplicates of submitted requests: now answered from the cache (or in real time when
    // their twin failed).
    if !deferred.is_empty() {
        let want: HashSet<u64> = deferred.into_iter().collect();
        let mut items = Vec::new();
        let reader = read_inputs(input, spec.input.format, &cols)?;
        for (ordinal, item) in (0u64..).zip(reader) {
            if ordinal >= total {
                break;
            }
            if want.contains(&ordinal) {
                items.push((ordinal, item?, None));
                if items.len() >= WRITE_GROUP {
                    resolve(
                        &client,
                        &ctx,
                        &mut sink,
                        std::mem::take(&mut items),
                        None,
                        concurrency,
                    )
                    .await?;
                }
            }
        }
        resolve(&client, &ctx, &mut sink, items, None, concurrency).await?;
    }

    let mut summary = sink.summary;
    summary.stopped_by_budget = stopped_by_budget;
    summary.elapsed = started.elapsed();
    let paid_records = summary.ok + summary.invalid + summary.failed - summary.cached;
    if paid_records > 0 {
        summary.cost_per_1000 = Some(summary.cost_usd / paid_records as f64 * 1000.0);
    }
    if !stopped_by_budget {
        finish(jpath, out, total)?;
        summary.complete = true;
    }
    Ok(summary)
}

fn short_hash(hex: &str) -> u128 {
    u128::from_str_radix(hex.get(..32).unwrap_or(hex), 16).unwrap_or(0)
}

/// Adds the journal's name to an error met while a batch was running.
fn hint(e: TeachError, b: &BatchRef, jpath: &Path) -> TeachError {
    match e {
        TeachError::Unreachable { url, message } => TeachError::Unreachable {
            url,
            message: format!(
                "{message}; batch {} is recorded in {}: run the same command with --resume to pick it up",
                b.id,
                jpath.display()
            ),
        },
        other => other,
    }
}

/// Collects one finished batch: its answered inputs, its unanswered ones in real time.
#[allow(clippy::too_many_arguments)]
async fn collect(
    client: &Arc<TeacherClient>,
    ctx: &CallContext,
    sink: &mut Sink,
    b: &BatchRef,
    mut results: Results,
    input: &Path,
    spec: &TaskSpec,
    total: u64,
    concurrency: usize,
) -> Result<()> {
    let mut owed = Ordinals::default();
    let mut n = 0u64;
    for i in b.ordinals() {
        if i < total && !sink.done.contains(i) {
            owed.insert(i);
            n += 1;
        }
    }
    if n == 0 {
        return Ok(());
    }
    let (answered, retried, rejected) = results.values().fold((0, 0, 0), |a, r| match r {
        ItemResult::Reply(_) => (a.0 + 1, a.1, a.2),
        ItemResult::Retry(_) => (a.0, a.1 + 1, a.2),
        ItemResult::Failed(_) => (a.0, a.1, a.2 + 1),
    });
    let missing = b.n.saturating_sub(answered + retried + rejected);
    if retried + missing > 0 {
        tracing::warn!(
            "batch {}: {} of {} requests not answered (expired, cancelled or errored); retrying them in real time",
            b.id,
            retried + missing,
            b.n
        );
    }
    let reader = read_inputs(input, spec.input.format, &Columns::from(&spec.input))?;
    let mut items = Vec::new();
    for (ordinal, item) in (0u64..).zip(reader) {
        if ordinal >= total {
            break;
        }
        if !owed.contains(ordinal) {
            continue;
        }
        let item = item?;
        // Only a result for exactly the request this job sends counts.
        let want = custom_id(ordinal, &client.request_for(&item.text).1);
        let r = results.remove(&want).unwrap_or_else(|| {
            ItemResult::Retry(format!("no result for this request in batch {}", b.id))
        });
        items.push((ordinal, item, Some(r)));
        if items.len() >= WRITE_GROUP {
            resolve(
                client,
                ctx,
                sink,
                std::mem::take(&mut items),
                Some(&b.id),
                concurrency,
            )
            .await?;
        }
    }
    if !results.is_empty() {
        tracing::warn!(
            "batch {}: ignored {} result(s) whose custom_id is not a request of this job",
            b.id,
            results.len()
        );
    }
    resolve(client, ctx, sink, items, Some(&b.id), concurrency).await
}

/// Turns items into records (a batch reply, a real-time call, or a failure) and writes them.
async fn resolve(
    client: &Arc<TeacherClient>,
    ctx: &CallContext,
    sink: &mut Sink,
    items: Vec<(u64, InputItem, Option<ItemResult>)>,
    batch_id: Option<&str>,
    concurrency: usize,
) -> Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    // Journal answers as they arrive (a group commit of whatever is ready), never holding a
    // whole group of paid answers in memory where a kill would lose them.
    let mut stream = futures::stream::iter(items)
        .map(|(ordinal, item, result)| {
            let client = client.clone();
            let ctx = ctx.clone();
            let batch_id = batch_id.map(str::to_string);
            async move { one(&client, &ctx, ordinal, item, result, batch_id).await }
        })
        .buffer_unordered(concurrency)
        .ready_chunks(WRITE_GROUP);
    let mut first_err = None;
    while let Some(chunk) = stream.next().await {
        let mut done = Vec::with_capacity(chunk.len());
        for r in chunk {
            match r {
                Ok(d) => done.push(d),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        // Whatever was answered is kept even when another item hit a fatal error.
        sink.write(client, done)?;
        if first_err.is_some() {
            break;
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

async fn one(
    client: &TeacherClient,
    ctx: &CallContext,
    ordinal: u64,
    item: InputItem,
    result: Option<ItemResult>,
    batch_id: Option<String>,
) -> Result<Done> {
    let provider = client.provider().as_str();
    let (outcome, pending, batch) = match result {
        None => {
            let (o, p) = client.label_deferred(&item.text, ctx).await?;
            (o, p, false)
        }
        Some(ItemResult::Retry(why)) => {
            tracing::debug!("input {}: {why}; asking in real time", item.id);
            let (o, p) = client.label_deferred(&item.text, ctx).await?;
            (o, p, false)
        }
        Some(ItemResult::Failed(message)) => {
            let (_, hash) = client.request_for(&item.text);
            let o = LabelOutcome {
                label: None,
                status: RecordStatus::Failed,
                raw: None,
                error: Some(message),
                usage: Default::default(),
                cost_usd: 0.0,
                latency_ms: 0,
                cached: false,
                request_hash: hash,
                paid_calls: 0,
            };
            (o, Pending::default(), true)
        }
        Some(ItemResult::Reply(reply)) => {
            let (_, hash) = client.request_for(&item.text);
            let spec = client.spec();
            let valid = parse_label(&reply.text, &spec.labels, client.wire().format).is_ok();
            let cost = client.cost(&reply.usage, true);
            let row = LedgerRow {
                id: None,
                ts: LedgerRow::now(),
                task: spec.name.clone(),
                provider: provider.to_string(),
                model: client.model().to_string(),
                request_hash: hash.clone(),
                usage: reply.usage,
                cost_usd: cost,
                latency_ms: 0,
                status: if valid { "ok" } else { "invalid" }.into(),
                batch_id: batch_id.clone(),
                price_version: client.prices().version.clone(),
                source: ctx.source.clone(),
                tag: ctx.tag.clone(),
            };
            let entry = crate::cache::CacheEntry {
                hash: hash.clone(),
                model: client.model().to_string(),
                reply: reply.clone(),
            };
            // The batch reply answers the first request; a repair, if needed, goes out now.
            client.remember(&hash, reply);
            let (mut o, mut p) = client.label_deferred(&item.text, ctx).await?;
            o.cost_usd += cost;
            o.cached = false;
            o.paid_calls += 1;
            p.ledger.insert(0, row);
            p.cache.insert(0, entry);
            (o, p, true)
        }
    };
    let record = outcome.to_record(
        item.id.clone(),
        item.text,
        item.gold,
        provider,
        client.model(),
        batch,
    );
    Ok(Done {
        ordinal,
        record,
        pending,
        outcome,
    })
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
struct Orphan {
    id: String,
    input_file_id: String,
}

/// The provider's batch endpoints.
struct Api<'a> {
    client: &'a TeacherClient,
    spec: &'a TaskSpec,
}

enum Body {
    None,
    Json(Vec<u8>),
    /// A JSONL file for `/v1/files` with `purpose=batch`.
    Upload(Vec<u8>),
}

impl Api<'_> {
    fn provider(&self) -> Provider {
        self.client.provider()
    }
    fn base(&self) -> &str {
        self.client.base_url()
    }

    /// Serialises one request into the chunk.
    fn add(&self, chunk: &mut Chunk, ordinal: u64, request_hash: &str, body: &Value) {
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
    async fn submit(
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
                    *adoptable = Some(self.orphans(job_key, known).await);
                }
                let orphan = adoptable.as_mut().and_then(|m| m.remove(&chunk_key));
                let adopted = match orphan {
                    Some(o) if self.holds_exactly(&o, &chunk.ids).await => {
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
                    let batch = self
                        .call(
                            "creating the batch",
                            &format!("{}/batches", self.base()),
                            Body::Json(serde_json::to_vec(&create).unwrap_or_default()),
                            false,
                        )
                        .await?;
                    let id = str_field(&batch, "id", "the batch reply")?;
                    if batch.get("status").and_then(Value::as_str) == Some("failed") {
                        tracing::warn!(
                            "batch {id} failed validation: {}; its requests will be sent in real time",
                            batch.get("errors").cloned().unwrap_or(serde_json::Value::Null)
                        );
                    }
                    id
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
                    .await?;
                str_field(&batch, "id", "the message batch reply")?
            }
        };
        Ok(BatchRef {
            id,
            provider: provider.as_str().to_string(),
            n,
            ranges,
        })
    }

    /// Whether an orphan batch's input file holds exactly the requests `ids` (each
    /// `custom_id` carries its input's ordinal and request hash). Any doubt means no.
    async fn holds_exactly(&self, orphan: &Orphan, ids: &[String]) -> bool {
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
                tracing::warn!("cannot read the input file of batch {}: {e}", orphan.id);
                return false;
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
                return false;
            };
            theirs.push(cid);
        }
        let mut ours = ids.to_vec();
        ours.sort_unstable();
        theirs.sort_unstable();
        ours == theirs
    }

    /// OpenAI batches tagged with this job's key that the journal does not know:
    /// `distill_chunk` → the batch. Best effort: a listing error only logs.
    async fn orphans(&self, job_key: &str, known: &HashSet<String>) -> HashMap<String, Orphan> {
        let mut out = HashMap::new();
        let mut after: Option<String> = None;
        for _ in 0..10 {
            let mut url = format!("{}/batches?limit=100", self.base());
            if let Some(a) = &after {
                url.push_str(&format!("&after={a}"));
            }
            let page = match self.call("listing batches", &url, Body::None, true).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(
                        "cannot list batches to find one an interrupted run submitted: {e}"
                    );
                    break;
                }
            };
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
        out
    }

    async fn poll(&self, b: &BatchRef) -> Result<Poll> {
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

    async fn call(&self, what: &str, url: &str, body: Body, idempotent: bool) -> Result<Value> {
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
    /// the connection failed or the server answered 429/5xx.
    async fn raw(&self, what: &str, url: &str, body: Body, idempotent: bool) -> Result<Vec<u8>> {
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
                            after.unwrap_or_else(|| c.retry_delay(attempt))
                        }
                        Err(e) => {
                            last =
                                format!("reading the reply: {}", redact(&e.to_string(), c.key()));
                            if !idempotent {
                                break;
                            }
                            c.retry_delay(attempt)
                        }
                    }
                }
                Err(e) => {
                    last = redact(&e.to_string(), c.key());
                    if !idempotent && !e.is_connect() {
                        break;
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

fn str_field(v: &Value, field: &str, what: &str) -> Result<String> {
    v.get(field)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| TeachError::Invalid(format!("{what} has no `{field}`: {v}")))
}

/// Whether an OpenAI per-request error code means the request itself is bad (so retrying it
/// cannot help) rather than that it was not run.
fn is_rejection(code: &str) -> bool {
    ["invalid", "missing", "mismatch", "duplicate", "unsupported"]
        .iter()
        .any(|k| code.contains(k))
}

fn parse_openai_results(bytes: &[u8], out: &mut Results, batch: &str) {
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
        let resp = v.get("response").filter(|r| !r.is_null());
        let result = match resp {
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
        };
        out.insert(cid.to_string(), result);
    }
}

fn parse_anthropic_results(bytes: &[u8], out: &mut Results, batch: &str) {
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
        let r = v.get("result").unwrap_or(&Value::Null);
        let kind = r.get("type").and_then(Value::as_str).unwrap_or_default();
        let result = match kind {
            "succeeded" => match anthropic::message_reply(r.get("message").unwrap_or(&Value::Null))
            {
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
        };
        out.insert(cid.to_string(), result);
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
