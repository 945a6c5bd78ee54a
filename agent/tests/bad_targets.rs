//! Targets that misbehave: nobody listening, a server that closes every connection, one
//! that answers garbage, one that never answers, and a TLS server with a self-signed
//! certificate. Each failure is counted under its kind, by step; nothing panics or hangs.

use std::time::Duration;

use murmuration_agent::engine::{run_test, EngineOptions};
use murmuration_agent::plan::build_plan;
use murmuration_agent::registry::Registry;
use murmuration_agent::report::Report;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

async fn run(yaml: &str) -> Report {
    let registry = Registry::new();
    let spec: murmuration_crds::LoadTestSpec = serde_saphyr::from_str(yaml).unwrap();
    let plan = build_plan("bad-targets", &spec, &[], &[], &registry).unwrap();
    let (_tx, rx) = mpsc::unbounded_channel();
    let opts = EngineOptions {
        workers: 1,
        stop_grace: Duration::from_secs(2),
        tick: Duration::from_millis(200),
    };
    tokio::time::timeout(
        Duration::from_secs(30),
        run_test(plan, &registry, opts, rx, |_| {}),
    )
    .await
    .expect("a bad target never hangs the test")
    .unwrap()
}

fn manifest(url: &str, extra: &str) -> String {
    format!(
        "users: 4\nrepeat: {{times: 3}}\nscenario:\n  http:\n    timeout: 500ms\n{extra}    steps:\n      - request: {{name: probe, url: \"{url}\"}}\n"
    )
}

/// A TCP server on loopback that treats every connection with `f`.
async fn server<F, Fut>(f: F) -> String
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(f(s));
        }
    });
    format!("http://{addr}/")
}

fn errors(r: &Report, kind: &str) -> u64 {
    r.steps[0].errors_by_kind.get(kind).copied().unwrap_or(0)
}

#[tokio::test]
async fn nobody_listening_counts_connect_errors() {
    // Bind and drop to find a port that refuses.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r = run(&manifest(&format!("http://127.0.0.1:{port}/"), "")).await;
    assert_eq!(r.steps[0].name, "probe");
    assert_eq!(r.steps[0].requests, 12);
    assert_eq!(errors(&r, "connect"), 12, "{:?}", r.steps[0].errors_by_kind);
    assert_eq!(
        r.users.failed, 0,
        "a connect failure ends an iteration, not the user"
    );
}

#[tokio::test]
async fn a_server_that_closes_counts_protocol_errors() {
    let url = server(|mut s| async move {
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await;
        drop(s);
    })
    .await;
    let r = run(&manifest(&url, "")).await;
    assert_eq!(r.steps[0].requests, 12);
    assert_eq!(
        errors(&r, "protocol"),
        12,
        "{:?}",
        r.steps[0].errors_by_kind
    );
}

#[tokio::test]
async fn garbage_answers_count_protocol_errors() {
    let url = server(|mut s| async move {
        let mut buf = [0u8; 1024];
        while s.read(&mut buf).await.unwrap_or(0) > 0 {
            if s.write_all(b"SMTP READY\r\n\x00\x01\x02 garbage\r\n\r\n")
                .await
                .is_err()
            {
                return;
            }
        }
    })
    .await;
    let r = run(&manifest(&url, "")).await;
    assert_eq!(r.steps[0].requests, 12);
    assert_eq!(
        errors(&r, "protocol"),
        12,
        "{:?}",
        r.steps[0].errors_by_kind
    );
}

#[tokio::test]
async fn a_silent_server_counts_timeouts() {
    let url = server(|mut s| async move {
        let mut buf = [0u8; 1024];
        while s.read(&mut buf).await.unwrap_or(0) > 0 {}
    })
    .await;
    let started = std::time::Instant::now();
    let r = run(&manifest(&url, "")).await;
    assert_eq!(errors(&r, "timeout"), 12, "{:?}", r.steps[0].errors_by_kind);
    // 3 sequential timeouts of 500 ms per user, users in parallel.
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        r.steps[0].latency_ms.p50 >= 500.0,
        "{:?}",
        r.steps[0].latency_ms
    );
}

/// A user's one request timer stays armed for an earlier request's deadline and is re-armed
/// when it fires early: answers that each come well within the limit, on one keep-alive
/// connection, are never counted as timeouts, even when the first deadline passes while a
/// later request is in flight (four answers of 300 ms against a limit of 1 s).
#[tokio::test]
async fn slow_answers_within_the_limit_are_not_timeouts() {
    let url = server(|mut s| async move {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            buf.clear();
            tokio::time::sleep(Duration::from_millis(300)).await;
            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
            if s.write_all(answer).await.is_err() {
                return;
            }
        }
    })
    .await;
    let yaml = format!(
        "users: 2\nrepeat: {{times: 4}}\nscenario:\n  http:\n    timeout: 1s\n    steps:\n      - request: {{name: slow, url: \"{url}\"}}\n"
    );
    let r = run(&yaml).await;
    assert_eq!(r.steps[0].requests, 8, "{:?}", r.steps[0].errors_by_kind);
    assert_eq!(r.steps[0].errors, 0, "{:?}", r.steps[0].errors_by_kind);
    assert!(
        r.steps[0].latency_ms.p50 >= 300.0,
        "{:?}",
        r.steps[0].latency_ms
    );
}

#[tokio::test]
async fn wrong_status_and_failed_checks_are_labelled() {
    let url = server(|mut s| async move {
        let mut buf = [0u8; 4096];
        while s.read(&mut buf).await.unwrap_or(0) > 0 {
            let body = "{\"id\": 7}";
            let answer = format!(
                "HTTP/1.1 503 Service Unavailable\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            if s.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await;
    let r = run(&manifest(&url, "")).await;
    assert_eq!(errors(&r, "status"), 12, "{:?}", r.steps[0].errors_by_kind);
    let yaml = format!(
        "users: 2\nrepeat: {{times: 2}}\nscenario:\n  http:\n    steps:\n      - request: {{name: check, url: \"{url}\", expect: {{status: 503, bodyContains: nope}}}}\n      - request: {{name: extract, url: \"{url}\", expect: {{status: 503}}, extract: {{x: \"$.missing\"}}}}\n"
    );
    let r = run(&yaml).await;
    assert_eq!(
        r.steps[0].errors_by_kind.get("check"),
        Some(&4),
        "{:?}",
        r.steps
    );
    assert_eq!(
        r.steps[1].errors_by_kind.get("extract"),
        Some(&4),
        "{:?}",
        r.steps
    );
}

#[tokio::test]
async fn https_with_a_self_signed_certificate() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    // The protocol of every request the target served, as it saw it.
    let versions: std::sync::Arc<std::sync::Mutex<Vec<hyper::Version>>> = Default::default();
    let seen = versions.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                    seen.lock().unwrap().push(req.version());
                    async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from_static(b"secure")),
                        ))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
            });
        }
    });
    let url = format!("https://localhost:{port}/");
    // Verified certificates: this one is nobody's, so the handshake fails, labelled `tls`.
    let r = run(&manifest(&url, "")).await;
    assert_eq!(errors(&r, "tls"), 12, "{:?}", r.steps[0].errors_by_kind);
    // Accepting any certificate, over HTTP/1.1 and over HTTP/2 (ALPN).
    for (version, spoken) in [
        ("http1", hyper::Version::HTTP_11),
        ("http2", hyper::Version::HTTP_2),
    ] {
        versions.lock().unwrap().clear();
        let yaml = format!(
            "users: 3\nrepeat: {{times: 5}}\nscenario:\n  http:\n    version: {version}\n    insecureSkipVerify: true\n    steps:\n      - request: {{name: s, url: \"{url}\", expect: {{bodyContains: secure}}}}\n"
        );
        let r = run(&yaml).await;
        assert_eq!(r.steps[0].requests, 15, "{version}");
        assert_eq!(
            r.steps[0].errors, 0,
            "{version}: {:?}",
            r.steps[0].errors_by_kind
        );
        // The protocol asked for is the one the target was spoken to in.
        let served = versions.lock().unwrap().clone();
        assert_eq!(served, vec![spoken; 15], "{version}");
    }
}
