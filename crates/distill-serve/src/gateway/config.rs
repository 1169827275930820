//! `gateway.toml`: the upstream models (tiers) and the routes that choose between them. Parsed
//! and validated up front: every error names the file, the field and, where TOML knows it, the
//! line, so a gateway never starts half-configured.

use crate::error::{Result, ServeError};
use distill_core::Provider;
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// The folder relative paths in the file are read from.
    #[serde(skip)]
    pub dir: PathBuf,
    #[serde(default, rename = "tier")]
    pub tiers: Vec<TierConfig>,
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
}

/// `[[tier]]`: one upstream model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    pub name: String,
    /// `openai` (OpenAI and every compatible server: vLLM, llama.cpp, the sim-teacher).
    pub provider: Provider,
    /// The model as the upstream names it.
    pub model: String,
    #[serde(default)]
    pub base_url: Option<String>,
    /// The environment variable holding the key (never the key itself); default the
    /// provider's (`OPENAI_API_KEY`). Loopback upstreams need none.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Price this tier as this price-table model; default `model`.
    #[serde(default)]
    pub price_as: Option<String>,
    /// Seconds to wait for a non-streamed answer, or for a stream's headers and each chunk.
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
    /// Retries after the first attempt on 408/409/429/5xx, timeouts and connection errors.
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// Requests and tokens per minute the account allows (0 = unlimited).
    #[serde(default)]
    pub rpm: u32,
    #[serde(default)]
    pub tpm: u32,
    /// The tier asked when this one gives up (retries exhausted).
    #[serde(default)]
    pub fallback: Option<String>,
}

fn default_timeout() -> u64 {
    60
}
fn default_retries() -> u32 {
    2
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Every request to `tier`.
    Fixed,
    /// The first matching `[[route.rule]]`'s tier, else `tier`.
    Rules,
    /// A trained router (`distill train` on a route task): the cheapest tier whose pass
    /// probability reaches `threshold`, else the router's top tier.
    Router,
    /// A served student (`distill gateway --model NAME=DIR`) answers, with its cascade as
    /// under `distill serve`: no tier is called for it.
    Student,
}

/// A router's threshold: a probability, or an eval `metrics.json` whose router policy chose it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum ThresholdSource {
    Value(f64),
    Metrics(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CapMode {
    /// The smaller of the client's `max_tokens` and the route's (the route's when absent).
    #[default]
    Clamp,
    /// Always the route's.
    Set,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnBudget {
    /// Answer from the route's cheapest tier until the period ends.
    #[default]
    Cheapest,
    /// 429 `budget_exceeded`.
    Refuse,
}

/// `[[route]]`: which requests, which tier, and what is done to them on the way.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    /// Request `model` values this route answers (`auto`, `support-bot`).
    #[serde(default)]
    pub models: Vec<String>,
    /// `X-Distill-Tag` values this route answers (with `models`, both must match).
    #[serde(default)]
    pub tags: Vec<String>,
    pub policy: Policy,
    /// `fixed`: the tier; `rules`: the tier when no rule matches; `router`: where requests
    /// go if the router cannot be asked (an empty prompt). Not used by `student` routes.
    #[serde(default)]
    pub tier: String,
    /// `student`: the served model's name (its `--model NAME=DIR`).
    #[serde(default)]
    pub student: Option<String>,
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleConfig>,
    /// `router`: the router directory (relative paths from the config file's folder).
    #[serde(default)]
    pub router: Option<PathBuf>,
    /// `router`: a pass probability in [0, 1], or an eval metrics.json of that router.
    #[serde(default)]
    pub threshold: Option<ThresholdSource>,
    /// `router`: the gateway tiers for the router's tiers, cheapest first (default: the
    /// router's tier names).
    #[serde(default)]
    pub router_tiers: Vec<String>,
    /// The tier savings are measured against; default the route's priciest.
    #[serde(default)]
    pub premium: Option<String>,
    /// Output cap in tokens.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub max_tokens_mode: CapMode,
    /// Added to the system prompt (a new system message when the request has none).
    #[serde(default)]
    pub brevity: Option<String>,
    #[serde(default = "yes")]
    pub cache: bool,
    /// Seconds an answer is kept (the playbook: a day for general, an hour for time-sensitive).
    #[serde(default = "default_cache_ttl")]
    pub cache_ttl_s: u64,
    /// Requests hotter than this are never cached (an absent temperature counts as 1, the
    /// API's default).
    #[serde(default = "default_cache_max_temperature")]
    pub cache_max_temperature: f64,
    /// Cache key: fold the case of each message.
    #[serde(default)]
    pub case_fold: bool,
    /// Cache key: drop each message's trailing punctuation (ASCII, the full-width and
    /// typographic sentence ends, closing quotes) and the spaces before it. Only the key: the upstream is sent
    /// the client's text.
    #[serde(default)]
    pub strip_punctuation: bool,
    #[serde(default)]
    pub daily_usd: Option<f64>,
    #[serde(default)]
    pub monthly_usd: Option<f64>,
    #[serde(default)]
    pub on_budget: OnBudget,
}

fn yes() -> bool {
    true
}
fn default_cache_ttl() -> u64 {
    86_400
}
fn default_cache_max_temperature() -> f64 {
    1.0
}

/// `[[route.rule]]`: matches when every condition it names holds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub tier: String,
    /// The prompt (all messages) has at least / at most this many tokens.
    #[serde(default)]
    pub min_prompt_tokens: Option<u64>,
    #[serde(default)]
    pub max_prompt_tokens: Option<u64>,
    /// Any of these words or phrases, case-insensitive.
    #[serde(default)]
    pub keywords: Vec<String>,
    /// A regular expression the prompt matches.
    #[serde(default)]
    pub regex: Option<String>,
}

impl GatewayConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ServeError::io(path, e))?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let mut c: GatewayConfig = distill_core::spec::parse_toml(text, path)
            .map_err(|e| ServeError::config(path.display().to_string(), e.to_string()))?;
        c.dir = path.parent().unwrap_or(Path::new("")).to_path_buf();
        c.validate(path)?;
        Ok(c)
    }

    pub fn tier(&self, name: &str) -> Option<&TierConfig> {
        self.tiers.iter().find(|t| t.name == name)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |field: String, why: String| {
            Err(ServeError::config(
                format!("{}: {field}", path.display()),
                why,
            ))
        };
        if self.tiers.is_empty() {
            return bad("tier".into(), "name at least one [[tier]]".into());
        }
        if self.routes.is_empty() {
            return bad("route".into(), "name at least one [[route]]".into());
        }
        let mut names = HashSet::new();
        for (i, t) in self.tiers.iter().enumerate() {
            let f = |k: &str| format!("tier[{i}].{k}");
            if t.name.trim().is_empty() || !names.insert(t.name.as_str()) {
                return bad(f("name"), format!("`{}` is empty or repeated", t.name));
            }
            if t.model.trim().is_empty() {
                return bad(f("model"), "must not be empty".into());
            }
            if let Some(u) = &t.base_url {
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    return bad(f("base_url"), format!("`{u}` is not an http(s) URL"));
                }
                if u.contains('@') {
                    return bad(
                        f("base_url"),
                        "credentials in the URL are not supported: name an api_key_env".into(),
                    );
                }
            }
            if t.timeout_s == 0 {
                return bad(f("timeout_s"), "must be at least 1".into());
            }
        }
        for (i, t) in self.tiers.iter().enumerate() {
            if let Some(fb) = &t.fallback {
                if self.tier(fb).is_none() {
                    return bad(
                        format!("tier[{i}].fallback"),
                        format!("no tier is named `{fb}`"),
                    );
                }
            }
            // Fallback chains end: a cycle would ask the same tiers forever.
            let mut seen = HashSet::from([t.name.as_str()]);
            let mut at = t;
            while let Some(next) = at.fallback.as_deref().and_then(|n| self.tier(n)) {
                if !seen.insert(next.name.as_str()) {
                    return bad(
                        format!("tier[{i}].fallback"),
                        format!("the fallback chain from `{}` loops", t.name),
                    );
                }
                at = next;
            }
        }
        let mut route_names = HashSet::new();
        let mut claimed: BTreeMap<(String, Vec<String>), &str> = BTreeMap::new();
        for (i, r) in self.routes.iter().enumerate() {
            let f = |k: &str| format!("route[{i}].{k}");
            if r.name.trim().is_empty() || !route_names.insert(r.name.as_str()) {
                return bad(f("name"), format!("`{}` is empty or repeated", r.name));
            }
            if r.models.is_empty() && r.tags.is_empty() {
                return bad(
                    f("models"),
                    "name the request models (aliases) or the X-Distill-Tag values it answers"
                        .into(),
                );
            }
            for m in &r.models {
                let mut tags = r.tags.clone();
                tags.sort();
                if let Some(other) = claimed.insert((m.clone(), tags), &r.name) {
                    return bad(
                        f("models"),
                        format!("`{m}` is already answered by route `{other}`"),
                    );
                }
            }
            for t in &r.tags {
                let ok = !t.is_empty()
                    && t.len() <= 64
                    && t.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c));
                if !ok {
                    return bad(
                        f("tags"),
                        format!("`{t}`: 1-64 letters, digits and - _ . : /"),
                    );
                }
            }
            let tier_ok = |field: String, name: &str| {
                if self.tier(name).is_some() {
                    Ok(())
                } else {
                    bad(field, format!("no tier is named `{name}`"))
                }
            };
            if r.policy == Policy::Student {
                let why = match &r.student {
                    None => Some("policy = \"student\" needs student = \"NAME\" (a --model it serves)"),
                    Some(_)
                        if !r.tier.is_empty()
                            || !r.rules.is_empty()
                            || r.router.is_some()
                            || r.threshold.is_some()
                            || !r.router_tiers.is_empty() =>
                    {
                        Some("a student route calls no tier: drop tier, rules and router (the student's cascade escalates, as under distill serve)")
                    }
                    Some(_)
                        if r.max_tokens.is_some()
                            || r.brevity.is_some()
                            || r.premium.is_some()
                            || r.daily_usd.is_some()
                            || r.monthly_usd.is_some() =>
                    {
                        Some("max_tokens, brevity, premium and budgets shape tier calls; a student route makes none (its escalations follow serve's --budget flags)")
                    }
                    Some(_) => None,
                };
                if let Some(why) = why {
                    return bad(f("student"), why.into());
                }
                continue;
            }
            if r.student.is_some() {
                return bad(
                    f("student"),
                    "student belongs to policy = \"student\"".into(),
                );
            }
            tier_ok(f("tier"), &r.tier)?;
            if let Some(p) = &r.premium {
                tier_ok(f("premium"), p)?;
            }
            match r.policy {
                Policy::Fixed if !r.rules.is_empty() => {
                    return bad(
                        f("rule"),
                        "a fixed route has no rules (use policy = \"rules\")".into(),
                    )
                }
                Policy::Rules if r.rules.is_empty() => {
                    return bad(f("rule"), "policy = \"rules\" needs [[route.rule]]s".into())
                }
                Policy::Router if !r.rules.is_empty() => {
                    return bad(
                        f("rule"),
                        "a router route has no rules (use policy = \"rules\")".into(),
                    )
                }
                Policy::Router if r.router.is_none() => {
                    return bad(
                        f("router"),
                        "policy = \"router\" needs router = \"DIR\" (distill train on a route task)"
                            .into(),
                    )
                }
                Policy::Router if r.threshold.is_none() => {
                    return bad(
                        f("threshold"),
                        "policy = \"router\" needs a threshold: a probability or the router's eval metrics.json"
                            .into(),
                    )
                }
                _ => {}
            }
            if r.policy != Policy::Router
                && (r.router.is_some() || r.threshold.is_some() || !r.router_tiers.is_empty())
            {
                return bad(
                    f("router"),
                    "router, threshold and router_tiers belong to policy = \"router\"".into(),
                );
            }
            if let Some(ThresholdSource::Value(t)) = &r.threshold {
                if !(0.0..=1.0).contains(t) {
                    return bad(
                        f("threshold"),
                        format!("{t} is not a probability in [0, 1]"),
                    );
                }
            }
            for (j, t) in r.router_tiers.iter().enumerate() {
                tier_ok(format!("route[{i}].router_tiers[{j}]"), t)?;
            }
            for (j, rule) in r.rules.iter().enumerate() {
                let g = |k: &str| format!("route[{i}].rule[{j}].{k}");
                tier_ok(g("tier"), &rule.tier)?;
                if rule.min_prompt_tokens.is_none()
                    && rule.max_prompt_tokens.is_none()
                    && rule.keywords.is_empty()
                    && rule.regex.is_none()
                {
                    return bad(
                        g("tier"),
                        "a rule needs a condition: min_prompt_tokens, max_prompt_tokens, \
                         keywords or regex"
                            .into(),
                    );
                }
                if let Some(re) = &rule.regex {
                    if let Err(e) = regex::Regex::new(re) {
                        return bad(g("regex"), format!("not a valid regular expression: {e}"));
                    }
                }
            }
            if r.max_tokens == Some(0) {
                return bad(f("max_tokens"), "must be at least 1".into());
            }
            if r.max_tokens_mode == CapMode::Set && r.max_tokens.is_none() {
                return bad(f("max_tokens_mode"), "\"set\" needs max_tokens".into());
            }
            for (k, v) in [("daily_usd", r.daily_usd), ("monthly_usd", r.monthly_usd)] {
                if let Some(v) = v.filter(|v| !v.is_finite() || *v < 0.0) {
                    return bad(f(k), format!("a cap must be ≥ 0 dollars, got {v}"));
                }
            }
            if !r.cache_max_temperature.is_finite() {
                return bad(f("cache_max_temperature"), "must be a number".into());
            }
        }
        Ok(())
    }
}

/// What `distill gateway init` prints: a commented config whose tiers point at a local
/// sim-teacher (`sim_url`), so every feature can be tried offline.
pub fn starter_config(sim_url: &str) -> String {
    STARTER.replace("{SIM}", sim_url)
}

/// The path the CLI reads by default.
pub fn default_path() -> PathBuf {
    PathBuf::from("gateway.toml")
}

const STARTER: &str = r#"# distill gateway: one OpenAI-compatible endpoint for all of an app's LLM traffic.
# Point the openai client's base_url at the gateway and send `model = "auto"` (or another
# route's alias). Every upstream call is metered in the ledger (`distill spend --by route,tier`),
# repeats are answered from the cache, output is capped, and simple prompts go to the cheap tier.
#
# These tiers point at a local sim-teacher, so everything works offline:
#   distill sim-teacher --port 8089 &
#   distill gateway --config gateway.toml      (--cache redis://127.0.0.1:6379 to share the
#                                                cache between replicas; --help for the rest)
# For real upstreams set base_url (or leave it out for api.openai.com) and export the key
# named by api_key_env; keys are read from the environment only.

[[tier]]
name = "cheap"
provider = "openai"
model = "gpt-4o-mini"
base_url = "{SIM}"
# api_key_env = "OPENAI_API_KEY"
timeout_s = 30
max_retries = 2
fallback = "premium"        # asked when this tier gives up (429/5xx/timeouts after retries)

[[tier]]
name = "premium"
provider = "openai"
model = "gpt-4o"
base_url = "{SIM}"
timeout_s = 60

[[route]]
name = "auto"
models = ["auto"]           # the `model` a client sends
policy = "rules"            # first matching rule wins, else `tier`
tier = "cheap"
premium = "premium"         # savings are measured against this tier
max_tokens = 512            # output cap: the client's value is clamped to it
brevity = "Answer concisely."
cache = true
cache_ttl_s = 86400         # the playbook: 24 h general, 1 h time-sensitive
cache_max_temperature = 1.0 # hotter (creative) requests are never cached
daily_usd = 50.0            # over budget: answered by the cheapest tier (on_budget = "refuse": 429)

[[route.rule]]
tier = "premium"
min_prompt_tokens = 400     # long prompts

[[route.rule]]
tier = "premium"
keywords = ["prove", "step by step", "legal", "diagnose"]

[[route]]
name = "support"
models = ["support-bot"]
policy = "fixed"
tier = "cheap"
cache_ttl_s = 3600
case_fold = true            # "Where is my card?" and "where is my card" share a cache entry
strip_punctuation = true
max_tokens = 256
max_tokens_mode = "set"

# A trained router: `distill train` on a route task (see the README's Routing section), then
# `distill eval` to choose its threshold.
# [[route]]
# name = "qa"
# models = ["qa"]
# policy = "router"
# router = "models/mmlu-router"
# threshold = "evals/mmlu-route/metrics.json"   # or a probability, e.g. 0.6
# router_tiers = ["cheap", "premium"]           # the router's tiers, cheapest first
# tier = "cheap"

# A student from `distill train` answers its task locally, with its cascade as under
# `distill serve` (serve it too: distill gateway --model b77=models/b77 --escalate ...).
# [[route]]
# name = "intents"
# models = ["support-intents"]
# policy = "student"
# student = "b77"

# An Anthropic tier: requests are translated to Messages and answers back to Chat
# Completions, streams included (the sim serves /v1/messages as well).
# [[tier]]
# name = "claude"
# provider = "anthropic"
# model = "claude-sonnet-4-5"
# base_url = "{SIM}"
# api_key_env = "ANTHROPIC_API_KEY"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<GatewayConfig> {
        GatewayConfig::parse(text, Path::new("gateway.toml"))
    }

    #[test]
    fn the_starter_config_is_valid() {
        let c = parse(&starter_config("http://127.0.0.1:8089/v1")).unwrap();
        assert_eq!(c.tiers.len(), 2);
        assert_eq!(c.routes[0].rules.len(), 2);
        assert_eq!(c.routes[1].max_tokens_mode, CapMode::Set);
    }

    #[test]
    fn errors_name_the_field() {
        let base = starter_config("http://127.0.0.1:8089/v1");
        let cases = [
            (
                base.replace("fallback = \"premium\"", "fallback = \"nope\""),
                "tier[0].fallback",
            ),
            (
                base.replace("tier = \"cheap\"\npremium", "tier = \"gold\"\npremium"),
                "route[0].tier",
            ),
            (
                base.replace("min_prompt_tokens = 400", "regex = \"(\""),
                "route[0].rule[0].regex",
            ),
            (
                base.replace("models = [\"support-bot\"]", "models = [\"auto\"]"),
                "route[1].models",
            ),
            (
                base.replace("timeout_s = 60", "timeout_s = 60\nfallback = \"cheap\""),
                "tier[0].fallback",
            ),
            (
                base.replace("max_retries = 2", "max_retries = 2\ncolour = 1"),
                "colour",
            ),
            (
                base.replace("provider = \"openai\"", "provider = \"gemini\""),
                "provider",
            ),
            (
                format!(
                    "{base}\n[[route]]\nname = \"s\"\nmodels = [\"s\"]\npolicy = \"student\"\n"
                ),
                "route[2].student",
            ),
            (
                format!(
                    "{base}\n[[route]]\nname = \"s\"\nmodels = [\"s\"]\npolicy = \"student\"\n\
                     student = \"b77\"\ntier = \"cheap\"\n"
                ),
                "route[2].student",
            ),
            (
                format!(
                    "{base}\n[[route]]\nname = \"s\"\nmodels = [\"s\"]\npolicy = \"student\"\n\
                     student = \"b77\"\nthreshold = 0.5\n"
                ),
                "route[2].student",
            ),
            (
                format!(
                    "{base}\n[[route]]\nname = \"s\"\nmodels = [\"s\"]\npolicy = \"fixed\"\n\
                     student = \"b77\"\ntier = \"cheap\"\n"
                ),
                "route[2].student",
            ),
        ];
        for (text, field) in cases {
            let e = parse(&text)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(field), "{field}: {e}");
            assert!(e.contains("gateway.toml"), "{e}");
        }
    }
}
