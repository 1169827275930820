//! [`LedgerWriter`]: the ledger on a thread of its own, committing whatever calls are waiting in
//! one transaction. A gateway answering thousands of requests a second records two changes per
//! call (`in_flight` before it is sent, the billed outcome after); one SQLite commit each would
//! cap it at the disk's commit rate and put a lock on every request's path. Batched, the
//! guarantee stays the same: a call's `in_flight` row is committed before the call is sent.
//! WAL checkpoints (copying the log into the database, with a sync) run on a third thread, so
//! no commit a request waits on ever carries one.

use distill_core::ledger::{Ledger, LedgerOp, LedgerRow};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// The most changes committed in one transaction.
const MAX_BATCH: usize = 512;
/// Commits between checkpoints: each writes a few pages, so this stays near SQLite's own
/// threshold of 1,000 log pages. (Rarer checkpoints stall longer: at 2,500 a loaded gateway's
/// p99 went from ~40 ms to ~250 ms, the sync of a bigger log holding the disk longer.)
const CHECKPOINT_EVERY: u32 = 250;
/// Past this the writer empties the log itself (a rare stall) rather than let it grow.
const MAX_LOG_BYTES: u64 = 64 << 20;
/// How long a commit waits for more calls when calls are arriving together.
const LINGER: std::time::Duration = std::time::Duration::from_micros(300);

struct Job {
    op: LedgerOp,
    done: Option<oneshot::Sender<Result<i64, String>>>,
}

pub struct LedgerWriter {
    tx: Mutex<Option<mpsc::UnboundedSender<Job>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    checkpoints: Mutex<Option<std::thread::JoinHandle<()>>>,
    ledger: Arc<Ledger>,
}

impl LedgerWriter {
    pub fn start(ledger: Arc<Ledger>) -> Arc<Self> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        let (kick, kicked) = std::sync::mpsc::sync_channel::<()>(1);
        let checkpoints = match ledger.defer_checkpoints() {
            Ok(checkpointer) => std::thread::Builder::new()
                .name("distill-ledger-checkpoint".into())
                .spawn(move || {
                    while kicked.recv().is_ok() {
                        if let Err(e) = checkpointer.run() {
                            tracing::warn!("ledger checkpoint: {e}");
                        }
                    }
                })
                .ok(),
            Err(e) => {
                tracing::warn!("ledger checkpoints stay in line with commits: {e}");
                None
            }
        };
        let l = ledger.clone();
        let thread = std::thread::Builder::new()
            .name("distill-ledger".into())
            .spawn(move || {
                let mut commits = 0u32;
                let mut last_batch = 1;
                let drain = |rx: &mut mpsc::UnboundedReceiver<Job>, jobs: &mut Vec<Job>| {
                    while jobs.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(j) => jobs.push(j),
                            Err(_) => break,
                        }
                    }
                };
                while let Some(first) = rx.blocking_recv() {
                    let mut jobs = vec![first];
                    drain(&mut rx, &mut jobs);
                    // Concurrent calls (the last commit carried several): wait a moment for
                    // the ones right behind. Fewer, fuller commits write far fewer log pages,
                    // and a lone caller (batches of one) never waits.
                    if last_batch > 1 && jobs.len() < MAX_BATCH {
                        std::thread::sleep(LINGER);
                        drain(&mut rx, &mut jobs);
                    }
                    last_batch = jobs.len();
                    let ops: Vec<LedgerOp> = jobs.iter().map(|j| j.op.clone()).collect();
                    let result = l.apply(&ops);
                    commits += 1;
                    let checkpoint = commits.is_multiple_of(CHECKPOINT_EVERY);
                    if let Err(e) = &result {
                        tracing::warn!("ledger {}: {e}", l.path().display());
                    }
                    for (i, j) in jobs.into_iter().enumerate() {
                        if let Some(done) = j.done {
                            let _ = done.send(match &result {
                                Ok(ids) => Ok(ids[i]),
                                Err(e) => Err(e.to_string()),
                            });
                        }
                    }
                    // After the callers are answered: a bound that waits never holds them.
                    if checkpoint {
                        if l.log_bytes() > MAX_LOG_BYTES {
                            match l.truncate_log() {
                                Ok(true) => {}
                                Ok(false) => tracing::warn!(
                                    "ledger log past {} MiB and readers hold it; trying again later",
                                    MAX_LOG_BYTES >> 20
                                ),
                                Err(e) => tracing::warn!("ledger checkpoint: {e}"),
                            }
                        }
                        // Full means one is pending already: it will take these pages too.
                        let _ = kick.try_send(());
                    }
                }
            })
            .expect("spawn the ledger thread");
        Arc::new(Self {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            checkpoints: Mutex::new(checkpoints),
            ledger,
        })
    }

    fn send(&self, op: LedgerOp, done: Option<oneshot::Sender<Result<i64, String>>>) -> bool {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        tx.as_ref()
            .is_some_and(|t| t.send(Job { op, done }).is_ok())
    }

    async fn committed(&self, op: LedgerOp) -> Result<i64, String> {
        let (done, rx) = oneshot::channel();
        if !self.send(op, Some(done)) {
            return Err("the ledger writer has stopped".into());
        }
        rx.await
            .map_err(|_| "the ledger writer has stopped".to_string())?
    }

    /// Records a call about to be sent (`in_flight`) and returns its id once committed.
    pub async fn begin(&self, row: LedgerRow) -> Result<i64, String> {
        self.committed(LedgerOp::Begin(row)).await
    }

    /// Completes a call's row and waits for the commit.
    pub async fn complete(&self, row: LedgerRow) -> Result<(), String> {
        self.committed(LedgerOp::Complete(row)).await.map(drop)
    }

    /// Completes a call's row without waiting (where nothing can wait: a dropped stream).
    pub fn complete_later(&self, row: LedgerRow) {
        if !self.send(LedgerOp::Complete(row), None) {
            tracing::warn!("the ledger writer has stopped; a completed call stays in_flight");
        }
    }

    /// Drops an unbilled call's `in_flight` row and waits for the commit, so a caller told
    /// "refused" never finds the row still in the ledger.
    pub async fn discard(&self, id: i64) -> Result<(), String> {
        self.committed(LedgerOp::Discard(id)).await.map(drop)
    }

    /// Commits everything queued and stops the thread (also on drop).
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
        // The writer's end of the kick channel went with its thread: this one ends too.
        if let Some(t) = self
            .checkpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for LedgerWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerWriter")
            .field("ledger", &self.ledger.path())
            .finish()
    }
}

impl Drop for LedgerWriter {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> LedgerRow {
        LedgerRow {
            id: None,
            ts: LedgerRow::now(),
            task: "t".into(),
            provider: "openai".into(),
            model: "m".into(),
            request_hash: "h".into(),
            usage: Default::default(),
            cost_usd: 1.0,
            latency_ms: 0,
            status: "ok".into(),
            batch_id: None,
            price_version: "v".into(),
            source: "gateway".into(),
            tag: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_calls_are_committed_and_completed() {
        let d = tempfile::tempdir().unwrap();
        let ledger = Arc::new(Ledger::open(d.path().join("ledger.db")).unwrap());
        let w = LedgerWriter::start(ledger.clone());
        let calls = (0..200).map(|i| {
            let w = w.clone();
            async move {
                let id = w.begin(row()).await.unwrap();
                let mut done = row();
                done.id = Some(id);
                done.cost_usd = 0.5;
                if i % 2 == 0 {
                    w.complete(done).await.unwrap();
                } else {
                    w.complete_later(done);
                }
                id
            }
        });
        let ids = futures::future::join_all(calls).await;
        let unique: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), 200);
        w.close();
        let s = &ledger.summary(&[], None).unwrap()[0];
        assert_eq!((s.calls, s.in_flight, s.cost_usd), (200, 0, 100.0));
    }
}
