//! The node: the main loop (pods to run, Services to resolve), the hosts block, and the
//! Node object with its heartbeat.

#[allow(unused_imports)]
use super::*;

pub(super) struct Worker {
    pub(super) tx: watch::Sender<Option<Arc<Pod>>>,
    pub(super) handle: tokio::task::JoinHandle<()>,
}

pub(super) async fn run(
    shared: Arc<Shared>,
    config: kube::Config,
    mut stop: watch::Receiver<bool>,
    ready: std::sync::mpsc::Sender<Result<()>>,
) {
    let client = match Client::try_from(config) {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(Error::Setup(format!("kubelet client: {e}"))));
            return;
        }
    };
    if let Err(e) = register_node(&client, &shared.cfg.node_name).await {
        let _ = ready.send(Err(e));
        return;
    }
    let hosts = if shared.cfg.manage_hosts {
        let run_id = format!(
            "{}-{}-{}",
            std::process::id(),
            shared.cfg.node_name,
            crate::util::random_hex(3)
        );
        match HostsBlock::new(shared.cfg.hosts_file.clone(), &run_id) {
            Ok(h) => Some(h),
            Err(e) => {
                let _ = ready.send(Err(Error::Setup(format!(
                    "cannot write {} (service names need it; run as root or set manage_hosts=false): {e}",
                    shared.cfg.hosts_file.display()
                ))));
                return;
            }
        }
    } else {
        None
    };
    let hosts_task = tokio::spawn(hosts_loop(shared.clone(), hosts));
    let heartbeat = tokio::spawn(heartbeat_loop(client.clone(), shared.cfg.node_name.clone()));

    let pods: Api<Pod> = Api::all(client.clone());
    let services: Api<Service> = Api::all(client.clone());
    let mut pod_events = watcher(pods, watcher::Config::default()).boxed();
    let mut svc_events = watcher(services, watcher::Config::default()).boxed();
    let mut workers: HashMap<String, Worker> = HashMap::new();
    let mut finished: HashSet<String> = HashSet::new();
    let mut relist: Option<HashSet<String>> = None;
    let mut ready = Some(ready);
    let mut reap = tokio::time::interval(Duration::from_secs(1));

    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = reap.tick() => {
                workers.retain(|uid, w| {
                    if w.handle.is_finished() {
                        finished.insert(uid.clone());
                        false
                    } else {
                        true
                    }
                });
            }
            ev = svc_events.next() => match ev {
                Some(Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s))) => {
                    update_service(&shared, &s, false);
                }
                Some(Ok(watcher::Event::Delete(s))) => update_service(&shared, &s, true),
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!("test kubelet: service watch: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                None => break,
            },
            ev = pod_events.next() => match ev {
                Some(Ok(watcher::Event::Init)) => relist = Some(HashSet::new()),
                Some(Ok(watcher::Event::InitDone)) => {
                    if let Some(seen) = relist.take() {
                        for (uid, w) in &workers {
                            if !seen.contains(uid) {
                                let _ = w.tx.send(None);
                            }
                        }
                    }
                    if let Some(r) = ready.take() {
                        let _ = r.send(Ok(()));
                    }
                }
                Some(Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p))) => {
                    let uid = p.metadata.uid.clone().unwrap_or_default();
                    if let Some(seen) = relist.as_mut() {
                        seen.insert(uid.clone());
                    }
                    if let Some(w) = workers.get(&uid) {
                        let _ = w.tx.send(Some(Arc::new(p)));
                        continue;
                    }
                    if finished.contains(&uid) || !wants(&shared.cfg, &p) {
                        continue;
                    }
                    let (tx, rx) = watch::channel(Some(Arc::new(p)));
                    let handle = tokio::spawn(pod_worker(shared.clone(), client.clone(), rx));
                    workers.insert(uid, Worker { tx, handle });
                }
                Some(Ok(watcher::Event::Delete(p))) => {
                    let uid = p.metadata.uid.clone().unwrap_or_default();
                    if let Some(w) = workers.get(&uid) {
                        let _ = w.tx.send(None);
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!("test kubelet: pod watch: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                None => break,
            },
        }
    }
    // Shutdown: kill every process now; pod objects stay as they are.
    for p in lock(&shared.pods).values() {
        for pg in &p.pgids {
            procs::signal_group(*pg, libc::SIGKILL);
        }
    }
    for (_, w) in workers.drain() {
        w.handle.abort();
        let _ = w.handle.await;
    }
    heartbeat.abort();
    hosts_task.abort();
    let _ = hosts_task.await;
    if let Some(r) = ready.take() {
        let _ = r.send(Err(Error::Setup(
            "test kubelet stopped before its first pod list".into(),
        )));
    }
}

/// Pods this kubelet handles: bound to its node, or unbound (when it binds them).
pub(super) fn wants(cfg: &KubeletConfig, p: &Pod) -> bool {
    let Some(spec) = &p.spec else { return false };
    match spec.node_name.as_deref() {
        Some(n) if n == cfg.node_name => true,
        None | Some("") => {
            cfg.bind_unscheduled
                && p.metadata.deletion_timestamp.is_none()
                && spec
                    .scheduler_name
                    .as_deref()
                    .unwrap_or("default-scheduler")
                    == "default-scheduler"
        }
        _ => false,
    }
}

pub(super) fn update_service(shared: &Shared, s: &Service, deleted: bool) {
    let key = (
        s.metadata.namespace.clone().unwrap_or_default(),
        s.metadata.name.clone().unwrap_or_default(),
    );
    let mut svcs = lock(&shared.services);
    if deleted {
        svcs.remove(&key);
    } else {
        let spec = s.spec.clone().unwrap_or_default();
        if spec.type_.as_deref() == Some("ExternalName") {
            svcs.remove(&key);
        } else {
            svcs.insert(
                key,
                SvcInfo {
                    selector: spec.selector.unwrap_or_default(),
                    publish_not_ready: spec.publish_not_ready_addresses.unwrap_or(false),
                },
            );
        }
    }
    drop(svcs);
    shared.hosts_changed.notify_one();
}

pub(super) async fn hosts_loop(shared: Arc<Shared>, hosts: Option<HostsBlock>) {
    let Some(hosts) = hosts else {
        std::future::pending::<()>().await;
        return;
    };
    loop {
        let entries = host_entries(&shared);
        if let Err(e) = hosts.set(&entries) {
            eprintln!(
                "murmuration-e2e: cannot update {}: {e}",
                hosts.path().display()
            );
        }
        shared.hosts_changed.notified().await;
    }
}

/// Name → addresses for every service (and headless-service pod names).
pub(super) fn host_entries(shared: &Shared) -> BTreeMap<String, Vec<Ipv4Addr>> {
    let svcs = lock(&shared.services).clone();
    let pods: Vec<PodInfo> = lock(&shared.pods).values().cloned().collect();
    let mut out: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
    let mut add = |name: String, ip: Ipv4Addr| {
        for n in [format!("{name}.svc"), format!("{name}.svc.cluster.local")] {
            let v = out.entry(n).or_default();
            if !v.contains(&ip) {
                v.push(ip);
            }
        }
    };
    for ((ns, name), svc) in &svcs {
        let mut any = false;
        if !svc.selector.is_empty() {
            for p in &pods {
                let Some(ip) = p.ip else { continue };
                if p.namespace != *ns || !p.running || p.terminating {
                    continue;
                }
                if !(p.ready || svc.publish_not_ready) {
                    continue;
                }
                if !svc.selector.iter().all(|(k, v)| p.labels.get(k) == Some(v)) {
                    continue;
                }
                add(format!("{name}.{ns}"), ip);
                any = true;
                if let (Some(h), Some(sub)) = (&p.hostname, &p.subdomain) {
                    if sub == name {
                        add(format!("{h}.{name}.{ns}"), ip);
                    }
                }
            }
        }
        if !any {
            add(format!("{name}.{ns}"), NO_ENDPOINTS_IP);
        }
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}

pub(super) async fn register_node(client: &Client, name: &str) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "murmuration.dev/test-kubelet": "true"
            }
        }
    }))
    .map_err(|e| Error::Setup(e.to_string()))?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => {
            return Err(Error::Kube {
                context: format!("registering node {name}"),
                source: e,
            })
        }
    }
    patch_node_status(client, name).await
}

pub(super) async fn patch_node_status(client: &Client, name: &str) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let now = rfc3339(SystemTime::now());
    let status = json!({
        "status": {
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "murmuration test kubelet is posting ready status",
                "lastHeartbeatTime": now, "lastTransitionTime": now
            }],
            "addresses": [
                {"type": "InternalIP", "address": HOST_IP},
                {"type": "Hostname", "address": name}
            ],
            "capacity": {"cpu": "2", "memory": "24Gi", "pods": "250"},
            "allocatable": {"cpu": "2", "memory": "24Gi", "pods": "250"},
            "nodeInfo": {
                "architecture": "amd64", "bootID": "", "containerRuntimeVersion": "murmuration-e2e://1",
                "kernelVersion": "", "kubeProxyVersion": "v1.20.2", "kubeletVersion": "v1.20.2",
                "machineID": "", "operatingSystem": "linux", "osImage": "murmuration test kubelet",
                "systemUUID": ""
            }
        }
    });
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .map_err(|e| Error::Kube {
            context: format!("patching node {name} status"),
            source: e,
        })?;
    Ok(())
}

pub(super) async fn heartbeat_loop(client: Client, name: String) {
    let mut t = tokio::time::interval(Duration::from_secs(10));
    t.tick().await;
    loop {
        t.tick().await;
        let _ = patch_node_status(&client, &name).await;
    }
}
