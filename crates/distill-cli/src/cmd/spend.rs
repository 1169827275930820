//! `distill spend`: what distill has spent, from the ledger.

use crate::Global;
use distill_core::ledger::{GroupBy, Ledger};
use std::path::Path;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only this task: a task name or a task spec (.toml) path.
    #[arg(long, value_name = "T")]
    pub task: Option<String>,
    /// Group by these keys, comma separated: task, model, day, source (teach, eval, serve.*,
    /// gateway), mode (batch or real-time), tag (X-Distill-Tag). For gateway calls the task is
    /// the route and the model the tier's, so `route` and `tier` are accepted for them.
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
    /// Also check the ledger against the provider: for every Batch API batch recorded, the
    /// provider's own count of answered requests beside the ledger's rows (needs --task with a
    /// spec .toml, and the provider's API key in its usual variable).
    #[arg(long, requires = "task")]
    pub reconcile: bool,
    /// With --reconcile: the provider's base URL, if not the spec's (e.g. the sim-teacher).
    #[arg(long, value_name = "URL", requires = "reconcile")]
    pub base_url: Option<String>,
}

/// Prints each recorded batch's answered-request count as the provider reports it beside
/// the ledger's rows for it.
fn reconcile(args: &Args, g: &Global, task_name: Option<&str>) -> anyhow::Result<()> {
    let spec_path = args
        .task
        .as_deref()
        .filter(|t| t.ends_with(".toml"))
        .ok_or_else(|| anyhow::anyhow!("--reconcile needs --task with a task spec (.toml)"))?;
    let spec = distill_core::TaskSpec::load(spec_path)?;
    let ledger = Ledger::open(g.ledger_path())?;
    let batches = ledger.batch_rows(task_name.unwrap_or(&spec.name))?;
    if batches.is_empty() {
        println!(
            "reconcile: no Batch API batches recorded for task {}",
            spec.name
        );
        return Ok(());
    }
    let client = distill_teach::TeacherClient::new(
        &spec,
        distill_teach::ClientOptions {
            base_url: args.base_url.clone(),
            ..Default::default()
        },
    )?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    println!("batch  provider-answered  ledger-rows  difference");
    let mut mismatched = 0;
    for (id, rows) in &batches {
        match rt.block_on(distill_teach::batch::answered_count(&client, id)) {
            Ok(answered) => {
                let diff = answered as i64 - *rows as i64;
                mismatched += usize::from(diff != 0);
                println!("{id}  {answered}  {rows}  {diff:+}");
            }
            Err(e) => println!("{id}  ?  {rows}  (cannot ask the provider: {e})"),
        }
    }
    if mismatched > 0 {
        println!(
            "{mismatched} batch(es) differ: a positive difference is answers the provider billed \
             that were never collected; run the teach job again with --batch --resume to collect them"
        );
    } else {
        println!("every batch matches the provider's count");
    }
    Ok(())
}

pub fn run(args: Args, g: &Global) -> anyhow::Result<()> {
    let mut group = Vec::new();
    for k in &args.by {
        group.push(match k.trim() {
            "task" | "route" => GroupBy::Task,
            "model" | "tier" => GroupBy::Model,
            "tag" => GroupBy::Tag,
            "day" => GroupBy::Day,
            "source" => GroupBy::Source,
            "mode" => GroupBy::Mode,
            other => {
                anyhow::bail!(
                    "--by: unknown key `{other}` (use task, model, day, source, mode, tag, route, tier)"
                )
            }
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
    let (mut calls, mut usd, mut in_flight, mut unanswered) = (0u64, 0f64, 0u64, 0u64);
    for r in &rows {
        calls += r.calls;
        usd += r.cost_usd;
        in_flight += r.in_flight;
        unanswered += r.unanswered;
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
    if in_flight > 0 {
        println!(
            "of which {in_flight} call(s) were sent but their outcome was never recorded (a process \
             was killed while they were out, or is still running): counted at their worst-case \
             estimate, since the provider may have billed them"
        );
    }
    if unanswered > 0 {
        println!(
            "of which {unanswered} call(s) were sent and got no usable reply (timed out, cut off, \
             or unreadable): counted at their worst-case estimate, since providers bill requests \
             they finished (the provider's usage page says what they came to)"
        );
    }
    if args.reconcile {
        reconcile(&args, g, task.as_deref())?;
    }
    Ok(())
}
