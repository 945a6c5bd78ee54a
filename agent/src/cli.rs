//! The `murmur` command line: `run` (a test on this machine, in-process or with a master
//! and agent processes), `master` and `agent` (the roles of a distributed test),
//! `demo-server` (the bundled targets). [`main_with`] is the entry point for custom
//! binaries that register their own scenarios.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tokio::sync::mpsc;

use crate::engine::{run_test, Command, EngineOptions};
use crate::plan::load_plan_with_vars;
use crate::progress::{Progress, ProgressTarget};
use crate::registry::Registry;
use crate::report::Outcome;

/// Exit code: the test ran and every threshold held.
pub const EXIT_PASSED: u8 = 0;
/// Exit code: the test ran and a threshold failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: the input is invalid; nothing started.
pub const EXIT_INVALID: u8 = 2;

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
    Report(ReportArgs),
}

#[derive(clap::Args, Debug)]
struct ReportArgs {
    /// The LoadTest's name.
    name: String,
    /// Its namespace (default: the kubeconfig's).
    #[arg(short, long)]
    namespace: Option<String>,
    /// Directory for report.json and report.html.
    #[arg(long, default_value = ".")]
    out: PathBuf,
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
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The manifest file: one LoadTest, and any Throttle and Coordinator documents.
    file: String,
    /// Directory for report.json and report.html.
    #[arg(long, default_value = ".")]
    out: PathBuf,
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
    /// at it: `http` (sets `http://127.0.0.1:PORT`) or `messaging` (sets `127.0.0.1:PORT`).
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
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum DemoKind {
    Http,
    Messaging,
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
    match cli.command {
        Commands::Run(args) => run_command(args, registry),
        Commands::DemoServer(args) => demo_command(args),
        Commands::Master(args) => master_command(args, registry),
        Commands::Agent(args) => agent_command(args, registry),
        Commands::Report(args) => report_command(args),
    }
}

fn init_logging(filter: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
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
            return run_distributed(&args, registry, vars, duration).await;
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
        let opts = EngineOptions {
            workers: args.workers.unwrap_or(EngineOptions::default().workers),
            ..EngineOptions::default()
        };
        let target = progress_target(&args);
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
        let report = run_test(plan, &registry, opts, rx, |r| progress.update(r)).await;
        progress.finish();
        let report = match report {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_INVALID);
            }
        };
        conclude(&report, &args.out)
    })
}

fn progress_target(args: &RunArgs) -> ProgressTarget {
    if !args.plain && std::io::stderr().is_terminal() {
        ProgressTarget::Terminal
    } else {
        ProgressTarget::Plain {
            every: std::time::Duration::from_secs(args.progress_every.max(1)),
        }
    }
}

/// Prints the summary, writes the reports, and says how the process exits.
fn conclude(report: &crate::report::Report, out: &std::path::Path) -> ExitCode {
    println!("{}", crate::report::summary::summary_table(report));
    match crate::report::io::write_reports(out, report) {
        Ok(paths) => {
            for p in paths {
                println!("wrote {}", p.display());
            }
        }
        Err(e) => {
            eprintln!("error: could not write the report: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
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
        manifests.test.spec.users = u.min(i32::MAX as u64) as i32;
    }
    if let Some(d) = duration {
        manifests.test.spec.duration = Some(murmuration_crds::units::format_duration(d));
    }
    let token = random_token();
    let config = crate::master::MasterConfig {
        listen: "127.0.0.1:0".parse().expect("a literal address"),
        token: token.clone(),
        manifests,
        registry,
        options: crate::master::state::MasterOptions {
            agents: Some(args.agents as u64),
            ..Default::default()
        },
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
    let mut progress = Progress::new(progress_target(args));
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
    let Some(report) = master.report().await else {
        eprintln!("error: the master stopped before its report");
        return ExitCode::from(EXIT_FAILED);
    };
    drop(children);
    conclude(&report, &args.out)
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
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let read = match &args.file {
        Some(f) => crate::plan::read_manifests(f),
        None => match std::env::var("MURMUR_TEST") {
            Ok(t) => crate::plan::parse_manifests("MURMUR_TEST", &t),
            Err(_) => {
                eprintln!("error: no test: pass a manifest file or set MURMUR_TEST");
                return ExitCode::from(EXIT_INVALID);
            }
        },
    };
    let manifests = match read {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_INVALID);
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
                ..Default::default()
            },
        };
        match crate::master::start(config).await {
            Ok(m) => {
                println!("listening on {} (master of {})", m.addr(), m.test());
                terminated().await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(EXIT_INVALID)
            }
        }
    })
}

fn agent_command(args: AgentArgs, registry: Registry) -> ExitCode {
    let token = match token_of(args.token_file.as_ref()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
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
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(EXIT_INVALID)
                }
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
    }
}

fn report_command(args: ReportArgs) -> ExitCode {
    runtime().block_on(async move {
        match crate::report::stored::write_stored_report(
            &args.name,
            args.namespace.as_deref(),
            &args.out,
        )
        .await
        {
            Ok(paths) => {
                for p in paths {
                    println!("wrote {}", p.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(EXIT_FAILED)
            }
        }
    })
}
