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
    /// Most growth against the baseline, percent.
    pub max_increase: Option<f64>,
    /// Most shrinkage against the baseline, percent.
    pub max_decrease: Option<f64>,
}

impl Compiled {
    /// Whether it is measured against a baseline (`maxIncrease`, `maxDecrease`).
    pub fn is_relative(&self) -> bool {
        self.max_increase.is_some() || self.max_decrease.is_some()
    }
}

/// Parses a change in percent as relative thresholds write it (`10%`, `2.5%`): the rule
/// the CRD schema's [`murmuration_crds::thresholds::PERCENT_PATTERN`] writes as a pattern.
pub fn parse_percent(v: &str) -> Result<f64, String> {
    let example = "a percentage such as 10% or 2.5%";
    let digits = v
        .strip_suffix('%')
        .ok_or_else(|| format!("{v:?} is not {example}"))?;
    let well_formed = match digits.split_once('.') {
        Some((a, b)) => {
            !a.is_empty()
                && !b.is_empty()
                && a.bytes().all(|c| c.is_ascii_digit())
                && b.bytes().all(|c| c.is_ascii_digit())
        }
        None => !digits.is_empty() && digits.bytes().all(|c| c.is_ascii_digit()),
    };
    if !well_formed {
        return Err(format!("{v:?} is not {example}"));
    }
    digits
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite())
        .ok_or_else(|| format!("{v:?} is not {example}"))
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
            let percent = |f: &str, v: &Option<String>| -> Result<Option<f64>, ThresholdError> {
                v.as_deref()
                    .map(|v| parse_percent(v.trim()).map_err(|e| err(f, e)))
                    .transpose()
            };
            let max_increase = percent("maxIncrease", &t.max_increase)?;
            let max_decrease = percent("maxDecrease", &t.max_decrease)?;
            if max_decrease.is_some_and(|d| d > 100.0) {
                return Err(err(
                    "maxDecrease",
                    "is at most 100% (a value cannot shrink by more than itself)".into(),
                ));
            }
            if (min.is_some() || max.is_some())
                && (max_increase.is_some() || max_decrease.is_some())
            {
                // One verdict each: a relative one may be skipped (no baseline), an
                // absolute one never is.
                return Err(err(
                    if t.max_increase.is_some() {
                        "maxIncrease"
                    } else {
                        "maxDecrease"
                    },
                    "a threshold is absolute (max, min) or relative to the baseline \
                     (maxIncrease, maxDecrease), not both: write two thresholds"
                        .into(),
                ));
            }
            if min.is_none() && max.is_none() && max_increase.is_none() && max_decrease.is_none() {
                return Err(err(
                    "max",
                    "a threshold needs max or min, or maxIncrease or maxDecrease against a \
                     baseline (e.g. {metric: latency.p99, step: buy, maxIncrease: 10%})"
                        .into(),
                ));
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
                max_increase,
                max_decrease,
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

    /// Whether any threshold is measured against a baseline.
    pub fn any_relative(&self) -> bool {
        self.items.iter().any(Compiled::is_relative)
    }
}

/// Checks `spec.baseline`: exactly one of `report` and `configMap`, each a name.
pub fn check_baseline(b: &murmuration_crds::loadtest::Baseline) -> Result<(), ThresholdError> {
    let err = |field: &str, reason: &str| ThresholdError {
        field: format!("spec.baseline.{field}"),
        reason: reason.into(),
    };
    match (&b.report, &b.config_map) {
        (Some(_), Some(_)) => Err(err(
            "configMap",
            "give report (an earlier LoadTest) or configMap (a stored report), not both",
        )),
        (None, None) => Err(err(
            "report",
            "name an earlier LoadTest (report: shop-monday) or a ConfigMap holding a stored \
             report (configMap: shop-reference)",
        )),
        (Some(n), None) | (None, Some(n)) if n.trim().is_empty() => Err(err(
            if b.report.is_some() {
                "report"
            } else {
                "configMap"
            },
            "is empty",
        )),
        _ => Ok(()),
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
            ..Threshold::default()
        }
    }

    fn relative(metric: &str, increase: Option<&str>, decrease: Option<&str>) -> Threshold {
        Threshold {
            metric: metric.into(),
            max_increase: increase.map(Into::into),
            max_decrease: decrease.map(Into::into),
            ..Threshold::default()
        }
    }

    #[test]
    fn relative_thresholds_compile_and_bad_ones_name_the_field() {
        let ok = Thresholds::compile(&[
            relative("latency.p99", Some("10%"), None),
            relative("requests.rate", None, Some("2.5%")),
        ])
        .unwrap();
        assert_eq!(ok.items[0].max_increase, Some(10.0));
        assert_eq!(ok.items[1].max_decrease, Some(2.5));
        assert!(ok.any_relative() && ok.items[0].is_relative());
        for (th, field, reason) in [
            (
                relative("latency.p99", Some("10"), None),
                "spec.thresholds[0].maxIncrease",
                "a percentage such as 10%",
            ),
            (
                relative("latency.p99", Some("-5%"), None),
                "spec.thresholds[0].maxIncrease",
                "a percentage",
            ),
            (
                relative("requests.rate", None, Some("150%")),
                "spec.thresholds[0].maxDecrease",
                "at most 100%",
            ),
            (
                Threshold {
                    max: Some("1s".into()),
                    ..relative("latency.p99", Some("10%"), None)
                },
                "spec.thresholds[0].maxIncrease",
                "not both",
            ),
        ] {
            let e = Thresholds::compile(&[th]).unwrap_err();
            assert_eq!(e.field, field);
            assert!(e.reason.contains(reason), "{e}");
        }
    }

    /// The CRD's pattern for percentages and the parser accept the same strings.
    #[test]
    fn the_percent_pattern_and_parser_agree() {
        use murmuration_crds::thresholds::PERCENT_PATTERN;
        let (_, crd) = murmuration_crds::crd::all()
            .into_iter()
            .find(|(f, _)| f.starts_with("loadtests"))
            .unwrap();
        let crd = serde_json::to_value(crd).unwrap();
        let props = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["thresholds"]["items"]["properties"];
        for f in ["maxIncrease", "maxDecrease"] {
            assert_eq!(props[f]["pattern"], PERCENT_PATTERN, "{f}");
        }
        // PERCENT_PATTERN is ^[0-9]+(\.[0-9]+)?%$; the parser says yes to exactly these.
        for good in ["10%", "0%", "2.5%", "100.25%"] {
            assert!(parse_percent(good).is_ok(), "{good}");
        }
        for bad in [
            "10", "%", ".5%", "5.%", "-5%", "1e3%", "10 %", "10%%", "+5%",
        ] {
            assert!(parse_percent(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_baseline_names_exactly_one_report() {
        use murmuration_crds::loadtest::Baseline;
        let b = |r: Option<&str>, c: Option<&str>| Baseline {
            report: r.map(Into::into),
            config_map: c.map(Into::into),
        };
        assert!(check_baseline(&b(Some("shop-monday"), None)).is_ok());
        assert!(check_baseline(&b(None, Some("reference"))).is_ok());
        assert_eq!(
            check_baseline(&b(Some("a"), Some("b"))).unwrap_err().field,
            "spec.baseline.configMap"
        );
        assert_eq!(
            check_baseline(&b(None, None)).unwrap_err().field,
            "spec.baseline.report"
        );
        assert_eq!(
            b(Some("shop"), None).configmap().as_deref(),
            Some("shop-report")
        );
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
