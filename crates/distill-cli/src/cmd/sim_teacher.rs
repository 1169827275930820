//! `distill sim-teacher`: run the offline simulated teacher so a labelling job can be
//! rehearsed (and tested, and benchmarked) without an API key or money.

use crate::Global;
use anyhow::Context;
use distill_core::TaskSpec;
use distill_sim::{SimConfig, SimServer};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
#[command(
    about = "Run the offline simulated teacher: an OpenAI/Anthropic-compatible server answering a task from gold labels",
    long_about = "Run the offline simulated teacher: an OpenAI- and Anthropic-compatible HTTP server that answers a \
task's prompts from a gold-labelled file, so `distill teach --base-url <printed URL>` can be rehearsed without \
spending money. It is right with probability --accuracy and otherwise picks the label most easily confused with \
the right one; usage is counted with the imitated model's tokenizer. Endpoints: /v1/chat/completions, /v1/models, \
/v1/files, /v1/batches, /v1/messages, /v1/messages/batches, and /stats (billable responses per request hash; \
POST /stats/reset clears it). Prints the base URL on the first line of stdout; stops on Ctrl-C."
)]
pub struct Args {
    /// Task spec (TOML): the label set, the user template to invert, and the gold column.
    #[arg(long, value_name = "T.toml")]
    pub task: PathBuf,
    /// Port to listen on (0 picks a free one; the URL printed tells which).
    #[arg(long, default_value_t = 8089)]
    pub port: u16,
    /// Address to bind. Loopback by default; anything else exposes the server to the network.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Probability (0..1) that an answer for a text in the gold file is the gold label.
    #[arg(long, default_value_t = 0.94)]
    pub accuracy: f64,
    /// Simulated processing time of each successful reply, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub latency_ms: u64,
    /// Fraction (0..1) of requests answered with an injected error: half 429 (with
    /// retry-after-ms / retry-after headers), half 500. Random per attempt, so retries succeed.
    #[arg(long, default_value_t = 0.05)]
    pub error_rate: f64,
    /// Fraction (0..1) of texts whose first reply is not a valid label (prose, a misspelt
    /// label, or truncated JSON), to exercise the client's repair turn.
    #[arg(long, default_value_t = 0.0)]
    pub invalid_rate: f64,
    /// Model whose tokenizer and prices the usage and /stats cost imitate.
    #[arg(long, default_value = "gpt-4o", value_name = "MODEL")]
    pub price_as: String,
    /// Gold-labelled CSV/JSONL (the task's text and gold columns). Default: the task's input file and its test file.
    #[arg(long, value_name = "FILE")]
    pub gold: Option<PathBuf>,
    /// Seed for every decision (which answers are wrong, which attempts fail).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Make each batch expire after N requests: the rest come back as `batch_expired` errors
    /// (OpenAI) or `expired` results (Anthropic).
    #[arg(long, value_name = "N")]
    pub batch_expire_after: Option<usize>,
    /// How long a batch stays in progress before its results are ready, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub batch_completion_ms: u64,
    /// Carry out the first N batch creations but answer them 502 Bad Gateway, as a proxy
    /// that gave up waiting on the provider does (the batch exists and runs, and bills).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub batch_creates_lost: usize,
    /// Delay advertised in retry-after-ms on injected 429s (retry-after rounds up to seconds).
    #[arg(long, default_value_t = 100)]
    pub retry_after_ms: u64,
    /// Accept requests without an API key header (real providers reject them with 401).
    #[arg(long)]
    pub no_auth: bool,
    /// Route tasks: answer as each tier's model with the outcomes this route dataset recorded
    /// (from `distill teach --import-outcomes`), and as the judge with the recorded verdict.
    #[arg(long, value_name = "ROUTES.jsonl")]
    pub replay: Option<PathBuf>,
}

pub fn run(args: Args, g: &Global) -> anyhow::Result<()> {
    let task = TaskSpec::load(&args.task)
        .with_context(|| format!("loading the task spec {}", args.task.display()))?;
    let mut config = SimConfig::new(task);
    config.gold = args.gold;
    config.accuracy = args.accuracy;
    config.latency_ms = args.latency_ms;
    config.error_rate = args.error_rate;
    config.invalid_rate = args.invalid_rate;
    config.price_as = args.price_as;
    config.seed = args.seed;
    config.batch_expire_after = args.batch_expire_after;
    config.batch_completion_ms = args.batch_completion_ms;
    config.batch_creates_lost = args.batch_creates_lost;
    config.retry_after_ms = args.retry_after_ms;
    config.require_api_key = !args.no_auth;
    config.replay = args.replay.clone();
    config.validate()?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let addr = SocketAddr::new(args.host, args.port);
        let server = SimServer::start(config, addr).await?;
        // The URL alone on stdout's first line, so scripts can read it; the rest on stderr.
        let mut out = std::io::stdout();
        writeln!(out, "{}", server.base_url())?;
        out.flush()?;
        if !g.quiet {
            eprintln!(
                "sim-teacher: {} gold texts; OPENAI_BASE_URL={} (any API key works). Stats: http://{}/stats. Ctrl-C stops.",
                server.gold_len(),
                server.base_url(),
                server.addr()
            );
        }
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
        let stats = server.stats();
        server.shutdown().await;
        if !g.quiet {
            eprintln!(
                "sim-teacher stopped: {} requests, {} billable ({} unique), ${:.4} at {} prices",
                stats.requests, stats.billable, stats.unique_billable, stats.cost_usd, stats.price_as
            );
        }
        Ok(())
    })
}
