//! A LoadTest's status, computed from what the master says (a pure function), and the
//! transitions between two statuses that deserve an Event.
//!
//! The phase only moves forward: Pending → Starting → Running → Stopping →
//! Succeeded/Failed. Conditions follow the Kubernetes API conventions: `Ready` (every user
//! and agent running), `Progressing` (users or agents on their way), `Degraded` (an agent
//! missing while running), `Invalid` (a spec the operator cannot run), `Finished` (true
//! once the test is over, reason `Passed` or `Failed`: what `kubectl wait
//! --for=condition=Finished` and CI pipelines wait for).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use murmuration_crds::api::{MasterStatus, TestPhase};
use murmuration_crds::loadtest::{
    AgentCounts, AgentStatus, LoadTestStatus, Phase, RequestCounts, TestResult, UserCounts,
};
use murmuration_crds::{LoadTest, LoadTestSpec};

mod start;

pub use start::{failed_to_start, master_exit, master_overdue, MASTER_GRACE};

/// What is wrong with a test, as its condition `Invalid` and its Event say it: the field
/// (prefixed with `Throttle NAME: ` or `Coordinator NAME: ` for the test's parts) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    /// The field, as a path (`spec.scenario.http.steps[2].throttle`).
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl Invalid {
    /// The model's answer about a test compiled from its objects
    /// ([`murmuration_model::compile_objects`]).
    pub fn of(e: &murmuration_model::ManifestError) -> Invalid {
        match e {
            murmuration_model::ManifestError::Invalid {
                document,
                field,
                reason,
            } => Invalid {
                field: if document.starts_with("LoadTest ") {
                    field.clone()
                } else {
                    format!("{document}: {field}")
                },
                reason: reason.clone(),
            },
            other => Invalid {
                field: "(document)".into(),
                reason: other.to_string(),
            },
        }
    }
}

/// What deserves an Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Users started (the phase reached Running).
    Started,
    /// The desired users changed while running.
    Scaled {
        /// Before.
        from: i64,
        /// Now.
        to: i64,
    },
    /// An agent stopped being ready.
    AgentLost {
        /// Its name.
        agent: String,
    },
    /// The test ended with a failed threshold.
    ThresholdFailed {
        /// Which ones.
        thresholds: String,
    },
    /// The test ended.
    Finished {
        /// Passed or Failed.
        result: TestResult,
        /// Why it ended, or what went wrong.
        message: String,
    },
    /// The spec is invalid.
    Invalid(Invalid),
    /// A person set `spec.users` while a stage profile ran: the profile stopped there.
    ProfileOverridden {
        /// The users the person set.
        users: i64,
    },
    /// The spec of a running test was edited in fields it only reads at its start.
    EditsNotTaken {
        /// The fields, as `spec.NAME`.
        fields: Vec<String>,
    },
}

impl Transition {
    /// The Event's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Transition::Started => "Started",
            Transition::Scaled { .. } => "Scaled",
            Transition::AgentLost { .. } => "AgentLost",
            Transition::ThresholdFailed { .. } => "ThresholdFailed",
            Transition::Finished { .. } => "Finished",
            Transition::Invalid(_) => "Invalid",
            Transition::EditsNotTaken { .. } => "EditIgnored",
            Transition::ProfileOverridden { .. } => "ProfileOverridden",
        }
    }

    /// Whether it is a warning.
    pub fn warning(&self) -> bool {
        matches!(
            self,
            Transition::AgentLost { .. }
                | Transition::ThresholdFailed { .. }
                | Transition::Invalid(_)
                | Transition::EditsNotTaken { .. }
                | Transition::Finished {
                    result: TestResult::Failed,
                    ..
                }
        )
    }

    /// The Event's note.
    pub fn note(&self) -> String {
        match self {
            Transition::Started => "every agent is connected: users start".into(),
            Transition::Scaled { from, to } => format!("users {from} → {to}"),
            Transition::AgentLost { agent } => {
                format!("agent {agent} is gone: its users start on the others")
            }
            Transition::ThresholdFailed { thresholds } => {
                format!("thresholds failed: {thresholds}")
            }
            Transition::Finished { result, message } => format!("{result:?}: {message}"),
            Transition::Invalid(i) => i.to_string(),
            Transition::ProfileOverridden { users } => format!(
                "spec.users set to {users} during the stages: the profile stops here and the \
                 test goes on with {users} users"
            ),
            Transition::EditsNotTaken { fields } => format!(
                "{} changed, but a running test keeps what it started with: only spec.users, \
                 spec.agents, spec.vars, spec.agent, spec.cleanup and the test's Throttles and \
                 Coordinators apply live; create the test again to run with the new values",
                fields.join(", ")
            ),
        }
    }
}

/// The fields of `now` that differ from the spec the test `started` with, among those its
/// master only reads at the start (it is given users, agents and vars live; the operator
/// applies `agent` to the agents' pods and reads `cleanup` and `start` itself).
pub fn edits_not_taken(started: &LoadTestSpec, now: &LoadTestSpec) -> Vec<String> {
    let mut fields = Vec::new();
    let mut check = |name: &str, differs: bool| {
        if differs {
            fields.push(format!("spec.{name}"));
        }
    };
    check("userRate", started.user_rate != now.user_rate);
    check("duration", started.duration != now.duration);
    check("repeat", started.repeat != now.repeat);
    check("stages", started.stages != now.stages);
    check("arrivals", started.arrivals != now.arrivals);
    check("scenario", started.scenario != now.scenario);
    check("thresholds", started.thresholds != now.thresholds);
    check("metrics", started.metrics != now.metrics);
    fields
}

fn phase_of(master: &MasterStatus) -> Phase {
    match master.phase {
        TestPhase::Starting => Phase::Starting,
        TestPhase::Running => Phase::Running,
        TestPhase::Stopping => Phase::Stopping,
        TestPhase::Finished => {
            if master.message.is_some() {
                Phase::Failed
            } else {
                Phase::Succeeded
            }
        }
    }
}

/// Condition `Invalid` false: the operator could run the spec.
fn spec_valid(prev: &[Condition], generation: i64, now: &Time) -> Condition {
    condition(
        prev,
        "Invalid",
        false,
        "SpecValid",
        "the spec is valid".into(),
        generation,
        now,
    )
}

/// Condition `Finished`: false (reason `NotFinished`) until the test is over, then true
/// with reason `Passed` or `Failed` (the result) and `message` saying why it ended. It
/// is the one condition CI waits for, so it is always present.
fn finished_condition(
    prev: &[Condition],
    result: Option<TestResult>,
    message: String,
    generation: i64,
    now: &Time,
) -> Condition {
    match result {
        Some(r) => condition(
            prev,
            "Finished",
            true,
            match r {
                TestResult::Passed => "Passed",
                TestResult::Failed => "Failed",
            },
            message,
            generation,
            now,
        ),
        None => condition(
            prev,
            "Finished",
            false,
            "NotFinished",
            "the test has not ended yet".into(),
            generation,
            now,
        ),
    }
}

/// The conditions of a valid test whose master does not answer: not `Ready`, and
/// `Progressing` or not, for `why`, with the reasons `(ready, progressing)`; `Finished`
/// per `ended` (the result and why, once the test is over).
fn without_answer(
    prev: &[Condition],
    (ready_reason, progressing_reason): (&str, &str),
    why: &str,
    progressing: bool,
    ended: Option<(TestResult, String)>,
    generation: i64,
    now: &Time,
) -> Vec<Condition> {
    let (result, ended_why) = match ended {
        Some((r, m)) => (Some(r), m),
        None => (None, String::new()),
    };
    vec![
        spec_valid(prev, generation, now),
        condition(
            prev,
            "Ready",
            false,
            ready_reason,
            why.to_owned(),
            generation,
            now,
        ),
        condition(
            prev,
            "Progressing",
            progressing,
            progressing_reason,
            why.to_owned(),
            generation,
            now,
        ),
        finished_condition(prev, result, ended_why, generation, now),
    ]
}

fn condition(
    prev: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: i64,
    now: &Time,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_owned();
    // The transition time moves only when the status does.
    let last = prev
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message,
        observed_generation: Some(generation),
        last_transition_time: last,
    }
}

/// The status of an invalid test: condition `Invalid`, phase Pending (or where it was).
pub fn invalid(lt: &LoadTest, problem: &Invalid, now: &Time) -> (LoadTestStatus, Vec<Transition>) {
    let prev = lt.status.clone().unwrap_or_default();
    let generation = lt.metadata.generation.unwrap_or(0);
    let was_invalid = prev
        .conditions
        .iter()
        .any(|c| c.type_ == "Invalid" && c.status == "True" && c.message == problem.to_string());
    let mut status = prev.clone();
    status.phase = Some(prev.phase.unwrap_or(Phase::Pending));
    status.observed_generation = Some(generation);
    status.message = Some(problem.to_string());
    status.conditions = vec![
        condition(
            &prev.conditions,
            "Invalid",
            true,
            "InvalidSpec",
            problem.to_string(),
            generation,
            now,
        ),
        condition(
            &prev.conditions,
            "Ready",
            false,
            "InvalidSpec",
            "the spec is invalid".into(),
            generation,
            now,
        ),
        // An edit cannot undo the end of a test that already ran.
        prev.conditions
            .iter()
            .find(|c| c.type_ == "Finished" && c.status == "True")
            .cloned()
            .unwrap_or_else(|| {
                finished_condition(&prev.conditions, None, String::new(), generation, now)
            }),
    ];
    let events = if was_invalid {
        Vec::new()
    } else {
        vec![Transition::Invalid(problem.clone())]
    };
    (status, events)
}

/// The status while the master cannot be reached (pods starting, or the master restarting).
pub fn without_master(lt: &LoadTest, why: &str, now: &Time) -> LoadTestStatus {
    let prev = lt.status.clone().unwrap_or_default();
    let generation = lt.metadata.generation.unwrap_or(0);
    let mut status = prev.clone();
    let phase = prev.phase.unwrap_or(Phase::Pending);
    status.phase = Some(phase);
    status.observed_generation = Some(generation);
    status.message = Some(why.to_owned());
    status.users.get_or_insert_with(UserCounts::default).desired =
        lt.spec.users.unwrap_or(0) as i64;
    status
        .agents
        .get_or_insert_with(AgentCounts::default)
        .desired = lt.spec.agents as i64;
    // A finished test whose master is gone stays finished, with the reason it had.
    let ended = match (phase >= Phase::Succeeded, prev.result) {
        (true, Some(r)) => Some((
            r,
            prev.conditions
                .iter()
                .find(|c| c.type_ == "Finished" && c.status == "True")
                .map(|c| c.message.clone())
                .unwrap_or_else(|| prev.message.clone().unwrap_or_default()),
        )),
        _ => None,
    };
    status.conditions = without_answer(
        &prev.conditions,
        ("MasterUnreachable", "PodsStarting"),
        why,
        phase < Phase::Stopping,
        ended,
        generation,
        now,
    );
    status
}

/// The status from the master's, and the transitions since the previous status.
pub fn from_master(
    lt: &LoadTest,
    master: &MasterStatus,
    now: &Time,
) -> (LoadTestStatus, Vec<Transition>) {
    let prev = lt.status.clone().unwrap_or_default();
    let generation = lt.metadata.generation.unwrap_or(0);
    let prev_phase = prev.phase.unwrap_or(Phase::Pending);
    // Only forward.
    let phase = phase_of(master).max(prev_phase);
    let mut events = Vec::new();
    if phase >= Phase::Running && prev_phase < Phase::Running && master.started_at_ms.is_some() {
        events.push(Transition::Started);
    }
    // A running profile plans the users (stages), or there are none to ask for (arrivals:
    // whoever runs is what is wanted).
    let profile_runs = master.profile.as_ref().is_some_and(|p| !p.overridden);
    let desired = if master.arrivals.is_some() {
        master.users.running
    } else if master.profile.is_some() {
        master.users.desired
    } else {
        lt.spec.users.unwrap_or(0) as i64
    };
    let was_overridden = prev.profile.as_ref().is_some_and(|p| p.overridden);
    if master.profile.as_ref().is_some_and(|p| p.overridden) && !was_overridden {
        events.push(Transition::ProfileOverridden {
            users: master.users.desired,
        });
    }
    if phase == Phase::Running
        && prev_phase == Phase::Running
        && !profile_runs
        && master.arrivals.is_none()
    {
        if let Some(before) = prev.users.as_ref().map(|u| u.desired) {
            if before != desired {
                events.push(Transition::Scaled {
                    from: before,
                    to: desired,
                });
            }
        }
        events.extend(
            lost_agents(lt, &prev.agent_status, &master.agent_status)
                .map(|agent| Transition::AgentLost { agent }),
        );
    }
    let finished = matches!(phase, Phase::Succeeded | Phase::Failed);
    let result = if finished {
        Some(master.result.unwrap_or(TestResult::Failed))
    } else {
        None
    };
    let failed_thresholds: Vec<String> = master
        .thresholds
        .iter()
        .filter(|t| !t.passed)
        .map(|t| match &t.step {
            Some(s) => format!("{} of {s} (observed {})", t.metric, t.observed),
            None => format!("{} (observed {})", t.metric, t.observed),
        })
        .collect();
    let why_ended = master
        .message
        .clone()
        .or_else(|| master.ended_by.clone().map(|e| format!("ended by {e}")))
        .unwrap_or_default();
    if finished && !matches!(prev_phase, Phase::Succeeded | Phase::Failed) {
        if !failed_thresholds.is_empty() {
            events.push(Transition::ThresholdFailed {
                thresholds: failed_thresholds.join(", "),
            });
        }
        events.push(Transition::Finished {
            result: result.unwrap_or(TestResult::Failed),
            message: why_ended.clone(),
        });
    }
    let users = UserCounts {
        desired,
        ..master.users.clone()
    };
    let agents_ready = master.agents.ready;
    let ready = phase == Phase::Running
        && users.running == desired
        && agents_ready >= lt.spec.agents as i64;
    let progressing = matches!(phase, Phase::Pending | Phase::Starting)
        || (phase == Phase::Running && users.running != desired);
    let degraded = phase == Phase::Running && agents_ready < lt.spec.agents as i64;
    let start_time = prev.start_time.clone().or_else(|| {
        master
            .started_at_ms
            .and_then(|ms| k8s_openapi::jiff::Timestamp::from_millisecond(ms as i64).ok())
            .map(Time)
    });
    let completion_time = if finished {
        prev.completion_time.clone().or_else(|| Some(now.clone()))
    } else {
        None
    };
    let status = LoadTestStatus {
        phase: Some(phase),
        observed_generation: Some(generation),
        users: Some(users.clone()),
        profile: master.profile.clone(),
        arrivals: master.arrivals.clone(),
        agents: Some(AgentCounts {
            desired: lt.spec.agents as i64,
            ready: agents_ready,
        }),
        agent_status: master.agent_status.clone(),
        requests: Some(RequestCounts {
            // One decimal is all a printer column needs, and it keeps patches small.
            per_second: (master.requests.per_second * 10.0).round() / 10.0,
            ..master.requests.clone()
        }),
        latency_ms: Some(round_latency(&master.latency_ms)),
        iteration_ms: master.iteration_ms.as_ref().map(round_latency),
        thresholds: master.thresholds.clone(),
        baseline: master.baseline.clone(),
        result,
        message: master.message.clone(),
        report: if finished {
            Some(crate::names::report(&crate::build::test_name(lt)))
        } else {
            None
        },
        conditions: vec![
            spec_valid(&prev.conditions, generation, now),
            condition(
                &prev.conditions,
                "Ready",
                ready,
                if ready {
                    "AllUsersRunning"
                } else {
                    "NotAllRunning"
                },
                format!(
                    "{} of {desired} users and {agents_ready} of {} agents running",
                    users.running, lt.spec.agents
                ),
                generation,
                now,
            ),
            condition(
                &prev.conditions,
                "Progressing",
                progressing,
                if progressing { "Ramping" } else { "Steady" },
                if progressing {
                    format!("users moving towards {desired}")
                } else {
                    format!("{} users steady", users.running)
                },
                generation,
                now,
            ),
            condition(
                &prev.conditions,
                "Degraded",
                degraded,
                if degraded {
                    "AgentsMissing"
                } else {
                    "AgentsConnected"
                },
                format!("{agents_ready} of {} agents connected", lt.spec.agents),
                generation,
                now,
            ),
            finished_condition(
                &prev.conditions,
                result,
                match (why_ended.is_empty(), failed_thresholds.is_empty()) {
                    (_, true) => why_ended,
                    (true, false) => format!("thresholds failed: {}", failed_thresholds.join(", ")),
                    (false, false) => format!(
                        "{why_ended}; thresholds failed: {}",
                        failed_thresholds.join(", ")
                    ),
                },
                generation,
                now,
            ),
        ],
        start_time,
        completion_time,
    };
    (status, events)
}

/// The agents lost since the previous status: ready then, and now listed by the master
/// as not connected. An agent the master does not list is not lost: the master does not
/// know it (yet), as a master that has just taken a running test over, whose agents are
/// still reconnecting. An agent the test no longer wants (its StatefulSet ordinal at or
/// above `spec.agents`, after a scale-down) was removed, not lost.
fn lost_agents<'a>(
    lt: &'a LoadTest,
    before: &'a [AgentStatus],
    now: &'a [AgentStatus],
) -> impl Iterator<Item = String> + 'a {
    let prefix = format!("{}-", crate::names::agents(&crate::build::test_name(lt)));
    let wanted = move |name: &str| match name
        .strip_prefix(&prefix)
        .and_then(|n| n.parse::<i64>().ok())
    {
        Some(ordinal) => ordinal < lt.spec.agents as i64,
        None => true,
    };
    before
        .iter()
        .filter(|a| a.ready)
        .filter(move |a| now.iter().any(|m| m.name == a.name && !m.ready))
        .filter(move |a| wanted(&a.name))
        .map(|a| a.name.clone())
}

fn round_latency(
    l: &murmuration_crds::loadtest::LatencySummary,
) -> murmuration_crds::loadtest::LatencySummary {
    let r = |v: f64| (v * 1000.0).round() / 1000.0;
    murmuration_crds::loadtest::LatencySummary {
        p50: r(l.p50),
        p95: r(l.p95),
        p99: r(l.p99),
        max: r(l.max),
    }
}

/// Whether a new status must be written, and how soon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusWrite {
    /// It is the same.
    Nothing,
    /// A transition (phase, result, a condition, the observed generation, the desired
    /// counts, an agent's readiness, the message): written at once.
    Now,
    /// Live figures only (rates, latencies, counters): written at most every 2 s.
    Paced,
}

/// What a change from `prev` to `next` calls for.
pub fn write_kind(prev: Option<&LoadTestStatus>, next: &LoadTestStatus) -> StatusWrite {
    let Some(prev) = prev else {
        return StatusWrite::Now;
    };
    if prev == next {
        return StatusWrite::Nothing;
    }
    let conditions = |s: &LoadTestStatus| -> Vec<(String, String, String)> {
        s.conditions
            .iter()
            .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
            .collect()
    };
    let agents = |s: &LoadTestStatus| -> Vec<(String, bool)> {
        s.agent_status
            .iter()
            .map(|a| (a.name.clone(), a.ready))
            .collect()
    };
    let desired = |s: &LoadTestStatus| {
        (
            s.users.as_ref().map(|u| u.desired),
            s.agents.as_ref().map(|a| (a.desired, a.ready)),
        )
    };
    let transition = prev.phase != next.phase
        || prev.observed_generation != next.observed_generation
        || prev.result != next.result
        || prev.message != next.message
        || prev.report != next.report
        || prev.thresholds.len() != next.thresholds.len()
        || conditions(prev) != conditions(next)
        || agents(prev) != agents(next)
        || desired(prev) != desired(next);
    if transition {
        StatusWrite::Now
    } else {
        StatusWrite::Paced
    }
}

/// Whether users or agents are on their way (the operator then follows the master closely).
pub fn is_progressing(status: &LoadTestStatus) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == "Progressing" && c.status == "True")
}

/// What happens after the end of a test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AfterTheEnd {
    /// The master and agent pods (and the master's Service) go.
    pub remove_pods: bool,
    /// The LoadTest itself goes in this long (zero: now); `None`: it stays.
    pub delete_test_in: Option<std::time::Duration>,
}

/// Pods go per `spec.cleanup.policy` (default `OnSuccess`: a failed test keeps its pods to
/// look at), the LoadTest `ttlSecondsAfterFinished` after its completion time.
pub fn after_the_end(lt: &LoadTest, now: &Time) -> AfterTheEnd {
    use murmuration_crds::loadtest::CleanupWhen;
    let status = lt.status.clone().unwrap_or_default();
    let cleanup = lt.spec.cleanup.clone().unwrap_or_default();
    let remove_pods = match cleanup.policy.unwrap_or(CleanupWhen::OnSuccess) {
        CleanupWhen::Always => true,
        CleanupWhen::OnSuccess => status.result == Some(TestResult::Passed),
        CleanupWhen::Never => false,
    };
    let delete_test_in = match (cleanup.ttl_seconds_after_finished, status.completion_time) {
        (Some(ttl), Some(done)) => {
            let expires = done.0 + k8s_openapi::jiff::SignedDuration::from_secs(ttl.max(0));
            let left = expires.duration_since(now.0);
            Some(if left.is_negative() {
                std::time::Duration::ZERO
            } else {
                left.unsigned_abs()
            })
        }
        _ => None,
    };
    AfterTheEnd {
        remove_pods,
        delete_test_in,
    }
}
