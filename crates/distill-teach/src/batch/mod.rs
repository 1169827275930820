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
//!   items retried in real time, and an item's concurrency slot is released only once its
//!   record is journalled, so a kill pays again for at most `--concurrency` calls.
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

mod api;
pub(crate) mod prefetch;

use crate::client::{CallContext, LabelOutcome, Pending, TeacherClient};
use crate::error::{Result, TeachError};
use crate::journal::{
    encode_batch_line, encode_collected_line, encode_line, BatchRef, Journal, JournalHeader,
    Ordinals,
};
use crate::label::parse_reply;
use crate::runner::{finish, progress_bar, reconcile, TeachOptions, TeachSummary};
pub use api::{answered_count, custom_id};
use api::{running_message, Api, Chunk, ItemResult, Orphan, Pace, Poll, Results};
use distill_core::input::{read_inputs, Columns, InputItem};
use distill_core::ledger::LedgerRow;
use distill_core::{RecordStatus, TaskSpec, TeacherRecord};
use futures::StreamExt;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Most requests distill puts in one provider batch (OpenAI allows 50,000; Anthropic 100,000).
pub const MAX_BATCH_REQUESTS: usize = 50_000;
/// Most bytes of requests in one batch: under OpenAI's 200 MB input file limit (Anthropic
/// allows 256 MB).
pub const MAX_BATCH_BYTES: usize = 190 * 1024 * 1024;

/// Records written to the journal per fsync while collecting results.
const WRITE_GROUP: usize = 2048;

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
    // A batch submitted for more inputs than this run labels (a smaller --limit than the run
    // that sent it) holds answers already paid for past `total`: collecting only the first
    // `total` and then retiring the journal would forget the batch, and a later run would buy
    // the rest again.
    if let Some((b, past)) = recovered.batches.iter().find_map(|b| {
        let past = b
            .ordinals()
            .filter(|&i| i >= total && !done.contains(i))
            .max()?;
        Some((b, past))
    }) {
        return Err(TeachError::file(
            jpath,
            format!(
                "batch {} holds requests for inputs past this run's {total} (up to input {}), \
                 answers already paid for: run with --limit {} or more (or without --limit) to \
                 collect them",
                b.id,
                past + 1,
                past + 1
            ),
        ));
    }
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
                submitted.insert(short_hash(&client.request_for(&item).1));
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
        let (body, hash) = client.request_for(&item);
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
    let mut pace = Pace::new(opts.batch_poll);
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
        bar.set_message(running_message(waiting.len(), sink.summary.cost_usd));
        if !waiting.is_empty() {
            pace.wait().await;
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
pub(crate) fn hint(e: TeachError, b: &BatchRef, jpath: &Path) -> TeachError {
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
        return sink.journal.append(&encode_collected_line(&b.id));
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
        let want = custom_id(ordinal, &client.request_for(&item).1);
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
    resolve(client, ctx, sink, items, Some(&b.id), concurrency).await?;
    sink.journal.append(&encode_collected_line(&b.id))
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
    //
    // An item holds one of `concurrency` slots from before its first call until its record
    // is journalled, as in the real-time path: `buffer_unordered` starts the next item the
    // moment one finishes, before `ready_chunks` hands the finished one to the journal, so
    // without the slots a kill could find `concurrency` calls in flight *plus* the answers
    // finished but not yet journalled, all paid again by the rerun.
    //
    // A fatal error (a revoked key, an exhausted quota) stops new calls, but the calls already
    // out are waited for and their answers journalled: dropping them would cancel requests the
    // provider is billing, and the rerun would pay for them again.
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let stop = Arc::new(AtomicBool::new(false));
    let mut stream = futures::stream::iter(items)
        .map(|(ordinal, item, result)| {
            let client = client.clone();
            let ctx = ctx.clone();
            let batch_id = batch_id.map(str::to_string);
            let (slots, stop) = (slots.clone(), stop.clone());
            async move {
                let slot = slots
                    .acquire_owned()
                    .await
                    .map_err(|_| TeachError::Invalid("scheduler closed".into()))?;
                if stop.load(Ordering::SeqCst) {
                    return Ok(None);
                }
                match one(&client, &ctx, ordinal, item, result, batch_id).await {
                    Ok(done) => Ok(Some((done, slot))),
                    Err(e) => {
                        stop.store(true, Ordering::SeqCst);
                        Err(e)
                    }
                }
            }
        })
        .buffer_unordered(concurrency)
        .ready_chunks(WRITE_GROUP);
    let mut first_err = None;
    while let Some(chunk) = stream.next().await {
        let mut done = Vec::with_capacity(chunk.len());
        let mut held = Vec::with_capacity(chunk.len());
        for r in chunk {
            match r {
                Ok(Some((d, slot))) => {
                    done.push(d);
                    held.push(slot);
                }
                Ok(None) => {}
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        // Whatever was answered is kept even when another item hit a fatal error.
        sink.write(client, done)?;
        // Journalled (and ledgered): the slots may go to the next calls.
        drop(held);
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
            let (o, p) = client.label_deferred(&item, ctx).await?;
            (o, p, false)
        }
        Some(ItemResult::Retry(why)) => {
            tracing::debug!("input {}: {why}; asking in real time", item.id);
            let (o, p) = client.label_deferred(&item, ctx).await?;
            (o, p, false)
        }
        Some(ItemResult::Failed(message)) => {
            let (_, hash) = client.request_for(&item);
            let o = LabelOutcome {
                output: None,
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
            let (_, hash) = client.request_for(&item);
            let spec = client.spec();
            let valid = parse_reply(&reply.text, spec, &item.text, client.wire().format).is_ok();
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
            let (mut o, mut p) = client.label_deferred(&item, ctx).await?;
            o.cost_usd += cost;
            o.cached = false;
            o.paid_calls += 1;
            p.ledger.insert(0, row);
            p.cache.insert(0, entry);
            (o, p, true)
        }
    };
    let record = outcome.to_record(&item, provider, client.model(), batch);
    Ok(Done {
        ordinal,
        record,
        pending,
        outcome,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::ClientOptions;
    use crate::journal::JOURNAL_VERSION;
    use std::path::PathBuf;
    use std::sync::Mutex;
    use std::time::Duration;

    /// A fake OpenAI chat endpoint that, before answering its first request, takes the
    /// ledger's write lock and holds it until the journal has a record (or 3 s pass), then
    /// says whether it saw one. A client that starts its next call (which writes an
    /// `in_flight` ledger row first) before journalling the answer it already has stalls
    /// there with that paid answer unjournalled, where a kill would lose it.
    async fn locking_server(
        ledger: PathBuf,
        journal: PathBuf,
    ) -> (String, Arc<Mutex<Option<bool>>>) {
        let seen = Arc::new(Mutex::new(None));
        let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let s = seen.clone();
        let app = axum::Router::new().route(
            "/v1/chat/completions",
            axum::routing::post(move || {
                let (s, first, ledger, journal) =
                    (s.clone(), first.clone(), ledger.clone(), journal.clone());
                async move {
                    if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
                        let conn = rusqlite::Connection::open(&ledger).unwrap();
                        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
                        std::thread::spawn(move || {
                            let deadline = Instant::now() + Duration::from_secs(3);
                            let journalled = loop {
                                let has = std::fs::read_to_string(&journal)
                                    .map(|j| j.lines().any(|l| l.starts_with("{\"i\":")))
                                    .unwrap_or(false);
                                if has || Instant::now() > deadline {
                                    break has;
                                }
                                std::thread::sleep(Duration::from_millis(5));
                            };
                            *s.lock().unwrap() = Some(journalled);
                            conn.execute_batch("COMMIT").unwrap();
                        });
                    }
                    axum::Json(serde_json::json!({
                        "object": "chat.completion",
                        "choices": [{"index": 0,
                                     "message": {"role": "assistant", "content": "{\"label\": \"refund\"}"},
                                     "logprobs": null, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 70, "completion_tokens": 9, "total_tokens": 79}
                    }))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, seen)
    }

    /// A two-label classification task (`t`, gpt-4o) in `dir`.
    fn two_label_task(dir: &Path) -> TaskSpec {
        std::fs::write(
            dir.join("task.toml"),
            r#"
name = "t"
kind = "classify"
[input]
path = "in.csv"
[labels]
values = ["card_arrival", "refund"]
[teacher]
provider = "openai"
model = "gpt-4o"
"#,
        )
        .unwrap();
        TaskSpec::load(dir.join("task.toml")).unwrap()
    }

    /// A client of `url` (no retries) ledgering to `ledger`, and a sink journalling to `jpath`.
    fn retrying(
        spec: &TaskSpec,
        url: String,
        ledger: PathBuf,
        jpath: &Path,
    ) -> (Arc<TeacherClient>, JournalHeader, Sink) {
        let client = Arc::new(
            TeacherClient::new(
                spec,
                ClientOptions {
                    base_url: Some(url),
                    api_key: Some("k".into()),
                    ledger_path: Some(ledger),
                    max_retries: Some(0),
                    ..Default::default()
                },
            )
            .unwrap(),
        );
        let header = JournalHeader {
            distill_journal: JOURNAL_VERSION,
            task: "t".into(),
            input_sha256: "x".into(),
            provider: "openai".into(),
            model: "gpt-4o".into(),
            request: client.request_shape(),
        };
        let (journal, _) = Journal::open(jpath, &header, false).unwrap();
        let sink = Sink {
            journal,
            done: Ordinals::default(),
            summary: TeachSummary::default(),
            buf: Vec::new(),
        };
        (client, header, sink)
    }

    /// Items whose batch expired, so each is asked in real time.
    fn expired(texts: &[impl AsRef<str>]) -> Vec<(u64, InputItem, Option<ItemResult>)> {
        (0u64..)
            .zip(texts)
            .map(|(i, text)| {
                let item = InputItem {
                    context: Default::default(),
                    id: i.to_string(),
                    text: text.as_ref().into(),
                    gold: None,
                    line: i + 2,
                    turns: None,
                };
                (i, item, Some(ItemResult::Retry("batch_expired".into())))
            })
            .collect()
    }

    /// Batch items retried in real time hold their concurrency slot until their record is
    /// journalled (the README's "Paid once"): the next call starts only after the answer in
    /// hand is in the journal. Without the slots `buffer_unordered` started the next call
    /// first, so a kill could find `--concurrency` calls out plus the answers not yet
    /// journalled, all paid again on resume (the CLI's sigkill test saw 5 at concurrency 4).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_retried_item_keeps_its_slot_until_its_record_is_journalled() {
        let d = tempfile::tempdir().unwrap();
        let spec = two_label_task(d.path());
        let ledger = d.path().join("ledger.db");
        let jpath = d.path().join("teacher.jsonl.partial");
        let (url, seen) = locking_server(ledger.clone(), jpath.clone()).await;
        let (client, _, mut sink) = retrying(&spec, url, ledger, &jpath);
        let texts: Vec<String> = (0..3)
            .map(|i| format!("I want a refund for order {i}"))
            .collect();
        let items = expired(&texts);
        let ctx = CallContext::teach();
        resolve(&client, &ctx, &mut sink, items, Some("batch_1"), 1)
            .await
            .unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            Some(true),
            "the next call started before the answer in hand was journalled"
        );
        assert_eq!(sink.summary.ok, 3);
        let rows = client.ledger().unwrap().rows_for_task("t").unwrap();
        assert_eq!(rows.len(), 3, "{rows:?}");
        assert!(rows.iter().all(|r| r.status == "ok"), "{rows:?}");
    }

    /// A fatal error on one item (here a 401: the key was revoked) stops new calls, but the
    /// calls already out are waited for and journalled. Breaking off at the error dropped
    /// them: requests the provider answered (and bills) were lost, and bought again on rerun.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fatal_error_keeps_the_answers_already_on_their_way() {
        let d = tempfile::tempdir().unwrap();
        let spec = two_label_task(d.path());
        // The others are answered only once the client has the refusal in hand: it removes
        // the refused call's in-flight ledger row and, in the same step, hands the error to
        // `resolve`, before any other answer can be ready.
        let ledger = d.path().join("ledger.db");
        let refused = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (s, r, l) = (seen.clone(), refused.clone(), ledger.clone());
        let app = axum::Router::new().route(
            "/v1/chat/completions",
            axum::routing::post(move |body: String| {
                let (s, refused, ledger) = (s.clone(), r.clone(), l.clone());
                async move {
                    use axum::response::IntoResponse;
                    use std::sync::atomic::Ordering::SeqCst;
                    s.fetch_add(1, SeqCst);
                    if body.contains("revoked") {
                        refused.store(true, SeqCst);
                        return (
                            axum::http::StatusCode::UNAUTHORIZED,
                            axum::Json(serde_json::json!({"error": {"message": "key revoked",
                                "type": "invalid_request_error", "code": "invalid_api_key"}})),
                        )
                            .into_response();
                    }
                    let deadline = Instant::now() + Duration::from_secs(10);
                    loop {
                        let in_flight: i64 = rusqlite::Connection::open(&ledger)
                            .and_then(|c| {
                                c.query_row(
                                    "SELECT COUNT(*) FROM ledger WHERE status = 'in_flight'",
                                    [],
                                    |r| r.get(0),
                                )
                            })
                            .unwrap_or(i64::MAX);
                        if (refused.load(SeqCst) && in_flight <= 3) || Instant::now() > deadline {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    axum::Json(serde_json::json!({
                        "object": "chat.completion",
                        "choices": [{"index": 0, "finish_reason": "stop",
                            "message": {"role": "assistant", "content": "{\"label\": \"refund\"}"}}],
                        "usage": {"prompt_tokens": 70, "completion_tokens": 9, "total_tokens": 79}
                    }))
                    .into_response()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });

        let jpath = d.path().join("teacher.jsonl.partial");
        let (client, header, mut sink) = retrying(&spec, url, ledger, &jpath);
        let texts = [
            "revoked",
            "a refund",
            "my card",
            "a refund please",
            "one more",
        ];
        let items = expired(&texts);
        let ctx = CallContext::teach();
        let e = resolve(&client, &ctx, &mut sink, items, Some("batch_1"), 4)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("key revoked"), "{e}");
        // Four went out together; the fifth was never sent.
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 4);
        assert_eq!(sink.summary.ok, 3, "the answers on their way were dropped");
        drop(sink);
        let (_, rec) = Journal::open(&jpath, &header, false).unwrap();
        assert_eq!(rec.done.len(), 3);
        let rows = client.ledger().unwrap().rows_for_task("t").unwrap();
        let statuses: Vec<_> = rows.iter().map(|r| r.status.as_str()).collect();
        assert_eq!(statuses, ["ok"; 3], "{rows:?}");
    }
}
