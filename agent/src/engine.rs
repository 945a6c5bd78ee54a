//! The load engine: runs a [`TestPlan`]'s users on worker threads, adds and removes them at
//! `userRate`, repeats their scenario, stops at `duration`, and collects a 1 s time series
//! into the report.
//!
//! Threads: one worker per core, each a current-thread tokio runtime that owns its users
//! (a user never moves between threads, so its connection, its metrics and its timers stay
//! on one core without locks that anyone contends). The caller's runtime runs the
//! controller: user scheduling, commands, collection.

use std::collections::HashMap;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use murmuration_crds::profile::{Lane, LoadProfile};
use murmuration_model::pacing::{completed, UserPacer};

use crate::arrivals::{ArrivalRunner, IdSource};
use crate::coordinator::Coordinators;
use crate::metrics::{Period, StepNames, WorkerMetrics};
use crate::plan::{ScenarioPlan, TestPlan};
use crate::registry::{DynScenario, Registry};
use crate::report::baseline::Baseline;
use crate::report::Report;
use crate::scenario::{InitContext, ScenarioError, TestEnv, User, UserId, Vars};
pub use crate::tally::{build_report, profile_name, series_point, ReportParts, Tally};
use crate::tally::{coordinator_summaries, throttle_summaries};
use crate::throttle::Throttles;
use crate::users::{
    revive, stop_slot, RunningScenario, Shared, UserRun, UserSlot, WorkerCtx, RUNNING,
};

/// How long users get to finish their iteration when the test ends or is stopped, before
/// they are aborted.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(5);

/// Engine settings that are not part of the test.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Worker threads (default: one per core).
    pub workers: usize,
    /// Time users get to finish their iteration at the end.
    pub stop_grace: Duration,
    /// Collection period (1 s; shorter in tests).
    pub tick: Duration,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            stop_grace: DEFAULT_STOP_GRACE,
            tick: Duration::from_secs(1),
        }
    }
}

/// Orders for a running test.
#[derive(Debug, Clone)]
pub enum Command {
    /// Change the number of users (ids 1..=n); users are added or removed at `userRate`.
    SetUsers(u64),
    /// Replace the scenario variables; users see them at their next step.
    SetVars(Vars),
    /// End the test. Graceful: users finish their iteration (within the grace period);
    /// forced: users are aborted at once.
    Stop {
        /// Abort users at once.
        forced: bool,
    },
}

/// Why a test could not run.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The scenario's `init` failed.
    #[error("scenario init failed: {0}")]
    Init(#[source] ScenarioError),
    /// A scenario, throttle or coordinator could not be built.
    #[error("{0}")]
    Setup(String),
    /// A worker thread could not be started.
    #[error("could not start a worker thread: {0}")]
    Thread(#[source] std::io::Error),
}

enum WorkerCmd {
    Start(Vec<UserId>),
    /// Arrivals of an open model: new ids, each with its intended time.
    Arrive(Vec<(UserId, Instant)>),
    Stop {
        ids: Vec<UserId>,
        forced: bool,
    },
    StopAll {
        forced: bool,
    },
}

fn worker_main(ctx: Arc<WorkerCtx>, mut rx: mpsc::UnboundedReceiver<WorkerCmd>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds");
    rt.block_on(async move {
        while let Some(cmd) = rx.recv().await {
            match cmd {
                WorkerCmd::Start(ids) => {
                    for (n, id) in ids.into_iter().enumerate() {
                        if revive(&ctx, id) {
                            continue;
                        }
                        spawn_user(&ctx, id, None);
                        if n % 1024 == 1023 {
                            // Let started users run while a large batch is being spawned.
                            tokio::task::yield_now().await;
                        }
                    }
                }
                WorkerCmd::Arrive(arrivals) => {
                    for (n, (id, intended)) in arrivals.into_iter().enumerate() {
                        spawn_user(&ctx, id, Some(intended));
                        if n % 1024 == 1023 {
                            tokio::task::yield_now().await;
                        }
                    }
                }
                WorkerCmd::Stop { ids, forced } => {
                    let users = ctx.users.lock();
                    for id in ids {
                        if let Some(slot) = users.get(&id) {
                            stop_slot(slot, forced);
                        }
                    }
                }
                WorkerCmd::StopAll { forced } => {
                    let users = ctx.users.lock();
                    for slot in users.values() {
                        stop_slot(slot, forced);
                    }
                }
            }
        }
        // The controller is gone: abort whoever is left and let the aborts run.
        let slots: Vec<AbortHandle> = ctx.users.lock().values().map(|s| s.abort.clone()).collect();
        for a in slots {
            a.abort();
        }
        tokio::task::yield_now().await;
    });
    // Dropping the runtime drops every remaining task.
}

/// Starts one user task on this worker: an arrival (one run, latency also from
/// `intended`) or a closed-model user.
fn spawn_user(ctx: &Arc<WorkerCtx>, id: UserId, intended: Option<Instant>) {
    let control = Arc::new(AtomicU8::new(RUNNING));
    if intended.is_none() {
        // Arrivals are counted by the arrival runner (see count_arrivals).
        ctx.metrics.user_event(|u| u.started += 1);
    }
    let mut user = User::new(id, ctx.env.clone(), ctx.metrics.clone());
    if let Some(at) = intended {
        user.set_arrival(at);
    }
    let run = UserRun {
        control: control.clone(),
        ctx: ctx.clone(),
        once: intended.is_some(),
    };
    // The task cannot run before the next await of this (single-threaded) worker, so it
    // is registered before it starts.
    let handle = tokio::spawn(ctx.scenario.clone().user(user, run));
    let slot = UserSlot {
        control,
        abort: handle.abort_handle(),
    };
    ctx.users.lock().insert(id, slot);
}

/// Builds the scenario a plan names.
fn scenario_of(
    plan: &TestPlan,
    registry: &Registry,
) -> Result<(Arc<dyn DynScenario>, serde_json::Value), EngineError> {
    Ok(match &plan.scenario {
        ScenarioPlan::Http(h) => (
            Arc::new(Arc::new(h.clone())) as Arc<dyn DynScenario>,
            serde_json::Value::Null,
        ),
        ScenarioPlan::WebSocket(w) => (
            Arc::new(Arc::new(w.clone())) as Arc<dyn DynScenario>,
            serde_json::Value::Null,
        ),
        ScenarioPlan::Messaging(m) => (
            Arc::new(Arc::new(m.clone())) as Arc<dyn DynScenario>,
            serde_json::Value::Null,
        ),
        ScenarioPlan::Custom { name, config } => {
            let s = registry.get(name).ok_or_else(|| {
                EngineError::Setup(format!("no custom scenario {name:?} in this binary"))
            })?;
            (s, config.clone())
        }
    })
}

/// Builds the environment all users of a plan share.
pub fn test_env(plan: &TestPlan) -> Result<Arc<TestEnv>, EngineError> {
    let throttles = Throttles::from_specs(plan.throttles.iter().map(|(n, s)| (n.as_str(), s)))
        .map_err(EngineError::Setup)?;
    let coordinators =
        Coordinators::from_specs(plan.coordinators.iter().map(|(n, s)| (n.as_str(), s)))
            .map_err(EngineError::Setup)?;
    Ok(Arc::new(TestEnv {
        name: plan.name.clone(),
        vars: ArcSwap::from_pointee(plan.vars.clone()),
        throttles,
        coordinators,
        steps: StepNames::default(),
    }))
}

/// The users of one process: worker threads running user tasks, and their metrics. The
/// local controller ([`run_test`]) and an agent following its master both drive users
/// through it, by id.
pub struct Engine {
    env: Arc<TestEnv>,
    scenario: Arc<dyn RunningScenario>,
    /// Orders to each worker; emptied at the end so that workers wind down.
    workers: Vec<mpsc::UnboundedSender<WorkerCmd>>,
    /// Each worker's books, for its metrics and its running users.
    ctxs: Vec<Arc<WorkerCtx>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl Engine {
    /// Runs the scenario's `init` and starts `workers` worker threads (no user yet).
    /// `track_ended` keeps the ids of users that end by themselves ([`Engine::take_ended`]).
    pub async fn start(
        plan: &TestPlan,
        registry: &Registry,
        env: Arc<TestEnv>,
        workers: usize,
        track_ended: bool,
    ) -> Result<Engine, EngineError> {
        let (scenario, config) = scenario_of(plan, registry)?;
        let init = InitContext {
            env: env.clone(),
            config,
        };
        let running = scenario.init(&init).await.map_err(EngineError::Init)?;
        let shared = Arc::new(Shared {
            track_ended,
            ..Shared::default()
        });
        let mut engine = Engine {
            env: env.clone(),
            scenario: running.clone(),
            workers: Vec::new(),
            ctxs: Vec::new(),
            threads: Vec::new(),
            shared: shared.clone(),
        };
        for i in 0..workers.max(1) {
            let (tx, rx) = mpsc::unbounded_channel();
            let ctx = Arc::new(WorkerCtx {
                env: env.clone(),
                scenario: running.clone(),
                metrics: WorkerMetrics::new(),
                repeat: plan.repeat,
                users: Mutex::new(HashMap::new()),
                shared: shared.clone(),
            });
            let worker_ctx = ctx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("murmur-worker-{i}"))
                .spawn(move || worker_main(worker_ctx, rx))
                .map_err(EngineError::Thread)?;
            engine.workers.push(tx);
            engine.ctxs.push(ctx);
            engine.threads.push(thread);
        }
        Ok(engine)
    }

    /// The environment its users share.
    pub fn env(&self) -> &Arc<TestEnv> {
        &self.env
    }

    /// Worker threads.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    fn worker_of(&self, id: UserId) -> usize {
        (id % self.workers.len().max(1) as u64) as usize
    }

    /// Starts users `ids` (a user still finishing its last iteration carries on instead).
    /// Returns how many users run now.
    pub fn start_users(&self, ids: impl IntoIterator<Item = UserId>) -> u64 {
        let mut batches: Vec<Vec<UserId>> = vec![Vec::new(); self.workers.len()];
        let mut n = 0;
        for id in ids {
            batches[self.worker_of(id)].push(id);
            n += 1;
        }
        // Counted as running from now on, so that "everyone has finished" cannot be seen
        // before a worker has even started its batch.
        let running = self.shared.running.fetch_add(n, Ordering::AcqRel) + n;
        for (w, ids) in batches.into_iter().enumerate() {
            if !ids.is_empty() {
                let _ = self.workers[w].send(WorkerCmd::Start(ids));
            }
        }
        running
    }

    /// Starts arrivals of an open model: new ids (never started before), each running the
    /// scenario once, with the time it was due. Returns how many users run now.
    pub fn start_arrivals(&self, arrivals: Vec<(UserId, Instant)>) -> u64 {
        let mut batches: Vec<Vec<(UserId, Instant)>> = vec![Vec::new(); self.workers.len()];
        let n = arrivals.len() as u64;
        for a in arrivals {
            batches[self.worker_of(a.0)].push(a);
        }
        let running = self.shared.running.fetch_add(n, Ordering::AcqRel) + n;
        // Counted by the arrival runner, in the period of their intended time
        // (count_arrivals), not here.
        for (w, batch) in batches.into_iter().enumerate() {
            if !batch.is_empty() {
                let _ = self.workers[w].send(WorkerCmd::Arrive(batch));
            }
        }
        running
    }

    /// Counts arrivals in this period's figures: `started`, and `dropped` because
    /// `maxConcurrent` users ran (or no id was left).
    pub fn count_arrivals(&self, (started, dropped): (u64, u64)) {
        if let Some(c) = self.ctxs.first() {
            c.metrics.user_event(|u| {
                u.started += started;
                u.dropped += dropped;
            });
        }
    }

    /// Stops users `ids`: gracefully (after their iteration) or forced (at once).
    pub fn stop_users(&self, ids: impl IntoIterator<Item = UserId>, forced: bool) {
        let mut batches: Vec<Vec<UserId>> = vec![Vec::new(); self.workers.len()];
        for id in ids {
            batches[self.worker_of(id)].push(id);
        }
        for (w, ids) in batches.into_iter().enumerate() {
            if !ids.is_empty() {
                let _ = self.workers[w].send(WorkerCmd::Stop { ids, forced });
            }
        }
    }

    /// Stops every user.
    pub fn stop_all(&self, forced: bool) {
        for tx in &self.workers {
            let _ = tx.send(WorkerCmd::StopAll { forced });
        }
    }

    /// Users running now (including those asked to start and not yet spawned, and those
    /// finishing their iteration after a graceful stop).
    pub fn running(&self) -> u64 {
        self.shared.running.load(Ordering::Acquire)
    }

    /// Ids of the users whose tasks exist now, sorted (spawned ones only: call after the
    /// workers had a moment, as an agent does when it reconnects).
    pub fn running_ids(&self) -> Vec<UserId> {
        self.census().ids()
    }

    /// A handle that lists the running users at any time, from any thread.
    pub fn census(&self) -> Census {
        Census {
            ctxs: self.ctxs.clone(),
        }
    }

    /// Ids of the users that ended by themselves since the last call (with `track_ended`).
    pub fn take_ended(&self) -> Vec<UserId> {
        std::mem::take(&mut *self.shared.ended.lock())
    }

    /// What every worker measured since the last call.
    pub fn take_period(&self) -> Period {
        let mut period = Period::default();
        for c in &self.ctxs {
            period.merge(&c.metrics.take());
        }
        period
    }

    /// Waits until no user runs (returns at once if none does).
    pub async fn all_done(&self) {
        loop {
            let notified = self.shared.all_done.notified();
            if self.running() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Stops every user gracefully, aborts those left after `grace` (or as soon as `force`
    /// completes), waits for the workers, runs the scenario's `terminate`, and returns the
    /// last figures.
    pub async fn finish(
        &mut self,
        grace: Duration,
        force: impl std::future::Future<Output = ()>,
    ) -> Period {
        self.stop_all(false);
        let grace = tokio::time::sleep(grace);
        tokio::pin!(grace);
        tokio::pin!(force);
        let mut forced = false;
        while self.running() > 0 {
            let all_done = self.shared.all_done.notified();
            if self.running() == 0 {
                break;
            }
            tokio::select! {
                _ = all_done => {}
                _ = &mut grace, if !forced => {
                    tracing::info!(left = self.running(), "grace period over: aborting the remaining users");
                    self.stop_all(true);
                    forced = true;
                }
                _ = &mut force, if !forced => {
                    self.stop_all(true);
                    forced = true;
                }
                // Aborted users may take a moment to be dropped; look again shortly.
                _ = tokio::time::sleep(Duration::from_millis(50)), if forced => {}
            }
        }
        // Closing the order channels ends the workers; their runtimes drop what is left.
        self.workers.clear();
        for t in std::mem::take(&mut self.threads) {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        self.scenario.terminate().await;
        self.take_period()
    }
}

/// Lists the users of an [`Engine`] (an agent serves it at `/users`).
#[derive(Clone)]
pub struct Census {
    ctxs: Vec<Arc<WorkerCtx>>,
}

impl Census {
    /// Ids of the users whose tasks exist now, sorted.
    pub fn ids(&self) -> Vec<UserId> {
        let mut ids: Vec<UserId> = self
            .ctxs
            .iter()
            .flat_map(|c| c.users.lock().keys().copied().collect::<Vec<_>>())
            .collect();
        ids.sort_unstable();
        ids
    }
}

/// A test in progress: what the local controller keeps.
struct Run {
    plan: TestPlan,
    opts: EngineOptions,
    engine: Engine,
    /// Users wanted.
    desired: u64,
    /// Ids 1..=launched are assigned to workers (running or finished by themselves).
    launched: u64,
    started_at: Instant,
    started_at_ms: u64,
    tally: Tally,
    /// A person set the users during a stage profile: the profile stopped there.
    overridden: bool,
    /// The open model's arrivals, when the test has them.
    arrivals: Option<ArrivalRunner>,
    /// An earlier run to compare with.
    baseline: Option<Arc<Baseline>>,
}

impl Run {
    /// Starts ids `launched+1 ..= launched+n`.
    fn launch(&mut self, n: u64) {
        let running = self
            .engine
            .start_users(self.launched + 1..=self.launched + n);
        self.launched += n;
        self.tally.peak = self.tally.peak.max(running);
    }

    /// Stops the `n` highest ids, gracefully.
    fn retire(&mut self, n: u64) {
        self.engine
            .stop_users((self.launched - n + 1..=self.launched).rev(), false);
        self.launched -= n;
    }

    fn running(&self) -> u64 {
        self.engine.running()
    }

    /// Takes every worker's figures into the totals and the series.
    /// Closes the period at `now` (the arrivals due by then counted in it).
    fn collect(&mut self, now: Instant) {
        if let Some(a) = &mut self.arrivals {
            self.engine.count_arrivals(a.take_closed(&self.engine, now));
        }
        let period = self.engine.take_period();
        self.tally.names = self.engine.env.steps.all();
        let elapsed = now.saturating_duration_since(self.started_at);
        self.tally
            .add(elapsed.as_secs_f64(), self.engine.running(), &period);
        let planned = self.planned_at(elapsed);
        if let Some(p) = self.tally.series.last_mut() {
            p.planned = planned;
        }
    }

    /// What the profile plans at `t` (none once a person took over).
    fn planned_at(&self, t: Duration) -> Option<f64> {
        if self.overridden {
            return None;
        }
        self.plan.profile.planned_at(t)
    }

    /// The report of what happened so far. `full` adds the exact histograms.
    fn report(&self, ended_by: &str, full: bool) -> Report {
        let env = &self.engine.env;
        build_report(ReportParts {
            profile: profile_name(&self.plan.profile),
            name: &self.plan.name,
            scenario: self.plan.scenario.kind(),
            started_at_ms: self.started_at_ms,
            elapsed_s: self.started_at.elapsed().as_secs_f64(),
            ended_by,
            desired: self.desired,
            tally: &self.tally,
            names: &self.tally.names,
            throttles: throttle_summaries(&env.throttles),
            coordinators: coordinator_summaries(&env.coordinators),
            agents: Default::default(),
            thresholds: &self.plan.thresholds,
            full,
            baseline: self.baseline.as_deref(),
        })
    }
}

/// Runs a test to its end and returns its report. `commands` steers it while it runs;
/// `on_tick` sees a report-so-far every collection period (for live displays).
pub async fn run_test(
    plan: TestPlan,
    registry: &Registry,
    opts: EngineOptions,
    commands: mpsc::UnboundedReceiver<Command>,
    on_tick: impl FnMut(&Report),
) -> Result<Report, EngineError> {
    run_test_against(plan, registry, opts, None, commands, on_tick).await
}

/// [`run_test`], with the reports (live and final) compared with `baseline` and the
/// relative thresholds judged against it.
pub async fn run_test_against(
    plan: TestPlan,
    registry: &Registry,
    opts: EngineOptions,
    baseline: Option<Arc<Baseline>>,
    commands: mpsc::UnboundedReceiver<Command>,
    mut on_tick: impl FnMut(&Report),
) -> Result<Report, EngineError> {
    run_test_observed(plan, registry, opts, baseline, commands, |tick| {
        if !tick.finished {
            on_tick(tick.report)
        }
    })
    .await
}

/// What an observer of a local test sees at each collection period, and once at the end.
pub struct Tick<'a> {
    /// The report so far (the final one when `finished`).
    pub report: &'a Report,
    /// The figures it was built from, exact histograms included (for `/metrics`-like
    /// series, which need more than the report's percentiles).
    pub tally: &'a Tally,
    /// Whether this is the end of the test.
    pub finished: bool,
}

/// [`run_test_against`], with an observer that also sees the figures behind each report
/// and the final one (`murmur run`'s remote-write push).
pub async fn run_test_observed(
    plan: TestPlan,
    registry: &Registry,
    opts: EngineOptions,
    baseline: Option<Arc<Baseline>>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    mut on_tick: impl FnMut(Tick<'_>),
) -> Result<Report, EngineError> {
    let env = test_env(&plan)?;
    let engine = Engine::start(&plan, registry, env, opts.workers, false).await?;
    let desired = plan.users;
    let started_at = Instant::now();
    let arrivals = match &plan.profile {
        LoadProfile::Arrivals(schedule) => Some(ArrivalRunner::new(
            schedule.clone(),
            started_at,
            Some(Lane::ALONE),
            IdSource::Counter(0),
        )),
        _ => None,
    };
    let mut run = Run {
        opts,
        engine,
        desired,
        launched: 0,
        started_at,
        started_at_ms: now_ms(),
        tally: Tally::default(),
        overridden: false,
        arrivals,
        plan,
        baseline,
    };
    tracing::info!(test = %run.plan.name, users = desired, workers = run.engine.workers(), "test started");
    let ended_by = control_loop(&mut run, &mut commands, &mut on_tick).await;
    if let Some(a) = &mut run.arrivals {
        run.engine.count_arrivals(a.take_all());
    }
    let force = async {
        loop {
            match commands.recv().await {
                Some(Command::Stop { forced: true }) => return,
                Some(_) => {}
                None => std::future::pending::<()>().await,
            }
        }
    };
    let last = run.engine.finish(run.opts.stop_grace, force).await;
    let t = run.started_at.elapsed().as_secs_f64();
    run.tally.names = run.engine.env.steps.all();
    run.tally.add(t, 0, &last);
    let report = run.report(&ended_by, true);
    on_tick(Tick {
        report: &report,
        tally: &run.tally,
        finished: true,
    });
    tracing::info!(test = %run.plan.name, result = ?report.result, ended_by, "test finished");
    Ok(report)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Runs users until the test ends; returns why it ended.
async fn control_loop(
    run: &mut Run,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    on_tick: &mut impl FnMut(Tick<'_>),
) -> String {
    let deadline = run.plan.duration.map(|d| run.started_at + d);
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + run.opts.tick, run.opts.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Users change one by one at `userRate`, paced as the master paces them.
    let mut pacer = UserPacer::new(run.plan.user_rate, Instant::now());
    let mut commands_open = true;
    let profile_end = run.plan.profile.end().map(|e| run.started_at + e);
    let mut collect_due = false;
    loop {
        let elapsed = run.started_at.elapsed();
        // A stage profile says how many users there should be now.
        let mut next_profile: Option<Instant> = None;
        if let (LoadProfile::Stages(stages), false) = (&run.plan.profile, run.overridden) {
            run.desired = stages.at(elapsed).users;
            next_profile = stages.next_change(elapsed).map(|d| run.started_at + d);
        }
        // Arrivals due by now start (or are dropped).
        let next_arrival = match &mut run.arrivals {
            Some(a) => a.run_due(&run.engine, Instant::now()),
            None => None,
        };
        if let Some(a) = &run.arrivals {
            run.tally.peak = run.tally.peak.max(run.engine.running());
            if a.done() && run.engine.running() == 0 {
                return "completed".into();
            }
        }
        // The last stage is over: the test ends with it, unless `duration` says otherwise.
        if run.arrivals.is_none()
            && run.plan.duration.is_none()
            && !run.overridden
            && profile_end.is_some_and(|e| Instant::now() >= e)
        {
            return "stages".into();
        }
        // Bring the user count towards `desired`, at the user rate.
        let pace = pacer.pace(run.desired, run.launched, Instant::now());
        if pace.due > 0 {
            if run.desired > run.launched {
                run.launch(pace.due);
            } else {
                run.retire(pace.due);
            }
        }
        if std::mem::take(&mut collect_due) {
            run.collect(Instant::now());
            on_tick(Tick {
                report: &run.report("running", false),
                tally: &run.tally,
                finished: false,
            });
        }
        let next_change = pace.next;
        // Every user ended by itself: all repeats done (or, without repeats, every user
        // failed for good; the report says so).
        if completed(run.desired, run.launched, run.running()) {
            return "completed".into();
        }
        let all_done = run.engine.shared.all_done.notified();
        tokio::select! {
            biased;
            cmd = commands.recv(), if commands_open => match cmd {
                Some(Command::SetUsers(n)) => {
                    if run.arrivals.is_some() {
                        tracing::warn!(users = n, "an open model has no users to set: ignored");
                    } else {
                        if matches!(run.plan.profile, LoadProfile::Stages(_)) && !run.overridden {
                            tracing::warn!(users = n, "users set by hand: the stage profile stops here");
                            run.overridden = true;
                        }
                        tracing::info!(users = n, "desired users changed");
                        run.desired = n;
                    }
                }
                Some(Command::SetVars(vars)) => run.engine.env.vars.store(Arc::new(vars)),
                Some(Command::Stop { forced }) => {
                    if forced {
                        run.engine.stop_all(true);
                    }
                    return "stopped".into();
                }
                None => commands_open = false,
            },
            _ = sleep_until_opt(deadline) => return "duration".into(),
            // Collected at the top of the loop, once the users are where they should be
            // now (a profile's change due at the same instant comes first).
            _ = tick.tick() => collect_due = true,
            _ = sleep_until_opt(next_change) => {}
            _ = sleep_until_opt(next_profile) => {}
            _ = sleep_until_opt(next_arrival) => {}
            _ = sleep_until_opt(profile_end.filter(|_| {
                run.plan.duration.is_none() && run.arrivals.is_none() && !run.overridden
            })) => {}
            _ = all_done => {}
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
