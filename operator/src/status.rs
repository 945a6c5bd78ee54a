//! A LoadTest's status, computed from what the master says (a pure function), and the
//! transitions between two statuses that deserve an Event.
//!
//! The phase only moves forward: Pending → Starting → Running → Stopping →
//! Succeeded/Failed. Conditions follow the Kubernetes API conventions: `Ready` (every user
//! and agent running), `Progressing` (users or agents on their way), `Degraded` (an agent
//! missing while running), `Invalid` (a spec the operator cannot run).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use murmuration_crds::api::{MasterStatus, TestPhase};
use murmuration_crds::loadtest::{
    AgentCounts, LoadTestStatus, Phase, RequestCounts, TestResult, UserCounts,
};
use murmuration_crds::LoadTest;

use crate::validate::Invalid;

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
        }
    }

    /// Whether it is a warning.
    pub fn warning(&self) -> bool {
        matches!(
            self,
            Transition::AgentLost { .. }
                | Transition::ThresholdFailed { .. }
                | Transition::Invalid(_)
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
        }
    }
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
    status.users.get_or_insert_with(UserCounts::default).desired = lt.spec.users as i64;
    status
        .agents
        .get_or_insert_with(AgentCounts::default)
        .desired = lt.spec.agents as i64;
    status.conditions = vec![
        condition(
            &prev.conditions,
            "Invalid",
            false,
            "SpecValid",
            "the spec is valid".into(),
            generation,
            now,
        ),
        condition(
            &prev.conditions,
            "Ready",
            false,
            "MasterUnreachable",
            why.to_owned(),
            generation,
            now,
        ),
        condition(
            &prev.conditions,
            "Progressing",
            phase < Phase::Stopping,
            "PodsStarting",
            why.to_owned(),
            generation,
            now,
        ),
    ];
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
    let desired = lt.spec.users as i64;
    if phase == Phase::Running && prev_phase == Phase::Running {
        if let Some(before) = prev.users.as_ref().map(|u| u.desired) {
            if before != desired {
                events.push(Transition::Scaled {
                    from: before,
                    to: desired,
                });
            }
        }
        for a in &prev.agent_status {
            let now_ready = master
                .agent_status
                .iter()
                .find(|m| m.name == a.name)
                .is_some_and(|m| m.ready);
            if a.ready && !now_ready {
                events.push(Transition::AgentLost {
                    agent: a.name.clone(),
                });
            }
        }
    }
    let finished = matches!(phase, Phase::Succeeded | Phase::Failed);
    let result = if finished {
        Some(master.result.unwrap_or(TestResult::Failed))
    } else {
        None
    };
    if finished && !matches!(prev_phase, Phase::Succeeded | Phase::Failed) {
        let failed: Vec<String> = master
            .thresholds
            .iter()
            .filter(|t| !t.passed)
            .map(|t| match &t.step {
                Some(s) => format!("{} of {s} (observed {})", t.metric, t.observed),
                None => format!("{} (observed {})", t.metric, t.observed),
            })
            .collect();
        if !failed.is_empty() {
            events.push(Transition::ThresholdFailed {
                thresholds: failed.join(", "),
            });
        }
        events.push(Transition::Finished {
            result: result.unwrap_or(TestResult::Failed),
            message: master
                .message
                .clone()
                .or_else(|| master.ended_by.clone().map(|e| format!("ended by {e}")))
                .unwrap_or_default(),
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
        thresholds: master.thresholds.clone(),
        result,
        message: master.message.clone(),
        report: if finished {
            Some(crate::names::report(&crate::build::test_name(lt)))
        } else {
            None
        },
        conditions: vec![
            condition(
                &prev.conditions,
                "Invalid",
                false,
                "SpecValid",
                "the spec is valid".into(),
                generation,
                now,
            ),
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
        ],
        start_time,
        completion_time,
    };
    (status, events)
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
