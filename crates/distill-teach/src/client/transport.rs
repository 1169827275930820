//! One exchange with the provider: the cache and identical requests in flight first, then a
//! ledger row written before the call is sent, the wire bytes, retries with backoff under the
//! rate limits, and the reply's cost.

use super::*;
use distill_core::ledger::UNANSWERED;

/// One request/response exchange.
pub(super) struct Exchange {
    pub(super) reply: Reply,
    pub(super) hash: String,
    pub(super) cached: bool,
    /// What the reply was billed, plus any unanswered attempts before it.
    pub(super) cost: f64,
    /// Attempts that may be billed: the one answered and any unanswered before it.
    pub(super) paid_calls: u32,
    pub(super) latency_ms: u64,
}

/// A request that got no answer to use: why, and what its unanswered attempts are charged.
pub(super) struct Failure {
    pub(super) message: String,
    pub(super) cost: f64,
    /// Attempts that were sent and may be billed ([`UNANSWERED`]).
    pub(super) paid_calls: u32,
}

/// A 502 or 504: a proxy in front of the provider gave up waiting for it, which does not say
/// the provider did not answer (and bill) the request.
pub(super) fn proxy_gave_up(status: u16) -> bool {
    matches!(status, 502 | 504)
}

/// The ledger rows of `attempts` unanswered attempts at `estimate`'s price: the first completes
/// `intent` when given, the others are new rows.
pub(super) fn unanswered_rows(
    estimate: &LedgerRow,
    intent: Option<i64>,
    attempts: u32,
    timeout: Duration,
) -> Vec<LedgerRow> {
    (0..attempts)
        .map(|i| LedgerRow {
            id: intent.filter(|_| i == 0),
            ts: LedgerRow::now(),
            latency_ms: timeout.as_millis() as u64,
            status: UNANSWERED.into(),
            ..estimate.clone()
        })
        .collect()
}

pub(super) enum Sent {
    Reply(Reply, u64),
    /// Gave up on this request (retries exhausted, 413/422...): the record fails, the job goes on.
    Failed(String),
    /// The server does not take `response_format: json_schema` (see [`rejects_json_schema`]).
    SchemaRejected(String),
}

impl TeacherClient {
    /// One request: from the cache, from an identical request in flight, or paid.
    /// `prompt_tokens` is its prompt counted with the teacher's tokenizer.
    pub(super) async fn exchange(
        &self,
        msgs: &[Msg],
        ctx: &CallContext,
        pending: &mut Pending,
        prompt_tokens: u64,
    ) -> Result<Result<Exchange, Failure>> {
        let body = self.wire.body(msgs);
        let hash = self.hash_body(&body);
        let hit = |reply: Reply| Exchange {
            reply,
            hash: hash.clone(),
            cached: true,
            cost: 0.0,
            paid_calls: 0,
            latency_ms: 0,
        };
        if let Some(r) = self.lookup(&hash)? {
            return Ok(Ok(hit(r)));
        }
        // Single flight: identical requests wait for the first and reuse its reply.
        let guard = loop {
            let waiting = {
                let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
                match map.get(&hash) {
                    Some(rx) => Err(rx.clone()),
                    None => {
                        let (tx, rx) = watch::channel(false);
                        map.insert(hash.clone(), rx);
                        Ok(tx)
                    }
                }
            };
            match waiting {
                Ok(tx) => {
                    break InflightGuard {
                        client: self,
                        hash: hash.clone(),
                        tx: Some(tx),
                    }
                }
                Err(mut rx) => {
                    // Err means the leader finished or was cancelled; either way re-check.
                    let _ = rx.wait_for(|done| *done).await;
                    if let Some(r) = self.lookup(&hash)? {
                        return Ok(Ok(hit(r)));
                    }
                }
            }
        };
        // Providers count a request against the token limit as its prompt plus max_tokens.
        self.limiter
            .acquire(prompt_tokens + u64::from(self.wire.max_tokens))
            .await;
        let estimate = self.estimate_row(&hash, ctx, prompt_tokens);
        let intent = self.begin_call(&estimate)?;
        let mut unanswered = 0;
        let may_retry = || ctx.guard.as_ref().is_none_or(|g| (g.0)(estimate.cost_usd));
        let sent = self.send(&body, &mut unanswered, &may_retry).await;
        // Attempts that went out and got no usable reply may be billed: they stay in the ledger
        // and in this record's cost. A call refused or never sent is not billed.
        let replied = matches!(sent, Ok(Sent::Reply(..)));
        let charged = estimate.cost_usd * f64::from(unanswered);
        let rows = unanswered_rows(
            &estimate,
            intent.filter(|_| !replied),
            unanswered,
            self.timeout,
        );
        if let Some(l) = &self.ledger {
            match (&sent, intent) {
                // The job stops: nothing journals these rows, so they are written now.
                (Err(_), _) if !rows.is_empty() => l.append_many(&rows)?,
                (Ok(_), _) if !rows.is_empty() => pending.ledger.extend(rows),
                (_, Some(id)) if !replied => l.discard(id)?,
                _ => {}
            }
        }
        let result = match sent? {
            Sent::Failed(message) | Sent::SchemaRejected(message) => Ok(Err(Failure {
                message,
                cost: charged,
                paid_calls: unanswered,
            })),
            Sent::Reply(reply, latency_ms) => {
                let billed = self.cost(&reply.usage, false);
                pending.ledger.push(LedgerRow {
                    id: intent,
                    ts: LedgerRow::now(),
                    task: self.spec.name.clone(),
                    provider: self.wire.provider.as_str().into(),
                    model: self.wire.model.clone(),
                    request_hash: hash.clone(),
                    usage: reply.usage,
                    cost_usd: billed,
                    latency_ms,
                    status: "ok".into(),
                    batch_id: None,
                    price_version: self.prices.version.clone(),
                    source: ctx.source.clone(),
                    tag: ctx.tag.clone(),
                });
                pending.cache.push(CacheEntry {
                    hash: hash.clone(),
                    model: self.wire.model.clone(),
                    reply: reply.clone(),
                });
                self.recent
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(hash.clone(), reply.clone());
                Ok(Ok(Exchange {
                    reply,
                    hash: hash.clone(),
                    cached: false,
                    cost: billed + charged,
                    paid_calls: 1 + unanswered,
                    latency_ms,
                }))
            }
        };
        drop(guard);
        result
    }

    /// A call about to be paid, priced as if the reply used all of `max_tokens`: the
    /// `in_flight` row written before it is sent, and each unanswered attempt's row.
    fn estimate_row(&self, hash: &str, ctx: &CallContext, prompt_tokens: u64) -> LedgerRow {
        let usage = Usage {
            prompt_tokens,
            completion_tokens: u64::from(self.wire.max_tokens),
            ..Default::default()
        };
        LedgerRow {
            id: None,
            ts: LedgerRow::now(),
            task: self.spec.name.clone(),
            provider: self.wire.provider.as_str().into(),
            model: self.wire.model.clone(),
            request_hash: hash.to_string(),
            usage,
            cost_usd: self.cost(&usage, false),
            latency_ms: 0,
            status: distill_core::ledger::IN_FLIGHT.into(),
            batch_id: None,
            price_version: self.prices.version.clone(),
            source: ctx.source.clone(),
            tag: ctx.tag.clone(),
        }
    }

    /// Records a call about to be paid as an `in_flight` ledger row, so a kill while it is
    /// out still shows in the ledger.
    fn begin_call(&self, estimate: &LedgerRow) -> Result<Option<i64>> {
        match &self.ledger {
            Some(ledger) => Ok(Some(ledger.begin(estimate)?)),
            None => Ok(None),
        }
    }

    pub(super) fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.backoff_base.as_secs_f64() * 2f64.powi(attempt.min(16) as i32);
        let capped = exp.min(8.0);
        Duration::from_secs_f64(capped * rand::thread_rng().gen_range(0.5..=1.0))
    }

    /// The bytes to POST for a request body: the body itself, or with the schema moved into
    /// a `json_object` format once the server rejected `json_schema`. The second value says
    /// whether the bytes ask for `json_schema`.
    fn wire_bytes(&self, body: &serde_json::Value) -> (Vec<u8>, bool) {
        let json_schema = self.wire.provider == Provider::Openai
            && self.wire.format == ResponseFormat::JsonSchema
            && body.get("response_format").is_some();
        if json_schema && self.schema_as_json_object.load(Ordering::Relaxed) {
            let mut b = body.clone();
            b["response_format"] =
                serde_json::json!({"type": "json_object", "schema": self.wire.schema});
            return (serde_json::to_vec(&b).unwrap_or_default(), false);
        }
        (serde_json::to_vec(body).unwrap_or_default(), json_schema)
    }

    /// POSTs a request body; when the server rejects `json_schema`, switches this client to
    /// `json_object` + schema and resends at once (the rejection is not a retry).
    async fn send(
        &self,
        body: &serde_json::Value,
        unanswered: &mut u32,
        may_retry: &(dyn Fn() -> bool + Sync),
    ) -> Result<Sent> {
        let (bytes, json_schema) = self.wire_bytes(body);
        match self
            .send_bytes(bytes, json_schema, unanswered, may_retry)
            .await?
        {
            Sent::SchemaRejected(message) => {
                if !self.schema_as_json_object.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "{} rejected response_format json_schema ({}); sending the schema as \
                         json_object from now on (set [output] format = \"json_object\" to skip this)",
                        self.wire.base_url,
                        message.chars().take(200).collect::<String>()
                    );
                }
                let (bytes, _) = self.wire_bytes(body);
                Ok(
                    match self.send_bytes(bytes, false, unanswered, may_retry).await? {
                        Sent::SchemaRejected(m) => Sent::Failed(m),
                        other => other,
                    },
                )
            }
            other => Ok(other),
        }
    }

    /// POSTs with retries on 408/409/429/5xx/529 and connection errors. `json_schema`: the
    /// bytes ask for `response_format: json_schema`, so a rejection of it is reported as
    /// [`Sent::SchemaRejected`] instead of retried or fatal. Counts in `unanswered` the
    /// attempts that reached the provider and got no usable reply (see [`UNANSWERED`]); an
    /// attempt after one of those is sent only if `may_retry` (the job's budget) agrees.
    async fn send_bytes(
        &self,
        bytes: Vec<u8>,
        json_schema: bool,
        unanswered: &mut u32,
        may_retry: &(dyn Fn() -> bool + Sync),
    ) -> Result<Sent> {
        let url = self.wire.endpoint();
        let mut last = String::new();
        for attempt in 0..=self.max_retries {
            let unanswered_before = *unanswered;
            let started = Instant::now();
            let mut req = self
                .http
                .post(&url)
                .timeout(self.timeout)
                .header("content-type", "application/json")
                .body(bytes.clone());
            for (k, v) in self.wire.auth_headers(&self.key) {
                req = req.header(k, v);
            }
            // How long to wait before the next attempt (a cut reply breaks out early).
            let wait = 'attempt: {
                match req.send().await {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        let after = retry_after(resp.headers());
                        let body = match resp.bytes().await {
                            Ok(b) => b,
                            Err(e) => {
                                // An error status is not billed; a 2xx one was, cut or not, and a
                                // proxy's 502/504 may have been.
                                *unanswered += u32::from(
                                    (200..300).contains(&status) || proxy_gave_up(status),
                                );
                                last = format!(
                                    "reading the reply: {}",
                                    redact(&e.to_string(), &self.key)
                                );
                                break 'attempt self.backoff(attempt);
                            }
                        };
                        let latency = started.elapsed().as_millis() as u64;
                        if (200..300).contains(&status) {
                            return Ok(match self.wire.parse_reply(&body) {
                                Ok(r) => Sent::Reply(r, latency),
                                Err(m) => {
                                    *unanswered += 1;
                                    Sent::Failed(m)
                                }
                            });
                        }
                        // A proxy's 502/504: it gave up waiting, and the provider may have gone on.
                        *unanswered += u32::from(proxy_gave_up(status));
                        let err = self.wire.parse_error(status, &body);
                        let message = redact(&err.message, &self.key);
                        if json_schema && rejects_json_schema(status, &message) {
                            return Ok(Sent::SchemaRejected(format!(
                                "HTTP {status} {}: {message}",
                                err.kind
                            )));
                        }
                        let quota = matches!(
                            err.kind.as_str(),
                            "insufficient_quota" | "billing_error" | "billing_hard_limit_reached"
                        );
                        if quota || (400..=404).contains(&status) {
                            return Err(TeachError::Fatal {
                                provider: format!(
                                    "{} at {}",
                                    self.wire.provider.as_str(),
                                    self.wire.base_url
                                ),
                                status,
                                kind: err.kind,
                                message,
                            });
                        }
                        last = format!("HTTP {status} {}: {message}", err.kind);
                        if !super::forward::retryable(status) {
                            return Ok(Sent::Failed(last));
                        }
                        after.unwrap_or_else(|| self.backoff(attempt))
                    }
                    Err(e) => {
                        let msg = redact(&e.to_string(), &self.key);
                        // Past the connection, the request may have reached the provider.
                        *unanswered += u32::from(!e.is_connect());
                        if e.is_connect() && attempt == self.max_retries {
                            return Err(TeachError::Unreachable {
                                url: self.wire.base_url.clone(),
                                message: format!("{msg} (after {} attempts)", attempt + 1),
                            });
                        }
                        last = if e.is_timeout() {
                            format!("timed out after {:?}", self.timeout)
                        } else {
                            format!("request failed: {msg}")
                        };
                        self.backoff(attempt)
                    }
                }
            };
            if attempt < self.max_retries {
                if *unanswered > unanswered_before && !may_retry() {
                    return Ok(Sent::Failed(format!(
                        "gave up after {} attempts: {last}; the budget (--max-spend) leaves no \
                         room for another attempt that may be billed",
                        attempt + 1
                    )));
                }
                tracing::debug!("retrying in {wait:?}: {last}");
                tokio::time::sleep(wait).await;
            }
        }
        Ok(Sent::Failed(format!(
            "gave up after {} attempts: {last}",
            self.max_retries + 1
        )))
    }
}

/// Removes the in-flight marker and wakes identical requests, even on cancellation.
struct InflightGuard<'a> {
    client: &'a TeacherClient,
    hash: String,
    tx: Option<watch::Sender<bool>>,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        // Unregister before waking, so a woken waiter that misses the cache leads a new call.
        self.client
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.hash);
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(true);
        }
    }
}
