//! `distill predict`: run a trained student over a CSV/JSONL file, streaming, into JSONL.

use crate::Global;
use distill_core::input::Columns;
use distill_train::predict::{predict_file, PredictOptions};
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Output: one JSON object per input row, in input order:\n  \
    {\"id\": ..., \"text\": ..., \"label\": ..., \"confidence\": 0.97, \"top\": [{\"label\": ..., \"p\": 0.97}, ...], \"gold\": ...}\n\
    `confidence` is calibrated (softmax with the temperature fitted on the dev split); `gold` only with --gold-column.\n\
    A multilabel model adds `\"labels\": [...]` (`label` joins them with the task's separator);\n\
    `top` holds each label's own probability, `confidence` that of its least sure label decision.\n\
    An extraction tagger writes `\"spans\": [{\"slot\", \"start\", \"end\", \"text\"}]` (offsets in characters)\n\
    and `confidence` (its least sure token); with --gold-column (a span list) it scores span F1.\n\n\
    Example:\n  distill predict --model models/b77-linear --input datasets/banking77/test.csv --out preds.jsonl"
)]
pub struct Args {
    /// Model directory written by `distill train`.
    #[arg(long)]
    pub model: PathBuf,
    /// Input file: CSV (with a header) or JSONL, one text per row.
    #[arg(long)]
    pub input: PathBuf,
    /// Output JSONL (written atomically: it appears only when every row is done).
    #[arg(long)]
    pub out: PathBuf,
    /// Alternatives listed per row in `top`.
    #[arg(long, default_value_t = 3)]
    pub top_k: usize,
    /// Texts per model call; rows are length-sorted within a bounded window first.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Column (CSV) or field (JSONL) holding the text.
    #[arg(long, default_value = "text")]
    pub text_column: String,
    /// Column holding a stable id (default: the 1-based row number).
    #[arg(long)]
    pub id_column: Option<String>,
    /// Column with known-correct labels: copied to the output as `gold` and scored.
    #[arg(long)]
    pub gold_column: Option<String>,
    /// Device: `auto`, `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// CPU threads (default: $RAYON_NUM_THREADS, else all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

pub fn run(args: Args, g: &Global) -> anyhow::Result<()> {
    distill_train::device::set_threads(args.threads);
    let device = distill_train::select_device(&args.device)?;
    if distill_train::tagging::model::is_tagger_dir(&args.model) {
        return predict_spans(&args, &device);
    }
    let student = distill_train::load_student(&args.model, &device)?;
    let opts = PredictOptions {
        top_k: args.top_k.max(1),
        batch_size: args.batch_size.max(1),
        columns: Columns {
            context: Default::default(),
            text: args.text_column.clone(),
            gold: args.gold_column.clone(),
            id: args.id_column.clone(),
            conversation: false,
        },
        progress: !g.quiet && std::io::stderr().is_terminal(),
        ..PredictOptions::default()
    };
    let s = predict_file(student.as_ref(), &args.input, &args.out, &opts)?;
    if s.unknown_gold > 0 {
        eprintln!(
            "warning: {} of {} rows have a gold label the model does not know (e.g. {}): they are \
             not scored. Check --gold-column and that the model was trained for this task.",
            s.unknown_gold,
            s.rows,
            s.unknown_gold_examples
                .iter()
                .map(|l| format!("`{l}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let metric = if s.multilabel {
        "exact-set accuracy"
    } else {
        "accuracy"
    };
    let acc = match s.accuracy {
        Some(a) if s.unknown_gold > 0 => format!(
            ", {metric} vs gold {a:.4} on the {} rows with a known gold label",
            s.rows - s.unknown_gold
        ),
        Some(a) => format!(", {metric} vs gold {a:.4}"),
        None if s.unknown_gold > 0 => {
            format!(", {metric} vs gold: none of the gold labels is the model's")
        }
        None => String::new(),
    };
    println!(
        "predicted {} rows in {:.2} s ({:.0} rows/s){acc} → {}",
        s.rows,
        s.wall_s,
        s.rows_per_s,
        args.out.display()
    );
    Ok(())
}

/// An extraction tagger's spans for every row (its context columns read beside the text).
fn predict_spans(args: &Args, device: &distill_train::Device) -> anyhow::Result<()> {
    let (tagger, meta) = distill_train::tagging::model::load(&args.model, device)?;
    let cols = Columns {
        context: Default::default(),
        text: args.text_column.clone(),
        gold: args.gold_column.clone(),
        id: args.id_column.clone(),
        conversation: false,
    };
    let s = distill_train::tagging::model::predict_file(
        tagger.as_ref(),
        &meta,
        &args.input,
        &args.out,
        cols,
    )?;
    let f1 = s
        .span_f1
        .map(|f| {
            format!(
                ", span F1 vs gold {f:.4} on {} of {} rows",
                s.scored, s.rows
            )
        })
        .unwrap_or_default();
    println!(
        "tagged {} rows in {:.2} s ({:.0} rows/s){f1} → {}",
        s.rows,
        s.wall_s,
        s.rows as f64 / s.wall_s.max(1e-9),
        args.out.display()
    );
    Ok(())
}
