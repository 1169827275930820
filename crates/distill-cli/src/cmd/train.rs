//! `distill train`: teacher dataset (or labelled CSV/JSONL) → student model directory.

use crate::Global;
use anyhow::Context;
use distill_core::TaskSpec;
use distill_train::{StudentKind, TrainOptions};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    distill train --task datasets/banking77/task.toml --data teach/banking77.jsonl --student linear --out models/b77-linear\n  \
    distill train --task datasets/banking77/task.toml --data datasets/banking77/train.csv --student encoder-head --out models/b77-head")]
pub struct Args {
    /// Task spec (TOML): the label set, and the text/label column names for CSV/JSONL data.
    #[arg(long)]
    pub task: PathBuf,
    /// Training data: a teacher dataset written by `distill teach` (the teacher's labels are
    /// learned), or any CSV/JSONL with a text column and a label column. Repeat to train on
    /// several files together.
    #[arg(long, required = true)]
    pub data: Vec<PathBuf>,
    /// Texts known to be out of scope (CSV/JSONL, the spec's text column), each an example of
    /// the task's `labels.out_of_scope` label (open-set tasks). Repeatable.
    #[arg(long, value_name = "FILE")]
    pub out_of_scope_examples: Vec<PathBuf>,
    /// Student kind: `linear` (hashed n-grams + logistic regression; seconds on a CPU),
    /// `encoder-head` (frozen sentence encoder + head) or `encoder-finetune` (whole encoder).
    /// An extract task trains `linear` (the linear tagger: BIO tags over word tokens) or
    /// `encoder-finetune` (BertForTokenClassification: BIO tags over word pieces).
    #[arg(long, default_value = "linear")]
    pub student: StudentKind,
    /// Output model directory, written atomically. An existing distill model directory there is
    /// replaced once the new model is complete; anything else is refused unless --force.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace --out even when it is not a distill model directory (its files are deleted).
    #[arg(long)]
    pub force: bool,
    /// Base encoder for encoder students: a local Hugging Face directory, or a Hugging Face
    /// repo id (`org/name`, `org/name@revision`) taken from the hub cache ($HF_HUB_CACHE, else
    /// $HF_HOME/hub, else ~/.cache/huggingface/hub) or downloaded into it from $HF_ENDPOINT
    /// (token: $HF_TOKEN). Default: models/base/all-MiniLM-L6-v2.
    #[arg(long)]
    pub base: Option<String>,
    /// Never download the base model: use a local directory or the hub cache only (as
    /// HF_HUB_OFFLINE=1 does).
    #[arg(long)]
    pub offline: bool,
    /// Most epochs to run; early stopping on dev accuracy may stop sooner
    /// (defaults: linear 30, encoder-finetune 10).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Examples per optimiser step (defaults: linear 64, encoder-finetune 32).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Learning rate (defaults: linear 32, plain SGD on the batch-mean gradient with averaged
    /// weights; encoder-finetune 1e-4 peak, AdamW with 10% warm-up and linear decay).
    #[arg(long)]
    pub lr: Option<f64>,
    /// encoder-finetune: learning rate of the freshly initialised head (pooler, classifier) as a
    /// multiple of --lr (default 10).
    #[arg(long)]
    pub head_lr_mult: Option<f64>,
    /// Weight decay, decoupled: each step shrinks a weight it changes by lr × this (defaults:
    /// linear 0, encoder-finetune 0.01).
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Longest input in tokens for encoder students (longer inputs are truncated).
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Seed for the dev split, batch order and initialisation; same seed, same model.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Fraction of each class held out as the dev split (early stopping, temperature fit).
    #[arg(long, default_value_t = 0.1)]
    pub dev_fraction: f64,
    /// A labelled file (teacher dataset, CSV or JSONL) to use as the dev split instead of
    /// holding out --dev-fraction of --data: for data whose examples share phrases, so a
    /// random split would score the student on what it trained on (classify and multilabel).
    #[arg(long, value_name = "FILE", conflicts_with = "dev_fraction")]
    pub dev: Option<PathBuf>,
    /// Epochs without dev-accuracy improvement before stopping (defaults: linear 3, encoder-head
    /// 5, encoder-finetune 5).
    #[arg(long)]
    pub patience: Option<usize>,
    /// Weight the loss so every class counts equally (for skewed label distributions).
    #[arg(long)]
    pub class_balanced: bool,
    /// Dropout for encoder-finetune.
    #[arg(long)]
    pub dropout: Option<f32>,
    /// Head of the encoder-head student: `logistic` or `mlp`.
    #[arg(long)]
    pub head: Option<String>,
    /// Device: `auto` (CUDA if built with the `cuda` feature and a GPU is present), `cpu`,
    /// `cuda` or `cuda:N`. The linear student always trains on the CPU.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// CPU threads (default: $RAYON_NUM_THREADS, else all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Label column of a CSV/JSONL file (default: the task's `gold_column`, else `label`).
    /// Ignored for teacher datasets.
    #[arg(long)]
    pub label_column: Option<String>,
    /// Also write an int8 copy of the trained encoder student (as `distill quantize` does) to
    /// --quantize-out; the f32 student stays in --out, so eval can compare the two.
    #[arg(long, value_name = "SCHEME")]
    pub quantize: Option<crate::cmd::quantize::Scheme>,
    /// Where --quantize writes the int8 copy (default: --out with `-int8` appended).
    #[arg(long, requires = "quantize")]
    pub quantize_out: Option<PathBuf>,
}

pub fn run(args: Args, g: &Global) -> anyhow::Result<()> {
    let threads = distill_train::device::set_threads(args.threads);
    let spec = TaskSpec::load(&args.task)?;
    let device = distill_train::select_device(&args.device)?;
    // indicatif hides the bars itself when stderr is not a terminal; the per-epoch summary lines
    // still reach a log file that way.
    let progress = !g.quiet;
    let opts = TrainOptions {
        out: args.out.clone(),
        seed: args.seed,
        device,
        threads,
        epochs: args.epochs,
        batch_size: args.batch_size,
        lr: args.lr,
        head_lr_mult: args.head_lr_mult,
        weight_decay: args.weight_decay,
        max_len: args.max_len,
        patience: args.patience,
        class_balanced: args.class_balanced,
        dropout: args.dropout,
        base: args.base.clone(),
        offline: args.offline,
        head: args.head.clone(),
        cache_dir: Some(g.embeddings_path()),
        progress,
        force: args.force,
    };
    if spec.is_extract() {
        return train_tagger(&args, &spec, &opts);
    }
    if spec.route.is_some() {
        if args.quantize.is_some() {
            anyhow::bail!(
                "--quantize: routers are not quantised (quantise a tier's student instead)"
            );
        }
        if args.dev.is_some() {
            anyhow::bail!("--dev: a router holds out --dev-fraction of its outcomes (a dev file is for classify and multilabel tasks)");
        }
        return train_router(&args, &spec, &opts);
    }
    if args.quantize.is_some() && args.student == StudentKind::Linear {
        anyhow::bail!(
            "--quantize applies to encoder students (encoder-head, encoder-finetune); a linear \
             student has no encoder to quantise"
        );
    }
    let sources = distill_train::train::TrainSources {
        data: args.data.clone(),
        out_of_scope: args.out_of_scope_examples.clone(),
    };
    let (mut data, report) = distill_train::train::load_train_sources(
        &spec,
        &sources,
        if args.dev.is_some() {
            0.0
        } else {
            args.dev_fraction
        },
        args.seed,
        args.label_column.as_deref(),
    )?;
    if let Some(dev) = &args.dev {
        data = distill_train::train::with_dev_file(data, &spec, dev, args.label_column.as_deref())
            .with_context(|| format!("--dev {}", dev.display()))?;
        if let Some(y) = data.dev_single_class() {
            eprintln!(
                "warning: --dev {}: every example has the label `{}`; early stopping follows that \
                 label alone and no temperature is fitted (T = 1)",
                dev.display(),
                spec.labels.names[y]
            );
        }
    }
    if !g.quiet {
        let names: Vec<String> = args
            .data
            .iter()
            .chain(&args.out_of_scope_examples)
            .map(|p| p.display().to_string())
            .collect();
        eprintln!(
            "{}: {} train / {} dev examples, {} of {} labels present, labels from {}{}",
            names.join(" + "),
            data.train.len(),
            data.dev.len(),
            report.classes_present,
            spec.labels.len(),
            data.label_source,
            if report.skipped_unlabelled > 0 {
                format!(
                    " ({} teacher records without a usable label skipped)",
                    report.skipped_unlabelled
                )
            } else {
                String::new()
            }
        );
        eprintln!(
            "training {} on {} ({threads} threads)…",
            args.student.as_str(),
            distill_train::device::device_name(&opts.device)
        );
    }
    let meta = distill_train::train::train_on(&data, args.student, &opts)
        .with_context(|| format!("training {} failed", args.student.as_str()))?;
    println!(
        "trained {} for task {}: dev accuracy {:.4} ({} dev examples), {} epochs, {:.1} s wall, \
         {:.0} examples/s on {} × {} threads, est. cost ${:.6}, temperature {:.3}",
        meta.kind.as_str(),
        meta.task,
        meta.dev_accuracy,
        meta.n_dev,
        meta.epochs_run,
        meta.train_wall_s,
        meta.examples_per_s,
        meta.device,
        meta.threads,
        meta.train_cost_usd,
        meta.temperature
    );
    println!("model: {}", args.out.display());
    if args.quantize.is_some() {
        let out = args.quantize_out.clone().unwrap_or_else(|| {
            let mut name = args.out.as_os_str().to_owned();
            name.push("-int8");
            PathBuf::from(name)
        });
        crate::cmd::quantize::quantize(&args.out, &out, args.force)?;
    }
    Ok(())
}

/// Route tasks: one student per routed tier, written as a router directory.
fn train_router(args: &Args, spec: &TaskSpec, opts: &TrainOptions) -> anyhow::Result<()> {
    let mut records = Vec::new();
    let mut hashes = Vec::new();
    for p in &args.data {
        records.extend(distill_core::route::read_route_records(p)?);
        hashes.push(distill_core::fsutil::sha256_file(p)?);
    }
    let hash = distill_core::fsutil::sha256_hex(hashes.join("\n").as_bytes());
    let report = distill_train::route::train_router(
        spec,
        &records,
        args.student,
        opts,
        args.dev_fraction,
        &hash,
    )
    .with_context(|| format!("training a {} router", args.student.as_str()))?;
    for (tier, dev, epochs) in &report.tiers {
        println!("tier {tier}: pass/fail student, dev accuracy {dev:.4} ({epochs} epochs)");
    }
    println!(
        "trained a {} router for task {} on {} prompts in {:.1} s; tiers: {}",
        report.meta.student.as_str(),
        report.meta.task,
        report.meta.n_train,
        report.meta.train_wall_s,
        report
            .meta
            .tiers
            .iter()
            .map(|t| format!("{} (passes {:.1}%)", t.name, t.train_pass_rate * 100.0))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("model: {}", args.out.display());
    Ok(())
}

/// An extract task's student, trained on the teacher's spans: the linear tagger
/// (`--student linear`) or the fine-tuned encoder tagger (`--student encoder-finetune`).
fn train_tagger(args: &Args, spec: &TaskSpec, opts: &TrainOptions) -> anyhow::Result<()> {
    let [data] = args.data.as_slice() else {
        anyhow::bail!("--data: an extract task trains on one teacher dataset");
    };
    if args.quantize.is_some() {
        anyhow::bail!("--quantize: taggers are not quantised yet");
    }
    if args.dev.is_some() {
        anyhow::bail!("--dev: a tagger holds out --dev-fraction of its records (a dev file is for classify and multilabel tasks)");
    }
    let r = match args.student {
        StudentKind::Linear => distill_train::tagging::model::train_linear(
            spec,
            data,
            &args.out,
            args.force,
            args.dev_fraction,
            args.seed,
        )?,
        StudentKind::EncoderFinetune => {
            distill_train::tagging::encoder::train(spec, data, opts, args.dev_fraction)?
        }
        StudentKind::EncoderHead => anyhow::bail!(
            "--student encoder-head: an extract task trains `linear` (the linear tagger) or \
             `encoder-finetune` (BertForTokenClassification, fine-tuned)"
        ),
        StudentKind::Ensemble => anyhow::bail!("an extract task has no ensemble student"),
    };
    let name = if args.student == StudentKind::Linear {
        "linear tagger"
    } else {
        "encoder tagger"
    };
    println!(
        "{name}: {} train / {} dev inputs, {} tokens, {} spans ({} widened to token boundaries, {} lost past the window), {:.1} s",
        r.meta.train_inputs,
        r.meta.dev_inputs,
        r.stats.tokens,
        r.stats.spans,
        r.stats.widened,
        r.stats.lost,
        r.seconds
    );
    if let Some(f1) = r.meta.dev_span_f1 {
        println!("dev span F1 (exact match) {f1:.4}");
    }
    println!("wrote {}", args.out.display());
    Ok(())
}
