//! Runs an open model's arrivals in one process: starts each arrival of this process's
//! lane of the schedule at its intended time, with a new id, unless `maxConcurrent` users
//! already run here (then it is dropped and counted, never queued). Used by the local
//! controller (`murmur run`, the whole schedule) and by an agent (its lane, ids from its
//! master's blocks).
//!
//! An arrival's intended time comes from the schedule alone: when the engine is late, it
//! starts the arrival late and the corrected latency shows it.
//!
//! Arrivals are counted (started, dropped) in the report's periods by their intended time,
//! not by when the engine got to them: the periods are windows of the schedule's own
//! seconds, and a window is handed to the report (`take_closed`) only once every arrival
//! due in it has been run. A period's count is then the schedule's, whatever the machine's
//! lag, and a shortfall can only mean arrivals that were not run.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use murmuration_crds::profile::{ArrivalSchedule, IdPool, Lane};

use crate::engine::Engine;
use crate::scenario::UserId;

/// After a stall, at most this many overdue arrivals are started in one go (the rest
/// follow at the next look, a moment later), so that the controller stays responsive.
const MAX_BATCH: usize = 10_000;

/// The windows in which arrivals are counted: the schedule's seconds.
const WINDOW: Duration = Duration::from_secs(1);

/// Where an arrival's id comes from.
#[derive(Debug)]
pub enum IdSource {
    /// One process runs the whole test: ids counted up from 1.
    Counter(UserId),
    /// Blocks from the master (ids are unique across agents).
    Pool(IdPool),
}

/// This process's arrivals.
#[derive(Debug)]
pub struct ArrivalRunner {
    schedule: ArrivalSchedule,
    /// The schedule's time zero in this process.
    origin: Instant,
    lane: Option<Lane>,
    /// A new split, from its `from` on.
    pending: Option<Lane>,
    /// The next global arrival index this process would run.
    next: u64,
    /// The last one it ran (started or dropped).
    last_run: Option<u64>,
    ids: IdSource,
    /// Arrivals started here since the beginning.
    pub started: u64,
    /// Arrivals dropped here since the beginning.
    pub dropped: u64,
    /// Of those, dropped because no id was left (the master was away too long).
    pub dropped_no_id: u64,
    /// Arrivals run (started, dropped) and not yet reported, by the window (the schedule's
    /// second) in which they were due.
    windows: BTreeMap<u64, (u64, u64)>,
    /// Windows begin this long before the schedule's whole seconds (an agent reports just
    /// before each second of the test ends).
    window_shift: Duration,
    done: bool,
}

impl ArrivalRunner {
    /// Runs `schedule` from `origin`, in `lane` (`None`: none yet), taking ids from `ids`.
    pub fn new(
        schedule: ArrivalSchedule,
        origin: Instant,
        lane: Option<Lane>,
        ids: IdSource,
    ) -> ArrivalRunner {
        ArrivalRunner {
            schedule,
            origin,
            next: lane.map(|l| l.first_at_or_after(0)).unwrap_or(0),
            lane,
            last_run: None,
            pending: None,
            ids,
            started: 0,
            dropped: 0,
            dropped_no_id: 0,
            windows: BTreeMap::new(),
            window_shift: Duration::ZERO,
            done: false,
        }
    }

    /// Counts arrivals in windows that begin `early` before each whole second of the
    /// schedule, for a reporter that reports that early.
    pub fn with_windows_early(mut self, early: Duration) -> ArrivalRunner {
        self.window_shift = early.min(WINDOW);
        self
    }

    fn window_of(&self, t: Duration) -> u64 {
        ((t + self.window_shift).as_nanos() / WINDOW.as_nanos()) as u64
    }

    /// Runs what is due by `now`, then takes the counts (started, dropped) of the windows
    /// that ended by `now`: every arrival due in them has been run.
    pub fn take_closed(&mut self, engine: &Engine, now: Instant) -> (u64, u64) {
        self.run_due(engine, now);
        let t = now.saturating_duration_since(self.origin);
        // Window w ends at (w + 1) s − shift: closed when that is at or before t.
        let open = self.window_of(t);
        let rest = self.windows.split_off(&open);
        let closed = std::mem::replace(&mut self.windows, rest);
        closed
            .into_values()
            .fold((0, 0), |(s, d), (s2, d2)| (s + s2, d + d2))
    }

    /// Takes the counts of every window, at the end of the test.
    pub fn take_all(&mut self) -> (u64, u64) {
        std::mem::take(&mut self.windows)
            .into_values()
            .fold((0, 0), |(s, d), (s2, d2)| (s + s2, d + d2))
    }

    /// The schedule.
    pub fn schedule(&self) -> &ArrivalSchedule {
        &self.schedule
    }

    /// Every arrival of the schedule is behind (started or dropped).
    pub fn done(&self) -> bool {
        self.done
    }

    /// Takes a new split, effective from its `from` index on (at once when that has
    /// passed already).
    pub fn set_lane(&mut self, lane: Option<Lane>) {
        match (self.lane, lane) {
            (_, None) => {
                self.lane = None;
                self.pending = None;
            }
            (None, Some(l)) => {
                let after = self.last_run.map_or(0, |k| k + 1);
                self.lane = Some(l);
                self.next = l.first_at_or_after(after.max(l.from));
            }
            (Some(cur), Some(l)) if cur != l => self.pending = Some(l),
            _ => {}
        }
    }

    /// Adds ids from the master.
    pub fn add_ids(&mut self, block: (UserId, UserId)) {
        if let IdSource::Pool(p) = &mut self.ids {
            p.add(block);
        }
    }

    /// Ids left (for the master to top up).
    pub fn ids_left(&self) -> u64 {
        match &self.ids {
            IdSource::Counter(_) => u64::MAX,
            IdSource::Pool(p) => p.left(),
        }
    }

    fn take_id(&mut self) -> Option<UserId> {
        match &mut self.ids {
            IdSource::Counter(next) => {
                *next += 1;
                Some(*next)
            }
            IdSource::Pool(p) => p.take(),
        }
    }

    /// The most arrival users this process may run now: its share of `maxConcurrent`, so
    /// that the agents' shares sum to it exactly. While a new split is on its way (an agent
    /// joined or left), the smaller of the old and the new share: an agent whose share
    /// shrinks stops starting beyond it as soon as it hears of it, not only once the new
    /// split applies. (Users already running are never cut short: after a join, the sum
    /// can stay above `maxConcurrent` until the extra ones finish their run.)
    fn concurrency_cap(&self, lane: Lane) -> u64 {
        let total = self.schedule.max_concurrent;
        let now = lane.share_of(total);
        self.pending.map_or(now, |p| now.min(p.share_of(total)))
    }

    /// Starts (or drops) every arrival due by `now`; returns when the next one is due.
    pub fn run_due(&mut self, engine: &Engine, now: Instant) -> Option<Instant> {
        let mut batch: Vec<(UserId, Instant)> = Vec::new();
        let wake = loop {
            if let Some(p) = self.pending {
                if self.next >= p.from {
                    // The new split from its start, but nothing run here twice (a split
                    // that arrived late skips what the old one ran).
                    let after = self.last_run.map_or(0, |k| k + 1);
                    self.lane = Some(p);
                    self.pending = None;
                    self.next = p.first_at_or_after(after.max(p.from));
                }
            }
            let Some(lane) = self.lane else {
                break None;
            };
            let Some(t) = self.schedule.time_of(self.next) else {
                self.done = true;
                break None;
            };
            let at = self.origin + t;
            if at > now {
                break Some(at);
            }
            if batch.len() >= MAX_BATCH {
                break Some(now + Duration::from_millis(1));
            }
            let cap = self.concurrency_cap(lane);
            let window = self.window_of(t);
            let started = if engine.running() + batch.len() as u64 >= cap {
                false
            } else if let Some(id) = self.take_id() {
                batch.push((id, at));
                true
            } else {
                self.dropped_no_id += 1;
                false
            };
            let counts = self.windows.entry(window).or_default();
            if started {
                counts.0 += 1;
            } else {
                counts.1 += 1;
                self.dropped += 1;
            }
            self.last_run = Some(self.next);
            self.next = lane.after(self.next);
        };
        self.started += batch.len() as u64;
        if !batch.is_empty() {
            engine.start_arrivals(batch);
        }
        wake
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runner(max_concurrent: u64, lane: Lane) -> ArrivalRunner {
        let schedule = ArrivalSchedule::new(100.0, &[], max_concurrent);
        ArrivalRunner::new(schedule, Instant::now(), Some(lane), IdSource::Counter(0))
    }

    fn lane(from: u64, position: u64, agents: u64) -> Lane {
        Lane {
            from,
            position,
            agents,
        }
    }

    #[test]
    fn the_agents_shares_of_max_concurrent_sum_to_it_and_follow_the_split() {
        // 10 among 3 agents: 4, 3, 3; among 2: 5, 5.
        let shares: Vec<u64> = (0..3)
            .map(|p| runner(10, lane(0, p, 3)).concurrency_cap(lane(0, p, 3)))
            .collect();
        assert_eq!(shares, [4, 3, 3]);
        let mut r = runner(10, lane(0, 0, 2));
        assert_eq!(r.concurrency_cap(lane(0, 0, 2)), 5);
        // A third agent joins: the new split applies from arrival 50, but the smaller
        // share holds from the moment it is known.
        r.set_lane(Some(lane(50, 1, 3)));
        assert_eq!(r.concurrency_cap(lane(0, 0, 2)), 3);
        // An agent leaves: the larger share waits for the new split to apply.
        let mut r = runner(10, lane(0, 1, 3));
        r.set_lane(Some(lane(50, 0, 2)));
        assert_eq!(r.concurrency_cap(lane(0, 1, 3)), 3);
    }
}
