//! The life of one user on its worker: the loop that runs its iterations, the state its
//! worker steers it by (running, stopping, paused, aborted), and the worker's books of who
//! runs. Kept apart from the engine's controller so that the hot path is all in one place.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use crate::metrics::WorkerMetrics;
use crate::scenario::{BoxFuture, Scenario, ScenarioError, TestEnv, User, UserId};

pub use murmuration_model::RepeatPlan;

/// Lifecycle of one user, shared by its worker and its task: [`RUNNING`], [`PAUSED`]
/// (between two iterations, waiting for the repeat interval) or [`STOPPING`].
pub(crate) type UserControl = AtomicU8;
/// In an iteration.
pub(crate) const RUNNING: u8 = 0;
/// Asked to stop after the current iteration.
pub(crate) const STOPPING: u8 = 1;
/// Between two iterations: stopping it now loses nothing, so it is simply aborted.
pub(crate) const PAUSED: u8 = 2;
/// Aborted (its task is going away).
pub(crate) const ABORTED: u8 = 3;

pub(crate) struct UserSlot {
    pub(crate) control: Arc<UserControl>,
    pub(crate) abort: AbortHandle,
}

/// What every user task of one worker shares.
pub(crate) struct WorkerCtx {
    pub(crate) env: Arc<TestEnv>,
    pub(crate) scenario: Arc<dyn RunningScenario>,
    pub(crate) metrics: Arc<WorkerMetrics>,
    pub(crate) repeat: RepeatPlan,
    pub(crate) users: Mutex<HashMap<UserId, UserSlot>>,
    pub(crate) shared: Arc<Shared>,
}

/// Counters the controller reads.
#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) running: AtomicU64,
    pub(crate) all_done: Notify,
    /// Whether to keep [`Shared::ended`] (an agent reports it to its master, which must
    /// not start those ids again elsewhere).
    pub(crate) track_ended: bool,
    /// Users that ended by themselves (all repeats done, or failed) since last taken.
    pub(crate) ended: Mutex<Vec<UserId>>,
}

/// Removes a user from its worker's books however its task ends (finished, failed or
/// aborted).
struct UserGuard {
    id: UserId,
    run: UserRun,
    failed: bool,
}

impl Drop for UserGuard {
    fn drop(&mut self) {
        let ctx = &self.run.ctx;
        {
            // Only its own entry: a user id stopped and started again may already belong
            // to a new task.
            let mut users = ctx.users.lock();
            if users
                .get(&self.id)
                .is_some_and(|s| Arc::ptr_eq(&s.control, &self.run.control))
            {
                users.remove(&self.id);
            }
        }
        let failed = self.failed;
        // Still "running" here means it ended by itself: a stop or an abort changes it.
        if ctx.shared.track_ended
            && !self.run.once
            && self.run.control.load(Ordering::Acquire) == RUNNING
        {
            ctx.shared.ended.lock().push(self.id);
        }
        ctx.metrics.user_event(|u| {
            if failed {
                u.failed += 1
            } else {
                u.finished += 1
            }
        });
        if ctx.shared.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            ctx.shared.all_done.notify_waiters();
        }
    }
}

/// What the user loop needs besides the scenario: its control and its worker's books.
pub(crate) struct UserRun {
    pub(crate) control: Arc<UserControl>,
    pub(crate) ctx: Arc<WorkerCtx>,
    /// An arrival of an open model: one iteration, and its end is not reported as a user
    /// that ended by itself (its id is never started again anyway).
    pub(crate) once: bool,
}

impl UserRun {
    /// Runs one user's iterations until it is stopped or has done all its repeats.
    /// Generic over the scenario so that an iteration costs no allocation; every local
    /// here is part of every user's memory, so there are few.
    ///
    /// Not an `async fn`: those keep a second copy of their arguments in the future
    /// (rust-lang/rust#62958), and the user is the largest of them.
    #[allow(clippy::manual_async_fn)]
    pub(crate) fn run<S: Scenario>(
        self,
        bound: Arc<Bound<S>>,
        mut user: User,
    ) -> impl Future<Output = ()> + Send {
        async move {
            let mut guard = UserGuard {
                id: user.id(),
                run: self,
                failed: false,
            };
            let repeat = guard.run.ctx.repeat;
            loop {
                // The worker changes this state on the user's own thread, between two polls:
                // what is read here holds until the next await.
                if guard.run.control.load(Ordering::Acquire) != RUNNING {
                    break;
                }
                let iteration = user.iteration();
                if repeat.times.is_some_and(|t| iteration >= t)
                    || (guard.run.once && iteration >= 1)
                {
                    break;
                }
                // The iteration's duration: one clock read at each end, per iteration.
                let began = std::time::Instant::now();
                if let Err(e) = bound.scenario.start(&mut user, &bound.state).await {
                    if !matches!(e, ScenarioError::User { .. }) {
                        tracing::warn!(user = user.id(), "user stopped: {e}");
                        guard.failed = true;
                        break;
                    }
                }
                user.set_iteration(iteration + 1);
                guard.run.ctx.metrics.iteration_done(began);
                if !repeat.interval.is_zero() && repeat.times.is_none_or(|t| iteration + 1 < t) {
                    // While paused, a graceful stop aborts the user (see `stop_slot`); coming
                    // back, it resumes only if nobody asked it to stop meanwhile. Boxed: only
                    // users that pause pay for the timer.
                    let control = &guard.run.control;
                    control.store(PAUSED, Ordering::Release);
                    Box::pin(tokio::time::sleep(repeat.interval)).await;
                    if control
                        .compare_exchange(PAUSED, RUNNING, Ordering::AcqRel, Ordering::Acquire)
                        .is_err()
                    {
                        break;
                    }
                } else {
                    // A scenario that never waits must still let other users run.
                    tokio::task::consume_budget().await;
                }
            }
        }
    }
}

pub(crate) fn stop_slot(slot: &UserSlot, forced: bool) {
    if forced {
        slot.control.store(ABORTED, Ordering::Release);
        slot.abort.abort();
        return;
    }
    let c = &slot.control;
    if c.compare_exchange(RUNNING, STOPPING, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
        && c.compare_exchange(PAUSED, ABORTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    {
        slot.abort.abort();
    }
}

/// A user asked to start while it is still finishing its last iteration (removed, then
/// added back before it ended) just carries on: one task per id, always. Returns whether
/// it was revived. A user already aborted gives its id up to a new task.
pub(crate) fn revive(ctx: &WorkerCtx, id: UserId) -> bool {
    let mut users = ctx.users.lock();
    let Some(slot) = users.get(&id) else {
        return false;
    };
    if slot
        .control
        .compare_exchange(STOPPING, RUNNING, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
    {
        // The controller counted it as a new user; it is the same one.
        ctx.shared.running.fetch_sub(1, Ordering::AcqRel);
        return true;
    }
    users.remove(&id);
    false
}

/// A scenario after `init`: what the engine runs per user.
pub(crate) trait RunningScenario: Send + Sync + 'static {
    /// The whole life of one user: its iterations, as the engine's user loop runs them.
    /// One allocation per user, none per iteration: the loop is compiled for each scenario.
    fn user(self: Arc<Self>, user: User, run: UserRun) -> BoxFuture<'static, ()>;
    /// End of test.
    fn terminate(&self) -> BoxFuture<'_, ()>;
}

/// A scenario with its state, as `init` left it.
pub(crate) struct Bound<S: Scenario> {
    pub(crate) scenario: Arc<S>,
    pub(crate) state: S::State,
}

impl<S: Scenario> RunningScenario for Bound<S> {
    fn user(self: Arc<Self>, user: User, run: UserRun) -> BoxFuture<'static, ()> {
        // `run` owns everything it needs, so the user's future stores each thing once.
        Box::pin(run.run(self, user))
    }
    fn terminate(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.scenario.terminate(&self.state))
    }
}
