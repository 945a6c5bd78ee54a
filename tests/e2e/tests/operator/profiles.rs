//! Load profiles through the operator, from the examples of `manifests/examples/` as a
//! user applies them: a staged test scaled mid-profile (the person takes over, Event
//! `ProfileOverridden`), and an open model run to `Succeeded` with its arrivals in status.

use std::time::Duration;

use murmuration_e2e::manifests;
use murmuration_e2e::util::{poll_until, scaled};
use murmuration_e2e::{binaries, Result};

use crate::support::*;

/// The example's latency threshold is a figure of a quiet machine: raised to one any
/// machine meets, so that the run judges the profile, not speed.
const THRESHOLD: &str = "{metric: latency.p99, max: 250ms}";

fn example(file: &str) -> String {
    let path = binaries::workspace_root()
        .join("manifests/examples")
        .join(file);
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(THRESHOLD), "the {file} threshold moved");
    assert!(text.contains("demo.default.svc"), "the {file} target moved");
    text.replace("demo.default.svc", &format!("demo.{NS}.svc"))
        .replace(THRESHOLD, "{metric: latency.p99, max: 60s}")
}

/// `stages.yaml` ramps up; `kubectl scale` mid-ramp takes over: an Event
/// `ProfileOverridden`, the status leaves the profile, and exactly the users set run while
/// the ramp would have gone on climbing. Then `arrivals.yaml` runs to `Succeeded` with every
/// arrival of its schedule started or dropped, and counted in status.
pub async fn stages_overridden_and_arrivals_succeed(c: &Cluster) -> Result<()> {
    let Cluster {
        cp,
        admin,
        kubelet,
        tests,
        ..
    } = c;

    // (a) The stages: up to 40 users over 20 s, so ~2 a second.
    manifests::apply_yaml(admin, &example("stages.yaml"), NS).await?;
    let before = poll_until(
        "the stage profile ramping (10 users running, stage 1)",
        scaled(Duration::from_secs(90)),
        Duration::from_millis(100),
        &[],
        || async {
            let st = status_of(tests, "stages").await?;
            (st["users"]["running"].as_u64()? >= 10 && st["profile"]["stage"] == 1).then_some(st)
        },
    )
    .await
    .inspect_err(|_| eprintln!("{}", kubelet.dump_logs()))?;
    assert_ne!(before["profile"]["overridden"], true, "{before}");
    kubectl(cp, &["scale", "-n", NS, "lt/stages", "--replicas=5"]);
    poll_until(
        "Event ProfileOverridden",
        scaled(Duration::from_secs(30)),
        Duration::from_millis(250),
        &[],
        || async {
            let ev = events_of(cp, "stages", "reason=ProfileOverridden", &[]);
            ev.contains("ProfileOverridden").then_some(())
        },
    )
    .await?;
    wait_users("5 users after the scale", tests, kubelet, "stages", 2, 5).await?;
    // The ramp would plan 5 more users every few seconds from here: the status says the
    // profile stopped, and the users stay those set.
    let st = status_of(tests, "stages").await.expect("status");
    assert_eq!(st["profile"]["overridden"], true, "{st}");
    assert_eq!(st["profile"]["plannedUsers"], 5, "{st}");
    assert!(st["profile"]["stage"].is_null(), "{st}");
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < until {
        let st = status_of(tests, "stages").await.expect("status");
        assert_eq!(st["users"]["desired"], 5, "the profile came back: {st}");
        assert!(st["users"]["running"].as_u64().unwrap_or(0) <= 5, "{st}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    wait_users("still 5 users", tests, kubelet, "stages", 2, 5).await?;
    let events = events_of(cp, "stages", "reason=ProfileOverridden", &[]);
    assert!(events.contains("spec.users set to 5"), "{events}");
    patch_test(cp, "stages", r#"{"spec":{"stop":"Graceful"}}"#);
    let st = wait_finished(tests, kubelet, "stages", Duration::from_secs(60)).await?;
    assert_eq!(st["phase"], "Succeeded", "{st}");
    kubectl(cp, &["delete", "-n", NS, "lt/stages"]);
    assert_nothing_left(admin, "stages").await?;

    // (b) The arrivals: 50/s climbing to 200/s over 20 s, then 200/s for 20 s: 6,500
    // arrivals, each started or dropped, never lost (no agent dies here).
    manifests::apply_yaml(admin, &example("arrivals.yaml"), NS).await?;
    let running = poll_until(
        "arrivals running with a planned rate",
        scaled(Duration::from_secs(90)),
        Duration::from_millis(250),
        &[],
        || async {
            let st = status_of(tests, "arrivals").await?;
            (st["phase"] == "Running" && st["arrivals"]["plannedPerSecond"].as_f64()? > 0.0)
                .then_some(st)
        },
    )
    .await
    .inspect_err(|_| eprintln!("{}", kubelet.dump_logs()))?;
    eprintln!("operator: arrivals running: {}", running["arrivals"]);
    let st = wait_finished(tests, kubelet, "arrivals", Duration::from_secs(150)).await?;
    eprintln!("operator: arrivals finished: {st}");
    assert_eq!(st["phase"], "Succeeded", "{st}");
    assert_eq!(st["result"], "Passed", "{st}");
    let started = st["arrivals"]["started"]
        .as_u64()
        .expect("arrivals.started");
    let dropped = st["arrivals"]["dropped"]
        .as_u64()
        .expect("arrivals.dropped");
    assert_eq!(
        started + dropped,
        6_500,
        "every arrival started or dropped: {st}"
    );
    assert!(started > 0, "{st}");
    assert_eq!(
        st["requests"]["total"].as_u64(),
        Some(started),
        "one request per started arrival: {st}"
    );
    let events = events_of(cp, "arrivals", "reason=Finished", &[]);
    assert!(events.contains("completed"), "{events}");
    kubectl(cp, &["delete", "-n", NS, "lt/arrivals"]);
    assert_nothing_left(admin, "arrivals").await?;
    Ok(())
}
