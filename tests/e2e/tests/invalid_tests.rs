//! Invalid LoadTests on a real cluster: each applied with kubectl is refused by the API
//! server (what the schema can say), or gets condition `Invalid` and an Event naming the
//! field within 5 s (what the model's compiler says, as `murmur run` says it), and no Pod,
//! Secret or StatefulSet is created for it. The operator runs as a pod, installed by the
//! Helm chart, with the chart's RBAC.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams};
use murmuration_crds::LoadTest;
use murmuration_e2e::manifests;
use murmuration_e2e::util::{poll_until, scaled};
use murmuration_e2e::{binaries, ControlPlane, KubeletConfig, Result};

const SYSTEM: &str = "murmuration-system";
const NS: &str = "invalid";

/// Installs the chart (Helm SDK) with its defaults.
fn helm_install(kubeconfig: &Path) {
    let chart = binaries::workspace_root().join("charts/murmuration");
    let script = r#"
import sys
import helm_python
chart, kubeconfig, ns = sys.argv[1], sys.argv[2], sys.argv[3]
cfg = helm_python.Config(kubeconfig_path=kubeconfig, namespace=ns)
cfg.install(chart, "murmuration", {"logLevel": "info"}, namespace=ns)
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
}

/// `kubectl ARGS` with `stdin`: whether it succeeded, and what it said.
fn kubectl(cp: &ControlPlane, args: &[&str], stdin: &str) -> (bool, String) {
    let cache = std::env::temp_dir().join(format!(
        "murmuration-e2e-kubectl-cache-{}",
        std::process::id()
    ));
    let mut child = cp
        .kubectl()
        .arg(format!("--cache-dir={}", cache.display()))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn test(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: murmuration.dev/v1alpha1\nkind: LoadTest\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  users: 1\n  vars: {{target: \"http://127.0.0.1:1\"}}\n{spec}"
    )
}

const HTTP: &str = "  scenario:\n    http:\n      baseUrl: \"{{vars.target}}\"\n      steps:\n";

/// (name, manifest, the field the answer names; `None`: the API server refuses it).
fn cases() -> Vec<(&'static str, String, Option<&'static str>)> {
    vec![
        (
            "zero-duration",
            test("zero-duration", &format!("  duration: 0s\n{HTTP}        - request: {{path: /}}\n")),
            Some("spec.duration"),
        ),
        (
            "no-path",
            test("no-path", &format!("{HTTP}        - request: {{name: home}}\n")),
            Some("spec.scenario.http.steps[0].request"),
        ),
        (
            "no-base-url",
            test("no-base-url", "  scenario:\n    http:\n      steps:\n        - request: {path: /}\n"),
            Some("spec.scenario.http.steps[0].request.path"),
        ),
        (
            "messages",
            test("messages", "  scenario:\n    messaging: {server: \"127.0.0.1:1\", minMessages: 9, maxMessages: 2}\n"),
            Some("spec.scenario.messaging.minMessages"),
        ),
        (
            "template",
            test("template", &format!("{HTTP}        - request: {{path: \"/{{{{user.\"}}\n")),
            Some("spec.scenario.http.steps[0].request.path"),
        ),
        (
            "jsonpath",
            test("jsonpath", &format!("{HTTP}        - request: {{path: /, extract: {{o: \"id[\"}}}}\n")),
            Some("spec.scenario.http.steps[0].request.extract.o"),
        ),
        (
            "header",
            test("header", &format!("{HTTP}        - request: {{path: /, headers: {{x-a: \"a\\nb\"}}}}\n")),
            Some("spec.scenario.http.steps[0].request.headers.x-a"),
        ),
        (
            "metric",
            test("metric", &format!("{HTTP}        - request: {{path: /}}\n  thresholds:\n    - {{metric: latency.p42, max: 1s}}\n")),
            None,
        ),
        (
            "threshold-step",
            test("threshold-step", &format!("{HTTP}        - request: {{name: home, path: /}}\n  thresholds:\n    - {{metric: latency.p99, step: checkout, max: 1s}}\n")),
            Some("spec.thresholds[0].step"),
        ),
        (
            "throttle-step",
            test("throttle-step", &format!("{HTTP}        - throttle: nowhere\n        - request: {{path: /}}\n")),
            Some("spec.scenario.http.steps[0].throttle"),
        ),
        (
            "negative-users",
            test("negative-users", &format!("{HTTP}        - request: {{path: /}}\n")).replace("users: 1", "users: -5"),
            None,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_tests_are_refused_or_marked_invalid_and_create_nothing() -> Result<()> {
    binaries::project_binary("murmuration-agent", "murmur")?;
    binaries::project_binary("murmuration-operator", "murmur-operator")?;
    let cp = ControlPlane::start().await?;
    let admin = cp.admin_client().await?;
    let kubelet = cp.start_kubelet(KubeletConfig::default()).await?;
    cp.create_namespace(&admin, SYSTEM).await?;
    cp.create_namespace(&admin, NS).await?;
    helm_install(cp.admin_kubeconfig());
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
            pods.items
                .iter()
                .any(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                })
                .then_some(())
        },
    )
    .await
    .inspect_err(|_| eprintln!("{}", kubelet.dump_logs()))?;

    let tests: Api<LoadTest> = Api::namespaced(admin.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), NS);
    let sets: Api<StatefulSet> = Api::namespaced(admin.clone(), NS);
    for (name, manifest, field) in cases() {
        let applied = Instant::now();
        let (ok, said) = kubectl(&cp, &["apply", "-f", "-"], &manifest);
        let Some(field) = field else {
            assert!(!ok, "{name}: the API server accepted it: {said}");
            eprintln!(
                "invalid: {name}: refused by the API server: {}",
                said.trim()
            );
            continue;
        };
        assert!(ok, "{name}: kubectl apply: {said}");
        // Condition Invalid and an Event, both naming the field.
        let message = poll_until(
            format!("{name}: condition Invalid and an Event naming {field}"),
            scaled(Duration::from_secs(5)),
            Duration::from_millis(100),
            &[],
            || async {
                let lt = tests.get(name).await.ok()?;
                let st = serde_json::to_value(lt.status?).ok()?;
                let invalid = st["conditions"].as_array()?.iter().find(|c| {
                    c["type"] == "Invalid"
                        && c["status"] == "True"
                        && c["message"].as_str().is_some_and(|m| m.contains(field))
                })?;
                let (_, events) = kubectl(
                    &cp,
                    &[
                        "get",
                        "events",
                        "-n",
                        NS,
                        "--field-selector",
                        &format!("involvedObject.name={name},reason=Invalid"),
                    ],
                    "",
                );
                events
                    .contains(field)
                    .then(|| invalid["message"].as_str().unwrap_or_default().to_owned())
            },
        )
        .await?;
        eprintln!(
            "invalid: {name}: Invalid after {} ms: {message}",
            applied.elapsed().as_millis()
        );
        let lp = ListParams::default().labels(&format!("murmuration.dev/loadtest={name}"));
        assert!(
            pods.list(&lp).await.unwrap().items.is_empty(),
            "{name}: a Pod"
        );
        assert!(
            secrets.list(&lp).await.unwrap().items.is_empty(),
            "{name}: a Secret"
        );
        assert!(
            sets.list(&lp).await.unwrap().items.is_empty(),
            "{name}: a StatefulSet"
        );
    }
    Ok(())
}
