//! `distill export`: a teacher dataset in another tool's format.

use crate::Global;
use distill_core::TaskSpec;
use std::path::PathBuf;

#[derive(clap::ValueEnum, Clone, Debug)]
pub enum Format {
    /// OpenAI fine-tuning chat JSONL: {"messages": [system, user, assistant]} per ok record.
    Openai,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The teacher dataset written by `distill teach`.
    #[arg(long, value_name = "FILE")]
    pub data: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "openai")]
    pub format: Format,
    /// The task spec; its system prompt and user template form the prompts.
    #[arg(long, value_name = "T.toml")]
    pub task: PathBuf,
    /// Output file (written atomically).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

pub fn run(args: Args, _g: &Global) -> anyhow::Result<()> {
    let spec = TaskSpec::load(&args.task)?;
    crate::cmd::refuse_extract(&spec, "distill export")?;
    let s = match args.format {
        Format::Openai => distill_teach::export::export_openai(&spec, &args.data, &args.out)?,
    };
    println!(
        "wrote {} examples to {} ({} invalid/failed records skipped)",
        s.written,
        args.out.display(),
        s.skipped
    );
    Ok(())
}
