//! The examples of `manifests/examples/`, as a user applies them.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, PostParams};
use murmuration_e2e::manifests;
use murmuration_e2e::{binaries, Result};
use serde_json::json;

use crate::support::*;

/// The http and messaging examples run to the end and pass.
pub async fn examples_pass(c: &Cluster) -> Result<()> {
    let Cluster {
        cp,
        admin,
        kubelet,
        tests,
        pods,
        ..
    } = c;
    // The examples of manifests/examples/, as a user applies them (pointed at this
    // namespace's targets): they run to the end and pass.
    let messaging: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "messaging", "namespace": NS, "labels": {"app": "messaging"}},
        "spec": {"automountServiceAccountToken": false, "containers": [{
            "name": "messaging", "image": "murmuration/agent:dev",
            "args": ["demo-server", "messaging", "--listen", "$(POD_IP):5555"],
            "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
            "readinessProbe": {"tcpSocket": {"port": 5555}, "periodSeconds": 1}
        }]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &messaging)
        .await
        .unwrap();
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "messaging", "namespace": NS},
        "spec": {"selector": {"app": "messaging"}, "ports": [{"port": 5555, "targetPort": 5555, "protocol": "TCP"}]}
    }))
    .unwrap();
    Api::<Service>::namespaced(admin.clone(), NS)
        .create(&PostParams::default(), &svc)
        .await
        .unwrap();
    let examples = binaries::workspace_root().join("manifests/examples");
    let http_example = std::fs::read_to_string(examples.join("http.yaml"))
        .unwrap()
        .replace("demo.default.svc", &format!("demo.{NS}.svc"));
    let chat_example = std::fs::read_to_string(examples.join("messaging.yaml"))
        .unwrap()
        .replace("messaging.default.svc", &format!("messaging.{NS}.svc"));
    // One after the other: both at once would load the two cores of CI beyond what the
    // messaging example's error threshold allows for.
    for (name, example) in [("checkout", &http_example), ("chat", &chat_example)] {
        manifests::apply_yaml(admin, example, NS).await?;
        let st = wait_finished(tests, kubelet, name, Duration::from_secs(120)).await?;
        assert_eq!(st["result"], "Passed", "example {name}: {st}");
        assert!(st["requests"]["total"].as_i64().unwrap() > 0, "{st}");
        eprintln!(
            "operator: example {name}: {} requests, p99 {} ms",
            st["requests"]["total"], st["latencyMs"]["p99"]
        );
        kubectl(cp, &["delete", "-n", NS, &format!("lt/{name}")]);
        assert_nothing_left(admin, name).await?;
    }

    Ok(())
}
