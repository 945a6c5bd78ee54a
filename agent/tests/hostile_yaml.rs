//! Hostile manifests are refused at once, with the limit named: `murmur run` on a file of
//! deeply nested flow collections, an alias bomb ("billion laughs") and a 60 MB scalar
//! exits 2, under a 2 GiB address-space limit, instead of spinning or eating memory.
//!
//! The wall time asserted is generous (a loaded machine must pass); the figures printed
//! (`--nocapture`) are what the README quotes.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MURMUR: &str = env!("CARGO_BIN_EXE_murmur");

/// The address space `murmur` gets: 2 GiB.
const ADDRESS_SPACE: u64 = 2 * 1024 * 1024 * 1024;

/// Runs `murmur run FILE` under the address-space limit: exit code, stderr, wall time.
fn run_limited(file: &std::path::Path) -> (Option<i32>, String, Duration) {
    let mut cmd = Command::new(MURMUR);
    cmd.args(["run", file.to_str().unwrap(), "--plain"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: ADDRESS_SPACE as libc::rlim_t,
                rlim_max: ADDRESS_SPACE as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let started = Instant::now();
    let o = cmd.output().unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
        started.elapsed(),
    )
}

const HEAD: &str = "apiVersion: murmuration.dev/v1alpha1\nkind: LoadTest\nmetadata: {name: hostile}\nspec:\n  users: 1\n";

/// 400 KB of nested `[`: quadratic in serde_yaml (minutes at full CPU).
fn nested() -> String {
    format!("{HEAD}  vars: {{deep: {}}}\n", "[".repeat(400 * 1024))
}

/// Nine levels of ten aliases each: 10^9 strings once expanded.
fn billion_laughs() -> String {
    let mut s = format!("{HEAD}  vars:\n    a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
    for w in names.windows(2) {
        let (prev, next) = (w[0], w[1]);
        let refs = vec![format!("*{prev}"); 10].join(",");
        s.push_str(&format!("    {next}: &{next} [{refs}]\n"));
    }
    s
}

/// One 60 MB scalar.
fn huge_scalar() -> String {
    format!(
        "{HEAD}  vars: {{big: \"{}\"}}\n",
        "x".repeat(60 * 1024 * 1024)
    )
}

#[test]
fn hostile_manifests_are_refused_at_once_with_the_limit_named() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text, limit) in [
        ("nested", nested(), "limit: depth 64"),
        ("billion-laughs", billion_laughs(), "limit: alias expansion"),
        ("huge-scalar", huge_scalar(), "limit of 4 MiB"),
    ] {
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, &text).unwrap();
        let (code, stderr, took) = run_limited(&path);
        println!(
            "{name}: {} bytes refused in {} ms: {}",
            text.len(),
            took.as_millis(),
            stderr.trim()
        );
        assert_eq!(code, Some(2), "{name}: {stderr}");
        assert!(
            stderr.contains(limit),
            "{name}: expected {limit:?} in {stderr}"
        );
        assert!(
            stderr.len() < 2000,
            "{name}: one short message, not the input: {stderr}"
        );
        assert!(took < Duration::from_secs(10), "{name}: took {took:?}");
    }
}

#[test]
fn the_limits_leave_room_for_every_real_manifest() {
    // A large but honest manifest: 2,000 steps, well within the API server's size limit.
    let mut text = format!("{HEAD}  vars: {{t: \"http://127.0.0.1:1\"}}\n  scenario:\n    http:\n      baseUrl: \"{{{{vars.t}}}}\"\n      steps:\n");
    for i in 0..2000 {
        text.push_str(&format!(
            "        - request: {{name: s{i}, path: /{i}, headers: {{x-n: \"{i}\"}}}}\n"
        ));
    }
    let m = murmuration_model::parse_manifests("big.yaml", &text).unwrap();
    assert_eq!(m.test.spec.scenario.http.unwrap().steps.len(), 2000);
}
