//! `murmur-operator`: runs the LoadTest controller (when leading), serves metrics and
//! health, and stops gracefully on SIGTERM.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use kube::runtime::events::{Recorder, Reporter};
use murmuration_operator::build::PodSettings;
use murmuration_operator::controller::{self, Context};
use murmuration_operator::lease::LeaderElection;
use murmuration_operator::metrics::{self, Metrics};

#[derive(Parser, Debug)]
#[command(
    name = "murmur-operator",
    version,
    about = "Murmuration's Kubernetes operator"
)]
struct Args {
    /// Where `/metrics`, `/healthz` and `/readyz` answer.
    #[arg(long, env = "MURMUR_OPERATOR_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// The image of master and agent pods (unless a test names its own).
    #[arg(long, env = "MURMUR_AGENT_IMAGE")]
    agent_image: Option<String>,
    /// Log filter of master and agent pods.
    #[arg(long, env = "MURMUR_POD_LOG", default_value = "info")]
    pod_log: String,
    /// Log filter of the operator (also RUST_LOG).
    #[arg(long, env = "MURMUR_LOG", default_value = "info")]
    log: String,
    /// Logs as JSON lines.
    #[arg(long, env = "MURMUR_LOG_JSON")]
    log_json: bool,
    /// Elect a leader among replicas with a Lease.
    #[arg(long, env = "MURMUR_LEADER_ELECTION")]
    leader_election: bool,
    /// Namespace of the Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    namespace: String,
    /// How long a test's master may take to answer, beyond the test's start barrier
    /// (`spec.start.waitForAgents`), before the test fails.
    #[arg(long, env = "MURMUR_MASTER_GRACE", default_value = "1m", value_parser = humantime::parse_duration)]
    master_grace: Duration,
    /// This replica's identity (its pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
}

async fn terminated() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler installs");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&args.log));
    // Colour only on a terminal: the operator's log is a pod log, a file.
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if args.log_json {
        fmt.json().init();
    } else {
        fmt.init();
    }
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        "murmur-operator starting"
    );
    let client = kube::Client::try_default().await?;
    let metrics = Metrics::default();
    let ready = Arc::new(AtomicBool::new(false));
    metrics::serve(args.listen, metrics.clone(), ready.clone()).await?;
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("murmur-operator-{}", std::process::id()));
    let election = LeaderElection::new(
        client.clone(),
        &args.namespace,
        "murmuration-operator",
        &identity,
        Duration::from_secs(15),
    );
    if args.leader_election {
        tokio::select! {
            _ = election.acquire() => {}
            _ = terminated() => return Ok(()),
        }
    }
    ready.store(true, Ordering::Release);
    let mut pods = PodSettings {
        log: args.pod_log.clone(),
        ..PodSettings::default()
    };
    if let Some(i) = args.agent_image {
        pods.image = i;
    }
    let (ctx, caches) = Context::new(
        client.clone(),
        pods,
        Recorder::new(
            client.clone(),
            Reporter {
                controller: "murmuration-operator".into(),
                instance: Some(identity.clone()),
            },
        ),
        metrics.clone(),
    );
    let mut ctx = ctx;
    ctx.master_grace = args.master_grace;
    let ctx = Arc::new(ctx);
    // Tests by phase, for the metrics (from the controller's cache).
    let counting = ctx.clone();
    let gauge = metrics.tests.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            gauge.reset();
            for (phase, n) in counting.count_phases() {
                gauge.with_label_values(&[&phase]).set(n);
            }
        }
    });
    let lost = async {
        if args.leader_election {
            election.hold().await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(controller::run(ctx, caches, async move {
        let _ = stop_rx.await;
    }));
    tokio::select! {
        _ = terminated() => tracing::info!("SIGTERM: finishing the reconciles in flight"),
        _ = lost => tracing::error!("not leading any more: stopping"),
    }
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), controller).await;
    if args.leader_election {
        // The reconciles in flight are done: another replica may lead at once.
        match election.release().await {
            Ok(()) => tracing::info!("lease released"),
            Err(e) => tracing::warn!("releasing the lease: {e}"),
        }
    }
    Ok(())
}
