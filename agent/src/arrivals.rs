//! Runs an open model's arrivals in one process: starts each arrival of this process's
//! lane of the schedule at its intended time, with a new id, unless `maxConcurrent` users
//! already run here (then it is dropped and counted, never queued). Used by the local
//! controller (`murmur run`, the whole schedule) and by an agent (its lane, ids from its
//! master's blocks).
//!
//! An arrival's intended time comes from the schedule alone: when the engine is late, it
//! starts the arrival late and the corrected latency shows it.

use std::time::{Duration, Instant};

use murmuration_crds::profile::{ArrivalSchedule, IdPool, Lane};

use crate::engine::Engine;
use crate::scenario::UserId;

/// After a stall, at most this many overdue arrivals are started in one go (the rest
/// follow at the next look, a moment later), so that the controller stays responsive.
const MAX_BATCH: usize = 10_000;

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
            done: false,
        }
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

    /// Starts (or drops) every arrival due by `now`; returns when the next one is due.
    pub fn run_due(&mut self, engine: &Engine, now: Instant) -> Option<Instant> {
        let mut batch: Vec<(UserId, Instant)> = Vec::new();
        let mut dropped = 0;
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
            let cap = lane.share_of(self.schedule.max_concurrent);
            if engine.running() + batch.len() as u64 >= cap {
                dropped += 1;
            } else if let Some(id) = self.take_id() {
                batch.push((id, at));
            } else {
                dropped += 1;
                self.dropped_no_id += 1;
            }
            self.last_run = Some(self.next);
            self.next = lane.after(self.next);
        };
        self.started += batch.len() as u64;
        self.dropped += dropped;
        if !batch.is_empty() {
            engine.start_arrivals(batch);
        }
        if dropped > 0 {
            engine.count_dropped(dropped);
        }
        wake
    }
}
