//! What a test measured, turned into its report: the running tally (totals by step, the
//! 1 s series, the peak of users) and the report built from it, with its thresholds
//! evaluated. The local controller and the master both build reports here.

use crate::coordinator::Coordinators;
use crate::metrics::{encode_histogram, errors_by_kind, Percentiles, Period, StepStats};
use crate::report::{
    CoordinatorSummary, Outcome, Report, SeriesPoint, StepSummary, ThrottleSummary, UserSummary,
    REPORT_FORMAT,
};
use crate::throttle::Throttles;

/// The figures of a test so far: totals by step, the 1 s series, the peak of users.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Step names, in the order of `totals.steps`.
    pub names: Vec<String>,
    /// Everything measured since the start.
    pub totals: Period,
    /// One point per collection period.
    pub series: Vec<SeriesPoint>,
    /// Most users running at once.
    pub peak: u64,
}

impl Tally {
    /// Adds the figures of the period that ended at `t` seconds, with `users` running.
    pub fn add(&mut self, t: f64, users: u64, period: &Period) {
        self.peak = self.peak.max(users);
        self.series.push(series_point(
            t,
            self.series.last().map(|p| p.t).unwrap_or(0.0),
            users,
            period,
        ));
        self.totals.merge(period);
    }
}

/// One point of a time series: the figures of `period`, which ran from `prev_t` to `t`.
pub fn series_point(t: f64, prev_t: f64, users: u64, period: &Period) -> SeriesPoint {
    let span = (t - prev_t).max(1e-3);
    let total = period.total();
    let p = Percentiles::of(&total.latency);
    SeriesPoint {
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
        // Per step, because unlike steps merged say nothing (see `Report::steps_alike`).
        step_p50: period
            .steps
            .iter()
            .map(|s| s.latency.value_at_quantile(0.50) as f64 / 1000.0)
            .collect(),
        step_p99: period
            .steps
            .iter()
            .map(|s| s.latency.value_at_quantile(0.99) as f64 / 1000.0)
            .collect(),
        planned: None,
        started: period.users.started,
        dropped: period.users.dropped,
    }
}

/// What a report is built from.
pub struct ReportParts<'a> {
    /// The test's name.
    pub name: &'a str,
    /// The scenario kind.
    pub scenario: String,
    /// When users started.
    pub started_at_ms: u64,
    /// Seconds since then.
    pub elapsed_s: f64,
    /// Why the test ended (or `running`).
    pub ended_by: &'a str,
    /// Users wanted.
    pub desired: u64,
    /// The figures.
    pub tally: &'a Tally,
    /// Step names in the order of the tally's periods.
    pub names: &'a [String],
    /// Throttle figures.
    pub throttles: Vec<ThrottleSummary>,
    /// Coordinator figures.
    pub coordinators: Vec<CoordinatorSummary>,
    /// Per-agent series.
    pub agents: std::collections::BTreeMap<String, Vec<SeriesPoint>>,
    /// The thresholds to evaluate.
    pub thresholds: &'a crate::thresholds::Thresholds,
    /// Add the exact histograms.
    pub full: bool,
    /// `stages` or `arrivals`, when the test has that profile.
    pub profile: Option<&'static str>,
}

/// Builds a report (thresholds evaluated) from its parts.
pub fn build_report(p: ReportParts<'_>) -> Report {
    let elapsed = p.elapsed_s;
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
        histogram: if p.full {
            encode_histogram(&s.latency)
        } else {
            String::new()
        },
    };
    let empty = StepStats::default();
    let totals = &p.tally.totals;
    let steps: Vec<StepSummary> = p
        .names
        .iter()
        .enumerate()
        .map(|(i, n)| summary(n, totals.steps.get(i).unwrap_or(&empty)))
        .collect();
    let total = summary("total", &totals.total());
    let u = totals.users;
    let mut report = Report {
        profile: p.profile.map(str::to_owned),
        format: REPORT_FORMAT,
        name: p.name.to_owned(),
        scenario: p.scenario,
        started_at_ms: p.started_at_ms,
        duration_s: elapsed,
        result: Outcome::Passed,
        ended_by: p.ended_by.to_owned(),
        users: UserSummary {
            desired: p.desired,
            peak: p.tally.peak,
            started: u.started,
            finished: u.finished,
            failed: u.failed,
            iterations: u.iterations,
            unmatched: u.unmatched,
            dropped: u.dropped,
        },
        total,
        steps,
        thresholds: Vec::new(),
        throttles: p.throttles,
        coordinators: p.coordinators,
        series: p.tally.series.clone(),
        bucket_s: 1,
        agents: p.agents,
    };
    report.thresholds = crate::thresholds::evaluate_all(p.thresholds, &report);
    if report.thresholds.iter().any(|t| !t.passed) {
        report.result = Outcome::Failed;
    }
    report
}

pub(crate) fn throttle_summaries(throttles: &Throttles) -> Vec<ThrottleSummary> {
    throttles
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
        .collect()
}

pub(crate) fn coordinator_summaries(coordinators: &Coordinators) -> Vec<CoordinatorSummary> {
    coordinators
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
        .collect()
}

/// The name a report gives a load profile other than plain `users`.
pub fn profile_name(p: &murmuration_crds::profile::LoadProfile) -> Option<&'static str> {
    use murmuration_crds::profile::LoadProfile;
    match p {
        LoadProfile::Users(_) => None,
        LoadProfile::Stages(_) => Some("stages"),
        LoadProfile::Arrivals(_) => Some("arrivals"),
    }
}
