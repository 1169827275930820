//! The response cache: every paid reply, keyed by the SHA-256 of the normalised request
//! (provider, endpoint, model, messages, parameters), so the same question is never paid
//! for twice — across reruns, crashes and stages. SQLite in WAL mode; writes are batched.

use crate::error::{Result, TeachError};
use crate::provider::Reply;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// One reply to store.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CacheEntry {
    pub hash: String,
    pub model: String,
    pub reply: Reply,
}

pub struct ResponseCache {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl ResponseCache {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| TeachError::io(dir, e))?;
        }
        let err = |e| TeachError::Cache {
            path: path.clone(),
            source: e,
        };
        let conn = Connection::open(&path).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(err)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=NORMAL;
             CREATE TABLE IF NOT EXISTS responses (
               hash TEXT PRIMARY KEY,
               model TEXT NOT NULL,
               reply TEXT NOT NULL,
               created TEXT NOT NULL
             );",
        )
        .map_err(err)?;
        Ok(Self {
            path,
            conn: Mutex::new(conn),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: rusqlite::Error) -> TeachError {
        TeachError::Cache {
            path: self.path.clone(),
            source: e,
        }
    }

    pub fn get(&self, hash: &str) -> Result<Option<Reply>> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut st = conn
            .prepare_cached("SELECT reply FROM responses WHERE hash = ?1")
            .map_err(|e| self.err(e))?;
        let json: Option<String> = st
            .query_row([hash], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))?;
        // An unreadable entry is treated as a miss: paying again beats failing the job.
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }

    /// Stores entries in one transaction.
    pub fn put_many(&self, entries: &[CacheEntry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let now = distill_core::ledger::LedgerRow::now();
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO responses (hash, model, reply, created) VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(|e| self.err(e))?;
            for e in entries {
                let reply = serde_json::to_string(&e.reply).unwrap_or_default();
                st.execute(params![e.hash, e.model, reply, now])
                    .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    pub fn len(&self) -> Result<u64> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.query_row("SELECT COUNT(*) FROM responses", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(|e| self.err(e))
    }

    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_and_survives_reopen() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c/cache.db");
        let c = ResponseCache::open(&p).unwrap();
        assert!(c.get("h").unwrap().is_none());
        let reply = Reply {
            text: "{\"label\":\"a\"}".into(),
            usage: distill_core::Usage {
                prompt_tokens: 3,
                ..Default::default()
            },
        };
        c.put_many(&[CacheEntry {
            hash: "h".into(),
            model: "m".into(),
            reply: reply.clone(),
        }])
        .unwrap();
        drop(c);
        let c = ResponseCache::open(&p).unwrap();
        assert_eq!(c.get("h").unwrap(), Some(reply));
        assert_eq!(c.len().unwrap(), 1);
    }
}
