//! The LoadTest controller, as a pipeline: read the test (and its Throttles and
//! Coordinators) → validate → build the desired objects (pure, [`crate::build`]) → apply →
//! push the live settings to the master → compute the status from the master's (pure,
//! [`crate::status`]) → write it, with Events on transitions → at the end, keep the report
//! and clean up.
//!
//! Throttles and Coordinators belong to a test (`spec.loadTest`): a change to one
//! reconciles its test, which pushes it to the master and writes its live figures into
//! its status. Status is written with merge patches (Kubernetes 1.20 has no server-side
//! apply of status for custom resources worth relying on), at most every 2 s while running.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{predicates, watcher, PredicateConfig, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use murmuration_crds::api::{MasterStatus, TestPhase};
use murmuration_crds::loadtest::{CleanupWhen, LoadTestStatus, Phase, TestResult};
use murmuration_crds::{
    Coordinator, CoordinatorSpec, CoordinatorStatus, LoadTest, Throttle, ThrottleSpec,
    ThrottleStatus,
};
use tracing::Instrument;

use crate::build::{self, PodSettings};
use crate::master::MasterClient;
use crate::metrics::Metrics;
use crate::names::{self, MANAGER, MASTER_PORT, TOKEN_KEY};
use crate::status::{self, Transition};
use crate::validate::validate_test;

/// How often a running test's status is refreshed.
pub const REFRESH: Duration = Duration::from_secs(2);
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
}

fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Kube { what, source }
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Runs the controller until `shutdown` completes.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let tests: Api<LoadTest> = Api::all(client.clone());
    let (reader, writer) = reflector::store();
    // Only spec changes (generation) trigger from the LoadTests themselves: the operator's
    // own status writes must not.
    let trigger = watcher(tests, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(predicates::generation, PredicateConfig::default());
    let owned =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGER}"));
    Controller::for_stream(trigger, reader)
        .owns(Api::<StatefulSet>::all(client.clone()), owned.clone())
        .owns(Api::<Pod>::all(client.clone()), owned)
        .watches(
            Api::<Throttle>::all(client.clone()),
            watcher::Config::default(),
            |t| {
                let ns = t.namespace()?;
                Some(ObjectRef::new(t.spec.load_test.as_ref()?).within(&ns))
            },
        )
        .watches(
            Api::<Coordinator>::all(client.clone()),
            watcher::Config::default(),
            |c| {
                let ns = c.namespace()?;
                Some(ObjectRef::new(c.spec.load_test.as_ref()?).within(&ns))
            },
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
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
    // Read.
    let throttles: Vec<Throttle> = Api::<Throttle>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .map_err(kube_err("list Throttles"))?
        .items
        .into_iter()
        .filter(|t| t.spec.load_test.as_deref() == Some(name.as_str()))
        .collect();
    let coordinators: Vec<Coordinator> = Api::<Coordinator>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .map_err(kube_err("list Coordinators"))?
        .items
        .into_iter()
        .filter(|c| c.spec.load_test.as_deref() == Some(name.as_str()))
        .collect();
    let phase = lt
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .unwrap_or(Phase::Pending);
    if matches!(phase, Phase::Succeeded | Phase::Failed) {
        return finished(lt, ctx).await;
    }
    // Validate.
    let named_throttles: Vec<(String, &ThrottleSpec)> =
        throttles.iter().map(|t| (t.name_any(), &t.spec)).collect();
    let named_coordinators: Vec<(String, &CoordinatorSpec)> = coordinators
        .iter()
        .map(|c| (c.name_any(), &c.spec))
        .collect();
    if let Err(problem) = validate_test(
        &lt.spec,
        named_throttles.iter().map(|(n, s)| (n.as_str(), *s)),
        named_coordinators.iter().map(|(n, s)| (n.as_str(), *s)),
    ) {
        let (status, events) = status::invalid(lt, &problem, &now());
        publish(ctx, lt, &events).await;
        write_status(ctx, lt, &status).await?;
        return Ok(Action::await_change());
    }
    // Build and apply.
    let token = ensure_token(lt, ctx).await?;
    let manifests = build::test_manifests(lt, &throttles, &coordinators);
    ensure_master(lt, ctx, &manifests).await?;
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
            let status = status::without_master(lt, &e.to_string(), &now());
            write_status(ctx, lt, &status).await?;
            return Ok(Action::requeue(REFRESH));
        }
    };
    let state = if state.phase == TestPhase::Finished {
        state
    } else {
        push(lt, &master, state, &throttles, &coordinators).await
    };
    // Status.
    let (status, events) = status::from_master(lt, &state, &now());
    write_figures(ctx, &ns, &state, &throttles, &coordinators).await;
    if matches!(status.phase, Some(Phase::Succeeded | Phase::Failed)) {
        store_report(lt, ctx, &master).await?;
    }
    publish(ctx, lt, &events).await;
    write_status(ctx, lt, &status).await?;
    if matches!(status.phase, Some(Phase::Succeeded | Phase::Failed)) {
        return Ok(Action::requeue(Duration::from_millis(100)));
    }
    Ok(Action::requeue(REFRESH))
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
/// master through its API.
async fn ensure_master(lt: &LoadTest, ctx: &Context, manifests: &str) -> Result<(), Error> {
    let ns = lt.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let name = names::master(&lt.name_any());
    if pods
        .get_opt(&name)
        .await
        .map_err(kube_err("read the master pod"))?
        .is_some()
    {
        return Ok(());
    }
    match pods
        .create(
            &PostParams::default(),
            &build::master_pod(lt, manifests, &ctx.pods),
        )
        .await
    {
        Ok(_) => {
            tracing::info!("master pod created");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
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
    let users = lt.spec.users.max(0) as u64;
    if state.users.desired != users as i64 {
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
    Ok(())
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

/// Keeps the report in a ConfigMap owned by the test, before any pod goes away.
async fn store_report(lt: &LoadTest, ctx: &Context, master: &MasterClient) -> Result<(), Error> {
    let ns = lt.namespace().unwrap_or_default();
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    let name = names::report(&lt.name_any());
    if cms
        .get_opt(&name)
        .await
        .map_err(kube_err("read the report ConfigMap"))?
        .is_some()
    {
        return Ok(());
    }
    let mut points = 3600;
    let gz = loop {
        let json = match master.report(points).await {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!("could not fetch the report: {e}");
                return Ok(());
            }
        };
        let gz = gzip(&json);
        if gz.len() <= MAX_REPORT_BYTES || points <= 10 {
            break gz;
        }
        points /= 2;
    };
    tracing::info!(bytes = gz.len(), "report stored");
    match cms
        .create(&PostParams::default(), &build::report_configmap(lt, gz))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
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
    let status = lt.status.clone().unwrap_or_default();
    let cleanup = lt.spec.cleanup.clone().unwrap_or_default();
    let remove_pods = match cleanup.policy.unwrap_or(CleanupWhen::OnSuccess) {
        CleanupWhen::Always => true,
        CleanupWhen::OnSuccess => status.result == Some(TestResult::Passed),
        CleanupWhen::Never => false,
    };
    if remove_pods {
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
    if let (Some(ttl), Some(done)) = (cleanup.ttl_seconds_after_finished, status.completion_time) {
        let expires = done.0 + k8s_openapi::jiff::SignedDuration::from_secs(ttl.max(0));
        let left = expires.duration_since(k8s_openapi::jiff::Timestamp::now());
        if left.is_negative() || left.is_zero() {
            tracing::info!(ttl, "time to live over: deleting the test");
            Api::<LoadTest>::namespaced(ctx.client.clone(), &ns)
                .delete(&name, &DeleteParams::background())
                .await
                .map_err(kube_err("delete the finished LoadTest"))?;
            return Ok(Action::await_change());
        }
        return Ok(Action::requeue(Duration::from_secs(
            left.as_secs().max(1) as u64
        )));
    }
    Ok(Action::await_change())
}

/// Counts the tests by phase (for the metrics), from the API.
pub async fn count_phases(client: &Client) -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    if let Ok(list) = Api::<LoadTest>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        for lt in list.items {
            let phase = lt.status.and_then(|s| s.phase).unwrap_or(Phase::Pending);
            *m.entry(format!("{phase:?}")).or_insert(0) += 1;
        }
    }
    m
}
