//! What a test measured, turned into its report: the running tally (totals by step, the
//! 1 s series, the peak of users) and the report built from it, with its thresholds
//! evaluated. The local controller and the master both build reports here.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::coordinator::Coordinators;
use crate::metrics::{
    encode_histogram, errors_by_kind, IterationSample, Percentiles, Period, StepStats,
};
use crate::report::{
    CoordinatorSummary, IterationSummary, Outcome, Report, SeriesPoint, StepSummary,
    ThrottleSummary, UserSummary, REPORT_FORMAT,
};
use crate::throttle::Throttles;

/// Most iterations a report keeps for the plot of each one's duration against its start.
pub const REPORT_ITERATION_SAMPLES: usize = 1000;

/// A uniform sample of a test's iterations, of bounded size: reservoir sampling
/// (Vitter's algorithm R) over the samples the periods carry (the first few to end in each
/// second on each worker, [`crate::metrics::ITERATION_SAMPLES_PER_PERIOD`]), so that a
/// test of a day keeps as many points as one of a minute, spread over its whole length.
#[derive(Debug, Clone)]
pub struct IterationReservoir {
    seen: u64,
    kept: Vec<IterationSample>,
    rng: SmallRng,
}

impl Default for IterationReservoir {
    fn default() -> Self {
        IterationReservoir {
            seen: 0,
            kept: Vec::new(),
            // Fixed seed: the same run keeps the same points.
            rng: SmallRng::seed_from_u64(0x6d75_726d),
        }
    }
}

impl IterationReservoir {
    /// Offers samples: each of all those offered so far is kept with the same chance.
    pub fn offer(&mut self, samples: &[IterationSample]) {
        for s in samples {
            self.seen += 1;
            if self.kept.len() < REPORT_ITERATION_SAMPLES {
                self.kept.push(*s);
            } else {
                let j = self.rng.random_range(0..self.seen);
                if (j as usize) < REPORT_ITERATION_SAMPLES {
                    self.kept[j as usize] = *s;
                }
            }
        }
    }

    /// The samples kept, by start.
    pub fn samples(&self) -> Vec<IterationSample> {
        let mut v = self.kept.clone();
        v.sort_by_key(|s| s.start_ms);
        v
    }
}

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
    /// Iterations sampled over the whole test.
    pub sampled: IterationReservoir,
}

impl Tally {
    /// Adds the figures of the period that ended at `t` seconds, with `users` running.
    pub fn add(&mut self, t: f64, users: u64, period: &Period) {
        self.peak = self.peak.max(users);
        self.sampled.offer(&period.iterations.samples);
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
    /// An earlier run to compare with and judge relative thresholds against.
    pub baseline: Option<&'a crate::report::baseline::Baseline>,
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
        iterations: iteration_summary(p.tally, p.started_at_ms, p.full),
        baseline: None,
        thresholds: Vec::new(),
        throttles: p.throttles,
        coordinators: p.coordinators,
        series: p.tally.series.clone(),
        bucket_s: 1,
        agents: p.agents,
    };
    let baseline = p.baseline.map(|b| &b.report);
    report.thresholds = crate::thresholds::evaluate_all(p.thresholds, &report, baseline);
    report.baseline = p
        .baseline
        .map(|b| crate::report::baseline::compare(&report, b));
    if report.thresholds.iter().any(|t| !t.passed) {
        report.result = Outcome::Failed;
    }
    report
}

/// The iterations' figures: their count, duration percentiles, the exact histogram
/// (`full`) and the sampled points, their start in seconds since the test's.
fn iteration_summary(tally: &Tally, started_at_ms: u64, full: bool) -> IterationSummary {
    let h = &tally.totals.iterations.durations;
    IterationSummary {
        count: h.len(),
        duration_ms: Percentiles::of(h),
        histogram: if full {
            encode_histogram(h)
        } else {
            String::new()
        },
        samples: tally
            .sampled
            .samples()
            .iter()
            .map(|s| {
                [
                    s.start_ms.saturating_sub(started_at_ms) as f64 / 1000.0,
                    s.us as f64 / 1000.0,
                ]
            })
            .collect(),
    }
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
