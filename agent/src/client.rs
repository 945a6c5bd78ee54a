//! A user's own HTTP connections, as a browser keeps them: one per origin, kept alive,
//! reconnected when the server closes it. HTTP/1.1 or HTTP/2, over TCP or TLS (rustls).
//!
//! The hot path is a bare hyper connection per user on the worker's current-thread runtime:
//! no pool, no locks, no per-request task.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::metrics::ErrorKind;

/// The body type of requests.
pub type ReqBody = Full<Bytes>;

/// Where a connection goes: scheme, host and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `http` or `https`.
    pub tls: bool,
    /// Host and port as in the URL.
    pub authority: Authority,
}

impl Origin {
    /// The origin of an absolute URI, or why it has none.
    pub fn of(uri: &http::Uri) -> Result<Origin, String> {
        let tls = match uri.scheme() {
            Some(s) if *s == Scheme::HTTPS => true,
            Some(s) if *s == Scheme::HTTP => false,
            Some(s) => return Err(format!("scheme {s} is not http or https")),
            None => return Err("the URL has no scheme (http:// or https://)".into()),
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| "the URL has no host".to_string())?;
        Ok(Origin { tls, authority })
    }

    fn port(&self) -> u16 {
        self.authority
            .port_u16()
            .unwrap_or(if self.tls { 443 } else { 80 })
    }
}

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

enum Sender {
    H1(http1::SendRequest<ReqBody>),
    H2(http2::SendRequest<ReqBody>),
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }
}

/// One user's connections: at most one per origin (a user rarely talks to more than a few).
#[derive(Default)]
pub struct Connections {
    conns: Vec<(Origin, Sender)>,
}

/// An answer: status and, when asked for, the body.
pub struct Answer {
    /// Status code.
    pub status: http::StatusCode,
    /// The body, when the caller needs it (checks, extraction); otherwise empty.
    pub body: Bytes,
}

impl Connections {
    /// Sends `req` to `origin` over this user's connection (opened or reopened as needed)
    /// and reads the whole answer. `keep_body` keeps the body for checks.
    pub async fn send(
        &mut self,
        config: &ClientConfig,
        origin: &Origin,
        req: http::Request<ReqBody>,
        keep_body: bool,
    ) -> Result<Answer, ClientError> {
        let idx = match self.conns.iter().position(|(o, _)| o == origin) {
            Some(i) if !self.conns[i].1.is_closed() => i,
            found => {
                if let Some(i) = found {
                    self.conns.swap_remove(i);
                }
                let sender = connect(config, origin).await?;
                self.conns.push((origin.clone(), sender));
                self.conns.len() - 1
            }
        };
        let result = match &mut self.conns[idx].1 {
            Sender::H1(s) => {
                // Waits until the connection can take a request (the previous answer is read).
                if s.ready().await.is_err() {
                    Err(ClientError::new(ErrorKind::Protocol, "connection closed"))
                } else {
                    s.send_request(req).await.map_err(classify)
                }
            }
            Sender::H2(s) => {
                if s.ready().await.is_err() {
                    Err(ClientError::new(ErrorKind::Protocol, "connection closed"))
                } else {
                    s.send_request(req).await.map_err(classify)
                }
            }
        };
        let response = match result {
            Ok(r) => r,
            Err(e) => {
                self.conns.swap_remove(idx);
                return Err(e);
            }
        };
        let status = response.status();
        let mut body = response.into_body();
        let body = if keep_body {
            match body.collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    self.conns.swap_remove(idx);
                    return Err(classify(e));
                }
            }
        } else {
            // Read and drop: the answer must be consumed for the connection to be reused.
            while let Some(frame) = body.frame().await {
                if let Err(e) = frame {
                    self.conns.swap_remove(idx);
                    return Err(classify(e));
                }
            }
            Bytes::new()
        };
        Ok(Answer { status, body })
    }

    /// Drops the connection to `origin`: after a timed-out exchange it may still be
    /// waiting for the old answer, so it cannot carry the next request.
    pub fn discard(&mut self, origin: &Origin) {
        self.conns.retain(|(o, _)| o != origin);
    }

    /// Forgets every connection (they close when their tasks see the senders gone).
    pub fn close_all(&mut self) {
        self.conns.clear();
    }
}

fn classify(e: hyper::Error) -> ClientError {
    let kind = if e.is_timeout() {
        ErrorKind::Timeout
    } else {
        ErrorKind::Protocol
    };
    ClientError::new(kind, e.to_string())
}

async fn connect(config: &ClientConfig, origin: &Origin) -> Result<Sender, ClientError> {
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
        handshake(config, stream).await
    } else {
        handshake(config, tcp).await
    }
}

async fn handshake<S>(config: &ClientConfig, stream: S) -> Result<Sender, ClientError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(stream);
    if config.http2 {
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .handshake(io)
            .await
            .map_err(|e| ClientError::new(ErrorKind::Protocol, format!("HTTP/2 handshake: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Sender::H2(sender))
    } else {
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| ClientError::new(ErrorKind::Protocol, format!("HTTP/1 handshake: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Sender::H1(sender))
    }
}

/// Runs `fut` with a time limit, counting a timeout as [`ErrorKind::Timeout`].
pub async fn with_timeout<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::new(
            ErrorKind::Timeout,
            format!(
                "no complete answer within {}",
                humantime::format_duration(limit)
            ),
        )),
    }
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

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> ClientError {
        ClientError::new(ErrorKind::Protocol, e.to_string())
    }
}
