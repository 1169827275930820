//! The gateway: one OpenAI-compatible endpoint that routes, caches, caps and meters all of an
//! app's LLM traffic, not just the tasks a student was trained for.
//!
//! It is not a second server. Its routes live in serve's [`crate::server::AppState`] beside the
//! served students: the same HTTP layer, OpenAI-shaped errors, auth, body and rate limits, the
//! same [`crate::cache::Cache`] (memory or Redis), [`crate::budget::Budgets`] with their
//! webhook alerts, and the same `/metrics`. A request whose `model` is a served student is
//! answered by it (with its cascade); any other is matched against the routes (by `model`
//! alias and `X-Distill-Tag`) and relayed to a tier through the teach crate's
//! [`distill_teach::TeacherClient`] (keys from the environment, retries, rate limits, one
//! ledger row per upstream call).

mod anthropic;
pub mod config;
mod policy;
pub(crate) mod relay;
mod stream;

use crate::budget::Caps;
use crate::error::{Result, ServeError};
use config::{GatewayConfig, OnBudget, Policy, RouteConfig, ThresholdSource, TierConfig};
use distill_core::prices::{ModelPrice, PriceTable};
use distill_core::Usage;
use distill_teach::{ClientOptions, TeacherClient};
use policy::Rule;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// One upstream model and its client.
pub struct Tier {
    pub name: String,
    pub model: String,
    /// Anthropic tiers get requests and give answers through [`anthropic`]'s translation.
    pub provider: distill_core::Provider,
    pub client: TeacherClient,
    /// Index of the tier asked when this one gives up.
    pub fallback: Option<usize>,
    /// Per-chunk wait for streams.
    pub timeout: Duration,
    price: Option<ModelPrice>,
}

impl Tier {
    pub fn cost(&self, usage: &Usage) -> f64 {
        self.price
            .as_ref()
            .map(|p| p.cost(usage, false))
            .unwrap_or(0.0)
    }
    /// Dollars per million input plus output tokens: how tiers are ranked by price.
    fn rank_price(&self) -> f64 {
        self.price
            .as_ref()
            .map(|p| p.input + p.output)
            .unwrap_or(0.0)
    }
}

/// One route, compiled.
pub struct Route {
    pub cfg: RouteConfig,
    /// The tier when no rule matches (`fixed`: always).
    pub tier: usize,
    /// The tier savings are measured against.
    pub premium: usize,
    /// Where an over-budget route answers from.
    pub cheapest: usize,
    rules: Vec<Rule>,
    pub(crate) router: Option<RouterPolicy>,
}

/// A `router` route's trained router and how its tiers map onto the gateway's.
pub(crate) struct RouterPolicy {
    pub(crate) router: Arc<distill_train::route::Router>,
    /// Gateway tier per router tier, cheapest first.
    pub(crate) tiers: Vec<usize>,
    pub(crate) threshold: f64,
}

impl Route {
    /// A `student` route's served model.
    pub fn student(&self) -> Option<&str> {
        match self.cfg.policy {
            Policy::Student => self.cfg.student.as_deref(),
            _ => None,
        }
    }
    /// The key its budget is kept under in [`crate::budget::Budgets`].
    pub fn budget_key(&self) -> String {
        format!("route:{}", self.cfg.name)
    }
    pub fn policy_name(&self) -> &'static str {
        match self.cfg.policy {
            Policy::Fixed => "fixed",
            Policy::Rules => "rules",
            Policy::Router => "router",
            Policy::Student => "student",
        }
    }
    pub fn on_budget(&self) -> OnBudget {
        self.cfg.on_budget
    }
    /// The tiers its rules or its router can choose.
    pub fn rules_tiers(&self) -> impl Iterator<Item = usize> + '_ {
        self.rules
            .iter()
            .map(|r| r.tier)
            .chain(self.router.iter().flat_map(|r| r.tiers.iter().copied()))
    }
    /// A rule compares prompt lengths in tokens.
    pub(crate) fn counts_tokens(&self) -> bool {
        self.rules.iter().any(|r| r.counts_tokens())
    }
    /// The router's threshold, for a `router` route.
    pub fn router_threshold(&self) -> Option<f64> {
        self.router.as_ref().map(|r| r.threshold)
    }
}

pub struct Gateway {
    pub tiers: Vec<Tier>,
    pub routes: Vec<Route>,
    /// Counts prompts for rules and ledger estimates (o200k, as gpt-4o counts).
    tokenizer: distill_teach::dry_run::Tokenizer,
    /// Paid calls and settlements running detached from their client (see [`Self::drain`]).
    pub(crate) detached: tokio_util::task::TaskTracker,
    writer: Option<Arc<distill_teach::ledger_writer::LedgerWriter>>,
}

/// What the gateway needs from the command line.
#[derive(Debug, Clone, Default)]
pub struct GatewayOptions {
    /// Spend ledger database; `None` records nothing.
    pub ledger_path: Option<PathBuf>,
    /// Price table; the built-in one when `None`.
    pub prices: Option<PriceTable>,
    /// First retry delay (default 250 ms), for tests.
    pub backoff_base: Option<Duration>,
}

impl Gateway {
    pub fn new(cfg: &GatewayConfig, opts: &GatewayOptions) -> Result<Self> {
        let prices = opts.prices.clone().unwrap_or_else(PriceTable::builtin);
        // One batching writer for every tier: two ledger changes per call, committed together.
        let writer = match &opts.ledger_path {
            Some(p) => Some(distill_teach::ledger_writer::LedgerWriter::start(Arc::new(
                distill_core::ledger::Ledger::open(p)?,
            ))),
            None => None,
        };
        let index = |name: &str| cfg.tiers.iter().position(|t| t.name == name);
        let mut tiers = Vec::new();
        for t in &cfg.tiers {
            let client = TeacherClient::new(
                &tier_spec(t),
                ClientOptions {
                    base_url: t.base_url.clone(),
                    provider: Some(t.provider),
                    model: Some(t.model.clone()),
                    api_key: None,
                    cache_path: None,
                    ledger_path: None,
                    ledger_writer: writer.clone(),
                    prices: Some(prices.clone()),
                    price_as: t.price_as.clone(),
                    max_retries: Some(t.max_retries),
                    backoff_base: opts.backoff_base,
                },
            )
            .map_err(|e| ServeError::config(format!("tier `{}`", t.name), e.to_string()))?;
            let price = prices
                .get(t.price_as.as_deref().unwrap_or(&t.model))
                .cloned();
            tiers.push(Tier {
                name: t.name.clone(),
                model: t.model.clone(),
                provider: t.provider,
                client,
                fallback: t.fallback.as_deref().and_then(index),
                timeout: Duration::from_secs(t.timeout_s),
                price,
            });
        }
        let mut routes = Vec::new();
        for r in &cfg.routes {
            // A student route calls no tier: its indices are never read ([`Route::student`]).
            let tier = match r.policy {
                Policy::Student => 0,
                _ => index(&r.tier).expect("validated"),
            };
            let rules: Vec<Rule> = r
                .rules
                .iter()
                .map(|rule| Rule::new(rule, index(&rule.tier).expect("validated")))
                .collect();
            let router = match r.policy {
                Policy::Router => Some(load_router(cfg, r, &index)?),
                _ => None,
            };
            let mut used: Vec<usize> = std::iter::once(tier)
                .chain(rules.iter().map(|r| r.tier))
                .chain(router.iter().flat_map(|r| r.tiers.iter().copied()))
                .collect();
            let by_price =
                |a: &usize, b: &usize| tiers[*a].rank_price().total_cmp(&tiers[*b].rank_price());
            used.sort_by(by_price);
            let premium = match &r.premium {
                Some(p) => index(p).expect("validated"),
                None => *used.last().expect("a route has a tier"),
            };
            routes.push(Route {
                cfg: r.clone(),
                tier,
                premium,
                cheapest: used[0],
                rules,
                router,
            });
        }
        Ok(Self {
            tiers,
            routes,
            detached: tokio_util::task::TaskTracker::new(),
            writer,
            tokenizer: distill_teach::dry_run::Tokenizer::for_model(
                distill_core::Provider::Openai,
                "gpt-4o",
            ),
        })
    }

    /// At shutdown, once no request is left: waits for calls whose client went away (they
    /// are paid for, so they are still read and metered), then commits every queued ledger
    /// change. Without this a stopping gateway would leave such calls `in_flight`.
    pub async fn drain(&self) {
        self.detached.close();
        self.detached.wait().await;
        if let Some(w) = self.writer.clone() {
            let _ = tokio::task::spawn_blocking(move || w.close()).await;
        }
    }

    /// Every route's budget, for [`crate::budget::Budgets::with_cap`].
    pub fn budget_caps(&self) -> BTreeMap<String, Caps> {
        self.routes
            .iter()
            .filter(|r| r.cfg.daily_usd.is_some() || r.cfg.monthly_usd.is_some())
            .map(|r| {
                (
                    r.budget_key(),
                    Caps {
                        daily: r.cfg.daily_usd,
                        monthly: r.cfg.monthly_usd,
                    },
                )
            })
            .collect()
    }

    /// The route for this `model` and tag: one that names the tag wins over one that answers
    /// any tag; among equals, the first in file order.
    pub fn route_for(&self, model: Option<&str>, tag: &str) -> Option<usize> {
        let matches = |r: &Route| {
            let model_ok = r.cfg.models.is_empty()
                || model.is_some_and(|m| r.cfg.models.iter().any(|a| a == m));
            let tag_ok = r.cfg.tags.is_empty() || r.cfg.tags.iter().any(|t| t == tag);
            model_ok && tag_ok
        };
        let by_tag = self
            .routes
            .iter()
            .position(|r| !r.cfg.tags.is_empty() && matches(r));
        by_tag.or_else(|| self.routes.iter().position(matches))
    }

    /// Every `model` alias a client can send.
    pub fn aliases(&self) -> Vec<&str> {
        self.routes
            .iter()
            .flat_map(|r| r.cfg.models.iter().map(String::as_str))
            .collect()
    }

    pub(crate) fn count_tokens(&self, text: &str) -> u64 {
        self.tokenizer.count(text)
    }
}

/// Loads a `router` route's router, maps its tiers and reads its threshold.
fn load_router(
    cfg: &GatewayConfig,
    r: &RouteConfig,
    index: &dyn Fn(&str) -> Option<usize>,
) -> Result<RouterPolicy> {
    let field = |k: &str| format!("route `{}`: {k}", r.name);
    let dir = cfg.dir.join(r.router.as_deref().expect("validated"));
    let router = distill_train::route::Router::load(&dir, &candle_core::Device::Cpu)
        .map_err(|e| ServeError::config(field("router"), e.to_string()))?;
    let names: Vec<String> = if r.router_tiers.is_empty() {
        router.meta.tiers.iter().map(|t| t.name.clone()).collect()
    } else {
        r.router_tiers.clone()
    };
    if names.len() != router.meta.tiers.len() {
        return Err(ServeError::config(
            field("router_tiers"),
            format!(
                "the router has {} tiers ({}), router_tiers names {}",
                router.meta.tiers.len(),
                router
                    .meta
                    .tiers
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                names.len()
            ),
        ));
    }
    let tiers = names
        .iter()
        .map(|n| {
            index(n).ok_or_else(|| {
                ServeError::config(
                    field("router_tiers"),
                    format!("the router's tier `{n}` is not a [[tier]] (map it with router_tiers)"),
                )
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let threshold = match r.threshold.as_ref().expect("validated") {
        ThresholdSource::Value(t) => *t,
        ThresholdSource::Metrics(p) => threshold_from_metrics(&cfg.dir.join(p), &dir)
            .map_err(|m| ServeError::config(field("threshold"), m))?,
    };
    Ok(RouterPolicy {
        router: Arc::new(router),
        tiers,
        threshold,
    })
}

/// The threshold a route eval chose for the router in `router_dir`: its policy in
/// `metrics.json` (matched by directory; the only router policy will do).
fn threshold_from_metrics(path: &Path, router_dir: &Path) -> std::result::Result<f64, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
    if v.get("kind").and_then(|k| k.as_str()) != Some("route") {
        return Err(format!(
            "{} is not a route eval's metrics.json",
            path.display()
        ));
    }
    let routers: Vec<&serde_json::Value> = v["policies"]
        .as_array()
        .map(|p| p.iter().filter(|p| p["kind"] == "router").collect())
        .unwrap_or_default();
    let same = |p: &&&serde_json::Value| {
        let src = p["source"].as_str().map(Path::new);
        match (
            src.and_then(|s| s.canonicalize().ok()),
            router_dir.canonicalize().ok(),
        ) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        }
    };
    let policy = routers
        .iter()
        .find(same)
        .or(if routers.len() == 1 {
            routers.first()
        } else {
            None
        })
        .ok_or_else(|| {
            format!(
                "{} has no router policy for {} ({} router policies)",
                path.display(),
                router_dir.display(),
                routers.len()
            )
        })?;
    policy["chosen"]["threshold"].as_f64().ok_or_else(|| {
        format!(
            "{}: the router `{}` has no chosen threshold (no floor or budget was met)",
            path.display(),
            policy["name"].as_str().unwrap_or("?")
        )
    })
}

/// A task spec that only carries a tier's teacher settings: the teach client is built on one.
fn tier_spec(t: &TierConfig) -> distill_core::TaskSpec {
    let toml = format!(
        "name = \"gateway\"\nkind = \"classify\"\n[input]\n[labels]\nvalues = [\"a\", \"b\"]\n\
         [teacher]\nprovider = \"{}\"\nmodel = \"-\"\n",
        t.provider.as_str()
    );
    let mut spec = distill_core::TaskSpec::parse(&toml, std::path::Path::new("gateway.toml"))
        .expect("a fixed, valid spec");
    spec.teacher.model = t.model.clone();
    spec.teacher.base_url = t.base_url.clone();
    spec.teacher.api_key_env = t.api_key_env.clone();
    spec.teacher.system_prompt = String::new();
    spec.teacher.rpm = t.rpm;
    spec.teacher.tpm = t.tpm;
    spec.teacher.timeout_s = t.timeout_s;
    spec.output.format = distill_core::spec::ResponseFormat::Text;
    spec
}
