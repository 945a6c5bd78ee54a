//! The report of a test, as `report.json` holds it: summary per step, user counts,
//! thresholds, throttles, coordinators, the 1 s time series, and the exact histograms (so
//! that reports from several agents or runs merge without loss).
//!
//! This is a stable, documented format: the HTML page, the summary table, the operator's
//! stored report and `murmur report` are all made from it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::metrics::Percentiles;

/// Version of the report format; bumped on incompatible changes.
pub const REPORT_FORMAT: u32 = 1;

/// A whole test's report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The load profile when it is not plain `users`: `stages` or `arrivals` (the series'
    /// `planned` is users for the one, arrivals per second for the other).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// [`REPORT_FORMAT`].
    pub format: u32,
    /// The test's name.
    pub name: String,
    /// Scenario kind: `http`, `messaging` or `custom:<name>`.
    pub scenario: String,
    /// When the first user started, Unix milliseconds.
    pub started_at_ms: u64,
    /// How long the test ran, seconds.
    pub duration_s: f64,
    /// `Passed` or `Failed`.
    pub result: Outcome,
    /// Why the test ended: `duration`, `completed` (all repeats done), `stopped`
    /// (Ctrl-C or a stop request), `failed` (could not run).
    pub ended_by: String,
    /// Users over the whole test.
    pub users: UserSummary,
    /// All steps together. Its counts always add up; its latency percentiles mean
    /// something only when the steps are alike ([`Report::steps_alike`]).
    pub total: StepSummary,
    /// Per step, in the order the scenario names them.
    pub steps: Vec<StepSummary>,
    /// Iterations: one run of the scenario by one user, from its start to its end.
    #[serde(default)]
    pub iterations: IterationSummary,
    /// Each step beside the same step of an earlier run (`--baseline`, `spec.baseline`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<crate::report::baseline::Comparison>,
    /// Each threshold with its observed value.
    pub thresholds: Vec<ThresholdOutcome>,
    /// Throttles' final figures.
    pub throttles: Vec<ThrottleSummary>,
    /// Coordinators' final figures.
    pub coordinators: Vec<CoordinatorSummary>,
    /// One point per second (or per `bucketS` seconds once downsampled).
    pub series: Vec<SeriesPoint>,
    /// Seconds per series point: 1, or more after downsampling to fit a size limit.
    pub bucket_s: u32,
    /// Per-agent series (distributed runs), by agent name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub agents: BTreeMap<String, Vec<SeriesPoint>>,
}

impl Report {
    /// Whether the steps time the same kind of action, so that their merged latency (the
    /// `total` row's percentiles) is a figure worth a headline. True for one step, and for
    /// `http` scenarios, whose every step is one request's round trip to the target (what
    /// k6 calls `http_req_duration`). False otherwise: a messaging or WebSocket scenario
    /// times a connect (milliseconds), a send (microseconds) and a peer's reply (seconds,
    /// by design), and a custom scenario's steps are whatever it says; merged, their p99
    /// is the slowest kind's and means nothing. Those reports show latency per step only.
    pub fn steps_alike(&self) -> bool {
        self.steps.len() <= 1 || self.scenario == "http"
    }
}

/// Passed or failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Every threshold held.
    Passed,
    /// A threshold failed or the test could not run.
    Failed,
}

/// User counts over a whole test.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserSummary {
    /// Users asked for at the end.
    pub desired: u64,
    /// Most users running at once.
    pub peak: u64,
    /// Users started (a restarted user counts again).
    pub started: u64,
    /// Users that finished their repeats or were stopped gracefully.
    pub finished: u64,
    /// Users that ended on a scenario error.
    pub failed: u64,
    /// Scenario iterations completed.
    pub iterations: u64,
    /// WebSocket messages that did not match the `receive` waiting when they came (kept
    /// for later receives); left out when none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unmatched: u64,
    /// Arrivals dropped because `maxConcurrent` users were running (open model).
    #[serde(default)]
    pub dropped: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Figures of one step (or of all steps together).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepSummary {
    /// Step name (`total` for all together).
    pub name: String,
    /// Completed actions.
    pub requests: u64,
    /// Failed actions.
    pub errors: u64,
    /// Failed actions by kind (`connect`, `timeout`, `status`, ...).
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Mean rate over the test, per second.
    pub rate: f64,
    /// Latency in milliseconds, measured from when each action started.
    pub latency_ms: Percentiles,
    /// Latency in milliseconds from when each action *should* have started (throttle-paced
    /// steps only; wrk2's coordinated-omission correction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corrected_latency_ms: Option<Percentiles>,
    /// The exact latency histogram (microseconds), HdrHistogram V2+deflate, base64.
    pub histogram: String,
}

/// Iterations of a whole test: how long one run of the scenario by one user took.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IterationSummary {
    /// Iterations completed (the same as `users.iterations`).
    pub count: u64,
    /// Their duration in milliseconds.
    pub duration_ms: Percentiles,
    /// The exact duration histogram (microseconds), HdrHistogram V2+deflate, base64.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub histogram: String,
    /// A uniform sample of at most 1,000 iterations, each `[start, duration]`: seconds
    /// since the test's start and milliseconds. What the duration-against-start plot
    /// draws.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<[f64; 2]>,
}

/// A threshold and what was observed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThresholdOutcome {
    /// The metric, as written (`latency.p99`).
    pub metric: String,
    /// The step, if the threshold names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// The bound as written (`max: 500ms`), for display.
    pub bound: String,
    /// The observed value in the threshold's units (`15.2ms`, `0.003`).
    pub observed: String,
    /// Whether it holds (a skipped threshold does not fail the run).
    pub passed: bool,
    /// A relative bound as written (`10%`): most growth against the baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_increase: Option<String>,
    /// A relative bound as written: most shrinkage against the baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_decrease: Option<String>,
    /// Why a relative threshold was not judged (`no baseline`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// A throttle's final figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThrottleSummary {
    /// Name.
    pub name: String,
    /// The rate at the end.
    pub rate: u64,
    /// Permits asked for.
    pub requested: u64,
    /// Permits granted.
    pub executed: u64,
}

/// A coordinator's final figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CoordinatorSummary {
    /// Name.
    pub name: String,
    /// Groups formed.
    pub groups: u64,
    /// Partial groups released by the timeout.
    pub timeouts: u64,
}

/// One point of the time series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct SeriesPoint {
    /// Seconds since the start, at the end of this point's bucket.
    pub t: f64,
    /// Users running at that moment.
    pub users: u64,
    /// Actions completed in the bucket.
    pub requests: u64,
    /// Failed actions in the bucket.
    pub errors: u64,
    /// Actions per second over the bucket.
    pub rps: f64,
    /// Latency percentiles over the bucket, milliseconds (p50, p90, p99, max).
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
    /// Requests per step in the bucket (same order as `steps`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub step_requests: Vec<u64>,
    /// Errors per step in the bucket.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub step_errors: Vec<u64>,
    /// Median latency per step in the bucket, milliseconds (0 for a step without
    /// requests in it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub step_p50: Vec<f64>,
    /// 99th percentile per step in the bucket, milliseconds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub step_p99: Vec<f64>,
    /// What the load profile planned: users (`stages`) or arrivals per second
    /// (`arrivals`); absent for `users` and after a profile was overridden.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned: Option<f64>,
    /// Users started in the bucket (arrivals, in an open model).
    #[serde(default)]
    pub started: u64,
    /// Arrivals dropped in the bucket (`maxConcurrent` reached).
    #[serde(default)]
    pub dropped: u64,
}

impl Report {
    /// Whether any threshold failed (a skipped one has not).
    pub fn any_threshold_failed(&self) -> bool {
        self.thresholds.iter().any(|t| !t.passed)
    }

    /// An open model (`arrivals`): its plan is a rate of arrivals, not users.
    pub fn scenario_is_open(&self) -> bool {
        self.profile.as_deref() == Some("arrivals")
    }
}
