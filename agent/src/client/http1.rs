//! One user's HTTP/1.1 connection, driven by the user's own task: the request head is
//! written from the compiled step into a buffer the connection reuses, the answer is parsed
//! in place with `httparse` (hyper's parser), and the body is read or skipped as it comes.
//!
//! Why not hyper's `client::conn::http1` here: its connection runs as a second task that
//! the user talks to through a channel, a oneshot and a body channel, with a header map
//! allocated per answer. Profiled at 50 connections on loopback, that machinery was most of
//! murmur's own CPU per request (bench/README.md); a connection that only one user ever
//! uses, one request at a time, needs none of it. HTTP/2 still goes through hyper.

use std::io;
use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use futures::FutureExt;
use http::header::{CONTENT_LENGTH, HOST};
use http::{HeaderName, HeaderValue, Method, StatusCode, Uri};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{Answer, ClientError};
use crate::metrics::ErrorKind;

/// Largest answer head accepted (status line and headers).
const MAX_HEAD: usize = 64 * 1024;
/// Most headers in an answer.
const MAX_HEADERS: usize = 100;
/// Bodies up to this size are written with the head in one system call.
const INLINE_BODY: usize = 16 * 1024;
/// How much room a read asks for.
const READ_CHUNK: usize = 16 * 1024;

/// What a request says, as the compiled step holds it.
pub struct RequestHead<'a> {
    /// The method.
    pub method: &'a Method,
    /// Path and query for HTTP/1; the full URI for HTTP/2.
    pub uri: &'a Uri,
    /// The `host` header of HTTP/1 (HTTP/2 takes the URI's authority).
    pub host: &'a HeaderValue,
    /// The step's headers, rendered.
    pub headers: &'a [(HeaderName, HeaderValue)],
    /// The whole HTTP/1.1 request (head and body) when nothing in it is rendered per user:
    /// encoded once per test ([`encode_request`]) and written as it is, so that such a step
    /// costs no formatting and no copy per request. HTTP/2 ignores it.
    pub encoded: Option<&'a [u8]>,
}

/// An HTTP/1.1 connection over `S` (TCP or TLS).
pub(super) struct Http1<S> {
    io: S,
    /// The request being written; kept to reuse its memory.
    write: Vec<u8>,
    /// What was read and not yet consumed.
    read: BytesMut,
    /// Whether the connection can carry another request.
    reusable: bool,
}

/// How the answer's body ends.
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the server closes the connection.
    Close,
}

struct Head {
    len: usize,
    status: StatusCode,
    framing: Framing,
    close: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Http1<S> {
    pub(super) fn new(io: S) -> Http1<S> {
        Http1 {
            io,
            write: Vec::with_capacity(256),
            read: BytesMut::new(),
            reusable: true,
        }
    }

    /// Whether the connection can take a request now. An idle keep-alive connection that
    /// the server closed (its keep-alive timeout) is readable: that is seen from the
    /// reactor's readiness without a system call, and only then is it read.
    pub(super) fn is_usable(&mut self) -> bool {
        if !self.reusable || !self.read.is_empty() {
            return false;
        }
        self.read.reserve(READ_CHUNK);
        match self.io.read_buf(&mut self.read).now_or_never() {
            // Not readable: alive and quiet, as an idle HTTP/1 connection is.
            None => true,
            // Closed (Ok(0)), an error, or bytes nobody asked for: not reusable.
            Some(_) => {
                self.reusable = false;
                false
            }
        }
    }

    /// Sends one request and reads its whole answer; `keep_body` keeps the body.
    pub(super) async fn exchange(
        &mut self,
        head: &RequestHead<'_>,
        body: &Bytes,
        keep_body: bool,
    ) -> Result<Answer, ClientError> {
        // Until the answer is read whole, the connection is in the middle of an exchange.
        self.reusable = false;
        if let Some(request) = head.encoded {
            self.io.write_all(request).await?;
        } else {
            self.write.clear();
            encode_head(&mut self.write, head, body.len());
            let large_body = body.len() > INLINE_BODY;
            if !large_body {
                self.write.extend_from_slice(body);
            }
            self.io.write_all(&self.write).await?;
            if large_body {
                self.io.write_all(body).await?;
            }
        }
        self.io.flush().await?;
        let head_only = *head.method == Method::HEAD;
        let answer = loop {
            // Nothing to parse before the first read.
            let parsed = if self.read.is_empty() {
                None
            } else {
                parse_head(&self.read, head_only)?
            };
            let h = match parsed {
                Some(h) => h,
                None => {
                    if self.read.len() >= MAX_HEAD {
                        return Err(protocol("the answer's head is larger than 64 KiB"));
                    }
                    self.fill().await?;
                    continue;
                }
            };
            self.read.advance(h.len);
            // Interim answers (100 Continue, 103 Early Hints) precede the real one.
            if h.status.is_informational() && h.status != StatusCode::SWITCHING_PROTOCOLS {
                continue;
            }
            break h;
        };
        let body = match answer.framing {
            Framing::None => Bytes::new(),
            Framing::Length(n) => self.read_length(n, keep_body).await?,
            Framing::Chunked => self.read_chunked(keep_body).await?,
            Framing::Close => self.read_to_end(keep_body).await?,
        };
        let upgraded = answer.status == StatusCode::SWITCHING_PROTOCOLS;
        self.reusable = !answer.close
            && !upgraded
            && !matches!(answer.framing, Framing::Close)
            && self.read.is_empty();
        Ok(Answer {
            status: answer.status,
            body,
        })
    }

    /// Reads more of the answer; the peer closing first is a protocol error.
    async fn fill(&mut self) -> Result<(), ClientError> {
        self.read.reserve(READ_CHUNK);
        match self.io.read_buf(&mut self.read).await? {
            0 => Err(protocol("the connection closed before the whole answer")),
            _ => Ok(()),
        }
    }

    async fn read_length(&mut self, n: u64, keep: bool) -> Result<Bytes, ClientError> {
        if keep {
            let n = usize::try_from(n).map_err(|_| protocol("the body is too large"))?;
            while self.read.len() < n {
                self.fill().await?;
            }
            return Ok(self.read.split_to(n).freeze());
        }
        let mut left = n;
        loop {
            let take = left.min(self.read.len() as u64) as usize;
            self.read.advance(take);
            left -= take as u64;
            if left == 0 {
                return Ok(Bytes::new());
            }
            self.fill().await?;
        }
    }

    async fn read_chunked(&mut self, keep: bool) -> Result<Bytes, ClientError> {
        let mut kept = BytesMut::new();
        loop {
            let size = match httparse::parse_chunk_size(&self.read) {
                Ok(httparse::Status::Complete((used, size))) => {
                    self.read.advance(used);
                    size
                }
                Ok(httparse::Status::Partial) => {
                    self.fill().await?;
                    continue;
                }
                Err(_) => return Err(protocol("invalid chunk size in a chunked body")),
            };
            if size == 0 {
                self.skip_trailers().await?;
                return Ok(kept.freeze());
            }
            let data = self.read_length(size, keep).await?;
            if keep {
                kept.extend_from_slice(&data);
            }
            while self.read.len() < 2 {
                self.fill().await?;
            }
            if &self.read[..2] != b"\r\n" {
                return Err(protocol("a chunk does not end with CRLF"));
            }
            self.read.advance(2);
        }
    }

    /// Skips the trailer fields after the last chunk, up to the empty line.
    async fn skip_trailers(&mut self) -> Result<(), ClientError> {
        loop {
            match self.read.windows(2).position(|w| w == b"\r\n") {
                Some(0) => {
                    self.read.advance(2);
                    return Ok(());
                }
                Some(i) => self.read.advance(i + 2),
                None if self.read.len() >= MAX_HEAD => {
                    return Err(protocol("the trailers are larger than 64 KiB"))
                }
                None => self.fill().await?,
            }
        }
    }

    async fn read_to_end(&mut self, keep: bool) -> Result<Bytes, ClientError> {
        let mut kept = BytesMut::new();
        loop {
            if keep {
                kept.extend_from_slice(&self.read);
            }
            self.read.clear();
            self.read.reserve(READ_CHUNK);
            if self.io.read_buf(&mut self.read).await? == 0 {
                return Ok(kept.freeze());
            }
        }
    }
}

fn protocol(message: &str) -> ClientError {
    ClientError::new(ErrorKind::Protocol, message)
}

/// A whole request (head and body) encoded once, for a step whose every part is known
/// before any user runs (see [`RequestHead::encoded`]).
pub fn encode_request(head: &RequestHead<'_>, body: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(128 + body.len());
    encode_head(&mut out, head, body.len());
    out.extend_from_slice(body);
    Bytes::from(out)
}

/// Writes the request line and headers: `host` and `content-length` unless the step sets
/// them itself. Byte copies rather than `write!`, which cost more than the rest here.
fn encode_head(out: &mut Vec<u8>, head: &RequestHead<'_>, body_len: usize) {
    let target = head.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let sets = |name: &HeaderName| head.headers.iter().any(|(n, _)| n == name);
    if !sets(&HOST) {
        header_line(out, HOST.as_str(), head.host);
    }
    for (name, value) in head.headers {
        header_line(out, name.as_str(), value);
    }
    // A body, or a method whose servers expect to be told it has none.
    let says_length =
        body_len > 0 || matches!(*head.method, Method::POST | Method::PUT | Method::PATCH);
    if says_length && !sets(&CONTENT_LENGTH) {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body_len).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn header_line(out: &mut Vec<u8>, name: &str, value: &HeaderValue) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Parses an answer's head, if it is all there: its length, status, and how its body ends
/// (RFC 9112, section 6.3).
fn parse_head(buf: &[u8], head_only: bool) -> Result<Option<Head>, ClientError> {
    // Uninitialised slots: zeroing 100 of them per answer showed in the profile.
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut answer = httparse::Response::new(&mut []);
    let config = httparse::ParserConfig::default();
    let len = match config.parse_response_with_uninit_headers(&mut answer, buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(protocol(&format!("not an HTTP/1 answer: {e}"))),
    };
    let status = answer
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| protocol("the answer has no valid status code"))?;
    // HTTP/1.0 closes after each answer unless it says otherwise.
    let mut close = answer.version == Some(0);
    let mut length: Option<u64> = None;
    let mut chunked = None;
    for h in answer.headers.iter() {
        if name_is(h.name, "Content-Length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| protocol("invalid content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(protocol("conflicting content-length headers"));
            }
            length = Some(n);
        } else if name_is(h.name, "Transfer-Encoding") {
            // The last coding says whether the body is chunked.
            let last = h.value.rsplit(|b| *b == b',').next().unwrap_or(&[]);
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name_is(h.name, "Connection") {
            for token in h.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    close = false;
                }
            }
        }
    }
    let code = status.as_u16();
    let framing = if head_only || status.is_informational() || code == 204 || code == 304 {
        Framing::None
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::Close,
            (None, Some(0)) => Framing::None,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::Close,
        }
    };
    Ok(Some(Head {
        len,
        status,
        framing,
        close,
    }))
}

/// Whether a header is named `canonical`, in any case: as servers spell it first, which is
/// one comparison of bytes, then letter by letter.
#[inline]
fn name_is(name: &str, canonical: &str) -> bool {
    name == canonical || name.eq_ignore_ascii_case(canonical)
}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> ClientError {
        ClientError::new(ErrorKind::Protocol, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Head {
        parse_head(text.as_bytes(), false).unwrap().unwrap()
    }

    #[test]
    fn answers_say_how_their_body_ends() {
        let h = head("HTTP/1.1 200 OK\r\ncontent-length: 13\r\n\r\nHello");
        assert!(matches!(h.framing, Framing::Length(13)) && !h.close);
        assert_eq!(h.len, 39);
        let h = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\ncontent-length: 4\r\n\r\n",
        );
        assert!(matches!(h.framing, Framing::Chunked));
        let h = head("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
        assert!(matches!(h.framing, Framing::Close) && h.close);
        let h = head("HTTP/1.0 204 No Content\r\n\r\n");
        assert!(matches!(h.framing, Framing::None) && h.close);
        let h = head("HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n");
        assert!(matches!(h.framing, Framing::None) && !h.close);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-le", false)
            .unwrap()
            .is_none());
    }

    #[test]
    fn bad_answers_are_protocol_errors() {
        for text in [
            "SMTP READY\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
        ] {
            let e = parse_head(text.as_bytes(), false).err().expect(text);
            assert_eq!(e.kind, ErrorKind::Protocol, "{text}");
        }
    }

    #[test]
    fn request_heads_carry_host_and_length() {
        let (method, uri) = (Method::POST, Uri::from_static("/cart?x=1"));
        let host = HeaderValue::from_static("127.0.0.1:8080");
        let headers = [(
            HeaderName::from_static("x-user"),
            HeaderValue::from_static("7"),
        )];
        let mut out = Vec::new();
        let head = RequestHead {
            method: &method,
            uri: &uri,
            host: &host,
            headers: &headers,
            encoded: None,
        };
        encode_head(&mut out, &head, 0);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /cart?x=1 HTTP/1.1\r\nhost: 127.0.0.1:8080\r\nx-user: 7\r\ncontent-length: 0\r\n\r\n"
        );
        // Encoded once, a request is the same head followed by its body.
        assert_eq!(
            &encode_request(&head, b"{}")[..],
            b"POST /cart?x=1 HTTP/1.1\r\nhost: 127.0.0.1:8080\r\nx-user: 7\r\ncontent-length: 2\r\n\r\n{}"
        );
    }
}
