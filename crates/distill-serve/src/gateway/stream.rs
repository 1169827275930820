//! Streams: an upstream's server-sent events relayed chunk by chunk (parsed on the way for
//! the content, finish reason and usage that the meter and the cache need), and a cached
//! answer replayed as a stream. A stream the client abandons is settled at what it received.

use super::relay::{usage_json, CachedCompletion, Meter, Settle};
use axum::body::{Body, Bytes};
use axum::http::HeaderValue;
use axum::response::Response;
use distill_core::{Provider, Usage};
use distill_teach::client::PaidCall;
use futures::StreamExt;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

pub(super) fn sse(payload: &str) -> Bytes {
    Bytes::from(format!("data: {payload}\n\n"))
}

fn sse_response(body: Body, meter: &Meter, cost_known: bool) -> Response {
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        axum::http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    meter.headers(h, cost_known);
    r
}

/// A stream's closing usage chunk (no choices), with the `distill` object.
fn usage_chunk(id: &Value, created: &Value, model: &Value, usage: &Usage, meter: &Meter) -> Value {
    json!({
        "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [], "usage": usage_json(usage), "distill": meter,
    })
}

/// A cached answer as a stream: the content in one chunk, the finish chunk, the usage chunk
/// when asked for, `[DONE]`.
pub(super) fn replay_stream(
    hit: &CachedCompletion,
    meter: &Meter,
    include_usage: bool,
) -> Response {
    let c = &hit.completion;
    let id = c.get("id").cloned().unwrap_or(Value::Null);
    let model = c.get("model").cloned().unwrap_or(Value::Null);
    let created = c.get("created").cloned().unwrap_or(Value::Null);
    let chunk = |delta: Value, finish: Value| {
        json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        })
    };
    let content = c
        .pointer("/choices/0/message/content")
        .cloned()
        .unwrap_or(Value::Null);
    let finish = c
        .pointer("/choices/0/finish_reason")
        .cloned()
        .unwrap_or(json!("stop"));
    let mut events = vec![
        chunk(
            json!({"role": "assistant", "content": content}),
            Value::Null,
        ),
        chunk(json!({}), finish),
    ];
    if include_usage {
        events.push(usage_chunk(&id, &created, &model, &hit.usage, meter));
    }
    let mut out: Vec<Result<Bytes, std::io::Error>> =
        events.iter().map(|e| Ok(sse(&e.to_string()))).collect();
    out.push(Ok(sse("[DONE]")));
    sse_response(Body::from_stream(futures::stream::iter(out)), meter, true)
}

/// What a relayed stream has seen so far.
struct StreamState {
    job: Settle,
    upstream: futures::stream::BoxStream<'static, reqwest::Result<Bytes>>,
    /// Bytes of an event not yet complete.
    buf: Vec<u8>,
    /// Events parsed and ready to send.
    ready: std::collections::VecDeque<Bytes>,
    call: Option<PaidCall>,
    content: String,
    first: Option<Value>,
    finish: Option<String>,
    usage: Option<Usage>,
    include_usage: bool,
    /// Whether a usage chunk went to the client (one is made up at the end if not).
    usage_sent: bool,
    /// The provider's own count as its events report it (Anthropic: input with cache reads
    /// and writes at `message_start`, output at `message_delta`): billed over our estimate
    /// when the stream ends early, and over the usage chunk's (which cannot carry cache
    /// writes) when it does not.
    provider_usage: Option<Arc<Mutex<Option<Usage>>>>,
    /// The upstream sent an error event.
    errored: bool,
    prompt_tokens: u64,
    ended: bool,
}

impl StreamState {
    /// Parses complete events out of `buf` into `ready`.
    fn parse(&mut self) {
        loop {
            let Some(end) = find_event_end(&self.buf) else {
                return;
            };
            let event: Vec<u8> = self.buf.drain(..end.0 + end.1).collect();
            let text = String::from_utf8_lossy(&event[..end.0]).to_string();
            let data: String = text
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|l| l.strip_prefix(' ').unwrap_or(l))
                .collect::<Vec<_>>()
                .join("\n");
            if data.is_empty() {
                continue;
            }
            if data.trim() == "[DONE]" {
                self.ended = true;
                return;
            }
            let Ok(mut v) = serde_json::from_str::<Value>(&data) else {
                // Not ours to judge: passed on as it came.
                self.ready.push_back(sse(&data));
                continue;
            };
            if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                self.usage = Some(distill_teach::provider::openai::usage(u));
            }
            if v.get("error").is_some_and(|e| !e.is_null()) {
                self.errored = true;
            }
            let choices_empty = v
                .get("choices")
                .and_then(Value::as_array)
                .is_none_or(|c| c.is_empty());
            if let Some(c) = v.pointer("/choices/0") {
                if let Some(t) = c.pointer("/delta/content").and_then(Value::as_str) {
                    self.content.push_str(t);
                }
                if let Some(f) = c.get("finish_reason").and_then(Value::as_str) {
                    self.finish = Some(f.to_string());
                }
            }
            if self.first.is_none() {
                self.first = Some(v.clone());
            }
            if choices_empty && v.get("usage").is_some() {
                // The usage chunk: ours (we always ask for it); the client's only if it asked.
                if !self.include_usage {
                    continue;
                }
                let usage = self.usage.unwrap_or_default();
                let cost = self.call.as_ref().map(|c| c.charged(&usage)).unwrap_or(0.0);
                v["distill"] =
                    serde_json::to_value(self.job.meter_for(cost, &usage)).unwrap_or(Value::Null);
                self.ready.push_back(sse(&v.to_string()));
                self.usage_sent = true;
                continue;
            }
            self.ready.push_back(sse(&data));
        }
    }

    /// The usage to bill: the upstream's, or (it sent none) our count of what was streamed.
    fn billed_usage(&self) -> Usage {
        let counted = || self.job.gw.count_tokens(&self.content);
        let reported = self
            .provider_usage
            .as_ref()
            .and_then(|u| *u.lock().unwrap_or_else(|p| p.into_inner()));
        if let Some(mut u) = reported {
            if self.finish.is_none() {
                // Cut before the final count: at least what was received.
                u.completion_tokens = u.completion_tokens.max(counted());
            }
            return u;
        }
        self.usage.unwrap_or_else(|| Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: counted(),
            ..Default::default()
        })
    }

    /// The usage chunk a client asked for when the upstream sent none (some servers ignore
    /// `stream_options`): our count of what was streamed, with the `distill` object.
    fn made_up_usage_chunk(&self) -> Option<Bytes> {
        if !self.include_usage || self.usage_sent {
            return None;
        }
        let usage = self.billed_usage();
        let cost = self.call.as_ref().map(|c| c.charged(&usage)).unwrap_or(0.0);
        let f = self.first.as_ref();
        let field = |k: &str| f.and_then(|f| f.get(k)).cloned().unwrap_or(Value::Null);
        let meter = self.job.meter_for(cost, &usage);
        let chunk = usage_chunk(
            &field("id"),
            &field("created"),
            &field("model"),
            &usage,
            &meter,
        );
        Some(sse(&chunk.to_string()))
    }

    async fn finish_ok(&mut self) {
        let Some(call) = self.call.take() else { return };
        let usage = self.billed_usage();
        let completion = self.first.as_ref().map(|f| {
            json!({
                "id": f.get("id").cloned().unwrap_or(Value::Null),
                "object": "chat.completion",
                "created": f.get("created").cloned().unwrap_or(Value::Null),
                "model": f.get("model").cloned().unwrap_or(Value::Null),
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": self.content},
                    "logprobs": null,
                    "finish_reason": self.finish.clone().unwrap_or_else(|| "stop".into()),
                }],
                "usage": usage_json(&usage),
            })
        });
        let whole = self.finish.is_some() && !self.errored;
        let completion = completion.filter(|_| whole);
        let finish = self.finish.clone();
        let status = if self.errored { "error" } else { "ok" };
        // Spawned: a client hanging up now (while the cache or the ledger is written) drops
        // this stream, and would otherwise drop the settling half done.
        let job = self.job.clone();
        let settle = self.job.gw.detached.spawn(async move {
            job.done_as(call, usage, finish.as_deref(), completion.as_ref(), status)
                .await
        });
        if let Err(e) = settle.await {
            tracing::error!("gateway stream settle: {e}");
        }
    }
}

impl Drop for StreamState {
    /// The client went away (or the upstream broke) mid-answer: the call is still settled, at
    /// the tokens received so far, with status `cut`.
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            let usage = self.billed_usage();
            let cost = call.settle_now(&usage, "cut");
            self.job.account(cost, &usage, None, "cut");
        }
    }
}

/// Where the first complete SSE event ends: (length of the event, length of its separator).
pub(super) fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

pub(super) fn relay_stream(
    job: Settle,
    provider: Provider,
    response: reqwest::Response,
    call: PaidCall,
    include_usage: bool,
    prompt_tokens: u64,
) -> Response {
    let meter = job.meter.clone();
    let chunk_timeout = job.gw.tiers[job.tier].timeout;
    let mut provider_usage = None;
    let upstream = match provider {
        Provider::Openai => response.bytes_stream().boxed(),
        Provider::Anthropic => {
            let mut events = super::anthropic::StreamTranslator::new();
            provider_usage = Some(events.usage_so_far());
            response
                .bytes_stream()
                .map(move |b| b.map(|b| events.push(&b)))
                .boxed()
        }
    };
    let state = StreamState {
        job,
        upstream,
        buf: Vec::new(),
        ready: Default::default(),
        call: Some(call),
        content: String::new(),
        first: None,
        finish: None,
        usage: None,
        include_usage,
        usage_sent: false,
        provider_usage,
        errored: false,
        prompt_tokens,
        ended: false,
    };
    let body = futures::stream::unfold(Some(state), move |state| async move {
        let mut s = state?;
        loop {
            if let Some(b) = s.ready.pop_front() {
                return Some((Ok::<_, std::io::Error>(b), Some(s)));
            }
            if s.ended {
                if let Some(chunk) = s.made_up_usage_chunk() {
                    s.usage_sent = true;
                    return Some((Ok(chunk), Some(s)));
                }
                s.finish_ok().await;
                return Some((Ok(sse("[DONE]")), None));
            }
            match tokio::time::timeout(chunk_timeout, s.upstream.next()).await {
                Ok(Some(Ok(bytes))) => {
                    s.buf.extend_from_slice(&bytes);
                    s.parse();
                }
                Ok(None) => {
                    // The upstream closed without [DONE]: what it sent is the answer.
                    s.buf.extend_from_slice(b"\n\n");
                    s.parse();
                    s.ended = true;
                }
                Ok(Some(Err(e))) => {
                    tracing::warn!("gateway stream broke: {}", e.without_url());
                    return None; // dropping `s` settles the call as cut
                }
                Err(_) => {
                    tracing::warn!("gateway stream stalled for {chunk_timeout:?}");
                    return None;
                }
            }
        }
    });
    sse_response(Body::from_stream(body), &meter, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sse_event_boundaries() {
        assert_eq!(find_event_end(b"data: x\n\ndata: y"), Some((7, 2)));
        assert_eq!(find_event_end(b"data: x\r\n\r\n"), Some((7, 4)));
        assert_eq!(find_event_end(b"data: x\n"), None);
    }
}
