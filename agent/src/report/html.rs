//! `report.html`: one self-contained page (no scripts, fonts or styles from elsewhere; it
//! opens offline) with the result, thresholds, per-step figures and plots over time drawn
//! as inline SVG. Latency headlines and plots are per step; merged percentiles appear only
//! where the steps are alike ([`Report::steps_alike`]).

use std::fmt::Write as _;

use crate::report::summary::{count, ms};
use crate::report::{Outcome, Report, SeriesPoint, StepSummary};

/// Escapes text for HTML (names come from users' manifests).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = r#"
body{font:14px/1.45 -apple-system,"Segoe UI",Helvetica,Arial,sans-serif;color:#1d2330;margin:0;background:#f5f6f8}
main{max-width:1200px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 10px}
.meta{color:#5a6372}.badge{display:inline-block;padding:2px 10px;border-radius:12px;font-weight:600;color:#fff;margin-left:8px;font-size:13px}
.pass{background:#1f9d55}.fail{background:#d64545}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin-top:16px}.card{background:#fff;border-radius:8px;padding:12px 16px;box-shadow:0 1px 2px #0001;min-width:130px}
.card b{display:block;font-size:20px}.card span{color:#5a6372;font-size:12px}
table{border-collapse:collapse;background:#fff;border-radius:8px;overflow:hidden;box-shadow:0 1px 2px #0001;width:100%}
th,td{padding:7px 10px;text-align:right;border-bottom:1px solid #eceef2;white-space:nowrap}th{background:#fafbfc;font-weight:600;color:#3b4350}
td:first-child,th:first-child{text-align:left}.ok{color:#1f9d55;font-weight:600}.ko{color:#d64545;font-weight:600}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(540px,1fr));gap:16px}.plot{background:#fff;border-radius:8px;padding:10px;box-shadow:0 1px 2px #0001}
.plot h3{font-size:13px;margin:0 0 4px;color:#3b4350}.note{color:#5a6372;font-size:12px}
.tabs input{position:absolute;opacity:0}.tabs label{display:inline-block;padding:2px 10px;margin:0 4px 4px 0;border:1px solid #c9ced6;border-radius:12px;font-size:12px;cursor:pointer;color:#3b4350}
.tabs input:checked+label{background:#2b6cb0;border-color:#2b6cb0;color:#fff}.tabs input:focus-visible+label{outline:2px solid #2b6cb0}.tabs .tab{display:none}
"#;

const COLORS: [&str; 6] = [
    "#2b6cb0", "#d69e2e", "#d64545", "#6b46c1", "#1f9d55", "#718096",
];

/// One line of a plot.
struct Line<'a> {
    name: &'a str,
    values: Vec<(f64, f64)>,
}

/// Keeps at most `n` points of a line, preserving peaks (max of each bucket).
fn thin(values: Vec<(f64, f64)>, n: usize) -> Vec<(f64, f64)> {
    if values.len() <= n {
        return values;
    }
    let chunk = values.len().div_ceil(n);
    values
        .chunks(chunk)
        .map(|c| {
            let x = c[c.len() - 1].0;
            let y = c.iter().map(|p| p.1).fold(f64::MIN, f64::max);
            (x, y)
        })
        .collect()
}

/// A nice step for about `n` ticks over `0..max`.
pub(crate) fn nice_step(max: f64, n: f64) -> f64 {
    let raw = (max / n).max(1e-12);
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let nice = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

pub(crate) fn fmt_tick(v: f64, unit: &str) -> String {
    match unit {
        "ms" => ms(v).replace('-', "0"),
        _ if v >= 1e6 => format!("{:.1}M", v / 1e6),
        _ if v >= 1e3 => format!("{:.1}k", v / 1e3),
        _ if v.fract() == 0.0 => format!("{v:.0}"),
        _ => format!("{v:.2}"),
    }
}

/// An SVG line chart in a plot box with its title.
fn chart(title: &str, unit: &str, lines: &[Line]) -> String {
    format!(
        "<div class=\"plot\"><h3>{}</h3>{}</div>",
        escape(title),
        chart_svg(title, unit, lines, 0.0)
    )
}

/// An SVG line chart with axes, ticks, units and a legend; its time axis spans at least
/// `span` seconds (plots of one test share one time axis, even a step seen only at first).
fn chart_svg(title: &str, unit: &str, lines: &[Line], span: f64) -> String {
    // The right margin leaves room for half of the last time label, centred on the
    // axis' end ("60s" was cut to "6" when the margin was narrower than that).
    let (w, h, left, right, top, bottom) = (560.0, 240.0, 56.0, 26.0, 12.0, 36.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    let xmax = lines
        .iter()
        .flat_map(|l| l.values.iter().map(|p| p.0))
        .fold(span, f64::max)
        .max(1.0);
    let xstep = nice_step(xmax, 6.0);
    let ymax_data = lines
        .iter()
        .flat_map(|l| l.values.iter().map(|p| p.1))
        .fold(0.0f64, f64::max);
    let ystep = nice_step(if ymax_data > 0.0 { ymax_data } else { 1.0 }, 4.0);
    let ymax = (ymax_data / ystep).ceil().max(1.0) * ystep;
    let x = |v: f64| left + v / xmax * pw;
    let y = |v: f64| top + ph - v / ymax * ph;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg viewBox="0 0 {w} {h}" width="100%" role="img" aria-label="{}" font-size="11" font-family="sans-serif">"#,
        escape(title)
    );
    // Grid and y ticks.
    let mut v = 0.0;
    while v <= ymax + ystep / 2.0 {
        let _ = write!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{y0:.1}" y2="{y0:.1}" stroke="#eceef2"/><text x="{}" y="{:.1}" text-anchor="end" fill="#5a6372">{}</text>"##,
            w - right,
            left - 6.0,
            y(v) + 4.0,
            fmt_tick(v, unit),
            y0 = y(v)
        );
        v += ystep;
    }
    // X ticks (seconds).
    let mut t = 0.0;
    // Only ticks within the axis: a tick past its end (60s on an axis ending at 59.8 s)
    // was drawn beyond the plot and cut ("6").
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
        r##"<line x1="{left}" x2="{left}" y1="{top}" y2="{}" stroke="#c9ced6"/><line x1="{left}" x2="{}" y1="{}" y2="{}" stroke="#c9ced6"/><text x="{}" y="{}" text-anchor="middle" fill="#5a6372">time since start</text>"##,
        top + ph,
        w - right,
        top + ph,
        top + ph,
        left + pw / 2.0,
        h - 4.0
    );
    for (i, line) in lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts = thin(line.values.clone(), 600);
        if pts.len() == 1 {
            let _ = write!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                x(pts[0].0),
                y(pts[0].1)
            );
        } else if !pts.is_empty() {
            let d: Vec<String> = pts
                .iter()
                .map(|(a, b)| format!("{:.1},{:.1}", x(*a), y(*b)))
                .collect();
            let _ = write!(
                s,
                r#"<polyline fill="none" stroke="{color}" stroke-width="1.6" points="{}"/>"#,
                d.join(" ")
            );
        }
        // Legend.
        let lx = left + 8.0 + i as f64 * 90.0;
        let _ = write!(
            s,
            r##"<rect x="{lx}" y="{}" width="10" height="10" fill="{color}"/><text x="{}" y="{}" fill="#3b4350">{}</text>"##,
            top + 2.0,
            lx + 14.0,
            top + 11.0,
            escape(line.name)
        );
    }
    s.push_str("</svg>");
    s
}

fn series(points: &[SeriesPoint], f: impl Fn(&SeriesPoint) -> f64) -> Vec<(f64, f64)> {
    points.iter().map(|p| (p.t, f(p))).collect()
}

/// A row of the steps table; `latency: false` leaves the percentiles out (the merged row
/// of unlike steps).
fn step_row(s: &StepSummary, latency: bool) -> String {
    let l = &s.latency_ms;
    let lat = |v: f64| if latency { ms(v) } else { "·".into() };
    let kinds: Vec<String> = s
        .errors_by_kind
        .iter()
        .map(|(k, n)| format!("{} {}", escape(k), count(*n)))
        .collect();
    let mut row = format!(
        "<tr><td>{}</td><td>{}</td><td>{:.1}/s</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        escape(&s.name),
        count(s.requests),
        s.rate,
        if s.errors == 0 { "0".into() } else { format!("<span class=\"ko\">{}</span>", count(s.errors)) },
        if kinds.is_empty() { "".into() } else { kinds.join(", ") },
        lat(l.p50),
        lat(l.p90),
        lat(l.p95),
        lat(l.p99),
        lat(l.p999),
        lat(l.max)
    );
    if let Some(c) = s.corrected_latency_ms.as_ref().filter(|_| latency) {
        let _ = write!(
            row,
            "<tr class=\"note\"><td>&nbsp;&nbsp;from intended start (coordinated-omission corrected)</td><td></td><td></td><td></td><td></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            ms(c.p50),
            ms(c.p90),
            ms(c.p95),
            ms(c.p99),
            ms(c.p999),
            ms(c.max)
        );
    }
    row
}

/// The merged latency percentiles over time.
fn merged_latency(points: &[SeriesPoint]) -> Vec<Line<'static>> {
    vec![
        Line {
            name: "p50",
            values: series(points, |p| p.p50),
        },
        Line {
            name: "p90",
            values: series(points, |p| p.p90),
        },
        Line {
            name: "p99",
            values: series(points, |p| p.p99),
        },
        Line {
            name: "max",
            values: series(points, |p| p.max),
        },
    ]
}

/// Step `i`'s p50 and p99 over time, at the seconds it had requests.
fn step_latency(points: &[SeriesPoint], i: usize) -> Vec<Line<'static>> {
    let at = |v: &Vec<f64>, p: &SeriesPoint| {
        (p.step_requests.get(i).copied().unwrap_or(0) > 0)
            .then(|| (p.t, v.get(i).copied().unwrap_or(0.0)))
    };
    vec![
        Line {
            name: "p50",
            values: points.iter().filter_map(|p| at(&p.step_p50, p)).collect(),
        },
        Line {
            name: "p99",
            values: points.iter().filter_map(|p| at(&p.step_p99, p)).collect(),
        },
    ]
}

/// The latency plot: with one step, its percentiles; with several, one plot per step
/// behind a selector (radio buttons and CSS, no script, so that the page stays
/// self-contained), led by the merged percentiles when the steps are alike.
fn latency_plots(r: &Report) -> String {
    let s = &r.series;
    if r.steps.len() <= 1 {
        let title = match r.steps.first() {
            Some(st) => format!("Latency of {}", st.name),
            None => "Latency percentiles".into(),
        };
        return chart(&title, "ms", &merged_latency(s));
    }
    let span = s.last().map(|p| p.t).unwrap_or(0.0);
    let mut tabs: Vec<(String, Vec<Line>)> = Vec::new();
    if r.steps_alike() {
        tabs.push(("all steps".into(), merged_latency(s)));
    }
    for (i, st) in r.steps.iter().enumerate() {
        tabs.push((st.name.clone(), step_latency(s, i)));
    }
    let mut out = String::from("<div class=\"plot tabs\"><h3>Latency by step</h3><style>");
    for i in 0..tabs.len() {
        let _ = write!(
            out,
            "#lat{i}:checked~div.tab:nth-of-type({}){{display:block}}",
            i + 1
        );
    }
    out.push_str("</style>");
    for (i, (name, _)) in tabs.iter().enumerate() {
        let _ = write!(
            out,
            "<input type=\"radio\" name=\"latency\" id=\"lat{i}\"{}><label for=\"lat{i}\">{}</label>",
            if i == 0 { " checked" } else { "" },
            escape(name)
        );
    }
    for (name, lines) in &tabs {
        let _ = write!(
            out,
            "<div class=\"tab\">{}</div>",
            chart_svg(&format!("Latency of {name}"), "ms", lines, span)
        );
    }
    out.push_str("</div>");
    out
}

/// Renders the whole report as one HTML page.
pub fn render_html(r: &Report) -> String {
    let mut h = String::new();
    let passed = r.result == Outcome::Passed;
    let started = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(r.started_at_ms),
    );
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>{} — Murmuration report</title><style>{STYLE}</style></head><body><main>",
        escape(&r.name)
    );
    let _ = write!(
        h,
        "<h1>{}<span class=\"badge {}\">{}</span></h1><div class=\"meta\">scenario {} · started {} · ran {:.1}s · ended by {}</div>",
        escape(&r.name),
        if passed { "pass" } else { "fail" },
        if passed { "PASSED" } else { "FAILED" },
        escape(&r.scenario),
        started,
        r.duration_s,
        escape(&r.ended_by)
    );
    let t = &r.total;
    let error_ratio = if t.requests > 0 {
        t.errors as f64 / t.requests as f64 * 100.0
    } else {
        0.0
    };
    let _ = write!(
        h,
        "<div class=\"cards\"><div class=\"card\"><b>{}</b><span>requests</span></div><div class=\"card\"><b>{:.1}/s</b><span>mean rate</span></div><div class=\"card\"><b>{:.2}%</b><span>errors</span></div>",
        count(t.requests),
        t.rate,
        error_ratio,
    );
    // Latency headlines: merged only where the steps are alike, else one card per step.
    if r.steps_alike() {
        let _ = write!(
            h,
            "<div class=\"card\"><b>{}</b><span>p50</span></div><div class=\"card\"><b>{}</b><span>p99</span></div>",
            ms(t.latency_ms.p50),
            ms(t.latency_ms.p99),
        );
    }
    let _ = write!(
        h,
        "<div class=\"card\"><b>{}</b><span>users at peak</span></div><div class=\"card\"><b>{}</b><span>iterations</span></div></div>",
        r.users.peak,
        count(r.users.iterations)
    );
    let it = &r.iterations;
    if it.count > 0 {
        let _ = write!(
            h,
            "<div class=\"cards\"><div class=\"card\"><b>{} · {}</b><span>p50 · p99 of an iteration (one run of the scenario by one user)</span></div></div>",
            ms(it.duration_ms.p50),
            ms(it.duration_ms.p99),
        );
    }
    if !r.steps_alike() {
        h.push_str("<div class=\"cards\">");
        for st in &r.steps {
            let _ = write!(
                h,
                "<div class=\"card\"><b>{} · {}</b><span>p50 · p99 of {}</span></div>",
                ms(st.latency_ms.p50),
                ms(st.latency_ms.p99),
                escape(&st.name)
            );
        }
        h.push_str("</div><p class=\"note\">Latency per step only: these steps time different things (a connect, a send, a peer&#39;s reply), so merged percentiles would mean nothing.</p>");
    }
    if !r.thresholds.is_empty() {
        h.push_str("<h2>Thresholds</h2><table><tr><th>metric</th><th>step</th><th>bound</th><th>observed</th><th>result</th></tr>");
        for th in &r.thresholds {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
                escape(&th.metric),
                escape(th.step.as_deref().unwrap_or("all")),
                escape(&th.bound),
                escape(&th.observed),
                if th.skipped.is_some() {
                    "note"
                } else if th.passed {
                    "ok"
                } else {
                    "ko"
                },
                match (th.passed, &th.skipped) {
                    (_, Some(why)) => format!("– skipped: {}", escape(why)),
                    (true, None) => "✓ passed".into(),
                    (false, None) => "✗ failed".into(),
                }
            );
        }
        h.push_str("</table>");
    }
    h.push_str("<h2>Steps</h2><table><tr><th>step</th><th>requests</th><th>rate</th><th>errors</th><th>by kind</th><th>p50</th><th>p90</th><th>p95</th><th>p99</th><th>p99.9</th><th>max</th></tr>");
    for s in &r.steps {
        h.push_str(&step_row(s, true));
    }
    if r.steps.len() != 1 {
        h.push_str(&step_row(&r.total, r.steps_alike()));
    }
    h.push_str("</table>");
    if let Some(c) = &r.baseline {
        h.push_str(&crate::report::baseline::comparison_html(c));
    }
    let u = &r.users;
    let _ = write!(
        h,
        "<p class=\"note\">Users: {} desired, {} at peak, {} started, {} finished, {} failed. Latency is measured from the start of each action, in HDR histograms (microsecond resolution).</p>",
        u.desired, u.peak, u.started, u.finished, u.failed
    );
    if !r.throttles.is_empty() || !r.coordinators.is_empty() {
        h.push_str("<h2>Throttles and coordinators</h2><table><tr><th>name</th><th>kind</th><th>figures</th></tr>");
        for t in &r.throttles {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>throttle</td><td>rate {} · {} executed of {} requested</td></tr>",
                escape(&t.name),
                t.rate,
                count(t.executed),
                count(t.requested)
            );
        }
        for c in &r.coordinators {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>coordinator</td><td>{} groups · {} timeouts</td></tr>",
                escape(&c.name),
                c.groups,
                c.timeouts
            );
        }
        h.push_str("</table>");
    }
    let _ = write!(
        h,
        "<h2>Over time</h2><p class=\"note\">One point per {} s.</p><div class=\"plots\">",
        r.bucket_s
    );
    let s = &r.series;
    let planned: Vec<(f64, f64)> = s.iter().filter_map(|p| Some((p.t, p.planned?))).collect();
    // An open model plans arrivals per second; a stage profile plans users.
    let open = r.scenario_is_open();
    if open {
        h.push_str(&chart(
            "Arrivals per second: planned and actual",
            "",
            &[
                Line {
                    name: "planned",
                    values: planned.clone(),
                },
                Line {
                    name: "started",
                    values: series(s, |p| p.started as f64),
                },
                Line {
                    name: "dropped",
                    values: series(s, |p| p.dropped as f64),
                },
            ],
        ));
    }
    let mut users = vec![Line {
        name: "users",
        values: series(s, |p| p.users as f64),
    }];
    if !open && !planned.is_empty() {
        users.push(Line {
            name: "planned",
            values: planned,
        });
    }
    h.push_str(&chart("Users running", "", &users));
    h.push_str(&chart(
        "Requests per second",
        "",
        &[Line {
            name: "requests/s",
            values: series(s, |p| p.rps),
        }],
    ));
    h.push_str(&chart(
        "Errors per second",
        "",
        &[Line {
            name: "errors/s",
            values: s
                .iter()
                .map(|p| {
                    (
                        p.t,
                        if p.requests > 0 {
                            p.errors as f64 * p.rps / p.requests as f64
                        } else {
                            0.0
                        },
                    )
                })
                .collect(),
        }],
    ));
    h.push_str(&latency_plots(r));
    h.push_str(&crate::report::scatter::iteration_scatter(
        "Iteration duration against its start (a sample of iterations)",
        &r.iterations.samples,
        s.last().map(|p| p.t).unwrap_or(0.0),
    ));
    for (agent, points) in &r.agents {
        h.push_str(&chart(
            &format!("Agent {agent}: requests per second"),
            "",
            &[Line {
                name: "requests/s",
                values: series(points, |p| p.rps),
            }],
        ));
    }
    h.push_str("</div><p class=\"note\">Made by Murmuration.</p></main></body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_names() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    fn report(scenario: &str, steps: &[(&str, f64)]) -> Report {
        let step = |name: &str, p99: f64| {
            serde_json::json!({"name": name, "requests": 10, "errors": 0, "errorsByKind": {}, "rate": 1.0,
                "latencyMs": {"min": 0.0, "mean": 0.0, "p50": p99 / 2.0, "p90": p99, "p95": p99, "p99": p99, "p999": p99, "max": p99},
                "histogram": ""})
        };
        let total = step("total", 19_020.0);
        let steps: Vec<_> = steps.iter().map(|(n, v)| step(n, *v)).collect();
        let n = steps.len();
        let series: Vec<_> = (1..=60)
            .map(|t| serde_json::json!({"t": t as f64, "users": 5, "requests": 10, "errors": 0, "rps": 10.0,
                "p50": 1.0, "p90": 2.0, "p99": 3.0, "max": 4.0,
                "stepRequests": vec![5; n], "stepErrors": vec![0; n],
                "stepP50": vec![0.5; n], "stepP99": vec![0.9; n]}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "format": 1, "name": "chat", "scenario": scenario, "startedAtMs": 1_700_000_000_000u64,
            "durationS": 60.0, "result": "Passed", "endedBy": "duration",
            "users": {"desired": 5, "peak": 5, "started": 5, "finished": 5, "failed": 0, "iterations": 5},
            "total": total, "steps": steps, "thresholds": [], "throttles": [], "coordinators": [],
            "series": series, "bucketS": 1
        }))
        .unwrap()
    }

    #[test]
    fn unlike_steps_get_latency_per_step_and_no_merged_headline() {
        let r = report(
            "messaging",
            &[("connect", 2.0), ("send", 0.05), ("reply", 21_040.0)],
        );
        assert!(!r.steps_alike());
        let h = render_html(&r);
        // No merged p99 card, one card per step, no merged latency in the total row.
        assert!(!h.contains("<span>p99</span>"), "a merged p99 headline");
        for step in ["connect", "send", "reply"] {
            assert!(
                h.contains(&format!("<span>p50 · p99 of {step}</span>")),
                "{step}"
            );
            assert!(h.contains(&format!(">{step}</label>")), "{step}");
        }
        assert!(!h.contains(">all steps</label>"));
        assert!(h.contains("<td>total</td><td>10</td><td>1.0/s</td><td>0</td><td></td><td>·</td>"));
        // The summary table says the same.
        let t = crate::report::summary::summary_table(&r);
        assert!(!t.contains("19.02s"), "{t}");
        assert!(t.contains("no merged latency"), "{t}");
    }

    #[test]
    fn alike_steps_keep_the_merged_headline_and_plot() {
        let r = report("http", &[("home", 2.0), ("buy", 5.0)]);
        assert!(r.steps_alike());
        let h = render_html(&r);
        assert!(h.contains("<span>p99</span>"));
        assert!(h.contains(">all steps</label>") && h.contains(">buy</label>"));
        assert!(!h.contains("p50 · p99 of"));
    }

    #[test]
    fn the_time_axis_ends_on_its_last_label() {
        let r = report("http", &[("home", 2.0)]);
        let h = render_html(&r);
        // 60 s: the last tick is 60s, inside the drawing (its centre plus half a label's
        // width within the 560-wide view box), and no tick beyond the axis.
        let at = h.find(">60s</text>").expect("a 60s label");
        let x: f64 = h[..at]
            .rsplit("x=\"")
            .next()
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(x + 15.0 <= 560.0, "the 60s label at {x} is cut");
        assert!(!h.contains(">70s</text>"));
        // An axis ending at 59.8 s has no 60s tick past its end.
        let mut r = r;
        r.series.last_mut().unwrap().t = 59.8;
        let h = render_html(&r);
        assert!(!h.contains(">60s</text>") && h.contains(">50s</text>"));
    }

    #[test]
    fn ticks_are_nice() {
        assert_eq!(nice_step(100.0, 4.0), 50.0);
        assert_eq!(nice_step(7.0, 4.0), 2.0);
        assert_eq!(
            thin((0..1000).map(|i| (i as f64, i as f64)).collect(), 100).len(),
            100
        );
    }
}
