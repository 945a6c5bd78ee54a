//! A real Kubernetes control plane on loopback: etcd, kube-apiserver and
//! kube-controller-manager (v1.20.2), with RBAC on, fresh data for each instance.
//!
//! [`ControlPlane::start`] builds the binaries the first time (through
//! `tests/e2e/scripts/control-plane-build.sh`, cached afterwards), starts the three
//! processes on free loopback ports, waits until `/readyz` answers and the controller
//! manager works, and writes two kubeconfigs: an admin one (group `system:masters`) and an
//! operator one (user `murmuration-e2e-operator`, bound to the ClusterRole in
//! `tests/e2e/rbac/operator.yaml`). Dropping it kills the processes and removes its temp
//! dir; so do a signal and the test process's exit, and the kernel kills the processes if
//! the test process dies any other way.
//!
//! With `MURMURATION_E2E_KUBECONFIG` set, that cluster is used instead and nothing is
//! started (`MURMURATION_E2E_OPERATOR_KUBECONFIG` may name the operator's kubeconfig; it
//! defaults to the same file).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;

use crate::binaries::{k8s_bin_dir, kubectl_path};
use crate::error::{Error, IoContext, KubeContext, Result};
use crate::procs::{self, Cleanup, CleanupGuard};
use crate::util::{free_port, http_get, poll_until, random_hex, scaled};

/// The user name of the operator kubeconfig.
pub const OPERATOR_USER: &str = "murmuration-e2e-operator";
/// The user name of the admin kubeconfig (group `system:masters`).
pub const ADMIN_USER: &str = "murmuration-e2e-admin";

/// The controllers the controller manager runs: all but those that need cloud or node
/// infrastructure, and the endpoint controllers (the API server refuses loopback pod IPs
/// in Endpoints; the test kubelet resolves Services from their selectors instead).
pub const CONTROLLERS: &str = "*,-nodeipam,-nodelifecycle,-ttl,-route,-service,-cloud-node-lifecycle,-bootstrapsigner,-tokencleaner,-csrsigning,-csrapproving,-csrcleaner,-endpoint,-endpointslice,-endpointslicemirroring";

struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
    _guard: CleanupGuard,
}

/// A running control plane (or an external cluster).
pub struct ControlPlane {
    dir: Option<PathBuf>,
    admin_kubeconfig: PathBuf,
    operator_kubeconfig: PathBuf,
    server: String,
    ca_file: Option<PathBuf>,
    procs: Vec<Proc>,
    _dir_guard: Option<CleanupGuard>,
    _data_guard: Option<CleanupGuard>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("server", &self.server)
            .field("dir", &self.dir)
            .field("admin_kubeconfig", &self.admin_kubeconfig)
            .finish()
    }
}

impl ControlPlane {
    /// Starts a fresh control plane (or attaches to `MURMURATION_E2E_KUBECONFIG`).
    pub async fn start() -> Result<ControlPlane> {
        tokio::task::spawn_blocking(ControlPlane::start_blocking)
            .await
            .map_err(|e| Error::Setup(format!("control plane start task failed: {e}")))?
    }

    /// One control plane shared by all tests of the process (started by the first caller,
    /// whichever runtime it is on); stopped at process exit. Tests sharing it should use
    /// namespaces of their own, and one kubelet between them (several kubelets would
    /// compete for unscheduled pods).
    pub async fn shared() -> Result<&'static ControlPlane> {
        static SHARED: tokio::sync::OnceCell<std::result::Result<ControlPlane, String>> =
            tokio::sync::OnceCell::const_new();
        SHARED
            .get_or_init(|| async { ControlPlane::start().await.map_err(|e| e.to_string()) })
            .await
            .as_ref()
            .map_err(|e| Error::Setup(format!("the shared control plane did not start: {e}")))
    }

    /// Blocking form of [`ControlPlane::start`] (runs its async parts on a thread of its own,
    /// so it may be called from inside or outside a runtime).
    pub fn start_blocking() -> Result<ControlPlane> {
        if let Some(kc) = std::env::var_os("MURMURATION_E2E_KUBECONFIG") {
            let admin = PathBuf::from(kc);
            let operator = std::env::var_os("MURMURATION_E2E_OPERATOR_KUBECONFIG")
                .map(PathBuf::from)
                .unwrap_or_else(|| admin.clone());
            let kubeconfig = Kubeconfig::read_from(&admin).map_err(|e| {
                Error::Setup(format!(
                    "MURMURATION_E2E_KUBECONFIG={}: {e}",
                    admin.display()
                ))
            })?;
            let server = kubeconfig
                .clusters
                .first()
                .and_then(|c| c.cluster.as_ref())
                .and_then(|c| c.server.clone())
                .unwrap_or_default();
            return Ok(ControlPlane {
                dir: None,
                admin_kubeconfig: admin,
                operator_kubeconfig: operator,
                server,
                ca_file: None,
                procs: Vec::new(),
                _dir_guard: None,
                _data_guard: None,
            });
        }
        let started = Instant::now();
        let bin = k8s_bin_dir()?;
        remove_stale_runs();
        let dir = make_run_dir()?;
        let dir_guard = procs::register(Cleanup::RemoveDir(dir.clone()));
        let mut cp = ControlPlane {
            dir: Some(dir.clone()),
            admin_kubeconfig: dir.join("admin.kubeconfig"),
            operator_kubeconfig: dir.join("operator.kubeconfig"),
            server: String::new(),
            ca_file: Some(dir.join("pki/ca.crt")),
            procs: Vec::new(),
            _dir_guard: Some(dir_guard),
            _data_guard: None,
        };
        cp.boot(&bin, &dir)?;
        if std::env::var_os("MURMURATION_E2E_QUIET").is_none() {
            eprintln!(
                "murmuration-e2e: control plane {} up in {:.1?} (admin kubeconfig: {})",
                cp.server,
                started.elapsed(),
                cp.admin_kubeconfig.display()
            );
        }
        Ok(cp)
    }

    fn boot(&mut self, bin: &Path, dir: &Path) -> Result<()> {
        let pki = dir.join("pki");
        std::fs::create_dir_all(&pki).ctx(|| format!("creating {}", pki.display()))?;
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).ctx(|| format!("creating {}", logs.display()))?;
        gen_pki(&pki)?;

        let admin_token = random_hex(24);
        let operator_token = random_hex(24);
        let tokens = dir.join("tokens.csv");
        std::fs::write(
            &tokens,
            format!(
                "{admin_token},{ADMIN_USER},uid-admin,\"system:masters\"\n{operator_token},{OPERATOR_USER},uid-operator\n"
            ),
        )
        .ctx(|| format!("writing {}", tokens.display()))?;

        // etcd on fresh ports, data on tmpfs when there is one (fsync there is free).
        let etcd_port = free_port("127.0.0.1").ctx(|| "finding a free port for etcd".into())?;
        let peer_port =
            free_port("127.0.0.1").ctx(|| "finding a free port for etcd peers".into())?;
        let api_port =
            free_port("127.0.0.1").ctx(|| "finding a free port for the API server".into())?;
        let data = etcd_data_dir(dir)?;
        if !data.starts_with(dir) {
            self._data_guard = Some(procs::register(Cleanup::RemoveDir(data.clone())));
        }
        let mut etcd = Command::new("etcd");
        etcd.args([
            "--name=murmuration-e2e".to_string(),
            format!("--data-dir={}", data.display()),
            format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
            format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-cluster=murmuration-e2e=http://127.0.0.1:{peer_port}"),
            "--log-level=warn".to_string(),
            "--logger=zap".to_string(),
        ]);
        self.spawn("etcd", etcd, &logs)?;
        let etcd_addr = format!("127.0.0.1:{etcd_port}");
        self.wait_blocking("etcd to answer /health", Duration::from_secs(30), || {
            http_get(&etcd_addr, "/health", Duration::from_secs(1))
                .ok()
                .filter(|r| r.status == 200 && r.body.contains("true"))
                .map(|_| ())
        })?;

        let mut api = Command::new(bin.join("kube-apiserver"));
        api.args([
            format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={api_port}"),
            format!("--cert-dir={}", pki.display()),
            format!("--tls-cert-file={}", pki.join("apiserver.crt").display()),
            format!(
                "--tls-private-key-file={}",
                pki.join("apiserver.key").display()
            ),
            format!("--token-auth-file={}", tokens.display()),
            "--authorization-mode=RBAC".into(),
            format!(
                "--service-account-key-file={}",
                pki.join("sa.key").display()
            ),
            format!(
                "--service-account-signing-key-file={}",
                pki.join("sa.key").display()
            ),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            "--service-cluster-ip-range=10.96.0.0/12".into(),
            // Endpoints with a loopback address are refused; no reconciler for the
            // `kubernetes` service's endpoints then.
            "--endpoint-reconciler-type=none".into(),
            "--profiling=false".into(),
            "--v=1".into(),
        ]);
        self.spawn("kube-apiserver", api, &logs)?;
        self.server = format!("https://127.0.0.1:{api_port}");
        let ca = pki.join("ca.crt");
        write_kubeconfig(
            &self.admin_kubeconfig,
            &self.server,
            &ca,
            ADMIN_USER,
            &admin_token,
        )?;
        write_kubeconfig(
            &self.operator_kubeconfig,
            &self.server,
            &ca,
            OPERATOR_USER,
            &operator_token,
        )?;

        // Everything async below runs on a runtime of its own thread.
        let admin_kc = self.admin_kubeconfig.clone();
        let all_logs = self.log_files();
        let pids: Vec<(&'static str, u32)> =
            self.procs.iter().map(|p| (p.name, p.child.id())).collect();
        run_async(async move {
            let client = client_from(&admin_kc).await?;
            poll_until(
                "the API server to answer /readyz",
                scaled(Duration::from_secs(90)),
                Duration::from_millis(200),
                &all_logs,
                || {
                    let client = client.clone();
                    let pids = pids.clone();
                    async move {
                        if let Some((name, _)) =
                            pids.iter().find(|(_, pid)| !procs::pid_alive(*pid))
                        {
                            eprintln!("murmuration-e2e: {name} is not running");
                            return Some(Err(()));
                        }
                        let req = http::Request::get("/readyz").body(Vec::new()).ok()?;
                        match client.request_text(req).await {
                            Ok(t) if t.trim() == "ok" => Some(Ok(())),
                            _ => None,
                        }
                    }
                },
            )
            .await?
            .map_err(|_| Error::Exited {
                what: "a control plane process".into(),
                status: "before the API server was ready".into(),
                logs: all_logs.clone(),
            })?;
            Ok(())
        })?;
        self.check_alive()?;

        let mut kcm = Command::new(bin.join("kube-controller-manager"));
        kcm.args([
            format!("--kubeconfig={}", self.admin_kubeconfig.display()),
            "--bind-address=127.0.0.1".into(),
            "--port=0".into(),
            "--secure-port=0".into(),
            "--leader-elect=false".into(),
            format!(
                "--service-account-private-key-file={}",
                pki.join("sa.key").display()
            ),
            format!("--root-ca-file={}", ca.display()),
            format!("--controllers={CONTROLLERS}"),
            "--v=1".into(),
        ]);
        self.spawn("kube-controller-manager", kcm, &logs)?;

        // RBAC for the operator user, and proof that the controller manager works (the
        // `default` ServiceAccount, which pod admission needs, exists).
        let admin_kc = self.admin_kubeconfig.clone();
        let all_logs = self.log_files();
        run_async(async move {
            let client = client_from(&admin_kc).await?;
            apply_operator_rbac(&client).await?;
            wait_default_service_account(&client, "default", &all_logs).await
        })?;
        self.check_alive()
    }

    fn spawn(&mut self, name: &'static str, mut cmd: Command, logs: &Path) -> Result<()> {
        let log = logs.join(format!("{name}.log"));
        let f = std::fs::File::create(&log).ctx(|| format!("creating {}", log.display()))?;
        let f2 = f.try_clone().ctx(|| "dup log fd".into())?;
        cmd.stdin(Stdio::null()).stdout(f).stderr(f2);
        let child = procs::spawn_guarded(cmd).ctx(|| format!("starting {name}"))?;
        let guard = procs::register(Cleanup::KillGroup(child.id()));
        self.procs.push(Proc {
            name,
            child,
            log,
            _guard: guard,
        });
        Ok(())
    }

    fn wait_blocking<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut() -> Option<T>,
    ) -> Result<T> {
        let timeout = scaled(timeout);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f() {
                return Ok(v);
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: what.into(),
                    after: timeout,
                    logs: self.log_files(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Fails when one of the control plane's processes has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        for p in &mut self.procs {
            if let Ok(Some(status)) = p.child.try_wait() {
                return Err(Error::Exited {
                    what: p.name.to_string(),
                    status: status.to_string(),
                    logs: vec![p.log.clone()],
                });
            }
        }
        Ok(())
    }

    /// Pids of the control plane's processes (etcd, API server, controller manager).
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(|p| p.child.id()).collect()
    }

    /// The log files of the control plane's processes.
    pub fn log_files(&self) -> Vec<PathBuf> {
        self.procs.iter().map(|p| p.log.clone()).collect()
    }

    /// The API server's URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The CA certificate of the API server (None for an external cluster).
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// The temp dir of this control plane (None for an external cluster).
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// True when attached to an external cluster (`MURMURATION_E2E_KUBECONFIG`).
    pub fn is_external(&self) -> bool {
        self.dir.is_none()
    }

    /// The admin kubeconfig (group `system:masters`).
    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// The operator kubeconfig (only the rights of `tests/e2e/rbac/operator.yaml`).
    pub fn operator_kubeconfig(&self) -> &Path {
        &self.operator_kubeconfig
    }

    /// The admin's kube config (build a client with `Client::try_from` in your runtime).
    pub async fn admin_config(&self) -> Result<kube::Config> {
        config_from(&self.admin_kubeconfig).await
    }

    /// An admin client, bound to the calling runtime.
    pub async fn admin_client(&self) -> Result<Client> {
        client_from(&self.admin_kubeconfig).await
    }

    /// An operator client, bound to the calling runtime.
    pub async fn operator_client(&self) -> Result<Client> {
        client_from(&self.operator_kubeconfig).await
    }

    /// `kubectl --kubeconfig <admin>` (Debian's kubectl 1.20 when available).
    pub fn kubectl(&self) -> Command {
        let mut c = Command::new(kubectl_path());
        c.arg(format!("--kubeconfig={}", self.admin_kubeconfig.display()));
        c
    }

    /// `kubectl --kubeconfig <operator>`.
    pub fn kubectl_as_operator(&self) -> Command {
        let mut c = Command::new(kubectl_path());
        c.arg(format!(
            "--kubeconfig={}",
            self.operator_kubeconfig.display()
        ));
        c
    }

    /// Creates a namespace (if missing) and waits until pods can be created in it (its
    /// `default` ServiceAccount exists).
    pub async fn create_namespace(&self, client: &Client, name: &str) -> Result<()> {
        let api: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
        }))
        .map_err(|e| Error::Setup(e.to_string()))?;
        match api.create(&PostParams::default(), &ns).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e).kctx(|| format!("creating namespace {name}")),
        }
        wait_default_service_account(client, name, &self.log_files()).await
    }

    /// Stops the control plane now (also done on drop).
    pub fn stop(&mut self) {
        for p in self.procs.iter_mut().rev() {
            procs::kill_child(&mut p.child, Duration::ZERO);
        }
        self.procs.clear();
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let logs = self.log_files();
        self.stop();
        if let Some(dir) = &self.dir {
            if std::thread::panicking() {
                // Keep the logs for the post-mortem; drop the data.
                let _ = std::fs::remove_dir_all(dir.join("etcd"));
                if let Ok(link) = std::fs::read_link(dir.join("etcd-data")) {
                    let _ = std::fs::remove_dir_all(link);
                }
                let _ = std::fs::write(dir.join("KEEP"), "logs kept after a failed test\n");
                eprintln!("murmuration-e2e: test failed; control plane logs kept:");
                for l in logs {
                    eprintln!("  {}", l.display());
                }
            } else {
                if let Ok(link) = std::fs::read_link(dir.join("etcd-data")) {
                    let _ = std::fs::remove_dir_all(link);
                }
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        // Dropping the guards unregisters the exit-time removals.
        self._dir_guard.take();
        self._data_guard.take();
    }
}

/// Runs a future to completion on a fresh current-thread runtime in a thread of its own.
pub fn run_async<T: Send + 'static>(
    fut: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Setup(format!("building a tokio runtime: {e}")))?;
        rt.block_on(fut)
    })
    .join()
    .map_err(|_| Error::Setup("control plane setup thread panicked".into()))?
}

/// A kube config from a kubeconfig file.
pub async fn config_from(path: &Path) -> Result<kube::Config> {
    let kc = Kubeconfig::read_from(path)
        .map_err(|e| Error::Setup(format!("{}: {e}", path.display())))?;
    kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| Error::Setup(format!("{}: {e}", path.display())))
}

/// A client from a kubeconfig file, bound to the calling runtime.
pub async fn client_from(path: &Path) -> Result<Client> {
    let config = config_from(path).await?;
    Client::try_from(config).kctx(|| format!("client for {}", path.display()))
}

async fn apply_operator_rbac(client: &Client) -> Result<()> {
    let role = Path::new(env!("CARGO_MANIFEST_DIR")).join("rbac/operator.yaml");
    crate::manifests::apply_file(client, &role, "default").await?;
    let binding = format!(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: murmuration-e2e-operator
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: murmuration-e2e-operator
subjects:
  - apiGroup: rbac.authorization.k8s.io
    kind: User
    name: {OPERATOR_USER}
"#
    );
    crate::manifests::apply_yaml(client, &binding, "default").await?;
    Ok(())
}

async fn wait_default_service_account(client: &Client, ns: &str, logs: &[PathBuf]) -> Result<()> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    poll_until(
        format!("ServiceAccount {ns}/default (made by kube-controller-manager)"),
        scaled(Duration::from_secs(60)),
        Duration::from_millis(100),
        logs,
        || async { api.get_opt("default").await.ok().flatten().map(|_| ()) },
    )
    .await
}

fn write_kubeconfig(path: &Path, server: &str, ca: &Path, user: &str, token: &str) -> Result<()> {
    let text = format!(
        r#"apiVersion: v1
kind: Config
clusters:
  - name: murmuration-e2e
    cluster:
      server: {server}
      certificate-authority: {ca}
users:
  - name: {user}
    user:
      token: {token}
contexts:
  - name: {user}
    context:
      cluster: murmuration-e2e
      user: {user}
      namespace: default
current-context: {user}
"#,
        ca = ca.display()
    );
    std::fs::write(path, text).ctx(|| format!("writing {}", path.display()))
}

/// CA, API server certificate (SAN 127.0.0.1, localhost) and the service account key.
fn gen_pki(pki: &Path) -> Result<()> {
    let run = |args: &[&str]| -> Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(pki)
            .stdin(Stdio::null())
            .output()
            .ctx(|| "running openssl (is it installed?)".into())?;
        if !out.status.success() {
            return Err(Error::Setup(format!(
                "openssl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    };
    std::fs::write(
        pki.join("server.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default.svc\n",
    )
    .ctx(|| "writing server.ext".into())?;
    run(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        "ca.key",
    ])?;
    run(&[
        "req",
        "-x509",
        "-new",
        "-key",
        "ca.key",
        "-sha256",
        "-days",
        "2",
        "-subj",
        "/CN=murmuration-e2e-ca",
        "-out",
        "ca.crt",
    ])?;
    run(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        "apiserver.key",
    ])?;
    run(&[
        "req",
        "-new",
        "-key",
        "apiserver.key",
        "-subj",
        "/CN=kube-apiserver",
        "-out",
        "apiserver.csr",
    ])?;
    run(&[
        "x509",
        "-req",
        "-in",
        "apiserver.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-sha256",
        "-extfile",
        "server.ext",
        "-out",
        "apiserver.crt",
    ])?;
    run(&["genrsa", "-out", "sa.key", "2048"])?;
    Ok(())
}

fn run_base_dir() -> PathBuf {
    std::env::var_os("MURMURATION_E2E_TMP")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

const DIR_PREFIX: &str = "murmuration-e2e-";

fn make_run_dir() -> Result<PathBuf> {
    let base = run_base_dir();
    std::fs::create_dir_all(&base).ctx(|| format!("creating {}", base.display()))?;
    let dir = tempfile::Builder::new()
        .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
        .tempdir_in(&base)
        .ctx(|| format!("creating a temp dir in {}", base.display()))?;
    Ok(dir.keep())
}

/// etcd's data dir: on /dev/shm when writable (linked from the run dir), else in it.
fn etcd_data_dir(dir: &Path) -> Result<PathBuf> {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{}-etcd-", std::process::id()))
            .tempdir_in(shm)
        {
            let d = d.keep();
            let _ = std::os::unix::fs::symlink(&d, dir.join("etcd-data"));
            return Ok(d);
        }
    }
    let d = dir.join("etcd");
    std::fs::create_dir_all(&d).ctx(|| format!("creating {}", d.display()))?;
    Ok(d)
}

/// Removes what crashed or killed runs left: their `/etc/hosts` blocks and their temp dirs
/// (dirs kept for a post-mortem, with a `KEEP` file, go after a day). Their processes are
/// already gone: the kernel killed them with their parent. Done at every start.
pub fn remove_stale_runs() {
    if let Err(e) = crate::hosts::remove_stale_blocks(&crate::hosts::hosts_file()) {
        eprintln!(
            "murmuration-e2e: cannot clean stale blocks of {}: {e}",
            crate::hosts::hosts_file().display()
        );
    }
    remove_stale_dirs();
}

fn remove_stale_dirs() {
    for base in [run_base_dir(), PathBuf::from("/dev/shm")] {
        let Ok(rd) = std::fs::read_dir(&base) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(DIR_PREFIX) else {
                continue;
            };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if pid == std::process::id() || procs::pid_alive(pid) {
                continue;
            }
            let path = e.path();
            let keep = path.join("KEEP");
            if let Ok(m) = std::fs::metadata(&keep) {
                let young = m
                    .modified()
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|a| a < Duration::from_secs(86400));
                if young {
                    continue;
                }
            }
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}
