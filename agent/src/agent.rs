//! `murmur agent`: runs the users its master assigns, and reports every second.
//!
//! The agent connects to the master with the test's token, says who it is and what it
//! still runs (so that a restarted master learns the test back, and a master that gave its
//! users away meanwhile can stop them), receives the test, and then follows orders: start
//! and stop users by id, new variables, throttle shares, coordinator releases, the end.
//! When the master is away it keeps its users running and its throttle shares (so the
//! global limit still holds), keeps measuring, and reconnects; the measurements it kept
//! go to the master when it is back.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{Empty, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use murmuration_crds::api;
use murmuration_crds::units::parse_duration;

use murmuration_crds::profile::{IdPool, LoadProfile};

use crate::arrivals::{ArrivalRunner, IdSource};
use crate::coordinator::{Coordination, Coordinators, RemoteJoin};
use crate::engine::{now_ms, Engine, EngineError};
use crate::metrics::Period;
use crate::metrics::StepNames;
use crate::plan::{plan_from_text, TestPlan};
use crate::registry::Registry;
use crate::scenario::{TestEnv, UserId, Vars};
use crate::throttle::{Limit, Throttle, Throttles};
use crate::wire::{
    read_frame, write_frame, AgentPoint, FromAgent, Ids, Memo, ThrottleDemand, ToAgent, WireError,
    WirePeriod, FRAME_TIMEOUT,
};

/// Points kept for a restarted master: four hours of seconds.
const MAX_POINTS: usize = 4 * 3600;

/// What an agent needs.
#[derive(Clone)]
pub struct AgentConfig {
    /// The master: `http://host:port` or `host:port`.
    pub master: String,
    /// This agent's stable name (its pod name).
    pub name: String,
    /// The test's token.
    pub token: String,
    /// Worker threads.
    pub workers: usize,
    /// Custom scenarios this binary knows.
    pub registry: Registry,
    /// Where to answer `/healthz` and `/readyz`, if anywhere.
    pub health: Option<SocketAddr>,
}

/// Why an agent cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The master sent a test this agent cannot run.
    #[error("the master's test cannot run here: {0}")]
    Test(String),
    /// The users could not start.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The health endpoint could not listen.
    #[error("cannot listen on {addr}: {source}")]
    Health {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Why one connection attempt failed.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("cannot reach the master at {0}: {1}")]
    Connect(String, #[source] std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("the master refused: {0}")]
    Refused(StatusCode),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("the master closed the connection")]
    Closed,
    #[error("the master did not answer in time")]
    Timeout,
    #[error("the master's first message is not a welcome")]
    NoWelcome,
}

type Io = TokioIo<hyper::upgrade::Upgraded>;

/// A connection attempt in progress (kept across the agent loop's turns, so that a
/// measurement tick never cuts a handshake short).
type Connecting = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(Link, String, Memo), LinkError>> + Send>,
>;

/// An agent's connection to its master.
struct Link {
    writer: WriteHalf<Io>,
    inbound: mpsc::UnboundedReceiver<Result<ToAgent, String>>,
    reader: tokio::task::AbortHandle,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn authority(master: &str) -> String {
    master
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned()
}

/// Connects, upgrades, says hello, and waits for the welcome.
async fn connect(cfg: AgentConfig, hello: FromAgent) -> Result<(Link, String, Memo), LinkError> {
    let authority = authority(&cfg.master);
    let stream = TcpStream::connect(&authority)
        .await
        .map_err(|e| LinkError::Connect(authority.clone(), e))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let req = Request::get(api::AGENT_CONNECT)
        .header(header::HOST, &authority)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, api::AGENT_PROTOCOL)
        .header(header::AUTHORIZATION, format!("Bearer {}", cfg.token))
        .body(Empty::new())
        .expect("static request parts");
    let resp = sender.send_request(req).await?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(LinkError::Refused(resp.status()));
    }
    let io = TokioIo::new(hyper::upgrade::on(resp).await?);
    let (mut reader, mut writer) = tokio::io::split(io);
    tokio::time::timeout(FRAME_TIMEOUT, write_frame(&mut writer, &hello))
        .await
        .map_err(|_| LinkError::Timeout)??;
    let welcome = tokio::time::timeout(FRAME_TIMEOUT, read_frame::<_, ToAgent>(&mut reader))
        .await
        .map_err(|_| LinkError::Timeout)??;
    let (manifests, memo) = match welcome {
        Some(ToAgent::Welcome { manifests, memo }) => (manifests, memo),
        Some(_) => return Err(LinkError::NoWelcome),
        None => return Err(LinkError::Closed),
    };
    let (tx, inbound) = mpsc::unbounded_channel();
    let reader = tokio::spawn(read_loop(reader, tx)).abort_handle();
    Ok((
        Link {
            writer,
            inbound,
            reader,
        },
        manifests,
        memo,
    ))
}

async fn read_loop(mut reader: ReadHalf<Io>, tx: mpsc::UnboundedSender<Result<ToAgent, String>>) {
    loop {
        match read_frame::<_, ToAgent>(&mut reader).await {
            Ok(Some(m)) => {
                if tx.send(Ok(m)).is_err() {
                    return;
                }
            }
            Ok(None) => {
                let _ = tx.send(Err("the master closed the connection".into()));
                return;
            }
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
        }
    }
}

/// How long before each whole second of the test an agent reports (its point must land in
/// that second at the master, timer jitter included).
const REPORT_EARLY_MS: u64 = 50;

/// The agent's own books.
struct Agent {
    cfg: AgentConfig,
    manifests: Option<String>,
    plan: Option<TestPlan>,
    env: Option<Arc<TestEnv>>,
    engine: Option<Engine>,
    /// The engine winding down after `finish`.
    finishing: Option<tokio::task::JoinHandle<(Engine, Period)>>,
    finished: bool,
    memo: Option<Memo>,
    points: VecDeque<AgentPoint>,
    ended: Vec<UserId>,
    shares: BTreeMap<String, u64>,
    joins: mpsc::UnboundedSender<RemoteJoin>,
    registered: Arc<AtomicBool>,
    /// The engine's users, once there is an engine (served at `/users`).
    running: Arc<parking_lot::Mutex<Option<crate::engine::Census>>>,
    /// An open model's arrivals on this agent, once the test has started.
    arrivals: Option<ArrivalRunner>,
    /// Arrival ids received before the arrivals began.
    early_ids: IdPool,
}

impl Agent {
    fn hello(&self) -> FromAgent {
        FromAgent::Hello {
            name: self.cfg.name.clone(),
            running: Ids::of(
                self.engine
                    .as_ref()
                    .map(|e| e.running_ids())
                    .unwrap_or_default(),
            ),
            ended: Ids::of(self.ended.iter().copied()),
            memo: self.memo.clone(),
            points: self.points.iter().cloned().collect(),
            throttles: self.throttle_counts(),
            shares: self.shares.clone(),
            ids_left: self.ids_left(),
        }
    }

    fn ids_left(&self) -> u64 {
        match &self.arrivals {
            Some(a) => a.ids_left(),
            None => self.early_ids.left(),
        }
    }

    /// Follows the memo's split of an open model: begins the arrivals once the test has
    /// started, and takes a new lane when the master re-splits.
    fn follow_split(&mut self) {
        let (Some(plan), Some(memo)) = (&self.plan, &self.memo) else {
            return;
        };
        let LoadProfile::Arrivals(schedule) = &plan.profile else {
            return;
        };
        if memo.started_at_ms == 0 || memo.stopping || self.finishing.is_some() || self.finished {
            return;
        }
        let lane = memo.split.as_ref().and_then(|s| s.lane_of(&self.cfg.name));
        match &mut self.arrivals {
            Some(a) => a.set_lane(lane),
            None => {
                // The schedule's zero is the test's start, on this machine's clock.
                let ago = Duration::from_millis(now_ms().saturating_sub(memo.started_at_ms));
                let now = std::time::Instant::now();
                let origin = now.checked_sub(ago).unwrap_or(now);
                tracing::info!(?lane, "arrivals begin");
                self.arrivals = Some(
                    ArrivalRunner::new(
                        schedule.clone(),
                        origin,
                        lane,
                        IdSource::Pool(std::mem::take(&mut self.early_ids)),
                    )
                    // Counted in the seconds the master files this agent's points under.
                    .with_windows_early(Duration::from_millis(REPORT_EARLY_MS)),
                );
            }
        }
    }

    /// Starts the arrivals due now; says when the next one is.
    fn run_arrivals(&mut self) -> Option<tokio::time::Instant> {
        let (Some(a), Some(engine)) = (&mut self.arrivals, &self.engine) else {
            return None;
        };
        let before = a.dropped_no_id;
        let next = a.run_due(engine, std::time::Instant::now());
        if a.dropped_no_id > before {
            tracing::warn!(
                dropped = a.dropped_no_id - before,
                "arrivals dropped: no arrival id left (is the master away?)"
            );
        }
        next.map(tokio::time::Instant::from_std)
    }

    fn throttle_counts(&self) -> BTreeMap<String, ThrottleDemand> {
        let Some(env) = &self.env else {
            return BTreeMap::new();
        };
        env.throttles
            .all()
            .iter()
            .map(|t| {
                let s = t.stats();
                (
                    t.name().to_owned(),
                    ThrottleDemand {
                        requested: s.requested,
                        executed: s.executed,
                        waiting: s.waiting,
                    },
                )
            })
            .collect()
    }

    /// Sets up the test the master sent (once; a later welcome carries the same test).
    async fn welcome(&mut self, manifests: String, memo: Memo) -> Result<(), AgentError> {
        if let Some(known) = &self.manifests {
            if *known != manifests {
                tracing::error!("the master sent a different test; keeping the one running");
            }
        } else {
            let plan = plan_from_text(
                "the master's test",
                &manifests,
                &self.cfg.registry,
                &Vars::new(),
            )
            .map_err(|e| AgentError::Test(e.to_string()))?;
            let env = Arc::new(TestEnv {
                name: plan.name.clone(),
                vars: ArcSwap::from_pointee(plan.vars.clone()),
                throttles: Throttles::default(),
                coordinators: Coordinators::remote(self.joins.clone()),
                steps: StepNames::default(),
            });
            self.env = Some(env.clone());
            // Throttles exist before any user starts, with no share until the master says.
            self.apply_memo(&memo);
            let engine =
                Engine::start(&plan, &self.cfg.registry, env, self.cfg.workers, true).await?;
            tracing::info!(test = %plan.name, workers = engine.workers(), "test received");
            *self.running.lock() = Some(engine.census());
            self.engine = Some(engine);
            self.plan = Some(plan);
            self.manifests = Some(manifests);
        }
        self.apply_memo(&memo);
        self.follow_split();
        Ok(())
    }

    fn apply_memo(&mut self, memo: &Memo) {
        if self.memo.as_ref().is_some_and(|m| m.version > memo.version) {
            return;
        }
        self.memo = Some(memo.clone());
        let Some(env) = &self.env else {
            return;
        };
        if let Some(vars) = &memo.vars {
            env.vars.store(Arc::new(vars.clone()));
        }
        for (name, spec) in &memo.throttles {
            let interval = match &spec.interval {
                Some(i) => parse_duration(i).unwrap_or(Duration::from_secs(60)),
                None => Duration::from_secs(60),
            };
            let limit = Limit {
                rate: self.shares.get(name).copied().unwrap_or(0),
                interval,
            };
            match env.throttles.get(name) {
                Some(t) if t.limit().interval == interval => {}
                Some(t) => t.set_limit(limit),
                None => env.throttles.insert(Throttle::new(name.clone(), limit)),
            }
        }
        for t in env.throttles.all() {
            if !memo.throttles.contains_key(t.name()) {
                env.throttles.remove(t.name());
                self.shares.remove(t.name());
            }
        }
    }

    fn set_shares(&mut self, shares: BTreeMap<String, u64>) {
        let Some(env) = &self.env else {
            return;
        };
        for (name, share) in shares {
            if let Some(t) = env.throttles.get(&name) {
                let limit = Limit {
                    rate: share,
                    interval: t.limit().interval,
                };
                if t.limit() != limit {
                    t.set_limit(limit);
                }
            }
            self.shares.insert(name, share);
        }
    }

    /// Follows one order.
    fn order(&mut self, msg: ToAgent) {
        match msg {
            ToAgent::Welcome { .. } => tracing::warn!("a second welcome ignored"),
            ToAgent::Start { ids } => {
                if let Some(e) = &self.engine {
                    e.start_users(ids.iter());
                }
            }
            ToAgent::Stop { ids, forced } => {
                if let Some(e) = &self.engine {
                    e.stop_users(ids.iter(), forced);
                }
            }
            ToAgent::Memo { memo } => {
                self.apply_memo(&memo);
                self.follow_split();
            }
            ToAgent::Ids { first, last } => match &mut self.arrivals {
                Some(a) => a.add_ids((first, last)),
                None => self.early_ids.add((first, last)),
            },
            ToAgent::Shares { shares } => self.set_shares(shares),
            ToAgent::Release {
                coordinator,
                user,
                members,
                peers,
                timed_out,
            } => {
                if let Some(env) = &self.env {
                    env.coordinators.release(
                        &coordinator,
                        user,
                        Coordination {
                            members,
                            peers,
                            timed_out,
                        },
                    );
                }
            }
            ToAgent::Finish { forced, grace_ms } => {
                if let (Some(mut a), Some(engine)) = (self.arrivals.take(), &self.engine) {
                    engine.count_arrivals(a.take_all());
                }
                if let Some(mut engine) = self.engine.take() {
                    let grace = if forced {
                        Duration::ZERO
                    } else {
                        Duration::from_millis(grace_ms)
                    };
                    self.finishing = Some(tokio::spawn(async move {
                        let last = engine.finish(grace, std::future::pending()).await;
                        (engine, last)
                    }));
                }
            }
        }
    }

    /// The point of the second that just ended.
    fn point(&mut self, period: &Period) -> AgentPoint {
        let names = self.env.as_ref().map(|e| e.steps.all()).unwrap_or_default();
        let point = AgentPoint {
            at_ms: now_ms(),
            users: self.engine.as_ref().map(|e| e.running()).unwrap_or(0),
            period: WirePeriod::encode(period, &names),
        };
        self.points.push_back(point.clone());
        if self.points.len() > MAX_POINTS {
            self.points.pop_front();
        }
        point
    }

    fn report(&mut self) -> Option<FromAgent> {
        let engine = self.engine.as_ref()?;
        if let Some(a) = &mut self.arrivals {
            engine.count_arrivals(a.take_closed(engine, std::time::Instant::now()));
        }
        let period = engine.take_period();
        let ended = engine.take_ended();
        let running = engine.running();
        self.ended.extend(&ended);
        let point = self.point(&period);
        Some(FromAgent::Report {
            point,
            ended: Ids::of(ended),
            running,
            throttles: self.throttle_counts(),
            ids_left: self.ids_left(),
        })
    }
}

async fn send(link: &mut Option<Link>, msg: &FromAgent) {
    let Some(l) = link else {
        return;
    };
    match tokio::time::timeout(FRAME_TIMEOUT, write_frame(&mut l.writer, msg)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!("lost the master: {e}");
            *link = None;
        }
        Err(_) => {
            tracing::warn!("lost the master: it does not read");
            *link = None;
        }
    }
}

/// Runs an agent until the process ends.
pub async fn run_agent(cfg: AgentConfig) -> Result<(), AgentError> {
    let registered = Arc::new(AtomicBool::new(false));
    let running = Arc::new(parking_lot::Mutex::new(None));
    if let Some(addr) = cfg.health {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| AgentError::Health { addr, source })?;
        println!(
            "listening on {} (agent {} health)",
            listener.local_addr().unwrap_or(addr),
            cfg.name
        );
        tokio::spawn(health(listener, registered.clone(), running.clone()));
    }
    let (joins, mut join_rx) = mpsc::unbounded_channel();
    let mut agent = Agent {
        cfg: cfg.clone(),
        manifests: None,
        plan: None,
        env: None,
        engine: None,
        finishing: None,
        finished: false,
        memo: None,
        points: VecDeque::new(),
        ended: Vec::new(),
        shares: BTreeMap::new(),
        joins,
        registered: registered.clone(),
        running,
        arrivals: None,
        early_ids: IdPool::default(),
    };
    let mut link: Option<Link> = None;
    let mut backoff = Duration::from_millis(100);
    let mut retry_at = tokio::time::Instant::now();
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut connecting: Option<Connecting> = None;
    let mut aligned = false;
    loop {
        if !aligned {
            if let Some(start) = agent
                .memo
                .as_ref()
                .map(|m| m.started_at_ms)
                .filter(|s| *s > 0)
            {
                // Report just before each second of the test ends, so that a point's users
                // are counted at the second the master files it under (and a profile's plan
                // for that second is compared with the users of that moment).
                let into = now_ms().saturating_sub(start) % 1000;
                let wait = (1000 + 1000 - REPORT_EARLY_MS - into) % 1000;
                tick = tokio::time::interval_at(
                    tokio::time::Instant::now() + Duration::from_millis(wait.max(1)),
                    Duration::from_secs(1),
                );
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                aligned = true;
            }
        }
        agent.registered.store(link.is_some(), Ordering::Release);
        if link.is_none() && connecting.is_none() && tokio::time::Instant::now() >= retry_at {
            connecting = Some(Box::pin(connect(cfg.clone(), agent.hello())));
        }
        let away = link.is_none();
        let next_arrival = agent.run_arrivals();
        let arrival_due = async {
            match next_arrival {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let inbound = async {
            match &mut link {
                Some(l) => l.inbound.recv().await,
                None => std::future::pending().await,
            }
        };
        let finishing = async {
            match &mut agent.finishing {
                Some(h) => h.await.ok(),
                None => std::future::pending().await,
            }
        };
        let retry = tokio::time::sleep_until(retry_at);
        let may_retry = away && connecting.is_none();
        let attempt = async {
            match &mut connecting {
                Some(c) => c.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = attempt => {
                connecting = None;
                match r {
                    Ok((l, manifests, memo)) => {
                        tracing::info!(master = %cfg.master, "registered with the master");
                        link = Some(l);
                        backoff = Duration::from_millis(100);
                        agent.welcome(manifests, memo).await?;
                        // Joins the master may not know of (it restarted): it ignores repeats.
                        if let Some(env) = &agent.env {
                            for j in env.coordinators.pending_joins() {
                                send(
                                    &mut link,
                                    &FromAgent::Join {
                                        coordinator: j.coordinator,
                                        user: j.user,
                                        data: j.data,
                                    },
                                )
                                .await;
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!("{e}; trying again in {backoff:?}");
                        retry_at = tokio::time::Instant::now() + backoff;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            }
            msg = inbound => match msg {
                Some(Ok(m)) => agent.order(m),
                other => {
                    let why = match other {
                        Some(Err(e)) => e,
                        _ => "the connection ended".into(),
                    };
                    tracing::warn!("lost the master: {why}");
                    link = None;
                    retry_at = tokio::time::Instant::now();
                }
            },
            _ = tick.tick() => {
                if let Some(report) = agent.report() {
                    send(&mut link, &report).await;
                } else if agent.manifests.is_some() {
                    // Winding down or over: a heartbeat keeps the master from counting
                    // this agent lost.
                    let point = agent.point(&Period::default());
                    send(&mut link, &FromAgent::Report {
                        point,
                        ended: Ids::default(),
                        running: 0,
                        throttles: agent.throttle_counts(),
                        ids_left: 0,
                    }).await;
                }
            }
            j = join_rx.recv() => {
                if let Some(j) = j {
                    send(&mut link, &FromAgent::Join {
                        coordinator: j.coordinator,
                        user: j.user,
                        data: j.data,
                    }).await;
                }
            }
            done = finishing => {
                agent.finishing = None;
                agent.finished = true;
                if let Some((engine, last)) = done {
                    let ended = engine.take_ended();
                    agent.ended.extend(&ended);
                    let point = agent.point(&last);
                    tracing::info!("all users stopped: the test is over here");
                    send(&mut link, &FromAgent::Finished { point, ended: Ids::of(ended) }).await;
                }
            }
            _ = retry, if may_retry => {}
            _ = arrival_due => {}
        }
    }
}

/// `/healthz` (alive), `/readyz` (registered with the master) and `/users` (the ids
/// running here now, as JSON ranges).
async fn health(
    listener: TcpListener,
    registered: Arc<AtomicBool>,
    running: Arc<parking_lot::Mutex<Option<crate::engine::Census>>>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let registered = registered.clone();
        let running = running.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let ready = registered.load(Ordering::Acquire);
                let (code, body) = match req.uri().path() {
                    "/users" => {
                        let census = running.lock().clone();
                        let ids = Ids::of(census.map(|c| c.ids()).unwrap_or_default());
                        (
                            StatusCode::OK,
                            Bytes::from(serde_json::to_vec(&ids).unwrap_or_default()),
                        )
                    }
                    "/healthz" => (StatusCode::OK, Bytes::from_static(b"ok")),
                    "/readyz" if ready => (StatusCode::OK, Bytes::from_static(b"ready")),
                    "/readyz" => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        Bytes::from_static(b"not registered with the master"),
                    ),
                    _ => (StatusCode::NOT_FOUND, Bytes::from_static(b"no such path")),
                };
                async move {
                    Ok::<_, Infallible>(
                        Response::builder()
                            .status(code)
                            .body(Full::new(body))
                            .expect("static response parts"),
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
