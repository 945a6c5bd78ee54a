//! The objects the operator builds for a test, and the status it computes from a master's
//! state, as whole YAML documents in `tests/snapshots/` — readable as documentation of
//! what `kubectl apply` of a LoadTest creates. No API server: these are pure functions.
//!
//! After an intended change: `UPDATE_SNAPSHOTS=1 cargo test -p murmuration-operator`, then
//! review the diff of `tests/snapshots/`.

use std::path::PathBuf;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use murmuration_crds::api::MasterStatus;
use murmuration_crds::{Coordinator, LoadTest, Throttle};
use murmuration_operator::build::{self, PodSettings};
use murmuration_operator::status::{self, Transition};

fn snapshot(name: &str, value: &impl serde::Serialize) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(format!("{name}.yaml"));
    let yaml = serde_saphyr::to_string(value).unwrap();
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, &yaml).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    if expected != yaml {
        let diff: Vec<String> = expected
            .lines()
            .zip(yaml.lines())
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .take(5)
            .map(|(i, (a, b))| format!("line {}:\n  expected: {a}\n  actual:   {b}", i + 1))
            .collect();
        panic!(
            "{} differs ({} vs {} lines):\n{}\nrun with UPDATE_SNAPSHOTS=1 and review the diff",
            path.display(),
            expected.lines().count(),
            yaml.lines().count(),
            diff.join("\n")
        );
    }
}

fn test() -> LoadTest {
    serde_saphyr::from_str(
        "apiVersion: murmuration.dev/v1alpha1
kind: LoadTest
metadata:
  name: checkout
  namespace: shop
  uid: 0b5e6f1c-1111-4222-8333-944455556666
  generation: 3
spec:
  users: 500
  agents: 2
  userRate: 20/s
  duration: 10m
  vars: {base_url: \"http://shop.default.svc:8080\"}
  scenario:
    http:
      baseUrl: \"{{vars.base_url}}\"
      steps:
        - request: {name: home, method: GET, path: /, expect: {status: 200}}
        - throttle: checkout-rate
        - coordinate: pairs
  thresholds:
    - {metric: latency.p99, max: 500ms}
  metrics:
    remoteWrite:
      url: http://prometheus.monitoring:9090/api/v1/write
      bearerTokenSecret: {name: prom-writer, key: token}
  agent:
    resources: {requests: {cpu: 500m, memory: 256Mi}}
    nodeSelector: {pool: load}
",
    )
    .unwrap()
}

fn throttle() -> Throttle {
    serde_saphyr::from_str(
        "apiVersion: murmuration.dev/v1alpha1
kind: Throttle
metadata: {name: checkout-rate, namespace: shop}
spec: {loadTest: checkout, rate: 100, interval: 1m}
",
    )
    .unwrap()
}

fn coordinator() -> Coordinator {
    serde_saphyr::from_str(
        "apiVersion: murmuration.dev/v1alpha1
kind: Coordinator
metadata: {name: pairs, namespace: shop}
spec:
  loadTest: checkout
  timeout: 30s
  plan:
    - {users: 2, action: pairs}
",
    )
    .unwrap()
}

fn settings() -> PodSettings {
    PodSettings {
        image: "murmuration/agent:0.1.0".into(),
        log: "info".into(),
    }
}

fn at(s: &str) -> Time {
    Time(s.parse().unwrap())
}

#[test]
fn the_objects_of_a_test() {
    let lt = test();
    murmuration_model::compile_objects(&lt, &[throttle()], &[coordinator()]).unwrap();
    let manifests = build::test_manifests(&lt, &[throttle()], &[coordinator()]);
    snapshot(
        "secret",
        &build::token_secret(&lt, "0123456789abcdef0123456789abcdef01234567"),
    );
    snapshot(
        "master-pod",
        &build::master_pod(&lt, &manifests, &settings()),
    );
    snapshot("master-service", &build::master_service(&lt));
    snapshot("agents-statefulset", &build::agents(&lt, &settings()));
    snapshot(
        "report-configmap",
        &build::report_configmap(&lt, vec![0x1f, 0x8b, 8, 0]),
    );
}

fn master(phase: &str, running: i64, ready: i64) -> MasterStatus {
    serde_json::from_value(serde_json::json!({
        "test": "checkout", "phase": phase, "endedBy": null, "result": null, "message": null,
        "startedAtMs": 1795000000000u64, "elapsedS": 42.0,
        "users": {"desired": 500, "running": running, "started": 812, "finished": 310, "failed": 2},
        "agents": {"desired": 2, "ready": ready},
        "agentStatus": [
            {"name": "checkout-agent-0", "ready": true, "users": 250},
            {"name": "checkout-agent-1", "ready": ready == 2, "users": if ready == 2 { 250 } else { 0 }}
        ],
        "requests": {"total": 123456, "perSecond": 2040.5123, "errors": 12},
        "latencyMs": {"p50": 4.1234, "p95": 9.8, "p99": 15.2, "max": 80.3},
        "thresholds": [{"metric": "latency.p99", "observed": "15.2ms", "passed": true}],
        "throttles": [], "coordinators": []
    }))
    .unwrap()
}

#[test]
fn status_from_the_master_and_its_transitions() {
    let mut lt = test();
    let now = at("2026-11-22T10:00:00Z");
    let (running, events) = status::from_master(&lt, &master("Running", 500, 2), &now);
    snapshot("status-running", &running);
    assert_eq!(events, [Transition::Started]);

    // An agent goes away and the test is scaled: both are transitions.
    lt.status = Some(running);
    lt.spec.users = Some(800);
    let later = at("2026-11-22T10:00:02Z");
    let (degraded, events) = status::from_master(&lt, &master("Running", 250, 1), &later);
    snapshot("status-degraded", &degraded);
    assert_eq!(
        events,
        [
            Transition::Scaled { from: 500, to: 800 },
            Transition::AgentLost {
                agent: "checkout-agent-1".into()
            }
        ]
    );

    // The phase never goes back, even if a restarted master says Starting.
    lt.status = Some(degraded);
    let (st, _) = status::from_master(&lt, &master("Starting", 0, 0), &later);
    assert_eq!(format!("{:?}", st.phase.unwrap()), "Running");

    // The end, with a failed threshold.
    let mut done = master("Finished", 0, 2);
    done.ended_by = Some("duration".into());
    done.result = Some(murmuration_crds::loadtest::TestResult::Failed);
    done.thresholds[0].passed = false;
    let (finished, events) = status::from_master(&lt, &done, &at("2026-11-22T10:10:00Z"));
    snapshot("status-finished", &finished);
    // What `kubectl wait --for=condition=Finished` waits for, with the result as reason.
    let done_condition = |st: &murmuration_crds::loadtest::LoadTestStatus| {
        st.conditions
            .iter()
            .find(|c| c.type_ == "Finished")
            .map(|c| (c.status.clone(), c.reason.clone()))
    };
    assert_eq!(
        done_condition(&finished),
        Some(("True".into(), "Failed".into()))
    );
    assert!(finished
        .conditions
        .iter()
        .any(|c| c.type_ == "Finished" && c.message.contains("thresholds failed: latency.p99")));
    assert_eq!(
        done_condition(lt.status.as_ref().unwrap()),
        Some(("False".into(), "NotFinished".into()))
    );
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].reason(), "ThresholdFailed");
    assert_eq!(events[1].reason(), "Finished");
    assert!(events[1].warning());
}

#[test]
fn an_invalid_test_names_the_field_once() {
    let mut lt = test();
    let problem = status::Invalid::of(
        &murmuration_model::compile_objects(&lt, &[], &[coordinator()]).unwrap_err(),
    );
    let (st, events) = status::invalid(&lt, &problem, &at("2026-11-22T10:00:00Z"));
    snapshot("status-invalid", &st);
    assert_eq!(events.len(), 1);
    assert!(events[0]
        .note()
        .contains("spec.scenario.http.steps[1].throttle"));
    // Seen again: no second Event.
    lt.status = Some(st);
    let (_, events) = status::invalid(&lt, &problem, &at("2026-11-22T10:00:05Z"));
    assert!(events.is_empty());
}

#[test]
fn status_writes_transitions_at_once_and_figures_paced() {
    use murmuration_operator::status::{write_kind, StatusWrite};
    let mut lt = test();
    let now = at("2026-11-22T10:00:00Z");
    let (running, _) = status::from_master(&lt, &master("Running", 500, 2), &now);
    assert_eq!(write_kind(None, &running), StatusWrite::Now);
    assert_eq!(write_kind(Some(&running), &running), StatusWrite::Nothing);
    lt.status = Some(running.clone());
    // More requests, other latencies: figures, written at most every 2 s.
    let mut busier = master("Running", 500, 2);
    busier.requests.total += 4000;
    busier.latency_ms.p99 = 17.0;
    let (st, _) = status::from_master(&lt, &busier, &now);
    assert_eq!(write_kind(Some(&running), &st), StatusWrite::Paced);
    // kubectl scale: a new generation and desired count, written at once; and again when
    // every user runs (Ready and Progressing change).
    lt.spec.users = Some(600);
    lt.metadata.generation = Some(4);
    let (scaling, _) = status::from_master(&lt, &master("Running", 500, 2), &now);
    assert_eq!(write_kind(Some(&running), &scaling), StatusWrite::Now);
    assert!(status::is_progressing(&scaling));
    lt.status = Some(scaling.clone());
    let mut all = master("Running", 600, 2);
    all.users.desired = 600;
    let (steady, _) = status::from_master(&lt, &all, &now);
    assert!(!status::is_progressing(&steady));
    assert_eq!(write_kind(Some(&scaling), &steady), StatusWrite::Now);
    // An agent lost: at once.
    let (lost, _) = status::from_master(&lt, &master("Running", 600, 1), &now);
    assert_eq!(write_kind(Some(&steady), &lost), StatusWrite::Now);
}

#[test]
fn a_master_that_never_answers_fails_the_test_with_the_reason() {
    let lt = test();
    let pod: k8s_openapi::api::core::v1::Pod = serde_saphyr::from_str(
        "metadata: {name: checkout-master, creationTimestamp: \"2026-11-22T10:00:00Z\"}
status:
  phase: Pending
  containerStatuses:
    - name: master
      image: murmuration/agent:0.1.0
      imageID: \"\"
      ready: false
      restartCount: 0
      state: {waiting: {reason: ImagePullBackOff, message: \"Back-off pulling image\"}}
",
    )
    .unwrap();
    // The start barrier (5m by default) and a minute for the image: not yet.
    assert_eq!(
        status::master_overdue(
            &lt,
            Some(&pod),
            status::MASTER_GRACE,
            &at("2026-11-22T10:05:59Z")
        ),
        None
    );
    let why = status::master_overdue(
        &lt,
        Some(&pod),
        status::MASTER_GRACE,
        &at("2026-11-22T10:06:01Z"),
    )
    .unwrap();
    assert_eq!(
        why,
        "the master did not answer within 6m (start.waitForAgents + 1m): \
         pod checkout-master is Pending (ImagePullBackOff: Back-off pulling image)"
    );
    let now = at("2026-11-22T10:06:01Z");
    let (failed, events) = status::failed_to_start(&lt, &why, &now);
    snapshot("status-master-never-answered", &failed);
    assert_eq!(events[0].reason(), "Finished");
    assert!(events[0].warning());
    // A test that ran is not failed by a master that went away later.
    let mut ran = lt.clone();
    ran.status = Some(status::from_master(&lt, &master("Running", 500, 2), &now).0);
    assert_eq!(
        status::master_overdue(
            &ran,
            Some(&pod),
            status::MASTER_GRACE,
            &at("2026-11-22T11:00:00Z")
        ),
        None
    );
}

#[test]
fn after_the_end_pods_go_per_policy_and_the_test_after_its_ttl() {
    use murmuration_crds::loadtest::TestResult;
    use murmuration_operator::status::{after_the_end, AfterTheEnd};
    use std::time::Duration;
    let ended = |policy: Option<&str>, ttl: Option<i64>, result: TestResult| {
        let mut lt = test();
        lt.spec.cleanup = serde_json::from_value(serde_json::json!({
            "policy": policy, "ttlSecondsAfterFinished": ttl
        }))
        .unwrap();
        lt.status = Some(murmuration_crds::loadtest::LoadTestStatus {
            result: Some(result),
            completion_time: Some(at("2026-11-22T10:00:00Z")),
            ..Default::default()
        });
        after_the_end(&lt, &at("2026-11-22T10:00:30Z"))
    };
    let plan = |remove_pods, secs: Option<u64>| AfterTheEnd {
        remove_pods,
        delete_test_in: secs.map(Duration::from_secs),
    };
    assert_eq!(ended(None, None, TestResult::Passed), plan(true, None));
    assert_eq!(ended(None, None, TestResult::Failed), plan(false, None));
    assert_eq!(
        ended(Some("Always"), Some(60), TestResult::Failed),
        plan(true, Some(30))
    );
    assert_eq!(
        ended(Some("Never"), Some(10), TestResult::Passed),
        plan(false, Some(0))
    );
}

#[test]
fn edits_a_running_test_does_not_take_are_named() {
    let started = test();
    let pod = build::master_pod(
        &started,
        &build::test_manifests(&started, &[throttle()], &[coordinator()]),
        &settings(),
    );
    // The master pod says what its test started with.
    assert_eq!(build::started_spec(&pod).as_ref(), Some(&started.spec));
    // Live fields change nothing here; the others are named.
    let mut now = started.clone();
    now.spec.users = Some(800);
    now.spec.agents = 3;
    now.spec
        .vars
        .insert("base_url".into(), "http://other".into());
    assert!(status::edits_not_taken(&started.spec, &now.spec).is_empty());
    now.spec.duration = Some("20m".into());
    now.spec.thresholds.clear();
    let fields = status::edits_not_taken(&started.spec, &now.spec);
    assert_eq!(fields, ["spec.duration", "spec.thresholds"]);
    let event = Transition::EditsNotTaken { fields };
    assert_eq!(event.reason(), "EditIgnored");
    assert!(event.warning());
    assert!(
        event
            .note()
            .starts_with("spec.duration, spec.thresholds changed, but a running test keeps"),
        "{}",
        event.note()
    );
}

#[test]
fn a_master_that_exits_at_start_fails_the_test_within_the_grace_with_its_message() {
    let mut lt = test();
    // A long start barrier: the master's exit, not the barrier, decides.
    lt.spec.start = serde_json::from_value(serde_json::json!({"waitForAgents": "30m"})).unwrap();
    let pod: k8s_openapi::api::core::v1::Pod = serde_saphyr::from_str(
        "metadata: {name: checkout-master, creationTimestamp: \"2026-11-22T10:00:00Z\"}
status:
  phase: Running
  containerStatuses:
    - name: master
      image: murmuration/agent:0.1.0
      imageID: \"\"
      ready: false
      restartCount: 3
      state: {waiting: {reason: CrashLoopBackOff, message: \"back-off 40s restarting failed container\"}}
      lastState:
        terminated:
          exitCode: 2
          reason: Error
          message: \"MURMUR_TEST: LoadTest checkout: spec.scenario.custom.name: no scenario named \\\"orders\\\" in this binary\"
",
    )
    .unwrap();
    let exit = status::master_exit(&pod).unwrap();
    assert_eq!(
        exit,
        "the master exited with code 2: MURMUR_TEST: LoadTest checkout: \
         spec.scenario.custom.name: no scenario named \"orders\" in this binary"
    );
    let grace = std::time::Duration::from_secs(60);
    assert_eq!(
        status::master_overdue(&lt, Some(&pod), grace, &at("2026-11-22T10:00:59Z")),
        None
    );
    let why = status::master_overdue(&lt, Some(&pod), grace, &at("2026-11-22T10:01:01Z")).unwrap();
    assert_eq!(why, format!("the master did not start within 1m: {exit}"));
    // While it restarts, the condition says why, not "cannot reach the master".
    let st = status::without_master(&lt, &exit, &at("2026-11-22T10:00:30Z"));
    assert!(st
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.message.contains("no scenario named")));
    // The Event carries the master's own words.
    let (failed, events) = status::failed_to_start(&lt, &why, &at("2026-11-22T10:01:01Z"));
    assert_eq!(failed.message.as_deref(), Some(why.as_str()));
    assert!(events[0].warning() && events[0].note().contains("no scenario named"));
    // A master stopped cleanly (exit 0) did not fail.
    let mut stopped = pod.clone();
    let cs = &mut stopped
        .status
        .as_mut()
        .unwrap()
        .container_statuses
        .as_mut()
        .unwrap()[0];
    cs.last_state
        .as_mut()
        .unwrap()
        .terminated
        .as_mut()
        .unwrap()
        .exit_code = 0;
    assert_eq!(status::master_exit(&stopped), None);
}

#[test]
fn agents_are_lost_only_when_their_master_says_so() {
    let mut lt = test();
    let now = at("2026-11-22T10:00:00Z");
    let (running, _) = status::from_master(&lt, &master("Running", 500, 2), &now);
    lt.status = Some(running);
    let lost = |lt: &LoadTest, m: &MasterStatus| -> Vec<Transition> {
        status::from_master(lt, m, &now)
            .1
            .into_iter()
            .filter(|t| t.reason() == "AgentLost")
            .collect()
    };
    // The master pod deleted mid-test: the new master knows no agent until they reconnect
    // (Starting, then Running with one agent back). Nobody is lost.
    let mut fresh = master("Starting", 0, 0);
    fresh.agent_status.clear();
    assert_eq!(lost(&lt, &fresh), []);
    let mut one_back = master("Running", 250, 1);
    one_back.agent_status.truncate(1);
    assert_eq!(lost(&lt, &one_back), []);
    // An agent the master lists as disconnected is lost.
    assert_eq!(
        lost(&lt, &master("Running", 250, 1)),
        [Transition::AgentLost {
            agent: "checkout-agent-1".into()
        }]
    );
    // spec.agents scaled down: the agent removed was not lost.
    lt.spec.agents = 1;
    assert_eq!(lost(&lt, &master("Running", 250, 1)), []);
}

/// The README's examples of what the schema cannot check, and of what it refuses, are
/// refused: a latency bound that is not a duration names its field; `ten seconds` is no
/// duration for `murmur run` either (the CRD's pattern refuses it at `kubectl apply`).
#[test]
fn the_readmes_invalid_examples_are_refused() {
    let mut lt = test();
    lt.spec.thresholds =
        serde_json::from_value(serde_json::json!([{"metric": "latency.p99", "max": "fast"}]))
            .unwrap();
    let problem = status::Invalid::of(
        &murmuration_model::compile_objects(&lt, &[throttle()], &[coordinator()]).unwrap_err(),
    );
    assert!(
        problem.to_string().contains("spec.thresholds[0].max"),
        "{problem}"
    );
    assert!(murmuration_crds::units::parse_duration("ten seconds").is_err());
}

/// The Service and the StatefulSet are applied when what they derive from changed, not at
/// every poll: the cached object carries a hash of the desired state it was applied from.
#[test]
fn objects_are_applied_only_when_their_desired_state_changes() {
    let mut lt = test();
    let desired = build::stamped(build::agents(&lt, &settings()));
    assert!(build::needs_apply(&desired, None), "not there yet");
    // As the cache has it after the apply (the API server adds status and more).
    let mut cached = desired.clone();
    cached.status = Some(Default::default());
    cached.metadata.resource_version = Some("42".into());
    let again = build::stamped(build::agents(&lt, &settings()));
    assert!(
        !build::needs_apply(&again, Some(&cached)),
        "nothing changed"
    );
    lt.spec.agents = 3;
    let scaled = build::stamped(build::agents(&lt, &settings()));
    assert!(
        build::needs_apply(&scaled, Some(&cached)),
        "spec.agents changed"
    );
    // An object applied by an older operator (no hash) is applied once more.
    cached.metadata.annotations = None;
    assert!(build::needs_apply(&again, Some(&cached)));
    let svc = build::stamped(build::master_service(&lt));
    assert!(!build::needs_apply(&svc, Some(&svc.clone())));
}
