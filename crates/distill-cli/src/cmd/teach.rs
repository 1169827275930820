//! `distill teach`: label a task's inputs with the premium teacher model.

use crate::Global;
use anyhow::Context;
use distill_core::prices::PriceTable;
use distill_core::TaskSpec;
use distill_teach::{run_teach, TeachOptions};
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Output: one JSON record per input (id, text, status ok|invalid|failed, output.label, gold, raw, \
usage, cost_usd, latency_ms, cached, batch, request_hash), ordered like the input. While running, finished records \
are journalled to <out>.partial; kill the job at any moment and run the same command again to continue without \
paying twice. The journal records everything that shapes the requests (provider, endpoint, model, prompts, labels, \
schema, parameters): after a spec change the run is refused, naming what changed, until --restart. One run per \
output at a time (<out>.lock names the PID holding it). Replies are cached in <state-dir>/cache.db and every paid \
call is recorded in <state-dir>/ledger.db before it is sent (as in_flight until its reply is recorded)."
)]
pub struct Args {
    /// The task spec (TOML) describing inputs, labels, teacher and prompt.
    #[arg(long, value_name = "T.toml")]
    pub task: PathBuf,
    /// Input CSV/JSONL to label [default: the spec's input.path].
    #[arg(long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Output JSONL [default: teacher.jsonl next to the spec].
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Override the teacher's base URL, e.g. the sim-teacher at http://127.0.0.1:8089/v1.
    /// A loopback URL needs no API key.
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,
    /// Label only the first N inputs.
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// Requests in flight at once (the spec's rpm/tpm limits still apply).
    #[arg(long, value_name = "C", default_value_t = 16)]
    pub concurrency: usize,
    /// Count tokens and print the expected cost and time; send nothing (no API key needed).
    #[arg(long)]
    pub dry_run: bool,
    /// Hard budget in USD for the job: stop scheduling requests when the next one could cross
    /// it. What earlier interrupted runs of the same job spent (recorded in the journal) counts,
    /// so re-running a stopped job does not spend the cap again.
    #[arg(long, value_name = "USD")]
    pub max_spend: Option<f64>,
    /// Use the provider's Batch API (OpenAI /v1/batches or Anthropic Message Batches) at batch
    /// prices (the table's, else half), results within 24 h. Cached inputs are not submitted;
    /// at most --batch-size requests per batch. Batch ids are journalled as soon as they are
    /// submitted, so a rerun picks the batches up instead of resubmitting. Items a batch did
    /// not answer (expired, cancelled, 429/5xx) are retried in real time; items it rejected
    /// (4xx) are recorded as failed. Waits for the batches unless --no-wait. Route tasks run
    /// two rounds: every tier's answers, then the judge's gradings of them (needs the cache).
    #[arg(long)]
    pub batch: bool,
    /// With --batch: submit, record the batch ids and exit; collect later with --batch --resume.
    #[arg(long, requires = "batch")]
    pub no_wait: bool,
    /// With --batch: most requests per batch (1..=50000).
    #[arg(long, value_name = "N", default_value_t = 50_000, requires = "batch")]
    pub batch_size: usize,
    /// Continue an interrupted run (a <out>.partial journal or a submitted batch); fails if
    /// there is nothing to resume. Without it a leftover journal is still continued.
    #[arg(long)]
    pub resume: bool,
    /// Discard the journal of an interrupted run (e.g. after changing the prompt) and label
    /// every input again; answers to requests that did not change come from the cache, free.
    #[arg(long, conflicts_with = "resume")]
    pub restart: bool,
    /// Override the spec's requests-per-minute limit (0 = none), e.g. for the local sim-teacher.
    #[arg(long, value_name = "N")]
    pub rpm: Option<u32>,
    /// Override the spec's tokens-per-minute limit (0 = none). Requests count as their prompt
    /// tokens (the teacher's tokenizer) plus max_tokens, as providers count them.
    #[arg(long, value_name = "N")]
    pub tpm: Option<u32>,
    /// A price table (JSON, same shape as the built-in one) whose models add to or replace
    /// the built-in prices.
    #[arg(long, value_name = "FILE")]
    pub prices: Option<PathBuf>,
    /// Longest wait between Batch API status polls, in seconds (polling starts faster).
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    pub poll_secs: f64,
    /// Route tasks: build the route dataset from recorded outcomes instead of asking the tiers
    /// (CSV: a prompt column and a True/False column per tier, named like the tier's model;
    /// RouteLLM's released files). No call is made. Repeatable.
    #[arg(long, value_name = "FILE", num_args = 1..)]
    pub import_outcomes: Vec<PathBuf>,
    /// With --import-outcomes: JSONL of prompts to leave out (RouteLLM's
    /// contaminated_prompts.jsonl, field eval_prompt).
    #[arg(long, value_name = "FILE", requires = "import_outcomes")]
    pub exclude: Vec<PathBuf>,
    /// With --import-outcomes: completion tokens assumed for an outcome without a recorded
    /// answer (for the cost estimate).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 16,
        requires = "import_outcomes"
    )]
    pub completion_tokens: u64,
    /// Route datasets: also write <out>.train.jsonl and <out>.test.jsonl, this fraction of each
    /// category in train (seeded by --split-seed).
    #[arg(long, value_name = "FRACTION")]
    pub split: Option<f64>,
    /// Route datasets: also write K folds, <out>.foldN.train.jsonl / .test.jsonl (stratified by
    /// category), for cross-validation.
    #[arg(long, value_name = "K", conflicts_with = "split")]
    pub folds: Option<usize>,
    #[arg(long, value_name = "SEED", default_value_t = 0)]
    pub split_seed: u64,
    /// Label less: which inputs of --input the teacher labels. `all` (every input, in order);
    /// `random`, `uncertainty` or `diverse` label in rounds (a random seed round, then the
    /// inputs a student trained on the labels so far is least sure about; `diverse` spreads
    /// them over the encoder's embedding space) until --limit, --max-spend or --stop-gain.
    /// Each selection is journalled in <out>.rounds/ before it is labelled; the output lists
    /// the labels in selection order (`distill eval --curve --curve-order recorded`).
    #[arg(long, value_name = "STRATEGY", default_value = "all")]
    pub strategy: distill_active::Strategy,
    /// How `uncertainty` and `diverse` measure it: margin (top two probabilities),
    /// least-confidence or entropy. A multilabel student is measured over its per-label
    /// decisions: the label nearest its threshold, the least sure decision, the sum of the
    /// labels' binary entropies.
    #[arg(long, value_name = "MEASURE", default_value = "margin")]
    pub uncertainty: distill_active::Measure,
    /// Inputs labelled per round after the first.
    #[arg(long, value_name = "N", default_value_t = 500)]
    pub round_size: usize,
    /// Inputs in the first, random round [default: --round-size].
    #[arg(long, value_name = "N")]
    pub seed_size: Option<usize>,
    /// The student that scores the pool between rounds: linear, or encoder-head (the pool is
    /// embedded once per run, through the embedding cache, so a round takes seconds). The
    /// scorer best matches the student the labels will train.
    #[arg(long, value_name = "KIND", default_value = "linear")]
    pub select_student: distill_train::StudentKind,
    /// Stop when that student's dev accuracy gained less than this over two rounds.
    #[arg(long, value_name = "GAIN")]
    pub stop_gain: Option<f64>,
    /// Seed for the random rounds and the scoring student.
    #[arg(long, value_name = "SEED", default_value_t = 0)]
    pub select_seed: u64,
    /// Base encoder for an encoder-head scorer and for `diverse` (a directory or a Hub repo id).
    #[arg(long)]
    pub base: Option<String>,
    /// Never download the base encoder.
    #[arg(long)]
    pub offline: bool,
    /// Device for the scoring student: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// CPU threads for the scoring student (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// `--strategy random|uncertainty|diverse`: label the input in rounds.
fn active(
    args: &Args,
    spec: &TaskSpec,
    teach: TeachOptions,
    rt: &tokio::runtime::Runtime,
    g: &Global,
) -> anyhow::Result<()> {
    if spec.route.is_some() {
        anyhow::bail!(
            "--strategy chooses inputs of a classification task; route tasks label every prompt"
        );
    }
    crate::cmd::refuse_extract(spec, "--strategy (which scores inputs with a student)")?;
    if args.dry_run || args.resume {
        anyhow::bail!(
            "--strategy runs in rounds whose inputs depend on the labels so far: it has no \
             --dry-run, and a plain rerun of the same command resumes it"
        );
    }
    let pool = args
        .input
        .clone()
        .or_else(|| spec.input.path.clone())
        .context("no input: pass --input FILE (the pool to choose from)")?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| distill_teach::default_out(spec));
    let t = g.side_train_options(
        distill_active::rounds_dir(&out).join("student"),
        &args.device,
        args.threads,
        args.base.clone(),
        args.offline,
    )?;
    let opts = distill_active::ActiveOptions {
        pool,
        out,
        strategy: args.strategy,
        measure: args.uncertainty,
        limit: args.limit.map(|n| n as usize),
        max_spend: args.max_spend,
        round_size: args.round_size,
        seed_size: args.seed_size,
        seed: args.select_seed,
        student: args.select_student,
        train: t,
        stop_gain: args.stop_gain,
        restart: args.restart,
        progress: !g.quiet,
    };
    let summary = distill_active::run_active(spec, &opts, &teach, rt)?;
    println!("{summary}");
    Ok(())
}

/// `--import-outcomes`: a route dataset from recorded outcomes.
fn import(args: &Args, spec: &TaskSpec, prices: Option<PriceTable>) -> anyhow::Result<()> {
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| distill_teach::default_out(spec));
    let report = distill_teach::route::import_outcomes(
        spec,
        &args.import_outcomes,
        &distill_teach::route::ImportOptions {
            exclude: args.exclude.clone(),
            completion_tokens: args.completion_tokens,
            prices: prices.unwrap_or_else(PriceTable::builtin),
        },
    )?;
    for (tier, model, known) in &report.priced {
        if !known {
            eprintln!(
                "warning: tier `{tier}`: `{model}` is not in the price table; its cost is $0 \
                 (set price_as, or pass --prices FILE)"
            );
        }
    }
    distill_teach::route::write_route_dataset(&out, &report.records)?;
    println!(
        "imported {} prompts from {} files ({} excluded) -> {}",
        report.records.len(),
        report.files,
        report.excluded,
        out.display()
    );
    write_splits(args, &out, &report.records)
}

/// `--split` / `--folds`: train and test files beside `out`.
fn write_splits(
    args: &Args,
    out: &std::path::Path,
    records: &[distill_core::route::RouteRecord],
) -> anyhow::Result<()> {
    let stem = out.with_extension("");
    let write = |suffix: &str, idx: &[usize]| -> anyhow::Result<PathBuf> {
        let p = PathBuf::from(format!("{}.{suffix}.jsonl", stem.display()));
        let part: Vec<_> = idx.iter().map(|&i| records[i].clone()).collect();
        distill_teach::route::write_route_dataset(&p, &part)?;
        Ok(p)
    };
    if let Some(f) = args.split {
        if !(f > 0.0 && f < 1.0) {
            anyhow::bail!("--split must be between 0 and 1 (exclusive), got {f}");
        }
        let (a, b) = distill_core::route::stratified_split(records, f, args.split_seed);
        let (ta, tb) = (write("train", &a)?, write("test", &b)?);
        println!(
            "split: {} train -> {}, {} test -> {}",
            a.len(),
            ta.display(),
            b.len(),
            tb.display()
        );
    }
    if let Some(k) = args.folds {
        if k < 2 {
            anyhow::bail!("--folds must be at least 2");
        }
        let folds = distill_core::route::stratified_folds(records, k, args.split_seed);
        for (n, test) in folds.iter().enumerate() {
            let train: Vec<usize> = folds
                .iter()
                .enumerate()
                .filter(|(m, _)| *m != n)
                .flat_map(|(_, f)| f.iter().copied())
                .collect();
            let mut train = train;
            train.sort_unstable();
            write(&format!("fold{}.train", n + 1), &train)?;
            write(&format!("fold{}.test", n + 1), test)?;
        }
        println!("{k} folds written beside {}", out.display());
    }
    Ok(())
}

pub fn run(args: Args, g: &Global) -> anyhow::Result<()> {
    let spec = TaskSpec::load(&args.task)?;
    if !(1..=50_000).contains(&args.batch_size) {
        anyhow::bail!("--batch-size must be between 1 and 50000");
    }
    if args.concurrency == 0 {
        anyhow::bail!("--concurrency must be at least 1");
    }
    if let Some(m) = args.max_spend {
        if !m.is_finite() || m < 0.0 {
            anyhow::bail!("--max-spend must be a non-negative number of dollars");
        }
    }
    let prices = args
        .prices
        .as_deref()
        .map(PriceTable::with_overrides)
        .transpose()?;
    if !args.import_outcomes.is_empty() {
        return import(&args, &spec, prices);
    }
    let opts = TeachOptions {
        input: args.input.clone(),
        out: args.out.clone(),
        base_url: args.base_url.clone(),
        limit: args.limit,
        concurrency: args.concurrency,
        dry_run: args.dry_run,
        max_spend: args.max_spend,
        batch: args.batch,
        resume: args.resume,
        restart: args.restart,
        rpm: args.rpm,
        tpm: args.tpm,
        prices,
        cache_path: g.cache_path(),
        ledger_path: g.ledger_path(),
        progress: !g.quiet && std::io::stderr().is_terminal(),
        batch_poll: std::time::Duration::from_secs_f64(args.poll_secs.max(0.01)),
        batch_size: args.batch_size,
        batch_no_wait: args.no_wait,
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    if args.strategy != distill_active::Strategy::All {
        return active(&args, &spec, opts, &rt, g);
    }
    let summary = if spec.route.is_some() {
        // Every prompt to every tier, every answer to the judge.
        let out = opts.out.clone();
        let s = rt.block_on(distill_teach::route::run_route_teach(&spec, opts))?;
        if s.complete && (args.split.is_some() || args.folds.is_some()) {
            let path = out.unwrap_or_else(|| distill_teach::default_out(&spec));
            let records = distill_core::route::read_route_records(&path)?;
            write_splits(&args, &path, &records)?;
        }
        s
    } else {
        rt.block_on(run_teach(&spec, opts))?
    };
    println!("{summary}");
    if summary.stopped_by_budget {
        anyhow::bail!("budget reached before every input was labelled");
    }
    Ok(())
}
