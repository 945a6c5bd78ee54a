//! The operator end to end, on the real control plane with the test kubelet: the Helm chart
//! installs (Helm SDK) and the operator runs as a pod with the chart's RBAC only, leading
//! through the chart's Lease, and `kubectl explain` shows every field's type; then named
//! steps, in order, on that cluster (each in its module):
//!
//! - [`running`]: a LoadTest applied with kubectl runs all its users on two agents;
//!   `kubectl scale`, `kubectl patch` of `spec.users` and of `spec.agents` (up and down)
//!   change the running set to exactly 1..N; a deleted agent pod comes back and no user is
//!   lost or doubled; an edit of a field read at the start gets an `EditIgnored` Event; a
//!   real Prometheus scrapes the master and finds the test's request rate, errors by kind
//!   and latency histogram with their labels; `spec.stop` ends the test with its result
//!   and report;
//! - [`parts`]: a Throttle edited live changes the measured rate, and a Coordinator's
//!   status shows its groups, without the operator's own status writes making it reconcile
//!   in a loop or apply the test's objects again;
//! - [`examples`]: the examples (http, messaging, WebSocket) run to Passed;
//! - [`profiles`]: the stages example scaled mid-ramp (`ProfileOverridden`, exactly the
//!   users set run on), the arrivals example run to `Succeeded` with its arrivals in status;
//! - [`pushed`]: a LoadTest with `spec.metrics.remoteWrite` and a token Secret pushes its
//!   series to a real Prometheus, found there with their labels up to the final count;
//! - [`invalid`]: an invalid LoadTest is refused by the schema or creates nothing, and
//!   recovers when fixed; `kubectl wait --for=condition=Finished` returns when it ends; a
//!   finished test keeps its result and its report (`murmur report`) after its pods are
//!   gone; `kubectl delete` leaves nothing behind;
//! - [`failures`]: `murmur wait` exits 1 on a failed threshold, with its JUnit XML, and
//!   kubectl's wait sees reason Failed; a master that never answers fails its test with the
//!   pod's state; a master that exits at start fails it within the grace with its own
//!   message;
//! - [`baseline`]: `spec.baseline` names an earlier test's stored report; a relative
//!   threshold fails a test against it, with each step's change in status, and a baseline
//!   not stored skips it without blocking the pods;
//! - [`lifecycle`]: `cleanup.policy: Never` keeps the pods and the TTL takes the test;
//!   twenty tests at once (the operator's memory);
//! - [`resilience`]: the operator killed (SIGKILL) three times while its test is scaled
//!   takes every edit up and creates nothing twice; a deleted master is replaced and its
//!   users taken back with no agent called lost; a deleted operator pod hands its Lease
//!   over at once.
//!
//! Which users run where is read from each agent pod's own `/users` endpoint.

mod baseline;
mod examples;
mod failures;
mod invalid;
mod lifecycle;
mod parts;
mod profiles;
mod pushed;
mod resilience;
mod running;
mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, ListParams, PostParams};
use murmuration_crds::LoadTest;
use murmuration_e2e::manifests;
use murmuration_e2e::util::{poll_until, scaled};
use murmuration_e2e::{binaries, ControlPlane, KubeletConfig, Result};
use serde_json::json;

use support::*;

/// Runs one named step, saying how long it took.
async fn step(name: &str, run: impl std::future::Future<Output = Result<()>>) -> Result<()> {
    let t = Instant::now();
    eprintln!("operator: step {name}");
    let r = run.await;
    eprintln!(
        "operator: step {name}: {} after {:?}",
        if r.is_ok() { "ok" } else { "FAILED" },
        t.elapsed()
    );
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_runs_scales_and_cleans_up_load_tests() -> Result<()> {
    let c = install().await?;
    step("running", running::runs_scales_and_stops(&c)).await?;
    step("parts", parts::throttles_and_coordinators_live(&c)).await?;
    step("examples", examples::examples_pass(&c)).await?;
    step(
        "profiles",
        profiles::stages_overridden_and_arrivals_succeed(&c),
    )
    .await?;
    step("remote-write", pushed::remote_write_reaches_prometheus(&c)).await?;
    step("invalid", invalid::invalid_then_fixed(&c)).await?;
    step(
        "failed threshold in CI",
        failures::failed_threshold_in_ci(&c),
    )
    .await?;
    step(
        "relative to an earlier test",
        baseline::relative_to_an_earlier_test(&c),
    )
    .await?;
    step("master never answers", failures::master_never_answers(&c)).await?;
    step("master exits at start", failures::master_exits_at_start(&c)).await?;
    step("cleanup and ttl", lifecycle::cleanup_and_ttl(&c)).await?;
    step("twenty tests", lifecycle::twenty_tests(&c)).await?;
    step(
        "operator killed",
        resilience::operator_killed_while_scaling(&c),
    )
    .await?;
    step("lease handed over", resilience::lease_handed_over(&c)).await?;
    Ok(())
}

/// The cluster: control plane, test kubelet, the chart installed, the operator leading,
/// and the demo target (murmur's demo server, as a pod behind a Service).
async fn install() -> Result<Cluster> {
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
    explain_shows_every_type(&cp).await?;
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
    let tests: Api<LoadTest> = Api::namespaced(admin.clone(), NS);
    Ok(Cluster {
        cp,
        admin,
        kubelet,
        murmur,
        operator_name,
        tests,
        pods,
        system_pods,
    })
}

/// `kubectl explain` shows a type for every field of `loadtest.spec`, the optional ones
/// too (it reads the schema as the API server publishes it, once it has).
async fn explain_shows_every_type(cp: &ControlPlane) -> Result<()> {
    let out = poll_until(
        "kubectl explain loadtest.spec",
        scaled(Duration::from_secs(30)),
        Duration::from_millis(500),
        &[],
        || async {
            kubectl_try(cp, &["explain", "loadtest.spec"]).filter(|o| o.contains("FIELDS"))
        },
    )
    .await?;
    for field in [
        "agent", "cleanup", "repeat", "start", "stop", "scenario", "users",
    ] {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{field}\t")))
            .unwrap_or_else(|| panic!("no field {field} in: {out}"));
        assert!(!line.contains("<>"), "{field} has no type: {line:?}");
        assert!(line.contains('<'), "{field} has no type: {line:?}");
    }
    assert!(!out.contains("<>"), "a field without a type: {out}");
    let agent = kubectl_try(cp, &["explain", "loadtest.spec.agent"]).unwrap_or_default();
    assert!(agent.contains("image"), "spec.agent's fields: {agent}");
    Ok(())
}
