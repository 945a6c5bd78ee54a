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
//! ConfigMap volumes are emulated the same way (see `volumes`): the keys written into a
//! directory of the pod's, references to the mount path pointed at it.
//!
//! A container's termination message comes, as from a kubelet, from the file at its
//! `terminationMessagePath` (a per-pod file the process is given at that path, see
//! `TerminationLog`) or, with `FallbackToLogsOnError`, from the tail of its log; it is in
//! `state`/`lastState.terminated.message` with reason `Error` and the exit code.
//!
//! Each container's stdout and stderr go to `<work dir>/pods/<ns>_<pod>/<container>.log`;
//! [`TestKubelet::log_files`] and [`TestKubelet::dump_logs`] help after a failure, and the
//! paths are printed when the kubelet is dropped during a panic.

mod container;
mod env;
mod node;
mod pod;
mod probes;
mod volumes;

use container::*;
pub use env::expand;
use env::*;
use node::*;
use pod::*;
use probes::*;

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
