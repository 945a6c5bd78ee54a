//! Coordinators hosted by the master: users join them, groups are released to the agents
//! their members run on, and waiting users are released on timeouts or when a coordinator
//! is replaced or deleted.

use tokio::time::Instant;

use super::{Core, Outbox, SharedCoordinator};
use crate::coordinator::Member;
use crate::scenario::UserId;
use crate::wire::ToAgent;

impl Core {
    pub(super) fn join(
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

    pub(super) fn coordinator_timeouts(&mut self, now: Instant) -> Outbox {
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
}

pub(super) fn deliver(
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

pub(super) fn release_everyone(name: &str, mut c: SharedCoordinator) -> Outbox {
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
