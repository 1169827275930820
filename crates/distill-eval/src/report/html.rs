//! `report.html`: one self-contained file (inline CSS and SVG, no scripts, no network) that
//! reads on a phone: fluid SVGs, tables that scroll sideways instead of overflowing.

use super::fmt::{pct, usd};
use super::{charts, summary_rows, EvalReport};

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub(crate) const CSS: &str = "
*{box-sizing:border-box}
body{font:16px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0 auto;max-width:980px;padding:12px;color:#1b1b1b;background:#fff}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:1.6em;border-bottom:1px solid #ddd}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;min-width:100%;font-size:.92rem}
th,td{padding:6px 8px;border-bottom:1px solid #e4e4e4;text-align:left;white-space:nowrap}
th{background:#f4f6f8}
.partial{background:#fff4ce;border:1px solid #e0b400;padding:10px;border-radius:6px}
.warn li{color:#8a4b00}
figure{margin:16px 0}
figure svg{width:100%;height:auto;display:block;border:1px solid #eee;border-radius:6px}
figcaption{font-size:.9rem;color:#555}
.missing{color:#8a4b00;font-style:italic}
.ok{color:#176317;font-weight:600}.bad{color:#b00020;font-weight:600}
@media (max-width:600px){body{font-size:15px;padding:8px}th,td{padding:4px 6px}}
";

pub(crate) fn table(header: &[String], rows: &[Vec<String>]) -> String {
    let mut s = String::from("<div class=\"scroll\"><table><thead><tr>");
    for h in header {
        s.push_str(&format!("<th>{}</th>", escape(h)));
    }
    s.push_str("</tr></thead><tbody>");
    for r in rows {
        s.push_str("<tr>");
        for c in r {
            s.push_str(&format!("<td>{}</td>", escape(c)));
        }
        s.push_str("</tr>");
    }
    s.push_str("</tbody></table></div>");
    s
}

pub(crate) fn figure(id: &str, svg: Option<String>, caption: &str, missing: &str) -> String {
    match svg {
        Some(svg) => format!(
            "<figure id=\"{id}\" data-chart=\"{id}\">{svg}<figcaption>{}</figcaption></figure>",
            escape(caption)
        ),
        None => format!("<p class=\"missing\" id=\"{id}\">{}</p>", escape(missing)),
    }
}

pub fn render(r: &EvalReport) -> String {
    let mut b = String::new();
    b.push_str(&format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>distill eval: {}</title><style>{CSS}</style></head><body>",
        escape(&r.task)
    ));
    b.push_str(&format!("<h1>distill eval: {}</h1>", escape(&r.task)));
    if r.partial {
        b.push_str(
            "<p class=\"partial\"><strong>Partial report.</strong> Some figures could not be \
             measured; see the warnings.</p>",
        );
    }
    b.push_str(&format!(
        "<p>{} test items ({} with gold labels, {} with teacher labels). Projection: {} requests/day \
         over {} days; <em>month 1</em> includes the one-time costs (labelling, training), <em>then $/month</em> \
         is every later month.</p>",
        r.test.n, r.test.n_gold, r.test.n_teacher, r.settings.volume_per_day, r.settings.days_per_month
    ));
    let (header, rows) = summary_rows(r);
    b.push_str(&table(&header, &rows));
    if !r.warnings.is_empty() {
        b.push_str("<h2>Warnings</h2><ul class=\"warn\">");
        for w in &r.warnings {
            b.push_str(&format!("<li>{}</li>", escape(w)));
        }
        b.push_str("</ul>");
    }

    if let Some(c) = &r.curve {
        b.push_str(&curve_section(c));
    }

    b.push_str("<h2>Cascade</h2>");
    match &r.cascade {
        Some(c) => {
            let ch = &c.choice;
            b.push_str(&format!(
                "<p>Student <code>{}</code> answers when its confidence is at least <strong>{:.4}</strong>; \
                 below that the request goes to the teacher. Floor: {} ≥ {} ({}). On the held-out split it \
                 escalates {} and scores {} (teacher alone: {}): the floor <span class=\"{}\">{}</span>.</p>",
                escape(&c.model),
                ch.threshold,
                r.floor_metric_name(c.floor.metric),
                pct(c.floor.value),
                escape(&c.floor.source),
                pct(ch.held_out.escalated_fraction),
                pct(ch.held_out.quality.value),
                pct(ch.held_out.teacher_quality.value),
                if ch.floor_held { "ok" } else { "bad" },
                if ch.floor_held { "held" } else { "did NOT hold" },
            ));
        }
        None => b.push_str(
            "<p class=\"missing\">No cascade: it needs teacher labels for the test items \
             (--teacher-labels) and a student with confidences.</p>",
        ),
    }

    b.push_str("<h2>Charts</h2>");
    b.push_str(&figure(
        "frontier",
        charts::frontier(r),
        "Every option's quality against its cost per request (log scale). Up and left is better.",
        "No cost-vs-accuracy chart: no option has both a quality figure and a known cost.",
    ));
    b.push_str(&figure(
        "cascade",
        charts::cascade_curve(r),
        "Calibration sweep: escalating more requests raises quality and cost; the dot is the chosen threshold.",
        "No cascade curve: no cascade could be computed.",
    ));
    b.push_str(&figure(
        "confusion",
        charts::confusion_heatmap(r),
        "Counts of reference (rows) against predicted (columns) labels for the most-confused classes.",
        "No confusion heatmap: no student was scored against a reference.",
    ));
    b.push_str(&figure(
        "reliability",
        charts::reliability(r),
        "Accuracy per confidence bin; bars on the diagonal mean confidences can be taken at face value.",
        "No reliability diagram: no student with confidences was scored against a reference.",
    ));

    if let Some((h, rows)) = super::quantized_rows(r) {
        b.push_str("<h2>int8 students beside their f32 parents</h2>");
        b.push_str(
            "<p>Each <code>distill quantize</code> copy against the f32 student it came from, on \
             the same items: Δ is int8 − f32 accuracy in points with a 95% paired-bootstrap \
             interval; latency is single-request p50 on this machine.</p>",
        );
        b.push_str(&table(&h, &rows));
    }

    if let (Some(info), Some((h, rows))) = (&r.open_set, super::open_set_rows(r)) {
        b.push_str("<h2>Out-of-scope traffic</h2>");
        b.push_str(&format!(
            "<p><code>{}</code> is the answer for inputs that fit no label: {} out-of-scope and {} \
             in-scope test items, evaluated with out-of-scope requests at {} of the traffic ({}). \
             An out-of-scope request costs a cascade its student plus the teacher for those it \
             escalates.</p>",
            escape(&info.label),
            info.n_out_of_scope,
            info.n_in_scope,
            super::fmt::pct(info.share),
            escape(&info.share_source)
        ));
        b.push_str(&table(&h, &rows));
    }

    b.push_str("<h2>Costs</h2>");
    let t = &r.teacher;
    b.push_str(&format!(
        "<p>Teacher <code>{}</code> priced as <code>{}</code>: {} per request real-time, {} with the \
         Batch API (mean {:.0} prompt + {:.0} completion tokens; {}: {}). Hardware: {}/core-hour, {}/GPU-hour.</p>",
        escape(&t.model),
        escape(&t.price_model),
        usd(t.per_request_usd),
        usd(t.per_request_batch_usd),
        t.mean_prompt_tokens,
        t.mean_completion_tokens,
        escape(&t.basis),
        escape(&t.basis_detail),
        usd(r.settings.core_hour_usd),
        usd(r.settings.gpu_hour_usd),
    ));
    let cost_rows: Vec<Vec<String>> = r
        .options
        .iter()
        .map(|o| {
            let lat = o
                .runtime
                .as_ref()
                .and_then(|rt| rt.latency)
                .map(|l| format!("{:.2} / {:.2} / {:.2} ms", l.p50_ms, l.p95_ms, l.p99_ms))
                .unwrap_or_else(|| "—".into());
            vec![
                o.name.clone(),
                o.cost.per_request_basis.clone(),
                usd(o.cost.one_time_usd),
                o.cost
                    .one_time
                    .iter()
                    .map(|c| format!("{} {} ({})", c.what, usd(c.usd), c.basis))
                    .collect::<Vec<_>>()
                    .join("; "),
                lat,
            ]
        })
        .collect();
    b.push_str(&table(
        &[
            "option".into(),
            "$/request basis".into(),
            "one-time".into(),
            "one-time parts".into(),
            "latency p50/p95/p99".into(),
        ],
        &cost_rows,
    ));

    b.push_str("<h2>Quality</h2>");
    let sets = r.answers_are_sets();
    let mut qrows = Vec::new();
    for o in &r.options {
        for q in [&o.vs_gold, &o.vs_teacher].into_iter().flatten() {
            let iv = |e: &crate::metrics::Estimate| {
                format!("{} [{}–{}]", pct(e.value), pct(e.lo), pct(e.hi))
            };
            let mut row = vec![
                o.name.clone(),
                q.reference.clone(),
                q.n.to_string(),
                iv(&q.accuracy),
            ];
            if sets {
                row.push(q.sets.as_ref().map(|s| iv(&s.micro_f1)).unwrap_or_default());
            }
            row.extend([iv(&q.macro_f1), iv(&q.weighted_f1)]);
            if sets {
                row.push(
                    q.sets
                        .as_ref()
                        .map(|s| iv(&s.hamming_loss))
                        .unwrap_or_default(),
                );
            }
            row.extend([
                q.calibration
                    .as_ref()
                    .map(|c| format!("{:.3}", c.ece.value))
                    .unwrap_or_else(|| "—".into()),
                q.top_confusions
                    .iter()
                    .take(3)
                    .map(|t| format!("{}→{} ({})", t.reference, t.predicted, t.count))
                    .collect::<Vec<_>>()
                    .join("; "),
            ]);
            qrows.push(row);
        }
    }
    let mut header: Vec<String> = vec!["option".into(), "vs".into(), "n".into()];
    if sets {
        header.extend(["exact-set accuracy / agreement".into(), "micro F1".into()]);
    } else {
        header.push("accuracy / agreement".into());
    }
    header.extend(["macro F1".into(), "weighted F1".into()]);
    if sets {
        header.push("Hamming loss".into());
    }
    header.extend(["ECE".into(), "top confusions".into()]);
    b.push_str(&table(&header, &qrows));
    b.push_str(
        "<p>Intervals are 95%: Wilson for proportions, seeded percentile bootstrap for F1 and ECE. \
         Per-class figures and full confusion matrices are in metrics.json.</p></body></html>\n",
    );
    b
}

/// The learning-curve section: caption, table and chart (every kind's report has the same one).
pub fn curve_section(c: &crate::curve::Curve) -> String {
    let (h, rows) = super::curve_rows(c);
    let mut b = String::from("<h2>Learning curve</h2>");
    b.push_str(&format!("<p>{}</p>", escape(&super::curve_caption(c))));
    b.push_str(&table(&h, &rows));
    b.push_str(&figure(
        "curve",
        charts::learning_curve(c),
        "Student and cascade quality against what labelling cost (mean over seeds, bars from \
         the lowest to the highest seed); the ring marks the cheapest sufficient size.",
        "No learning-curve chart: no point has a quality figure.",
    ));
    b
}
