//! Smoke test of the e2e environment: a real control plane comes up, the project's CRDs
//! install, a pod of an HTTP server becomes Running and Ready under the test kubelet and
//! answers on its pod IP and through its Service's name, RBAC holds for the operator's
//! kubeconfig, kubectl works, and deleting the pod stops its process.

use std::net::{IpAddr, Ipv4Addr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::Client;
use murmuration_e2e::ipalloc::NO_ENDPOINTS_IP;
use murmuration_e2e::manifests::{self, wait_crd_established};
use murmuration_e2e::util::{http_get, poll_until, scaled};
use murmuration_e2e::{procs, ControlPlane, ImageRunner, KubeletConfig, Result};
use serde_json::json;

/// The HTTP server the test runs as a pod: the project's agent image running
/// `murmur demo-server http` on its pod IP.
fn http_server() -> (&'static str, ImageRunner, &'static [&'static str]) {
    (
        "murmuration/agent",
        ImageRunner::cargo("murmuration-agent", "murmur"),
        &[
            "demo-server",
            "http",
            "--listen",
            "$(POD_IP):8080",
            "--threads",
            "1",
        ],
    )
}

const NS: &str = "smoke";

fn crd_files() -> Vec<PathBuf> {
    let dir = std::env::var_os("MURMURATION_E2E_CRDS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| murmuration_e2e::binaries::workspace_root().join("manifests/crds"));
    manifests::yaml_files(&dir)
}

/// JSON paths of `enum`s that list `null`: Kubernetes 1.20 rejects such a CRD with the
/// misleading "per-version schemas may not all be set to identical values".
fn null_enums(v: &serde_json::Value, path: &str, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (key, child) in m {
                if key == "enum"
                    && child
                        .as_array()
                        .is_some_and(|s| s.iter().any(|x| x.is_null()))
                {
                    out.push(path.to_string());
                }
                null_enums(child, &format!("{path}.{key}"), out);
            }
        }
        serde_json::Value::Array(s) => {
            for (i, child) in s.iter().enumerate() {
                null_enums(child, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Used when `manifests/crds/` has no files yet.
const FALLBACK_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: smokes.e2e.murmuration.dev
spec:
  group: e2e.murmuration.dev
  names: {kind: Smoke, plural: smokes, singular: smoke}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      subresources:
        status: {}
        scale: {specReplicasPath: .spec.replicas, statusReplicasPath: .status.replicas}
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec: {type: object, properties: {replicas: {type: integer}}}
            status: {type: object, properties: {replicas: {type: integer}}}
"#;

async fn install_crds(client: &Client) -> Result<Vec<String>> {
    let files = crd_files();
    let mut applied = Vec::new();
    if files.is_empty() {
        eprintln!("smoke: manifests/crds/ is empty; installing a stand-in CRD");
        applied.extend(manifests::apply_yaml(client, FALLBACK_CRD, "default").await?);
    } else {
        let mut failures = Vec::new();
        for f in &files {
            match manifests::apply_file(client, f, "default").await {
                Ok(objs) => applied.extend(objs),
                Err(e) => {
                    let mut hint = String::new();
                    let text = std::fs::read_to_string(f).unwrap_or_default();
                    if let Ok(doc) = serde_saphyr::from_str::<serde_json::Value>(&text) {
                        let mut paths = Vec::new();
                        null_enums(&doc, "", &mut paths);
                        if !paths.is_empty() {
                            hint = format!(
                                "\n  Kubernetes 1.20 rejects `null` inside `enum` (`nullable: true` already allows null); found at:\n    {}",
                                paths.join("\n    ")
                            );
                        }
                    }
                    let msg = e.to_string();
                    let short: String = msg.chars().take(400).collect();
                    failures.push(format!("{}: {short}{hint}", f.display()));
                }
            }
        }
        assert!(
            failures.is_empty(),
            "CRDs of manifests/crds/ do not install on the e2e API server (1.20.2):\n{}",
            failures.join("\n")
        );
    }
    let names: Vec<String> = applied
        .iter()
        .filter(|o| {
            o.types
                .as_ref()
                .is_some_and(|t| t.kind == "CustomResourceDefinition")
        })
        .filter_map(|o| o.metadata.name.clone())
        .collect();
    assert!(!names.is_empty(), "no CRD in {files:?}");
    for n in &names {
        wait_crd_established(client, n).await?;
    }
    Ok(names)
}

fn pod_manifest(name: &str, image: &str, args: &[&str]) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": name}},
        "spec": {
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 2,
            "containers": [{
                "name": "http",
                "image": image,
                "args": args,
                "env": [
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
                ],
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {
                    "httpGet": {"path": "/ready", "port": "http"},
                    "periodSeconds": 1
                }
            }]
        }
    }))
    .expect("pod manifest")
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn resolve(name: &str) -> Vec<IpAddr> {
    (name, 8080)
        .to_socket_addrs()
        .map(|it| it.map(|a| a.ip()).collect())
        .unwrap_or_default()
}

fn kubectl_out(mut cmd: std::process::Command, args: &[&str]) -> (bool, String) {
    let out = cmd.args(args).output().expect("run kubectl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn hosts_mentions_pid(pid: u32) -> bool {
    std::fs::read_to_string(murmuration_e2e::hosts::hosts_file())
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("# BEGIN murmuration-e2e") && l.contains(&format!("pid={pid}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_kubelet_service_rbac_kubectl() -> Result<()> {
    let t0 = Instant::now();
    let cp = ControlPlane::start().await?;
    let t_cp = t0.elapsed();
    let admin = cp.admin_client().await?;

    // The project's CRDs install and become Established.
    let crds = install_crds(&admin).await?;
    eprintln!("smoke: CRDs established: {crds:?}");

    let (image_repo, runner, args) = http_server();
    let kubelet = cp
        .start_kubelet(KubeletConfig::default().image(image_repo, runner))
        .await?;
    let nodes: Api<Node> = Api::all(admin.clone());
    assert!(nodes.get_opt(kubelet.node_name()).await.unwrap().is_some());

    cp.create_namespace(&admin, NS).await?;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);
    let services: Api<Service> = Api::namespaced(admin.clone(), NS);
    let image = format!("registry.example/{image_repo}:dev");
    pods.create(&PostParams::default(), &pod_manifest("echo", &image, args))
        .await
        .unwrap();
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "echo", "namespace": NS},
        "spec": {"selector": {"app": "echo"}, "ports": [{"port": 8080, "targetPort": 8080}]}
    }))
    .unwrap();
    services.create(&PostParams::default(), &svc).await.unwrap();
    // A pod of an image that cannot run here stays Pending, with a clear reason.
    pods.create(
        &PostParams::default(),
        &pod_manifest("foreign", "nginx:1.25", &[]),
    )
    .await
    .unwrap();

    let logs = kubelet.log_files(NS, "echo");
    let pod = poll_until(
        "pod smoke/echo to be Running and Ready",
        scaled(Duration::from_secs(30)),
        Duration::from_millis(100),
        &logs,
        || async {
            let p = pods.get("echo").await.ok()?;
            (is_ready(&p) && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .then_some(p)
        },
    )
    .await
    .inspect_err(|_| eprintln!("{}", kubelet.dump_logs()))?;
    let status = pod.status.clone().unwrap();
    let pod_ip: Ipv4Addr = status.pod_ip.clone().unwrap().parse().unwrap();
    assert!(
        pod_ip.is_loopback() && pod_ip != Ipv4Addr::LOCALHOST,
        "pod IP {pod_ip}"
    );
    assert_eq!(status.host_ip.as_deref(), Some("127.0.0.1"));
    let cs = &status.container_statuses.clone().unwrap()[0];
    assert!(
        cs.ready && cs.started == Some(true) && cs.restart_count == 0,
        "{cs:?}"
    );
    assert!(cs.state.as_ref().unwrap().running.is_some(), "{cs:?}");
    assert_eq!(
        pod.spec.as_ref().unwrap().node_name.as_deref(),
        Some(kubelet.node_name())
    );
    assert_eq!(Some(pod_ip), kubelet.pod_ip(NS, "echo"));

    // It answers on its pod IP.
    let r = http_get(&format!("{pod_ip}:8080"), "/hello", Duration::from_secs(2))
        .expect("GET on the pod IP");
    assert_eq!(r.status, 200, "{r:?}");

    // Its Service's names resolve (system resolver, /etc/hosts) to the pod IP and answer.
    for name in ["echo.smoke.svc", "echo.smoke.svc.cluster.local"] {
        poll_until(
            format!("{name} to resolve to {pod_ip}"),
            scaled(Duration::from_secs(10)),
            Duration::from_millis(50),
            &[],
            || async { (resolve(name) == vec![IpAddr::V4(pod_ip)]).then_some(()) },
        )
        .await?;
    }
    let r = http_get(
        "echo.smoke.svc.cluster.local:8080",
        "/",
        Duration::from_secs(2),
    )
    .expect("GET through the service name");
    assert_eq!(r.status, 200, "{r:?}");

    // The foreign image's pod is Pending with a reason naming the image.
    let foreign = poll_until(
        "pod smoke/foreign to report ImageNotRunnable",
        scaled(Duration::from_secs(10)),
        Duration::from_millis(100),
        &[],
        || async {
            let p = pods.get("foreign").await.ok()?;
            let s = p.status.clone()?;
            let w = s.container_statuses?.first()?.state.clone()?.waiting?;
            (w.reason.as_deref() == Some("ImageNotRunnable")).then_some((s.phase, w.message))
        },
    )
    .await?;
    assert_eq!(foreign.0.as_deref(), Some("Pending"));
    assert!(foreign.1.unwrap_or_default().contains("nginx:1.25"));

    // kubectl works with the admin kubeconfig; RBAC holds for the operator's.
    let (ok, out) = kubectl_out(cp.kubectl(), &["get", "pods", "-n", NS, "-o", "wide"]);
    assert!(
        ok && out.contains("echo") && out.contains("Running"),
        "{out}"
    );
    let (ok, out) = kubectl_out(cp.kubectl_as_operator(), &["get", "nodes"]);
    assert!(
        !ok && out.contains("forbidden"),
        "operator must not list nodes: {out}"
    );
    let (ok, out) = kubectl_out(cp.kubectl_as_operator(), &["get", "pods", "-n", NS]);
    assert!(ok && out.contains("echo"), "{out}");
    let (ok, out) = kubectl_out(
        cp.kubectl_as_operator(),
        &[
            "auth",
            "can-i",
            "list",
            "loadtests.murmuration.dev",
            "-n",
            NS,
        ],
    );
    assert!(ok && out.trim() == "yes", "{out}");
    let operator = cp.operator_client().await?;
    let op_nodes: Api<Node> = Api::all(operator.clone());
    match op_nodes.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403),
        other => panic!("operator listed nodes: {other:?}"),
    }
    let op_pods: Api<Pod> = Api::namespaced(operator, NS);
    assert!(!op_pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .is_empty());

    // Deleting the pod stops its process and removes the object; the name stops resolving
    // to it.
    let pids = kubelet.pod_pids(NS, "echo");
    assert_eq!(pids.len(), 1, "one process for the pod");
    pods.delete("echo", &DeleteParams::default()).await.unwrap();
    poll_until(
        "pod smoke/echo to be gone after deletion",
        scaled(Duration::from_secs(15)),
        Duration::from_millis(100),
        &logs,
        || async { matches!(pods.get_opt("echo").await, Ok(None)).then_some(()) },
    )
    .await?;
    assert!(
        !procs::pid_alive(pids[0]),
        "the pod's process survived its deletion"
    );
    assert!(http_get(&format!("{pod_ip}:8080"), "/", Duration::from_secs(1)).is_err());
    poll_until(
        "echo.smoke.svc to stop resolving to the deleted pod",
        scaled(Duration::from_secs(10)),
        Duration::from_millis(50),
        &[],
        || async { (resolve("echo.smoke.svc") == vec![IpAddr::V4(NO_ENDPOINTS_IP)]).then_some(()) },
    )
    .await?;

    // Teardown leaves nothing behind.
    let cp_pids = cp.pids();
    let cp_dir = cp.dir().map(Path::to_path_buf);
    drop(kubelet);
    drop(cp);
    assert!(
        !hosts_mentions_pid(std::process::id()),
        "hosts block left behind"
    );
    for pid in cp_pids {
        assert!(
            !procs::pid_alive(pid),
            "control plane process {pid} left behind"
        );
    }
    if let Some(d) = cp_dir {
        assert!(!d.exists(), "{} left behind", d.display());
    }
    eprintln!(
        "smoke: control plane up in {t_cp:.1?}; whole test {:.1?}",
        t0.elapsed()
    );
    Ok(())
}
