//! The cascade: the decision each input gets. The answer cache first, then one
//! micro-batched student pass for the misses, then the teacher for the unsure ones, within
//! the budgets; a sample of the sure ones is also sent to the teacher as shadow traffic.
//! Every answer, whichever source gave it, is in the served model's notation.

use crate::batcher::BatchError;
use crate::budget::{CapHit, DEFAULT_TAG};
use crate::cache::{cache_key, normalise, Cache, CachedAnswer};
use crate::escalate::{CallContext, Escalator};
use crate::server::{Answer, ApiError, AppState, InFlight, ServedModel};
use crate::shadow::ShadowRow;
use crate::student::{AnswerShape, Input};
use axum::http::StatusCode;
use distill_train::Prediction;
use std::sync::Arc;

/// The cascade for a batch of inputs: cache, then one micro-batched student pass for the
/// misses, then the teacher (concurrently) for those below the threshold.
pub(crate) async fn answer_many(
    st: &Arc<AppState>,
    m: &Arc<ServedModel>,
    inputs: Vec<Input>,
    tag: &str,
    endpoint: &'static str,
) -> std::result::Result<Vec<Answer>, ApiError> {
    let spans = m.card.shape == AnswerShape::Spans;
    // What the student and the teacher see; spans point into it, so a span model's text
    // is kept exactly as sent.
    let asked: Vec<Input> = inputs
        .into_iter()
        .map(|i| Input {
            text: if spans {
                i.text
            } else {
                normalise(&i.text, m.case_insensitive)
            },
            context: i.context,
        })
        .collect();
    let keys: Vec<String> = asked
        .iter()
        .map(|i| {
            if i.context.is_empty() {
                cache_key(&m.name, &i.text)
            } else {
                let context = serde_json::to_string(&i.context).unwrap_or_default();
                cache_key(&m.name, &format!("{}\u{1f}{context}", i.text))
            }
        })
        .collect();
    // An entry this model cannot read (written by a retrained model with other labels, in a
    // shared cache) is a miss, not an answer outside its labels.
    let cached: Vec<Option<CachedAnswer>> =
        futures::future::join_all(keys.iter().map(|k| st.cache.get(k)))
            .await
            .into_iter()
            .zip(&asked)
            .map(|(c, i): (Option<CachedAnswer>, _)| c.filter(|c| m.card.reads(&c.label, &i.text)))
            .collect();
    let miss_idx: Vec<usize> = (0..asked.len()).filter(|&i| cached[i].is_none()).collect();
    let caching = !matches!(st.cache, Cache::Off);
    if caching {
        let hits = (asked.len() - miss_idx.len()) as f64;
        let model = [("model", m.name.as_str())];
        st.metrics.add("distill_cache_hits_total", &model, hits);
        st.metrics
            .add("distill_cache_misses_total", &model, miss_idx.len() as f64);
    }
    let preds = if miss_idx.is_empty() {
        Vec::new()
    } else {
        m.batcher
            .predict(miss_idx.iter().map(|&i| asked[i].clone()).collect())
            .await
            .map_err(|e| match e {
                BatchError::Overloaded => ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    Some("overloaded"),
                    e.to_string(),
                ),
                other => {
                    tracing::error!("model `{}`: {other}", m.name);
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "server_error",
                        None,
                        format!("model `{}` failed", m.name),
                    )
                }
            })?
    };
    let mut pred_of = vec![None; asked.len()];
    for (i, p) in miss_idx.into_iter().zip(preds) {
        pred_of[i] = Some(p);
    }
    let futs = (0..asked.len()).map(|i| {
        let cached = cached[i].clone();
        let pred = pred_of[i].take();
        let input = &asked[i];
        let key = &keys[i];
        async move {
            let saved = m.estimator.estimate(&input.text);
            match (cached, pred) {
                (Some(c), _) => Answer::free(c.label, c.confidence, "cache", saved),
                (None, Some(p)) => decide(st, m, input, key, p, tag, endpoint, saved).await,
                (None, None) => unreachable!("every cache miss has a prediction"),
            }
        }
    });
    let mut answers = futures::future::join_all(futs).await;
    // Every answer is in the model's notation (its own, the cache's, the teacher's through
    // `TeachEscalator::answering_in`); a label set is a list, spans are spans, either way.
    for (a, input) in answers.iter_mut().zip(&asked) {
        let read = match m.card.shape {
            AnswerShape::Label => continue,
            AnswerShape::LabelSet => m.card.labels_of(&a.label).map(|l| a.labels = Some(l)),
            AnswerShape::Spans => m
                .card
                .spans_of(&a.label, &input.text)
                .map(|s| a.spans = Some(s)),
        };
        if let Err(e) = read {
            tracing::error!("model `{}`: answer `{}`: {e}", m.name, a.label);
            match m.card.shape {
                AnswerShape::LabelSet => a.labels = Some(Vec::new()),
                _ => a.spans = Some(Vec::new()),
            }
        }
    }
    for a in &answers {
        st.metrics.inc(
            "distill_requests_total",
            &[
                ("model", &m.name),
                ("endpoint", endpoint),
                ("tag", tag),
                ("source", a.source),
            ],
        );
        st.metrics.add(
            "distill_saved_usd_total",
            &[("model", &m.name), ("tag", tag)],
            a.saved_usd,
        );
    }
    Ok(answers)
}

#[allow(clippy::too_many_arguments)]
async fn decide(
    st: &Arc<AppState>,
    m: &Arc<ServedModel>,
    input: &Input,
    key: &str,
    p: Prediction,
    tag: &str,
    endpoint: &'static str,
    saved: f64,
) -> Answer {
    let student = Answer::free(p.label.clone(), p.confidence, "student", saved);
    // A sure answer (or a model that never escalates) is the student's; a sample of the sure
    // ones is also asked of the teacher, off the latency path.
    let esc = match m.escalator.clone() {
        Some(esc) if p.confidence < m.threshold => esc,
        sure_or_alone => {
            let sample = st.shadow.is_some()
                && st.shadow_rate > 0.0
                && rand::random::<f64>() < st.shadow_rate;
            if let Some(esc) = sure_or_alone.filter(|_| sample) {
                shadow(
                    st.clone(),
                    m.clone(),
                    esc,
                    input.clone(),
                    p.clone(),
                    tag.to_string(),
                );
            }
            st.cache
                .put(
                    key,
                    &CachedAnswer {
                        label: p.label,
                        confidence: p.confidence,
                        origin: "student".into(),
                    },
                    None,
                )
                .await;
            return student;
        }
    };
    let labels = [("model", m.name.as_str()), ("tag", tag)];
    if let Some(hit) = st.budgets.check(tag) {
        capped(st, &hit, "answering from the student");
        st.metrics.inc(
            "distill_escalations_total",
            &[labels[0], labels[1], ("outcome", "budget_capped")],
        );
        return Answer {
            budget_capped: true,
            ..student
        };
    }
    let ctx = CallContext {
        source: format!("serve.{endpoint}"),
        tag: (tag != DEFAULT_TAG).then(|| tag.to_string()),
    };
    let outcome = tokio::time::timeout(st.teacher_timeout, esc.label(input.prompt(), &ctx)).await;
    match outcome {
        Ok(Ok(e)) => {
            st.budgets.record(tag, e.cost_usd);
            st.metrics
                .add("distill_escalation_spend_usd_total", &labels, e.cost_usd);
            st.metrics.inc(
                "distill_escalations_total",
                &[labels[0], labels[1], ("outcome", "ok")],
            );
            st.cache
                .put(
                    key,
                    &CachedAnswer {
                        label: e.label.clone(),
                        confidence: p.confidence,
                        origin: "teacher".into(),
                    },
                    None,
                )
                .await;
            Answer {
                student_label: Some(p.label),
                label: e.label,
                source: "teacher",
                cost_usd: e.cost_usd,
                saved_usd: if e.cached { saved } else { 0.0 },
                ..student
            }
        }
        failure => {
            let why = match failure {
                Ok(Err(e)) => e.to_string(),
                _ => format!("no answer within {:?}", st.teacher_timeout),
            };
            tracing::warn!(model = %m.name, "escalation failed, answering from the student: {why}");
            st.metrics.inc(
                "distill_escalations_total",
                &[labels[0], labels[1], ("outcome", "failed")],
            );
            Answer {
                degraded: true,
                ..student
            }
        }
    }
}

/// A budget was found spent: warns and alerts once per cap and period. `consequence` says
/// what the server does about it.
pub(crate) fn capped(st: &Arc<AppState>, hit: &CapHit, consequence: &str) {
    if !st.budgets.first_hit(hit) {
        return;
    }
    tracing::warn!(
        "budget `{}` ({}, ${:.2}) is spent (${:.4}); {consequence}",
        hit.budget,
        hit.period.as_str(),
        hit.cap_usd,
        hit.spent_usd
    );
    if let Some(url) = st.alert_webhook.clone() {
        let http = st.http.clone();
        let body = hit.alert_json(consequence);
        tokio::spawn(async move {
            if let Err(e) = http
                .post(&url)
                .json(&body)
                .send()
                .await
                .and_then(|r| r.error_for_status())
            {
                tracing::warn!("budget alert webhook failed: {}", e.without_url());
            }
        });
    }
}

/// Off the latency path: asks the teacher about a confidently answered input and records
/// whether it agrees. Shadow calls count against the tag's budget like escalations.
fn shadow(
    st: Arc<AppState>,
    m: Arc<ServedModel>,
    esc: Arc<dyn Escalator>,
    input: Input,
    p: Prediction,
    tag: String,
) {
    let in_flight = InFlight::start(&st.shadow_in_flight);
    tokio::spawn(async move {
        let _in_flight = in_flight;
        if st.budgets.check(&tag).is_some() {
            return;
        }
        let ctx = CallContext {
            source: "serve.shadow".into(),
            tag: (tag != DEFAULT_TAG).then(|| tag.clone()),
        };
        let Ok(Ok(e)) =
            tokio::time::timeout(st.teacher_timeout, esc.label(input.prompt(), &ctx)).await
        else {
            return;
        };
        st.budgets.record(&tag, e.cost_usd);
        let labels = [("model", m.name.as_str()), ("tag", tag.as_str())];
        st.metrics
            .add("distill_escalation_spend_usd_total", &labels, e.cost_usd);
        let model = [("model", m.name.as_str())];
        st.metrics.inc("distill_shadow_total", &model);
        let agree = e.label == p.label;
        if agree {
            st.metrics.inc("distill_shadow_agree_total", &model);
        }
        if let Some(rec) = &st.shadow {
            // Spans quote the input, which the shadow store never keeps: their slots only.
            let stored = |answer: String| match m.card.shape {
                AnswerShape::Spans => {
                    let spans = m.card.spans_of(&answer, &input.text).unwrap_or_default();
                    let slots: Vec<&str> = spans.iter().map(|s| s.slot.as_str()).collect();
                    serde_json::to_string(&slots).unwrap_or_default()
                }
                _ => answer,
            };
            rec.record(ShadowRow {
                ts: distill_core::ledger::LedgerRow::now(),
                model: m.name.clone(),
                tag,
                input_hash: distill_core::fsutil::sha256_hex(input.text.as_bytes()),
                student_label: stored(p.label),
                confidence: p.confidence,
                teacher_label: stored(e.label),
                agree,
                cost_usd: e.cost_usd,
            });
        }
    });
}
