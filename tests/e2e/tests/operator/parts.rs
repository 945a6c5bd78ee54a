//! A test's Throttles and Coordinators, live.

use std::time::{Duration, Instant};

use kube::api::{Api, DeleteParams};
use murmuration_crds::{Coordinator, Throttle};
use murmuration_e2e::manifests;
use murmuration_e2e::util::{poll_until, scaled};
use murmuration_e2e::Result;

use crate::support::*;

/// A Throttle edited live changes the measured rate, and a Coordinator's status shows its
/// groups, without the operator's own status writes making it reconcile in a loop, nor
/// apply the test's objects again.
pub async fn throttles_and_coordinators_live(c: &Cluster) -> Result<()> {
    let Cluster {
        admin,
        kubelet,
        operator_name,
        tests,
        ..
    } = c;
    // A Throttle edited live: the measured rate follows.
    let throttled = format!(
        "apiVersion: murmuration.dev/v1alpha1
kind: Throttle
metadata: {{name: paced-rate, namespace: {NS}}}
spec: {{loadTest: paced, rate: 100, interval: 1s}}
---
apiVersion: murmuration.dev/v1alpha1
kind: Coordinator
metadata: {{name: paced-pairs, namespace: {NS}}}
spec:
  loadTest: paced
  plan:
    - {{users: 2, action: pairs}}
---
apiVersion: murmuration.dev/v1alpha1
kind: LoadTest
metadata: {{name: paced, namespace: {NS}}}
spec:
  users: 20
  agents: 1
  scenario:
    http:
      baseUrl: http://demo.{NS}.svc:8080
      steps:
        - throttle: paced-rate
        - request: {{name: hit, path: /}}
        - coordinate: paced-pairs
"
    );
    manifests::apply_yaml(admin, &throttled, NS).await?;
    let throttles: Api<Throttle> = Api::namespaced(admin.clone(), NS);
    wait_users("20 paced users", tests, kubelet, "paced", 1, 20).await?;
    // What the Throttle's status says was executed, sampled often, between the first and
    // the last change seen: (requests, seconds between the two observations). Each
    // figure was true at some moment up to a status period (2 s) and a write before it was
    // seen, so the true span of those requests may be longer than the observed one by
    // that much, and not shorter than it by more than that: bounds hold with that slack.
    // (The exact "never over the limit" is the agent tests' job, on the throttles' grant
    // logs; here the figures only have to reach the status and follow the edit.)
    let executed_over = |secs: u64| {
        let throttles = throttles.clone();
        async move {
            let mut changes: Vec<(Instant, i64)> = Vec::new();
            let mut last = None;
            let end = Instant::now() + Duration::from_secs(secs);
            while Instant::now() < end {
                let v = throttles.get("paced-rate").await.ok()?.status?.executed;
                if last != Some(v) {
                    changes.push((Instant::now(), v));
                    last = Some(v);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // The first sample may be stale: measure from the first change on.
            let (t0, v0) = *changes.get(1)?;
            let (t1, v1) = *changes.last()?;
            (t1 > t0).then(|| ((v1 - v0) as f64, (t1 - t0).as_secs_f64()))
        }
    };
    let status_lag = scaled(Duration::from_millis(2500)).as_secs_f64();
    // The status follows within 2 s: measure over windows long enough for that.
    let reconciles = || {
        metric(
            kubelet,
            operator_name,
            "murmuration_operator_reconciles_total",
            "",
        )
    };
    let writes = || {
        metric(
            kubelet,
            operator_name,
            "murmuration_operator_status_writes_total",
            "",
        )
    };
    let applies = || {
        metric(
            kubelet,
            operator_name,
            "murmuration_operator_applies_total",
            "",
        )
    };
    let (r0, w0, t0) = (reconciles().unwrap(), writes().unwrap(), Instant::now());
    let a0 = applies().unwrap();
    let (fast_n, fast_s) = executed_over(9).await.expect("throttle status");
    let fast = fast_n / fast_s;
    // The operator's own writes of the Throttle's live figures do not make it reconcile
    // again: one steady test costs a reconcile and a status write every 2 s, not a loop.
    let secs = t0.elapsed().as_secs_f64();
    let per_s = (reconciles().unwrap() - r0) / secs;
    let writes_per_s = (writes().unwrap() - w0) / secs;
    eprintln!(
        "operator: {per_s:.2} reconciles/s and {writes_per_s:.2} status writes/s with one steady throttled test"
    );
    assert!(
        writes_per_s <= 0.6,
        "{writes_per_s} status writes/s for one steady test"
    );
    assert!(per_s < 2.0, "{per_s} reconciles/s for one steady test");
    // Nor does it apply the test's Service and StatefulSet again: nothing they derive from
    // changed.
    let applied = applies().unwrap() - a0;
    assert_eq!(applied, 0.0, "{applied} applies while nothing changed");
    manifests::apply_yaml(
        admin,
        &format!("apiVersion: murmuration.dev/v1alpha1\nkind: Throttle\nmetadata: {{name: paced-rate, namespace: {NS}}}\nspec: {{loadTest: paced, rate: 20, interval: 1s}}\n"),
        NS,
    )
    .await?;
    // The edit in force: the agents report the new rate back into the Throttle's status.
    poll_until(
        "the edited rate in the Throttle's status",
        scaled(Duration::from_secs(30)),
        Duration::from_millis(200),
        &[],
        || async {
            let st = throttles.get("paced-rate").await.ok()?.status?;
            (st.rate == 20).then_some(())
        },
    )
    .await?;
    let (slow_n, slow_s) = executed_over(9).await.expect("throttle status");
    let slow = slow_n / slow_s;
    eprintln!("operator: throttle 100/s measured {fast:.1}/s; edited to 20/s measured {slow:.1}/s");
    // Within the limit, with the status lag as slack (see `executed_over`); above a floor
    // that any machine reaches (it runs at all); and clearly apart, so that the edit shows.
    assert!(
        fast_n <= 100.0 * (fast_s + status_lag),
        "{fast_n} executed in {fast_s:.1} s of status at a limit of 100/s"
    );
    assert!(
        slow_n <= 20.0 * (slow_s + status_lag),
        "{slow_n} executed in {slow_s:.1} s of status at a limit of 20/s"
    );
    assert!(fast >= 30.0, "{fast}/s at a limit of 100/s");
    assert!(slow >= 1.0, "{slow}/s at a limit of 20/s");
    assert!(
        slow_n / (slow_s + status_lag) < fast_n / (fast_s + status_lag),
        "the edit to 20/s does not show: {slow:.1}/s after, {fast:.1}/s before"
    );
    // The Coordinator's live figures: users paired across the test, in its status.
    let coordinators: Api<Coordinator> = Api::namespaced(admin.clone(), NS);
    let groups = poll_until(
        "the Coordinator's groups in its status",
        scaled(Duration::from_secs(10)),
        Duration::from_millis(200),
        &[],
        || async {
            let st = coordinators.get("paced-pairs").await.ok()?.status?;
            (st.groups > 0).then_some(st.groups)
        },
    )
    .await?;
    eprintln!("operator: coordinator paced-pairs formed {groups} pairs so far");
    tests
        .delete("paced", &DeleteParams::default())
        .await
        .unwrap();
    throttles
        .delete("paced-rate", &DeleteParams::default())
        .await
        .unwrap();
    coordinators
        .delete("paced-pairs", &DeleteParams::default())
        .await
        .unwrap();
    assert_nothing_left(admin, "paced").await?;

    Ok(())
}
