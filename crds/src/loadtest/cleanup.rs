//! `spec.cleanup` of a LoadTest: what is removed after the test ends, and when (kept apart
//! from the rest of the spec only to keep files short; re-exported by [`super`]).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What happens after the test ends.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CleanupPolicy {
    /// Which pods are removed at the end: `Always`, `OnSuccess` (keep a failed test's pods
    /// for inspection) or `Never`. Default `OnSuccess`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<CleanupWhen>,

    /// Delete the LoadTest itself this many seconds after it finished. Default: keep it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i64>,
}

/// When pods are removed after the test.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[schemars(transform = crate::schema::field_describes)]
pub enum CleanupWhen {
    /// Remove the pods after every test.
    Always,
    /// Remove the pods only after a test that passed.
    #[default]
    OnSuccess,
    /// Keep the pods.
    Never,
}
