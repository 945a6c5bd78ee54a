//! Metrics and what the master tells: agents' points merged into final seconds, the report
//! (so far and final), who owns which users, and the status the API serves.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use murmuration_crds::api::{CoordinatorFigures, MasterStatus, TestPhase, ThrottleFigures};
use murmuration_crds::loadtest::{
    AgentCounts, AgentStatus, LatencySummary, RequestCounts, TestResult, ThresholdResult,
    UserCounts,
};
use murmuration_crds::units::format_duration;

use super::{Core, RECOVERY_WAIT, SETTLE};
use crate::engine::{build_report, series_point, ReportParts, Tally};
use crate::metrics::Percentiles;
use crate::report::{CoordinatorSummary, Outcome, Report, SeriesPoint, ThrottleSummary};
use crate::scenario::UserId;
use crate::wire::AgentPoint;

impl Core {
    pub(super) fn second_of(&self, at_ms: u64) -> i64 {
        let start = self.memo.started_at_ms;
        if start == 0 || at_ms <= start {
            return 0;
        }
        // A period ending at start+1000 belongs to second 0.
        ((at_ms - start - 1) / 1000) as i64
    }

    pub(super) fn take_point(&mut self, agent: &str, p: AgentPoint) {
        let s = self.second_of(p.at_ms);
        let Some(book) = self.agents.get_mut(agent) else {
            return;
        };
        if p.at_ms <= book.last_point_ms {
            return; // sent again after a reconnection
        }
        book.last_point_ms = p.at_ms;
        let period = match p.period.decode(&mut self.names) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(agent, "metrics dropped: {e}");
                return;
            }
        };
        let total = period.total();
        let e = book.series.entry(s).or_insert((0, 0, 0));
        e.0 = p.users;
        e.1 += total.requests;
        e.2 += total.error_total();
        self.totals.merge(&period);
        self.sampled.offer(&period.iterations.samples);
        if let Some(done) = self.series.get_mut(&s) {
            // A late second (an agent that was away): counters stay exact, percentiles
            // keep what the others measured.
            done.requests += total.requests;
            done.errors += total.error_total();
            done.rps += total.requests as f64;
            done.started += period.users.started;
            done.dropped += period.users.dropped;
            return;
        }
        let slot = self.open.entry(s).or_default();
        slot.0.merge(&period);
        slot.1.insert(agent.to_owned(), p.users);
    }

    /// Turns seconds that every agent had time to report into series points.
    pub(super) fn settle(&mut self, now: Instant, all: bool) {
        let Some(started) = self.started else {
            return;
        };
        let elapsed = now.saturating_duration_since(started);
        let hold = if self.recovering_until.is_some() {
            RECOVERY_WAIT + SETTLE
        } else {
            SETTLE
        };
        let limit = elapsed.saturating_sub(hold).as_secs() as i64;
        let keys: Vec<i64> = self
            .open
            .keys()
            .copied()
            .filter(|s| all || *s < limit)
            .collect();
        for s in keys {
            let (period, users) = self.open.remove(&s).expect("listed");
            let users: u64 = users.values().sum();
            self.peak = self.peak.max(users);
            let mut point = series_point(s as f64 + 1.0, s as f64, users, &period);
            point.planned = self.planned_at(Duration::from_secs(s.max(0) as u64 + 1));
            self.series.insert(s, point);
        }
    }

    /// Each step's name and figures since the start (what `/metrics` shows); a step
    /// without any action yet has empty figures.
    pub fn step_totals(&self) -> Vec<(String, crate::metrics::StepStats)> {
        self.names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                (
                    n.clone(),
                    self.totals.steps.get(i).cloned().unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Every iteration's duration since the start (what `/metrics` shows).
    pub fn iteration_durations(&self) -> hdrhistogram::Histogram<u64> {
        self.totals.iterations.durations.clone()
    }

    /// The report so far (`full`: with histograms).
    pub fn build(&self, full: bool, now: Instant) -> Report {
        let elapsed = self
            .started
            .map(|s| now.saturating_duration_since(s).as_secs_f64())
            .unwrap_or(0.0);
        let mut series: Vec<SeriesPoint> = self.series.values().cloned().collect();
        let connected: Vec<&String> = self
            .agents
            .iter()
            .filter(|(_, a)| a.conn.is_some())
            .map(|(n, _)| n)
            .collect();
        for (s, (period, users)) in &self.open {
            // A live view shows only seconds that every agent reported.
            if !full && !connected.iter().all(|a| users.contains_key(*a)) {
                continue;
            }
            let mut point = series_point(*s as f64 + 1.0, *s as f64, users.values().sum(), period);
            point.planned = self.planned_at(Duration::from_secs((*s).max(0) as u64 + 1));
            series.push(point);
        }
        let step_count = self.names.len();
        for p in series.iter_mut() {
            p.step_requests.resize(step_count, 0);
            p.step_errors.resize(step_count, 0);
            p.step_p50.resize(step_count, 0.0);
            p.step_p99.resize(step_count, 0.0);
        }
        let tally = Tally {
            names: self.names.clone(),
            totals: self.totals.clone(),
            series,
            peak: self.peak.max(self.owner.len() as u64),
            sampled: self.sampled.clone(),
        };
        let agents = self
            .agents
            .iter()
            .map(|(n, a)| {
                let points = a
                    .series
                    .iter()
                    .map(|(s, (users, requests, errors))| SeriesPoint {
                        t: *s as f64 + 1.0,
                        users: *users,
                        requests: *requests,
                        errors: *errors,
                        rps: *requests as f64,
                        ..Default::default()
                    })
                    .collect();
                (n.clone(), points)
            })
            .collect();
        let mut report = build_report(ReportParts {
            profile: crate::engine::profile_name(&self.plan.profile),
            name: &self.plan.name,
            scenario: self.plan.scenario.kind(),
            started_at_ms: self.memo.started_at_ms,
            elapsed_s: elapsed,
            ended_by: self.ended_by.as_deref().unwrap_or("running"),
            desired: self.memo.desired,
            tally: &tally,
            names: &self.names,
            throttles: self
                .throttles
                .iter()
                .map(|(n, st)| {
                    let (requested, executed, _) = self.throttle_counts(n);
                    ThrottleSummary {
                        name: n.clone(),
                        rate: st.rate_at(now),
                        requested,
                        executed,
                    }
                })
                .collect(),
            coordinators: self
                .coordinators
                .iter()
                .map(|(n, c)| CoordinatorSummary {
                    name: n.clone(),
                    groups: c.groups,
                    timeouts: c.timeouts,
                })
                .collect(),
            agents,
            thresholds: &self.plan.thresholds,
            full,
            baseline: self.opts.baseline.as_deref(),
        });
        if self.message.is_some() {
            report.result = Outcome::Failed;
        }
        report
    }

    /// The final report, once finished.
    pub fn final_report(&self) -> Option<&Report> {
        self.report.as_ref()
    }

    /// Ids owned by each agent now (tests and diagnostics).
    pub fn owners(&self) -> BTreeMap<String, Vec<UserId>> {
        let mut m: BTreeMap<String, Vec<UserId>> = BTreeMap::new();
        for (id, a) in &self.owner {
            m.entry(a.clone()).or_default().push(*id);
        }
        for v in m.values_mut() {
            v.sort_unstable();
        }
        m
    }

    /// The status the API serves.
    pub fn status(&self, now: Instant) -> MasterStatus {
        let report = match &self.report {
            Some(r) => r.clone(),
            None => self.build(false, now),
        };
        let u = &report.users;
        let running: u64 = self
            .agents
            .values()
            .filter(|a| a.conn.is_some())
            .map(|a| a.running)
            .sum();
        let last_rps = self
            .series
            .values()
            .next_back()
            .map(|p| p.rps)
            .unwrap_or(0.0);
        let total = &report.total;
        let (profile, arrivals) = self.profile_status(now, u.started, u.dropped);
        MasterStatus {
            profile,
            arrivals,
            test: self.plan.name.clone(),
            phase: self.phase,
            ended_by: self.ended_by.clone(),
            result: (self.phase == TestPhase::Finished).then_some(match report.result {
                Outcome::Passed => TestResult::Passed,
                Outcome::Failed => TestResult::Failed,
            }),
            message: self.message.clone(),
            started_at_ms: (self.memo.started_at_ms > 0).then_some(self.memo.started_at_ms),
            elapsed_s: report.duration_s,
            users: UserCounts {
                desired: self.memo.desired as i64,
                running: running as i64,
                started: u.started as i64,
                finished: u.finished as i64,
                failed: u.failed as i64,
            },
            agents: AgentCounts {
                desired: self.memo.agents as i64,
                ready: self.connected_count() as i64,
            },
            agent_status: self
                .agents
                .iter()
                .filter(|(_, a)| !a.lost || a.conn.is_some())
                .map(|(n, a)| AgentStatus {
                    name: n.clone(),
                    ready: a.conn.is_some(),
                    users: a.users as i64,
                })
                .collect(),
            requests: RequestCounts {
                total: total.requests as i64,
                per_second: last_rps,
                errors: total.errors as i64,
            },
            latency_ms: latency(&total.latency_ms),
            iteration_ms: (report.iterations.count > 0)
                .then(|| latency(&report.iterations.duration_ms)),
            thresholds: report
                .thresholds
                .iter()
                .map(|t| ThresholdResult {
                    metric: t.metric.clone(),
                    step: t.step.clone(),
                    observed: t.observed.clone(),
                    passed: t.passed,
                })
                .collect(),
            baseline: report
                .baseline
                .as_ref()
                .map(crate::report::baseline::status_of),
            throttles: self
                .throttles
                .iter()
                .map(|(n, st)| {
                    let (requested, executed, waiting) = self.throttle_counts(n);
                    ThrottleFigures {
                        name: n.clone(),
                        rate: st.rate_at(now),
                        interval: format_duration(st.limit.interval),
                        requested,
                        executed,
                        waiting,
                        shares: st.shares.clone(),
                    }
                })
                .collect(),
            coordinators: self
                .coordinators
                .iter()
                .map(|(n, c)| CoordinatorFigures {
                    name: n.clone(),
                    waiting: c.machine.waiting() as u64,
                    groups: c.groups,
                    timeouts: c.timeouts,
                })
                .collect(),
        }
    }
}

pub(super) fn latency(p: &Percentiles) -> LatencySummary {
    LatencySummary {
        p50: p.p50,
        p95: p.p95,
        p99: p.p99,
        max: p.max,
    }
}
