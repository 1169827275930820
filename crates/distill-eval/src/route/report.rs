//! The route eval's renderings: the text summary, `report.md` and a self-contained
//! `report.html` with the cost–quality curve of every router and baseline.

use super::{Policy, RouteReport};
use crate::report::charts::{svg, PALETTE};
use crate::report::fmt::{pct, usd};
use crate::report::html::escape;
use crate::report::text_table;
use plotters::prelude::*;
use std::fmt::Write;

fn opt_pct(x: Option<f64>) -> String {
    x.map(pct).unwrap_or_else(|| "—".into())
}

fn fixed(p: &Policy) -> bool {
    p.curve.len() == 1
}

/// One row per policy: name, APGR, CPT(20/50/80), and the chosen threshold's figures.
fn rows(r: &RouteReport) -> (Vec<String>, Vec<Vec<String>>) {
    let header = [
        "policy",
        "APGR",
        "CPT(20%)",
        "CPT(50%)",
        "CPT(80%)",
        "at the floor: quality",
        "premium calls",
        "$/1k requests",
        "saving",
    ]
    .map(String::from)
    .to_vec();
    let rows = r
        .policies
        .iter()
        .map(|p| {
            let (apgr, c20, c50, c80) = if fixed(p) {
                ("—".into(), "—".into(), "—".into(), "—".into())
            } else {
                (
                    format!("{:.3}", p.gap.apgr),
                    opt_pct(p.gap.cpt20),
                    opt_pct(p.gap.cpt50),
                    opt_pct(p.gap.cpt80),
                )
            };
            let (q, share, cost, saving) = match (&p.chosen, fixed(p)) {
                (Some(c), _) => (
                    format!(
                        "{}{}",
                        pct(c.held_out.quality),
                        match c.floor_held {
                            Some(false) => " (floor NOT held)",
                            _ => "",
                        }
                    ),
                    pct(c.held_out.premium_share),
                    usd(c.cost_per_1000_usd),
                    pct(c.saving_vs_premium),
                ),
                (None, true) => {
                    let pt = &p.curve[0];
                    let premium = r.tiers.last().map_or(0.0, |t| t.cost_per_request_usd);
                    (
                        pct(pt.quality),
                        pct(pt.premium_share),
                        usd(pt.cost_per_request_usd * 1000.0),
                        if premium > 0.0 {
                            pct(1.0 - pt.cost_per_request_usd / premium)
                        } else {
                            "—".into()
                        },
                    )
                }
                (None, false) => ("—".into(), "—".into(), "—".into(), "—".into()),
            };
            vec![p.name.clone(), apgr, c20, c50, c80, q, share, cost, saving]
        })
        .collect();
    (header, rows)
}

/// What the CLI prints.
pub fn summary_text(r: &RouteReport) -> String {
    let mut s = String::new();
    for t in &r.tiers {
        let _ = writeln!(
            s,
            "tier {}: {} ({}) quality {} on held-out, {}/request (priced as {})",
            t.name,
            t.model,
            if t.cost_per_request_usd > 0.0 {
                "priced"
            } else {
                "no price"
            },
            pct(t.quality),
            usd(t.cost_per_request_usd),
            t.price_model
        );
    }
    let (h, rows) = rows(r);
    s.push_str(&text_table(&h, &rows));
    let sm = &r.summary;
    if let Some(name) = &sm.router {
        let _ = writeln!(
            s,
            "{name}: APGR {:.3} (random {:.3}, oracle {:.3}); CPT(50%) {} (random {}, oracle {}); CPT(80%) {}; \
             at the floor ({} of the top tier's quality) it sends {} to the top tier for {} of its quality and saves {} \
             vs always-top",
            sm.apgr.unwrap_or(f64::NAN),
            sm.random_apgr,
            sm.oracle_apgr,
            opt_pct(sm.cpt50),
            opt_pct(sm.random_cpt50),
            opt_pct(sm.oracle_cpt50),
            opt_pct(sm.cpt80),
            pct(r.settings.floor_fraction),
            opt_pct(sm.premium_share_at_floor),
            opt_pct(sm.quality_at_floor),
            opt_pct(sm.saving_at_floor)
        );
    }
    for p in r.policies.iter().filter(|p| p.kind == "router") {
        if let (Some(ms), Some(share)) = (p.latency_p50_ms, p.cost_vs_cheap_tier) {
            let _ = writeln!(
                s,
                "{}: a routing decision for a 500-token prompt takes {ms:.2} ms (p50) on {} threads, \
                 {:.2e} of the cheapest tier's price per request",
                p.name,
                r.settings.threads,
                share
            );
        }
    }
    for w in &r.warnings {
        let _ = writeln!(s, "warning: {w}");
    }
    s
}

pub fn markdown(r: &RouteReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Routing eval: {}\n", r.task);
    let _ = writeln!(
        out,
        "{} test prompts ({} calibration, {} held-out; split seeded and stratified by category). \
         Quality is the share of answers that pass; every figure below is on the held-out part. \
         PGR = (quality − cheapest tier's) / (top tier's − cheapest tier's); APGR is its area over \
         the share of top-tier calls; CPT(x%) is the share of top-tier calls needed to recover x% \
         of the gap (RouteLLM's metrics). The floor is {} of the top tier's calibration quality, \
         met by the lower 95% bound.\n",
        r.test.n,
        r.test.n_calibration,
        r.test.n_held_out,
        pct(r.settings.floor_fraction)
    );
    let _ = writeln!(out, "## Tiers\n");
    let _ = writeln!(out, "| tier | model | priced as | quality | $/request |");
    let _ = writeln!(out, "|---|---|---|---|---|");
    for t in &r.tiers {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            t.name,
            t.model,
            t.price_model,
            pct(t.quality),
            usd(t.cost_per_request_usd)
        );
    }
    let _ = writeln!(out, "\n## Routers and baselines\n");
    let (h, rows) = rows(r);
    let _ = writeln!(out, "| {} |", h.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(h.len()));
    for row in rows {
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    if !r.warnings.is_empty() {
        let _ = writeln!(out, "\n## Warnings\n");
        for w in &r.warnings {
            let _ = writeln!(out, "- {w}");
        }
    }
    out
}

/// What a cost–quality chart puts on its x axis.
#[derive(Clone, Copy)]
enum CostAxis {
    /// The share of requests sent to the top tier.
    PremiumShare,
    /// Dollars per 1,000 requests.
    UsdPer1000,
}

impl CostAxis {
    fn x(self, pt: &super::curve::Point) -> f64 {
        match self {
            CostAxis::PremiumShare => pt.premium_share,
            CostAxis::UsdPer1000 => pt.cost_per_request_usd * 1000.0,
        }
    }
}

/// Quality against cost (the share of top-tier calls, or $ per 1,000 requests), every
/// policy's curve.
fn chart(r: &RouteReport, axis: CostAxis) -> Option<String> {
    let curves: Vec<&Policy> = r.policies.iter().collect();
    let (mut y0, mut y1, mut x1) = (1.0f64, 0.0f64, 0.0f64);
    for p in &curves {
        for pt in &p.curve {
            if pt.quality.is_finite() {
                y0 = y0.min(pt.quality);
                y1 = y1.max(pt.quality);
                x1 = x1.max(axis.x(pt));
            }
        }
    }
    if y0 > y1 {
        return None;
    }
    let (y0, y1) = ((y0 - 0.02).max(0.0), (y1 + 0.02).min(1.0));
    let (x1, caption, x_desc) = match axis {
        CostAxis::PremiumShare => (
            1.0,
            "quality vs share of top-tier calls (held-out)",
            "share of requests sent to the top tier",
        ),
        CostAxis::UsdPer1000 => (
            (x1 * 1.05).max(1e-9),
            "quality vs $ per 1,000 requests (held-out)",
            "$ per 1,000 requests",
        ),
    };
    svg(|root| {
        let mut chart = ChartBuilder::on(root)
            .caption(caption, ("sans-serif", 20))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..x1, y0..y1)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc("quality (pass rate)")
            .x_label_formatter(&|x| match axis {
                CostAxis::PremiumShare => format!("{:.0}%", x * 100.0),
                CostAxis::UsdPer1000 => format!("${x:.2}"),
            })
            .y_label_formatter(&|y| format!("{:.0}%", y * 100.0))
            .draw()?;
        for (k, p) in curves.iter().enumerate() {
            let color = PALETTE[k % PALETTE.len()];
            let mut pts: Vec<(f64, f64)> = p
                .curve
                .iter()
                .filter(|pt| pt.quality.is_finite())
                .map(|pt| (axis.x(pt), pt.quality))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            if pts.len() == 1 {
                chart
                    .draw_series(std::iter::once(Circle::new(pts[0], 5, color.filled())))?
                    .label(p.name.clone())
                    .legend(move |(x, y)| Circle::new((x + 10, y), 4, color.filled()));
            } else {
                chart
                    .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
                    .label(p.name.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()?;
        Ok(())
    })
}

pub fn html(r: &RouteReport) -> String {
    let mut b = String::new();
    let _ = write!(
        b,
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" \
         content=\"width=device-width, initial-scale=1\"><title>Routing eval: {}</title><style>\
         body{{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}}\
         table{{border-collapse:collapse;margin:1em 0;font-size:14px}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}\
         svg{{max-width:100%;height:auto}}.warn{{color:#a40}}</style></head><body>",
        escape(&r.task)
    );
    let _ = write!(b, "<h1>Routing eval: {}</h1>", escape(&r.task));
    let _ = write!(
        b,
        "<p>{} test prompts ({} calibration, {} held-out). Figures are on the held-out part; PGR, \
         APGR and CPT are RouteLLM's metrics; the floor is {} of the top tier's quality.</p>",
        r.test.n,
        r.test.n_calibration,
        r.test.n_held_out,
        pct(r.settings.floor_fraction)
    );
    if !r.warnings.is_empty() {
        b.push_str("<h2>Warnings</h2><ul class=\"warn\">");
        for w in &r.warnings {
            let _ = write!(b, "<li>{}</li>", escape(w));
        }
        b.push_str("</ul>");
    }
    b.push_str("<h2>Cost–quality curves</h2>");
    for axis in [CostAxis::PremiumShare, CostAxis::UsdPer1000] {
        match chart(r, axis) {
            Some(svg) => b.push_str(&svg),
            None => b.push_str("<p>No curve: no policy has a finite quality.</p>"),
        }
    }
    b.push_str("<h2>Routers and baselines</h2><table><tr>");
    let (h, rows) = rows(r);
    for c in &h {
        let _ = write!(b, "<th>{}</th>", escape(c));
    }
    b.push_str("</tr>");
    for row in rows {
        b.push_str("<tr>");
        for c in row {
            let _ = write!(b, "<td>{}</td>", escape(&c));
        }
        b.push_str("</tr>");
    }
    b.push_str("</table><h2>Tiers</h2><table><tr><th>tier</th><th>model</th><th>priced as</th><th>quality</th><th>$/request</th></tr>");
    for t in &r.tiers {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&t.name),
            escape(&t.model),
            escape(&t.price_model),
            pct(t.quality),
            usd(t.cost_per_request_usd)
        );
    }
    b.push_str("</table></body></html>\n");
    b
}
