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
        tracing::info!(from, agents = agents.len(), "arrivals split among the agents");
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
