//! `murmur` as a user runs it: the README's example end to end against the bundled demo
//! target, exit codes 0 / 1 / 2, the report files, Ctrl-C, and a custom `murmur` built
//! from `examples/custom_murmur.rs`.

#[path = "support/cargo_command.rs"]
mod cargo_command;
use cargo_command::cargo_command;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const MURMUR: &str = env!("CARGO_BIN_EXE_murmur");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn murmur(args: &[&str]) -> Output {
    Command::new(MURMUR)
        .args(args)
        .current_dir(repo())
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

/// The README's example (`manifests/examples/http.yaml`) written into `dir`, its latency
/// threshold (`p99 <= 250ms`, a figure of a quiet machine) raised to one any machine meets
/// while a build runs beside it: the test is about running the example end to end and
/// judging its thresholds, not about this machine's speed.
fn readme_example(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("manifests/examples/http.yaml")).unwrap();
    let threshold = "{metric: latency.p99, step: buy, max: 250ms}";
    assert!(
        text.contains(threshold),
        "the example's threshold moved:\n{text}"
    );
    let path = dir.join("http.yaml");
    std::fs::write(
        &path,
        text.replace(threshold, "{metric: latency.p99, step: buy, max: 60s}"),
    )
    .unwrap();
    path
}

/// Every threshold of the report was judged and passed, the latency one among them.
fn assert_thresholds_passed(r: &serde_json::Value) {
    let thresholds = r["thresholds"]
        .as_array()
        .expect("thresholds in the report");
    assert!(
        thresholds.iter().any(|t| t["metric"] == "latency.p99"),
        "{thresholds:?}"
    );
    assert!(
        thresholds.iter().all(|t| t["passed"] == true),
        "{thresholds:?}"
    );
}

fn report(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap()
}

#[test]
fn the_readme_example_runs_end_to_end_against_the_demo_server() {
    let out = tempfile::tempdir().unwrap();
    let example = readme_example(out.path());
    let o = murmur(&[
        "run",
        example.to_str().unwrap(),
        "--demo-server",
        "http",
        "--duration",
        "3s",
        "--plain",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    for step in ["home", "buy", "order"] {
        assert!(
            stdout.contains(step),
            "the summary names step {step}:\n{stdout}"
        );
    }
    let r = report(out.path());
    assert_eq!(r["result"], "Passed");
    assert_thresholds_passed(&r);
    assert_eq!(r["endedBy"], "duration");
    assert!(
        r["total"]["requests"].as_u64().unwrap() > 100,
        "{}",
        r["total"]
    );
    assert_eq!(r["total"]["errors"], 0, "{}", r["total"]);
    assert_eq!(r["users"]["peak"], 50);
    let html = std::fs::read_to_string(out.path().join("report.html")).unwrap();
    assert!(html.contains("<svg"), "the HTML report has plots");
}

#[test]
fn the_readme_example_runs_on_a_master_and_two_agent_processes() {
    let out = tempfile::tempdir().unwrap();
    let example = readme_example(out.path());
    let o = murmur(&[
        "run",
        example.to_str().unwrap(),
        "--demo-server",
        "http",
        "--agents",
        "2",
        "--duration",
        "3s",
        "--plain",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let r = report(out.path());
    assert_eq!(r["result"], "Passed");
    assert_thresholds_passed(&r);
    assert_eq!(r["endedBy"], "duration");
    assert_eq!(r["users"]["peak"], 50, "{}", r["users"]);
    assert_eq!(r["total"]["errors"], 0, "{}", r["total"]);
    let steps: Vec<&str> = r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(steps.len(), 3, "{steps:?}");
    // Both agents worked, and the report keeps each one's series.
    let agents = r["agents"].as_object().unwrap();
    assert_eq!(agents.len(), 2, "{agents:?}");
    for (name, series) in agents {
        let requests: u64 = series
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["requests"].as_u64().unwrap())
            .sum();
        assert!(requests > 0, "agent {name} made no request");
    }
    // The totals are the merge of what the agents measured.
    let per_agent: u64 = agents
        .values()
        .flat_map(|s| s.as_array().unwrap().iter())
        .map(|p| p["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(per_agent, r["total"]["requests"].as_u64().unwrap());
}

#[test]
fn a_failed_threshold_exits_1_with_a_report() {
    let out = tempfile::tempdir().unwrap();
    let manifest = out.path().join("t.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: murmuration.dev/v1alpha1\nkind: LoadTest\nmetadata: {name: strict}\nspec:\n  users: 2\n  repeat: {times: 20}\n  scenario:\n    http:\n      baseUrl: \"{{vars.target}}\"\n      steps:\n        - request: {name: slow, path: /}\n  thresholds:\n    - {metric: latency.max, step: slow, max: 1us}\n",
    )
    .unwrap();
    let o = murmur(&[
        "run",
        manifest.to_str().unwrap(),
        "--demo-server",
        "http",
        "--plain",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let r = report(out.path());
    assert_eq!(r["result"], "Failed");
    assert_eq!(r["endedBy"], "completed");
    assert_eq!(r["thresholds"][0]["passed"], false);
    assert_eq!(r["total"]["requests"], 40);
}

#[test]
fn invalid_input_exits_2_naming_the_field_and_starts_nothing() {
    let out = tempfile::tempdir().unwrap();
    let manifest = out.path().join("bad.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: murmuration.dev/v1alpha1\nkind: LoadTest\nmetadata: {name: bad}\nspec:\n  users: 5\n  userRate: fast\n  scenario: {http: {baseUrl: 'http://127.0.0.1:1', steps: [{request: {path: /}}]}}\n",
    )
    .unwrap();
    let o = murmur(&[
        "run",
        manifest.to_str().unwrap(),
        "--out",
        out.path().to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bad.yaml: document 1 (LoadTest bad): spec.userRate: \"fast\" is not a rate"),
        "{err}"
    );
    assert!(!out.path().join("report.json").exists(), "nothing ran");
    let o = murmur(&["run", "no-such-file.yaml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no-such-file.yaml"),
        "{}",
        text(&o)
    );
    let o = murmur(&["run", manifest.to_str().unwrap(), "--duration", "soon"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn a_remote_write_secret_without_a_token_outside_a_cluster_exits_2_saying_how() {
    let out = tempfile::tempdir().unwrap();
    let manifest = out.path().join("push.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: murmuration.dev/v1alpha1\nkind: LoadTest\nmetadata: {name: push}\nspec:\n  users: 1\n  duration: 1s\n  scenario: {http: {baseUrl: 'http://127.0.0.1:1', steps: [{request: {path: /}}]}}\n  metrics: {remoteWrite: {url: 'http://127.0.0.1:1/api/v1/write', bearerTokenSecret: {name: prom-writer, key: token}}}\n",
    )
    .unwrap();
    for agents in ["0", "1"] {
        let o = Command::new(MURMUR)
            .args([
                "run",
                manifest.to_str().unwrap(),
                "--agents",
                agents,
                "--out",
            ])
            .arg(out.path())
            .env_remove("MURMUR_REMOTE_WRITE_TOKEN")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("spec.metrics.remoteWrite.bearerTokenSecret")
                && err.contains("--remote-write-token-file"),
            "{err}"
        );
        assert!(!out.path().join("report.json").exists(), "nothing ran");
    }
}

/// Waits until `path` exists (the test's own deadline, not a sleep).
fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn ctrl_c_stops_gracefully_and_still_writes_the_report() {
    let out = tempfile::tempdir().unwrap();
    let progress = out.path().join("progress.log");
    let child = Command::new(MURMUR)
        .args([
            "run",
            "manifests/examples/http.yaml",
            "--demo-server",
            "http",
            "--duration",
            "60s",
            "--plain",
            "--progress-every",
            "1",
            "--out",
            out.path().to_str().unwrap(),
        ])
        .current_dir(repo())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&progress).unwrap())
        .spawn()
        .unwrap();
    let mut child = Killed(child);
    // Progress lines mean users are running.
    wait_for("progress", Duration::from_secs(30), || {
        std::fs::read_to_string(&progress).is_ok_and(|s| s.lines().count() >= 2)
    });
    let pid = child.0.id() as i32;
    // SAFETY: sending a signal to our own child process.
    unsafe { libc_kill(pid, 2) };
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "murmur did not stop on Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        std::fs::read_to_string(&progress).unwrap()
    );
    let r = report(out.path());
    assert_eq!(r["endedBy"], "stopped");
    assert!(r["total"]["requests"].as_u64().unwrap() > 0);
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// The newest modification time of the files under `dir` (none: the epoch).
fn newest_under(dir: &Path) -> std::time::SystemTime {
    let mut newest = std::time::UNIX_EPOCH;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return newest;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let t = if path.is_dir() {
            newest_under(&path)
        } else {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH)
        };
        newest = newest.max(t);
    }
    newest
}

/// `examples/custom_murmur.rs` as the program a user would build, next to the `murmur`
/// under test. `cargo test --all-targets` builds examples only as test harnesses, so
/// `tests/run-all.sh` builds the examples as programs first (`cargo build --workspace
/// --examples`, which reuses everything the tests compile): the test runs that build.
/// Only when it is missing or older than the sources does the test ask cargo for it.
fn custom_murmur() -> PathBuf {
    let example = Path::new(MURMUR)
        .with_file_name("examples")
        .join(format!("custom_murmur{}", std::env::consts::EXE_SUFFIX));
    let built = std::fs::metadata(&example).and_then(|m| m.modified()).ok();
    let sources = ["agent/src", "agent/examples", "crds/src", "model/src"]
        .iter()
        .map(|d| newest_under(&repo().join(d)))
        .max()
        .unwrap();
    if built.is_some_and(|b| b >= sources) {
        return example;
    }
    build_custom_murmur()
}

/// Asks cargo for the example (cargo releases its build lock before it runs the tests).
/// `--workspace`, as the tests were built: the same features, so only the example itself
/// compiles (with `-p murmuration-agent` cargo would build every dependency again with the
/// features of that one package).
fn build_custom_murmur() -> PathBuf {
    let mut cmd = cargo_command();
    let out = cmd
        .args([
            "build",
            "--workspace",
            "--example",
            "custom_murmur",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(repo())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo build --example custom_murmur failed"
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "custom_murmur")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .expect("cargo names the custom_murmur executable it built")
}

#[test]
fn a_custom_murmur_runs_its_own_scenario() {
    let example = custom_murmur();
    let server = Command::new(MURMUR)
        .args([
            "demo-server",
            "http",
            "--listen",
            "127.0.0.1:0",
            "--threads",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut server = Killed(server);
    // The demo server prints the address it listens on.
    let addr = {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(server.0.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        line.split_whitespace()
            .find(|w| w.starts_with("127.0.0.1:"))
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_owned()
    };
    let out = tempfile::tempdir().unwrap();
    let manifest = out.path().join("custom.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: murmuration.dev/v1alpha1\nkind: LoadTest\nmetadata: {name: custom}\nspec:\n  users: 5\n  repeat: {times: 10}\n  vars: {target: unset}\n  scenario: {custom: {name: tcp-ping}}\n",
    )
    .unwrap();
    let o = Command::new(&example)
        .args([
            "run",
            manifest.to_str().unwrap(),
            "--set",
            &format!("target={addr}"),
            "--plain",
            "--out",
            out.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("tcp-ping: 50 pings answered"),
        "{}",
        text(&o)
    );
    let r = report(out.path());
    assert_eq!(r["scenario"], "custom:tcp-ping");
    assert_eq!(r["steps"][0]["name"], "ping");
    assert_eq!(r["steps"][0]["requests"], 50);
    assert_eq!(r["steps"][0]["errors"], 0);
    // The stock murmur does not know it.
    let o = murmur(&["run", manifest.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("spec.scenario.custom.name"),
        "{}",
        text(&o)
    );
}
