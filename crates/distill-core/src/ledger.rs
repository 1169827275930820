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
    /// `ok`, `invalid` (answered but not a valid output), `error` (billed error), or
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
             CREATE INDEX IF NOT EXISTS ledger_hash ON ledger(request_hash);",
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

    fn err(&self, e: rusqlite::Error) -> CoreError {
        CoreError::Sqlite {
            path: self.path.clone(),
            source: e,
        }
    }

    pub fn append(&self, row: &LedgerRow) -> Result<()> {
        self.append_many(std::slice::from_ref(row))
    }

    /// Appends rows in one transaction.
    pub fn append_many(&self, rows: &[LedgerRow]) -> Result<()> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction().map_err(|e| self.err(e))?;
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
                    "UPDATE ledger SET ts=?1, task=?2, provider=?3, model=?4, request_hash=?5,
                       prompt_tokens=?6, cached_tokens=?7, cache_write_tokens=?8,
                       completion_tokens=?9, reasoning_tokens=?10, cost_usd=?11, latency_ms=?12,
                       status=?13, batch_id=?14, price_version=?15, source=?16, tag=?17
                     WHERE id=?18",
                )
                .map_err(|e| self.err(e))?;
            for r in rows {
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
                    r.status,
                    r.batch_id,
                    r.price_version,
                    r.source,
                    r.tag,
                ];
                let updated = match r.id {
                    Some(id) => {
                        let mut with_id: Vec<&dyn rusqlite::ToSql> = values.to_vec();
                        with_id.push(&id);
                        update
                            .execute(with_id.as_slice())
                            .map_err(|e| self.err(e))?
                    }
                    None => 0,
                };
                if updated == 0 {
                    insert.execute(values).map_err(|e| self.err(e))?;
                }
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Records a call about to be sent, as an `in_flight` row (`row.status` is ignored), and
    /// returns its id for the row that completes it.
    pub fn begin(&self, row: &LedgerRow) -> Result<i64> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.prepare_cached(
            "INSERT INTO ledger (ts, task, provider, model, request_hash, prompt_tokens,
               cached_tokens, cache_write_tokens, completion_tokens, reasoning_tokens,
               cost_usd, latency_ms, status, batch_id, price_version, source, tag)
             VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17)",
        )
        .and_then(|mut st| {
            st.execute(params![
                row.ts,
                row.task,
                row.provider,
                row.model,
                row.request_hash,
                row.usage.prompt_tokens as i64,
                row.usage.cached_tokens as i64,
                row.usage.cache_write_tokens as i64,
                row.usage.completion_tokens as i64,
                row.usage.reasoning_tokens as i64,
                row.cost_usd,
                row.latency_ms as i64,
                IN_FLIGHT,
                row.batch_id,
                row.price_version,
                row.source,
                row.tag,
            ])
        })
        .map_err(|e| self.err(e))?;
        Ok(conn.last_insert_rowid())
    }

    /// Drops an `in_flight` row whose call certainly was not billed (the provider refused it,
    /// or every attempt failed before an answer).
    pub fn discard(&self, id: i64) -> Result<()> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.execute(
            "DELETE FROM ledger WHERE id = ?1 AND status = ?2",
            params![id, IN_FLIGHT],
        )
        .map_err(|e| self.err(e))?;
        Ok(())
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
               COALESCE(SUM(cost_usd), 0), SUM(status = 'in_flight')
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
}
