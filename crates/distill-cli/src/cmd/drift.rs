//! `distill drift`: how often the teacher agreed with the served student on shadow traffic.

use crate::Global;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only this served model (the name used in requests).
    #[arg(long)]
    pub model: Option<String>,
    /// How many days back to look.
    #[arg(long, default_value_t = 7)]
    pub since: u32,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args, g: &Global) -> anyhow::Result<()> {
    let path = g.state_dir.join("shadow.db");
    let r = distill_serve::shadow::drift_report(&path, args.model.as_deref(), args.since)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    let pct = |a: u64, n: u64| {
        if n == 0 {
            "-".to_string()
        } else {
            format!("{:.1}%", 100.0 * a as f64 / n as f64)
        }
    };
    println!(
        "Shadow agreement since {}{}: {} of {} ({})",
        r.since,
        r.model
            .as_deref()
            .map(|m| format!(" for model {m}"))
            .unwrap_or_default(),
        r.total.agree,
        r.total.n,
        pct(r.total.agree, r.total.n)
    );
    if r.total.n == 0 {
        println!(
            "No shadow comparisons yet: serve with --shadow-rate (e.g. 0.02) to collect them."
        );
        return Ok(());
    }
    println!(
        "\n{:<12} {:>8} {:>8} {:>10}",
        "day", "n", "agree", "agreement"
    );
    for d in &r.by_day {
        println!(
            "{:<12} {:>8} {:>8} {:>10}",
            d.key,
            d.n,
            d.agree,
            pct(d.agree, d.n)
        );
    }
    let width = r
        .by_label
        .iter()
        .map(|l| l.key.len())
        .max()
        .unwrap_or(5)
        .max(13);
    println!(
        "\n{:<width$} {:>8} {:>8} {:>10}",
        "teacher label", "n", "agree", "agreement"
    );
    let worst_first = |rows: &[distill_serve::shadow::AgreementRow]| {
        let mut rows = rows.to_vec();
        // Worst first: the labels (or slots) to relabel and retrain on.
        rows.sort_by(|a, b| a.agreement.total_cmp(&b.agreement).then(b.n.cmp(&a.n)));
        for l in &rows {
            println!(
                "{:<width$} {:>8} {:>8} {:>10}",
                l.key,
                l.n,
                l.agree,
                pct(l.agree, l.n)
            );
        }
    };
    worst_first(&r.by_label);
    if !r.by_slot.is_empty() {
        println!(
            "\n{:<width$} {:>8} {:>8} {:>10}",
            "teacher slot", "n", "agree", "agreement"
        );
        worst_first(&r.by_slot);
    }
    Ok(())
}
