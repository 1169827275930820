//! What the sim has been asked and what it "billed", kept with atomics and a sharded map so
//! counting never serialises the request path. Tests read it to prove nothing was paid twice.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

const SHARDS: usize = 64;
const MAX_STATUS: usize = 600;

/// A snapshot of the counters, as `GET /stats` returns it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Requests received on the model endpoints (chat, messages), batch lines excluded.
    pub requests: u64,
    /// Responses a real provider would charge for: 200s with usage, plus succeeded batch lines.
    pub billable: u64,
    /// Distinct request hashes among the billable responses.
    pub unique_billable: u64,
    /// `billable - unique_billable`: responses paid for a request already paid for.
    pub duplicates: u64,
    /// The most times any one request was billed.
    pub max_billed_per_request: u64,
    /// Up to 20 request hashes billed more than once, with their counts.
    #[serde(default)]
    pub duplicate_hashes: BTreeMap<String, u64>,
    /// Responses per HTTP status code (model endpoints only).
    #[serde(default)]
    pub status: BTreeMap<String, u64>,
    pub errors_injected: ErrorsInjected,
    pub batches: BatchStats,
    pub tokens: TokenStats,
    /// What the billable responses would have cost at `price_as`'s prices (batch lines at
    /// batch prices); 0 when the model is not in the price table.
    pub cost_usd: f64,
    pub price_as: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorsInjected {
    pub rate_limited_429: u64,
    pub server_error_500: u64,
    /// Replies deliberately not a valid label.
    pub invalid_replies: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchStats {
    pub created: u64,
    /// Request lines in all created batches.
    pub requests: u64,
    pub succeeded: u64,
    pub expired: u64,
    pub cancelled: u64,
    pub errored: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenStats {
    pub prompt: u64,
    pub cached: u64,
    pub completion: u64,
    pub reasoning: u64,
}

/// The hash billing is counted by: SHA-256 over the model and each message's role and text
/// content, so a retried request hashes the same and a repair turn hashes differently.
pub fn request_hash<'a>(
    model: &str,
    messages: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> u128 {
    let mut h = Sha256::new();
    h.update(model.as_bytes());
    for (role, content) in messages {
        h.update([0u8]);
        h.update(role.as_bytes());
        h.update([0u8]);
        h.update((content.len() as u64).to_le_bytes());
        h.update(content.as_bytes());
    }
    let d = h.finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&d[..16]);
    u128::from_be_bytes(first)
}

#[derive(Default)]
pub(crate) struct Counters {
    requests: AtomicU64,
    billable: AtomicU64,
    status: Box<[AtomicU64]>,
    rate_limited: AtomicU64,
    server_errors: AtomicU64,
    invalid_replies: AtomicU64,
    batches_created: AtomicU64,
    batch_requests: AtomicU64,
    batch_succeeded: AtomicU64,
    batch_expired: AtomicU64,
    batch_cancelled: AtomicU64,
    batch_errored: AtomicU64,
    prompt_tokens: AtomicU64,
    cached_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    reasoning_tokens: AtomicU64,
    /// Cost in nano-dollars, so it can be summed atomically without float drift.
    cost_nano_usd: AtomicU64,
    billed: Vec<Mutex<HashMap<u128, u32>>>,
}

pub(crate) struct Billed {
    pub prompt: u64,
    pub cached: u64,
    pub completion: u64,
    pub reasoning: u64,
    pub cost_usd: f64,
}

impl Counters {
    pub fn new() -> Self {
        Counters {
            status: (0..MAX_STATUS).map(|_| AtomicU64::new(0)).collect(),
            billed: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            ..Default::default()
        }
    }

    pub fn request(&self) {
        self.requests.fetch_add(1, Relaxed);
    }

    pub fn status(&self, code: u16) {
        if let Some(c) = self.status.get(code as usize) {
            c.fetch_add(1, Relaxed);
        }
    }

    pub fn rate_limited(&self) {
        self.rate_limited.fetch_add(1, Relaxed);
    }
    pub fn server_error(&self) {
        self.server_errors.fetch_add(1, Relaxed);
    }
    pub fn invalid_reply(&self) {
        self.invalid_replies.fetch_add(1, Relaxed);
    }
    pub fn batch_created(&self, lines: u64) {
        self.batches_created.fetch_add(1, Relaxed);
        self.batch_requests.fetch_add(lines, Relaxed);
    }
    pub fn batch_outcome(&self, succeeded: u64, expired: u64, cancelled: u64, errored: u64) {
        self.batch_succeeded.fetch_add(succeeded, Relaxed);
        self.batch_expired.fetch_add(expired, Relaxed);
        self.batch_cancelled.fetch_add(cancelled, Relaxed);
        self.batch_errored.fetch_add(errored, Relaxed);
    }

    pub fn bill(&self, hash: u128, b: &Billed) {
        self.billable.fetch_add(1, Relaxed);
        self.prompt_tokens.fetch_add(b.prompt, Relaxed);
        self.cached_tokens.fetch_add(b.cached, Relaxed);
        self.completion_tokens.fetch_add(b.completion, Relaxed);
        self.reasoning_tokens.fetch_add(b.reasoning, Relaxed);
        self.cost_nano_usd
            .fetch_add((b.cost_usd * 1e9).round() as u64, Relaxed);
        let shard = (hash as usize) % SHARDS;
        // A poisoned shard only means another request panicked mid-insert; the counts are
        // still usable.
        let mut map = self.billed[shard].lock().unwrap_or_else(|p| p.into_inner());
        *map.entry(hash).or_insert(0) += 1;
    }

    pub fn snapshot(&self, price_as: &str) -> Stats {
        let mut unique = 0u64;
        let mut max = 0u64;
        let mut dups = BTreeMap::new();
        for shard in &self.billed {
            let map = shard.lock().unwrap_or_else(|p| p.into_inner());
            unique += map.len() as u64;
            for (h, &n) in map.iter() {
                max = max.max(n as u64);
                if n > 1 && dups.len() < 20 {
                    dups.insert(format!("{h:032x}"), n as u64);
                }
            }
        }
        let billable = self.billable.load(Relaxed);
        let status = self
            .status
            .iter()
            .enumerate()
            .filter_map(|(code, n)| {
                let n = n.load(Relaxed);
                (n > 0).then(|| (code.to_string(), n))
            })
            .collect();
        Stats {
            requests: self.requests.load(Relaxed),
            billable,
            unique_billable: unique,
            duplicates: billable.saturating_sub(unique),
            max_billed_per_request: max,
            duplicate_hashes: dups,
            status,
            errors_injected: ErrorsInjected {
                rate_limited_429: self.rate_limited.load(Relaxed),
                server_error_500: self.server_errors.load(Relaxed),
                invalid_replies: self.invalid_replies.load(Relaxed),
            },
            batches: BatchStats {
                created: self.batches_created.load(Relaxed),
                requests: self.batch_requests.load(Relaxed),
                succeeded: self.batch_succeeded.load(Relaxed),
                expired: self.batch_expired.load(Relaxed),
                cancelled: self.batch_cancelled.load(Relaxed),
                errored: self.batch_errored.load(Relaxed),
            },
            tokens: TokenStats {
                prompt: self.prompt_tokens.load(Relaxed),
                cached: self.cached_tokens.load(Relaxed),
                completion: self.completion_tokens.load(Relaxed),
                reasoning: self.reasoning_tokens.load(Relaxed),
            },
            cost_usd: self.cost_nano_usd.load(Relaxed) as f64 / 1e9,
            price_as: price_as.to_string(),
        }
    }

    pub fn reset(&self) {
        let zero = |a: &AtomicU64| a.store(0, Relaxed);
        for a in [
            &self.requests,
            &self.billable,
            &self.rate_limited,
            &self.server_errors,
            &self.invalid_replies,
            &self.batches_created,
            &self.batch_requests,
            &self.batch_succeeded,
            &self.batch_expired,
            &self.batch_cancelled,
            &self.batch_errored,
            &self.prompt_tokens,
            &self.cached_tokens,
            &self.completion_tokens,
            &self.reasoning_tokens,
            &self.cost_nano_usd,
        ] {
            zero(a);
        }
        self.status.iter().for_each(zero);
        for shard in &self.billed {
            shard.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }
}
