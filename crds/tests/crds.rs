//! The committed CRD YAML matches the Rust types, installs on Kubernetes 1.20 (nothing newer
//! in it), and documents every field for `kubectl explain`.

use murmuration_crds::crd;
use serde_json::Value;
use std::path::PathBuf;

fn manifests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/crds")
}

#[test]
fn committed_crd_yaml_is_up_to_date() {
    for (file, def) in crd::all() {
        let path = manifests_dir().join(file);
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == crd::to_yaml(&def),
            "{} is stale: run `cargo run -p murmuration-crds --bin crdgen` and commit the result",
            path.display()
        );
    }
}

/// Walks every schema node, calling `f(path, node)`.
#[test]
fn the_helm_chart_ships_the_same_crds() {
    let chart = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/murmuration/crds");
    for (file, _) in murmuration_crds::crd::all() {
        let ours = std::fs::read_to_string(manifests_dir().join(file)).unwrap();
        let charted = std::fs::read_to_string(chart.join(file)).unwrap_or_else(|e| {
            panic!("charts/murmuration/crds/{file}: {e}; run `cargo run -p murmuration-crds --bin crdgen`")
        });
        assert!(
            ours == charted,
            "charts/murmuration/crds/{file} differs from manifests/crds/{file}; run `cargo run -p murmuration-crds --bin crdgen`"
        );
    }
}

fn walk(path: &str, node: &Value, f: &mut dyn FnMut(&str, &serde_json::Map<String, Value>)) {
    if let Value::Object(map) = node {
        f(path, map);
        for (k, v) in map {
            match v {
                Value::Object(_) => walk(&format!("{path}.{k}"), v, f),
                Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        walk(&format!("{path}.{k}[{i}]"), item, f)
                    }
                }
                _ => {}
            }
        }
    }
}

#[test]
fn crds_use_nothing_newer_than_kubernetes_1_20() {
    // Schema keywords and CRD fields that a 1.20 API server rejects or silently drops.
    let too_new = [
        "x-kubernetes-validations", // CEL, 1.25+
        "messageExpression",
        "selectableFields", // 1.30+
        "$ref",
        "definitions",
        "$defs",
        "const",
    ];
    for (file, def) in crd::all() {
        let json = serde_json::to_value(&def).unwrap();
        walk(file, &json, &mut |path, map| {
            for key in too_new {
                assert!(
                    !map.contains_key(key),
                    "{path} uses {key}, not available on 1.20"
                );
            }
            // Structural schemas forbid additionalProperties next to properties.
            assert!(
                !(map.contains_key("properties") && map.contains_key("additionalProperties")),
                "{path}: properties and additionalProperties together are not structural"
            );
            if let Some(Value::Array(values)) = map.get("enum") {
                assert!(
                    !values.iter().any(Value::is_null),
                    "{path}: null in an enum is refused by 1.20"
                );
            }
            if let Some(Value::Bool(false)) = map.get("additionalProperties") {
                panic!("{path}: additionalProperties: false is not allowed in a CRD schema");
            }
        });
        let version = &json["spec"]["versions"][0];
        assert_eq!(json["apiVersion"], "apiextensions.k8s.io/v1", "{file}");
        assert_eq!(version["name"], "v1alpha1");
        assert!(
            version["subresources"]["status"].is_object(),
            "{file} has /status"
        );
    }
}

#[test]
fn every_spec_field_is_documented_for_kubectl_explain() {
    for (file, def) in crd::all() {
        let json = serde_json::to_value(&def).unwrap();
        let spec = &json["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        walk(&format!("{file}:spec"), spec, &mut |path, map| {
            if let Some(Value::Object(props)) = map.get("properties") {
                for (name, prop) in props {
                    let ok = prop
                        .get("description")
                        .and_then(Value::as_str)
                        .is_some_and(|d| d.len() > 5);
                    assert!(ok, "{path}.{name} has no description");
                }
            }
        });
    }
}

/// `kubectl explain` shows every field's type: each property has a `type` or an
/// `x-kubernetes-*` marker saying what it holds, and none is `nullable` (the API server
/// publishes schemas to kubectl as OpenAPI v2, dropping the type of nullable fields, which
/// `kubectl explain` then shows as `<>`).
#[test]
fn every_field_has_a_type_for_kubectl_explain() {
    let mut fields = 0;
    for (file, def) in crd::all() {
        let json = serde_json::to_value(&def).unwrap();
        let root = &json["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        walk(file, root, &mut |path, map| {
            for holder in ["properties", "items", "additionalProperties"] {
                let children: Vec<(String, &Value)> = match map.get(holder) {
                    Some(Value::Object(props)) if holder == "properties" => props
                        .iter()
                        .map(|(k, v)| (format!("{path}.{k}"), v))
                        .collect(),
                    Some(v @ Value::Object(_)) => vec![(format!("{path}.{holder}"), v)],
                    _ => vec![],
                };
                for (at, child) in children {
                    fields += 1;
                    let typed = child.get("type").and_then(Value::as_str).is_some()
                        || child
                            .as_object()
                            .unwrap()
                            .keys()
                            .any(|k| k.starts_with("x-kubernetes-"));
                    assert!(typed, "{at} has no type: kubectl explain shows <>");
                    assert!(
                        child.get("nullable").is_none(),
                        "{at} is nullable: its type is dropped from what kubectl explain reads"
                    );
                }
            }
        });
    }
    assert!(fields > 100, "only {fields} fields walked");
}

/// A field with a fixed list of values is described by its own doc, which names its values,
/// not by its type's (which the schema's inlining used to put in its place).
#[test]
fn fields_with_fixed_values_name_them_for_kubectl_explain() {
    for (file, def) in crd::all() {
        let json = serde_json::to_value(&def).unwrap();
        walk(file, &json, &mut |path, map| {
            let Some(Value::Array(values)) = map.get("enum") else {
                return;
            };
            let description = map
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or_default();
            assert!(
                values
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|v| description.contains(&format!("`{v}`"))),
                "{path}: {description:?} names none of {values:?}"
            );
        });
    }
}

#[test]
fn loadtest_has_scale_subresource_short_names_and_columns() {
    let def = crd::all()
        .into_iter()
        .find(|(f, _)| f.starts_with("loadtests"))
        .unwrap()
        .1;
    let json = serde_json::to_value(&def).unwrap();
    assert_eq!(json["spec"]["names"]["shortNames"][0], "lt");
    let v = &json["spec"]["versions"][0];
    assert_eq!(
        v["subresources"]["scale"]["specReplicasPath"],
        ".spec.users"
    );
    assert_eq!(
        v["subresources"]["scale"]["statusReplicasPath"],
        ".status.users.running"
    );
    let columns: Vec<&str> = v["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        columns,
        ["Phase", "Users", "Running", "Agents", "RPS", "P99", "Result", "Age"]
    );
    let users = &v["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["users"];
    assert_eq!(
        users["minimum"].as_f64(),
        Some(0.0),
        "negative users rejected by the API server"
    );
    assert_eq!(
        users["format"], "int32",
        "the scale subresource needs int32"
    );
}

#[test]
fn short_names_of_throttle_and_coordinator() {
    let names: Vec<String> = crd::all()
        .iter()
        .map(|(_, d)| {
            d.spec
                .names
                .short_names
                .clone()
                .unwrap_or_default()
                .join(",")
        })
        .collect();
    assert_eq!(names, ["lt", "thr", "coord"]);
}
