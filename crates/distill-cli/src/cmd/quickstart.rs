//! `distill quickstart`: the whole loop, offline, in one command. It is the product's demo and
//! its smoke test: a simulated premium teacher (in-process, loopback only) labels Banking77 (or
//! MixSNIPS, a multilabel task), students train on those labels, and eval shows what
//! distillation saves.

use crate::Global;
use anyhow::{bail, Context, Result};
use distill_core::TaskSpec;
use distill_train::{StudentKind, TrainOptions};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Which loop: `banking77` (distil an intent classifier; the default), `mixsnips` (distil a
    /// multilabel tagger: every intent of a multi-intent request), `restaurant8k` (distil a
    /// slot extractor: date, time, party size and name spans) or `mmlu-routing` (learn which
    /// MMLU questions the cheap model answers as well as the premium one, from RouteLLM's
    /// recorded outcomes).
    #[arg(long, default_value = "banking77", value_parser = ["banking77", "mixsnips", "restaurant8k", "mmlu-routing"])]
    pub example: String,
    /// Task spec to run the loop on [default: datasets/<example>/task.toml].
    #[arg(long)]
    pub task: Option<PathBuf>,
    /// Train only the linear student (about 2 minutes on 2 cores instead of about 10).
    #[arg(long)]
    pub fast: bool,
    /// Accuracy of the simulated teacher against the gold labels.
    #[arg(long, default_value_t = 0.94)]
    pub teacher_accuracy: f64,
    /// Premium model whose prices and tokenizer the simulated teacher imitates.
    #[arg(long, default_value = "gpt-4o")]
    pub price_as: String,
    /// Requests per day used for the monthly projection and break-even.
    #[arg(long, default_value_t = 10_000.0)]
    pub volume: f64,
    /// Concurrent requests to the simulated teacher.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Base encoder for the encoder-head student: a local directory or a Hugging Face repo id
    /// (`org/name[@revision]`, from the hub cache or downloaded), as `distill train --base`
    /// takes; the student is skipped when it cannot be found.
    #[arg(long, default_value = distill_train::encoder::DEFAULT_BASE)]
    pub base: String,
    /// Never download the base model (as HF_HUB_OFFLINE=1 does).
    #[arg(long)]
    pub offline: bool,
    /// Where the students go (`<dir>/<task>-linear`, `<dir>/<task>-encoder-head` and, for a
    /// single-label task, their mean `<dir>/<task>-ensemble`).
    #[arg(long, default_value = "models")]
    pub models_dir: PathBuf,
    /// Where the report goes (`<dir>/<task>-quickstart`).
    #[arg(long, default_value = "evals")]
    pub evals_dir: PathBuf,
    /// Threads for training and inference (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

pub fn run(args: Args, g: &Global) -> Result<()> {
    let started = Instant::now();
    let task = args
        .task
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("datasets/{}/task.toml", args.example)));
    let spec = TaskSpec::load(&task).with_context(|| {
        format!(
            "loading the task spec {} (if its data files are missing, run scripts/setup.sh: it \
                 copies or downloads them)",
            task.display()
        )
    })?;
    if spec.route.is_some() {
        return routing(&args, &spec, g, started);
    }
    let train_file = spec
        .input
        .path
        .clone()
        .context("the task spec has no input.path to teach")?;
    let test_file = spec
        .input
        .test_path
        .clone()
        .context("the task spec has no input.test_path to evaluate on")?;
    for f in [&train_file, &test_file] {
        if !f.exists() {
            bail!(
                "{} is missing: run scripts/setup.sh first (it copies or downloads the data)",
                f.display()
            );
        }
    }
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let step = |n: usize, what: &str| eprintln!("\n[{n}/4] {what}");

    // 1. The simulated premium teacher, in-process on a loopback port.
    step(1, "starting the simulated teacher");
    let mut sim_cfg = distill_sim::SimConfig::new(spec.clone());
    sim_cfg.accuracy = args.teacher_accuracy;
    sim_cfg.price_as = args.price_as.clone();
    sim_cfg.seed = args.seed;
    let sim = distill_sim::SimServer::spawn(sim_cfg).context("starting the simulated teacher")?;
    eprintln!(
        "      {} (accuracy {:.2}, priced as {})",
        sim.base_url(),
        args.teacher_accuracy,
        args.price_as
    );

    // 2. Teach: label the training set and the test set through the teacher.
    step(
        2,
        "teaching: labelling the inputs with the (simulated) premium model",
    );
    let dir = spec.path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let teach_spec = spec.clone();
    let rt = tokio::runtime::Runtime::new()?;
    let mut teacher_train = None;
    let mut teacher_test = None;
    for (input, out, slot) in [
        (&train_file, dir.join("teacher.jsonl"), &mut teacher_train),
        (
            &test_file,
            dir.join("teacher-test.jsonl"),
            &mut teacher_test,
        ),
    ] {
        // A finished dataset from an earlier quickstart is reused (the simulated teacher listens
        // on a new port each run, so its answers are not in the response cache); an interrupted
        // one is labelled again: its journal names the earlier run's endpoint, and the
        // simulated teacher's answers cost nothing.
        if out.exists() {
            eprintln!(
                "      {}: reusing the earlier run's labels (delete it to teach again)",
                out.display()
            );
            *slot = Some(out);
            continue;
        }
        let opts = distill_teach::TeachOptions {
            input: Some(input.clone()),
            out: Some(out.clone()),
            base_url: Some(sim.base_url()),
            concurrency: args.concurrency,
            restart: true,
            // The spec's rpm/tpm are the real provider account's limits; the simulation has none.
            rpm: Some(0),
            tpm: Some(0),
            cache_path: g.cache_path(),
            ledger_path: g.ledger_path(),
            progress: !g.quiet,
            ..Default::default()
        };
        let s = rt
            .block_on(distill_teach::run_teach(&teach_spec, opts))
            .with_context(|| format!("teaching {}", input.display()))?;
        eprintln!(
            "      {}: {} labelled ({} from cache, {} invalid, {} failed), ${:.4} spent",
            out.display(),
            s.ok,
            s.cached,
            s.invalid,
            s.failed,
            s.cost_usd
        );
        *slot = Some(out);
    }
    let teacher_train = teacher_train.expect("set above");
    let teacher_test = teacher_test.expect("set above");

    if spec.is_extract() {
        return extraction(
            &args,
            &spec,
            &teacher_train,
            &test_file,
            &teacher_test,
            sim,
            started,
        );
    }

    // 3. Train the students on the teacher's labels.
    step(3, "training students on the teacher's labels");
    let mut kinds = vec![StudentKind::Linear];
    if !args.fast {
        let hub = distill_train::encoder::HubOptions {
            offline: args.offline,
            progress: !g.quiet,
        };
        // The same resolver training uses; a download lands in the hub cache, where training
        // then finds it.
        match distill_train::encoder::resolve_base(&args.base, hub) {
            Ok(_) => kinds.push(StudentKind::EncoderHead),
            Err(e) => eprintln!("      skipping encoder-head: {e}"),
        }
    }
    let mut models = Vec::new();
    for kind in kinds {
        let out = args
            .models_dir
            .join(format!("{}-{}", spec.name, kind.as_str()));
        let opts = TrainOptions {
            out: out.clone(),
            seed: args.seed,
            device: distill_train::select_device("cpu")?,
            threads,
            epochs: None,
            batch_size: None,
            lr: None,
            head_lr_mult: None,
            weight_decay: None,
            max_len: None,
            // The linear student's dev accuracy moves smoothly, so two flat epochs are enough
            // to keep the quickstart quick; the encoder kinds keep their own defaults.
            patience: (kind == StudentKind::Linear).then_some(2),
            class_balanced: false,
            dropout: None,
            base: (kind != StudentKind::Linear).then(|| args.base.clone()),
            offline: args.offline,
            head: None,
            cache_dir: Some(g.embeddings_path()),
            progress: !g.quiet,
            force: false,
        };
        let t = Instant::now();
        let meta = distill_train::train::train(&spec, &teacher_train, kind, opts, 0.1)
            .with_context(|| format!("training the {} student", kind.as_str()))?;
        eprintln!(
            "      {}: dev {}accuracy {:.3} (vs the teacher's labels), {:.1}s",
            out.display(),
            if spec.labels.is_multilabel() {
                "exact-set "
            } else {
                ""
            },
            meta.dev_accuracy,
            t.elapsed().as_secs_f64()
        );
        models.push(out);
    }
    // The two students err on different inputs; their mean is the surer student the cascade
    // wants (no data or training of its own: each member is calibrated already).
    if models.len() >= 2 && !spec.labels.is_multilabel() {
        let out = args.models_dir.join(format!("{}-ensemble", spec.name));
        distill_train::ensemble::build(&models, &out, false)
            .context("building the ensemble of the students")?;
        eprintln!(
            "      {}: the mean of the {} students' calibrated probabilities",
            out.display(),
            models.len()
        );
        models.push(out);
    }

    // 4. Evaluate students and the cascade against gold and teacher labels.
    step(4, "evaluating: quality, cost, break-even, cascade");
    let out = args.evals_dir.join(format!("{}-quickstart", spec.name));
    let mut eo = distill_eval::EvalOptions::new(&out);
    eo.models = models;
    eo.test = Some(test_file);
    eo.teacher_labels = Some(teacher_test);
    eo.volume_per_day = args.volume;
    eo.teacher_price_model = Some(args.price_as.clone());
    eo.ledger = Some(g.ledger_path());
    eo.seed = args.seed;
    eo.device = "cpu".into();
    eo.threads = Some(threads);
    eo.progress = !g.quiet;
    let outcome = distill_eval::run_eval(&spec, &eo).context("evaluating the students")?;
    drop(sim);

    println!("{}", outcome.summary);
    println!("report: {}", outcome.report_html().display());
    println!("        {}", outcome.report_md().display());
    println!("        {}", outcome.metrics_json().display());
    eprintln!(
        "\nquickstart finished in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Steps 3 and 4 of an extract task: the linear tagger on the teacher's spans, then eval.
fn extraction(
    args: &Args,
    spec: &TaskSpec,
    teacher_train: &Path,
    test_file: &Path,
    teacher_test: &Path,
    sim: distill_sim::SimHandle,
    started: Instant,
) -> Result<()> {
    eprintln!("\n[3/4] training the linear tagger on the teacher's spans");
    let model = args.models_dir.join(format!("{}-linear", spec.name));
    let r = distill_train::tagging::model::train_linear(
        spec,
        teacher_train,
        &model,
        true,
        0.1,
        args.seed,
    )
    .context("training the linear tagger")?;
    eprintln!(
        "      {}: dev span F1 {:.3} (vs the teacher's spans), {:.1}s",
        model.display(),
        r.meta.dev_span_f1.unwrap_or(f64::NAN),
        r.seconds
    );
    eprintln!("\n[4/4] evaluating: span F1, the cascade");
    let out = args.evals_dir.join(format!("{}-quickstart", spec.name));
    let e = distill_eval::extract::run(
        spec,
        &model,
        &out,
        &distill_eval::extract::ExtractEvalOptions {
            test: test_file,
            teacher_labels: Some(teacher_test),
            floor: None,
            calibration_fraction: 0.3,
            seed: args.seed,
            force: true,
            device: &distill_train::Device::Cpu,
            volume_per_day: args.volume,
            hardware: distill_eval::cost::HardwarePrices::default(),
            curve: None,
            api: None,
        },
    )
    .context("evaluating the tagger")?;
    drop(sim);
    for (name, q) in [
        ("tagger vs gold ", &e.student_vs_gold),
        ("teacher vs gold", &e.teacher_vs_gold),
    ] {
        if let Some(q) = q {
            println!(
                "{name}: span F1 {:.4} [{:.4}, {:.4}], exact inputs {:.4}",
                q.exact.f1.value, q.exact.f1.lo, q.exact.f1.hi, q.exact_inputs.value
            );
        }
    }
    if let Some(c) = &e.cascade {
        println!(
            "cascade:linear : exact inputs {:.4} on held-out (floor {:.4}, {}), escalating {:.1}% to the teacher",
            c.held_out.quality.value,
            e.floor,
            if c.floor_held { "held" } else { "NOT held" },
            100.0 * c.held_out.escalated_fraction
        );
    }
    if let Some(c) = &e.costs {
        crate::cmd::eval::print_extract_saving(c);
    }
    println!("report: {}", out.join("report.html").display());
    println!("        {}", out.join("report.md").display());
    println!("        {}", out.join("metrics.json").display());
    eprintln!(
        "\nquickstart finished in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The routing loop on recorded outcomes: import, train a linear router, eval against the
/// baselines. No call is made (the outcomes are RouteLLM's recorded ones).
fn routing(args: &Args, spec: &TaskSpec, g: &Global, started: Instant) -> Result<()> {
    let dir = spec.path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let outcomes = dir.join("outcomes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&outcomes)
        .with_context(|| {
            format!(
                "{} is missing: run scripts/setup.sh first (it copies RouteLLM's recorded outcomes)",
                outcomes.display()
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "csv"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!(
            "no outcome CSV files in {}: run scripts/setup.sh",
            outcomes.display()
        );
    }
    let exclude: Vec<PathBuf> = [outcomes.join("contaminated_prompts.jsonl")]
        .into_iter()
        .filter(|p| p.exists())
        .collect();
    let step = |n: usize, what: &str| eprintln!("\n[{n}/3] {what}");
    step(
        1,
        "importing the recorded outcomes of both tiers (no call is made)",
    );
    let report = distill_teach::route::import_outcomes(
        spec,
        &files,
        &distill_teach::route::ImportOptions {
            exclude,
            completion_tokens: 16,
            prices: distill_core::prices::PriceTable::builtin(),
        },
    )?;
    let (train_idx, test_idx) =
        distill_core::route::stratified_split(&report.records, 0.5, args.seed);
    let part =
        |idx: &[usize]| -> Vec<_> { idx.iter().map(|&i| report.records[i].clone()).collect() };
    let (train_file, test_file) = (
        dir.join("routes.train.jsonl"),
        dir.join("routes.test.jsonl"),
    );
    distill_teach::route::write_route_dataset(&train_file, &part(&train_idx))?;
    distill_teach::route::write_route_dataset(&test_file, &part(&test_idx))?;
    eprintln!(
        "      {} prompts from {} files ({} contaminated left out): {} train, {} test",
        report.records.len(),
        report.files,
        report.excluded,
        train_idx.len(),
        test_idx.len()
    );

    step(2, "training a linear router (does the cheap tier pass?)");
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let records = distill_core::route::read_route_records(&train_file)?;
    let model = args.models_dir.join(format!("{}-router-linear", spec.name));
    let mut opts = TrainOptions::new(&model);
    opts.seed = args.seed;
    opts.threads = threads;
    opts.progress = !g.quiet;
    let hash = distill_core::fsutil::sha256_file(&train_file)?;
    let trained =
        distill_train::route::train_router(spec, &records, StudentKind::Linear, &opts, 0.1, &hash)?;
    eprintln!(
        "      {}: {:.1}s",
        model.display(),
        trained.meta.train_wall_s
    );

    step(
        3,
        "evaluating: routed quality and cost against every baseline",
    );
    let out = args.evals_dir.join(format!("{}-quickstart", spec.name));
    let mut eo = distill_eval::route::RouteEvalOptions::new(&test_file, &out);
    eo.routers = vec![model];
    eo.train = Some(train_file);
    eo.seed = args.seed;
    eo.threads = threads;
    eo.volume_per_day = args.volume;
    let outcome = distill_eval::route::run_route_eval(spec, &eo)?;
    println!();
    print!("{}", outcome.summary);
    println!("report: {}", out.join("report.html").display());
    eprintln!("done in {:.0}s", started.elapsed().as_secs_f64());
    Ok(())
}
