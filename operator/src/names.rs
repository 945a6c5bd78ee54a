//! The names and labels of everything the operator creates for a test: deterministic, so
//! that a restarted operator finds its objects again and `kubectl get -l` finds a test's.

use std::collections::BTreeMap;

/// The master's API port (and the agents' connection port).
pub const MASTER_PORT: i32 = 8080;
/// The agents' health port (`/healthz`, `/readyz`, `/users`).
pub const AGENT_HEALTH_PORT: i32 = 8081;
/// The key of the token in the test's Secret.
pub const TOKEN_KEY: &str = "token";
/// Where masters and agents write their fatal error (`terminationMessagePath`, passed
/// to them as `MURMUR_TERMINATION_LOG`): the termination message `kubectl describe pod`
/// shows and the operator copies into the test's status.
pub const TERMINATION_LOG: &str = "/dev/termination-log";
/// The field manager of server-side apply.
pub const MANAGER: &str = "murmuration-operator";
/// Label: the LoadTest an object belongs to.
pub const TEST_LABEL: &str = "murmuration.dev/loadtest";
/// Label: master or agent.
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";

/// The Secret holding the test's token.
pub fn token_secret(test: &str) -> String {
    format!("{test}-token")
}

/// The master pod, and its Service.
pub fn master(test: &str) -> String {
    format!("{test}-master")
}

/// The agents' StatefulSet (its pods are `<test>-agent-0`, `-1`, …).
pub fn agents(test: &str) -> String {
    format!("{test}-agent")
}

/// The ConfigMap that keeps the report after the pods are gone (its format:
/// [`murmuration_crds::report`]).
pub fn report(test: &str) -> String {
    murmuration_crds::report::configmap_name(test)
}

/// Where agents and the operator reach the master.
pub fn master_url(test: &str, namespace: &str) -> String {
    format!("http://{}.{namespace}.svc:{MASTER_PORT}", master(test))
}

/// The labels of every object of a test.
pub fn labels(test: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "murmuration".into()),
        ("app.kubernetes.io/instance".into(), test.into()),
        ("app.kubernetes.io/managed-by".into(), MANAGER.into()),
        (TEST_LABEL.into(), test.into()),
    ])
}

/// The labels of a test's master or agent pods (also their selector).
pub fn component_labels(test: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (TEST_LABEL.into(), test.into()),
        (COMPONENT_LABEL.into(), component.into()),
    ])
}
