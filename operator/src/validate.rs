//! What the schema cannot check: durations and rates written as strings, steps that name
//! a Throttle or Coordinator that does not exist, thresholds on unknown metrics. A test
//! that fails here gets condition `Invalid` and an Event naming the field; nothing runs.
//!
//! The engine checks the same things again when the master starts (and names the same
//! fields); the operator checks first so that no pod is created for a test that cannot run.

use murmuration_crds::loadtest::{InnerStep, Step};
use murmuration_crds::units::{parse_duration, Rate};
use murmuration_crds::LoadTestSpec;

/// A field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    /// The field, as a path (`spec.scenario.http.steps[2].throttle`).
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Metrics a threshold may name.
pub const METRICS: &[&str] = &[
    "latency.p50",
    "latency.p90",
    "latency.p95",
    "latency.p99",
    "latency.p999",
    "latency.max",
    "latency.mean",
    "errors.ratio",
    "errors.count",
    "requests.count",
];

fn duration(field: &str, value: &Option<String>) -> Result<(), Invalid> {
    if let Some(v) = value {
        parse_duration(v).map_err(|e| invalid(field, e.to_string()))?;
    }
    Ok(())
}

/// Checks a LoadTest spec against the names of the Throttles and Coordinators of its test.
pub fn validate(
    spec: &LoadTestSpec,
    throttles: &[String],
    coordinators: &[String],
) -> Result<(), Invalid> {
    if let Some(r) = &spec.user_rate {
        let rate = Rate::parse(r).map_err(|e| invalid("spec.userRate", e.to_string()))?;
        if rate.count <= 0.0 {
            return Err(invalid(
                "spec.userRate",
                "must be more than zero (leave it out to start all users at once)",
            ));
        }
    }
    duration("spec.duration", &spec.duration)?;
    if let Some(r) = &spec.repeat {
        duration("spec.repeat.interval", &r.interval)?;
    }
    if let Some(s) = &spec.start {
        duration("spec.start.waitForAgents", &s.wait_for_agents)?;
    }
    let kinds = [
        spec.scenario.http.is_some(),
        spec.scenario.messaging.is_some(),
        spec.scenario.custom.is_some(),
    ]
    .iter()
    .filter(|k| **k)
    .count();
    if kinds != 1 {
        return Err(invalid(
            "spec.scenario",
            format!("needs exactly one of http, messaging, custom (found {kinds})"),
        ));
    }
    if let Some(http) = &spec.scenario.http {
        duration("spec.scenario.http.timeout", &http.timeout)?;
        if http.steps.is_empty() {
            return Err(invalid(
                "spec.scenario.http.steps",
                "needs at least one step",
            ));
        }
        for (i, s) in http.steps.iter().enumerate() {
            let at = format!("spec.scenario.http.steps[{i}]");
            check_step(&at, &StepRef::from(s), throttles, coordinators)?;
            if let Some(l) = &s.loop_ {
                if l.steps.is_empty() {
                    return Err(invalid(
                        format!("{at}.loop.steps"),
                        "needs at least one step",
                    ));
                }
                for (j, inner) in l.steps.iter().enumerate() {
                    check_step(
                        &format!("{at}.loop.steps[{j}]"),
                        &StepRef::from(inner),
                        throttles,
                        coordinators,
                    )?;
                }
            }
        }
    }
    if let Some(m) = &spec.scenario.messaging {
        duration("spec.scenario.messaging.interval", &m.interval)?;
        duration("spec.scenario.messaging.silence", &m.silence)?;
    }
    for (i, t) in spec.thresholds.iter().enumerate() {
        if !METRICS.contains(&t.metric.as_str()) {
            return Err(invalid(
                format!("spec.thresholds[{i}].metric"),
                format!(
                    "unknown metric {:?}; one of {}",
                    t.metric,
                    METRICS.join(", ")
                ),
            ));
        }
        if t.max.is_none() && t.min.is_none() {
            return Err(invalid(format!("spec.thresholds[{i}]"), "needs max or min"));
        }
    }
    Ok(())
}

/// The parts of a step (top level or inside a loop) that are checked here.
struct StepRef<'a> {
    think: Option<(&'a Option<String>, &'a Option<String>, &'a Option<String>)>,
    throttle: Option<&'a String>,
    coordinate: Option<&'a String>,
}

impl<'a> From<&'a Step> for StepRef<'a> {
    fn from(s: &'a Step) -> Self {
        StepRef {
            think: s.think.as_ref().map(|t| (&t.duration, &t.min, &t.max)),
            throttle: s.throttle.as_ref(),
            coordinate: s.coordinate.as_ref(),
        }
    }
}

impl<'a> From<&'a InnerStep> for StepRef<'a> {
    fn from(s: &'a InnerStep) -> Self {
        StepRef {
            think: s.think.as_ref().map(|t| (&t.duration, &t.min, &t.max)),
            throttle: s.throttle.as_ref(),
            coordinate: s.coordinate.as_ref(),
        }
    }
}

fn check_step(
    at: &str,
    s: &StepRef<'_>,
    throttles: &[String],
    coordinators: &[String],
) -> Result<(), Invalid> {
    if let Some((d, min, max)) = s.think {
        duration(&format!("{at}.think.duration"), d)?;
        duration(&format!("{at}.think.min"), min)?;
        duration(&format!("{at}.think.max"), max)?;
    }
    if let Some(t) = s.throttle {
        if !throttles.contains(t) {
            return Err(invalid(
                format!("{at}.throttle"),
                format!("names Throttle {t:?}, which does not exist for this test"),
            ));
        }
    }
    if let Some(c) = s.coordinate {
        if !coordinators.contains(c) {
            return Err(invalid(
                format!("{at}.coordinate"),
                format!("names Coordinator {c:?}, which does not exist for this test"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> LoadTestSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    const OK: &str = "users: 10
scenario:
  http:
    baseUrl: http://x
    steps:
      - request: {path: /}
      - think: {min: 10ms, max: 20ms}
      - throttle: rate
";

    #[test]
    fn a_sound_spec_passes() {
        validate(&spec(OK), &["rate".into()], &[]).unwrap();
    }

    #[test]
    fn errors_name_the_field() {
        let e = validate(&spec(OK), &[], &[]).unwrap_err();
        assert_eq!(e.field, "spec.scenario.http.steps[2].throttle");
        assert!(e.reason.contains("\"rate\""), "{e}");
        let e = validate(&spec(&OK.replace("20ms", "soon")), &["rate".into()], &[]).unwrap_err();
        assert_eq!(e.field, "spec.scenario.http.steps[1].think.max");
        let e = validate(
            &spec(&format!("{OK}userRate: 10/fortnight\n")),
            &["rate".into()],
            &[],
        )
        .unwrap_err();
        assert_eq!(e.field, "spec.userRate");
        let e = validate(
            &spec(&format!(
                "{OK}thresholds:\n  - {{metric: latency.p42, max: 1s}}\n"
            )),
            &["rate".into()],
            &[],
        )
        .unwrap_err();
        assert_eq!(e.field, "spec.thresholds[0].metric");
    }
}
