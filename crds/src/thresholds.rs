//! Pass/fail criteria of a `LoadTest` (`spec.thresholds`) and the earlier run they may be
//! measured against (`spec.baseline`). The model compiles and checks them
//! (`murmuration_model::thresholds`); the schema patterns here are its rules as a pattern,
//! and a test of the model checks that the two agree.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The schema pattern of a change in percent (`maxIncrease`, `maxDecrease`): `10%`,
/// `2.5%`.
pub const PERCENT_PATTERN: &str = r"^[0-9]+(\.[0-9]+)?%$";

/// A pass/fail criterion.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Threshold {
    /// What is measured: `latency.p50`, `latency.p90`, `latency.p95`, `latency.p99`,
    /// `latency.p999`, `latency.max`, `latency.mean`, `errors.ratio`, `errors.count`,
    /// `requests.count` or `requests.rate` (per second).
    // The model's list of metrics (`murmuration_model::thresholds::METRICS`), as a pattern;
    // a test of the model checks that the two agree.
    #[schemars(regex(
        pattern = r"^(latency\.p50|latency\.p90|latency\.p95|latency\.p99|latency\.p999|latency\.max|latency\.mean|errors\.ratio|errors\.count|requests\.count|requests\.rate)$"
    ))]
    pub metric: String,

    /// Only this step (its request name); default: all steps together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,

    /// Upper bound: a duration for latencies (`500ms`), a number for the others (`"0.01"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<String>,

    /// Lower bound, same units as `max` (e.g. `requests.rate` at least `"1000"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<String>,

    /// Relative bound: most the value may grow against the baseline's (`spec.baseline`,
    /// or `murmur run --baseline`), in percent, e.g. `10%`. Without a baseline the
    /// threshold is skipped (shown as such), not failed. A threshold is absolute
    /// (`max`, `min`) or relative, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?%$"))]
    pub max_increase: Option<String>,

    /// Relative bound: most the value may shrink against the baseline's, in percent (at
    /// most `100%`), e.g. `requests.rate` with `maxDecrease: 5%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?%$"))]
    pub max_decrease: Option<String>,
}

/// Where the report of an earlier run is kept in the cluster. Exactly one of `report` or
/// `configMap`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Baseline {
    /// An earlier LoadTest of this namespace: its stored report (the ConfigMap
    /// `<report>-report`, kept after its pods are gone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
    /// A ConfigMap of this namespace holding a stored report (`report.json.gz` in its
    /// `binaryData`, as the operator stores them), e.g. a copy kept as a reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<String>,
}

impl Baseline {
    /// The ConfigMap holding the baseline's report, when exactly one field names it.
    pub fn configmap(&self) -> Option<String> {
        match (&self.report, &self.config_map) {
            (Some(test), None) => Some(crate::report::configmap_name(test)),
            (None, Some(cm)) => Some(cm.clone()),
            _ => None,
        }
    }
}

/// The comparison with `spec.baseline` in a test's status: each step's change in percent
/// against the baseline (`+12.3%`, `-4.0%`, `±0%`, `new` from zero). The report has the
/// figures themselves (`murmur report NAME`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct BaselineStatus {
    /// The baseline's test name.
    pub test: String,
    /// Each step, in the scenario's order (and `total` where the steps are alike).
    pub steps: Vec<StepChange>,
}

/// One step against the baseline.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct StepChange {
    /// The step.
    pub name: String,
    /// Change of its mean rate.
    pub rate: String,
    /// Change of its median latency.
    pub p50: String,
    /// Change of its 99th percentile.
    pub p99: String,
    /// Change of its errors.
    pub errors: String,
}
