//! Pass/fail criteria (`spec.thresholds`): compiled once, evaluated live and at the end
//! against the report's figures.
//!
//! Semantics: a threshold holds when the observed value is within its bounds (`max`
//! inclusive, `min` inclusive). A threshold on a step that saw no request fails with the
//! observed value `no data`: a test that never exercised what it promised to check has not
//! passed it. `errors.ratio` of zero requests is 0 (nothing failed).

use std::time::Duration;

use murmuration_crds::loadtest::Threshold;
use murmuration_crds::units::parse_duration;

use crate::report::{Report, StepSummary, ThresholdOutcome};

/// A threshold that cannot be compiled: the field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ThresholdError {
    /// `spec.thresholds[1].max`.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Metric {
    Latency(Quantile),
    ErrorRatio,
    ErrorCount,
    RequestCount,
    RequestRate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quantile {
    P50,
    P90,
    P95,
    P99,
    P999,
    Max,
    Mean,
}

#[derive(Debug, Clone)]
struct Compiled {
    spec: Threshold,
    metric: Metric,
    min: Option<f64>,
    max: Option<f64>,
}

/// The compiled thresholds of a test.
#[derive(Debug, Clone, Default)]
pub struct Thresholds {
    items: Vec<Compiled>,
}

impl Thresholds {
    /// Compiles `spec.thresholds`.
    pub fn compile(specs: &[Threshold]) -> Result<Thresholds, ThresholdError> {
        let mut items = Vec::new();
        for (i, t) in specs.iter().enumerate() {
            let at = |f: &str| format!("spec.thresholds[{i}].{f}");
            let err = |f: &str, reason: String| ThresholdError {
                field: at(f),
                reason,
            };
            let metric = match t.metric.as_str() {
                "latency.p50" => Metric::Latency(Quantile::P50),
                "latency.p90" => Metric::Latency(Quantile::P90),
                "latency.p95" => Metric::Latency(Quantile::P95),
                "latency.p99" => Metric::Latency(Quantile::P99),
                "latency.p999" => Metric::Latency(Quantile::P999),
                "latency.max" => Metric::Latency(Quantile::Max),
                "latency.mean" => Metric::Latency(Quantile::Mean),
                "errors.ratio" => Metric::ErrorRatio,
                "errors.count" => Metric::ErrorCount,
                "requests.count" => Metric::RequestCount,
                "requests.rate" => Metric::RequestRate,
                other => {
                    return Err(err(
                        "metric",
                        format!("{other:?} is not a metric (latency.p50|p90|p95|p99|p999|max|mean, errors.ratio|count, requests.count|rate)"),
                    ))
                }
            };
            let bound = |f: &str, v: &Option<String>| -> Result<Option<f64>, ThresholdError> {
                let Some(v) = v else { return Ok(None) };
                match metric {
                    Metric::Latency(_) => parse_duration(v)
                        .map(|d: Duration| Some(d.as_secs_f64() * 1000.0))
                        .map_err(|e| {
                            err(
                                f,
                                format!("latency bounds are durations such as 500ms: {e}"),
                            )
                        }),
                    _ => {
                        let n: f64 = v
                            .trim()
                            .parse()
                            .map_err(|_| err(f, format!("{v:?} is not a number")))?;
                        if !n.is_finite() || n < 0.0 {
                            return Err(err(f, "must be a number of zero or more".into()));
                        }
                        if metric == Metric::ErrorRatio && n > 1.0 {
                            return Err(err(f, "errors.ratio is between 0 and 1".into()));
                        }
                        Ok(Some(n))
                    }
                }
            };
            let min = bound("min", &t.min)?;
            let max = bound("max", &t.max)?;
            if min.is_none() && max.is_none() {
                return Err(err("max", "a threshold needs max or min".into()));
            }
            if let (Some(a), Some(b)) = (min, max) {
                if a > b {
                    return Err(err("min", "is larger than max".into()));
                }
            }
            items.push(Compiled {
                spec: t.clone(),
                metric,
                min,
                max,
            });
        }
        Ok(Thresholds { items })
    }

    /// Checks that every `step` a threshold names is a step of the scenario.
    pub fn check_steps(&self, known: &[String]) -> Result<(), ThresholdError> {
        for (i, c) in self.items.iter().enumerate() {
            if let Some(step) = &c.spec.step {
                if !known.iter().any(|k| k == step) {
                    return Err(ThresholdError {
                        field: format!("spec.thresholds[{i}].step"),
                        reason: format!(
                            "the scenario has no step {step:?} (it has: {})",
                            known.join(", ")
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// No thresholds at all.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Evaluates every threshold against a report (live or final).
    pub fn evaluate(&self, report: &Report) -> Vec<ThresholdOutcome> {
        self.items.iter().map(|c| evaluate(c, report)).collect()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn t(metric: &str, step: Option<&str>, max: Option<&str>, min: Option<&str>) -> Threshold {
        Threshold {
            metric: metric.into(),
            step: step.map(Into::into),
            max: max.map(Into::into),
            min: min.map(Into::into),
        }
    }

    #[test]
    fn bad_thresholds_name_the_field() {
        let cases = [
            (
                t("latency.p99", None, Some("500"), None),
                "spec.thresholds[0].max",
                "durations",
            ),
            (
                t("errors.ratio", None, Some("2"), None),
                "spec.thresholds[0].max",
                "between 0 and 1",
            ),
            (
                t("errors.ratio", None, None, None),
                "spec.thresholds[0].max",
                "needs max or min",
            ),
            (
                t("latency.p42", None, Some("1s"), None),
                "spec.thresholds[0].metric",
                "not a metric",
            ),
            (
                t("requests.rate", None, Some("10"), Some("20")),
                "spec.thresholds[0].min",
                "larger than max",
            ),
            (
                t("errors.count", None, Some("-1"), None),
                "spec.thresholds[0].max",
                "zero or more",
            ),
        ];
        for (th, field, reason) in cases {
            let e = Thresholds::compile(&[th]).unwrap_err();
            assert_eq!(e.field, field);
            assert!(e.reason.contains(reason), "{e}");
        }
        let ok = Thresholds::compile(&[t("latency.p99", Some("buy"), Some("1s"), None)]).unwrap();
        let e = ok.check_steps(&["home".into()]).unwrap_err();
        assert_eq!(e.field, "spec.thresholds[0].step");
        assert!(ok.check_steps(&["buy".into()]).is_ok());
    }
}
