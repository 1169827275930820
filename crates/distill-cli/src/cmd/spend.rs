//! `distill spend`: what distill has spent, from the ledger.

use crate::Global;
use distill_core::ledger::{GroupBy, Ledger};
use std::path::Path;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only this task: a task name or a task spec (.toml) path.
    #[arg(long, value_name = "T")]
    pub task: Option<String>,
    /// Group by these keys, comma separated: task, model, day, source.
    #[arg(
        long,
        value_name = "KEYS",
        value_delimiter = ',',
        default_value = "task,model,day"
    )]
    pub by: Vec<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args, g: &Global) -> anyhow::Result<()> {
    let mut group = Vec::new();
    for k in &args.by {
        group.push(match k.trim() {
            "task" => GroupBy::Task,
            "model" => GroupBy::Model,
            "day" => GroupBy::Day,
            "source" => GroupBy::Source,
            other => anyhow::bail!("--by: unknown key `{other}` (use task, model, day, source)"),
        });
    }
    let task = match &args.task {
        Some(t) if t.ends_with(".toml") && Path::new(t).exists() => {
            Some(distill_core::TaskSpec::load(t)?.name)
        }
        other => other.clone(),
    };
    let path = g.ledger_path();
    if !path.exists() {
        println!(
            "no spending recorded yet ({} does not exist)",
            path.display()
        );
        return Ok(());
    }
    let ledger = Ledger::open(&path)?;
    let rows = ledger.summary(&group, task.as_deref())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let names: Vec<&str> = args.by.iter().map(|s| s.trim()).collect();
    let mut table: Vec<Vec<String>> = vec![names
        .iter()
        .map(|s| s.to_string())
        .chain(
            ["calls", "prompt", "cached", "completion", "usd"]
                .iter()
                .map(|s| s.to_string()),
        )
        .collect()];
    let (mut calls, mut usd) = (0u64, 0f64);
    for r in &rows {
        calls += r.calls;
        usd += r.cost_usd;
        let mut line = r.keys.clone();
        line.extend([
            r.calls.to_string(),
            r.usage.prompt_tokens.to_string(),
            r.usage.cached_tokens.to_string(),
            r.usage.completion_tokens.to_string(),
            format!("{:.4}", r.cost_usd),
        ]);
        table.push(line);
    }
    let widths: Vec<usize> = (0..table[0].len())
        .map(|c| {
            table
                .iter()
                .map(|r| r.get(c).map_or(0, |s| s.len()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in &table {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{s:<w$}", w = widths[i]))
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
    println!("total: {calls} calls, ${usd:.4}");
    Ok(())
}
