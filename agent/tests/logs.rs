//! Logs written to a pipe or a file (every pod's) carry no colour codes: `kubectl logs`
//! would show them as `[2m…[0m` garbage.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// An agent whose master is not there logs its retries; its stderr is a pipe here.
#[test]
fn logs_to_a_pipe_have_no_colour_codes() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_murmur"))
        // Port 1 on loopback: nothing listens, the connection is refused at once.
        .args([
            "--log",
            "info",
            "agent",
            "--master",
            "127.0.0.1:1",
            "--name",
            "t",
        ])
        .env("MURMUR_TOKEN", "token")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("murmur starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).split(b'\n') {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The first retry is logged within a second of the start; a loaded machine gets 60.
    let line = rx.recv_timeout(Duration::from_secs(60));
    let _ = child.kill();
    let _ = child.wait();
    let line = line.expect("a log line on stderr");
    let text = String::from_utf8_lossy(&line).into_owned();
    assert!(text.contains("WARN"), "not a log line: {text:?}");
    assert!(!line.contains(&0x1b), "a colour code in {text:?}");
}
