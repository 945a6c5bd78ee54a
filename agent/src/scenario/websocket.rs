//! The declarative `websocket` scenario at run time: every user holds one connection
//! (tokio-tungstenite over TCP or rustls), across iterations too, and runs the compiled
//! steps of [`murmuration_model::websocket`].
//!
//! - `connect` keeps a connection still open from an earlier iteration; otherwise it opens
//!   one, measured (TCP, TLS, handshake). A failed connect ends the iteration.
//! - `send` writes a message, measured; a `receive` with `after` measures from it.
//! - `receive` takes the first message that matches, from those kept earlier, then from
//!   the connection. Messages that do not match are kept (the newest [`INBOX`]) and
//!   counted; a timeout is counted and the user goes on.
//! - A closed connection is an error of kind `closed` on the step that needed it, and
//!   ends the iteration; the next `connect` opens a new one.
//! - While a user thinks, its connection is read: pings are answered, messages kept.
//!
//! Idle users are cheap (3.3 KiB each in the agent, bench/README.md has the census): the
//! opening handshake is ours ([`handshake`]), so that a connection starts with the small
//! read buffer of [`ws_config`] rather than tungstenite's 4 KiB handshake buffer, and
//! nothing is allocated per user beyond its connection until a message is kept.

use std::collections::VecDeque;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use http::HeaderValue;
use rand::Rng;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::either::Either;

use crate::client::ClientConfig;
use crate::metrics::{ErrorKind, StepId};
use crate::scenario::{InitContext, Scenario, ScenarioError, User};
use crate::throttle::Permit;
use murmuration_model::websocket::{
    parse_url, ConnectStep, Outgoing, ReceiveStep, SendStep, WebSocketPlan, WsStep, WsUrl,
};

mod handshake;

/// Messages a user keeps for later receives; the oldest go first.
pub const INBOX: usize = 64;

/// Pause after a failed connect before the iteration ends, so that a target that is down
/// is not hammered in a tight loop (the failure is counted all the same).
const CONNECT_BACKOFF: Duration = Duration::from_millis(100);

/// A user's socket: plain TCP, or TLS (boxed: its state is large, and only `wss://`
/// users pay for it).
pub type WsSocket = Either<TcpStream, Box<tokio_rustls::client::TlsStream<TcpStream>>>;

/// A user's connection.
pub type WsConnection = WebSocketStream<WsSocket>;

/// Buffers sized for many mostly idle connections: a read buffer of 512 bytes (at most 512
/// bytes per read; grown for a larger message while it is read), and writes go out at once
/// rather than gathered in a buffer of their own. tungstenite keeps a grown buffer (read or
/// write) for the connection's life, and gives no way to shrink it: a user that once
/// received or sent a large message holds that much until its connection closes.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(512)
        .write_buffer_size(0)
        .max_message_size(Some(16 << 20))
}

/// What a user keeps between iterations: its connection and the messages it kept.
#[derive(Default)]
struct WsUser {
    conn: Option<WsConnection>,
    inbox: VecDeque<Message>,
    /// When this user last sent each send step (by step index), for `after`.
    sent: Vec<(usize, Instant)>,
    permit: Option<Permit>,
}

/// The scenario bound to a test: step ids interned, TLS configured.
pub struct WsState {
    steps: Vec<StepId>,
    tls: std::sync::Arc<rustls::ClientConfig>,
}

fn fail(kind: ErrorKind, message: impl Into<String>) -> ScenarioError {
    ScenarioError::User {
        kind,
        message: message.into(),
    }
}

impl Scenario for WebSocketPlan {
    type State = WsState;

    async fn init(&self, ctx: &InitContext) -> Result<WsState, ScenarioError> {
        for name in self.throttles() {
            if ctx.env.throttles.get(&name).is_none() {
                return Err(ScenarioError::Unknown(format!(
                    "a throttle step names {name:?}, which is not defined"
                )));
            }
        }
        Ok(WsState {
            steps: self.names.iter().map(|n| ctx.step(n)).collect(),
            // The same TLS settings as the http scenario (ALPN http/1.1, as RFC 6455 asks).
            tls: ClientConfig::new(false, self.insecure).tls,
        })
    }

    // Not an `async fn`, which would store its arguments twice (rust-lang/rust#62958):
    // this future is part of every user's memory.
    #[allow(clippy::manual_async_fn)]
    fn start(
        &self,
        user: &mut User,
        state: &WsState,
    ) -> impl std::future::Future<Output = Result<(), ScenarioError>> + Send {
        async move {
            let mut us = user.take_extension::<WsUser>().unwrap_or_default();
            let r = run_steps(self, state, user, &mut us, &self.steps).await;
            // Kept only while it holds something: a user without a connection costs nothing.
            if us.conn.is_some() || !us.inbox.is_empty() {
                user.put_extension(us);
            }
            r
        }
    }
}

async fn run_steps(
    plan: &WebSocketPlan,
    state: &WsState,
    user: &mut User,
    us: &mut WsUser,
    steps: &[WsStep],
) -> Result<(), ScenarioError> {
    for step in steps {
        match step {
            // Inline, because an idle user spends its life here: its future is this timer
            // and a read of its connection. Every other step runs boxed, so that its state
            // is allocated only while it runs.
            WsStep::Think { min, max } => {
                let d = if min == max {
                    *min
                } else {
                    let (a, b) = (min.as_micros() as u64, max.as_micros() as u64);
                    Duration::from_micros(user.rng().random_range(a..=b))
                };
                think(us, d).await;
            }
            WsStep::Loop { times, steps } => {
                for _ in 0..*times {
                    Box::pin(run_steps(plan, state, user, us, steps)).await?;
                }
            }
            other => Box::pin(run_step(plan, state, user, us, other)).await?,
        }
    }
    Ok(())
}

/// Waits `d` while reading the connection: pings are answered by the read, messages kept
/// for later receives, a close noticed (the next step that needs the connection fails).
async fn think(us: &mut WsUser, d: Duration) {
    let Some(conn) = us.conn.as_mut() else {
        tokio::time::sleep(d).await;
        return;
    };
    let sleep = tokio::time::sleep(d);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            _ = &mut sleep => return,
            m = conn.next() => match m {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => keep(&mut us.inbox, m),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    us.conn = None;
                    us.inbox.clear();
                    sleep.await;
                    return;
                }
            },
        }
    }
}

fn keep(inbox: &mut VecDeque<Message>, m: Message) {
    if inbox.len() == INBOX {
        inbox.pop_front();
    }
    inbox.push_back(m);
}

async fn run_step(
    plan: &WebSocketPlan,
    state: &WsState,
    user: &mut User,
    us: &mut WsUser,
    step: &WsStep,
) -> Result<(), ScenarioError> {
    match step {
        WsStep::Connect(c) => connect(plan, state, user, us, c).await,
        WsStep::Send(s) => send(plan, state, user, us, s).await,
        WsStep::Receive(r) => receive(state, user, us, r).await,
        WsStep::Close { index } => close(plan, state, user, us, *index).await,
        WsStep::Throttle(name) => {
            us.permit = Some(user.throttle(name).await?);
            Ok(())
        }
        WsStep::Coordinate(name) => user.coordinate_into_locals(name).await,
        WsStep::Think { .. } | WsStep::Loop { .. } => unreachable!("run by run_steps"),
    }
}

/// Records `index` as failed with `kind` and ends the iteration when the connection is
/// gone (`closed`).
fn failed(
    state: &WsState,
    user: &mut User,
    us: &mut WsUser,
    index: usize,
    started: std::time::Instant,
    kind: ErrorKind,
    message: String,
) -> Result<(), ScenarioError> {
    us.permit = None;
    user.record(state.steps[index], started, Some(kind));
    tracing::trace!(user = user.id(), kind = ?kind, "{message}");
    if matches!(kind, ErrorKind::Closed | ErrorKind::Protocol) {
        us.conn = None;
        us.inbox.clear();
        return Err(fail(kind, message));
    }
    Ok(())
}

fn closed_kind(e: &tungstenite::Error) -> ErrorKind {
    use tungstenite::Error as E;
    match e {
        E::ConnectionClosed | E::AlreadyClosed | E::Io(_) => ErrorKind::Closed,
        E::Tls(_) => ErrorKind::Tls,
        _ => ErrorKind::Protocol,
    }
}

async fn connect(
    plan: &WebSocketPlan,
    state: &WsState,
    user: &mut User,
    us: &mut WsUser,
    c: &ConnectStep,
) -> Result<(), ScenarioError> {
    if let Some(conn) = us.conn.as_mut() {
        // Held from before: keep it if it is still open (what came meanwhile is kept).
        loop {
            match futures::FutureExt::now_or_never(conn.next()) {
                None => return Ok(()),
                Some(Some(Ok(m @ (Message::Text(_) | Message::Binary(_))))) => {
                    keep(&mut us.inbox, m)
                }
                Some(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => {}
                Some(_) => {
                    us.conn = None;
                    us.inbox.clear();
                    break;
                }
            }
        }
    }
    let started = user.now();
    let opened = match request(user, c) {
        Ok((target, req)) => tokio::time::timeout(plan.timeout, open(state, target, req)).await,
        Err(e) => Ok(Err(e)),
    };
    let conn = match opened {
        Ok(Ok(conn)) => conn,
        Ok(Err((kind, message))) => {
            us.permit = None;
            user.record(state.steps[c.index], started, Some(kind));
            tracing::trace!(user = user.id(), kind = ?kind, "{message}");
            tokio::time::sleep(CONNECT_BACKOFF).await;
            return Err(fail(kind, message));
        }
        Err(_) => {
            us.permit = None;
            user.record(state.steps[c.index], started, Some(ErrorKind::Timeout));
            tokio::time::sleep(CONNECT_BACKOFF).await;
            return Err(fail(ErrorKind::Timeout, "no connection in time"));
        }
    };
    us.permit = None;
    user.record(state.steps[c.index], started, None);
    us.conn = Some(conn);
    Ok(())
}

/// The handshake request of `c` for `user`: rendered before any wait (a `User` stays on
/// its own task).
fn request(
    user: &User,
    c: &ConnectStep,
) -> Result<(WsUrl, tungstenite::handshake::client::Request), (ErrorKind, String)> {
    let url = c.url.render(user);
    let target = parse_url(&url).map_err(|e| (ErrorKind::Other, e))?;
    let mut request = target
        .uri
        .clone()
        .into_client_request()
        .map_err(|e| (ErrorKind::Other, format!("{url}: {e}")))?;
    for (name, value) in &c.headers {
        let v = value.render(user);
        let v = HeaderValue::from_str(&v).map_err(|_| {
            (
                ErrorKind::Other,
                format!("header {name} rendered to an invalid value {v:?}"),
            )
        })?;
        request.headers_mut().append(name.clone(), v);
    }
    if !c.subprotocols.is_empty() {
        let v = HeaderValue::from_str(&c.subprotocols.join(", "))
            .map_err(|e| (ErrorKind::Other, e.to_string()))?;
        request.headers_mut().append("sec-websocket-protocol", v);
    }
    Ok((target, request))
}

/// TCP, TLS for `wss://`, then the WebSocket handshake.
async fn open(
    state: &WsState,
    target: WsUrl,
    request: tungstenite::handshake::client::Request,
) -> Result<WsConnection, (ErrorKind, String)> {
    let url = &target.uri;
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| {
            if crate::limits::is_out_of_files(&e) {
                crate::limits::tell_out_of_files(&e);
            }
            (ErrorKind::Connect, format!("connect to {url}: {e}"))
        })?;
    let _ = tcp.set_nodelay(true);
    let socket: WsSocket = if target.tls {
        let name = rustls::pki_types::ServerName::try_from(target.host.clone())
            .map_err(|e| (ErrorKind::Tls, format!("{}: {e}", target.host)))?;
        let tls = tokio_rustls::TlsConnector::from(state.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| (ErrorKind::Tls, format!("TLS with {url}: {e}")))?;
        Either::Right(Box::new(tls))
    } else {
        Either::Left(tcp)
    };
    handshake::handshake(socket, request, url).await
}

async fn send(
    plan: &WebSocketPlan,
    state: &WsState,
    user: &mut User,
    us: &mut WsUser,
    s: &SendStep,
) -> Result<(), ScenarioError> {
    let started = user.now();
    let text = match &s.message {
        Outgoing::Text(t) => t.render(user),
        Outgoing::Json(j) => j.render(user).to_string(),
    };
    let Some(conn) = us.conn.as_mut() else {
        let m = "no open connection to send on".to_owned();
        return failed(state, user, us, s.index, started, ErrorKind::Closed, m);
    };
    match tokio::time::timeout(plan.timeout, conn.send(Message::text(text))).await {
        Ok(Ok(())) => {
            us.permit = None;
            user.record(state.steps[s.index], started, None);
            let at = Instant::from_std(started);
            match us.sent.iter_mut().find(|(i, _)| *i == s.index) {
                Some(slot) => slot.1 = at,
                None => us.sent.push((s.index, at)),
            }
            Ok(())
        }
        Ok(Err(e)) => {
            let kind = closed_kind(&e);
            failed(
                state,
                user,
                us,
                s.index,
                started,
                kind,
                format!("send: {e}"),
            )
        }
        Err(_) => {
            let m = "the server took no message in time".to_owned();
            failed(state, user, us, s.index, started, ErrorKind::Timeout, m)
        }
    }
}

/// What a receive waits for, rendered for this user.
struct Wanted<'a> {
    needle: Option<String>,
    json: Option<(&'a serde_json_path::JsonPath, serde_json::Value)>,
}

impl Wanted<'_> {
    /// Whether `m` matches; its JSON when it was parsed.
    fn matches(&self, m: &Message) -> (bool, Option<serde_json::Value>) {
        let bytes: &[u8] = match m {
            Message::Text(t) => t.as_bytes(),
            Message::Binary(b) => b,
            _ => return (false, None),
        };
        if let Some(n) = &self.needle {
            if !contains(bytes, n.as_bytes()) {
                return (false, None);
            }
        }
        match &self.json {
            None => (true, None),
            Some((path, want)) => match serde_json::from_slice::<serde_json::Value>(bytes) {
                Ok(doc) => {
                    let ok = path.query(&doc).first() == Some(want);
                    (ok, Some(doc))
                }
                Err(_) => (false, None),
            },
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

async fn receive(
    state: &WsState,
    user: &mut User,
    us: &mut WsUser,
    r: &ReceiveStep,
) -> Result<(), ScenarioError> {
    let started = user.now();
    let from = r
        .after
        .and_then(|i| us.sent.iter().find(|(s, _)| *s == i))
        .map(|(_, t)| t.into_std())
        .unwrap_or(started);
    let wanted = Wanted {
        needle: r.body_contains.as_ref().map(|t| t.render(user)),
        json: r.json.as_ref().map(|(p, v)| (p, v.render(user))),
    };
    // First what was kept, oldest first.
    let mut found = None;
    for i in 0..us.inbox.len() {
        let (ok, doc) = wanted.matches(&us.inbox[i]);
        if ok {
            found = Some((us.inbox.remove(i).expect("in range"), doc));
            break;
        }
    }
    if found.is_none() {
        let Some(conn) = us.conn.as_mut() else {
            let m = "no open connection to receive on".to_owned();
            return failed(state, user, us, r.index, started, ErrorKind::Closed, m);
        };
        let deadline = Instant::now() + r.timeout;
        loop {
            let m = match tokio::time::timeout_at(deadline, conn.next()).await {
                Err(_) => {
                    let m = "no matching message in time".to_owned();
                    return failed(state, user, us, r.index, started, ErrorKind::Timeout, m);
                }
                Ok(None) | Ok(Some(Ok(Message::Close(_)))) => {
                    let m = "the server closed the connection".to_owned();
                    return failed(state, user, us, r.index, started, ErrorKind::Closed, m);
                }
                Ok(Some(Err(e))) => {
                    let kind = closed_kind(&e);
                    return failed(state, user, us, r.index, started, kind, format!("{e}"));
                }
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => continue,
                Ok(Some(Ok(m))) => m,
            };
            let (ok, doc) = wanted.matches(&m);
            if ok {
                found = Some((m, doc));
                break;
            }
            user.count_unmatched();
            keep(&mut us.inbox, m);
        }
    }
    let (m, doc) = found.expect("found or returned");
    if !r.extract.is_empty() {
        let doc = match doc {
            Some(d) => Ok(d),
            None => match &m {
                Message::Text(t) => serde_json::from_str(t.as_str()),
                Message::Binary(b) => serde_json::from_slice(b),
                _ => unreachable!("only data messages match"),
            },
        };
        let Ok(doc) = doc else {
            let m = "the matching message is not JSON".to_owned();
            return failed(state, user, us, r.index, started, ErrorKind::Extract, m);
        };
        for (var, path) in &r.extract {
            match path.query(&doc).first() {
                Some(v) => user.locals.insert(var.clone(), v.clone()),
                None => {
                    let m = format!("{path} matched nothing for {var}");
                    return failed(state, user, us, r.index, started, ErrorKind::Extract, m);
                }
            }
        }
    }
    us.permit = None;
    user.record(state.steps[r.index], from, None);
    Ok(())
}

async fn close(
    plan: &WebSocketPlan,
    state: &WsState,
    user: &mut User,
    us: &mut WsUser,
    index: usize,
) -> Result<(), ScenarioError> {
    let started = user.now();
    us.inbox.clear();
    let Some(mut conn) = us.conn.take() else {
        let m = "no open connection to close".to_owned();
        return failed(state, user, us, index, started, ErrorKind::Closed, m);
    };
    // Our close frame, then read until the server's answers it (what comes meanwhile is
    // dropped: the user is leaving).
    let handshake = async {
        conn.close(None).await?;
        while let Some(m) = conn.next().await {
            m?;
        }
        Ok::<(), tungstenite::Error>(())
    };
    match tokio::time::timeout(plan.timeout, handshake).await {
        Ok(Ok(())) | Ok(Err(tungstenite::Error::ConnectionClosed)) => {
            us.permit = None;
            user.record(state.steps[index], started, None);
            Ok(())
        }
        Ok(Err(e)) => {
            let kind = closed_kind(&e);
            failed(state, user, us, index, started, kind, format!("close: {e}"))
        }
        Err(_) => {
            let m = "the server did not answer the close in time".to_owned();
            failed(state, user, us, index, started, ErrorKind::Timeout, m)
        }
    }
}
