//! `murmur-test-kubelet --kubeconfig <file>`: the e2e test kubelet as a program, for
//! trying things by hand against the e2e control plane (or any cluster you may run
//! processes for). Runs until Ctrl-C; then kills its pods' processes and removes its
//! `/etc/hosts` block.
//!
//! Options:
//!   --kubeconfig <file>          cluster and credentials (required)
//!   --node-name <name>           Node name (default murmur-test-node)
//!   --image <repo>=<binary>      map an image repository (or suffix) to a binary; repeatable
//!   --work-dir <dir>             pod dirs and logs (default: a temp dir, kept)
//!   --no-hosts                   do not write service names into /etc/hosts
//!   --no-bind                    do not bind unscheduled pods

use std::path::PathBuf;

use murmuration_e2e::kubelet::ClusterAccess;
use murmuration_e2e::{ImageRunner, KubeletConfig, TestKubelet};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut kubeconfig: Option<PathBuf> = None;
    let mut cfg = KubeletConfig::default();
    let mut args = std::env::args().skip(1);
    let mut work_dir = None;
    while let Some(a) = args.next() {
        let mut val = |name: &str| {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{name} needs a value"))
        };
        match a.as_str() {
            "--kubeconfig" => kubeconfig = Some(val("--kubeconfig")?.into()),
            "--node-name" => cfg.node_name = val("--node-name")?,
            "--image" => {
                let v = val("--image")?;
                let (repo, bin) = v
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--image wants <repo>=<binary>, got {v:?}"))?;
                cfg = cfg.image(repo, ImageRunner::path(bin));
            }
            "--work-dir" => work_dir = Some(PathBuf::from(val("--work-dir")?)),
            "--no-hosts" => cfg.manage_hosts = false,
            "--no-bind" => cfg.bind_unscheduled = false,
            "-h" | "--help" => {
                eprintln!("usage: murmur-test-kubelet --kubeconfig <file> [--node-name N] [--image REPO=BINARY]... [--work-dir DIR] [--no-hosts] [--no-bind]");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other:?} (see --help)"),
        }
    }
    let kubeconfig = kubeconfig.ok_or_else(|| anyhow::anyhow!("--kubeconfig is required"))?;
    let work_dir = match work_dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("murmur-test-kubelet-{}", std::process::id())),
    };
    cfg.work_dir = Some(work_dir.clone());
    let kc = kube::config::Kubeconfig::read_from(&kubeconfig)?;
    if let Some(cluster) = kc.clusters.first().and_then(|c| c.cluster.clone()) {
        cfg.cluster = Some(ClusterAccess {
            server: cluster.server.unwrap_or_default(),
            ca_file: cluster.certificate_authority.map(PathBuf::from),
        });
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let config = rt.block_on(kube::Config::from_custom_kubeconfig(
        kc,
        &Default::default(),
    ))?;
    let kubelet = TestKubelet::start(config, cfg)?;
    eprintln!(
        "murmur-test-kubelet: node {} ready; pod logs in {}; Ctrl-C to stop",
        kubelet.node_name(),
        work_dir.display()
    );
    // Ctrl-C / SIGTERM run the fixtures' cleanup (processes, /etc/hosts) and exit.
    loop {
        std::thread::park();
    }
}
