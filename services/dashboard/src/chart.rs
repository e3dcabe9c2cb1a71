//! Charts as SVG drawn on the server: a time-series line chart and a
//! stacked bar chart, both with labelled axes and units, sized by a
//! viewBox so they scale to the page. No script draws anything, so a page
//! is readable the moment it arrives and works with JavaScript off.

use maud::{Markup, html};

/// One line (or bar stack layer): name, CSS colour, points (unix s, value).
pub struct Series {
    pub name: String,
    pub color: &'static str,
    pub points: Vec<(i64, f64)>,
}

const W: f64 = 640.0;
const H: f64 = 180.0;
const LEFT: f64 = 40.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 22.0;

/// A "nice" axis maximum (1, 2 or 5 times a power of ten) at or above `v`.
pub fn nice_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * p >= v {
            return m * p;
        }
    }
    10.0 * p
}

/// A number for an axis or a table, with its unit.
pub fn fmt(v: f64, unit: &str) -> String {
    let n = if v.abs() >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    };
    if unit.is_empty() {
        n
    } else if unit == "%" {
        format!("{n}%")
    } else {
        format!("{n} {unit}")
    }
}

/// A compact axis number (the unit is in the chart's caption).
pub fn compact(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 10.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn hhmm(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%H:%M").to_string())
        .unwrap_or_default()
}

fn frame(t0: i64, t1: i64, ymax: f64) -> Markup {
    let (x0, x1, y0) = (LEFT, W - RIGHT, H - BOTTOM);
    html! {
        @for i in 0..=3 {
            @let y = TOP + (y0 - TOP) * f64::from(i) / 3.0;
            line.grid x1=(x0) x2=(x1) y1=(y) y2=(y) {}
            text.axis x=(x0 - 4.0) y=(y + 4.0) text-anchor="end" { (compact(ymax * f64::from(3 - i) / 3.0)) }
        }
        text.axis x=(x0) y=(H - 6.0) { (hhmm(t0)) " UTC" }
        text.axis x=(x1) y=(H - 6.0) text-anchor="end" { (hhmm(t1)) " UTC" }
    }
}

fn legend(series: &[Series]) -> Markup {
    html! {
        div.legend {
            @for s in series {
                span { i style=(format!("background:{}", s.color)) {} (s.name) }
            }
        }
    }
}

/// A line chart over [t0, t1] with `unit` on the y axis.
pub fn line(title: &str, unit: &str, t0: i64, t1: i64, series: &[Series]) -> Markup {
    let ymax = nice_max(
        series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .fold(0.0, f64::max),
    );
    let span = (t1 - t0).max(1) as f64;
    let x = |t: i64| LEFT + (W - LEFT - RIGHT) * ((t - t0) as f64 / span).clamp(0.0, 1.0);
    let y = |v: f64| H - BOTTOM - (H - BOTTOM - TOP) * (v / ymax).clamp(0.0, 1.0);
    let empty = series.iter().all(|s| s.points.is_empty());
    html! {
        figure.chart {
            figcaption { (title) " " span.muted { "(" (unit) ")" } }
            svg viewBox=(format!("0 0 {W} {H}")) role="img" aria-label=(title) {
                (frame(t0, t1, ymax))
                @for s in series {
                    @let pts = s.points.iter().map(|&(t, v)| format!("{:.1},{:.1}", x(t), y(v))).collect::<Vec<_>>().join(" ");
                    polyline points=(pts) fill="none" stroke=(s.color) stroke-width="2" {}
                    @if s.points.len() == 1 {
                        circle cx=(x(s.points[0].0)) cy=(y(s.points[0].1)) r="3" fill=(s.color) {}
                    }
                }
                @if empty {
                    text.axis x=(W / 2.0) y=(H / 2.0) text-anchor="middle" { "no data in this range" }
                }
            }
            (legend(series))
        }
    }
}

/// A stacked bar chart, one bar per time bucket of `bucket` seconds.
pub fn bars(title: &str, unit: &str, t0: i64, t1: i64, bucket: i64, series: &[Series]) -> Markup {
    let mut totals: std::collections::BTreeMap<i64, f64> = Default::default();
    for s in series {
        for &(t, v) in &s.points {
            *totals.entry(t).or_default() += v;
        }
    }
    let ymax = nice_max(totals.values().copied().fold(0.0, f64::max));
    let span = (t1 - t0).max(1) as f64;
    let plot_w = W - LEFT - RIGHT;
    let bw = (plot_w * bucket as f64 / span * 0.8).max(1.0);
    let x = |t: i64| LEFT + plot_w * ((t - t0) as f64 / span).clamp(0.0, 1.0);
    let h = |v: f64| (H - BOTTOM - TOP) * (v / ymax).clamp(0.0, 1.0);
    let mut base: std::collections::BTreeMap<i64, f64> = Default::default();
    let mut rects = Vec::new();
    for s in series {
        for &(t, v) in &s.points {
            let b = base.entry(t).or_default();
            let y = H - BOTTOM - h(*b + v);
            // The current bucket's bar stays inside the plot.
            rects.push((
                x(t).min(W - RIGHT - bw),
                y,
                h(v),
                s.color,
                format!("{}: {} at {} UTC", s.name, fmt(v, unit), hhmm(t)),
            ));
            *b += v;
        }
    }
    html! {
        figure.chart {
            figcaption { (title) " " span.muted { "(" (unit) ")" } }
            svg viewBox=(format!("0 0 {W} {H}")) role="img" aria-label=(title) {
                (frame(t0, t1, ymax))
                @for (rx, ry, rh, color, tip) in &rects {
                    rect x=(format!("{rx:.1}")) y=(format!("{ry:.1}")) width=(format!("{bw:.1}")) height=(format!("{rh:.1}")) fill=(color) { title { (tip) } }
                }
                @if rects.is_empty() {
                    text.axis x=(W / 2.0) y=(H / 2.0) text-anchor="middle" { "no errors in this range" }
                }
            }
            (legend(series))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_are_nice_and_numbers_carry_units() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(120.0), 200.0);
        assert_eq!(nice_max(0.03), 0.05);
        assert_eq!(fmt(12.345, "ms"), "12.3 ms");
        assert_eq!(fmt(3.0, "%"), "3%");
        assert_eq!(fmt(0.5, "req/s"), "0.50 req/s");
    }

    #[test]
    fn charts_are_svg_with_escaped_labels() {
        let s = Series {
            name: "<p99>".into(),
            color: "#f55",
            points: vec![(0, 1.0), (60, 2.0)],
        };
        let l = line("latency", "ms", 0, 60, &[s]).into_string();
        assert!(l.contains("<svg") && l.contains("polyline"), "{l}");
        assert!(l.contains("&lt;p99&gt;") && !l.contains("<p99>"), "{l}");
        let b = bars(
            "errors",
            "req",
            0,
            120,
            60,
            &[Series {
                name: "5xx".into(),
                color: "#f55",
                points: vec![(60, 3.0)],
            }],
        )
        .into_string();
        assert!(b.contains("<rect"), "{b}");
    }
}
