//! Throttles shared by the agents: each throttle's rate is shared among the connected agents
//! by demand (water-filling), and the counters of every agent are summed.

use std::collections::BTreeMap;

use tokio::time::Instant;

use murmuration_crds::api::TestPhase;

use super::{Core, Outbox};
use crate::wire::ToAgent;

impl Core {
    /// Shares each throttle's rate among the connected agents by demand, so that the sum
    /// of what any agent may still grant within one interval never exceeds the limit.
    pub(super) fn reshare(&mut self, now: Instant) -> Outbox {
        if self.phase == TestPhase::Starting {
            // No user runs yet: shared once every agent is here, not to the first one in
            // (whose share would then stay reserved for a window).
            return Outbox::new();
        }
        // A restarted master knows the shares of the agents that said hello again, not of
        // those still on their way back, which keep granting at what the former master gave
        // them: until every agent is back (or given up), shares are lowered, never raised.
        let recovering = self.recovering_until.is_some();
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
                if *target > cur && !recovering {
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

    /// A throttle's (requested, executed, waiting) across agents.
    pub(super) fn throttle_counts(&self, name: &str) -> (u64, u64, u64) {
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
