//! Forwarding a caller's own request (the gateway's tiers): the body goes to the provider as
//! the caller wrote it, under this client's key, rate limits, retries and ledger. Nothing is
//! cached here; the caller decides what may be (a gateway route's cache policy).
//!
//! Ledger: a row is written `in_flight` (priced at the request's worst case) before the call
//! is sent, and [`PaidCall::settle`] completes it with what the provider billed. A refused call,
//! or one that never reached the provider, is not billed and its row is removed; an attempt
//! that was sent and got no reply (a timeout, a connection cut after sending) stays as an
//! `unanswered` row at its estimate, since providers bill requests they finished.

use super::*;

/// A call the provider accepted: its HTTP response (2xx, body unread, so a stream can be
/// relayed chunk by chunk) and the ledger row to settle once the usage is known.
pub struct Accepted {
    pub response: reqwest::Response,
    pub call: PaidCall,
}

/// What forwarding one request came to.
pub enum Forwarded {
    Accepted(Box<Accepted>),
    /// The provider answered with an error retrying cannot fix (400, 401, 404, 413, 422...):
    /// its status and body, to relay to the caller. Not billed, unless earlier attempts went
    /// unanswered.
    Refused {
        status: u16,
        body: Vec<u8>,
        /// What earlier unanswered attempts are charged (0 when none).
        charged_usd: f64,
    },
    /// Retries exhausted on 408/409/429/5xx, timeouts or connection errors (a fallback tier's
    /// cue). The message never contains the API key.
    GaveUp {
        status: Option<u16>,
        message: String,
        /// What its unanswered attempts are charged (their estimates; 0 when none went out).
        charged_usd: f64,
    },
}

/// Where a call's row is kept: the client's own connection, or a shared batching writer.
enum Sink {
    Direct(std::sync::Arc<Ledger>),
    Queued(std::sync::Arc<crate::ledger_writer::LedgerWriter>),
}

/// An accepted call's ledger row, waiting for the usage.
pub struct PaidCall {
    ledger: Option<(Sink, i64)>,
    row: LedgerRow,
    started: Instant,
    price: Option<ModelPrice>,
    /// What unanswered attempts before the accepted one are charged (already in the ledger).
    unanswered_usd: f64,
}

impl PaidCall {
    /// Milliseconds since the (last) attempt was sent.
    pub fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
    /// The usage the call was recorded under before it was sent: its prompt and a reply of
    /// all its `max_tokens` (what an unreadable reply is charged at).
    pub fn estimate(&self) -> Usage {
        self.row.usage
    }

    /// What the call comes to if the reply used `usage`: that, plus the attempts before it
    /// that went unanswered ([`Self::settle`] returns the same).
    pub fn charged(&self, usage: &Usage) -> f64 {
        self.cost(usage) + self.unanswered_usd
    }

    /// What `usage` costs at the tier's price.
    pub fn cost(&self, usage: &Usage) -> f64 {
        self.price
            .as_ref()
            .map(|p| p.cost(usage, false))
            .unwrap_or(0.0)
    }
    fn completed(&mut self, usage: &Usage, status: &str, cost: f64) -> Option<(Sink, LedgerRow)> {
        let (sink, id) = self.ledger.take()?;
        let mut row = self.row.clone();
        row.id = Some(id);
        row.ts = LedgerRow::now();
        row.usage = *usage;
        row.cost_usd = cost;
        row.latency_ms = self.elapsed_ms();
        row.status = status.into();
        Some((sink, row))
    }

    /// Completes the ledger row with the billed usage and `status` (`ok`, `error`), waiting
    /// for the commit; returns the call's cost, unanswered attempts before it included.
    pub async fn settle(mut self, usage: &Usage, status: &str) -> f64 {
        let cost = self.cost(usage);
        let result = match self.completed(usage, status, cost) {
            None => Ok(()),
            Some((Sink::Direct(l), row)) => l.append(&row).map_err(|e| e.to_string()),
            Some((Sink::Queued(w), row)) => w.complete(row).await,
        };
        if let Err(e) = result {
            tracing::warn!("could not settle a call in the ledger: {e}");
        }
        cost + self.unanswered_usd
    }

    /// [`Self::settle`] without waiting for a queued commit: for a stream the caller
    /// abandoned (`cut`), settled from a destructor.
    pub fn settle_now(mut self, usage: &Usage, status: &str) -> f64 {
        let cost = self.cost(usage);
        match self.completed(usage, status, cost) {
            None => {}
            Some((Sink::Direct(l), row)) => {
                if let Err(e) = l.append(&row) {
                    tracing::warn!("could not settle a call in the ledger: {e}");
                }
            }
            Some((Sink::Queued(w), row)) => w.complete_later(row),
        }
        cost + self.unanswered_usd
    }
}

impl Sink {
    /// Writes completed rows, waiting for a queued commit.
    async fn write(&self, rows: Vec<LedgerRow>) -> Result<()> {
        match self {
            Sink::Direct(l) => l.append_many(&rows)?,
            Sink::Queued(w) => {
                for row in rows {
                    w.complete(row).await.map_err(|e| {
                        TeachError::Invalid(format!("cannot record an unanswered call: {e}"))
                    })?;
                }
            }
        }
        Ok(())
    }
}

impl TeacherClient {
    /// POSTs `body` (a complete request in this client's wire protocol) to its endpoint,
    /// retrying 408/409/429/5xx and connection errors with backoff (honouring `retry-after`).
    /// `prompt_tokens` and `max_tokens` size the rate-limit reservation and the in-flight
    /// ledger row; `task` is the row's task (the gateway's route). With `stream`, the timeout
    /// covers the response headers only: the caller times the chunks.
    pub async fn forward(
        &self,
        body: &serde_json::Value,
        stream: bool,
        prompt_tokens: u64,
        max_tokens: u64,
        task: &str,
        ctx: &CallContext,
    ) -> Result<Forwarded> {
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        let hash = distill_core::fsutil::sha256_hex(&bytes);
        self.limiter.acquire(prompt_tokens + max_tokens).await;
        let usage = Usage {
            prompt_tokens,
            completion_tokens: max_tokens,
            ..Default::default()
        };
        let row = LedgerRow {
            id: None,
            ts: LedgerRow::now(),
            task: task.to_string(),
            provider: self.wire.provider.as_str().into(),
            model: self.wire.model.clone(),
            request_hash: hash,
            usage,
            cost_usd: self.cost(&usage, false),
            latency_ms: 0,
            status: distill_core::ledger::IN_FLIGHT.into(),
            batch_id: None,
            price_version: self.prices.version.clone(),
            source: ctx.source.clone(),
            tag: ctx.tag.clone(),
        };
        let (sink, id) = match (&self.ledger_writer, &self.ledger) {
            (Some(w), _) => {
                let id = w.begin(row.clone()).await.map_err(|e| {
                    TeachError::Invalid(format!("cannot record the call in the ledger: {e}"))
                })?;
                (Some(Sink::Queued(w.clone())), Some(id))
            }
            (None, Some(l)) => (Some(Sink::Direct(l.clone())), Some(l.begin(&row)?)),
            (None, None) => (None, None),
        };
        // A call that ends unaccepted: its unanswered attempts stay (the first completes the
        // in-flight row); with none, nothing was billed and the row goes.
        let close = |unanswered: u32| {
            let (sink, row, timeout) = (&sink, &row, self.timeout);
            async move {
                match (sink, id) {
                    (Some(s), _) if unanswered > 0 => {
                        s.write(super::transport::unanswered_rows(
                            row, id, unanswered, timeout,
                        ))
                        .await?
                    }
                    (Some(Sink::Direct(l)), Some(id)) => l.discard(id)?,
                    (Some(Sink::Queued(w)), Some(id)) => w.discard(id).await.map_err(|e| {
                        TeachError::Invalid(format!("cannot remove an unbilled call's row: {e}"))
                    })?,
                    _ => {}
                }
                Result::<()>::Ok(())
            }
        };
        let url = self.wire.endpoint();
        let mut last = String::new();
        let mut last_status = None;
        // Attempts sent that got no reply: each stays in the ledger (see the module's doc).
        let mut unanswered = 0u32;
        for attempt in 0..=self.max_retries {
            let started = Instant::now();
            let mut req = self
                .http
                .post(&url)
                .header("content-type", "application/json")
                .body(bytes.clone());
            if !stream {
                req = req.timeout(self.timeout);
            }
            for (k, v) in self.wire.auth_headers(&self.key) {
                req = req.header(k, v);
            }
            let sent = match tokio::time::timeout(self.timeout, req.send()).await {
                Ok(r) => r,
                Err(_) => {
                    last = format!("timed out after {:?}", self.timeout);
                    last_status = None;
                    unanswered += 1;
                    if attempt < self.max_retries {
                        tokio::time::sleep(self.backoff(attempt)).await;
                    }
                    continue;
                }
            };
            let wait = match sent {
                Ok(resp) if resp.status().is_success() => {
                    if let (Some(sink), true) = (&sink, unanswered > 0) {
                        sink.write(super::transport::unanswered_rows(
                            &row,
                            None,
                            unanswered,
                            self.timeout,
                        ))
                        .await?;
                    }
                    return Ok(Forwarded::Accepted(Box::new(Accepted {
                        response: resp,
                        call: PaidCall {
                            ledger: sink.zip(id),
                            unanswered_usd: row.cost_usd * f64::from(unanswered),
                            row,
                            started,
                            price: self.price.clone(),
                        },
                    })));
                }
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    unanswered += u32::from(super::transport::proxy_gave_up(status));
                    let after = retry_after(resp.headers());
                    let body = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
                    if !retryable(status) {
                        close(unanswered).await?;
                        return Ok(Forwarded::Refused {
                            status,
                            body,
                            charged_usd: row.cost_usd * f64::from(unanswered),
                        });
                    }
                    let err = self.wire.parse_error(status, &body);
                    last = format!(
                        "HTTP {status} {}: {}",
                        err.kind,
                        redact(&err.message, &self.key)
                    );
                    last_status = Some(status);
                    after.unwrap_or_else(|| self.backoff(attempt))
                }
                Err(e) => {
                    // Past the connection, the request may have reached the provider.
                    unanswered += u32::from(!e.is_connect());
                    last = if e.is_timeout() {
                        format!("timed out after {:?}", self.timeout)
                    } else {
                        format!(
                            "request failed: {}",
                            redact(&e.without_url().to_string(), &self.key)
                        )
                    };
                    last_status = None;
                    self.backoff(attempt)
                }
            };
            if attempt < self.max_retries {
                tracing::debug!("retrying in {wait:?}: {last}");
                tokio::time::sleep(wait).await;
            }
        }
        close(unanswered).await?;
        Ok(Forwarded::GaveUp {
            status: last_status,
            message: format!("gave up after {} attempts: {last}", self.max_retries + 1),
            charged_usd: row.cost_usd * f64::from(unanswered),
        })
    }
}

/// Statuses worth another attempt: timeouts, conflicts, rate limits and server errors
/// (Anthropic's 529 overloaded among them).
pub(crate) fn retryable(status: u16) -> bool {
    matches!(status, 408 | 409 | 429) || status >= 500
}
