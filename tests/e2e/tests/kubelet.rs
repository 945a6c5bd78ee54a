//! The test kubelet's behaviour against the real control plane: restart policies,
//! termination messages, env sources, configuration errors, liveness probes, Deployments
//! behind a Service, and the service account kubeconfig it gives pods.

use std::collections::BTreeMap;
use std::net::{IpAddr, ToSocketAddrs};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use murmuration_e2e::ipalloc::NO_ENDPOINTS_IP;
use murmuration_e2e::manifests::apply_yaml;
use murmuration_e2e::util::{poll_until, scaled};
use murmuration_e2e::{ControlPlane, ImageRunner, KubeletConfig, Result, TestKubelet};
use serde_json::json;

const NS: &str = "kl";
const IMAGE: &str = "murmuration/test-echo:dev";

async fn wait_pod<T>(
    pods: &Api<Pod>,
    kubelet: &TestKubelet,
    name: &str,
    what: &str,
    f: impl Fn(&Pod) -> Option<T>,
) -> Result<T> {
    let logs = kubelet.log_files(NS, name);
    poll_until(
        format!("pod {NS}/{name}: {what}"),
        scaled(Duration::from_secs(30)),
        Duration::from_millis(100),
        &logs,
        || async { pods.get(name).await.ok().and_then(|p| f(&p)) },
    )
    .await
}

fn cstatus(p: &Pod) -> Option<ContainerStatus> {
    p.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()
        .cloned()
}

fn phase(p: &Pod) -> Option<String> {
    p.status.as_ref()?.phase.clone()
}

fn proc_env(pid: u32) -> BTreeMap<String, String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter_map(|kv| {
            let s = String::from_utf8_lossy(kv);
            s.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

fn resolve(name: &str) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = (name, 8080)
        .to_socket_addrs()
        .map(|it| it.map(|a| a.ip()).collect())
        .unwrap_or_default();
    v.sort();
    v.dedup();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_behaviour() -> Result<()> {
    // A binary the kubelet builds with cargo when needed: build it before any deadline.
    tokio::task::spawn_blocking(|| {
        murmuration_e2e::binaries::project_binary("murmuration-e2e", "e2e-http-echo")
    })
    .await
    .unwrap()?;
    let cp = ControlPlane::start().await?;
    let admin = cp.admin_client().await?;
    let kubelet = cp
        .start_kubelet(KubeletConfig::default().image(
            "murmuration/test-echo",
            ImageRunner::path(env!("CARGO_BIN_EXE_e2e-http-echo")),
        ))
        .await?;
    cp.create_namespace(&admin, NS).await?;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);

    apply_yaml(
        &admin,
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: crashy, namespace: {NS}}}
spec:
  automountServiceAccountToken: false
  restartPolicy: OnFailure
  containers: [{{name: c, image: {IMAGE}, args: ["--bogus"]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: once, namespace: {NS}}}
spec:
  automountServiceAccountToken: false
  restartPolicy: Never
  containers: [{{name: c, image: {IMAGE}, args: ["--bogus"]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: lastwords, namespace: {NS}}}
spec:
  automountServiceAccountToken: false
  restartPolicy: Never
  containers:
    - name: c
      image: {IMAGE}
      args: ["--die", "/dev/termination-log", "out of cheese"]
---
apiVersion: v1
kind: Pod
metadata: {{name: lastlines, namespace: {NS}}}
spec:
  automountServiceAccountToken: false
  restartPolicy: Never
  containers:
    - name: c
      image: {IMAGE}
      args: ["--bogus"]
      terminationMessagePolicy: FallbackToLogsOnError
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: cm, namespace: {NS}}}
data: {{greeting: hello}}
---
apiVersion: v1
kind: Pod
metadata: {{name: envy, namespace: {NS}, labels: {{tier: front}}}}
spec:
  automountServiceAccountToken: false
  containers:
    - name: c
      image: {IMAGE}
      args: ["--listen", "$(POD_IP):8080"]
      env:
        - {{name: POD_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}
        - {{name: NS, valueFrom: {{fieldRef: {{fieldPath: metadata.namespace}}}}}}
        - {{name: NODE, valueFrom: {{fieldRef: {{fieldPath: spec.nodeName}}}}}}
        - {{name: TIER, valueFrom: {{fieldRef: {{fieldPath: "metadata.labels['tier']"}}}}}}
        - {{name: GREETING, valueFrom: {{configMapKeyRef: {{name: cm, key: greeting}}}}}}
        - {{name: TOKEN, valueFrom: {{secretKeyRef: {{name: later, key: token}}}}}}
        - {{name: URL, value: "http://$(POD_IP):8080/$(GREETING)"}}
---
apiVersion: v1
kind: Pod
metadata: {{name: unlive, namespace: {NS}}}
spec:
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 1
  containers:
    - name: c
      image: {IMAGE}
      args: ["--listen", "$(POD_IP):8080"]
      env: [{{name: POD_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}]
      livenessProbe: {{tcpSocket: {{port: 9}}, periodSeconds: 1, failureThreshold: 1}}
---
apiVersion: v1
kind: Pod
metadata: {{name: withsa, namespace: {NS}}}
spec:
  containers:
    - name: c
      image: {IMAGE}
      args: ["--listen", "$(POD_IP):8080"]
      env: [{{name: POD_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}]
"#
        ),
        NS,
    )
    .await?;

    // OnFailure: a failing container is restarted with a backoff.
    let cs = wait_pod(&pods, &kubelet, "crashy", "restarted at least twice", |p| {
        cstatus(p).filter(|c| c.restart_count >= 2)
    })
    .await?;
    let last = cs.last_state.and_then(|s| s.terminated).expect("lastState");
    assert_eq!(last.exit_code, 2);

    // Never: the pod fails with the container's exit code.
    let cs = wait_pod(&pods, &kubelet, "once", "Failed", |p| {
        (phase(p).as_deref() == Some("Failed"))
            .then(|| cstatus(p))
            .flatten()
    })
    .await?;
    assert_eq!(cs.restart_count, 0);
    let terminated = cs.state.and_then(|s| s.terminated).expect("terminated");
    assert_eq!(terminated.exit_code, 2);
    // Policy File (the default) and nothing written: no message.
    assert_eq!(terminated.message, None);

    // Termination messages as a kubelet reads them: the file at terminationMessagePath
    // (the container's own, each its own file), else with FallbackToLogsOnError the tail
    // of the failed run's log.
    let terminated = |name: &'static str| {
        let pods = pods.clone();
        let kubelet = &kubelet;
        async move {
            wait_pod(&pods, kubelet, name, "terminated", |p| {
                cstatus(p)?.state?.terminated
            })
            .await
        }
    };
    let t = terminated("lastwords").await?;
    assert_eq!((t.exit_code, t.reason.as_deref()), (3, Some("Error")));
    assert_eq!(t.message.as_deref(), Some("out of cheese"));
    let t = terminated("lastlines").await?;
    assert_eq!(t.exit_code, 2);
    let message = t.message.unwrap_or_default();
    assert!(
        message.ends_with("usage: e2e-http-echo --listen <ip:port> | --die <path> <message>"),
        "{message:?}"
    );
    assert!(!message.contains("murmuration-e2e: start"), "{message:?}");

    // A missing Secret holds the container in CreateContainerConfigError until it exists.
    let msg = wait_pod(&pods, &kubelet, "envy", "CreateContainerConfigError", |p| {
        let w = cstatus(p)?.state?.waiting?;
        (w.reason.as_deref() == Some("CreateContainerConfigError")).then_some(w.message)
    })
    .await?;
    assert!(msg.unwrap_or_default().contains("later"));
    apply_yaml(
        &admin,
        &format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: later, namespace: {NS}}}\nstringData: {{token: s3cret}}\n"),
        NS,
    )
    .await?;
    wait_pod(&pods, &kubelet, "envy", "Running", |p| {
        (phase(p).as_deref() == Some("Running")).then_some(())
    })
    .await?;
    let pid = kubelet.pod_pids(NS, "envy")[0];
    let env = proc_env(pid);
    let ip = kubelet.pod_ip(NS, "envy").unwrap().to_string();
    assert_eq!(env.get("POD_IP"), Some(&ip));
    assert_eq!(env.get("NS").map(String::as_str), Some(NS));
    assert_eq!(
        env.get("NODE").map(String::as_str),
        Some(kubelet.node_name())
    );
    assert_eq!(env.get("TIER").map(String::as_str), Some("front"));
    assert_eq!(env.get("GREETING").map(String::as_str), Some("hello"));
    assert_eq!(env.get("TOKEN").map(String::as_str), Some("s3cret"));
    assert_eq!(env.get("URL"), Some(&format!("http://{ip}:8080/hello")));
    assert_eq!(env.get("HOSTNAME").map(String::as_str), Some("envy"));
    assert!(
        !env.contains_key("KUBECONFIG"),
        "no token mounted, no kubeconfig"
    );

    // A failing liveness probe kills and restarts the container.
    let cs = wait_pod(
        &pods,
        &kubelet,
        "unlive",
        "restarted by its liveness probe",
        |p| cstatus(p).filter(|c| c.restart_count >= 1),
    )
    .await?;
    let last = cs.last_state.and_then(|s| s.terminated).expect("lastState");
    assert!(
        last.message
            .unwrap_or_default()
            .contains("Liveness probe failed"),
        "{:?}",
        last.reason
    );

    // A pod that mounts its service account token gets a kubeconfig with a token of it.
    wait_pod(&pods, &kubelet, "withsa", "Running", |p| {
        (phase(p).as_deref() == Some("Running")).then_some(())
    })
    .await?;
    let env = proc_env(kubelet.pod_pids(NS, "withsa")[0]);
    let kc = env
        .get("KUBECONFIG")
        .expect("KUBECONFIG for a pod with a token");
    let out = std::process::Command::new(murmuration_e2e::binaries::kubectl_path())
        .args(["--kubeconfig", kc, "get", "pods"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains(&format!("system:serviceaccount:{NS}:default")),
        "the token authenticates as the pod's service account: {text}"
    );

    // A Deployment behind a Service: the name resolves to every ready replica, follows
    // scaling, and points nowhere (connection refused) at zero replicas.
    apply_yaml(
        &admin,
        &format!(
            r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {NS}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: 1
      containers:
        - name: http
          image: {IMAGE}
          args: ["--listen", "$(POD_IP):8080"]
          env: [{{name: POD_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}]
          readinessProbe: {{httpGet: {{port: 8080, path: /}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {NS}}}
spec:
  selector: {{app: web}}
  ports: [{{port: 8080, protocol: TCP}}]  # 1.20 server-side apply needs the protocol
"#
        ),
        NS,
    )
    .await?;
    let name = "web.kl.svc.cluster.local";
    poll_until(
        format!("{name} to resolve to 2 replicas"),
        scaled(Duration::from_secs(30)),
        Duration::from_millis(100),
        &[],
        || async {
            let ips = resolve(name);
            (ips.len() == 2
                && ips
                    .iter()
                    .all(|ip| ip.is_loopback() && !ip.to_string().ends_with(".1")))
            .then_some(())
        },
    )
    .await?;
    let r = murmuration_e2e::util::http_get(&format!("{name}:8080"), "/", Duration::from_secs(2))
        .unwrap();
    assert_eq!(r.status, 200);
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), NS);
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 0}})),
        )
        .await
        .unwrap();
    poll_until(
        format!("{name} to point nowhere at 0 replicas"),
        scaled(Duration::from_secs(30)),
        Duration::from_millis(100),
        &[],
        || async { (resolve(name) == vec![IpAddr::V4(NO_ENDPOINTS_IP)]).then_some(()) },
    )
    .await?;
    assert!(
        murmuration_e2e::util::http_get(&format!("{name}:8080"), "/", Duration::from_secs(1))
            .is_err()
    );

    // Pods of an unknown image can be mapped at run time, here to a workspace binary that
    // the kubelet builds with cargo (from inside `cargo test`) before running it.
    kubelet.register_image(
        "example/late",
        ImageRunner::cargo("murmuration-e2e", "e2e-http-echo"),
    );
    let late: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "late", "namespace": NS},
        "spec": {"automountServiceAccountToken": false, "restartPolicy": "Never",
                 "containers": [{"name": "c", "image": "example/late:1", "args": ["--bogus"]}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &late).await.unwrap();
    wait_pod(&pods, &kubelet, "late", "Failed (it ran)", |p| {
        (phase(p).as_deref() == Some("Failed")).then_some(())
    })
    .await?;
    Ok(())
}
