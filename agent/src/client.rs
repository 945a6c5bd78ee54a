//! A user's own HTTP connections, as a browser keeps them: one per origin, kept alive,
//! reconnected when the server closes it. HTTP/1.1 or HTTP/2, over TCP or TLS (rustls).
//!
//! The hot path is the user's own HTTP/1.1 connection, driven by the user's task on its
//! worker's current-thread runtime ([`http1`]): no pool, no locks, no second task, no
//! allocation per request. HTTP/2 goes through hyper's connection API.

mod http1;

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tokio_rustls::client::TlsStream;

use self::http1::Http1;
pub use self::http1::{encode_request, RequestHead};
use crate::metrics::ErrorKind;

/// The body type of requests.
pub type ReqBody = Full<Bytes>;

/// Where a connection goes (scheme, host and port): plain data the model resolves when it
/// compiles a scenario.
pub use murmuration_model::http::Origin;

/// Client settings shared by all users of a scenario.
#[derive(Clone)]
pub struct ClientConfig {
    /// Speak HTTP/2 instead of HTTP/1.1.
    pub http2: bool,
    /// TLS settings for `https://` origins.
    pub tls: Arc<rustls::ClientConfig>,
}

impl ClientConfig {
    /// Settings for `http2` and, when `insecure`, accepting any certificate.
    pub fn new(http2: bool, insecure: bool) -> ClientConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions");
        let mut tls = if insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
                .with_no_client_auth()
        } else {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        tls.alpn_protocols = if http2 {
            vec![b"h2".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        ClientConfig {
            http2,
            tls: Arc::new(tls),
        }
    }
}

/// A failed exchange: what kind, and a message for logs.
#[derive(Debug)]
pub struct ClientError {
    /// How it is counted.
    pub kind: ErrorKind,
    /// What happened.
    pub message: String,
}

impl ClientError {
    fn new(kind: ErrorKind, message: impl Into<String>) -> ClientError {
        ClientError {
            kind,
            message: message.into(),
        }
    }
}

/// A connection: HTTP/1.1 (over TCP or TLS) driven by the user itself, or hyper's HTTP/2.
enum Conn {
    Tcp(Http1<TcpStream>),
    Tls(Box<Http1<TlsStream<TcpStream>>>),
    H2(http2::SendRequest<ReqBody>),
}

impl Conn {
    /// Whether it can take a request now (not closed by the server meanwhile).
    fn is_usable(&mut self) -> bool {
        match self {
            Conn::Tcp(c) => c.is_usable(),
            Conn::Tls(c) => c.is_usable(),
            Conn::H2(s) => !s.is_closed(),
        }
    }
}

/// One user's connections: at most one per origin (a user rarely talks to more than a few).
#[derive(Default)]
pub struct Connections {
    conns: Vec<(Origin, Conn)>,
    /// The time limit of this user's exchanges: one timer for all of them (see
    /// [`Connections::send_within`]), made at the first.
    timer: Option<Pin<Box<Sleep>>>,
}

/// An answer: status and, when asked for, the body.
pub struct Answer {
    /// Status code.
    pub status: http::StatusCode,
    /// The body, when the caller needs it (checks, extraction); otherwise empty.
    pub body: Bytes,
}

impl Connections {
    /// [`Connections::send`] with a time limit: an exchange that started at `started` (as
    /// [`crate::scenario::User::now`] gave it) and has no complete answer `limit` later
    /// fails as [`ErrorKind::Timeout`], and its connection is dropped.
    ///
    /// Why not `tokio::time::timeout` per request: it puts an entry in the timer wheel and
    /// takes it out again for every request, and reads the clock once more; that showed in
    /// the profile. Here the user's one timer stays armed for the deadline of an earlier
    /// exchange, which is never later than this one's (deadlines only move forward): when
    /// it fires before this exchange's deadline, it is re-armed for it. So the timer is
    /// touched about once per `limit`, not once per request.
    // Not an `async fn`, which would store its arguments twice (rust-lang/rust#62958): this
    // future is part of the one allocated per request step.
    #[allow(clippy::manual_async_fn, clippy::too_many_arguments)]
    pub fn send_within<'a>(
        &'a mut self,
        config: &'a ClientConfig,
        origin: &'a Origin,
        head: RequestHead<'a>,
        body: Bytes,
        keep_body: bool,
        started: Instant,
        limit: Duration,
    ) -> impl Future<Output = Result<Answer, ClientError>> + Send + 'a {
        async move {
            let deadline = tokio::time::Instant::from_std(started + limit);
            let mut timer = match self.timer.take() {
                Some(mut t) => {
                    if t.deadline() > deadline {
                        t.as_mut().reset(deadline);
                    }
                    t
                }
                None => Box::pin(tokio::time::sleep_until(deadline)),
            };
            let answer = {
                let send = self.send(config, origin, head, body, keep_body);
                tokio::pin!(send);
                poll_fn(|cx| {
                    if let Poll::Ready(r) = send.as_mut().poll(cx) {
                        return Poll::Ready(Some(r));
                    }
                    while timer.as_mut().poll(cx).is_ready() {
                        if tokio::time::Instant::now() >= deadline {
                            return Poll::Ready(None);
                        }
                        // An earlier exchange's deadline: this one still has time.
                        timer.as_mut().reset(deadline);
                    }
                    Poll::Pending
                })
                .await
            };
            self.timer = Some(timer);
            answer.unwrap_or_else(|| {
                // The connection may still be waiting for the old answer: it cannot carry the
                // next request.
                self.discard(origin);
                Err(timed_out(limit))
            })
        }
    }

    /// Sends a request to `origin` over this user's connection (opened or reopened as
    /// needed) and reads the whole answer. `keep_body` keeps the body for checks.
    #[allow(clippy::manual_async_fn)]
    pub fn send<'a>(
        &'a mut self,
        config: &'a ClientConfig,
        origin: &'a Origin,
        head: RequestHead<'a>,
        body: Bytes,
        keep_body: bool,
    ) -> impl Future<Output = Result<Answer, ClientError>> + Send + 'a {
        async move {
            let found = self.conns.iter().position(|(o, _)| same_origin(o, origin));
            let idx = match found {
                Some(i) if self.conns[i].1.is_usable() => i,
                found => {
                    if let Some(i) = found {
                        self.conns.swap_remove(i);
                    }
                    // Boxed, as is HTTP/2's exchange: their futures (a TLS handshake, hyper's
                    // request) are large, and every request's future would carry their size.
                    let conn = Box::pin(connect(config, origin)).await?;
                    self.conns.push((origin.clone(), conn));
                    self.conns.len() - 1
                }
            };
            let result = match &mut self.conns[idx].1 {
                Conn::Tcp(c) => c.exchange(&head, &body, keep_body).await,
                Conn::Tls(c) => c.exchange(&head, &body, keep_body).await,
                Conn::H2(s) => Box::pin(send_h2(s, &head, body, keep_body)).await,
            };
            if result.is_err() {
                // Whatever failed, the connection is in an unknown state.
                self.conns.swap_remove(idx);
            }
            result
        }
    }

    /// Drops the connection to `origin`: after a timed-out exchange it may still be
    /// waiting for the old answer, so it cannot carry the next request.
    pub fn discard(&mut self, origin: &Origin) {
        self.conns.retain(|(o, _)| o != origin);
    }

    /// Closes every connection (an HTTP/2 one when its task sees its sender gone).
    pub fn close_all(&mut self) {
        self.conns.clear();
    }
}

/// Whether two origins are the same. A step's origin is usually the very text its
/// connection was opened with, and comparing bytes is cheaper than `Authority`'s own
/// comparison, which ignores case letter by letter: that showed in the profile, once per
/// request.
fn same_origin(a: &Origin, b: &Origin) -> bool {
    a.tls == b.tls && (a.authority.as_str() == b.authority.as_str() || a.authority == b.authority)
}

/// One exchange over hyper's HTTP/2 connection.
async fn send_h2(
    sender: &mut http2::SendRequest<ReqBody>,
    head: &RequestHead<'_>,
    body: Bytes,
    keep_body: bool,
) -> Result<Answer, ClientError> {
    let mut req = http::Request::builder()
        .method(head.method.clone())
        .uri(head.uri.clone());
    for (name, value) in head.headers {
        req = req.header(name, value);
    }
    let req = req.body(Full::new(body)).map_err(|e| {
        ClientError::new(ErrorKind::Other, format!("request could not be built: {e}"))
    })?;
    if sender.ready().await.is_err() {
        return Err(ClientError::new(ErrorKind::Protocol, "connection closed"));
    }
    let response = sender.send_request(req).await.map_err(classify)?;
    let status = response.status();
    let mut body = response.into_body();
    let body = if keep_body {
        body.collect().await.map_err(classify)?.to_bytes()
    } else {
        // Read and drop: the answer must be consumed for the stream to be released.
        while let Some(frame) = body.frame().await {
            frame.map_err(classify)?;
        }
        Bytes::new()
    };
    Ok(Answer { status, body })
}

fn classify(e: hyper::Error) -> ClientError {
    let kind = if e.is_timeout() {
        ErrorKind::Timeout
    } else {
        ErrorKind::Protocol
    };
    ClientError::new(kind, e.to_string())
}

async fn connect(config: &ClientConfig, origin: &Origin) -> Result<Conn, ClientError> {
    let host = origin.authority.host();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = TcpStream::connect((host, origin.port()))
        .await
        .map_err(|e| {
            if crate::limits::is_out_of_files(&e) {
                crate::limits::tell_out_of_files(&e);
            }
            ClientError::new(
                ErrorKind::Connect,
                format!("connect to {}: {e}", origin.authority),
            )
        })?;
    let _ = tcp.set_nodelay(true);
    if origin.tls {
        let name = rustls::pki_types::ServerName::try_from(host.to_owned())
            .map_err(|e| ClientError::new(ErrorKind::Tls, format!("{host}: {e}")))?;
        let stream = tokio_rustls::TlsConnector::from(config.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| {
                ClientError::new(
                    ErrorKind::Tls,
                    format!("TLS with {}: {e}", origin.authority),
                )
            })?;
        if config.http2 {
            handshake_h2(stream).await
        } else {
            Ok(Conn::Tls(Box::new(Http1::new(stream))))
        }
    } else if config.http2 {
        handshake_h2(tcp).await
    } else {
        Ok(Conn::Tcp(Http1::new(tcp)))
    }
}

async fn handshake_h2<S>(stream: S) -> Result<Conn, ClientError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ClientError::new(ErrorKind::Protocol, format!("HTTP/2 handshake: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Conn::H2(sender))
}

/// The error of an exchange with no complete answer within `limit`.
fn timed_out(limit: Duration) -> ClientError {
    ClientError::new(
        ErrorKind::Timeout,
        format!(
            "no complete answer within {}",
            humantime::format_duration(limit)
        ),
    )
}

#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
