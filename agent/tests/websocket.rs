//! The `websocket` scenario end to end on loopback: a chat journey (connect, pair up, join
//! a room, hear the peer, an echo round trip, close) for 1,000 users, in one process and
//! on a master with two agent processes, against `murmur demo-server websocket` and
//! against a server nobody here wrote (the Python `websockets` package, plain and TLS);
//! a server that closes mid-journey; bad input refused with the field named.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use murmuration_agent::demo::websocket::WebSocketDemo;
use murmuration_agent::engine::{run_test, EngineOptions};
use murmuration_agent::plan::plan_from_text;
use murmuration_agent::registry::Registry;
use murmuration_agent::report::Report;
use murmuration_agent::scenario::Vars;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

const MURMUR: &str = env!("CARGO_BIN_EXE_murmur");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The chat journey of the example, with `users` users repeating it `times` times.
fn journey(users: u64, times: u64, insecure: bool) -> String {
    let example = std::fs::read_to_string(repo().join("manifests/examples/websocket.yaml"))
        .expect("the example exists");
    let mut text = example
        .replace("users: 200", &format!("users: {users}"))
        .replace("userRate: 100/s", "userRate: 1000/s")
        .replace("repeat: {times: 2}", &format!("repeat: {{times: {times}}}"));
    if insecure {
        text = text.replace(
            "timeout: 10s\n      steps:",
            "timeout: 10s\n      insecureSkipVerify: true\n      steps:",
        );
    }
    text
}

fn step<'a>(r: &'a Report, name: &str) -> &'a murmuration_agent::report::StepSummary {
    r.steps
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no step {name} in {:?}", r.steps))
}

async fn run_in_process(text: &str, target: &str) -> Report {
    let registry = Registry::new();
    let mut vars = Vars::new();
    vars.insert("target".into(), target.into());
    let plan = plan_from_text("journey.yaml", text, &registry, &vars).unwrap();
    let (_tx, rx) = mpsc::unbounded_channel();
    let opts = EngineOptions {
        workers: 2,
        stop_grace: Duration::from_secs(5),
        tick: Duration::from_millis(500),
    };
    tokio::time::timeout(
        Duration::from_secs(120),
        run_test(plan, &registry, opts, rx, |_| {}),
    )
    .await
    .expect("every user ends by itself")
    .unwrap()
}

/// What every chat journey of `users` users, `times` times each, must show.
fn assert_journey(r: &Report, users: u64, times: u64) {
    let n = users * times;
    assert_eq!(r.ended_by, "completed");
    assert_eq!(r.total.errors, 0, "{:#?}", r.steps);
    for name in [
        "connect", "join", "joined", "say", "heard", "echo", "echoed", "close",
    ] {
        assert_eq!(step(r, name).requests, n, "step {name}: {:#?}", r.steps);
    }
    assert_eq!(r.users.finished, users);
    assert_eq!(r.users.iterations, n);
    // The first of each pair to join hears `members: 1` before `members: 2`.
    assert!(r.users.unmatched >= n / 2, "{:?}", r.users);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_users_chat_through_the_demo_server() {
    let server = WebSocketDemo::start("127.0.0.1:0".parse().unwrap(), 1).unwrap();
    let target = format!("ws://{}", server.local_addr());
    let r = run_in_process(&journey(1000, 1, false), &target).await;
    assert_journey(&r, 1000, 1);
}

/// The Python server, killed when dropped.
struct PyServer {
    child: Child,
    addr: String,
}

impl Drop for PyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python_server(args: &[&str]) -> PyServer {
    let missing = "the Python `websockets` package is needed: run `bash tests/scripts/python-websockets.sh` (tests/run-all.sh does)";
    let check = Command::new("python3")
        .args(["-c", "import websockets"])
        .output()
        .unwrap_or_else(|e| panic!("python3 does not run ({e}); {missing}"));
    assert!(
        check.status.success(),
        "{missing}\n{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let mut child = Command::new("python3")
        .arg(repo().join("agent/tests/support/ws_server.py"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the Python server says where it listens");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    PyServer { child, addr }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_users_chat_through_a_python_websockets_server() {
    let server = python_server(&[]);
    let r = run_in_process(&journey(1000, 1, false), &format!("ws://{}", server.addr)).await;
    assert_journey(&r, 1000, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_chat_over_tls_with_a_self_signed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let (crt, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&crt, cert.cert.pem()).unwrap();
    std::fs::write(&key, cert.signing_key.serialize_pem()).unwrap();
    let server = python_server(&[
        "--cert",
        crt.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    let target = format!("wss://{}", server.addr);
    let r = run_in_process(&journey(200, 2, true), &target).await;
    assert_journey(&r, 200, 2);
    // Without insecureSkipVerify the certificate is refused, as it should be.
    let strict = journey(4, 1, false).replace("users: 4", "users: 4\n  duration: 3s");
    let r = run_in_process(&strict, &target).await;
    let connect = step(&r, "connect");
    assert!(connect.requests > 0);
    assert_eq!(
        connect.errors_by_kind.get("tls"),
        Some(&connect.requests),
        "{connect:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_closes_mid_journey_gives_closed_errors_and_nothing_hangs() {
    // The server closes each connection when its second message comes (the `say`).
    let server = python_server(&["--close-after", "2"]);
    let text = journey(50, 2, false);
    let r = run_in_process(&text, &format!("ws://{}", server.addr)).await;
    assert_eq!(r.ended_by, "completed");
    let closed: u64 = r
        .steps
        .iter()
        .map(|s| s.errors_by_kind.get("closed").copied().unwrap_or(0))
        .sum();
    assert!(
        closed >= 100,
        "every iteration ends on a closed connection: {:#?}",
        r.steps
    );
    // The iteration ends there: nobody hears, echoes or closes.
    for name in ["echo", "echoed", "close"] {
        assert_eq!(step(&r, name).requests, 0, "{name} ran: {:#?}", r.steps);
    }
    assert_eq!(
        step(&r, "connect").requests,
        100,
        "a new connection per iteration"
    );
    assert_eq!(r.users.iterations, 100);
}

/// An echo journey of one message, templated in `send`.
fn one_message(users: u64, send: &str, receive: &str) -> String {
    format!(
        r#"apiVersion: murmuration.dev/v1alpha1
kind: LoadTest
metadata: {{name: ws-one}}
spec:
  users: {users}
  userRate: 1000/s
  repeat: {{times: 1}}
  scenario:
    websocket:
      timeout: 10s
      steps:
        - connect: {{url: "{{{{vars.target}}}}/echo"}}
        - send: {send}
        - receive: {receive}
        - close: {{}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_much_larger_than_the_read_buffer_arrives_whole() {
    // 200 KB, where a connection reads 512 bytes at a time: the receive matches on the
    // JSON field after the large one, so only a whole message can match.
    let server = WebSocketDemo::start("127.0.0.1:0".parse().unwrap(), 1).unwrap();
    let big = "x".repeat(200_000);
    let text = one_message(
        20,
        &format!(r#"{{name: big, json: {{big: "{big}", tail: "end {{{{user.id}}}}"}}}}"#),
        r#"{name: back, after: big, json: {path: $.tail, equals: "end {{user.id}}"}, extract: {b: $.big}}"#,
    );
    let r = run_in_process(&text, &format!("ws://{}", server.local_addr())).await;
    assert_eq!(r.total.errors, 0, "{:#?}", r.steps);
    assert_eq!(step(&r, "back").requests, 20);
    assert_eq!(r.users.unmatched, 0);
}

/// A WebSocket server written here byte by byte, for what the others never do: it sends
/// its first message in the same write as its 101 answer.
async fn eager_server() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let key = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                    .expect("a key")
                    .trim()
                    .to_owned();
                let accept =
                    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
                let mut out = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                )
                .into_bytes();
                // One unmasked text frame, as a server sends it.
                let hello = b"{\"hello\": \"first\"}";
                out.extend_from_slice(&[0x81, hello.len() as u8]);
                out.extend_from_slice(hello);
                if s.write_all(&out).await.is_err() {
                    return;
                }
                // Then hold the connection until the client goes.
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sent_with_the_handshake_answer_is_not_lost() {
    let addr = eager_server().await;
    let text = r#"apiVersion: murmuration.dev/v1alpha1
kind: LoadTest
metadata: {name: ws-eager}
spec:
  users: 10
  userRate: 1000/s
  repeat: {times: 1}
  scenario:
    websocket:
      timeout: 5s
      steps:
        - connect: {url: "{{vars.target}}/"}
        - receive: {name: hello, json: {path: $.hello, equals: first}}
"#;
    let r = run_in_process(text, &format!("ws://{addr}")).await;
    assert_eq!(r.total.errors, 0, "{:#?}", r.steps);
    assert_eq!(step(&r, "hello").requests, 10);
}

fn murmur(args: &[&str]) -> Output {
    Command::new(MURMUR)
        .args(args)
        .current_dir(repo())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text_of(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn report(dir: &Path) -> Report {
    serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap()
}

fn run_on_two_agents(file: &Path, extra: &[&str]) -> Report {
    let out = tempfile::tempdir().unwrap();
    let mut args = vec![
        "run",
        file.to_str().unwrap(),
        "--agents",
        "2",
        "--plain",
        "--out",
        out.path().to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = murmur(&args);
    assert_eq!(o.status.code(), Some(0), "{}", text_of(&o));
    report(out.path())
}

#[test]
fn the_example_runs_on_two_agents_against_the_demo_server() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("journey.yaml");
    std::fs::write(&file, journey(1000, 1, false)).unwrap();
    let r = run_on_two_agents(&file, &["--demo-server", "websocket"]);
    assert_journey(&r, 1000, 1);
    assert_eq!(r.agents.len(), 2, "both agents ran users");
}

#[test]
fn the_journey_runs_on_two_agents_against_the_python_server() {
    let server = python_server(&[]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("journey.yaml");
    std::fs::write(&file, journey(1000, 1, false)).unwrap();
    let target = format!("target=ws://{}", server.addr);
    let r = run_on_two_agents(&file, &["--set", &target]);
    assert_journey(&r, 1000, 1);
}

#[test]
fn bad_input_is_refused_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "- receive: {name: joined, after: join, json: {path: $.members, equals: 2}}",
            "- receive: {name: joined, after: join}",
            "spec.scenario.websocket.steps[3].receive",
            "needs a matcher",
        ),
        (
            "- connect: {url: \"{{vars.target}}/chat\"}",
            "- connect: {url: \"http://127.0.0.1:1/chat\"}",
            "spec.scenario.websocket.steps[0].connect.url",
            "not ws or wss",
        ),
        (
            "after: echo,",
            "after: say-it,",
            "spec.scenario.websocket.steps[7].receive.after",
            "say-it",
        ),
        (
            "extract: {said: $.text}",
            "extract: {said: \"$.[\"}",
            "spec.scenario.websocket.steps[5].receive.extract.said",
            "JSONPath",
        ),
        (
            "json: {join: \"room-{{group.ids}}\"}",
            "json: {join: \"room-{{group.ids\"}",
            "spec.scenario.websocket.steps[2].send.json",
            "not closed",
        ),
    ];
    let example = journey(10, 1, false);
    for (from, to, field, reason) in cases {
        assert!(example.contains(from), "{from}");
        let file = dir.path().join("bad.yaml");
        std::fs::write(&file, example.replace(from, to)).unwrap();
        let o = murmur(&[
            "run",
            file.to_str().unwrap(),
            "--plain",
            "--set",
            "target=ws://127.0.0.1:1",
        ]);
        assert_eq!(o.status.code(), Some(2), "{}", text_of(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(field) && err.contains(reason),
            "{field}: {err}"
        );
    }
    // A target that is not a WebSocket URL, from the command line.
    let o = murmur(&[
        "run",
        "manifests/examples/websocket.yaml",
        "--set",
        "target=http://127.0.0.1:1",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text_of(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("steps[0].connect.url"),
        "{}",
        text_of(&o)
    );
}

#[tokio::test]
async fn the_demo_server_echoes_and_broadcasts_to_rooms() {
    let server = WebSocketDemo::start("127.0.0.1:0".parse().unwrap(), 1).unwrap();
    let url = format!("ws://{}/any/path", server.local_addr());
    let addr = server.local_addr();
    let dial = |url: String| async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio_tungstenite::client_async(url, tcp).await.unwrap().0
    };
    let mut a = dial(url.clone()).await;
    let mut b = dial(url.clone()).await;
    async fn next(
        ws: &mut (impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin),
    ) -> serde_json::Value {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await
                .expect("a message in time")
                .unwrap()
                .unwrap();
            if let Message::Text(t) = m {
                return serde_json::from_str(t.as_str())
                    .unwrap_or(serde_json::Value::String(t.to_string()));
            }
        }
    }
    a.send(Message::text("plain text")).await.unwrap();
    assert_eq!(next(&mut a).await, "plain text");
    a.send(Message::text(r#"{"join": "r"}"#)).await.unwrap();
    assert_eq!(
        next(&mut a).await,
        serde_json::json!({"joined": "r", "members": 1})
    );
    b.send(Message::text(r#"{"join": "r"}"#)).await.unwrap();
    assert_eq!(
        next(&mut b).await,
        serde_json::json!({"joined": "r", "members": 2})
    );
    assert_eq!(
        next(&mut a).await,
        serde_json::json!({"joined": "r", "members": 2})
    );
    b.send(Message::text(r#"{"room": "r", "text": "hi"}"#))
        .await
        .unwrap();
    assert_eq!(next(&mut a).await["text"], "hi");
    // Not a member: refused, and nobody hears it.
    let mut c = dial(url.clone()).await;
    c.send(Message::text(r#"{"room": "r", "text": "intruder"}"#))
        .await
        .unwrap();
    assert_eq!(next(&mut c).await, serde_json::json!({"error": "not in r"}));
    // A closed member leaves its rooms.
    drop(b);
    assert_eq!(
        next(&mut a).await,
        serde_json::json!({"left": "r", "members": 1})
    );
}

/// `murmur run` with 300 connected users and the demo server in one process (about 600
/// descriptors), under the open-files limits `limits` (a `ulimit` command).
fn run_under_ulimit(limits: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("idle.yaml");
    std::fs::write(
        &file,
        "apiVersion: murmuration.dev/v1alpha1
kind: LoadTest
metadata: {name: fds}
spec:
  users: 300
  repeat: {times: 1}
  scenario:
    websocket:
      steps:
        - connect: {url: \"{{vars.target}}/\"}
        - think: {duration: 1s}
        - close: {}
",
    )
    .unwrap();
    let script =
        format!("{limits} && exec \"$0\" run \"$1\" --demo-server websocket --plain --out \"$2\"");
    Command::new("bash")
        .args(["-c", &script, MURMUR])
        .arg(&file)
        .arg(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn the_soft_open_files_limit_is_raised_and_a_hard_one_is_explained_once() {
    // A low soft limit under a sufficient hard one: raised, every user connects.
    let o = run_under_ulimit("ulimit -Sn 128 && ulimit -Hn 4096");
    assert_eq!(o.status.code(), Some(0), "{}", text_of(&o));
    // A hard limit too low for the users: said once, with the limit and how to raise it;
    // the connects that fail are counted.
    let o = run_under_ulimit("ulimit -Sn 256 && ulimit -Hn 256");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.matches("RLIMIT_NOFILE").count(), 1, "{}", text_of(&o));
    assert!(
        err.contains("hard 256") && err.contains("ulimit -Hn"),
        "{err}"
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("(connect "),
        "failed connects are counted:\n{out}"
    );
}
