//! `murmur wait NAME`: follows a LoadTest that the operator runs on the cluster, with the
//! user's kubeconfig (as `murmur report` does), until its condition `Finished`, so that a
//! CI pipeline is `kubectl apply -f t.yaml && murmur wait t`. While it runs, the test's
//! status is shown with the live display of `murmur run` ([`crate::progress`]); at the end
//! the stored report is what the summary, the files and `--junit` are made from.

use std::time::{Duration, Instant};

use kube::api::Api;
use murmuration_crds::loadtest::{Phase, TestResult};
use murmuration_crds::LoadTest;

use crate::metrics::Percentiles;
use crate::report::stored::{read_stored_report, StoredReportError};
use crate::report::{Outcome, Report, SeriesPoint, StepSummary, ThresholdOutcome, UserSummary};

/// How often the LoadTest is read (the operator writes figures at most every 2 s).
const POLL: Duration = Duration::from_secs(1);

/// How long a finished test's stored report may take to appear (the operator retries
/// fetching it from the master for a while; the status is enough without it).
const REPORT_PATIENCE: Duration = Duration::from_secs(30);

/// How following a test ended.
#[derive(Debug)]
pub enum Followed {
    /// The test finished. Its stored report, or, when the operator could not store one,
    /// a report made from the last status (figures of the whole test, no steps or series).
    Finished {
        /// The report.
        report: Box<Report>,
        /// Whether it is the stored report (else made from the status).
        stored: bool,
    },
    /// The operator cannot run the spec (condition `Invalid`): nothing will start.
    Invalid(String),
    /// The timeout ran out first; the test goes on.
    TimedOut(Duration),
}

/// Why a test could not be followed.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// No kubeconfig, or the cluster is unreachable.
    #[error("cannot reach the cluster: {0}")]
    Cluster(#[source] kube::Error),
    /// There is no such LoadTest.
    #[error("no LoadTest {name} in namespace {namespace}")]
    Missing {
        /// The test.
        name: String,
        /// Its namespace.
        namespace: String,
    },
    /// The stored report could not be read.
    #[error(transparent)]
    Stored(#[from] StoredReportError),
}

/// Follows LoadTest `name` (in `namespace`, else the kubeconfig's) until it finishes, is
/// found invalid, or `timeout` runs out; `show` is called with a view of each status read.
pub async fn follow(
    name: &str,
    namespace: Option<&str>,
    timeout: Option<Duration>,
    mut show: impl FnMut(&Report),
) -> Result<Followed, WaitError> {
    let client = kube::Client::try_default()
        .await
        .map_err(WaitError::Cluster)?;
    let namespace = namespace
        .map(str::to_owned)
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let tests: Api<LoadTest> = Api::namespaced(client.clone(), &namespace);
    let began = Instant::now();
    let mut errors = ErrorRate::default();
    let mut finished_at: Option<Instant> = None;
    loop {
        let lt = tests
            .get_opt(name)
            .await
            .map_err(WaitError::Cluster)?
            .ok_or_else(|| WaitError::Missing {
                name: name.to_owned(),
                namespace: namespace.clone(),
            })?;
        let status = lt.status.clone().unwrap_or_default();
        if let Some(why) = condition_true(&status, "Invalid") {
            return Ok(Followed::Invalid(why));
        }
        let view = status_view(&lt, &mut errors);
        show(&view);
        if is_finished(&status) {
            let since = *finished_at.get_or_insert_with(Instant::now);
            if status.report.is_some() {
                if let Some(report) = read_stored_report(client.clone(), name, &namespace).await? {
                    return Ok(Followed::Finished {
                        report: Box::new(report),
                        stored: true,
                    });
                }
            }
            if since.elapsed() >= REPORT_PATIENCE {
                return Ok(Followed::Finished {
                    report: Box::new(view),
                    stored: false,
                });
            }
        }
        if let Some(limit) = timeout {
            if began.elapsed() >= limit {
                return Ok(Followed::TimedOut(limit));
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The message of condition `type_` when it is true.
fn condition_true(
    status: &murmuration_crds::loadtest::LoadTestStatus,
    type_: &str,
) -> Option<String> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
        .map(|c| c.message.clone())
}

/// Finished: condition `Finished` true, or (an operator from before that condition) a
/// final phase with a result.
fn is_finished(status: &murmuration_crds::loadtest::LoadTestStatus) -> bool {
    condition_true(status, "Finished").is_some()
        || (matches!(status.phase, Some(Phase::Succeeded | Phase::Failed))
            && status.result.is_some())
}

/// Errors per second between two reads of the status, for the live line.
#[derive(Debug, Default)]
struct ErrorRate {
    last: Option<(i64, Instant)>,
}

impl ErrorRate {
    fn per_second(&mut self, errors: i64) -> u64 {
        let now = Instant::now();
        let rate = match self.last {
            Some((before, at)) if now > at => {
                ((errors - before).max(0) as f64 / (now - at).as_secs_f64().max(1.0)).round() as u64
            }
            _ => 0,
        };
        self.last = Some((errors, now));
        rate
    }
}

/// What the status says, shaped as the report `murmur run` shows live: the figures of
/// the whole test (the status has no per-step figures), users, and the thresholds with
/// their bounds from the spec.
fn status_view(lt: &LoadTest, errors: &mut ErrorRate) -> Report {
    let status = lt.status.clone().unwrap_or_default();
    let users = status.users.clone().unwrap_or_default();
    let requests = status.requests.clone().unwrap_or_default();
    let latency = status.latency_ms.clone().unwrap_or_default();
    let started_at_ms = status
        .start_time
        .as_ref()
        .map(|t| t.0.as_millisecond().max(0) as u64)
        .unwrap_or(0);
    let duration_s = match (&status.start_time, &status.completion_time) {
        (Some(s), Some(e)) => e.0.duration_since(s.0).as_secs_f64().max(0.0),
        (Some(s), None) => k8s_openapi::jiff::Timestamp::now()
            .duration_since(s.0)
            .as_secs_f64()
            .max(0.0),
        _ => 0.0,
    };
    let thresholds = status
        .thresholds
        .iter()
        .enumerate()
        .map(|(i, t)| ThresholdOutcome {
            metric: t.metric.clone(),
            step: t.step.clone(),
            // The status keeps the spec's order.
            bound: lt
                .spec
                .thresholds
                .get(i)
                .filter(|s| s.metric == t.metric && s.step == t.step)
                .map(crate::thresholds::bound_text)
                .unwrap_or_default(),
            observed: t.observed.clone(),
            passed: t.passed,
            ..Default::default()
        })
        .collect();
    let total = StepSummary {
        name: "total".into(),
        requests: requests.total.max(0) as u64,
        errors: requests.errors.max(0) as u64,
        errors_by_kind: Default::default(),
        rate: if duration_s > 0.0 {
            requests.total.max(0) as f64 / duration_s
        } else {
            0.0
        },
        latency_ms: Percentiles {
            p50: latency.p50,
            p95: latency.p95,
            p99: latency.p99,
            max: latency.max,
            ..Default::default()
        },
        corrected_latency_ms: None,
        histogram: String::new(),
    };
    let now = SeriesPoint {
        t: duration_s,
        users: users.running.max(0) as u64,
        requests: 0,
        errors: errors.per_second(requests.errors),
        rps: requests.per_second,
        ..Default::default()
    };
    Report {
        format: crate::report::REPORT_FORMAT,
        name: lt.metadata.name.clone().unwrap_or_default(),
        scenario: String::new(),
        started_at_ms,
        duration_s,
        result: match status.result {
            Some(TestResult::Passed) => Outcome::Passed,
            _ if status.result.is_none() && !is_finished(&status) => Outcome::Passed,
            _ => Outcome::Failed,
        },
        ended_by: status
            .message
            .clone()
            .unwrap_or_else(|| format!("{:?}", status.phase.unwrap_or(Phase::Pending))),
        users: UserSummary {
            desired: users.desired.max(0) as u64,
            peak: users.running.max(0) as u64,
            started: users.started.max(0) as u64,
            finished: users.finished.max(0) as u64,
            failed: users.failed.max(0) as u64,
            iterations: 0,
            unmatched: 0,
            dropped: status
                .arrivals
                .as_ref()
                .map(|a| a.dropped.max(0) as u64)
                .unwrap_or(0),
        },
        profile: if lt.spec.arrivals.is_some() {
            Some("arrivals".into())
        } else if !lt.spec.stages.is_empty() {
            Some("stages".into())
        } else {
            None
        },
        total,
        steps: Vec::new(),
        iterations: Default::default(),
        baseline: None,
        thresholds,
        throttles: Vec::new(),
        coordinators: Vec::new(),
        series: vec![now],
        bucket_s: 1,
        agents: Default::default(),
    }
}
