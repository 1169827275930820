//! The report's four charts as inline SVG strings (plotters' SVG backend, no fonts or files
//! needed): cost-vs-accuracy frontier, cascade curve, confusion heatmap, reliability diagram.
//!
//! Each chart returns `None` when the report has no data for it, so the HTML can say why
//! instead of drawing an empty frame. The SVGs keep their `viewBox` and lose their fixed
//! size, so they scale to a phone's width.

use super::{EvalReport, OptionKind};
use crate::cascade::CascadeChoice;
use crate::metrics::Quality;
use plotters::prelude::*;

pub(crate) const W: u32 = 720;
pub(crate) const H: u32 = 440;
pub(crate) const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

pub(crate) type Draw<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

/// Draws with `f` into an SVG string made responsive.
pub(crate) fn svg(
    f: impl FnOnce(&Draw) -> Result<(), Box<dyn std::error::Error>>,
) -> Option<String> {
    let mut s = String::new();
    {
        let root = SVGBackend::with_string(&mut s, (W, H)).into_drawing_area();
        root.fill(&WHITE).ok()?;
        if f(&root).is_err() {
            return None;
        }
        root.present().ok()?;
    }
    let fixed = format!("width=\"{W}\" height=\"{H}\" ");
    Some(s.replacen(&fixed, "role=\"img\" ", 1))
}

fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

/// Quality (accuracy or agreement) against $/request for every option, log-scaled cost.
pub fn frontier(r: &EvalReport) -> Option<String> {
    let pts: Vec<(String, f64, f64)> = r
        .options
        .iter()
        .filter_map(|o| {
            let q = o.headline()?.accuracy.value;
            let c = o.cost.per_request_usd?;
            (q.is_finite() && c > 0.0).then(|| (o.name.clone(), c.log10(), q))
        })
        .collect();
    if pts.is_empty() {
        return None;
    }
    let (mut x0, mut x1) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    x0 = x0.floor() - 0.3;
    x1 = x1.ceil() + 0.3;
    let y0 = pts.iter().map(|p| p.2).fold(1.0, f64::min);
    let y0 = ((y0 - 0.05) * 20.0).floor() / 20.0;
    let metric = r.headline_metric();
    svg(|root| {
        let mut chart = ChartBuilder::on(root)
            .caption(format!("{metric} vs cost per request"), ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d(x0..x1, y0.max(0.0)..1.0)?;
        chart
            .configure_mesh()
            .x_desc("$ per request (log scale)")
            .y_desc(metric)
            .x_label_formatter(&|v| format!("{:.0e}", 10f64.powf(*v)))
            .y_label_formatter(&|v| format!("{:.0}%", v * 100.0))
            .draw()?;
        for (i, (name, x, y)) in pts.iter().enumerate() {
            let c = PALETTE[i % PALETTE.len()];
            chart.draw_series(std::iter::once(Circle::new((*x, *y), 7, c.filled())))?;
            chart.draw_series(std::iter::once(Text::new(
                short(name, 28),
                (*x, *y),
                ("sans-serif", 15).into_font().color(&c),
            )))?;
        }
        Ok(())
    })
}

/// Calibration sweep of the recommended cascade: quality and its lower bound vs escalation.
pub fn cascade_curve(r: &EvalReport) -> Option<String> {
    let c = r.cascade.as_ref()?;
    cascade_sweep(&c.choice, c.floor.value, c.floor.metric.as_str())
}

/// A cascade's calibration sweep against its floor, `metric` naming the quality axis; every
/// task kind's report draws its cascade with it.
pub(crate) fn cascade_sweep(ch: &CascadeChoice, floor: f64, metric: &str) -> Option<String> {
    let sweep = &ch.sweep;
    if sweep.is_empty() {
        return None;
    }
    let y0 = sweep.iter().map(|p| p.quality_lo).fold(floor, f64::min);
    let y0 = ((y0 - 0.02) * 50.0).floor() / 50.0;
    svg(|root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!("cascade: {metric} vs share escalated"),
                ("sans-serif", 22),
            )
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..1.0, y0.max(0.0)..1.0)?;
        chart
            .configure_mesh()
            .x_desc("share of requests escalated to the teacher")
            .y_desc(format!("{metric} (calibration split)"))
            .x_label_formatter(&|v| format!("{:.0}%", v * 100.0))
            .y_label_formatter(&|v| format!("{:.0}%", v * 100.0))
            .draw()?;
        chart
            .draw_series(LineSeries::new(
                sweep.iter().map(|p| (p.escalated_fraction, p.quality)),
                PALETTE[0].stroke_width(3),
            ))?
            .label(metric)
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], PALETTE[0]));
        chart
            .draw_series(LineSeries::new(
                sweep.iter().map(|p| (p.escalated_fraction, p.quality_lo)),
                PALETTE[2].stroke_width(2),
            ))?
            .label("lower 95% bound")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], PALETTE[2]));
        chart
            .draw_series(LineSeries::new(
                vec![(0.0, floor), (1.0, floor)],
                PALETTE[1].stroke_width(2),
            ))?
            .label("floor")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], PALETTE[1]));
        chart.draw_series(std::iter::once(Circle::new(
            (
                ch.calibration.escalated_fraction,
                ch.calibration.quality.value,
            ),
            8,
            PALETTE[3].filled(),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            format!("threshold {:.3}", ch.threshold),
            (
                ch.calibration.escalated_fraction,
                ch.calibration.quality.value,
            ),
            ("sans-serif", 15),
        )))?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        Ok(())
    })
}

/// The quality the heatmap and reliability diagram show: the recommended cascade's student,
/// else the first student, against gold when there is gold.
pub fn focus(r: &EvalReport) -> Option<(&str, &Quality)> {
    let preferred = r.cascade.as_ref().map(|c| c.model.as_str());
    let students = || {
        r.options
            .iter()
            .filter(|o| matches!(o.kind, OptionKind::Student | OptionKind::Api))
    };
    let o = students()
        .find(|o| Some(o.name.as_str()) == preferred)
        .or_else(|| students().next())?;
    Some((o.name.as_str(), o.headline()?))
}

/// Confusion heatmap over the classes involved in the most errors (at most 12).
pub fn confusion_heatmap(r: &EvalReport) -> Option<String> {
    let (name, q) = focus(r)?;
    let m = &q.confusion.matrix;
    let k = m.len();
    let mut errors: Vec<(usize, u32)> = (0..k)
        .map(|i| {
            let off: u32 = (0..k).filter(|&j| j != i).map(|j| m[i][j] + m[j][i]).sum();
            (i, off)
        })
        .filter(|(_, e)| *e > 0)
        .collect();
    errors.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut top: Vec<usize> = errors.iter().take(12).map(|e| e.0).collect();
    if top.is_empty() {
        top = (0..k.min(12)).collect();
    }
    top.sort_unstable();
    let n = top.len();
    if n == 0 {
        return None;
    }
    let labels: Vec<String> = top.iter().map(|&i| q.confusion.labels[i].clone()).collect();
    let max = top
        .iter()
        .flat_map(|&i| top.iter().map(move |&j| m[i][j]))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    // Laid out by hand: long intent names need a readable label on every row.
    let left = 240i32;
    let top_px = 70i32;
    let cell = ((W as i32 - left - 16) / n as i32)
        .min((H as i32 - top_px - 16) / n as i32)
        .max(8);
    svg(|root| {
        root.draw(&Text::new(
            format!(
                "confusions of {} vs {}: {} most-confused classes",
                short(name, 24),
                q.reference,
                n
            ),
            (12, 10),
            ("sans-serif", 20),
        ))?;
        root.draw(&Text::new(
            "rows: reference label; columns: predicted label (same numbers)",
            (12, 38),
            ("sans-serif", 14).into_font().color(&RGBColor(90, 90, 90)),
        ))?;
        for ci in 0..n {
            root.draw(&Text::new(
                format!("{}", ci + 1),
                (left + ci as i32 * cell + cell / 3, top_px - 16),
                ("sans-serif", 13),
            ))?;
        }
        for (ri, &i) in top.iter().enumerate() {
            let y = top_px + ri as i32 * cell;
            root.draw(&Text::new(
                format!("{}. {}", ri + 1, short(&labels[ri], 30)),
                (8, y + cell / 2 - 7),
                ("sans-serif", 13),
            ))?;
            for (ci, &j) in top.iter().enumerate() {
                let v = m[i][j] as f64 / max;
                let colour = if i == j {
                    RGBColor(
                        (255.0 - 211.0 * v) as u8,
                        (255.0 - 95.0 * v) as u8,
                        (255.0 - 211.0 * v) as u8,
                    )
                } else {
                    RGBColor(255, (255.0 - 216.0 * v) as u8, (255.0 - 215.0 * v) as u8)
                };
                let x = left + ci as i32 * cell;
                root.draw(&Rectangle::new(
                    [(x, y), (x + cell - 1, y + cell - 1)],
                    colour.filled(),
                ))?;
                if m[i][j] > 0 {
                    root.draw(&Text::new(
                        m[i][j].to_string(),
                        (x + cell / 4, y + cell / 2 - 7),
                        ("sans-serif", 13),
                    ))?;
                }
            }
        }
        Ok(())
    })
}

/// Reliability diagram: accuracy per confidence bin against the diagonal.
pub fn reliability(r: &EvalReport) -> Option<String> {
    let (name, q) = focus(r)?;
    let cal = q.calibration.as_ref()?;
    svg(|root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!(
                    "reliability of {} (ECE {:.3})",
                    short(name, 28),
                    cal.ece.value
                ),
                ("sans-serif", 22),
            )
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..1.0, 0.0..1.0)?;
        chart
            .configure_mesh()
            .x_desc("confidence")
            .y_desc(format!(
                "{} ({})",
                if q.reference == "gold" {
                    "accuracy"
                } else {
                    "agreement"
                },
                q.reference
            ))
            .draw()?;
        chart.draw_series(cal.bins.iter().filter(|b| b.count > 0).map(|b| {
            Rectangle::new(
                [(b.lo + 0.004, 0.0), (b.hi - 0.004, b.accuracy)],
                PALETTE[0].mix(0.75).filled(),
            )
        }))?;
        chart.draw_series(LineSeries::new(
            vec![(0.0, 0.0), (1.0, 1.0)],
            PALETTE[1].stroke_width(2),
        ))?;
        chart.draw_series(
            cal.bins
                .iter()
                .filter(|b| b.count > 0)
                .map(|b| Circle::new((b.mean_confidence, b.accuracy), 4, BLACK.filled())),
        )?;
        Ok(())
    })
}

/// The learning curve: student and cascade quality against labelling dollars (or labels, when
/// the labels cost nothing), mean over seeds with min–max bars, the floor, the cheapest
/// sufficient size ringed.
pub fn learning_curve(c: &crate::curve::Curve) -> Option<String> {
    let by_dollars = c.rows.iter().any(|row| row.labelling_usd > 0.0);
    let x = |row: &crate::curve::CurveRow| {
        if by_dollars {
            row.labelling_usd
        } else {
            row.n_labels as f64
        }
    };
    let series = |pick: fn(&crate::curve::CurveRow) -> Option<crate::curve::Spread>| {
        c.rows
            .iter()
            .filter_map(|row| pick(row).map(|s| (x(row), s)))
            .filter(|(_, s)| s.mean.is_finite())
            .collect::<Vec<_>>()
    };
    let student = series(|row| row.student_quality);
    let cascade = series(|row| row.cascade_quality);
    if student.is_empty() && cascade.is_empty() {
        return None;
    }
    let x1 = c.rows.iter().map(x).fold(0.0, f64::max) * 1.08;
    let y0 = student
        .iter()
        .chain(&cascade)
        .map(|(_, s)| s.min)
        .chain(c.floor)
        .fold(1.0, f64::min);
    let y0 = ((y0 - 0.03) * 20.0).floor() / 20.0;
    let metric = c.metric.clone();
    // An extract curve scores the student by span F1 and its cascade by exact inputs: say which.
    let cascade_metric = c.floor_metric.clone().unwrap_or_else(|| metric.clone());
    let (student_name, cascade_name, y_desc) = if cascade_metric == metric {
        ("student".to_string(), "cascade".to_string(), metric.clone())
    } else {
        (
            format!("student ({metric})"),
            format!("cascade ({cascade_metric})"),
            "quality".to_string(),
        )
    };
    svg(|root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!("learning curve: {y_desc} vs labelling"),
                ("sans-serif", 22),
            )
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..x1.max(1e-9), y0.max(0.0)..1.0)?;
        chart
            .configure_mesh()
            .x_desc(if by_dollars {
                "labelling cost ($)"
            } else {
                "labels"
            })
            .y_desc(y_desc.as_str())
            .x_label_formatter(&|v| {
                if by_dollars {
                    format!("${v:.2}")
                } else {
                    format!("{v:.0}")
                }
            })
            .y_label_formatter(&|v| format!("{:.0}%", v * 100.0))
            .draw()?;
        for (pts, color, name) in [
            (&student, PALETTE[0], student_name.as_str()),
            (&cascade, PALETTE[2], cascade_name.as_str()),
        ] {
            if pts.is_empty() {
                continue;
            }
            chart
                .draw_series(LineSeries::new(
                    pts.iter().map(|(x, s)| (*x, s.mean)),
                    color.stroke_width(3),
                ))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            chart.draw_series(pts.iter().map(|(x, s)| {
                PathElement::new(vec![(*x, s.min), (*x, s.max)], color.stroke_width(2))
            }))?;
            chart.draw_series(
                pts.iter()
                    .map(|(x, s)| Circle::new((*x, s.mean), 4, color.filled())),
            )?;
        }
        if let Some(f) = c.floor {
            chart
                .draw_series(LineSeries::new(
                    vec![(0.0, f), (x1, f)],
                    PALETTE[1].stroke_width(2),
                ))?
                .label("floor")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], PALETTE[1]));
        }
        if let Some(row) = c
            .rows
            .iter()
            .find(|row| Some(row.n_labels) == c.cheapest_sufficient)
        {
            if let Some(s) = row.cascade_quality {
                chart.draw_series(std::iter::once(Circle::new(
                    (x(row), s.mean),
                    11,
                    PALETTE[3].stroke_width(3),
                )))?;
                // Left of the ring near the right edge, so the label stays inside the plot.
                let lx = if x(row) > 0.7 * x1 {
                    x(row) - 0.16 * x1
                } else {
                    x(row)
                };
                chart.draw_series(std::iter::once(Text::new(
                    format!("{} labels", row.n_labels),
                    (lx, s.mean - 0.035),
                    ("sans-serif", 15),
                )))?;
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        Ok(())
    })
}
