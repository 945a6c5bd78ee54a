//! The master's side of load profiles: the desired users a stage profile plans (until a
//! person takes over), and an open model's split among agents (lanes of the schedule,
//! re-split when an agent is lost or joins) with arrival ids handed out in disjoint blocks.

use std::time::Duration;

use tokio::time::Instant;

use murmuration_crds::loadtest::{ArrivalCounts, ProfileStatus};
use murmuration_crds::profile::{IdBlocks, LoadProfile};

use super::{Core, Outbox};
use crate::wire::{ArrivalSplit, ToAgent};

/// A new split applies to the arrivals due this long after it is made, so that every agent
/// has it before it matters.
const SPLIT_LEAD: Duration = Duration::from_millis(500);
/// An agent holds ids for about this long of its share of the rate.
const IDS_AHEAD: Duration = Duration::from_secs(4);
/// The smallest block of ids.
const MIN_BLOCK: u64 = 64;
/// Once a schedule is over, agents get this long to report that their last arrivals ended.
const ARRIVALS_SETTLE: Duration = Duration::from_millis(1500);

impl Core {
    /// Follows the profile at `now`: the users a stage profile plans, the split of an open
    /// model and its ids.
    pub(super) fn follow_profile(&mut self, now: Instant) -> Outbox {
        let Some(started) = self.started else {
            return Outbox::new();
        };
        let elapsed = now.saturating_duration_since(started);
        match &self.plan.profile {
            LoadProfile::Users(_) => Outbox::new(),
            LoadProfile::Stages(stages) => {
                if !self.memo.overridden {
                    let planned = stages.at(elapsed).users;
                    if planned != self.memo.desired {
                        self.memo.desired = planned;
                        self.bump_memo();
                    }
                }
                Outbox::new()
            }
            LoadProfile::Arrivals(schedule) => {
                let schedule = schedule.clone();
                self.split_arrivals(elapsed, &schedule);
                self.grant_ids(elapsed, &schedule, now)
            }
        }
    }

    /// Agents that run arrivals: every one not lost and not finished (one that is away
    /// within its grace keeps its lane: it goes on with its arrivals meanwhile).
    fn arrival_agents(&self) -> Vec<String> {
        self.agents
            .iter()
            .filter(|(_, a)| !a.lost && !a.finished && (a.conn.is_some() || a.gone_since.is_some()))
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn split_arrivals(
        &mut self,
        elapsed: Duration,
        schedule: &murmuration_crds::profile::ArrivalSchedule,
    ) {
        let agents = self.arrival_agents();
        if agents.is_empty() || self.memo.split.as_ref().map(|s| &s.agents) == Some(&agents) {
            return;
        }
        let from = match &self.memo.split {
            None => 0,
            Some(_) => schedule.due_before(elapsed + SPLIT_LEAD),
        };
        tracing::info!(
            from,
            agents = agents.len(),
            "arrivals split among the agents"
        );
        self.memo.split = Some(ArrivalSplit { from, agents });
        self.bump_memo();
    }

    fn grant_ids(
        &mut self,
        elapsed: Duration,
        schedule: &murmuration_crds::profile::ArrivalSchedule,
        now: Instant,
    ) -> Outbox {
        let mut out = Outbox::new();
        let Some(split) = self.memo.split.clone() else {
            return out;
        };
        if schedule.end().is_some_and(|e| elapsed >= e) {
            return out;
        }
        let n = split.agents.len().max(1) as f64;
        let rate = schedule
            .rate_at(elapsed)
            .max(schedule.rate_at(elapsed + IDS_AHEAD));
        let want = ((rate / n * IDS_AHEAD.as_secs_f64()).ceil() as u64).max(MIN_BLOCK);
        for name in &split.agents {
            let Some(book) = self.agents.get_mut(name) else {
                continue;
            };
            if book.conn.is_none() || book.ids_left >= want / 2 {
                continue;
            }
            // Its report may not count a block still on the way: one block a second.
            if book
                .ids_granted_at
                .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1))
            {
                continue;
            }
            let mut blocks = IdBlocks {
                next: self.memo.next_arrival_id,
            };
            let (first, last) = blocks.grant(want);
            self.memo.next_arrival_id = blocks.next;
            book.ids_left += want;
            book.ids_granted_at = Some(now);
            out.push((name.clone(), ToAgent::Ids { first, last }));
            self.memo_dirty = true;
        }
        if !out.is_empty() {
            self.memo.version += 1;
        }
        out
    }

    /// Why the test ends by its profile, if it does now: the last stage is over, or every
    /// arrival was started and has ended.
    pub(super) fn profile_end_due(&self, now: Instant) -> Option<&'static str> {
        if self.plan.duration.is_some() {
            return None;
        }
        let elapsed = now.saturating_duration_since(self.started?);
        match &self.plan.profile {
            LoadProfile::Users(_) => None,
            LoadProfile::Stages(s) => {
                (!self.memo.overridden && elapsed >= s.total()).then_some("stages")
            }
            LoadProfile::Arrivals(a) => {
                let end = a.end()?;
                let running: u64 = self
                    .agents
                    .values()
                    .filter(|b| b.conn.is_some())
                    .map(|b| b.running)
                    .sum();
                (elapsed >= end + ARRIVALS_SETTLE && running == 0).then_some("completed")
            }
        }
    }

    /// A person set the users: a stage profile stops there.
    pub(super) fn override_profile(&mut self) {
        if matches!(self.plan.profile, LoadProfile::Stages(_)) && !self.memo.overridden {
            tracing::warn!("users set by hand: the stage profile stops here");
            self.memo.overridden = true;
        }
    }

    /// What the profile plans at `t` after the start, for the series (none once
    /// overridden).
    pub(super) fn planned_at(&self, t: Duration) -> Option<f64> {
        if self.memo.overridden {
            return None;
        }
        self.plan.profile.planned_at(t)
    }

    /// The profile's part of the status.
    pub(super) fn profile_status(
        &self,
        now: Instant,
        started: u64,
        dropped: u64,
    ) -> (Option<ProfileStatus>, Option<ArrivalCounts>) {
        let elapsed = self
            .started
            .map(|s| now.saturating_duration_since(s))
            .unwrap_or_default();
        match &self.plan.profile {
            LoadProfile::Users(_) => (None, None),
            LoadProfile::Stages(s) => {
                let at = s.at(elapsed);
                let overridden = self.memo.overridden;
                (
                    Some(ProfileStatus {
                        stage: if overridden || self.started.is_none() {
                            None
                        } else {
                            at.stage.map(|i| i as i64 + 1)
                        },
                        planned_users: if overridden {
                            self.memo.desired as i64
                        } else {
                            at.users as i64
                        },
                        overridden,
                    }),
                    None,
                )
            }
            LoadProfile::Arrivals(a) => (
                None,
                Some(ArrivalCounts {
                    planned_per_second: if self.started.is_some() {
                        a.rate_at(elapsed)
                    } else {
                        0.0
                    },
                    started: started as i64,
                    dropped: dropped as i64,
                }),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::master::state::{MasterOptions, RECONNECT_GRACE};
    use crate::plan::plan_from_text;
    use crate::registry::Registry;
    use crate::scenario::Vars;
    use crate::wire::{FromAgent, Ids};

    fn core(spec: &str, now: Instant) -> Core {
        let text = format!(
            "apiVersion: murmuration.dev/v1alpha1
kind: LoadTest
metadata: {{name: t}}
spec:
  agents: 3
{spec}
  scenario:
    http:
      baseUrl: http://127.0.0.1:9
      steps:
        - request: {{path: /}}
"
        );
        let plan = plan_from_text("t.yaml", &text, &Registry::new(), &Vars::new()).unwrap();
        Core::new(plan, text, MasterOptions::default(), now)
    }

    fn hello(name: &str) -> FromAgent {
        FromAgent::Hello {
            name: name.into(),
            running: Ids::default(),
            ended: Ids::default(),
            memo: None,
            points: Vec::new(),
            throttles: BTreeMap::new(),
            shares: BTreeMap::new(),
            ids_left: 0,
        }
    }

    fn id_blocks(out: &Outbox) -> Vec<(String, u64, u64)> {
        out.iter()
            .filter_map(|(a, m)| match m {
                ToAgent::Ids { first, last } => Some((a.clone(), *first, *last)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn arrivals_are_split_among_agents_and_ids_never_handed_out_twice() {
        let t0 = Instant::now();
        let mut c = core("  arrivals: {rate: 300/s}", t0);
        for (i, a) in ["a", "b", "c"].iter().enumerate() {
            c.hello(i as u64 + 1, hello(a), t0).unwrap();
        }
        let out = c.tick(t0);
        let split = c.memo.split.clone().expect("split at the start");
        assert_eq!(split.from, 0);
        assert_eq!(split.agents, ["a", "b", "c"]);
        let mut blocks = id_blocks(&out);
        assert_eq!(blocks.len(), 3, "every agent gets ids: {blocks:?}");
        // b goes away for good: a and c share the schedule from a later arrival on.
        c.disconnected(2, "b", t0 + Duration::from_secs(1));
        let later = t0 + Duration::from_secs(1) + RECONNECT_GRACE + Duration::from_millis(200);
        let out = c.tick(later);
        let split = c.memo.split.clone().unwrap();
        assert_eq!(split.agents, ["a", "c"]);
        assert!(
            split.from >= 900,
            "the new split starts after what is due: {}",
            split.from
        );
        blocks.extend(id_blocks(&out));
        // Ids keep coming as the agents use them; no range overlaps another.
        for s in 4..10u64 {
            let at = t0 + Duration::from_secs(s);
            for (conn, a) in [(1, "a"), (3, "c")] {
                c.from_agent(
                    conn,
                    a,
                    FromAgent::Report {
                        point: crate::wire::AgentPoint {
                            at_ms: s * 1000,
                            users: 0,
                            period: Default::default(),
                        },
                        ended: Ids::default(),
                        running: 0,
                        throttles: BTreeMap::new(),
                        ids_left: 0,
                    },
                    at,
                );
            }
            blocks.extend(id_blocks(&c.tick(at)));
        }
        assert!(blocks.len() > 5, "{blocks:?}");
        let mut ranges: Vec<(u64, u64)> = blocks.iter().map(|(_, a, b)| (*a, *b)).collect();
        ranges.sort_unstable();
        for w in ranges.windows(2) {
            assert!(
                w[0].1 < w[1].0,
                "overlapping id blocks {:?} and {:?}",
                w[0],
                w[1]
            );
        }
        assert!(c.memo.next_arrival_id > ranges.last().unwrap().1);
    }

    #[test]
    fn the_stage_line_sets_the_users_until_a_person_does() {
        let t0 = Instant::now();
        let mut c = core(
            "  stages: [{duration: 10s, users: 100}, {duration: 10s, users: 100}]",
            t0,
        );
        for (i, a) in ["a", "b", "c"].iter().enumerate() {
            c.hello(i as u64 + 1, hello(a), t0).unwrap();
        }
        c.tick(t0);
        c.tick(t0 + Duration::from_secs(5));
        assert_eq!(c.memo.desired, 50);
        let status = c.status(t0 + Duration::from_secs(5)).profile.unwrap();
        assert_eq!((status.stage, status.planned_users), (Some(1), 50));
        c.set_users(7).unwrap();
        c.tick(t0 + Duration::from_secs(8));
        assert_eq!(c.memo.desired, 7, "the person's users stay");
        let status = c.status(t0 + Duration::from_secs(8)).profile.unwrap();
        assert!(status.overridden);
        assert_eq!(status.stage, None);
        // An overridden profile does not end the test at the end of its stages.
        assert_eq!(c.profile_end_due(t0 + Duration::from_secs(30)), None);
    }
}
