//! A LoadTest with `spec.metrics.remoteWrite` and a token Secret: its master pushes the
//! test's series to a real Prometheus (remote-write receiver on, on loopback), where the
//! HTTP API finds them with the labels test, namespace and step, the last pushed value
//! being the final count of the test's status.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams};
use murmuration_e2e::manifests;
use murmuration_e2e::prometheus::Prometheus;
use murmuration_e2e::util::{poll_until, scaled};
use murmuration_e2e::Result;

use crate::support::*;

/// The pushed series reach Prometheus, with their labels, up to the final figures.
pub async fn remote_write_reaches_prometheus(c: &Cluster) -> Result<()> {
    let Cluster {
        admin,
        kubelet,
        tests,
        ..
    } = c;
    let prom = Prometheus::start(&[]).await?;
    let yaml = format!(
        "apiVersion: v1
kind: Secret
metadata: {{name: prom-writer, namespace: {NS}}}
stringData: {{token: e2e-remote-write-token}}
---
apiVersion: murmuration.dev/v1alpha1
kind: LoadTest
metadata: {{name: pushed, namespace: {NS}}}
spec:
  users: 4
  duration: 6s
  vars: {{target: \"http://demo.{NS}.svc:8080\"}}
  scenario:
    http:
      baseUrl: \"{{{{vars.target}}}}\"
      steps:
        - request: {{name: home, path: /}}
        - think: {{duration: 200ms}}
  metrics:
    remoteWrite:
      url: http://{addr}/api/v1/write
      bearerTokenSecret: {{name: prom-writer, key: token}}
      interval: 1s
",
        addr = prom.addr()
    );
    manifests::apply_yaml(admin, &yaml, NS).await?;
    let st = wait_finished(tests, kubelet, "pushed", Duration::from_secs(90)).await?;
    let total = st["requests"]["total"].as_f64().unwrap_or(0.0);
    assert!(total > 0.0, "{st}");
    // The request counter with its three labels; its last value is the final count (the
    // master samples the end of the test and flushes before its pod goes).
    let expr =
        format!(r#"murmuration_requests_total{{test="pushed",namespace="{NS}",step="home"}}"#);
    let last = poll_until(
        "Prometheus: the pushed request counter at its final value",
        scaled(Duration::from_secs(30)),
        Duration::from_millis(500),
        &[],
        || async {
            let r = prom.query(&expr)?;
            let v: f64 = r.first()?["value"][1].as_str()?.parse().ok()?;
            (v == total).then_some(v)
        },
    )
    .await
    .inspect_err(|_| {
        eprintln!("{}", prom.log());
        eprintln!("{}", kubelet.dump_logs());
    })?;
    eprintln!("operator: remote-write: requests {last} in Prometheus = the status's");
    let p99 = format!(
        r#"histogram_quantile(0.99, sum by (le) (murmuration_request_duration_seconds_bucket{{test="pushed",namespace="{NS}",step="home"}}))"#
    );
    assert_eq!(prom.query(&p99).map(|r| r.len()), Some(1), "{p99}");
    tests
        .delete("pushed", &DeleteParams::default())
        .await
        .unwrap();
    Api::<Secret>::namespaced(admin.clone(), NS)
        .delete("prom-writer", &DeleteParams::default())
        .await
        .unwrap();
    assert_nothing_left(admin, "pushed").await?;
    Ok(())
}
