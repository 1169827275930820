//! `distill serve`: students behind an OpenAI-compatible API, escalating unsure inputs. Also
//! the server behind `distill gateway`, which adds routes for free-form traffic to the same
//! server (see [`run_server`]).

use crate::Global;
use anyhow::{bail, Context};
use distill_core::{Provider, TaskSpec};
use distill_serve::batcher::BatchOptions;
use distill_serve::budget::Budgets;
use distill_serve::cache::{Cache, MemoryCache, RedisCache};
use distill_serve::student::AnswerShape;
use distill_serve::teach_escalator::TeachEscalator;
use distill_serve::{
    Classifier, CostEstimator, Escalator, ModelCard, ModelEntry, ServedStudent, Server,
    ServerOptions, Tagger,
};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A model directory to serve (a classifier, or an extract task's tagger), as DIR (named
    /// after the directory) or NAME=DIR. Repeatable.
    /// `distill serve` needs at least one; a gateway serves these beside its routes (a
    /// `policy = "student"` route answers through one).
    #[arg(long = "model", value_name = "[NAME=]DIR")]
    pub models: Vec<String>,
    /// Task spec(s) giving the teacher's prompts, labels (or slots and context) and case
    /// handling; matched to models by task name (a single spec applies to every model).
    #[arg(long = "task", value_name = "TASK.toml")]
    pub tasks: Vec<PathBuf>,
    /// Confidence below which an input goes to the teacher: a number in [0, 1] for every model,
    /// or an eval metrics.json: each model takes the threshold of its own cascade (matched by
    /// the model directory's content fingerprint); a model the file has no cascade for is
    /// refused.
    #[arg(long, default_value = "0.7", value_name = "P|metrics.json")]
    pub threshold: String,
    /// Teacher for escalations as PROVIDER:MODEL (openai:gpt-4o, anthropic:claude-sonnet-4-5),
    /// or `none`. Default: the task spec's teacher when --task is given, else none.
    #[arg(long, value_name = "PROVIDER:MODEL")]
    pub escalate_to: Option<String>,
    /// Base URL for the teacher (e.g. the sim-teacher's http://127.0.0.1:8089/v1).
    #[arg(long, value_name = "URL")]
    pub teacher_base_url: Option<String>,
    /// Seconds to wait for the teacher before answering from the student (marked degraded).
    #[arg(long, default_value_t = 10.0)]
    pub teacher_timeout_s: f64,
    /// Address to bind. The default keeps the server private to this machine.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// File of accepted bearer keys, one per line; without it /v1 is open.
    #[arg(long, value_name = "FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// Answer cache: memory, off, or redis://HOST:PORT (shared between replicas).
    #[arg(long, default_value = "memory")]
    pub cache: String,
    /// How long a student's answer is kept (gateway routes set their own).
    #[arg(long, default_value_t = 86_400)]
    pub cache_ttl_s: u64,
    /// Entry bound of the in-process cache.
    #[arg(long, default_value_t = 100_000)]
    pub cache_max_entries: usize,
    /// Escalation spend caps: TAG=daily:USD,monthly:USD (`*` = all tags together; untagged
    /// requests are `default`), or a budgets .toml file. Repeatable.
    #[arg(long = "budget", value_name = "TAG=daily:USD,monthly:USD|FILE.toml")]
    pub budgets: Vec<String>,
    /// URL that receives a JSON POST the first time each budget cap (a tag's or a gateway
    /// route's) is reached.
    #[arg(long, value_name = "URL")]
    pub alert_webhook: Option<String>,
    /// Fraction of confidently answered requests also sent to the teacher to measure drift.
    #[arg(long, default_value_t = 0.0)]
    pub shadow_rate: f64,
    /// Requests per second accepted on /v1 (429 beyond it).
    #[arg(long, value_name = "RPS")]
    pub rate_limit: Option<f64>,
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Input limit in the model's tokens when the model declares no max_len; for a model that
    /// escalates, also the limit in the teacher's tokens (every escalation pays for them), with
    /// at most 16 characters per token checked first.
    #[arg(long, default_value_t = 2048)]
    pub max_input_tokens: usize,
    /// Truncate over-long inputs instead of refusing them with 422.
    #[arg(long)]
    pub truncate: bool,
    /// Most inputs per forward pass.
    #[arg(long, default_value_t = 32)]
    pub max_batch: usize,
    /// Milliseconds the first request of a batch waits for more (0: batch only what is queued).
    #[arg(long, default_value_t = 0.0)]
    pub batch_wait_ms: f64,
    /// Inference threads per model (default: one per core for linear students, one for encoder
    /// students, whose forward pass already uses every core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Most inputs in one /v1/classify request.
    #[arg(long, default_value_t = 256)]
    pub max_classify_inputs: usize,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

fn parse_model_arg(s: &str) -> (String, PathBuf) {
    match s.split_once('=') {
        Some((name, dir)) if !name.is_empty() && !name.contains('/') => {
            (name.to_string(), PathBuf::from(dir))
        }
        _ => {
            let dir = PathBuf::from(s);
            let name = dir
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("model")
                .to_string();
            (name, dir)
        }
    }
}

/// Loads a model directory for serving: an extraction tagger or a classifier.
fn load_served(
    dir: &Path,
    device: &distill_train::Device,
) -> anyhow::Result<Arc<dyn ServedStudent>> {
    if distill_train::tagging::model::is_tagger_dir(dir) {
        return Ok(Arc::new(Tagger::load(dir, device)?));
    }
    Ok(Arc::new(Classifier::new(Arc::from(
        distill_train::load_student(dir, device)?,
    ))))
}

/// The task spec a model escalates with must ask for the model's kind of answer; it should
/// name the same labels (or slots) and context.
fn check_task_fits(t: &TaskSpec, card: &ModelCard, name: &str) -> anyhow::Result<()> {
    let spans = card.shape == AnswerShape::Spans;
    if spans != t.is_extract() {
        bail!(
            "model `{name}` ({}) answers {} but task `{}` ({}) is a {} task: give the task \
             the model was trained on",
            card.kind,
            if spans { "spans" } else { "labels" },
            t.name,
            t.path.display(),
            serde_json::to_value(t.kind)?.as_str().unwrap_or("other"),
        );
    }
    let what = if spans { "slots" } else { "labels" };
    if t.labels.names != card.notation.names {
        tracing::warn!(
            "model `{name}` and task `{}` list different {what}; teacher answers outside the \
             model's {what} are refused",
            t.name
        );
    }
    if t.input.context_columns != card.context_columns {
        tracing::warn!(
            "model `{name}` reads context [{}] but task `{}` shows the teacher [{}]",
            card.context_columns.join(", "),
            t.name,
            t.input.context_columns.join(", "),
        );
    }
    Ok(())
}

/// A spec for a model served without --task: its labels (or slots and context), the
/// default prompts, the given teacher.
fn synthesized_spec(card: &ModelCard, provider: Provider, model: &str) -> anyhow::Result<TaskSpec> {
    // JSON strings are valid TOML basic strings, so serde_json quotes safely here.
    let set = &card.notation;
    let (kind, input, outputs, labels_extra) = match (&set.set_separator, card.shape) {
        (_, AnswerShape::Spans) => (
            "extract",
            format!(
                "context_columns = {}\n",
                serde_json::to_string(&card.context_columns)?
            ),
            "slots",
            String::new(),
        ),
        (Some(sep), _) => (
            "multilabel",
            format!("gold_separator = {}\n", serde_json::to_string(sep)?),
            "labels",
            format!("allow_empty = {}\n", set.allow_empty),
        ),
        (None, _) => (
            "classify",
            String::new(),
            "labels",
            match &set.out_of_scope {
                Some(l) => format!("out_of_scope = {}\n", serde_json::to_string(l)?),
                None => String::new(),
            },
        ),
    };
    let text = format!(
        "name = {}\nkind = \"{kind}\"\n[input]\n{input}[{outputs}]\nvalues = {}\n{labels_extra}[teacher]\nprovider = \"{}\"\nmodel = {}\n",
        serde_json::to_string(&card.task)?,
        serde_json::to_string(&set.names)?,
        provider.as_str(),
        serde_json::to_string(model)?,
    );
    Ok(TaskSpec::parse(&text, Path::new("<distill serve>"))?)
}

fn parse_escalate_to(s: &str) -> anyhow::Result<(Provider, String)> {
    let (p, m) = s.split_once(':').with_context(|| {
        format!("--escalate-to `{s}`: expected PROVIDER:MODEL, e.g. openai:gpt-4o")
    })?;
    let provider = match p {
        "openai" => Provider::Openai,
        "anthropic" => Provider::Anthropic,
        other => bail!("--escalate-to: unknown provider `{other}` (openai or anthropic)"),
    };
    if m.trim().is_empty() {
        bail!("--escalate-to `{s}`: the model name is empty");
    }
    Ok((provider, m.to_string()))
}

pub fn run(args: Args, g: &Global) -> anyhow::Result<()> {
    if args.models.is_empty() {
        bail!("--model: serve at least one model directory (free-form traffic: distill gateway --config gateway.toml)");
    }
    run_server(args, None, g)
}

/// A gateway's routes, to serve beside (or instead of) students.
pub struct GatewaySetup {
    pub config_path: PathBuf,
    pub config: distill_serve::gateway::config::GatewayConfig,
}

/// `distill serve`, and `distill gateway` with its routes: one server either way.
pub fn run_server(args: Args, gateway: Option<GatewaySetup>, g: &Global) -> anyhow::Result<()> {
    let name = if gateway.is_some() {
        "gateway"
    } else {
        "serve"
    };
    if !(0.0..=1.0).contains(&args.shadow_rate) {
        bail!(
            "--shadow-rate must be between 0 and 1, got {}",
            args.shadow_rate
        );
    }
    let thresholds = distill_serve::threshold::ThresholdSource::parse(&args.threshold)?;
    let default_threshold = match thresholds {
        distill_serve::threshold::ThresholdSource::Fixed(t) => t,
        _ => 0.7,
    };
    let tasks: Vec<TaskSpec> = args
        .tasks
        .iter()
        .map(TaskSpec::load)
        .collect::<Result<_, _>>()?;
    let escalate_to = match args.escalate_to.as_deref() {
        Some("none") => None,
        Some(s) => Some(parse_escalate_to(s)?),
        None => None,
    };
    let escalate = match args.escalate_to.as_deref() {
        Some("none") => false,
        Some(_) => true,
        None => !tasks.is_empty(),
    };
    let device = distill_train::select_device(&args.device)?;
    let prices = distill_core::prices::PriceTable::builtin();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("distill-serve")
        .build()?;

    let mut entries = Vec::new();
    let mut described = Vec::new();
    for m in &args.models {
        let (name, dir) = parse_model_arg(m);
        let student = load_served(&dir, &device).with_context(|| format!("--model {m}"))?;
        let card = student.card().clone();
        let task = tasks
            .iter()
            .find(|t| t.name == card.task)
            .or(if tasks.len() == 1 {
                tasks.first()
            } else {
                None
            });
        if let Some(t) = task {
            check_task_fits(t, &card, &name)?;
        }
        let mut spec = match (task, &escalate_to) {
            (Some(t), _) => t.clone(),
            (None, Some((p, model))) => synthesized_spec(&card, *p, model)?,
            (None, None) => synthesized_spec(&card, Provider::Openai, "gpt-4o")?,
        };
        if let Some((p, model)) = &escalate_to {
            spec.teacher.provider = *p;
            spec.teacher.model = model.clone();
        }
        if let Some(url) = &args.teacher_base_url {
            spec.teacher.base_url = Some(url.clone());
        }
        spec.teacher.timeout_s = args.teacher_timeout_s.ceil().max(1.0) as u64;
        let escalator: Option<Arc<dyn Escalator>> = if escalate {
            let client = distill_teach::TeacherClient::new(
                &spec,
                distill_teach::ClientOptions {
                    base_url: args.teacher_base_url.clone(),
                    cache_path: Some(g.cache_path()),
                    ledger_path: Some(g.ledger_path()),
                    // The server answers degraded rather than keep a user waiting through backoff.
                    max_retries: Some(1),
                    backoff_base: Some(Duration::from_millis(100)),
                    ..Default::default()
                },
            )
            .with_context(|| format!("teacher for model `{name}`"))?;
            Some(Arc::new(
                TeachEscalator::new(client).answering_in(card.notation.clone()),
            ))
        } else {
            None
        };
        let estimator = CostEstimator::new(&spec, prices.get(&spec.teacher.model).cloned());
        let threshold = thresholds.for_model(&name, &dir)?;
        described.push(format!(
            "{name} ({}, {} {}, threshold {threshold:.3}{})",
            card.kind,
            card.notation.names.len(),
            if card.shape == AnswerShape::Spans {
                "slots"
            } else {
                "labels"
            },
            escalator
                .as_ref()
                .map(|e| format!(", escalates to {}", e.teacher_model()))
                .unwrap_or_default()
        ));
        entries.push(ModelEntry {
            name,
            student,
            escalator,
            estimator,
            case_insensitive: task.is_some_and(|t| t.case_insensitive),
            threshold: Some(threshold),
        });
    }

    let ttl = Duration::from_secs(args.cache_ttl_s);
    let cache = match args.cache.as_str() {
        "memory" => Cache::Memory(MemoryCache::new(ttl, args.cache_max_entries)),
        "off" | "none" => Cache::Off,
        url => {
            let r = RedisCache::new(url, ttl)?;
            // Redis being down must not keep the service down: answer uncached and reconnect,
            // as when it goes away later.
            if let Err(e) = rt.block_on(r.check()) {
                tracing::warn!(
                    "--cache {url}: cannot reach Redis at {} ({e}); answering uncached and \
                     reconnecting in the background",
                    r.addr()
                );
            }
            Cache::Redis(Box::new(r))
        }
    };
    let shadow = if args.shadow_rate > 0.0 && escalate {
        Some(distill_serve::shadow::ShadowRecorder::open(
            &g.state_dir.join("shadow.db"),
        )?)
    } else {
        None
    };
    let api_keys = args
        .api_keys_file
        .as_deref()
        .map(distill_serve::auth::ApiKeys::load)
        .transpose()?;
    let defaults = BatchOptions::default();
    let opts = ServerOptions {
        threshold: default_threshold,
        batch: BatchOptions {
            max_batch: args.max_batch.max(1),
            max_wait: Duration::from_secs_f64(args.batch_wait_ms.max(0.0) / 1000.0),
            workers: args.workers.unwrap_or(0),
            queue: defaults.queue,
        },
        cache,
        budgets: Budgets::parse(&args.budgets)?,
        alert_webhook: args.alert_webhook.clone(),
        shadow_rate: args.shadow_rate,
        shadow,
        api_keys,
        rate_limit: args.rate_limit,
        max_body_bytes: args.max_body_bytes,
        max_input_tokens: args.max_input_tokens,
        truncate: args.truncate,
        teacher_timeout: Duration::from_secs_f64(args.teacher_timeout_s.max(0.001)),
        max_classify_inputs: args.max_classify_inputs,
        gateway: None,
    };
    let mut opts = opts;
    if let Some(setup) = &gateway {
        let gw = distill_serve::gateway::Gateway::new(
            &setup.config,
            &distill_serve::gateway::GatewayOptions {
                ledger_path: Some(g.ledger_path()),
                prices: Some(prices.clone()),
                backoff_base: None,
            },
        )
        .with_context(|| format!("{}", setup.config_path.display()))?;
        for (key, caps) in gw.budget_caps() {
            opts.budgets = opts.budgets.with_cap(key, caps);
        }
        for r in &gw.routes {
            let answered_by = match r.student() {
                Some(student) => student.to_string(),
                None => std::iter::once(r.tier)
                    .chain(r.rules_tiers())
                    .map(|t| gw.tiers[t].name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            };
            described.push(format!(
                "route {} ({}: {}; models {})",
                r.cfg.name,
                r.policy_name(),
                answered_by,
                if r.cfg.models.is_empty() {
                    "any".to_string()
                } else {
                    r.cfg.models.join(", ")
                }
            ));
        }
        opts.gateway = Some(Arc::new(gw));
    }
    let server = Server::new(entries, opts)?;
    let addr: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .or_else(|_| {
            std::net::ToSocketAddrs::to_socket_addrs(&(args.host.as_str(), args.port))
                .ok()
                .and_then(|mut a| a.next())
                .context("no address")
        })
        .with_context(|| format!("--host {}: not an address", args.host))?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        if !g.quiet {
            eprintln!(
                "distill {name}: cache {}, serving: {}",
                server.state().cache_kind(),
                described.join("; ")
            );
        }
        // Scripts wait for this line (and parse the port when --port 0).
        eprintln!("distill {name}: listening on http://{local}");
        server.serve(listener, shutdown_signal()).await?;
        eprintln!("distill {name}: stopped");
        anyhow::Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
