//! The declarative http scenario against a real HTTP server on loopback that records what
//! it receives: templates, JSON bodies, extraction into later steps, headers, loops, one
//! connection per user (kept alive), HTTP/1.1 and HTTP/2.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use murmuration_agent::engine::{run_test, EngineOptions};
use murmuration_agent::plan::build_plan;
use murmuration_agent::registry::Registry;
use murmuration_agent::report::Report;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// (method, path and query, body, x-user header, HTTP version) of a request.
type Received = (String, String, String, String, String);

/// What the server saw.
#[derive(Default)]
struct Seen {
    /// Every request.
    requests: Vec<Received>,
    connections: AtomicU64,
}

/// Answers `/order` with `{"id": "order-N"}` and everything else with `ok`.
async fn server() -> (String, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let s = seen.clone();
    let orders = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        while let Ok((stream, _)) = l.accept().await {
            s.lock().connections.fetch_add(1, Ordering::Relaxed);
            let s = s.clone();
            let orders = orders.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let s = s.clone();
                        let orders = orders.clone();
                        async move {
                            let method = req.method().to_string();
                            let uri = req
                                .uri()
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default();
                            let version = format!("{:?}", req.version());
                            let user = req
                                .headers()
                                .get("x-user")
                                .map(|v| v.to_str().unwrap_or("").to_owned())
                                .unwrap_or_default();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let body = String::from_utf8_lossy(&body).into_owned();
                            s.lock()
                                .requests
                                .push((method, uri.clone(), body, user, version));
                            let answer = if uri.starts_with("/order") {
                                format!(
                                    "{{\"id\": \"order-{}\"}}",
                                    orders.fetch_add(1, Ordering::Relaxed)
                                )
                            } else {
                                "ok".to_owned()
                            };
                            Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(
                                answer,
                            ))))
                        }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            });
        }
    });
    (format!("http://{addr}"), seen)
}

async fn run(yaml: &str) -> Report {
    let registry = Registry::new();
    let spec: murmuration_crds::LoadTestSpec = serde_saphyr::from_str(yaml).unwrap();
    let plan = build_plan("http-test", &spec, &[], &[], &registry).unwrap();
    let (_tx, rx) = mpsc::unbounded_channel();
    let opts = EngineOptions {
        workers: 2,
        stop_grace: Duration::from_secs(2),
        tick: Duration::from_millis(200),
    };
    tokio::time::timeout(
        Duration::from_secs(30),
        run_test(plan, &registry, opts, rx, |_| {}),
    )
    .await
    .unwrap()
    .unwrap()
}

#[tokio::test]
async fn a_journey_with_templates_extraction_and_loops() {
    let (base, seen) = server().await;
    let yaml = format!(
        r#"
users: 5
repeat: {{times: 2}}
vars: {{target: "{base}", item: 42}}
scenario:
  http:
    baseUrl: "{{{{vars.target}}}}"
    headers: {{x-user: "u{{{{user.id}}}}"}}
    steps:
      - request: {{name: home, path: "/home?it={{{{user.iteration}}}}"}}
      - request:
          name: buy
          method: POST
          path: /order
          json: {{user: "{{{{user.id}}}}", item: "{{{{vars.item}}}}", note: "for {{{{user.id}}}}"}}
          extract: {{order: "$.id"}}
      - loop:
          times: 3
          steps:
            - request: {{name: track, path: "/track/{{{{order}}}}"}}
            - think: {{duration: 1ms}}
"#
    );
    let r = run(&yaml).await;
    assert_eq!(r.total.errors, 0, "{:?}", r.steps);
    let names: Vec<&str> = r.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["home", "buy", "track"]);
    assert_eq!(r.steps[0].requests, 10);
    assert_eq!(r.steps[1].requests, 10);
    assert_eq!(r.steps[2].requests, 30);
    let seen = seen.lock();
    // Every user kept one connection for all its requests.
    assert_eq!(seen.connections.load(Ordering::Relaxed), 5);
    let mut by_user: BTreeMap<String, Vec<&Received>> = BTreeMap::new();
    for r in &seen.requests {
        by_user.entry(r.3.clone()).or_default().push(r);
    }
    assert_eq!(
        by_user.keys().cloned().collect::<Vec<_>>(),
        ["u1", "u2", "u3", "u4", "u5"]
    );
    for (user, reqs) in by_user {
        let id: u64 = user[1..].parse().unwrap();
        assert_eq!(reqs.len(), 10, "{user}");
        assert_eq!(reqs[0].1, "/home?it=0");
        assert_eq!(reqs[5].1, "/home?it=1");
        let buy = reqs[1];
        assert_eq!(buy.0, "POST");
        let body: serde_json::Value = serde_json::from_str(&buy.2).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"user": id, "item": 42, "note": format!("for {id}")})
        );
        // The order extracted from the answer is used by the next steps of the same user.
        let order_path = &reqs[2].1;
        assert!(order_path.starts_with("/track/order-"), "{order_path}");
        assert_eq!(&reqs[3].1, order_path);
        assert_eq!(&reqs[4].1, order_path);
        assert_ne!(
            &reqs[7].1, order_path,
            "a new order in the second iteration"
        );
    }
}

#[tokio::test]
async fn http2_prior_knowledge() {
    let (base, seen) = server().await;
    let yaml = format!(
        "users: 3\nrepeat: {{times: 4}}\nscenario:\n  http:\n    version: http2\n    baseUrl: \"{base}\"\n    steps:\n      - request: {{name: h2, path: /x}}\n"
    );
    let r = run(&yaml).await;
    assert_eq!(r.total.errors, 0, "{:?}", r.steps);
    assert_eq!(r.steps[0].requests, 12);
    let seen = seen.lock();
    assert!(
        seen.requests.iter().all(|r| r.4 == "HTTP/2.0"),
        "{:?}",
        seen.requests.first()
    );
    assert_eq!(seen.connections.load(Ordering::Relaxed), 3);
}
