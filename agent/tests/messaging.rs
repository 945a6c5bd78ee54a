//! The messaging scenario against the messaging demo server: thousands of users chat with
//! their neighbours and leave; the server's protocol (duplicate ids, forged senders, bad
//! JSON) as the Livebook demo defines it.

use std::time::Duration;

use murmuration_agent::demo::messaging::MessagingDemo;
use murmuration_agent::engine::{run_test, EngineOptions};
use murmuration_agent::plan::build_plan;
use murmuration_agent::registry::Registry;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_users_chat_and_leave() {
    let server = MessagingDemo::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let yaml = format!(
        "users: 2000\nrepeat: {{times: 1}}\nvars: {{target: \"{}\"}}\nscenario:\n  messaging:\n    server: \"{{{{vars.target}}}}\"\n    minMessages: 3\n    maxMessages: 5\n    neighbours: 2\n    interval: 50ms\n    silence: 400ms\n",
        server.local_addr()
    );
    let spec: murmuration_crds::LoadTestSpec = serde_saphyr::from_str(&yaml).unwrap();
    let registry = Registry::new();
    let plan = build_plan("chat", &spec, &[], &[], &registry).unwrap();
    let (_tx, rx) = mpsc::unbounded_channel();
    let opts = EngineOptions {
        workers: 2,
        stop_grace: Duration::from_secs(5),
        tick: Duration::from_millis(500),
    };
    let r = tokio::time::timeout(
        Duration::from_secs(60),
        run_test(plan, &registry, opts, rx, |_| {}),
    )
    .await
    .expect("every user leaves by itself")
    .unwrap();
    assert_eq!(r.ended_by, "completed");
    let step = |n: &str| {
        r.steps
            .iter()
            .find(|s| s.name == n)
            .unwrap_or_else(|| panic!("no step {n}"))
    };
    assert_eq!(step("connect").requests, 2000);
    assert_eq!(r.total.errors, 0, "{:?}", r.steps);
    // Each user sends 3..=5 messages.
    let sent = step("send").requests;
    assert!((6000..=10_000).contains(&sent), "{sent} messages sent");
    // Answers come back to most senders (a user that has said all it had stops answering).
    assert!(
        step("reply").requests > 1000,
        "{} replies",
        step("reply").requests
    );
    assert_eq!(r.users.finished, 2000);
}

async fn client(
    addr: std::net::SocketAddr,
) -> (
    BufReader<tokio::net::tcp::OwnedReadHalf>,
    tokio::net::tcp::OwnedWriteHalf,
) {
    let s = TcpStream::connect(addr).await.unwrap();
    let (r, w) = s.into_split();
    (BufReader::new(r), w)
}

async fn line(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Option<serde_json::Value> {
    let mut l = String::new();
    match tokio::time::timeout(Duration::from_millis(500), r.read_line(&mut l)).await {
        Ok(Ok(n)) if n > 0 => Some(serde_json::from_str(&l).unwrap()),
        _ => None,
    }
}

#[tokio::test]
async fn the_server_keeps_the_demo_protocol() {
    let server = MessagingDemo::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = server.local_addr();
    let (mut ra, mut wa) = client(addr).await;
    wa.write_all(b"{\"connect\": \"a\"}").await.unwrap();
    assert_eq!(
        line(&mut ra).await.unwrap(),
        serde_json::json!({"connected": "a"})
    );
    // A duplicate id is rejected and closed.
    let (mut rd, mut wd) = client(addr).await;
    wd.write_all(b"{\"connect\": \"a\"}").await.unwrap();
    assert_eq!(
        line(&mut rd).await.unwrap(),
        serde_json::json!({"rejected": "duplicate"})
    );
    assert!(line(&mut rd).await.is_none(), "closed");
    let (mut rb, mut wb) = client(addr).await;
    wb.write_all(b"{\"connect\": \"b\"}").await.unwrap();
    assert_eq!(
        line(&mut rb).await.unwrap(),
        serde_json::json!({"connected": "b"})
    );
    // Routed whole, two messages in one packet.
    wa.write_all(b"{\"from\":\"a\",\"to\":\"b\",\"msg\":\"hi\"}{\"from\":\"a\",\"to\":\"b\",\"msg\":\"again\"}")
        .await
        .unwrap();
    assert_eq!(line(&mut rb).await.unwrap()["msg"], "hi");
    assert_eq!(line(&mut rb).await.unwrap()["msg"], "again");
    // A forged sender, and a recipient nobody is: dropped without a word.
    wa.write_all(
        b"{\"from\":\"b\",\"to\":\"b\",\"msg\":\"forged\"}{\"from\":\"a\",\"to\":\"nobody\"}",
    )
    .await
    .unwrap();
    assert!(line(&mut rb).await.is_none());
    assert!(line(&mut ra).await.is_none());
    // Bad JSON closes that connection only; its id is free again.
    wa.write_all(b"{not json").await.unwrap();
    assert!(line(&mut ra).await.is_none());
    let (mut rc, mut wc) = client(addr).await;
    wc.write_all(b"{\"connect\": \"a\"}").await.unwrap();
    assert_eq!(
        line(&mut rc).await.unwrap(),
        serde_json::json!({"connected": "a"})
    );
    wb.write_all(b"{\"from\":\"b\",\"to\":\"a\",\"msg\":\"still here\"}")
        .await
        .unwrap();
    assert_eq!(line(&mut rc).await.unwrap()["msg"], "still here");
}

#[tokio::test]
async fn users_count_a_server_that_answers_garbage() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(b"HTTP/1.1 400 what?\r\n\r\n").await;
            });
        }
    });
    let yaml = format!(
        "users: 20\nrepeat: {{times: 1}}\nscenario:\n  messaging:\n    server: \"{addr}\"\n"
    );
    let spec: murmuration_crds::LoadTestSpec = serde_saphyr::from_str(&yaml).unwrap();
    let registry = Registry::new();
    let plan = build_plan("garbage", &spec, &[], &[], &registry).unwrap();
    let (_tx, rx) = mpsc::unbounded_channel();
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        run_test(plan, &registry, EngineOptions::default(), rx, |_| {}),
    )
    .await
    .expect("no hang")
    .unwrap();
    let connect = r.steps.iter().find(|s| s.name == "connect").unwrap();
    assert_eq!(connect.requests, 20);
    assert_eq!(
        connect.errors_by_kind.get("protocol"),
        Some(&20),
        "{:?}",
        connect.errors_by_kind
    );
}
