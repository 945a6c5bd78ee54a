//! The objects of a test, built from its LoadTest (and its Throttles and Coordinators) by
//! pure functions: the token Secret, the master pod and its Service, the agents'
//! StatefulSet, and the ConfigMap that keeps the report. Every pod is hardened: non-root,
//! read-only root filesystem, no capabilities, no privilege escalation, seccomp
//! `RuntimeDefault`, and no service account token (only the operator talks to the API).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, Secret, SecretKeySelector, SecurityContext, Service,
    ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;
use kube::Resource;
use murmuration_crds::{Coordinator, LoadTest, LoadTestSpec, Throttle};

use crate::names::{self, AGENT_HEALTH_PORT, MASTER_PORT, TERMINATION_LOG, TOKEN_KEY};

/// Settings of the operator that shape the pods.
#[derive(Debug, Clone)]
pub struct PodSettings {
    /// The image of masters and agents (unless `spec.agent.image` says otherwise).
    pub image: String,
    /// Log filter of masters and agents.
    pub log: String,
}

impl Default for PodSettings {
    fn default() -> Self {
        PodSettings {
            image: format!("murmuration/agent:{}", env!("CARGO_PKG_VERSION")),
            log: "info".into(),
        }
    }
}

/// The owner reference that ties an object to its LoadTest (garbage collected with it).
pub fn owner(lt: &LoadTest) -> OwnerReference {
    lt.controller_owner_ref(&())
        .expect("a stored LoadTest has a name and a uid")
}

fn meta(lt: &LoadTest, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: lt.metadata.namespace.clone(),
        labels: Some(names::labels(&test_name(lt))),
        owner_references: Some(vec![owner(lt)]),
        ..ObjectMeta::default()
    }
}

/// The test's name.
pub fn test_name(lt: &LoadTest) -> String {
    lt.metadata.name.clone().unwrap_or_default()
}

/// The Secret with the test's token (created once; the token never changes).
pub fn token_secret(lt: &LoadTest, token: &str) -> Secret {
    Secret {
        metadata: meta(lt, names::token_secret(&test_name(lt))),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            TOKEN_KEY.to_owned(),
            ByteString(token.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}

/// The manifests the master runs (`MURMUR_TEST`): the LoadTest and the test's Throttles and
/// Coordinators as the model writes them (JSON of the documents, without cluster metadata).
pub fn test_manifests(
    lt: &LoadTest,
    throttles: &[Throttle],
    coordinators: &[Coordinator],
) -> String {
    murmuration_model::Manifests::of_objects(lt, throttles, coordinators).to_json()
}

/// The LoadTest spec a master pod was started with (its `MURMUR_TEST`, read by the model),
/// to tell which later edits it has not taken.
pub fn started_spec(master: &k8s_openapi::api::core::v1::Pod) -> Option<LoadTestSpec> {
    let text = master
        .spec
        .as_ref()?
        .containers
        .first()?
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == "MURMUR_TEST")?
        .value
        .as_deref()?;
    murmuration_model::parse_manifests("MURMUR_TEST", text)
        .ok()
        .map(|m| m.test.spec)
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn value_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn token_env(lt: &LoadTest) -> EnvVar {
    EnvVar {
        name: "MURMUR_TOKEN".into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: names::token_secret(&test_name(lt)),
                key: TOKEN_KEY.into(),
                ..SecretKeySelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// The remote-write bearer token of `spec.metrics.remoteWrite`, from the Secret key it
/// names (the master reads it from this variable).
fn remote_write_token_env(lt: &LoadTest) -> Option<EnvVar> {
    let secret = lt
        .spec
        .metrics
        .as_ref()?
        .remote_write
        .as_ref()?
        .bearer_token_secret
        .as_ref()?;
    Some(EnvVar {
        name: murmuration_crds::metrics::REMOTE_WRITE_TOKEN_ENV.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.name.clone(),
                key: secret.key.clone(),
                ..SecretKeySelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    })
}

fn hardened_container() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

fn hardened_pod() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(65532),
        run_as_group: Some(65532),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

fn http_probe(path: &str, port: i32, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(port),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

fn image(lt: &LoadTest, settings: &PodSettings) -> String {
    lt.spec
        .agent
        .as_ref()
        .and_then(|a| a.image.clone())
        .unwrap_or_else(|| settings.image.clone())
}

/// The master pod. Its container restarts in place (`restartPolicy: Always`); a restarted
/// master learns the running test back from its agents.
pub fn master_pod(
    lt: &LoadTest,
    manifests: &str,
    settings: &PodSettings,
) -> k8s_openapi::api::core::v1::Pod {
    let test = test_name(lt);
    let mut metadata = meta(lt, names::master(&test));
    metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .extend(names::component_labels(&test, "master"));
    let mut env = vec![
        field_env("POD_IP", "status.podIP"),
        // The `namespace` label of the master's metrics.
        field_env("POD_NAMESPACE", "metadata.namespace"),
        token_env(lt),
        value_env("MURMUR_TEST", manifests),
        value_env("MURMUR_LOG", &settings.log),
        value_env("MURMUR_TERMINATION_LOG", TERMINATION_LOG),
    ];
    env.extend(remote_write_token_env(lt));
    let (volumes, mounts) = match baseline_volume(lt) {
        Some((volume, mount)) => {
            env.push(value_env(
                "MURMUR_BASELINE",
                &format!("{BASELINE_DIR}/{}", murmuration_crds::report::KEY),
            ));
            (Some(vec![volume]), Some(vec![mount]))
        }
        None => (None, None),
    };
    k8s_openapi::api::core::v1::Pod {
        metadata,
        spec: Some(PodSpec {
            restart_policy: Some("Always".into()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            security_context: Some(hardened_pod()),
            node_selector: lt
                .spec
                .agent
                .as_ref()
                .map(|a| a.node_selector.clone())
                .filter(|n| !n.is_empty()),
            tolerations: lt
                .spec
                .agent
                .as_ref()
                .map(|a| a.tolerations.clone())
                .filter(|t| !t.is_empty()),
            containers: vec![Container {
                name: "master".into(),
                image: Some(image(lt, settings)),
                args: Some(vec![
                    "master".into(),
                    "--listen".into(),
                    format!("$(POD_IP):{MASTER_PORT}"),
                ]),
                env: Some(env),
                volume_mounts: mounts,
                termination_message_path: Some(TERMINATION_LOG.into()),
                // A master that dies before it could write its error still says why: the
                // tail of its log becomes the message.
                termination_message_policy: Some("FallbackToLogsOnError".into()),
                ports: Some(vec![ContainerPort {
                    name: Some("api".into()),
                    container_port: MASTER_PORT,
                    protocol: Some("TCP".into()),
                    ..ContainerPort::default()
                }]),
                readiness_probe: Some(http_probe("/healthz", MASTER_PORT, 1)),
                liveness_probe: Some(Probe {
                    initial_delay_seconds: Some(10),
                    ..http_probe("/healthz", MASTER_PORT, 10)
                }),
                resources: Some(ResourceRequirements {
                    requests: Some(BTreeMap::from([
                        ("cpu".into(), Quantity("100m".into())),
                        ("memory".into(), Quantity("64Mi".into())),
                    ])),
                    ..ResourceRequirements::default()
                }),
                security_context: Some(hardened_container()),
                ..Container::default()
            }],
            volumes,
            ..PodSpec::default()
        }),
        ..Default::default()
    }
}

/// Where the master finds the baseline's report (`spec.baseline`).
pub const BASELINE_DIR: &str = "/etc/murmuration/baseline";

/// The ConfigMap of `spec.baseline` as the master's volume, read-only. Optional: a
/// baseline not stored (yet) must not keep the pod from starting; the master then has no
/// baseline and skips the relative thresholds, saying so.
fn baseline_volume(lt: &LoadTest) -> Option<(Volume, VolumeMount)> {
    let name = lt.spec.baseline.as_ref()?.configmap()?;
    Some((
        Volume {
            name: "baseline".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: name.clone(),
                optional: Some(true),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        VolumeMount {
            name: "baseline".into(),
            mount_path: BASELINE_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    ))
}

/// The master's Service: agents and the operator reach the master by its name.
pub fn master_service(lt: &LoadTest) -> Service {
    let test = test_name(lt);
    Service {
        metadata: meta(lt, names::master(&test)),
        spec: Some(ServiceSpec {
            selector: Some(names::component_labels(&test, "master")),
            // Agents dial the master as soon as it listens, not a readiness period later
            // (they retry with a backoff until it does).
            publish_not_ready_addresses: Some(true),
            ports: Some(vec![ServicePort {
                name: Some("api".into()),
                port: MASTER_PORT,
                target_port: Some(IntOrString::Int(MASTER_PORT)),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The agents: a StatefulSet, so that an agent pod that dies comes back under its name
/// (and the master does not run its old users twice).
pub fn agents(lt: &LoadTest, settings: &PodSettings) -> StatefulSet {
    let test = test_name(lt);
    let namespace = lt.metadata.namespace.clone().unwrap_or_default();
    let selector = names::component_labels(&test, "agent");
    let mut pod_labels = names::labels(&test);
    pod_labels.extend(selector.clone());
    let agent = lt.spec.agent.clone().unwrap_or_default();
    StatefulSet {
        metadata: meta(lt, names::agents(&test)),
        spec: Some(StatefulSetSpec {
            replicas: Some(lt.spec.agents),
            service_name: Some(names::agents(&test)),
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(hardened_pod()),
                    termination_grace_period_seconds: Some(10),
                    node_selector: Some(agent.node_selector.clone()).filter(|n| !n.is_empty()),
                    tolerations: Some(agent.tolerations.clone()).filter(|t| !t.is_empty()),
                    containers: vec![Container {
                        name: "agent".into(),
                        image: Some(image(lt, settings)),
                        args: Some(vec![
                            "agent".into(),
                            "--master".into(),
                            names::master_url(&test, &namespace),
                            "--name".into(),
                            "$(POD_NAME)".into(),
                            "--health-listen".into(),
                            format!("$(POD_IP):{AGENT_HEALTH_PORT}"),
                        ]),
                        env: Some(vec![
                            field_env("POD_NAME", "metadata.name"),
                            field_env("POD_IP", "status.podIP"),
                            token_env(lt),
                            value_env("MURMUR_LOG", &settings.log),
                            value_env("MURMUR_TERMINATION_LOG", TERMINATION_LOG),
                        ]),
                        termination_message_path: Some(TERMINATION_LOG.into()),
                        termination_message_policy: Some("FallbackToLogsOnError".into()),
                        ports: Some(vec![ContainerPort {
                            name: Some("health".into()),
                            container_port: AGENT_HEALTH_PORT,
                            protocol: Some("TCP".into()),
                            ..ContainerPort::default()
                        }]),
                        readiness_probe: Some(http_probe("/readyz", AGENT_HEALTH_PORT, 2)),
                        liveness_probe: Some(Probe {
                            initial_delay_seconds: Some(10),
                            ..http_probe("/healthz", AGENT_HEALTH_PORT, 10)
                        }),
                        resources: agent.resources.clone(),
                        security_context: Some(hardened_container()),
                        ..Container::default()
                    }],
                    ..PodSpec::default()
                }),
            },
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

/// The ConfigMap that keeps the report once the pods are gone, in the format of
/// [`murmuration_crds::report`] (`report_gz` from [`murmuration_crds::report::fit`]).
pub fn report_configmap(lt: &LoadTest, report_gz: Vec<u8>) -> ConfigMap {
    ConfigMap {
        metadata: meta(lt, names::report(&test_name(lt))),
        binary_data: Some(BTreeMap::from([(
            murmuration_crds::report::KEY.to_owned(),
            ByteString(report_gz),
        )])),
        ..ConfigMap::default()
    }
}

/// The annotation holding a hash of the desired state an object was applied from.
pub const APPLIED_HASH: &str = "murmuration.dev/applied-hash";

/// `obj` with [`APPLIED_HASH`]: a hash of its content (stable within a build of the
/// operator; a new version applies each object once more).
pub fn stamped<K: Resource + serde::Serialize>(mut obj: K) -> K {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_vec(&obj)
        .expect("Kubernetes objects serialise")
        .hash(&mut h);
    obj.meta_mut()
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(APPLIED_HASH.into(), format!("{:016x}", h.finish()));
    obj
}

/// Whether `desired` (from [`stamped`]) must be applied: the object is not there, or was
/// applied from another desired state.
pub fn needs_apply<K: Resource>(desired: &K, cached: Option<&K>) -> bool {
    let hash = |o: &K| {
        o.meta()
            .annotations
            .as_ref()
            .and_then(|a| a.get(APPLIED_HASH).cloned())
    };
    cached.is_none_or(|c| hash(c) != hash(desired) || hash(c).is_none())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test(baseline: &str) -> LoadTest {
        serde_saphyr::from_str(&format!(
            "apiVersion: murmuration.dev/v1alpha1\nkind: LoadTest\nmetadata: {{name: shop, namespace: team, uid: 0b5e6f1c-1111-4222-8333-944455556666}}\nspec:\n  users: 1\n  scenario: {{http: {{baseUrl: 'http://x', steps: [{{request: {{path: /}}}}]}}}}\n{baseline}"
        ))
        .unwrap()
    }

    fn settings() -> PodSettings {
        PodSettings {
            image: "murmuration/agent:test".into(),
            log: "info".into(),
        }
    }

    /// `spec.baseline` becomes the master's optional, read-only volume and the file its
    /// `MURMUR_BASELINE` names; without one the pod has neither.
    #[test]
    fn the_baseline_report_is_mounted_into_the_master() {
        for (spec, configmap) in [
            ("  baseline: {report: shop-monday}\n", "shop-monday-report"),
            ("  baseline: {configMap: reference}\n", "reference"),
        ] {
            let pod = master_pod(&test(spec), "", &settings());
            let pod = pod.spec.unwrap();
            let volume = &pod.volumes.as_ref().unwrap()[0];
            let source = volume.config_map.as_ref().unwrap();
            assert_eq!(source.name, configmap);
            assert_eq!(source.optional, Some(true));
            let c = &pod.containers[0];
            let mount = &c.volume_mounts.as_ref().unwrap()[0];
            assert_eq!(
                (mount.name.as_str(), mount.read_only),
                (volume.name.as_str(), Some(true))
            );
            let env = c.env.as_ref().unwrap();
            let file = env.iter().find(|e| e.name == "MURMUR_BASELINE").unwrap();
            assert_eq!(
                file.value.as_deref(),
                Some(format!("{}/{}", mount.mount_path, murmuration_crds::report::KEY).as_str())
            );
        }
        let pod = master_pod(&test(""), "", &settings()).spec.unwrap();
        assert!(pod.volumes.is_none() && pod.containers[0].volume_mounts.is_none());
        assert!(!pod.containers[0]
            .env
            .as_ref()
            .unwrap()
            .iter()
            .any(|e| e.name == "MURMUR_BASELINE"));
    }
}
