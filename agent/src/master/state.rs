//! The master's books, without any I/O: which agent runs which user, the pace at which
//! users come and go, throttle shares, coordinators, merged metrics, and recovery after a
//! restart. Every change returns the messages to send ([`Outbox`]); the master's event
//! loop delivers them. Tested here without sockets.
//!
//! The invariant it keeps: every id in `1..=launched` that has not ended by itself is
//! either owned by exactly one agent or waiting in `orphans` for one.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use murmuration_crds::api::{CoordinatorFigures, MasterStatus, TestPhase, ThrottleFigures};
use murmuration_crds::loadtest::{
    AgentCounts, AgentStatus, LatencySummary, RequestCounts, TestResult, ThresholdResult,
    UserCounts,
};
use murmuration_crds::units::format_duration;
use murmuration_crds::{CoordinatorSpec, ThrottleSpec};

use murmuration_model::pacing::{completed, UserPacer};
use murmuration_model::throttle::{Ramp, ThrottlePlan};

use crate::coordinator::{timeout_of, Machine, Member};
use crate::engine::{build_report, now_ms, series_point, ReportParts, Tally};
use crate::metrics::{Percentiles, Period};
use crate::plan::TestPlan;
use crate::report::{CoordinatorSummary, Outcome, Report, SeriesPoint, ThrottleSummary};
use crate::scenario::{UserId, Vars};
use crate::throttle::{plan_of, Limit};
use crate::wire::{AgentPoint, FromAgent, Ids, Memo, ThrottleDemand, ToAgent};

mod profile;

/// Messages to send: (agent name, message).
pub type Outbox = Vec<(String, ToAgent)>;

/// How long a restarted master waits for the agents that ran users before it gives their
/// users to others.
pub const RECOVERY_WAIT: Duration = Duration::from_secs(10);
/// An agent whose connection closed gets this long to come back before its users are
/// started elsewhere (a blip must not duplicate users).
pub const RECONNECT_GRACE: Duration = Duration::from_secs(2);
/// An agent silent for this long is lost.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(5);
/// The demand of an agent whose users wait for permits: as much as it can get.
const UNBOUNDED: u64 = u64::MAX / 1024;
/// A second of the series is final once every agent had this long to report it.
const SETTLE: Duration = Duration::from_secs(3);

/// Settings of the master that are not part of the test.
#[derive(Debug, Clone)]
pub struct MasterOptions {
    /// Time users get to finish their iteration at the end.
    pub stop_grace: Duration,
    /// Agents expected (overrides `spec.agents` when set).
    pub agents: Option<u64>,
}

impl Default for MasterOptions {
    fn default() -> Self {
        MasterOptions {
            stop_grace: crate::engine::DEFAULT_STOP_GRACE,
            agents: None,
        }
    }
}

/// One agent as the master knows it.
#[derive(Debug)]
struct AgentBook {
    /// Connected now (a connection id) or not.
    conn: Option<u64>,
    /// Users it owns.
    users: u64,
    /// Users it says run on it.
    running: u64,
    last_seen: Instant,
    /// Disconnected since.
    gone_since: Option<Instant>,
    /// Lost for good: its users were given to others.
    lost: bool,
    /// Timestamp of the newest point taken from it (older ones are repeats).
    last_point_ms: u64,
    /// Its throttles' counters as it last said, and what earlier lives of it counted.
    throttles: BTreeMap<String, ThrottleDemand>,
    /// Requested per throttle in its last report period (demand).
    demand: BTreeMap<String, u64>,
    /// Its finished the test (after `finish`).
    finished: bool,
    /// Series of this agent, by second.
    series: BTreeMap<i64, (u64, u64, u64)>,
    /// Arrival ids it holds unused (as it last said, plus blocks sent since).
    ids_left: u64,
    /// When it was last given a block of arrival ids.
    ids_granted_at: Option<Instant>,
}

impl AgentBook {
    fn new(now: Instant) -> AgentBook {
        AgentBook {
            conn: None,
            users: 0,
            running: 0,
            last_seen: now,
            gone_since: None,
            lost: false,
            last_point_ms: 0,
            throttles: BTreeMap::new(),
            demand: BTreeMap::new(),
            finished: false,
            series: BTreeMap::new(),
            ids_left: 0,
            ids_granted_at: None,
        }
    }
}

/// A throttle shared by the agents.
#[derive(Debug)]
struct SharedThrottle {
    spec: ThrottleSpec,
    limit: Limit,
    /// A gradual change and when it started.
    ramp: Option<(Instant, Ramp)>,
    /// Share of each agent now.
    shares: BTreeMap<String, u64>,
    /// Shares given in the last interval: an agent may still be granting at its old
    /// share until that has left its window, so increases elsewhere wait for it.
    history: BTreeMap<String, VecDeque<(Instant, u64)>>,
    /// Counters of agents gone (restarted agents count from zero again).
    retired: ThrottleDemand,
}

impl SharedThrottle {
    fn rate_at(&self, now: Instant) -> u64 {
        match &self.ramp {
            Some((start, ramp)) => ramp.rate_after(now.saturating_duration_since(*start)),
            None => self.limit.rate,
        }
    }

    /// How long an agent's old share stays reserved after it was lowered.
    fn memory(&self) -> Duration {
        self.limit.interval.max(Duration::from_secs(1)) + Duration::from_millis(500)
    }
}

/// A coordinator hosted by the master.
struct SharedCoordinator {
    machine: Machine,
    timeout: Duration,
    deadline: Option<Instant>,
    /// Who waits, and on which agent.
    waiting: HashMap<UserId, String>,
    groups: u64,
    timeouts: u64,
}

/// The master's books.
pub struct Core {
    plan: TestPlan,
    manifests: String,
    opts: MasterOptions,
    memo: Memo,
    memo_dirty: bool,
    phase: TestPhase,
    message: Option<String>,
    ended_by: Option<String>,
    created: Instant,
    /// When users started (monotonic).
    started: Option<Instant>,
    stop_forced: bool,
    stopping_since: Option<Instant>,
    /// Recovering after a restart until then (no user changes before).
    recovering_until: Option<Instant>,
    agents: BTreeMap<String, AgentBook>,
    owner: HashMap<UserId, String>,
    ended: HashSet<UserId>,
    orphans: BTreeSet<UserId>,
    /// Paces user changes at `userRate` (the engine's rule too).
    pacer: UserPacer,
    throttles: BTreeMap<String, SharedThrottle>,
    coordinators: BTreeMap<String, SharedCoordinator>,
    // Metrics.
    names: Vec<String>,
    totals: Period,
    /// Seconds not final yet: the merged period and users per agent.
    open: BTreeMap<i64, (Period, BTreeMap<String, u64>)>,
    /// Final seconds.
    series: BTreeMap<i64, SeriesPoint>,
    peak: u64,
    next_conn: u64,
    report: Option<Report>,
}

impl Core {
    /// The books of a test that has not started.
    pub fn new(plan: TestPlan, manifests: String, opts: MasterOptions, now: Instant) -> Core {
        let mut memo = Memo {
            version: 1,
            desired: plan.users,
            agents: opts.agents.unwrap_or(plan.agents as u64).max(1),
            ..Memo::default()
        };
        for (name, spec) in &plan.throttles {
            memo.throttles.insert(name.clone(), spec.clone());
        }
        for (name, spec) in &plan.coordinators {
            memo.coordinators.insert(name.clone(), spec.clone());
        }
        let user_rate = plan.user_rate;
        let mut core = Core {
            plan,
            manifests,
            opts,
            memo,
            memo_dirty: false,
            phase: TestPhase::Starting,
            message: None,
            ended_by: None,
            created: now,
            started: None,
            stop_forced: false,
            stopping_since: None,
            recovering_until: None,
            agents: BTreeMap::new(),
            owner: HashMap::new(),
            ended: HashSet::new(),
            orphans: BTreeSet::new(),
            pacer: UserPacer::new(user_rate, now.into_std()),
            throttles: BTreeMap::new(),
            coordinators: BTreeMap::new(),
            names: Vec::new(),
            totals: Period::default(),
            open: BTreeMap::new(),
            series: BTreeMap::new(),
            peak: 0,
            next_conn: 1,
            report: None,
        };
        let throttles = core.memo.throttles.clone();
        for (name, spec) in throttles {
            // Checked when the plan was built.
            let _ = core.set_throttle(&name, spec, now);
        }
        let coordinators = core.memo.coordinators.clone();
        for (name, spec) in coordinators {
            let _ = core.set_coordinator(&name, spec);
        }
        core.memo_dirty = false;
        core
    }

    /// The test's name.
    pub fn name(&self) -> &str {
        &self.plan.name
    }

    /// Where the test is.
    pub fn phase(&self) -> TestPhase {
        self.phase
    }

    /// A fresh connection id.
    pub fn connection_id(&mut self) -> u64 {
        self.next_conn += 1;
        self.next_conn
    }

    fn connected(&self) -> impl Iterator<Item = (&String, &AgentBook)> {
        self.agents.iter().filter(|(_, a)| a.conn.is_some())
    }

    fn connected_count(&self) -> u64 {
        self.connected().count() as u64
    }

    fn bump_memo(&mut self) {
        self.memo.version += 1;
        self.memo_dirty = true;
    }

    // ---------------------------------------------------------------- agents

    /// An agent said hello on connection `conn`. Returns the welcome and what follows.
    pub fn hello(&mut self, conn: u64, msg: FromAgent, now: Instant) -> Result<Outbox, String> {
        let FromAgent::Hello {
            name,
            running,
            ended,
            memo,
            points,
            throttles,
            shares,
            ids_left,
        } = msg
        else {
            return Err("the first message must be hello".into());
        };
        if name.is_empty() || name.len() > 253 {
            return Err("agent name must have 1 to 253 characters".into());
        }
        let mut out = Outbox::new();
        // A restarted master takes the newest memo it hears of.
        if let Some(memo) = memo {
            if memo.version > self.memo.version && memo.started_at_ms > 0 {
                self.adopt(memo, now);
            }
        }
        let book = self
            .agents
            .entry(name.clone())
            .or_insert_with(|| AgentBook::new(now));
        if let Some(old) = book.conn {
            tracing::warn!(agent = %name, old, "agent connected again: the older connection is dropped");
        }
        book.conn = Some(conn);
        book.last_seen = now;
        book.ids_left = ids_left;
        book.gone_since = None;
        let was_lost = std::mem::replace(&mut book.lost, false);
        // Counters of an earlier life of this agent are kept aside.
        for (t, d) in &throttles {
            if let Some(old) = book.throttles.get(t) {
                if d.requested < old.requested || d.executed < old.executed {
                    if let Some(st) = self.throttles.get_mut(t) {
                        st.retired.requested += old.requested;
                        st.retired.executed += old.executed;
                    }
                }
            }
        }
        book.throttles = throttles;
        tracing::info!(agent = %name, running = running.len(), lost_before = was_lost, "agent registered");
        out.push((
            name.clone(),
            ToAgent::Welcome {
                manifests: self.manifests.clone(),
                memo: self.memo.clone(),
            },
        ));
        // What it runs: keep what it owns (or may own), stop the rest.
        let mut stray = Vec::new();
        for id in running.iter() {
            match self.owner.get(&id) {
                Some(o) if *o == name => {}
                Some(_) => stray.push(id),
                None if self.ended.contains(&id) => stray.push(id),
                None if self.recovering_until.is_some() || self.orphans.contains(&id) => {
                    // A restarted master learns who runs what.
                    self.orphans.remove(&id);
                    self.owner.insert(id, name.clone());
                    self.memo.launched = self.memo.launched.max(id);
                }
                None if id <= self.memo.launched && self.started.is_some() => {
                    self.owner.insert(id, name.clone());
                }
                None => stray.push(id),
            }
        }
        // Users it should run but does not (a restarted process under the same name, or
        // a start lost with the old connection) start again, wherever there is room.
        if self.recovering_until.is_none() {
            let running: HashSet<UserId> = running.iter().collect();
            let lost: Vec<UserId> = self
                .owner
                .iter()
                .filter(|(id, o)| **o == name && !running.contains(id))
                .map(|(id, _)| *id)
                .collect();
            for id in lost {
                self.owner.remove(&id);
                if !ended.iter().any(|e| e == id) {
                    self.orphans.insert(id);
                }
            }
        }
        for id in ended.iter() {
            if self.owner.get(&id).is_none_or(|o| *o == name) {
                self.owner.remove(&id);
                self.orphans.remove(&id);
                self.ended.insert(id);
            }
        }
        if !stray.is_empty() {
            tracing::info!(agent = %name, users = stray.len(), "agent runs users that belong elsewhere: stopping them there");
            out.push((
                name.clone(),
                ToAgent::Stop {
                    ids: Ids::of(stray),
                    forced: true,
                },
            ));
        }
        // Shares it kept while the master was away stay reserved until re-shared.
        for (t, share) in shares {
            if let Some(st) = self.throttles.get_mut(&t) {
                st.shares.insert(name.clone(), share);
                st.history
                    .entry(name.clone())
                    .or_default()
                    .push_back((now, share));
            }
        }
        for p in points {
            self.take_point(&name, p);
        }
        self.recount();
        // The coordinators' waiting users are asked again by the agent itself.
        if self.phase == TestPhase::Stopping {
            out.push((
                name.clone(),
                ToAgent::Finish {
                    forced: self.stop_forced,
                    grace_ms: self.opts.stop_grace.as_millis() as u64,
                },
            ));
        }
        out.extend(self.reshare(now));
        Ok(out)
    }

    /// A restarted master carries on from the memo of a former one.
    fn adopt(&mut self, memo: Memo, now: Instant) {
        tracing::info!(
            version = memo.version,
            desired = memo.desired,
            launched = memo.launched,
            "taking over a running test"
        );
        let started_ago = Duration::from_millis(now_ms().saturating_sub(memo.started_at_ms));
        self.started = Some(now.checked_sub(started_ago).unwrap_or(now));
        self.recovering_until = Some(now + RECOVERY_WAIT);
        self.phase = if memo.stopping {
            TestPhase::Stopping
        } else {
            TestPhase::Running
        };
        if memo.stopping {
            self.stopping_since = Some(now);
            self.ended_by = Some("stopped".into());
        }
        for (name, spec) in &memo.throttles {
            if let Err(e) = self.set_throttle(name, spec.clone(), now) {
                tracing::warn!("memo throttle {name}: {e}");
            }
        }
        let gone: Vec<String> = self
            .throttles
            .keys()
            .filter(|k| !memo.throttles.contains_key(*k))
            .cloned()
            .collect();
        for g in gone {
            self.throttles.remove(&g);
        }
        for (name, spec) in &memo.coordinators {
            let _ = self.set_coordinator(name, spec.clone());
        }
        self.memo = memo;
        self.memo_dirty = true;
    }

    /// Every message of a registered agent after its hello.
    pub fn from_agent(&mut self, conn: u64, name: &str, msg: FromAgent, now: Instant) -> Outbox {
        let mut out = Outbox::new();
        let Some(book) = self.agents.get_mut(name) else {
            return out;
        };
        if book.conn != Some(conn) {
            return out; // a connection that was replaced
        }
        book.last_seen = now;
        match msg {
            FromAgent::Hello { .. } => {
                tracing::warn!(agent = name, "second hello ignored");
            }
            FromAgent::Report {
                point,
                ended,
                running,
                throttles,
                ids_left,
            } => {
                book.running = running;
                book.ids_left = ids_left;
                for (t, d) in &throttles {
                    let before = book.throttles.get(t).map(|o| o.requested).unwrap_or(0);
                    // Users waiting means it could use more than it has: as much as it
                    // can get. Otherwise it needs what it asked for in the last second,
                    // per interval.
                    let demand = if d.waiting > 0 {
                        UNBOUNDED
                    } else {
                        let per_second = d.requested.saturating_sub(before);
                        let interval = self
                            .throttles
                            .get(t)
                            .map(|st| st.limit.interval.as_secs_f64())
                            .unwrap_or(1.0)
                            .max(1.0);
                        (per_second as f64 * interval) as u64
                    };
                    book.demand.insert(t.clone(), demand);
                }
                book.throttles = throttles;
                self.take_ended(name, &ended);
                self.take_point(name, point);
            }
            FromAgent::Finished { point, ended } => {
                book.running = 0;
                book.finished = true;
                self.take_ended(name, &ended);
                self.take_point(name, point);
            }
            FromAgent::Join {
                coordinator,
                user,
                data,
            } => out.extend(self.join(name, &coordinator, user, data, now)),
        }
        out
    }

    /// A connection ended.
    pub fn disconnected(&mut self, conn: u64, name: &str, now: Instant) {
        if let Some(book) = self.agents.get_mut(name) {
            if book.conn == Some(conn) {
                book.conn = None;
                book.gone_since = Some(now);
                tracing::warn!(agent = name, "agent disconnected");
            }
        }
    }

    /// Agents to disconnect now (silent for too long).
    pub fn silent_agents(&self, now: Instant) -> Vec<(String, u64)> {
        self.agents
            .iter()
            .filter_map(|(n, a)| {
                let conn = a.conn?;
                (now.saturating_duration_since(a.last_seen) > SILENCE_LIMIT)
                    .then(|| (n.clone(), conn))
            })
            .collect()
    }

    fn take_ended(&mut self, name: &str, ended: &Ids) {
        for id in ended.iter() {
            if self.owner.get(&id).is_some_and(|o| o == name) {
                self.owner.remove(&id);
                self.ended.insert(id);
                if let Some(b) = self.agents.get_mut(name) {
                    b.users = b.users.saturating_sub(1);
                }
            }
        }
    }

    fn recount(&mut self) {
        for b in self.agents.values_mut() {
            b.users = 0;
        }
        for o in self.owner.values() {
            if let Some(b) = self.agents.get_mut(o) {
                b.users += 1;
            }
        }
    }

    /// The connected agent with the fewest users.
    fn least_loaded(&self) -> Option<String> {
        self.agents
            .iter()
            .filter(|(_, a)| a.conn.is_some() && !a.finished)
            .min_by_key(|(n, a)| (a.users, (*n).clone()))
            .map(|(n, _)| n.clone())
    }

    /// Gives `ids` to agents, balancing by load.
    fn place(&mut self, ids: impl IntoIterator<Item = UserId>) -> Outbox {
        let mut batches: BTreeMap<String, Vec<UserId>> = BTreeMap::new();
        for id in ids {
            match self.least_loaded() {
                Some(agent) => {
                    self.owner.insert(id, agent.clone());
                    self.agents.get_mut(&agent).expect("listed").users += 1;
                    batches.entry(agent).or_default().push(id);
                }
                None => {
                    self.orphans.insert(id);
                }
            }
        }
        batches
            .into_iter()
            .map(|(a, ids)| (a, ToAgent::Start { ids: Ids::of(ids) }))
            .collect()
    }

    // ---------------------------------------------------------------- the clock

    /// Runs what is due: the start barrier, users at `userRate`, lost agents, throttle
    /// shares, coordinator timeouts, the end of the test.
    pub fn tick(&mut self, now: Instant) -> Outbox {
        let mut out = Outbox::new();
        // Lost agents: gone past the grace, or silent.
        let lost: Vec<String> = self
            .agents
            .iter()
            .filter(|(_, a)| {
                !a.lost
                    && a.gone_since
                        .is_some_and(|g| now.saturating_duration_since(g) > RECONNECT_GRACE)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in lost {
            let ids: Vec<UserId> = self
                .owner
                .iter()
                .filter(|(_, o)| **o == name)
                .map(|(id, _)| *id)
                .collect();
            tracing::warn!(agent = %name, users = ids.len(), "agent lost: its users start elsewhere");
            for id in &ids {
                self.owner.remove(id);
            }
            let book = self.agents.get_mut(&name).expect("listed");
            book.lost = true;
            book.users = 0;
            book.running = 0;
            if self.recovering_until.is_none() {
                self.orphans.extend(ids);
            }
        }
        if self.phase == TestPhase::Starting {
            let ready = self.connected_count();
            if ready >= self.memo.agents {
                self.phase = TestPhase::Running;
                self.started = Some(now);
                self.pacer.reset(now.into_std());
                self.memo.started_at_ms = now_ms();
                self.bump_memo();
                tracing::info!(
                    agents = ready,
                    users = self.memo.desired,
                    "every agent is here: users start"
                );
            } else if now.saturating_duration_since(self.created) > self.plan.wait_for_agents {
                self.message = Some(format!(
                    "only {ready} of {} agents connected within {}",
                    self.memo.agents,
                    format_duration(self.plan.wait_for_agents)
                ));
                tracing::error!("{}", self.message.as_deref().unwrap_or_default());
                self.end("agents-missing", true, now);
            }
        }
        // Straight on from the start barrier, in the same turn.
        if self.phase == TestPhase::Running {
            if let Some(until) = self.recovering_until {
                let back = self.connected_count() >= self.memo.agents;
                if now >= until || back {
                    self.recovering_until = None;
                    self.pacer.reset(now.into_std());
                    // Ids that nobody reported run on an agent that did not come back.
                    let missing: Vec<UserId> = (1..=self.memo.launched)
                        .filter(|id| !self.owner.contains_key(id) && !self.ended.contains(id))
                        .collect();
                    if !missing.is_empty() {
                        tracing::warn!(
                            users = missing.len(),
                            "users of agents that did not come back start elsewhere"
                        );
                    }
                    self.orphans.extend(missing);
                    self.recount();
                    tracing::info!(users = self.owner.len(), "recovery done");
                }
            }
            if self.recovering_until.is_none() {
                let orphans = std::mem::take(&mut self.orphans);
                out.extend(self.place(orphans));
                out.extend(self.follow_profile(now));
                out.extend(self.pace_users(now));
                if let Some(why) = self.end_due(now) {
                    self.end(why, false, now);
                }
            }
        }
        if self.phase == TestPhase::Stopping {
            self.orphans.clear();
            let grace = self.opts.stop_grace + Duration::from_secs(2);
            let all_done = self.connected().all(|(_, a)| a.finished);
            let since = self.stopping_since.unwrap_or(now);
            if all_done || now.saturating_duration_since(since) > grace {
                self.finalize(now);
            }
        }
        out.extend(self.coordinator_timeouts(now));
        out.extend(self.reshare(now));
        self.settle(now, false);
        if self.memo_dirty {
            self.memo_dirty = false;
            for (name, _) in self.connected() {
                out.push((
                    name.clone(),
                    ToAgent::Memo {
                        memo: self.memo.clone(),
                    },
                ));
            }
        }
        if self.phase == TestPhase::Stopping && self.stopping_since == Some(now) {
            for (name, _) in self.connected() {
                out.push((
                    name.clone(),
                    ToAgent::Finish {
                        forced: self.stop_forced,
                        grace_ms: self.opts.stop_grace.as_millis() as u64,
                    },
                ));
            }
        }
        out
    }

    /// Moves `launched` towards `desired` at `userRate`.
    fn pace_users(&mut self, now: Instant) -> Outbox {
        let due = self
            .pacer
            .pace(self.memo.desired, self.memo.launched, now.into_std())
            .due;
        if due == 0 {
            return Outbox::new();
        }
        let launched = self.memo.launched;
        self.memo.launched = if self.memo.desired > launched {
            launched + due
        } else {
            launched - due
        };
        self.memo_dirty = true;
        if self.memo.desired > launched {
            let ids: Vec<UserId> = (launched + 1..=launched + due)
                .filter(|id| !self.owner.contains_key(id))
                .collect();
            for id in launched + 1..=launched + due {
                self.ended.remove(&id);
            }
            let out = self.place(ids);
            self.peak = self.peak.max(self.owner.len() as u64);
            out
        } else {
            let mut batches: BTreeMap<String, Vec<UserId>> = BTreeMap::new();
            for id in (launched - due + 1..=launched).rev() {
                self.orphans.remove(&id);
                if let Some(agent) = self.owner.remove(&id) {
                    if let Some(b) = self.agents.get_mut(&agent) {
                        b.users = b.users.saturating_sub(1);
                    }
                    batches.entry(agent).or_default().push(id);
                }
            }
            batches
                .into_iter()
                .map(|(a, ids)| {
                    (
                        a,
                        ToAgent::Stop {
                            ids: Ids::of(ids),
                            forced: false,
                        },
                    )
                })
                .collect()
        }
    }

    fn end_due(&self, now: Instant) -> Option<&'static str> {
        let started = self.started?;
        if self
            .plan
            .duration
            .is_some_and(|d| now.saturating_duration_since(started) >= d)
        {
            return Some("duration");
        }
        if let Some(why) = self.profile_end_due(now) {
            return Some(why);
        }
        let still_running = (self.owner.len() + self.orphans.len()) as u64;
        if completed(self.memo.desired, self.memo.launched, still_running) {
            return Some("completed");
        }
        None
    }

    fn end(&mut self, why: &str, forced: bool, now: Instant) {
        if matches!(self.phase, TestPhase::Stopping | TestPhase::Finished) {
            if forced && !self.stop_forced && self.phase == TestPhase::Stopping {
                self.stop_forced = true;
                self.stopping_since = Some(now);
            }
            return;
        }
        tracing::info!(ended_by = why, forced, "test ends");
        self.ended_by = Some(why.to_owned());
        self.phase = TestPhase::Stopping;
        self.stop_forced = forced;
        self.stopping_since = Some(now);
        self.memo.stopping = true;
        self.bump_memo();
    }

    fn finalize(&mut self, now: Instant) {
        self.settle(now, true);
        self.phase = TestPhase::Finished;
        let report = self.build(true, now);
        tracing::info!(result = ?report.result, ended_by = %report.ended_by, "test finished");
        self.report = Some(report);
    }

    // ---------------------------------------------------------------- API

    /// Sets the desired users.
    pub fn set_users(&mut self, users: u64) -> Result<(), String> {
        if users > 10_000_000 {
            return Err("users: is more than 10,000,000".into());
        }
        self.override_profile();
        self.memo.desired = users;
        self.bump_memo();
        Ok(())
    }

    /// Sets the agents expected.
    pub fn set_agents(&mut self, agents: u64) -> Result<(), String> {
        if agents == 0 || agents > 10_000 {
            return Err("agents: must be between 1 and 10,000".into());
        }
        self.memo.agents = agents;
        self.bump_memo();
        Ok(())
    }

    /// Replaces the scenario variables.
    pub fn set_vars(&mut self, vars: Vars) {
        if self.memo.vars.as_ref() == Some(&vars) {
            return;
        }
        self.memo.vars = Some(vars);
        self.bump_memo();
    }

    /// Ends the test.
    pub fn stop(&mut self, forced: bool, now: Instant) {
        if self.phase == TestPhase::Starting {
            self.end("stopped", true, now);
        } else {
            self.end("stopped", forced, now);
        }
    }

    /// Creates or changes a throttle. Setting the same spec again changes nothing (a
    /// running ramp goes on).
    pub fn set_throttle(
        &mut self,
        name: &str,
        spec: ThrottleSpec,
        now: Instant,
    ) -> Result<(), String> {
        let ThrottlePlan { limit, ramp } = plan_of(name, &spec)?;
        if self.throttles.get(name).is_some_and(|st| st.spec == spec) {
            return Ok(());
        }
        // A ramp starts from the rate in force (amoc's change_rate_gradually), or from the
        // new `rate` when that changed too.
        let from = self
            .throttles
            .get(name)
            .filter(|st| st.spec.rate == spec.rate)
            .map(|st| st.rate_at(now))
            .unwrap_or(limit.rate);
        let st = self
            .throttles
            .entry(name.to_owned())
            .or_insert_with(|| SharedThrottle {
                spec: spec.clone(),
                limit,
                ramp: None,
                shares: BTreeMap::new(),
                history: BTreeMap::new(),
                retired: ThrottleDemand::default(),
            });
        st.spec = spec.clone();
        st.limit = limit;
        st.ramp = ramp.map(|r| (now, Ramp::new(from, r)));
        self.memo.throttles.insert(name.to_owned(), spec);
        self.bump_memo();
        Ok(())
    }

    /// Deletes a throttle.
    pub fn delete_throttle(&mut self, name: &str) -> bool {
        let had = self.throttles.remove(name).is_some();
        self.memo.throttles.remove(name);
        self.bump_memo();
        had
    }

    /// Creates or replaces a coordinator (a replaced one starts afresh; its waiting users
    /// are released as by a timeout).
    pub fn set_coordinator(&mut self, name: &str, spec: CoordinatorSpec) -> Result<Outbox, String> {
        let timeout = timeout_of(name, &spec)?;
        if self.coordinators.contains_key(name) && self.memo.coordinators.get(name) == Some(&spec) {
            // The same plan again (the operator pushes what it sees): nothing changes.
            return Ok(Outbox::new());
        }
        let old = self.coordinators.insert(
            name.to_owned(),
            SharedCoordinator {
                machine: Machine::new(&spec.plan),
                timeout,
                deadline: None,
                waiting: HashMap::new(),
                groups: 0,
                timeouts: 0,
            },
        );
        self.memo.coordinators.insert(name.to_owned(), spec);
        self.bump_memo();
        Ok(old.map(|c| release_everyone(name, c)).unwrap_or_default())
    }

    /// Deletes a coordinator; its waiting users are released.
    pub fn delete_coordinator(&mut self, name: &str) -> Option<Outbox> {
        let old = self.coordinators.remove(name)?;
        self.memo.coordinators.remove(name);
        self.bump_memo();
        Some(release_everyone(name, old))
    }

    // ---------------------------------------------------------------- coordinators

    fn join(
        &mut self,
        agent: &str,
        name: &str,
        user: UserId,
        data: serde_json::Value,
        now: Instant,
    ) -> Outbox {
        let Some(c) = self.coordinators.get_mut(name) else {
            tracing::warn!(
                agent,
                coordinator = name,
                "join of an unknown coordinator: released alone"
            );
            return vec![(
                agent.to_owned(),
                ToAgent::Release {
                    coordinator: name.to_owned(),
                    user,
                    members: vec![Member { user, data }],
                    peers: Vec::new(),
                    timed_out: true,
                },
            )];
        };
        if let std::collections::hash_map::Entry::Occupied(mut e) = c.waiting.entry(user) {
            // Sent again after a reconnection: it is in already.
            e.insert(agent.to_owned());
            return Outbox::new();
        }
        c.waiting.insert(user, agent.to_owned());
        let (groups, released) = c.machine.join(Member { user, data });
        c.groups += groups.len() as u64;
        c.deadline = Some(now + c.timeout);
        deliver(name, c, released)
    }

    fn coordinator_timeouts(&mut self, now: Instant) -> Outbox {
        let mut out = Outbox::new();
        for (name, c) in self.coordinators.iter_mut() {
            if c.deadline.is_some_and(|d| d <= now) {
                c.deadline = None;
                let (groups, released) = c.machine.timeout();
                if !groups.is_empty() || !released.is_empty() {
                    c.timeouts += 1;
                }
                c.groups += groups.len() as u64;
                out.extend(deliver(name, c, released));
            }
        }
        out
    }

    // ---------------------------------------------------------------- throttles

    /// Shares each throttle's rate among the connected agents by demand, so that the sum
    /// of what any agent may still grant within one interval never exceeds the limit.
    fn reshare(&mut self, now: Instant) -> Outbox {
        if self.phase == TestPhase::Starting {
            // No user runs yet: shared once every agent is here, not to the first one in
            // (whose share would then stay reserved for a window).
            return Outbox::new();
        }
        let mut changes: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        let connected: Vec<String> = self
            .agents
            .iter()
            .filter(|(_, a)| a.conn.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        let gone: Vec<String> = self
            .agents
            .iter()
            .filter(|(_, a)| a.lost)
            .map(|(n, _)| n.clone())
            .collect();
        for (tname, st) in self.throttles.iter_mut() {
            let rate = st.rate_at(now);
            let memory = st.memory();
            for g in &gone {
                if st.shares.remove(g).is_some() {
                    st.history.entry(g.clone()).or_default().push_back((now, 0));
                }
            }
            // What each agent may still be granting at: every share it had until the one
            // after it has been in force for a whole window.
            let mut reserved: BTreeMap<String, u64> = BTreeMap::new();
            for (agent, h) in st.history.iter_mut() {
                while h.len() > 1 && now.saturating_duration_since(h[1].0) > memory {
                    h.pop_front();
                }
                let max = h.iter().map(|(_, s)| *s).max().unwrap_or(0);
                reserved.insert(agent.clone(), max);
            }
            if connected.is_empty() {
                continue;
            }
            let targets = fair_shares(
                rate,
                &connected
                    .iter()
                    .map(|a| {
                        (
                            a.clone(),
                            self.agents
                                .get(a)
                                .and_then(|b| b.demand.get(tname))
                                .copied()
                                .unwrap_or(0),
                        )
                    })
                    .collect::<Vec<_>>(),
            );
            // Small moves are not worth the capacity a move leaves idle for a window.
            let slack = (rate / connected.len() as u64 / 50).max(1);
            let targets: BTreeMap<String, u64> = targets
                .into_iter()
                .map(|(a, t)| {
                    let cur = st.shares.get(&a).copied();
                    match cur {
                        Some(c) if c.abs_diff(t) <= slack && t != 0 => (a, c),
                        _ => (a, t),
                    }
                })
                .collect();
            // Lower shares at once; raise them only within what is not reserved.
            let mut new_shares = st.shares.clone();
            for (agent, target) in &targets {
                let cur = st.shares.get(agent).copied().unwrap_or(0);
                if *target < cur {
                    new_shares.insert(agent.clone(), *target);
                    reserved.insert(
                        agent.clone(),
                        reserved.get(agent).copied().unwrap_or(cur).max(cur),
                    );
                }
            }
            let mut used: u64 = reserved.values().sum();
            for (agent, target) in &targets {
                let cur = new_shares.get(agent).copied().unwrap_or(0);
                if *target > cur {
                    let before = reserved.get(agent).copied().unwrap_or(0);
                    // Raising this agent to `x` reserves max(before, x).
                    let room = rate.saturating_sub(used.saturating_sub(before));
                    let x = (*target).min(room).max(cur);
                    if x > cur {
                        new_shares.insert(agent.clone(), x);
                        used = used - before + before.max(x);
                        reserved.insert(agent.clone(), before.max(x));
                    }
                }
            }
            for (agent, share) in &new_shares {
                if st.shares.get(agent) != Some(share) || !st.history.contains_key(agent) {
                    st.history
                        .entry(agent.clone())
                        .or_default()
                        .push_back((now, *share));
                    if connected.contains(agent) {
                        changes
                            .entry(agent.clone())
                            .or_default()
                            .insert(tname.clone(), *share);
                    }
                }
            }
            st.shares = new_shares;
        }
        changes
            .into_iter()
            .map(|(agent, shares)| (agent, ToAgent::Shares { shares }))
            .collect()
    }

    /// Every throttle's share for one agent (sent after its welcome).
    pub fn shares_of(&self, agent: &str) -> BTreeMap<String, u64> {
        self.throttles
            .iter()
            .map(|(n, st)| (n.clone(), st.shares.get(agent).copied().unwrap_or(0)))
            .collect()
    }

    // ---------------------------------------------------------------- metrics

    fn second_of(&self, at_ms: u64) -> i64 {
        let start = self.memo.started_at_ms;
        if start == 0 || at_ms <= start {
            return 0;
        }
        // A period ending at start+1000 belongs to second 0.
        ((at_ms - start - 1) / 1000) as i64
    }

    fn take_point(&mut self, agent: &str, p: AgentPoint) {
        let s = self.second_of(p.at_ms);
        let Some(book) = self.agents.get_mut(agent) else {
            return;
        };
        if p.at_ms <= book.last_point_ms {
            return; // sent again after a reconnection
        }
        book.last_point_ms = p.at_ms;
        let period = match p.period.decode(&mut self.names) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(agent, "metrics dropped: {e}");
                return;
            }
        };
        let total = period.total();
        let e = book.series.entry(s).or_insert((0, 0, 0));
        e.0 = p.users;
        e.1 += total.requests;
        e.2 += total.error_total();
        self.totals.merge(&period);
        if let Some(done) = self.series.get_mut(&s) {
            // A late second (an agent that was away): counters stay exact, percentiles
            // keep what the others measured.
            done.requests += total.requests;
            done.errors += total.error_total();
            done.rps += total.requests as f64;
            return;
        }
        let slot = self.open.entry(s).or_default();
        slot.0.merge(&period);
        slot.1.insert(agent.to_owned(), p.users);
    }

    /// Turns seconds that every agent had time to report into series points.
    fn settle(&mut self, now: Instant, all: bool) {
        let Some(started) = self.started else {
            return;
        };
        let elapsed = now.saturating_duration_since(started);
        let hold = if self.recovering_until.is_some() {
            RECOVERY_WAIT + SETTLE
        } else {
            SETTLE
        };
        let limit = elapsed.saturating_sub(hold).as_secs() as i64;
        let keys: Vec<i64> = self
            .open
            .keys()
            .copied()
            .filter(|s| all || *s < limit)
            .collect();
        for s in keys {
            let (period, users) = self.open.remove(&s).expect("listed");
            let users: u64 = users.values().sum();
            self.peak = self.peak.max(users);
            let mut point = series_point(s as f64 + 1.0, s as f64, users, &period);
            point.planned = self.planned_at(Duration::from_secs(s.max(0) as u64 + 1));
            self.series.insert(s, point);
        }
    }

    /// Each step's name and figures since the start (what `/metrics` shows); a step
    /// without any action yet has empty figures.
    pub fn step_totals(&self) -> Vec<(String, crate::metrics::StepStats)> {
        self.names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                (
                    n.clone(),
                    self.totals.steps.get(i).cloned().unwrap_or_default(),
                )
            })
            .collect()
    }

    /// The report so far (`full`: with histograms).
    pub fn build(&self, full: bool, now: Instant) -> Report {
        let elapsed = self
            .started
            .map(|s| now.saturating_duration_since(s).as_secs_f64())
            .unwrap_or(0.0);
        let mut series: Vec<SeriesPoint> = self.series.values().cloned().collect();
        let connected: Vec<&String> = self
            .agents
            .iter()
            .filter(|(_, a)| a.conn.is_some())
            .map(|(n, _)| n)
            .collect();
        for (s, (period, users)) in &self.open {
            // A live view shows only seconds that every agent reported.
            if !full && !connected.iter().all(|a| users.contains_key(*a)) {
                continue;
            }
            let mut point = series_point(*s as f64 + 1.0, *s as f64, users.values().sum(), period);
            point.planned = self.planned_at(Duration::from_secs((*s).max(0) as u64 + 1));
            series.push(point);
        }
        let step_count = self.names.len();
        for p in series.iter_mut() {
            p.step_requests.resize(step_count, 0);
            p.step_errors.resize(step_count, 0);
            p.step_p50.resize(step_count, 0.0);
            p.step_p99.resize(step_count, 0.0);
        }
        let tally = Tally {
            names: self.names.clone(),
            totals: self.totals.clone(),
            series,
            peak: self.peak.max(self.owner.len() as u64),
        };
        let agents = self
            .agents
            .iter()
            .map(|(n, a)| {
                let points = a
                    .series
                    .iter()
                    .map(|(s, (users, requests, errors))| SeriesPoint {
                        t: *s as f64 + 1.0,
                        users: *users,
                        requests: *requests,
                        errors: *errors,
                        rps: *requests as f64,
                        ..Default::default()
                    })
                    .collect();
                (n.clone(), points)
            })
            .collect();
        let mut report = build_report(ReportParts {
            profile: crate::engine::profile_name(&self.plan.profile),
            name: &self.plan.name,
            scenario: self.plan.scenario.kind(),
            started_at_ms: self.memo.started_at_ms,
            elapsed_s: elapsed,
            ended_by: self.ended_by.as_deref().unwrap_or("running"),
            desired: self.memo.desired,
            tally: &tally,
            names: &self.names,
            throttles: self
                .throttles
                .iter()
                .map(|(n, st)| {
                    let (requested, executed, _) = self.throttle_counts(n);
                    ThrottleSummary {
                        name: n.clone(),
                        rate: st.rate_at(now),
                        requested,
                        executed,
                    }
                })
                .collect(),
            coordinators: self
                .coordinators
                .iter()
                .map(|(n, c)| CoordinatorSummary {
                    name: n.clone(),
                    groups: c.groups,
                    timeouts: c.timeouts,
                })
                .collect(),
            agents,
            thresholds: &self.plan.thresholds,
            full,
        });
        if self.message.is_some() {
            report.result = Outcome::Failed;
        }
        report
    }

    /// A throttle's (requested, executed, waiting) across agents.
    fn throttle_counts(&self, name: &str) -> (u64, u64, u64) {
        let mut r = self
            .throttles
            .get(name)
            .map(|st| (st.retired.requested, st.retired.executed, 0))
            .unwrap_or_default();
        for a in self.agents.values() {
            if let Some(d) = a.throttles.get(name) {
                r.0 += d.requested;
                r.1 += d.executed;
                if a.conn.is_some() {
                    r.2 += d.waiting;
                }
            }
        }
        r
    }

    /// The final report, once finished.
    pub fn final_report(&self) -> Option<&Report> {
        self.report.as_ref()
    }

    /// Ids owned by each agent now (tests and diagnostics).
    pub fn owners(&self) -> BTreeMap<String, Vec<UserId>> {
        let mut m: BTreeMap<String, Vec<UserId>> = BTreeMap::new();
        for (id, a) in &self.owner {
            m.entry(a.clone()).or_default().push(*id);
        }
        for v in m.values_mut() {
            v.sort_unstable();
        }
        m
    }

    /// The status the API serves.
    pub fn status(&self, now: Instant) -> MasterStatus {
        let report = match &self.report {
            Some(r) => r.clone(),
            None => self.build(false, now),
        };
        let u = &report.users;
        let running: u64 = self
            .agents
            .values()
            .filter(|a| a.conn.is_some())
            .map(|a| a.running)
            .sum();
        let last_rps = self
            .series
            .values()
            .next_back()
            .map(|p| p.rps)
            .unwrap_or(0.0);
        let total = &report.total;
        let (profile, arrivals) = self.profile_status(now, u.started, u.dropped);
        MasterStatus {
            profile,
            arrivals,
            test: self.plan.name.clone(),
            phase: self.phase,
            ended_by: self.ended_by.clone(),
            result: (self.phase == TestPhase::Finished).then_some(match report.result {
                Outcome::Passed => TestResult::Passed,
                Outcome::Failed => TestResult::Failed,
            }),
            message: self.message.clone(),
            started_at_ms: (self.memo.started_at_ms > 0).then_some(self.memo.started_at_ms),
            elapsed_s: report.duration_s,
            users: UserCounts {
                desired: self.memo.desired as i64,
                running: running as i64,
                started: u.started as i64,
                finished: u.finished as i64,
                failed: u.failed as i64,
            },
            agents: AgentCounts {
                desired: self.memo.agents as i64,
                ready: self.connected_count() as i64,
            },
            agent_status: self
                .agents
                .iter()
                .filter(|(_, a)| !a.lost || a.conn.is_some())
                .map(|(n, a)| AgentStatus {
                    name: n.clone(),
                    ready: a.conn.is_some(),
                    users: a.users as i64,
                })
                .collect(),
            requests: RequestCounts {
                total: total.requests as i64,
                per_second: last_rps,
                errors: total.errors as i64,
            },
            latency_ms: latency(&total.latency_ms),
            thresholds: report
                .thresholds
                .iter()
                .map(|t| ThresholdResult {
                    metric: t.metric.clone(),
                    step: t.step.clone(),
                    observed: t.observed.clone(),
                    passed: t.passed,
                })
                .collect(),
            throttles: self
                .throttles
                .iter()
                .map(|(n, st)| {
                    let (requested, executed, waiting) = self.throttle_counts(n);
                    ThrottleFigures {
                        name: n.clone(),
                        rate: st.rate_at(now),
                        interval: format_duration(st.limit.interval),
                        requested,
                        executed,
                        waiting,
                        shares: st.shares.clone(),
                    }
                })
                .collect(),
            coordinators: self
                .coordinators
                .iter()
                .map(|(n, c)| CoordinatorFigures {
                    name: n.clone(),
                    waiting: c.machine.waiting() as u64,
                    groups: c.groups,
                    timeouts: c.timeouts,
                })
                .collect(),
        }
    }
}

fn latency(p: &Percentiles) -> LatencySummary {
    LatencySummary {
        p50: p.p50,
        p95: p.p95,
        p99: p.p99,
        max: p.max,
    }
}

fn deliver(
    name: &str,
    c: &mut SharedCoordinator,
    released: Vec<(UserId, crate::coordinator::Coordination)>,
) -> Outbox {
    released
        .into_iter()
        .filter_map(|(user, co)| {
            let agent = c.waiting.remove(&user)?;
            Some((
                agent,
                ToAgent::Release {
                    coordinator: name.to_owned(),
                    user,
                    members: co.members,
                    peers: co.peers,
                    timed_out: co.timed_out,
                },
            ))
        })
        .collect()
}

fn release_everyone(name: &str, mut c: SharedCoordinator) -> Outbox {
    let (_, released) = c.machine.timeout();
    let mut out = deliver(name, &mut c, released);
    for (user, agent) in c.waiting.drain() {
        out.push((
            agent,
            ToAgent::Release {
                coordinator: name.to_owned(),
                user,
                members: Vec::new(),
                peers: Vec::new(),
                timed_out: true,
            },
        ));
    }
    out
}

/// Shares `rate` among agents by demand (water-filling): nobody gets more than it asks
/// while others want more; what is left goes evenly to everyone. The shares sum to `rate`.
pub fn fair_shares(rate: u64, demand: &[(String, u64)]) -> BTreeMap<String, u64> {
    let n = demand.len() as u64;
    let mut out: BTreeMap<String, u64> = BTreeMap::new();
    if n == 0 {
        return out;
    }
    let total_demand: u64 = demand.iter().map(|(_, d)| *d).sum();
    if total_demand == 0 {
        // Nobody asked yet: even shares, so that whoever asks first can go.
        for (i, (a, _)) in demand.iter().enumerate() {
            out.insert(a.clone(), rate / n + u64::from((i as u64) < rate % n));
        }
        return out;
    }
    let mut order: Vec<&(String, u64)> = demand.iter().collect();
    order.sort_by_key(|(a, d)| (*d, a.clone()));
    let mut left = rate;
    for (k, (a, d)) in order.iter().enumerate() {
        let fair = left / (n - k as u64);
        let give = (*d).min(fair);
        out.insert(a.clone(), give);
        left -= give;
    }
    // Leftover: evenly, the remainder to the first ones.
    let (even, mut extra) = (left / n, left % n);
    for (a, _) in demand {
        let e = out.get_mut(a).expect("inserted");
        *e += even + u64::from(extra > 0);
        extra = extra.saturating_sub(1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::plan_from_text;
    use crate::registry::Registry;

    const TEST: &str = "apiVersion: murmuration.dev/v1alpha1
kind: LoadTest
metadata: {name: t}
spec:
  users: 100
  agents: 2
  scenario:
    http:
      baseUrl: http://127.0.0.1:9
      steps:
        - throttle: shared
---
apiVersion: murmuration.dev/v1alpha1
kind: Throttle
metadata: {name: shared}
spec: {loadTest: t, rate: 1000, interval: 1s}
";

    fn core(now: Instant) -> Core {
        let plan = plan_from_text("t.yaml", TEST, &Registry::new(), &Vars::new()).unwrap();
        Core::new(plan, TEST.into(), MasterOptions::default(), now)
    }

    fn hello(name: &str, running: &[UserId]) -> FromAgent {
        FromAgent::Hello {
            name: name.into(),
            running: Ids::of(running.iter().copied()),
            ended: Ids::default(),
            memo: None,
            points: Vec::new(),
            throttles: BTreeMap::new(),
            shares: BTreeMap::new(),
            ids_left: 0,
        }
    }

    /// Who runs what, as the messages say.
    fn apply(out: &Outbox, runs: &mut BTreeMap<String, BTreeSet<UserId>>) {
        for (agent, msg) in out {
            let set = runs.entry(agent.clone()).or_default();
            match msg {
                ToAgent::Start { ids } => set.extend(ids.iter()),
                ToAgent::Stop { ids, .. } => {
                    for id in ids.iter() {
                        set.remove(&id);
                    }
                }
                _ => {}
            }
        }
    }

    fn exactly_once(runs: &BTreeMap<String, BTreeSet<UserId>>, n: u64) {
        let mut all: Vec<UserId> = runs.values().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (1..=n).collect::<Vec<_>>());
    }

    #[test]
    fn fair_shares_fill_the_small_demands_and_split_the_rest() {
        let d = |v: &[(&str, u64)]| {
            v.iter()
                .map(|(a, d)| (a.to_string(), *d))
                .collect::<Vec<_>>()
        };
        let s = fair_shares(
            1000,
            &d(&[("a", UNBOUNDED), ("b", UNBOUNDED), ("c", UNBOUNDED)]),
        );
        assert_eq!(s.values().sum::<u64>(), 1000);
        assert!(s.values().all(|v| *v == 333 || *v == 334), "{s:?}");
        let s = fair_shares(1000, &d(&[("a", 100), ("b", UNBOUNDED), ("c", UNBOUNDED)]));
        assert_eq!(s["a"], 100);
        assert_eq!(s["b"] + s["c"], 900);
        // Everyone satisfied: the leftover is spread too.
        let s = fair_shares(1000, &d(&[("a", 100), ("b", 200)]));
        assert_eq!((s["a"], s["b"]), (450, 550));
        assert_eq!(
            fair_shares(7, &d(&[("a", 0), ("b", 0)]))
                .values()
                .sum::<u64>(),
            7
        );
    }

    #[test]
    fn users_start_when_every_agent_is_here_and_move_when_one_is_lost() {
        let t0 = Instant::now();
        let mut c = core(t0);
        let mut runs = BTreeMap::new();
        apply(&c.hello(1, hello("a", &[]), t0).unwrap(), &mut runs);
        apply(&c.tick(t0), &mut runs);
        assert_eq!(c.phase(), TestPhase::Starting, "one agent of two");
        apply(&c.hello(2, hello("b", &[]), t0).unwrap(), &mut runs);
        apply(&c.tick(t0 + Duration::from_millis(100)), &mut runs);
        assert_eq!(c.phase(), TestPhase::Running);
        exactly_once(&runs, 100);
        assert_eq!(runs["a"].len(), 50);
        // b goes away: after the grace its users start on a.
        c.disconnected(2, "b", t0 + Duration::from_secs(1));
        apply(&c.tick(t0 + Duration::from_secs(2)), &mut runs);
        assert_eq!(runs["a"].len(), 50, "not before the reconnect grace");
        let out = c.tick(t0 + Duration::from_secs(4));
        runs.remove("b");
        apply(&out, &mut runs);
        exactly_once(&runs, 100);
        // b comes back still running its old users: they are stopped there.
        let out = c
            .hello(3, hello("b", &[2, 4, 6]), t0 + Duration::from_secs(5))
            .unwrap();
        let stopped: Vec<UserId> = out
            .iter()
            .filter_map(|(a, m)| match m {
                ToAgent::Stop { ids, forced: true } if a == "b" => {
                    Some(ids.iter().collect::<Vec<_>>())
                }
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(stopped, [2, 4, 6]);
        // New users go to it.
        c.set_users(110).unwrap();
        let out = c.tick(t0 + Duration::from_secs(6));
        let mut more = BTreeMap::new();
        apply(&out, &mut more);
        assert_eq!(more["b"], (101..=110).collect());
    }

    #[test]
    fn a_restarted_master_takes_the_test_back() {
        let t0 = Instant::now();
        let mut old = core(t0);
        let mut runs = BTreeMap::new();
        apply(&old.hello(1, hello("a", &[]), t0).unwrap(), &mut runs);
        apply(&old.hello(2, hello("b", &[]), t0).unwrap(), &mut runs);
        apply(&old.tick(t0), &mut runs);
        old.set_users(120).unwrap();
        apply(&old.tick(t0 + Duration::from_millis(100)), &mut runs);
        exactly_once(&runs, 120);
        let memo = old.memo.clone();
        // The new master hears from a (with the memo) but never from b.
        let t1 = t0 + Duration::from_secs(10);
        let mut new = core(t1);
        let FromAgent::Hello {
            name,
            running,
            ended,
            points,
            throttles,
            shares,
            ..
        } = hello("a", &runs["a"].iter().copied().collect::<Vec<_>>())
        else {
            unreachable!()
        };
        let h = FromAgent::Hello {
            name,
            running,
            ended,
            memo: Some(memo),
            points,
            throttles,
            shares,
            ids_left: 0,
        };
        let mut runs2: BTreeMap<String, BTreeSet<UserId>> = BTreeMap::new();
        runs2.insert("a".into(), runs["a"].clone());
        apply(&new.hello(1, h, t1).unwrap(), &mut runs2);
        assert_eq!(new.phase(), TestPhase::Running);
        assert_eq!(new.memo.desired, 120);
        apply(&new.tick(t1 + Duration::from_secs(1)), &mut runs2);
        assert_eq!(runs2["a"].len(), 60, "b's users wait for b a while");
        apply(
            &new.tick(t1 + RECOVERY_WAIT + Duration::from_secs(1)),
            &mut runs2,
        );
        exactly_once(&runs2, 120);
    }

    #[test]
    fn shares_never_let_agents_grant_more_than_the_limit_in_a_window() {
        let t0 = Instant::now();
        let mut c = core(t0);
        for (i, n) in ["a", "b", "c"].iter().enumerate() {
            c.hello(i as u64, hello(n, &[]), t0).unwrap();
        }
        c.set_agents(3).unwrap();
        let mut held: BTreeMap<String, Vec<(Instant, u64)>> = BTreeMap::new();
        let memory = Duration::from_millis(1500);
        let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(7);
        for step in 0..400u64 {
            let now = t0 + Duration::from_millis(100 * step);
            // Demand moves around at random, and so does the limit, now and then.
            if step % 10 == 0 {
                for n in ["a", "b", "c"] {
                    let d: u64 = rand::Rng::random_range(&mut rng, 0..900);
                    c.agents
                        .get_mut(n)
                        .unwrap()
                        .demand
                        .insert("shared".into(), if d > 600 { UNBOUNDED } else { d });
                }
            }
            if step == 150 {
                let spec: ThrottleSpec =
                    serde_json::from_str(r#"{"loadTest":"t","rate":300,"interval":"1s"}"#).unwrap();
                c.set_throttle("shared", spec, now).unwrap();
            }
            for (agent, msg) in c.tick(now) {
                if let ToAgent::Shares { shares } = msg {
                    held.entry(agent).or_default().push((now, shares["shared"]));
                }
            }
            let rate = c.throttles["shared"].rate_at(now);
            // What each agent may have granted at within the last window: every share it
            // held since one window ago (the one in force then, and all after).
            let in_window: u64 = held
                .values()
                .map(|h| {
                    let from = now.checked_sub(memory).unwrap_or(t0);
                    let before = h
                        .iter()
                        .rev()
                        .find(|(t, _)| *t <= from)
                        .map(|(_, s)| *s)
                        .unwrap_or(0);
                    h.iter()
                        .filter(|(t, _)| *t > from)
                        .map(|(_, s)| *s)
                        .max()
                        .unwrap_or(0)
                        .max(before)
                })
                .sum();
            if (150..170).contains(&step) {
                // Right after the limit was lowered, grants made under the old one are
                // still in the window: nothing more is given until they age out.
                continue;
            }
            assert!(
                in_window <= rate,
                "step {step}: {in_window} may be granted against a limit of {rate}: {held:?}"
            );
        }
        // Saturated at the end: the shares add up to the limit.
        for n in ["a", "b", "c"] {
            c.agents
                .get_mut(n)
                .unwrap()
                .demand
                .insert("shared".into(), UNBOUNDED);
        }
        for step in 400..440u64 {
            c.tick(t0 + Duration::from_millis(100 * step));
        }
        assert_eq!(c.throttles["shared"].shares.values().sum::<u64>(), 300);
    }

    #[test]
    fn a_ramp_and_a_parallel_limit_are_shared_too() {
        let t0 = Instant::now();
        let mut c = core(t0);
        c.hello(1, hello("a", &[]), t0).unwrap();
        c.hello(2, hello("b", &[]), t0).unwrap();
        c.tick(t0);
        for n in ["a", "b"] {
            c.agents
                .get_mut(n)
                .unwrap()
                .demand
                .insert("shared".into(), UNBOUNDED);
        }
        let ramp: ThrottleSpec = serde_json::from_str(
            r#"{"loadTest":"t","rate":100,"interval":"1s","ramp":{"to":1000,"step":100,"every":"1s"}}"#,
        )
        .unwrap();
        c.set_throttle("shared", ramp.clone(), t0).unwrap();
        let sum = |c: &Core| c.throttles["shared"].shares.values().sum::<u64>();
        c.tick(t0 + Duration::from_millis(100));
        assert_eq!(sum(&c), 100);
        for step in 1..=80u64 {
            c.tick(t0 + Duration::from_millis(100 * step));
        }
        // 8 s in: 100 + 8 x 100, shared by both agents.
        assert_eq!(
            c.throttles["shared"].rate_at(t0 + Duration::from_secs(8)),
            900
        );
        assert_eq!(sum(&c), 900);
        // Pushing the same spec again does not restart the ramp.
        c.set_throttle("shared", ramp, t0 + Duration::from_secs(8))
            .unwrap();
        assert_eq!(
            c.throttles["shared"].rate_at(t0 + Duration::from_secs(8)),
            900
        );
        // Parallel executions: 5 slots over two agents.
        let parallel: ThrottleSpec =
            serde_json::from_str(r#"{"loadTest":"t","rate":5,"interval":"0s"}"#).unwrap();
        let t1 = t0 + Duration::from_secs(9);
        c.set_throttle("shared", parallel, t1).unwrap();
        for step in 0..30u64 {
            c.tick(t1 + Duration::from_millis(100 * step));
        }
        assert_eq!(sum(&c), 5);
        assert!(c.throttles["shared"]
            .shares
            .values()
            .all(|s| *s == 2 || *s == 3));
    }

    #[test]
    fn an_agent_restarted_within_the_grace_gets_its_users_started_again() {
        let t0 = Instant::now();
        let mut c = core(t0);
        let mut runs = BTreeMap::new();
        apply(&c.hello(1, hello("a", &[]), t0).unwrap(), &mut runs);
        apply(&c.hello(2, hello("b", &[]), t0).unwrap(), &mut runs);
        apply(&c.tick(t0), &mut runs);
        exactly_once(&runs, 100);
        // b's process restarts (a new pod under the same name) and is back in 1 s, with
        // nothing running: its 50 users must run again, once.
        c.disconnected(2, "b", t0 + Duration::from_millis(500));
        runs.insert("b".into(), BTreeSet::new());
        apply(
            &c.hello(3, hello("b", &[]), t0 + Duration::from_secs(1))
                .unwrap(),
            &mut runs,
        );
        apply(&c.tick(t0 + Duration::from_millis(1100)), &mut runs);
        exactly_once(&runs, 100);
    }

    #[test]
    fn missing_agents_fail_the_test_with_a_reason() {
        let t0 = Instant::now();
        let mut c = core(t0);
        c.hello(1, hello("a", &[]), t0).unwrap();
        c.tick(t0 + Duration::from_secs(1));
        assert_eq!(c.phase(), TestPhase::Starting);
        // spec.start.waitForAgents defaults to 5 minutes.
        c.tick(t0 + Duration::from_secs(301));
        let st = c.status(t0 + Duration::from_secs(301));
        assert_eq!(st.phase, TestPhase::Stopping);
        assert_eq!(
            st.message.as_deref(),
            Some("only 1 of 2 agents connected within 5m")
        );
        c.tick(t0 + Duration::from_secs(309));
        let st = c.status(t0 + Duration::from_secs(309));
        assert_eq!(st.phase, TestPhase::Finished);
        assert_eq!(st.result, Some(TestResult::Failed));
        assert_eq!(st.users.started, 0, "no user started");
    }
}
