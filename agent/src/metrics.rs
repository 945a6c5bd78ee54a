//! What users measure, and how it is collected without slowing them down.
//!
//! Every worker thread owns one [`WorkerMetrics`] (behind an uncontended mutex): users on
//! that thread record into it, and once a second the collector swaps it out and merges it
//! into the test's totals and its 1 s time series. Latency goes into HDR histograms
//! (microseconds, 3 significant digits, fixed memory), never averages or sample lists, so
//! that agents' and seconds' figures merge exactly.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Highest latency a histogram tracks: one hour, in microseconds. Larger values are clamped.
pub const MAX_LATENCY_US: u64 = 3_600_000_000;

/// A fresh latency histogram (microseconds, 3 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("static histogram bounds are valid")
}

/// Identifies a step (a named, measured action) in a test's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StepId(pub u32);

/// Why a measured action failed. Every failure is counted under one kind, by step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ErrorKind {
    /// Could not connect (refused, unreachable, DNS).
    Connect,
    /// No complete answer within the time limit.
    Timeout,
    /// TLS handshake failed.
    Tls,
    /// The peer broke the protocol: closed mid-answer, sent garbage.
    Protocol,
    /// An answer with an unexpected status code.
    Status,
    /// An answer that failed a check (`expect.bodyContains`, messaging replies).
    Check,
    /// A value to extract was missing from the answer.
    Extract,
    /// Anything else a scenario reports.
    Other,
    /// The server closed the connection (WebSocket): the user's iteration ends there.
    Closed,
}

impl ErrorKind {
    /// How many kinds there are.
    pub const COUNT: usize = 9;

    /// All kinds, in report order.
    pub const ALL: [ErrorKind; ErrorKind::COUNT] = [
        ErrorKind::Connect,
        ErrorKind::Timeout,
        ErrorKind::Tls,
        ErrorKind::Protocol,
        ErrorKind::Status,
        ErrorKind::Check,
        ErrorKind::Extract,
        ErrorKind::Other,
        ErrorKind::Closed,
    ];

    /// The kind's name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Tls => "tls",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Status => "status",
            ErrorKind::Check => "check",
            ErrorKind::Extract => "extract",
            ErrorKind::Other => "other",
            ErrorKind::Closed => "closed",
        }
    }
}

/// Counters and latency of one step over some period.
#[derive(Debug, Clone)]
pub struct StepStats {
    /// Completed actions (successful or not).
    pub requests: u64,
    /// Failed actions by kind (indexed like [`ErrorKind::ALL`]).
    pub errors: [u64; ErrorKind::COUNT],
    /// Latency of every completed action, in microseconds.
    pub latency: Histogram<u64>,
    /// Latency measured from when the action should have started (paced load only), in
    /// microseconds: wrk2's correction for coordinated omission. Empty when not paced.
    pub corrected: Histogram<u64>,
}

impl Default for StepStats {
    fn default() -> Self {
        StepStats {
            requests: 0,
            errors: [0; ErrorKind::COUNT],
            latency: new_histogram(),
            corrected: new_histogram(),
        }
    }
}

impl StepStats {
    /// Failed actions of every kind.
    pub fn error_total(&self) -> u64 {
        self.errors.iter().sum()
    }

    /// Adds another period's figures to these.
    pub fn merge(&mut self, other: &StepStats) {
        self.requests += other.requests;
        for (a, b) in self.errors.iter_mut().zip(other.errors.iter()) {
            *a += b;
        }
        // Same bounds on both sides: adding cannot fail.
        let _ = self.latency.add(&other.latency);
        let _ = self.corrected.add(&other.corrected);
    }

    /// Records one completed action.
    #[inline]
    pub fn record(
        &mut self,
        latency: Duration,
        intended_latency: Option<Duration>,
        error: Option<ErrorKind>,
    ) {
        self.requests += 1;
        if let Some(kind) = error {
            self.errors[kind as usize] += 1;
        }
        self.latency.saturating_record(clamp_us(latency));
        if let Some(d) = intended_latency {
            self.corrected.saturating_record(clamp_us(d));
        }
    }
}

#[inline]
fn clamp_us(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, MAX_LATENCY_US)
}

/// User lifecycle counters of one period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserEvents {
    /// Users started.
    pub started: u64,
    /// Users that finished all their repeats (or were stopped gracefully).
    pub finished: u64,
    /// Users that ended on an error from the scenario.
    pub failed: u64,
    /// Scenario iterations completed.
    pub iterations: u64,
    /// WebSocket messages that did not match the `receive` waiting when they came (kept
    /// for later receives).
    #[serde(default)]
    pub unmatched: u64,
    /// Arrivals dropped because `maxConcurrent` users were running (open model).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl UserEvents {
    /// Adds another period's counters.
    pub fn merge(&mut self, other: &UserEvents) {
        self.started += other.started;
        self.finished += other.finished;
        self.failed += other.failed;
        self.iterations += other.iterations;
        self.unmatched += other.unmatched;
        self.dropped += other.dropped;
    }
}

/// Iterations a period keeps as samples for the plot of each iteration's duration
/// against its start: the first ones to end in the period (on one worker, and again after
/// merging), so that a period's memory is bounded whatever the rate of iterations.
pub const ITERATION_SAMPLES_PER_PERIOD: usize = 16;

/// One iteration, sampled: when it started and how long it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IterationSample {
    /// When it started, milliseconds since the Unix epoch (agents' clocks agree on it).
    pub start_ms: u64,
    /// How long it took, microseconds.
    pub us: u64,
}

/// Iterations of one period: the duration of every one (one run of the scenario by one
/// user, start to end) and a few samples of when they started.
#[derive(Debug, Clone)]
pub struct IterationStats {
    /// Duration of every completed iteration, microseconds (clamped at an hour).
    pub durations: Histogram<u64>,
    /// At most [`ITERATION_SAMPLES_PER_PERIOD`] of them, with their start.
    pub samples: Vec<IterationSample>,
}

impl Default for IterationStats {
    fn default() -> Self {
        IterationStats {
            durations: new_histogram(),
            samples: Vec::new(),
        }
    }
}

/// When an iteration started, in 8 bytes where an `Instant` takes 16: nanoseconds since a
/// point fixed when the process first asks. Every user keeps one across the steps of its
/// iteration, so it counts in the memory of every sleeping user.
#[derive(Debug, Clone, Copy)]
pub struct IterationStart(u64);

fn iteration_epoch() -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

impl IterationStart {
    /// Now.
    #[inline]
    pub fn now() -> IterationStart {
        // 2^64 ns is 584 years: the conversion cannot truncate within a process's life.
        IterationStart(iteration_epoch().elapsed().as_nanos() as u64)
    }

    /// Time since then.
    #[inline]
    pub fn elapsed(self) -> Duration {
        iteration_epoch()
            .elapsed()
            .saturating_sub(Duration::from_nanos(self.0))
    }
}

impl IterationStats {
    /// Records an iteration that started at `started` and ends now.
    #[inline]
    pub fn record(&mut self, started: IterationStart) {
        self.record_took(started.elapsed())
    }

    /// Records an iteration that took `took` and ends now.
    pub fn record_took(&mut self, took: Duration) {
        self.durations.saturating_record(clamp_us(took));
        if self.samples.len() < ITERATION_SAMPLES_PER_PERIOD {
            // Wall-clock start, for agents' samples to share one time axis.
            let end_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            self.samples.push(IterationSample {
                start_ms: end_ms.saturating_sub(took.as_millis() as u64),
                us: clamp_us(took),
            });
        }
    }

    /// Adds another period's iterations (samples up to the period's bound).
    pub fn merge(&mut self, other: &IterationStats) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.durations.add(&other.durations);
        let room = ITERATION_SAMPLES_PER_PERIOD.saturating_sub(self.samples.len());
        self.samples
            .extend(other.samples.iter().take(room).copied());
    }
}

/// Everything measured during one period (on one worker, or merged).
#[derive(Debug, Clone, Default)]
pub struct Period {
    /// Per step, indexed by [`StepId`].
    pub steps: Vec<StepStats>,
    /// User lifecycle counters.
    pub users: UserEvents,
    /// Iteration durations (their count is `users.iterations`).
    pub iterations: IterationStats,
}

impl Period {
    /// The stats of a step, created on first use.
    #[inline]
    pub fn step_mut(&mut self, step: StepId) -> &mut StepStats {
        let i = step.0 as usize;
        if i >= self.steps.len() {
            self.steps.resize_with(i + 1, StepStats::default);
        }
        &mut self.steps[i]
    }

    /// Adds another period's figures to these.
    pub fn merge(&mut self, other: &Period) {
        for (i, s) in other.steps.iter().enumerate() {
            self.step_mut(StepId(i as u32)).merge(s);
        }
        self.users.merge(&other.users);
        self.iterations.merge(&other.iterations);
    }

    /// All steps merged into one.
    pub fn total(&self) -> StepStats {
        let mut t = StepStats::default();
        for s in &self.steps {
            t.merge(s);
        }
        t
    }
}

/// The metrics of one worker thread; users on that thread record here.
#[derive(Debug, Default)]
pub struct WorkerMetrics {
    current: Mutex<Period>,
}

impl WorkerMetrics {
    /// A new, empty recorder, shared by the users of one worker.
    pub fn new() -> Arc<WorkerMetrics> {
        Arc::new(WorkerMetrics::default())
    }

    /// Records one completed action of `step`.
    #[inline]
    pub fn record(
        &self,
        step: StepId,
        latency: Duration,
        intended_latency: Option<Duration>,
        error: Option<ErrorKind>,
    ) {
        self.current
            .lock()
            .step_mut(step)
            .record(latency, intended_latency, error);
    }

    /// Updates the user lifecycle counters.
    #[inline]
    pub fn user_event(&self, f: impl FnOnce(&mut UserEvents)) {
        f(&mut self.current.lock().users)
    }

    /// Counts one completed iteration of a user, which started at `started`: one lock per
    /// iteration, never per request.
    #[inline]
    pub fn iteration_done(&self, started: IterationStart) {
        let mut cur = self.current.lock();
        cur.users.iterations += 1;
        cur.iterations.record(started);
    }

    /// Takes what was recorded since the last call, leaving an empty period behind.
    pub fn take(&self) -> Period {
        let mut fresh = Period::default();
        let mut cur = self.current.lock();
        // Keep the step slots allocated so that recording never allocates on the hot path.
        fresh.steps.resize_with(cur.steps.len(), StepStats::default);
        std::mem::swap(&mut *cur, &mut fresh);
        fresh
    }
}

/// Names of the steps of a test, in [`StepId`] order. Steps are interned once (at plan or
/// `init` time), so that recording is an index, not a string lookup.
#[derive(Debug, Default)]
pub struct StepNames {
    names: Mutex<Vec<String>>,
}

impl StepNames {
    /// The id of `name`, interned on first use.
    pub fn intern(&self, name: &str) -> StepId {
        let mut names = self.names.lock();
        if let Some(i) = names.iter().position(|n| n == name) {
            return StepId(i as u32);
        }
        names.push(name.to_owned());
        StepId((names.len() - 1) as u32)
    }

    /// All names, in id order.
    pub fn all(&self) -> Vec<String> {
        self.names.lock().clone()
    }
}

/// Latency percentiles of a histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Smallest.
    pub min: f64,
    /// Mean (for information; thresholds should use percentiles).
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    /// Percentiles of a microsecond histogram, in milliseconds; zeros when it is empty.
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            min: ms(h.min()),
            mean: h.mean() / 1000.0,
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p95: ms(h.value_at_quantile(0.95)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// Error counts by kind name, leaving out kinds that did not happen.
pub fn errors_by_kind(errors: &[u64; ErrorKind::COUNT]) -> BTreeMap<String, u64> {
    ErrorKind::ALL
        .iter()
        .zip(errors.iter())
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| (k.as_str().to_owned(), *n))
        .collect()
}

/// Serialises a histogram compactly (HdrHistogram V2 + deflate, base64), so that reports
/// and agents can hand exact histograms to whoever merges them.
pub fn encode_histogram(h: &Histogram<u64>) -> String {
    use base64::Engine;
    use hdrhistogram::serialization::{Serializer, V2DeflateSerializer};
    let mut buf = Vec::new();
    V2DeflateSerializer::new()
        .serialize(h, &mut buf)
        .expect("serialising into memory cannot fail");
    base64::engine::general_purpose::STANDARD.encode(buf)
}

/// Reverses [`encode_histogram`].
pub fn decode_histogram(s: &str) -> Result<Histogram<u64>, String> {
    use base64::Engine;
    use hdrhistogram::serialization::Deserializer;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| format!("histogram is not base64: {e}"))?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| format!("histogram does not decode: {e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_merge_exactly() {
        let mut a = Period::default();
        let mut b = Period::default();
        for i in 1..=100u64 {
            a.step_mut(StepId(0))
                .record(Duration::from_micros(i * 10), None, None);
            b.step_mut(StepId(1))
                .record(Duration::from_millis(i), None, Some(ErrorKind::Status));
        }
        a.merge(&b);
        assert_eq!(a.steps.len(), 2);
        assert_eq!(a.steps[1].errors[ErrorKind::Status as usize], 100);
        let t = a.total();
        assert_eq!(t.requests, 200);
        assert_eq!(t.error_total(), 100);
        let p = Percentiles::of(&t.latency);
        assert!((p.max - 100.0).abs() < 0.1, "{p:?}");
        assert!((p.p50 - 1.0).abs() < 0.01, "{p:?}");
    }

    #[test]
    fn take_leaves_an_empty_period() {
        let w = WorkerMetrics::new();
        w.record(StepId(2), Duration::from_millis(3), None, None);
        w.user_event(|u| u.started += 1);
        let p = w.take();
        assert_eq!(p.steps[2].requests, 1);
        assert_eq!(p.users.started, 1);
        let q = w.take();
        assert_eq!(q.steps.len(), 3, "slots stay allocated");
        assert_eq!(q.total().requests, 0);
    }

    #[test]
    fn histograms_round_trip_through_text() {
        let mut h = new_histogram();
        for v in [5u64, 50, 500, 5000, 50_000] {
            h.record(v).unwrap();
        }
        let back = decode_histogram(&encode_histogram(&h)).unwrap();
        assert_eq!(back.len(), 5);
        assert_eq!(back.max(), h.max());
        assert!(decode_histogram("not base64!").is_err());
    }

    #[test]
    fn step_names_intern_once() {
        let n = StepNames::default();
        assert_eq!(n.intern("home"), StepId(0));
        assert_eq!(n.intern("buy"), StepId(1));
        assert_eq!(n.intern("home"), StepId(0));
        assert_eq!(n.all(), ["home", "buy"]);
    }
}
