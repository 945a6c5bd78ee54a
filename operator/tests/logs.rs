//! The operator's log (a pod log: a file) carries no colour codes.

use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Without a cluster the operator logs its start, then gives up; stderr is a pipe here.
#[test]
fn logs_to_a_pipe_have_no_colour_codes() {
    let child = Command::new(env!("CARGO_BIN_EXE_murmur-operator"))
        .args(["--log", "info", "--listen", "127.0.0.1:0"])
        .env("KUBECONFIG", "/nonexistent/murmuration-kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("murmur-operator starts");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out.expect("its output"),
        Err(_) => {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            panic!("murmur-operator without a cluster did not exit within 60 s");
        }
    };
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(text.contains("murmur-operator starting"), "{text}");
    assert!(!out.stderr.contains(&0x1b), "a colour code in {text:?}");
}
