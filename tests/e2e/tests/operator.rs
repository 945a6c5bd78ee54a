//! The operator end to end, on the real control plane with the test kubelet: the Helm chart
//! installs (Helm SDK) and the operator runs as a pod with the chart's RBAC only, leading
//! through the chart's Lease; a LoadTest applied with kubectl runs all its users on two
//! agents; `kubectl scale`, `kubectl patch` of `spec.users` and of `spec.agents` (up and
//! down) change the running set to exactly 1..N; a deleted agent pod comes back and no
//! user is lost or doubled; an edit of a field read at the start gets an `EditIgnored`
//! Event; `spec.stop` ends the test with its result and report; a Throttle edited live changes the measured rate, and a
//! Coordinator's status shows its groups, without the operator's own status writes making
//! it reconcile in a loop; the examples (http, messaging, WebSocket) run to Passed; an
//! invalid LoadTest creates nothing and recovers when fixed; a finished test keeps its result and its report (`murmur
//! report`) after its pods are gone; a master that never answers fails its test with the
//! pod's state; `cleanup.policy: Never` keeps the pods and the TTL takes the test;
//! `kubectl delete` leaves nothing behind; twenty tests at once (the operator's memory);
//! the operator killed (SIGKILL) three times while its test is scaled takes every edit up
//! and creates nothing twice; a deleted operator pod hands its Lease over at once.
//!
//! Which users run where is read from each agent pod's own `/users` endpoint.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::Client;
use murmuration_crds::{Coordinator, LoadTest, Throttle};
use murmuration_e2e::manifests;
use murmuration_e2e::util::{http_get, poll_until, scaled};
use murmuration_e2e::{binaries, ControlPlane, KubeletConfig, Result, TestKubelet};
use serde_json::json;

const SYSTEM: &str = "murmuration-system";
const NS: &str = "lt";

fn kubectl(cp: &ControlPlane, args: &[&str]) -> String {
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
fn patch_test(cp: &ControlPlane, test: &str, patch: &str) -> String {
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
fn events_of(cp: &ControlPlane, test: &str, selector: &str, more: &[&str]) -> String {
    let mut fields = format!("involvedObject.name={test}");
    if !selector.is_empty() {
        fields = format!("{fields},{selector}");
    }
    let mut args = vec!["get", "events", "-n", NS, "--field-selector", &fields];
    args.extend(more);
    kubectl(cp, &args)
}

/// Lints and installs the chart with the Helm SDK; returns the lint messages.
fn helm_install(kubeconfig: &Path) -> String {
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

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The users each agent pod of `test` runs now, from its `/users` endpoint.
fn users_of(kubelet: &TestKubelet, test: &str, agents: u32) -> Option<Vec<Vec<u64>>> {
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
fn metric(kubelet: &TestKubelet, operator_pod: &str, name: &str, labels: &str) -> Option<f64> {
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
fn exactly_once(sets: &[Vec<u64>], n: u64) -> bool {
    let total: usize = sets.iter().map(|s| s.len()).sum();
    let union: BTreeSet<u64> = sets.iter().flatten().copied().collect();
    total as u64 == n && union == (1..=n).collect()
}

async fn status_of(api: &Api<LoadTest>, name: &str) -> Option<serde_json::Value> {
    let lt = api.get(name).await.ok()?;
    serde_json::to_value(lt.status?).ok()
}

/// Waits until test `name` has finished (Succeeded or Failed: phases that never change
/// again) and returns its status; the pods' logs are printed if it does not in `within`.
async fn wait_finished(
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

async fn wait_users(
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

fn shop(users: u32) -> String {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_runs_scales_and_cleans_up_load_tests() -> Result<()> {
    // Build the binaries first, before any deadline.
    let murmur = binaries::project_binary("murmuration-agent", "murmur")?;
    binaries::project_binary("murmuration-operator", "murmur-operator")?;
    let cp = ControlPlane::start().await?;
    let admin = cp.admin_client().await?;
    let kubelet = cp.start_kubelet(KubeletConfig::default()).await?;
    cp.create_namespace(&admin, SYSTEM).await?;
    cp.create_namespace(&admin, NS).await?;

    // The chart installs, with its CRDs; the operator runs as a pod under the chart's RBAC.
    let lint = helm_install(cp.admin_kubeconfig());
    eprintln!("operator: helm lint: {lint}");
    for crd in [
        "loadtests.murmuration.dev",
        "throttles.murmuration.dev",
        "coordinators.murmuration.dev",
    ] {
        manifests::wait_crd_established(&admin, crd).await?;
    }
    let system_pods: Api<Pod> = Api::namespaced(admin.clone(), SYSTEM);
    poll_until(
        "the operator pod Ready",
        scaled(Duration::from_secs(60)),
        Duration::from_millis(200),
        &[],
        || async {
            let pods = system_pods
                .list(&ListParams::default().labels("app.kubernetes.io/component=operator"))
                .await
                .ok()?;
            pods.items.iter().any(is_ready).then_some(())
        },
    )
    .await
    .inspect_err(|_| eprintln!("{}", kubelet.dump_logs()))?;

    // It leads through the chart's Lease.
    let operator_name = system_pods
        .list(&ListParams::default().labels("app.kubernetes.io/component=operator"))
        .await
        .unwrap()
        .items
        .remove(0)
        .metadata
        .name
        .unwrap();
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(admin.clone(), SYSTEM);
    let lease = leases.get("murmuration-operator").await.unwrap();
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some(operator_name.as_str())
    );

    // The target: murmur's demo server, as a pod behind a Service.
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);
    let demo: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "demo", "namespace": NS, "labels": {"app": "demo"}},
        "spec": {"automountServiceAccountToken": false, "containers": [{
            "name": "demo", "image": "murmuration/agent:dev",
            "args": ["demo-server", "http", "--listen", "$(POD_IP):8080", "--threads", "1"],
            "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
            "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1}
        }]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &demo).await.unwrap();
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "demo", "namespace": NS},
        "spec": {"selector": {"app": "demo"}, "ports": [{"port": 8080, "targetPort": 8080, "protocol": "TCP"}]}
    }))
    .unwrap();
    Api::<Service>::namespaced(admin.clone(), NS)
        .create(&PostParams::default(), &svc)
        .await
        .unwrap();

    // kubectl apply: Running with all its users, on two agents, each id once.
    let tests: Api<LoadTest> = Api::namespaced(admin.clone(), NS);
    let t = Instant::now();
    manifests::apply_yaml(&admin, &shop(100), NS).await?;
    wait_users("100 users running", &tests, &kubelet, "shop", 2, 100).await?;
    let to_running = t.elapsed();
    eprintln!("operator: kubectl apply → 100 users running on 2 agents: {to_running:?}");
    let st = status_of(&tests, "shop").await.unwrap();
    assert_eq!(st["phase"], "Running", "{st}");
    assert_eq!(st["agents"]["ready"], 2, "{st}");
    let table = kubectl(&cp, &["get", "lt", "-n", NS]);
    eprintln!("{table}");
    for column in [
        "PHASE", "USERS", "RUNNING", "AGENTS", "RPS", "P99", "RESULT", "AGE",
    ] {
        assert!(table.contains(column), "no column {column}: {table}");
    }
    assert!(table.contains("Running"), "{table}");
    poll_until(
        "a request rate in the status",
        scaled(Duration::from_secs(20)),
        Duration::from_millis(200),
        &[],
        || async {
            let st = status_of(&tests, "shop").await?;
            (st["requests"]["perSecond"].as_f64()? > 0.0).then_some(())
        },
    )
    .await?;

    // kubectl scale, up and down; kubectl patch of spec.users.
    let t = Instant::now();
    kubectl(&cp, &["scale", "-n", NS, "lt/shop", "--replicas=150"]);
    wait_users(
        "150 users after kubectl scale",
        &tests,
        &kubelet,
        "shop",
        2,
        150,
    )
    .await?;
    eprintln!(
        "operator: kubectl scale 100 → 150 running: {:?}",
        t.elapsed()
    );
    kubectl(&cp, &["scale", "-n", NS, "lt/shop", "--replicas=40"]);
    wait_users(
        "40 users after kubectl scale",
        &tests,
        &kubelet,
        "shop",
        2,
        40,
    )
    .await?;
    patch_test(&cp, "shop", r#"{"spec":{"users":60}}"#);
    wait_users(
        "60 users after kubectl patch",
        &tests,
        &kubelet,
        "shop",
        2,
        60,
    )
    .await?;

    // An edit the running test cannot take (its master read it at the start) is not
    // silently dropped: a Warning Event names the field, and the test goes on as it was.
    patch_test(&cp, "shop", r#"{"spec":{"duration":"1h"}}"#);
    poll_until(
        "an EditIgnored Event naming spec.duration",
        scaled(Duration::from_secs(15)),
        Duration::from_millis(300),
        &[],
        || async {
            let events = events_of(&cp, "shop", "reason=EditIgnored", &[]);
            events.contains("spec.duration changed").then_some(())
        },
    )
    .await?;
    let st = status_of(&tests, "shop").await.expect("status");
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
    patch_test(&cp, "shop", r#"{"spec":{"agents":3}}"#);
    agents_ready(3).await?;
    kubectl(&cp, &["scale", "-n", NS, "lt/shop", "--replicas=90"]);
    wait_users("90 users on 3 agents", &tests, &kubelet, "shop", 3, 90).await?;
    let on_third = users_of(&kubelet, "shop", 3).unwrap()[2].len();
    eprintln!("operator: agents 2 → 3, then users 60 → 90: {on_third} users on the new agent");
    assert!(on_third > 0, "the new agent runs no user");
    patch_test(&cp, "shop", r#"{"spec":{"agents":2,"users":60}}"#);
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
    wait_users(
        "60 users on 2 agents again",
        &tests,
        &kubelet,
        "shop",
        2,
        60,
    )
    .await?;

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
        &tests,
        &kubelet,
        "shop",
        2,
        60,
    )
    .await?;
    let events = events_of(&cp, "shop", "", &[]);
    assert!(events.contains("Started"), "{events}");
    assert!(events.contains("Scaled"), "{events}");
    // spec.stop: the test ends as any other (result, report), before its end.
    patch_test(&cp, "shop", r#"{"spec":{"stop":"Graceful"}}"#);
    let st = wait_finished(&tests, &kubelet, "shop", Duration::from_secs(30)).await?;
    assert!(st["result"].is_string(), "{st}");
    let events = events_of(&cp, "shop", "reason=Finished", &[]);
    assert!(events.contains("ended by stopped"), "{events}");
    Api::<ConfigMap>::namespaced(admin.clone(), NS)
        .get("shop-report")
        .await
        .expect("the stopped test's report is kept");
    tests
        .delete("shop", &DeleteParams::default())
        .await
        .unwrap();
    assert_nothing_left(&admin, "shop").await?;

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
    manifests::apply_yaml(&admin, &throttled, NS).await?;
    let throttles: Api<Throttle> = Api::namespaced(admin.clone(), NS);
    wait_users("20 paced users", &tests, &kubelet, "paced", 1, 20).await?;
    // The rate from the Throttle's status: sampled often, measured between two moments
    // when the status had just been written (it is refreshed every 2 s).
    let rate_over = |secs: u64| {
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
            (t1 > t0).then(|| (v1 - v0) as f64 / (t1 - t0).as_secs_f64())
        }
    };
    // The status follows within 2 s: measure over windows long enough for that.
    let reconciles = || {
        metric(
            &kubelet,
            &operator_name,
            "murmuration_operator_reconciles_total",
            "",
        )
    };
    let writes = || {
        metric(
            &kubelet,
            &operator_name,
            "murmuration_operator_status_writes_total",
            "",
        )
    };
    let (r0, w0, t0) = (reconciles().unwrap(), writes().unwrap(), Instant::now());
    let fast = rate_over(9).await.expect("throttle status");
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
    manifests::apply_yaml(
        &admin,
        &format!("apiVersion: murmuration.dev/v1alpha1\nkind: Throttle\nmetadata: {{name: paced-rate, namespace: {NS}}}\nspec: {{loadTest: paced, rate: 20, interval: 1s}}\n"),
        NS,
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let slow = rate_over(9).await.expect("throttle status");
    eprintln!("operator: throttle 100/s measured {fast:.1}/s; edited to 20/s measured {slow:.1}/s");
    assert!(
        (85.0..=105.0).contains(&fast),
        "{fast}/s at a limit of 100/s"
    );
    assert!((16.0..=22.0).contains(&slow), "{slow}/s at a limit of 20/s");
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
    assert_nothing_left(&admin, "paced").await?;

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
    // And the WebSocket demo server, for the websocket example.
    let chat_ws: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "chat-ws", "namespace": NS, "labels": {"app": "chat-ws"}},
        "spec": {"automountServiceAccountToken": false, "containers": [{
            "name": "chat-ws", "image": "murmuration/agent:dev",
            "args": ["demo-server", "websocket", "--listen", "$(POD_IP):8765", "--threads", "1"],
            "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
            "readinessProbe": {"tcpSocket": {"port": 8765}, "periodSeconds": 1}
        }]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &chat_ws).await.unwrap();
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "chat-ws", "namespace": NS},
        "spec": {"selector": {"app": "chat-ws"}, "ports": [{"port": 8765, "targetPort": 8765, "protocol": "TCP"}]}
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
    let ws_example = std::fs::read_to_string(examples.join("websocket.yaml"))
        .unwrap()
        .replace("chat-ws.default.svc", &format!("chat-ws.{NS}.svc"));
    // One after the other: all at once would load the two cores of CI beyond what the
    // messaging example's error threshold allows for.
    for (name, example) in [
        ("checkout", &http_example),
        ("chat", &chat_example),
        ("ws-chat", &ws_example),
    ] {
        manifests::apply_yaml(&admin, example, NS).await?;
        let st = wait_finished(&tests, &kubelet, name, Duration::from_secs(120)).await?;
        assert_eq!(st["result"], "Passed", "example {name}: {st}");
        assert!(st["requests"]["total"].as_i64().unwrap() > 0, "{st}");
        eprintln!(
            "operator: example {name}: {} requests, p99 {} ms",
            st["requests"]["total"], st["latencyMs"]["p99"]
        );
        kubectl(&cp, &["delete", "-n", NS, &format!("lt/{name}")]);
        assert_nothing_left(&admin, name).await?;
    }

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
    // What the schema refuses never gets in.
    let refused = cp
        .kubectl()
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(bad.replace("users: 1", "users: -5").as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(
        !refused.status.success(),
        "a negative user count was accepted"
    );
    manifests::apply_yaml(&admin, &bad, NS).await?;
    let st = poll_until(
        "condition Invalid",
        scaled(Duration::from_secs(30)),
        Duration::from_millis(200),
        &[],
        || async {
            let st = status_of(&tests, "bad").await?;
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
    let events = events_of(&cp, "bad", "", &[]);
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
    manifests::apply_yaml(&admin, &fixed, NS).await?;
    let st = wait_finished(&tests, &kubelet, "bad", Duration::from_secs(90)).await?;
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
    let report = Command::new(&murmur)
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
    kubectl(&cp, &["delete", "-n", NS, "lt/bad"]);
    assert_nothing_left(&admin, "bad").await?;

    // A test whose master never answers (an image this cluster cannot run): Failed once its
    // start barrier and the operator's grace (2 s, from the chart's values) are over, with
    // the master pod's state as the reason.
    manifests::apply_yaml(
        &admin,
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
    let st = wait_finished(&tests, &kubelet, "stuck", Duration::from_secs(30)).await?;
    assert_eq!(st["phase"], "Failed", "{st}");
    assert_eq!(st["result"], "Failed", "{st}");
    let why = st["message"].as_str().unwrap();
    assert!(
        why.contains("did not answer") && why.contains("ImageNotRunnable"),
        "{st}"
    );
    kubectl(&cp, &["delete", "-n", NS, "lt/stuck"]);
    assert_nothing_left(&admin, "stuck").await?;

    // cleanup {policy: Never, ttlSecondsAfterFinished}: the pods stay after the end, and
    // the test goes (with everything it owns) once its time to live is over.
    manifests::apply_yaml(
        &admin,
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
    let st = wait_finished(&tests, &kubelet, "brief", Duration::from_secs(60)).await?;
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
    assert_nothing_left(&admin, "brief").await?;

    // Twenty tests at once: the operator's memory.
    for i in 0..20 {
        manifests::apply_yaml(
            &admin,
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
                &kubelet,
                &operator_name,
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
    kubectl(&cp, &["delete", "-n", NS, "lt", "--all"]);
    for i in 0..20 {
        assert_nothing_left(&admin, &format!("many-{i}")).await?;
    }

    // The operator killed (SIGKILL) in a loop while a test runs, and the test scaled while
    // it is down: each restarted operator takes the edit up, creates nothing twice (the
    // same master pod and token), and does not announce a transition again.
    manifests::apply_yaml(&admin, &shop(40).replace("name: shop", "name: sturdy"), NS).await?;
    wait_users("sturdy: 40 users", &tests, &kubelet, "sturdy", 2, 40).await?;
    let master_uid = pods.get("sturdy-master").await.unwrap().metadata.uid;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), NS);
    let token = secrets.get("sturdy-token").await.unwrap().data;
    for (round, users) in [60u64, 30, 50].into_iter().enumerate() {
        let restarts = |p: &Pod| {
            p.status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .map(|c| c.iter().map(|c| c.restart_count).sum::<i32>())
                .unwrap_or(0)
        };
        let before = restarts(&system_pods.get(&operator_name).await.unwrap());
        let groups = kubelet.pod_pids(SYSTEM, &operator_name);
        assert!(!groups.is_empty(), "no operator process");
        for g in groups {
            murmuration_e2e::procs::signal_group(g, libc::SIGKILL);
        }
        kubectl(
            &cp,
            &[
                "scale",
                "-n",
                NS,
                "lt/sturdy",
                &format!("--replicas={users}"),
            ],
        );
        poll_until(
            format!("the operator restarted (round {round})"),
            scaled(Duration::from_secs(30)),
            Duration::from_millis(100),
            &[],
            || async {
                let p = system_pods.get(&operator_name).await.ok()?;
                (restarts(&p) > before).then_some(())
            },
        )
        .await?;
        let took = wait_users(
            &format!("sturdy: {users} users after an operator crash"),
            &tests,
            &kubelet,
            "sturdy",
            2,
            users,
        )
        .await?;
        eprintln!("operator: SIGKILL + scale to {users}: running after {took:?}");
    }
    assert_eq!(
        pods.get("sturdy-master").await.unwrap().metadata.uid,
        master_uid,
        "the master was created again"
    );
    assert_eq!(
        secrets.get("sturdy-token").await.unwrap().data,
        token,
        "the token changed"
    );
    let started = events_of(&cp, "sturdy", "reason=Started", &["-o", "name"]);
    assert_eq!(
        started.lines().count(),
        1,
        "Started told more than once: {started}"
    );
    tests
        .delete("sturdy", &DeleteParams::default())
        .await
        .unwrap();
    assert_nothing_left(&admin, "sturdy").await?;

    // The operator pod deleted (SIGTERM): it finishes, gives its Lease up, and the
    // Deployment's next pod leads well before the lease (15 s) would have expired.
    let t = Instant::now();
    system_pods
        .delete(&operator_name, &DeleteParams::default())
        .await
        .unwrap();
    let next = poll_until(
        "another operator pod leading",
        scaled(Duration::from_secs(30)),
        Duration::from_millis(100),
        &[],
        || async {
            let holder = leases
                .get("murmuration-operator")
                .await
                .ok()?
                .spec?
                .holder_identity?;
            (holder != operator_name).then_some(holder)
        },
    )
    .await
    .inspect_err(|_| eprintln!("{}", kubelet.dump_logs()))?;
    let took = t.elapsed();
    eprintln!("operator: pod deleted → {next} leading after {took:?}");
    assert!(
        took < Duration::from_secs(12),
        "the next operator led after {took:?}"
    );
    Ok(())
}

/// Every pod, Service, Secret and ConfigMap of `test` is gone (garbage collection by owner
/// references).
async fn assert_nothing_left(client: &Client, test: &str) -> Result<()> {
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
