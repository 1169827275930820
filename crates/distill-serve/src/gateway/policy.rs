//! Choosing a route's tier: the playbook's heuristic (`rules`: token counts, keywords,
//! regular expressions, first match wins), a trained router (`router`), or one fixed tier.

use super::config::RuleConfig;
use super::{Route, RouterPolicy};
use distill_core::conversation::{transcript, Role, Turn};
use serde_json::Value;

/// One compiled `[[route.rule]]`.
pub(crate) struct Rule {
    pub(crate) tier: usize,
    min_tokens: Option<u64>,
    max_tokens: Option<u64>,
    /// Lower-cased.
    keywords: Vec<String>,
    regex: Option<regex::Regex>,
}

impl Rule {
    pub(crate) fn new(cfg: &RuleConfig, tier: usize) -> Self {
        Self {
            tier,
            min_tokens: cfg.min_prompt_tokens,
            max_tokens: cfg.max_prompt_tokens,
            keywords: cfg.keywords.iter().map(|k| k.to_lowercase()).collect(),
            regex: cfg
                .regex
                .as_deref()
                .map(|r| regex::Regex::new(r).expect("validated")),
        }
    }

    pub(crate) fn counts_tokens(&self) -> bool {
        self.min_tokens.is_some() || self.max_tokens.is_some()
    }

    /// Every condition the rule names holds.
    fn matches(&self, prompt: &str, lower: &str, tokens: u64) -> bool {
        self.min_tokens.is_none_or(|m| tokens >= m)
            && self.max_tokens.is_none_or(|m| tokens <= m)
            && (self.keywords.is_empty() || self.keywords.iter().any(|k| lower.contains(k)))
            && self.regex.as_ref().is_none_or(|r| r.is_match(prompt))
    }
}

/// The tier for a prompt and why (`rule 2` or `default`).
pub(crate) fn choose(route: &Route, prompt: &str, tokens: u64) -> (usize, String) {
    let lower = prompt.to_lowercase();
    for (i, r) in route.rules.iter().enumerate() {
        if r.matches(prompt, &lower, tokens) {
            return (r.tier, format!("rule {}", i + 1));
        }
    }
    (route.tier, "default".into())
}

/// What a router reads of a request: the user's text, or for a conversation its transcript
/// (`User: ...\n\nAssistant: ...`), as route datasets record multi-turn prompts.
pub(crate) fn router_input(messages: &[Value]) -> String {
    let turns: Vec<Turn> = messages
        .iter()
        .filter_map(|m| {
            let role = match m.get("role").and_then(Value::as_str)? {
                "user" => Role::User,
                "assistant" => Role::Assistant,
                _ => return None,
            };
            let content = match m.get("content")? {
                Value::String(s) => s.clone(),
                Value::Array(parts) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join("\n"),
                _ => return None,
            };
            Some(Turn { role, content })
        })
        .collect();
    transcript(&turns)
}

/// The router's tier for a prompt and why (`router p=0.83`): the cheapest tier whose pass
/// probability reaches the threshold, else the top one. The forward pass runs off the async
/// threads; a router that fails sends the request to the route's `tier`.
pub(crate) async fn choose_by_router(
    route: &Route,
    rp: &RouterPolicy,
    text: String,
) -> (usize, String) {
    if text.trim().is_empty() {
        return (route.tier, "default".into());
    }
    let router = rp.router.clone();
    let probs = tokio::task::spawn_blocking(move || router.pass_probabilities(&[&text], 1)).await;
    match probs {
        Ok(Ok(p)) if !p.is_empty() => {
            let pass = &p[0];
            let i = distill_train::route::Router::choose(pass, rp.threshold);
            let shown = pass.get(i).or(pass.last()).copied().unwrap_or(0.0);
            (rp.tiers[i], format!("router p={shown:.2}"))
        }
        other => {
            let why = match other {
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
                _ => "no prediction".into(),
            };
            tracing::warn!(
                "route `{}`: the router failed ({why}); using its tier",
                route.cfg.name
            );
            (route.tier, "default".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(toml: &str) -> Rule {
        let cfg: RuleConfig = toml::from_str(&format!("tier = \"t\"\n{toml}")).unwrap();
        Rule::new(&cfg, 1)
    }

    #[test]
    fn a_rule_matches_when_all_its_conditions_hold() {
        let long = rule("min_prompt_tokens = 10");
        assert!(long.matches("x", "x", 10) && !long.matches("x", "x", 9));
        let kw = rule("keywords = [\"Step by step\"]");
        assert!(kw.matches("", "please go step by step", 1));
        assert!(!kw.matches("", "please go", 1));
        let both = rule("keywords = [\"prove\"]\nmax_prompt_tokens = 5");
        assert!(both.matches("", "prove it", 5) && !both.matches("", "prove it", 6));
        let re = rule("regex = \"\\\\d+\\\\s*[+*/-]\\\\s*\\\\d+\"");
        assert!(re.matches("what is 12 * 7", "", 1) && !re.matches("hello", "", 1));
    }
}
