//! A test runs, scales and stops as `kubectl` asks.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams};
use murmuration_e2e::manifests;
use murmuration_e2e::prometheus::{Prometheus, ScrapeJob};
use murmuration_e2e::util::{poll_until, scaled};
use murmuration_e2e::Result;

use crate::support::*;

/// `kubectl apply`: Running with all its users on two agents, each id once; `kubectl scale`
/// and `kubectl patch` of `spec.users` and `spec.agents` (up and down) change the running
/// set to exactly 1..N; a deleted agent pod comes back and no user is lost or doubled; an
/// edit of a field read at the start gets an `EditIgnored` Event; a real Prometheus scrapes
/// the master and finds the test's request rate, errors by kind and latency histogram with
/// their labels; `spec.stop` ends the test with its result and report.
pub async fn runs_scales_and_stops(c: &Cluster) -> Result<()> {
    let Cluster {
        cp,
        admin,
        kubelet,
        tests,
        pods,
        ..
    } = c;
    // kubectl apply: Running with all its users, on two agents, each id once.
    let t = Instant::now();
    manifests::apply_yaml(admin, &shop(100), NS).await?;
    wait_users("100 users running", tests, kubelet, "shop", 2, 100).await?;
    let to_running = t.elapsed();
    eprintln!("operator: kubectl apply → 100 users running on 2 agents: {to_running:?}");
    let st = status_of(tests, "shop").await.unwrap();
    assert_eq!(st["phase"], "Running", "{st}");
    assert_eq!(st["agents"]["ready"], 2, "{st}");
    let table = kubectl(cp, &["get", "lt", "-n", NS]);
    eprintln!("{table}");
    for column in [
        "PHASE", "USERS", "RUNNING", "AGENTS", "RPS", "P99", "RESULT", "AGE",
    ] {
        assert!(table.contains(column), "no column {column}: {table}");
    }
    assert!(table.contains("Running"), "{table}");
    // A real Prometheus scrapes the master (its /metrics needs no token) at the address
    // the kubelet gave it, every second, while the test is scaled below.
    let master_ip = kubelet
        .pod_ip(NS, "shop-master")
        .expect("the master's pod IP");
    let prom = Prometheus::start(&[ScrapeJob {
        name: "murmuration-masters".into(),
        targets: vec![format!("{master_ip}:8080")],
        interval_s: 1,
    }])
    .await?;
    poll_until(
        "a request rate in the status",
        scaled(Duration::from_secs(20)),
        Duration::from_millis(200),
        &[],
        || async {
            let st = status_of(tests, "shop").await?;
            (st["requests"]["perSecond"].as_f64()? > 0.0).then_some(())
        },
    )
    .await?;

    // kubectl scale, up and down; kubectl patch of spec.users.
    let t = Instant::now();
    kubectl(cp, &["scale", "-n", NS, "lt/shop", "--replicas=150"]);
    wait_users(
        "150 users after kubectl scale",
        tests,
        kubelet,
        "shop",
        2,
        150,
    )
    .await?;
    eprintln!(
        "operator: kubectl scale 100 → 150 running: {:?}",
        t.elapsed()
    );
    kubectl(cp, &["scale", "-n", NS, "lt/shop", "--replicas=40"]);
    wait_users(
        "40 users after kubectl scale",
        tests,
        kubelet,
        "shop",
        2,
        40,
    )
    .await?;
    patch_test(cp, "shop", r#"{"spec":{"users":60}}"#);
    wait_users(
        "60 users after kubectl patch",
        tests,
        kubelet,
        "shop",
        2,
        60,
    )
    .await?;

    // An edit the running test cannot take (its master read it at the start) is not
    // silently dropped: a Warning Event names the field, and the test goes on as it was.
    patch_test(cp, "shop", r#"{"spec":{"duration":"1h"}}"#);
    poll_until(
        "an EditIgnored Event naming spec.duration",
        scaled(Duration::from_secs(15)),
        Duration::from_millis(300),
        &[],
        || async {
            let events = events_of(cp, "shop", "reason=EditIgnored", &[]);
            events.contains("spec.duration changed").then_some(())
        },
    )
    .await?;
    let st = status_of(tests, "shop").await.expect("status");
    assert_eq!(st["phase"], "Running", "{st}");
    assert_eq!(st["users"]["running"], 60, "{st}");

    // spec.agents edited live: a third agent joins and takes users started after it
    // (running users stay where they are); back to two, the users of the one that goes
    // run on the others. Each id runs once all along the way.
    let agents_ready = |n: i64| {
        let tests = tests.clone();
        async move {
            poll_until(
                format!("{n} agents ready in the status"),
                scaled(Duration::from_secs(60)),
                Duration::from_millis(100),
                &[],
                || async {
                    let st = status_of(&tests, "shop").await?;
                    (st["agents"]["ready"] == n && st["agents"]["desired"] == n).then_some(())
                },
            )
            .await
        }
    };
    patch_test(cp, "shop", r#"{"spec":{"agents":3}}"#);
    agents_ready(3).await?;
    kubectl(cp, &["scale", "-n", NS, "lt/shop", "--replicas=90"]);
    wait_users("90 users on 3 agents", tests, kubelet, "shop", 3, 90).await?;
    let on_third = users_of(kubelet, "shop", 3).unwrap()[2].len();
    eprintln!("operator: agents 2 → 3, then users 60 → 90: {on_third} users on the new agent");
    assert!(on_third > 0, "the new agent runs no user");
    patch_test(cp, "shop", r#"{"spec":{"agents":2,"users":60}}"#);
    agents_ready(2).await?;
    poll_until(
        "shop-agent-2 gone",
        scaled(Duration::from_secs(30)),
        Duration::from_millis(100),
        &[],
        || async {
            pods.get_opt("shop-agent-2")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await?;
    wait_users("60 users on 2 agents again", tests, kubelet, "shop", 2, 60).await?;

    // An agent pod deleted: a new one takes its name and place; no user lost or doubled.
    let before = pods.get("shop-agent-1").await.unwrap().metadata.uid;
    pods.delete("shop-agent-1", &DeleteParams::default())
        .await
        .unwrap();
    poll_until(
        "shop-agent-1 replaced and ready",
        scaled(Duration::from_secs(60)),
        Duration::from_millis(200),
        &[],
        || async {
            let p = pods.get("shop-agent-1").await.ok()?;
            (p.metadata.uid != before && is_ready(&p)).then_some(())
        },
    )
    .await
    .inspect_err(|_| eprintln!("{}", kubelet.dump_logs()))?;
    wait_users(
        "60 users after an agent was replaced",
        tests,
        kubelet,
        "shop",
        2,
        60,
    )
    .await?;
    let events = events_of(cp, "shop", "", &[]);
    assert!(events.contains("Started"), "{events}");
    assert!(events.contains("Scaled"), "{events}");
    // Prometheus found the test's request rate, its errors by kind and its latency
    // histogram, with the labels test, namespace and step.
    let labels = format!(r#"test="shop",namespace="{NS}",step="home""#);
    for (what, expr) in [
        (
            "the request rate",
            format!("sum(rate(murmuration_requests_total{{{labels}}}[10s])) > 0"),
        ),
        (
            "the errors by kind",
            format!(r#"murmuration_errors_total{{{labels},kind="status"}}"#),
        ),
        (
            "the p99 from the latency histogram",
            format!(
                "histogram_quantile(0.99, sum by (le) (rate(murmuration_request_duration_seconds_bucket{{{labels}}}[10s]))) > 0"
            ),
        ),
        (
            "the running users",
            format!(r#"murmuration_users{{test="shop",namespace="{NS}",state="running"}} > 0"#),
        ),
    ] {
        let found = poll_until(
            format!("Prometheus: {what}"),
            scaled(Duration::from_secs(30)),
            Duration::from_millis(500),
            &[],
            || async { prom.query(&expr).filter(|r| !r.is_empty()) },
        )
        .await
        .inspect_err(|_| eprintln!("{}", prom.log()))?;
        eprintln!("operator: Prometheus: {what}: {}", found[0]["value"]);
    }
    drop(prom);

    // spec.stop: the test ends as any other (result, report), before its end.
    patch_test(cp, "shop", r#"{"spec":{"stop":"Graceful"}}"#);
    let st = wait_finished(tests, kubelet, "shop", Duration::from_secs(30)).await?;
    assert!(st["result"].is_string(), "{st}");
    let events = events_of(cp, "shop", "reason=Finished", &[]);
    assert!(events.contains("ended by stopped"), "{events}");
    Api::<ConfigMap>::namespaced(admin.clone(), NS)
        .get("shop-report")
        .await
        .expect("the stopped test's report is kept");
    tests
        .delete("shop", &DeleteParams::default())
        .await
        .unwrap();
    assert_nothing_left(admin, "shop").await?;

    Ok(())
}
