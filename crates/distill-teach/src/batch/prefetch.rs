//! `--batch` for jobs whose records take several rounds of requests, each round built from
//! the answers to the one before (a route task: every tier's answer, then the judge's
//! grading of each answer). Each round goes through the Batch API into the response cache;
//! the real-time job that follows builds every record from the cache at no cost, and asks in
//! real time only what no batch answered (expired, cancelled, errored).
//!
//! The guarantees are `--batch`'s (see [`super`]): a batch id is journalled the moment the
//! provider accepts it, and a rerun polls it instead of submitting again (OpenAI batches are
//! also adopted by their metadata, per round); requests the cache already answers are never
//! submitted and identical requests are submitted once; answers are journalled (with their
//! ledger rows, at batch prices) before SQLite sees them, so a kill loses nothing paid for;
//! `--max-spend` reserves each submitted request's worst case at batch prices.

use super::api::{custom_id, running_message, Api, Chunk, ItemResult, Orphan, Pace, Poll, Results};
use super::{MAX_BATCH_BYTES, MAX_BATCH_REQUESTS, WRITE_GROUP};
use crate::cache::CacheEntry;
use crate::client::{CallContext, Pending, TeacherClient};
use crate::error::Result;
use crate::journal::{
    encode_batch_line, encode_collected_line, encode_fetched_line, BatchRef, Journal,
};
use crate::runner::{progress_bar, TeachOptions};
use distill_core::ledger::LedgerRow;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// One request of a round.
pub(crate) struct Request {
    /// Its number in the round (the `custom_id` carries it).
    pub ordinal: u64,
    pub body: Value,
    /// Its cache key.
    pub hash: String,
    /// What it can cost at batch prices (its reply at `max_tokens`), for `--max-spend`.
    pub worst_usd: f64,
}

/// Requests to one model that do not depend on each other.
pub(crate) struct Round<'a> {
    /// Names the round in the journal and in OpenAI's batch metadata.
    pub name: String,
    pub client: &'a TeacherClient,
    pub requests: Vec<Request>,
}

/// The rounds of one job, run in order through the Batch API.
pub(crate) struct Prefetch<'j> {
    journal: &'j mut Journal,
    /// Batches recorded by earlier runs of the job.
    earlier: Vec<BatchRef>,
    /// Those of them whose results were stored (the journal's `collected` lines).
    collected: HashSet<String>,
    job_key: String,
    /// The job has run before: look for batches it submitted but did not journal.
    look_for_orphans: bool,
    max_spend: Option<f64>,
    /// What the job has spent (earlier runs included) plus what its running batches may bill.
    reserved: f64,
    batch_size: usize,
    poll: Duration,
    no_wait: bool,
    progress: bool,
    ctx: CallContext,
    /// Spent by this run's batches.
    pub spent_usd: f64,
    /// Cache keys of the answers batches brought in this run.
    pub fetched: HashSet<String>,
    pub batch_ids: Vec<String>,
    /// Requests a batch did not answer; the real-time job asks them.
    pub unanswered: u64,
    pub stopped_by_budget: bool,
    /// `--no-wait` left batches running.
    pub awaiting: bool,
}

impl<'j> Prefetch<'j> {
    pub fn new(
        journal: &'j mut Journal,
        earlier: Vec<BatchRef>,
        collected: HashSet<String>,
        job_key: String,
        look_for_orphans: bool,
        spent_before: f64,
        opts: &TeachOptions,
    ) -> Self {
        Prefetch {
            journal,
            earlier,
            collected,
            job_key,
            look_for_orphans,
            max_spend: opts.max_spend,
            reserved: spent_before,
            batch_size: opts.batch_size.clamp(1, MAX_BATCH_REQUESTS),
            poll: opts.batch_poll,
            no_wait: opts.batch_no_wait,
            progress: opts.progress,
            ctx: CallContext::teach(),
            spent_usd: 0.0,
            fetched: HashSet::new(),
            batch_ids: Vec::new(),
            unanswered: 0,
            stopped_by_budget: false,
            awaiting: false,
        }
    }

    /// Whether the job may go on to its next round (or its real-time pass): no budget stop,
    /// no batch left running.
    pub fn may_continue(&self) -> bool {
        !self.stopped_by_budget && !self.awaiting
    }

    /// Runs `rounds` (independent of each other) together: submits what the cache lacks,
    /// waits for every batch of theirs (an earlier run's too) and stores the answers.
    pub async fn run(&mut self, rounds: &[Round<'_>]) -> Result<()> {
        let mut waiting: Vec<(usize, BatchRef)> = Vec::new();
        for (r, round) in rounds.iter().enumerate() {
            let name = Some(round.name.as_str());
            let hash_of: HashMap<u64, &Request> =
                round.requests.iter().map(|q| (q.ordinal, q)).collect();
            let cached =
                |q: &Request| -> Result<bool> { Ok(round.client.cached_reply(&q.hash)?.is_some()) };
            // An earlier run's batches of this round that still owe answers.
            let mut in_batch: HashSet<u64> = HashSet::new();
            let mut submitted: HashSet<&str> = HashSet::new();
            for b in self.earlier.iter().filter(|b| b.round.as_deref() == name) {
                // Requests this run does not send (a smaller --limit than the run that
                // submitted them): their answers are paid for, and once this job finishes
                // and retires its journal, nothing would collect them.
                if !self.collected.contains(&b.id) {
                    if let Some(past) = b.ordinals().find(|i| !hash_of.contains_key(i)) {
                        return Err(crate::error::TeachError::file(
                            self.journal.path(),
                            format!(
                                "batch {} (round {}) holds requests this run does not send \
                                 (request {past} and maybe more; a smaller --limit than the run \
                                 that submitted it?), answers already paid for: run with the \
                                 --limit that run had (or none) to collect them",
                                b.id, round.name
                            ),
                        ));
                    }
                }
                let mut owes = false;
                for q in b.ordinals().filter_map(|i| hash_of.get(&i)) {
                    in_batch.insert(q.ordinal);
                    submitted.insert(&q.hash);
                    if !cached(q)? {
                        owes = true;
                        self.reserved += q.worst_usd;
                    }
                }
                if owes {
                    waiting.push((r, b.clone()));
                } else if !self.collected.contains(&b.id) {
                    // Stored by a run killed before it could say so.
                    self.journal.append(&encode_collected_line(&b.id))?;
                    self.collected.insert(b.id.clone());
                }
            }
            let api = Api {
                client: round.client,
                spec: round.client.spec(),
            };
            let key = round_key(&self.job_key, &round.name);
            let known: HashSet<String> = self.earlier.iter().map(|b| b.id.clone()).collect();
            let mut adoptable: Option<HashMap<String, Orphan>> = None;
            let mut chunk = Chunk::default();
            for q in &round.requests {
                if self.stopped_by_budget {
                    break;
                }
                if in_batch.contains(&q.ordinal) || submitted.contains(q.hash.as_str()) {
                    continue;
                }
                if cached(q)? {
                    continue;
                }
                if let Some(max) = self.max_spend {
                    if self.reserved + q.worst_usd > max {
                        self.stopped_by_budget = true;
                        break;
                    }
                }
                self.reserved += q.worst_usd;
                submitted.insert(&q.hash);
                api.add(&mut chunk, q.ordinal, &q.hash, &q.body);
                if chunk.ordinals.len() >= self.batch_size || chunk.bytes.len() >= MAX_BATCH_BYTES {
                    let c = std::mem::take(&mut chunk);
                    let b = self
                        .submit(&api, c, &key, &known, &mut adoptable, &round.name)
                        .await?;
                    waiting.push((r, b));
                }
            }
            if !chunk.ordinals.is_empty() {
                let b = self
                    .submit(&api, chunk, &key, &known, &mut adoptable, &round.name)
                    .await?;
                waiting.push((r, b));
            }
        }
        self.batch_ids
            .extend(waiting.iter().map(|(_, b)| b.id.clone()));
        if waiting.is_empty() {
            return Ok(());
        }
        if self.no_wait {
            // Collect what an earlier run submitted and has ended; leave the rest running.
            let mut running = false;
            for (r, b) in waiting {
                if !self.earlier.iter().any(|e| e.id == b.id) {
                    running = true;
                    continue;
                }
                match self.poll(&rounds[r], &b).await? {
                    true => {}
                    false => running = true,
                }
            }
            self.awaiting = running;
            return Ok(());
        }

        let bar = progress_bar(self.progress, waiting.iter().map(|(_, b)| b.n).sum(), 0);
        let mut collected = 0u64;
        let mut pace = Pace::new(self.poll);
        while !waiting.is_empty() {
            let mut still = Vec::with_capacity(waiting.len());
            let mut running = 0u64;
            for (r, b) in waiting {
                let round = &rounds[r];
                let api = Api {
                    client: round.client,
                    spec: round.client.spec(),
                };
                match api
                    .poll(&b)
                    .await
                    .map_err(|e| super::hint(e, &b, self.journal.path()))?
                {
                    Poll::Running { finished } => {
                        running += finished;
                        still.push((r, b));
                    }
                    Poll::Ended(results) => {
                        self.collect(round, &b, results)?;
                        collected += b.n;
                    }
                }
            }
            waiting = still;
            bar.set_position(collected + running);
            bar.set_message(running_message(waiting.len(), self.spent_usd));
            if !waiting.is_empty() {
                pace.wait().await;
            }
        }
        bar.finish_and_clear();
        Ok(())
    }

    /// Polls one batch; collects it if it has ended (true).
    async fn poll(&mut self, round: &Round<'_>, b: &BatchRef) -> Result<bool> {
        let api = Api {
            client: round.client,
            spec: round.client.spec(),
        };
        match api
            .poll(b)
            .await
            .map_err(|e| super::hint(e, b, self.journal.path()))?
        {
            Poll::Running { .. } => Ok(false),
            Poll::Ended(results) => {
                self.collect(round, b, results)?;
                Ok(true)
            }
        }
    }

    async fn submit(
        &mut self,
        api: &Api<'_>,
        chunk: Chunk,
        key: &str,
        known: &HashSet<String>,
        adoptable: &mut Option<HashMap<String, Orphan>>,
        round: &str,
    ) -> Result<BatchRef> {
        let mut b = api
            .submit(chunk, key, self.look_for_orphans, known, adoptable)
            .await?;
        b.round = Some(round.to_string());
        self.journal.append(&encode_batch_line(&b))?;
        tracing::info!(
            "round {round}: submitted batch {} of {} requests; its id is recorded in {}",
            b.id,
            b.n,
            self.journal.path().display()
        );
        Ok(b)
    }

    /// Stores a finished batch's answers: journal first, then the ledger and the cache.
    fn collect(&mut self, round: &Round<'_>, b: &BatchRef, mut results: Results) -> Result<()> {
        let by_ordinal: HashMap<u64, &Request> =
            round.requests.iter().map(|q| (q.ordinal, q)).collect();
        let client = round.client;
        let spec = client.spec();
        let mut pending = Pending::default();
        let mut unanswered = 0u64;
        for q in b.ordinals().filter_map(|i| by_ordinal.get(&i)) {
            match results.remove(&custom_id(q.ordinal, &q.hash)) {
                // Stored when an earlier run collected this batch (it is polled again when
                // some of its requests went unanswered): never ledgered twice.
                Some(ItemResult::Reply(_)) if client.cached_reply(&q.hash)?.is_some() => {}
                Some(ItemResult::Reply(reply)) => {
                    let cost = client.cost(&reply.usage, true);
                    pending.ledger.push(LedgerRow {
                        id: None,
                        ts: LedgerRow::now(),
                        task: spec.name.clone(),
                        provider: client.provider().as_str().to_string(),
                        model: client.model().to_string(),
                        request_hash: q.hash.clone(),
                        usage: reply.usage,
                        cost_usd: cost,
                        latency_ms: 0,
                        status: "ok".into(),
                        batch_id: Some(b.id.clone()),
                        price_version: client.prices().version.clone(),
                        source: self.ctx.source.clone(),
                        tag: self.ctx.tag.clone(),
                    });
                    pending.cache.push(CacheEntry {
                        hash: q.hash.clone(),
                        model: client.model().to_string(),
                        reply,
                    });
                    self.spent_usd += cost;
                    self.fetched.insert(q.hash.clone());
                }
                Some(ItemResult::Retry(why)) | Some(ItemResult::Failed(why)) => {
                    tracing::debug!("round {}: request {}: {why}", round.name, q.ordinal);
                    unanswered += 1;
                }
                None => unanswered += 1,
            }
            if pending.cache.len() >= WRITE_GROUP {
                self.store(client, &round.name, std::mem::take(&mut pending))?;
            }
        }
        self.store(client, &round.name, pending)?;
        self.journal.append(&encode_collected_line(&b.id))?;
        self.collected.insert(b.id.clone());
        if unanswered > 0 {
            tracing::warn!(
                "batch {}: {unanswered} of {} requests not answered (expired, cancelled or \
                 errored); they are asked in real time",
                b.id,
                b.n
            );
        }
        self.unanswered += unanswered;
        Ok(())
    }

    fn store(&mut self, client: &TeacherClient, round: &str, pending: Pending) -> Result<()> {
        if pending.cache.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        encode_fetched_line(&mut buf, round, self.journal.next_batch, &pending);
        self.journal.append(&buf)?;
        client.persist(&pending)
    }
}

/// A round's key in OpenAI's batch metadata: the job's key and the round's name.
fn round_key(job_key: &str, round: &str) -> String {
    distill_core::fsutil::sha256_hex(format!("{job_key}/{round}").as_bytes())[..16].to_string()
}
