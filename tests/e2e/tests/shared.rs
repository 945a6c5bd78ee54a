//! Several tests of one binary share one control plane (`ControlPlane::shared`), each on
//! its own runtime; it is stopped when the test process exits.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use murmuration_e2e::{ControlPlane, Result};
use serde_json::json;

async fn use_it(ns: &str) -> Result<u32> {
    let cp = ControlPlane::shared().await?;
    let client = cp.admin_client().await?;
    cp.create_namespace(&client, ns).await?;
    let cms: Api<ConfigMap> = Api::namespaced(client, ns);
    let cm: ConfigMap = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": ns}
    }))
    .unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    Ok(cp.pids()[1])
}

#[tokio::test]
async fn first_user() -> Result<()> {
    let pid = use_it("one").await?;
    assert!(murmuration_e2e::procs::pid_alive(pid));
    Ok(())
}

#[tokio::test]
async fn second_user() -> Result<()> {
    let pid = use_it("two").await?;
    assert!(murmuration_e2e::procs::pid_alive(pid));
    Ok(())
}
