//! Tests that fail: a failed threshold as CI sees it, and masters that do not start,
//! saying why.

use std::process::Command;
use std::time::{Duration, Instant};

use murmuration_e2e::manifests;
use murmuration_e2e::util::scaled;
use murmuration_e2e::Result;

use crate::support::*;

/// CI: `murmur wait` follows a test whose threshold fails and exits 1, with its JUnit XML
/// naming the failed threshold; kubectl's wait sees condition Finished with reason Failed.
pub async fn failed_threshold_in_ci(c: &Cluster) -> Result<()> {
    let Cluster {
        cp,
        admin,
        murmur,
        tests,
        ..
    } = c;
    // CI: `murmur wait` follows a test whose threshold fails and exits 1, with its JUnit
    // XML naming the failed threshold; kubectl's wait sees reason Failed.
    let ci = format!(
        "apiVersion: murmuration.dev/v1alpha1
kind: LoadTest
metadata: {{name: ci, namespace: {NS}}}
spec:
  users: 1
  agents: 1
  duration: 3s
  cleanup: {{policy: Always}}
  scenario:
    http:
      baseUrl: http://demo.{NS}.svc:8080
      steps:
        - request: {{name: home, path: /}}
  thresholds:
    - {{metric: errors.ratio, max: \"0.01\"}}
    - {{metric: requests.count, step: home, max: \"1\"}}
"
    );
    manifests::apply_yaml(admin, &ci, NS).await?;
    let out = tempfile::tempdir().unwrap();
    let junit = out.path().join("ci.xml");
    let waited = Command::new(murmur)
        .args(["wait", "ci", "-n", NS, "--plain", "--progress-every", "1"])
        .args([
            "--timeout",
            &format!("{}s", scaled(Duration::from_secs(90)).as_secs()),
        ])
        .arg("--junit")
        .arg(&junit)
        .env("KUBECONFIG", cp.admin_kubeconfig())
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&waited.stdout),
        String::from_utf8_lossy(&waited.stderr)
    );
    assert_eq!(waited.status.code(), Some(1), "murmur wait: {said}");
    assert!(said.contains("result: FAILED"), "{said}");
    assert!(said.contains("✗ requests.count of home"), "{said}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains("tests=\"2\" failures=\"1\""),
        "two cases, one failed: {xml}"
    );
    assert!(
        xml.contains("<testcase name=\"requests.count of home ≤ 1\"")
            && xml.contains("<failure message=\"observed"),
        "{xml}"
    );
    kubectl(
        cp,
        &[
            "wait",
            "-n",
            NS,
            "--for=condition=Finished",
            "--timeout=10s",
            "lt/ci",
        ],
    );
    let st = status_of(tests, "ci").await.unwrap();
    assert!(
        st["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Finished" && c["reason"] == "Failed"),
        "{st}"
    );
    kubectl(cp, &["delete", "-n", NS, "lt/ci"]);
    assert_nothing_left(admin, "ci").await?;

    Ok(())
}

/// A test whose master never answers (an image this cluster cannot run): Failed once its
/// start barrier and the operator's grace are over, with the master pod's state.
pub async fn master_never_answers(c: &Cluster) -> Result<()> {
    let Cluster {
        cp,
        admin,
        kubelet,
        tests,
        ..
    } = c;
    // A test whose master never answers (an image this cluster cannot run): Failed once its
    // start barrier and the operator's grace (2 s, from the chart's values) are over, with
    // the master pod's state as the reason.
    manifests::apply_yaml(
        admin,
        &format!(
            "apiVersion: murmuration.dev/v1alpha1
kind: LoadTest
metadata: {{name: stuck, namespace: {NS}}}
spec:
  users: 1
  agents: 1
  start: {{waitForAgents: 1s}}
  agent: {{image: registry.invalid/not-murmur:1}}
  scenario:
    http:
      baseUrl: http://demo.{NS}.svc:8080
      steps:
        - request: {{path: /}}
"
        ),
        NS,
    )
    .await?;
    let st = wait_finished(tests, kubelet, "stuck", Duration::from_secs(30)).await?;
    assert_eq!(st["phase"], "Failed", "{st}");
    assert_eq!(st["result"], "Failed", "{st}");
    let why = st["message"].as_str().unwrap();
    assert!(
        why.contains("did not answer") && why.contains("ImageNotRunnable"),
        "{st}"
    );
    kubectl(cp, &["delete", "-n", NS, "lt/stuck"]);
    assert_nothing_left(admin, "stuck").await?;

    Ok(())
}

/// A master that exits at start (a custom scenario the image lacks: the operator's own
/// validation cannot know the image's scenarios) fails its test within the grace (2 s,
/// from the chart's values), long before its start barrier, with the master's own error:
/// in the status, in a Warning Event, and in `kubectl describe pod` (the container's
/// termination message).
pub async fn master_exits_at_start(c: &Cluster) -> Result<()> {
    let Cluster {
        cp,
        admin,
        kubelet,
        tests,
        ..
    } = c;
    let t = Instant::now();
    manifests::apply_yaml(
        admin,
        &format!(
            "apiVersion: murmuration.dev/v1alpha1
kind: LoadTest
metadata: {{name: crash, namespace: {NS}}}
spec:
  users: 1
  agents: 1
  start: {{waitForAgents: 10m}}
  scenario:
    custom: {{name: checkout-in-rust}}
"
        ),
        NS,
    )
    .await?;
    let st = wait_finished(tests, kubelet, "crash", Duration::from_secs(60)).await?;
    eprintln!(
        "operator: a master that exits at start failed its test after {:?}",
        t.elapsed()
    );
    assert_eq!(st["phase"], "Failed", "{st}");
    let why = st["message"].as_str().unwrap_or_default();
    assert!(
        why.contains("the master exited with code 2") && why.contains("checkout-in-rust"),
        "{st}"
    );
    assert!(
        st["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Ready"
                && c["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("checkout-in-rust")),
        "{st}"
    );
    let events = events_of(cp, "crash", "reason=Finished,type=Warning", &[]);
    assert!(events.contains("checkout-in-rust"), "{events}");
    let described = kubectl(cp, &["describe", "pod", "-n", NS, "crash-master"]);
    assert!(
        described.contains("Terminated") && described.contains("checkout-in-rust"),
        "{described}"
    );
    kubectl(cp, &["delete", "-n", NS, "lt/crash"]);
    assert_nothing_left(admin, "crash").await?;
    Ok(())
}
