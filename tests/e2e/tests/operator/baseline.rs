//! Run over run on the cluster: `spec.baseline` names an earlier LoadTest's stored report;
//! the master judges relative thresholds against it and the comparison lands in status.

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use murmuration_e2e::manifests;
use murmuration_e2e::util::{poll_until, scaled};
use murmuration_e2e::Result;

use crate::support::*;

/// A one-user test of `times` requests `home`, with a relative threshold on their count
/// and `baseline` (YAML) as its `spec.baseline`.
fn counted(name: &str, times: u32, baseline: &str) -> String {
    format!(
        "apiVersion: murmuration.dev/v1alpha1
kind: LoadTest
metadata: {{name: {name}, namespace: {NS}}}
spec:
  users: 1
  agents: 1
  repeat: {{times: {times}}}
{baseline}  scenario:
    http:
      baseUrl: http://demo.{NS}.svc:8080
      steps:
        - request: {{name: home, path: /}}
  thresholds:
    - {{metric: requests.count, step: home, maxDecrease: 10%}}
"
    )
}

/// The first run is the baseline (its relative threshold skipped: it has none); a second
/// one with a quarter of its requests fails against it, with each step's change in
/// status; one whose baseline is not stored is not blocked and skips the threshold.
pub async fn relative_to_an_earlier_test(c: &Cluster) -> Result<()> {
    let Cluster {
        cp,
        admin,
        kubelet,
        tests,
        ..
    } = c;
    let within = Duration::from_secs(120);
    manifests::apply_yaml(admin, &counted("monday", 20, ""), NS).await?;
    let st = wait_finished(tests, kubelet, "monday", within).await?;
    assert_eq!(st["result"], "Passed", "{st}");
    assert!(st.get("baseline").is_none(), "{st}");
    assert!(
        st["thresholds"][0]["observed"]
            .as_str()
            .unwrap()
            .contains("no baseline"),
        "{st}"
    );
    assert!(st["iterationMs"]["p50"].as_f64().unwrap() > 0.0, "{st}");
    // Its stored report is the next test's baseline.
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), NS);
    poll_until(
        "monday's report stored",
        scaled(Duration::from_secs(30)),
        Duration::from_millis(250),
        &[],
        || async { cms.get_opt("monday-report").await.ok()?.map(|_| ()) },
    )
    .await?;

    manifests::apply_yaml(
        admin,
        &counted("tuesday", 5, "  baseline: {report: monday}\n"),
        NS,
    )
    .await?;
    let st = wait_finished(tests, kubelet, "tuesday", within).await?;
    assert_eq!(st["result"], "Failed", "{st}");
    let t = &st["thresholds"][0];
    assert_eq!(t["passed"], false, "{st}");
    // 5 requests against 20.
    assert!(
        t["observed"]
            .as_str()
            .unwrap()
            .starts_with("-75.0% (5 vs 20)"),
        "{st}"
    );
    assert_eq!(st["baseline"]["test"], "monday", "{st}");
    assert_eq!(st["baseline"]["steps"][0]["name"], "home", "{st}");

    manifests::apply_yaml(
        admin,
        &counted("wednesday", 5, "  baseline: {report: never-ran}\n"),
        NS,
    )
    .await?;
    let st = wait_finished(tests, kubelet, "wednesday", within).await?;
    assert_eq!(st["result"], "Passed", "{st}");
    assert!(
        st["thresholds"][0]["observed"]
            .as_str()
            .unwrap()
            .contains("no baseline"),
        "{st}"
    );
    for t in ["monday", "tuesday", "wednesday"] {
        kubectl(cp, &["delete", "-n", NS, &format!("lt/{t}")]);
        assert_nothing_left(admin, t).await?;
    }
    Ok(())
}
