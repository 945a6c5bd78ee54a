//! Run over run with real processes on loopback: `murmur run --baseline OLD.json` against
//! `murmur demo-server http --delay`. A relative threshold (`maxIncrease`) fails a run
//! whose p99 grew tenfold against its baseline, passes one against the same delay, and is
//! skipped (not failed) without a baseline; the iteration histogram counts every
//! iteration, on one process and on a master with two agents.
//!
//! The delays are far apart so that the verdicts hold on a loaded machine: the failing
//! case compares 200 ms answers with 20 ms ones (it would pass only if the 20 ms run's p99
//! had reached 100 ms), the passing one 200 ms with 200 ms under `maxIncrease: 100%` (it
//! would fail only if this run's p99 doubled).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

const MURMUR: &str = env!("CARGO_BIN_EXE_murmur");

/// A process killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `murmur demo-server http` on a free loopback port, answering after `delay`; returns
/// the process and its URL.
fn demo_server(delay: &str) -> (Killed, String) {
    let child = Command::new(MURMUR)
        .args([
            "demo-server",
            "http",
            "--listen",
            "127.0.0.1:0",
            "--delay",
            delay,
            "--threads",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut server = Killed(child);
    // The demo server prints the address it listens on.
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.0.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr = line
        .split_whitespace()
        .find(|w| w.starts_with("127.0.0.1:"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();
    (server, format!("http://{addr}"))
}

/// A test of 4 users, 10 iterations each, one request `get` per iteration, with a
/// relative threshold on its p99.
fn manifest(dir: &Path) -> PathBuf {
    let path = dir.join("t.yaml");
    std::fs::write(
        &path,
        r#"apiVersion: murmuration.dev/v1alpha1
kind: LoadTest
metadata: {name: shop}
spec:
  users: 4
  repeat: {times: 10}
  vars: {target: unset}
  scenario:
    http:
      baseUrl: "{{vars.target}}"
      steps:
        - request: {name: get, method: GET, path: /, expect: {status: 200}}
  thresholds:
    - {metric: latency.p99, step: get, maxIncrease: 100%}
    - {metric: errors.ratio, max: "0"}
"#,
    )
    .unwrap();
    path
}

/// `murmur run` of the manifest against `target`, writing into `out`.
fn run(dir: &Path, out: &Path, target: &str, baseline: Option<&Path>) -> Output {
    run_with(dir, out, target, baseline, &[])
}

/// [`run`] with more arguments.
fn run_with(
    dir: &Path,
    out: &Path,
    target: &str,
    baseline: Option<&Path>,
    more: &[&str],
) -> Output {
    let manifest = manifest(dir);
    let mut args = vec![
        "run".to_owned(),
        manifest.display().to_string(),
        "--set".into(),
        format!("target={target}"),
        "--plain".into(),
        "--workers".into(),
        "1".into(),
        "--out".into(),
        out.display().to_string(),
        "--junit".into(),
        out.join("junit.xml").display().to_string(),
    ];
    if let Some(b) = baseline {
        args.push("--baseline".into());
        args.push(b.display().to_string());
    }
    args.extend(more.iter().map(|a| a.to_string()));
    Command::new(MURMUR)
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn report(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap()
}

#[test]
fn a_relative_threshold_fails_a_run_whose_p99_grew_and_passes_one_that_did_not() {
    let dir = tempfile::tempdir().unwrap();
    let (_fast, fast) = demo_server("20ms");
    let (_slow, slow) = demo_server("200ms");
    let [first, grew, same] = ["first", "grew", "same"].map(|n| dir.path().join(n));

    // No baseline: the relative threshold is skipped, the run passes.
    let o = run(dir.path(), &first, &fast, None);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let r = report(&first);
    let t = &r["thresholds"][0];
    assert_eq!(t["skipped"], "no baseline", "{t}");
    assert_eq!(t["passed"], true);
    assert!(r.get("baseline").is_none());
    // Every iteration is in the iteration histogram, and sampled for the plot.
    assert_eq!(r["users"]["iterations"], 40);
    assert_eq!(r["iterations"]["count"], 40, "{}", r["iterations"]);
    assert!(r["iterations"]["durationMs"]["p50"].as_f64().unwrap() >= 20.0);
    let samples = r["iterations"]["samples"].as_array().unwrap();
    assert!(!samples.is_empty() && samples.len() <= 40, "{samples:?}");
    let junit = std::fs::read_to_string(first.join("junit.xml")).unwrap();
    assert!(
        junit.contains("<skipped message=\"no baseline\"/>"),
        "{junit}"
    );
    let summary = String::from_utf8_lossy(&o.stdout);
    assert!(summary.contains("– latency.p99 of get"), "{summary}");
    assert!(
        summary.contains("iteration (one run of the scenario"),
        "{summary}"
    );
    let html = std::fs::read_to_string(first.join("report.html")).unwrap();
    assert!(html.contains("Iteration duration against its start"));

    // Tenfold the delay against the first run: the threshold fails the run (exit 1), in
    // the report, the summary and JUnit.
    let o = run(dir.path(), &grew, &slow, Some(&first.join("report.json")));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let r = report(&grew);
    assert_eq!(r["result"], "Failed");
    let t = &r["thresholds"][0];
    assert_eq!(t["passed"], false, "{t}");
    assert!(t.get("skipped").is_none(), "{t}");
    let step = &r["baseline"]["steps"][0];
    assert_eq!(step["name"], "get");
    assert!(step["p99Ms"]["percent"].as_f64().unwrap() > 100.0, "{step}");
    let summary = String::from_utf8_lossy(&o.stdout);
    assert!(summary.contains("against baseline shop"), "{summary}");
    assert!(summary.contains("✗ latency.p99 of get"), "{summary}");
    let junit = std::fs::read_to_string(grew.join("junit.xml")).unwrap();
    assert!(junit.contains("failures=\"1\""), "{junit}");
    let html = std::fs::read_to_string(grew.join("report.html")).unwrap();
    assert!(html.contains("Against the baseline"));

    // The same delay against that run: passes.
    let o = run(dir.path(), &same, &slow, Some(&grew.join("report.json")));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let r = report(&same);
    assert_eq!(r["thresholds"][0]["passed"], true, "{}", r["thresholds"]);
    assert!(r["thresholds"][0].get("skipped").is_none());
    assert_eq!(
        r["baseline"]["steps"][0]["rate"]["before"],
        grew_rate(&grew)
    );

    // On a master and two agent processes (what the operator runs): the agents' iteration
    // histograms merge exactly, and the master judges against the baseline it was given.
    let spread = dir.path().join("spread");
    let o = run_with(
        dir.path(),
        &spread,
        &slow,
        Some(&grew.join("report.json")),
        &["--agents", "2"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let r = report(&spread);
    assert_eq!(r["users"]["iterations"], 40);
    assert_eq!(r["iterations"]["count"], 40, "{}", r["iterations"]);
    assert_eq!(r["thresholds"][0]["passed"], true, "{}", r["thresholds"]);
    assert!(r["thresholds"][0].get("skipped").is_none());
    assert_eq!(r["baseline"]["steps"][0]["name"], "get");
}

fn grew_rate(dir: &Path) -> serde_json::Value {
    report(dir)["steps"][0]["rate"].clone()
}

#[test]
fn an_unreadable_baseline_exits_2_before_the_test_starts() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("old.json");
    std::fs::write(&bad, "{not a report").unwrap();
    let o = run(dir.path(), dir.path(), "http://127.0.0.1:9", Some(&bad));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--baseline") && err.contains("not a Murmuration report"),
        "{err}"
    );
    assert!(!dir.path().join("report.json").exists());
}
