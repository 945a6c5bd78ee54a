//! The client's opening handshake (RFC 6455 section 4.1), done here with tungstenite's
//! request writer and accept key, and `httparse` for the answer, rather than by
//! tungstenite's handshake machine: that one reads the answer into a 4 KiB buffer (plus a
//! 4 KiB chunk) and hands the buffer on as the connection's read buffer, so every idle
//! user kept 4 KiB it never needed (bench/README.md has the census). Here the answer is
//! read into a buffer sized to it, and the connection starts with the small read buffer
//! of [`super::ws_config`].

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::client::{generate_request, Request};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use super::{ws_config, WsConnection, WsSocket};
use crate::metrics::ErrorKind;

/// The largest handshake answer taken: a server's 101 is a few hundred bytes.
const MAX_ANSWER: usize = 64 << 10;

/// Headers an answer may have (as tungstenite allows).
const MAX_HEADERS: usize = 124;

/// A failed handshake: what kind of error it counts as, and why.
pub(super) type Failure = (ErrorKind, String);

/// Sends `request` on `socket` and reads the server's answer; the connection once the
/// server switched to WebSocket. `url` names the target in errors.
pub(super) async fn handshake(
    mut socket: WsSocket,
    request: Request,
    url: &http::Uri,
) -> Result<WsConnection, Failure> {
    let protocol =
        |e: &dyn std::fmt::Display| (ErrorKind::Protocol, format!("{url}: handshake: {e}"));
    let subprotocols: Vec<String> = request
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .collect();
    let (bytes, key) = generate_request(request).map_err(|e| protocol(&e))?;
    let accept = derive_accept_key(key.as_bytes());
    socket.write_all(&bytes).await.map_err(|e| protocol(&e))?;
    socket.flush().await.map_err(|e| protocol(&e))?;
    drop(bytes);
    let mut answer = Vec::with_capacity(256);
    let length = loop {
        if answer.len() == answer.capacity() {
            if answer.len() >= MAX_ANSWER {
                return Err(protocol(&"the answer's head is over 64 KiB"));
            }
            answer.reserve(answer.len());
        }
        let n = socket
            .read_buf(&mut answer)
            .await
            .map_err(|e| protocol(&e))?;
        if n == 0 {
            return Err(protocol(
                &"the server closed the connection before answering",
            ));
        }
        if let Some(length) =
            check_answer(&answer, &accept, &subprotocols).map_err(|e| match e {
                Refused::Status(code) => (
                    ErrorKind::Status,
                    format!("{url}: the server answered {code} instead of switching to WebSocket"),
                ),
                Refused::Protocol(why) => protocol(&why),
            })?
        {
            break length;
        }
    };
    // What came after the answer is the start of the first frames: the connection reads it
    // first. Usually nothing, and then nothing is allocated for it.
    let rest = answer[length..].to_vec();
    drop(answer);
    Ok(WebSocketStream::from_partially_read(socket, rest, Role::Client, Some(ws_config())).await)
}

/// Why an answer is not a switch to WebSocket.
#[derive(Debug, PartialEq)]
enum Refused {
    /// The server answered with this status instead of 101.
    Status(u16),
    /// A 101 that breaks the protocol, or an answer that is not HTTP.
    Protocol(String),
}

/// The length of the answer's head once it is complete and valid (status 101,
/// `Upgrade: websocket`, `Connection: upgrade`, the accept key of our key, a subprotocol
/// only among those offered and one when some were); `None` while it is incomplete.
fn check_answer(
    answer: &[u8],
    accept: &str,
    subprotocols: &[String],
) -> Result<Option<usize>, Refused> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let length = match response.parse(answer) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => {
            return Err(Refused::Protocol(format!(
                "the answer is not HTTP/1.1: {e}"
            )))
        }
    };
    let code = response.code.unwrap_or(0);
    if code != 101 {
        return Err(Refused::Status(code));
    }
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_owned())
    };
    let missing = |what: &str| Err(Refused::Protocol(format!("the 101 answer lacks {what}")));
    if !header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")) {
        return missing("`Upgrade: websocket`");
    }
    let upgrade = |v: String| {
        v.split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
    };
    if !header("connection").is_some_and(upgrade) {
        return missing("`Connection: upgrade`");
    }
    if header("sec-websocket-accept").as_deref() != Some(accept) {
        return Err(Refused::Protocol(
            "the answer's Sec-WebSocket-Accept is not the one of our key".into(),
        ));
    }
    match header("sec-websocket-protocol") {
        None if !subprotocols.is_empty() => {
            return Err(Refused::Protocol(format!(
                "the server chose none of the subprotocols offered ({})",
                subprotocols.join(", ")
            )))
        }
        Some(p) if !subprotocols.contains(&p) => {
            return Err(Refused::Protocol(format!(
                "the server chose subprotocol {p:?}, which was not offered"
            )))
        }
        _ => {}
    }
    Ok(Some(length))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    fn answer(extra: &str) -> String {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {ACCEPT}\r\n{extra}\r\n"
        )
    }

    #[test]
    fn the_accept_key_is_the_rfc_example() {
        assert_eq!(derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), ACCEPT);
    }

    #[test]
    fn a_complete_switch_is_taken_and_what_follows_is_left_for_the_connection() {
        let a = answer("");
        let with_frame = format!("{a}\u{81}\u{2}hi");
        assert_eq!(check_answer(a.as_bytes(), ACCEPT, &[]), Ok(Some(a.len())));
        assert_eq!(
            check_answer(with_frame.as_bytes(), ACCEPT, &[]),
            Ok(Some(a.len()))
        );
        assert_eq!(check_answer(&a.as_bytes()[..40], ACCEPT, &[]), Ok(None));
    }

    #[test]
    fn anything_but_a_valid_switch_is_refused() {
        let not_found = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            check_answer(not_found.as_bytes(), ACCEPT, &[]),
            Err(Refused::Status(404))
        );
        let wrong_key = answer("").replace(ACCEPT, "AAAA");
        assert!(matches!(
            check_answer(wrong_key.as_bytes(), ACCEPT, &[]),
            Err(Refused::Protocol(_))
        ));
        let no_upgrade = answer("").replace("Upgrade: websocket\r\n", "");
        assert!(matches!(
            check_answer(no_upgrade.as_bytes(), ACCEPT, &[]),
            Err(Refused::Protocol(_))
        ));
        assert!(matches!(
            check_answer(b"SSH-2.0-OpenSSH\r\n\r\n", ACCEPT, &[]),
            Err(Refused::Protocol(_))
        ));
    }

    #[test]
    fn a_subprotocol_must_be_one_offered_and_one_must_be_chosen() {
        let chat = vec!["chat".to_owned(), "superchat".to_owned()];
        let chosen = answer("Sec-WebSocket-Protocol: superchat\r\n");
        assert!(matches!(
            check_answer(chosen.as_bytes(), ACCEPT, &chat),
            Ok(Some(_))
        ));
        assert!(matches!(
            check_answer(answer("").as_bytes(), ACCEPT, &chat),
            Err(Refused::Protocol(_))
        ));
        assert!(matches!(
            check_answer(chosen.as_bytes(), ACCEPT, &[]),
            Err(Refused::Protocol(_))
        ));
    }
}
