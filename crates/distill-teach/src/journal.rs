//! The run journal (`<out>.partial`): every finished record is appended and fsync'd, in
//! completion order, together with the ledger rows and cache entries it produced. It is
//! what makes `kill -9` harmless — a rerun skips what the journal holds, re-applies the
//! last batch's ledger/cache writes if the kill landed between the two, and finally the
//! journal is reordered into the `--out` file by input order.
//!
//! Format: line 1 is a [`JournalHeader`]; every other line is
//! `{"i": <0-based input ordinal>, "b": <write batch>, "r": <TeacherRecord>, "l": [ledger rows], "c": [cache entries]}`.
//! A later line for the same ordinal replaces an earlier one (failed records are retried).
//!
//! `--batch` adds one line per submitted provider batch, written (and fsync'd) as soon as the
//! provider accepts it: `{"batch": <BatchRef>}`. A rerun polls those batches by id instead of
//! submitting their inputs again. Once a batch's results are stored, `{"collected": "<id>"}`
//! says so: `--restart` refuses to forget a journal holding a batch without one, since its
//! answers are paid for and nowhere else.
//!
//! The header records everything that shapes the requests (provider, endpoint, model,
//! prompts, label set, schema, parameters: [`RequestShape`]), so a rerun after the spec
//! changed never mixes answers to the old prompt into the new dataset: it is refused, naming
//! what changed, until the user passes `--restart`.

use crate::client::Pending;
use crate::error::{Result, TeachError};
use distill_core::RecordStatus;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The journal format this version writes; older journals lack the [`RequestShape`].
pub const JOURNAL_VERSION: u32 = 2;

/// What shapes every request of a job, component by component (`system_prompt` →
/// short hash, `model` → name...), so a mismatch can say what changed. `request` is the hash
/// of a whole request body, catching whatever the named components miss.
pub type RequestShape = BTreeMap<String, String>;

/// Identifies the job a journal belongs to, so a stale journal is never mixed in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalHeader {
    pub distill_journal: u32,
    pub task: String,
    pub input_sha256: String,
    pub provider: String,
    pub model: String,
    #[serde(default)]
    pub request: RequestShape,
}

impl JournalHeader {
    /// A short key for the job: provider batches are tagged with it.
    pub fn job_key(&self) -> String {
        distill_core::fsutil::sha256_hex(&serde_json::to_vec(self).unwrap_or_default())[..16]
            .to_string()
    }

    /// Why a journal written under `self` cannot be continued by a job with header `now`,
    /// or `None` when it can.
    pub fn mismatch(&self, now: &JournalHeader) -> Option<String> {
        if self.distill_journal != now.distill_journal {
            return Some(format!(
                "it was written by an older distill (journal format {}, now {}) that did not \
                 record the prompt it was made with",
                self.distill_journal, now.distill_journal
            ));
        }
        let mut changed = Vec::new();
        if self.task != now.task {
            changed.push(format!("the task name (`{}` → `{}`)", self.task, now.task));
        }
        if self.input_sha256 != now.input_sha256 {
            changed.push("the input file's content".to_string());
        }
        let keys: std::collections::BTreeSet<&String> =
            self.request.keys().chain(now.request.keys()).collect();
        let named: Vec<&String> = keys
            .into_iter()
            .filter(|k| k.as_str() != "request" && self.request.get(*k) != now.request.get(*k))
            .collect();
        for k in &named {
            let (a, b) = (self.request.get(*k), now.request.get(*k));
            let short = |v: Option<&String>| v.map(|s| s.len() <= 40).unwrap_or(true);
            if matches!(k.as_str(), "model" | "provider" | "endpoint" | "parameters")
                && short(a)
                && short(b)
            {
                changed.push(format!(
                    "the {} (`{}` → `{}`)",
                    k.replace('_', " "),
                    a.map(String::as_str).unwrap_or("-"),
                    b.map(String::as_str).unwrap_or("-")
                ));
            } else {
                changed.push(format!("the {}", k.replace('_', " ")));
            }
        }
        if named.is_empty() && self.request.get("request") != now.request.get("request") {
            changed.push("the request sent for each input".to_string());
        }
        if changed.is_empty() && self != now {
            changed.push("the provider or model".to_string());
        }
        if changed.is_empty() {
            None
        } else {
            Some(format!(
                "since it was written, {} changed",
                changed.join(", ")
            ))
        }
    }
}

#[derive(Deserialize)]
struct LineHead<'a> {
    i: u64,
    b: u64,
    #[serde(borrow)]
    r: &'a serde_json::value::RawValue,
}

/// A provider batch submitted by `--batch`: its id and the input ordinals it carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchRef {
    pub id: String,
    /// `openai` or `anthropic`.
    pub provider: String,
    /// Number of requests in the batch.
    pub n: u64,
    /// Half-open ordinal ranges `[start, end)`; the request for ordinal `i` has custom_id `in-<i>`.
    pub ranges: Vec<[u64; 2]>,
    /// The round of requests it carries, for jobs that send several (a route task's
    /// `tier:<name>` and `judge:<name>`: see [`crate::batch::prefetch`]); none for labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round: Option<String>,
}

impl BatchRef {
    pub fn ordinals(&self) -> impl Iterator<Item = u64> + '_ {
        self.ranges.iter().flat_map(|r| r[0]..r[1])
    }
}

#[derive(Serialize, Deserialize)]
struct BatchLine {
    batch: BatchRef,
}

/// The journal line recording a submitted batch (with its newline).
pub fn encode_batch_line(batch: &BatchRef) -> Vec<u8> {
    json_line(&BatchLine {
        batch: batch.clone(),
    })
}

/// `value` as one JSON line, newline included.
fn json_line(value: &impl Serialize) -> Vec<u8> {
    let mut v = serde_json::to_vec(value).unwrap_or_default();
    v.push(b'\n');
    v
}

#[derive(Serialize, Deserialize)]
struct CollectedLine {
    collected: String,
}

/// The journal line saying batch `id`'s results are stored (with its newline).
pub fn encode_collected_line(id: &str) -> Vec<u8> {
    json_line(&CollectedLine {
        collected: id.to_string(),
    })
}

/// Answers a Batch API round brought into the response cache: their ledger rows and cache
/// entries, journalled before SQLite sees them, like a record's.
#[derive(Serialize, Deserialize)]
struct FetchedLine {
    fetched: String,
    b: u64,
    #[serde(flatten)]
    p: Pending,
}

/// The journal line recording answers of `round` fetched by a batch (with its newline).
pub fn encode_fetched_line(buf: &mut Vec<u8>, round: &str, batch: u64, pending: &Pending) {
    #[derive(Serialize)]
    struct Line<'a> {
        fetched: &'a str,
        b: u64,
        #[serde(flatten)]
        p: &'a Pending,
    }
    let _ = serde_json::to_writer(
        &mut *buf,
        &Line {
            fetched: round,
            b: batch,
            p: pending,
        },
    );
    buf.push(b'\n');
}

#[derive(Deserialize)]
struct StatusOnly {
    status: RecordStatus,
}

/// Only the costs of a line's ledger rows.
#[derive(Deserialize)]
struct LineCosts {
    #[serde(default)]
    l: Vec<CostOnly>,
}

#[derive(Deserialize)]
struct CostOnly {
    cost_usd: f64,
}

#[derive(Deserialize)]
struct LineWrites {
    #[serde(flatten)]
    pending: Pending,
}

/// A compact set of input ordinals.
#[derive(Debug, Default, Clone)]
pub struct Ordinals(Vec<u64>);

impl Ordinals {
    pub fn insert(&mut self, i: u64) {
        let w = (i / 64) as usize;
        if w >= self.0.len() {
            self.0.resize(w + 1, 0);
        }
        self.0[w] |= 1 << (i % 64);
    }
    pub fn remove(&mut self, i: u64) {
        if let Some(w) = self.0.get_mut((i / 64) as usize) {
            *w &= !(1 << (i % 64));
        }
    }
    pub fn contains(&self, i: u64) -> bool {
        self.0
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
    pub fn len(&self) -> u64 {
        self.0.iter().map(|w| u64::from(w.count_ones())).sum()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What an existing journal says.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Dollars this job has already spent in earlier runs: every paid call its lines record
    /// (superseded records included), so `--max-spend` caps the job, not each run.
    pub spent_usd: f64,
    /// Inputs with a final (ok or invalid) record.
    pub done: Ordinals,
    /// Writes of the last batch, which a kill may have cut off from SQLite.
    pub last_batch: Vec<Pending>,
    pub next_batch: u64,
    pub lines: u64,
    /// Provider batches submitted by earlier `--batch` runs, in submission order.
    pub batches: Vec<BatchRef>,
    /// Ids of the batches whose results were stored (a `collected` line).
    pub collected: std::collections::HashSet<String>,
    /// Inputs with a record (failed ones included) written after the last batch that holds
    /// them.
    pub recorded: Ordinals,
}

impl Recovered {
    /// Submitted batches whose answers may not be stored yet: no `collected` line, and (for a
    /// batch of inputs) some input without a record since the batch was submitted (which also
    /// judges journals from before `collected` lines, and a kill before the line). A round
    /// batch has no inputs to judge by: without its line it counts.
    pub fn uncollected(&self) -> Vec<&BatchRef> {
        self.batches
            .iter()
            .filter(|b| {
                !self.collected.contains(&b.id)
                    && (b.round.is_some() || b.ordinals().any(|i| !self.recorded.contains(i)))
            })
            .collect()
    }
}

/// Refuses to delete the journal at `path` (for `--restart`) while it holds batches whose
/// answers are paid for and not stored: forgetting them would buy every one again.
pub fn check_forgettable(path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let rec = recover(path, None)?;
    let open = rec.uncollected();
    if open.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = open
        .iter()
        .map(|b| format!("{} ({} requests)", b.id, b.n))
        .collect();
    Err(TeachError::file(
        path,
        format!(
            "--restart would forget {} submitted batch(es) whose answers have not been \
             collected: {}. They are paid for and stored nowhere else, so starting over would buy \
             them again. Run the same command without --restart to collect them first (with the \
             spec they were submitted with, if it has changed since), or cancel them at the \
             provider and delete this file",
            open.len(),
            ids.join(", ")
        ),
    ))
}

pub struct Journal {
    path: PathBuf,
    file: File,
    pub next_batch: u64,
}

impl Journal {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the journal at `path`, creating it with `header` or recovering an existing one.
    /// `restart` discards an existing journal instead (its answers stay in the response
    /// cache, so requests that did not change are not paid again).
    pub fn open(
        path: &Path,
        header: &JournalHeader,
        restart: bool,
    ) -> Result<(Journal, Recovered)> {
        if restart && path.exists() {
            check_forgettable(path)?;
            std::fs::remove_file(path).map_err(|e| TeachError::io(path, e))?;
        }
        if path.exists() {
            let rec = recover(path, Some(header))?;
            let file = OpenOptions::new()
                .append(true)
                .open(path)
                .map_err(|e| TeachError::io(path, e))?;
            let next_batch = rec.next_batch;
            return Ok((
                Journal {
                    path: path.to_path_buf(),
                    file,
                    next_batch,
                },
                rec,
            ));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| TeachError::io(dir, e))?;
        }
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(path)
            .map_err(|e| TeachError::io(path, e))?;
        let mut line = serde_json::to_vec(header).unwrap_or_default();
        line.push(b'\n');
        file.write_all(&line)
            .and_then(|_| file.sync_all())
            .map_err(|e| TeachError::io(path, e))?;
        Ok((
            Journal {
                path: path.to_path_buf(),
                file,
                next_batch: 1,
            },
            Recovered {
                next_batch: 1,
                ..Default::default()
            },
        ))
    }

    /// Appends already-serialised lines and makes them durable.
    pub fn append(&mut self, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all(bytes)
            .and_then(|_| self.file.sync_data())
            .map_err(|e| TeachError::io(&self.path, e))?;
        self.next_batch += 1;
        Ok(())
    }
}

/// Serialises one journal line (with its newline) into `buf`.
pub fn encode_line<R: Serialize>(
    buf: &mut Vec<u8>,
    ordinal: u64,
    batch: u64,
    record: &R,
    pending: &Pending,
) {
    #[derive(Serialize)]
    struct Line<'a, R> {
        i: u64,
        b: u64,
        r: &'a R,
        #[serde(flatten)]
        p: &'a Pending,
    }
    let _ = serde_json::to_writer(
        &mut *buf,
        &Line {
            i: ordinal,
            b: batch,
            r: record,
            p: pending,
        },
    );
    buf.push(b'\n');
}

/// Reads a journal; `header`, when given, must match the one it was written under.
fn recover(path: &Path, header: Option<&JournalHeader>) -> Result<Recovered> {
    let file = File::open(path).map_err(|e| TeachError::io(path, e))?;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut line = Vec::new();
    let mut rec = Recovered::default();
    let mut offset = 0u64;
    let mut good_end = 0u64;
    let mut max_batch = 0u64;
    let mut lineno = 0u64;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| TeachError::io(path, e))?;
        if n == 0 {
            break;
        }
        lineno += 1;
        offset += n as u64;
        let complete = line.ends_with(b"\n");
        if lineno == 1 {
            let h: JournalHeader = serde_json::from_slice(&line).map_err(|e| {
                TeachError::file(
                    path,
                    format!("line 1: not a distill journal ({e}); delete it to start over"),
                )
            })?;
            if let Some(why) = header.and_then(|now| h.mismatch(now)) {
                return Err(TeachError::file(
                    path,
                    format!(
                        "this journal of an interrupted run cannot be continued: {why}. Run with \
                         --restart to label every input again with the current spec (answers to \
                         unchanged requests come from the cache, free), or choose another --out"
                    ),
                ));
            }
            good_end = offset;
            continue;
        }
        if complete && line.starts_with(b"{\"batch\":") {
            if let Ok(b) = serde_json::from_slice::<BatchLine>(&line) {
                good_end = offset;
                // A record from before the batch is not its answer. (A round batch numbers its
                // requests, not inputs.)
                if b.batch.round.is_none() {
                    b.batch.ordinals().for_each(|i| rec.recorded.remove(i));
                }
                rec.batches.push(b.batch);
                continue;
            }
        }
        if complete && line.starts_with(b"{\"collected\":") {
            if let Ok(c) = serde_json::from_slice::<CollectedLine>(&line) {
                good_end = offset;
                rec.collected.insert(c.collected);
                continue;
            }
        }
        if complete && line.starts_with(b"{\"fetched\":") {
            let f: FetchedLine = serde_json::from_slice(&line)
                .map_err(|e| TeachError::file(path, format!("line {lineno}: {e}")))?;
            good_end = offset;
            rec.spent_usd += f.p.ledger.iter().map(|r| r.cost_usd).sum::<f64>();
            if f.b > max_batch {
                max_batch = f.b;
                rec.last_batch.clear();
            }
            if f.b == max_batch {
                rec.last_batch.push(f.p);
            }
            continue;
        }
        let head: LineHead = match serde_json::from_slice(&line) {
            Ok(h) if complete => h,
            // A torn last line from a kill: drop it, the input is simply redone.
            _ if reader.fill_buf().map(|b| b.is_empty()).unwrap_or(false) => break,
            Err(e) => {
                return Err(TeachError::file(
                    path,
                    format!("line {lineno}: corrupt journal line ({e})"),
                ))
            }
            Ok(_) => break,
        };
        good_end = offset;
        rec.lines += 1;
        rec.recorded.insert(head.i);
        let status: StatusOnly = serde_json::from_str(head.r.get())
            .map_err(|e| TeachError::file(path, format!("line {lineno}: field `r.status`: {e}")))?;
        if status.status == RecordStatus::Failed {
            rec.done.remove(head.i);
        } else {
            rec.done.insert(head.i);
        }
        if head.b > max_batch {
            max_batch = head.b;
            rec.last_batch.clear();
        }
        if head.b == max_batch {
            let w: LineWrites = serde_json::from_slice(&line)
                .map_err(|e| TeachError::file(path, format!("line {lineno}: {e}")))?;
            rec.spent_usd += w.pending.ledger.iter().map(|r| r.cost_usd).sum::<f64>();
            rec.last_batch.push(w.pending);
        } else {
            let c: LineCosts = serde_json::from_slice(&line)
                .map_err(|e| TeachError::file(path, format!("line {lineno}: {e}")))?;
            rec.spent_usd += c.l.iter().map(|r| r.cost_usd).sum::<f64>();
        }
    }
    let len = std::fs::metadata(path)
        .map_err(|e| TeachError::io(path, e))?
        .len();
    if good_end < len {
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| TeachError::io(path, e))?;
        f.set_len(good_end)
            .and_then(|_| f.sync_all())
            .map_err(|e| TeachError::io(path, e))?;
    }
    rec.next_batch = max_batch + 1;
    Ok(rec)
}

/// Writes the journal's records, ordered by input ordinal (`0..total`, the last record for
/// each), to `out` (named `out_path` in errors). Memory: one offset per input, never the
/// records themselves.
pub fn assemble(journal: &Path, total: u64, out: &mut impl Write, out_path: &Path) -> Result<()> {
    let mut offsets = vec![u64::MAX; total as usize];
    {
        let file = File::open(journal).map_err(|e| TeachError::io(journal, e))?;
        let mut reader = BufReader::with_capacity(1 << 16, file);
        let mut line = Vec::new();
        let mut offset = 0u64;
        let mut first = true;
        loop {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| TeachError::io(journal, e))?;
            if n == 0 {
                break;
            }
            if !first {
                if let Ok(h) = serde_json::from_slice::<LineHead>(&line) {
                    if let Some(slot) = offsets.get_mut(h.i as usize) {
                        *slot = offset;
                    }
                }
            }
            first = false;
            offset += n as u64;
        }
    }
    if let Some(missing) = offsets.iter().position(|o| *o == u64::MAX) {
        return Err(TeachError::file(
            journal,
            format!(
                "no record for input #{} yet; run the job again to finish it",
                missing + 1
            ),
        ));
    }
    let mut file = File::open(journal).map_err(|e| TeachError::io(journal, e))?;
    let mut reader = BufReader::with_capacity(1 << 16, &mut file);
    let mut pos = 0u64;
    let mut line = Vec::new();
    for off in offsets {
        if off != pos {
            reader
                .seek(SeekFrom::Start(off))
                .map_err(|e| TeachError::io(journal, e))?;
        }
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| TeachError::io(journal, e))?;
        pos = off + n as u64;
        let h: LineHead = serde_json::from_slice(&line)
            .map_err(|e| TeachError::file(journal, format!("offset {off}: {e}")))?;
        out.write_all(h.r.get().as_bytes())
            .and_then(|_| out.write_all(b"\n"))
            .map_err(|e| TeachError::io(out_path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::CacheEntry;
    use crate::provider::Reply;
    use distill_core::ledger::LedgerRow;

    fn header() -> JournalHeader {
        JournalHeader {
            distill_journal: JOURNAL_VERSION,
            task: "t".into(),
            input_sha256: "x".into(),
            provider: "route".into(),
            model: "a,b".into(),
            request: RequestShape::new(),
        }
    }

    fn fetched(hash: &str, cost: f64) -> Pending {
        Pending {
            ledger: vec![LedgerRow {
                id: None,
                ts: LedgerRow::now(),
                task: "t".into(),
                provider: "openai".into(),
                model: "a".into(),
                request_hash: hash.into(),
                usage: Default::default(),
                cost_usd: cost,
                latency_ms: 0,
                status: "ok".into(),
                batch_id: Some("batch_1".into()),
                price_version: "v".into(),
                source: "teach".into(),
                tag: None,
            }],
            cache: vec![CacheEntry {
                hash: hash.into(),
                model: "a".into(),
                reply: Reply {
                    text: "42".into(),
                    usage: Default::default(),
                },
            }],
        }
    }

    /// A round's batch and the answers fetched by it survive a restart: the batch keeps its
    /// round, the answers count as spent, the last group is there to re-apply to SQLite, and
    /// a torn line after them is dropped.
    #[test]
    fn fetched_answers_and_rounds_are_recovered() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("out.jsonl.partial");
        let (mut j, rec) = Journal::open(&path, &header(), false).unwrap();
        assert_eq!(rec.spent_usd, 0.0);
        let b = BatchRef {
            id: "batch_1".into(),
            provider: "openai".into(),
            n: 2,
            ranges: vec![[0, 2]],
            round: Some("tier:cheap".into()),
        };
        j.append(&encode_batch_line(&b)).unwrap();
        for (i, h) in ["h1", "h2"].iter().enumerate() {
            let mut buf = Vec::new();
            encode_fetched_line(
                &mut buf,
                "tier:cheap",
                j.next_batch,
                &fetched(h, 0.25 + i as f64),
            );
            j.append(&buf).unwrap();
        }
        drop(j);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"fetched\":\"tier:ch").unwrap();
        drop(f);
        let (_, rec) = Journal::open(&path, &header(), false).unwrap();
        assert_eq!(rec.batches, vec![b]);
        assert!((rec.spent_usd - 1.5).abs() < 1e-12, "{}", rec.spent_usd);
        assert_eq!(rec.last_batch.len(), 1);
        assert_eq!(rec.last_batch[0].cache[0].hash, "h2");
        assert!(rec.done.is_empty());
        assert!(!std::fs::read_to_string(&path)
            .unwrap()
            .contains("tier:ch\""));
    }

    /// `--restart` may forget a journal only when every batch in it is collected: marked so,
    /// or (a journal from before the marks) every input it carries has a record. A round
    /// batch has no inputs to judge by, so without its mark it counts as uncollected; so does
    /// any batch in a journal whose spec has changed (the header is not checked).
    #[test]
    fn only_collected_batches_may_be_forgotten() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("out.jsonl.partial");
        let batch = |id: &str, round: Option<&str>| BatchRef {
            id: id.into(),
            provider: "openai".into(),
            n: 2,
            ranges: vec![[0, 2]],
            round: round.map(str::to_string),
        };
        let record = |i: u64, status: &str| {
            let mut buf = Vec::new();
            encode_line(
                &mut buf,
                i,
                1,
                &serde_json::json!({"id": i.to_string(), "status": status}),
                &Pending::default(),
            );
            buf
        };
        let (mut j, _) = Journal::open(&path, &header(), false).unwrap();
        // Failed in real time, then sent in a batch: the old records are not its answers.
        j.append(&record(0, "failed")).unwrap();
        j.append(&record(1, "failed")).unwrap();
        j.append(&encode_batch_line(&batch("b_inputs", None)))
            .unwrap();
        let refused = check_forgettable(&path).unwrap_err().to_string();
        assert!(refused.contains("b_inputs (2 requests)"), "{refused}");
        // A failed record is a collected answer too (the batch said why).
        j.append(&record(0, "ok")).unwrap();
        j.append(&record(1, "failed")).unwrap();
        check_forgettable(&path).unwrap();

        j.append(&encode_batch_line(&batch("b_round", Some("tier:a"))))
            .unwrap();
        let refused = check_forgettable(&path).unwrap_err().to_string();
        assert!(
            refused.contains("b_round") && !refused.contains("b_inputs"),
            "{refused}"
        );
        j.append(&encode_collected_line("b_round")).unwrap();
        check_forgettable(&path).unwrap();
        drop(j);
        // A restart after the spec changed: with everything collected it goes ahead...
        let mut other = header();
        other.model = "c".into();
        let copy = d.path().join("copy.partial");
        std::fs::copy(&path, &copy).unwrap();
        let (_, fresh) = Journal::open(&copy, &other, true).unwrap();
        assert_eq!((fresh.lines, fresh.batches.len()), (0, 0), "{fresh:?}");
        // ...and with a batch out it is refused, naming it, the journal kept.
        let (mut j, rec) = Journal::open(&path, &header(), false).unwrap();
        assert_eq!(rec.collected.len(), 1);
        j.append(&encode_batch_line(&batch("b_late", Some("judge:j"))))
            .unwrap();
        drop(j);
        let refused = Journal::open(&path, &other, true)
            .err()
            .unwrap()
            .to_string();
        assert!(
            refused.contains("--restart would forget 1 submitted batch(es)")
                && refused.contains("b_late"),
            "{refused}"
        );
        assert!(path.exists(), "a refused restart keeps the journal");
    }
}
