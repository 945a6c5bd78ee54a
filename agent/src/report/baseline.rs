//! Run over run: a report beside an earlier one (its baseline, a `report.json` or a stored
//! report). Each step's rate, p50/p99 and errors beside the baseline's with the change in
//! percent, in the report (`baseline`), the summary and the HTML page; and the relative
//! thresholds (`maxIncrease`, `maxDecrease`) judged against it.
//!
//! One place for all callers: `murmur run --baseline` and the master (`--baseline`, which
//! the operator points at `spec.baseline`) hand a [`Baseline`] to the report builder;
//! `murmur report --baseline` applies one to a finished report with [`rebase`].

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::report::html::escape;
use crate::report::io::{read_report, ReportError};
use crate::report::summary::{count, ms};
use crate::report::{Outcome, Report, StepSummary};

/// An earlier run's report, and where it came from (for people: a file, a ConfigMap).
#[derive(Debug, Clone)]
pub struct Baseline {
    /// Where it was read from.
    pub source: String,
    /// The report.
    pub report: Report,
}

impl Baseline {
    /// Reads a baseline from a `report.json` (or a stored report's `report.json.gz`).
    pub fn read(path: &Path) -> Result<Baseline, ReportError> {
        Ok(Baseline {
            source: path.display().to_string(),
            report: read_report(path)?,
        })
    }

    /// [`Baseline::read`], but a file that does not exist is no baseline: what the master
    /// does with the operator's mount of `spec.baseline`, which is optional so that a
    /// baseline not stored yet skips the relative thresholds rather than blocking the
    /// test's pods.
    pub fn read_if_present(path: &Path) -> Result<Option<Baseline>, ReportError> {
        match Baseline::read(path) {
            Err(ReportError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(None)
            }
            other => other.map(Some),
        }
    }
}

/// A report's steps beside its baseline's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Comparison {
    /// Where the baseline was read from.
    pub source: String,
    /// The baseline test's name.
    pub name: String,
    /// When the baseline's users started, Unix milliseconds.
    pub started_at_ms: u64,
    /// Each step of the report (and `total`, where the steps are alike), beside the
    /// baseline's step of the same name.
    pub steps: Vec<StepComparison>,
}

/// One step now and in the baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepComparison {
    /// The step's name.
    pub name: String,
    /// Whether the baseline has this step at all.
    pub in_baseline: bool,
    /// Mean rate, per second.
    pub rate: Change,
    /// Median latency, milliseconds.
    pub p50_ms: Change,
    /// 99th percentile, milliseconds.
    pub p99_ms: Change,
    /// Failed actions.
    pub errors: Change,
}

/// A figure now and in the baseline.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    /// Now.
    pub now: f64,
    /// In the baseline.
    pub before: f64,
    /// `(now - before) / before`, in percent; absent when the baseline's is zero and the
    /// figure is not (a growth without bound), or when the baseline lacks the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
}

/// The change from `before` to `now` in percent: 0 for two zeros, `None` from zero to
/// anything else (no percentage says it).
pub fn percent_change(now: f64, before: f64) -> Option<f64> {
    if before == 0.0 {
        return (now == 0.0).then_some(0.0);
    }
    Some((now - before) / before.abs() * 100.0)
}

/// A change as people read it: `+12.3%`, `-4.0%`, `±0%`, `new` (from zero).
pub fn percent_text(p: Option<f64>) -> String {
    match p {
        None => "new".into(),
        Some(p) if p.abs() < 0.05 => "±0%".into(),
        Some(p) if p.abs() >= 1000.0 => format!("{p:+.0}%"),
        Some(p) => format!("{p:+.1}%"),
    }
}

fn change(now: f64, before: Option<f64>) -> Change {
    Change {
        now,
        before: before.unwrap_or(0.0),
        percent: before.and_then(|b| percent_change(now, b)),
    }
}

fn step_comparison(now: &StepSummary, before: Option<&StepSummary>) -> StepComparison {
    let f = |g: fn(&StepSummary) -> f64| change(g(now), before.map(g));
    StepComparison {
        name: now.name.clone(),
        in_baseline: before.is_some(),
        rate: f(|s| s.rate),
        p50_ms: f(|s| s.latency_ms.p50),
        p99_ms: f(|s| s.latency_ms.p99),
        errors: f(|s| s.errors as f64),
    }
}

/// Each step of `report` beside the baseline's step of the same name; the `total` row
/// too where the steps are alike (elsewhere its percentiles mean nothing).
pub fn compare(report: &Report, baseline: &Baseline) -> Comparison {
    let b = &baseline.report;
    let mut steps: Vec<StepComparison> = report
        .steps
        .iter()
        .map(|s| step_comparison(s, b.steps.iter().find(|o| o.name == s.name)))
        .collect();
    if report.steps.len() > 1 && report.steps_alike() && b.steps_alike() {
        steps.push(step_comparison(&report.total, Some(&b.total)));
    }
    Comparison {
        source: baseline.source.clone(),
        name: b.name.clone(),
        started_at_ms: b.started_at_ms,
        steps,
    }
}

/// Applies a baseline to a finished report: the comparison, and its relative thresholds
/// judged again against this baseline (their bounds are kept in the report). A relative
/// threshold that fails now fails the report; one that passes now no longer does.
pub fn rebase(report: &mut Report, baseline: &Baseline) {
    let failed_otherwise =
        report.result == Outcome::Failed && report.thresholds.iter().all(|t| t.passed);
    let relative = crate::thresholds::relative_of(report);
    let mut judged =
        crate::thresholds::evaluate_all(&relative, report, Some(&baseline.report)).into_iter();
    for t in report.thresholds.iter_mut() {
        if t.max_increase.is_some() || t.max_decrease.is_some() {
            if let Some(j) = judged.next() {
                *t = j;
            }
        }
    }
    report.baseline = Some(compare(report, baseline));
    report.result = if failed_otherwise || report.thresholds.iter().any(|t| !t.passed) {
        Outcome::Failed
    } else {
        Outcome::Passed
    };
}

/// The comparison as a test's status carries it: changes in percent only.
pub fn status_of(c: &Comparison) -> murmuration_crds::thresholds::BaselineStatus {
    murmuration_crds::thresholds::BaselineStatus {
        test: c.name.clone(),
        steps: c
            .steps
            .iter()
            .map(|s| {
                let p = |ch: &Change| {
                    if s.in_baseline {
                        percent_text(ch.percent)
                    } else {
                        "not in baseline".into()
                    }
                };
                murmuration_crds::thresholds::StepChange {
                    name: s.name.clone(),
                    rate: p(&s.rate),
                    p50: p(&s.p50_ms),
                    p99: p(&s.p99_ms),
                    errors: p(&s.errors),
                }
            })
            .collect(),
    }
}

fn when(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

/// A figure beside its baseline's: `15.2ms (was 13.1ms, +16.0%)`.
fn beside(c: &Change, fmt: fn(f64) -> String, in_baseline: bool) -> String {
    if !in_baseline {
        return format!("{} (not in baseline)", fmt(c.now));
    }
    format!(
        "{} (was {}, {})",
        fmt(c.now),
        fmt(c.before),
        percent_text(c.percent)
    )
}

fn rate(v: f64) -> String {
    format!("{v:.1}/s")
}

fn errors(v: f64) -> String {
    count(v as u64)
}

/// The comparison as the summary prints it, under the steps table.
pub fn comparison_table(c: &Comparison) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nagainst baseline {} (started {}, from {}):",
        c.name,
        when(c.started_at_ms),
        c.source
    );
    for s in &c.steps {
        let _ = writeln!(
            out,
            "  {:<20} rate {}  p50 {}  p99 {}  errors {}",
            s.name,
            beside(&s.rate, rate, s.in_baseline),
            beside(&s.p50_ms, ms, s.in_baseline),
            beside(&s.p99_ms, ms, s.in_baseline),
            beside(&s.errors, errors, s.in_baseline),
        );
    }
    out
}

/// The comparison as the HTML page shows it: one row per step, each figure now, then,
/// and the change.
pub fn comparison_html(c: &Comparison) -> String {
    let mut h = format!(
        "<h2>Against the baseline</h2><p class=\"note\">Baseline: {} (started {}, from {}). Each cell: now · baseline · change.</p><table><tr><th>step</th><th>rate</th><th>p50</th><th>p99</th><th>errors</th></tr>",
        escape(&c.name),
        when(c.started_at_ms),
        escape(&c.source)
    );
    let cell = |ch: &Change, fmt: fn(f64) -> String, in_baseline: bool, higher_is_worse: bool| {
        if !in_baseline {
            return format!("<td>{} · <i>not in baseline</i></td>", fmt(ch.now));
        }
        // Colour only changes that matter to people: worse in red, better in green.
        let class = match ch.percent {
            Some(p) if p.abs() < 5.0 => "",
            Some(p) if (p > 0.0) == higher_is_worse => "ko",
            None if higher_is_worse => "ko",
            _ => "ok",
        };
        format!(
            "<td>{} · {} · <span class=\"{class}\">{}</span></td>",
            fmt(ch.now),
            fmt(ch.before),
            percent_text(ch.percent)
        )
    };
    for s in &c.steps {
        let _ = write!(
            h,
            "<tr><td>{}</td>{}{}{}{}</tr>",
            escape(&s.name),
            cell(&s.rate, rate, s.in_baseline, false),
            cell(&s.p50_ms, ms, s.in_baseline, true),
            cell(&s.p99_ms, ms, s.in_baseline, true),
            cell(&s.errors, errors, s.in_baseline, true),
        );
    }
    h.push_str("</table>");
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::thresholds::Thresholds;
    use murmuration_crds::loadtest::Threshold;

    #[test]
    fn percent_changes_read_well() {
        assert_eq!(percent_change(30.0, 20.0), Some(50.0));
        assert_eq!(percent_change(10.0, 20.0), Some(-50.0));
        assert_eq!(percent_change(0.0, 0.0), Some(0.0));
        assert_eq!(percent_change(5.0, 0.0), None);
        assert_eq!(percent_text(Some(50.0)), "+50.0%");
        assert_eq!(percent_text(Some(-4.04)), "-4.0%");
        assert_eq!(percent_text(Some(0.01)), "±0%");
        assert_eq!(percent_text(Some(12_345.6)), "+12346%");
        assert_eq!(percent_text(None), "new");
    }

    /// A report of one http step `buy` whose p99 is `p99` ms and rate `rate`.
    fn report(p99: f64, rate: f64, errors: u64) -> Report {
        let step = |name: &str| {
            serde_json::json!({"name": name, "requests": 100, "errors": errors, "errorsByKind": {}, "rate": rate,
                "latencyMs": {"min": 1.0, "mean": 1.0, "p50": p99 / 2.0, "p90": p99, "p95": p99, "p99": p99, "p999": p99, "max": p99},
                "histogram": ""})
        };
        serde_json::from_value(serde_json::json!({
            "format": 1, "name": "shop", "scenario": "http", "startedAtMs": 1_700_000_000_000u64,
            "durationS": 10.0, "result": "Passed", "endedBy": "duration",
            "users": {"desired": 1, "peak": 1, "started": 1, "finished": 1, "failed": 0, "iterations": 100},
            "total": step("total"), "steps": [step("buy")], "thresholds": [], "throttles": [],
            "coordinators": [], "series": [], "bucketS": 1
        }))
        .unwrap()
    }

    fn relative(metric: &str, inc: Option<&str>, dec: Option<&str>) -> Thresholds {
        Thresholds::compile(&[Threshold {
            metric: metric.into(),
            step: Some("buy".into()),
            max_increase: inc.map(Into::into),
            max_decrease: dec.map(Into::into),
            ..Threshold::default()
        }])
        .unwrap()
    }

    fn base(r: Report) -> Baseline {
        Baseline {
            source: "old/report.json".into(),
            report: r,
        }
    }

    #[test]
    fn relative_thresholds_judge_the_change_and_skip_without_a_baseline() {
        let now = report(40.0, 100.0, 0);
        let t = relative("latency.p99", Some("10%"), None);
        // Doubled: fails.
        let o = crate::thresholds::evaluate_all(&t, &now, Some(&report(20.0, 100.0, 0)));
        assert!(!o[0].passed && o[0].skipped.is_none(), "{o:?}");
        assert_eq!(o[0].observed, "+100.0% (40.000ms vs 20.000ms)");
        assert_eq!(o[0].bound, "≤ +10% vs baseline");
        // Within 10%: passes; exactly at the bound too.
        let o = crate::thresholds::evaluate_all(&t, &now, Some(&report(37.0, 100.0, 0)));
        assert!(o[0].passed, "{o:?}");
        let o = crate::thresholds::evaluate_all(
            &relative("latency.p99", Some("100%"), None),
            &now,
            Some(&report(20.0, 100.0, 0)),
        );
        assert!(o[0].passed, "{o:?}");
        // No baseline: skipped, and a skipped threshold is not a failed one.
        let o = crate::thresholds::evaluate_all(&t, &now, None);
        assert!(o[0].passed);
        assert_eq!(o[0].skipped.as_deref(), Some("no baseline"));
        // A rate that fell 20% against a 5% allowance fails; errors from none fail.
        let o = crate::thresholds::evaluate_all(
            &relative("requests.rate", None, Some("5%")),
            &report(40.0, 80.0, 0),
            Some(&report(40.0, 100.0, 0)),
        );
        assert!(!o[0].passed, "{o:?}");
        let o = crate::thresholds::evaluate_all(
            &relative("errors.count", Some("50%"), None),
            &report(40.0, 100.0, 3),
            Some(&report(40.0, 100.0, 0)),
        );
        assert!(!o[0].passed && o[0].observed.starts_with("new"), "{o:?}");
    }

    #[test]
    fn rebase_judges_again_and_sets_the_result() {
        let mut now = report(40.0, 100.0, 0);
        now.thresholds = crate::thresholds::evaluate_all(
            &relative("latency.p99", Some("10%"), None),
            &now,
            None,
        );
        assert_eq!(now.thresholds[0].skipped.as_deref(), Some("no baseline"));
        let mut failing = now.clone();
        rebase(&mut failing, &base(report(20.0, 100.0, 0)));
        assert_eq!(failing.result, Outcome::Failed);
        assert!(!failing.thresholds[0].passed);
        // The same report against a baseline it holds to passes again.
        rebase(&mut failing, &base(report(39.0, 100.0, 0)));
        assert_eq!(failing.result, Outcome::Passed, "{:?}", failing.thresholds);
        let c = failing.baseline.as_ref().unwrap();
        assert_eq!(c.steps.len(), 1, "one step: no total row");
        assert_eq!(c.steps[0].p99_ms.before, 39.0);
        let table = comparison_table(c);
        assert!(table.contains("p99 40.0ms (was 39.0ms, +2.6%)"), "{table}");
        let html = comparison_html(c);
        assert!(
            html.contains("<td>buy</td>") && html.contains("+2.6%"),
            "{html}"
        );
        // A run that failed for another reason stays failed.
        let mut other = now.clone();
        other.result = Outcome::Failed;
        rebase(&mut other, &base(report(40.0, 100.0, 0)));
        assert_eq!(other.result, Outcome::Failed);
    }

    #[test]
    fn a_step_missing_from_the_baseline_is_said_so() {
        let now = report(40.0, 100.0, 0);
        let mut old = report(20.0, 100.0, 0);
        old.steps[0].name = "checkout".into();
        let c = compare(&now, &base(old.clone()));
        assert!(!c.steps[0].in_baseline && c.steps[0].p99_ms.percent.is_none());
        assert!(comparison_table(&c).contains("not in baseline"));
        let o = crate::thresholds::evaluate_all(
            &relative("latency.p99", Some("10%"), None),
            &now,
            Some(&old),
        );
        assert!(o[0].passed);
        assert_eq!(
            o[0].skipped.as_deref(),
            Some("the baseline has no data for buy")
        );
    }
}
