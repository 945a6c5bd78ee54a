//! The life of one user on its worker: the loop that runs its iterations, the state its
//! worker steers it by (running, stopping, paused, aborted), and the worker's books of who
//! runs. Kept apart from the engine's controller so that the hot path is all in one place.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use crate::metrics::{IterationStart, WorkerMetrics};
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

impl UserGuard {
    /// The user ends on an error (counted as failed, not finished).
    fn fail(&mut self) {
        self.failed = true;
    }

    /// Whether the user is to start another iteration.
    fn may_start(&self, user: &User) -> bool {
        // The worker changes the control on the user's own thread, between two polls:
        // what is read here holds until the next await.
        let iteration = user.iteration();
        self.run.control.load(Ordering::Acquire) == RUNNING
            && self.run.ctx.repeat.times.is_none_or(|t| iteration < t)
            && (!self.run.once || iteration == 0)
    }

    /// Counts the iteration that just ended and says how long to pause before the next one
    /// (`None`: no pause, or no next one).
    fn iteration_ended(&self, user: &mut User, began: IterationStart) -> Option<Duration> {
        let iteration = user.iteration() + 1;
        user.set_iteration(iteration);
        self.run.ctx.metrics.iteration_done(began);
        let repeat = self.run.ctx.repeat;
        (!repeat.interval.is_zero() && repeat.times.is_none_or(|t| iteration < t))
            .then_some(repeat.interval)
    }
}

impl UserRun {
    /// Runs one user's iterations until it is stopped or has done all its repeats.
    /// Generic over the scenario so that an iteration costs no allocation.
    ///
    /// Everything the loop keeps across an await is part of every user's memory, so it
    /// keeps only the user, the scenario and its guard, and the iteration's start:
    /// - not an `async fn`: those keep a second copy of their arguments in the future
    ///   (rust-lang/rust#62958), and the user is the largest of them;
    /// - the guard is made before the future, which then holds it instead of `self` (a
    ///   future dropped before its first poll ends the user in the books all the same);
    /// - the rest is computed by the guard's methods, not in locals, which stay in the
    ///   future while they are in scope, used or not.
    #[allow(clippy::manual_async_fn)]
    pub(crate) fn run<S: Scenario>(
        self,
        bound: Arc<Bound<S>>,
        mut user: User,
    ) -> impl Future<Output = ()> + Send {
        let mut guard = UserGuard {
            id: user.id(),
            run: self,
            failed: false,
        };
        async move {
            while guard.may_start(&user) {
                // The iteration's duration: one clock read at each end, per iteration.
                let began = IterationStart::now();
                if let Err(e) = bound.scenario.start(&mut user, &bound.state).await {
                    if !matches!(e, ScenarioError::User { .. }) {
                        tracing::warn!(user = user.id(), "user stopped: {e}");
                        guard.fail();
                        break;
                    }
                }
                if let Some(pause) = guard.iteration_ended(&mut user, began) {
                    // While paused, a graceful stop aborts the user (see `stop_slot`); coming
                    // back, it resumes only if nobody asked it to stop meanwhile. Boxed: only
                    // users that pause pay for the timer.
                    guard.run.control.store(PAUSED, Ordering::Release);
                    Box::pin(tokio::time::sleep(pause)).await;
                    if guard
                        .run
                        .control
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::test_env;

    /// A scenario whose iteration keeps a fair amount of its own state across an await,
    /// as the HTTP scenario's does.
    struct Sleepy;

    impl Scenario for Sleepy {
        type State = ();
        async fn init(&self, _: &crate::scenario::InitContext) -> Result<(), ScenarioError> {
            Ok(())
        }
        async fn start(&self, _user: &mut User, _state: &()) -> Result<(), ScenarioError> {
            let kept = [7u8; 300];
            tokio::task::yield_now().await;
            assert_eq!(kept[299], 7);
            Ok(())
        }
    }

    fn worker(repeat: RepeatPlan) -> (Arc<WorkerCtx>, Arc<Bound<Sleepy>>) {
        let bound = Arc::new(Bound {
            scenario: Arc::new(Sleepy),
            state: (),
        });
        let ctx = Arc::new(WorkerCtx {
            env: test_env(serde_json::json!({})),
            scenario: bound.clone(),
            metrics: WorkerMetrics::new(),
            repeat,
            users: Mutex::new(HashMap::new()),
            shared: Arc::new(Shared::default()),
        });
        (ctx, bound)
    }

    fn user_of(ctx: &Arc<WorkerCtx>, id: UserId) -> (User, UserRun) {
        ctx.shared.running.fetch_add(1, Ordering::AcqRel);
        let user = User::new(id, ctx.env.clone(), ctx.metrics.clone());
        let run = UserRun {
            control: Arc::new(AtomicU8::new(RUNNING)),
            ctx: ctx.clone(),
            once: false,
        };
        (user, run)
    }

    /// Every byte of a user's future is paid by every sleeping user: beside the user and
    /// its iteration's future, the loop keeps its guard, the scenario and the iteration's
    /// start, and nothing else (no copy of its arguments, no local out of use).
    #[test]
    fn a_users_future_keeps_little_beside_the_user_and_its_iteration() {
        let (ctx, bound) = worker(RepeatPlan {
            times: None,
            interval: Duration::ZERO,
        });
        let (mut user, run) = user_of(&ctx, 1);
        let iteration = std::mem::size_of_val(&bound.scenario.start(&mut user, &()));
        let whole = std::mem::size_of_val(&run.run(bound.clone(), user));
        let user = std::mem::size_of::<User>();
        assert!(
            whole <= user + iteration + 64,
            "a user's future is {whole} B: the user {user} B, its iteration {iteration} B, \
             and {} B more",
            whole - user - iteration
        );
    }

    /// A user whose task is aborted before it ever ran still leaves the worker's books.
    #[test]
    fn a_user_dropped_before_it_ran_ends_in_the_books() {
        let (ctx, bound) = worker(RepeatPlan {
            times: Some(1),
            interval: Duration::ZERO,
        });
        let (user, run) = user_of(&ctx, 9);
        ctx.users.lock().insert(
            9,
            UserSlot {
                control: run.control.clone(),
                abort: tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap()
                    .block_on(async { tokio::spawn(async {}).abort_handle() }),
            },
        );
        drop(run.run(bound, user));
        assert_eq!(ctx.shared.running.load(Ordering::Acquire), 0);
        assert!(ctx.users.lock().is_empty());
        let period = ctx.metrics.take();
        assert_eq!(period.users.finished, 1);
    }

    /// Repeats are honoured: each user runs its iterations, counted once each.
    #[test]
    fn a_user_runs_its_repeats_and_ends() {
        let (ctx, bound) = worker(RepeatPlan {
            times: Some(3),
            interval: Duration::ZERO,
        });
        let (user, run) = user_of(&ctx, 4);
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(run.run(bound, user));
        let period = ctx.metrics.take();
        assert_eq!(period.users.iterations, 3);
        assert_eq!(period.iterations.durations.len(), 3);
        assert_eq!(period.users.finished, 1);
        assert_eq!(ctx.shared.running.load(Ordering::Acquire), 0);
    }
}
