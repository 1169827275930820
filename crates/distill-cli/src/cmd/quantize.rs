//! `distill quantize`: an int8 copy of an encoder student, loaded by `predict`, `eval` and
//! `serve` like any model directory.

use crate::Global;
use anyhow::Context;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    distill quantize --model models/b77-head --out models/b77-head-int8\n  \
    distill eval --task T.toml --model models/b77-head --model models/b77-head-int8 --out evals/int8")]
pub struct Args {
    /// The f32 student to quantise: an `encoder-head` or `encoder-finetune` model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Output model directory for the int8 copy, written atomically. An existing distill model
    /// directory there is replaced once the copy is complete; anything else is refused unless
    /// --force.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace --out even when it is not a distill model directory (its files are deleted).
    #[arg(long)]
    pub force: bool,
    /// Scheme: `int8` (weights int8 per output channel, activations int8 per row at run time).
    #[arg(long, default_value = "int8")]
    pub scheme: Scheme,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Int8,
}

pub fn run(args: Args, _g: &Global) -> anyhow::Result<()> {
    let Scheme::Int8 = args.scheme;
    quantize(&args.model, &args.out, args.force)
}

/// Quantises `model` into `out` and prints what changed (also `distill train --quantize`).
pub fn quantize(model: &Path, out: &Path, force: bool) -> anyhow::Result<()> {
    let meta = distill_train::quantize::quantize_model_dir(model, out, force)
        .with_context(|| format!("quantising {}", model.display()))?;
    let q = meta
        .quantization
        .as_ref()
        .context("the quantised model records no scheme")?;
    let kernel = distill_train::encoder::int8::Kernel::detect()
        .map(|k| k.as_str().to_string())
        .unwrap_or_else(|e| e);
    println!(
        "quantised {} ({}) to {}: {} dense layers int8, model.safetensors {:.1} MB -> {:.1} MB; \
         int8 kernel on this CPU: {kernel}",
        model.display(),
        meta.kind.as_str(),
        q.scheme,
        q.layers.len(),
        q.f32_bytes as f64 / 1e6,
        q.int8_bytes as f64 / 1e6,
    );
    println!("model: {}", out.display());
    Ok(())
}
