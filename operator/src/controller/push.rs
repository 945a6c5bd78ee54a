//! Push: the live settings (users, agents, vars, Throttles, Coordinators, a stop) to the
//! test's master.

#[allow(unused_imports)]
use super::*;

/// Sends the master what changed: users, agents, vars, throttles, coordinators. The master
/// takes the same settings again as no change.
pub(super) async fn push(
    lt: &LoadTest,
    started: Option<&LoadTestSpec>,
    master: &MasterClient,
    mut state: MasterStatus,
    throttles: &[Throttle],
    coordinators: &[Coordinator],
) -> MasterStatus {
    fn note(
        state: &mut MasterStatus,
        r: Result<MasterStatus, crate::master::MasterError>,
        what: &str,
    ) {
        match r {
            Ok(s) => *state = s,
            Err(e) => tracing::warn!("pushing {what} to the master: {e}"),
        }
    }
    // A stop asked for in the spec (the master takes a repeated stop as a no-op, and a
    // forced one after a graceful one as forcing it).
    if let Some(mode) = lt.spec.stop {
        let forced = mode == StopMode::Forced;
        let due = match state.phase {
            TestPhase::Starting | TestPhase::Running => true,
            TestPhase::Stopping => forced,
            TestPhase::Finished => false,
        };
        if due {
            tracing::info!(forced, "stopping the test, as its spec asks");
            let r = master.stop(forced).await;
            note(&mut state, r, "the stop");
        }
        return state;
    }
    let users = lt.spec.users.unwrap_or(0).max(0) as u64;
    let profile_runs = state.profile.as_ref().is_some_and(|p| !p.overridden);
    let due = if state.arrivals.is_some() {
        // An open model has no users to set.
        false
    } else if profile_runs {
        // The stages set the users, until a person changes spec.users from what the test
        // started with: that takes over (the master stops the profile).
        lt.spec.users.is_some() && started.is_some_and(|s| s.users != lt.spec.users)
    } else {
        state.users.desired != users as i64
    };
    if due {
        tracing::info!(users, "desired users changed");
        let r = master.set_users(users).await;
        note(&mut state, r, "users");
    }
    let agents = lt.spec.agents.max(1) as u64;
    if state.agents.desired != agents as i64 {
        let r = master.set_agents(agents).await;
        note(&mut state, r, "agents");
    }
    let r = master.set_vars(&lt.spec.vars).await;
    note(&mut state, r, "vars");
    for t in throttles {
        let r = master.put_throttle(&t.name_any(), &t.spec).await;
        note(&mut state, r, "a throttle");
    }
    for c in coordinators {
        let r = master.put_coordinator(&c.name_any(), &c.spec).await;
        note(&mut state, r, "a coordinator");
    }
    let gone: Vec<String> = state
        .throttles
        .iter()
        .map(|t| t.name.clone())
        .filter(|n| !throttles.iter().any(|t| t.name_any() == *n))
        .collect();
    for n in gone {
        if let Err(e) = master.delete_throttle(&n).await {
            tracing::warn!("deleting throttle {n} at the master: {e}");
        }
    }
    let gone: Vec<String> = state
        .coordinators
        .iter()
        .map(|c| c.name.clone())
        .filter(|n| !coordinators.iter().any(|c| c.name_any() == *n))
        .collect();
    for n in gone {
        if let Err(e) = master.delete_coordinator(&n).await {
            tracing::warn!("deleting coordinator {n} at the master: {e}");
        }
    }
    state
}
