//! `murmur-e2e-cluster`: starts the e2e control plane (etcd, kube-apiserver,
//! kube-controller-manager on loopback) and a test kubelet, prints the kubeconfig paths and
//! runs until Ctrl-C, for trying things by hand:
//!
//! ```text
//! cargo run -p murmuration-e2e --bin murmur-e2e-cluster [-- --no-kubelet]
//! ```

use murmuration_e2e::{ControlPlane, KubeletConfig};

fn main() -> anyhow::Result<()> {
    let no_kubelet = std::env::args().any(|a| a == "--no-kubelet");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (cp, kubelet) = rt.block_on(async {
        let cp = ControlPlane::start().await?;
        let kubelet = if no_kubelet {
            None
        } else {
            Some(cp.start_kubelet(KubeletConfig::default()).await?)
        };
        anyhow::Ok((cp, kubelet))
    })?;
    println!("admin kubeconfig:    {}", cp.admin_kubeconfig().display());
    println!(
        "operator kubeconfig: {}",
        cp.operator_kubeconfig().display()
    );
    println!(
        "kubectl:             {}",
        murmuration_e2e::binaries::kubectl_path().display()
    );
    if let Some(k) = &kubelet {
        println!(
            "test kubelet node:   {} (pod logs in {})",
            k.node_name(),
            k.work_dir().display()
        );
    }
    println!("Ctrl-C to stop.");
    // Ctrl-C / SIGTERM run the fixtures' cleanup and exit.
    loop {
        std::thread::park();
    }
}
