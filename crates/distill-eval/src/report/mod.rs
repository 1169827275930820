//! The eval's result as data ([`EvalReport`], serialised as `metrics.json`) and its three
//! renderings: `metrics.json`, `report.md` and a self-contained `report.html`.
//!
//! # `metrics.json` (format_version 1)
//!
//! ```text
//! {
//!   "format_version": 1,
//!   "task": "banking77", "created": "<RFC 3339>", "distill_version": "0.1.0",
//!   "partial": false,                 // true when something could not be measured: see warnings
//!   "warnings": ["..."],              // every missing input, estimate and undefined figure
//!   "test": {"path": "...", "n": 3080, "n_gold": 3080, "teacher_labels": "path"|null,
//!            "n_teacher": 3080, "n_calibration": 924, "n_held_out": 2156},
//!   "settings": {"volume_per_day": 10000, "days_per_month": 30, "core_hour_usd": 0.02,
//!                "gpu_hour_usd": 2.5, "teacher_price_model": "gpt-4o", "price_version": "...",
//!                "seed": 0, "calibration_fraction": 0.3},
//!   "teacher": {"model": "gpt-4o", "price_model": "gpt-4o",
//!               "per_request_usd": 0.0016, "per_request_batch_usd": 0.0008,
//!               "mean_prompt_tokens": 610.2, "mean_completion_tokens": 9.0,
//!               "basis": "ledger"|"teacher records"|"estimated", "basis_detail": "..."},
//!   "options": [{                     // one row of the summary table each
//!       "name": "linear-a",           // also the key in predictions.jsonl
//!       "kind": "teacher"|"teacher-batch"|"student"|"api"|"cascade",
//!       "source": "models/linear-a"|"openai:gpt-4o-mini"|null,
//!       "evaluated_on": "all"|"held_out", // cascades are scored on the held-out split only
//!       "vs_gold": Quality|null, "vs_teacher": Quality|null,
//!       "cost": {"per_request_usd": f|null, "per_request_basis": "...",
//!                "one_time_usd": f, "one_time": [{"what": "labelling", "usd": f, "basis": "..."}],
//!                "monthly_usd": f|null, "saving": f|null,        // month 1: one-time costs included
//!                "steady_monthly_usd": f|null, "steady_saving": f|null, // later months
//!                "break_even_requests": f|null},
//!       "runtime": {"device": "cpu", "threads": 2, "batch_size": 64,
//!                   "batch_seconds_per_request": f, "latency": {"p50_ms","p95_ms","p99_ms","samples"}}|null,
//!       "escalated_fraction": f|null  // cascades only
//!   }],
//!   "cascade": Cascade|null,          // the recommended cascade (what `distill serve` reads)
//!   "cascades": [Cascade],            // one per student with confidences
//!   "curve": Curve                    // only with --curve
//! }
//! Curve = {"student": "linear", "order": "random"|"recorded", "seeds": 3, "train": "path",
//!          "metric": "accuracy"|"agreement", "floor": f|null, "floor_metric": "accuracy"|null,
//!          "cheapest_sufficient": n|null,
//!          "rule": "...", "rows": [{"n_labels", "labelling_usd", "student_quality", "cascade_quality",
//!          "escalated", "month1_usd", "saving", "steady_monthly_usd", "steady_saving": Spread|null,
//!          "floor_held": seeds that held it, "seeds", "sufficient": bool}],
//!          "points": [{"n_labels", "seed", "labelling_usd", "training_usd", "student_quality",
//!          "cascade_quality", "escalated", "floor_held", "month1_usd", "saving",
//!          "steady_monthly_usd", "steady_saving", "break_even_requests"}]}
//! Spread = {"mean", "min", "max"} over the seeds
//! Quality = {"reference": "gold"|"teacher", "n", "correct",
//!            "accuracy": {"value","lo","hi"}, "macro_f1": {...}, "weighted_f1": {...},
//!            "per_class": [{"label","precision","recall","f1","support"}],
//!            "confusion": {"labels": [...], "matrix": [[row = reference, col = predicted]]},
//!            "top_confusions": [{"reference","predicted","count"}],
//!            "calibration": {"ece": {...}, "bins": [{"lo","hi","count","mean_confidence","accuracy"}]}|null,
//!            "coverage_curve": [{"coverage","accuracy","min_confidence"}]|null}
//! Cascade = {"model": "<option name>", "model_path": "models/linear-a"|null,
//!            "threshold": 0.63,       // escalate when confidence < threshold; > 1 = escalate all
//!            "floor": {"metric": "accuracy"|"agreement", "value": 0.94, "source": "..."},
//!            "floor_met_on_calibration": true, "floor_held": true,
//!            "calibration": Split, "held_out": Split, "sweep": [{"threshold","escalated_fraction",
//!            "quality","quality_lo","cost_per_request_usd"}]}
//! Split = {"n", "escalated_fraction", "quality": {...}, "teacher_quality": {...},
//!          "student_quality": {...}, "cost_per_request_usd": f|null}
//! ```
//!
//! `distill serve --threshold evals/x/metrics.json` gives each served model the threshold of
//! its own entry in `cascades`, matched by `model_sha256`.
//! Intervals are 95%: Wilson for proportions, seeded percentile bootstrap for F1 and ECE.

pub mod charts;
pub mod extract;
pub mod html;
pub mod markdown;

use crate::cascade::{CascadeChoice, Floor};
use crate::cost::Latency;
use crate::metrics::Quality;
use serde::{Deserialize, Serialize};

pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub format_version: u32,
    pub task: String,
    pub created: String,
    pub distill_version: String,
    pub partial: bool,
    pub warnings: Vec<String>,
    pub test: TestInfo,
    pub settings: Settings,
    pub teacher: TeacherCostInfo,
    pub options: Vec<OptionReport>,
    pub cascade: Option<CascadeReport>,
    pub cascades: Vec<CascadeReport>,
    /// Present when the test items held out-of-scope inputs (open-set tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_set: Option<crate::open_set::OpenSetInfo>,
    /// Present when the eval drew a learning curve (`--curve`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curve: Option<crate::curve::Curve>,
    /// int8 students (`distill quantize`) evaluated beside their f32 parents.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quantized: Vec<crate::quantized::QuantizedComparison>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestInfo {
    pub path: String,
    pub n: usize,
    pub n_gold: usize,
    pub teacher_labels: Option<String>,
    pub n_teacher: usize,
    pub n_calibration: usize,
    pub n_held_out: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub volume_per_day: f64,
    pub days_per_month: f64,
    pub core_hour_usd: f64,
    pub gpu_hour_usd: f64,
    pub teacher_price_model: String,
    pub price_version: String,
    pub seed: u64,
    pub calibration_fraction: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TeacherCostInfo {
    pub model: String,
    pub price_model: String,
    pub per_request_usd: f64,
    pub per_request_batch_usd: f64,
    pub mean_prompt_tokens: f64,
    pub mean_completion_tokens: f64,
    pub basis: String,
    pub basis_detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OptionKind {
    Teacher,
    TeacherBatch,
    Student,
    Api,
    Cascade,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostItem {
    pub what: String,
    pub usd: f64,
    pub basis: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptionCost {
    pub per_request_usd: Option<f64>,
    pub per_request_basis: String,
    pub one_time_usd: f64,
    pub one_time: Vec<CostItem>,
    /// The first month: traffic plus the one-time costs.
    pub monthly_usd: Option<f64>,
    pub saving: Option<f64>,
    /// Every later month: traffic only.
    #[serde(default)]
    pub steady_monthly_usd: Option<f64>,
    #[serde(default)]
    pub steady_saving: Option<f64>,
    pub break_even_requests: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Runtime {
    pub device: String,
    pub threads: usize,
    pub batch_size: usize,
    pub batch_seconds_per_request: f64,
    pub latency: Option<Latency>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptionReport {
    pub name: String,
    pub kind: OptionKind,
    pub source: Option<String>,
    pub evaluated_on: String,
    pub vs_gold: Option<Quality>,
    pub vs_teacher: Option<Quality>,
    pub cost: OptionCost,
    pub runtime: Option<Runtime>,
    pub escalated_fraction: Option<f64>,
    /// Open-set tasks with out-of-scope test items: in-scope accuracy, out-of-scope recall,
    /// precision and cost at the stated mix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_set: Option<crate::open_set::OpenSetQuality>,
}

impl OptionReport {
    /// The figure the summary table shows: accuracy against gold, else agreement.
    pub fn headline(&self) -> Option<&Quality> {
        self.vs_gold.as_ref().or(self.vs_teacher.as_ref())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CascadeReport {
    pub model: String,
    pub model_path: Option<String>,
    /// [`distill_train::model_fingerprint`] of the model directory: `distill serve` takes this
    /// cascade's threshold only for a model with the same fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_sha256: Option<String>,
    pub floor: Floor,
    #[serde(flatten)]
    pub choice: CascadeChoice,
}

impl EvalReport {
    /// "accuracy" when the table's quality column is against gold, else "agreement";
    /// "exact-set …" when answers are label sets.
    pub fn headline_metric(&self) -> &'static str {
        match (self.test.n_gold > 0, self.answers_are_sets()) {
            (true, false) => "accuracy",
            (false, false) => "agreement",
            (true, true) => "exact-set accuracy",
            (false, true) => "exact-set agreement",
        }
    }

    /// True when the task's answers are label sets (a multilabel task): its accuracy and
    /// agreement are exact-set figures, and the qualities carry micro F1 and Hamming loss.
    pub fn answers_are_sets(&self) -> bool {
        self.options
            .iter()
            .flat_map(|o| [&o.vs_gold, &o.vs_teacher])
            .flatten()
            .any(|q| q.sets.is_some())
    }

    /// The cascade floor's metric as the report names it.
    pub fn floor_metric_name(&self, metric: crate::cascade::FloorMetric) -> String {
        if self.answers_are_sets() {
            format!("exact-set {}", metric.as_str())
        } else {
            metric.as_str().to_string()
        }
    }

    pub fn to_json(&self) -> String {
        // Serialising plain data cannot fail; NaN (no data) becomes null.
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

/// Formatting shared by the renderings (and the CLI's summary lines).
pub mod fmt {
    pub fn pct(x: f64) -> String {
        if (0.9995..1.0).contains(&x) {
            // A student's run-rate saving is 99.99…%: "100.0%" would claim it is free.
            ">99.9%".into()
        } else if x.is_finite() {
            // -0.0004 would print as "-0.0%".
            let p = if (x * 100.0).abs() < 0.05 {
                0.0
            } else {
                x * 100.0
            };
            format!("{p:.1}%")
        } else {
            "—".into()
        }
    }

    pub fn usd(x: f64) -> String {
        let a = x.abs();
        if a == 0.0 {
            "$0".into()
        } else if a >= 100.0 {
            format!("${x:.0}")
        } else if a >= 1.0 {
            format!("${x:.2}")
        } else if a >= 0.01 {
            format!("${x:.4}")
        } else {
            // Sub-cent per-request prices need significant digits, not decimals.
            format!("${x:.2e}")
        }
    }

    pub fn count(x: f64) -> String {
        if x >= 1e6 {
            format!("{:.1}M", x / 1e6)
        } else if x >= 1e3 {
            format!("{:.1}k", x / 1e3)
        } else {
            format!("{x:.0}")
        }
    }
}

/// The summary table as rows of cells (shared by the terminal, markdown and HTML).
pub fn summary_rows(r: &EvalReport) -> (Vec<String>, Vec<Vec<String>>) {
    let header = vec![
        "option".to_string(),
        r.headline_metric().to_string(),
        "$/request".into(),
        "month 1".into(),
        "saving".into(),
        "then $/month".into(),
        "saving".into(),
        "break-even".into(),
    ];
    let rows = r
        .options
        .iter()
        .map(|o| {
            let q = o
                .headline()
                .map(|q| {
                    format!(
                        "{} [{}–{}]",
                        fmt::pct(q.accuracy.value),
                        fmt::pct(q.accuracy.lo),
                        fmt::pct(q.accuracy.hi)
                    )
                })
                .unwrap_or_else(|| "—".into());
            let c = &o.cost;
            let be = match (o.kind, c.break_even_requests) {
                (OptionKind::Teacher | OptionKind::TeacherBatch, _) => "—".to_string(),
                (_, Some(b)) => format!("{} requests", fmt::count(b.ceil())),
                (_, None) if c.saving.is_some() => "never".into(),
                (_, None) => "—".into(),
            };
            vec![
                o.name.clone(),
                q,
                c.per_request_usd
                    .map(fmt::usd)
                    .unwrap_or_else(|| "—".into()),
                c.monthly_usd.map(fmt::usd).unwrap_or_else(|| "—".into()),
                c.saving.map(fmt::pct).unwrap_or_else(|| "—".into()),
                c.steady_monthly_usd
                    .map(fmt::usd)
                    .unwrap_or_else(|| "—".into()),
                c.steady_saving.map(fmt::pct).unwrap_or_else(|| "—".into()),
                be,
            ]
        })
        .collect();
    (header, rows)
}

/// The learning-curve table: one row per size, each figure the mean over seeds with its range.
pub fn curve_rows(c: &crate::curve::Curve) -> (Vec<String>, Vec<Vec<String>>) {
    let header = vec![
        "labels".to_string(),
        "labelling".into(),
        format!("student {}", c.metric),
        format!(
            "cascade {}",
            c.floor_metric.as_deref().unwrap_or(c.metric.as_str())
        ),
        "escalated".into(),
        "floor held".into(),
        "month 1".into(),
        "saving".into(),
        "then $/month".into(),
        "saving".into(),
        String::new(),
    ];
    let spread = |s: &Option<crate::curve::Spread>, f: fn(f64) -> String| match s {
        Some(s) if c.seeds > 1 => format!("{} [{}–{}]", f(s.mean), f(s.min), f(s.max)),
        Some(s) => f(s.mean),
        None => "—".into(),
    };
    let rows = c
        .rows
        .iter()
        .map(|row| {
            vec![
                row.n_labels.to_string(),
                fmt::usd(row.labelling_usd),
                spread(&row.student_quality, fmt::pct),
                spread(&row.cascade_quality, fmt::pct),
                spread(&row.escalated, fmt::pct),
                format!("{}/{}", row.floor_held, row.seeds),
                spread(&row.month1_usd, fmt::usd),
                spread(&row.saving, fmt::pct),
                spread(&row.steady_monthly_usd, fmt::usd),
                spread(&row.steady_saving, fmt::pct),
                if Some(row.n_labels) == c.cheapest_sufficient {
                    "◀ cheapest sufficient".into()
                } else {
                    String::new()
                },
            ]
        })
        .collect();
    (header, rows)
}

/// The curve for a terminal: its caption, then its table.
pub fn curve_text(c: &crate::curve::Curve) -> String {
    let (h, rows) = curve_rows(c);
    format!("\n{}\n{}", curve_caption(c), text_table(&h, &rows))
}

/// One sentence on the curve: what it is and its cheapest sufficient size.
pub fn curve_caption(c: &crate::curve::Curve) -> String {
    let order = match c.order {
        crate::curve::CurveOrder::Random => "seeded random subsets",
        crate::curve::CurveOrder::Recorded => "the dataset's recorded order",
    };
    let verdict = match c
        .rows
        .iter()
        .find(|r| Some(r.n_labels) == c.cheapest_sufficient)
    {
        Some(r) => format!(
            "the cheapest sufficient size is {} labels ({} of labelling)",
            r.n_labels,
            fmt::usd(r.labelling_usd)
        ),
        None => "no size is sufficient".into(),
    };
    format!(
        "Learning curve: `{}` students trained on the first N labels of {} ({order}, {} seed{} per \
         size; cascade figures on the held-out split, costs for the cascade, month 1 charging \
         only those N labels); {}; {}.",
        c.student,
        c.train,
        c.seeds,
        if c.seeds == 1 { "" } else { "s" },
        c.rule,
        verdict
    )
}

/// The out-of-scope table (open-set evals): one row per option that has the figures.
/// The int8-vs-f32 table: one row per quantised student whose parent was evaluated too.
pub fn quantized_rows(r: &EvalReport) -> Option<(Vec<String>, Vec<Vec<String>>)> {
    if r.quantized.is_empty() {
        return None;
    }
    let header = [
        "int8 student",
        "f32 parent",
        "accuracy (int8 / f32)",
        "Δ accuracy [95% CI]",
        "same label",
        "p50 ms (int8 / f32)",
        "speed-up",
        "$/request (int8 / f32)",
    ]
    .map(String::from)
    .to_vec();
    let points = |x: f64| format!("{:+.2}", x * 100.0);
    let ms = |x: Option<f64>| x.map(|v| format!("{v:.2}")).unwrap_or_else(|| "—".into());
    let rows = r
        .quantized
        .iter()
        .map(|q| {
            vec![
                q.student.clone(),
                q.parent.clone(),
                format!(
                    "{} / {} ({})",
                    fmt::pct(q.student_accuracy),
                    fmt::pct(q.parent_accuracy),
                    q.reference
                ),
                format!(
                    "{} pt [{} – {}]",
                    points(q.delta.value),
                    points(q.delta.lo),
                    points(q.delta.hi)
                ),
                fmt::pct(q.same_label),
                format!("{} / {}", ms(q.student_p50_ms), ms(q.parent_p50_ms)),
                match (q.student_p50_ms, q.parent_p50_ms) {
                    (Some(a), Some(b)) if a > 0.0 => format!("{:.2}×", b / a),
                    _ => "—".into(),
                },
                format!(
                    "{} / {}",
                    q.student_per_request_usd
                        .map(fmt::usd)
                        .unwrap_or_else(|| "—".into()),
                    q.parent_per_request_usd
                        .map(fmt::usd)
                        .unwrap_or_else(|| "—".into())
                ),
            ]
        })
        .collect();
    Some((header, rows))
}

pub fn open_set_rows(r: &EvalReport) -> Option<(Vec<String>, Vec<Vec<String>>)> {
    let info = r.open_set.as_ref()?;
    let header = vec![
        "option".to_string(),
        "in-scope accuracy".into(),
        format!("`{}` recall", info.label),
        "in-scope turned away".into(),
        format!("precision at {}", fmt::pct(info.share)),
        format!("accuracy at {}", fmt::pct(info.share)),
        "$/out-of-scope request".into(),
        format!("$/request at {}", fmt::pct(info.share)),
    ];
    let ci = |e: &crate::metrics::Estimate| {
        format!(
            "{} [{}–{}]",
            fmt::pct(e.value),
            fmt::pct(e.lo),
            fmt::pct(e.hi)
        )
    };
    let rows = r
        .options
        .iter()
        .filter(|o| o.kind != OptionKind::TeacherBatch)
        .filter_map(|o| {
            let q = o.open_set.as_ref()?;
            let esc = |x: Option<f64>| x.map(|e| format!(" ({} escalated)", fmt::pct(e)));
            Some(vec![
                o.name.clone(),
                ci(&q.in_scope_accuracy),
                format!(
                    "{}{}",
                    ci(&q.oos_recall),
                    esc(q.oos_escalated).unwrap_or_default()
                ),
                fmt::pct(q.in_scope_rejected.value),
                q.oos_precision_at_mix
                    .map(fmt::pct)
                    .unwrap_or_else(|| "—".into()),
                fmt::pct(q.accuracy_at_mix),
                q.per_oos_request_usd
                    .map(fmt::usd)
                    .unwrap_or_else(|| "—".into()),
                q.per_request_at_mix_usd
                    .map(fmt::usd)
                    .unwrap_or_else(|| "—".into()),
            ])
        })
        .collect();
    Some((header, rows))
}

/// Aligned plain-text table.
pub(crate) fn text_table(header: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}", w = *w))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut s = line(header);
    s.push('\n');
    for row in rows {
        s.push_str(&line(row));
        s.push('\n');
    }
    s
}

/// The summary table as aligned plain text for the terminal, then the cascade, the out-of-scope
/// and learning-curve tables and the warnings.
pub fn summary_text(r: &EvalReport) -> String {
    let (header, rows) = summary_rows(r);
    let mut s = text_table(&header, &rows);
    if let Some(c) = &r.cascade {
        s.push_str(&format!(
            "cascade: {} with threshold {:.3} escalates {} ({} {} on held-out, floor {} {}: {})\n",
            c.model,
            c.choice.threshold,
            fmt::pct(c.choice.held_out.escalated_fraction),
            r.floor_metric_name(c.floor.metric),
            fmt::pct(c.choice.held_out.quality.value),
            r.floor_metric_name(c.floor.metric),
            fmt::pct(c.floor.value),
            if c.choice.floor_held {
                "held"
            } else {
                "NOT held"
            },
        ));
    }
    if let (Some(info), Some((h, rows))) = (&r.open_set, open_set_rows(r)) {
        s.push_str(&format!(
            "\nout-of-scope traffic ({} of requests, {}; {} out-of-scope and {} in-scope items):\n",
            fmt::pct(info.share),
            info.share_source,
            info.n_out_of_scope,
            info.n_in_scope
        ));
        s.push_str(&text_table(&h, &rows));
    }
    if let Some(c) = &r.curve {
        s.push_str(&curve_text(c));
    }
    for w in &r.warnings {
        s.push_str(&format!("warning: {w}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::fmt::pct;

    #[test]
    fn percentages_never_round_up_to_whole() {
        assert_eq!(pct(0.967), "96.7%");
        assert_eq!(pct(1.0), "100.0%");
        assert_eq!(pct(0.999_999_95), ">99.9%");
        assert_eq!(pct(0.9994), "99.9%");
        assert_eq!(pct(-0.000_4), "0.0%");
        assert_eq!(pct(-0.002), "-0.2%");
        assert_eq!(pct(f64::NAN), "—");
    }
}
