//! A test kubelet: a Node whose pods are local processes.
//!
//! [`TestKubelet::start`] registers a Node (Ready), schedules pending pods onto it (the
//! `pods/binding` subresource, as a scheduler does) and runs the containers whose image is
//! one of the known images as local processes of the project's freshly built binaries:
//!
//! - image repository ending in `murmuration/agent` → `murmur` (package `murmuration-agent`),
//! - image repository ending in `murmuration/operator` → `murmur-operator`
//!   (package `murmuration-operator`),
//! - anything registered with [`KubeletConfig::image`] or [`TestKubelet::register_image`].
//!
//! Each pod gets its own loopback address (127.0.0.2, 127.0.0.3, …) as its IP; its
//! processes get the pod's command, args and env (`value`, `fieldRef`, `secretKeyRef`,
//! `configMapKeyRef`, `envFrom`, `$(VAR)` expansion) and must bind to `status.podIP` (there
//! is no network namespace: two pods listening on `0.0.0.0` with the same port collide).
//! A pod whose service account token is mounted (the default) gets a kubeconfig for a token
//! of its service account (TokenRequest) in `KUBECONFIG`, so an operator pod runs with
//! exactly the RBAC rights of its service account.
//!
//! Pod status is kept true to life with merge patches of `pods/status`: phase, podIP(s),
//! hostIP, startTime, conditions (Ready follows the readiness probe: httpGet, tcpSocket or
//! exec, at the probe's period), and containerStatuses (ready, started, restartCount,
//! state, lastState). Containers restart according to `restartPolicy` with a small backoff;
//! liveness and startup probes kill and restart them. When a pod is deleted, its processes
//! get SIGTERM, then SIGKILL after `terminationGracePeriodSeconds` (capped), and the pod
//! object is removed (delete with grace 0, as a kubelet does). Pods of other images stay
//! Pending with the waiting reason `ImageNotRunnable`.
//!
//! Service names (`<svc>.<ns>.svc`, `<svc>.<ns>.svc.cluster.local`, and
//! `<hostname>.<subdomain>.<ns>.svc…` for pods of headless services) resolve, for processes
//! on this machine, through a block in `/etc/hosts` (see [`crate::hosts`]) to the ready pods
//! behind the service; names of services without ready pods point to an address where
//! nothing listens ([`crate::ipalloc::NO_ENDPOINTS_IP`]), so a connection is refused at
//! once and nothing ever dials a cluster IP or asks a DNS server.
//!
//! Each container's stdout and stderr go to `<work dir>/pods/<ns>_<pod>/<container>.log`;
//! [`TestKubelet::log_files`] and [`TestKubelet::dump_logs`] help after a failure, and the
//! paths are printed when the kubelet is dropped during a panic.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Node, Pod, Probe, Secret, Service, ServiceAccount,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::watcher;
use kube::Client;
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};

use crate::binaries;
use crate::error::{Error, IoContext, Result};
use crate::hosts::{hosts_file, HostsBlock};
use crate::ipalloc::{LoopbackIp, NO_ENDPOINTS_IP};
use crate::procs;

/// The host address of the node (and of every pod's `status.hostIP`).
pub const HOST_IP: &str = "127.0.0.1";

/// Where a mapped image's binary comes from.
#[derive(Debug, Clone)]
pub enum BinarySource {
    /// This file.
    Path(PathBuf),
    /// A binary of a workspace package, built (if needed) with cargo in the test's profile.
    Cargo {
        /// The package (`-p`).
        package: String,
        /// The binary (`--bin`).
        bin: String,
    },
}

/// How the kubelet runs the containers of one image.
#[derive(Debug, Clone)]
pub struct ImageRunner {
    /// The image's entrypoint binary.
    pub binary: BinarySource,
    /// Environment added before the pod's own env (the image's `ENV`, in Docker terms).
    pub env: Vec<(String, String)>,
}

impl ImageRunner {
    /// Runs this file.
    pub fn path(p: impl Into<PathBuf>) -> ImageRunner {
        ImageRunner {
            binary: BinarySource::Path(p.into()),
            env: Vec::new(),
        }
    }

    /// Runs a workspace binary, built with cargo when first needed.
    pub fn cargo(package: &str, bin: &str) -> ImageRunner {
        ImageRunner {
            binary: BinarySource::Cargo {
                package: package.into(),
                bin: bin.into(),
            },
            env: Vec::new(),
        }
    }

    /// Adds an image environment variable.
    pub fn with_env(mut self, k: &str, v: &str) -> ImageRunner {
        self.env.push((k.into(), v.into()));
        self
    }

    fn resolve(&self) -> Result<PathBuf> {
        match &self.binary {
            BinarySource::Path(p) => {
                if p.is_file() {
                    Ok(p.clone())
                } else {
                    Err(Error::Setup(format!("{} does not exist", p.display())))
                }
            }
            BinarySource::Cargo { package, bin } => binaries::project_binary(package, bin),
        }
    }

    fn binary_name(&self) -> String {
        match &self.binary {
            BinarySource::Path(p) => p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            BinarySource::Cargo { bin, .. } => bin.clone(),
        }
    }
}

/// The API server a pod's generated kubeconfig points at.
#[derive(Debug, Clone)]
pub struct ClusterAccess {
    /// `https://127.0.0.1:<port>`.
    pub server: String,
    /// CA certificate file (None: TLS verification off).
    pub ca_file: Option<PathBuf>,
}

/// Settings of a [`TestKubelet`].
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    /// The Node's name.
    pub node_name: String,
    /// Image repository (or its last path segments) → how to run it.
    pub images: BTreeMap<String, ImageRunner>,
    /// Pod dirs and logs go here (default: a temp dir removed on drop unless a test failed).
    pub work_dir: Option<PathBuf>,
    /// Bind pods that no scheduler has bound (default true).
    pub bind_unscheduled: bool,
    /// Cap on `terminationGracePeriodSeconds` (default 5 s).
    pub max_grace: Duration,
    /// Keep service names in the hosts file (default true).
    pub manage_hosts: bool,
    /// The hosts file (default `/etc/hosts`, or `MURMURATION_E2E_HOSTS_FILE`).
    pub hosts_file: PathBuf,
    /// For pods that mount their service account token: the API server to write in their
    /// kubeconfig. None: no kubeconfig is given to pods.
    pub cluster: Option<ClusterAccess>,
    /// First restart delay (doubled up to `max_backoff`).
    pub min_backoff: Duration,
    /// Longest restart delay.
    pub max_backoff: Duration,
    /// Environment variables of the test process passed through to every container when
    /// set (e.g. `RUST_LOG`, `RUST_BACKTRACE`).
    pub passthrough_env: Vec<String>,
}

impl Default for KubeletConfig {
    fn default() -> Self {
        let mut images = BTreeMap::new();
        images.insert(
            "murmuration/agent".to_string(),
            ImageRunner::cargo("murmuration-agent", "murmur"),
        );
        images.insert(
            "murmuration/operator".to_string(),
            ImageRunner::cargo("murmuration-operator", "murmur-operator"),
        );
        KubeletConfig {
            node_name: "murmur-test-node".into(),
            images,
            work_dir: None,
            bind_unscheduled: true,
            max_grace: Duration::from_secs(5),
            manage_hosts: true,
            hosts_file: hosts_file(),
            cluster: None,
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            passthrough_env: vec!["RUST_LOG".into(), "RUST_BACKTRACE".into()],
        }
    }
}

impl KubeletConfig {
    /// Maps an image repository (or suffix such as `murmuration/test-echo`) to a runner.
    pub fn image(mut self, repository: &str, runner: ImageRunner) -> Self {
        self.images.insert(repository.to_string(), runner);
        self
    }
}

/// Repository part of an image reference (no tag, no digest).
pub fn image_repository(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    match no_digest.rfind(':') {
        Some(i) if !no_digest[i..].contains('/') => &no_digest[..i],
        _ => no_digest,
    }
}

fn find_runner(images: &BTreeMap<String, ImageRunner>, image: &str) -> Option<ImageRunner> {
    let repo = image_repository(image);
    images
        .iter()
        .filter(|(k, _)| repo == k.as_str() || repo.ends_with(&format!("/{k}")))
        .max_by_key(|(k, _)| k.len())
        .map(|(_, r)| r.clone())
}

/// What the rest of the kubelet knows about a running pod (for services and tests).
#[derive(Debug, Clone)]
struct PodInfo {
    namespace: String,
    name: String,
    labels: BTreeMap<String, String>,
    ip: Option<Ipv4Addr>,
    ready: bool,
    running: bool,
    terminating: bool,
    hostname: Option<String>,
    subdomain: Option<String>,
    pgids: Vec<u32>,
}

#[derive(Debug, Clone)]
struct SvcInfo {
    selector: BTreeMap<String, String>,
    publish_not_ready: bool,
}

struct Shared {
    cfg: KubeletConfig,
    work_dir: PathBuf,
    images: Mutex<BTreeMap<String, ImageRunner>>,
    pods: Mutex<HashMap<String, PodInfo>>,
    services: Mutex<BTreeMap<(String, String), SvcInfo>>,
    hosts_changed: Notify,
}

/// A running test kubelet. Dropping it kills its pods' processes and removes its hosts
/// block (pod objects are left as they are).
pub struct TestKubelet {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
    keep_work_dir: bool,
    _dir_guard: Option<procs::CleanupGuard>,
}

impl std::fmt::Debug for TestKubelet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestKubelet")
            .field("node", &self.shared.cfg.node_name)
            .field("work_dir", &self.shared.work_dir)
            .finish()
    }
}

impl TestKubelet {
    /// Starts the kubelet on a thread (and tokio runtime) of its own, with a client made
    /// from `config`; returns once the Node is registered and the first pod list is in.
    pub fn start(config: kube::Config, cfg: KubeletConfig) -> Result<TestKubelet> {
        let (work_dir, keep_work_dir, dir_guard) = match &cfg.work_dir {
            Some(d) => {
                std::fs::create_dir_all(d).ctx(|| format!("creating {}", d.display()))?;
                (d.clone(), true, None)
            }
            None => {
                let d = tempfile::Builder::new()
                    .prefix(&format!("murmuration-e2e-{}-kubelet-", std::process::id()))
                    .tempdir()
                    .ctx(|| "creating the kubelet's temp dir".into())?
                    .keep();
                let g = procs::register(procs::Cleanup::RemoveDir(d.clone()));
                (d, false, Some(g))
            }
        };
        let shared = Arc::new(Shared {
            images: Mutex::new(cfg.images.clone()),
            cfg,
            work_dir,
            pods: Mutex::new(HashMap::new()),
            services: Mutex::new(BTreeMap::new()),
            hosts_changed: Notify::new(),
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("test-kubelet-{}", sh.cfg.node_name))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(Error::Setup(format!("kubelet runtime: {e}"))));
                        return;
                    }
                };
                rt.block_on(run(sh, config, stop_rx, ready_tx));
                rt.shutdown_timeout(Duration::from_secs(2));
            })
            .ctx(|| "starting the kubelet thread".into())?;
        let kubelet = TestKubelet {
            shared,
            stop: stop_tx,
            thread: Some(thread),
            keep_work_dir,
            _dir_guard: dir_guard,
        };
        match ready_rx.recv_timeout(crate::util::scaled(Duration::from_secs(60))) {
            Ok(Ok(())) => Ok(kubelet),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Timeout {
                what: "the test kubelet to register its node and list pods".into(),
                after: Duration::from_secs(60),
                logs: vec![],
            }),
        }
    }

    /// The Node's name.
    pub fn node_name(&self) -> &str {
        &self.shared.cfg.node_name
    }

    /// Pod dirs and logs live under this dir.
    pub fn work_dir(&self) -> &Path {
        &self.shared.work_dir
    }

    /// Maps one more image (repository or suffix) to a runner, for pods started from now on.
    pub fn register_image(&self, repository: &str, runner: ImageRunner) {
        lock(&self.shared.images).insert(repository.to_string(), runner);
    }

    /// The loopback address of a running pod.
    pub fn pod_ip(&self, namespace: &str, name: &str) -> Option<Ipv4Addr> {
        lock(&self.shared.pods)
            .values()
            .find(|p| p.namespace == namespace && p.name == name)
            .and_then(|p| p.ip)
    }

    /// Process group ids of a pod's running containers (empty when none runs).
    pub fn pod_pids(&self, namespace: &str, name: &str) -> Vec<u32> {
        lock(&self.shared.pods)
            .values()
            .filter(|p| p.namespace == namespace && p.name == name)
            .flat_map(|p| p.pgids.clone())
            .collect()
    }

    /// Log files of a pod's containers (of the pods known now).
    pub fn log_files(&self, namespace: &str, name: &str) -> Vec<PathBuf> {
        let dir = self
            .shared
            .work_dir
            .join("pods")
            .join(format!("{namespace}_{name}"));
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "log"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// All container logs so far, with headers (for a failed test's output).
    pub fn dump_logs(&self) -> String {
        let mut out = String::new();
        let pods = self.shared.work_dir.join("pods");
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&pods)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        dirs.sort();
        for d in dirs {
            let mut logs: Vec<PathBuf> = std::fs::read_dir(&d)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| e.path())
                        .filter(|p| p.extension().is_some_and(|x| x == "log"))
                        .collect()
                })
                .unwrap_or_default();
            logs.sort();
            for l in logs {
                out.push_str(&format!("===== {} =====\n", l.display()));
                out.push_str(&crate::util::tail_file(&l, 200).unwrap_or_default());
                out.push('\n');
            }
        }
        out
    }

    /// Stops the kubelet: kills all pod processes, removes the hosts block.
    pub fn stop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Whatever is still registered (the thread died?) gets killed here.
        for p in lock(&self.shared.pods).values() {
            for pg in &p.pgids {
                procs::signal_group(*pg, libc::SIGKILL);
            }
        }
    }
}

impl Drop for TestKubelet {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking {
            let mut logs = Vec::new();
            if let Ok(rd) = std::fs::read_dir(self.shared.work_dir.join("pods")) {
                for d in rd.flatten() {
                    if let Ok(rd2) = std::fs::read_dir(d.path()) {
                        logs.extend(
                            rd2.flatten()
                                .map(|e| e.path())
                                .filter(|p| p.extension().is_some_and(|x| x == "log")),
                        );
                    }
                }
            }
            logs.sort();
            eprintln!("murmuration-e2e: test failed; pod logs kept:");
            for l in logs {
                eprintln!("  {}", l.display());
            }
        }
        self.stop();
        if !self.keep_work_dir && !panicking {
            let _ = std::fs::remove_dir_all(&self.shared.work_dir);
        }
        self._dir_guard.take();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------
// The main loop.

struct Worker {
    tx: watch::Sender<Option<Arc<Pod>>>,
    handle: tokio::task::JoinHandle<()>,
}

async fn run(
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
fn wants(cfg: &KubeletConfig, p: &Pod) -> bool {
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

fn update_service(shared: &Shared, s: &Service, deleted: bool) {
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

async fn hosts_loop(shared: Arc<Shared>, hosts: Option<HostsBlock>) {
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
fn host_entries(shared: &Shared) -> BTreeMap<String, Vec<Ipv4Addr>> {
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

async fn register_node(client: &Client, name: &str) -> Result<()> {
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

async fn patch_node_status(client: &Client, name: &str) -> Result<()> {
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

async fn heartbeat_loop(client: Client, name: String) {
    let mut t = tokio::time::interval(Duration::from_secs(10));
    t.tick().await;
    loop {
        t.tick().await;
        let _ = patch_node_status(&client, &name).await;
    }
}

// ---------------------------------------------------------------------------------------
// One pod.

#[derive(Debug, Clone, Default)]
struct CState {
    /// Waiting reason and message, before the first start or between restarts.
    waiting: Option<(String, String)>,
    running_since: Option<SystemTime>,
    /// (exit code, reason, started, finished, message)
    terminated: Option<Terminated>,
    last_terminated: Option<Terminated>,
    restarts: i32,
    ready: bool,
    started: bool,
    /// The container will not run again (restart policy).
    done: bool,
    pgid: Option<u32>,
}

#[derive(Debug, Clone)]
struct Terminated {
    code: i32,
    reason: String,
    started: SystemTime,
    finished: SystemTime,
    message: Option<String>,
}

struct PodCtx {
    shared: Arc<Shared>,
    client: Client,
    uid: String,
    namespace: String,
    name: String,
    pod: Mutex<Arc<Pod>>,
    ip: Ipv4Addr,
    dir: PathBuf,
    containers: Mutex<Vec<CState>>,
    changed: Notify,
    stop: watch::Sender<Option<Duration>>,
    transitions: Mutex<HashMap<String, (bool, String)>>,
    start_time: String,
}

async fn pod_worker(
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

async fn finalize(api: &Api<Pod>, name: &str, uid: &str) {
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

async fn sync_status(ctx: &PodCtx, api: &Api<Pod>, last_sent: &mut Option<Value>) {
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

fn compute_status(ctx: &PodCtx) -> Value {
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

fn update(ctx: &PodCtx, i: usize, f: impl FnOnce(&mut CState)) {
    if let Some(c) = lock(&ctx.containers).get_mut(i) {
        f(c);
    }
    ctx.changed.notify_one();
}

/// Runs one container until the pod stops or the restart policy says it is done.
async fn run_container(ctx: Arc<PodCtx>, i: usize, c: Container) {
    let mut stop = ctx.stop.subscribe();
    let policy = {
        let p = lock(&ctx.pod);
        p.spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    };
    let log_path = ctx.dir.join(format!("{}.log", c.name));
    let mut backoff = ctx.shared.cfg.min_backoff;
    let mut first = true;
    loop {
        if stop.borrow().is_some() {
            break;
        }
        if !first {
            // Restart backoff (interruptible by the pod's deletion).
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => break,
            }
            backoff = (backoff * 2).min(ctx.shared.cfg.max_backoff);
            update(&ctx, i, |s| s.restarts += 1);
        }
        first = false;

        let prepared = prepare(&ctx, &c).await;
        let (program, args, env, cwd) = match prepared {
            Ok(p) => p,
            Err((reason, message)) => {
                update(&ctx, i, |s| {
                    s.waiting = Some((reason, message));
                    s.running_since = None;
                });
                first = true; // config errors are retried without counting restarts
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => break,
                }
                backoff = (backoff * 2).min(ctx.shared.cfg.max_backoff);
                continue;
            }
        };
        let started = SystemTime::now();
        let mut cmd = Command::new(&program);
        cmd.args(&args)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(&cwd);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path);
        let spawned = match log {
            Ok(mut f) => {
                use std::io::Write;
                let _ = writeln!(
                    f,
                    "==> murmuration-e2e: start {} at {}: {} {}",
                    lock(&ctx.containers)[i].restarts,
                    rfc3339(started),
                    program.display(),
                    args.join(" ")
                );
                let f2 = f.try_clone();
                match f2 {
                    Ok(f2) => {
                        cmd.stdin(Stdio::null()).stdout(f).stderr(f2);
                        procs::spawn_guarded(cmd)
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        let mut child = match spawned {
            Ok(ch) => ch,
            Err(e) => {
                let now = SystemTime::now();
                update(&ctx, i, |s| {
                    s.waiting = None;
                    s.running_since = None;
                    s.last_terminated = s.terminated.take();
                    s.terminated = Some(Terminated {
                        code: 128,
                        reason: "StartError".into(),
                        started: now,
                        finished: now,
                        message: Some(format!("starting {}: {e}", program.display())),
                    });
                });
                if policy == "Never" {
                    update(&ctx, i, |s| s.done = true);
                    break;
                }
                continue;
            }
        };
        let pgid = child.id();
        let guard = procs::register(procs::Cleanup::KillGroup(pgid));
        let (exit_tx, mut exit_rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let st = child.wait();
            let _ = exit_tx.send(st);
        });
        update(&ctx, i, |s| {
            s.waiting = None;
            s.running_since = Some(started);
            s.last_terminated = s.terminated.take().or(s.last_terminated.take());
            s.pgid = Some(pgid);
            s.ready = c.readiness_probe.is_none() && c.startup_probe.is_none();
            s.started = c.startup_probe.is_none();
        });
        let (kill_tx, mut kill_rx) = tokio::sync::mpsc::channel::<String>(1);
        let probes = tokio::spawn(run_probes(ctx.clone(), i, c.clone(), kill_tx));

        let mut killed_for: Option<String> = None;
        let mut stopping = false;
        let status = tokio::select! {
            st = &mut exit_rx => st.ok().and_then(|r| r.ok()),
            // (Without liveness/startup probes the sender is dropped at once: that
            // disables this branch rather than killing the container.)
            Some(reason) = kill_rx.recv() => {
                killed_for = Some(reason);
                kill_group(pgid, Duration::from_secs(c_grace(&ctx)).min(ctx.shared.cfg.max_grace), &mut exit_rx).await
            }
            _ = stop.changed() => {
                stopping = true;
                let grace = stop.borrow().unwrap_or(Duration::ZERO);
                kill_group(pgid, grace, &mut exit_rx).await
            }
        };
        probes.abort();
        // Whatever the process left in its group goes too.
        procs::signal_group(pgid, libc::SIGKILL);
        drop(guard);
        let finished = SystemTime::now();
        let code = status
            .map(|st| {
                use std::os::unix::process::ExitStatusExt;
                st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(9))
            })
            .unwrap_or(137);
        let reason = if killed_for.is_some() || (stopping && code != 0) {
            if code == 137 {
                "Killed"
            } else {
                "Error"
            }
        } else if code == 0 {
            "Completed"
        } else {
            "Error"
        };
        let reason = if code == 0 { "Completed" } else { reason };
        let message = killed_for
            .clone()
            .or_else(|| (code != 0).then(|| format!("log: {}", log_path.display())));
        let restart = !stopping
            && match policy.as_str() {
                "Always" => true,
                "OnFailure" => code != 0,
                _ => false,
            };
        update(&ctx, i, |s| {
            s.running_since = None;
            s.ready = false;
            s.pgid = None;
            s.terminated = Some(Terminated {
                code,
                reason: reason.to_string(),
                started,
                finished,
                message,
            });
            if !restart {
                s.done = true;
            } else {
                s.waiting = Some((
                    "CrashLoopBackOff".into(),
                    format!(
                        "back-off restarting container {} (exit code {code})",
                        c.name
                    ),
                ));
            }
        });
        if !restart {
            break;
        }
        if finished.duration_since(started).unwrap_or_default() > Duration::from_secs(10) {
            backoff = ctx.shared.cfg.min_backoff;
        }
    }
    update(&ctx, i, |s| {
        if s.running_since.is_none() && s.terminated.is_some() {
            s.waiting = None;
        }
        s.done = true;
    });
}

fn c_grace(ctx: &PodCtx) -> u64 {
    let p = lock(&ctx.pod);
    p.spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30)
        .max(0) as u64
}

/// SIGTERM to the group, SIGKILL after `grace`; waits for the leader's exit.
async fn kill_group(
    pgid: u32,
    grace: Duration,
    exit_rx: &mut tokio::sync::oneshot::Receiver<std::io::Result<std::process::ExitStatus>>,
) -> Option<std::process::ExitStatus> {
    if grace.is_zero() {
        procs::signal_group(pgid, libc::SIGKILL);
    } else {
        procs::signal_group(pgid, libc::SIGTERM);
        if let Ok(r) = tokio::time::timeout(grace, &mut *exit_rx).await {
            return r.ok().and_then(|r| r.ok());
        }
        procs::signal_group(pgid, libc::SIGKILL);
    }
    match tokio::time::timeout(Duration::from_secs(10), exit_rx).await {
        Ok(r) => r.ok().and_then(|r| r.ok()),
        Err(_) => None,
    }
}

type Prepared = (PathBuf, Vec<String>, Vec<(String, String)>, PathBuf);

/// Program, args, env and working dir of a container, or a waiting (reason, message).
async fn prepare(ctx: &PodCtx, c: &Container) -> std::result::Result<Prepared, (String, String)> {
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

async fn resolve_env(
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

fn field_value(ctx: &PodCtx, pod: &Pod, path: &str) -> Option<String> {
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
async fn pod_kubeconfig(
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

// ---------------------------------------------------------------------------------------
// Probes.

async fn run_probes(
    ctx: Arc<PodCtx>,
    i: usize,
    c: Container,
    kill: tokio::sync::mpsc::Sender<String>,
) {
    if let Some(p) = &c.startup_probe {
        if !probe_until_success(&ctx, &c, p, &kill, "Startup").await {
            return;
        }
        update(&ctx, i, |s| {
            s.started = true;
            if c.readiness_probe.is_none() {
                s.ready = true;
            }
        });
    } else {
        update(&ctx, i, |s| s.started = true);
    }
    let readiness = c.readiness_probe.clone().map(|p| {
        let ctx = ctx.clone();
        let c = c.clone();
        tokio::spawn(async move {
            let period = Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64);
            let ok_needed = p.success_threshold.unwrap_or(1).max(1);
            let fail_needed = p.failure_threshold.unwrap_or(3).max(1);
            tokio::time::sleep(Duration::from_secs(
                p.initial_delay_seconds.unwrap_or(0).max(0) as u64,
            ))
            .await;
            let (mut oks, mut fails) = (0, 0);
            let mut ready = false;
            loop {
                let ok = probe_once(&ctx, &c, &p).await.is_ok();
                if ok {
                    oks += 1;
                    fails = 0;
                } else {
                    fails += 1;
                    oks = 0;
                }
                if !ready && oks >= ok_needed {
                    ready = true;
                    update(&ctx, i, |s| s.ready = true);
                } else if ready && fails >= fail_needed {
                    ready = false;
                    update(&ctx, i, |s| s.ready = false);
                }
                tokio::time::sleep(period).await;
            }
        })
    });
    if let Some(p) = &c.liveness_probe {
        let period = Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64);
        let fail_needed = p.failure_threshold.unwrap_or(3).max(1);
        tokio::time::sleep(Duration::from_secs(
            p.initial_delay_seconds.unwrap_or(0).max(0) as u64,
        ))
        .await;
        let mut fails = 0;
        loop {
            match probe_once(&ctx, &c, p).await {
                Ok(()) => fails = 0,
                Err(e) => {
                    fails += 1;
                    if fails >= fail_needed {
                        let _ = kill.send(format!("Liveness probe failed: {e}")).await;
                        break;
                    }
                }
            }
            tokio::time::sleep(period).await;
        }
    }
    if let Some(r) = readiness {
        // Ends when this task is aborted (container exit).
        struct AbortOnDrop(tokio::task::JoinHandle<()>);
        impl Drop for AbortOnDrop {
            fn drop(&mut self) {
                self.0.abort();
            }
        }
        let r = AbortOnDrop(r);
        std::future::pending::<()>().await;
        drop(r);
    }
}

async fn probe_until_success(
    ctx: &PodCtx,
    c: &Container,
    p: &Probe,
    kill: &tokio::sync::mpsc::Sender<String>,
    what: &str,
) -> bool {
    let period = Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64);
    let fail_needed = p.failure_threshold.unwrap_or(3).max(1);
    tokio::time::sleep(Duration::from_secs(
        p.initial_delay_seconds.unwrap_or(0).max(0) as u64,
    ))
    .await;
    let mut fails = 0;
    loop {
        match probe_once(ctx, c, p).await {
            Ok(()) => return true,
            Err(e) => {
                fails += 1;
                if fails >= fail_needed {
                    let _ = kill.send(format!("{what} probe failed: {e}")).await;
                    return false;
                }
            }
        }
        tokio::time::sleep(period).await;
    }
}

fn port_of(c: &Container, port: &IntOrString) -> Option<u16> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).ok(),
        IntOrString::String(name) => c
            .ports
            .as_ref()?
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

/// One probe attempt (httpGet: 200–399; tcpSocket: connect; exec: exit 0).
async fn probe_once(ctx: &PodCtx, c: &Container, p: &Probe) -> std::result::Result<(), String> {
    let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1).max(1) as u64);
    if let Some(h) = &p.http_get {
        let port = port_of(c, &h.port).ok_or("bad probe port")?;
        let host = h.host.clone().unwrap_or_else(|| ctx.ip.to_string());
        let path = h.path.clone().unwrap_or_else(|| "/".into());
        let headers: Vec<(String, String)> = h
            .http_headers
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|hh| (hh.name, hh.value))
            .collect();
        let ip: Ipv4Addr = host
            .parse()
            .map_err(|_| format!("probe host {host:?} is not an IPv4 address"))?;
        let sa = SocketAddr::from((ip, port));
        let started = Instant::now();
        let r = tokio::task::spawn_blocking(move || {
            crate::util::http_get_addr(sa, &host, &path, &headers, timeout)
        })
        .await
        .map_err(|e| e.to_string())?;
        return match r {
            Ok(resp) if (200..400).contains(&resp.status) => Ok(()),
            Ok(resp) => Err(format!(
                "HTTP probe failed with statuscode: {}",
                resp.status
            )),
            Err(e) => Err(format!(
                "Get \"http://{sa}\": {e} (after {:?})",
                started.elapsed()
            )),
        };
    }
    if let Some(t) = &p.tcp_socket {
        let port = port_of(c, &t.port).ok_or("bad probe port")?;
        let ip: Ipv4Addr = t
            .host
            .clone()
            .unwrap_or_else(|| ctx.ip.to_string())
            .parse()
            .map_err(|_| "probe host is not an IPv4 address".to_string())?;
        return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((ip, port))).await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("dial tcp {ip}:{port}: {e}")),
            Err(_) => Err(format!("dial tcp {ip}:{port}: timeout")),
        };
    }
    if let Some(e) = &p.exec {
        let cmd = e.command.clone().unwrap_or_default();
        let Some(first) = cmd.first() else {
            return Err("empty exec probe".into());
        };
        let mut command = tokio::process::Command::new(first);
        command
            .args(&cmd[1..])
            .current_dir(ctx.dir.join(&c.name))
            .env("POD_IP", ctx.ip.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        return match tokio::time::timeout(timeout, command.status()).await {
            Ok(Ok(st)) if st.success() => Ok(()),
            Ok(Ok(st)) => Err(format!("command {cmd:?} exited with {st}")),
            Ok(Err(e)) => Err(format!("command {cmd:?}: {e}")),
            Err(_) => Err(format!("command {cmd:?} timed out")),
        };
    }
    Err("probe without a handler (grpc probes are not supported)".into())
}

// ---------------------------------------------------------------------------------------

/// RFC 3339 UTC with seconds, as Kubernetes writes times.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Civil from days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_repositories() {
        assert_eq!(
            image_repository("ghcr.io/murmuration/agent:0.1"),
            "ghcr.io/murmuration/agent"
        );
        assert_eq!(
            image_repository("localhost:5000/murmuration/agent"),
            "localhost:5000/murmuration/agent"
        );
        assert_eq!(
            image_repository("murmuration/agent@sha256:abc"),
            "murmuration/agent"
        );
        let cfg = KubeletConfig::default();
        assert!(find_runner(&cfg.images, "ghcr.io/murmuration/agent:latest").is_some());
        assert!(find_runner(&cfg.images, "murmuration/operator:1").is_some());
        assert!(find_runner(&cfg.images, "nginx:1.25").is_none());
        assert!(find_runner(&cfg.images, "evil/notmurmuration/agent").is_none());
    }

    #[test]
    fn env_expansion() {
        let mut env = HashMap::new();
        env.insert("POD_IP".to_string(), "127.0.0.2".to_string());
        assert_eq!(
            expand("--listen=$(POD_IP):80", &env),
            "--listen=127.0.0.2:80"
        );
        assert_eq!(expand("$$(POD_IP) $(NOPE)", &env), "$(POD_IP) $(NOPE)");
    }

    #[test]
    fn times() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            "2023-11-14T22:13:20Z"
        );
    }
}
