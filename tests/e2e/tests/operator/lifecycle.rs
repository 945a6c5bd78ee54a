//! The end of tests, and many at once.

use std::time::{Duration, Instant};

use kube::api::ListParams;
use murmuration_e2e::manifests;
use murmuration_e2e::util::{poll_until, scaled};
use murmuration_e2e::Result;

use crate::support::*;

/// `cleanup {policy: Never, ttlSecondsAfterFinished}`: the pods stay after the end, and the
/// test goes (with everything it owns) once its time to live is over.
pub async fn cleanup_and_ttl(c: &Cluster) -> Result<()> {
    let Cluster {
        admin,
        kubelet,
        tests,
        pods,
        ..
    } = c;
    // cleanup {policy: Never, ttlSecondsAfterFinished}: the pods stay after the end, and
    // the test goes (with everything it owns) once its time to live is over.
    manifests::apply_yaml(
        admin,
        &format!(
            "apiVersion: murmuration.dev/v1alpha1
kind: LoadTest
metadata: {{name: brief, namespace: {NS}}}
spec:
  users: 2
  agents: 1
  duration: 2s
  cleanup: {{policy: Never, ttlSecondsAfterFinished: 3}}
  scenario:
    http:
      baseUrl: http://demo.{NS}.svc:8080
      steps:
        - request: {{path: /}}
        - think: {{duration: 100ms}}
"
        ),
        NS,
    )
    .await?;
    let st = wait_finished(tests, kubelet, "brief", Duration::from_secs(60)).await?;
    assert_eq!(st["phase"], "Succeeded", "{st}");
    let kept = pods
        .list(&ListParams::default().labels("murmuration.dev/loadtest=brief"))
        .await
        .unwrap();
    assert_eq!(kept.items.len(), 2, "policy Never keeps master and agent");
    let t = Instant::now();
    poll_until(
        "the brief test deleted after its TTL",
        scaled(Duration::from_secs(30)),
        Duration::from_millis(200),
        &[],
        || async { tests.get_opt("brief").await.ok()?.is_none().then_some(()) },
    )
    .await?;
    eprintln!(
        "operator: a finished test with a 3 s TTL went after {:?}",
        t.elapsed()
    );
    assert_nothing_left(admin, "brief").await?;

    Ok(())
}

/// Twenty tests at once: all run, the metrics count them, the operator's memory stays small.
pub async fn twenty_tests(c: &Cluster) -> Result<()> {
    let Cluster {
        cp,
        admin,
        kubelet,
        operator_name,
        tests,
        system_pods,
        ..
    } = c;
    // Twenty tests at once: the operator's memory.
    for i in 0..20 {
        manifests::apply_yaml(
            admin,
            &format!(
                "apiVersion: murmuration.dev/v1alpha1
kind: LoadTest
metadata: {{name: many-{i}, namespace: {NS}}}
spec:
  users: 5
  agents: 1
  scenario:
    http:
      baseUrl: http://demo.{NS}.svc:8080
      steps:
        - think: {{duration: 1s}}
"
            ),
            NS,
        )
        .await?;
    }
    poll_until(
        "20 tests running",
        scaled(Duration::from_secs(120)),
        Duration::from_millis(500),
        &[],
        || async {
            let list = tests.list(&ListParams::default()).await.ok()?;
            let running = list
                .items
                .iter()
                .filter(|t| {
                    t.status
                        .as_ref()
                        .is_some_and(|s| s.users.as_ref().is_some_and(|u| u.running == 5))
                })
                .count();
            (running == 20).then_some(())
        },
    )
    .await
    .inspect_err(|_| eprintln!("{}", kubelet.dump_logs()))?;
    // The tests by phase, in the operator's metrics (refreshed every 10 s).
    poll_until(
        "20 Running tests in the operator's metrics",
        scaled(Duration::from_secs(20)),
        Duration::from_millis(500),
        &[],
        || async {
            let n = metric(
                kubelet,
                operator_name,
                "murmuration_operator_tests",
                "phase=\"Running\"",
            )?;
            (n == 20.0).then_some(())
        },
    )
    .await?;
    // Two more refreshes of every test, then the operator's resident memory.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let operator_pod = system_pods
        .list(&ListParams::default().labels("app.kubernetes.io/component=operator"))
        .await
        .unwrap()
        .items
        .remove(0);
    let pids = kubelet.pod_pids(SYSTEM, &operator_pod.metadata.name.unwrap());
    let rss_kib: u64 = pids
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .sum();
    eprintln!(
        "operator: resident memory with 20 running LoadTests: {:.1} MiB",
        rss_kib as f64 / 1024.0
    );
    assert!(rss_kib > 0, "no operator process found");
    assert!(
        rss_kib < 200 * 1024,
        "the operator uses {rss_kib} KiB with 20 tests"
    );
    kubectl(cp, &["delete", "-n", NS, "lt", "--all"]);
    for i in 0..20 {
        assert_nothing_left(admin, &format!("many-{i}")).await?;
    }

    Ok(())
}
