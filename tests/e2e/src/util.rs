//! Small helpers: free ports, random tokens, a minimal HTTP/1.1 GET, polling with deadlines.

use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// A TCP port on `ip` that was free a moment ago (bound, read, released).
pub fn free_port(ip: &str) -> io::Result<u16> {
    let l = TcpListener::bind((ip, 0))?;
    Ok(l.local_addr()?.port())
}

/// `n` random bytes from the kernel, hex-encoded.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut buf);
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// The last `n` lines of a text file, if it can be read.
pub fn tail_file(path: &Path, n: usize) -> Option<String> {
    let data = std::fs::read(path).ok()?;
    let text = String::from_utf8_lossy(&data);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    Some(lines[start..].join("\n"))
}

/// A plain HTTP/1.1 response: status and body.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Body (lossily decoded, `Content-Length` or until close).
    pub body: String,
}

/// Blocking `GET http://{addr}{path}` with a timeout for each step. `addr` may be a name
/// (resolved by the system resolver, i.e. `/etc/hosts` for the test's service names).
pub fn http_get(addr: &str, path: &str, timeout: Duration) -> io::Result<HttpResponse> {
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
    let mut last = io::Error::new(
        io::ErrorKind::NotFound,
        format!("{addr} resolves to nothing"),
    );
    for sa in addrs {
        match http_get_addr(sa, addr, path, &[], timeout) {
            Ok(r) => return Ok(r),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Blocking GET to one socket address, with a Host header and extra headers.
pub fn http_get_addr(
    sa: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> io::Result<HttpResponse> {
    let mut s = TcpStream::connect_timeout(&sa, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: murmuration-e2e\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let mut buf = Vec::new();
    let deadline = Instant::now() + timeout;
    let mut chunk = [0u8; 8192];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                if buf.is_empty() {
                    return Err(e);
                }
                break;
            }
        }
        if let Some(r) = parse_response(&buf) {
            return Ok(r);
        }
        if Instant::now() > deadline {
            break;
        }
    }
    parse_response(&buf)
        .or_else(|| {
            parse_head(&buf).map(|(status, _, body_at)| HttpResponse {
                status,
                body: String::from_utf8_lossy(&buf[body_at..]).into_owned(),
            })
        })
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no HTTP response"))
}

fn parse_head(buf: &[u8]) -> Option<(u16, Option<usize>, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status = status_line.split_whitespace().nth(1)?.parse().ok()?;
    let mut len = None;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().ok();
            }
        }
    }
    Some((status, len, end + 4))
}

fn parse_response(buf: &[u8]) -> Option<HttpResponse> {
    let (status, len, body_at) = parse_head(buf)?;
    let len = len?;
    if buf.len() < body_at + len {
        return None;
    }
    Some(HttpResponse {
        status,
        body: String::from_utf8_lossy(&buf[body_at..body_at + len]).into_owned(),
    })
}

/// Polls `check` every `every` until it returns `Some`, or fails with a timeout error
/// naming `what` and the log files that may explain it.
pub async fn poll_until<T, F, Fut>(
    what: impl Into<String>,
    timeout: Duration,
    every: Duration,
    logs: &[PathBuf],
    mut check: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: what.into(),
                after: timeout,
                logs: logs.to_vec(),
            });
        }
        tokio::time::sleep(every).await;
    }
}

/// Scales a timeout for slow machines: `MURMURATION_E2E_TIMEOUT_SCALE` (a float, default 1).
pub fn scaled(d: Duration) -> Duration {
    let f: f64 = std::env::var("MURMURATION_E2E_TIMEOUT_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|f: &f64| *f > 0.0)
        .unwrap_or(1.0);
    d.mul_f64(f)
}
