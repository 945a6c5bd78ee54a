//! `murmur-e2e-cluster`: starts the e2e control plane (etcd, kube-apiserver,
//! kube-controller-manager on loopback) and a test kubelet, prints the kubeconfig paths and
//! runs until Ctrl-C, for trying things by hand:
//!
//! ```text
//! cargo run -p murmuration-e2e --bin murmur-e2e-cluster [-- --no-kubelet] [--image REPO=BINARY]...
//! ```
//!
//! The kubelet maps the project's images (see `KubeletConfig::default`), and
//! `murmuration/test-echo` to the `e2e-http-echo` binary next to this one.

use murmuration_e2e::{ControlPlane, ImageRunner, KubeletConfig};

fn main() -> anyhow::Result<()> {
    let mut no_kubelet = false;
    let echo = murmuration_e2e::binaries::project_bin_dir().join("e2e-http-echo");
    let mut cfg = KubeletConfig::default().image("murmuration/test-echo", ImageRunner::path(echo));
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--no-kubelet" => no_kubelet = true,
            "--image" => {
                let v = args.next().unwrap_or_default();
                let (repo, bin) = v
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--image wants REPO=BINARY, got {v:?}"))?;
                cfg = cfg.image(repo, ImageRunner::path(bin));
            }
            other => anyhow::bail!("unknown argument {other:?}"),
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (cp, kubelet) = rt.block_on(async {
        let cp = ControlPlane::start().await?;
        let kubelet = if no_kubelet {
            None
        } else {
            Some(cp.start_kubelet(cfg).await?)
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
