//! `distill`: cut LLM API bills by distilling premium-model calls into small local models.
//!
//! A thin shell over the stage crates: each subcommand lives in `cmd/<name>.rs`, parses its
//! flags and calls into a library. Exit codes: 0 ok, 1 failure, 2 usage error.

mod cmd;

/// mimalloc: faster than glibc malloc for tensor-sized buffers, and told to keep freed memory
/// while training (see `distill_train::alloc`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "distill",
    version,
    about = "Label once with a premium LLM, train a small local model, prove it is good enough and cheaper, serve it.",
    long_about = None,
    propagate_version = true
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options every subcommand shares.
#[derive(clap::Args, Debug, Clone)]
pub struct Global {
    /// Directory for distill's state: the response cache and the spend ledger (SQLite).
    #[arg(
        long,
        global = true,
        env = "DISTILL_STATE_DIR",
        default_value = ".distill"
    )]
    pub state_dir: PathBuf,
    /// Hide progress bars (they are hidden anyway when stderr is not a terminal).
    #[arg(long, short, global = true)]
    pub quiet: bool,
}

impl Global {
    pub fn ledger_path(&self) -> PathBuf {
        self.state_dir.join("ledger.db")
    }
    pub fn cache_path(&self) -> PathBuf {
        self.state_dir.join("cache.db")
    }
    /// The encoder-head embedding cache.
    pub fn embeddings_path(&self) -> PathBuf {
        self.state_dir.join("embeddings")
    }

    /// Default training options for a student another command trains on the side (the curve's
    /// points, the active scorer): the device and threads asked for, the base encoder, the
    /// embedding cache.
    pub fn side_train_options(
        &self,
        out: PathBuf,
        device: &str,
        threads: Option<usize>,
        base: Option<String>,
        offline: bool,
    ) -> anyhow::Result<distill_train::TrainOptions> {
        let mut t = distill_train::TrainOptions::new(out);
        t.device = distill_train::select_device(device)?;
        t.threads = distill_train::device::set_threads(threads);
        t.base = base;
        t.offline = offline;
        t.cache_dir = Some(self.embeddings_path());
        Ok(t)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Label a task's inputs with the premium teacher model (cached, resumable, budget-capped).
    Teach(cmd::teach::Args),
    /// Summarise the spend ledger by task, model and day.
    Spend(cmd::spend::Args),
    /// Export a teacher dataset in another format (OpenAI fine-tuning chat JSONL).
    Export(cmd::export::Args),
    /// Run the offline simulated teacher: an OpenAI-compatible server answering from gold labels.
    SimTeacher(cmd::sim_teacher::Args),
    /// Train a student model from a teacher dataset (or any labelled CSV/JSONL).
    Train(cmd::train::Args),
    /// Predict labels for a file of inputs with a trained student.
    Predict(cmd::predict::Args),
    /// Make an int8 copy of an encoder student: faster on the CPU, same directory layout.
    Quantize(cmd::quantize::Args),
    /// Average several trained students of one task into one (often surer and more accurate).
    Ensemble(cmd::ensemble::Args),
    /// Evaluate students against the teacher: quality, cost, break-even, cascade threshold, report.
    Eval(cmd::eval::Args),
    /// Serve students behind an OpenAI-compatible API, escalating unsure inputs to the teacher.
    Serve(cmd::serve::Args),
    /// One OpenAI-compatible endpoint for all of an app's LLM traffic: routes, caches, caps and
    /// meters it (gateway.toml), and serves students beside it.
    Gateway(cmd::gateway::Args),
    /// Summarise shadow-traffic agreement between served students and the teacher.
    Drift(cmd::drift::Args),
    /// Run the whole loop offline on Banking77: sim-teacher → teach → train → eval.
    Quickstart(cmd::quickstart::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DISTILL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: a log file gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let g = cli.global;
    let result = match cli.command {
        Command::Teach(a) => cmd::teach::run(a, &g),
        Command::Spend(a) => cmd::spend::run(a, &g),
        Command::Export(a) => cmd::export::run(a, &g),
        Command::SimTeacher(a) => cmd::sim_teacher::run(a, &g),
        Command::Train(a) => cmd::train::run(a, &g),
        Command::Predict(a) => cmd::predict::run(a, &g),
        Command::Quantize(a) => cmd::quantize::run(a, &g),
        Command::Ensemble(a) => cmd::ensemble::run(a, &g),
        Command::Eval(a) => cmd::eval::run(a, &g),
        Command::Serve(a) => cmd::serve::run(a, &g),
        Command::Gateway(a) => cmd::gateway::run(a, &g),
        Command::Drift(a) => cmd::drift::run(a, &g),
        Command::Quickstart(a) => cmd::quickstart::run(a, &g),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
