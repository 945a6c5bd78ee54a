//! Murmuration's end-to-end test environment.
//!
//! - [`ControlPlane`]: a real Kubernetes control plane (etcd, kube-apiserver and
//!   kube-controller-manager 1.20.2, RBAC on) on loopback, fresh per instance, with an admin
//!   and an operator kubeconfig; or an existing cluster named by `MURMURATION_E2E_KUBECONFIG`.
//! - [`TestKubelet`]: a Node whose pods run as local processes of the project's binaries,
//!   each on its own 127.0.0.x address, with service names in `/etc/hosts`.
//! - [`manifests`]: server-side apply of YAML files (CRDs, RBAC, examples).
//!
//! Nothing here sends traffic outside 127.0.0.0/8. Processes started here die with the test
//! process (process groups, `PR_SET_PDEATHSIG`), and interrupted runs clean up after
//! themselves (signal handlers, `atexit`, stale-run removal at the next start). See
//! `tests/e2e/README.md`.

pub mod binaries;
pub mod control_plane;
pub mod error;
pub mod hosts;
pub mod ipalloc;
pub mod kubelet;
pub mod manifests;
pub mod procs;
pub mod prometheus;
pub mod util;

pub use control_plane::ControlPlane;
pub use error::{Error, Result};
pub use kubelet::{ImageRunner, KubeletConfig, TestKubelet};

impl ControlPlane {
    /// Starts a [`TestKubelet`] against this control plane (as admin), with the project's
    /// images mapped and pods' service account kubeconfigs pointing here.
    pub async fn start_kubelet(&self, cfg: KubeletConfig) -> Result<TestKubelet> {
        let config = self.admin_config().await?;
        let mut cfg = cfg;
        if cfg.cluster.is_none() {
            cfg.cluster = Some(kubelet::ClusterAccess {
                server: self.server().to_string(),
                ca_file: self.ca_file().map(std::path::Path::to_path_buf),
            });
        }
        tokio::task::spawn_blocking(move || TestKubelet::start(config, cfg))
            .await
            .map_err(|e| Error::Setup(format!("kubelet start task: {e}")))?
    }
}
