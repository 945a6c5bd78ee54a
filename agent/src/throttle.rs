//! Throttles: a rate limit shared by users (amoc's throttle). `rate` permits per
//! `interval`, spread evenly (one every `interval / rate`), never in bursts; `interval: 0s`
//! turns it into a limit on parallel executions.
//!
//! The guarantee: in **any** window of length `interval` (sliding, not only aligned ones),
//! at most `rate` permits are granted, where `rate` is the limit in force at the time of
//! each grant. A dispatcher task grants permits in FIFO order at their slot times; tokio's
//! timers wake it with millisecond resolution, so at high rates it grants the permits that
//! fell due since its last wake-up together, but a record of the last `rate` grant times
//! refuses any grant that would put `rate + 1` grants into one window. Capacity unused while
//! nobody waits is not banked: after an idle spell pacing starts afresh.
//!
//! In a distributed test each agent holds such a throttle with its share of the limit
//! (the master calls [`Throttle::set_limit`]); the shares sum to the limit, so the sum of
//! the agents' grants obeys it too.
//!
//! With `MURMUR_GRANT_LOG=DIR` set, every rate throttle logs its grant times (see
//! [`grant_log`]), so that tests judge the promise on the times it was made at.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

// tokio's clock, so that tests with a paused clock see the throttle move with it.
use tokio::time::Instant;

use murmuration_crds::ThrottleSpec;
use murmuration_model::throttle::{RampPlan, ThrottlePlan};
use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit, Semaphore};

pub mod grant_log;
use grant_log::GrantLog;

/// Above this rate the record of grant times would cost more than 16 MB; such throttles
/// rely on pacing alone (which can exceed the limit by the permits of one timer tick).
const MAX_RECORDED_GRANTS: u64 = 1_000_000;

/// How far behind its slots the dispatcher may catch up after a late wake-up: timer
/// resolution, not idle time.
const CATCH_UP: Duration = Duration::from_millis(2);

/// A throttle's limit: `rate` permits per `interval`; `interval` zero means at most `rate`
/// executions at the same time.
pub use murmuration_model::throttle::Limit;

/// The right to run one action. For a parallel limit (`interval: 0s`) the slot is held
/// until the permit is dropped.
pub struct Permit {
    /// When the action should have started: the permit's slot in the even pacing. Latency
    /// measured from here does not hide the wait that a slow system imposed (coordinated
    /// omission).
    pub intended: std::time::Instant,
    /// When the throttle granted it: the times its guarantee is about.
    pub granted: std::time::Instant,
    /// Held for its drop, which gives the slot back.
    _slot: Option<ParallelSlot>,
}

/// A parallel slot, and the throttle's debt: slots in use when the limit was lowered are
/// not given back when they are released, until the debt is paid.
struct ParallelSlot {
    permit: Option<OwnedSemaphorePermit>,
    debt: Arc<AtomicU64>,
}

impl Drop for ParallelSlot {
    fn drop(&mut self) {
        let paid = self
            .debt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1))
            .is_ok();
        if let (true, Some(permit)) = (paid, self.permit.take()) {
            // Taken out of the semaphore for good rather than returned to it.
            permit.forget();
        }
    }
}

/// A throttle's figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ThrottleStats {
    /// The rate in force now.
    pub rate: u64,
    /// Permits asked for since the start.
    pub requested: u64,
    /// Permits granted since the start.
    pub executed: u64,
    /// Users waiting for a permit now.
    pub waiting: u64,
}

/// A gradual change of the rate (amoc's `change_rate_gradually`) under way: the model's
/// rule, from when it started.
#[derive(Debug, Clone, Copy)]
struct Ramp {
    start: Instant,
    rule: murmuration_model::throttle::Ramp,
}

impl Ramp {
    fn rate_at(&self, now: Instant) -> u64 {
        self.rule
            .rate_after(now.saturating_duration_since(self.start))
    }

    fn next_step(&self, now: Instant) -> Option<Instant> {
        self.rule
            .next_step_after(now.saturating_duration_since(self.start))
            .map(|d| self.start + d)
    }
}

struct Waiter {
    /// Gets (slot, grant time).
    tx: oneshot::Sender<(Instant, Instant)>,
}

struct State {
    limit: Limit,
    ramp: Option<Ramp>,
    queue: VecDeque<Waiter>,
    /// The slot of the next permit (pacing).
    next_slot: Option<Instant>,
    /// Times of the last grants, at most `rate` of them (the sliding-window proof).
    grants: VecDeque<Instant>,
    dispatcher: bool,
    /// For parallel limits.
    parallel: Arc<Semaphore>,
    /// Slots to take out of `parallel` as they are released (the limit was lowered while
    /// they were in use).
    debt: Arc<AtomicU64>,
    /// The grant times, when `MURMUR_GRANT_LOG` asks for them.
    log: Option<GrantLog>,
}

impl State {
    fn rate(&self, now: Instant) -> u64 {
        match &self.ramp {
            Some(r) => r.rate_at(now),
            None => self.limit.rate,
        }
    }
}

/// A named rate limit.
pub struct Throttle {
    name: String,
    state: Mutex<State>,
    /// Wakes the dispatcher: a waiter arrived, the limit changed, or the throttle is gone.
    wake: Arc<Notify>,
    requested: AtomicU64,
    executed: AtomicU64,
    waiting: AtomicU64,
    /// Run the dispatcher on the first waiter's runtime instead of a thread of its own
    /// (tests with a paused clock).
    dispatch_here: bool,
}

enum Next {
    Idle,
    At(Instant),
}

/// Keeps `waiting` right when a waiter gives up (its user removed).
struct WaitGuard<'a>(&'a AtomicU64, bool);

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Throttle {
    /// A throttle with `limit`.
    pub fn new(name: impl Into<String>, limit: Limit) -> Arc<Throttle> {
        let name = name.into();
        Arc::new(Throttle {
            state: Mutex::new(State {
                log: GrantLog::from_env(&name),
                limit,
                ramp: None,
                queue: VecDeque::new(),
                next_slot: None,
                grants: VecDeque::new(),
                dispatcher: false,
                parallel: Arc::new(Semaphore::new(limit.rate as usize)),
                debt: Arc::new(AtomicU64::new(0)),
            }),
            name,
            wake: Arc::new(Notify::new()),
            requested: AtomicU64::new(0),
            executed: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            dispatch_here: false,
        })
    }

    /// A throttle whose dispatcher runs on the runtime of its first waiter, so that it
    /// follows that runtime's (paused) clock.
    #[cfg(test)]
    fn new_here(name: &str, limit: Limit) -> Arc<Throttle> {
        let mut t = Throttle::new(name, limit);
        Arc::get_mut(&mut t).expect("not shared yet").dispatch_here = true;
        t
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The limit as set (a ramp moves the rate in force; see [`Throttle::stats`]).
    pub fn limit(&self) -> Limit {
        self.state.lock().limit
    }

    /// Waits for a permit (FIFO among waiters).
    pub async fn acquire(self: &Arc<Self>) -> Permit {
        self.requested.fetch_add(1, Ordering::Relaxed);
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let mut guard = WaitGuard(&self.waiting, false);
        loop {
            let (parallel, rx) = {
                let mut st = self.state.lock();
                if st.limit.interval.is_zero() {
                    (Some((st.parallel.clone(), st.debt.clone())), None)
                } else {
                    let (tx, rx) = oneshot::channel();
                    st.queue.push_back(Waiter { tx });
                    if !st.dispatcher {
                        st.dispatcher = true;
                        self.start_dispatcher();
                    }
                    (None, Some(rx))
                }
            };
            if let Some((sem, debt)) = parallel {
                // Closed when the limit stops being a parallel one: ask again.
                if let Ok(slot) = sem.acquire_owned().await {
                    guard.1 = true;
                    self.waiting.fetch_sub(1, Ordering::Relaxed);
                    self.executed.fetch_add(1, Ordering::Relaxed);
                    let now = Instant::now().into_std();
                    return Permit {
                        intended: now,
                        granted: now,
                        _slot: Some(ParallelSlot {
                            permit: Some(slot),
                            debt,
                        }),
                    };
                }
                continue;
            }
            self.wake.notify_one();
            match rx.expect("set above").await {
                Ok((slot, granted)) => {
                    // The dispatcher counted the grant and the wait.
                    guard.1 = true;
                    return Permit {
                        intended: slot.into_std(),
                        granted: granted.into_std(),
                        _slot: None,
                    };
                }
                // The limit became a parallel one: ask again.
                Err(_) => continue,
            }
        }
    }

    /// Changes the limit now: waiters are paced at the new rate from their next grant on,
    /// and the sliding-window record holds the new rate against earlier grants.
    pub fn set_limit(&self, limit: Limit) {
        let mut st = self.state.lock();
        let was_parallel = st.limit.interval.is_zero();
        let old = st.limit;
        st.limit = limit;
        st.ramp = None;
        if limit.rate > 0 && !limit.interval.is_zero() {
            // A slot set under a slower rate would hold the first grant back.
            let ia = limit.interval / limit.rate.min(u32::MAX as u64) as u32;
            let now = Instant::now();
            st.next_slot = st.next_slot.map(|s| s.min(now + ia));
        }
        if was_parallel && limit.interval.is_zero() {
            let (old_n, new_n) = (old.rate as usize, limit.rate as usize);
            if new_n > old_n {
                // Pay the debt first: slots still owed are not handed out again.
                let mut more = new_n - old_n;
                let owed = st.debt.load(Ordering::Acquire) as usize;
                let forgiven = owed.min(more);
                st.debt.fetch_sub(forgiven as u64, Ordering::AcqRel);
                more -= forgiven;
                st.parallel.add_permits(more);
            } else {
                // Free slots go at once; slots in use go when they are released.
                let fewer = old_n - new_n;
                let gone = st.parallel.forget_permits(fewer);
                st.debt.fetch_add((fewer - gone) as u64, Ordering::AcqRel);
            }
        } else if was_parallel {
            // Waiters for a parallel slot ask again under the new limit.
            st.parallel.close();
            st.parallel = Arc::new(Semaphore::new(0));
            st.debt = Arc::new(AtomicU64::new(0));
        } else if limit.interval.is_zero() {
            st.parallel = Arc::new(Semaphore::new(limit.rate as usize));
            st.debt = Arc::new(AtomicU64::new(0));
            // Rate waiters ask again as parallel ones.
            st.queue.clear();
        }
        drop(st);
        self.wake.notify_one();
    }

    /// Moves the rate from the current one by `step` every `every` until `to` (amoc's
    /// `change_rate_gradually`), computed from the time elapsed: no task needed.
    pub fn ramp(&self, to: u64, step: u64, every: Duration) {
        let mut st = self.state.lock();
        let now = Instant::now();
        let from = st.rate(now);
        st.ramp = Some(Ramp {
            start: now,
            rule: murmuration_model::throttle::Ramp::new(from, RampPlan { to, step, every }),
        });
        st.limit.rate = to;
        drop(st);
        self.wake.notify_one();
    }

    /// Its figures now.
    pub fn stats(&self) -> ThrottleStats {
        let rate = self.state.lock().rate(Instant::now());
        ThrottleStats {
            rate,
            requested: self.requested.load(Ordering::Relaxed),
            executed: self.executed.load(Ordering::Relaxed),
            waiting: self.waiting.load(Ordering::Relaxed),
        }
    }

    /// Grants what is due now; says when to look again.
    fn grant_due(&self) -> Next {
        let mut st = self.state.lock();
        let next = self.grant_due_in(&mut st);
        if let Some(log) = &mut st.log {
            log.flush();
        }
        next
    }

    fn grant_due_in(&self, st: &mut State) -> Next {
        let now = Instant::now();
        let interval = st.limit.interval;
        if interval.is_zero() {
            return Next::Idle;
        }
        let rate = st.rate(now);
        let ramp_next = st.ramp.and_then(|r| r.next_step(now));
        let wait = |t: Option<Instant>| match (t, ramp_next) {
            (Some(a), Some(b)) => Next::At(a.min(b)),
            (Some(a), None) => Next::At(a),
            (None, Some(b)) => Next::At(b),
            (None, None) => Next::Idle,
        };
        if rate == 0 {
            return wait(None);
        }
        let ia = interval / rate.min(u32::MAX as u64) as u32;
        let record = rate <= MAX_RECORDED_GRANTS;
        while st.grants.len() as u64 > rate {
            st.grants.pop_front();
        }
        loop {
            if st.queue.is_empty() {
                return wait(None);
            }
            // Do not bank idle time: at most a timer tick of catching up.
            let earliest = now.checked_sub(CATCH_UP).unwrap_or(now);
            let slot = st.next_slot.map_or(now, |s| s.max(earliest));
            if slot > now {
                return wait(Some(slot));
            }
            if record && st.grants.len() as u64 >= rate {
                let oldest = *st.grants.front().expect("rate > 0 grants recorded");
                if oldest + interval > now {
                    return wait(Some(oldest + interval));
                }
            }
            let waiter = st.queue.pop_front().expect("not empty");
            if waiter.tx.send((slot, now)).is_err() {
                continue; // it gave up; the slot goes to the next one
            }
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            self.executed.fetch_add(1, Ordering::Relaxed);
            st.next_slot = Some(slot + ia);
            if let Some(log) = &mut st.log {
                log.grant(now.into_std(), rate);
            }
            if record {
                st.grants.push_back(now);
                if st.grants.len() as u64 > rate {
                    st.grants.pop_front();
                }
            }
        }
    }
}

impl Throttle {
    /// Starts the dispatcher on a thread of its own: users wait on several runtimes (one
    /// per worker), and none of them may take the throttle's clock down with it.
    fn start_dispatcher(self: &Arc<Self>) {
        let throttle = Arc::downgrade(self);
        let wake = self.wake.clone();
        if self.dispatch_here {
            tokio::spawn(dispatch(throttle, wake));
            return;
        }
        let spawned = std::thread::Builder::new()
            .name(format!("throttle-{}", self.name))
            .spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .expect("a timer runtime builds")
                    .block_on(dispatch(throttle, wake))
            });
        if let Err(e) = spawned {
            // Without a thread, grant from the caller's runtime rather than not at all.
            tracing::warn!(throttle = %self.name, "no dispatcher thread ({e}); using the current runtime");
            tokio::spawn(dispatch(Arc::downgrade(self), self.wake.clone()));
        }
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        // Lets the dispatcher see that the throttle is gone and end.
        self.wake.notify_one();
    }
}

/// The dispatcher of a rate throttle: grants permits at their slots. It holds the throttle
/// only while granting, and ends when the throttle is gone.
async fn dispatch(throttle: std::sync::Weak<Throttle>, wake: Arc<Notify>) {
    loop {
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let next = match throttle.upgrade() {
            Some(t) => t.grant_due(),
            None => return,
        };
        match next {
            Next::Idle => notified.await,
            Next::At(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = notified => {}
                }
            }
        }
    }
}

/// The throttles of a test, by name. Throttles come and go while the test runs (the master
/// API creates and deletes them); users look them up without locking.
#[derive(Default)]
pub struct Throttles {
    map: arc_swap::ArcSwap<HashMap<String, Arc<Throttle>>>,
}

impl Throttles {
    /// Builds the throttles of a test from their specs; errors name the throttle and field.
    pub fn from_specs<'a>(
        specs: impl Iterator<Item = (&'a str, &'a ThrottleSpec)>,
    ) -> Result<Throttles, String> {
        let t = Throttles::default();
        for (name, spec) in specs {
            t.insert(throttle_of(name, spec)?);
        }
        Ok(t)
    }

    /// Adds one (replacing one of the same name).
    pub fn insert(&self, t: Arc<Throttle>) {
        self.map.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(t.name().to_owned(), t.clone());
            m
        });
    }

    /// Removes one; users waiting for it keep their place until they get their permit.
    pub fn remove(&self, name: &str) -> Option<Arc<Throttle>> {
        let old = self.get(name);
        self.map.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.remove(name);
            m
        });
        old
    }

    /// The throttle of that name.
    pub fn get(&self, name: &str) -> Option<Arc<Throttle>> {
        self.map.load().get(name).cloned()
    }

    /// All of them, by name.
    pub fn all(&self) -> Vec<Arc<Throttle>> {
        let mut v: Vec<Arc<Throttle>> = self.map.load().values().cloned().collect();
        v.sort_by(|a, b| a.name().cmp(b.name()));
        v
    }
}

/// Checks a throttle's spec (the model's rules); errors name the throttle and the field
/// (`Throttle a: spec.interval: ...`).
pub fn plan_of(name: &str, spec: &ThrottleSpec) -> Result<ThrottlePlan, String> {
    murmuration_model::throttle::compile(spec).map_err(|e| format!("Throttle {name}: {e}"))
}

/// Builds one throttle from its spec.
pub fn throttle_of(name: &str, spec: &ThrottleSpec) -> Result<Arc<Throttle>, String> {
    let plan = plan_of(name, spec)?;
    let throttle = Throttle::new(name, plan.limit);
    if let Some(r) = plan.ramp {
        throttle.ramp(r.to, r.step, r.every);
    }
    Ok(throttle)
}

#[cfg(test)]
mod tests;
