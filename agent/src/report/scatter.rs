//! The plot amoc's Livebook draws: each sampled iteration's duration (one run of the
//! scenario by one user) against when it started, as an inline SVG scatter, on the same
//! axes' rules as the report's line charts.

use std::fmt::Write as _;

use crate::report::html::{escape, fmt_tick, nice_step};

/// The scatter of `points` (`[start s, duration ms]`) in a plot box, with its title; an
/// empty string when there is nothing to draw.
pub fn iteration_scatter(title: &str, points: &[[f64; 2]], span: f64) -> String {
    if points.is_empty() {
        return String::new();
    }
    let (w, h, left, right, top, bottom) = (560.0, 240.0, 56.0, 26.0, 12.0, 36.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    let xmax = points.iter().map(|p| p[0]).fold(span, f64::max).max(1.0);
    let xstep = nice_step(xmax, 6.0);
    let ymax_data = points.iter().map(|p| p[1]).fold(0.0f64, f64::max);
    let ystep = nice_step(if ymax_data > 0.0 { ymax_data } else { 1.0 }, 4.0);
    let ymax = (ymax_data / ystep).ceil().max(1.0) * ystep;
    let x = |v: f64| left + v / xmax * pw;
    let y = |v: f64| top + ph - v / ymax * ph;
    let mut s = format!(
        "<div class=\"plot\"><h3>{}</h3><svg viewBox=\"0 0 {w} {h}\" width=\"100%\" role=\"img\" aria-label=\"{}\" font-size=\"11\" font-family=\"sans-serif\">",
        escape(title),
        escape(title)
    );
    let mut v = 0.0;
    while v <= ymax + ystep / 2.0 {
        let _ = write!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{y0:.1}" y2="{y0:.1}" stroke="#eceef2"/><text x="{}" y="{:.1}" text-anchor="end" fill="#5a6372">{}</text>"##,
            w - right,
            left - 6.0,
            y(v) + 4.0,
            fmt_tick(v, "ms"),
            y0 = y(v)
        );
        v += ystep;
    }
    let mut t = 0.0;
    while t <= xmax * (1.0 + 1e-9) {
        let _ = write!(
            s,
            r##"<line x1="{x0:.1}" x2="{x0:.1}" y1="{}" y2="{}" stroke="#c9ced6"/><text x="{x0:.1}" y="{}" text-anchor="middle" fill="#5a6372">{}s</text>"##,
            top + ph,
            top + ph + 4.0,
            top + ph + 16.0,
            fmt_tick(t, ""),
            x0 = x(t)
        );
        t += xstep;
    }
    let _ = write!(
        s,
        r##"<line x1="{left}" x2="{left}" y1="{top}" y2="{}" stroke="#c9ced6"/><line x1="{left}" x2="{}" y1="{}" y2="{}" stroke="#c9ced6"/><text x="{}" y="{}" text-anchor="middle" fill="#5a6372">when the iteration started (time since start)</text>"##,
        top + ph,
        w - right,
        top + ph,
        top + ph,
        left + pw / 2.0,
        h - 4.0
    );
    for p in points {
        let _ = write!(
            s,
            r##"<circle cx="{:.1}" cy="{:.1}" r="2" fill="#2b6cb0" fill-opacity="0.55"/>"##,
            x(p[0]),
            y(p[1])
        );
    }
    s.push_str("</svg></div>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_dot_per_sample_and_nothing_without_samples() {
        assert_eq!(iteration_scatter("t", &[], 60.0), "");
        let pts: Vec<[f64; 2]> = (0..50).map(|i| [i as f64, 20.0 + i as f64]).collect();
        let svg = iteration_scatter("Iterations", &pts, 60.0);
        assert_eq!(svg.matches("<circle").count(), 50);
        assert!(svg.contains(">60s</text>"), "the axis spans the test");
        // Every dot inside the plot area.
        for c in svg.split("<circle cx=\"").skip(1) {
            let cx: f64 = c.split('"').next().unwrap().parse().unwrap();
            assert!((56.0..=534.0).contains(&cx), "{cx}");
        }
    }
}
