//! ConfigMap volumes, emulated as the termination log is: processes here share the host's
//! filesystem, so a container's `volumeMounts` of `configMap` volumes become a directory
//! of the pod's own (`<pod dir>/volumes/<volume>/`, one file per key of `data` and
//! `binaryData`, written at each container start), and the container's references to the
//! mount path (in its args and env) are pointed at it. A missing ConfigMap is an empty
//! directory when the volume is `optional`, else the container waits with
//! `CreateContainerConfigError`, as a kubelet's does.

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod};
use kube::api::Api;

use super::PodCtx;

/// Writes the ConfigMap volumes `c` mounts and points its references to their mount
/// paths at them.
pub(super) async fn mount_config_maps(
    ctx: &PodCtx,
    pod: &Pod,
    c: &Container,
    args: &mut [String],
    env: &mut [(String, String)],
) -> Result<(), (String, String)> {
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let config_err = |m: String| ("CreateContainerConfigError".to_string(), m);
    for mount in c.volume_mounts.iter().flatten() {
        let Some(source) = volumes
            .iter()
            .find(|v| v.name == mount.name)
            .and_then(|v| v.config_map.as_ref())
        else {
            continue;
        };
        let dir = ctx.dir.join("volumes").join(&mount.name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| config_err(format!("{dir:?}: {e}")))?;
        match cms.get_opt(&source.name).await {
            Ok(Some(cm)) => {
                let text = cm
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes()));
                let binary = cm
                    .binary_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0));
                for (key, bytes) in text.chain(binary) {
                    std::fs::write(dir.join(&key), bytes)
                        .map_err(|e| config_err(format!("{key}: {e}")))?;
                }
            }
            Ok(None) if source.optional == Some(true) => {}
            Ok(None) => return Err(config_err(format!("configmap {:?} not found", source.name))),
            Err(e) => return Err(config_err(format!("configmap {:?}: {e}", source.name))),
        }
        let to = dir.display().to_string();
        for a in args.iter_mut() {
            *a = a.replace(&mount.mount_path, &to);
        }
        for (_, v) in env.iter_mut() {
            *v = v.replace(&mount.mount_path, &to);
        }
    }
    Ok(())
}
