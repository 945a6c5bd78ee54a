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

use murmuration_crds::api::TestPhase;
use murmuration_crds::units::format_duration;
use murmuration_crds::{CoordinatorSpec, ThrottleSpec};
use murmuration_model::pacing::{completed, UserPacer};
use murmuration_model::throttle::{Ramp, ThrottlePlan};

use crate::coordinator::{timeout_of, Machine};
use crate::engine::now_ms;
use crate::metrics::Period;
use crate::plan::TestPlan;
use crate::report::{Report, SeriesPoint};
use crate::scenario::{UserId, Vars};
use crate::throttle::{plan_of, Limit};
use crate::wire::{Ids, Memo, ThrottleDemand, ToAgent};

mod agents;
mod coordinators;
mod profile;
mod report;
#[cfg(test)]
mod tests;
mod throttles;

use coordinators::release_everyone;

pub use throttles::fair_shares;

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
    /// An earlier run to compare with (`--baseline`; the operator mounts `spec.baseline`).
    pub baseline: Option<std::sync::Arc<crate::report::baseline::Baseline>>,
}

impl Default for MasterOptions {
    fn default() -> Self {
        MasterOptions {
            stop_grace: crate::engine::DEFAULT_STOP_GRACE,
            agents: None,
            baseline: None,
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
    /// Iterations sampled for the report's plot.
    sampled: crate::tally::IterationReservoir,
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
            sampled: Default::default(),
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
}
