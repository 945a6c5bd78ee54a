//! The master's HTTP API: paths and the request and response bodies, shared by the master
//! (which serves them), the operator and `murmur run` (which call them), without either
//! caller pulling in the load engine.
//!
//! Every call carries the test's token as `Authorization: Bearer <token>`; only
//! [`HEALTH`] answers without it (it says nothing but "ok", so that kubelet probes, which
//! cannot read a Secret, can use it). Bodies are JSON. Errors are [`ApiError`] bodies with
//! a 4xx/5xx status.
//!
//! | method | path | body | answer |
//! |---|---|---|---|
//! | GET | [`STATUS`] | | [`MasterStatus`] |
//! | PUT | [`USERS`] | [`SetUsers`] | [`MasterStatus`] |
//! | PUT | [`AGENTS`] | [`SetAgents`] | [`MasterStatus`] |
//! | PUT | [`VARS`] | [`SetVars`] | [`MasterStatus`] |
//! | PUT | [`THROTTLES`]`/{name}` | [`crate::ThrottleSpec`] | [`MasterStatus`] |
//! | DELETE | [`THROTTLES`]`/{name}` | | [`MasterStatus`] |
//! | PUT | [`COORDINATORS`]`/{name}` | [`crate::CoordinatorSpec`] | [`MasterStatus`] |
//! | DELETE | [`COORDINATORS`]`/{name}` | | [`MasterStatus`] |
//! | POST | [`STOP`] | [`Stop`] | [`MasterStatus`] |
//! | GET | [`REPORT`]`?maxPoints=N` | | the JSON report (its series downsampled to at most N points) |
//! | GET | [`METRICS`] | | Prometheus text format |
//! | GET | [`HEALTH`] | | `ok` |
//!
//! Agents reach the master on the same port: `GET` [`AGENT_CONNECT`] with `Upgrade:`
//! [`AGENT_PROTOCOL`] and the token turns the connection into the agents' framed protocol.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::loadtest::{
    AgentCounts, AgentStatus, LatencySummary, RequestCounts, TestResult, ThresholdResult,
    UserCounts,
};

/// The test's state, counters and live figures.
pub const STATUS: &str = "/api/v1/status";
/// Desired users.
pub const USERS: &str = "/api/v1/users";
/// Agents expected.
pub const AGENTS: &str = "/api/v1/agents";
/// Scenario variables.
pub const VARS: &str = "/api/v1/vars";
/// Throttles, by name below this path.
pub const THROTTLES: &str = "/api/v1/throttles";
/// Coordinators, by name below this path.
pub const COORDINATORS: &str = "/api/v1/coordinators";
/// Ends the test.
pub const STOP: &str = "/api/v1/stop";
/// The JSON report.
pub const REPORT: &str = "/api/v1/report";
/// Prometheus metrics.
pub const METRICS: &str = "/metrics";
/// Liveness: answers without the token.
pub const HEALTH: &str = "/healthz";
/// Where agents connect (HTTP upgrade to the agents' protocol).
pub const AGENT_CONNECT: &str = "/api/v1/agent";
/// The `Upgrade` protocol name of the agents' wire protocol, with its version.
pub const AGENT_PROTOCOL: &str = "murmuration-agent/1";

/// Where the test is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TestPhase {
    /// Waiting for the expected agents to connect (the start barrier).
    Starting,
    /// Users are running.
    Running,
    /// The end was reached or asked for; users are finishing their iteration.
    Stopping,
    /// Over; the result and the report are final.
    Finished,
}

/// Desired users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetUsers {
    /// Users wanted: ids 1..=users.
    pub users: u64,
}

/// Agents expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAgents {
    /// Agents the test should have; users start once this many are connected.
    pub agents: u64,
}

/// New scenario variables (replacing the old ones as a whole).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetVars {
    /// The variables.
    pub vars: BTreeMap<String, serde_json::Value>,
}

/// Ends the test.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stop {
    /// Abort users at once instead of letting them finish their iteration.
    #[serde(default)]
    pub forced: bool,
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// What was wrong, naming the field.
    pub error: String,
}

/// A throttle's live figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThrottleFigures {
    /// Its name.
    pub name: String,
    /// The rate in force now (permits per interval, across all agents).
    pub rate: u64,
    /// The interval, as a duration string.
    pub interval: String,
    /// Permits asked for since the start.
    pub requested: u64,
    /// Permits granted since the start.
    pub executed: u64,
    /// Users waiting for a permit now.
    pub waiting: u64,
    /// Each agent's share of the rate now.
    pub shares: BTreeMap<String, u64>,
}

/// A coordinator's live figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordinatorFigures {
    /// Its name.
    pub name: String,
    /// Users waiting for their group now.
    pub waiting: u64,
    /// Groups formed since the start.
    pub groups: u64,
    /// Timeouts that released a partial group.
    pub timeouts: u64,
}

/// What the master knows of the test now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MasterStatus {
    /// The test's name.
    pub test: String,
    /// Where the test is.
    pub phase: TestPhase,
    /// Why the test ended (`duration`, `completed`, `stopped`), once it has.
    pub ended_by: Option<String>,
    /// Passed or Failed, once finished.
    pub result: Option<TestResult>,
    /// Why it could not start or went wrong, if so.
    pub message: Option<String>,
    /// When users started (ms since the Unix epoch), once they have.
    pub started_at_ms: Option<u64>,
    /// Seconds since users started.
    pub elapsed_s: f64,
    /// User counters.
    pub users: UserCounts,
    /// Where a `stages` profile is (absent without stages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<crate::loadtest::ProfileStatus>,
    /// Arrivals of an open-model test (absent without `arrivals`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrivals: Option<crate::loadtest::ArrivalCounts>,
    /// Agents expected and connected.
    pub agents: AgentCounts,
    /// Each agent known to the master.
    pub agent_status: Vec<AgentStatus>,
    /// Request counters; `perSecond` over the last second.
    pub requests: RequestCounts,
    /// Latency over the whole test, from the merged histograms.
    pub latency_ms: LatencySummary,
    /// Iteration duration (one run of the scenario by one user) over the whole test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iteration_ms: Option<LatencySummary>,
    /// Thresholds as they stand now (final once finished).
    pub thresholds: Vec<ThresholdResult>,
    /// Each step against the baseline, when the test has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<crate::thresholds::BaselineStatus>,
    /// Throttles.
    pub throttles: Vec<ThrottleFigures>,
    /// Coordinators.
    pub coordinators: Vec<CoordinatorFigures>,
}
