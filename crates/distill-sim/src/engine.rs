//! Turning one conversation into one simulated reply with realistic usage, shared by the
//! OpenAI and Anthropic front ends and by both of their batch APIs.

use crate::oracle::{
    is_reasoning_model, label_json, mix64, unit, Oracle, TOKENS_PER_MESSAGE, TOKENS_REPLY_PRIMING,
};
use crate::stats::{request_hash, Billed, Counters};
use distill_core::prices::ModelPrice;
use distill_core::Usage;
use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// Providers cache prompts only from this many tokens on, in blocks of `CACHE_BLOCK`.
const CACHE_MIN_TOKENS: usize = 1024;
const CACHE_BLOCK: usize = 128;

/// One message of a request, flattened to its text.
pub struct Turn<'a> {
    pub role: &'a str,
    pub content: Cow<'a, str>,
}

/// How the reply should be formatted.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplyStyle {
    /// JSON object with the label under this key.
    Json(String),
    /// Plain text: the bare label.
    Text,
}

/// The reply and what it costs.
#[derive(Debug, Clone)]
pub struct Reply {
    pub content: String,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    /// Anthropic only: prompt tokens written to the cache by this request.
    pub cache_write_tokens: u64,
    pub completion_tokens: u64,
    pub reasoning_tokens: u64,
    /// SHA-256 (first 128 bits) of model + messages: what billing is counted by.
    pub hash: u128,
}

/// An injected failure for one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injected {
    RateLimited,
    ServerError,
}

pub struct Engine {
    pub oracle: Oracle,
    /// Route tasks: answers replayed from recorded outcomes instead of the oracle's labels.
    pub replay: Option<crate::replay::Replay>,
    pub counters: Counters,
    pub price: Option<ModelPrice>,
    pub price_as: String,
    pub seed: u64,
    pub error_rate: f64,
    reasoning: bool,
    attempts: AtomicU64,
    openai_cache_warm: AtomicBool,
    anthropic_cache_warm: AtomicBool,
}

impl Engine {
    pub fn new(oracle: Oracle, price_as: &str, seed: u64, error_rate: f64) -> Self {
        let price = distill_core::prices::PriceTable::builtin()
            .get(price_as)
            .cloned();
        Engine {
            oracle,
            replay: None,
            counters: Counters::new(),
            price,
            price_as: price_as.to_string(),
            seed,
            error_rate,
            reasoning: is_reasoning_model(price_as),
            attempts: AtomicU64::new(0),
            openai_cache_warm: AtomicBool::new(false),
            anthropic_cache_warm: AtomicBool::new(false),
        }
    }

    /// Decides whether this attempt fails. Random per attempt (seeded), so the same request
    /// retried soon succeeds.
    pub fn inject(&self) -> Option<Injected> {
        if self.error_rate <= 0.0 {
            return None;
        }
        let n = self.attempts.fetch_add(1, Relaxed);
        let r = unit(mix64(self.seed ^ mix64(n.wrapping_add(0x5151))));
        if r < self.error_rate / 2.0 {
            self.counters.rate_limited();
            Some(Injected::RateLimited)
        } else if r < self.error_rate {
            self.counters.server_error();
            Some(Injected::ServerError)
        } else {
            None
        }
    }

    /// Answers a conversation. `system` is the system prompt when the API carries it apart
    /// from the messages (Anthropic); OpenAI passes it as a `system`/`developer` turn.
    pub fn answer(
        &self,
        model: &str,
        system: Option<&str>,
        turns: &[Turn<'_>],
        style: &ReplyStyle,
        anthropic_cacheable: bool,
    ) -> Reply {
        let oracle = &self.oracle;
        let is_user = |t: &&Turn| t.role == "user";
        let first_user = turns.iter().position(|t| t.role == "user");
        // A repair turn: the model already answered and the user wrote again.
        let repair = first_user.is_some_and(|fu| {
            turns[fu..]
                .iter()
                .position(|t| t.role == "assistant")
                .is_some_and(|a| turns[fu + a..].iter().any(|t| t.role == "user"))
        });
        let text: &str = turns
            .iter()
            .filter(is_user)
            .find_map(|t| oracle.extract_text(&t.content))
            .or_else(|| {
                if repair {
                    first_user.map(|i| turns[i].content.as_ref())
                } else {
                    turns.iter().rev().find(is_user).map(|t| t.content.as_ref())
                }
            })
            .unwrap_or("");
        let decision = oracle.decide(text);
        let label = &oracle.labels[decision.label];
        let invalid = decision.invalid && !repair && self.replay.is_none();
        let (content, completion) = if let Some(r) = &self.replay {
            let dialogue: Vec<distill_core::conversation::Turn> = turns
                .iter()
                .filter_map(|t| {
                    let role = match t.role {
                        "user" => distill_core::conversation::Role::User,
                        "assistant" => distill_core::conversation::Role::Assistant,
                        _ => return None,
                    };
                    Some(distill_core::conversation::Turn {
                        role,
                        content: t.content.to_string(),
                    })
                })
                .collect();
            // A multi-turn prompt is known by its transcript, a plain one by its text.
            let c = r.answer(model, &distill_core::conversation::transcript(&dialogue));
            let n = oracle.tokens.count(&c);
            (c, n)
        } else if oracle.extract {
            if invalid {
                self.counters.invalid_reply();
            }
            // Gold spans are known by the whole first prompt: text and context.
            let message = first_user.map_or("", |i| turns[i].content.as_ref());
            let c = oracle.spans_reply(message, invalid);
            let n = oracle.tokens.count(&c);
            (c, n)
        } else if oracle.set.is_multilabel() {
            if invalid {
                self.counters.invalid_reply();
            }
            let c = oracle.set_reply(&oracle.decide_set(text), invalid, decision.hash);
            let n = oracle.tokens.count(&c);
            (c, n)
        } else if invalid {
            self.counters.invalid_reply();
            let c = oracle.invalid_reply(&decision);
            let n = oracle.tokens.count(&c);
            (c, n)
        } else {
            match style {
                ReplyStyle::Json(key) if key == "label" => (
                    label_json(label),
                    oracle.tokens.reply_tokens(decision.label),
                ),
                ReplyStyle::Json(key) => {
                    let c = serde_json::json!({ key.as_str(): label }).to_string();
                    let n = oracle.tokens.count(&c);
                    (c, n)
                }
                ReplyStyle::Text => (label.clone(), oracle.tokens.count(label)),
            }
        };

        let system_turn = system.map(|s| Turn {
            role: "system",
            content: Cow::Borrowed(s),
        });
        let mut prompt = TOKENS_REPLY_PRIMING;
        for t in system_turn.iter().chain(turns.iter()) {
            // Roles (system, user, assistant, developer) are one token each.
            prompt += TOKENS_PER_MESSAGE + 1 + oracle.tokens.count(&t.content);
        }

        let system_text = system.or_else(|| {
            turns
                .iter()
                .find(|t| t.role == "system" || t.role == "developer")
                .map(|t| t.content.as_ref())
        });
        let shares_prefix = first_user.is_some_and(|fu| {
            oracle
                .tokens
                .starts_with_shared_prefix(system_text, &turns[fu].content)
        });
        let cacheable_tokens = if shares_prefix && prompt >= CACHE_MIN_TOKENS {
            (oracle.tokens.shared_prefix_tokens().min(prompt) / CACHE_BLOCK) * CACHE_BLOCK
        } else {
            0
        };
        let (mut cached, mut written) = (0, 0);
        if cacheable_tokens > 0 {
            if system.is_some() {
                // Anthropic caches only what the request marks with cache_control.
                if anthropic_cacheable {
                    if self.anthropic_cache_warm.swap(true, Relaxed) {
                        cached = cacheable_tokens;
                    } else {
                        written = cacheable_tokens;
                    }
                }
            } else if self.openai_cache_warm.swap(true, Relaxed) {
                cached = cacheable_tokens;
            }
        }

        let reasoning = if self.reasoning {
            64 * (1 + (mix64(decision.hash ^ 0xAB) % 4) as usize)
        } else {
            0
        };
        let hash = request_hash(
            model,
            system
                .map(|s| ("system", s))
                .into_iter()
                .chain(turns.iter().map(|t| (t.role, t.content.as_ref()))),
        );
        Reply {
            content,
            prompt_tokens: prompt as u64,
            cached_tokens: cached as u64,
            cache_write_tokens: written as u64,
            completion_tokens: (completion + reasoning) as u64,
            reasoning_tokens: reasoning as u64,
            hash,
        }
    }

    /// Records a reply as paid for.
    pub fn bill(&self, reply: &Reply, batch: bool) {
        let usage = Usage {
            prompt_tokens: reply.prompt_tokens,
            cached_tokens: reply.cached_tokens,
            cache_write_tokens: reply.cache_write_tokens,
            completion_tokens: reply.completion_tokens,
            reasoning_tokens: reply.reasoning_tokens,
        };
        let cost_usd = self
            .price
            .as_ref()
            .map(|p| p.cost(&usage, batch))
            .unwrap_or(0.0);
        self.counters.bill(
            reply.hash,
            &Billed {
                prompt: reply.prompt_tokens,
                cached: reply.cached_tokens,
                completion: reply.completion_tokens,
                reasoning: reply.reasoning_tokens,
                cost_usd,
            },
        );
    }
}
