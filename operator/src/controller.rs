//! The LoadTest controller, as a pipeline: read the test (and its Throttles and
//! Coordinators) → validate → build the desired objects (pure, [`crate::build`]) → apply →
//! push the live settings to the master → compute the status from the master's (pure,
//! [`crate::status`]) → write it, with Events on transitions → at the end, keep the report
//! and clean up.
//!
//! Throttles and Coordinators belong to a test (`spec.loadTest`): a change to one's spec
//! reconciles its test, which pushes it to the master and writes its live figures into
//! its status. They are read from watch caches, not listed per reconcile, and only spec
//! changes (generation) and deletions trigger: the operator's own status writes must not,
//! or every figure it writes would trigger the next write.
//!
//! Status is written with merge patches (Kubernetes 1.20 has no server-side apply of
//! status for custom resources worth relying on): at once on a transition (phase,
//! conditions, observed generation, result), figures alone at most every 2 s. While users
//! or agents are on their way the master is asked every 250 ms, so that `kubectl scale`
//! shows the new count running as soon as it is, without writing more often.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use murmuration_crds::api::{MasterStatus, TestPhase};
use murmuration_crds::loadtest::{LoadTestSpec, LoadTestStatus, Phase, StopMode};
use murmuration_crds::{Coordinator, CoordinatorStatus, LoadTest, Throttle, ThrottleStatus};
use tracing::Instrument;

use crate::build::{self, PodSettings};
use crate::master::MasterClient;
use crate::metrics::Metrics;
use crate::names::{self, MANAGER, MASTER_PORT, TOKEN_KEY};
use crate::status::{self, StatusWrite, Transition};

/// How often a running test's status is refreshed (its figures are written at most this
/// often).
pub const REFRESH: Duration = Duration::from_secs(2);
/// How often the master is asked while users or agents are on their way.
pub const FOLLOW: Duration = Duration::from_millis(250);
/// How long a finished test's report may fail to be fetched before its pods go without it.
const REPORT_PATIENCE: Duration = Duration::from_secs(60);
/// A stored report must fit in a ConfigMap (1 MiB) with room to spare.
const MAX_REPORT_BYTES: usize = 900 * 1024;

/// What every reconcile shares.
pub struct Context {
    /// The Kubernetes client (the operator's own rights only).
    pub client: Client,
    /// How master and agent pods are built.
    pub pods: PodSettings,
    /// Publishes Events on the LoadTests.
    pub recorder: Recorder,
    /// The operator's Prometheus metrics.
    pub metrics: Metrics,
    /// Every LoadTest, as watched (tests by phase for the metrics).
    pub tests: Store<LoadTest>,
    /// Every Throttle, as watched: a reconcile takes its test's from here.
    pub throttles: Store<Throttle>,
    /// Every Coordinator, as watched.
    pub coordinators: Store<Coordinator>,
    /// How long a master may take to answer, beyond a test's start barrier, before the
    /// test fails ([`status::master_overdue`]).
    pub master_grace: Duration,
    /// What the operator remembers of each test between reconciles, by uid.
    memo: Mutex<HashMap<String, Memo>>,
}

/// What the operator remembers of a test (lost on restart, which only costs a write).
#[derive(Default)]
struct Memo {
    /// The last status written, and when: the watch cache may not have it yet when the
    /// next reconcile runs (and Events are computed against it).
    written: Option<(LoadTestStatus, Instant)>,
    /// Since when the finished test's report could not be fetched.
    report_failing_since: Option<Instant>,
    /// The settings last pushed to the master ([`settings_key`]), and when.
    pushed: Option<(String, Instant)>,
    /// The generation last compared with the master's spec, and the edits the running
    /// test does not take as last told in an Event.
    edits_told: Option<(i64, Vec<String>)>,
}

/// What identifies the settings of a test: the generations of its spec and of its
/// Throttles' and Coordinators'.
fn settings_key(lt: &LoadTest, throttles: &[Throttle], coordinators: &[Coordinator]) -> String {
    let mut key = format!("{}", lt.metadata.generation.unwrap_or(0));
    for t in throttles {
        key += &format!(" t:{}@{}", t.name_any(), t.metadata.generation.unwrap_or(0));
    }
    for c in coordinators {
        key += &format!(" c:{}@{}", c.name_any(), c.metadata.generation.unwrap_or(0));
    }
    key
}

/// The writers of [`Context`]'s caches, fed by [`run`]'s watches.
pub struct Caches {
    tests: reflector::store::Writer<LoadTest>,
    throttles: reflector::store::Writer<Throttle>,
    coordinators: reflector::store::Writer<Coordinator>,
}

impl Context {
    /// A context, and the writers of its caches (for [`run`]).
    pub fn new(
        client: Client,
        pods: PodSettings,
        recorder: Recorder,
        metrics: Metrics,
    ) -> (Context, Caches) {
        let (tests, tests_w) = reflector::store();
        let (throttles, throttles_w) = reflector::store();
        let (coordinators, coordinators_w) = reflector::store();
        (
            Context {
                client,
                pods,
                recorder,
                metrics,
                tests,
                throttles,
                coordinators,
                master_grace: status::MASTER_GRACE,
                memo: Mutex::default(),
            },
            Caches {
                tests: tests_w,
                throttles: throttles_w,
                coordinators: coordinators_w,
            },
        )
    }

    fn memo<T>(&self, uid: &str, f: impl FnOnce(&mut Memo) -> T) -> T {
        let mut m = self.memo.lock().unwrap_or_else(|e| e.into_inner());
        f(m.entry(uid.to_owned()).or_default())
    }

    /// Tests by phase, from the cache; forgets what it remembered of deleted tests.
    pub fn count_phases(&self) -> BTreeMap<String, i64> {
        let tests = self.tests.state();
        let mut m = BTreeMap::new();
        for lt in &tests {
            let phase = lt
                .status
                .as_ref()
                .and_then(|s| s.phase)
                .unwrap_or(Phase::Pending);
            *m.entry(format!("{phase:?}")).or_insert(0) += 1;
        }
        let live: std::collections::HashSet<String> = tests
            .iter()
            .filter_map(|t| t.metadata.uid.clone())
            .collect();
        self.memo
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|uid, _| live.contains(uid));
        m
    }
}

/// Why a reconcile failed (it is retried with a backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the Kubernetes API failed.
    #[error("{what}: {source}")]
    Kube {
        /// What was being done.
        what: String,
        /// The API's error.
        #[source]
        source: kube::Error,
    },
    /// The test's token Secret has no token.
    #[error("Secret {0} has no token")]
    NoToken(String),
    /// The finished test's report could not be fetched from its master (retried for a
    /// while before the pods go).
    #[error("fetching the report: {0}")]
    Report(#[source] crate::master::MasterError),
}

fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Kube { what, source }
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Only what deserves a reconcile of the test: a new or changed spec (generation), or a
/// deletion. Status changes (the operator's own writes of live figures) pass through the
/// cache but trigger nothing.
fn spec_changes<K>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource + Clone + Send + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send,
{
    let mut seen: HashMap<ObjectRef<K>, Option<i64>> = HashMap::new();
    events.flat_map(move |event| {
        let out: Vec<Result<K, watcher::Error>> = match event {
            Err(e) => vec![Err(e)],
            Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                let generation = o.meta().generation;
                let key = ObjectRef::from_obj(&o);
                if seen.insert(key, generation) == Some(generation) {
                    vec![]
                } else {
                    vec![Ok(o)]
                }
            }
            Ok(watcher::Event::Delete(o)) => {
                seen.remove(&ObjectRef::from_obj(&o));
                vec![Ok(o)]
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => vec![],
        };
        futures::stream::iter(out)
    })
}

/// The test a Throttle or Coordinator belongs to.
fn test_of(part: &impl TestPart) -> Option<ObjectRef<LoadTest>> {
    Some(ObjectRef::new(part.load_test()?).within(part.meta().namespace.as_deref()?))
}

/// Runs the controller until `shutdown` completes.
pub async fn run(
    ctx: Arc<Context>,
    caches: Caches,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let tests = watcher(
        Api::<LoadTest>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(caches.tests);
    let throttles = watcher(
        Api::<Throttle>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(caches.throttles);
    let coordinators = watcher(
        Api::<Coordinator>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(caches.coordinators);
    let owned =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGER}"));
    let controller = Controller::for_stream(spec_changes(tests), ctx.tests.clone())
        .owns(Api::<StatefulSet>::all(client.clone()), owned.clone())
        .owns(Api::<Pod>::all(client.clone()), owned)
        .watches_stream(spec_changes(throttles), |t| test_of(&t))
        .watches_stream(spec_changes(coordinators), |c| test_of(&c))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx.clone());
    controller
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!("reconcile: {e}");
            }
        })
        .await;
}

fn error_policy(lt: Arc<LoadTest>, e: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(test = %lt.name_any(), "reconcile failed: {e}");
    ctx.metrics.errors.inc();
    Action::requeue(Duration::from_secs(5))
}

/// One pass over one test.
pub async fn reconcile(lt: Arc<LoadTest>, ctx: Arc<Context>) -> Result<Action, Error> {
    let span = tracing::info_span!(
        "reconcile",
        test = %lt.name_any(),
        namespace = %lt.namespace().unwrap_or_default(),
        generation = lt.metadata.generation.unwrap_or(0)
    );
    let started = Instant::now();
    let result = reconcile_inner(&lt, &ctx).instrument(span).await;
    ctx.metrics.observe(started.elapsed(), result.is_ok());
    result
}

async fn reconcile_inner(lt: &LoadTest, ctx: &Context) -> Result<Action, Error> {
    if lt.metadata.deletion_timestamp.is_some() {
        // Owner references take every object of the test away with it.
        return Ok(Action::await_change());
    }
    let ns = lt.namespace().unwrap_or_default();
    let name = lt.name_any();
    let uid = lt.metadata.uid.clone().unwrap_or_default();
    // Read: the test as last written by this operator (the watch cache may lag behind),
    // and its Throttles and Coordinators.
    let mut lt = lt.clone();
    if let Some((written, _)) = ctx.memo(&uid, |m| m.written.clone()) {
        lt.status = Some(written);
    }
    let lt = &lt;
    let (throttles, coordinators) = parts_of(ctx, &ns, &name).await?;
    let phase = lt
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .unwrap_or(Phase::Pending);
    if matches!(phase, Phase::Succeeded | Phase::Failed) {
        return finished(lt, ctx).await;
    }
    // Validate.
    // The model's compiler, as `murmur run` and the master use it (custom scenario names
    // aside): a test it refuses gets no pod, Secret or StatefulSet.
    if let Err(e) = murmuration_model::compile_objects(lt, &throttles, &coordinators) {
        let problem = status::Invalid::of(&e);
        let (status, events) = status::invalid(lt, &problem, &now());
        publish(ctx, lt, &events).await;
        write_status(ctx, lt, &status).await?;
        return Ok(Action::await_change());
    }
    // Build and apply.
    let token = ensure_token(lt, ctx).await?;
    let master_pod = ensure_master(lt, ctx, &throttles, &coordinators).await?;
    apply(ctx, &ns, &build::master_service(lt)).await?;
    apply(ctx, &ns, &build::agents(lt, &ctx.pods)).await?;
    // Push the live settings, and read the master's state.
    let master = MasterClient::new(
        format!("{}.{ns}.svc:{MASTER_PORT}", names::master(&name)),
        token,
    );
    let state = match master.status().await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!("master not there yet: {e}");
            let now = now();
            if let Some(why) =
                status::master_overdue(lt, master_pod.as_ref(), ctx.master_grace, &now)
            {
                tracing::warn!("{why}");
                let (status, events) = status::failed_to_start(lt, &why, &now);
                publish(ctx, lt, &events).await;
                write_status(ctx, lt, &status).await?;
                return Ok(Action::requeue(Duration::from_millis(100)));
            }
            let status = status::without_master(lt, &e.to_string(), &now);
            write_status(ctx, lt, &status).await?;
            // A master on its way is asked again soon: the agents connect the moment it
            // listens, and the test may start a moment later.
            return Ok(Action::requeue(if status::is_progressing(&status) {
                FOLLOW
            } else {
                REFRESH
            }));
        }
    };
    // Everything is pushed when a spec changed, and again every REFRESH (a restarted
    // master learns it back); the quick follow-up polls in between only read.
    let settings = settings_key(lt, &throttles, &coordinators);
    let push_due = ctx.memo(&uid, |m| match &m.pushed {
        Some((key, at)) => *key != settings || at.elapsed() + FOLLOW / 2 >= REFRESH,
        None => true,
    });
    let state = if state.phase == TestPhase::Finished || !push_due {
        state
    } else {
        let started = master_pod.as_ref().and_then(build::started_spec);
        let state = push(
            lt,
            started.as_ref(),
            &master,
            state,
            &throttles,
            &coordinators,
        )
        .await;
        ctx.memo(&uid, |m| m.pushed = Some((settings, Instant::now())));
        state
    };
    // Status.
    let (mut status, mut events) = status::from_master(lt, &state, &now());
    if state.phase != TestPhase::Finished {
        events.extend(edits_not_taken(lt, ctx, master_pod.as_ref()));
    }
    write_figures(ctx, &ns, &state, &throttles, &coordinators).await;
    let finished = matches!(status.phase, Some(Phase::Succeeded | Phase::Failed));
    if finished && !store_report(lt, ctx, &master).await? {
        status.report = None;
    }
    publish(ctx, lt, &events).await;
    let write = status::write_kind(lt.status.as_ref(), &status);
    let last = ctx.memo(&uid, |m| m.written.as_ref().map(|(_, at)| *at));
    let due = match write {
        StatusWrite::Nothing => false,
        StatusWrite::Now => true,
        // Figures alone: at most every REFRESH (a little slack for timer jitter).
        StatusWrite::Paced => last.is_none_or(|at| at.elapsed() + FOLLOW / 2 >= REFRESH),
    };
    if due {
        write_status(ctx, lt, &status).await?;
        let why = if write == StatusWrite::Now {
            "transition"
        } else {
            "figures"
        };
        ctx.metrics.status_writes.with_label_values(&[why]).inc();
    }
    if finished {
        return Ok(Action::requeue(Duration::from_millis(100)));
    }
    Ok(Action::requeue(if status::is_progressing(&status) {
        FOLLOW
    } else {
        REFRESH
    }))
}

/// A Throttle or a Coordinator: a part of the test that `spec.loadTest` names.
trait TestPart:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
{
    /// The kind, for messages.
    const KIND: &'static str;
    /// The test it belongs to.
    fn load_test(&self) -> Option<&str>;
}

impl TestPart for Throttle {
    const KIND: &'static str = "Throttle";
    fn load_test(&self) -> Option<&str> {
        self.spec.load_test.as_deref()
    }
}

impl TestPart for Coordinator {
    const KIND: &'static str = "Coordinator";
    fn load_test(&self) -> Option<&str> {
        self.spec.load_test.as_deref()
    }
}

/// The Throttles and Coordinators of a test, from the caches. A name a step uses but the
/// cache does not have yet (applied with the test a moment ago, or the operator just
/// started) is looked up in the API before the test is called invalid for it.
async fn parts_of(
    ctx: &Context,
    ns: &str,
    test: &str,
) -> Result<(Vec<Throttle>, Vec<Coordinator>), Error> {
    let (want_t, want_c) = ctx
        .tests
        .get(&ObjectRef::new(test).within(ns))
        .map(|t| murmuration_model::names_used(&t.spec))
        .unwrap_or_default();
    Ok((
        parts(ctx, &ctx.throttles, ns, test, want_t).await?,
        parts(ctx, &ctx.coordinators, ns, test, want_c).await?,
    ))
}

/// The parts of one kind of test `test` in `ns`, by name: those in `cache`, and those of
/// `wanted` read from the API.
async fn parts<K: TestPart>(
    ctx: &Context,
    cache: &Store<K>,
    ns: &str,
    test: &str,
    wanted: Vec<String>,
) -> Result<Vec<K>, Error> {
    let mut found: Vec<K> = cache
        .state()
        .iter()
        .filter(|p| p.meta().namespace.as_deref() == Some(ns) && p.load_test() == Some(test))
        .map(|p| (**p).clone())
        .collect();
    for n in wanted {
        if !found.iter().any(|p| p.meta().name.as_deref() == Some(&n)) {
            let got = Api::<K>::namespaced(ctx.client.clone(), ns)
                .get_opt(&n)
                .await
                .map_err(kube_err(format!("read {} {n}", K::KIND)))?;
            found.extend(got.filter(|p| p.load_test() == Some(test)));
        }
    }
    found.sort_by(|a, b| a.meta().name.cmp(&b.meta().name));
    Ok(found)
}

/// The token of the test: created once, kept for the life of the test.
async fn ensure_token(lt: &LoadTest, ctx: &Context) -> Result<String, Error> {
    let ns = lt.namespace().unwrap_or_default();
    let name = names::token_secret(&lt.name_any());
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    if let Some(s) = secrets
        .get_opt(&name)
        .await
        .map_err(kube_err("read the token Secret"))?
    {
        return s
            .data
            .and_then(|d| {
                d.get(TOKEN_KEY)
                    .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            })
            .ok_or(Error::NoToken(name));
    }
    let token: String = {
        use rand::Rng;
        let mut rng = rand::rng();
        (0..40)
            .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.random_range(0..36)]))
            .collect()
    };
    match secrets
        .create(&PostParams::default(), &build::token_secret(lt, &token))
        .await
    {
        Ok(_) => Ok(token),
        // Created meanwhile by another pass: take that one.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let s = secrets
                .get(&name)
                .await
                .map_err(kube_err("read the token Secret"))?;
            s.data
                .and_then(|d| {
                    d.get(TOKEN_KEY)
                        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                })
                .ok_or(Error::NoToken(name))
        }
        Err(e) => Err(kube_err("create the token Secret")(e)),
    }
}

/// The master pod is created once: pods are immutable, and the live settings go to the
/// master through its API. Returns it (when it could be read back).
async fn ensure_master(
    lt: &LoadTest,
    ctx: &Context,
    throttles: &[Throttle],
    coordinators: &[Coordinator],
) -> Result<Option<Pod>, Error> {
    let ns = lt.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let name = names::master(&lt.name_any());
    if let Some(p) = pods
        .get_opt(&name)
        .await
        .map_err(kube_err("read the master pod"))?
    {
        return Ok(Some(p));
    }
    match pods
        .create(
            &PostParams::default(),
            &build::master_pod(
                lt,
                &build::test_manifests(lt, throttles, coordinators),
                &ctx.pods,
            ),
        )
        .await
    {
        Ok(p) => {
            tracing::info!("master pod created");
            Ok(Some(p))
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
        Err(e) => Err(kube_err("create the master pod")(e)),
    }
}

async fn apply<K>(ctx: &Context, ns: &str, obj: &K) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(kube_err(format!("apply {} {name}", K::kind(&()))))?;
    Ok(())
}

/// Sends the master what changed: users, agents, vars, throttles, coordinators. The master
/// takes the same settings again as no change.
async fn push(
    lt: &LoadTest,
    started: Option<&LoadTestSpec>,
    master: &MasterClient,
    mut state: MasterStatus,
    throttles: &[Throttle],
    coordinators: &[Coordinator],
) -> MasterStatus {
    fn note(
        state: &mut MasterStatus,
        r: Result<MasterStatus, crate::master::MasterError>,
        what: &str,
    ) {
        match r {
            Ok(s) => *state = s,
            Err(e) => tracing::warn!("pushing {what} to the master: {e}"),
        }
    }
    // A stop asked for in the spec (the master takes a repeated stop as a no-op, and a
    // forced one after a graceful one as forcing it).
    if let Some(mode) = lt.spec.stop {
        let forced = mode == StopMode::Forced;
        let due = match state.phase {
            TestPhase::Starting | TestPhase::Running => true,
            TestPhase::Stopping => forced,
            TestPhase::Finished => false,
        };
        if due {
            tracing::info!(forced, "stopping the test, as its spec asks");
            let r = master.stop(forced).await;
            note(&mut state, r, "the stop");
        }
        return state;
    }
    let users = lt.spec.users.unwrap_or(0).max(0) as u64;
    let profile_runs = state.profile.as_ref().is_some_and(|p| !p.overridden);
    let due = if state.arrivals.is_some() {
        // An open model has no users to set.
        false
    } else if profile_runs {
        // The stages set the users, until a person changes spec.users from what the test
        // started with: that takes over (the master stops the profile).
        lt.spec.users.is_some() && started.is_some_and(|s| s.users != lt.spec.users)
    } else {
        state.users.desired != users as i64
    };
    if due {
        tracing::info!(users, "desired users changed");
        let r = master.set_users(users).await;
        note(&mut state, r, "users");
    }
    let agents = lt.spec.agents.max(1) as u64;
    if state.agents.desired != agents as i64 {
        let r = master.set_agents(agents).await;
        note(&mut state, r, "agents");
    }
    let r = master.set_vars(&lt.spec.vars).await;
    note(&mut state, r, "vars");
    for t in throttles {
        let r = master.put_throttle(&t.name_any(), &t.spec).await;
        note(&mut state, r, "a throttle");
    }
    for c in coordinators {
        let r = master.put_coordinator(&c.name_any(), &c.spec).await;
        note(&mut state, r, "a coordinator");
    }
    let gone: Vec<String> = state
        .throttles
        .iter()
        .map(|t| t.name.clone())
        .filter(|n| !throttles.iter().any(|t| t.name_any() == *n))
        .collect();
    for n in gone {
        if let Err(e) = master.delete_throttle(&n).await {
            tracing::warn!("deleting throttle {n} at the master: {e}");
        }
    }
    let gone: Vec<String> = state
        .coordinators
        .iter()
        .map(|c| c.name.clone())
        .filter(|n| !coordinators.iter().any(|c| c.name_any() == *n))
        .collect();
    for n in gone {
        if let Err(e) = master.delete_coordinator(&n).await {
            tracing::warn!("deleting coordinator {n} at the master: {e}");
        }
    }
    state
}

/// Live figures into the Throttles' and Coordinators' status.
async fn write_figures(
    ctx: &Context,
    ns: &str,
    state: &MasterStatus,
    throttles: &[Throttle],
    coordinators: &[Coordinator],
) {
    let tapi: Api<Throttle> = Api::namespaced(ctx.client.clone(), ns);
    for t in throttles {
        let Some(f) = state.throttles.iter().find(|f| f.name == t.name_any()) else {
            continue;
        };
        let status = ThrottleStatus {
            rate: f.rate as i64,
            requested: f.requested as i64,
            executed: f.executed as i64,
            waiting: f.waiting as i64,
        };
        if t.status.as_ref() != Some(&status) {
            let patch = serde_json::json!({"status": status});
            if let Err(e) = tapi
                .patch_status(
                    &t.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                tracing::warn!("status of Throttle {}: {e}", t.name_any());
            }
        }
    }
    let capi: Api<Coordinator> = Api::namespaced(ctx.client.clone(), ns);
    for c in coordinators {
        let Some(f) = state.coordinators.iter().find(|f| f.name == c.name_any()) else {
            continue;
        };
        let status = CoordinatorStatus {
            waiting: f.waiting as i64,
            groups: f.groups as i64,
            timeouts: f.timeouts as i64,
        };
        if c.status.as_ref() != Some(&status) {
            let patch = serde_json::json!({"status": status});
            if let Err(e) = capi
                .patch_status(
                    &c.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                tracing::warn!("status of Coordinator {}: {e}", c.name_any());
            }
        }
    }
}

async fn write_status(ctx: &Context, lt: &LoadTest, status: &LoadTestStatus) -> Result<(), Error> {
    if lt.status.as_ref() == Some(status) {
        return Ok(());
    }
    let api: Api<LoadTest> =
        Api::namespaced(ctx.client.clone(), &lt.namespace().unwrap_or_default());
    // A merge patch replaces lists whole and leaves out nothing that is set.
    let patch = serde_json::json!({"status": status});
    api.patch_status(
        &lt.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(kube_err("write the LoadTest status"))?;
    let uid = lt.metadata.uid.clone().unwrap_or_default();
    ctx.memo(&uid, |m| m.written = Some((status.clone(), Instant::now())));
    Ok(())
}

/// Edits the running test does not take, told when they change (not at every scale): the
/// spec the master started with is in its pod.
fn edits_not_taken(lt: &LoadTest, ctx: &Context, master: Option<&Pod>) -> Option<Transition> {
    let generation = lt.metadata.generation.unwrap_or(0);
    let uid = lt.metadata.uid.clone().unwrap_or_default();
    // A spec compared once is not parsed again at every follow-up poll.
    let told = ctx.memo(&uid, |m| m.edits_told.clone());
    if told.as_ref().is_some_and(|(g, _)| *g == generation) {
        return None;
    }
    let started = build::started_spec(master?)?;
    let fields = status::edits_not_taken(&started, &lt.spec);
    ctx.memo(&uid, |m| m.edits_told = Some((generation, fields.clone())));
    if fields.is_empty() || told.is_some_and(|(_, f)| f == fields) {
        return None;
    }
    tracing::warn!(?fields, "edits the running test does not take");
    Some(Transition::EditsNotTaken { fields })
}

async fn publish(ctx: &Context, lt: &LoadTest, events: &[Transition]) {
    for t in events {
        let ev = Event {
            type_: if t.warning() {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: t.reason().into(),
            note: Some(t.note()),
            action: t.reason().into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&ev, &lt.object_ref(&())).await {
            tracing::warn!("event {}: {e}", t.reason());
        }
    }
}

/// Keeps the report in a ConfigMap owned by the test, before any pod goes away. Whether
/// it is kept: a master that cannot give it is asked again (the reconcile fails and is
/// retried) for [`REPORT_PATIENCE`], then the test ends without it.
async fn store_report(lt: &LoadTest, ctx: &Context, master: &MasterClient) -> Result<bool, Error> {
    let ns = lt.namespace().unwrap_or_default();
    let uid = lt.metadata.uid.clone().unwrap_or_default();
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    let name = names::report(&lt.name_any());
    if cms
        .get_opt(&name)
        .await
        .map_err(kube_err("read the report ConfigMap"))?
        .is_some()
    {
        return Ok(true);
    }
    let mut points = 3600;
    let gz = loop {
        let json = match master.report(points).await {
            Ok(j) => j,
            Err(e) => {
                let since = ctx.memo(&uid, |m| {
                    *m.report_failing_since.get_or_insert_with(Instant::now)
                });
                if since.elapsed() < REPORT_PATIENCE {
                    return Err(Error::Report(e));
                }
                tracing::warn!("the report could not be fetched for {REPORT_PATIENCE:?}: {e}");
                return Ok(false);
            }
        };
        let gz = gzip(&json);
        if gz.len() <= MAX_REPORT_BYTES || points <= 10 {
            break gz;
        }
        points /= 2;
    };
    tracing::info!(bytes = gz.len(), points, "report stored");
    match cms
        .create(&PostParams::default(), &build::report_configmap(lt, gz))
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(true),
        Err(e) => Err(kube_err("store the report")(e)),
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
}

/// After the end: pods go per `spec.cleanup.policy`, the test after its TTL.
async fn finished(lt: &LoadTest, ctx: &Context) -> Result<Action, Error> {
    let ns = lt.namespace().unwrap_or_default();
    let name = lt.name_any();
    let plan = status::after_the_end(lt, &now());
    if plan.remove_pods {
        let dp = DeleteParams::background();
        let gone = |r: Result<_, kube::Error>, what: &str| match r {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(kube_err(format!("delete the {what}"))(e)),
        };
        gone(
            Api::<StatefulSet>::namespaced(ctx.client.clone(), &ns)
                .delete(&names::agents(&name), &dp)
                .await
                .map(|_| ()),
            "agents",
        )?;
        gone(
            Api::<Pod>::namespaced(ctx.client.clone(), &ns)
                .delete(&names::master(&name), &dp)
                .await
                .map(|_| ()),
            "master pod",
        )?;
        gone(
            Api::<Service>::namespaced(ctx.client.clone(), &ns)
                .delete(&names::master(&name), &dp)
                .await
                .map(|_| ()),
            "master Service",
        )?;
    }
    match plan.delete_test_in {
        Some(left) if left.is_zero() => {
            tracing::info!("time to live over: deleting the test");
            Api::<LoadTest>::namespaced(ctx.client.clone(), &ns)
                .delete(&name, &DeleteParams::background())
                .await
                .map_err(kube_err("delete the finished LoadTest"))?;
            Ok(Action::await_change())
        }
        Some(left) => Ok(Action::requeue(left.max(Duration::from_secs(1)))),
        None => Ok(Action::await_change()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use murmuration_crds::ThrottleSpec;

    fn throttle(generation: i64, executed: i64) -> Throttle {
        let mut t = Throttle::new(
            "rate",
            ThrottleSpec {
                load_test: Some("shop".into()),
                rate: 10,
                interval: None,
                ramp: None,
            },
        );
        t.metadata.namespace = Some("lt".into());
        t.metadata.generation = Some(generation);
        t.status = Some(ThrottleStatus {
            executed,
            ..ThrottleStatus::default()
        });
        t
    }

    /// The operator writes a Throttle's live figures into its status: that must not make
    /// its test reconcile again (it would, at once, write the next figures, and so on).
    #[tokio::test]
    async fn only_spec_changes_and_deletions_trigger() {
        use watcher::Event::*;
        let events = vec![
            Init,
            InitApply(throttle(1, 0)),
            InitDone,
            Apply(throttle(1, 10)),
            Apply(throttle(1, 20)),
            Apply(throttle(2, 30)),
            Delete(throttle(2, 30)),
        ];
        let triggers: Vec<(i64, i64)> =
            spec_changes(futures::stream::iter(events.into_iter().map(Ok)))
                .map(|t| {
                    let t = t.unwrap();
                    (t.metadata.generation.unwrap(), t.status.unwrap().executed)
                })
                .collect()
                .await;
        assert_eq!(triggers, [(1, 0), (2, 30), (2, 30)]);
    }
}
