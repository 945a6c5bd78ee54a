//! The engine's user lifecycle with a custom scenario that records what users do: ids
//! 1..N each exactly once, repeats, duration, user rate, adding and removing users while
//! running (graceful and forced), and stopping.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use murmuration_agent::engine::{run_test, Command, EngineOptions};
use murmuration_agent::plan::{build_plan, TestPlan};
use murmuration_agent::registry::Registry;
use murmuration_agent::report::Report;
use murmuration_agent::scenario::{InitContext, Scenario, ScenarioError, User};
use parking_lot::Mutex;
use tokio::sync::mpsc;

/// What users did, as the scenario saw it.
#[derive(Default)]
struct Journal {
    /// Iterations started, per user id.
    started: BTreeMap<u64, u64>,
    /// Iterations finished, per user id.
    finished: BTreeMap<u64, u64>,
    /// When each user first started.
    first_start: BTreeMap<u64, Instant>,
    /// Users inside an iteration now.
    inside: BTreeSet<u64>,
}

/// Each iteration waits `config.sleepMs`.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Journal>>);

impl Scenario for Recorder {
    type State = (Duration, murmuration_agent::metrics::StepId);

    async fn init(&self, ctx: &InitContext) -> Result<Self::State, ScenarioError> {
        if ctx.config.get("failInit").is_some() {
            return Err(ScenarioError::Config("asked to fail".into()));
        }
        let ms = ctx
            .config
            .get("sleepMs")
            .and_then(|v| v.as_u64())
            .unwrap_or(10);
        Ok((Duration::from_millis(ms), ctx.step("work")))
    }

    async fn start(&self, user: &mut User, state: &Self::State) -> Result<(), ScenarioError> {
        let id = user.id();
        {
            let mut j = self.0.lock();
            *j.started.entry(id).or_default() += 1;
            j.first_start.entry(id).or_insert_with(Instant::now);
            assert!(j.inside.insert(id), "user {id} runs twice at once");
        }
        let t = user.now();
        tokio::time::sleep(state.0).await;
        user.record(state.1, t, None);
        let mut j = self.0.lock();
        *j.finished.entry(id).or_default() += 1;
        j.inside.remove(&id);
        Ok(())
    }
}

fn plan(yaml: &str, registry: &Registry) -> TestPlan {
    let spec: murmuration_crds::LoadTestSpec = serde_saphyr::from_str(yaml).unwrap();
    build_plan("engine-test", &spec, &[], &[], registry).unwrap()
}

fn opts() -> EngineOptions {
    EngineOptions {
        workers: 2,
        stop_grace: Duration::from_secs(5),
        tick: Duration::from_millis(100),
    }
}

async fn run(yaml: &str, journal: &Recorder, commands: mpsc::UnboundedReceiver<Command>) -> Report {
    let registry = Registry::new().register("recorder", journal.clone());
    let p = plan(yaml, &registry);
    tokio::time::timeout(
        Duration::from_secs(60),
        run_test(p, &registry, opts(), commands, |_| {}),
    )
    .await
    .expect("the test ends by itself")
    .unwrap()
}

/// Polls `f` until it holds, or panics after `limit` naming `what`.
async fn eventually(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn every_user_runs_its_repeats_exactly_and_the_test_completes() {
    let j = Recorder::default();
    let (_tx, rx) = mpsc::unbounded_channel();
    let r = run(
        "users: 200\nrepeat: {times: 3}\nscenario: {custom: {name: recorder, config: {sleepMs: 5}}}",
        &j,
        rx,
    )
    .await;
    assert_eq!(r.ended_by, "completed");
    let journal = j.0.lock();
    assert_eq!(
        journal.started.keys().copied().collect::<Vec<_>>(),
        (1..=200).collect::<Vec<_>>()
    );
    assert!(
        journal.finished.values().all(|n| *n == 3),
        "{:?}",
        journal.finished
    );
    assert_eq!(r.users.started, 200);
    assert_eq!(r.users.finished, 200);
    assert_eq!(r.users.iterations, 600);
    assert_eq!(r.steps[0].requests, 600);
    assert_eq!(r.total.requests, 600);
}

#[tokio::test]
async fn repeat_interval_paces_iterations() {
    let j = Recorder::default();
    let (_tx, rx) = mpsc::unbounded_channel();
    let t = Instant::now();
    let r = run(
        "users: 3\nrepeat: {times: 4, interval: 100ms}\nscenario: {custom: {name: recorder, config: {sleepMs: 1}}}",
        &j,
        rx,
    )
    .await;
    // 4 iterations with 3 pauses of 100 ms in between.
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(r.users.iterations, 12);
}

#[tokio::test]
async fn duration_ends_the_test() {
    let j = Recorder::default();
    let (_tx, rx) = mpsc::unbounded_channel();
    let t = Instant::now();
    let r = run(
        "users: 10\nduration: 700ms\nscenario: {custom: {name: recorder}}",
        &j,
        rx,
    )
    .await;
    assert_eq!(r.ended_by, "duration");
    assert!(t.elapsed() >= Duration::from_millis(700));
    assert!(
        r.duration_s >= 0.7 && r.duration_s < 10.0,
        "{}",
        r.duration_s
    );
    assert!(!r.series.is_empty(), "a time series was collected");
    assert!(
        j.0.lock().inside.is_empty(),
        "users finished their iteration"
    );
}

/// What the README promises: ids 1..N, each exactly once, added at `userRate`. The engine
/// hands ids out in order, one every `1 / userRate`, never early; with several worker
/// threads two users handed out 20 ms apart may still run their first line in either
/// order, so the order in which they are *seen* starting is not promised and not checked.
#[tokio::test]
async fn users_start_at_the_user_rate_each_id_once() {
    let j = Recorder::default();
    let (_tx, rx) = mpsc::unbounded_channel();
    let t0 = Instant::now();
    run(
        "users: 20\nuserRate: 50/s\nrepeat: {times: 1}\nscenario: {custom: {name: recorder, config: {sleepMs: 1}}}",
        &j,
        rx,
    )
    .await;
    let journal = j.0.lock();
    assert_eq!(
        journal.started.keys().copied().collect::<Vec<_>>(),
        (1..=20).collect::<Vec<_>>(),
        "each id once"
    );
    assert!(
        journal.started.values().all(|n| *n == 1),
        "{:?}",
        journal.started
    );
    // 50/s: user k is handed out no earlier than k * 20 ms after the test began, however
    // fast or slow the machine (a slow one only starts them later).
    for (id, at) in &journal.first_start {
        let due = Duration::from_millis(20 * id);
        assert!(
            at.duration_since(t0) >= due,
            "user {id} started {:?} after the start, before its turn at {due:?}",
            at.duration_since(t0)
        );
    }
}

#[tokio::test]
async fn users_are_added_and_removed_while_running() {
    let j = Recorder::default();
    let (tx, rx) = mpsc::unbounded_channel();
    let journal = j.clone();
    let steer = tokio::spawn(async move {
        let seen = |n: usize| journal.0.lock().started.len() >= n;
        eventually("10 users", Duration::from_secs(10), || seen(10)).await;
        tx.send(Command::SetUsers(30)).unwrap();
        eventually("30 users", Duration::from_secs(10), || seen(30)).await;
        tx.send(Command::SetUsers(5)).unwrap();
        // Users 6..30 finish their iteration and are not seen again.
        eventually("only users 1..=5 inside", Duration::from_secs(10), || {
            journal.0.lock().inside.iter().all(|id| *id <= 5)
        })
        .await;
        let snapshot = journal.0.lock().started.clone();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let later = journal.0.lock().started.clone();
        for id in 6..=30 {
            assert_eq!(
                snapshot[&id], later[&id],
                "user {id} was removed but ran again"
            );
        }
        for id in 1..=5 {
            assert!(later[&id] > snapshot[&id], "user {id} kept running");
        }
        tx.send(Command::Stop { forced: false }).unwrap();
    });
    let r = run(
        "users: 10\nscenario: {custom: {name: recorder, config: {sleepMs: 20}}}",
        &j,
        rx,
    )
    .await;
    steer.await.unwrap();
    assert_eq!(r.ended_by, "stopped");
    let journal = j.0.lock();
    assert_eq!(
        journal.started.keys().copied().collect::<Vec<_>>(),
        (1..=30).collect::<Vec<_>>()
    );
    // Graceful removal: every started iteration was finished.
    for (id, n) in &journal.started {
        assert_eq!(
            journal.finished.get(id),
            Some(n),
            "user {id} was cut mid-iteration"
        );
    }
    assert_eq!(r.users.peak, 30);
}

#[tokio::test]
async fn a_forced_stop_aborts_users_at_once() {
    let j = Recorder::default();
    let (tx, rx) = mpsc::unbounded_channel();
    let journal = j.clone();
    tokio::spawn(async move {
        eventually("users inside", Duration::from_secs(10), || {
            journal.0.lock().inside.len() == 50
        })
        .await;
        tx.send(Command::Stop { forced: true }).unwrap();
        std::future::pending::<()>().await;
    });
    let t = Instant::now();
    let r = run(
        "users: 50\nscenario: {custom: {name: recorder, config: {sleepMs: 60000}}}",
        &j,
        rx,
    )
    .await;
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "a forced stop waited: {:?}",
        t.elapsed()
    );
    assert_eq!(r.ended_by, "stopped");
    assert_eq!(r.users.iterations, 0, "no iteration finished");
    assert_eq!(r.users.started, 50);
    assert_eq!(r.users.finished, 50, "aborted users are counted as ended");
}

#[tokio::test]
async fn a_graceful_stop_aborts_what_is_left_after_the_grace_period() {
    let j = Recorder::default();
    let (tx, rx) = mpsc::unbounded_channel();
    let journal = j.clone();
    tokio::spawn(async move {
        eventually("users inside", Duration::from_secs(10), || {
            journal.0.lock().inside.len() == 5
        })
        .await;
        tx.send(Command::Stop { forced: false }).unwrap();
        std::future::pending::<()>().await;
    });
    let registry = Registry::new().register("recorder", j.clone());
    let p = plan(
        "users: 5\nscenario: {custom: {name: recorder, config: {sleepMs: 60000}}}",
        &registry,
    );
    let t = Instant::now();
    let o = EngineOptions {
        stop_grace: Duration::from_millis(300),
        ..opts()
    };
    let r = run_test(p, &registry, o, rx, |_| {}).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(r.ended_by, "stopped");
    assert_eq!(r.users.iterations, 0);
}

#[tokio::test]
async fn a_failing_init_stops_the_test_before_any_user() {
    let j = Recorder::default();
    let registry = Registry::new().register("recorder", j.clone());
    let p = plan(
        "users: 5\nscenario: {custom: {name: recorder, config: {failInit: true}}}",
        &registry,
    );
    let (_tx, rx) = mpsc::unbounded_channel();
    let e = run_test(p, &registry, opts(), rx, |_| {})
        .await
        .unwrap_err();
    assert!(e.to_string().contains("asked to fail"), "{e}");
    assert!(j.0.lock().started.is_empty());
}

#[tokio::test]
async fn vars_change_while_running() {
    struct ReadsVar(Arc<Mutex<Vec<String>>>);
    impl Scenario for ReadsVar {
        type State = ();
        async fn init(&self, _: &InitContext) -> Result<(), ScenarioError> {
            Ok(())
        }
        async fn start(&self, user: &mut User, _: &()) -> Result<(), ScenarioError> {
            let v = user
                .var("color")
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            self.0.lock().push(v);
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok(())
        }
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let registry = Registry::new().register("reads", ReadsVar(seen.clone()));
    let p = plan(
        "users: 2\nvars: {color: red}\nscenario: {custom: {name: reads}}",
        &registry,
    );
    let (tx, rx) = mpsc::unbounded_channel();
    let s = seen.clone();
    tokio::spawn(async move {
        eventually("red seen", Duration::from_secs(10), || {
            s.lock().iter().any(|c| c == "red")
        })
        .await;
        let mut vars = serde_json::Map::new();
        vars.insert("color".into(), "blue".into());
        tx.send(Command::SetVars(vars)).unwrap();
        eventually("blue seen", Duration::from_secs(10), || {
            s.lock().iter().any(|c| c == "blue")
        })
        .await;
        tx.send(Command::Stop { forced: false }).unwrap();
        std::future::pending::<()>().await;
    });
    run_test(p, &registry, opts(), rx, |_| {}).await.unwrap();
    let seen = seen.lock();
    let first_blue = seen.iter().position(|c| c == "blue").unwrap();
    assert!(
        seen[first_blue..].iter().all(|c| c == "blue"),
        "no old value after the change"
    );
}

#[tokio::test]
async fn a_user_removed_and_added_back_before_it_ended_runs_once() {
    let j = Recorder::default();
    let (tx, rx) = mpsc::unbounded_channel();
    let journal = j.clone();
    tokio::spawn(async move {
        eventually("20 users inside", Duration::from_secs(10), || {
            journal.0.lock().inside.len() == 20
        })
        .await;
        // Users 11..20 are in a 300 ms iteration: remove them and add them back at once.
        tx.send(Command::SetUsers(10)).unwrap();
        tx.send(Command::SetUsers(20)).unwrap();
        // Revived, they go on iterating: every user finishes three more iterations.
        let from: BTreeMap<u64, u64> = journal.0.lock().finished.clone();
        eventually(
            "every user, revived ones too, three iterations further",
            Duration::from_secs(30),
            || {
                let j = journal.0.lock();
                (1..=20).all(|id| {
                    j.finished.get(&id).copied().unwrap_or(0)
                        >= from.get(&id).copied().unwrap_or(0) + 3
                })
            },
        )
        .await;
        tx.send(Command::Stop { forced: false }).unwrap();
        std::future::pending::<()>().await;
    });
    // The Recorder panics (in the user task) if an id runs twice at once; the journal then
    // misses its iterations, which the checks below catch.
    let r = run(
        "users: 20\nscenario: {custom: {name: recorder, config: {sleepMs: 300}}}",
        &j,
        rx,
    )
    .await;
    let journal = j.0.lock();
    assert_eq!(journal.started.len(), 20);
    for (id, n) in &journal.started {
        assert_eq!(journal.finished.get(id), Some(n), "user {id}");
    }
    assert_eq!(r.users.started, 20, "revived users are not started again");
    assert_eq!(r.users.failed, 0);
}
