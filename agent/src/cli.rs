//! The `murmur` command line: `run` (a test on this machine), `demo-server` (the bundled
//! targets). [`main_with`] is the entry point for custom binaries that register their own
//! scenarios.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tokio::sync::mpsc;

use crate::engine::{run_test, Command, EngineOptions};
use crate::plan::load_plan_with_vars;
use crate::progress::{Progress, ProgressTarget};
use crate::report::Outcome;
use crate::scenario::Registry;

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
        let target = if !args.plain && std::io::stderr().is_terminal() {
            ProgressTarget::Terminal
        } else {
            ProgressTarget::Plain {
                every: std::time::Duration::from_secs(args.progress_every.max(1)),
            }
        };
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
        println!("{}", crate::report::summary::summary_table(&report));
        match crate::report::io::write_reports(&args.out, &report) {
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
