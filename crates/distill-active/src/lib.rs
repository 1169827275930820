//! Label less. The teacher's labelling bill is the largest one-time cost of distillation, and
//! most of it buys labels the student would have got right anyway. This stage labels an
//! unlabelled pool in rounds: a seed round at random, then each round trains a student on the
//! labels so far, scores the rest of the pool and sends the teacher only the inputs worth it
//! ([`strategy`]), until a label limit, the budget, the pool or a stop rule ends it.
//!
//! Every round is an ordinary `distill teach` job over that round's inputs (its own journal,
//! the response cache, the ledger, the Batch API when asked), and every selection is journalled
//! before it is labelled, so `kill -9` anywhere resumes with the same picks and nothing paid
//! twice. The result is one teacher dataset in selection order, so `distill eval --curve
//! --curve-order recorded` draws the learning curve of exactly this labelling.
//!
//! Files, beside the output `OUT`: `OUT.rounds/plan.json` (what the selection depends on; a
//! changed plan is refused rather than silently mixed), `selection.jsonl` (one line per round:
//! its input ids), `round-NNN.input.jsonl` and `round-NNN.jsonl` (each round's teach job),
//! `round-NNN.retried.json` and `round-NNN.answered.jsonl` (a round retried for its failed
//! records: what those cost, and the answered lines until they are put back), and `student/`
//! (the scoring student, trained on the round files so far). `OUT` is written, the
//! rounds in order, when the run stops.

pub mod strategy;

use distill_core::{CoreError, RecordStatus, TaskSpec};
use distill_teach::{run_teach, TeachOptions};
use distill_train::student::{Student, StudentKind, TrainData, TrainOptions};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
pub use strategy::{Measure, Strategy};

/// Rounds near the budget are sized at this multiple of the mean $ per paid label.
const BUDGET_HEADROOM: f64 = 1.25;

#[derive(Debug, thiserror::Error)]
pub enum ActiveError {
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error(transparent)]
    Teach(#[from] distill_teach::TeachError),
    #[error(transparent)]
    Train(#[from] distill_train::TrainError),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = ActiveError> = std::result::Result<T, E>;

/// What to label and how to choose it.
#[derive(Debug, Clone)]
pub struct ActiveOptions {
    /// The unlabelled inputs (the spec's input columns).
    pub pool: PathBuf,
    /// The teacher dataset to write, in selection order.
    pub out: PathBuf,
    pub strategy: Strategy,
    pub measure: Measure,
    /// Stop after this many labels.
    pub limit: Option<usize>,
    /// Stop before spending more than this (USD, every round included).
    pub max_spend: Option<f64>,
    pub round_size: usize,
    /// The first, random round (default: `round_size`).
    pub seed_size: Option<usize>,
    pub seed: u64,
    /// The student that scores the pool (`linear` or `encoder-head`: seconds per round; an
    /// `encoder-head` scores the pool's embeddings, computed once per run).
    pub student: StudentKind,
    /// Device, threads, base encoder and embedding cache for that student.
    pub train: TrainOptions,
    /// Stop when the scoring student's dev accuracy gained less than this over two rounds.
    pub stop_gain: Option<f64>,
    /// Forget the journalled selection and choose again (answers already bought come from the
    /// response cache, free).
    pub restart: bool,
    /// A line on stderr per round (what was picked, how, what it cost so far).
    pub progress: bool,
}

/// What the selection depends on; a resumed run must have the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Plan {
    pool_sha256: String,
    strategy: Strategy,
    measure: Measure,
    seed: u64,
    round_size: usize,
    seed_size: usize,
    student: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Selection {
    round: usize,
    ids: Vec<String>,
    /// The dev accuracy of the scorer trained before this round (when one was), journalled so a
    /// resumed run's stop rule sees the same history as an uninterrupted one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dev_accuracy: Option<f64>,
}

/// One round as it went.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundSummary {
    pub round: usize,
    pub picked: usize,
    /// Paid in this run for this round (0 when it was already labelled, or from the cache).
    pub spent_usd: f64,
    /// The scoring student's dev accuracy before the round was picked (rounds after the first).
    pub dev_accuracy: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ActiveSummary {
    pub out: PathBuf,
    pub rounds: Vec<RoundSummary>,
    pub labelled: usize,
    pub pool: usize,
    /// What every round's labels cost (their records' `cost_usd`, earlier runs included).
    pub spent_usd: f64,
    /// Why it stopped.
    pub stopped: String,
    /// False when a round is unfinished (budget, a batch still running, failures): run again.
    pub complete: bool,
}

impl std::fmt::Display for ActiveSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for r in &self.rounds {
            writeln!(
                f,
                "round {}: {} inputs, ${:.4} paid now{}",
                r.round,
                r.picked,
                r.spent_usd,
                r.dev_accuracy
                    .map(|a| format!(", scoring student dev accuracy {a:.4}"))
                    .unwrap_or_default()
            )?;
        }
        write!(
            f,
            "labelled {} of {} pool inputs for ${:.4} in {} rounds; stopped: {}",
            self.labelled,
            self.pool,
            self.spent_usd,
            self.rounds.len(),
            self.stopped
        )?;
        if self.complete {
            write!(f, "\nwrote {}", self.out.display())
        } else {
            write!(
                f,
                "\nthe last round is unfinished: run the same command again to continue"
            )
        }
    }
}

pub fn rounds_dir(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".rounds");
    PathBuf::from(s)
}

struct PoolItem {
    id: String,
    text: String,
    gold: Option<String>,
}

/// Labels the pool in rounds; see the module doc.
pub fn run_active(
    spec: &TaskSpec,
    opts: &ActiveOptions,
    teach: &TeachOptions,
    rt: &tokio::runtime::Runtime,
) -> Result<ActiveSummary> {
    if opts.strategy == Strategy::All {
        return Err(ActiveError::Invalid(
            "--strategy all labels the whole input: that is plain `distill teach`".into(),
        ));
    }
    if opts.round_size == 0 || opts.seed_size == Some(0) {
        return Err(ActiveError::Invalid(
            "--round-size and --seed-size must be at least 1".into(),
        ));
    }
    if spec.input.messages_column.is_some() {
        return Err(ActiveError::Invalid(
            "--strategy works on single texts; this task's inputs are conversations".into(),
        ));
    }
    if opts.limit.is_none() && opts.max_spend.is_none() && opts.stop_gain.is_none() {
        return Err(ActiveError::Invalid(
            "--strategy needs somewhere to stop: --limit N labels, --max-spend USD or --stop-gain"
                .into(),
        ));
    }
    let pool = read_pool(spec, &opts.pool)?;
    let dir = rounds_dir(&opts.out);
    if opts.restart && dir.exists() {
        // A round's teach journal may hold a batch that is paid for and not yet collected.
        for r in 0.. {
            let round = dir.join(format!("round-{r:03}.jsonl"));
            let journal = distill_teach::runner::journal_path(&round);
            if !journal.exists() && !round.exists() {
                break;
            }
            distill_teach::journal::check_forgettable(&journal)?;
        }
        std::fs::remove_dir_all(&dir).map_err(|e| CoreError::io(&dir, e))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| CoreError::io(&dir, e))?;
    let plan = Plan {
        pool_sha256: distill_core::fsutil::sha256_file(&opts.pool)?,
        strategy: opts.strategy,
        measure: opts.measure,
        seed: opts.seed,
        round_size: opts.round_size,
        seed_size: opts.seed_size.unwrap_or(opts.round_size),
        student: opts.student.as_str().into(),
    };
    check_plan(&dir.join("plan.json"), &plan)?;
    let journal = dir.join("selection.jsonl");
    let mut selections = read_selections(&journal)?;

    let mut labelled: HashSet<String> = HashSet::new();
    let mut rounds = Vec::new();
    let mut spent = 0.0;
    let mut paid = 0usize;
    let mut dev_history: Vec<f64> = selections.iter().filter_map(|s| s.dev_accuracy).collect();
    let mut finished = 0;
    // An `encoder-head` scorer and `diverse` need the pool in the base encoder's space: embedded
    // once per run (the encoder is frozen), through the on-disk cache, so a resumed run and the
    // scorer's own fits embed nothing twice.
    let mut embeddings: Option<PoolEmbeddings> = None;
    let limit = opts.limit.unwrap_or(usize::MAX);
    let mut stopped = String::new();
    let mut complete = true;
    // The output is written however the loop ends, an error included, from the finished rounds.
    let mut run_rounds = || -> Result<()> {
        for r in 0.. {
            let mut dev_accuracy = None;
            let ids = if let Some(s) = selections.get(r) {
                s.ids.clone()
            } else {
                let remaining: Vec<usize> = (0..pool.len())
                    .filter(|&i| !labelled.contains(&pool[i].id))
                    .collect();
                // Per label actually paid for: cache hits cost nothing now but a fresh label will.
                let mean_cost = (paid > 0).then(|| spent / paid as f64);
                // A quarter's headroom over the mean: teach stops a round whose next request could
                // cross the cap at its worst case (a reply of max_tokens), and a round cut short by
                // the cap leaves its labels in its journal, not in the output. Rounds too small to
                // be worth a retrain are not started.
                let budget_room = match (opts.max_spend, mean_cost) {
                    (Some(m), Some(c)) if c > 0.0 => {
                        let n = ((m - spent) / (c * BUDGET_HEADROOM)).floor().max(0.0) as usize;
                        if n < (opts.round_size / 10).max(1) {
                            0
                        } else {
                            n
                        }
                    }
                    (Some(m), _) if m - spent <= 0.0 => 0,
                    _ => usize::MAX,
                };
                let want = if r == 0 {
                    plan.seed_size
                } else {
                    opts.round_size
                };
                let k = want
                    .min(limit.saturating_sub(labelled.len()))
                    .min(remaining.len())
                    .min(budget_room);
                if labelled.len() >= limit {
                    stopped = format!("the label limit ({limit})");
                    break;
                }
                if remaining.is_empty() {
                    stopped = "the pool is all labelled".into();
                    break;
                }
                if k == 0 {
                    stopped = format!(
                        "the budget (${:.4} of ${:.4} spent; another label costs about ${:.4})",
                        spent,
                        opts.max_spend.unwrap_or(0.0),
                        mean_cost.unwrap_or(0.0)
                    );
                    break;
                }
                // After the seed round the scorer trains on the rounds so far: to pick
                // (uncertainty, diverse) and, for any strategy, for the stop rule.
                let random = r == 0 || opts.strategy == Strategy::Random;
                if r > 0 && (!random || opts.stop_gain.is_some()) {
                    let acc = train_scorer(spec, opts, &dir, &round_outputs(&dir, r))?;
                    dev_accuracy = Some(acc);
                    if let Some(gain) = opts.stop_gain {
                        if stop_by_gain(&mut dev_history, acc, gain) {
                            stopped = stop_message(&dev_history, gain);
                            break;
                        }
                    }
                }
                let picked = if random {
                    strategy::random_pick(remaining.len(), k, opts.seed ^ (r as u64) << 1)
                        .into_iter()
                        .map(|i| remaining[i])
                        .collect()
                } else {
                    score_and_pick(opts, &dir, &pool, &remaining, k, &mut embeddings)?
                };
                let s = Selection {
                    round: r,
                    ids: picked.iter().map(|&i| pool[i].id.clone()).collect(),
                    dev_accuracy,
                };
                append_selection(&journal, &s)?;
                if opts.progress {
                    eprintln!(
                        "round {r}: {} inputs picked ({}{}); {} labelled so far for ${spent:.4}",
                        s.ids.len(),
                        if r == 0 {
                            "random seed round"
                        } else {
                            opts.strategy.as_str()
                        },
                        dev_accuracy
                            .map(|a| format!(", the scoring student's dev accuracy {a:.4}"))
                            .unwrap_or_default(),
                        labelled.len()
                    );
                }
                selections.push(s.clone());
                s.ids
            };

            // Label the round: an ordinary teach job over its inputs.
            let input = dir.join(format!("round-{r:03}.input.jsonl"));
            let output = dir.join(format!("round-{r:03}.jsonl"));
            if !input.exists() {
                write_round_input(&input, &pool, &ids)?;
            }
            // A round labelled by an earlier run is not asked again: that would only turn its
            // records into cache hits and lose what they cost. One with failed records is: its
            // failed inputs are retried, its answered ones keep their records.
            // What the round's earlier runs paid (its answered records, which come back from
            // the cache at $0, and every failed attempt): the rerun's cap leaves it out.
            restore_answered(&output)?;
            let (mut done, earlier_cost) =
                match read_round(&output)?.filter(|f| f.records == ids.len()) {
                    Some(f) if f.failed > 0 => {
                        carry_failed(&output, &f)?;
                        save_answered(&output, &f.answered)?;
                        (None, f.cost)
                    }
                    earlier => (earlier, 0.0),
                };
            if done.is_none() {
                let mut t = teach.clone();
                t.input = Some(input);
                t.out = Some(output.clone());
                t.limit = None;
                t.restart = false;
                t.resume = false;
                // A round job's cap includes its own earlier runs: the teach journal keeps those
                // of an unfinished job, `earlier_cost` those of a finished one being retried.
                t.max_spend = opts.max_spend.map(|m| (m - spent - earlier_cost).max(0.0));
                let summary = rt.block_on(run_teach(&round_spec(spec), t))?;
                rounds.push(RoundSummary {
                    round: r,
                    picked: ids.len(),
                    spent_usd: summary.cost_usd,
                    dev_accuracy: selections[r].dev_accuracy,
                });
                restore_answered(&output)?;
                let labelled_now = read_round(&output)?;
                let failed = labelled_now.as_ref().map_or(0, |f| f.failed);
                if !summary.complete || failed > 0 {
                    labelled.extend(ids.iter().cloned());
                    complete = false;
                    stopped = if summary.awaiting_batches {
                        "round's batch submitted; run the same command again to collect it".into()
                    } else if summary.stopped_by_budget {
                        "the budget, in the middle of a round".into()
                    } else {
                        format!(
                            "round {r} has {failed} failed records (no answer after retries): \
                             run the same command again to ask them again"
                        )
                    };
                    break;
                }
                done = labelled_now;
            }
            let Some(done) = done else {
                return Err(ActiveError::Invalid(format!(
                    "{}: the round's teach job finished without writing it",
                    output.display()
                )));
            };
            labelled.extend(ids.iter().cloned());
            spent += done.cost;
            paid += done.paid;
            finished = r + 1;
        }
        Ok(())
    };
    let result = run_rounds();
    if finished > 0 {
        merge_rounds(&dir, finished, &opts.out)?;
    }
    result?;
    Ok(ActiveSummary {
        out: opts.out.clone(),
        labelled: labelled.len(),
        pool: pool.len(),
        rounds,
        spent_usd: spent,
        stopped,
        complete,
    })
}

fn stop_by_gain(history: &mut Vec<f64>, acc: f64, gain: f64) -> bool {
    history.push(acc);
    let n = history.len();
    n >= 3 && history[n - 1] - history[n - 3] < gain
}

fn stop_message(history: &[f64], gain: f64) -> String {
    let n = history.len();
    format!(
        "the scoring student's dev accuracy gained {:+.4} over the last two rounds (< --stop-gain {gain})",
        history[n - 1] - history[n - 3]
    )
}

fn read_pool(spec: &TaskSpec, path: &Path) -> Result<Vec<PoolItem>> {
    let cols = distill_core::input::Columns::from(&spec.input);
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for item in distill_core::input::read_inputs(path, spec.input.format, &cols)? {
        let item = item?;
        if !seen.insert(item.id.clone()) {
            return Err(CoreError::data(
                path,
                item.line,
                "id",
                format!("duplicate id `{}`", item.id),
            )
            .into());
        }
        out.push(PoolItem {
            id: item.id,
            text: item.text,
            gold: item.gold,
        });
    }
    if out.is_empty() {
        return Err(ActiveError::Invalid(format!(
            "{}: no inputs to choose from",
            path.display()
        )));
    }
    Ok(out)
}

fn check_plan(path: &Path, plan: &Plan) -> Result<()> {
    if let Ok(text) = std::fs::read_to_string(path) {
        let old: Plan = serde_json::from_str(&text)
            .map_err(|e| CoreError::data(path, 1, "plan", format!("not a selection plan: {e}")))?;
        if &old != plan {
            let mut changed = Vec::new();
            let (a, b) = (
                serde_json::to_value(&old).unwrap_or_default(),
                serde_json::to_value(plan).unwrap_or_default(),
            );
            if let (Some(a), Some(b)) = (a.as_object(), b.as_object()) {
                for (k, v) in b {
                    if a.get(k) != Some(v) {
                        changed.push(format!(
                            "{k} ({} → {v})",
                            a.get(k).cloned().unwrap_or_default()
                        ));
                    }
                }
            }
            return Err(ActiveError::Invalid(format!(
                "{} was chosen with another plan; changed: {}. Pass --restart to choose again \
                 (labels already bought come from the response cache, free)",
                path.parent().unwrap_or(path).display(),
                changed.join(", ")
            )));
        }
        return Ok(());
    }
    let json = serde_json::to_vec_pretty(plan).map_err(|e| ActiveError::Invalid(e.to_string()))?;
    distill_core::fsutil::write_atomic(path, &json)?;
    Ok(())
}

/// The journalled selections; a torn last line (killed mid-append) is dropped, since that
/// round was never labelled.
fn read_selections(path: &Path) -> Result<Vec<Selection>> {
    let Ok(f) = std::fs::File::open(path) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    let mut torn = false;
    for line in std::io::BufReader::new(f).lines() {
        let line = line.map_err(|e| CoreError::io(path, e))?;
        match serde_json::from_str::<Selection>(&line) {
            Ok(s) if s.round == out.len() => out.push(s),
            _ => {
                torn = true;
                break;
            }
        }
    }
    if torn {
        // Cut the journal back to its whole rounds so the next append lands after them.
        let mut keep = String::new();
        for s in &out {
            keep.push_str(
                &serde_json::to_string(s).map_err(|e| ActiveError::Invalid(e.to_string()))?,
            );
            keep.push('\n');
        }
        distill_core::fsutil::write_atomic(path, keep.as_bytes())?;
    }
    Ok(out)
}

fn append_selection(path: &Path, s: &Selection) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| CoreError::io(path, e))?;
    let mut line = serde_json::to_string(s).map_err(|e| ActiveError::Invalid(e.to_string()))?;
    line.push('\n');
    f.write_all(line.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| CoreError::io(path, e))?;
    Ok(())
}

fn write_round_input(path: &Path, pool: &[PoolItem], ids: &[String]) -> Result<()> {
    let by_id: std::collections::HashMap<&str, &PoolItem> =
        pool.iter().map(|p| (p.id.as_str(), p)).collect();
    let mut s = String::new();
    for id in ids {
        let p = by_id.get(id.as_str()).ok_or_else(|| {
            ActiveError::Invalid(format!(
                "the journalled selection names input `{id}`, which the pool no longer has"
            ))
        })?;
        let mut v = serde_json::json!({"id": p.id, "text": p.text});
        if let Some(g) = &p.gold {
            v["gold"] = g.clone().into();
        }
        s.push_str(&v.to_string());
        s.push('\n');
    }
    distill_core::fsutil::write_atomic(path, s.as_bytes())?;
    Ok(())
}

/// The spec as a round's teach job reads its input file (JSONL of id, text, gold).
fn round_spec(spec: &TaskSpec) -> TaskSpec {
    let mut s = spec.clone();
    s.input.format = Some(distill_core::spec::InputFormat::Jsonl);
    s.input.text_column = "text".into();
    s.input.id_column = Some("id".into());
    s.input.gold_column = spec.input.gold_column.as_ref().map(|_| "gold".into());
    s
}

/// A round's output as its teach job wrote it (only once every input had a record).
struct RoundFile {
    records: usize,
    /// What its records cost, and how many were paid for (not cache hits).
    cost: f64,
    paid: usize,
    /// Records with no answer (errors after retries): a rerun of the round asks them again.
    failed: usize,
    /// What those cost (attempts sent and never answered are billed) and how many were paid.
    failed_cost: f64,
    failed_paid: usize,
    /// Every answered record's line, by input id.
    answered: HashMap<String, String>,
}

fn read_round(path: &Path) -> Result<Option<RoundFile>> {
    let Ok(f) = std::fs::File::open(path) else {
        return Ok(None);
    };
    let mut out = RoundFile {
        records: 0,
        cost: 0.0,
        paid: 0,
        failed: 0,
        failed_cost: 0.0,
        failed_paid: 0,
        answered: HashMap::new(),
    };
    for line in std::io::BufReader::new(f).lines() {
        let line = line.map_err(|e| CoreError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        out.records += 1;
        if let Ok(r) = serde_json::from_str::<distill_core::TeacherRecord>(&line) {
            out.cost += r.cost_usd;
            out.paid += usize::from(r.cost_usd > 0.0);
            if r.status == RecordStatus::Failed {
                out.failed += 1;
                out.failed_cost += r.cost_usd;
                out.failed_paid += usize::from(r.cost_usd > 0.0);
            } else {
                out.answered.insert(r.id.clone(), line);
            }
        }
    }
    if let Some(r) = read_retried(path)? {
        // Until the rerun replaces the file, its failed records are still in it.
        let (cost, paid) = if r.output_stamp == stamp(path)? {
            (
                r.cost_usd - out.failed_cost,
                r.paid - out.failed_paid.min(r.paid),
            )
        } else {
            (r.cost_usd, r.paid)
        };
        out.cost += cost;
        out.paid += paid;
    }
    Ok(Some(out))
}

/// What the failed records of a round's earlier runs cost. A rerun asks those inputs again
/// and its records replace theirs, so without this the attempts they paid for (sent, never
/// answered, billed all the same) would vanish from the round's cost and from `--max-spend`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Retried {
    cost_usd: f64,
    paid: usize,
    /// The round file they were last read from ([`stamp`]): a rerun killed before its teach
    /// job rewrote the file finds the same file and does not count them twice.
    output_stamp: String,
}

/// Tells one writing of a file from another: its content and its modification time (a rerun
/// that fails exactly as the last one did writes the same bytes, later).
fn stamp(path: &Path) -> Result<String> {
    let sha = distill_core::fsutil::sha256_file(path)?;
    let modified = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .map_err(|e| CoreError::io(path, e))?;
    let ns = modified
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    Ok(format!("{sha}:{ns}"))
}

fn retried_path(output: &Path) -> PathBuf {
    output.with_extension("retried.json")
}

fn read_retried(output: &Path) -> Result<Option<Retried>> {
    let path = retried_path(output);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ActiveError::Invalid(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CoreError::io(&path, e).into()),
    }
}

/// Adds the failed records of `round` (read from `output`) to what the round's earlier runs
/// cost, before a rerun replaces them.
fn carry_failed(output: &Path, round: &RoundFile) -> Result<()> {
    let stamp = stamp(output)?;
    let mut r = read_retried(output)?.unwrap_or_default();
    if r.output_stamp == stamp {
        return Ok(());
    }
    r.cost_usd += round.failed_cost;
    r.paid += round.failed_paid;
    r.output_stamp = stamp;
    let bytes = serde_json::to_vec_pretty(&r).unwrap_or_default();
    distill_core::fsutil::write_atomic(retried_path(output), &bytes)?;
    Ok(())
}

/// Where a round's answered lines wait while its failed inputs are asked again: a kill after
/// the rerun's teach job wrote the round (its answered records as $0 cache hits) and before
/// they were put back would otherwise lose what they cost.
fn answered_path(output: &Path) -> PathBuf {
    output.with_extension("answered.jsonl")
}

/// Keeps the answered lines of a round about to be retried ([`restore_answered`] puts them
/// back).
fn save_answered(output: &Path, answered: &HashMap<String, String>) -> Result<()> {
    let path = answered_path(output);
    let mut bytes = Vec::new();
    for line in answered.values() {
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
    }
    distill_core::fsutil::write_atomic(&path, &bytes)?;
    Ok(())
}

/// Puts the lines [`save_answered`] kept back into the round file (whoever wrote it since),
/// then drops them.
fn restore_answered(output: &Path) -> Result<()> {
    let path = answered_path(output);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(());
    };
    let earlier: HashMap<String, String> = text
        .lines()
        .filter_map(|l| {
            let r = serde_json::from_str::<distill_core::TeacherRecord>(l).ok()?;
            Some((r.id, l.to_string()))
        })
        .collect();
    if output.exists() {
        keep_answered(output, &earlier)?;
    }
    std::fs::remove_file(&path).map_err(|e| CoreError::io(&path, e))?;
    Ok(())
}

/// Puts back the lines of the records an earlier run of the round answered: asked again, they
/// came from the response cache as $0 hits, and the round would forget what they cost.
fn keep_answered(path: &Path, earlier: &HashMap<String, String>) -> Result<()> {
    let text = std::fs::read_to_string(path).map_err(|e| CoreError::io(path, e))?;
    let mut bytes = Vec::with_capacity(text.len());
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let id = serde_json::from_str::<distill_core::TeacherRecord>(line)
            .ok()
            .map(|r| r.id);
        let kept = id.and_then(|id| earlier.get(&id));
        bytes.extend_from_slice(kept.map_or(line, String::as_str).as_bytes());
        bytes.push(b'\n');
    }
    // Unchanged, the file is left as it is: its stamp says which failures were carried.
    if bytes != text.as_bytes() {
        distill_core::fsutil::write_atomic(path, &bytes)?;
    }
    Ok(())
}

/// Writes the first `n` rounds' records, in order, as the output dataset.
fn merge_rounds(dir: &Path, n: usize, out: &Path) -> Result<()> {
    let mut bytes = Vec::new();
    for p in round_outputs(dir, n) {
        bytes.extend(std::fs::read(&p).map_err(|e| CoreError::io(&p, e))?);
    }
    distill_core::fsutil::write_atomic(out, &bytes)?;
    Ok(())
}

/// The output files of rounds `0..n`, in order.
fn round_outputs(dir: &Path, n: usize) -> Vec<PathBuf> {
    (0..n)
        .map(|r| dir.join(format!("round-{r:03}.jsonl")))
        .collect()
}

/// Trains the scoring student on the `records` files; returns its dev accuracy.
fn train_scorer(
    spec: &TaskSpec,
    opts: &ActiveOptions,
    dir: &Path,
    records: &[PathBuf],
) -> Result<f64> {
    let sources = distill_train::train::TrainSources {
        data: records.to_vec(),
        out_of_scope: vec![],
    };
    let (data, _): (TrainData, _) =
        distill_train::train::load_train_sources(spec, &sources, 0.1, opts.seed, None)?;
    let mut t = opts.train.clone();
    t.out = dir.join("student");
    t.force = true;
    t.progress = false;
    t.seed = opts.seed;
    let meta = distill_train::train::train_on(&data, opts.student, &t)?;
    Ok(meta.dev_accuracy)
}

/// The pool in the base encoder's embedding space, one row of `dim` floats per input.
struct PoolEmbeddings {
    rows: Vec<f32>,
    dim: usize,
}

impl PoolEmbeddings {
    fn row(&self, i: usize) -> &[f32] {
        &self.rows[i * self.dim..(i + 1) * self.dim]
    }
    /// Rows `idx`, concatenated.
    fn gather(&self, idx: &[usize]) -> Vec<f32> {
        idx.iter()
            .flat_map(|&i| self.row(i).iter().copied())
            .collect()
    }
}

/// Scores the unlabelled pool with the trained student and picks `k` of `remaining`.
fn score_and_pick(
    opts: &ActiveOptions,
    dir: &Path,
    pool: &[PoolItem],
    remaining: &[usize],
    k: usize,
    embeddings: &mut Option<PoolEmbeddings>,
) -> Result<Vec<usize>> {
    let encoder_space =
        opts.student == StudentKind::EncoderHead || opts.strategy == Strategy::Diverse;
    if encoder_space && embeddings.is_none() {
        *embeddings = Some(embed_pool(opts, pool)?);
    }
    let probs = pool_proba(
        opts,
        &dir.join("student"),
        pool,
        remaining,
        embeddings.as_ref(),
    )?;
    let head_ml = probs.1.as_ref();
    let scores: Vec<f64> = probs
        .0
        .iter()
        .map(|p| strategy::uncertainty(p, head_ml, opts.measure))
        .collect();
    let order = strategy::top_uncertain(
        &scores,
        if opts.strategy == Strategy::Diverse {
            k * 4
        } else {
            k
        },
    );
    let (Strategy::Diverse, Some(emb)) = (opts.strategy, embeddings.as_ref()) else {
        return Ok(order.into_iter().map(|j| remaining[j]).collect());
    };
    // Diverse: k-centre greedy in the encoder's embedding space over the 4k most uncertain,
    // with every labelled input as a starting centre.
    let candidates: Vec<usize> = order.iter().map(|&j| remaining[j]).collect();
    let remaining_set: HashSet<usize> = remaining.iter().copied().collect();
    let centres: Vec<Vec<f32>> = (0..pool.len())
        .filter(|i| !remaining_set.contains(i))
        .map(|i| emb.row(i).to_vec())
        .collect();
    let cand_emb: Vec<Vec<f32>> = candidates.iter().map(|&i| emb.row(i).to_vec()).collect();
    let local: Vec<usize> = (0..candidates.len()).collect();
    Ok(strategy::k_centre(&local, &cand_emb, &centres, k)
        .into_iter()
        .map(|j| candidates[j])
        .collect())
}

/// The scoring student's calibrated probabilities for the `remaining` pool inputs, and its
/// multilabel head. An `encoder-head` applies its head to the pool's embeddings (a
/// millisecond) instead of running the encoder over the pool every round (minutes on a CPU).
fn pool_proba(
    opts: &ActiveOptions,
    student_dir: &Path,
    pool: &[PoolItem],
    remaining: &[usize],
    embeddings: Option<&PoolEmbeddings>,
) -> Result<(Vec<Vec<f32>>, Option<distill_train::objective::SigmoidHead>)> {
    if let (StudentKind::EncoderHead, Some(emb)) = (opts.student, embeddings) {
        let student = distill_train::encoder::head::open(
            student_dir,
            &opts.train.device,
            opts.train.threads,
        )?;
        let ml = student.meta().multilabel.clone();
        return Ok((student.proba_of_embeddings(&emb.gather(remaining)), ml));
    }
    let student = distill_train::load_student(student_dir, &opts.train.device)?;
    let mut probs = Vec::with_capacity(remaining.len());
    for chunk in remaining.chunks(256) {
        let texts: Vec<&str> = chunk.iter().map(|&i| pool[i].text.as_str()).collect();
        probs.extend(student.predict_proba(&texts)?);
    }
    Ok((probs, student.meta().multilabel.clone()))
}

/// Every pool input's sentence embedding under the base encoder (`--base`), through the
/// embedding cache the `encoder-head` scorer trains with.
fn embed_pool(opts: &ActiveOptions, pool: &[PoolItem]) -> Result<PoolEmbeddings> {
    let texts: Vec<&str> = pool.iter().map(|p| p.text.as_str()).collect();
    let (rows, dim) =
        distill_train::encoder::head::embed_cached(&opts.train, &texts, opts.progress)?;
    Ok(PoolEmbeddings { rows, dim })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A round retried for its failed records keeps what those cost: each rerun's records
    /// replace the earlier ones, and the attempts that went unanswered were billed. Carrying
    /// the same file twice (a rerun killed before its teach job rewrote it) counts it once; a
    /// rerun that failed exactly as the last one did (the same bytes, written later) counts.
    #[test]
    fn a_retried_round_keeps_what_its_failed_attempts_cost() {
        let d = tempfile::tempdir().unwrap();
        let output = d.path().join("round-000.jsonl");
        // Each writing is a second later than the last, as a rerun's would be.
        let written = std::cell::Cell::new(std::time::SystemTime::now());
        let write = |records: &[(&str, &str, f64)]| {
            let lines: String = records
                .iter()
                .map(|(id, status, cost)| {
                    format!(
                        "{}\n",
                        serde_json::json!({"id": id, "text": id, "status": status,
                            "provider": "openai", "model": "gpt-4o", "cost_usd": cost})
                    )
                })
                .collect();
            std::fs::write(&output, lines).unwrap();
            written.set(written.get() + std::time::Duration::from_secs(1));
            std::fs::File::options()
                .write(true)
                .open(&output)
                .unwrap()
                .set_modified(written.get())
                .unwrap();
        };
        let cost = || read_round(&output).unwrap().unwrap().cost;
        write(&[("a", "ok", 0.1), ("b", "ok", 0.1), ("c", "failed", 0.05)]);
        let first = read_round(&output).unwrap().unwrap();
        assert_eq!((first.failed, first.paid), (1, 3));
        carry_failed(&output, &first).unwrap();
        carry_failed(&output, &first).unwrap();
        // The same file, read again before the rerun rewrote it: still what it cost.
        assert!((cost() - 0.25).abs() < 1e-12, "{}", cost());
        // A rerun: `c` failed again just as before (the same bytes, paid again).
        write(&[("a", "ok", 0.1), ("b", "ok", 0.1), ("c", "failed", 0.05)]);
        assert!((cost() - 0.30).abs() < 1e-12, "{}", cost());
        carry_failed(&output, &read_round(&output).unwrap().unwrap()).unwrap();
        // Another: `c` failed again (its new attempts cost 0.03), then one answers it.
        write(&[("a", "ok", 0.1), ("b", "ok", 0.1), ("c", "failed", 0.03)]);
        assert!((cost() - 0.33).abs() < 1e-12, "{}", cost());
        carry_failed(&output, &read_round(&output).unwrap().unwrap()).unwrap();
        write(&[("a", "ok", 0.1), ("b", "ok", 0.1), ("c", "ok", 0.02)]);
        let last = read_round(&output).unwrap().unwrap();
        // Every attempt paid: 0.25 + 0.05 + 0.03 + 0.02.
        assert!((last.cost - 0.35).abs() < 1e-12, "{}", last.cost);
        assert_eq!((last.failed, last.paid), (0, 6));
    }

    /// A kill after a retried round's teach job wrote the round (its answered records as $0
    /// cache hits) and before they were put back: the next run puts them back first.
    #[test]
    fn answered_lines_survive_a_kill_before_they_are_put_back() {
        let d = tempfile::tempdir().unwrap();
        let output = d.path().join("round-000.jsonl");
        let line = |id: &str, status: &str, cost: f64| {
            serde_json::json!({"id": id, "text": id, "status": status,
                "provider": "openai", "model": "gpt-4o", "cost_usd": cost})
            .to_string()
        };
        std::fs::write(
            &output,
            format!("{}\n{}\n", line("a", "ok", 0.1), line("b", "failed", 0.0)),
        )
        .unwrap();
        let earlier = read_round(&output).unwrap().unwrap();
        save_answered(&output, &earlier.answered).unwrap();
        // The rerun's teach job: `a` from the cache, `b` answered now; then the kill.
        std::fs::write(
            &output,
            format!("{}\n{}\n", line("a", "ok", 0.0), line("b", "ok", 0.2)),
        )
        .unwrap();
        restore_answered(&output).unwrap();
        let round = read_round(&output).unwrap().unwrap();
        assert!((round.cost - 0.3).abs() < 1e-12, "{}", round.cost);
        assert!(!answered_path(&output).exists());
        // Lines kept that the file already holds: it is not rewritten (its stamp says which
        // failures were carried).
        save_answered(&output, &round.answered).unwrap();
        let inode = || std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&output).unwrap());
        let before = inode();
        restore_answered(&output).unwrap();
        assert!(!answered_path(&output).exists());
        assert_eq!(inode(), before, "rewritten");
    }

    #[test]
    fn the_stop_rule_needs_two_rounds_of_small_gains() {
        let mut h = Vec::new();
        assert!(!stop_by_gain(&mut h, 0.50, 0.01));
        assert!(!stop_by_gain(&mut h, 0.60, 0.01));
        assert!(
            !stop_by_gain(&mut h, 0.62, 0.01),
            "0.12 gained over two rounds"
        );
        assert!(
            !stop_by_gain(&mut h, 0.625, 0.01),
            "0.025 gained over two rounds"
        );
        assert!(
            stop_by_gain(&mut h, 0.627, 0.01),
            "0.007 gained over two rounds"
        );
        assert!(
            stop_message(&h, 0.01).contains("+0.0070"),
            "{}",
            stop_message(&h, 0.01)
        );
    }

    #[test]
    fn a_torn_or_out_of_order_journal_line_ends_the_journal() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("selection.jsonl");
        std::fs::write(
            &p,
            "{\"round\":0,\"ids\":[\"a\",\"b\"]}\n{\"round\":1,\"ids\":[\"c\"]}\n{\"round\":2,\"ids\":[\"d",
        )
        .unwrap();
        let s = read_selections(&p).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].ids, vec!["c".to_string()]);
        // The torn line was cut away, so the next round's line is read back.
        append_selection(
            &p,
            &Selection {
                round: 2,
                ids: vec!["e".into()],
                dev_accuracy: Some(0.5),
            },
        )
        .unwrap();
        let s = read_selections(&p).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[2].ids, vec!["e".to_string()]);
        assert_eq!(s[2].dev_accuracy, Some(0.5));
        assert_eq!(
            s[1].dev_accuracy, None,
            "a journal written before it was kept reads"
        );
    }
}
