//! `murmur demo-server http`: a fast HTTP target for quick starts, tests and benchmarks.
//!
//! Every request gets 200 and a small fixed body, over HTTP/1.1 (keep-alive) or HTTP/2
//! (prior knowledge), unless its path asks otherwise: `/status/NNN` answers that status,
//! `/echo` sends the request body (and its content type) back, `/json` answers
//! `{"id": N, "path": ...}` with a counter for extraction tests. An optional delay (fixed or
//! random in a range) and error ratio (500s) make it a more realistic target.
//!
//! One current-thread runtime per thread, each with its own `SO_REUSEPORT` listener on the
//! same address: the kernel spreads connections, and nothing is shared on the hot path.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::Rng;
use tokio::net::TcpListener;

/// How the demo target behaves.
#[derive(Debug, Clone)]
pub struct HttpDemoConfig {
    /// Address to listen on (port 0: any free port).
    pub listen: SocketAddr,
    /// The body of ordinary answers.
    pub body: Bytes,
    /// Delay before each answer: fixed (`min == max`) or uniform in `min..=max`.
    pub delay: Option<(Duration, Duration)>,
    /// Share of requests answered with 500 (0.0 to 1.0).
    pub error_ratio: f64,
    /// Threads serving.
    pub threads: usize,
}

impl Default for HttpDemoConfig {
    fn default() -> Self {
        HttpDemoConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            body: Bytes::from_static(b"Hello, world!"),
            delay: None,
            error_ratio: 0.0,
            threads: 1,
        }
    }
}

/// Parses `--delay`: `10ms` (fixed) or `5ms..50ms` (random in the range).
pub fn parse_delay(s: &str) -> Result<(Duration, Duration), String> {
    let parse = |v: &str| murmuration_crds::units::parse_duration(v).map_err(|e| e.to_string());
    match s.split_once("..") {
        Some((a, b)) => {
            let (a, b) = (parse(a)?, parse(b)?);
            if a > b {
                return Err(format!("{s:?}: the first delay is longer than the second"));
            }
            Ok((a, b))
        }
        None => {
            let d = parse(s)?;
            Ok((d, d))
        }
    }
}

struct Shared {
    config: HttpDemoConfig,
    counter: AtomicU64,
}

/// A running demo server: its address, and a handle that stops it when dropped.
pub struct HttpDemo {
    addr: SocketAddr,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl HttpDemo {
    /// Binds (every thread's listener on the same address) and starts serving on threads
    /// of its own.
    pub fn start(config: HttpDemoConfig) -> std::io::Result<HttpDemo> {
        if !(0.0..=1.0).contains(&config.error_ratio) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the error ratio must be between 0 and 1",
            ));
        }
        let threads = config.threads.max(1);
        let first = reuseport_listener(config.listen)?;
        let addr = first.local_addr()?;
        let mut sockets = vec![first];
        for _ in 1..threads {
            sockets.push(reuseport_listener(addr)?);
        }
        let shared = Arc::new(Shared {
            config,
            counter: AtomicU64::new(0),
        });
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut handles = Vec::new();
        for (i, socket) in sockets.into_iter().enumerate() {
            let shared = shared.clone();
            let mut stopped = stopped.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("demo-http-{i}"))
                    .spawn(move || {
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .expect("a runtime builds");
                        rt.block_on(async move {
                            let listener =
                                TcpListener::from_std(socket).expect("a std listener converts");
                            serve(listener, shared, async move {
                                let _ = stopped.wait_for(|s| *s).await;
                            })
                            .await;
                        });
                    })?,
            );
        }
        Ok(HttpDemo {
            addr,
            stop: Some(stop),
            threads: handles,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Blocks until the server stops (it stops only when dropped elsewhere or the process
    /// ends): for the CLI.
    pub fn join(mut self) {
        for t in std::mem::take(&mut self.threads) {
            let _ = t.join();
        }
    }
}

impl Drop for HttpDemo {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(true);
        }
    }
}

fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut shutdown => return,
        };
        let (stream, _) = match accepted {
            Ok(a) => a,
            // Out of file descriptors and the like: keep serving the others.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| answer(shared.clone(), req));
            // A client that sends garbage or goes away only ends its own connection.
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let config = &shared.config;
    if let Some((min, max)) = config.delay {
        let d = if min == max {
            min
        } else {
            Duration::from_micros(
                rand::rng().random_range(min.as_micros() as u64..=max.as_micros() as u64),
            )
        };
        tokio::time::sleep(d).await;
    }
    if config.error_ratio > 0.0 && rand::rng().random_bool(config.error_ratio) {
        return Ok(plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            Bytes::from_static(b"injected error"),
        ));
    }
    let path = req.uri().path();
    if let Some(code) = path.strip_prefix("/status/") {
        let status = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
        return Ok(plain(status, Bytes::from(status.to_string())));
    }
    if path == "/echo" {
        let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => Bytes::new(),
        };
        let mut r = Response::new(Full::new(body));
        if let Some(ct) = content_type {
            r.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
        return Ok(r);
    }
    if path == "/json" {
        let id = shared.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let body = serde_json::json!({"id": id, "path": req.uri().to_string()}).to_string();
        let mut r = Response::new(Full::new(Bytes::from(body)));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        return Ok(r);
    }
    Ok(Response::new(Full::new(config.body.clone())))
}

fn plain(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_parse() {
        assert_eq!(
            parse_delay("10ms").unwrap(),
            (Duration::from_millis(10), Duration::from_millis(10))
        );
        assert_eq!(
            parse_delay("5ms..50ms").unwrap(),
            (Duration::from_millis(5), Duration::from_millis(50))
        );
        assert!(parse_delay("50ms..5ms").unwrap_err().contains("longer"));
        assert!(parse_delay("soon").is_err());
    }
}
