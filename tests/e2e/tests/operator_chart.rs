//! The Helm chart without a cluster: `helm lint` (Helm SDK) has nothing worse than an
//! INFO to say, and the chart renders what its values promise — the operator pod hardened
//! and listening on its pod IP, leader election's Role only when enabled, a ServiceMonitor
//! only when asked for, selecting the metrics Service by labels that survive upgrades; a
//! PodMonitor of every test's master and a Grafana dashboard ConfigMap when asked for.
//! The install itself (CRDs, RBAC, the operator running) is in `tests/operator/`.

use std::process::Command;

use murmuration_e2e::binaries;
use serde_json::{json, Value};

/// Runs a Python snippet with the Helm SDK; its stdout is JSON.
fn helm(script: &str, values: &Value) -> Value {
    // The build script installs the Helm SDK (a no-op when the cache is warm).
    binaries::k8s_bin_dir().expect("the control plane build (it installs helm-python-sdk)");
    let chart = binaries::workspace_root().join("charts/murmuration");
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(&chart)
        .arg(values.to_string())
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "helm: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from the helm snippet")
}

/// The chart's objects rendered with `values`, as JSON values.
fn render(values: Value) -> Vec<Value> {
    let files = helm(
        r#"
import json, sys
import helm_python
chart, values = sys.argv[1], json.loads(sys.argv[2])
out = helm_python.Chart.load(chart).render(values, name="murmuration", namespace="murmuration-system")
print(json.dumps(out))
"#,
        &values,
    );
    let mut objects = Vec::new();
    for (path, text) in files.as_object().expect("file → text") {
        let docs: Vec<Value> = serde_saphyr::from_multiple(text.as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{path} does not parse: {e}"));
        objects.extend(docs.into_iter().filter(|v| !v.is_null()));
    }
    objects
}

fn kinds(objects: &[Value]) -> Vec<String> {
    let mut k: Vec<String> = objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap_or_default().to_owned())
        .collect();
    k.sort();
    k
}

fn find<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {:?}", kinds(objects)))
}

fn env<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
}

#[test]
fn helm_lint_has_nothing_worse_than_info() {
    let lint = helm(
        r#"
import json, sys
import helm_python
print(json.dumps(helm_python.lint(sys.argv[1])))
"#,
        &json!({}),
    );
    assert_eq!(lint["errors"], json!([]), "{lint}");
    // Helm's severities: 1 INFO, 2 WARNING, 3 ERROR.
    for m in lint["messages"].as_array().unwrap() {
        assert!(m["severity"].as_i64().unwrap() <= 1, "helm lint: {m}");
    }
}

#[test]
fn the_chart_renders_what_its_values_promise() {
    // Defaults: the operator with leader election, least-privilege RBAC, no ServiceMonitor.
    let objects = render(json!({}));
    assert_eq!(
        kinds(&objects),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ]
    );
    let deployment = find(&objects, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let operator = &pod["containers"][0];
    assert_eq!(operator["image"], "murmuration/operator:0.1.0");
    assert_eq!(pod["serviceAccountName"], "murmuration");
    // Hardened, as the master and agent pods are.
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let sc = &operator["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{sc}");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{sc}");
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{sc}");
    // It listens on its pod IP (needed where pods share an address, harmless elsewhere).
    assert_eq!(operator["args"], json!(["--listen", "$(POD_IP):8080"]));
    assert_eq!(
        env(operator, "POD_IP").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
        "status.podIP"
    );
    assert_eq!(
        env(operator, "MURMUR_AGENT_IMAGE").unwrap()["value"],
        "murmuration/agent:0.1.0"
    );
    assert_eq!(
        env(operator, "MURMUR_LEADER_ELECTION").unwrap()["value"],
        "true"
    );
    assert_eq!(env(operator, "MURMUR_MASTER_GRACE").unwrap()["value"], "1m");
    assert_eq!(operator["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(operator["livenessProbe"]["httpGet"]["path"], "/healthz");
    // The Lease only, in the release's namespace only.
    let role = find(&objects, "Role");
    assert_eq!(role["metadata"]["namespace"], "murmuration-system");
    assert_eq!(
        role["rules"],
        json!([{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]}])
    );
    // Nothing of the cluster role may touch what the operator never uses.
    let rules = find(&objects, "ClusterRole")["rules"].as_array().unwrap();
    for r in rules {
        for verb in r["verbs"].as_array().unwrap() {
            assert_ne!(verb, "*", "{r}");
            assert_ne!(verb, "update", "{r}");
        }
        assert!(
            !r["resources"].as_array().unwrap().contains(&json!("*")),
            "{r}"
        );
        assert!(
            !r["resources"].as_array().unwrap().contains(&json!("nodes")),
            "{r}"
        );
    }

    // Values: images, one replica without leader election, a ServiceMonitor.
    let objects = render(json!({
        "image": {"repository": "registry.example/murmur-operator", "tag": "1.2.3"},
        "agentImage": {"repository": "registry.example/murmur", "tag": "1.2.3"},
        "leaderElection": {"enabled": false},
        "logLevel": "debug",
        "metrics": {"port": 9090, "serviceMonitor": {"enabled": true, "labels": {"release": "prom"}}}
    }));
    assert_eq!(
        kinds(&objects),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "Service",
            "ServiceAccount",
            "ServiceMonitor"
        ]
    );
    let deployment = find(&objects, "Deployment");
    let operator = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(operator["image"], "registry.example/murmur-operator:1.2.3");
    assert_eq!(operator["args"], json!(["--listen", "$(POD_IP):9090"]));
    assert!(env(operator, "MURMUR_LEADER_ELECTION").is_none());
    assert_eq!(env(operator, "MURMUR_LOG").unwrap()["value"], "debug");
    assert_eq!(
        env(operator, "MURMUR_AGENT_IMAGE").unwrap()["value"],
        "registry.example/murmur:1.2.3"
    );
    let service = find(&objects, "Service");
    assert_eq!(
        service["spec"]["ports"],
        json!([{"name": "metrics", "port": 9090, "targetPort": 9090, "protocol": "TCP"}])
    );
    let monitor = find(&objects, "ServiceMonitor");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prom");
    // It selects the metrics Service by the stable labels it carries.
    let selector = monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap();
    for (k, v) in selector {
        assert_eq!(&service["metadata"]["labels"][k], v, "label {k}");
    }
    assert!(!selector.contains_key("helm.sh/chart"), "{selector:?}");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
}

#[test]
fn the_chart_renders_a_pod_monitor_for_masters_and_a_grafana_dashboard() {
    // Off by default.
    let objects = render(json!({}));
    assert!(!kinds(&objects).contains(&"PodMonitor".to_owned()));
    assert!(!kinds(&objects).contains(&"ConfigMap".to_owned()));

    let objects = render(json!({"metrics": {
        "podMonitor": {"enabled": true, "labels": {"release": "prom"}},
        "grafanaDashboard": {"enabled": true, "namespace": "monitoring"}
    }}));
    let monitor = find(&objects, "PodMonitor");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prom");
    assert_eq!(monitor["spec"]["namespaceSelector"]["any"], true);
    // The labels the operator gives master pods (operator/src/names.rs), and their port.
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"],
        json!({
            "app.kubernetes.io/name": "murmuration",
            "app.kubernetes.io/managed-by": "murmuration-operator",
            "app.kubernetes.io/component": "master"
        })
    );
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"], "api");
    assert_eq!(endpoint["path"], "/metrics");

    let cm = find(&objects, "ConfigMap");
    assert_eq!(cm["metadata"]["namespace"], "monitoring");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let dashboard: Value =
        serde_json::from_str(cm["data"]["murmuration.json"].as_str().unwrap()).unwrap();
    let titles: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    for what in [
        "Users",
        "Requests per second",
        "Errors",
        "p50",
        "p99",
        "Throttles",
        "Agents",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(what)),
            "{what}: {titles:?}"
        );
    }
    // Every panel queries the masters' metrics (their names are checked against what a
    // master serves in agent/src/master/metrics.rs).
    for p in dashboard["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            assert!(t["expr"].as_str().unwrap().contains("murmuration_"), "{t}");
        }
    }
}
