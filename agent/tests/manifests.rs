//! Reading manifests: every example parses, and bad input gets one clear message naming
//! the document, the field and the reason.

use murmuration_agent::plan::{load_plan, parse_manifests, ManifestError};
use murmuration_agent::registry::Registry;
use std::path::PathBuf;

fn examples() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_example_manifest_is_a_valid_plan() {
    let files = examples();
    assert!(
        files.len() >= 4,
        "http, messaging, throttle and coordinator examples: {files:?}"
    );
    for f in files {
        let plan = load_plan(f.to_str().unwrap(), &Registry::new());
        assert!(plan.is_ok(), "{}: {}", f.display(), plan.unwrap_err());
    }
}

const GOOD: &str = r#"
apiVersion: murmuration.dev/v1alpha1
kind: LoadTest
metadata: {name: shop}
spec:
  users: 10
  userRate: 5/s
  vars: {target: "http://127.0.0.1:1"}
  scenario:
    http:
      baseUrl: "{{vars.target}}"
      steps:
        - request: {path: /}
"#;

/// The plan error for `text`, as one line.
fn error_of(text: &str) -> (String, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("test.yaml");
    std::fs::write(&path, text).unwrap();
    match load_plan(path.to_str().unwrap(), &Registry::new()) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(ManifestError::Invalid {
            document,
            field,
            reason,
        }) => (document, field, reason),
        Err(other) => panic!("{other}"),
    }
}

#[test]
fn bad_input_names_document_field_and_reason() {
    let cases: Vec<(String, &str, &str)> = vec![
        (
            GOOD.replace("users: 10", "users: -3"),
            "spec.users",
            "negative",
        ),
        (
            GOOD.replace("users: 10", "users: ten"),
            "spec.users",
            "invalid type",
        ),
        (
            GOOD.replace("userRate: 5/s", "userRate: 5 per second"),
            "spec.userRate",
            "not a rate",
        ),
        (
            GOOD.replace("userRate: 5/s", "userRate: 5/s\n  duration: \"10\""),
            "spec.duration",
            "unit is missing",
        ),
        (
            GOOD.replace("userRate: 5/s", "userRate: 5/s\n  duration: 10"),
            "spec.duration",
            "expected a string",
        ),
        (
            GOOD.replace("userRate: 5/s", "userRate: 5/s\n  colour: blue"),
            "spec.colour",
            "unknown field `colour`",
        ),
        (
            GOOD.replace(
                "- request: {path: /}",
                "- request: {path: /, method: FETCH}",
            ),
            "spec.scenario.http.steps[0].request.method",
            "unknown variant",
        ),
        (
            GOOD.replace("- request: {path: /}", "- throttle: nowhere"),
            "spec.scenario.http.steps[0].throttle",
            "no Throttle of that name",
        ),
        (
            GOOD.replace("- request: {path: /}", "- coordinate: nobody"),
            "spec.scenario.http.steps[0].coordinate",
            "no Coordinator of that name",
        ),
        (
            GOOD.replace("baseUrl: \"{{vars.target}}\"", "baseUrl: \"{{vars.nope}}\""),
            "spec.scenario.http",
            "spec.vars has no \"nope\"",
        ),
        (
            GOOD.replace(
                "      steps:\n        - request: {path: /}",
                "      steps: []",
            ),
            "spec.scenario.http.steps",
            "at least one step",
        ),
        (
            GOOD.replace("users: 10", "users: 10\n  repeat: {times: 0}"),
            "spec.repeat.times",
            "at least 1",
        ),
        (
            GOOD.replace("    http:", "    custom: {name: mine}\n    http:"),
            "spec.scenario",
            "exactly one of",
        ),
        (
            GOOD.replace("kind: LoadTest", "kind: LoadTset"),
            "kind",
            "is not LoadTest",
        ),
        (
            GOOD.replace("murmuration.dev/v1alpha1", "murmuration.dev/v1"),
            "apiVersion",
            "must be murmuration.dev/v1alpha1",
        ),
    ];
    for (text, field, reason) in cases {
        let (document, f, r) = error_of(&text);
        assert!(
            document.contains("test.yaml: document 1 (LoadT"),
            "{document}"
        );
        assert_eq!(f, field, "{text}\n-> {f}: {r}");
        assert!(r.contains(reason), "{field}: expected {reason:?} in {r:?}");
    }
}

#[test]
fn custom_scenarios_must_be_built_in() {
    let text = GOOD.replace(
        "    http:\n      baseUrl: \"{{vars.target}}\"\n      steps:\n        - request: {path: /}",
        "    custom: {name: mine}",
    );
    let (_, field, reason) = error_of(&text);
    assert_eq!(field, "spec.scenario.custom.name");
    assert!(reason.contains("no scenario \"mine\""), "{reason}");
}

#[test]
fn throttle_and_coordinator_documents_are_read() {
    let text = format!(
        "{GOOD}---\napiVersion: murmuration.dev/v1alpha1\nkind: Throttle\nmetadata: {{name: t}}\nspec: {{rate: 10, interval: 1s}}\n---\napiVersion: murmuration.dev/v1alpha1\nkind: Coordinator\nmetadata: {{name: c}}\nspec: {{plan: [{{users: 2, action: pairs}}, {{users: {{min: 2, max: 3}}, action: group}}, {{users: all, action: release}}]}}\n"
    );
    let m = parse_manifests("f.yaml", &text).unwrap();
    assert_eq!(m.throttles.len(), 1);
    assert_eq!(m.coordinators[0].1.plan.len(), 3);
    let bad = text.replace("rate: 10", "rate: ten");
    match parse_manifests("f.yaml", &bad).unwrap_err() {
        ManifestError::Invalid {
            document, field, ..
        } => {
            assert_eq!(document, "f.yaml: document 2 (Throttle t)");
            assert_eq!(field, "spec.rate");
        }
        e => panic!("{e}"),
    }
    let bad = text.replace("users: 2, action: pairs", "users: 0, action: pairs");
    match parse_manifests("f.yaml", &bad).unwrap_err() {
        ManifestError::Invalid {
            document,
            field,
            reason,
        } => {
            assert_eq!(document, "f.yaml: document 3 (Coordinator c)");
            assert_eq!(field, "spec.plan[0].users");
            assert!(reason.contains("at least 1"), "{reason}");
        }
        e => panic!("{e}"),
    }
}

#[test]
fn a_file_without_a_loadtest_or_with_two_is_refused() {
    let e = parse_manifests("f.yaml", "").unwrap_err().to_string();
    assert!(e.contains("holds no LoadTest"), "{e}");
    let e = parse_manifests("f.yaml", &format!("{GOOD}---{GOOD}"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("document 2") && e.contains("one LoadTest"),
        "{e}"
    );
    let e = parse_manifests("f.yaml", "a: [").unwrap_err().to_string();
    assert!(e.contains("not valid YAML"), "{e}");
}
