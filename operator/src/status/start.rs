//! The start of a test as the operator watches it: how long its master may take to answer,
//! why a master that never answered is given up (its pod's state, or its exit), and the
//! failed status that follows.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use murmuration_crds::loadtest::{LoadTestStatus, Phase, TestResult};
use murmuration_crds::LoadTest;

use super::{without_answer, Transition};

/// How long the master pod may take to answer at all, on top of the start barrier
/// (`spec.start.waitForAgents`, default 5m as in the engine), unless the operator is told
/// otherwise (`--master-grace`): pulling an image takes time.
pub const MASTER_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// Why a test that has not started yet must be given up: its master has not answered
/// within the start barrier and `grace` since its pod was created (a wrong image, a pod
/// that cannot be scheduled, a crashing master). `None` while there is time left, or once
/// the test has started (a master lost later is `Degraded`, not a failed start).
pub fn master_overdue(
    lt: &LoadTest,
    master_pod: Option<&k8s_openapi::api::core::v1::Pod>,
    grace: std::time::Duration,
    now: &Time,
) -> Option<String> {
    let phase = lt
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .unwrap_or(Phase::Pending);
    if phase >= Phase::Running {
        return None;
    }
    let pod = master_pod?;
    let created = pod.metadata.creation_timestamp.as_ref()?;
    let exited = master_exit(pod);
    let wait = lt
        .spec
        .start
        .as_ref()
        .and_then(|s| s.wait_for_agents.as_deref())
        .and_then(|w| murmuration_crds::units::parse_duration(w).ok())
        .unwrap_or(std::time::Duration::from_secs(300));
    // A master that exited has said why: the start barrier is not worth waiting for.
    let limit = if exited.is_some() {
        grace
    } else {
        wait + grace
    };
    let waited = now.0.duration_since(created.0);
    if waited.is_negative() || waited.unsigned_abs() < limit {
        return None;
    }
    if let Some(why) = exited {
        return Some(format!(
            "the master did not start within {}: {why}",
            humantime::format_duration(grace)
        ));
    }
    let name = pod.metadata.name.clone().unwrap_or_default();
    let state = pod
        .status
        .as_ref()
        .map(|s| {
            let waiting = s
                .container_statuses
                .iter()
                .flatten()
                .filter_map(|c| c.state.as_ref()?.waiting.as_ref())
                .map(|w| match &w.message {
                    Some(m) => format!("{}: {m}", w.reason.clone().unwrap_or_default()),
                    None => w.reason.clone().unwrap_or_default(),
                })
                .next();
            let phase = s.phase.clone().unwrap_or_else(|| "Pending".into());
            match waiting {
                Some(w) => format!("{phase} ({w})"),
                None => phase,
            }
        })
        .unwrap_or_else(|| "Pending".into());
    Some(format!(
        "the master did not answer within {} (start.waitForAgents + {}): pod {name} is {state}",
        humantime::format_duration(limit),
        humantime::format_duration(grace),
    ))
}

/// Why the master container last exited with an error, from its pod's status: its exit
/// code and termination message (the master's own fatal error, or the tail of its log).
/// `None` while it has not exited, or exited cleanly (stopped).
pub fn master_exit(pod: &k8s_openapi::api::core::v1::Pod) -> Option<String> {
    let status = pod
        .status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == "master")?;
    let terminated = status
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .or_else(|| status.last_state.as_ref()?.terminated.as_ref())?;
    if terminated.exit_code == 0 {
        return None;
    }
    let code = terminated.exit_code;
    Some(
        match terminated
            .message
            .as_deref()
            .map(str::trim)
            .filter(|m| !m.is_empty())
        {
            Some(m) => format!("the master exited with code {code}: {m}"),
            None => format!(
                "the master exited with code {code} ({})",
                terminated.reason.as_deref().unwrap_or("no message")
            ),
        },
    )
}

/// The status of a test whose master never answered: Failed, with the reason.
pub fn failed_to_start(lt: &LoadTest, why: &str, now: &Time) -> (LoadTestStatus, Vec<Transition>) {
    let prev = lt.status.clone().unwrap_or_default();
    let generation = lt.metadata.generation.unwrap_or(0);
    let mut status = prev.clone();
    status.phase = Some(Phase::Failed);
    status.result = Some(TestResult::Failed);
    status.observed_generation = Some(generation);
    status.message = Some(why.to_owned());
    status.completion_time = Some(now.clone());
    status.conditions = without_answer(
        &prev.conditions,
        ("MasterDidNotStart", "MasterDidNotStart"),
        why,
        false,
        Some((TestResult::Failed, why.to_owned())),
        generation,
        now,
    );
    let events = vec![Transition::Finished {
        result: TestResult::Failed,
        message: why.to_owned(),
    }];
    (status, events)
}
