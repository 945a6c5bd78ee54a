//! The CustomResourceDefinitions, generated from the Rust types, and their YAML as it is
//! committed under `manifests/crds/` and `charts/murmuration/crds/`.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::{Coordinator, LoadTest, Throttle};

/// Every CRD of Murmuration with the file name it is committed under.
pub fn all() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        ("loadtests.murmuration.dev.yaml", for_1_20(LoadTest::crd())),
        ("throttles.murmuration.dev.yaml", for_1_20(Throttle::crd())),
        (
            "coordinators.murmuration.dev.yaml",
            for_1_20(Coordinator::crd()),
        ),
    ]
}

/// Makes a generated CRD acceptable to Kubernetes 1.20 and readable with `kubectl
/// explain`:
///
/// - schemars lists `null` among the values of an optional enum, which 1.20 rejects (with
///   the misleading "per-version schemas may not all be set to identical values");
/// - schemars marks every optional field `nullable: true`. The API server publishes CRD
///   schemas to kubectl as OpenAPI v2, which has no `nullable`: it drops the type (and the
///   properties) of every nullable field, so `kubectl explain` shows `<>` for them and
///   nothing below. An optional field is simply left out, and since 1.20 the API server
///   prunes a `null` written for a field that is not nullable, so nothing needs it.
fn for_1_20(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    fn strip_nulls(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::Array(values)) = map.get_mut("enum") {
                    values.retain(|x| !x.is_null());
                }
                if map.get("nullable") == Some(&serde_json::Value::Bool(true)) {
                    map.remove("nullable");
                }
                map.values_mut().for_each(strip_nulls);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip_nulls),
            _ => {}
        }
    }
    let mut json = serde_json::to_value(&crd).expect("a CRD always serialises");
    strip_nulls(&mut json);
    serde_json::from_value(json).expect("the same CRD, minus nulls")
}

/// The YAML text of one CRD, with a header saying where it comes from.
pub fn to_yaml(crd: &CustomResourceDefinition) -> String {
    let body = serde_saphyr::to_string(crd).expect("a CRD always serialises");
    format!(
        "# Generated from crates/crds by `cargo run -p murmuration-crds --bin crdgen`.\n# Do not edit: change the Rust types and regenerate.\n{body}"
    )
}
