//! One gateway request: the route's changes to it (output cap, brevity instruction), the cache,
//! the budget, the tier (policy, then fallbacks), the upstream call relayed as it came (a
//! stream chunk by chunk: [`super::stream`]), and the metering of what it cost and saved.
//!
//! The response is the upstream's body plus a `distill` object (route, tier, cache hit, cost,
//! saving against the route's premium tier); streams carry the same facts in `x-distill-*`
//! headers, and in the usage chunk when the client asked for one.

use super::config::{CapMode, OnBudget};
use super::stream::{relay_stream, replay_stream};
use super::{anthropic, policy, Gateway, Route};
use crate::budget::DEFAULT_TAG;
use crate::cache::normalise;
use crate::metrics::LATENCY_BUCKETS;
use crate::server::{ApiError, AppState};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use distill_core::{Provider, Usage};
use distill_teach::client::{Forwarded, PaidCall};
use distill_teach::CallContext;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Instant;

/// A cached answer: the upstream's completion (without our `distill` object) and who gave it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct CachedCompletion {
    pub(super) tier: String,
    pub(super) completion: Value,
    pub(super) usage: Usage,
}

/// What the `distill` object and the headers report.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Meter {
    pub(super) route: String,
    pub(super) tier: String,
    /// `default`, `rule N`, `budget` (over budget: the cheapest tier) or `fallback`.
    pub(super) reason: String,
    pub(super) cache_hit: bool,
    pub(super) cost_usd: f64,
    /// The route's premium tier's price for the same tokens, minus what was paid.
    pub(super) saved_usd: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) fallback_from: Option<String>,
}

impl Meter {
    /// `x-distill-*`; the cost only when it is known (not at the start of a relayed stream).
    pub(super) fn headers(&self, h: &mut HeaderMap, cost_known: bool) {
        let mut put = |k: &'static str, v: String| {
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.insert(k, v);
            }
        };
        put("x-distill-route", self.route.clone());
        put("x-distill-tier", self.tier.clone());
        put(
            "x-distill-cache",
            if self.cache_hit { "hit" } else { "miss" }.into(),
        );
        if cost_known {
            put("x-distill-cost-usd", format!("{:.8}", self.cost_usd));
        }
    }
}

pub(super) fn usage_json(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
    })
}

/// The text of every message, for rules and token estimates.
fn prompt_text(messages: &[Value]) -> String {
    let mut out = String::new();
    for m in messages {
        match m.get("content") {
            Some(Value::String(s)) => out.push_str(s),
            Some(Value::Array(parts)) => {
                for p in parts {
                    if let Some(t) = p.get("text").and_then(Value::as_str) {
                        out.push_str(t);
                        out.push('\n');
                    }
                }
            }
            _ => {}
        }
        out.push('\n');
    }
    out
}

/// The cache key: the route and the request as the upstream will see it, minus what does not
/// change the answer (stream flags, `user`), with each message's text normalised (whitespace
/// always; case and trailing punctuation when the route says so). serde_json orders object keys,
/// so the same request always hashes the same.
fn cache_key(route: &Route, upstream: &Value) -> String {
    let mut v = upstream.clone();
    if let Some(o) = v.as_object_mut() {
        for k in ["model", "stream", "stream_options", "user"] {
            o.remove(k);
        }
    }
    let norm = |s: &str| {
        let mut t = normalise(s, route.cfg.case_fold);
        if route.cfg.strip_punctuation {
            // Whitespace too, so `card ?` and `card` meet; the full-width and typographic
            // sentence ends beside ASCII's, so CJK and curly-quoted prompts fold alike.
            t = t
                .trim_end_matches(|c: char| {
                    c.is_ascii_punctuation()
                        || c.is_whitespace()
                        || "…。！？｡、，．”’」』".contains(c)
                })
                .to_string();
        }
        t
    };
    if let Some(msgs) = v.get_mut("messages").and_then(Value::as_array_mut) {
        for m in msgs {
            match m.get_mut("content") {
                Some(Value::String(s)) => *s = norm(s),
                Some(Value::Array(parts)) => {
                    for p in parts {
                        if let Some(Value::String(s)) = p.get_mut("text") {
                            *s = norm(s);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    let mut bytes = b"gateway\0".to_vec();
    bytes.extend_from_slice(route.cfg.name.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(&serde_json::to_vec(&v).unwrap_or_default());
    format!("distill:v1:gw:{}", distill_core::fsutil::sha256_hex(&bytes))
}

/// Clamps or sets the output cap in whichever field the client used (`max_completion_tokens`
/// or `max_tokens`); returns the cap the request now carries.
fn apply_cap(route: &Route, req: &mut serde_json::Map<String, Value>) -> Option<u64> {
    let field = if req.contains_key("max_completion_tokens") {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    let client = req.get(field).and_then(Value::as_u64);
    let cap = route.cfg.max_tokens.map(u64::from);
    let value = match (route.cfg.max_tokens_mode, cap, client) {
        (_, None, c) => c,
        (CapMode::Set, Some(cap), _) => Some(cap),
        (CapMode::Clamp, Some(cap), Some(c)) => Some(c.min(cap)),
        (CapMode::Clamp, Some(cap), None) => Some(cap),
    };
    if let Some(v) = value {
        req.insert(field.into(), v.into());
    }
    value
}

/// Adds the route's brevity instruction to the first system (or developer) message, or puts
/// one in front.
fn apply_brevity(route: &Route, messages: &mut Vec<Value>) {
    let Some(text) = route.cfg.brevity.as_deref() else {
        return;
    };
    if let Some(first) = messages.first_mut() {
        let role = first.get("role").and_then(Value::as_str).unwrap_or("");
        if role == "system" || role == "developer" {
            if let Some(Value::String(s)) = first.get_mut("content") {
                s.push_str("\n\n");
                s.push_str(text);
                return;
            }
        }
    }
    messages.insert(0, json!({"role": "system", "content": text}));
}

fn bad_gateway(message: String) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "server_error",
        Some("upstream_unavailable"),
        message,
    )
}

/// Answers one chat completion through route `ri`.
pub(crate) async fn chat(
    st: &Arc<AppState>,
    gw: &Arc<Gateway>,
    ri: usize,
    tag: &str,
    body: Value,
) -> Result<Response, ApiError> {
    let route = &gw.routes[ri];
    let Value::Object(mut req) = body else {
        return Err(ApiError::bad_request(
            "the body must be a JSON object",
            "body",
        ));
    };
    let stream = match req.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::bad_request(
                "`stream` must be true or false",
                "stream",
            ))
        }
    };
    let include_usage = req
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let Some(Value::Array(mut messages)) = req.remove("messages") else {
        return Err(ApiError::bad_request(
            "missing required field `messages` (a non-empty array)",
            "messages",
        ));
    };
    if messages.is_empty() {
        return Err(ApiError::bad_request(
            "`messages` must contain at least one message",
            "messages",
        ));
    }
    let routed_text = route
        .router
        .as_ref()
        .map(|_| policy::router_input(&messages));
    let n = req.get("n").and_then(Value::as_u64).unwrap_or(1);
    let temperature = req
        .get("temperature")
        .and_then(Value::as_f64)
        .unwrap_or(1.0);
    let cap = apply_cap(route, &mut req);
    apply_brevity(route, &mut messages);
    let prompt = prompt_text(&messages);
    // Exact counts only where a rule compares them; elsewhere the count only sizes the
    // worst-case in-flight ledger row and the rate-limit reservation (4 characters a token).
    let text_tokens = if route.counts_tokens() {
        gw.count_tokens(&prompt)
    } else {
        prompt.len().div_ceil(4) as u64
    };
    let prompt_tokens = text_tokens + 4 * messages.len() as u64 + 3;
    req.insert("messages".into(), Value::Array(messages));
    req.remove("stream_options");
    let upstream = Value::Object(req);

    let metric_tag = tag;
    let cacheable =
        route.cfg.cache && st.cache.is_on() && temperature <= route.cfg.cache_max_temperature;
    let key = cacheable.then(|| cache_key(route, &upstream));
    let alias = route.cfg.name.as_str();
    if let Some(key) = &key {
        if let Some(hit) = st.cache.get::<CachedCompletion>(key).await {
            st.metrics
                .inc("distill_cache_hits_total", &[("model", alias)]);
            let meter = Meter {
                route: route.cfg.name.clone(),
                tier: hit.tier.clone(),
                reason: "cache".into(),
                cache_hit: true,
                cost_usd: 0.0,
                saved_usd: gw.tiers[route.premium].cost(&hit.usage),
                fallback_from: None,
            };
            count(st, &meter, metric_tag, None);
            return Ok(if stream {
                replay_stream(&hit, &meter, include_usage)
            } else {
                let mut c = hit.completion.clone();
                c["distill"] = serde_json::to_value(&meter).unwrap_or(Value::Null);
                let mut r = axum::Json(c).into_response();
                meter.headers(r.headers_mut(), true);
                r
            });
        }
        st.metrics
            .inc("distill_cache_misses_total", &[("model", alias)]);
    }

    // The tier is chosen after the cache: a hit needs no routing (a router's forward pass).
    let (mut tier, mut reason) = match (&route.router, routed_text) {
        (Some(rp), Some(text)) => policy::choose_by_router(route, rp, text).await,
        _ => policy::choose(route, &prompt, prompt_tokens),
    };
    let over = st
        .budgets
        .check(&route.budget_key())
        .or_else(|| st.budgets.check(tag));
    if let Some(hit) = over {
        match route.on_budget() {
            OnBudget::Refuse => {
                crate::cascade::capped(st, &hit, "refusing the route's requests (429)");
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "insufficient_quota",
                    Some("budget_exceeded"),
                    format!(
                        "the {} budget `{}` (${:.2}) is spent; retry when the period ends",
                        hit.period.as_str(),
                        hit.budget,
                        hit.cap_usd
                    ),
                ));
            }
            OnBudget::Cheapest => {
                crate::cascade::capped(st, &hit, "answering from the route's cheapest tier");
                if tier != route.cheapest {
                    tier = route.cheapest;
                    reason = "budget".into();
                }
            }
        }
    }

    let call = UpstreamCall {
        st: st.clone(),
        gw: gw.clone(),
        ri,
        tier,
        reason,
        tag: tag.to_string(),
        upstream,
        key,
        stream,
        include_usage,
        prompt_tokens,
        cap,
        n,
    };
    // A client that hangs up does not cancel a paid call: the in-flight row is written and
    // the call sent (or refused) whatever happens, and a whole answer is still read, metered
    // and cached (the next identical request is free). A stream's body is the client's: once
    // it is dropped, the call is settled at what was received.
    gw.detached.spawn(call.run()).await.unwrap_or_else(|e| {
        tracing::error!("gateway call: {e}");
        Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            None,
            "the gateway failed answering this request",
        ))
    })
}

/// An upstream call once its route, tier and request are settled.
struct UpstreamCall {
    st: Arc<AppState>,
    gw: Arc<Gateway>,
    ri: usize,
    tier: usize,
    reason: String,
    tag: String,
    upstream: Value,
    key: Option<String>,
    stream: bool,
    include_usage: bool,
    prompt_tokens: u64,
    cap: Option<u64>,
    n: u64,
}

impl UpstreamCall {
    /// The tier (then its fallbacks), the answer relayed, the call metered.
    async fn run(self) -> Result<Response, ApiError> {
        let UpstreamCall {
            st,
            gw,
            ri,
            mut tier,
            mut reason,
            tag,
            mut upstream,
            key,
            stream,
            include_usage,
            prompt_tokens,
            cap,
            n,
        } = self;
        let (st, gw) = (&st, &gw);
        let route = &gw.routes[ri];
        let alias = route.cfg.name.as_str();
        let tag = tag.as_str();
        let metric_tag = tag;
        let ctx = CallContext {
            source: "gateway".into(),
            tag: (tag != DEFAULT_TAG).then(|| tag.to_string()),
            guard: None,
        };
        let mut fallback_from = None;
        let mut tried = Vec::new();
        let accepted = loop {
            let t = &gw.tiers[tier];
            upstream["model"] = t.model.clone().into();
            if stream {
                upstream["stream"] = true.into();
                // Metering needs the usage: asked for always, passed on only when the client asked.
                upstream["stream_options"] = json!({"include_usage": true});
            }
            let wire_body = match t.provider {
                Provider::Openai => upstream.clone(),
                Provider::Anthropic => match anthropic::request(&upstream, &t.model) {
                    Ok(b) => b,
                    // The route's own tier cannot take this request: the client's to fix.
                    Err(e) if fallback_from.is_none() => return Err(e),
                    // A fallback that cannot: as if it had given up (the client sees 502).
                    Err(e) => {
                        tried.push((tier, e.message));
                        tier = next_tier(gw, ri, tier, &tried)?;
                        continue;
                    }
                },
            };
            // What the tier may write: Messages gets a cap even when the client set none.
            let max_out = wire_body
                .get("max_tokens")
                .and_then(Value::as_u64)
                .or(cap)
                .unwrap_or(1024);
            let started = Instant::now();
            let sent = t
                .client
                .forward(
                    &wire_body,
                    stream,
                    prompt_tokens,
                    max_out * n,
                    &route.cfg.name,
                    &ctx,
                )
                .await
                .map_err(|e| {
                    tracing::error!("gateway ledger: {e}");
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "server_error",
                        None,
                        "the gateway could not record the call in its ledger",
                    )
                })?;
            match sent {
                Forwarded::Accepted(a) => break (*a, started),
                Forwarded::Refused {
                    status,
                    body,
                    charged_usd,
                } => {
                    if charged_usd > 0.0 {
                        charge(st, route, tag, &t.name, charged_usd);
                    }
                    // The client's request is at fault (or the key): the upstream's own error.
                    st.metrics.inc(
                        "distill_gateway_upstream_errors_total",
                        &[
                            ("route", alias),
                            ("tier", &t.name),
                            ("status", &status.to_string()),
                        ],
                    );
                    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
                    let body = match t.provider {
                        Provider::Anthropic => anthropic::error_body(&body),
                        Provider::Openai => body,
                    };
                    let mut r = (code, body).into_response();
                    r.headers_mut().insert(
                        axum::http::header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    return Ok(r);
                }
                Forwarded::GaveUp {
                    status,
                    message,
                    charged_usd,
                } => {
                    if charged_usd > 0.0 {
                        charge(st, route, tag, &t.name, charged_usd);
                    }
                    let status = status
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "none".into());
                    st.metrics.inc(
                        "distill_gateway_upstream_errors_total",
                        &[("route", alias), ("tier", &t.name), ("status", &status)],
                    );
                    tracing::warn!("gateway tier `{}`: {message}", t.name);
                    tried.push((tier, message));
                    let next = next_tier(gw, ri, tier, &tried)?;
                    st.metrics.inc(
                        "distill_gateway_fallbacks_total",
                        &[
                            ("route", alias),
                            ("from", &t.name),
                            ("to", &gw.tiers[next].name),
                        ],
                    );
                    fallback_from.get_or_insert_with(|| t.name.clone());
                    tier = next;
                    reason = "fallback".into();
                }
            }
        };
        let (accepted, started) = accepted;
        let meter = Meter {
            route: route.cfg.name.clone(),
            tier: gw.tiers[tier].name.clone(),
            reason,
            cache_hit: false,
            cost_usd: 0.0,
            saved_usd: 0.0,
            fallback_from,
        };
        let job = Settle {
            st: st.clone(),
            gw: gw.clone(),
            ri,
            tier,
            tag: metric_tag.to_string(),
            key: key.filter(|_| n == 1 || !stream),
            started,
            meter,
        };
        if stream {
            let provider = gw.tiers[tier].provider;
            return Ok(relay_stream(
                job,
                provider,
                accepted.response,
                accepted.call,
                include_usage,
                prompt_tokens,
            ));
        }
        let read = match accepted.response.bytes().await {
            Ok(b) => serde_json::from_slice::<Value>(&b)
                .map_err(|_| "answered something that is not JSON".to_string()),
            Err(e) => Err(format!("stopped mid-answer: {}", e.without_url())),
        };
        let answer = match read {
            Ok(a) => a,
            Err(why) => {
                // Billed, but with no usage to read: charged at its estimate, as the teach
                // client charges an unreadable reply.
                let usage = accepted.call.estimate();
                let status = distill_core::ledger::UNANSWERED;
                let cost = accepted.call.settle(&usage, status).await;
                // The tokens metric counts what was seen: the prompt.
                let seen = Usage {
                    prompt_tokens: usage.prompt_tokens,
                    ..Default::default()
                };
                job.account(cost, &seen, None, status);
                return Err(bad_gateway(format!("tier `{}` {why}", gw.tiers[tier].name)));
            }
        };
        let (mut completion, usage) = match gw.tiers[tier].provider {
            Provider::Anthropic => anthropic::completion(&answer),
            Provider::Openai => {
                let usage = distill_teach::provider::openai::usage(
                    answer.get("usage").unwrap_or(&Value::Null),
                );
                (answer, usage)
            }
        };
        let finish = completion
            .pointer("/choices/0/finish_reason")
            .and_then(Value::as_str)
            .map(str::to_string);
        let meter = job
            .done(accepted.call, usage, finish.as_deref(), Some(&completion))
            .await;
        completion["distill"] = serde_json::to_value(&meter).unwrap_or(Value::Null);
        let mut r = axum::Json(completion).into_response();
        meter.headers(r.headers_mut(), true);
        Ok(r)
    }
}

/// The tier to ask after `tier` failed: its fallback, unless that was tried already; else
/// the 502 naming every failure.
fn next_tier(
    gw: &Gateway,
    ri: usize,
    tier: usize,
    tried: &[(usize, String)],
) -> Result<usize, ApiError> {
    match gw.tiers[tier].fallback {
        Some(next) if !tried.iter().any(|(t, _)| *t == next) => Ok(next),
        _ => {
            let failures: Vec<String> = tried
                .iter()
                .map(|(t, why)| format!("{}: {why}", gw.tiers[*t].name))
                .collect();
            Err(bad_gateway(format!(
                "every tier route `{}` can use failed: {}",
                gw.routes[ri].cfg.name,
                failures.join("; ")
            )))
        }
    }
}

/// Counts `usd` spent on `tier` for `route` and `tag`: against their budgets and in the spend
/// metric. Also for a tier call that ended unaccepted after attempts that went out and got no
/// reply: providers bill those, so their estimate counts as the ledger counts it.
fn charge(st: &AppState, route: &Route, tag: &str, tier: &str, usd: f64) {
    st.budgets.record(&route.budget_key(), usd);
    st.budgets.record(tag, usd);
    st.metrics.add(
        "distill_gateway_spend_usd_total",
        &[("route", &route.cfg.name), ("tier", tier), ("tag", tag)],
        usd,
    );
}

/// Request counters shared by answered and cached requests.
fn count(st: &AppState, m: &Meter, tag: &str, finish: Option<&str>) {
    let source = if m.cache_hit { "cache" } else { "upstream" };
    st.metrics.inc(
        "distill_gateway_requests_total",
        &[
            ("route", &m.route),
            ("tier", &m.tier),
            ("tag", tag),
            ("source", source),
        ],
    );
    st.metrics.add(
        "distill_saved_usd_total",
        &[("model", &m.route), ("tag", tag)],
        m.saved_usd,
    );
    if finish == Some("length") {
        st.metrics.inc(
            "distill_gateway_finish_length_total",
            &[("route", &m.route), ("tier", &m.tier)],
        );
    }
}

/// Everything needed to meter an accepted call once its usage is known.
#[derive(Clone)]
pub(super) struct Settle {
    pub(super) st: Arc<AppState>,
    pub(super) gw: Arc<Gateway>,
    pub(super) ri: usize,
    pub(super) tier: usize,
    pub(super) tag: String,
    /// Where to cache the answer (when the route caches it).
    pub(super) key: Option<String>,
    pub(super) started: Instant,
    pub(super) meter: Meter,
}

impl Settle {
    /// Settles the ledger row, counts the dollars, and caches a complete answer.
    /// Run where a hang-up cannot cancel it (a spawned task): every await in here stands
    /// between a paid call and its ledger row.
    pub(super) async fn done(
        &self,
        call: PaidCall,
        usage: Usage,
        finish: Option<&str>,
        completion: Option<&Value>,
    ) -> Meter {
        self.done_as(call, usage, finish, completion, "ok").await
    }

    pub(super) async fn done_as(
        &self,
        call: PaidCall,
        usage: Usage,
        finish: Option<&str>,
        completion: Option<&Value>,
        status: &str,
    ) -> Meter {
        // Cached first: a repeat arriving while the ledger commits is already free.
        if let (Some(key), Some(c)) = (&self.key, completion) {
            let ttl = std::time::Duration::from_secs(self.gw.routes[self.ri].cfg.cache_ttl_s);
            let entry = CachedCompletion {
                tier: self.meter.tier.clone(),
                completion: c.clone(),
                usage,
            };
            self.st.cache.put(key, &entry, Some(ttl)).await;
        }
        let cost = call.settle(&usage, status).await;
        self.account(cost, &usage, finish, status);
        self.meter_for(cost, &usage)
    }

    pub(super) fn meter_for(&self, cost: f64, usage: &Usage) -> Meter {
        let premium = self.gw.tiers[self.gw.routes[self.ri].premium].cost(usage);
        Meter {
            cost_usd: cost,
            saved_usd: premium - cost,
            ..self.meter.clone()
        }
    }

    pub(super) fn account(&self, cost: f64, usage: &Usage, finish: Option<&str>, outcome: &str) {
        let st = &self.st;
        let route = &self.gw.routes[self.ri];
        charge(st, route, &self.tag, &self.meter.tier, cost);
        let labels = [
            ("route", route.cfg.name.as_str()),
            ("tier", self.meter.tier.as_str()),
            ("tag", self.tag.as_str()),
        ];
        st.metrics.add(
            "distill_gateway_tokens_total",
            &[labels[0], labels[1], ("kind", "prompt")],
            usage.prompt_tokens as f64,
        );
        st.metrics.add(
            "distill_gateway_tokens_total",
            &[labels[0], labels[1], ("kind", "completion")],
            usage.completion_tokens as f64,
        );
        st.metrics.observe(
            "distill_gateway_upstream_seconds",
            LATENCY_BUCKETS,
            &[labels[0], labels[1], ("outcome", outcome)],
            self.started.elapsed().as_secs_f64(),
        );
        count(st, &self.meter_for(cost, usage), &self.tag, finish);
    }
}
