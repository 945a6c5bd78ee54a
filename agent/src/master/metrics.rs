//! The master's Prometheus metrics: what `/metrics` serves for a scrape, named and typed
//! after the Prometheus conventions (prefix `murmuration_`, `_total` counters, seconds),
//! with the labels `test`, `namespace` and, per step, `step`; latency as a histogram that
//! `histogram_quantile()` reads; errors by `kind`.
//!
//! Counters and the histogram are rebuilt from the master's books at each scrape (the books
//! hold exact HDR histograms and totals since the start, so a fresh registry set to them
//! is exact and needs no state of its own).

use hdrhistogram::Histogram;
use murmuration_crds::api::{CoordinatorFigures, MasterStatus, TestPhase, ThrottleFigures};
use murmuration_crds::loadtest::{AgentCounts, ArrivalCounts, ProfileStatus, UserCounts};
use prometheus::{
    Encoder, GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry as Prom, TextEncoder,
};

use crate::metrics::{ErrorKind, StepStats};
use crate::report::Report;
use crate::tally::Tally;

/// Upper bounds of the latency histogram's buckets, seconds: 100 µs to 1 min, about three
/// per decade, so that quantiles of anything from a cache hit to a peer's reply read well.
pub const LATENCY_BUCKETS_S: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// The name of the latency histogram.
pub const LATENCY_METRIC: &str = "murmuration_request_duration_seconds";

/// The name of the iteration duration histogram (one run of the scenario by one user).
pub const ITERATION_METRIC: &str = "murmuration_iteration_duration_seconds";

/// What a scrape shows: the status, and per step its name and figures since the start.
#[derive(Debug, Clone)]
pub struct Scrape {
    /// The master's status (users, agents, throttles, coordinators).
    pub status: MasterStatus,
    /// The namespace of the test (`POD_NAMESPACE`; empty outside a cluster).
    pub namespace: String,
    /// Each step's name and figures since the start.
    pub steps: Vec<(String, StepStats)>,
    /// The remote-write pusher's own figures, when the test pushes.
    pub remote_write: Option<RemoteWriteFigures>,
    /// Every iteration's duration since the start (microseconds).
    pub iterations: Histogram<u64>,
}

/// The `namespace` label of the series: the operator gives its master pod its namespace
/// (downward API, `POD_NAMESPACE`); outside a cluster it is empty unless that is set.
pub fn namespace() -> String {
    std::env::var("POD_NAMESPACE").unwrap_or_default()
}

/// The remote-write pusher's own figures, shown with the test's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RemoteWriteFigures {
    /// Batches dropped because the buffer was full (the oldest goes).
    pub dropped_full: u64,
    /// Batches the endpoint refused for good (4xx other than 429).
    pub refused: u64,
    /// Batches waiting to be sent.
    pub pending: u64,
}

impl Scrape {
    /// The scrape of a test run in this process (`murmur run` without agents), from the
    /// local controller's report and the exact figures behind it, so that it pushes the
    /// same series a master would. Its one "agent" is this process.
    pub fn of_local_run(report: &Report, tally: &Tally, finished: bool) -> Scrape {
        let u = &report.users;
        let last = report.series.last();
        let running = if finished {
            0
        } else {
            last.map_or(0, |p| p.users)
        };
        let planned = last.and_then(|p| p.planned);
        let status = MasterStatus {
            test: report.name.clone(),
            phase: if finished {
                TestPhase::Finished
            } else {
                TestPhase::Running
            },
            ended_by: finished.then(|| report.ended_by.clone()),
            result: None,
            message: None,
            started_at_ms: Some(report.started_at_ms),
            elapsed_s: report.duration_s,
            users: UserCounts {
                desired: u.desired as i64,
                running: running as i64,
                started: u.started as i64,
                finished: u.finished as i64,
                failed: u.failed as i64,
            },
            profile: (report.profile.as_deref() == Some("stages")).then(|| ProfileStatus {
                planned_users: planned.unwrap_or(0.0).round() as i64,
                ..Default::default()
            }),
            arrivals: (report.profile.as_deref() == Some("arrivals")).then(|| ArrivalCounts {
                planned_per_second: planned.unwrap_or(0.0),
                started: u.started as i64,
                dropped: u.dropped as i64,
            }),
            agents: AgentCounts {
                desired: 1,
                ready: 1,
            },
            agent_status: Vec::new(),
            requests: Default::default(),
            latency_ms: Default::default(),
            iteration_ms: None,
            baseline: None,
            thresholds: Vec::new(),
            throttles: report
                .throttles
                .iter()
                .map(|t| ThrottleFigures {
                    name: t.name.clone(),
                    rate: t.rate,
                    interval: String::new(),
                    requested: t.requested,
                    executed: t.executed,
                    // The report keeps no waiting count: asked for and not granted yet
                    // is what waits (a user stopped while waiting leaves it one high).
                    waiting: t.requested.saturating_sub(t.executed),
                    shares: Default::default(),
                })
                .collect(),
            coordinators: report
                .coordinators
                .iter()
                .map(|c| CoordinatorFigures {
                    name: c.name.clone(),
                    waiting: 0,
                    groups: c.groups,
                    timeouts: c.timeouts,
                })
                .collect(),
        };
        Scrape {
            status,
            namespace: namespace(),
            steps: tally
                .names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    (
                        n.clone(),
                        tally.totals.steps.get(i).cloned().unwrap_or_default(),
                    )
                })
                .collect(),
            remote_write: None,
            iterations: tally.totals.iterations.durations.clone(),
        }
    }
}

/// Cumulative counts of `h` (microseconds) at each bucket bound of
/// [`LATENCY_BUCKETS_S`], the total count and the sum in seconds.
pub fn latency_buckets(h: &Histogram<u64>) -> (Vec<u64>, u64, f64) {
    let counts = LATENCY_BUCKETS_S
        .iter()
        .map(|le| h.count_between(0, (le * 1e6) as u64))
        .collect();
    let sum = if h.is_empty() {
        0.0
    } else {
        h.mean() * h.len() as f64 / 1e6
    };
    (counts, h.len(), sum)
}

/// The scrape as Prometheus text (exposition format 0.0.4).
pub fn prometheus_text(scrape: &Scrape) -> String {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&families(scrape), &mut buf)
        .expect("text encoding into memory");
    String::from_utf8(buf).unwrap_or_default()
}

/// The scrape's metric families: the one source of the series that `/metrics` shows as
/// text and remote-write pushes as time series ([`super::remote_write`]).
pub fn families(scrape: &Scrape) -> Vec<prometheus::proto::MetricFamily> {
    let s = &scrape.status;
    let reg = Prom::new();
    let test = s.test.as_str();
    let ns = scrape.namespace.as_str();
    let register = |c: Box<dyn prometheus::core::Collector>| {
        reg.register(c).expect("each metric registered once");
    };
    let gauge = |name: &str, help: &str, labels: &[&str]| {
        let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
        register(Box::new(g.clone()));
        g
    };
    let counter = |name: &str, help: &str, labels: &[&str]| {
        let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
        register(Box::new(c.clone()));
        c
    };
    let count = |v: i64| v.max(0) as u64;

    let users = gauge(
        "murmuration_users",
        "Users by state: desired, running",
        &["test", "namespace", "state"],
    );
    users
        .with_label_values(&[test, ns, "desired"])
        .set(s.users.desired);
    users
        .with_label_values(&[test, ns, "running"])
        .set(s.users.running);
    for (name, help, v) in [
        (
            "murmuration_users_started_total",
            "Users started (a restarted user counts again)",
            s.users.started,
        ),
        (
            "murmuration_users_finished_total",
            "Users that finished their repeats or were stopped",
            s.users.finished,
        ),
        (
            "murmuration_users_failed_total",
            "Users that ended on a scenario error",
            s.users.failed,
        ),
    ] {
        counter(name, help, &["test", "namespace"])
            .with_label_values(&[test, ns])
            .inc_by(count(v));
    }
    if let Some(a) = &s.arrivals {
        for (name, help, v) in [
            (
                "murmuration_arrivals_started_total",
                "Open-model arrivals started",
                a.started,
            ),
            (
                "murmuration_arrivals_dropped_total",
                "Open-model arrivals dropped because maxConcurrent users were running",
                a.dropped,
            ),
        ] {
            counter(name, help, &["test", "namespace"])
                .with_label_values(&[test, ns])
                .inc_by(count(v));
        }
        let g = GaugeVec::new(
            Opts::new(
                "murmuration_arrivals_planned_per_second",
                "Arrival rate the profile plans now",
            ),
            &["test", "namespace"],
        )
        .expect("valid metric");
        register(Box::new(g.clone()));
        g.with_label_values(&[test, ns]).set(a.planned_per_second);
    }
    if let Some(p) = &s.profile {
        gauge(
            "murmuration_profile_planned_users",
            "Users the stage profile plans now",
            &["test", "namespace"],
        )
        .with_label_values(&[test, ns])
        .set(p.planned_users);
    }
    let agents = gauge(
        "murmuration_agents",
        "Agents by state: desired, ready",
        &["test", "namespace", "state"],
    );
    agents
        .with_label_values(&[test, ns, "desired"])
        .set(s.agents.desired);
    agents
        .with_label_values(&[test, ns, "ready"])
        .set(s.agents.ready);

    let requests = counter(
        "murmuration_requests_total",
        "Actions of a step completed (successful or not)",
        &["test", "namespace", "step"],
    );
    let errors = counter(
        "murmuration_errors_total",
        "Actions of a step that failed, by kind",
        &["test", "namespace", "step", "kind"],
    );
    let mut families = Vec::new();
    for (step, st) in &scrape.steps {
        requests
            .with_label_values(&[test, ns, step])
            .inc_by(st.requests);
        for (kind, n) in ErrorKind::ALL.iter().zip(st.errors.iter()) {
            // Every kind, zeros included: `rate()` needs a series before its first error.
            errors
                .with_label_values(&[test, ns, step, kind.as_str()])
                .inc_by(*n);
        }
        families.push(histogram_family(
            &[("namespace", ns), ("step", step), ("test", test)],
            &st.latency,
        ));
    }

    let rate = gauge(
        "murmuration_throttle_rate",
        "Permits per interval in force",
        &["test", "namespace", "throttle"],
    );
    let waiting = gauge(
        "murmuration_throttle_waiting",
        "Users waiting for a permit",
        &["test", "namespace", "throttle"],
    );
    let executed = counter(
        "murmuration_throttle_executed_total",
        "Permits granted",
        &["test", "namespace", "throttle"],
    );
    let requested = counter(
        "murmuration_throttle_requested_total",
        "Permits asked for",
        &["test", "namespace", "throttle"],
    );
    for t in &s.throttles {
        let l = [test, ns, t.name.as_str()];
        rate.with_label_values(&l).set(t.rate as i64);
        waiting.with_label_values(&l).set(t.waiting as i64);
        executed.with_label_values(&l).inc_by(t.executed);
        requested.with_label_values(&l).inc_by(t.requested);
    }
    let groups = counter(
        "murmuration_coordinator_groups_total",
        "Groups formed",
        &["test", "namespace", "coordinator"],
    );
    let timeouts = counter(
        "murmuration_coordinator_timeouts_total",
        "Partial groups released by the timeout",
        &["test", "namespace", "coordinator"],
    );
    for c in &s.coordinators {
        let l = [test, ns, c.name.as_str()];
        groups.with_label_values(&l).inc_by(c.groups);
        timeouts.with_label_values(&l).inc_by(c.timeouts);
    }
    let elapsed = GaugeVec::new(
        Opts::new(
            "murmuration_test_elapsed_seconds",
            "Time since the users started",
        ),
        &["test", "namespace"],
    )
    .expect("valid metric");
    register(Box::new(elapsed.clone()));
    elapsed.with_label_values(&[test, ns]).set(s.elapsed_s);

    if let Some(rw) = &scrape.remote_write {
        let dropped = counter(
            "murmuration_remote_write_dropped_batches_total",
            "Remote-write batches given up: the buffer was full (the oldest goes) or the endpoint refused it (4xx)",
            &["test", "namespace", "reason"],
        );
        dropped
            .with_label_values(&[test, ns, "full"])
            .inc_by(rw.dropped_full);
        dropped
            .with_label_values(&[test, ns, "refused"])
            .inc_by(rw.refused);
        gauge(
            "murmuration_remote_write_pending_batches",
            "Remote-write batches waiting to be sent",
            &["test", "namespace"],
        )
        .with_label_values(&[test, ns])
        .set(rw.pending as i64);
    }

    let mut gathered = reg.gather();
    // The latency histogram's buckets come from the exact HDR histograms of the books, not
    // from observations, so its family is built here rather than by a HistogramVec.
    if !families.is_empty() {
        let mut family = prometheus::proto::MetricFamily::default();
        family.set_name(LATENCY_METRIC.into());
        family.set_help("Latency of a step's actions, from their start".into());
        family.set_field_type(prometheus::proto::MetricType::HISTOGRAM);
        family.set_metric(families);
        gathered.push(family);
    }
    // Iterations time the whole scenario, minutes for some, on the same buckets (up to a
    // minute; longer ones count in +Inf and the sum).
    let mut family = prometheus::proto::MetricFamily::default();
    family.set_name(ITERATION_METRIC.into());
    family.set_help("Duration of an iteration: one run of the scenario by one user".into());
    family.set_field_type(prometheus::proto::MetricType::HISTOGRAM);
    family.set_metric(vec![histogram_family(
        &[("namespace", ns), ("test", test)],
        &scrape.iterations,
    )]);
    gathered.push(family);
    gathered.sort_by(|a, b| a.name().cmp(b.name()));
    gathered
}

/// A histogram (microseconds) as a Prometheus histogram metric with `labels` (sorted by
/// name).
fn histogram_family(labels: &[(&str, &str)], h: &Histogram<u64>) -> prometheus::proto::Metric {
    use prometheus::proto::{Bucket, LabelPair, Metric};
    let (counts, total, sum) = latency_buckets(h);
    let mut hist = prometheus::proto::Histogram::default();
    hist.set_sample_count(total);
    hist.set_sample_sum(sum);
    hist.set_bucket(
        LATENCY_BUCKETS_S
            .iter()
            .zip(counts)
            .map(|(le, n)| {
                let mut b = Bucket::default();
                b.set_upper_bound(*le);
                b.set_cumulative_count(n);
                b
            })
            .collect(),
    );
    let mut m = Metric::default();
    m.set_label(
        labels
            .iter()
            .map(|(k, v)| {
                let mut l = LabelPair::default();
                l.set_name((*k).into());
                l.set_value((*v).into());
                l
            })
            .collect(),
    );
    m.set_histogram(hist);
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn scrape() -> Scrape {
        let status: MasterStatus = serde_json::from_value(serde_json::json!({
            "test": "shop", "phase": "Running", "endedBy": null, "result": null, "message": null,
            "startedAtMs": 1795000000000u64, "elapsedS": 42.0,
            "users": {"desired": 10, "running": 10, "started": 12, "finished": 2, "failed": 0},
            "agents": {"desired": 2, "ready": 2}, "agentStatus": [],
            "requests": {"total": 4, "perSecond": 1.0, "errors": 1},
            "latencyMs": {"p50": 1.0, "p95": 1.0, "p99": 1.0, "max": 1.0},
            "thresholds": [], "throttles": [], "coordinators": []
        }))
        .unwrap();
        let mut buy = StepStats::default();
        for ms in [1, 2, 3] {
            buy.record(Duration::from_millis(ms), None, None);
        }
        buy.record(Duration::from_secs(2), None, Some(ErrorKind::Timeout));
        Scrape {
            status,
            namespace: "team-a".into(),
            steps: vec![("buy".into(), buy), ("idle".into(), StepStats::default())],
            remote_write: None,
            iterations: {
                let mut h = crate::metrics::new_histogram();
                h.record(1_500_000).unwrap();
                h.record(90_000_000).unwrap();
                h
            },
        }
    }

    #[test]
    fn steps_have_counters_errors_by_kind_and_a_cumulative_histogram() {
        let text = prometheus_text(&scrape());
        let has = |line: &str| assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        has("# TYPE murmuration_requests_total counter");
        has(r#"murmuration_requests_total{namespace="team-a",step="buy",test="shop"} 4"#);
        has(
            r#"murmuration_errors_total{kind="timeout",namespace="team-a",step="buy",test="shop"} 1"#,
        );
        has(
            r#"murmuration_errors_total{kind="status",namespace="team-a",step="buy",test="shop"} 0"#,
        );
        has("# TYPE murmuration_request_duration_seconds histogram");
        let l = r#"namespace="team-a",step="buy",test="shop""#;
        has(&format!(
            r#"murmuration_request_duration_seconds_bucket{{{l},le="0.001"}} 1"#
        ));
        has(&format!(
            r#"murmuration_request_duration_seconds_bucket{{{l},le="0.0025"}} 2"#
        ));
        has(&format!(
            r#"murmuration_request_duration_seconds_bucket{{{l},le="1"}} 3"#
        ));
        has(&format!(
            r#"murmuration_request_duration_seconds_bucket{{{l},le="2.5"}} 4"#
        ));
        has(&format!(
            r#"murmuration_request_duration_seconds_bucket{{{l},le="+Inf"}} 4"#
        ));
        has(&format!(
            r#"murmuration_request_duration_seconds_count{{{l}}} 4"#
        ));
        // A step without actions yet has its series at zero.
        has(
            r#"murmuration_request_duration_seconds_count{namespace="team-a",step="idle",test="shop"} 0"#,
        );
        has(r#"murmuration_users{namespace="team-a",state="running",test="shop"} 10"#);
        // Buckets never decrease (what histogram_quantile() assumes).
        let counts: Vec<u64> = text
            .lines()
            .filter(|l| {
                l.starts_with("murmuration_request_duration_seconds_bucket")
                    && l.contains(r#"step="buy""#)
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(counts.len(), LATENCY_BUCKETS_S.len() + 1);
        assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
        let sum: f64 = text
            .lines()
            .find(|l| {
                l.starts_with("murmuration_request_duration_seconds_sum")
                    && l.contains(r#"step="buy""#)
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap();
        assert!((sum - 2.006).abs() < 0.01, "{sum}");
        // Iterations: one histogram per test, a 90 s one only in +Inf.
        has("# TYPE murmuration_iteration_duration_seconds histogram");
        let l = r#"namespace="team-a",test="shop""#;
        has(&format!(
            r#"murmuration_iteration_duration_seconds_bucket{{{l},le="2.5"}} 1"#
        ));
        has(&format!(
            r#"murmuration_iteration_duration_seconds_bucket{{{l},le="60"}} 1"#
        ));
        has(&format!(
            r#"murmuration_iteration_duration_seconds_bucket{{{l},le="+Inf"}} 2"#
        ));
        has(&format!(
            r#"murmuration_iteration_duration_seconds_count{{{l}}} 2"#
        ));
    }

    #[test]
    fn the_charts_dashboard_queries_metrics_a_master_serves() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../charts/murmuration/dashboards/murmuration.json");
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let mut s = scrape();
        s.status.throttles = serde_json::from_value(serde_json::json!([
            {"name": "t", "rate": 5, "interval": "1s", "requested": 3, "executed": 2, "waiting": 1, "shares": {}}
        ]))
        .unwrap();
        let text = prometheus_text(&s);
        let served: std::collections::BTreeSet<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .collect();
        let mut queried = 0;
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                for (i, _) in expr.match_indices("murmuration_") {
                    let name: String = expr[i..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    assert!(
                        served.contains(name.as_str()),
                        "{name} is not served: {served:?}"
                    );
                    queried += 1;
                }
            }
        }
        assert!(queried >= 7, "{queried}");
    }
}
