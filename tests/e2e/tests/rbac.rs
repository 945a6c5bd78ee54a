//! The operator kubeconfig of the e2e control plane has exactly the rights of the Helm
//! chart's ClusterRole: `rbac/operator.yaml` holds the chart's rules, rendered.

use murmuration_e2e::binaries::workspace_root;

fn rules(text: &str) -> serde_json::Value {
    // The chart's file is a template with several documents: take the ClusterRole's rules.
    let start = text.find("rules:").expect("a rules: block");
    let end = text[start..]
        .find("\n---")
        .map(|e| start + e)
        .unwrap_or(text.len());
    let doc: serde_json::Value = serde_saphyr::from_str(&text[start..end]).expect("rules parse");
    doc["rules"].clone()
}

#[test]
fn the_e2e_operator_role_is_the_charts() {
    let chart =
        std::fs::read_to_string(workspace_root().join("charts/murmuration/templates/rbac.yaml"))
            .unwrap();
    let e2e =
        std::fs::read_to_string(workspace_root().join("tests/e2e/rbac/operator.yaml")).unwrap();
    let (a, b) = (rules(&chart), rules(&e2e));
    assert!(a.as_array().is_some_and(|r| r.len() >= 5), "{a:?}");
    assert_eq!(
        a, b,
        "tests/e2e/rbac/operator.yaml must hold the chart's ClusterRole rules"
    );
}
