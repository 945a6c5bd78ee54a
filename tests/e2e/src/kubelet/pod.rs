//! One pod: scheduling, its containers' states, and its status as a kubelet reports it.

#[allow(unused_imports)]
use super::*;

#[derive(Debug, Clone, Default)]
pub(super) struct CState {
    /// Waiting reason and message, before the first start or between restarts.
    pub(super) waiting: Option<(String, String)>,
    pub(super) running_since: Option<SystemTime>,
    /// (exit code, reason, started, finished, message)
    pub(super) terminated: Option<Terminated>,
    pub(super) last_terminated: Option<Terminated>,
    pub(super) restarts: i32,
    pub(super) ready: bool,
    pub(super) started: bool,
    /// The container will not run again (restart policy).
    pub(super) done: bool,
    pub(super) pgid: Option<u32>,
}

#[derive(Debug, Clone)]
pub(super) struct Terminated {
    pub(super) code: i32,
    pub(super) reason: String,
    pub(super) started: SystemTime,
    pub(super) finished: SystemTime,
    pub(super) message: Option<String>,
}

pub(super) struct PodCtx {
    pub(super) shared: Arc<Shared>,
    pub(super) client: Client,
    pub(super) uid: String,
    pub(super) namespace: String,
    pub(super) name: String,
    pub(super) pod: Mutex<Arc<Pod>>,
    pub(super) ip: Ipv4Addr,
    pub(super) dir: PathBuf,
    pub(super) containers: Mutex<Vec<CState>>,
    pub(super) changed: Notify,
    pub(super) stop: watch::Sender<Option<Duration>>,
    pub(super) transitions: Mutex<HashMap<String, (bool, String)>>,
    pub(super) start_time: String,
}

pub(super) async fn pod_worker(
    shared: Arc<Shared>,
    client: Client,
    mut rx: watch::Receiver<Option<Arc<Pod>>>,
) {
    let Some(pod) = rx.borrow().clone() else {
        return;
    };
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let node = shared.cfg.node_name.clone();

    // Schedule.
    let bound = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .is_some_and(|n| n == node);
    if !bound {
        let binding = json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": name, "namespace": namespace, "uid": uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node}
        });
        let r: kube::Result<Value> = api
            .create_subresource("binding", &name, &PostParams::default(), &binding)
            .await;
        if let Err(e) = r {
            tracing::warn!("test kubelet: binding {namespace}/{name}: {e}");
            return;
        }
    }
    if pod.metadata.deletion_timestamp.is_some() {
        finalize(&api, &name, &uid).await;
        return;
    }

    // Runnable images?
    let spec = pod.spec.clone().unwrap_or_default();
    let images = lock(&shared.images).clone();
    let mut unrunnable = Vec::new();
    for c in &spec.containers {
        let image = c.image.clone().unwrap_or_default();
        if find_runner(&images, &image).is_none() {
            unrunnable.push((c.name.clone(), image));
        }
    }
    let init = spec.init_containers.clone().unwrap_or_default();
    if !unrunnable.is_empty() || !init.is_empty() {
        let known: Vec<&String> = images.keys().collect();
        let statuses: Vec<Value> = spec
            .containers
            .iter()
            .map(|c| {
                let image = c.image.clone().unwrap_or_default();
                let (reason, message) = if !init.is_empty() {
                    ("InitContainersNotSupported".to_string(), "the murmuration test kubelet does not run init containers".to_string())
                } else if unrunnable.iter().any(|(n, _)| n == &c.name) {
                    (
                        "ImageNotRunnable".to_string(),
                        format!("image {image:?} is not one the test kubelet can run (known: {known:?})"),
                    )
                } else {
                    ("PodInitializing".to_string(), "another container of the pod cannot run".to_string())
                };
                json!({"name": c.name, "image": image, "imageID": "", "ready": false, "started": false,
                       "restartCount": 0, "state": {"waiting": {"reason": reason, "message": message}}})
            })
            .collect();
        let now = rfc3339(SystemTime::now());
        let msg = if !init.is_empty() {
            "init containers are not supported".to_string()
        } else {
            format!(
                "images not runnable here: {}",
                unrunnable
                    .iter()
                    .map(|(_, i)| i.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let status = json!({"status": {
            "phase": "Pending", "hostIP": HOST_IP,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady", "message": msg, "lastTransitionTime": now},
                {"type": "Ready", "status": "False", "reason": "ContainersNotReady", "message": msg, "lastTransitionTime": now}
            ],
            "containerStatuses": statuses
        }});
        let _ = api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await;
        // Wait for the deletion.
        loop {
            let p = rx.borrow_and_update().clone();
            match p {
                None => return,
                Some(p) if p.metadata.deletion_timestamp.is_some() => {
                    finalize(&api, &name, &uid).await;
                    return;
                }
                _ => {}
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    // Address and dir.
    let ip = match tokio::task::spawn_blocking(LoopbackIp::allocate).await {
        Ok(Ok(ip)) => ip,
        other => {
            tracing::error!("test kubelet: no pod address for {namespace}/{name}: {other:?}");
            return;
        }
    };
    let dir = shared
        .work_dir
        .join("pods")
        .join(format!("{namespace}_{name}"));
    let _ = std::fs::create_dir_all(&dir);
    let (stop_tx, _) = watch::channel(None);
    let ctx = Arc::new(PodCtx {
        shared: shared.clone(),
        client: client.clone(),
        uid: uid.clone(),
        namespace: namespace.clone(),
        name: name.clone(),
        pod: Mutex::new(pod.clone()),
        ip: ip.ip(),
        dir: dir.clone(),
        containers: Mutex::new(
            spec.containers
                .iter()
                .map(|_| CState {
                    waiting: Some(("ContainerCreating".into(), String::new())),
                    ..Default::default()
                })
                .collect(),
        ),
        changed: Notify::new(),
        stop: stop_tx,
        transitions: Mutex::new(HashMap::new()),
        start_time: rfc3339(SystemTime::now()),
    });
    lock(&shared.pods).insert(
        uid.clone(),
        PodInfo {
            namespace: namespace.clone(),
            name: name.clone(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ip: Some(ip.ip()),
            ready: false,
            running: false,
            terminating: false,
            hostname: spec.hostname.clone(),
            subdomain: spec.subdomain.clone(),
            pgids: Vec::new(),
        },
    );
    let mut tasks = Vec::new();
    for (i, c) in spec.containers.iter().enumerate() {
        tasks.push(tokio::spawn(run_container(ctx.clone(), i, c.clone())));
    }

    // Follow the pod until it is deleted; keep status in sync.
    let mut last_sent: Option<Value> = None;
    let mut gone = false;
    loop {
        sync_status(&ctx, &api, &mut last_sent).await;
        tokio::select! {
            r = rx.changed() => {
                if r.is_err() {
                    gone = true;
                    break;
                }
                let p = rx.borrow_and_update().clone();
                match p {
                    None => { gone = true; break; }
                    Some(p) => {
                        let deleting = p.metadata.deletion_timestamp.is_some();
                        if let Some(info) = lock(&shared.pods).get_mut(&uid) {
                            info.labels = p.metadata.labels.clone().unwrap_or_default();
                        }
                        *lock(&ctx.pod) = p;
                        shared.hosts_changed.notify_one();
                        if deleting { break; }
                    }
                }
            }
            _ = ctx.changed.notified() => {}
        }
    }

    // Terminate: SIGTERM, grace (capped), SIGKILL; then remove the pod object.
    if let Some(info) = lock(&shared.pods).get_mut(&uid) {
        info.terminating = true;
    }
    shared.hosts_changed.notify_one();
    let grace = {
        let p = lock(&ctx.pod);
        let secs = p
            .metadata
            .deletion_grace_period_seconds
            .or(p
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds))
            .unwrap_or(30)
            .max(0) as u64;
        Duration::from_secs(secs).min(shared.cfg.max_grace)
    };
    let _ = ctx.stop.send(Some(grace));
    for t in tasks {
        let _ = t.await;
    }
    if !gone {
        sync_status(&ctx, &api, &mut last_sent).await;
        finalize(&api, &name, &uid).await;
    }
    lock(&shared.pods).remove(&uid);
    drop(ip);
    shared.hosts_changed.notify_one();
}

pub(super) async fn finalize(api: &Api<Pod>, name: &str, uid: &str) {
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    for attempt in 0..5 {
        match api.delete(name, &dp).await {
            Ok(_) => return,
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => return,
            Err(e) => {
                tracing::warn!("test kubelet: deleting pod {name}: {e}");
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
        }
    }
}

pub(super) async fn sync_status(ctx: &PodCtx, api: &Api<Pod>, last_sent: &mut Option<Value>) {
    let status = compute_status(ctx);
    if last_sent.as_ref() == Some(&status) {
        return;
    }
    let body = json!({ "status": status });
    match api
        .patch_status(&ctx.name, &PatchParams::default(), &Patch::Merge(&body))
        .await
    {
        Ok(_) => *last_sent = Some(status),
        Err(e) => {
            tracing::warn!(
                "test kubelet: status of {}/{}: {e}",
                ctx.namespace,
                ctx.name
            );
            // Try again soon.
            tokio::time::sleep(Duration::from_millis(100)).await;
            ctx.changed.notify_one();
        }
    }
}

pub(super) fn compute_status(ctx: &PodCtx) -> Value {
    let pod = lock(&ctx.pod).clone();
    let spec = pod.spec.clone().unwrap_or_default();
    let cs = lock(&ctx.containers).clone();
    let policy = spec
        .restart_policy
        .clone()
        .unwrap_or_else(|| "Always".into());

    let all_ready = !cs.is_empty() && cs.iter().all(|c| c.ready);
    let any_running = cs.iter().any(|c| c.running_since.is_some());
    let all_started_once = cs
        .iter()
        .all(|c| c.running_since.is_some() || c.terminated.is_some() || c.restarts > 0);
    let all_done = cs.iter().all(|c| c.done);
    let phase = if all_done && !cs.is_empty() {
        if cs
            .iter()
            .all(|c| c.terminated.as_ref().is_some_and(|t| t.code == 0))
        {
            "Succeeded"
        } else {
            "Failed"
        }
    } else if all_started_once && (any_running || policy != "Never") {
        "Running"
    } else {
        "Pending"
    };

    if let Some(info) = lock(&ctx.shared.pods).get_mut(&ctx.uid) {
        let changed = info.ready != all_ready || info.running != any_running;
        info.ready = all_ready;
        info.running = any_running;
        info.pgids = cs.iter().filter_map(|c| c.pgid).collect();
        if changed {
            ctx.shared.hosts_changed.notify_one();
        }
    }

    let not_ready: Vec<&str> = spec
        .containers
        .iter()
        .zip(cs.iter())
        .filter(|(_, s)| !s.ready)
        .map(|(c, _)| c.name.as_str())
        .collect();
    let reason = if phase == "Succeeded" || phase == "Failed" {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    };
    let cond = |type_: &str, ok: bool| -> Value {
        let mut tr = lock(&ctx.transitions);
        let now = rfc3339(SystemTime::now());
        let e = tr.entry(type_.to_string()).or_insert((ok, now.clone()));
        if e.0 != ok {
            *e = (ok, now);
        }
        let mut v = json!({"type": type_, "status": if ok {"True"} else {"False"}, "lastProbeTime": null, "lastTransitionTime": e.1});
        if !ok {
            v["reason"] = json!(reason);
            v["message"] = json!(format!(
                "containers with unready status: [{}]",
                not_ready.join(" ")
            ));
        }
        v
    };
    let conditions = vec![
        cond("Initialized", true),
        cond("Ready", all_ready),
        cond("ContainersReady", all_ready),
        cond("PodScheduled", true),
    ];

    let term = |t: &Terminated| -> Value {
        let mut v = json!({"exitCode": t.code, "reason": t.reason, "startedAt": rfc3339(t.started),
                           "finishedAt": rfc3339(t.finished), "containerID": ""});
        if let Some(m) = &t.message {
            v["message"] = json!(m);
        }
        v
    };
    let statuses: Vec<Value> = spec
        .containers
        .iter()
        .zip(cs.iter())
        .map(|(c, s)| {
            let state = if let Some(since) = s.running_since {
                json!({"running": {"startedAt": rfc3339(since)}})
            } else if let Some((r, m)) = &s.waiting {
                json!({"waiting": {"reason": r, "message": m}})
            } else if let Some(t) = &s.terminated {
                json!({"terminated": term(t)})
            } else {
                json!({"waiting": {"reason": "ContainerCreating"}})
            };
            let last = match &s.last_terminated {
                Some(t) => json!({"terminated": term(t)}),
                None => json!({}),
            };
            json!({
                "name": c.name,
                "image": c.image.clone().unwrap_or_default(),
                "imageID": format!("murmuration-e2e://{}", image_repository(c.image.as_deref().unwrap_or_default())),
                "containerID": s.pgid.map(|p| format!("murmuration-e2e://{p}")).unwrap_or_default(),
                "ready": s.ready,
                "started": s.started,
                "restartCount": s.restarts,
                "state": state,
                "lastState": last,
            })
        })
        .collect();
    json!({
        "phase": phase,
        "hostIP": HOST_IP,
        "podIP": ctx.ip.to_string(),
        "podIPs": [{"ip": ctx.ip.to_string()}],
        "startTime": ctx.start_time,
        "qosClass": "BestEffort",
        "conditions": conditions,
        "containerStatuses": statuses,
    })
}

pub(super) fn update(ctx: &PodCtx, i: usize, f: impl FnOnce(&mut CState)) {
    if let Some(c) = lock(&ctx.containers).get_mut(i) {
        f(c);
    }
    ctx.changed.notify_one();
}
