//! Shadow traffic: a sample of requests the student answered confidently is also sent to the
//! teacher, off the latency path, and their agreement is stored here. A falling agreement rate is
//! the signal that inputs have drifted and the student needs retraining (`distill drift`).
//!
//! Stored in SQLite (`<state dir>/shadow.db`, WAL), table `shadow`: ts (RFC 3339 UTC), model,
//! tag, input_hash (SHA-256 of the normalised input, never the text), student_label,
//! confidence, teacher_label, agree (0/1), cost_usd. Both labels are in the served model's
//! notation, so for a label-set model `agree` is exact-set agreement, the measure its cascade
//! floor is set on. An extraction model's answers quote the input, so they are stored as
//! their slots only (`["date","time"]`); `agree` still compares the whole answers.

use crate::error::{Result, ServeError};
use rusqlite::{params, Connection};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

#[derive(Debug, Clone)]
pub struct ShadowRow {
    pub ts: String,
    pub model: String,
    pub tag: String,
    pub input_hash: String,
    pub student_label: String,
    pub confidence: f32,
    pub teacher_label: String,
    /// Whether the two answers were the same (for span answers, which are stored as their
    /// slots only, more than the stored labels show).
    pub agree: bool,
    pub cost_usd: f64,
}

fn open(path: &Path) -> Result<Connection> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| ServeError::io(dir, e))?;
    }
    let sql = |e| ServeError::Sqlite {
        path: path.to_path_buf(),
        source: e,
    };
    let conn = Connection::open(path).map_err(sql)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(sql)?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL;
         PRAGMA synchronous=NORMAL;
         CREATE TABLE IF NOT EXISTS shadow (
           id INTEGER PRIMARY KEY,
           ts TEXT NOT NULL,
           model TEXT NOT NULL,
           tag TEXT NOT NULL,
           input_hash TEXT NOT NULL,
           student_label TEXT NOT NULL,
           confidence REAL NOT NULL,
           teacher_label TEXT NOT NULL,
           agree INTEGER NOT NULL,
           cost_usd REAL NOT NULL
         );
         CREATE INDEX IF NOT EXISTS shadow_ts ON shadow(ts);",
    )
    .map_err(sql)?;
    Ok(conn)
}

/// Writes shadow rows on its own thread so SQLite never blocks the async runtime.
pub struct ShadowRecorder {
    tx: mpsc::Sender<Msg>,
    path: PathBuf,
}

enum Msg {
    Row(ShadowRow),
    /// Replies once everything sent before it is written (tests, shutdown).
    Flush(mpsc::Sender<()>),
}

impl ShadowRecorder {
    pub fn open(path: &Path) -> Result<Self> {
        let conn = open(path)?;
        let (tx, rx) = mpsc::channel::<Msg>();
        let p = path.to_path_buf();
        std::thread::Builder::new()
            .name("distill-shadow-writer".into())
            .spawn(move || {
                for msg in rx {
                    match msg {
                        Msg::Row(r) => {
                            if let Err(e) = conn.execute(
                                "INSERT INTO shadow (ts, model, tag, input_hash, student_label,
                                   confidence, teacher_label, agree, cost_usd)
                                 VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9)",
                                params![
                                    r.ts,
                                    r.model,
                                    r.tag,
                                    r.input_hash,
                                    r.student_label,
                                    r.confidence as f64,
                                    r.teacher_label,
                                    r.agree as i64,
                                    r.cost_usd
                                ],
                            ) {
                                tracing::warn!("shadow store {}: {e}", p.display());
                            }
                        }
                        Msg::Flush(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            })
            .map_err(|e| ServeError::io(path, e))?;
        Ok(Self {
            tx,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn record(&self, row: ShadowRow) {
        let _ = self.tx.send(Msg::Row(row));
    }

    /// Blocks until every row recorded so far is in the database.
    pub fn flush(&self) {
        let (tx, rx) = mpsc::channel();
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.recv();
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AgreementRow {
    /// A day (`2026-11-26`) or a label, depending on the table.
    pub key: String,
    pub n: u64,
    pub agree: u64,
    pub agreement: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DriftReport {
    pub model: Option<String>,
    pub since: String,
    pub total: AgreementRow,
    pub by_day: Vec<AgreementRow>,
    /// Per teacher label: how often the student agreed when the teacher said this label.
    pub by_label: Vec<AgreementRow>,
    /// Span models: per slot the teacher found, how often the student's whole answer agreed
    /// (an answer with two `date` spans counts once for `date`). Empty for other models, whose
    /// `by_label` already is per answer.
    pub by_slot: Vec<AgreementRow>,
}

/// Agreement per day and per label over the last `since_days` days.
pub fn drift_report(path: &Path, model: Option<&str>, since_days: u32) -> Result<DriftReport> {
    if !path.exists() {
        return Err(ServeError::config(
            path.display().to_string(),
            "no shadow data yet: run `distill serve --shadow-rate 0.02 ...` with the same --state-dir",
        ));
    }
    let conn = open(path)?;
    let since = (chrono::Utc::now() - chrono::Duration::days(since_days as i64))
        .format("%Y-%m-%d")
        .to_string();
    let sql = |e| ServeError::Sqlite {
        path: path.to_path_buf(),
        source: e,
    };
    let query = |group: &str, from: &str| -> Result<Vec<AgreementRow>> {
        let q = format!(
            "SELECT {group}, COUNT(*), SUM(agree) FROM {from}
             WHERE ts >= ?1 AND (?2 IS NULL OR model = ?2) GROUP BY 1 ORDER BY 1"
        );
        let mut st = conn.prepare(&q).map_err(sql)?;
        let rows = st
            .query_map(params![since, model], |r| {
                let n = r.get::<_, i64>(1)? as u64;
                let agree = r.get::<_, Option<i64>>(2)?.unwrap_or(0) as u64;
                Ok(AgreementRow {
                    key: r.get(0)?,
                    n,
                    agree,
                    agreement: if n == 0 { 0.0 } else { agree as f64 / n as f64 },
                })
            })
            .map_err(sql)?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(sql)?;
        Ok(rows)
    };
    let by_day = query("substr(ts, 1, 10)", "shadow")?;
    let by_label = query("teacher_label", "shadow")?;
    // A span model's answers are stored as JSON lists of their slots: one row per slot an
    // answer holds.
    let by_slot = query(
        "slot",
        "(SELECT DISTINCT s.id, s.ts, s.model, s.agree, j.value AS slot
          FROM shadow s, json_each(s.teacher_label) j
          WHERE json_valid(s.teacher_label) AND json_type(s.teacher_label) = 'array')",
    )?;
    let n: u64 = by_day.iter().map(|r| r.n).sum();
    let agree: u64 = by_day.iter().map(|r| r.agree).sum();
    Ok(DriftReport {
        model: model.map(str::to_string),
        since,
        total: AgreementRow {
            key: "all".into(),
            n,
            agree,
            agreement: if n == 0 { 0.0 } else { agree as f64 / n as f64 },
        },
        by_day,
        by_label,
        by_slot,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_summarises() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("shadow.db");
        let rec = ShadowRecorder::open(&p).unwrap();
        for (s, t) in [("a", "a"), ("a", "b"), ("b", "b")] {
            rec.record(ShadowRow {
                ts: distill_core::ledger::LedgerRow::now(),
                model: "m".into(),
                tag: "default".into(),
                input_hash: "h".into(),
                student_label: s.into(),
                confidence: 0.9,
                teacher_label: t.into(),
                agree: s == t,
                cost_usd: 0.001,
            });
        }
        rec.flush();
        let r = drift_report(&p, Some("m"), 7).unwrap();
        assert_eq!((r.total.n, r.total.agree), (3, 2));
        assert_eq!(r.by_label.len(), 2);
        assert_eq!(r.by_label[1].key, "b");
        assert_eq!((r.by_label[1].n, r.by_label[1].agree), (2, 1));
        assert_eq!(drift_report(&p, Some("other"), 7).unwrap().total.n, 0);
    }

    #[test]
    fn span_answers_are_summarised_per_slot() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("shadow.db");
        let rec = ShadowRecorder::open(&p).unwrap();
        for (teacher, agree) in [
            (r#"["date","date","time"]"#, true),
            (r#"["time"]"#, false),
            ("[]", true),
        ] {
            rec.record(ShadowRow {
                ts: distill_core::ledger::LedgerRow::now(),
                model: "tagger".into(),
                tag: "default".into(),
                input_hash: "h".into(),
                student_label: teacher.into(),
                confidence: 0.9,
                teacher_label: teacher.into(),
                agree,
                cost_usd: 0.001,
            });
        }
        rec.flush();
        let r = drift_report(&p, None, 7).unwrap();
        assert_eq!(r.total.n, 3);
        let slots: Vec<(&str, u64, u64)> = r
            .by_slot
            .iter()
            .map(|s| (s.key.as_str(), s.n, s.agree))
            .collect();
        assert_eq!(slots, [("date", 1, 1), ("time", 2, 1)]);
    }
}
