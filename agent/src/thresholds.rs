//! Thresholds evaluated, live and at the end, against the report's figures. They are
//! compiled (metric names, bounds, steps) by the model, [`murmuration_model::thresholds`].
//!
//! Semantics: a threshold holds when the observed value is within its bounds (`max`
//! inclusive, `min` inclusive). A threshold on a step that saw no request fails with the
//! observed value `no data`: a test that never exercised what it promised to check has not
//! passed it. `errors.ratio` of zero requests is 0 (nothing failed).

pub use murmuration_model::thresholds::{Compiled, Metric, Quantile, ThresholdError, Thresholds};

use murmuration_crds::loadtest::Threshold;

use crate::report::{Report, StepSummary, ThresholdOutcome};

/// Evaluates every threshold against a report (live or final).
pub fn evaluate_all(thresholds: &Thresholds, report: &Report) -> Vec<ThresholdOutcome> {
    thresholds
        .items
        .iter()
        .map(|c| evaluate(c, report))
        .collect()
}

/// A threshold's bounds as people read them (`≤ 500ms`, `≥ 1000`, `1 ≤ x ≤ 5`): the
/// `bound` of its outcome, and what `murmur wait` shows beside a cluster test's status.
pub fn bound_text(t: &Threshold) -> String {
    match (&t.min, &t.max) {
        (Some(a), Some(b)) => format!("{a} ≤ x ≤ {b}"),
        (Some(a), None) => format!("≥ {a}"),
        (None, Some(b)) => format!("≤ {b}"),
        (None, None) => String::new(),
    }
}

fn evaluate(c: &Compiled, report: &Report) -> ThresholdOutcome {
    let step: Option<&StepSummary> = match &c.spec.step {
        Some(name) => report.steps.iter().find(|s| &s.name == name),
        None => Some(&report.total),
    };
    let bound = bound_text(&c.spec);
    let outcome = |observed: String, passed: bool| ThresholdOutcome {
        metric: c.spec.metric.clone(),
        step: c.spec.step.clone(),
        bound: bound.clone(),
        observed,
        passed,
    };
    let Some(s) = step.filter(|s| s.requests > 0 || !matches!(c.metric, Metric::Latency(_))) else {
        return outcome("no data".into(), false);
    };
    let value = match c.metric {
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
    };
    let passed = c.min.is_none_or(|m| value >= m) && c.max.is_none_or(|m| value <= m);
    let observed = match c.metric {
        Metric::Latency(_) => format!("{value:.3}ms"),
        Metric::ErrorRatio => format!("{value:.4}"),
        Metric::ErrorCount | Metric::RequestCount => format!("{value:.0}"),
        Metric::RequestRate => format!("{value:.1}"),
    };
    outcome(observed, passed)
}
