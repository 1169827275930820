//! `distill ensemble`: one student from several trained ones (the mean of their calibrated
//! probabilities), loaded by `predict`, `eval` and `serve` like any model directory.

use crate::Global;
use anyhow::Context;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    distill ensemble --model models/b77-linear --model models/b77-head --out models/b77-ensemble\n  \
    distill eval --task T.toml --model models/b77-head --model models/b77-ensemble --out evals/ens\n\n\
The members must be single-label students of one task with the same labels. Each was calibrated \
on its own dev split, so the mean needs no data; the ensemble's directory holds a copy of each \
member under members/.")]
pub struct Args {
    /// A trained student to include (repeat: at least two).
    #[arg(long = "model", value_name = "MODEL", required = true)]
    pub models: Vec<PathBuf>,
    /// Output model directory, written atomically. An existing distill model directory there is
    /// replaced once the new one is complete; anything else is refused unless --force.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace --out even when it is not a distill model directory (its files are deleted).
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: Args, _g: &Global) -> anyhow::Result<()> {
    let meta = distill_train::ensemble::build(&args.models, &args.out, args.force)
        .with_context(|| format!("building the ensemble {}", args.out.display()))?;
    let kinds: Vec<&str> = meta.hyper["members"]
        .as_array()
        .map(|m| m.iter().filter_map(|x| x["kind"].as_str()).collect())
        .unwrap_or_default();
    println!(
        "ensemble of {} students ({}) for task `{}`, {} labels",
        kinds.len(),
        kinds.join(" + "),
        meta.task,
        meta.labels.len()
    );
    println!("model: {}", args.out.display());
    Ok(())
}
