//! The spend ledger: one SQLite row per paid provider call (teach, eval's API students,
//! serve's escalations), so every dollar distill spends can be summed, grouped and audited.
//!
//! SQLite in WAL mode: many writers in one process, readers never blocked, and a `kill -9`
//! loses at most the transaction in flight.
//!
//! A call is recorded *before* it is sent, as an `in_flight` row priced at its estimate
//! ([`Ledger::begin`]), and completed with its billed usage when the reply is recorded. A
//! process killed mid-call therefore leaves an `in_flight` row: the provider may have billed
//! it, and the ledger says so instead of under-reporting.

use crate::error::{CoreError, Result};
use crate::record::Usage;
use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Status of a row recorded before its call was sent and never completed.
pub const IN_FLIGHT: &str = "in_flight";

/// Status of an attempt that was sent and got no usable reply (it timed out, the connection
/// dropped after the request went out, or a 2xx body could not be read). Providers finish and
/// bill such requests, so the row stays, priced at its worst-case estimate, instead of
/// vanishing from the ledger and from every cap that sums it.
pub const UNANSWERED: &str = "unanswered";

/// One change for [`Ledger::apply`].
#[derive(Debug, Clone, PartialEq)]
pub enum LedgerOp {
    /// A call about to be sent: an `in_flight` row (`status` is ignored).
    Begin(LedgerRow),
    /// The billed outcome: completes the row `id` names (a new row when it has none).
    Complete(LedgerRow),
    /// An `in_flight` row whose call certainly was not billed.
    Discard(i64),
}

/// One provider call as billed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerRow {
    /// The row this call was recorded under before it was sent ([`Ledger::begin`]); writing
    /// the row completes that one instead of adding another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    /// RFC 3339, UTC.
    pub ts: String,
    pub task: String,
    pub provider: String,
    pub model: String,
    pub request_hash: String,
    pub usage: Usage,
    pub cost_usd: f64,
    pub latency_ms: u64,
    /// `ok`, `invalid` (answered but not a valid output), `error` (billed error),
    /// `unanswered` (sent, no usable reply: priced at its estimate, see [`UNANSWERED`]), or
    /// `in_flight` (sent, outcome never recorded: the process died or is still waiting).
    pub status: String,
    pub batch_id: Option<String>,
    pub price_version: String,
    /// Who spent it: `teach`, `eval`, `serve`, ... plus an optional user tag (`X-Distill-Tag`).
    pub source: String,
    pub tag: Option<String>,
}

impl LedgerRow {
    pub fn now() -> String {
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }
}

/// How `distill spend` groups rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    Task,
    Model,
    Day,
    Source,
    /// `batch` (a Batch API's half price) or `real-time`.
    Mode,
    /// The caller's `X-Distill-Tag` (`-` when untagged).
    Tag,
}

impl GroupBy {
    fn column(&self) -> &'static str {
        match self {
            GroupBy::Task => "task",
            GroupBy::Model => "model",
            GroupBy::Day => "substr(ts, 1, 10)",
            GroupBy::Source => "source",
            GroupBy::Mode => "(CASE WHEN batch_id IS NULL THEN 'real-time' ELSE 'batch' END)",
            GroupBy::Tag => "COALESCE(tag, '-')",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpendRow {
    /// One value per requested group, in order.
    pub keys: Vec<String>,
    pub calls: u64,
    pub usage: Usage,
    pub cost_usd: f64,
    /// Calls among `calls` whose outcome was never recorded (`in_flight` rows, counted at
    /// their estimated cost): a process was killed while they were out, or is still running.
    #[serde(default)]
    pub in_flight: u64,
    /// Calls among `calls` that were sent and got no usable reply ([`UNANSWERED`]), counted at
    /// their estimated cost.
    #[serde(default)]
    pub unanswered: u64,
}

/// A connection of its own that copies the ledger's write-ahead log into the database
/// ([`Ledger::defer_checkpoints`]).
pub struct Checkpointer {
    path: PathBuf,
    conn: Connection,
}

impl Checkpointer {
    /// PASSIVE checkpoints: copy the log's pages into the database and sync it without waiting
    /// for the writer, which goes on appending meanwhile. The writer starts the log over at
    /// its next commit only once every page is copied, so this repeats (a few times: each
    /// round copies only what arrived during the last) until it is. Returns the pages in the
    /// log and those copied.
    pub fn run(&self) -> Result<(i64, i64)> {
        let mut last = (0, 0);
        for _ in 0..4 {
            last = self
                .conn
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                    Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                })
                .map_err(|e| CoreError::Sqlite {
                    path: self.path.clone(),
                    source: e,
                })?;
            if last.1 >= last.0 {
                break;
            }
        }
        Ok(last)
    }
}

pub struct Ledger {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl Ledger {
    /// Opens (creating if needed) the ledger database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| CoreError::io(dir, e))?;
        }
        let sql = |e| CoreError::Sqlite {
            path: path.clone(),
            source: e,
        };
        let conn = Connection::open(&path).map_err(sql)?;
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(sql)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=NORMAL;
             CREATE TABLE IF NOT EXISTS ledger (
               id INTEGER PRIMARY KEY,
               ts TEXT NOT NULL,
               task TEXT NOT NULL,
               provider TEXT NOT NULL,
               model TEXT NOT NULL,
               request_hash TEXT NOT NULL,
               prompt_tokens INTEGER NOT NULL,
               cached_tokens INTEGER NOT NULL,
               cache_write_tokens INTEGER NOT NULL,
               completion_tokens INTEGER NOT NULL,
               reasoning_tokens INTEGER NOT NULL,
               cost_usd REAL NOT NULL,
               latency_ms INTEGER NOT NULL,
               status TEXT NOT NULL,
               batch_id TEXT,
               price_version TEXT NOT NULL,
               source TEXT NOT NULL,
               tag TEXT
             );
             CREATE INDEX IF NOT EXISTS ledger_task ON ledger(task);
             -- No query reads by hash; the index cost every call a page write.
             DROP INDEX IF EXISTS ledger_hash;",
        )
        .map_err(sql)?;
        Ok(Self {
            path,
            conn: Mutex::new(conn),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The write-ahead log's size in bytes (0 when there is none).
    pub fn log_bytes(&self) -> u64 {
        let mut wal = self.path.as_os_str().to_owned();
        wal.push("-wal");
        std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0)
    }

    /// Copies the whole log into the database and empties it: the bound on a log that a
    /// never-idle writer keeps [`Checkpointer::run`] from starting over. Run by the writer
    /// itself, so no other write is in the way; it waits at most a second for readers (a
    /// shell holding an old snapshot, the checkpointer mid-copy) and returns false when they
    /// were still there, to be tried again later.
    pub fn truncate_log(&self) -> Result<bool> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let e = |e| self.err(e);
        conn.busy_timeout(std::time::Duration::from_secs(1))
            .map_err(e)?;
        let busy = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            r.get::<_, i64>(0)
        });
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(e)?;
        match busy {
            Ok(b) => Ok(b == 0),
            Err(rusqlite::Error::SqliteFailure(f, _))
                if f.code == rusqlite::ErrorCode::DatabaseBusy =>
            {
                Ok(false)
            }
            Err(x) => Err(self.err(x)),
        }
    }

    /// Takes WAL checkpoints off this connection's commits: left to SQLite, the commit that
    /// crosses its auto-checkpoint threshold copies the log into the database and syncs it in
    /// line, stalling every call waiting on that commit. The caller then runs
    /// [`Checkpointer::run`] elsewhere, or the log grows until the last connection closes.
    pub fn defer_checkpoints(&self) -> Result<Checkpointer> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.execute_batch("PRAGMA wal_autocheckpoint=0;")
            .map_err(|e| self.err(e))?;
        let own = Connection::open(&self.path).map_err(|e| self.err(e))?;
        own.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(|e| self.err(e))?;
        Ok(Checkpointer {
            path: self.path.clone(),
            conn: own,
        })
    }

    fn err(&self, e: rusqlite::Error) -> CoreError {
        CoreError::Sqlite {
            path: self.path.clone(),
            source: e,
        }
    }

    pub fn append(&self, row: &LedgerRow) -> Result<()> {
        self.append_many(std::slice::from_ref(row))
    }

    /// Appends rows in one transaction (a row with an `id` completes that row).
    pub fn append_many(&self, rows: &[LedgerRow]) -> Result<()> {
        let ops: Vec<LedgerOp> = rows.iter().cloned().map(LedgerOp::Complete).collect();
        self.apply(&ops).map(drop)
    }

    /// Applies `ops` in one transaction and returns, per op, its row id (a `Begin`'s new
    /// row; a `Complete`'s or `Discard`'s own). One commit for many calls is what keeps the
    /// ledger off a busy gateway's critical path ([`LedgerOp`]).
    pub fn apply(&self, ops: &[LedgerOp]) -> Result<Vec<i64>> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let mut ids = Vec::with_capacity(ops.len());
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO ledger (ts, task, provider, model, request_hash, prompt_tokens,
                       cached_tokens, cache_write_tokens, completion_tokens, reasoning_tokens,
                       cost_usd, latency_ms, status, batch_id, price_version, source, tag)
                     VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17)",
                )
                .map_err(|e| self.err(e))?;
            let mut update = tx
                .prepare_cached(
                    // `task` (indexed) is left as begun: out of SET, SQLite leaves the index
                    // untouched, one page fewer per commit.
                    "UPDATE ledger SET ts=?1, provider=?3, model=?4, request_hash=?5,
                       prompt_tokens=?6, cached_tokens=?7, cache_write_tokens=?8,
                       completion_tokens=?9, reasoning_tokens=?10, cost_usd=?11, latency_ms=?12,
                       status=?13, batch_id=?14, price_version=?15, source=?16, tag=?17
                     WHERE id=?18",
                )
                .map_err(|e| self.err(e))?;
            let mut discard = tx
                .prepare_cached("DELETE FROM ledger WHERE id = ?1 AND status = ?2")
                .map_err(|e| self.err(e))?;
            for op in ops {
                let (r, status) = match op {
                    LedgerOp::Discard(id) => {
                        discard
                            .execute(params![id, IN_FLIGHT])
                            .map_err(|e| self.err(e))?;
                        ids.push(*id);
                        continue;
                    }
                    LedgerOp::Begin(r) => (r, IN_FLIGHT),
                    LedgerOp::Complete(r) => (r, r.status.as_str()),
                };
                let values = params![
                    r.ts,
                    r.task,
                    r.provider,
                    r.model,
                    r.request_hash,
                    r.usage.prompt_tokens as i64,
                    r.usage.cached_tokens as i64,
                    r.usage.cache_write_tokens as i64,
                    r.usage.completion_tokens as i64,
                    r.usage.reasoning_tokens as i64,
                    r.cost_usd,
                    r.latency_ms as i64,
                    status,
                    r.batch_id,
                    r.price_version,
                    r.source,
                    r.tag,
                ];
                let id = match (op, r.id) {
                    (LedgerOp::Complete(_), Some(id)) => {
                        let mut with_id: Vec<&dyn rusqlite::ToSql> = values.to_vec();
                        with_id.push(&id);
                        let n = update
                            .execute(with_id.as_slice())
                            .map_err(|e| self.err(e))?;
                        (n > 0).then_some(id)
                    }
                    _ => None,
                };
                match id {
                    Some(id) => ids.push(id),
                    None => {
                        insert.execute(values).map_err(|e| self.err(e))?;
                        ids.push(tx.last_insert_rowid());
                    }
                }
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(ids)
    }

    /// Records a call about to be sent, as an `in_flight` row (`row.status` is ignored), and
    /// returns its id for the row that completes it.
    pub fn begin(&self, row: &LedgerRow) -> Result<i64> {
        Ok(self.apply(&[LedgerOp::Begin(row.clone())])?[0])
    }

    /// Drops an `in_flight` row whose call certainly was not billed (the provider refused it,
    /// or no attempt reached it).
    pub fn discard(&self, id: i64) -> Result<()> {
        self.apply(&[LedgerOp::Discard(id)]).map(drop)
    }

    /// All rows of a task (oldest first).
    pub fn rows_for_task(&self, task: &str) -> Result<Vec<LedgerRow>> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut st = conn
            .prepare(
                "SELECT ts, task, provider, model, request_hash, prompt_tokens, cached_tokens,
                   cache_write_tokens, completion_tokens, reasoning_tokens, cost_usd, latency_ms,
                   status, batch_id, price_version, source, tag, id
                 FROM ledger WHERE task = ?1 ORDER BY id",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([task], |r| {
                Ok(LedgerRow {
                    id: Some(r.get(17)?),
                    ts: r.get(0)?,
                    task: r.get(1)?,
                    provider: r.get(2)?,
                    model: r.get(3)?,
                    request_hash: r.get(4)?,
                    usage: Usage {
                        prompt_tokens: r.get::<_, i64>(5)? as u64,
                        cached_tokens: r.get::<_, i64>(6)? as u64,
                        cache_write_tokens: r.get::<_, i64>(7)? as u64,
                        completion_tokens: r.get::<_, i64>(8)? as u64,
                        reasoning_tokens: r.get::<_, i64>(9)? as u64,
                    },
                    cost_usd: r.get(10)?,
                    latency_ms: r.get::<_, i64>(11)? as u64,
                    status: r.get(12)?,
                    batch_id: r.get(13)?,
                    price_version: r.get(14)?,
                    source: r.get(15)?,
                    tag: r.get(16)?,
                })
            })
            .map_err(|e| self.err(e))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// Totals grouped by the given keys (all rows when `group` is empty), optionally for one task.
    pub fn summary(&self, group: &[GroupBy], task: Option<&str>) -> Result<Vec<SpendRow>> {
        let keys: Vec<&str> = group.iter().map(GroupBy::column).collect();
        let select_keys = if keys.is_empty() {
            "'all'".to_string()
        } else {
            keys.join(" || char(31) || ")
        };
        let group_sql = if keys.is_empty() {
            String::new()
        } else {
            format!("GROUP BY {0} ORDER BY {0}", keys.join(", "))
        };
        let sql = format!(
            "SELECT {select_keys}, COUNT(*), SUM(prompt_tokens), SUM(cached_tokens),
               SUM(cache_write_tokens), SUM(completion_tokens), SUM(reasoning_tokens),
               COALESCE(SUM(cost_usd), 0), SUM(status = 'in_flight'),
               SUM(status = 'unanswered')
             FROM ledger WHERE (?1 IS NULL OR task = ?1) {group_sql}"
        );
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut st = conn.prepare(&sql).map_err(|e| self.err(e))?;
        let n = group.len();
        let rows = st
            .query_map([task], |r| {
                let k: String = r.get(0)?;
                let opt = |i: usize| -> rusqlite::Result<u64> {
                    Ok(r.get::<_, Option<i64>>(i)?.unwrap_or(0) as u64)
                };
                Ok(SpendRow {
                    keys: if n == 0 {
                        vec![]
                    } else {
                        k.split('\u{1f}').map(str::to_string).collect()
                    },
                    calls: opt(1)?,
                    usage: Usage {
                        prompt_tokens: opt(2)?,
                        cached_tokens: opt(3)?,
                        cache_write_tokens: opt(4)?,
                        completion_tokens: opt(5)?,
                        reasoning_tokens: opt(6)?,
                    },
                    cost_usd: r.get(7)?,
                    in_flight: opt(8)?,
                    unanswered: opt(9)?,
                })
            })
            .map_err(|e| self.err(e))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows.into_iter().filter(|r| r.calls > 0).collect())
    }

    /// Batch ids recorded for a task, with the number of rows each (oldest batch first).
    pub fn batch_rows(&self, task: &str) -> Result<Vec<(String, u64)>> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut st = conn
            .prepare(
                "SELECT batch_id, COUNT(*) FROM ledger WHERE task = ?1 AND batch_id IS NOT NULL
                 GROUP BY batch_id ORDER BY MIN(id)",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([task], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
            .map_err(|e| self.err(e))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// Total dollars spent on a task.
    pub fn total_cost(&self, task: &str) -> Result<f64> {
        Ok(self
            .summary(&[], Some(task))?
            .first()
            .map(|r| r.cost_usd)
            .unwrap_or(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deferred_checkpoints_let_the_log_start_over() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("ledger.db");
        let ledger = Ledger::open(&path).unwrap();
        let checkpointer = ledger.defer_checkpoints().unwrap();
        let wal = path.with_extension("db-wal");
        let commits = |n: usize| {
            for _ in 0..n {
                ledger.append(&row("t", "m", 0.01)).unwrap();
            }
        };
        commits(600);
        let unchecked = std::fs::metadata(&wal).unwrap().len();
        let (log, copied) = checkpointer.run().unwrap();
        assert!(log > 0 && copied == log, "{copied} of {log} pages copied");
        // Nothing is lost, and the next commits reuse the log instead of growing it (to about
        // three times the size without checkpoints).
        commits(600);
        checkpointer.run().unwrap();
        commits(600);
        let reused = std::fs::metadata(&wal).unwrap().len();
        assert!(
            reused < unchecked * 3 / 2,
            "log {reused} bytes after, {unchecked} before"
        );
        let s = &ledger.summary(&[], None).unwrap()[0];
        assert_eq!(s.calls, 1800);
        // The writer's bound: the log emptied, nothing lost.
        assert_eq!(ledger.log_bytes(), reused);
        assert!(ledger.truncate_log().unwrap());
        assert_eq!(ledger.log_bytes(), 0);
        assert_eq!(ledger.summary(&[], None).unwrap()[0].calls, 1800);
    }

    fn row(task: &str, model: &str, cost: f64) -> LedgerRow {
        LedgerRow {
            id: None,
            ts: LedgerRow::now(),
            task: task.into(),
            provider: "openai".into(),
            model: model.into(),
            request_hash: "h".into(),
            usage: Usage {
                prompt_tokens: 10,
                completion_tokens: 2,
                ..Default::default()
            },
            cost_usd: cost,
            latency_ms: 3,
            status: "ok".into(),
            batch_id: None,
            price_version: "v".into(),
            source: "teach".into(),
            tag: None,
        }
    }

    #[test]
    fn appends_and_summarises() {
        let d = tempfile::tempdir().unwrap();
        let l = Ledger::open(d.path().join("state/ledger.db")).unwrap();
        l.append_many(&[row("a", "gpt-4o", 1.0), row("a", "gpt-4o-mini", 0.5)])
            .unwrap();
        l.append(&row("b", "gpt-4o", 2.0)).unwrap();
        assert_eq!(l.total_cost("a").unwrap(), 1.5);
        assert_eq!(l.total_cost("none").unwrap(), 0.0);
        let by = l.summary(&[GroupBy::Task, GroupBy::Model], None).unwrap();
        assert_eq!(by.len(), 3);
        assert_eq!(by[0].keys, vec!["a", "gpt-4o"]);
        assert_eq!(by[0].usage.prompt_tokens, 10);
        assert_eq!(l.rows_for_task("b").unwrap()[0].cost_usd, 2.0);
        drop(l);
        let again = Ledger::open(d.path().join("state/ledger.db")).unwrap();
        assert_eq!(again.summary(&[], None).unwrap()[0].calls, 3);
    }

    #[test]
    fn a_call_is_in_flight_until_completed_and_completion_is_idempotent() {
        let d = tempfile::tempdir().unwrap();
        let l = Ledger::open(d.path().join("ledger.db")).unwrap();
        let id = l.begin(&row("a", "gpt-4o", 0.25)).unwrap();
        let s = &l.summary(&[], None).unwrap()[0];
        assert_eq!((s.calls, s.in_flight, s.cost_usd), (1, 1, 0.25));
        let mut done = row("a", "gpt-4o", 0.2);
        done.id = Some(id);
        l.append_many(&[done.clone()]).unwrap();
        l.append_many(&[done]).unwrap(); // a crash recovery re-applying it changes nothing
        let s = &l.summary(&[], None).unwrap()[0];
        assert_eq!((s.calls, s.in_flight, s.cost_usd), (1, 0, 0.2));
        let gone = l.begin(&row("a", "gpt-4o", 0.25)).unwrap();
        l.discard(gone).unwrap();
        assert_eq!(l.summary(&[], None).unwrap()[0].calls, 1);
        // A completed row whose in-flight row is missing (another ledger file) is added.
        let mut orphan = row("a", "gpt-4o", 0.1);
        orphan.id = Some(999);
        l.append_many(&[orphan]).unwrap();
        assert_eq!(l.summary(&[], None).unwrap()[0].calls, 2);
    }

    #[test]
    fn a_batch_of_changes_is_one_transaction_with_ids_in_order() {
        let d = tempfile::tempdir().unwrap();
        let l = Ledger::open(d.path().join("ledger.db")).unwrap();
        let ids = l
            .apply(&[
                LedgerOp::Begin(row("a", "m", 0.5)),
                LedgerOp::Begin(row("a", "m", 0.5)),
            ])
            .unwrap();
        assert_eq!(ids.len(), 2);
        assert_ne!(ids[0], ids[1]);
        let mut done = row("a", "m", 0.1);
        done.id = Some(ids[0]);
        let again = l
            .apply(&[LedgerOp::Complete(done), LedgerOp::Discard(ids[1])])
            .unwrap();
        assert_eq!(again, ids);
        let rows = l.rows_for_task("a").unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].status.as_str(), rows[0].cost_usd), ("ok", 0.1));
    }
}
