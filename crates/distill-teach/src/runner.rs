//! `run_teach`: label every input of a task once, streaming.
//!
//! Inputs are validated in a first streaming pass (so bad data fails before a cent is spent),
//! then labelled with bounded concurrency. One writer thread appends finished records to the
//! journal (fsync per group, not per record), then writes their ledger rows and cache
//! entries; at the end the journal becomes the `--out` file, ordered by input.

use crate::client::{CallContext, ClientOptions, Pending, TeacherClient};
use crate::error::{Result, TeachError};
use crate::journal::{assemble, encode_line, Journal, JournalHeader};
use distill_core::input::{read_inputs, Columns};
use distill_core::prices::PriceTable;
use distill_core::{RecordStatus, TaskSpec, TeacherRecord, Usage};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rusqlite::OptionalExtension;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Everything `distill teach` can be told besides the spec.
#[derive(Debug, Clone)]
pub struct TeachOptions {
    /// Input file; the spec's `input.path` when `None`.
    pub input: Option<PathBuf>,
    /// Output JSONL; `teacher.jsonl` next to the spec when `None`.
    pub out: Option<PathBuf>,
    pub base_url: Option<String>,
    /// Label only the first N inputs.
    pub limit: Option<u64>,
    pub concurrency: usize,
    pub dry_run: bool,
    /// Hard budget in USD for this run.
    pub max_spend: Option<f64>,
    /// Use the provider's Batch API (half price, up to 24 h).
    pub batch: bool,
    /// Require something to resume (a journal or a submitted batch).
    pub resume: bool,
    /// Discard the journal of an interrupted run and label every input again (answers to
    /// unchanged requests come from the response cache, free).
    pub restart: bool,
    /// Override the spec's requests-per-minute limit (0 = none).
    pub rpm: Option<u32>,
    /// Override the spec's tokens-per-minute limit (0 = none).
    pub tpm: Option<u32>,
    pub prices: Option<PriceTable>,
    pub cache_path: PathBuf,
    pub ledger_path: PathBuf,
    /// Show a progress bar on stderr (only drawn on a terminal).
    pub progress: bool,
    /// The key itself (tests, embedding); otherwise read from the spec's env var.
    pub api_key: Option<String>,
    pub max_retries: Option<u32>,
    pub backoff_base: Option<Duration>,
    /// Longest wait between Batch API status polls (polling starts faster and backs off to it).
    pub batch_poll: Duration,
    /// Most requests per provider batch (capped at [`crate::batch::MAX_BATCH_REQUESTS`]).
    pub batch_size: usize,
    /// With `batch`: submit the batches, record their ids in the journal and return without
    /// waiting; a later run (`resume`) polls them by id and finishes the job.
    pub batch_no_wait: bool,
}

impl Default for TeachOptions {
    fn default() -> Self {
        TeachOptions {
            input: None,
            out: None,
            base_url: None,
            limit: None,
            concurrency: 16,
            dry_run: false,
            max_spend: None,
            batch: false,
            resume: false,
            restart: false,
            rpm: None,
            tpm: None,
            prices: None,
            cache_path: PathBuf::from(".distill/cache.db"),
            ledger_path: PathBuf::from(".distill/ledger.db"),
            progress: false,
            api_key: None,
            max_retries: None,
            backoff_base: None,
            batch_poll: Duration::from_secs(30),
            batch_size: crate::batch::MAX_BATCH_REQUESTS,
            batch_no_wait: false,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TeachSummary {
    pub out: PathBuf,
    pub total: u64,
    /// Records found in the journal from an earlier, interrupted run.
    pub resumed: u64,
    pub ok: u64,
    pub invalid: u64,
    pub failed: u64,
    /// Records answered entirely from the response cache (no money spent).
    pub cached: u64,
    pub paid_calls: u64,
    pub usage: Usage,
    pub cost_usd: f64,
    /// Spent by earlier, interrupted runs of the same job (from the journal).
    pub earlier_cost_usd: f64,
    /// Cost of 1,000 inputs at this run's average paid cost per input.
    pub cost_per_1000: Option<f64>,
    /// True when the output file was written (every input has a record).
    pub complete: bool,
    pub stopped_by_budget: bool,
    pub elapsed: Duration,
    /// Set for `--dry-run`.
    pub estimate: Option<crate::dry_run::Estimate>,
    /// Provider batches this run submitted or collected (`--batch`).
    pub batch_ids: Vec<String>,
    /// `--batch --no-wait`: batches were submitted and are still running.
    pub awaiting_batches: bool,
}

impl std::fmt::Display for TeachSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(e) = &self.estimate {
            return write!(f, "{e}");
        }
        writeln!(
            f,
            "{} inputs: {} ok, {} invalid, {} failed ({} from the cache, {} resumed from an earlier run)",
            self.total, self.ok, self.invalid, self.failed, self.cached, self.resumed
        )?;
        writeln!(
            f,
            "tokens: {} prompt ({} cached), {} completion; {} paid calls",
            self.usage.prompt_tokens,
            self.usage.cached_tokens,
            self.usage.completion_tokens,
            self.paid_calls
        )?;
        write!(f, "spent: ${:.4}", self.cost_usd)?;
        if self.earlier_cost_usd > 0.0 {
            write!(
                f,
                " (the job: ${:.4} with its earlier runs)",
                self.cost_usd + self.earlier_cost_usd
            )?;
        }
        if let Some(c) = self.cost_per_1000 {
            write!(f, " (projected ${c:.4} per 1,000 requests)")?;
        }
        write!(f, " in {:.1}s", self.elapsed.as_secs_f64())?;
        if !self.batch_ids.is_empty() {
            write!(f, "\nbatches: {}", self.batch_ids.join(", "))?;
        }
        if self.complete {
            write!(f, "\nwrote {}", self.out.display())?;
        } else if self.awaiting_batches {
            write!(
                f,
                "\nsubmitted; the batch ids are recorded in the journal. Run the same command with --resume to collect the results."
            )?;
        } else if self.stopped_by_budget {
            write!(
                f,
                "\nstopped at the --max-spend budget, which caps the whole job (earlier runs included); {} of {} inputs done. Run again with a larger --max-spend to continue.",
                self.resumed + self.ok + self.invalid,
                self.total
            )?;
        }
        Ok(())
    }
}

/// The default output path: `teacher.jsonl` next to the spec.
pub fn default_out(spec: &TaskSpec) -> PathBuf {
    spec.path
        .parent()
        .unwrap_or(Path::new(""))
        .join("teacher.jsonl")
}

pub fn journal_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

pub(crate) fn input_path(spec: &TaskSpec, opts: &TeachOptions) -> Result<PathBuf> {
    opts.input
        .clone()
        .or_else(|| spec.input.path.clone())
        .ok_or_else(|| {
            TeachError::Core(distill_core::CoreError::spec(
                &spec.path,
                "input.path",
                "no input file: set input.path in the spec or pass --input",
            ))
        })
}

/// The spec as this run uses it: an explicit `--input` is read in the format its extension
/// names (the spec's `format` describes the spec's own input file), and `--rpm`/`--tpm`
/// override the account limits.
pub(crate) fn effective_spec(spec: &TaskSpec, opts: &TeachOptions) -> TaskSpec {
    let mut spec = spec.clone();
    if let Some(input) = &opts.input {
        if let Some(f) = distill_core::spec::InputFormat::from_path(input) {
            spec.input.format = Some(f);
        }
    }
    if let Some(rpm) = opts.rpm {
        spec.teacher.rpm = rpm;
    }
    if let Some(tpm) = opts.tpm {
        spec.teacher.tpm = tpm;
    }
    spec
}

/// Refuses an output path that cannot be written, before anything is paid for.
fn check_out(out: &Path) -> Result<()> {
    if out.is_dir() {
        return Err(TeachError::file(
            out,
            "--out is a directory; name the JSONL file to write (e.g. DIR/teacher.jsonl)",
        ));
    }
    if out.as_os_str().is_empty() || out.file_name().is_none() {
        return Err(TeachError::file(out, "--out must name a file"));
    }
    Ok(())
}

/// Reads the whole input once, checking every row (and its gold), and counts it (capped
/// at `limit`): bad input fails before anything is paid for.
pub(crate) fn validate_inputs(spec: &TaskSpec, path: &Path, limit: Option<u64>) -> Result<u64> {
    let mut n = 0;
    for item in read_inputs(path, spec.input.format, &Columns::from(&spec.input))? {
        let item = item?;
        if let (Some(gold), Some(column)) = (&item.gold, &spec.input.gold_column) {
            spec.check_gold(gold, &item.text)
                .map_err(|e| distill_core::CoreError::data(path, item.line, column, e))?;
        }
        n += 1;
        if limit.is_some_and(|l| n >= l) {
            break;
        }
    }
    if n == 0 {
        return Err(TeachError::file(path, "no input rows"));
    }
    Ok(n)
}

pub(crate) fn client_options(opts: &TeachOptions) -> ClientOptions {
    ClientOptions {
        base_url: opts.base_url.clone(),
        api_key: opts.api_key.clone(),
        cache_path: Some(opts.cache_path.clone()),
        ledger_path: Some(opts.ledger_path.clone()),
        prices: opts.prices.clone(),
        max_retries: opts.max_retries,
        backoff_base: opts.backoff_base,
        ..Default::default()
    }
}

struct Done<R> {
    ordinal: u64,
    record: R,
    pending: Pending,
    /// The concurrency slot, released only once the record is in the journal, so calls paid
    /// but not yet journalled never exceed the concurrency (what a kill can make us pay again).
    permit: tokio::sync::OwnedSemaphorePermit,
}

#[derive(Default)]
struct Budget {
    spent: f64,
    reserved: f64,
}

/// Labels a task's inputs. See the module docs; callable in-process (progress off).
pub async fn run_teach(spec: &TaskSpec, opts: TeachOptions) -> Result<TeachSummary> {
    let started = Instant::now();
    let spec = &effective_spec(spec, &opts);
    let input = input_path(spec, &opts)?;
    let out = opts.out.clone().unwrap_or_else(|| default_out(spec));
    check_out(&out)?;
    if opts.dry_run {
        // Nothing is sent, so no key is needed: the client gets a placeholder.
        let mut dry = client_options(&opts);
        dry.api_key = Some(opts.api_key.clone().unwrap_or_else(|| "dry-run".into()));
        dry.ledger_path = None;
        let client = TeacherClient::new(spec, dry)?;
        let total = validate_inputs(spec, &input, opts.limit)?;
        let estimate =
            crate::dry_run::estimate(spec, &client, &input, total, opts.concurrency, opts.batch)?;
        return Ok(TeachSummary {
            out,
            total,
            estimate: Some(estimate),
            elapsed: started.elapsed(),
            ..Default::default()
        });
    }
    // The key is checked before anything else touches the network.
    let client = Arc::new(TeacherClient::new(spec, client_options(&opts))?);
    let total = validate_inputs(spec, &input, opts.limit)?;
    if opts.max_spend.is_some() && client.price().is_none() {
        return Err(TeachError::Invalid(format!(
            "--max-spend needs a price for model `{}`; add it with --prices FILE",
            client.model()
        )));
    }
    let _lock = crate::lock::JobLock::acquire(&out)?;
    let header = JournalHeader {
        distill_journal: crate::journal::JOURNAL_VERSION,
        task: spec.name.clone(),
        input_sha256: distill_core::fsutil::sha256_file(&input)?,
        provider: client.provider().as_str().to_string(),
        model: client.model().to_string(),
        request: client.request_shape(),
    };
    let jpath = journal_path(&out);
    let had_journal = jpath.exists();
    if opts.resume && !had_journal {
        return Err(TeachError::file(
            &jpath,
            "--resume: there is no interrupted run (or submitted batch) to resume: no journal",
        ));
    }
    if opts.resume && opts.restart {
        return Err(TeachError::Invalid(
            "--resume and --restart contradict each other: choose one".into(),
        ));
    }
    if opts.batch {
        return crate::batch::run_batch(
            spec, &opts, client, &input, &out, &jpath, header, total, started,
        )
        .await;
    }
    let (journal, recovered) = Journal::open(&jpath, &header, opts.restart)?;
    // Inputs in a submitted batch are already paid for: labelling them in real time would
    // pay twice.
    let owing: Vec<&str> = recovered
        .batches
        .iter()
        .filter(|b| {
            b.ordinals()
                .any(|i| i < total && !recovered.done.contains(i))
        })
        .map(|b| b.id.as_str())
        .collect();
    if !owing.is_empty() {
        return Err(TeachError::file(
            &jpath,
            format!(
                "this job has provider batches still running or uncollected ({}); run it with --batch to \
                 collect them (delete the journal to label in real time instead, paying again)",
                owing.join(", ")
            ),
        ));
    }
    let labeler = Arc::new(ClassifyLabeler {
        estimator: crate::dry_run::Estimator::new(spec, &client),
        client,
    });
    run_items(
        labeler, spec, &opts, &input, &out, &jpath, journal, recovered, total, started,
    )
    .await
}

/// What labelling one input produced, whatever the task kind.
pub(crate) struct Labelled<R> {
    pub record: R,
    pub pending: Pending,
    pub status: RecordStatus,
    pub usage: Usage,
    pub cost_usd: f64,
    /// No call reached a provider.
    pub cached: bool,
    pub paid_calls: u32,
}

/// Labels one input for a job: the one thing that differs between task kinds; the journal,
/// lock, budget, concurrency, ledger and progress around it are [`run_items`]'s.
pub(crate) trait Labeler: Send + Sync + 'static {
    type Record: serde::Serialize + Send + 'static;
    fn label(
        &self,
        item: distill_core::input::InputItem,
        ctx: CallContext,
    ) -> impl std::future::Future<Output = Result<Labelled<Self::Record>>> + Send;
    /// An upper bound on what labelling `text` can cost (for `--max-spend` reservations).
    fn worst_case_cost(&self, text: &str) -> f64;
    /// The client whose ledger and cache the job writes.
    fn client(&self) -> &TeacherClient;
}

/// Classification: one teacher call (and a repair if needed) per input.
struct ClassifyLabeler {
    client: Arc<TeacherClient>,
    estimator: crate::dry_run::Estimator,
}

impl Labeler for ClassifyLabeler {
    type Record = TeacherRecord;

    async fn label(
        &self,
        item: distill_core::input::InputItem,
        ctx: CallContext,
    ) -> Result<Labelled<TeacherRecord>> {
        let (outcome, pending) = self.client.label_deferred(&item, &ctx).await?;
        let record = outcome.to_record(
            &item,
            self.client.provider().as_str(),
            self.client.model(),
            false,
        );
        Ok(Labelled {
            record,
            pending,
            status: outcome.status,
            usage: outcome.usage,
            cost_usd: outcome.cost_usd,
            cached: outcome.cached,
            paid_calls: outcome.paid_calls,
        })
    }

    fn worst_case_cost(&self, text: &str) -> f64 {
        // A repair doubles it.
        2.0 * self.estimator.worst_case_cost(&self.client, text)
    }

    fn client(&self) -> &TeacherClient {
        &self.client
    }
}

/// The real-time job around a [`Labeler`]: inputs in order, bounded concurrency, the budget,
/// group-committed journal, ledger and cache writes, progress; then the output file.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_items<L: Labeler>(
    labeler: Arc<L>,
    spec: &TaskSpec,
    opts: &TeachOptions,
    input: &Path,
    out: &Path,
    jpath: &Path,
    journal: Journal,
    recovered: crate::journal::Recovered,
    total: u64,
    started: Instant,
) -> Result<TeachSummary> {
    let (input, out, jpath) = (input.to_path_buf(), out.to_path_buf(), jpath.to_path_buf());
    reconcile(labeler.client(), &recovered.last_batch)?;
    let done = recovered.done;
    let resumed = (0..total).filter(|i| done.contains(*i)).count() as u64;
    let spent_before = recovered.spent_usd;

    let bar = progress_bar(opts.progress, total, resumed);
    let summary = Arc::new(Mutex::new(TeachSummary {
        out: out.clone(),
        total,
        resumed,
        earlier_cost_usd: spent_before,
        ..Default::default()
    }));
    let (tx, rx) = tokio::sync::mpsc::channel::<Done<L::Record>>(4096);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let labeler = labeler.clone();
        let stop = stop.clone();
        std::thread::spawn(move || writer_loop(rx, journal, labeler.client(), &stop))
    };
    // --max-spend caps the job: what its earlier runs spent (journalled) counts.
    let budget = Arc::new(Mutex::new(Budget {
        spent: spent_before,
        reserved: 0.0,
    }));
    let fatal: Arc<Mutex<Option<TeachError>>> = Arc::new(Mutex::new(None));
    let concurrency = opts.concurrency.max(1);
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let ctx = CallContext::teach();
    let mut stopped_by_budget = false;
    // A retry the budget refused: the job stops as over budget (its journal kept).
    let refused = Arc::new(AtomicBool::new(false));
    let reader = read_inputs(&input, spec.input.format, &Columns::from(&spec.input))?;
    for (ordinal, item) in (0u64..).zip(reader) {
        if ordinal >= total || stop.load(Ordering::Relaxed) || refused.load(Ordering::Relaxed) {
            break;
        }
        let item = item?;
        if done.contains(ordinal) {
            continue;
        }
        let closed = |_| TeachError::Invalid("scheduler closed".into());
        let mut permit = sem.clone().acquire_owned().await.map_err(closed)?;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        // Reserve the worst case (a repair doubles it) so in-flight calls cannot overshoot.
        let reserve = match opts.max_spend {
            Some(max) => {
                let worst = labeler.worst_case_cost(&item.text);
                let over = |budget: &Mutex<Budget>| {
                    let b = budget.lock().unwrap_or_else(|p| p.into_inner());
                    b.spent + b.reserved + worst > max
                };
                if over(&budget) {
                    // The calls in flight hold their worst case, and most cost far less: let them
                    // settle (every slot back) and decide on what they actually cost, so the job
                    // does not stop with budget left.
                    drop(permit);
                    drop(
                        sem.clone()
                            .acquire_many_owned(concurrency as u32)
                            .await
                            .map_err(closed)?,
                    );
                    permit = sem.clone().acquire_owned().await.map_err(closed)?;
                    if over(&budget) {
                        stopped_by_budget = true;
                        break;
                    }
                }
                budget.lock().unwrap_or_else(|p| p.into_inner()).reserved += worst;
                worst
            }
            None => 0.0,
        };
        let (labeler, tx, budget, fatal, stop, summary, bar, mut ctx) = (
            labeler.clone(),
            tx.clone(),
            budget.clone(),
            fatal.clone(),
            stop.clone(),
            summary.clone(),
            bar.clone(),
            ctx.clone(),
        );
        // What this input's retries after unanswered attempts have added to its reservation.
        let extra = Arc::new(Mutex::new(0.0f64));
        if let Some(max) = opts.max_spend {
            let (budget, extra, refused) = (budget.clone(), extra.clone(), refused.clone());
            ctx.guard = Some(crate::client::SpendGuard(Arc::new(move |usd| {
                let mut b = budget.lock().unwrap_or_else(|p| p.into_inner());
                if b.spent + b.reserved + usd > max {
                    refused.store(true, Ordering::Relaxed);
                    return false;
                }
                b.reserved += usd;
                *extra.lock().unwrap_or_else(|p| p.into_inner()) += usd;
                true
            })));
        }
        tokio::spawn(async move {
            let res = labeler.label(item, ctx).await;
            // Its reservation, and what its retries added to it: released either way.
            let held = reserve + *extra.lock().unwrap_or_else(|p| p.into_inner());
            match res {
                Ok(outcome) => {
                    let spent = {
                        let mut b = budget.lock().unwrap_or_else(|p| p.into_inner());
                        b.reserved -= held;
                        b.spent += outcome.cost_usd;
                        b.spent
                    };
                    {
                        let mut s = summary.lock().unwrap_or_else(|p| p.into_inner());
                        match outcome.status {
                            RecordStatus::Ok => s.ok += 1,
                            RecordStatus::Invalid => s.invalid += 1,
                            RecordStatus::Failed => s.failed += 1,
                        }
                        s.cached += u64::from(outcome.cached);
                        s.paid_calls += u64::from(outcome.paid_calls);
                        s.usage.add(&outcome.usage);
                        s.cost_usd += outcome.cost_usd;
                    }
                    bar.inc(1);
                    bar.set_message(format!("${spent:.4}"));
                    let _ = tx
                        .send(Done {
                            ordinal,
                            record: outcome.record,
                            pending: outcome.pending,
                            permit,
                        })
                        .await;
                }
                Err(e) => {
                    budget.lock().unwrap_or_else(|p| p.into_inner()).reserved -= held;
                    stop.store(true, Ordering::Relaxed);
                    fatal
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert(e);
                    drop(permit);
                }
            }
        });
    }
    // Wait for every call in flight, then for the writer to drain.
    let _all = sem
        .acquire_many(concurrency as u32)
        .await
        .map_err(|_| TeachError::Invalid("scheduler closed".into()))?;
    drop(tx);
    let written = writer
        .join()
        .map_err(|_| TeachError::Invalid("the journal writer panicked".into()))?;
    bar.finish_and_clear();
    if let Some(e) = fatal.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    written?;
    let stopped_by_budget = stopped_by_budget || refused.load(Ordering::Relaxed);
    let mut summary = summary.lock().unwrap_or_else(|p| p.into_inner()).clone();
    summary.stopped_by_budget = stopped_by_budget;
    summary.elapsed = started.elapsed();
    let paid_records = summary.ok + summary.invalid + summary.failed - summary.cached;
    if paid_records > 0 {
        summary.cost_per_1000 = Some(summary.cost_usd / paid_records as f64 * 1000.0);
    }
    if !stopped_by_budget {
        finish(&jpath, &out, total)?;
        summary.complete = true;
    }
    Ok(summary)
}

/// Orders the journal into `out` atomically, then removes the journal.
pub(crate) fn finish(jpath: &Path, out: &Path, total: u64) -> Result<()> {
    use distill_core::CoreError;
    // A failed write (a full disk) drops the temporary file, so no partial output is left,
    // and keeps the journal, so a rerun only has to write the file.
    let failed = |e: CoreError| {
        match e {
        CoreError::Io { path, source } if path == out => TeachError::file(
            out,
            format!(
                "cannot write the output: {source}. No partial file was left; every record is kept in {}: \
                 free some space (or choose another --out) and run the same command again",
                jpath.display()
            ),
        ),
        other => TeachError::Core(other),
    }
    };
    let mut file = distill_core::fsutil::AtomicFile::create(out).map_err(failed)?;
    assemble(jpath, total, &mut file, out).map_err(|e| match e {
        TeachError::Core(c) => failed(c),
        other => other,
    })?;
    file.commit().map_err(failed)?;
    std::fs::remove_file(jpath).map_err(|e| TeachError::io(jpath, e))?;
    Ok(())
}

pub(crate) fn progress_bar(show: bool, total: u64, done: u64) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {per_sec} ETA {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(done);
    bar.set_message("$0.0000");
    bar
}

/// Re-applies the last journal batch's ledger rows and cache entries if a kill landed
/// between the journal fsync and the SQLite commit (rows already there are skipped).
pub(crate) fn reconcile(client: &TeacherClient, last_batch: &[Pending]) -> Result<()> {
    if last_batch.is_empty() {
        return Ok(());
    }
    if let Some(ledger) = client.ledger() {
        let conn = rusqlite::Connection::open(ledger.path()).map_err(|e| {
            TeachError::Core(distill_core::CoreError::Sqlite {
                path: ledger.path().to_path_buf(),
                source: e,
            })
        })?;
        let mut missing = Vec::new();
        for row in last_batch.iter().flat_map(|p| &p.ledger) {
            let found: Option<i64> = conn
                .query_row(
                    "SELECT 1 FROM ledger WHERE request_hash = ?1 AND ts = ?2 LIMIT 1",
                    [&row.request_hash, &row.ts],
                    |r| r.get(0),
                )
                .optional()
                .map_err(|e| {
                    TeachError::Core(distill_core::CoreError::Sqlite {
                        path: ledger.path().to_path_buf(),
                        source: e,
                    })
                })?;
            if found.is_none() {
                missing.push(row.clone());
            }
        }
        if !missing.is_empty() {
            tracing::info!(
                "re-recording {} ledger rows cut off by a crash",
                missing.len()
            );
            ledger.append_many(&missing)?;
        }
    }
    if let Some(cache) = client.cache() {
        let entries: Vec<_> = last_batch.iter().flat_map(|p| p.cache.clone()).collect();
        cache.put_many(&entries)?;
    }
    Ok(())
}

/// Group commit: take whatever finished records are queued, append them to the journal
/// with one fsync, then write their ledger rows and cache entries in one transaction each.
fn writer_loop<R: serde::Serialize>(
    mut rx: tokio::sync::mpsc::Receiver<Done<R>>,
    mut journal: Journal,
    client: &TeacherClient,
    stop: &AtomicBool,
) -> Result<()> {
    let mut buf = Vec::with_capacity(1 << 20);
    let mut batch = Vec::with_capacity(1024);
    let result = (|| {
        while let Some(first) = rx.blocking_recv() {
            batch.clear();
            batch.push(first);
            while batch.len() < 8192 {
                match rx.try_recv() {
                    Ok(d) => batch.push(d),
                    Err(_) => break,
                }
            }
            buf.clear();
            let b = journal.next_batch;
            for d in &batch {
                encode_line(&mut buf, d.ordinal, b, &d.record, &d.pending);
            }
            journal.append(&buf)?;
            let mut merged = Pending::default();
            let mut permits = Vec::with_capacity(batch.len());
            for d in batch.drain(..) {
                merged.ledger.extend(d.pending.ledger);
                merged.cache.extend(d.pending.cache);
                permits.push(d.permit);
            }
            client.persist(&merged)?;
            drop(permits);
        }
        Ok(())
    })();
    if result.is_err() {
        stop.store(true, Ordering::Relaxed);
        // Release the concurrency slots of the records that could not be written, and keep
        // draining so senders never block on a dead writer.
        batch.clear();
        while rx.blocking_recv().is_some() {}
    }
    result
}
