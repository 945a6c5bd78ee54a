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

use crate::coordinator::Coordinators;
use crate::metrics::{
    encode_histogram, errors_by_kind, Percentiles, Period, StepNames, StepStats, WorkerMetrics,
};
use crate::plan::{ScenarioPlan, TestPlan};
use crate::report::{
    CoordinatorSummary, Outcome, Report, SeriesPoint, StepSummary, ThrottleSummary, UserSummary,
    REPORT_FORMAT,
};
use crate::scenario::{
    DynScenario, InitContext, Registry, ScenarioError, TestEnv, User, UserId, Vars,
};
use crate::throttle::Throttles;
use crate::users::{revive, stop_slot, Shared, UserRun, UserSlot, WorkerCtx, RUNNING};

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
    Stop { ids: Vec<UserId>, forced: bool },
    StopAll { forced: bool },
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
                        let control = Arc::new(AtomicU8::new(RUNNING));
                        ctx.metrics.user_event(|u| u.started += 1);
                        let user = User::new(id, ctx.env.clone(), ctx.metrics.clone());
                        let run = UserRun {
                            control: control.clone(),
                            ctx: ctx.clone(),
                        };
                        // The task cannot run before the next await of this (single-threaded)
                        // worker, so it is registered before it starts.
                        let handle = tokio::spawn(ctx.scenario.clone().user(user, run));
                        let slot = UserSlot {
                            control,
                            abort: handle.abort_handle(),
                        };
                        ctx.users.lock().insert(id, slot);
                        if n % 1024 == 1023 {
                            // Let started users run while a large batch is being spawned.
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
        ScenarioPlan::Messaging(m) => {
            let users = crate::scenario::messaging::MessagingUsers::new(m)
                .map_err(|e| EngineError::Setup(format!("spec.scenario.messaging: {e}")))?;
            (
                Arc::new(Arc::new(users)) as Arc<dyn DynScenario>,
                serde_json::Value::Null,
            )
        }
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

/// A test in progress: what the controller keeps.
struct Run {
    plan: TestPlan,
    env: Arc<TestEnv>,
    opts: EngineOptions,
    /// Orders to each worker; emptied at the end so that workers wind down.
    workers: Vec<mpsc::UnboundedSender<WorkerCmd>>,
    /// Each worker's metrics, read by the collector.
    metrics: Vec<Arc<WorkerMetrics>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    shared: Arc<Shared>,
    /// Users wanted.
    desired: u64,
    /// Ids 1..=launched are assigned to workers (running or finished by themselves).
    launched: u64,
    started_at: Instant,
    started_at_ms: u64,
    totals: Period,
    series: Vec<SeriesPoint>,
    peak: u64,
}

impl Run {
    fn worker_of(&self, id: UserId) -> usize {
        (id % self.workers.len().max(1) as u64) as usize
    }

    /// Starts ids `launched+1 ..= launched+n`.
    fn launch(&mut self, n: u64) {
        let mut batches: Vec<Vec<UserId>> = vec![Vec::new(); self.workers.len()];
        for id in self.launched + 1..=self.launched + n {
            batches[self.worker_of(id)].push(id);
        }
        self.launched += n;
        // Counted as running from now on, so that "everyone has finished" cannot be seen
        // before a worker has even started its batch.
        let running = self.shared.running.fetch_add(n, Ordering::AcqRel) + n;
        self.peak = self.peak.max(running);
        for (w, ids) in batches.into_iter().enumerate() {
            if !ids.is_empty() {
                let _ = self.workers[w].send(WorkerCmd::Start(ids));
            }
        }
    }

    /// Stops the `n` highest ids, gracefully.
    fn retire(&mut self, n: u64) {
        let mut batches: Vec<Vec<UserId>> = vec![Vec::new(); self.workers.len()];
        for id in (self.launched - n + 1..=self.launched).rev() {
            batches[self.worker_of(id)].push(id);
        }
        self.launched -= n;
        for (w, ids) in batches.into_iter().enumerate() {
            if !ids.is_empty() {
                let _ = self.workers[w].send(WorkerCmd::Stop { ids, forced: false });
            }
        }
    }

    fn stop_all(&self, forced: bool) {
        for tx in &self.workers {
            let _ = tx.send(WorkerCmd::StopAll { forced });
        }
    }

    fn running(&self) -> u64 {
        self.shared.running.load(Ordering::Acquire)
    }

    /// Takes every worker's figures into the totals and the series.
    fn collect(&mut self) {
        let mut period = Period::default();
        for m in &self.metrics {
            period.merge(&m.take());
        }
        let users = self.running();
        self.peak = self.peak.max(users);
        let t = self.started_at.elapsed().as_secs_f64();
        let prev_t = self.series.last().map(|p| p.t).unwrap_or(0.0);
        let span = (t - prev_t).max(1e-3);
        let total = period.total();
        let p = Percentiles::of(&total.latency);
        self.series.push(SeriesPoint {
            t,
            users,
            requests: total.requests,
            errors: total.error_total(),
            rps: total.requests as f64 / span,
            p50: p.p50,
            p90: p.p90,
            p99: p.p99,
            max: p.max,
            step_requests: period.steps.iter().map(|s| s.requests).collect(),
            step_errors: period.steps.iter().map(|s| s.error_total()).collect(),
        });
        self.totals.merge(&period);
    }

    /// The report of what happened so far. `full` adds the exact histograms.
    fn report(&self, ended_by: &str, full: bool) -> Report {
        let elapsed = self.started_at.elapsed().as_secs_f64();
        let names = self.env.steps.all();
        let summary = |name: &str, s: &StepStats| StepSummary {
            name: name.to_owned(),
            requests: s.requests,
            errors: s.error_total(),
            errors_by_kind: errors_by_kind(&s.errors),
            rate: if elapsed > 0.0 {
                s.requests as f64 / elapsed
            } else {
                0.0
            },
            latency_ms: Percentiles::of(&s.latency),
            corrected_latency_ms: (!s.corrected.is_empty()).then(|| Percentiles::of(&s.corrected)),
            histogram: if full {
                encode_histogram(&s.latency)
            } else {
                String::new()
            },
        };
        let empty = StepStats::default();
        let steps: Vec<StepSummary> = names
            .iter()
            .enumerate()
            .map(|(i, n)| summary(n, self.totals.steps.get(i).unwrap_or(&empty)))
            .collect();
        let total = summary("total", &self.totals.total());
        let u = self.totals.users;
        let mut report = Report {
            format: REPORT_FORMAT,
            name: self.plan.name.clone(),
            scenario: self.plan.scenario.kind(),
            started_at_ms: self.started_at_ms,
            duration_s: elapsed,
            result: Outcome::Passed,
            ended_by: ended_by.to_owned(),
            users: UserSummary {
                desired: self.desired,
                peak: self.peak,
                started: u.started,
                finished: u.finished,
                failed: u.failed,
                iterations: u.iterations,
            },
            total,
            steps,
            thresholds: Vec::new(),
            throttles: self
                .env
                .throttles
                .all()
                .iter()
                .map(|t| {
                    let s = t.stats();
                    ThrottleSummary {
                        name: t.name().to_owned(),
                        rate: s.rate,
                        requested: s.requested,
                        executed: s.executed,
                    }
                })
                .collect(),
            coordinators: self
                .env
                .coordinators
                .all()
                .iter()
                .map(|c| {
                    let s = c.stats();
                    CoordinatorSummary {
                        name: c.name().to_owned(),
                        groups: s.groups,
                        timeouts: s.timeouts,
                    }
                })
                .collect(),
            series: self.series.clone(),
            bucket_s: 1,
            agents: Default::default(),
        };
        report.thresholds = self.plan.thresholds.evaluate(&report);
        if report.thresholds.iter().any(|t| !t.passed) {
            report.result = Outcome::Failed;
        }
        report
    }
}

/// Runs a test to its end and returns its report. `commands` steers it while it runs;
/// `on_tick` sees a report-so-far every collection period (for live displays).
pub async fn run_test(
    plan: TestPlan,
    registry: &Registry,
    opts: EngineOptions,
    mut commands: mpsc::UnboundedReceiver<Command>,
    mut on_tick: impl FnMut(&Report),
) -> Result<Report, EngineError> {
    let env = test_env(&plan)?;
    let (scenario, config) = scenario_of(&plan, registry)?;
    let init = InitContext {
        env: env.clone(),
        config,
    };
    let running = scenario.init(&init).await.map_err(EngineError::Init)?;
    let shared = Arc::new(Shared::default());
    let mut workers = Vec::new();
    let mut all_metrics = Vec::new();
    let mut threads = Vec::new();
    for i in 0..opts.workers.max(1) {
        let metrics = WorkerMetrics::new();
        let (tx, rx) = mpsc::unbounded_channel();
        let ctx = Arc::new(WorkerCtx {
            env: env.clone(),
            scenario: running.clone(),
            metrics: metrics.clone(),
            repeat: plan.repeat,
            users: Mutex::new(HashMap::new()),
            shared: shared.clone(),
        });
        let thread = std::thread::Builder::new()
            .name(format!("murmur-worker-{i}"))
            .spawn(move || worker_main(ctx, rx))
            .map_err(EngineError::Thread)?;
        workers.push(tx);
        all_metrics.push(metrics);
        threads.push(thread);
    }
    let desired = plan.users;
    let mut run = Run {
        env,
        opts,
        workers,
        metrics: all_metrics,
        threads,
        shared,
        desired,
        launched: 0,
        started_at: Instant::now(),
        started_at_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        totals: Period::default(),
        series: Vec::new(),
        peak: 0,
        plan,
    };
    tracing::info!(test = %run.plan.name, users = desired, workers = run.workers.len(), "test started");
    let ended_by = control_loop(&mut run, &mut commands, &mut on_tick).await;
    finish(&mut run, &mut commands, &ended_by).await;
    running.terminate().await;
    let report = run.report(&ended_by, true);
    tracing::info!(test = %run.plan.name, result = ?report.result, ended_by, "test finished");
    Ok(report)
}

/// Runs users until the test ends; returns why it ended.
async fn control_loop(
    run: &mut Run,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    on_tick: &mut impl FnMut(&Report),
) -> String {
    let interarrival = run.plan.user_rate.and_then(|r| r.interarrival());
    let deadline = run.plan.duration.map(|d| run.started_at + d);
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + run.opts.tick, run.opts.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Users change one by one at `userRate`; `last_change` is when the last one was due.
    let mut last_change = Instant::now();
    let mut commands_open = true;
    loop {
        // Bring the user count towards `desired`, at the user rate.
        let gap = run.desired.abs_diff(run.launched);
        let mut next_change: Option<Instant> = None;
        if gap > 0 {
            let due = match interarrival {
                None => gap,
                Some(ia) => {
                    let now = Instant::now();
                    let n = (now.saturating_duration_since(last_change).as_secs_f64()
                        / ia.as_secs_f64()) as u64;
                    if n == 0 {
                        next_change = Some(last_change + ia);
                    }
                    // Do not bank time while idle: at most what is due since the last change.
                    last_change = if n >= gap {
                        now
                    } else {
                        last_change + ia.mul_f64(n as f64)
                    };
                    n.min(gap)
                }
            };
            if due > 0 {
                if run.desired > run.launched {
                    run.launch(due);
                } else {
                    run.retire(due);
                }
                if run.desired.abs_diff(run.launched) > 0 {
                    next_change = Some(match interarrival {
                        Some(ia) => last_change + ia,
                        None => Instant::now(),
                    });
                }
            }
        } else {
            last_change = Instant::now();
        }
        // Every user ended by itself: all repeats done (or, without repeats, every user
        // failed for good; the report says so).
        if run.launched > 0 && run.desired == run.launched && run.running() == 0 {
            return "completed".into();
        }
        let all_done = run.shared.all_done.notified();
        tokio::select! {
            biased;
            cmd = commands.recv(), if commands_open => match cmd {
                Some(Command::SetUsers(n)) => {
                    tracing::info!(users = n, "desired users changed");
                    run.desired = n;
                }
                Some(Command::SetVars(vars)) => run.env.vars.store(Arc::new(vars)),
                Some(Command::Stop { forced }) => {
                    if forced {
                        run.stop_all(true);
                    }
                    return "stopped".into();
                }
                None => commands_open = false,
            },
            _ = sleep_until_opt(deadline) => return "duration".into(),
            _ = tick.tick() => {
                run.collect();
                on_tick(&run.report("running", false));
            }
            _ = sleep_until_opt(next_change) => {}
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

/// Stops every user (gracefully, then forced after the grace period or a forced stop
/// command), waits for the workers, and takes the last figures.
async fn finish(run: &mut Run, commands: &mut mpsc::UnboundedReceiver<Command>, ended_by: &str) {
    let _ = ended_by;
    run.stop_all(false);
    let grace = tokio::time::sleep(run.opts.stop_grace);
    tokio::pin!(grace);
    let mut forced = false;
    while run.running() > 0 {
        let all_done = run.shared.all_done.notified();
        if run.running() == 0 {
            break;
        }
        tokio::select! {
            _ = all_done => {}
            _ = &mut grace, if !forced => {
                tracing::info!(left = run.running(), "grace period over: aborting the remaining users");
                run.stop_all(true);
                forced = true;
            }
            cmd = commands.recv() => {
                if let Some(Command::Stop { forced: true }) = cmd {
                    run.stop_all(true);
                    forced = true;
                }
            }
            // Aborted users may take a moment to be dropped; look again shortly.
            _ = tokio::time::sleep(Duration::from_millis(50)), if forced => {}
        }
    }
    // Closing the order channels ends the workers; their runtimes drop what is left.
    run.workers.clear();
    for t in std::mem::take(&mut run.threads) {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    run.collect();
}
