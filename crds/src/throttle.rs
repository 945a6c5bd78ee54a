//! The `Throttle` custom resource: a global rate limit shared by all agents of one test
//! (amoc's throttle, distributed). Design section 4.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema::optional_duration_string;

/// A global rate limit: at most `rate` permits per `interval` across all agents of a test,
/// spread evenly (never in bursts). Steps of type `throttle: NAME` wait for a permit.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "murmuration.dev",
    version = "v1alpha1",
    kind = "Throttle",
    plural = "throttles",
    shortname = "thr",
    namespaced,
    status = "ThrottleStatus",
    printcolumn(name = "Test", type_ = "string", json_path = ".spec.loadTest"),
    printcolumn(name = "Rate", type_ = "integer", json_path = ".status.rate"),
    printcolumn(name = "Interval", type_ = "string", json_path = ".spec.interval"),
    printcolumn(name = "Executed", type_ = "integer", json_path = ".status.executed"),
    printcolumn(name = "Waiting", type_ = "integer", json_path = ".status.waiting"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ThrottleSpec {
    /// Name of the LoadTest (same namespace) whose agents share this limit. Ignored by
    /// `murmur run`, where every throttle in the file belongs to the test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_test: Option<String>,

    /// Permits per `interval`, across all agents together. With `interval: 0s`, the number
    /// of executions allowed to run at the same time.
    #[schemars(range(min = 0, max = 1_000_000_000))]
    pub rate: i64,

    /// The period `rate` applies to, e.g. `1s`, `1m` (default). `0s` turns the throttle into
    /// a limit on parallel executions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_duration_string")]
    pub interval: Option<String>,

    /// Gradual change of the rate (amoc's `change_rate_gradually`): from `rate`, move by
    /// `step` every `every` until `to`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ramp: Option<ThrottleRamp>,
}

/// A gradual rate change.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ThrottleRamp {
    /// The rate to end at.
    #[schemars(range(min = 0, max = 1_000_000_000))]
    pub to: i64,

    /// How much the rate changes at each step (always towards `to`).
    #[schemars(range(min = 1, max = 1_000_000_000))]
    pub step: i64,

    /// Time between two steps, e.g. `1m`.
    #[schemars(schema_with = "crate::schema::duration_string")]
    pub every: String,
}

/// Live figures of a throttle.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ThrottleStatus {
    /// The rate in force now (moves during a ramp).
    #[serde(default)]
    pub rate: i64,
    /// Permits asked for since the start.
    #[serde(default)]
    pub requested: i64,
    /// Permits granted since the start.
    #[serde(default)]
    pub executed: i64,
    /// Users waiting for a permit now.
    #[serde(default)]
    pub waiting: i64,
}
