//! A real Prometheus server for the e2e tests (Debian's `prometheus` package, installed by
//! `scripts/prometheus-install.sh`): started on a free loopback port with a static scrape
//! configuration (the addresses the test kubelet gave the pods to scrape) and its own
//! storage in a temporary directory, killed when dropped. Queried through its HTTP API.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::binaries::workspace_root;
use crate::procs::{kill_child, register, spawn_guarded, Cleanup, CleanupGuard};
use crate::util::{free_port, http_get, poll_until, scaled, tail_file};
use crate::{Error, Result};

/// What to scrape: a job name and its `host:port` targets.
#[derive(Debug, Clone)]
pub struct ScrapeJob {
    /// The job's name (the `job` label).
    pub name: String,
    /// `host:port` of each target.
    pub targets: Vec<String>,
    /// Seconds between scrapes (Prometheus' minimum useful is 1).
    pub interval_s: u32,
}

/// A running Prometheus server.
pub struct Prometheus {
    /// The server, `None` while stopped.
    child: Option<(Child, CleanupGuard)>,
    bin: PathBuf,
    addr: String,
    dir: tempfile::TempDir,
}

/// The `prometheus` binary, installed if needed (idempotent).
pub fn prometheus_binary() -> Result<PathBuf> {
    let script = workspace_root().join("tests/e2e/scripts/prometheus-install.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| Error::Setup(format!("{}: {e}", script.display())))?;
    if !out.status.success() {
        return Err(Error::Setup(format!(
            "{} failed ({})",
            script.display(),
            out.status
        )));
    }
    Ok(PathBuf::from(
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    ))
}

impl Prometheus {
    /// Starts a server on 127.0.0.1 scraping `jobs`, with its remote-write receiver on
    /// (`/api/v1/write`), and waits until it is ready.
    pub async fn start(jobs: &[ScrapeJob]) -> Result<Prometheus> {
        let bin = prometheus_binary()?;
        let dir = tempfile::tempdir().map_err(|e| Error::Setup(format!("tempdir: {e}")))?;
        let mut config = String::from("global:\n  scrape_interval: 5s\nscrape_configs:\n");
        for j in jobs {
            config.push_str(&format!(
                "  - job_name: {:?}\n    scrape_interval: {}s\n    scrape_timeout: {}s\n    static_configs:\n      - targets: {}\n",
                j.name,
                j.interval_s,
                j.interval_s,
                serde_json::to_string(&j.targets).expect("strings serialise")
            ));
        }
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config)
            .map_err(|e| Error::Setup(format!("{}: {e}", config_file.display())))?;
        let port = free_port("127.0.0.1").map_err(|e| Error::Setup(format!("port: {e}")))?;
        let mut p = Prometheus {
            child: None,
            bin,
            addr: format!("127.0.0.1:{port}"),
            dir,
        };
        p.restart().await?;
        Ok(p)
    }

    /// Stops the server (SIGTERM, as an operator stopping it would), keeping its storage
    /// and its port for [`Prometheus::restart`]: what a pusher sees as an outage.
    pub fn stop(&mut self) {
        if let Some((mut child, _guard)) = self.child.take() {
            kill_child(&mut child, Duration::from_secs(10));
        }
    }

    /// Starts the server (again) on the same port and storage, and waits until it is
    /// ready.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop();
        let config_file = self.dir.path().join("prometheus.yml");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("prometheus.log"))
            .map_err(|e| Error::Setup(format!("log: {e}")))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={}", self.addr))
            .arg("--web.enable-remote-write-receiver")
            // Samples pushed late (a master's buffer after an outage) are still taken.
            .arg("--storage.tsdb.retention.time=1d")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| Error::Setup(e.to_string()))?)
            .stderr(log);
        let child =
            spawn_guarded(cmd).map_err(|e| Error::Setup(format!("{}: {e}", self.bin.display())))?;
        let guard = register(Cleanup::KillGroup(child.id()));
        self.child = Some((child, guard));
        let p = &*self;
        let ready = poll_until(
            "prometheus ready",
            scaled(Duration::from_secs(30)),
            Duration::from_millis(100),
            &[],
            || async {
                let r = http_get(&p.addr, "/-/ready", Duration::from_secs(2)).ok()?;
                (r.status == 200).then_some(())
            },
        )
        .await;
        if let Err(e) = ready {
            return Err(Error::Setup(format!("{e}\n{}", p.log())));
        }
        Ok(())
    }

    /// `host:port` of its HTTP API.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The end of its log, for failure messages.
    pub fn log(&self) -> String {
        tail_file(&self.dir.path().join("prometheus.log"), 30).unwrap_or_default()
    }

    /// An instant query's result vector (`data.result`), or `None` when the query fails.
    pub fn query(&self, expr: &str) -> Option<Vec<Value>> {
        let path = format!("/api/v1/query?query={}", url_encode(expr));
        let r = http_get(&self.addr, &path, Duration::from_secs(5)).ok()?;
        let v: Value = serde_json::from_str(&r.body).ok()?;
        if v["status"] != "success" {
            return None;
        }
        v["data"]["result"].as_array().cloned()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some((mut child, _guard)) = self.child.take() {
            kill_child(&mut child, Duration::from_secs(2));
        }
    }
}

/// Percent-encoding of a query parameter's value.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
