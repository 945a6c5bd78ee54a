//! A `murmur` binary with a custom scenario built in: `scenario: {custom: {name: tcp-ping}}`.
//!
//! The scenario opens one TCP connection per user to `config.address` (or `vars.target`),
//! and each iteration sends a line and waits for any answer, measuring the round trip as
//! step `ping`. It shows the whole model: `init` once (reads config, interns the step),
//! `start` per user iteration (user id, per-user state kept between iterations, metrics),
//! `terminate` at the end.
//!
//! Build and run it like the stock `murmur`:
//!
//! ```text
//! cargo run --example custom_murmur -- run my-test.yaml
//! ```

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};

use murmuration_agent::metrics::{ErrorKind, StepId};
use murmuration_agent::registry::Registry;
use murmuration_agent::scenario::{InitContext, Scenario, ScenarioError, User};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Users that ping a line-based TCP server.
struct TcpPing;

/// What `init` prepares for every user.
struct PingState {
    address: String,
    step: StepId,
    pings: AtomicU64,
}

/// What one user keeps between iterations: its connection.
type Conn = BufReader<TcpStream>;

impl Scenario for TcpPing {
    type State = PingState;

    async fn init(&self, ctx: &InitContext) -> Result<PingState, ScenarioError> {
        let address = ctx
            .config
            .get("address")
            .and_then(|a| a.as_str())
            .map(str::to_owned)
            .or_else(|| {
                ctx.var("target")
                    .and_then(|v| v.as_str().map(str::to_owned))
            })
            .ok_or_else(|| {
                ScenarioError::Config(
                    "tcp-ping needs config.address or vars.target (host:port)".into(),
                )
            })?;
        Ok(PingState {
            address,
            step: ctx.step("ping"),
            pings: AtomicU64::new(0),
        })
    }

    async fn start(&self, user: &mut User, state: &PingState) -> Result<(), ScenarioError> {
        let started = user.now();
        let mut conn = match user.take_extension::<Conn>() {
            Some(c) => c,
            None => match TcpStream::connect(&state.address).await {
                Ok(s) => Box::new(BufReader::new(s)),
                Err(e) => {
                    user.record(state.step, started, Some(ErrorKind::Connect));
                    return Err(ScenarioError::User {
                        kind: ErrorKind::Connect,
                        message: e.to_string(),
                    });
                }
            },
        };
        let line = format!("GET /?user={} HTTP/1.1\r\nHost: x\r\n\r\n", user.id());
        let mut answer = String::new();
        let ok = conn.get_mut().write_all(line.as_bytes()).await.is_ok()
            && matches!(conn.read_line(&mut answer).await, Ok(n) if n > 0);
        if ok {
            // Read the rest of the HTTP answer's head and its body length.
            let mut len = 0usize;
            loop {
                let mut h = String::new();
                if conn.read_line(&mut h).await.unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; len];
            let _ = tokio::io::AsyncReadExt::read_exact(&mut conn, &mut body).await;
            user.record(state.step, started, None);
            state.pings.fetch_add(1, Ordering::Relaxed);
            user.put_extension(conn);
            Ok(())
        } else {
            user.record(state.step, started, Some(ErrorKind::Protocol));
            Err(ScenarioError::User {
                kind: ErrorKind::Protocol,
                message: "no answer".into(),
            })
        }
    }

    async fn terminate(&self, state: &PingState) {
        eprintln!(
            "tcp-ping: {} pings answered",
            state.pings.load(Ordering::Relaxed)
        );
    }
}

fn main() -> ExitCode {
    murmuration_agent::cli::main_with(Registry::new().register("tcp-ping", TcpPing))
}
