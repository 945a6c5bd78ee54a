//! The `murmur` command line: `run` (a test on this machine, in-process or with a master
//! and agent processes), `master` and `agent` (the roles of a distributed test),
//! `demo-server` (the bundled targets), `report` and `wait` (a test the operator runs). [`main_with`] is the entry point for custom
//! binaries that register their own scenarios.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tokio::sync::mpsc;

use crate::engine::{Command, EngineOptions};
use crate::plan::load_plan_with_vars;
use crate::progress::{Progress, ProgressTarget};
use crate::registry::Registry;
use crate::report::baseline::Baseline;
use crate::report::Outcome;

mod cluster;
mod push;

/// Exit code: the test ran and every threshold held.
pub const EXIT_PASSED: u8 = 0;
/// Exit code: the test ran and a threshold failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: the input is invalid; nothing started.
pub const EXIT_INVALID: u8 = 2;
/// Kubernetes' default `terminationMessagePath` of a container.
pub const TERMINATION_LOG: &str = "/dev/termination-log";

/// Ends a master or agent on a fatal error: the error goes to stderr and, when the file
/// exists, to `termination_log`, where Kubernetes takes the container's termination
/// message from (pods without it fall back to the log's tail with
/// `terminationMessagePolicy: FallbackToLogsOnError`).
fn fatal(termination_log: &std::path::Path, message: &str, code: u8) -> ExitCode {
    eprintln!("error: {message}");
    // Never created: outside a container this path is not ours to write.
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(termination_log)
    {
        use std::io::Write;
        let _ = f.write_all(message.as_bytes());
    }
    ExitCode::from(code)
}

#[derive(Parser, Debug)]
#[command(
    name = "murmur",
    version,
    about = "Murmuration: distributed load tests from Kubernetes manifests"
)]
struct Cli {
    /// Log filter (also RUST_LOG), e.g. `info` or `murmuration_agent=debug`.
    #[arg(long, global = true, default_value = "warn", env = "MURMUR_LOG")]
    log: String,
    /// Logs as JSON lines.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand, Debug)]
enum Commands {
    /// Run a LoadTest manifest (with its Throttle and Coordinator documents) on this machine.
    Run(RunArgs),
    /// Run a bundled target for tests and demos.
    DemoServer(DemoArgs),
    /// Run the master of a distributed test (one per test): agents connect to it.
    Master(MasterArgs),
    /// Run an agent of a distributed test: it runs the users its master assigns.
    Agent(AgentArgs),
    /// Write the report of a test the operator ran (kept in the cluster after its pods
    /// are gone), with your kubeconfig.
    Report(cluster::ReportArgs),
    /// Follow a LoadTest on the cluster until it finishes, with the live display of `run`,
    /// and exit like `run`: 0 passed, 1 failed (or timed out), 2 invalid or not found.
    Wait(cluster::WaitArgs),
}

#[derive(clap::Args, Debug)]
struct MasterArgs {
    /// The manifest file (else the manifests' text in MURMUR_TEST).
    file: Option<String>,
    /// Address of the API, where agents connect too.
    #[arg(long, default_value = "0.0.0.0:8080", env = "MURMUR_LISTEN")]
    listen: SocketAddr,
    /// Agents expected before users start (default: `spec.agents`).
    #[arg(long)]
    agents: Option<u64>,
    /// File holding the test's token (else MURMUR_TOKEN).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Where this process writes its fatal error when it exits because of one: the
    /// container's termination message, which `kubectl describe pod` shows and the
    /// operator copies into the test's status. Written only when the file exists (the
    /// kubelet creates it); never created.
    #[arg(long, env = "MURMUR_TERMINATION_LOG", default_value = TERMINATION_LOG)]
    termination_log: PathBuf,
    #[command(flatten)]
    remote_write: push::RemoteWriteArgs,
    /// An earlier run's report (report.json, or a stored report.json.gz) to compare with
    /// and judge relative thresholds against; a file that does not exist is no baseline.
    #[arg(long, env = "MURMUR_BASELINE", value_name = "FILE")]
    baseline: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct AgentArgs {
    /// The master's address: `http://host:port` or `host:port`.
    #[arg(long, env = "MURMUR_MASTER")]
    master: String,
    /// This agent's stable name (default: the pod name in POD_NAME, else the host name).
    #[arg(long, env = "POD_NAME")]
    name: Option<String>,
    /// File holding the test's token (else MURMUR_TOKEN).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Worker threads (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Where to answer `/healthz` and `/readyz` (ready once registered with the master).
    #[arg(long)]
    health_listen: Option<SocketAddr>,
    /// Where this process writes its fatal error when it exits because of one: the
    /// container's termination message, which `kubectl describe pod` shows and the
    /// operator copies into the test's status. Written only when the file exists (the
    /// kubelet creates it); never created.
    #[arg(long, env = "MURMUR_TERMINATION_LOG", default_value = TERMINATION_LOG)]
    termination_log: PathBuf,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The manifest file: one LoadTest, and any Throttle and Coordinator documents.
    file: String,
    /// Directory for report.json and report.html.
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// Also write the thresholds as JUnit XML, one test case per threshold, so that CI
    /// shows which one failed.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Compare with an earlier run's report.json (each step beside it in the summary and
    /// report.html) and judge relative thresholds (`maxIncrease`) against it.
    #[arg(long, value_name = "OLD.json")]
    baseline: Option<PathBuf>,
    /// Worker threads (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Override `spec.users`.
    #[arg(long)]
    users: Option<u64>,
    /// Override `spec.duration` (e.g. `30s`).
    #[arg(long)]
    duration: Option<String>,
    /// Override a scenario variable: `--set base_url=http://127.0.0.1:8080` (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    set: Vec<String>,
    /// Start a bundled demo target on a free loopback port first and point `vars.target`
    /// at it: `http` (sets `http://127.0.0.1:PORT`), `messaging` (sets `127.0.0.1:PORT`) or
    /// `websocket` (sets `ws://127.0.0.1:PORT`).
    #[arg(long, value_enum)]
    demo_server: Option<DemoKind>,
    /// Progress as plain lines even on a terminal.
    #[arg(long)]
    plain: bool,
    /// Seconds between plain progress lines.
    #[arg(long, default_value_t = 5)]
    progress_every: u64,
    /// Run a master and this many agent processes on loopback (0: everything in this
    /// process).
    #[arg(long, default_value_t = 0)]
    agents: u32,
    #[command(flatten)]
    remote_write: push::RemoteWriteArgs,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum DemoKind {
    Http,
    Messaging,
    Websocket,
}

#[derive(clap::Args, Debug)]
struct DemoArgs {
    /// Which target.
    #[arg(value_enum)]
    kind: DemoKind,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// HTTP: delay every answer by this much (`10ms`), or by a random time in `MIN..MAX`
    /// (`5ms..50ms`).
    #[arg(long)]
    delay: Option<String>,
    /// HTTP: answer this share of requests with 500 (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0)]
    error_ratio: f64,
    /// HTTP: size of the fixed answer body in bytes.
    #[arg(long, default_value_t = 13)]
    body_size: usize,
    /// Threads serving (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

/// Runs the `murmur` command line with the scenarios of `registry` available to
/// `scenario: {custom: {name}}`. Call it from your own `main` to build a `murmur` with your
/// scenarios.
pub fn main_with(registry: Registry) -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log, cli.log_json);
    // Every connected user (and every connection a demo server takes) is a descriptor.
    crate::limits::raise_open_files();
    match cli.command {
        Commands::Run(args) => run_command(args, registry),
        Commands::DemoServer(args) => demo_command(args),
        Commands::Master(args) => master_command(args, registry),
        Commands::Agent(args) => agent_command(args, registry),
        Commands::Report(args) => cluster::report_command(args),
        Commands::Wait(args) => cluster::wait_command(args),
    }
}

fn init_logging(filter: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    // Colour only on a terminal: pods' logs are files, and `kubectl logs` shows escape
    // codes as garbage.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime builds")
}

fn run_command(args: RunArgs, registry: Registry) -> ExitCode {
    let mut vars = crate::scenario::Vars::new();
    for s in &args.set {
        let Some((k, v)) = s.split_once('=') else {
            eprintln!("error: --set {s:?}: expected NAME=VALUE");
            return ExitCode::from(EXIT_INVALID);
        };
        vars.insert(k.to_owned(), parse_value(v));
    }
    let duration = match args
        .duration
        .as_deref()
        .map(murmuration_crds::units::parse_duration)
    {
        None => None,
        Some(Ok(d)) if !d.is_zero() => Some(d),
        Some(Ok(_)) => {
            eprintln!("error: --duration: must be longer than zero");
            return ExitCode::from(EXIT_INVALID);
        }
        Some(Err(e)) => {
            eprintln!("error: --duration: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    // Before the run: a baseline that cannot be read is a mistake worth minutes saved.
    let baseline = match args.baseline.as_deref().map(Baseline::read).transpose() {
        Ok(b) => b.map(std::sync::Arc::new),
        Err(e) => {
            eprintln!("error: --baseline: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let rt = runtime();
    rt.block_on(async move {
        // The demo target first: its address is a variable of the plan.
        let _demo = match args.demo_server {
            Some(kind) => match start_demo(kind).await {
                Ok((d, target)) => {
                    vars.insert("target".into(), target.into());
                    Some(d)
                }
                Err(e) => {
                    eprintln!("error: could not start the demo server: {e}");
                    return ExitCode::from(EXIT_INVALID);
                }
            },
            None => None,
        };
        if args.agents > 0 {
            return run_distributed(&args, registry, vars, duration, baseline).await;
        }
        let mut plan = match load_plan_with_vars(&args.file, &registry, &vars) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_INVALID);
            }
        };
        if let Some(u) = args.users {
            plan.users = u;
        }
        if duration.is_some() {
            plan.duration = duration;
        }
        let push_token = match args.remote_write.token(plan.remote_write.as_ref()) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_INVALID);
            }
        };
        let opts = EngineOptions {
            workers: args.workers.unwrap_or(EngineOptions::default().workers),
            ..EngineOptions::default()
        };
        let target = progress_target(args.plain, args.progress_every);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("\nstopping: users finish their iteration (Ctrl-C again to abort them)");
                let _ = tx.send(Command::Stop { forced: false });
                if tokio::signal::ctrl_c().await.is_ok() {
                    let _ = tx.send(Command::Stop { forced: true });
                }
            }
            // Keep the sender alive until the end of the test.
            std::future::pending::<()>().await;
        });
        let mut progress = Progress::new(target);
        let report = push::run_local(
            plan,
            &registry,
            opts,
            baseline,
            rx,
            &mut progress,
            push_token,
        )
        .await;
        progress.finish();
        let report = match report {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_INVALID);
            }
        };
        conclude(&report, Some(&args.out), args.junit.as_deref())
    })
}

/// A terminal redraws in place unless `plain`; anything else gets a line every `every_s`.
fn progress_target(plain: bool, every_s: u64) -> ProgressTarget {
    if !plain && std::io::stderr().is_terminal() {
        ProgressTarget::Terminal
    } else {
        ProgressTarget::Plain {
            every: std::time::Duration::from_secs(every_s.max(1)),
        }
    }
}

/// Prints the summary, writes the reports (into `out`, and the JUnit XML into `junit`),
/// and says how the process exits.
fn conclude(
    report: &crate::report::Report,
    out: Option<&std::path::Path>,
    junit: Option<&std::path::Path>,
) -> ExitCode {
    println!("{}", crate::report::summary::summary_table(report));
    let mut paths = Vec::new();
    let written = out
        .map(|dir| crate::report::io::write_reports(dir, report).map(|p| paths.extend(p)))
        .transpose()
        .and_then(|_| {
            junit
                .map(|f| {
                    crate::report::junit::write_junit(f, report).map(|()| paths.push(f.into()))
                })
                .transpose()
        });
    for p in &paths {
        println!("wrote {}", p.display());
    }
    if let Err(e) = written {
        eprintln!("error: could not write the report: {e}");
        return ExitCode::from(EXIT_FAILED);
    }
    match report.result {
        Outcome::Passed => ExitCode::from(EXIT_PASSED),
        Outcome::Failed => ExitCode::from(EXIT_FAILED),
    }
}

/// A random token for a test run on this machine.
fn random_token() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..32)
        .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.random_range(0..36)]))
        .collect()
}

/// Agent processes started by `murmur run --agents N`, killed when dropped.
struct Children(Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

/// `murmur run --agents N`: a master in this process and N agent processes on loopback.
async fn run_distributed(
    args: &RunArgs,
    registry: Registry,
    vars: crate::scenario::Vars,
    duration: Option<std::time::Duration>,
    baseline: Option<std::sync::Arc<Baseline>>,
) -> ExitCode {
    let mut manifests = match crate::plan::read_manifests(&args.file) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    for (k, v) in vars {
        manifests.test.spec.vars.insert(k, v);
    }
    if let Some(u) = args.users {
        manifests.test.spec.users = Some(u.min(i32::MAX as u64) as i32);
    }
    if let Some(d) = duration {
        manifests.test.spec.duration = Some(murmuration_crds::units::format_duration(d));
    }
    let remote_write_token = match args.remote_write.token(push::plan_of(&manifests).as_ref()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let token = random_token();
    let config = crate::master::MasterConfig {
        listen: "127.0.0.1:0".parse().expect("a literal address"),
        token: token.clone(),
        manifests,
        registry,
        options: crate::master::state::MasterOptions {
            agents: Some(args.agents as u64),
            baseline,
            ..Default::default()
        },
        remote_write_token,
    };
    let master = match crate::master::start(config).await {
        Ok(m) => m,
        Err(crate::master::MasterError::Invalid(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: cannot find this program to start agents: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let workers = args
        .workers
        .unwrap_or((cores / args.agents as usize).max(1));
    let mut children = Children(Vec::new());
    for i in 0..args.agents {
        let child = std::process::Command::new(&exe)
            .args([
                "agent",
                "--master",
                &master.addr().to_string(),
                "--name",
                &format!("agent-{i}"),
                "--workers",
                &workers.to_string(),
            ])
            .env("MURMUR_TOKEN", &token)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn();
        match child {
            Ok(c) => children.0.push(c),
            Err(e) => {
                eprintln!("error: cannot start agent process {i}: {e}");
                return ExitCode::from(EXIT_INVALID);
            }
        }
    }
    let stopper = master.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\nstopping: users finish their iteration (Ctrl-C again to abort them)");
            stopper.stop(false).await;
            if tokio::signal::ctrl_c().await.is_ok() {
                stopper.stop(true).await;
            }
        }
    });
    let mut progress = Progress::new(progress_target(args.plain, args.progress_every));
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Some(status) = master.status().await else {
            eprintln!("error: the master stopped");
            return ExitCode::from(EXIT_FAILED);
        };
        if status.phase == murmuration_crds::api::TestPhase::Finished {
            if let Some(m) = &status.message {
                eprintln!("error: {m}");
            }
            break;
        }
        if let Some(r) = master.report().await {
            progress.update(&r);
        }
    }
    progress.finish();
    master.finish_remote_write().await;
    let Some(report) = master.report().await else {
        eprintln!("error: the master stopped before its report");
        return ExitCode::from(EXIT_FAILED);
    };
    drop(children);
    conclude(&report, Some(&args.out), args.junit.as_deref())
}

/// Reads the token from a file or MURMUR_TOKEN.
fn token_of(file: Option<&PathBuf>) -> Result<String, String> {
    match file {
        Some(f) => std::fs::read_to_string(f)
            .map(|t| t.trim().to_owned())
            .map_err(|e| format!("--token-file {}: {e}", f.display())),
        None => std::env::var("MURMUR_TOKEN")
            .map(|t| t.trim().to_owned())
            .map_err(|_| "no token: set MURMUR_TOKEN or pass --token-file".to_owned()),
    }
}

/// Waits for SIGTERM or Ctrl-C.
async fn terminated() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler installs");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

fn master_command(args: MasterArgs, registry: Registry) -> ExitCode {
    let token = match token_of(args.token_file.as_ref()) {
        Ok(t) => t,
        Err(e) => return fatal(&args.termination_log, &e.to_string(), EXIT_INVALID),
    };
    let read = match &args.file {
        Some(f) => crate::plan::read_manifests(f),
        None => match std::env::var("MURMUR_TEST") {
            Ok(t) => crate::plan::parse_manifests("MURMUR_TEST", &t),
            Err(_) => {
                return fatal(
                    &args.termination_log,
                    "no test: pass a manifest file or set MURMUR_TEST",
                    EXIT_INVALID,
                )
            }
        },
    };
    let manifests = match read {
        Ok(m) => m,
        Err(e) => return fatal(&args.termination_log, &e.to_string(), EXIT_INVALID),
    };
    let remote_write_token = match args.remote_write.token(push::plan_of(&manifests).as_ref()) {
        Ok(t) => t,
        Err(e) => return fatal(&args.termination_log, &e, EXIT_INVALID),
    };
    let baseline = match args.baseline.as_deref().map(Baseline::read_if_present) {
        None => None,
        Some(Ok(b)) => {
            if b.is_none() {
                tracing::warn!("no baseline report: relative thresholds are skipped");
            }
            b
        }
        Some(Err(e)) => {
            let message = format!("--baseline: {e}");
            return fatal(&args.termination_log, &message, EXIT_INVALID);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime builds");
    rt.block_on(async move {
        let config = crate::master::MasterConfig {
            listen: args.listen,
            token,
            manifests,
            registry,
            options: crate::master::state::MasterOptions {
                agents: args.agents,
                baseline: baseline.map(std::sync::Arc::new),
                ..Default::default()
            },
            remote_write_token,
        };
        match crate::master::start(config).await {
            Ok(m) => {
                println!("listening on {} (master of {})", m.addr(), m.test());
                terminated().await;
                // The last figures reach Prometheus before the pod goes (bounded).
                m.finish_remote_write().await;
                ExitCode::SUCCESS
            }
            Err(e) => fatal(&args.termination_log, &e.to_string(), EXIT_INVALID),
        }
    })
}

fn agent_command(args: AgentArgs, registry: Registry) -> ExitCode {
    let token = match token_of(args.token_file.as_ref()) {
        Ok(t) => t,
        Err(e) => return fatal(&args.termination_log, &e.to_string(), EXIT_INVALID),
    };
    let name = args.name.clone().unwrap_or_else(|| {
        std::env::var("HOSTNAME").unwrap_or_else(|_| format!("agent-{}", std::process::id()))
    });
    let config = crate::agent::AgentConfig {
        master: args.master.clone(),
        name,
        token,
        workers: args.workers.unwrap_or(EngineOptions::default().workers),
        registry,
        health: args.health_listen,
    };
    let rt = runtime();
    rt.block_on(async move {
        tokio::select! {
            r = crate::agent::run_agent(config) => match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fatal(&args.termination_log, &e.to_string(), EXIT_INVALID),
            },
            _ = terminated() => ExitCode::SUCCESS,
        }
    })
}

/// `--set` values: JSON when they parse as JSON (numbers, booleans), text otherwise.
fn parse_value(v: &str) -> serde_json::Value {
    match serde_json::from_str::<serde_json::Value>(v) {
        Ok(j @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => j,
        _ => serde_json::Value::String(v.to_owned()),
    }
}

/// A demo target started by `murmur run --demo-server`, stopped when dropped.
enum DemoHandle {
    Http(#[allow(dead_code)] crate::demo::http::HttpDemo),
    Messaging(#[allow(dead_code)] crate::demo::messaging::MessagingDemo),
    WebSocket(#[allow(dead_code)] crate::demo::websocket::WebSocketDemo),
}

/// Starts a bundled target on a free loopback port; returns it and the value for
/// `vars.target`.
async fn start_demo(kind: DemoKind) -> Result<(DemoHandle, String), String> {
    let listen: SocketAddr = "127.0.0.1:0".parse().expect("a literal address");
    match kind {
        DemoKind::Http => {
            let config = crate::demo::http::HttpDemoConfig {
                listen,
                threads: 1,
                ..Default::default()
            };
            let demo = crate::demo::http::HttpDemo::start(config).map_err(|e| e.to_string())?;
            let url = format!("http://{}", demo.local_addr());
            eprintln!("demo target: murmur demo-server http on {url} (vars.target)");
            Ok((DemoHandle::Http(demo), url))
        }
        DemoKind::Messaging => {
            let demo =
                crate::demo::messaging::MessagingDemo::start(listen).map_err(|e| e.to_string())?;
            let addr = demo.local_addr().to_string();
            eprintln!("demo target: murmur demo-server messaging on {addr} (vars.target)");
            Ok((DemoHandle::Messaging(demo), addr))
        }
        DemoKind::Websocket => {
            let demo = crate::demo::websocket::WebSocketDemo::start(listen, 1)
                .map_err(|e| e.to_string())?;
            let url = format!("ws://{}", demo.local_addr());
            eprintln!("demo target: murmur demo-server websocket on {url} (vars.target)");
            Ok((DemoHandle::WebSocket(demo), url))
        }
    }
}

fn demo_command(args: DemoArgs) -> ExitCode {
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    match args.kind {
        DemoKind::Http => {
            let delay = match args
                .delay
                .as_deref()
                .map(crate::demo::http::parse_delay)
                .transpose()
            {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("error: --delay: {e}");
                    return ExitCode::from(EXIT_INVALID);
                }
            };
            let config = crate::demo::http::HttpDemoConfig {
                listen: args.listen,
                body: bytes::Bytes::from(vec![b'x'; args.body_size]),
                delay,
                error_ratio: args.error_ratio,
                threads,
            };
            match crate::demo::http::HttpDemo::start(config) {
                Ok(demo) => {
                    // The address on stdout (tests and scripts read it when the port was 0).
                    println!("listening on {} (http)", demo.local_addr());
                    demo.join();
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: cannot serve on {}: {e}", args.listen);
                    ExitCode::from(EXIT_INVALID)
                }
            }
        }
        DemoKind::Messaging => match crate::demo::messaging::MessagingDemo::start(args.listen) {
            Ok(demo) => {
                println!("listening on {} (messaging)", demo.local_addr());
                demo.join();
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot serve on {}: {e}", args.listen);
                ExitCode::from(EXIT_INVALID)
            }
        },
        DemoKind::Websocket => {
            match crate::demo::websocket::WebSocketDemo::start(args.listen, threads) {
                Ok(demo) => {
                    println!("listening on {} (websocket)", demo.local_addr());
                    demo.join();
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: cannot serve on {}: {e}", args.listen);
                    ExitCode::from(EXIT_INVALID)
                }
            }
        }
    }
}
