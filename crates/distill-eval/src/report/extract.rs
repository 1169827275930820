//! An extraction eval's `report.md` and `report.html`, drawn from one set of tables so the two
//! never disagree: the span scores, the per-slot table, the cascade (with its sweep chart in
//! the HTML), the bill and, with `--curve`, the learning curve (the section every kind shares).

use super::fmt::{count, pct, usd};
use super::{charts, html, markdown};
use crate::extract::ExtractReport;
use crate::span_metrics::SpanScores;
use std::fmt::Write;

type Table = (Vec<String>, Vec<Vec<String>>);

fn header(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

fn comparisons(r: &ExtractReport) -> [(&'static str, &Option<SpanScores>); 3] {
    [
        ("student vs gold", &r.student_vs_gold),
        ("teacher vs gold", &r.teacher_vs_gold),
        ("student vs teacher", &r.student_vs_teacher),
    ]
}

fn quality_table(r: &ExtractReport) -> Table {
    let api: Vec<(String, &Option<SpanScores>)> = r
        .api
        .iter()
        .flat_map(|a| {
            [
                (format!("{} vs gold", a.name), &a.vs_gold),
                (format!("{} vs teacher", a.name), &a.vs_teacher),
            ]
        })
        .collect();
    let rows = comparisons(r)
        .into_iter()
        .map(|(name, q)| (name.to_string(), q))
        .chain(api)
        .filter_map(|(name, q)| {
            let q = q.as_ref()?;
            Some(vec![
                name,
                format!(
                    "{:.4} [{:.4}, {:.4}]",
                    q.exact.f1.value, q.exact.f1.lo, q.exact.f1.hi
                ),
                format!("{:.4}", q.exact.precision),
                format!("{:.4}", q.exact.recall),
                format!("{:.4}", q.partial.f1.value),
                format!("{:.4}", q.exact_inputs.value),
            ])
        })
        .collect();
    (
        header(&[
            "",
            "exact span F1",
            "precision",
            "recall",
            "partial F1",
            "exact inputs",
        ]),
        rows,
    )
}

/// The student's per-slot scores, against gold when there is gold.
fn slot_table(r: &ExtractReport) -> Option<Table> {
    let q = r
        .student_vs_gold
        .as_ref()
        .or(r.student_vs_teacher.as_ref())?;
    let rows = q
        .per_slot
        .iter()
        .map(|p| {
            vec![
                p.slot.clone(),
                format!("{:.4}", p.precision),
                format!("{:.4}", p.recall),
                format!("{:.4}", p.f1),
                p.support.to_string(),
            ]
        })
        .collect();
    Some((
        header(&["slot", "precision", "recall", "F1", "support"]),
        rows,
    ))
}

fn cascade_text(r: &ExtractReport) -> String {
    match &r.cascade {
        Some(c) => format!(
            "An input is right when its whole answer is (reference: {}). Floor {:.4} ({}). \
             Threshold {:.4} on the student's least sure token: held-out exact inputs {:.4} \
             (teacher alone {:.4}, student alone {:.4}), escalating {:.1}%; floor {}.",
            r.reference,
            r.floor,
            r.floor_source,
            c.threshold,
            c.held_out.quality.value,
            c.held_out.teacher_quality.value,
            c.held_out.student_quality.value,
            100.0 * c.held_out.escalated_fraction,
            if c.floor_held { "held" } else { "NOT held" }
        ),
        None => {
            "No cascade: give the teacher's labels of the test inputs (--teacher-labels).".into()
        }
    }
}

fn cost_table(r: &ExtractReport) -> Option<(String, Table, Vec<String>)> {
    let c = r.costs.as_ref()?;
    let pct = |v: Option<f64>| v.map_or("—".into(), pct);
    let mut rows = vec![vec![
        "teacher alone".to_string(),
        usd(c.teacher_per_request_usd),
        usd(c.teacher_monthly_usd),
        usd(c.teacher_monthly_usd),
        String::new(),
        String::new(),
        String::new(),
    ]];
    for (name, per, e) in [
        (
            "tagger alone",
            Some(c.student_per_request_usd),
            Some(&c.student),
        ),
        ("cascade", c.cascade_per_request_usd, c.cascade.as_ref()),
    ] {
        if let (Some(per), Some(e)) = (per, e) {
            rows.push(vec![
                name.to_string(),
                usd(per),
                usd(e.monthly_usd),
                usd(e.steady_monthly_usd),
                pct(e.saving),
                pct(e.steady_saving),
                e.break_even_requests.map_or("never".into(), count),
            ]);
        }
    }
    for a in &r.api {
        if let Some(e) = &a.economics {
            rows.push(vec![
                a.name.clone(),
                usd(a.per_request_usd),
                usd(e.monthly_usd),
                usd(e.steady_monthly_usd),
                pct(e.saving),
                pct(e.steady_saving),
                String::new(),
            ]);
        }
    }
    let mut notes: Vec<String> = c
        .one_time
        .iter()
        .map(|i| {
            format!(
                "{} (one-time, month 1): {} ({})",
                i.what,
                usd(i.usd),
                i.basis
            )
        })
        .collect();
    notes.push(format!(
        "the tagger's $/input: {}",
        c.student_per_request_basis
    ));
    notes.extend(api_notes(r));
    Some((
        format!("Cost at {:.0} requests a day", c.volume_per_day),
        (
            header(&[
                "",
                "$/input",
                "month 1",
                "steady $/month",
                "saving, month 1",
                "saving, steady",
                "break-even (inputs)",
            ]),
            rows,
        ),
        notes,
    ))
}

/// One line per `--api` model: what its $/input is made of and what went wrong.
pub fn api_notes(r: &ExtractReport) -> Vec<String> {
    r.api
        .iter()
        .map(|a| {
            format!(
                "{}: {} per input, real tokens × its price, mean of {} inputs (Batch API: {}){}{}",
                a.name,
                usd(a.per_request_usd),
                r.n,
                usd(a.batch_per_request_usd),
                if a.priced {
                    ""
                } else {
                    "; not in the price table, shown as $0 (pass --prices FILE)"
                },
                if a.invalid + a.failed > 0 {
                    format!(
                        "; {} invalid and {} failed answers count as no spans",
                        a.invalid, a.failed
                    )
                } else {
                    String::new()
                }
            )
        })
        .collect()
}

/// Without the teacher's cost there is no Cost table: the hosted models' lines stand alone.
fn api_section(r: &ExtractReport) -> Option<Vec<String>> {
    (r.costs.is_none() && !r.api.is_empty()).then(|| api_notes(r))
}

fn intro(r: &ExtractReport) -> String {
    format!(
        "{} test inputs; student `{}` ({}, {} training inputs).",
        r.n, r.model, r.student.student, r.student.train_inputs
    )
}

pub fn render_markdown(r: &ExtractReport) -> String {
    let mut s = format!("# {}: extraction eval\n\n{}\n\n", r.task, intro(r));
    let (h, rows) = quality_table(r);
    markdown::table(&mut s, &h, &rows);
    if let Some((h, rows)) = slot_table(r) {
        s.push_str("\n## Per slot (student, exact match)\n\n");
        markdown::table(&mut s, &h, &rows);
    }
    let _ = writeln!(s, "\n## Cascade\n\n{}", cascade_text(r));
    if let Some((title, (h, rows), notes)) = cost_table(r) {
        let _ = writeln!(s, "\n## {title}\n");
        markdown::table(&mut s, &h, &rows);
        s.push('\n');
        for n in notes {
            let _ = writeln!(s, "- {n}");
        }
    }
    if let Some(notes) = api_section(r) {
        s.push_str("\n## Hosted models\n\n");
        for n in notes {
            let _ = writeln!(s, "- {n}");
        }
    }
    if let Some(c) = &r.curve {
        s.push('\n');
        s.push_str(&markdown::curve_section(c));
    }
    s
}

pub fn render_html(r: &ExtractReport) -> String {
    let e = html::escape;
    let mut b = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>distill eval: {0}</title><style>{1}</style></head><body>\
         <h1>distill eval: {0} (extraction)</h1><p>{2}</p>",
        e(&r.task),
        html::CSS,
        e(&intro(r))
    );
    let (h, rows) = quality_table(r);
    b.push_str(&html::table(&h, &rows));
    if let Some((h, rows)) = slot_table(r) {
        b.push_str("<h2>Per slot (student, exact match)</h2>");
        b.push_str(&html::table(&h, &rows));
    }
    let _ = write!(b, "<h2>Cascade</h2><p>{}</p>", e(&cascade_text(r)));
    if let Some(c) = &r.cascade {
        b.push_str(&html::figure(
            "cascade",
            charts::cascade_sweep(c, r.floor, "exact inputs"),
            "The calibration split's exact-input rate (and its lower 95% bound) as more inputs \
             go to the teacher; the dot is the chosen threshold.",
            "No cascade chart: the calibration sweep is empty.",
        ));
    }
    if let Some((title, (h, rows), notes)) = cost_table(r) {
        let _ = write!(b, "<h2>{}</h2>", e(&title));
        b.push_str(&html::table(&h, &rows));
        b.push_str("<ul>");
        for n in notes {
            let _ = write!(b, "<li>{}</li>", e(&n));
        }
        b.push_str("</ul>");
    }
    if let Some(notes) = api_section(r) {
        b.push_str("<h2>Hosted models</h2><ul>");
        for n in notes {
            let _ = write!(b, "<li>{}</li>", e(&n));
        }
        b.push_str("</ul>");
    }
    if let Some(c) = &r.curve {
        b.push_str(&html::curve_section(c));
    }
    b.push_str("</body></html>");
    b
}
