//! `distill eval`: score students against the teacher (and gold), price them, choose a cascade
//! threshold and write `report.md`, `report.html`, `metrics.json` and `predictions.jsonl`.

use crate::Global;
use anyhow::Context;
use distill_core::TaskSpec;
use distill_eval::cascade::{parse_floor, FloorMetric};
use distill_eval::cost::HardwarePrices;
use distill_eval::EvalOptions;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The task spec (TOML).
    #[arg(long)]
    pub task: PathBuf,
    /// A trained student's model directory; repeat to compare several.
    #[arg(long = "model")]
    pub models: Vec<PathBuf>,
    /// A hosted model to evaluate as a student, as provider:model[@base-url] (e.g.
    /// openai:gpt-4o-mini); asked with the task's prompt through the teach client (cache,
    /// retries, ledger rows tagged `eval`), priced by its real tokens. Repeatable.
    #[arg(long = "api")]
    pub api: Vec<String>,
    /// Concurrent requests per --api student.
    #[arg(long, default_value_t = 16)]
    pub api_concurrency: usize,
    /// Test file (CSV/JSONL with the spec's columns, or a teacher dataset). Default: the spec's input.test_path.
    #[arg(long)]
    pub test: Option<PathBuf>,
    /// Teacher JSONL for the test items (`distill teach` run on the test file).
    #[arg(long)]
    pub teacher_labels: Option<PathBuf>,
    /// Inputs known to be out of scope, for an open-set task (labels.out_of_scope): a CSV/JSONL
    /// of texts, or `distill teach --input FILE`'s dataset of them (the teacher's answers).
    /// Scored for out-of-scope recall and precision beside in-scope accuracy. Repeatable.
    #[arg(long, value_name = "FILE")]
    pub out_of_scope: Vec<PathBuf>,
    /// Route tasks: the training route dataset (for the category-prior baseline). With --curve:
    /// the teacher dataset (or, for classify and multilabel, a labelled CSV/JSONL) whose first N
    /// labels each point trains on.
    #[arg(long, value_name = "FILE")]
    pub train: Option<PathBuf>,
    /// Draw a learning curve: train a student on the first N labels of --train for each N
    /// (e.g. 500,1000,2000,4000,all), evaluate each like any model (cascade, costs with only
    /// those N labels charged) and mark the cheapest size whose cascade holds the floor.
    #[arg(long, value_name = "SIZES", value_parser = parse_curve_sizes)]
    pub curve: Option<CurveSizes>,
    /// The student kind the learning curve trains: linear, encoder-head, encoder-finetune, or
    /// ensemble (a linear student and an encoder-head per point, averaged, as the quickstart
    /// ships; single-label tasks). Extract tasks: linear or encoder-finetune.
    #[arg(long, value_name = "KIND", default_value = "linear", value_parser = parse_curve_student)]
    pub curve_student: distill_train::StudentKind,
    /// Seeds per curve size (each draws its own subset and trains with its own seed).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub curve_seeds: usize,
    /// Which N labels a curve point uses: `random` (a seeded sample per seed) or `recorded` (the
    /// file's first N: the selection order of labels chosen actively).
    #[arg(long, value_name = "ORDER", default_value = "random")]
    pub curve_order: distill_eval::curve::CurveOrder,
    /// Base encoder for encoder curve students: a local directory or a Hugging Face repo id.
    #[arg(long)]
    pub base: Option<String>,
    /// Never download the base encoder.
    #[arg(long)]
    pub offline: bool,
    /// Route tasks: the routed quality must reach this fraction of the top tier's (the lower
    /// 95% bound, on the calibration split).
    #[arg(long, value_name = "FRACTION", default_value_t = 0.95)]
    pub quality_floor: f64,
    /// Route tasks: instead of a floor, the best quality within this many USD per 1,000 requests.
    #[arg(long, value_name = "USD")]
    pub budget_per_1000: Option<f64>,
    /// Out-of-scope share of the traffic (e.g. 0.1): the summary table and the cascade's
    /// threshold are evaluated on that mix (a seeded sample). Default: the files' own ratio.
    #[arg(long, value_name = "SHARE")]
    pub oos_share: Option<f64>,
    /// Output directory (e.g. evals/banking77), written whole once the eval is done. An existing
    /// distill eval directory there is replaced; anything else is refused unless --force.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace --out even when it is not a distill eval directory (its files are deleted).
    #[arg(long)]
    pub force: bool,
    /// Requests per day for the monthly projection.
    #[arg(long, allow_negative_numbers = true, default_value_t = 10_000.0)]
    pub volume: f64,
    /// Cascade quality floor: accuracy=X (against gold) or agreement=X (against the teacher).
    /// Default: the teacher's own accuracy when there is gold, else agreement=0.95.
    #[arg(long, value_parser = parse_floor_arg)]
    pub floor: Option<(FloorMetric, f64)>,
    /// Share of the test set held out to choose the cascade threshold.
    #[arg(long, default_value_t = 0.3)]
    pub calibration_fraction: f64,
    /// Price of one CPU core for an hour, in USD.
    #[arg(long, allow_negative_numbers = true, default_value_t = distill_train::student::DEFAULT_CPU_CORE_HOUR_USD)]
    pub core_hour_usd: f64,
    /// Price of one GPU for an hour, in USD.
    #[arg(long, allow_negative_numbers = true, default_value_t = distill_train::student::DEFAULT_GPU_HOUR_USD)]
    pub gpu_hour_usd: f64,
    /// Price the teacher as this model (default: the spec's teacher.model).
    #[arg(long)]
    pub teacher_price_model: Option<String>,
    /// A price-table file overriding the built-in prices.
    #[arg(long)]
    pub prices: Option<PathBuf>,
    /// Seed for the calibration split and the bootstrap.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// CPU threads for student inference (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Batch size for the timed batched inference pass.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Replay students' answers from a predictions.jsonl instead of running models
    /// (for CI's scikit-learn cross-check).
    #[arg(long, hide = true)]
    pub predictions: Option<PathBuf>,
}

fn parse_floor_arg(s: &str) -> Result<(FloorMetric, f64), String> {
    parse_floor(s)
}

/// `--curve`'s sizes as one value (a bare `Vec` would make clap expect a list of arguments).
#[derive(Debug, Clone)]
pub struct CurveSizes(pub Vec<distill_eval::curve::CurveSize>);

fn parse_curve_sizes(s: &str) -> Result<CurveSizes, String> {
    distill_eval::curve::parse_sizes(s).map(CurveSizes)
}

/// A student kind `distill train` trains, or `ensemble` (which only a curve trains: its members).
fn parse_curve_student(s: &str) -> Result<distill_train::StudentKind, String> {
    match s {
        "ensemble" => Ok(distill_train::StudentKind::Ensemble),
        _ => s.parse().map_err(|e: String| format!("{e}, or ensemble")),
    }
}

pub fn options(args: &Args, g: &Global) -> EvalOptions {
    let mut o = EvalOptions::new(&args.out);
    o.models = args.models.clone();
    o.api = args.api.clone();
    o.test = args.test.clone();
    o.teacher_labels = args.teacher_labels.clone();
    o.predictions = args.predictions.clone();
    o.volume_per_day = args.volume;
    o.floor = args.floor;
    o.calibration_fraction = args.calibration_fraction;
    o.hardware = HardwarePrices {
        core_hour_usd: args.core_hour_usd,
        gpu_hour_usd: args.gpu_hour_usd,
    };
    o.teacher_price_model = args.teacher_price_model.clone();
    o.prices = args.prices.clone();
    o.ledger = Some(g.ledger_path());
    o.cache = Some(g.cache_path());
    o.api_concurrency = args.api_concurrency;
    o.seed = args.seed;
    o.device = args.device.clone();
    o.threads = args.threads;
    o.batch_size = args.batch_size;
    o.progress = !g.quiet;
    o.force = args.force;
    o.out_of_scope = args.out_of_scope.clone();
    o.oos_share = args.oos_share;
    o
}

pub fn run(args: Args, g: &Global) -> anyhow::Result<()> {
    let spec = TaskSpec::load(&args.task)?;
    if spec.is_extract() {
        return extract(&args, &spec, g);
    }
    if spec.route.is_some() {
        return route(&args, &spec, g);
    }
    let mut opts = options(&args, g);
    if let Some(sizes) = &args.curve {
        opts.curve = Some(curve(&args, &sizes.0, &spec, &opts, g)?);
    }
    let outcome = distill_eval::run_eval(&spec, &opts)
        .with_context(|| format!("eval of task `{}`", spec.name))?;
    print!("{}", outcome.summary);
    println!("report: {}", outcome.report_html().display());
    Ok(())
}

/// The learning curve, drawn before the eval so the report carries it.
fn curve(
    args: &Args,
    sizes: &[distill_eval::curve::CurveSize],
    spec: &TaskSpec,
    opts: &distill_eval::EvalOptions,
    g: &Global,
) -> anyhow::Result<distill_eval::curve::Curve> {
    let c = curve_options(args, sizes, g)?;
    distill_eval::curve::run_curve(spec, opts, &c)
        .with_context(|| format!("learning curve for task `{}`", spec.name))
}

/// What `--curve` and its flags ask for, whatever the task kind.
fn curve_options(
    args: &Args,
    sizes: &[distill_eval::curve::CurveSize],
    g: &Global,
) -> anyhow::Result<distill_eval::curve::CurveOptions> {
    let train = args.train.clone().context(
        "--curve needs --train FILE: the teacher dataset whose first N labels each point trains on",
    )?;
    let t = g.side_train_options(
        args.out.clone(),
        &args.device,
        args.threads,
        args.base.clone(),
        args.offline,
    )?;
    Ok(distill_eval::curve::CurveOptions {
        train,
        sizes: sizes.to_vec(),
        student: args.curve_student,
        seeds: args.curve_seeds,
        order: args.curve_order,
        dev_fraction: 0.1,
        train_opts: t,
    })
}

/// Route tasks: routers against the baselines on the route test set.
fn route(args: &Args, spec: &TaskSpec, g: &Global) -> anyhow::Result<()> {
    if args.curve.is_some() {
        anyhow::bail!(
            "--curve draws a classification student's learning curve; a route task's routers \
             are compared with --model"
        );
    }
    if args.floor.is_some() {
        anyhow::bail!(
            "--floor sets a classification cascade's floor; a route task's floor is \
             --quality-floor FRACTION (of the top tier's quality, default 0.95)"
        );
    }
    let test = args
        .test
        .clone()
        .or_else(|| spec.input.test_path.clone())
        .context("no test route dataset: pass --test FILE (from `distill teach`)")?;
    let mut o = distill_eval::route::RouteEvalOptions::new(test, &args.out);
    o.routers = args.models.clone();
    o.train = args.train.clone();
    o.force = args.force;
    o.calibration_fraction = args.calibration_fraction;
    o.seed = args.seed;
    o.floor_fraction = args.quality_floor;
    o.budget_per_1000 = args.budget_per_1000;
    o.hardware = HardwarePrices {
        core_hour_usd: args.core_hour_usd,
        gpu_hour_usd: args.gpu_hour_usd,
    };
    if let Some(t) = args.threads {
        o.threads = t;
    }
    o.batch_size = args.batch_size;
    o.volume_per_day = args.volume;
    if o.routers.is_empty() {
        anyhow::bail!(
            "nothing to evaluate: pass at least one --model (a router from `distill train`)"
        );
    }
    let _ = g;
    let outcome = distill_eval::route::run_route_eval(spec, &o)
        .with_context(|| format!("route eval of task `{}`", spec.name))?;
    print!("{}", outcome.summary);
    println!("report: {}", outcome.out.join("report.html").display());
    Ok(())
}

/// The money line of an extract eval (also `distill quickstart`'s).
pub(crate) fn print_extract_saving(c: &distill_eval::extract::ExtractCosts) {
    let pct = |v: Option<f64>| v.map_or("—".into(), distill_eval::report::fmt::pct);
    let (what, e) = match &c.cascade {
        Some(e) => ("cascade", e),
        None => ("tagger alone", &c.student),
    };
    println!(
        "cost at {:.0}/day: teacher alone ${:.2}/month; {what} ${:.2} in month 1 (saving {}), \
         ${:.2}/month after (saving {})",
        c.volume_per_day,
        c.teacher_monthly_usd,
        e.monthly_usd,
        pct(e.saving),
        e.steady_monthly_usd,
        pct(e.steady_saving)
    );
}

/// An extract task: the tagger against gold and the teacher, and its cascade.
fn extract(args: &Args, spec: &TaskSpec, g: &Global) -> anyhow::Result<()> {
    let [model] = args.models.as_slice() else {
        anyhow::bail!("--model: an extract task is evaluated one tagger at a time");
    };
    distill_train::device::set_threads(args.threads);
    let api: Vec<distill_eval::api::ApiStudentSpec> = args
        .api
        .iter()
        .map(|a| distill_eval::api::ApiStudentSpec::parse(a))
        .collect::<Result<_, _>>()?;
    // The price table only matters to --api models: a bad --prices fails only evals that use it.
    let api_options = if api.is_empty() {
        None
    } else {
        Some(distill_eval::api::ApiRunOptions {
            cache_path: Some(g.cache_path()),
            ledger_path: Some(g.ledger_path()),
            prices: Some(match &args.prices {
                Some(p) => distill_core::prices::PriceTable::with_overrides(p)?,
                None => distill_core::prices::PriceTable::builtin(),
            }),
            concurrency: args.api_concurrency,
            progress: !g.quiet,
        })
    };
    let test = args
        .test
        .clone()
        .or_else(|| spec.input.test_path.clone())
        .context("--test: no test file given and the task names no input.test_path")?;
    let floor = match args.floor {
        Some((FloorMetric::Accuracy, f)) | Some((FloorMetric::Agreement, f)) => Some(f),
        None => None,
    };
    let device = distill_train::select_device(&args.device)?;
    let mut o = distill_eval::extract::ExtractEvalOptions {
        test: &test,
        teacher_labels: args.teacher_labels.as_deref(),
        floor,
        calibration_fraction: args.calibration_fraction,
        seed: args.seed,
        force: args.force,
        device: &device,
        volume_per_day: args.volume,
        hardware: distill_eval::cost::HardwarePrices {
            core_hour_usd: args.core_hour_usd,
            gpu_hour_usd: args.gpu_hour_usd,
        },
        curve: None,
        api: api_options.as_ref().map(|opts| (api.as_slice(), opts)),
    };
    // The curve first, so the report carries it (its points ask no --api model).
    let curve = match &args.curve {
        Some(sizes) => {
            let c = curve_options(args, &sizes.0, g)?;
            Some(
                distill_eval::extract::curve(spec, &o, &c, !g.quiet)
                    .with_context(|| format!("learning curve for task `{}`", spec.name))?,
            )
        }
        None => None,
    };
    o.curve = curve.as_ref();
    let r = distill_eval::extract::run(spec, model, &args.out, &o)?;
    let line = |name: &str, q: &Option<distill_eval::span_metrics::SpanScores>| {
        if let Some(q) = q {
            println!(
                "{name}: span F1 {:.4} [{:.4}, {:.4}], partial F1 {:.4}, exact inputs {:.4}",
                q.exact.f1.value,
                q.exact.f1.lo,
                q.exact.f1.hi,
                q.partial.f1.value,
                q.exact_inputs.value
            );
        }
    };
    line("student vs gold", &r.student_vs_gold);
    line("teacher vs gold", &r.teacher_vs_gold);
    line("student vs teacher", &r.student_vs_teacher);
    for a in &r.api {
        line(&format!("{} vs gold", a.name), &a.vs_gold);
        line(&format!("{} vs teacher", a.name), &a.vs_teacher);
    }
    for note in distill_eval::report::extract::api_notes(&r) {
        println!("{note}");
    }
    if let Some(c) = &r.cascade {
        println!(
            "cascade: threshold {:.4}, held-out exact inputs {:.4} vs floor {:.4} ({}), escalating {:.1}%",
            c.threshold,
            c.held_out.quality.value,
            r.floor,
            if c.floor_held { "held" } else { "NOT held" },
            100.0 * c.held_out.escalated_fraction
        );
    }
    if let Some(c) = &r.costs {
        print_extract_saving(c);
    }
    if let Some(c) = &r.curve {
        print!("{}", distill_eval::report::curve_text(c));
    }
    println!("wrote {}", args.out.display());
    Ok(())
}
