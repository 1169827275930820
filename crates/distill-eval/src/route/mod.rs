//! Eval for route tasks: how much of the premium tier's quality a router keeps, and at what
//! share of premium calls and dollars, beside the baselines a user would otherwise pick.
//!
//! On the test route dataset (every tier's outcome per prompt), split seeded and stratified by
//! category into calibration and held-out parts:
//! - each router's curve (quality, premium share, $/request over every threshold) on held-out,
//!   with RouteLLM's PGR, APGR and CPT(20/50/80%) ([`curve`]);
//! - the threshold chosen on calibration: the cheapest whose lower 95% bound of quality meets
//!   the floor (default 95% of the premium tier's calibration quality), or the best quality
//!   within a budget per 1,000 requests; checked on held-out, with the saving vs always-premium;
//! - baselines on the same held-out items: always-cheap, always-premium, random (the straight
//!   line), the oracle, the spec's heuristic (prompt length and keywords) and, with a category
//!   column, the category prior (each category's cheap-tier pass rate on the training file);
//! - router latency for a 500-token prompt and its cost beside the cheap tier's price.

pub mod curve;
pub mod report;

use crate::cost::HardwarePrices;
use crate::error::{EvalError, Result};
use curve::{GapMetrics, Outcomes, Point};
use distill_core::route::{read_route_records, stratified_split, RouteRecord, RouteSpec};
use distill_core::TaskSpec;
use distill_train::route::Router;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub const ROUTE_FORMAT_VERSION: u32 = 1;

/// What `distill eval` on a route task is told.
#[derive(Debug, Clone)]
pub struct RouteEvalOptions {
    pub routers: Vec<PathBuf>,
    pub test: PathBuf,
    /// The training route dataset, for the category-prior baseline.
    pub train: Option<PathBuf>,
    pub out: PathBuf,
    pub force: bool,
    pub calibration_fraction: f64,
    pub seed: u64,
    /// Quality floor as a fraction of the premium tier's calibration quality.
    pub floor_fraction: f64,
    /// Instead of a floor: the best quality within this many USD per 1,000 requests.
    pub budget_per_1000: Option<f64>,
    pub hardware: HardwarePrices,
    pub threads: usize,
    pub batch_size: usize,
    pub volume_per_day: f64,
    /// Single-prompt routing decisions timed per router.
    pub latency_samples: usize,
}

impl RouteEvalOptions {
    pub fn new(test: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        Self {
            routers: vec![],
            test: test.into(),
            train: None,
            out: out.into(),
            force: false,
            calibration_fraction: 0.3,
            seed: 0,
            floor_fraction: 0.95,
            budget_per_1000: None,
            hardware: HardwarePrices::default(),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            batch_size: 64,
            volume_per_day: 10_000.0,
            latency_samples: 100,
        }
    }
}

/// One tier on the held-out items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TierSummary {
    pub name: String,
    pub model: String,
    pub price_model: String,
    pub quality: f64,
    pub cost_per_request_usd: f64,
    /// Grading and answering every test prompt (a one-time cost of making the data).
    pub one_time_usd: f64,
}

/// The threshold chosen on calibration and what it did on held-out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chosen {
    pub threshold: f64,
    /// `floor` (quality ≥ floor, lower bound) or `budget`.
    pub rule: String,
    pub floor_quality: Option<f64>,
    pub calibration: Point,
    pub held_out: Point,
    pub floor_held: Option<bool>,
    /// 1 − cost / always-premium cost, on held-out.
    pub saving_vs_premium: f64,
    pub cost_per_1000_usd: f64,
    pub pgr: f64,
}

/// A router's or a baseline's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub name: String,
    /// `router` or `baseline`.
    pub kind: String,
    pub source: Option<String>,
    /// Held-out curve (fixed policies: one point).
    pub curve: Vec<Point>,
    pub gap: GapMetrics,
    pub chosen: Option<Chosen>,
    /// Routing a 500-token prompt: p50 ms on `threads` threads.
    pub latency_p50_ms: Option<f64>,
    /// Its cost per request as a share of the cheapest tier's price.
    pub cost_vs_cheap_tier: Option<f64>,
}

/// The headline figures, under stable keys (what the quickstart prints).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub router: Option<String>,
    pub apgr: Option<f64>,
    pub cpt50: Option<f64>,
    pub cpt80: Option<f64>,
    pub saving_at_floor: Option<f64>,
    pub premium_share_at_floor: Option<f64>,
    pub quality_at_floor: Option<f64>,
    pub random_apgr: f64,
    pub random_cpt50: Option<f64>,
    pub oracle_apgr: f64,
    pub oracle_cpt50: Option<f64>,
}

/// `metrics.json` of a route eval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteReport {
    pub format_version: u32,
    /// Always `route`.
    pub kind: String,
    pub task: String,
    pub created: String,
    pub distill_version: String,
    pub warnings: Vec<String>,
    pub test: RouteTestInfo,
    pub settings: RouteSettings,
    pub tiers: Vec<TierSummary>,
    pub policies: Vec<Policy>,
    pub summary: Summary,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteTestInfo {
    pub path: String,
    pub n: usize,
    pub n_calibration: usize,
    pub n_held_out: usize,
    /// Records left out because a tier had no verdict.
    pub incomplete: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteSettings {
    pub floor_fraction: f64,
    pub budget_per_1000: Option<f64>,
    pub seed: u64,
    pub calibration_fraction: f64,
    pub volume_per_day: f64,
    pub core_hour_usd: f64,
    pub threads: usize,
}

/// The result of a route eval: the report, the text summary, the files written.
pub struct RouteOutcome {
    pub report: RouteReport,
    pub summary: String,
    pub out: PathBuf,
}

fn outcomes_of(records: &[&RouteRecord]) -> Outcomes {
    Outcomes {
        pass: records
            .iter()
            .map(|r| r.tiers.iter().map(|t| t.passed == Some(true)).collect())
            .collect(),
        cost: records
            .iter()
            .map(|r| r.tiers.iter().map(|t| t.cost_usd).collect())
            .collect(),
    }
}

/// Runs the route eval and writes `metrics.json`, `report.md`, `report.html` and
/// `predictions.jsonl` under `opts.out`.
pub fn run_route_eval(spec: &TaskSpec, opts: &RouteEvalOptions) -> Result<RouteOutcome> {
    let route = spec.route.as_ref().ok_or_else(|| {
        EvalError::Invalid(format!("{} is not a route task", spec.path.display()))
    })?;
    if !(opts.calibration_fraction > 0.0 && opts.calibration_fraction < 1.0) {
        return Err(EvalError::Invalid(format!(
            "--calibration-fraction must be between 0 and 1 (exclusive), got {}",
            opts.calibration_fraction
        )));
    }
    if !(opts.floor_fraction > 0.0 && opts.floor_fraction <= 1.0) {
        return Err(EvalError::Invalid(format!(
            "--quality-floor must be in (0, 1], got {}",
            opts.floor_fraction
        )));
    }
    distill_core::fsutil::check_output_dir(&opts.out, distill_core::fsutil::EVAL_DIR, opts.force)?;
    let mut warnings = Vec::new();
    let all = read_route_records(&opts.test)?;
    let records: Vec<RouteRecord> = all.iter().filter(|r| r.complete()).cloned().collect();
    let incomplete = all.len() - records.len();
    if incomplete > 0 {
        warnings.push(format!(
            "{incomplete} test records without a verdict for every tier were left out"
        ));
    }
    if records.len() < 10 {
        return Err(EvalError::Invalid(format!(
            "{}: {} complete route records; too few to evaluate a router",
            opts.test.display(),
            records.len()
        )));
    }
    for r in &records {
        if r.tiers
            .iter()
            .map(|t| t.tier.as_str())
            .ne(route.tiers.iter().map(|t| t.name.as_str()))
        {
            return Err(EvalError::Invalid(format!(
                "{}: record `{}` has tiers {:?}, the task {:?}",
                opts.test.display(),
                r.id,
                r.tiers.iter().map(|t| &t.tier).collect::<Vec<_>>(),
                route.tiers.iter().map(|t| &t.name).collect::<Vec<_>>()
            )));
        }
    }
    let (cal_idx, held_idx) = stratified_split(&records, opts.calibration_fraction, opts.seed);
    let refs: Vec<&RouteRecord> = records.iter().collect();
    let all_outcomes = outcomes_of(&refs);
    let cal = all_outcomes.select(&cal_idx);
    let held = all_outcomes.select(&held_idx);
    let top = route.tiers.len() - 1;
    let (cheap_q, premium_q) = (held.tier(0).quality, held.tier(top).quality);
    let premium_cost = held.tier(top).cost_per_request_usd;
    let cal_floor = opts.floor_fraction * cal.tier(top).quality;
    let held_floor = opts.floor_fraction * premium_q;
    if premium_q <= cheap_q {
        warnings.push(format!(
            "the top tier ({:.1}%) is not better than the cheapest ({:.1}%) on held-out: there is \
             no gap to recover, and PGR is undefined",
            premium_q * 100.0,
            cheap_q * 100.0
        ));
    }
    let tiers: Vec<TierSummary> = route
        .tiers
        .iter()
        .enumerate()
        .map(|(t, tier)| {
            let p = held.tier(t);
            TierSummary {
                name: tier.name.clone(),
                model: tier.model.clone(),
                price_model: RouteSpec::price_model(tier).to_string(),
                quality: p.quality,
                cost_per_request_usd: p.cost_per_request_usd,
                one_time_usd: records
                    .iter()
                    .map(|r| r.tiers[t].cost_usd + r.tiers[t].judge_cost_usd)
                    .sum(),
            }
        })
        .collect();
    if tiers.iter().all(|t| t.cost_per_request_usd == 0.0) {
        warnings
            .push("no tier has a price (price_as / the price table): dollar figures are $0".into());
    }

    let choose_on = |scores: &[Vec<f32>]| -> Option<Chosen> {
        let cal_scores: Vec<Vec<f32>> = cal_idx.iter().map(|&i| scores[i].clone()).collect();
        let held_scores: Vec<Vec<f32>> = held_idx.iter().map(|&i| scores[i].clone()).collect();
        let cal_curve = curve::sweep(&cal_scores, &cal);
        let budget = opts.budget_per_1000.map(|b| b / 1000.0);
        let pick = curve::choose(&cal_curve, Some(cal_floor), budget)?;
        let h = held.evaluate(&curve::decide(&held_scores, pick.threshold), pick.threshold);
        Some(Chosen {
            threshold: pick.threshold,
            rule: if budget.is_some() { "budget" } else { "floor" }.into(),
            floor_quality: budget.is_none().then_some(cal_floor),
            calibration: pick,
            held_out: h,
            floor_held: budget.is_none().then_some(h.quality >= held_floor),
            saving_vs_premium: if premium_cost > 0.0 {
                1.0 - h.cost_per_request_usd / premium_cost
            } else {
                f64::NAN
            },
            cost_per_1000_usd: h.cost_per_request_usd * 1000.0,
            pgr: curve::pgr(h.quality, cheap_q, premium_q),
        })
    };
    let policy = |name: &str, kind: &str, source: Option<String>, curve: Vec<Point>| Policy {
        name: name.into(),
        kind: kind.into(),
        source,
        gap: curve::gap_metrics(&curve, cheap_q, premium_q),
        curve,
        chosen: None,
        latency_p50_ms: None,
        cost_vs_cheap_tier: None,
    };

    // Routers.
    let mut policies = Vec::new();
    let mut predictions: BTreeMap<String, Vec<Vec<f32>>> = BTreeMap::new();
    let prompts: Vec<&str> = records.iter().map(|r| r.text.as_str()).collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads.max(1))
        .build()
        .map_err(|e| EvalError::Other(format!("thread pool: {e}")))?;
    let names = crate::run::model_names(&opts.routers);
    for (dir, name) in opts.routers.iter().zip(names) {
        let router = Router::load(dir, &candle_core::Device::Cpu)?;
        router.check_tiers(route)?;
        let scores = pool.install(|| router.pass_probabilities(&prompts, opts.batch_size))?;
        let held_scores: Vec<Vec<f32>> = held_idx.iter().map(|&i| scores[i].clone()).collect();
        let mut p = policy(
            &name,
            "router",
            Some(dir.display().to_string()),
            curve::sweep(&held_scores, &held),
        );
        p.chosen = choose_on(&scores);
        let ms = pool.install(|| router_latency(&router, opts.latency_samples))?;
        let per_request = ms / 1000.0 * opts.hardware.usd_per_second("cpu", opts.threads);
        p.latency_p50_ms = Some(ms);
        p.cost_vs_cheap_tier = (tiers[0].cost_per_request_usd > 0.0)
            .then(|| per_request / tiers[0].cost_per_request_usd);
        if p.chosen.is_none() {
            warnings.push(format!(
                "router `{name}`: no threshold met the floor on calibration: the lower 95% bound of \
                 even all-top-tier quality is below {:.1}% on {} calibration prompts (a larger set, or a \
                 lower --quality-floor, or --budget-per-1000)",
                cal_floor * 100.0,
                cal_idx.len()
            ));
        }
        policies.push(p);
        predictions.insert(name, scores);
    }

    // Baselines.
    let fixed = |t: usize| vec![held.tier(t)];
    policies.push(policy(
        &format!("always {}", route.tiers[0].name),
        "baseline",
        None,
        fixed(0),
    ));
    policies.push(policy(
        &format!("always {}", route.tiers[top].name),
        "baseline",
        None,
        fixed(top),
    ));
    policies.push(policy(
        "random",
        "baseline",
        None,
        curve::random_line(&held),
    ));
    if route.tiers.len() == 2 {
        policies.push(policy("oracle", "baseline", None, curve::oracle(&held)));
    }
    if let Some(h) = heuristic_scores(route, &records) {
        let held_scores: Vec<Vec<f32>> = held_idx.iter().map(|&i| h[i].clone()).collect();
        let mut p = policy(
            "heuristic",
            "baseline",
            None,
            vec![held.evaluate(&curve::decide(&held_scores, 0.5), 0.5)],
        );
        p.chosen = None;
        policies.push(p);
    }
    match category_prior(route, &records, opts.train.as_deref())? {
        Some(scores) => {
            let held_scores: Vec<Vec<f32>> = held_idx.iter().map(|&i| scores[i].clone()).collect();
            let mut p = policy(
                "category prior",
                "baseline",
                None,
                curve::sweep(&held_scores, &held),
            );
            p.chosen = choose_on(&scores);
            policies.push(p);
        }
        None if records.iter().any(|r| r.category.is_some()) && opts.train.is_none() => warnings
            .push("no --train route dataset: the category-prior baseline is not computed".into()),
        None => {}
    }

    let router0 = policies.iter().find(|p| p.kind == "router");
    let random = policies.iter().find(|p| p.name == "random");
    let oracle = policies.iter().find(|p| p.name == "oracle");
    let summary = Summary {
        router: router0.map(|p| p.name.clone()),
        apgr: router0.map(|p| p.gap.apgr),
        cpt50: router0.and_then(|p| p.gap.cpt50),
        cpt80: router0.and_then(|p| p.gap.cpt80),
        saving_at_floor: router0.and_then(|p| p.chosen.as_ref().map(|c| c.saving_vs_premium)),
        premium_share_at_floor: router0
            .and_then(|p| p.chosen.as_ref().map(|c| c.held_out.premium_share)),
        quality_at_floor: router0.and_then(|p| p.chosen.as_ref().map(|c| c.held_out.quality)),
        random_apgr: random.map_or(0.5, |p| p.gap.apgr),
        random_cpt50: random.and_then(|p| p.gap.cpt50),
        oracle_apgr: oracle.map_or(f64::NAN, |p| p.gap.apgr),
        oracle_cpt50: oracle.and_then(|p| p.gap.cpt50),
    };
    let report = RouteReport {
        format_version: ROUTE_FORMAT_VERSION,
        kind: "route".into(),
        task: spec.name.clone(),
        created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        distill_version: env!("CARGO_PKG_VERSION").into(),
        warnings,
        test: RouteTestInfo {
            path: opts.test.display().to_string(),
            n: records.len(),
            n_calibration: cal_idx.len(),
            n_held_out: held_idx.len(),
            incomplete,
        },
        settings: RouteSettings {
            floor_fraction: opts.floor_fraction,
            budget_per_1000: opts.budget_per_1000,
            seed: opts.seed,
            calibration_fraction: opts.calibration_fraction,
            volume_per_day: opts.volume_per_day,
            core_hour_usd: opts.hardware.core_hour_usd,
            threads: opts.threads,
        },
        tiers,
        policies,
        summary,
    };
    let mut split_of = vec!["held_out"; records.len()];
    for &i in &cal_idx {
        split_of[i] = "calibration";
    }
    let mut lines = String::new();
    for (i, r) in records.iter().enumerate() {
        let scores: BTreeMap<&str, &Vec<f32>> = predictions
            .iter()
            .map(|(k, v)| (k.as_str(), &v[i]))
            .collect();
        let line = serde_json::json!({
            "id": r.id, "split": split_of[i], "category": r.category,
            "passed": r.tiers.iter().map(|t| t.passed == Some(true)).collect::<Vec<_>>(),
            "cost_usd": r.tiers.iter().map(|t| t.cost_usd).collect::<Vec<_>>(),
            "scores": scores,
        });
        lines.push_str(&line.to_string());
        lines.push('\n');
    }
    let md = report::markdown(&report);
    let html = report::html(&report);
    let json = serde_json::to_string_pretty(&report)
        .map_err(|e| EvalError::Other(format!("metrics.json: {e}")))?;
    distill_core::fsutil::replace_dir(
        &opts.out,
        distill_core::fsutil::EVAL_DIR,
        opts.force,
        |dir| {
            use distill_core::fsutil::write_atomic;
            write_atomic(dir.join("predictions.jsonl"), lines.as_bytes())?;
            write_atomic(dir.join("report.md"), md.as_bytes())?;
            write_atomic(dir.join("report.html"), html.as_bytes())?;
            write_atomic(dir.join("metrics.json"), json.as_bytes())?;
            Ok::<(), EvalError>(())
        },
    )?;
    Ok(RouteOutcome {
        summary: report::summary_text(&report),
        report,
        out: opts.out.clone(),
    })
}

/// p50 milliseconds of one routing decision for a 500-token prompt.
fn router_latency(router: &Router, samples: usize) -> Result<f64> {
    let words = [
        "the",
        "quarterly",
        "report",
        "shows",
        "revenue",
        "growth",
        "across",
        "regions",
        "while",
        "costs",
        "rose",
        "because",
        "of",
        "supply",
        "constraints",
        "and",
        "new",
        "hires",
    ];
    // ~500 tokens of English-like text.
    let prompt: String = (0..400)
        .map(|i| words[i % words.len()])
        .collect::<Vec<_>>()
        .join(" ");
    router.pass_probabilities(&[prompt.as_str()], 1)?;
    let mut ms = Vec::with_capacity(samples.max(1));
    for _ in 0..samples.max(1) {
        let t = Instant::now();
        router.pass_probabilities(&[prompt.as_str()], 1)?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(crate::cost::latency(ms).map_or(f64::NAN, |l| l.p50_ms))
}

/// The playbook's heuristic as a score: 0 (send up) when the prompt is long or holds a
/// keyword, else 1 (stay cheap), for every routed tier.
fn heuristic_scores(route: &RouteSpec, records: &[RouteRecord]) -> Option<Vec<Vec<f32>>> {
    let o = &route.options;
    if o.long_prompt_tokens.is_none() && o.keywords.is_empty() {
        return None;
    }
    let keywords: Vec<String> = o.keywords.iter().map(|k| k.to_lowercase()).collect();
    let bpe = tiktoken_rs::o200k_base().ok();
    let routed = route.tiers.len() - 1;
    Some(
        records
            .iter()
            .map(|r| {
                let long = o.long_prompt_tokens.is_some_and(|n| {
                    let tokens = bpe
                        .as_ref()
                        .map(|b| b.encode_ordinary(&r.text).len() as u64)
                        .unwrap_or(r.text.len() as u64 / 4);
                    tokens >= n
                });
                let lower = r.text.to_lowercase();
                let hard = long || keywords.iter().any(|k| lower.contains(k.as_str()));
                vec![if hard { 0.0 } else { 1.0 }; routed]
            })
            .collect(),
    )
}

/// Each category's pass rate per routed tier on the training file (the overall rate for a
/// category it lacks), as every record's score.
fn category_prior(
    route: &RouteSpec,
    records: &[RouteRecord],
    train: Option<&Path>,
) -> Result<Option<Vec<Vec<f32>>>> {
    let Some(train) = train else { return Ok(None) };
    if records.iter().all(|r| r.category.is_none()) {
        return Ok(None);
    }
    let routed = route.tiers.len() - 1;
    let train: Vec<RouteRecord> = read_route_records(train)?
        .into_iter()
        .filter(|r| r.complete())
        .collect();
    let mut by_cat: BTreeMap<String, (Vec<usize>, usize)> = BTreeMap::new();
    let mut overall = (vec![0usize; routed], 0usize);
    for r in &train {
        let e = by_cat
            .entry(r.category.clone().unwrap_or_default())
            .or_insert_with(|| (vec![0; routed], 0));
        for t in 0..routed {
            let p = usize::from(r.tiers[t].passed == Some(true));
            e.0[t] += p;
            overall.0[t] += p;
        }
        e.1 += 1;
        overall.1 += 1;
    }
    let rate = |c: &(Vec<usize>, usize)| -> Vec<f32> {
        c.0.iter().map(|&k| k as f32 / c.1.max(1) as f32).collect()
    };
    Ok(Some(
        records
            .iter()
            .map(|r| {
                by_cat
                    .get(r.category.as_deref().unwrap_or_default())
                    .map(rate)
                    .unwrap_or_else(|| rate(&overall))
            })
            .collect(),
    ))
}
