//! `report.md`: the verdict in plain Markdown, readable in a terminal, a PR or a wiki.

use super::fmt::{pct, usd};
use super::{summary_rows, EvalReport, OptionKind};
use crate::metrics::Quality;
use std::fmt::Write;

pub(crate) fn table(out: &mut String, header: &[String], rows: &[Vec<String>]) {
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(
        out,
        "|{}|",
        header.iter().map(|_| "---").collect::<Vec<_>>().join("|")
    );
    for r in rows {
        let cells: Vec<String> = r.iter().map(|c| c.replace('|', "\\|")).collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
}

fn interval(e: &crate::metrics::Estimate) -> String {
    format!("{} [{}–{}]", pct(e.value), pct(e.lo), pct(e.hi))
}

fn quality_lines(out: &mut String, q: &Quality) {
    let what = if q.reference == "gold" {
        "accuracy"
    } else {
        "agreement"
    };
    match &q.sets {
        None => {
            let _ = writeln!(
                out,
                "- {what} vs {} on {} items: {}; macro F1 {}; weighted F1 {}",
                q.reference,
                q.n,
                interval(&q.accuracy),
                interval(&q.macro_f1),
                interval(&q.weighted_f1),
            );
        }
        Some(s) => {
            let _ = writeln!(
                out,
                "- exact-set {what} vs {} on {} items: {}; micro F1 {}; macro F1 {}; \
                 weighted F1 {}; Hamming loss {}",
                q.reference,
                q.n,
                interval(&q.accuracy),
                interval(&s.micro_f1),
                interval(&q.macro_f1),
                interval(&q.weighted_f1),
                interval(&s.hamming_loss),
            );
            let _ = writeln!(
                out,
                "- labels per item: {:.2} in the references, {:.2} answered",
                s.mean_reference_labels, s.mean_predicted_labels
            );
        }
    }
    if let Some(c) = &q.calibration {
        let _ = writeln!(out, "- expected calibration error: {}", interval(&c.ece));
    }
    if !q.top_confusions.is_empty() {
        let named: Vec<String> = q
            .top_confusions
            .iter()
            .take(5)
            .map(|t| format!("{} → {} ({})", t.reference, t.predicted, t.count))
            .collect();
        let _ = writeln!(
            out,
            "- top confusions ({} → predicted): {}",
            q.reference,
            named.join("; ")
        );
    }
    if let Some(curve) = &q.coverage_curve {
        let pts: Vec<String> = curve
            .iter()
            .filter(|p| {
                [0.5, 0.8, 0.9, 1.0]
                    .iter()
                    .any(|c| (p.coverage - c).abs() < 1e-9)
            })
            .map(|p| format!("{} at {} coverage", pct(p.accuracy), pct(p.coverage)))
            .collect();
        let _ = writeln!(out, "- coverage–accuracy: {}", pts.join(", "));
    }
}

pub fn render(r: &EvalReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# distill eval: {}\n", r.task);
    if r.partial {
        let _ = writeln!(
            out,
            "> **Partial report.** Some figures could not be measured; see the warnings below.\n"
        );
    }
    let _ = writeln!(
        out,
        "Test set: `{}`, {} items ({} with gold labels, {} with teacher labels). \
         Projection: {} requests/day, {} days/month; `month 1` includes the one-time costs (labelling, \
         training), `then $/month` is every later month.\n",
        r.test.path,
        r.test.n,
        r.test.n_gold,
        r.test.n_teacher,
        r.settings.volume_per_day,
        r.settings.days_per_month
    );
    let (header, rows) = summary_rows(r);
    table(&mut out, &header, &rows);
    out.push('\n');

    if !r.warnings.is_empty() {
        let _ = writeln!(out, "## Warnings\n");
        for w in &r.warnings {
            let _ = writeln!(out, "- {w}");
        }
        out.push('\n');
    }

    if let Some(c) = &r.curve {
        out.push_str(&curve_section(c));
        out.push('\n');
    }

    let _ = writeln!(out, "## Cascade\n");
    match &r.cascade {
        None => {
            let _ = writeln!(
                out,
                "No cascade: it needs teacher labels for the test items (`--teacher-labels`) and a \
                 student with confidences.\n"
            );
        }
        Some(c) => {
            let ch = &c.choice;
            let _ = writeln!(
                out,
                "Student `{}` answers when its confidence is at least **{:.4}**, else the request \
                 goes to the teacher. Floor: {} ≥ {} ({}). Chosen on {} calibration items as the \
                 cheapest threshold whose lower 95% bound meets the floor{}.\n",
                c.model,
                ch.threshold,
                r.floor_metric_name(c.floor.metric),
                pct(c.floor.value),
                c.floor.source,
                ch.calibration.n,
                if ch.floor_met_on_calibration {
                    ""
                } else {
                    " — **no threshold met it, so everything escalates**"
                }
            );
            let split_row = |name: &str, s: &crate::cascade::SplitResult| {
                vec![
                    name.to_string(),
                    s.n.to_string(),
                    pct(s.escalated_fraction),
                    interval(&s.quality),
                    interval(&s.teacher_quality),
                    interval(&s.student_quality),
                    s.cost_per_request_usd
                        .map(usd)
                        .unwrap_or_else(|| "—".into()),
                ]
            };
            let m = r.floor_metric_name(c.floor.metric);
            table(
                &mut out,
                &[
                    "split".into(),
                    "items".into(),
                    "escalated".into(),
                    format!("cascade {m}"),
                    format!("teacher {m}"),
                    format!("student {m}"),
                    "$/request".into(),
                ],
                &[
                    split_row("calibration", &ch.calibration),
                    split_row("held-out", &ch.held_out),
                ],
            );
            let _ = writeln!(
                out,
                "\nOn the held-out split the floor **{}**.\n",
                if ch.floor_held {
                    "held"
                } else {
                    "did NOT hold"
                }
            );
            if r.cascades.len() > 1 {
                let _ = writeln!(out, "Other students' cascades:\n");
                for o in r.cascades.iter().filter(|o| o.model != c.model) {
                    let _ = writeln!(
                        out,
                        "- `{}`: threshold {:.4}, escalates {}, held-out {} {}",
                        o.model,
                        o.choice.threshold,
                        pct(o.choice.held_out.escalated_fraction),
                        m,
                        pct(o.choice.held_out.quality.value)
                    );
                }
                out.push('\n');
            }
        }
    }

    if let Some((h, rows)) = super::quantized_rows(r) {
        let _ = writeln!(out, "## int8 students beside their f32 parents\n");
        let _ = writeln!(
            out,
            "Each `distill quantize` copy against the f32 student it came from, on the same items: \
             Δ is int8 − f32 accuracy in points with a 95% paired-bootstrap interval; latency is \
             single-request p50 on this machine.\n"
        );
        table(&mut out, &h, &rows);
    }

    if let (Some(info), Some((h, rows))) = (&r.open_set, super::open_set_rows(r)) {
        let _ = writeln!(out, "## Out-of-scope traffic\n");
        let _ = writeln!(
            out,
            "`{}` is the answer for inputs that fit no label. {} out-of-scope and {} in-scope test \
             items; the table above and the cascade are evaluated with out-of-scope requests at {} \
             of the traffic ({}: {} out-of-scope and {} in-scope items). Recall counts out-of-scope \
             inputs answered `{}`; *turned away* counts in-scope inputs answered `{}`; precision and \
             accuracy are at the stated mix; an out-of-scope request costs a cascade its student plus \
             the teacher for those it escalates.\n",
            info.label,
            info.n_out_of_scope,
            info.n_in_scope,
            pct(info.share),
            info.share_source,
            info.population_out_of_scope,
            info.population_in_scope,
            info.label,
            info.label
        );
        table(&mut out, &h, &rows);
        out.push('\n');
    }

    let _ = writeln!(out, "## Costs\n");
    let t = &r.teacher;
    let _ = writeln!(
        out,
        "- Teacher `{}` priced as `{}`: {} per request real-time, {} with the Batch API \
         (mean {:.0} prompt + {:.0} completion tokens; basis: {} — {}).",
        t.model,
        t.price_model,
        usd(t.per_request_usd),
        usd(t.per_request_batch_usd),
        t.mean_prompt_tokens,
        t.mean_completion_tokens,
        t.basis,
        t.basis_detail
    );
    let _ = writeln!(
        out,
        "- Hardware: {}/core-hour (CPU), {}/GPU-hour.",
        usd(r.settings.core_hour_usd),
        usd(r.settings.gpu_hour_usd)
    );
    for o in &r.options {
        if matches!(o.kind, OptionKind::Teacher | OptionKind::TeacherBatch) {
            continue;
        }
        let parts: Vec<String> = o
            .cost
            .one_time
            .iter()
            .map(|c| format!("{} {} ({})", c.what, usd(c.usd), c.basis))
            .collect();
        let _ = writeln!(
            out,
            "- `{}`: per request {}; one-time {}{}.",
            o.name,
            o.cost.per_request_basis,
            usd(o.cost.one_time_usd),
            if parts.is_empty() {
                String::new()
            } else {
                format!(" = {}", parts.join(" + "))
            }
        );
        if let Some(rt) = o.runtime.as_ref().filter(|rt| rt.device == "api") {
            if let Some(l) = rt.latency {
                let _ = writeln!(
                    out,
                    "  - network latency p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms ({} calls, {} concurrent)",
                    l.p50_ms, l.p95_ms, l.p99_ms, l.samples, rt.threads
                );
            }
        } else if let Some(rt) = &o.runtime {
            let lat = rt
                .latency
                .map(|l| {
                    format!(
                        "; single-request latency p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms ({} samples)",
                        l.p50_ms, l.p95_ms, l.p99_ms, l.samples
                    )
                })
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  - runtime: {} × {} threads, {:.3} ms per request in batches of {}{}",
                rt.device,
                rt.threads,
                rt.batch_seconds_per_request * 1e3,
                rt.batch_size,
                lat
            );
        }
    }
    out.push('\n');

    let _ = writeln!(out, "## Quality\n");
    for o in &r.options {
        if o.kind == OptionKind::TeacherBatch || (o.vs_gold.is_none() && o.vs_teacher.is_none()) {
            continue;
        }
        let _ = writeln!(
            out,
            "### {}{}\n",
            o.name,
            if o.evaluated_on == "held_out" {
                " (held-out split)"
            } else {
                ""
            }
        );
        for q in [&o.vs_gold, &o.vs_teacher].into_iter().flatten() {
            quality_lines(&mut out, q);
        }
        out.push('\n');
        // A tagger is read label by label: which labels it misses, which it adds.
        if let Some(q) = o.vs_gold.as_ref().or(o.vs_teacher.as_ref()) {
            if q.sets.is_some() {
                let rows: Vec<Vec<String>> = q
                    .per_class
                    .iter()
                    .map(|c| {
                        vec![
                            c.label.clone(),
                            pct(c.precision),
                            pct(c.recall),
                            pct(c.f1),
                            c.support.to_string(),
                        ]
                    })
                    .collect();
                table(
                    &mut out,
                    &[
                        format!("label (vs {})", q.reference),
                        "precision".into(),
                        "recall".into(),
                        "F1".into(),
                        "support".into(),
                    ],
                    &rows,
                );
                out.push('\n');
            }
        }
    }
    let _ = writeln!(
        out,
        "Intervals are 95%: Wilson for accuracy and agreement, percentile bootstrap ({} resamples, \
         seed {}) for F1 and calibration error. Per-class figures and confusion matrices are in \
         `metrics.json`; every prediction is in `predictions.jsonl`.",
        crate::metrics::BOOTSTRAP_RESAMPLES,
        r.settings.seed
    );
    out
}

/// The learning-curve section (every kind's report has the same one).
pub fn curve_section(c: &crate::curve::Curve) -> String {
    let mut out = format!("## Learning curve\n\n{}\n\n", super::curve_caption(c));
    let (header, rows) = super::curve_rows(c);
    table(&mut out, &header, &rows);
    out
}
