//! The CustomResourceDefinitions, generated from the Rust types, and their YAML as it is
//! committed under `manifests/crds/` and `charts/murmuration/crds/`.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::{Coordinator, LoadTest, Throttle};

/// Every CRD of Murmuration with the file name it is committed under.
pub fn all() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        ("loadtests.murmuration.dev.yaml", LoadTest::crd()),
        ("throttles.murmuration.dev.yaml", Throttle::crd()),
        ("coordinators.murmuration.dev.yaml", Coordinator::crd()),
    ]
}

/// The YAML text of one CRD, with a header saying where it comes from.
pub fn to_yaml(crd: &CustomResourceDefinition) -> String {
    let body = serde_yaml::to_string(crd).expect("a CRD always serialises");
    format!(
        "# Generated from crates/crds by `cargo run -p murmuration-crds --bin crdgen`.\n# Do not edit: change the Rust types and regenerate.\n{body}"
    )
}
