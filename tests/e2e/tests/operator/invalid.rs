//! Invalid tests: refused by the schema, or `Invalid` with the field named and no pod.

use std::process::Command;
use std::time::Duration;

use kube::api::ListParams;
use murmuration_e2e::manifests;
use murmuration_e2e::util::{poll_until, scaled};
use murmuration_e2e::Result;

use crate::support::*;

/// What the schema refuses never gets in; an invalid LoadTest gets condition `Invalid` and an
/// Event naming the field, and nothing is created; fixed, `kubectl wait
/// --for=condition=Finished` returns when it ends, and it keeps its result and report
/// (`murmur report`) after its pods are gone; `kubectl delete` leaves nothing behind.
pub async fn invalid_then_fixed(c: &Cluster) -> Result<()> {
    let Cluster {
        cp,
        admin,
        kubelet,
        murmur,
        tests,
        pods,
        ..
    } = c;
    // An invalid LoadTest: condition Invalid and an Event naming the field, nothing created;
    // fixed, it runs.
    let bad = format!(
        "apiVersion: murmuration.dev/v1alpha1
kind: LoadTest
metadata: {{name: bad, namespace: {NS}}}
spec:
  users: 1
  agents: 1
  duration: 3s
  scenario:
    http:
      baseUrl: http://demo.{NS}.svc:8080
      steps:
        - throttle: nowhere
        - request: {{path: /}}
"
    );
    // What the schema refuses never gets in (the README's examples).
    let apply = |manifest: String| {
        cp.kubectl()
            .args(["apply", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().unwrap().write_all(manifest.as_bytes())?;
                child.wait_with_output()
            })
            .unwrap()
    };
    let refused = apply(bad.replace("users: 1", "users: -5"));
    assert!(
        !refused.status.success(),
        "a negative user count was accepted"
    );
    let refused = apply(bad.replace("duration: 3s", "duration: ten seconds"));
    let said = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(
        !refused.status.success() && said.contains("spec.duration"),
        "duration \"ten seconds\" was not refused naming spec.duration: {said}"
    );
    manifests::apply_yaml(admin, &bad, NS).await?;
    let st = poll_until(
        "condition Invalid",
        scaled(Duration::from_secs(30)),
        Duration::from_millis(200),
        &[],
        || async {
            let st = status_of(tests, "bad").await?;
            st["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Invalid" && c["status"] == "True")
                .then_some(st)
        },
    )
    .await?;
    assert!(
        st["message"]
            .as_str()
            .unwrap()
            .contains("spec.scenario.http.steps[0].throttle"),
        "{st}"
    );
    let events = events_of(cp, "bad", "", &[]);
    assert!(
        events.contains("Invalid") && events.contains("steps[0].throttle"),
        "{events}"
    );
    let created = pods
        .list(&ListParams::default().labels("murmuration.dev/loadtest=bad"))
        .await
        .unwrap();
    assert!(
        created.items.is_empty(),
        "pods of an invalid test: {:?}",
        created.items.len()
    );
    // Fixed (and made to finish): it runs to the end, keeps its result and its report.
    let fixed = bad
        .replace("        - throttle: nowhere\n", "")
        .replace("  duration: 3s\n", "  duration: 3s\n  cleanup: {policy: Always}\n  thresholds:\n    - {metric: errors.ratio, max: \"0.01\"}\n");
    manifests::apply_yaml(admin, &fixed, NS).await?;
    // What a CI pipeline does: kubectl waits for condition Finished, whose reason is the
    // result.
    kubectl(
        cp,
        &[
            "wait",
            "-n",
            NS,
            "--for=condition=Finished",
            &format!("--timeout={}s", scaled(Duration::from_secs(90)).as_secs()),
            "lt/bad",
        ],
    );
    let st = wait_finished(tests, kubelet, "bad", Duration::from_secs(10)).await?;
    let finished = st["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Finished")
        .cloned()
        .unwrap_or_default();
    assert_eq!(finished["status"], "True", "{st}");
    assert_eq!(finished["reason"], "Passed", "{st}");
    assert_eq!(st["phase"], "Succeeded", "{st}");
    assert_eq!(st["result"], "Passed", "{st}");
    assert_eq!(st["thresholds"][0]["passed"], true, "{st}");
    assert!(st["requests"]["total"].as_i64().unwrap() > 0, "{st}");
    assert!(st["completionTime"].is_string(), "{st}");
    poll_until(
        "the finished test's pods gone",
        scaled(Duration::from_secs(30)),
        Duration::from_millis(200),
        &[],
        || async {
            let l = pods
                .list(&ListParams::default().labels("murmuration.dev/loadtest=bad"))
                .await
                .ok()?;
            l.items.is_empty().then_some(())
        },
    )
    .await?;
    let out = tempfile::tempdir().unwrap();
    let report = Command::new(murmur)
        .args(["report", "bad", "-n", NS, "--out"])
        .arg(out.path())
        .env("KUBECONFIG", cp.admin_kubeconfig())
        .output()
        .unwrap();
    assert!(
        report.status.success(),
        "murmur report: {}",
        String::from_utf8_lossy(&report.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(json["name"], "bad");
    assert_eq!(json["result"], "Passed");
    assert!(out.path().join("report.html").exists());

    // kubectl delete: nothing of the test is left.
    kubectl(cp, &["delete", "-n", NS, "lt/bad"]);
    assert_nothing_left(admin, "bad").await?;

    Ok(())
}
