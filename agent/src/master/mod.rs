//! `murmur master`: one per test. It assigns user ids to agents, paces users at
//! `userRate`, shares throttles, hosts coordinators, merges the agents' metrics, and serves
//! the HTTP API of [`murmuration_crds::api`] — agents connect on the same port.
//!
//! One task owns the books ([`state::Core`]); connections and API calls talk to it through
//! a channel, so that nothing in the books needs a lock.

pub mod metrics;
pub mod remote_write;
pub mod state;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use murmuration_crds::api::{self, ApiError, MasterStatus, SetAgents, SetUsers, SetVars, Stop};
use murmuration_crds::{CoordinatorSpec, ThrottleSpec};

use murmuration_model::CustomScenarios;

use crate::plan::{ManifestError, Manifests};
use crate::registry::Registry;
use crate::report::Report;
use crate::scenario::Vars;
use crate::wire::{read_frame, write_frame, FromAgent, ToAgent, FRAME_TIMEOUT};
use remote_write::{RemoteWriteConfig, RemoteWriter};
use state::{Core, MasterOptions};

/// Largest API request body.
const MAX_BODY: usize = 1 << 20;

/// Why a master could not start.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    /// The test is invalid.
    #[error(transparent)]
    Invalid(#[from] ManifestError),
    /// The token is unusable.
    #[error("the token must have at least 16 characters")]
    WeakToken,
    /// `spec.metrics.remoteWrite` cannot push: its URL or token cannot make a request.
    #[error("spec.metrics.remoteWrite: {0}")]
    RemoteWrite(String),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// What a master needs.
pub struct MasterConfig {
    /// Where the API (and agents) listen.
    pub listen: SocketAddr,
    /// The test's token.
    pub token: String,
    /// The test's manifests, read (they go to the agents as the model's JSON).
    pub manifests: Manifests,
    /// Custom scenarios this binary knows (to check the test).
    pub registry: Registry,
    /// Settings.
    pub options: MasterOptions,
    /// The bearer token of `spec.metrics.remoteWrite` (from its Secret in a cluster, from
    /// a file or the environment outside one).
    pub remote_write_token: Option<String>,
}

/// A call of the API, as the books see it.
enum Call {
    Status,
    Metrics,
    Users(u64),
    Agents(u64),
    Vars(Vars),
    PutThrottle(String, ThrottleSpec),
    DeleteThrottle(String),
    PutCoordinator(String, CoordinatorSpec),
    DeleteCoordinator(String),
    Stop(bool),
    Report(Option<usize>),
    Owners,
}

enum Answer {
    Status(Box<MasterStatus>),
    Metrics(Box<metrics::Scrape>),
    Report(Box<Report>),
    Owners(std::collections::BTreeMap<String, Vec<u64>>),
    Error(StatusCode, String),
}

enum Event {
    Hello {
        conn: u64,
        hello: FromAgent,
        tx: mpsc::UnboundedSender<ToAgent>,
        reply: oneshot::Sender<Result<String, String>>,
    },
    Message {
        conn: u64,
        name: String,
        msg: FromAgent,
    },
    Gone {
        conn: u64,
        name: String,
    },
    Api(Call, oneshot::Sender<Answer>),
}

/// A running master.
#[derive(Clone)]
pub struct MasterHandle {
    addr: SocketAddr,
    events: mpsc::UnboundedSender<Event>,
    test: String,
    remote_write: Option<RemoteWriter>,
}

impl MasterHandle {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The test's name.
    pub fn test(&self) -> &str {
        &self.test
    }

    async fn call(&self, call: Call) -> Option<Answer> {
        let (tx, rx) = oneshot::channel();
        self.events.send(Event::Api(call, tx)).ok()?;
        rx.await.ok()
    }

    /// The status now.
    pub async fn status(&self) -> Option<MasterStatus> {
        match self.call(Call::Status).await? {
            Answer::Status(s) => Some(*s),
            _ => None,
        }
    }

    /// The report so far (the final one once finished).
    pub async fn report(&self) -> Option<Report> {
        match self.call(Call::Report(None)).await? {
            Answer::Report(r) => Some(*r),
            _ => None,
        }
    }

    /// Which agent owns which user ids now.
    pub async fn owners(&self) -> Option<std::collections::BTreeMap<String, Vec<u64>>> {
        match self.call(Call::Owners).await? {
            Answer::Owners(o) => Some(o),
            _ => None,
        }
    }

    /// Changes the desired users.
    pub async fn set_users(&self, users: u64) {
        let _ = self.call(Call::Users(users)).await;
    }

    /// Ends the test.
    pub async fn stop(&self, forced: bool) {
        let _ = self.call(Call::Stop(forced)).await;
    }

    /// Ends the remote-write push before the master exits: the figures now are sampled a
    /// last time and everything is flushed within [`remote_write::FLUSH_LIMIT`].
    /// Returns the batches left undelivered (0 without remote-write).
    pub async fn finish_remote_write(&self) -> usize {
        let Some(w) = &self.remote_write else {
            return 0;
        };
        // The figures now are the last ones (the final ones once finished; the sampler may
        // not have taken them yet, and one more sample of the same values costs nothing).
        let last = match self.call(Call::Metrics).await {
            Some(Answer::Metrics(s)) => Some(*s),
            _ => None,
        };
        w.finish(last).await
    }
}

/// Starts a master: checks the test, binds, and serves until the process ends.
pub async fn start(config: MasterConfig) -> Result<MasterHandle, MasterError> {
    if config.token.len() < 16 {
        return Err(MasterError::WeakToken);
    }
    let plan = murmuration_model::compile(
        config.manifests.clone(),
        &Vars::new(),
        CustomScenarios::Known(&config.registry.names()),
    )?;
    let listener =
        TcpListener::bind(config.listen)
            .await
            .map_err(|source| MasterError::Listen {
                addr: config.listen,
                source,
            })?;
    let addr = listener
        .local_addr()
        .map_err(|source| MasterError::Listen {
            addr: config.listen,
            source,
        })?;
    let test = plan.name.clone();
    let push = plan.remote_write.clone();
    let core = Core::new(
        plan,
        config.manifests.to_json(),
        config.options,
        Instant::now(),
    );
    let (events, rx) = mpsc::unbounded_channel();
    tokio::spawn(books(core, rx));
    let remote_write = match push {
        Some(p) => {
            let config = RemoteWriteConfig {
                url: p.url,
                token: config.remote_write_token.clone(),
                interval: p.interval,
            };
            let events = events.clone();
            let source: remote_write::Source = Box::new(move || {
                let events = events.clone();
                Box::pin(async move {
                    let (tx, rx) = oneshot::channel();
                    events.send(Event::Api(Call::Metrics, tx)).ok()?;
                    match rx.await.ok()? {
                        Answer::Metrics(s) => Some(*s),
                        _ => None,
                    }
                })
            });
            Some(RemoteWriter::start(config, source).map_err(MasterError::RemoteWrite)?)
        }
        None => None,
    };
    let shared = Arc::new(Server {
        token: config.token,
        events: events.clone(),
        conns: AtomicU64::new(0),
        remote_write: remote_write.clone(),
    });
    tokio::spawn(accept(listener, shared));
    tracing::info!(%addr, test = %test, "master listening");
    Ok(MasterHandle {
        addr,
        events,
        test,
        remote_write,
    })
}

/// The task that owns the books.
async fn books(mut core: Core, mut events: mpsc::UnboundedReceiver<Event>) {
    let namespace = metrics::namespace();
    let mut links: HashMap<String, (u64, mpsc::UnboundedSender<ToAgent>)> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let send = |links: &HashMap<String, (u64, mpsc::UnboundedSender<ToAgent>)>,
                out: state::Outbox| {
        for (agent, msg) in out {
            if let Some((_, tx)) = links.get(&agent) {
                let _ = tx.send(msg);
            }
        }
    };
    loop {
        let event = tokio::select! {
            e = events.recv() => match e {
                Some(e) => e,
                None => return,
            },
            _ = tick.tick() => {
                let now = Instant::now();
                for (name, conn) in core.silent_agents(now) {
                    tracing::warn!(agent = %name, "agent silent for too long: dropping its connection");
                    if links.get(&name).is_some_and(|(c, _)| *c == conn) {
                        links.remove(&name);
                    }
                    core.disconnected(conn, &name, now);
                }
                let out = core.tick(now);
                send(&links, out);
                continue;
            }
        };
        let now = Instant::now();
        match event {
            Event::Hello {
                conn,
                hello,
                tx,
                reply,
            } => {
                let name = match &hello {
                    FromAgent::Hello { name, .. } => name.clone(),
                    _ => String::new(),
                };
                match core.hello(conn, hello, now) {
                    Ok(out) => {
                        links.insert(name.clone(), (conn, tx));
                        send(&links, out);
                        let shares = core.shares_of(&name);
                        send(&links, vec![(name.clone(), ToAgent::Shares { shares })]);
                        let _ = reply.send(Ok(name));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Event::Message { conn, name, msg } => {
                let out = core.from_agent(conn, &name, msg, now);
                send(&links, out);
            }
            Event::Gone { conn, name } => {
                if links.get(&name).is_some_and(|(c, _)| *c == conn) {
                    links.remove(&name);
                }
                core.disconnected(conn, &name, now);
            }
            Event::Api(call, reply) => {
                let answer = match call {
                    Call::Status => Answer::Status(Box::new(core.status(now))),
                    Call::Metrics => Answer::Metrics(Box::new(metrics::Scrape {
                        status: core.status(now),
                        namespace: namespace.clone(),
                        steps: core.step_totals(),
                        remote_write: None,
                        iterations: core.iteration_durations(),
                    })),
                    Call::Users(n) => match core.set_users(n) {
                        Ok(()) => Answer::Status(Box::new(core.status(now))),
                        Err(e) => Answer::Error(StatusCode::BAD_REQUEST, e),
                    },
                    Call::Agents(n) => match core.set_agents(n) {
                        Ok(()) => Answer::Status(Box::new(core.status(now))),
                        Err(e) => Answer::Error(StatusCode::BAD_REQUEST, e),
                    },
                    Call::Vars(v) => {
                        core.set_vars(v);
                        Answer::Status(Box::new(core.status(now)))
                    }
                    Call::PutThrottle(name, spec) => match core.set_throttle(&name, spec, now) {
                        Ok(()) => Answer::Status(Box::new(core.status(now))),
                        Err(e) => Answer::Error(StatusCode::BAD_REQUEST, e),
                    },
                    Call::DeleteThrottle(name) => {
                        if core.delete_throttle(&name) {
                            Answer::Status(Box::new(core.status(now)))
                        } else {
                            Answer::Error(StatusCode::NOT_FOUND, format!("no throttle {name:?}"))
                        }
                    }
                    Call::PutCoordinator(name, spec) => match core.set_coordinator(&name, spec) {
                        Ok(out) => {
                            send(&links, out);
                            Answer::Status(Box::new(core.status(now)))
                        }
                        Err(e) => Answer::Error(StatusCode::BAD_REQUEST, e),
                    },
                    Call::DeleteCoordinator(name) => match core.delete_coordinator(&name) {
                        Some(out) => {
                            send(&links, out);
                            Answer::Status(Box::new(core.status(now)))
                        }
                        None => {
                            Answer::Error(StatusCode::NOT_FOUND, format!("no coordinator {name:?}"))
                        }
                    },
                    Call::Stop(forced) => {
                        core.stop(forced, now);
                        let out = core.tick(now);
                        send(&links, out);
                        Answer::Status(Box::new(core.status(now)))
                    }
                    Call::Report(max_points) => {
                        let mut r = match core.final_report() {
                            Some(r) => r.clone(),
                            None => core.build(false, now),
                        };
                        if let Some(n) = max_points {
                            r = crate::report::io::downsample(&r, n);
                        }
                        Answer::Report(Box::new(r))
                    }
                    Call::Owners => Answer::Owners(core.owners()),
                };
                let _ = reply.send(answer);
            }
        }
    }
}

struct Server {
    token: String,
    events: mpsc::UnboundedSender<Event>,
    conns: AtomicU64,
    remote_write: Option<RemoteWriter>,
}

async fn accept(listener: TcpListener, server: Arc<Server>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let server = server.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let server = server.clone();
                async move { Ok::<_, Infallible>(handle(server, peer, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .header_read_timeout(Duration::from_secs(10))
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
}

type Body = Full<Bytes>;

fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts")
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    json(
        status,
        &ApiError {
            error: message.into(),
        },
    )
}

fn authorized(server: &Server, req: &Request<Incoming>) -> bool {
    let Some(value) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(token) = value.strip_prefix("Bearer ") else {
        return false;
    };
    // Constant time, so that the token cannot be guessed byte by byte.
    let (a, b) = (token.as_bytes(), server.token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn body_of<T: for<'de> serde::Deserialize<'de>>(
    req: Request<Incoming>,
) -> Result<T, Response<Body>> {
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| error(StatusCode::PAYLOAD_TOO_LARGE, format!("request body: {e}")))?
        .to_bytes();
    let de = &mut serde_json::Deserializer::from_slice(&bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        error(
            StatusCode::BAD_REQUEST,
            format!("request body: {path}: {}", e.inner()),
        )
    })
}

async fn handle(server: Arc<Server>, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    use tracing::Instrument;
    let span = tracing::info_span!("request", method = %req.method(), path = %req.uri().path());
    handle_request(server, peer, req).instrument(span).await
}

async fn handle_request(
    server: Arc<Server>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    if path == api::HEALTH {
        return Response::new(Full::new(Bytes::from_static(b"ok")));
    }
    // `/metrics` is open, as `/healthz` is: the figures carry no secret and change
    // nothing, and a PodMonitor can carry one static credential at most, while each test
    // has its own token. Every other call needs the token.
    let open = path == api::METRICS && method == Method::GET;
    if !open && !authorized(&server, &req) {
        tracing::warn!(%peer, %method, %path, "refused: missing or wrong token");
        return error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
    }
    if path == api::AGENT_CONNECT {
        return connect_agent(server, peer, req);
    }
    let call = |c: Call| async {
        let (tx, rx) = oneshot::channel();
        if server.events.send(Event::Api(c, tx)).is_err() {
            return Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "master is shutting down",
            ));
        }
        rx.await
            .map_err(|_| error(StatusCode::SERVICE_UNAVAILABLE, "master is shutting down"))
    };
    let answer = match (&method, path.as_str()) {
        (&Method::GET, api::STATUS) => call(Call::Status).await,
        (&Method::GET, api::METRICS) => {
            return match call(Call::Metrics).await {
                Ok(Answer::Metrics(mut s)) => {
                    s.remote_write = server.remote_write.as_ref().map(RemoteWriter::figures);
                    Response::builder()
                        .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
                        .body(Full::new(Bytes::from(metrics::prometheus_text(&s))))
                        .expect("static response parts")
                }
                Ok(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "unexpected answer"),
                Err(r) => r,
            };
        }
        (&Method::GET, api::REPORT) => {
            let max = req.uri().query().and_then(|q| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("maxPoints="))
                    .and_then(|v| v.parse::<usize>().ok())
            });
            call(Call::Report(max)).await
        }
        (&Method::PUT, api::USERS) => match body_of::<SetUsers>(req).await {
            Ok(b) => call(Call::Users(b.users)).await,
            Err(r) => return r,
        },
        (&Method::PUT, api::AGENTS) => match body_of::<SetAgents>(req).await {
            Ok(b) => call(Call::Agents(b.agents)).await,
            Err(r) => return r,
        },
        (&Method::PUT, api::VARS) => match body_of::<SetVars>(req).await {
            Ok(b) => call(Call::Vars(b.vars.into_iter().collect())).await,
            Err(r) => return r,
        },
        (&Method::POST, api::STOP) => match body_of::<Stop>(req).await {
            Ok(b) => call(Call::Stop(b.forced)).await,
            Err(r) => return r,
        },
        (m, p) if p.starts_with(api::THROTTLES) || p.starts_with(api::COORDINATORS) => {
            let throttle = p.starts_with(api::THROTTLES);
            let prefix = if throttle {
                api::THROTTLES
            } else {
                api::COORDINATORS
            };
            let name = p[prefix.len()..].trim_start_matches('/').to_owned();
            if name.is_empty() || name.contains('/') {
                return error(StatusCode::NOT_FOUND, format!("no such path {p}"));
            }
            match (m, throttle) {
                (&Method::PUT, true) => match body_of::<ThrottleSpec>(req).await {
                    Ok(spec) => call(Call::PutThrottle(name, spec)).await,
                    Err(r) => return r,
                },
                (&Method::DELETE, true) => call(Call::DeleteThrottle(name)).await,
                (&Method::PUT, false) => match body_of::<CoordinatorSpec>(req).await {
                    Ok(spec) => call(Call::PutCoordinator(name, spec)).await,
                    Err(r) => return r,
                },
                (&Method::DELETE, false) => call(Call::DeleteCoordinator(name)).await,
                _ => return error(StatusCode::METHOD_NOT_ALLOWED, format!("{m} {p}")),
            }
        }
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                format!("no such call: {method} {path}"),
            )
        }
    };
    match answer {
        Ok(Answer::Status(s)) => json(StatusCode::OK, &*s),
        Ok(Answer::Metrics(_)) => error(StatusCode::INTERNAL_SERVER_ERROR, "unexpected answer"),
        Ok(Answer::Report(r)) => json(StatusCode::OK, &*r),
        Ok(Answer::Owners(o)) => json(StatusCode::OK, &o),
        Ok(Answer::Error(code, e)) => error(code, e),
        Err(r) => r,
    }
}

/// Turns the request into an agent connection (HTTP upgrade).
fn connect_agent(
    server: Arc<Server>,
    peer: SocketAddr,
    mut req: Request<Incoming>,
) -> Response<Body> {
    use tracing::Instrument;
    let wanted = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !wanted.eq_ignore_ascii_case(api::AGENT_PROTOCOL) {
        tracing::warn!(%peer, wanted, "refused: agent protocol not spoken");
        return Response::builder()
            .status(StatusCode::UPGRADE_REQUIRED)
            .header(header::UPGRADE, api::AGENT_PROTOCOL)
            .body(Full::new(Bytes::from(format!(
                "this master speaks {}",
                api::AGENT_PROTOCOL
            ))))
            .expect("static response parts");
    }
    let conn = server.conns.fetch_add(1, Ordering::Relaxed) + 1;
    let upgrade = hyper::upgrade::on(&mut req);
    let events = server.events.clone();
    tokio::spawn(
        async move {
            match upgrade.await {
                Ok(io) => serve_agent(TokioIo::new(io), conn, peer, events).await,
                Err(e) => tracing::warn!(%peer, "agent upgrade failed: {e}"),
            }
        }
        .instrument(
            tracing::info_span!("agent connection", %peer, conn, agent = tracing::field::Empty),
        ),
    );
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, api::AGENT_PROTOCOL)
        .body(Full::new(Bytes::new()))
        .expect("static response parts")
}

/// One agent's connection: its hello, then frames both ways until either side ends.
async fn serve_agent<IO>(io: IO, conn: u64, peer: SocketAddr, events: mpsc::UnboundedSender<Event>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(io);
    let hello =
        match tokio::time::timeout(FRAME_TIMEOUT, read_frame::<_, FromAgent>(&mut reader)).await {
            Ok(Ok(Some(h @ FromAgent::Hello { .. }))) => h,
            Ok(Ok(Some(_))) => {
                tracing::warn!(%peer, "agent refused: its first message is not hello");
                return;
            }
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                tracing::warn!(%peer, "agent refused: {e}");
                return;
            }
            Err(_) => {
                tracing::warn!(%peer, "agent refused: no hello within {FRAME_TIMEOUT:?}");
                return;
            }
        };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (reply_tx, reply_rx) = oneshot::channel();
    if events
        .send(Event::Hello {
            conn,
            hello,
            tx,
            reply: reply_tx,
        })
        .is_err()
    {
        return;
    }
    let name = match reply_rx.await {
        Ok(Ok(name)) => name,
        Ok(Err(e)) => {
            tracing::warn!(%peer, "agent refused: {e}");
            return;
        }
        Err(_) => return,
    };
    tracing::Span::current().record("agent", name.as_str());
    let reader_events = events.clone();
    let reader_name = name.clone();
    let read = tokio::spawn(async move {
        loop {
            match read_frame::<_, FromAgent>(&mut reader).await {
                Ok(Some(msg)) => {
                    if reader_events
                        .send(Event::Message {
                            conn,
                            name: reader_name.clone(),
                            msg,
                        })
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(agent = %reader_name, "agent connection dropped: {e}");
                    return;
                }
            }
        }
    });
    let abort = read.abort_handle();
    let write = async {
        while let Some(msg) = rx.recv().await {
            match tokio::time::timeout(FRAME_TIMEOUT, write_frame(&mut writer, &msg)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!("cannot write to agent: {e}");
                    return;
                }
                Err(_) => {
                    tracing::warn!("agent does not read: dropping it");
                    return;
                }
            }
        }
    };
    tokio::select! {
        _ = read => {}
        _ = write => {}
    }
    abort.abort();
    let _ = events.send(Event::Gone { conn, name });
}
