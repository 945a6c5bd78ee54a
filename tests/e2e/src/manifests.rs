//! Applying YAML manifests (any kind, several documents) with server-side apply, and
//! waiting for CRDs to be established.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::Scope;
use kube::Client;

use crate::error::{Error, IoContext, KubeContext, Result};
use crate::util::{poll_until, scaled};

/// Field manager used by the fixtures' server-side applies.
pub const FIELD_MANAGER: &str = "murmuration-e2e";

/// Applies every document of `yaml` (server-side apply, forced). Namespaced objects without
/// a namespace go to `default_ns`. Returns the applied objects.
pub async fn apply_yaml(
    client: &Client,
    yaml: &str,
    default_ns: &str,
) -> Result<Vec<DynamicObject>> {
    let objects = parse_yaml(yaml)?;
    let mut applied = Vec::new();
    for obj in objects {
        applied.push(apply_object(client, obj, default_ns).await?);
    }
    Ok(applied)
}

/// The Kubernetes objects of a multi-document YAML text (empty documents skipped).
pub fn parse_yaml(yaml: &str) -> Result<Vec<DynamicObject>> {
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(yaml)
        .map_err(|e| Error::Setup(format!("invalid YAML: {e}")))?;
    let mut out = Vec::new();
    for value in docs {
        if value.is_null() {
            continue;
        }
        let obj: DynamicObject = serde_json::from_value(value)
            .map_err(|e| Error::Setup(format!("manifest is not a Kubernetes object: {e}")))?;
        out.push(obj);
    }
    Ok(out)
}

/// Applies one object (server-side apply, forced).
pub async fn apply_object(
    client: &Client,
    obj: DynamicObject,
    default_ns: &str,
) -> Result<DynamicObject> {
    let types = obj
        .types
        .clone()
        .ok_or_else(|| Error::Setup("manifest without apiVersion/kind".into()))?;
    let gvk = GroupVersionKind::try_from(&types)
        .map_err(|e| Error::Setup(format!("bad apiVersion {:?}: {e}", types.api_version)))?;
    let name = obj
        .metadata
        .name
        .clone()
        .ok_or_else(|| Error::Setup(format!("{} without metadata.name", types.kind)))?;
    let (ar, caps) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .kctx(|| format!("discovering {}/{}", types.api_version, types.kind))?;
    let api: Api<DynamicObject> = if caps.scope == Scope::Namespaced {
        let ns = obj
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| default_ns.to_string());
        Api::namespaced_with(client.clone(), &ns, &ar)
    } else {
        Api::all_with(client.clone(), &ar)
    };
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&obj),
    )
    .await
    .kctx(|| format!("applying {} {name}", types.kind))
}

/// Applies a YAML file.
pub async fn apply_file(
    client: &Client,
    path: &Path,
    default_ns: &str,
) -> Result<Vec<DynamicObject>> {
    let text = std::fs::read_to_string(path).ctx(|| format!("reading {}", path.display()))?;
    apply_yaml(client, &text, default_ns)
        .await
        .map_err(|e| Error::Setup(format!("{}: {e}", path.display())))
}

/// The `*.yaml`/`*.yml` files of a directory, sorted (empty when it does not exist).
pub fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Waits until the CRD `name` has the condition `Established=True`.
pub async fn wait_crd_established(client: &Client, name: &str) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    poll_until(
        format!("CRD {name} to be Established"),
        scaled(Duration::from_secs(30)),
        Duration::from_millis(100),
        &[],
        || async {
            let crd = api.get_opt(name).await.ok().flatten()?;
            let established = crd
                .status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            established.then_some(())
        },
    )
    .await
}
