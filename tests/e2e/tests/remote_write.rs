//! `spec.metrics.remoteWrite` against a real Prometheus (Debian's package, its remote-write
//! receiver on, on a loopback port): `murmur run` pushes the series of `/metrics`, which
//! Prometheus's HTTP API then returns with their labels, the last pushed value being the
//! report's own count; and a Prometheus stopped for a while mid-test and restarted on the
//! same port receives the samples of its outage afterwards, every sampled batch once.
//!
//! The real `murmur` binary against its bundled demo target; the load is two users with a
//! think time for a bounded duration.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use murmuration_e2e::binaries::project_binary;
use murmuration_e2e::prometheus::Prometheus;
use murmuration_e2e::util::{poll_until, scaled, tail_file};
use murmuration_e2e::Result;
use serde_json::Value;

fn manifest(name: &str, prometheus: &str, duration: &str) -> String {
    format!(
        r#"apiVersion: murmuration.dev/v1alpha1
kind: LoadTest
metadata: {{name: {name}}}
spec:
  users: 2
  duration: {duration}
  scenario:
    http:
      baseUrl: "{{{{vars.target}}}}"
      steps:
        - request: {{name: home, path: /}}
        - think: {{min: 50ms, max: 50ms}}
  metrics:
    remoteWrite:
      url: http://{prometheus}/api/v1/write
      bearerTokenSecret: {{name: prom-writer, key: token}}
      interval: 1s
"#
    )
}

/// `murmur run` of `manifest` in `dir` (its stderr in `dir/murmur.log`), token from a file.
fn start_murmur(dir: &Path, manifest: &str, extra: &[&str], namespace: &str) -> Result<Child> {
    let murmur = project_binary("murmuration-agent", "murmur")?;
    let file = dir.join("test.yaml");
    std::fs::write(&file, manifest).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "remote-write-token\n").unwrap();
    let log = std::fs::File::create(dir.join("murmur.log")).unwrap();
    let child = Command::new(murmur)
        .arg("run")
        .arg(&file)
        .args(["--demo-server", "http", "--plain", "--out"])
        .arg(dir)
        .arg("--remote-write-token-file")
        .arg(&token)
        .args(extra)
        .args(["--log", "murmuration_agent::master::remote_write=info"])
        .env("POD_NAMESPACE", namespace)
        .env_remove("MURMUR_REMOTE_WRITE_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Ok(child)
}

/// Waits for murmur to exit (within `limit`); its exit code.
async fn wait_exit(child: &mut Child, dir: &Path, limit: Duration) -> Result<i32> {
    poll_until(
        "murmur run exits",
        scaled(limit),
        Duration::from_millis(200),
        &[dir.join("murmur.log")],
        || {
            let r = child.try_wait().unwrap().map(|s| s.code().unwrap_or(-1));
            async move { r }
        },
    )
    .await
}

/// The requests of step `home` in the written report.
fn report_requests(dir: &Path) -> u64 {
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "home")
        .and_then(|s| s["requests"].as_u64())
        .unwrap()
}

/// Every sample of `selector` in the last 10 minutes: (ms since the epoch, value).
fn samples(prom: &Prometheus, selector: &str) -> Vec<(i64, f64)> {
    let result = prom.query(&format!("{selector}[10m]")).unwrap_or_default();
    assert!(result.len() <= 1, "one series expected: {result:?}");
    result
        .first()
        .map(|s| {
            s["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| {
                    (
                        (v[0].as_f64().unwrap() * 1000.0).round() as i64,
                        v[1].as_str().unwrap().parse().unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn log_of(dir: &Path) -> String {
    tail_file(&dir.join("murmur.log"), 40).unwrap_or_default()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_distributed_run_pushes_its_series_with_their_labels() -> Result<()> {
    let prom = Prometheus::start(&[]).await?;
    let dir = tempfile::tempdir().unwrap();
    let text = manifest("rw-agents", prom.addr(), "4s");
    let mut child = start_murmur(dir.path(), &text, &["--agents", "1"], "team-a")?;
    let code = wait_exit(&mut child, dir.path(), Duration::from_secs(60)).await?;
    assert_eq!(code, 0, "{}", log_of(dir.path()));
    // The test's request counter, with its labels, and its latency histogram.
    let labels = r#"test="rw-agents",namespace="team-a",step="home""#;
    let counter = prom
        .query(&format!("murmuration_requests_total{{{labels}}}"))
        .unwrap_or_default();
    assert_eq!(counter.len(), 1, "{counter:?}\n{}", prom.log());
    let buckets = prom
        .query(&format!(
            r#"murmuration_request_duration_seconds_bucket{{{labels},le="+Inf"}}"#
        ))
        .unwrap_or_default();
    assert_eq!(buckets.len(), 1, "{buckets:?}");
    let p99 = prom
        .query(&format!(
            "histogram_quantile(0.99, sum by (le) (murmuration_request_duration_seconds_bucket{{{labels}}}))"
        ))
        .unwrap_or_default();
    assert_eq!(p99.len(), 1, "{p99:?}");
    // The final flush: the last value pushed is the report's count.
    let pushed = samples(&prom, &format!("murmuration_requests_total{{{labels}}}"));
    let last = pushed.last().map(|s| s.1).unwrap_or(-1.0);
    let reported = report_requests(dir.path());
    assert!(reported > 0);
    assert_eq!(last, reported as f64, "{pushed:?}");
    eprintln!(
        "remote-write: {} samples of the request counter, last {last} = the report's",
        pushed.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_taken_while_prometheus_is_down_arrive_once_it_is_back() -> Result<()> {
    let mut prom = Prometheus::start(&[]).await?;
    let dir = tempfile::tempdir().unwrap();
    let text = manifest("rw-outage", prom.addr(), "16s");
    let mut child = start_murmur(dir.path(), &text, &[], "")?;
    let series = r#"murmuration_requests_total{test="rw-outage",step="home"}"#;
    poll_until(
        "the first pushed samples",
        scaled(Duration::from_secs(30)),
        Duration::from_millis(200),
        &[dir.path().join("murmur.log")],
        || async { (!samples(&prom, series).is_empty()).then_some(()) },
    )
    .await?;
    // The outage: Prometheus stopped (its storage and port kept), then started again. Its
    // length is the scenario, not a wait for something to happen.
    prom.stop();
    let down = now_ms();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let up = now_ms();
    prom.restart().await?;
    let code = wait_exit(&mut child, dir.path(), Duration::from_secs(60)).await?;
    let log = log_of(dir.path());
    assert_eq!(code, 0, "{log}");
    assert!(
        log.contains("remote-write fails"),
        "the outage is told: {log}"
    );
    assert!(log.contains("remote-write flushed"), "{log}");
    let delivered: usize = log
        .split("delivered=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no delivered count: {log}"));
    let pushed = samples(&prom, series);
    // Every batch delivered is one sample of the counter: none lost, none twice.
    assert_eq!(pushed.len(), delivered, "{pushed:?}\n{log}");
    // Some were taken while Prometheus was down, and arrived after it came back.
    let during = pushed.iter().filter(|(t, _)| *t > down && *t < up).count();
    assert!(during >= 1, "none sampled in {down}..{up}: {pushed:?}");
    // A counter never goes back, and its last value is the report's.
    assert!(pushed.windows(2).all(|w| w[0].1 <= w[1].1), "{pushed:?}");
    assert_eq!(
        pushed.last().map(|s| s.1),
        Some(report_requests(dir.path()) as f64)
    );
    eprintln!(
        "remote-write: {} samples, {during} of them taken during a {} ms outage",
        pushed.len(),
        up - down
    );
    Ok(())
}
