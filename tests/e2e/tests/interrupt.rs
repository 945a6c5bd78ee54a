//! An interrupted or killed test leaves nothing behind: a child process runs a control
//! plane, a test kubelet and a pod behind a Service (`murmur-e2e-cluster`), and is stopped
//! with SIGINT (as by Ctrl-C) and with SIGKILL.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use murmuration_e2e::control_plane::remove_stale_runs;
use murmuration_e2e::hosts::hosts_file;
use murmuration_e2e::procs::pid_alive;

/// Pids of `root`'s descendants (by walking /proc's parent links).
fn descendants(root: u32) -> Vec<u32> {
    let mut parent = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let ppid: u32 = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        parent.push((pid, ppid));
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(parent.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out.remove(0);
    out
}

fn hosts_has_block_of(pid: u32) -> bool {
    std::fs::read_to_string(hosts_file())
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("# BEGIN murmuration-e2e") && l.ends_with(&format!("pid={pid}")))
}

fn run_dirs_of(pid: u32) -> Vec<PathBuf> {
    let prefix = format!("murmuration-e2e-{pid}-");
    [std::env::temp_dir(), PathBuf::from("/dev/shm")]
        .iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts `murmur-e2e-cluster`, puts a pod behind a Service on it and waits until the pod
/// serves and its name is in the hosts file. Returns the child and the pod process's pid.
fn start_cluster_with_pod() -> (Child, Vec<u32>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_murmur-e2e-cluster"))
        .env("MURMURATION_E2E_QUIET", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start murmur-e2e-cluster");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut kubeconfig = None;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("murmur-e2e-cluster did not come up in time");
        if let Some(p) = line.strip_prefix("admin kubeconfig:") {
            kubeconfig = Some(p.trim().to_string());
        }
        if line.starts_with("Ctrl-C to stop") {
            break;
        }
    }
    let kubeconfig = kubeconfig.expect("admin kubeconfig line");
    let manifest = r#"
apiVersion: v1
kind: Pod
metadata: {name: victim, labels: {app: victim}}
spec:
  automountServiceAccountToken: false
  containers:
    - name: c
      image: murmuration/test-echo
      args: ["--listen", "$(POD_IP):8080"]
      env: [{name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}]
---
apiVersion: v1
kind: Service
metadata: {name: victim}
spec:
  selector: {app: victim}
  ports: [{port: 8080}]
"#;
    let mut kubectl = Command::new(murmuration_e2e::binaries::kubectl_path())
        .args(["--kubeconfig", &kubeconfig, "apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    kubectl
        .stdin
        .take()
        .unwrap()
        .write_all(manifest.as_bytes())
        .unwrap();
    assert!(kubectl.wait().unwrap().success(), "kubectl apply failed");
    let pid = child.id();
    wait_for(
        "the pod's name in the hosts file",
        Duration::from_secs(30),
        || {
            hosts_has_block_of(pid)
                && std::fs::read_to_string(hosts_file())
                    .unwrap_or_default()
                    .lines()
                    .any(|l| l.contains("victim.default.svc") && !l.starts_with("127.255."))
        },
    );
    let procs = descendants(pid);
    // etcd, kube-apiserver, kube-controller-manager and the pod.
    assert!(
        procs.len() >= 4,
        "expected at least 4 child processes, found {procs:?}"
    );
    (child, procs)
}

#[test]
fn interrupted_and_killed_runs_leave_nothing_behind() {
    // Ctrl-C: the run cleans up itself.
    let (mut child, procs) = start_cluster_with_pod();
    let pid = child.id();
    // SAFETY: plain syscall on our own child.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "murmur-e2e-cluster did not exit on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_for(
        "the processes of the interrupted run to end",
        Duration::from_secs(10),
        || procs.iter().all(|p| !pid_alive(*p)),
    );
    assert!(!hosts_has_block_of(pid), "hosts block left after SIGINT");
    assert_eq!(
        run_dirs_of(pid),
        Vec::<PathBuf>::new(),
        "temp dirs left after SIGINT"
    );

    // SIGKILL: the kernel kills the children; the next run removes the rest.
    let (mut child, procs) = start_cluster_with_pod();
    let pid = child.id();
    child.kill().unwrap();
    child.wait().unwrap();
    wait_for(
        "the processes of the killed run to end",
        Duration::from_secs(10),
        || procs.iter().all(|p| !pid_alive(*p)),
    );
    remove_stale_runs();
    assert!(!hosts_has_block_of(pid), "stale hosts block not removed");
    assert_eq!(
        run_dirs_of(pid),
        Vec::<PathBuf>::new(),
        "stale temp dirs not removed"
    );
}
