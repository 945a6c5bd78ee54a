//! Pass/fail criteria (`spec.thresholds`) compiled: the metrics a threshold may name (the
//! one list of them), bounds parsed, steps checked against the scenario. The engine
//! evaluates the compiled thresholds against its reports.

use std::time::Duration;

use murmuration_crds::loadtest::Threshold;
use murmuration_crds::units::parse_duration;

/// Every metric a threshold may name, with what it measures.
pub const METRICS: &[(&str, Metric)] = &[
    ("latency.p50", Metric::Latency(Quantile::P50)),
    ("latency.p90", Metric::Latency(Quantile::P90)),
    ("latency.p95", Metric::Latency(Quantile::P95)),
    ("latency.p99", Metric::Latency(Quantile::P99)),
    ("latency.p999", Metric::Latency(Quantile::P999)),
    ("latency.max", Metric::Latency(Quantile::Max)),
    ("latency.mean", Metric::Latency(Quantile::Mean)),
    ("errors.ratio", Metric::ErrorRatio),
    ("errors.count", Metric::ErrorCount),
    ("requests.count", Metric::RequestCount),
    ("requests.rate", Metric::RequestRate),
];

/// A threshold that cannot be compiled: the field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ThresholdError {
    /// `spec.thresholds[1].max`.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

/// What a threshold measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// A latency figure, in milliseconds.
    Latency(Quantile),
    /// Failed requests / requests.
    ErrorRatio,
    /// Failed requests.
    ErrorCount,
    /// Requests.
    RequestCount,
    /// Requests per second.
    RequestRate,
}

/// Which latency figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantile {
    /// Median.
    P50,
    /// 90th percentile.
    P90,
    /// 95th percentile.
    P95,
    /// 99th percentile.
    P99,
    /// 99.9th percentile.
    P999,
    /// Largest.
    Max,
    /// Mean.
    Mean,
}

/// One compiled threshold.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// As written.
    pub spec: Threshold,
    /// What it measures.
    pub metric: Metric,
    /// Lower bound (milliseconds for latencies).
    pub min: Option<f64>,
    /// Upper bound (milliseconds for latencies).
    pub max: Option<f64>,
}

/// The compiled thresholds of a test.
#[derive(Debug, Clone, Default)]
pub struct Thresholds {
    /// In the order of `spec.thresholds`.
    pub items: Vec<Compiled>,
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
            let metric = METRICS
                .iter()
                .find(|(name, _)| *name == t.metric)
                .map(|(_, m)| *m)
                .ok_or_else(|| {
                    err(
                        "metric",
                        format!(
                            "{:?} is not a metric (one of {})",
                            t.metric,
                            METRICS
                                .iter()
                                .map(|(n, _)| *n)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    )
                })?;
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
    fn the_crd_schema_allows_exactly_these_metrics() {
        let expected = format!(
            "^({})$",
            METRICS
                .iter()
                .map(|(n, _)| n.replace('.', "\\."))
                .collect::<Vec<_>>()
                .join("|")
        );
        let (_, crd) = murmuration_crds::crd::all()
            .into_iter()
            .find(|(f, _)| f.starts_with("loadtests"))
            .unwrap();
        let crd = serde_json::to_value(crd).unwrap();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let metric = &schema["properties"]["spec"]["properties"]["thresholds"]["items"]
            ["properties"]["metric"];
        assert_eq!(metric["pattern"], expected.as_str());
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
