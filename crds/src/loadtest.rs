//! The `LoadTest` custom resource: what a user writes to run a test (spec) and what the
//! operator reports back while it runs (status). Design section 4.
//!
//! The same types are read by `murmur run` from a local YAML file, so every field doc here is
//! both the `kubectl explain` text and the local-mode reference.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema::{any_value, optional_duration_string, rate_string};
pub use crate::thresholds::{Baseline, Threshold};

mod cleanup;
pub use cleanup::{CleanupPolicy, CleanupWhen};

/// A distributed load test: users running a scenario against a target, spread over agent
/// pods, with live status and a stored report.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "murmuration.dev",
    version = "v1alpha1",
    kind = "LoadTest",
    plural = "loadtests",
    shortname = "lt",
    namespaced,
    status = "LoadTestStatus",
    scale(
        spec_replicas_path = ".spec.users",
        status_replicas_path = ".status.users.running"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Users", type_ = "integer", json_path = ".spec.users"),
    printcolumn(
        name = "Running",
        type_ = "integer",
        json_path = ".status.users.running"
    ),
    printcolumn(name = "Agents", type_ = "integer", json_path = ".status.agents.ready"),
    printcolumn(
        name = "RPS",
        type_ = "number",
        json_path = ".status.requests.perSecond"
    ),
    printcolumn(
        name = "P99",
        type_ = "number",
        json_path = ".status.latencyMs.p99",
        description = "p99 latency in milliseconds"
    ),
    printcolumn(name = "Result", type_ = "string", json_path = ".status.result"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadTestSpec {
    /// Number of simulated users; they get the ids 1..users. `kubectl scale` edits this
    /// field (scale subresource); a running test adds or removes users at `userRate`.
    /// May be left out when `stages` sets the users; cannot be set with `arrivals`. With
    /// `stages`, it is the count the first stage starts from, and setting or changing it
    /// while the stages run takes over from them (Event `ProfileOverridden`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10_000_000))]
    pub users: Option<i32>,

    /// A declared line of users (closed model): the running users move linearly from the
    /// current count to each stage's `users` over its `duration`, one stage after the
    /// other; the test ends after the last stage unless `duration` says otherwise. For
    /// example a ramp, a plateau and a ramp down:
    /// `[{duration: 2m, users: 1000}, {duration: 10m, users: 1000}, {duration: 1m, users: 0}]`.
    /// Removed users finish their iteration first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<UserStage>,

    /// An open model instead of `users`: new users arrive at a rate whatever the target's
    /// latency; each arrival is a user with a new id (unique across agents, never reused)
    /// that runs the scenario once. Latency is also measured from each arrival's intended
    /// time. For example `{rate: 200/s, maxConcurrent: 5000, stages: [{duration: 5m,
    /// rate: 1000/s}]}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrivals: Option<Arrivals>,

    /// Number of agent pods that run the users (local mode: agent processes). Editing it
    /// adds or removes agents; new users go to the new agents.
    #[serde(default = "default_agents")]
    #[schemars(range(min = 1, max = 1000))]
    pub agents: i32,

    /// How fast users start (and stop when `users` shrinks), as `count/period`: `20/s`,
    /// `1200/m`, `1/500ms`. When omitted, all users start at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "rate_string")]
    pub user_rate: Option<String>,

    /// How long the test runs, e.g. `10m`. When omitted, the test runs until every user has
    /// finished its repeats (or forever, when users repeat forever, until it is stopped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_duration_string")]
    pub duration: Option<String>,

    /// How often each user runs the scenario. Default: again and again until the user is
    /// removed or the test ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat: Option<Repeat>,

    /// Scenario variables, used in templates as `{{vars.name}}`. Editable while the test
    /// runs: users see new values at their next step.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "crate::schema::vars_map")]
    pub vars: BTreeMap<String, serde_json::Value>,

    /// What every user does. Exactly one of `http`, `websocket`, `messaging` or `custom`.
    pub scenario: ScenarioSpec,

    /// Pass/fail criteria, evaluated live and at the end; any failed threshold makes the
    /// result `Failed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub thresholds: Vec<Threshold>,

    /// The report of an earlier run to compare with: each step's rate, p50/p99 and errors
    /// beside it in the report and status, and what relative thresholds
    /// (`maxIncrease`, `maxDecrease`) are measured against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Baseline>,

    /// How agent pods are run (image, resources, scheduling). Ignored by `murmur run`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentTemplate>,

    /// Start barrier: users start only once every agent is connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<StartPolicy>,

    /// What is removed after the test ends, and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleanup: Option<CleanupPolicy>,

    /// Where the master pushes the test's figures besides its `/metrics` endpoint:
    /// `{remoteWrite: {url: ..., bearerTokenSecret: {name, key}, interval: 5s}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<crate::metrics::MetricsSpec>,

    /// Set it to stop a running test before its end: `Graceful` lets every user finish
    /// its iteration, `Forced` aborts them at once (`Graceful` may be changed to `Forced`
    /// while users finish). The test then ends as any other, with its result, thresholds
    /// and report; it cannot be started again. Ignored by `murmur run` (Ctrl-C stops it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<StopMode>,
}

/// How a test is stopped before its end.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[schemars(transform = crate::schema::field_describes)]
pub enum StopMode {
    /// Users finish their current iteration, then the test ends.
    Graceful,
    /// Users are aborted at once.
    Forced,
}

fn default_agents() -> i32 {
    1
}

/// One stage of `spec.stages`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserStage {
    /// How long the move to `users` takes, e.g. `2m` (`0s`: at once).
    #[schemars(schema_with = "crate::schema::duration_string")]
    pub duration: String,

    /// Users running at the end of the stage, e.g. `1000`.
    #[schemars(range(min = 0, max = 10_000_000))]
    pub users: i32,
}

/// The open model of `spec.arrivals`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Arrivals {
    /// Arrivals at the start, as `count/period`: `200/s`, `6000/m`. Without `stages` the
    /// rate stays there until `duration` (or until the test is stopped).
    #[schemars(schema_with = "rate_string")]
    pub rate: String,

    /// Most arrival users running at once, across all agents (split evenly among them).
    /// An arrival when that many run is dropped and counted (`status.arrivals.dropped`),
    /// never queued. Default 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10_000_000))]
    pub max_concurrent: Option<i32>,

    /// Changes of the rate: it moves linearly from the current rate to each stage's
    /// `rate` over its `duration`; arrivals end after the last stage. For example
    /// `[{duration: 1m, rate: 1000/s}, {duration: 5m, rate: 1000/s}]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<RateStage>,
}

/// One stage of `spec.arrivals.stages`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateStage {
    /// How long the move to `rate` takes, e.g. `5m` (`0s`: at once).
    #[schemars(schema_with = "crate::schema::duration_string")]
    pub duration: String,

    /// Arrival rate at the end of the stage, e.g. `1000/s` (`0/s` to stop arrivals).
    #[schemars(schema_with = "rate_string")]
    pub rate: String,
}

/// How often each user runs the scenario.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Repeat {
    /// Number of runs per user. When omitted, users repeat until removed or the test ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub times: Option<i64>,

    /// Pause between two runs of the same user, e.g. `1s`. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_duration_string")]
    pub interval: Option<String>,
}

/// The scenario every user runs: exactly one of its fields is set.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("oneOf" = [{"required": ["http"]}, {"required": ["websocket"]}, {"required": ["messaging"]}, {"required": ["custom"]}]))]
pub struct ScenarioSpec {
    /// A declarative HTTP scenario: a list of steps that every user runs in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpScenario>,

    /// A declarative WebSocket scenario: every user holds one connection and runs its
    /// steps (connect, send, receive, close...) in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub websocket: Option<crate::websocket::WebSocketScenario>,

    /// The JSON-over-TCP chat users of amoc's Livebook demo (see `murmur demo-server
    /// messaging`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messaging: Option<MessagingScenario>,

    /// A scenario written in Rust and built into a custom agent binary or image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<CustomScenario>,
}

/// A declarative HTTP scenario. Every user keeps its own connection(s), as a browser does.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpScenario {
    /// Base URL that request paths are relative to, e.g. `http://shop:8080` or
    /// `{{vars.base_url}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,

    /// HTTP version to speak: `http1` (default) or `http2` (prior knowledge on `http://`,
    /// ALPN on `https://`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<HttpVersion>,

    /// Headers sent with every request (templates allowed).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,

    /// Time limit for one request (connect, send and receive), e.g. `10s`. Default `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_duration_string")]
    pub timeout: Option<String>,

    /// Accept any TLS certificate (for self-signed test targets). Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,

    /// The steps every user runs, in order.
    #[schemars(length(min = 1))]
    pub steps: Vec<Step>,
}

/// HTTP protocol version.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(transform = crate::schema::field_describes)]
pub enum HttpVersion {
    /// HTTP/1.1 with keep-alive.
    Http1,
    /// HTTP/2.
    Http2,
}

/// One step of an HTTP scenario: exactly one of its fields is set.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("oneOf" = [{"required": ["request"]}, {"required": ["think"]}, {"required": ["throttle"]}, {"required": ["coordinate"]}, {"required": ["loop"]}]))]
pub struct Step {
    /// Send an HTTP request and check the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Request>,

    /// Pause, like a person reading the page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub think: Option<Think>,

    /// Wait for a permit of the named Throttle (a global rate limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub throttle: Option<String>,

    /// Wait until this user's group of the named Coordinator forms; the group's members are
    /// then available as `{{group.ids}}`, `{{group.size}}` and `{{group.peer}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub coordinate: Option<String>,

    /// Run inner steps several times (inner steps cannot hold another loop).
    #[serde(default, rename = "loop", skip_serializing_if = "Option::is_none")]
    pub loop_: Option<Loop>,
}

/// A repeated block of steps.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Loop {
    /// How many times the inner steps run.
    #[schemars(range(min = 1, max = 1_000_000))]
    pub times: i64,

    /// The steps to repeat. A step inside a loop cannot itself be a loop.
    #[schemars(length(min = 1))]
    pub steps: Vec<InnerStep>,
}

/// One step inside a loop: like a step, without nested loops.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("oneOf" = [{"required": ["request"]}, {"required": ["think"]}, {"required": ["throttle"]}, {"required": ["coordinate"]}]))]
pub struct InnerStep {
    /// Send an HTTP request and check the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Request>,

    /// Pause, like a person reading the page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub think: Option<Think>,

    /// Wait for a permit of the named Throttle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub throttle: Option<String>,

    /// Wait until this user's group of the named Coordinator forms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub coordinate: Option<String>,
}

impl From<InnerStep> for Step {
    fn from(s: InnerStep) -> Step {
        Step {
            request: s.request,
            think: s.think,
            throttle: s.throttle,
            coordinate: s.coordinate,
            loop_: None,
        }
    }
}

/// An HTTP request step.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Request {
    /// Name of the step in metrics, thresholds and the report. Default: `METHOD path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub name: Option<String>,

    /// HTTP method. Default `GET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<Method>,

    /// Path relative to the scenario's `baseUrl` (templates allowed), e.g. `/cart/{{user.id}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,

    /// Absolute URL, instead of `path` (templates allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,

    /// Extra headers for this request (templates allowed).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,

    /// Raw request body (templates allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,

    /// JSON request body; string values may be templates. Sets `content-type:
    /// application/json` unless a header says otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_value")]
    pub json: Option<serde_json::Value>,

    /// What the answer must look like; anything else counts as an error of kind `check`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<Expect>,

    /// Values taken from the JSON answer into user variables: `{order: "$.id"}` makes
    /// `{{order}}` available to later steps.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extract: BTreeMap<String, String>,
}

/// HTTP methods.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[allow(missing_docs, clippy::upper_case_acronyms)]
#[schemars(transform = crate::schema::field_describes)]
pub enum Method {
    GET,
    POST,
    PUT,
    PATCH,
    DELETE,
    HEAD,
    OPTIONS,
}

/// Checks on an HTTP answer.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Expect {
    /// Expected status code. Default: any 2xx or 3xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100, max = 599))]
    pub status: Option<u16>,

    /// Text the body must contain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_contains: Option<String>,
}

/// A pause: `duration` for a fixed one, or `min` and `max` for a uniformly random one.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Think {
    /// A fixed pause, e.g. `1s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_duration_string")]
    pub duration: Option<String>,

    /// Shortest random pause, e.g. `500ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_duration_string")]
    pub min: Option<String>,

    /// Longest random pause, e.g. `1500ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_duration_string")]
    pub max: Option<String>,
}

/// The users of amoc's Livebook messaging demo, talking to `murmur demo-server messaging`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MessagingScenario {
    /// Address of the messaging server, `host:port` (templates allowed).
    #[schemars(length(min = 1))]
    pub server: String,

    /// Fewest messages a user sends before going quiet. Default 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100_000))]
    pub min_messages: Option<u32>,

    /// Most messages a user sends. Default 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100_000))]
    pub max_messages: Option<u32>,

    /// Mean pause between two messages of a user. Default `1s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_duration_string")]
    pub interval: Option<String>,

    /// A user leaves after this much silence. Default `3s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_duration_string")]
    pub silence: Option<String>,

    /// How many neighbours on each side a user writes to (user N writes to N-k..N+k).
    /// Default 10, as in the demo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub neighbours: Option<u32>,
}

/// A scenario written in Rust and registered in the agent binary under `name`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CustomScenario {
    /// The name the scenario was registered with.
    #[schemars(length(min = 1))]
    pub name: String,

    /// Free-form configuration handed to the scenario's `init`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_value")]
    pub config: Option<serde_json::Value>,
}

/// How agent pods are run. Ignored by `murmur run`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentTemplate {
    /// Agent image; default: the operator's own agent image. Custom scenarios need an image
    /// built with them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// CPU and memory for each agent pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Node labels that agent pods must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations of agent pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
}

/// Start barrier settings.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StartPolicy {
    /// How long to wait for every agent to connect before the test fails, e.g. `2m`.
    /// Default `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_duration_string")]
    pub wait_for_agents: Option<String>,
}

/// What the operator reports about a test.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct LoadTestStatus {
    /// Where the test is: `Pending`, `Starting`, `Running`, `Stopping`, `Succeeded` or
    /// `Failed`. Only moves forward.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// The `metadata.generation` this status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// User counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<UserCounts>,

    /// Where a `stages` profile is: its stage and planned users (absent without stages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<ProfileStatus>,

    /// Arrivals of an open-model test (`spec.arrivals`): planned rate, started, dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrivals: Option<ArrivalCounts>,

    /// Agent counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agents: Option<AgentCounts>,

    /// One entry per agent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agent_status: Vec<AgentStatus>,

    /// Request counts and rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<RequestCounts>,

    /// Latency percentiles over the whole test so far, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<LatencySummary>,

    /// Each threshold with its observed value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub thresholds: Vec<ThresholdResult>,

    /// Iteration duration in milliseconds (one run of the scenario by one user, start to
    /// end), over the whole test so far; absent before the first iteration ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iteration_ms: Option<LatencySummary>,

    /// Each step against `spec.baseline`: its change in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<crate::thresholds::BaselineStatus>,

    /// `Passed` or `Failed`, once the test has finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<TestResult>,

    /// Why the test is in its phase or result, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// Name of the ConfigMap holding the stored report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,

    /// Kubernetes-style conditions: `Ready`, `Progressing`, `Degraded`, `Invalid`, and
    /// `Finished` (reason `Passed` or `Failed`) for `kubectl wait --for=condition=Finished`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,

    /// When users started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,

    /// When the test finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

/// The phases of a test, in the only order they can happen.
#[derive(
    Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
#[schemars(transform = crate::schema::field_describes)]
pub enum Phase {
    /// Accepted, nothing started yet.
    Pending,
    /// Pods are starting; waiting for every agent (start barrier).
    Starting,
    /// Users are running.
    Running,
    /// Users are being stopped; the report is being collected.
    Stopping,
    /// Finished (see `result` for pass/fail).
    Succeeded,
    /// Could not run to the end (invalid, agents missing, crashed).
    Failed,
}

/// Users of a test.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct UserCounts {
    /// Users asked for (`spec.users`).
    pub desired: i64,
    /// Users running now.
    pub running: i64,
    /// Users started since the beginning (a restarted user counts again).
    pub started: i64,
    /// Users that finished all their repeats.
    pub finished: i64,
    /// Users that stopped on an error in the scenario.
    pub failed: i64,
}

/// Where a `stages` profile is.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ProfileStatus {
    /// The stage running now (1 = the first of `spec.stages`); absent once the stages are
    /// over or overridden.
    // Written as null when absent: the operator writes status with a merge patch, which
    // would otherwise keep the stage of before an override.
    #[serde(default)]
    pub stage: Option<i64>,
    /// Users the profile plans for now.
    pub planned_users: i64,
    /// A person set `spec.users` during the profile: the profile stopped there.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub overridden: bool,
}

/// Arrivals of an open-model test.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ArrivalCounts {
    /// The rate the profile plans for now, per second.
    pub planned_per_second: f64,
    /// Arrivals started since the beginning.
    pub started: i64,
    /// Arrivals dropped because `maxConcurrent` users were running.
    pub dropped: i64,
}

/// Agents of a test.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct AgentCounts {
    /// Agents asked for (`spec.agents`).
    pub desired: i64,
    /// Agents connected to the master.
    pub ready: i64,
}

/// One agent.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    /// The agent's stable name (its pod name).
    pub name: String,
    /// Connected to the master.
    pub ready: bool,
    /// Users running on it.
    pub users: i64,
}

/// Requests of a test.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct RequestCounts {
    /// Requests (or scenario actions) completed.
    pub total: i64,
    /// Rate over the last seconds.
    pub per_second: f64,
    /// Requests that failed, of any kind.
    pub errors: i64,
}

/// Latency percentiles in milliseconds.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct LatencySummary {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

/// A threshold and what was observed.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ThresholdResult {
    /// The metric, as in the spec.
    pub metric: String,
    /// The step, as in the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// The observed value, in the threshold's units (`15.2ms`, `0.003`).
    pub observed: String,
    /// Whether the threshold holds.
    pub passed: bool,
}

/// The outcome of a finished test.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[schemars(transform = crate::schema::field_describes)]
pub enum TestResult {
    /// Every threshold held.
    Passed,
    /// A threshold failed, or the test could not run.
    Failed,
}
