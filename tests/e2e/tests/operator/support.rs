//! What the steps of the operator's end-to-end test share: the cluster, kubectl, and
//! waits on the tests' status and the agents' users.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::api::{Api, ListParams};
use kube::Client;
use murmuration_crds::LoadTest;
use murmuration_e2e::util::{http_get, poll_until, scaled};
use murmuration_e2e::{binaries, ControlPlane, Result, TestKubelet};

/// The namespace of the chart and the operator.
pub const SYSTEM: &str = "murmuration-system";
/// The namespace of the tests.
pub const NS: &str = "lt";

/// The cluster the steps run on, with the chart installed and the operator leading.
pub struct Cluster {
    /// The control plane (kubectl, kubeconfigs).
    pub cp: ControlPlane,
    /// An admin client.
    pub admin: Client,
    /// The node whose pods are local processes.
    pub kubelet: TestKubelet,
    /// The `murmur` binary (for `murmur report`).
    pub murmur: PathBuf,
    /// The operator's pod.
    pub operator_name: String,
    /// The LoadTests of [`NS`].
    pub tests: Api<LoadTest>,
    /// The pods of [`NS`].
    pub pods: Api<Pod>,
    /// The pods of [`SYSTEM`].
    pub system_pods: Api<Pod>,
}

/// `kubectl` with `args`, its output (stdout, then stderr), or `None` when it fails.
pub fn kubectl_try(cp: &ControlPlane, args: &[&str]) -> Option<String> {
    let cache = std::env::temp_dir().join(format!(
        "murmuration-e2e-kubectl-cache-{}",
        std::process::id()
    ));
    let out = cp
        .kubectl()
        .arg(format!("--cache-dir={}", cache.display()))
        .args(args)
        .output()
        .ok()?;
    out.status.success().then(|| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// `kubectl` with `args`; its output (stdout, then stderr). Fails the test when it fails.
pub fn kubectl(cp: &ControlPlane, args: &[&str]) -> String {
    // A discovery cache of its own: another control plane may have had this port before,
    // without our CRDs.
    let cache = std::env::temp_dir().join(format!(
        "murmuration-e2e-kubectl-cache-{}",
        std::process::id()
    ));
    let out = cp
        .kubectl()
        .arg(format!("--cache-dir={}", cache.display()))
        .args(args)
        .output()
        .expect("kubectl runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "kubectl {args:?}: {text}");
    text
}

/// `kubectl patch` of LoadTest `test`'s with a JSON merge patch, as a user edits it.
pub fn patch_test(cp: &ControlPlane, test: &str, patch: &str) -> String {
    kubectl(
        cp,
        &[
            "patch",
            "-n",
            NS,
            &format!("lt/{test}"),
            "--type=merge",
            "-p",
            patch,
        ],
    )
}

/// `kubectl get events` of LoadTest `test` (those matching `selector` too, such as
/// `reason=Started`), then `more` arguments (an output format).
pub fn events_of(cp: &ControlPlane, test: &str, selector: &str, more: &[&str]) -> String {
    let mut fields = format!("involvedObject.name={test}");
    if !selector.is_empty() {
        fields = format!("{fields},{selector}");
    }
    let mut args = vec!["get", "events", "-n", NS, "--field-selector", &fields];
    args.extend(more);
    kubectl(cp, &args)
}

/// Lints and installs the chart with the Helm SDK; returns the lint messages.
pub fn helm_install(kubeconfig: &Path) -> String {
    let chart = binaries::workspace_root().join("charts/murmuration");
    let script = r#"
import json, sys
import helm_python
chart, kubeconfig, ns = sys.argv[1], sys.argv[2], sys.argv[3]
lint = helm_python.lint(chart)
if lint.get("errors"):
    sys.exit("helm lint: " + json.dumps(lint))
cfg = helm_python.Config(kubeconfig_path=kubeconfig, namespace=ns)
# A short grace for masters that never answer, so that a test of it takes seconds.
cfg.install(chart, "murmuration", {"logLevel": "info", "masterStartGrace": "2s"}, namespace=ns)
print(json.dumps(lint))
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(&chart)
        .arg(kubeconfig)
        .arg(SYSTEM)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "helm install: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The users each agent pod of `test` runs now, from its `/users` endpoint.
pub fn users_of(kubelet: &TestKubelet, test: &str, agents: u32) -> Option<Vec<Vec<u64>>> {
    let mut out = Vec::new();
    for i in 0..agents {
        let ip: Ipv4Addr = kubelet.pod_ip(NS, &format!("{test}-agent-{i}"))?;
        let resp = http_get(&format!("{ip}:8081"), "/users", Duration::from_secs(2)).ok()?;
        let ranges: Vec<(u64, u64)> = serde_json::from_str(&resp.body).ok()?;
        out.push(ranges.into_iter().flat_map(|(a, b)| a..=b).collect());
    }
    Some(out)
}

/// The sum of the operator pod's metric `name` (over its labels whose text contains
/// `labels`), from its `/metrics`.
pub fn metric(kubelet: &TestKubelet, operator_pod: &str, name: &str, labels: &str) -> Option<f64> {
    let ip = kubelet.pod_ip(SYSTEM, operator_pod)?;
    let resp = http_get(&format!("{ip}:8080"), "/metrics", Duration::from_secs(2)).ok()?;
    Some(
        resp.body
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with([' ', '{']) && rest.contains(labels))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

/// Whether every id of 1..=n runs on exactly one agent.
pub fn exactly_once(sets: &[Vec<u64>], n: u64) -> bool {
    let total: usize = sets.iter().map(|s| s.len()).sum();
    let union: BTreeSet<u64> = sets.iter().flatten().copied().collect();
    total as u64 == n && union == (1..=n).collect()
}

pub async fn status_of(api: &Api<LoadTest>, name: &str) -> Option<serde_json::Value> {
    let lt = api.get(name).await.ok()?;
    serde_json::to_value(lt.status?).ok()
}

/// Waits until test `name` has finished (Succeeded or Failed: phases that never change
/// again) and returns its status; the pods' logs are printed if it does not in `within`.
pub async fn wait_finished(
    api: &Api<LoadTest>,
    kubelet: &TestKubelet,
    name: &str,
    within: Duration,
) -> Result<serde_json::Value> {
    poll_until(
        format!("{name} finished"),
        scaled(within),
        Duration::from_millis(250),
        &[],
        || async {
            let st = status_of(api, name).await?;
            matches!(st["phase"].as_str(), Some("Succeeded" | "Failed")).then_some(st)
        },
    )
    .await
    .inspect_err(|_| eprintln!("{}", kubelet.dump_logs()))
}

pub async fn wait_users(
    what: &str,
    api: &Api<LoadTest>,
    kubelet: &TestKubelet,
    test: &str,
    agents: u32,
    n: u64,
) -> Result<Duration> {
    let t = Instant::now();
    poll_until(
        what,
        scaled(Duration::from_secs(60)),
        Duration::from_millis(100),
        &[],
        || async {
            let st = status_of(api, test).await?;
            let running = st["users"]["running"].as_u64()?;
            let sets = users_of(kubelet, test, agents)?;
            (running == n && exactly_once(&sets, n)).then_some(())
        },
    )
    .await
    .inspect_err(|_| eprintln!("{}", kubelet.dump_logs()))?;
    Ok(t.elapsed())
}

pub fn shop(users: u32) -> String {
    format!(
        "apiVersion: murmuration.dev/v1alpha1
kind: LoadTest
metadata: {{name: shop, namespace: {NS}}}
spec:
  users: {users}
  agents: 2
  vars: {{target: \"http://demo.{NS}.svc:8080\"}}
  scenario:
    http:
      baseUrl: \"{{{{vars.target}}}}\"
      steps:
        - request: {{name: home, path: /}}
        - think: {{duration: 200ms}}
  thresholds:
    - {{metric: errors.ratio, max: \"0.01\"}}
"
    )
}

/// Every pod, Service, Secret and ConfigMap of `test` is gone (garbage collection by owner
/// references).
pub async fn assert_nothing_left(client: &Client, test: &str) -> Result<()> {
    let selector = format!("murmuration.dev/loadtest={test}");
    let lp = ListParams::default().labels(&selector);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let svcs: Api<Service> = Api::namespaced(client.clone(), NS);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    poll_until(
        format!("everything of {test} gone"),
        scaled(Duration::from_secs(60)),
        Duration::from_millis(250),
        &[],
        || async {
            let n = pods.list(&lp).await.ok()?.items.len()
                + svcs.list(&lp).await.ok()?.items.len()
                + secrets.list(&lp).await.ok()?.items.len()
                + cms.list(&lp).await.ok()?.items.len();
            (n == 0).then_some(())
        },
    )
    .await
}
