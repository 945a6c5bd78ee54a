//! What a container's process is given: program, args, env (with `$(VAR)` expansion),
//! working dir and kubeconfig.

#[allow(unused_imports)]
use super::*;

pub(super) type Prepared = (PathBuf, Vec<String>, Vec<(String, String)>, PathBuf);

/// Program, args, env and working dir of a container, or a waiting (reason, message).
pub(super) async fn prepare(
    ctx: &PodCtx,
    c: &Container,
) -> std::result::Result<Prepared, (String, String)> {
    let image = c.image.clone().unwrap_or_default();
    let runner = {
        let images = lock(&ctx.shared.images);
        find_runner(&images, &image)
    }
    .ok_or_else(|| {
        (
            "ImageNotRunnable".to_string(),
            format!("image {image:?} is not mapped"),
        )
    })?;
    let r2 = runner.clone();
    let binary = tokio::task::spawn_blocking(move || r2.resolve())
        .await
        .map_err(|e| ("ImageNotRunnable".to_string(), e.to_string()))?
        .map_err(|e| {
            (
                "ImageNotRunnable".to_string(),
                format!("image {image:?}: {e}"),
            )
        })?;

    let pod = lock(&ctx.pod).clone();
    let mut env: Vec<(String, String)> = vec![
        (
            "PATH".into(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        ),
        (
            "HOSTNAME".into(),
            pod.spec
                .as_ref()
                .and_then(|s| s.hostname.clone())
                .unwrap_or_else(|| ctx.name.clone()),
        ),
        ("HOME".into(), ctx.dir.display().to_string()),
    ];
    for k in &ctx.shared.cfg.passthrough_env {
        if let Ok(v) = std::env::var(k) {
            env.push((k.clone(), v));
        }
    }
    env.extend(runner.env.iter().cloned());
    if let Some(kc) = pod_kubeconfig(ctx, &pod).await? {
        env.push(("KUBECONFIG".into(), kc.display().to_string()));
    }
    let own = resolve_env(ctx, &pod, c).await?;
    for (k, v) in own {
        env.retain(|(ek, _)| ek != &k);
        env.push((k, v));
    }

    let map: HashMap<String, String> = env.iter().cloned().collect();
    let command: Vec<String> = c
        .command
        .clone()
        .unwrap_or_default()
        .iter()
        .map(|s| expand(s, &map))
        .collect();
    let args: Vec<String> = c
        .args
        .clone()
        .unwrap_or_default()
        .iter()
        .map(|s| expand(s, &map))
        .collect();
    let (program, args) = if let Some(first) = command.first() {
        let base = Path::new(first)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let program = if base == runner.binary_name() {
            binary
        } else {
            return Err((
                "RunContainerError".into(),
                format!("command {first:?} is not the image's binary {:?}; the test kubelet runs only that", runner.binary_name()),
            ));
        };
        let mut all: Vec<String> = command[1..].to_vec();
        all.extend(args);
        (program, all)
    } else {
        (binary, args)
    };
    let (mut args, mut env) = (args, env);
    super::volumes::mount_config_maps(ctx, &pod, c, &mut args, &mut env).await?;
    let cwd = ctx.dir.join(&c.name);
    let _ = std::fs::create_dir_all(&cwd);
    Ok((program, args, env, cwd))
}

/// `$(VAR)` references expanded from `env`; `$$` escapes; unknown references stay as is.
pub fn expand(s: &str, env: &HashMap<String, String>) -> String {
    let b = s.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'(' {
                if let Some(end) = s[i + 2..].find(')') {
                    let name = &s[i + 2..i + 2 + end];
                    if let Some(v) = env.get(name) {
                        out.push_str(v);
                    } else {
                        out.push_str(&s[i..i + 3 + end]);
                    }
                    i += 3 + end;
                    continue;
                }
            }
        }
        let ch = s[i..].chars().next().unwrap_or('\0');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

pub(super) async fn resolve_env(
    ctx: &PodCtx,
    pod: &Pod,
    c: &Container,
) -> std::result::Result<Vec<(String, String)>, (String, String)> {
    let cfg_err = |m: String| ("CreateContainerConfigError".to_string(), m);
    let mut out: Vec<(String, String)> = Vec::new();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    for ef in c.env_from.clone().unwrap_or_default() {
        let prefix = ef.prefix.clone().unwrap_or_default();
        if let Some(r) = ef.config_map_ref {
            match cms.get_opt(&r.name).await {
                Ok(Some(cm)) => {
                    for (k, v) in cm.data.unwrap_or_default() {
                        out.push((format!("{prefix}{k}"), v));
                    }
                }
                Ok(None) if r.optional.unwrap_or(false) => {}
                Ok(None) => return Err(cfg_err(format!("configmap {:?} not found", r.name))),
                Err(e) => return Err(cfg_err(format!("configmap {:?}: {e}", r.name))),
            }
        }
        if let Some(r) = ef.secret_ref {
            match secrets.get_opt(&r.name).await {
                Ok(Some(s)) => {
                    for (k, v) in s.data.unwrap_or_default() {
                        out.push((
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v.0).into_owned(),
                        ));
                    }
                }
                Ok(None) if r.optional.unwrap_or(false) => {}
                Ok(None) => return Err(cfg_err(format!("secret {:?} not found", r.name))),
                Err(e) => return Err(cfg_err(format!("secret {:?}: {e}", r.name))),
            }
        }
    }
    for e in c.env.clone().unwrap_or_default() {
        let map: HashMap<String, String> = out.iter().cloned().collect();
        if let Some(v) = e.value {
            out.push((e.name, expand(&v, &map)));
            continue;
        }
        let Some(from) = e.value_from else {
            out.push((e.name, String::new()));
            continue;
        };
        if let Some(f) = from.field_ref {
            let v = field_value(ctx, pod, &f.field_path).ok_or_else(|| {
                cfg_err(format!(
                    "env {}: unsupported fieldRef {:?}",
                    e.name, f.field_path
                ))
            })?;
            out.push((e.name, v));
        } else if let Some(r) = from.secret_key_ref {
            let optional = r.optional.unwrap_or(false);
            match secrets.get_opt(&r.name).await {
                Ok(Some(s)) => match s.data.unwrap_or_default().get(&r.key) {
                    Some(v) => out.push((e.name, String::from_utf8_lossy(&v.0).into_owned())),
                    None if optional => {}
                    None => {
                        return Err(cfg_err(format!(
                            "couldn't find key {} in Secret {}/{}",
                            r.key, ctx.namespace, r.name
                        )))
                    }
                },
                Ok(None) if optional => {}
                Ok(None) => return Err(cfg_err(format!("secret {:?} not found", r.name))),
                Err(err) => return Err(cfg_err(format!("secret {:?}: {err}", r.name))),
            }
        } else if let Some(r) = from.config_map_key_ref {
            let optional = r.optional.unwrap_or(false);
            match cms.get_opt(&r.name).await {
                Ok(Some(cm)) => match cm.data.unwrap_or_default().get(&r.key) {
                    Some(v) => out.push((e.name, v.clone())),
                    None if optional => {}
                    None => {
                        return Err(cfg_err(format!(
                            "couldn't find key {} in ConfigMap {}/{}",
                            r.key, ctx.namespace, r.name
                        )))
                    }
                },
                Ok(None) if optional => {}
                Ok(None) => return Err(cfg_err(format!("configmap {:?} not found", r.name))),
                Err(err) => return Err(cfg_err(format!("configmap {:?}: {err}", r.name))),
            }
        } else if let Some(r) = from.resource_field_ref {
            // No resource accounting here: report the limit when set, else the node's size.
            let res = c.resources.clone().unwrap_or_default();
            let (kind, key) = r
                .resource
                .split_once('.')
                .unwrap_or(("limits", r.resource.as_str()));
            let q = if kind == "requests" {
                res.requests
            } else {
                res.limits
            }
            .and_then(|m| m.get(key).cloned());
            let v = q.map(|q| q.0).unwrap_or_else(|| {
                if key == "cpu" {
                    "2".into()
                } else {
                    "25769803776".into()
                }
            });
            out.push((e.name, v));
        }
    }
    Ok(out)
}

pub(super) fn field_value(ctx: &PodCtx, pod: &Pod, path: &str) -> Option<String> {
    let m = &pod.metadata;
    let label = |map: &Option<BTreeMap<String, String>>, p: &str, prefix: &str| -> Option<String> {
        let key = p.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(
            map.as_ref()
                .and_then(|l| l.get(key).cloned())
                .unwrap_or_default(),
        )
    };
    Some(match path {
        "metadata.name" => ctx.name.clone(),
        "metadata.namespace" => ctx.namespace.clone(),
        "metadata.uid" => ctx.uid.clone(),
        "spec.nodeName" => ctx.shared.cfg.node_name.clone(),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" => ctx.ip.to_string(),
        "status.hostIP" | "status.hostIPs" => HOST_IP.to_string(),
        p if p.starts_with("metadata.labels['") => label(&m.labels, p, "metadata.labels['")?,
        p if p.starts_with("metadata.annotations['") => {
            label(&m.annotations, p, "metadata.annotations['")?
        }
        _ => return None,
    })
}

/// A kubeconfig with a token of the pod's service account, when the pod mounts it.
pub(super) async fn pod_kubeconfig(
    ctx: &PodCtx,
    pod: &Pod,
) -> std::result::Result<Option<PathBuf>, (String, String)> {
    let Some(cluster) = ctx.shared.cfg.cluster.clone() else {
        return Ok(None);
    };
    let spec = pod.spec.clone().unwrap_or_default();
    let sa_name = spec
        .service_account_name
        .clone()
        .unwrap_or_else(|| "default".into());
    let sas: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let automount = match spec.automount_service_account_token {
        Some(v) => v,
        None => sas
            .get_opt(&sa_name)
            .await
            .ok()
            .flatten()
            .and_then(|sa| sa.automount_service_account_token)
            .unwrap_or(true),
    };
    if !automount {
        return Ok(None);
    }
    let tr: TokenRequest = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": [], "expirationSeconds": 86400}
    }))
    .map_err(|e| ("CreateContainerConfigError".to_string(), e.to_string()))?;
    let token = sas
        .create_token_request(&sa_name, &PostParams::default(), &tr)
        .await
        .map_err(|e| {
            (
                "CreateContainerConfigError".to_string(),
                format!("token for service account {sa_name}: {e}"),
            )
        })?
        .status
        .map(|s| s.token)
        .unwrap_or_default();
    let ca = match &cluster.ca_file {
        Some(p) => format!("certificate-authority: {}", p.display()),
        None => "insecure-skip-tls-verify: true".into(),
    };
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n  - name: cluster\n    cluster:\n      server: {}\n      {ca}\nusers:\n  - name: {sa_name}\n    user:\n      token: {token}\ncontexts:\n  - name: pod\n    context:\n      cluster: cluster\n      user: {sa_name}\n      namespace: {}\ncurrent-context: pod\n",
        cluster.server, ctx.namespace
    );
    let path = ctx.dir.join("kubeconfig");
    std::fs::write(&path, text)
        .map_err(|e| ("CreateContainerConfigError".to_string(), e.to_string()))?;
    Ok(Some(path))
}
