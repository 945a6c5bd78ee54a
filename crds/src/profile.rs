//! Load profiles, without any I/O: what a test's shape asks for at a given time.
//!
//! - [`StageProfile`] (`spec.stages`, closed model): the users planned at `t`, moving
//!   linearly from the count before each stage to the stage's `users` over its `duration`.
//! - [`ArrivalSchedule`] (`spec.arrivals`, open model): the intended time of every arrival,
//!   at a rate that moves linearly through `arrivals.stages`. Arrival `k` (0-based) is due
//!   when the integral of the rate reaches `k + ½`, so a constant rate of `r/s` puts
//!   exactly `r` arrivals in every second, and a rate of zero none. An arrival's time is fixed by the schedule, never by when the
//!   engine got round to it: latency measured from it cannot omit a stall.
//! - [`Lane`]: how agents split one schedule exactly (round robin over arrival indices, so
//!   the agents' arrivals together are the schedule itself), [`IdBlocks`]/[`IdPool`]: how
//!   arrival ids stay unique across agents (the master hands out disjoint blocks).
//! - [`compile_profile`]: the checks of `users`/`stages`/`arrivals`, each error naming its
//!   field.
//!
//! Depends only on std, the CRD types and their units (no engine, no client), so that the
//! operator and the engine call the same checks, and it moves unchanged into the manifest
//! model.

use std::time::Duration;

use crate::loadtest::LoadTestSpec;
use crate::units::{parse_duration, Rate};

/// A field of a spec whose load profile is wrong, and why (callers turn it into their own
/// field error: the engine's plan, the operator's `Invalid`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// Path of the field, e.g. `spec.stages[1].users`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FieldError {
    fn new(field: impl Into<String>, reason: impl std::fmt::Display) -> FieldError {
        FieldError {
            field: field.into(),
            reason: reason.to_string(),
        }
    }
}

/// The most arrival users running at once when `maxConcurrent` is left out.
pub const DEFAULT_MAX_CONCURRENT: u64 = 10_000;

/// One stage of a user profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stage {
    /// How long the move takes.
    pub duration: Duration,
    /// Users at its end.
    pub users: u64,
}

/// Where a stage profile is at some time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Planned {
    /// Users planned (the line's value, rounded to the nearest user).
    pub users: u64,
    /// The line's exact value.
    pub exact: f64,
    /// The stage running (0-based), `None` once every stage is over.
    pub stage: Option<usize>,
}

/// `spec.stages`: users along a declared line.
#[derive(Debug, Clone, PartialEq)]
pub struct StageProfile {
    /// Users before the first stage (`spec.users`, else 0).
    pub from: u64,
    /// The stages, in order.
    pub stages: Vec<Stage>,
}

/// Below this, a line that moves is looked at again anyway (a steep ramp must not wake
/// the controller once per user).
const MIN_STEP: Duration = Duration::from_millis(5);

impl StageProfile {
    /// How long all stages take together.
    pub fn total(&self) -> Duration {
        self.stages.iter().map(|s| s.duration).sum()
    }

    /// The users planned `t` after the profile started.
    pub fn at(&self, t: Duration) -> Planned {
        let mut start = Duration::ZERO;
        let mut before = self.from as f64;
        for (i, s) in self.stages.iter().enumerate() {
            let end = start + s.duration;
            if t < end {
                let done = (t - start).as_secs_f64() / s.duration.as_secs_f64();
                let exact = before + (s.users as f64 - before) * done;
                return Planned {
                    users: exact.round().max(0.0) as u64,
                    exact,
                    stage: Some(i),
                };
            }
            start = end;
            before = s.users as f64;
        }
        Planned {
            users: before as u64,
            exact: before,
            stage: None,
        }
    }

    /// When (after `t`) the planned users may change next: when the line crosses the next
    /// half user, or the current stage ends; `None` once the profile is over.
    pub fn next_change(&self, t: Duration) -> Option<Duration> {
        let mut start = Duration::ZERO;
        let mut before = self.from as f64;
        for s in &self.stages {
            let end = start + s.duration;
            if t < end {
                let to = s.users as f64;
                if to == before {
                    return Some(end);
                }
                let now = self.at(t).exact;
                let n = now.round();
                // The next half-user boundary in the direction of travel.
                let target = if to > before { n + 0.5 } else { n - 0.5 };
                let frac = (target - before) / (to - before);
                let at = start + s.duration.mul_f64(frac.clamp(0.0, 1.0));
                return Some(at.max(t + MIN_STEP).min(end));
            }
            start = end;
            before = s.users as f64;
        }
        None
    }
}

/// One piece of an arrival rate: from `from` to `to` arrivals per second over `duration`
/// (`None`: for ever, at `from`).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Segment {
    start: f64,
    /// Arrivals due before the segment (the rate's integral up to `start`).
    before: f64,
    from: f64,
    to: f64,
    duration: Option<f64>,
}

impl Segment {
    fn arrivals_in(&self, tau: f64) -> f64 {
        match self.duration {
            Some(d) if d > 0.0 => self.from * tau + (self.to - self.from) * tau * tau / (2.0 * d),
            Some(_) => 0.0,
            None => self.from * tau,
        }
    }

    fn rate_at(&self, tau: f64) -> f64 {
        match self.duration {
            Some(d) if d > 0.0 => self.from + (self.to - self.from) * (tau / d).min(1.0),
            _ => self.from,
        }
    }

    /// Time into the segment at which `n` more arrivals are due (`None`: never in it).
    fn time_of(&self, n: f64) -> Option<f64> {
        let total = self.duration.map(|d| self.arrivals_in(d));
        if total.is_some_and(|t| n > t) {
            return None;
        }
        match self.duration {
            Some(d) if d > 0.0 && self.to != self.from => {
                // from·τ + a·τ² = n with a = (to − from) / 2d, in the form that does not
                // cancel when a is small: τ = 2n / (from + √(from² + 4an)).
                let a = (self.to - self.from) / (2.0 * d);
                let disc = (self.from * self.from + 4.0 * a * n).max(0.0);
                let denom = self.from + disc.sqrt();
                if denom <= 0.0 {
                    return (n <= 0.0).then_some(0.0);
                }
                Some((2.0 * n / denom).min(d))
            }
            _ => {
                if self.from <= 0.0 {
                    return (n <= 0.0).then_some(0.0);
                }
                Some(n / self.from)
            }
        }
    }
}

/// `spec.arrivals`: when each arrival is due.
#[derive(Debug, Clone, PartialEq)]
pub struct ArrivalSchedule {
    segments: Vec<Segment>,
    /// When arrivals end (after the last stage); `None`: never (no stages).
    end: Option<f64>,
    /// Most arrival users running at once, across agents.
    pub max_concurrent: u64,
}

impl ArrivalSchedule {
    /// A schedule starting at `rate` per second and moving through `stages`
    /// (`(duration, rate per second)`).
    pub fn new(rate: f64, stages: &[(Duration, f64)], max_concurrent: u64) -> ArrivalSchedule {
        let mut segments = Vec::new();
        let (mut start, mut before, mut from) = (0.0, 0.0, rate);
        for (d, to) in stages {
            let s = Segment {
                start,
                before,
                from,
                to: *to,
                duration: Some(d.as_secs_f64()),
            };
            before += s.arrivals_in(d.as_secs_f64());
            start += d.as_secs_f64();
            from = *to;
            segments.push(s);
        }
        let end = if stages.is_empty() {
            segments.push(Segment {
                start,
                before,
                from,
                to: from,
                duration: None,
            });
            None
        } else {
            Some(start)
        };
        ArrivalSchedule {
            segments,
            end,
            max_concurrent,
        }
    }

    /// When the last arrival may be due (seconds after the start); `None`: never ends.
    pub fn end(&self) -> Option<Duration> {
        self.end.map(Duration::from_secs_f64)
    }

    /// The planned rate (per second) at `t`.
    pub fn rate_at(&self, t: Duration) -> f64 {
        let t = t.as_secs_f64();
        if self.end.is_some_and(|e| t >= e) {
            return 0.0;
        }
        let s = self.segment_at(t);
        s.rate_at(t - s.start)
    }

    fn segment_at(&self, t: f64) -> &Segment {
        self.segments
            .iter()
            .rev()
            .find(|s| s.start <= t)
            .unwrap_or(&self.segments[0])
    }

    /// Arrivals due in `[0, t)`: how many intended times lie before `t`.
    pub fn due_before(&self, t: Duration) -> u64 {
        let t = t.as_secs_f64();
        let t = self.end.map_or(t, |e| t.min(e));
        let s = self.segment_at(t);
        let n = s.before + s.arrivals_in(t - s.start);
        // Arrival k is due when N reaches k + ½: those due before t are the k < N(t) − ½.
        (n - 0.5).ceil().max(0.0) as u64
    }

    /// The intended time of arrival `k` (0-based), `None` when the schedule ends first.
    pub fn time_of(&self, k: u64) -> Option<Duration> {
        let k = k as f64 + 0.5;
        for s in &self.segments {
            let last = s.duration.is_none_or(|d| k <= s.before + s.arrivals_in(d));
            if last && k >= s.before {
                let tau = s.time_of(k - s.before)?;
                let t = s.start + tau;
                if self.end.is_some_and(|e| t >= e) {
                    return None;
                }
                return Some(Duration::from_secs_f64(t));
            }
        }
        None
    }
}

/// One agent's part of an arrival schedule: from global arrival `from` on, the agent at
/// `position` of `agents` takes the arrivals `from + position`, `from + position + agents`,
/// ... Every arrival has exactly one agent, so the agents' rates sum to the schedule's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Lane {
    /// The first global arrival index this split applies to.
    pub from: u64,
    /// This agent's place among them (0-based).
    pub position: u64,
    /// Agents sharing the schedule.
    pub agents: u64,
}

impl Lane {
    /// The whole schedule, for one process.
    pub const ALONE: Lane = Lane {
        from: 0,
        position: 0,
        agents: 1,
    };

    /// This lane's first arrival index at or after `k`.
    pub fn first_at_or_after(&self, k: u64) -> u64 {
        let agents = self.agents.max(1);
        let first = self.from + self.position;
        if k <= first {
            return first;
        }
        let steps = (k - first).div_ceil(agents);
        first + steps * agents
    }

    /// The arrival after `k` in this lane (`k` being one of its own).
    pub fn after(&self, k: u64) -> u64 {
        k + self.agents.max(1)
    }

    /// Shares `total` (e.g. `maxConcurrent`) among the agents so that the parts sum to it
    /// exactly: this lane's part.
    pub fn share_of(&self, total: u64) -> u64 {
        let agents = self.agents.max(1);
        total / agents + u64::from(self.position < total % agents)
    }
}

/// The master's source of arrival ids: disjoint blocks, never handed out twice (the next
/// id survives a master restart in the memo).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IdBlocks {
    /// The first id not handed out yet (ids start at 1).
    pub next: u64,
}

impl IdBlocks {
    /// Hands out `n` ids: the inclusive range `(first, last)`.
    pub fn grant(&mut self, n: u64) -> (u64, u64) {
        let first = self.next.max(1);
        let n = n.max(1);
        self.next = first + n;
        (first, first + n - 1)
    }
}

/// An agent's arrival ids not used yet, from the blocks its master gave it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdPool {
    blocks: std::collections::VecDeque<(u64, u64)>,
}

impl IdPool {
    /// Adds a block `(first, last)`.
    pub fn add(&mut self, block: (u64, u64)) {
        if block.0 <= block.1 {
            self.blocks.push_back(block);
        }
    }

    /// The next unused id.
    pub fn take(&mut self) -> Option<u64> {
        let (first, last) = self.blocks.front_mut()?;
        let id = *first;
        if first == last {
            self.blocks.pop_front();
        } else {
            *first += 1;
        }
        Some(id)
    }

    /// Ids left.
    pub fn left(&self) -> u64 {
        self.blocks.iter().map(|(a, b)| b - a + 1).sum()
    }
}

/// The shape of a test's load.
#[derive(Debug, Clone, PartialEq)]
pub enum LoadProfile {
    /// `users`, changed by hand (`kubectl scale`).
    Users(u64),
    /// `stages`.
    Stages(StageProfile),
    /// `arrivals`.
    Arrivals(ArrivalSchedule),
}

impl LoadProfile {
    /// Users wanted at the start (arrivals: none).
    pub fn initial_users(&self) -> u64 {
        match self {
            LoadProfile::Users(n) => *n,
            LoadProfile::Stages(s) => s.from,
            LoadProfile::Arrivals(_) => 0,
        }
    }

    /// When the profile itself is over (the test ends then unless `duration` says
    /// otherwise); `None` for `users` and for arrivals without stages.
    pub fn end(&self) -> Option<Duration> {
        match self {
            LoadProfile::Users(_) => None,
            LoadProfile::Stages(s) => Some(s.total()),
            LoadProfile::Arrivals(a) => a.end(),
        }
    }

    /// What the report plots as planned at `t`: users (stages) or the arrival rate.
    pub fn planned_at(&self, t: Duration) -> Option<f64> {
        match self {
            LoadProfile::Users(_) => None,
            LoadProfile::Stages(s) => Some(s.at(t).users as f64),
            LoadProfile::Arrivals(a) => {
                let end = t.as_secs_f64();
                let start = (end - 1.0).max(0.0);
                let due = a.due_before(t) - a.due_before(Duration::from_secs_f64(start));
                Some(due as f64 / (end - start).max(1e-3))
            }
        }
    }
}

fn duration_of(field: &str, value: &str) -> Result<Duration, FieldError> {
    parse_duration(value).map_err(|e| FieldError::new(field, e))
}

fn rate_of(field: &str, value: &str) -> Result<f64, FieldError> {
    Rate::parse(value)
        .map(|r| r.per_second())
        .map_err(|e| FieldError::new(field, e))
}

/// Checks `users`, `stages` and `arrivals` of a spec and builds its profile; errors name
/// the field.
pub fn compile_profile(spec: &LoadTestSpec) -> Result<LoadProfile, FieldError> {
    if let Some(u) = spec.users {
        if u < 0 {
            return Err(FieldError::new("spec.users", "cannot be negative"));
        }
        if u > 10_000_000 {
            return Err(FieldError::new("spec.users", "is more than 10,000,000"));
        }
    }
    let users = spec.users.map(|u| u as u64);
    if let Some(a) = &spec.arrivals {
        if users.is_some() {
            return Err(FieldError::new(
                "spec.users",
                "cannot be set together with spec.arrivals (arrivals start their own users); leave one out",
            ));
        }
        if !spec.stages.is_empty() {
            return Err(FieldError::new(
                "spec.stages",
                "cannot be set together with spec.arrivals (use spec.arrivals.stages for a changing rate)",
            ));
        }
        if spec.repeat.is_some() {
            return Err(FieldError::new(
                "spec.repeat",
                "cannot be set together with spec.arrivals: every arrival runs the scenario once",
            ));
        }
        if spec.user_rate.is_some() {
            return Err(FieldError::new(
                "spec.userRate",
                "cannot be set together with spec.arrivals: spec.arrivals.rate says how fast users arrive",
            ));
        }
        let rate = rate_of("spec.arrivals.rate", &a.rate)?;
        let max_concurrent = match a.max_concurrent {
            Some(m) if m < 1 => {
                return Err(FieldError::new(
                    "spec.arrivals.maxConcurrent",
                    "must be at least 1",
                ))
            }
            Some(m) => m as u64,
            None => DEFAULT_MAX_CONCURRENT,
        };
        let mut stages = Vec::new();
        for (i, s) in a.stages.iter().enumerate() {
            let d = duration_of(&format!("spec.arrivals.stages[{i}].duration"), &s.duration)?;
            let r = rate_of(&format!("spec.arrivals.stages[{i}].rate"), &s.rate)?;
            stages.push((d, r));
        }
        if !stages.is_empty() && stages.iter().all(|(d, _)| d.is_zero()) {
            return Err(FieldError::new(
                "spec.arrivals.stages",
                "last no time at all: give at least one stage a duration, e.g. {duration: 5m, rate: 100/s}",
            ));
        }
        if stages.is_empty() && rate <= 0.0 {
            return Err(FieldError::new(
                "spec.arrivals.rate",
                "is zero and no stage changes it: no user would ever arrive, and the test would never end",
            ));
        }
        let schedule = ArrivalSchedule::new(rate, &stages, max_concurrent);
        if schedule.end().is_some_and(|e| schedule.due_before(e) == 0) {
            return Err(FieldError::new(
                "spec.arrivals.stages",
                "plan no arrival at all: every rate is zero",
            ));
        }
        return Ok(LoadProfile::Arrivals(schedule));
    }
    if spec.stages.is_empty() {
        return match users {
            Some(u) => Ok(LoadProfile::Users(u)),
            None => Err(FieldError::new(
                "spec.users",
                "is required unless spec.stages or spec.arrivals is set, e.g. users: 10",
            )),
        };
    }
    let mut stages = Vec::new();
    for (i, s) in spec.stages.iter().enumerate() {
        let duration = duration_of(&format!("spec.stages[{i}].duration"), &s.duration)?;
        if s.users < 0 {
            return Err(FieldError::new(
                format!("spec.stages[{i}].users"),
                "cannot be negative",
            ));
        }
        if s.users > 10_000_000 {
            return Err(FieldError::new(
                format!("spec.stages[{i}].users"),
                "is more than 10,000,000",
            ));
        }
        stages.push(Stage {
            duration,
            users: s.users as u64,
        });
    }
    if stages.iter().all(|s| s.duration.is_zero()) {
        return Err(FieldError::new(
            "spec.stages",
            "last no time at all: give at least one stage a duration, e.g. {duration: 2m, users: 100}",
        ));
    }
    Ok(LoadProfile::Stages(StageProfile {
        from: users.unwrap_or(0),
        stages,
    }))
}

#[cfg(test)]
mod tests;
