//! The end-of-run summary `murmur run` prints: one row per step (requests, rate, errors,
//! p50/p90/p99/max), the total (its latency only when the steps are alike), users,
//! thresholds, throttles, coordinators and the result.

use std::fmt::Write as _;

use crate::report::{Outcome, Report, StepSummary};

/// Formats a count compactly: `950`, `12.3k`, `4.56M`.
pub fn count(n: u64) -> String {
    match n {
        0..=9_999 => n.to_string(),
        10_000..=999_999 => format!("{:.1}k", n as f64 / 1e3),
        _ => format!("{:.2}M", n as f64 / 1e6),
    }
}

/// Formats milliseconds for people: `850µs`, `15.2ms`, `1.30s`.
pub fn ms(v: f64) -> String {
    if v <= 0.0 {
        "-".into()
    } else if v < 1.0 {
        format!("{:.0}µs", v * 1000.0)
    } else if v < 1000.0 {
        format!("{v:.1}ms")
    } else {
        format!("{:.2}s", v / 1000.0)
    }
}

/// One row of the table; `latency: false` leaves the latency columns out (the merged row
/// of unlike steps, whose percentiles mean nothing).
fn row(out: &mut String, s: &StepSummary, latency: bool) {
    let errors = if s.errors == 0 {
        "0".to_owned()
    } else {
        let kinds: Vec<String> = s
            .errors_by_kind
            .iter()
            .map(|(k, n)| format!("{k} {}", count(*n)))
            .collect();
        format!("{} ({})", count(s.errors), kinds.join(", "))
    };
    let l = &s.latency_ms;
    let [p50, p90, p99, max] = if latency {
        [l.p50, l.p90, l.p99, l.max].map(ms)
    } else {
        ["·"; 4].map(String::from)
    };
    let _ = writeln!(
        out,
        "  {:<20} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9}  {}",
        truncate(&s.name, 20),
        count(s.requests),
        format!("{:.1}/s", s.rate),
        p50,
        p90,
        p99,
        max,
        errors
    );
    if let Some(c) = s.corrected_latency_ms.as_ref().filter(|_| latency) {
        let _ = writeln!(
            out,
            "  {:<20} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9}  (from intended start: coordinated-omission corrected)",
            "",
            "",
            "",
            ms(c.p50),
            ms(c.p90),
            ms(c.p99),
            ms(c.max)
        );
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

/// The summary table of a finished test.
pub fn summary_table(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{} ({}) ran {:.1}s, ended by {}",
        r.name, r.scenario, r.duration_s, r.ended_by
    );
    let u = &r.users;
    let _ = writeln!(
        out,
        "users: {} desired, {} at peak, {} started, {} finished, {} failed; {} iterations{}\n",
        u.desired,
        u.peak,
        u.started,
        u.finished,
        u.failed,
        count(u.iterations),
        if u.unmatched > 0 {
            format!("; {} messages kept unmatched", count(u.unmatched))
        } else {
            String::new()
        }
    );
    let it = &r.iterations;
    if it.count > 0 {
        let d = &it.duration_ms;
        let _ = writeln!(
            out,
            "iteration (one run of the scenario by one user): p50 {}, p90 {}, p99 {}, max {}\n",
            ms(d.p50),
            ms(d.p90),
            ms(d.p99),
            ms(d.max)
        );
    }
    if u.dropped > 0 || r.scenario_is_open() {
        let _ = writeln!(
            out,
            "arrivals: {} started, {} dropped (maxConcurrent users were running)\n",
            u.started, u.dropped
        );
    }
    let _ = writeln!(
        out,
        "  {:<20} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9}  errors",
        "step", "requests", "rate", "p50", "p90", "p99", "max"
    );
    for s in &r.steps {
        row(&mut out, s, true);
    }
    if r.steps.len() != 1 {
        row(&mut out, &r.total, r.steps_alike());
        if !r.steps_alike() {
            let _ = writeln!(
                out,
                "  (no merged latency: these steps time different things; see each step's)"
            );
        }
    }
    if let Some(c) = &r.baseline {
        out.push_str(&crate::report::baseline::comparison_table(c));
    }
    if !r.thresholds.is_empty() {
        let _ = writeln!(out, "\nthresholds:");
        for t in &r.thresholds {
            let _ = writeln!(
                out,
                "  {} {}{} {} (observed {})",
                match (t.passed, &t.skipped) {
                    (_, Some(_)) => "–",
                    (true, None) => "✓",
                    (false, None) => "✗",
                },
                t.metric,
                t.step
                    .as_deref()
                    .map(|s| format!(" of {s}"))
                    .unwrap_or_default(),
                t.bound,
                t.observed
            );
        }
    }
    for t in &r.throttles {
        let _ = writeln!(
            out,
            "throttle {}: rate {}, {} executed of {} requested",
            t.name,
            t.rate,
            count(t.executed),
            count(t.requested)
        );
    }
    for c in &r.coordinators {
        let _ = writeln!(
            out,
            "coordinator {}: {} groups, {} timeouts",
            c.name, c.groups, c.timeouts
        );
    }
    let _ = writeln!(
        out,
        "\nresult: {}",
        match r.result {
            Outcome::Passed => "PASSED",
            Outcome::Failed => "FAILED",
        }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(count(950), "950");
        assert_eq!(count(12_345), "12.3k");
        assert_eq!(count(4_560_000), "4.56M");
        assert_eq!(ms(0.85), "850µs");
        assert_eq!(ms(15.23), "15.2ms");
        assert_eq!(ms(1300.0), "1.30s");
        assert_eq!(ms(0.0), "-");
        assert_eq!(truncate("a-very-long-step-name-indeed", 10), "a-very-lo…");
    }
}
