//! The operator and the masters going away while tests run.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams};
use murmuration_e2e::manifests;
use murmuration_e2e::util::{poll_until, scaled};
use murmuration_e2e::Result;

use crate::support::*;
use k8s_openapi::api::coordination::v1::Lease;

/// The operator killed (SIGKILL) in a loop while a test runs, and the test scaled while it
/// is down: each restarted operator takes the edit up, creates nothing twice (the same
/// master pod and token), and does not announce a transition again. Then the master pod
/// deleted: a new master takes the agents' users back, none twice, and no agent is said
/// to be lost.
pub async fn operator_killed_while_scaling(c: &Cluster) -> Result<()> {
    let Cluster {
        cp,
        admin,
        kubelet,
        operator_name,
        tests,
        pods,
        system_pods,
        ..
    } = c;
    // The operator killed (SIGKILL) in a loop while a test runs, and the test scaled while
    // it is down: each restarted operator takes the edit up, creates nothing twice (the
    // same master pod and token), and does not announce a transition again.
    manifests::apply_yaml(admin, &shop(40).replace("name: shop", "name: sturdy"), NS).await?;
    wait_users("sturdy: 40 users", tests, kubelet, "sturdy", 2, 40).await?;
    let master_uid = pods.get("sturdy-master").await.unwrap().metadata.uid;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), NS);
    let token = secrets.get("sturdy-token").await.unwrap().data;
    for (round, users) in [60u64, 30, 50].into_iter().enumerate() {
        let restarts = |p: &Pod| {
            p.status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .map(|c| c.iter().map(|c| c.restart_count).sum::<i32>())
                .unwrap_or(0)
        };
        let before = restarts(&system_pods.get(operator_name).await.unwrap());
        let groups = kubelet.pod_pids(SYSTEM, operator_name);
        assert!(!groups.is_empty(), "no operator process");
        for g in groups {
            murmuration_e2e::procs::signal_group(g, libc::SIGKILL);
        }
        kubectl(
            cp,
            &[
                "scale",
                "-n",
                NS,
                "lt/sturdy",
                &format!("--replicas={users}"),
            ],
        );
        poll_until(
            format!("the operator restarted (round {round})"),
            scaled(Duration::from_secs(30)),
            Duration::from_millis(100),
            &[],
            || async {
                let p = system_pods.get(operator_name).await.ok()?;
                (restarts(&p) > before).then_some(())
            },
        )
        .await?;
        let took = wait_users(
            &format!("sturdy: {users} users after an operator crash"),
            tests,
            kubelet,
            "sturdy",
            2,
            users,
        )
        .await?;
        eprintln!("operator: SIGKILL + scale to {users}: running after {took:?}");
    }
    assert_eq!(
        pods.get("sturdy-master").await.unwrap().metadata.uid,
        master_uid,
        "the master was created again"
    );
    assert_eq!(
        secrets.get("sturdy-token").await.unwrap().data,
        token,
        "the token changed"
    );
    let started = events_of(cp, "sturdy", "reason=Started", &["-o", "name"]);
    assert_eq!(
        started.lines().count(),
        1,
        "Started told more than once: {started}"
    );

    // The master pod deleted mid-test: the operator creates a new one, which takes the
    // agents' users back (each once), and no agent is said to be lost: none was.
    pods.delete("sturdy-master", &DeleteParams::default())
        .await
        .unwrap();
    poll_until(
        "a new sturdy master, ready",
        scaled(Duration::from_secs(60)),
        Duration::from_millis(100),
        &[],
        || async {
            let p = pods.get("sturdy-master").await.ok()?;
            (p.metadata.uid != master_uid && is_ready(&p)).then_some(())
        },
    )
    .await
    .inspect_err(|_| eprintln!("{}", kubelet.dump_logs()))?;
    wait_users(
        "sturdy: 50 users after its master was replaced",
        tests,
        kubelet,
        "sturdy",
        2,
        50,
    )
    .await?;
    poll_until(
        "sturdy: both agents back with the new master",
        scaled(Duration::from_secs(30)),
        Duration::from_millis(100),
        &[],
        || async {
            let st = status_of(tests, "sturdy").await?;
            (st["phase"] == "Running" && st["agents"]["ready"] == 2 && st["users"]["running"] == 50)
                .then_some(())
        },
    )
    .await?;
    let lost = events_of(cp, "sturdy", "reason=AgentLost", &["-o", "name"]);
    assert!(!lost.contains("event"), "an agent said lost: {lost}");
    tests
        .delete("sturdy", &DeleteParams::default())
        .await
        .unwrap();
    assert_nothing_left(admin, "sturdy").await?;

    Ok(())
}

/// The operator pod deleted (SIGTERM): it finishes, gives its Lease up, and the Deployment's
/// next pod leads before the lease (15 s) would have expired: judged on the Lease's own
/// times, not on how fast this machine runs the hand-over.
pub async fn lease_handed_over(c: &Cluster) -> Result<()> {
    let Cluster {
        admin,
        kubelet,
        operator_name,
        system_pods,
        ..
    } = c;
    let leases: Api<Lease> = Api::namespaced(admin.clone(), SYSTEM);
    let before = leases
        .get("murmuration-operator")
        .await
        .unwrap()
        .spec
        .unwrap_or_default();
    let renewed = before.renew_time.expect("the leader renews its Lease").0;
    let lease_s = i64::from(before.lease_duration_seconds.expect("a lease duration"));
    let t = Instant::now();
    system_pods
        .delete(operator_name, &DeleteParams::default())
        .await
        .unwrap();
    let next = poll_until(
        "another operator pod leading",
        scaled(Duration::from_secs(30)),
        Duration::from_millis(100),
        &[],
        || async {
            let holder = leases
                .get("murmuration-operator")
                .await
                .ok()?
                .spec?
                .holder_identity?;
            (holder != *operator_name).then_some(holder)
        },
    )
    .await
    .inspect_err(|_| eprintln!("{}", kubelet.dump_logs()))?;
    let took = t.elapsed();
    eprintln!("operator: pod deleted → {next} leading after {took:?}");
    // Taken over by expiry, the next leader would have acquired it at least a lease
    // duration after the last renewal it saw (which is at or after `renewed`).
    let acquired = leases
        .get("murmuration-operator")
        .await
        .unwrap()
        .spec
        .and_then(|s| s.acquire_time)
        .expect("the new leader's acquire time")
        .0;
    assert!(
        acquired < renewed + k8s_openapi::jiff::SignedDuration::from_secs(lease_s),
        "the Lease was taken over by expiry (renewed {renewed}, acquired {acquired}, {lease_s} s), not handed over"
    );
    Ok(())
}
