//! Thresholds evaluated, live and at the end, against the report's figures. They are
//! compiled (metric names, bounds, steps) by the model, [`murmuration_model::thresholds`].
//!
//! Semantics: a threshold holds when the observed value is within its bounds (`max`
//! inclusive, `min` inclusive). A threshold on a step that saw no request fails with the
//! observed value `no data`: a test that never exercised what it promised to check has not
//! passed it. `errors.ratio` of zero requests is 0 (nothing failed).
//!
//! A relative threshold (`maxIncrease`, `maxDecrease`) holds when the change in percent
//! from the baseline's value is within its bounds. Without a baseline, or when the
//! baseline has no data for its step, it is *skipped*: shown as such, neither passed nor
//! failed (the first run of a pipeline has nothing to compare with). A change from zero
//! to more than zero fails any `maxIncrease`.

pub use murmuration_model::thresholds::{Compiled, Metric, Quantile, ThresholdError, Thresholds};

use murmuration_crds::loadtest::Threshold;

use crate::report::{Report, StepSummary, ThresholdOutcome};

/// Evaluates every threshold against a report (live or final), the relative ones against
/// `baseline` (skipped without one).
pub fn evaluate_all(
    thresholds: &Thresholds,
    report: &Report,
    baseline: Option<&Report>,
) -> Vec<ThresholdOutcome> {
    thresholds
        .items
        .iter()
        .map(|c| evaluate(c, report, baseline))
        .collect()
}

/// A threshold's bounds as people read them (`≤ 500ms`, `≥ 1000`, `1 ≤ x ≤ 5`,
/// `≤ +10% vs baseline`): the `bound` of its outcome, and what `murmur wait` shows beside
/// a cluster test's status.
pub fn bound_text(t: &Threshold) -> String {
    match (&t.min, &t.max, &t.max_increase, &t.max_decrease) {
        (Some(a), Some(b), _, _) => format!("{a} ≤ x ≤ {b}"),
        (Some(a), None, _, _) => format!("≥ {a}"),
        (None, Some(b), _, _) => format!("≤ {b}"),
        (None, None, Some(i), Some(d)) => format!("-{d} ≤ change ≤ +{i} vs baseline"),
        (None, None, Some(i), None) => format!("≤ +{i} vs baseline"),
        (None, None, None, Some(d)) => format!("≥ -{d} vs baseline"),
        (None, None, None, None) => String::new(),
    }
}

/// The step a threshold looks at in `report` (all steps together when it names none).
fn step_of<'a>(c: &Compiled, report: &'a Report) -> Option<&'a StepSummary> {
    match &c.spec.step {
        Some(name) => report.steps.iter().find(|s| &s.name == name),
        None => Some(&report.total),
    }
}

/// The value of a threshold's metric in a step; `None` when there is no data (a latency
/// of a step without requests).
fn value_of(metric: Metric, s: &StepSummary) -> Option<f64> {
    if s.requests == 0 && matches!(metric, Metric::Latency(_)) {
        return None;
    }
    Some(match metric {
        Metric::Latency(q) => {
            let l = &s.latency_ms;
            match q {
                Quantile::P50 => l.p50,
                Quantile::P90 => l.p90,
                Quantile::P95 => l.p95,
                Quantile::P99 => l.p99,
                Quantile::P999 => l.p999,
                Quantile::Max => l.max,
                Quantile::Mean => l.mean,
            }
        }
        Metric::ErrorRatio => {
            if s.requests == 0 {
                0.0
            } else {
                s.errors as f64 / s.requests as f64
            }
        }
        Metric::ErrorCount => s.errors as f64,
        Metric::RequestCount => s.requests as f64,
        Metric::RequestRate => s.rate,
    })
}

/// A value in a threshold's units (`15.200ms`, `0.0030`).
fn shown(metric: Metric, value: f64) -> String {
    match metric {
        Metric::Latency(_) => format!("{value:.3}ms"),
        Metric::ErrorRatio => format!("{value:.4}"),
        Metric::ErrorCount | Metric::RequestCount => format!("{value:.0}"),
        Metric::RequestRate => format!("{value:.1}"),
    }
}

fn evaluate(c: &Compiled, report: &Report, baseline: Option<&Report>) -> ThresholdOutcome {
    let outcome = |observed: String, passed: bool| ThresholdOutcome {
        metric: c.spec.metric.clone(),
        step: c.spec.step.clone(),
        bound: bound_text(&c.spec),
        observed,
        passed,
        max_increase: c.spec.max_increase.clone(),
        max_decrease: c.spec.max_decrease.clone(),
        skipped: None,
    };
    let Some(value) = step_of(c, report).and_then(|s| value_of(c.metric, s)) else {
        return outcome("no data".into(), false);
    };
    if !c.is_relative() {
        let passed = c.min.is_none_or(|m| value >= m) && c.max.is_none_or(|m| value <= m);
        return outcome(shown(c.metric, value), passed);
    }
    let skip = |why: String| ThresholdOutcome {
        skipped: Some(why.clone()),
        ..outcome(format!("{} ({why})", shown(c.metric, value)), true)
    };
    let Some(baseline) = baseline else {
        return skip("no baseline".into());
    };
    let Some(before) = step_of(c, baseline).and_then(|s| value_of(c.metric, s)) else {
        return skip(format!(
            "the baseline has no data for {}",
            c.spec.step.as_deref().unwrap_or("all steps")
        ));
    };
    let change = crate::report::baseline::percent_change(value, before);
    // No change of a zero is a growth without bound: it fails any maxIncrease.
    let grew = change.unwrap_or(f64::INFINITY);
    let passed = c.max_increase.is_none_or(|m| grew <= m + 1e-9)
        && c.max_decrease.is_none_or(|m| grew >= -m - 1e-9);
    outcome(
        format!(
            "{} ({} vs {})",
            crate::report::baseline::percent_text(change),
            shown(c.metric, value),
            shown(c.metric, before)
        ),
        passed,
    )
}

/// The relative thresholds of a report, compiled back from their outcomes (which keep
/// their bounds as written), so that a finished report can be judged against another
/// baseline (`murmur report --baseline`).
pub fn relative_of(report: &Report) -> Thresholds {
    let specs: Vec<Threshold> = report
        .thresholds
        .iter()
        .filter(|t| t.max_increase.is_some() || t.max_decrease.is_some())
        .map(|t| Threshold {
            metric: t.metric.clone(),
            step: t.step.clone(),
            max_increase: t.max_increase.clone(),
            max_decrease: t.max_decrease.clone(),
            ..Threshold::default()
        })
        .collect();
    // They compiled when the test ran; one that no longer does is left out.
    Thresholds::compile(&specs).unwrap_or_default()
}
