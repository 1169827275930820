//! Prometheus metrics, hand-rolled: a handful of labelled counters, gauges and histograms is all
//! the server exports, and the text format is simple enough not to need a dependency.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

/// Every metric the server exports: (name, type, help).
const FAMILIES: &[(&str, &str, &str)] = &[
    ("distill_requests_total", "counter", "Answered inputs by model, endpoint, tag, source (student, teacher, cache) and HTTP status."),
    ("distill_http_errors_total", "counter", "Requests refused with an error, by endpoint and status."),
    ("distill_request_duration_seconds", "histogram", "Request latency by model and endpoint."),
    ("distill_batch_size", "histogram", "Inputs per forward pass of the micro-batcher, by model."),
    ("distill_escalations_total", "counter", "Escalations to the teacher by model, tag and outcome (ok, failed, budget_capped)."),
    ("distill_cache_hits_total", "counter", "Answers served from the cache, by model (a served student or a gateway route)."),
    ("distill_cache_misses_total", "counter", "Cache look-ups that missed, by model (a served student or a gateway route)."),
    ("distill_cache_errors_total", "counter", "Cache operations skipped because the cache backend was unreachable."),
    ("distill_escalation_spend_usd_total", "counter", "Dollars spent on teacher calls (escalations and shadow traffic), by model and tag."),
    ("distill_saved_usd_total", "counter", "Estimated dollars saved versus the teacher (students) or the route's premium tier (gateway), by model or route and tag."),
    ("distill_budget_capped", "gauge", "1 while a tag's escalation budget for the period is exhausted."),
    ("distill_budget_spent_usd", "gauge", "Escalation spend in the current period, by tag and period."),
    ("distill_shadow_total", "counter", "Shadow comparisons between student and teacher, by model."),
    ("distill_shadow_agree_total", "counter", "Shadow comparisons where the teacher agreed with the student, by model."),
    ("distill_draining", "gauge", "1 while the server drains before shutdown."),
    ("distill_gateway_requests_total", "counter", "Gateway requests answered, by route, tier, tag and source (upstream or cache)."),
    ("distill_gateway_spend_usd_total", "counter", "Dollars paid to upstream tiers, by route, tier and tag."),
    ("distill_gateway_tokens_total", "counter", "Upstream tokens billed, by route, tier and kind (prompt, completion)."),
    ("distill_gateway_finish_length_total", "counter", "Upstream answers cut by max_tokens (finish_reason length), by route and tier: a cap that cuts too often."),
    ("distill_gateway_upstream_seconds", "histogram", "Upstream call latency (to the last chunk for streams), by route, tier and outcome."),
    ("distill_gateway_upstream_errors_total", "counter", "Upstream attempts that ended in an error, by route, tier and status."),
    ("distill_gateway_fallbacks_total", "counter", "Requests passed to a fallback tier, by route, from and to."),
];

#[derive(Default)]
struct Histogram {
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct Registry {
    scalars: BTreeMap<(&'static str, String), f64>,
    histograms: BTreeMap<(&'static str, String), (&'static [f64], Histogram)>,
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Registry>,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn label_text(labels: &[(&str, &str)]) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect::<Vec<_>>()
        .join(",")
}

impl Metrics {
    pub fn add(&self, name: &'static str, labels: &[(&str, &str)], v: f64) {
        let mut r = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        *r.scalars.entry((name, label_text(labels))).or_insert(0.0) += v;
    }
    pub fn inc(&self, name: &'static str, labels: &[(&str, &str)]) {
        self.add(name, labels, 1.0)
    }
    pub fn set(&self, name: &'static str, labels: &[(&str, &str)], v: f64) {
        let mut r = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        r.scalars.insert((name, label_text(labels)), v);
    }
    pub fn observe(
        &self,
        name: &'static str,
        buckets: &'static [f64],
        labels: &[(&str, &str)],
        v: f64,
    ) {
        let mut r = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (_, h) = r
            .histograms
            .entry((name, label_text(labels)))
            .or_insert_with(|| {
                (
                    buckets,
                    Histogram {
                        buckets: vec![0; buckets.len()],
                        ..Default::default()
                    },
                )
            });
        for (i, b) in buckets.iter().enumerate() {
            if v <= *b {
                h.buckets[i] += 1;
            }
        }
        h.sum += v;
        h.count += 1;
    }

    /// The value of one scalar series (tests and budget gauges).
    pub fn get(&self, name: &'static str, labels: &[(&str, &str)]) -> f64 {
        let r = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        r.scalars
            .get(&(name, label_text(labels)))
            .copied()
            .unwrap_or(0.0)
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let r = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        for (name, kind, help) in FAMILIES {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for ((n, labels), v) in r.scalars.range((*name, String::new())..) {
                if n != name {
                    break;
                }
                let _ = writeln!(out, "{name}{} {v}", braces(labels));
            }
            for ((n, labels), (bounds, h)) in r.histograms.range((*name, String::new())..) {
                if n != name {
                    break;
                }
                let sep = if labels.is_empty() { "" } else { "," };
                for (b, c) in bounds.iter().zip(&h.buckets) {
                    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
                }
                let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", h.count);
                let _ = writeln!(out, "{name}_sum{} {}", braces(labels), h.sum);
                let _ = writeln!(out, "{name}_count{} {}", braces(labels), h.count);
            }
        }
        out
    }
}

fn braces(labels: &str) -> String {
    if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        m.inc("distill_cache_hits_total", &[("model", "a\"b")]);
        m.observe("distill_batch_size", BATCH_BUCKETS, &[("model", "a")], 3.0);
        let t = m.render();
        assert!(
            t.contains("distill_cache_hits_total{model=\"a\\\"b\"} 1\n"),
            "{t}"
        );
        assert!(
            t.contains("distill_batch_size_bucket{model=\"a\",le=\"2\"} 0\n"),
            "{t}"
        );
        assert!(
            t.contains("distill_batch_size_bucket{model=\"a\",le=\"4\"} 1\n"),
            "{t}"
        );
        assert!(
            t.contains("distill_batch_size_count{model=\"a\"} 1\n"),
            "{t}"
        );
    }
}
