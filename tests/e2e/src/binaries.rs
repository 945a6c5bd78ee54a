//! Where the binaries come from: the Kubernetes control plane (built and cached by
//! `tests/e2e/scripts/control-plane-build.sh`) and the project's own binaries (the cargo
//! target dir of the running test).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

use crate::error::{Error, Result};

#[path = "../../../agent/tests/support/cargo_command.rs"]
mod cargo_command;
use cargo_command::cargo_command;

/// The workspace root (two levels above this crate's manifest).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| here.to_path_buf())
}

/// The build script's path.
pub fn build_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/control-plane-build.sh")
}

/// The directory holding `kube-apiserver`, `kube-controller-manager` (and Debian's
/// `kubectl` 1.20 when available).
///
/// `MURMURATION_K8S_BIN_DIR` overrides it; otherwise the build script is run (once per
/// process; it is a no-op taking a fraction of a second when the cache is warm, and it
/// serialises concurrent builds with a file lock). Its progress goes straight to stderr,
/// so a cold build shows what it is doing even under `cargo test`'s output capture.
pub fn k8s_bin_dir() -> Result<PathBuf> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Ok(d) = std::env::var("MURMURATION_K8S_BIN_DIR") {
            return Ok(PathBuf::from(d));
        }
        let script = build_script();
        let started = std::time::Instant::now();
        let out = Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} failed ({}); its output is above. Run it by hand to see more.",
                script.display(),
                out.status
            ));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let dir = stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| PathBuf::from(l.trim()))
            .ok_or_else(|| format!("{} printed no cache dir", script.display()))?;
        if started.elapsed().as_secs() > 10 {
            eprintln!(
                "murmuration-e2e: control plane binaries ready in {} after {:?}",
                dir.display(),
                started.elapsed()
            );
        }
        Ok(dir)
    })
    .clone()
    .map_err(Error::Setup)
}

/// The `kubectl` to use: Debian's 1.20 from the cache when present, else the one on PATH.
pub fn kubectl_path() -> PathBuf {
    if let Ok(dir) = k8s_bin_dir() {
        let p = dir.join("kubectl");
        if p.is_file() {
            return p;
        }
    }
    PathBuf::from("kubectl")
}

/// The cargo output dir of the running binary (`target/<profile>`), where the project's
/// binaries are. `MURMURATION_BIN_DIR` overrides it.
pub fn project_bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("MURMURATION_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir
        .file_name()
        .is_some_and(|n| n == "deps" || n == "examples")
    {
        dir.pop();
    }
    dir
}

/// The cargo profile of the running binary, from its directory name.
fn profile() -> String {
    project_bin_dir()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "debug".into())
}

/// Path of the project binary `bin` from package `package`, built if needed.
///
/// The binary in the test's target dir is used as is when it is newer than every source
/// file of its package and of the package's path dependencies (`cargo test --workspace`
/// builds the bins of packages that have integration tests). Otherwise `cargo build -p
/// <package> --bin <bin>` (same profile) runs first, once per process, so a test never runs
/// a stale binary. That build can take minutes when its feature set differs from the test
/// build's, so a test should call this before any deadline starts.
/// `MURMURATION_E2E_NO_CARGO_BUILD=1` uses what is there as is.
pub fn project_binary(package: &str, bin: &str) -> Result<PathBuf> {
    static BUILT: OnceLock<Mutex<HashMap<String, Result<PathBuf, String>>>> = OnceLock::new();
    let key = format!("{package}/{bin}");
    let map = BUILT.get_or_init(Default::default);
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(r) = map.get(&key) {
        return r.clone().map_err(Error::Setup);
    }
    let path = project_bin_dir().join(bin);
    let r = build_project_binary(package, bin, &path);
    map.insert(key, r.clone());
    r.map_err(Error::Setup)
}

/// Newest modification time of the sources of `package` and its path dependencies
/// (from `cargo metadata`), with the workspace's Cargo.toml and Cargo.lock.
fn newest_source(package: &str) -> Result<SystemTime, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(workspace_root())
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run cargo metadata: {e}"))?;
    if !out.status.success() {
        return Err(format!("cargo metadata failed ({})", out.status));
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("cargo metadata output: {e}"))?;
    let packages = meta["packages"].as_array().cloned().unwrap_or_default();
    let dir_of = |name: &str| -> Option<(PathBuf, Vec<PathBuf>)> {
        let p = packages.iter().find(|p| p["name"] == name)?;
        let dir = Path::new(p["manifest_path"].as_str()?)
            .parent()?
            .to_path_buf();
        let deps = p["dependencies"]
            .as_array()
            .map(|d| {
                d.iter()
                    .filter_map(|d| d["path"].as_str().map(PathBuf::from))
                    .collect()
            })
            .unwrap_or_default();
        Some((dir, deps))
    };
    let (dir, deps) =
        dir_of(package).ok_or_else(|| format!("package {package} is not in the workspace"))?;
    let mut dirs = vec![dir];
    dirs.extend(deps);
    let root = workspace_root();
    let mut newest = SystemTime::UNIX_EPOCH;
    for f in [root.join("Cargo.toml"), root.join("Cargo.lock")] {
        if let Ok(t) = std::fs::metadata(&f).and_then(|m| m.modified()) {
            newest = newest.max(t);
        }
    }
    let mut stack = dirs;
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            if name == "target" || name == ".git" {
                continue;
            }
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else if let Ok(t) = m.modified() {
                newest = newest.max(t);
            }
        }
    }
    Ok(newest)
}

fn build_project_binary(package: &str, bin: &str, path: &Path) -> Result<PathBuf, String> {
    if std::env::var("MURMURATION_E2E_NO_CARGO_BUILD").is_ok_and(|v| v == "1") {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(format!(
                "{} does not exist (and MURMURATION_E2E_NO_CARGO_BUILD=1)",
                path.display()
            ))
        };
    }
    let newest = newest_source(package)?;
    let built = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    if built.is_some_and(|b| b >= newest) {
        return Ok(path.to_path_buf());
    }
    eprintln!(
        "murmuration-e2e: building {bin} (package {package}): {}",
        if built.is_some() {
            "older than its sources"
        } else {
            "not built yet"
        }
    );
    let mut cmd = cargo_command();
    cmd.current_dir(workspace_root())
        .args(["build", "-p", package, "--bin", bin])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    match profile().as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    // The target dir must be the one the test runs from.
    if let Some(target) = project_bin_dir().parent() {
        cmd.env("CARGO_TARGET_DIR", target);
    }
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run cargo to build {bin}: {e}"))?;
    if !status.success() {
        return Err(format!(
            "cargo build -p {package} --bin {bin} failed ({status})"
        ));
    }
    if !path.is_file() {
        return Err(format!("{} missing after cargo build", path.display()));
    }
    Ok(path.to_path_buf())
}
