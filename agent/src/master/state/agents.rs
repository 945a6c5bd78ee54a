//! The master's dealings with agents: hellos (and adopting a former master's memo),
//! their messages, disconnections, silence, and placing users on the least loaded ones.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use murmuration_crds::api::TestPhase;

use super::{AgentBook, Core, Outbox, RECOVERY_WAIT, SILENCE_LIMIT, UNBOUNDED};
use crate::engine::now_ms;
use crate::scenario::UserId;
use crate::wire::{FromAgent, Ids, Memo, ToAgent};

impl Core {
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
    pub(super) fn adopt(&mut self, memo: Memo, now: Instant) {
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

    pub(super) fn take_ended(&mut self, name: &str, ended: &Ids) {
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

    pub(super) fn recount(&mut self) {
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
    pub(super) fn least_loaded(&self) -> Option<String> {
        self.agents
            .iter()
            .filter(|(_, a)| a.conn.is_some() && !a.finished)
            .min_by_key(|(n, a)| (a.users, (*n).clone()))
            .map(|(n, _)| n.clone())
    }

    /// Gives `ids` to agents, balancing by load.
    pub(super) fn place(&mut self, ids: impl IntoIterator<Item = UserId>) -> Outbox {
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
}
