//! The LoadTest controller, as a pipeline: read the test (and its Throttles and
//! Coordinators) → validate → build the desired objects (pure, [`crate::build`]) → apply →
//! push the live settings to the master → compute the status from the master's (pure,
//! [`crate::status`]) → write it, with Events on transitions → at the end, keep the report
//! and clean up. This module holds the pipeline ([`reconcile`]) and its shared state; each
//! stage has its own: `read`, `apply`, `push`, `write`, `finish`.
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

mod apply;
mod finish;
mod push;
mod read;
mod write;

use apply::*;
use finish::*;
use push::*;
use read::*;
use write::*;

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
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
use crate::master::{MasterClient, MasterPool};
use crate::metrics::Metrics;
use crate::names::{self, COMPONENT_LABEL, MANAGER, MASTER_PORT, TOKEN_KEY};
use crate::status::{self, StatusWrite, Transition};

/// How often a running test's status is refreshed (its figures are written at most this
/// often).
pub const REFRESH: Duration = Duration::from_secs(2);
/// How often the master is asked while users or agents are on their way.
pub const FOLLOW: Duration = Duration::from_millis(250);
/// How long a finished test's report may fail to be fetched before its pods go without it.
const REPORT_PATIENCE: Duration = Duration::from_secs(60);

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
    /// The connections to the masters.
    pub masters: MasterPool,
    /// Every LoadTest, as watched (tests by phase for the metrics).
    pub tests: Store<LoadTest>,
    /// Every Throttle, as watched: a reconcile takes its test's from here.
    pub throttles: Store<Throttle>,
    /// Every Coordinator, as watched.
    pub coordinators: Store<Coordinator>,
    /// The tests' token Secrets, as watched (the operator's own objects only).
    pub secrets: Store<Secret>,
    /// The tests' master pods, as watched.
    pub master_pods: Store<Pod>,
    /// The masters' Services, as watched.
    pub services: Store<Service>,
    /// The agents' StatefulSets, as watched.
    pub agent_sets: Store<StatefulSet>,
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
    secrets: reflector::store::Writer<Secret>,
    master_pods: reflector::store::Writer<Pod>,
    services: reflector::store::Writer<Service>,
    agent_sets: reflector::store::Writer<StatefulSet>,
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
        let (secrets, secrets_w) = reflector::store();
        let (master_pods, master_pods_w) = reflector::store();
        let (services, services_w) = reflector::store();
        let (agent_sets, agent_sets_w) = reflector::store();
        (
            Context {
                client,
                pods,
                recorder,
                metrics,
                masters: MasterPool::default(),
                tests,
                throttles,
                coordinators,
                secrets,
                master_pods,
                services,
                agent_sets,
                master_grace: status::MASTER_GRACE,
                memo: Mutex::default(),
            },
            Caches {
                tests: tests_w,
                throttles: throttles_w,
                coordinators: coordinators_w,
                secrets: secrets_w,
                master_pods: master_pods_w,
                services: services_w,
                agent_sets: agent_sets_w,
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
    // The operator's own objects, cached: a reconcile reads them from here instead of
    // asking the API server, and a change to one reconciles its test.
    let managed = format!("app.kubernetes.io/managed-by={MANAGER}");
    let owned = watcher::Config::default().labels(&managed);
    let masters = watcher::Config::default().labels(&format!("{managed},{COMPONENT_LABEL}=master"));
    let secrets = watcher(Api::<Secret>::all(client.clone()), owned.clone())
        .default_backoff()
        .reflect(caches.secrets)
        .touched_objects();
    let master_pods = watcher(Api::<Pod>::all(client.clone()), masters)
        .default_backoff()
        .reflect(caches.master_pods)
        .touched_objects();
    let services = watcher(Api::<Service>::all(client.clone()), owned.clone())
        .default_backoff()
        .reflect(caches.services)
        .touched_objects();
    let agent_sets = watcher(Api::<StatefulSet>::all(client.clone()), owned)
        .default_backoff()
        .reflect(caches.agent_sets)
        .touched_objects();
    let controller = Controller::for_stream(spec_changes(tests), ctx.tests.clone())
        .owns_stream(agent_sets)
        .owns_stream(master_pods)
        .owns_stream(services)
        .owns_stream(secrets)
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
    apply_if_changed(ctx, &ctx.services, build::master_service(lt)).await?;
    apply_if_changed(ctx, &ctx.agent_sets, build::agents(lt, &ctx.pods)).await?;
    // Push the live settings, and read the master's state.
    let master = ctx.masters.master(
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
            // A master that exited says why better than a refused connection does.
            let why = master_pod
                .as_ref()
                .and_then(status::master_exit)
                .unwrap_or_else(|| e.to_string());
            let status = status::without_master(lt, &why, &now);
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
