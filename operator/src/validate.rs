//! What the schema cannot check: durations and rates written as strings, steps that name
//! a Throttle or Coordinator that does not exist, thresholds on unknown metrics. A test
//! that fails here gets condition `Invalid` and an Event naming the field; nothing runs.
//!
//! The engine checks the same things again when the master starts (and names the same
//! fields); the operator checks first so that no pod is created for a test that cannot run.
//! The rules mirror the engine's (`murmuration_agent::plan`, `thresholds`, `throttle`,
//! `coordinator`) without depending on the load engine: a master that refused what the
//! operator let through would leave the test Pending, so the two must agree (the tests
//! below use the engine's own wording of each case).

use std::time::Duration;

use murmuration_crds::loadtest::{InnerStep, Request, Step};
use murmuration_crds::units::{parse_duration, Rate};
use murmuration_crds::websocket::{WebSocketInnerStep, WebSocketScenario, WebSocketStep};
use murmuration_crds::{CoordinatorSpec, LoadTestSpec, ThrottleSpec};

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
    "requests.rate",
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
        spec.scenario.websocket.is_some(),
    ]
    .iter()
    .filter(|k| **k)
    .count();
    if kinds != 1 {
        return Err(invalid(
            "spec.scenario",
            format!("needs exactly one of http, websocket, messaging, custom (found {kinds})"),
        ));
    }
    if let Some(ws) = &spec.scenario.websocket {
        validate_websocket(ws, spec, throttles, coordinators)?;
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
    if let Some(http) = &spec.scenario.http {
        for v in vars_used(http) {
            if !spec.vars.contains_key(&v) {
                return Err(invalid(
                    "spec.scenario.http",
                    format!("uses {{{{vars.{v}}}}}, but spec.vars has no {v:?}"),
                ));
            }
        }
    }
    if let Some(m) = &spec.scenario.messaging {
        duration("spec.scenario.messaging.interval", &m.interval)?;
        duration("spec.scenario.messaging.silence", &m.silence)?;
    }
    let steps = spec.scenario.http.as_ref().map(|h| request_names(&h.steps));
    for (i, t) in spec.thresholds.iter().enumerate() {
        let at = |f: &str| format!("spec.thresholds[{i}].{f}");
        if !METRICS.contains(&t.metric.as_str()) {
            return Err(invalid(
                at("metric"),
                format!(
                    "unknown metric {:?}; one of {}",
                    t.metric,
                    METRICS.join(", ")
                ),
            ));
        }
        let min = bound(&t.metric, &at("min"), &t.min)?;
        let max = bound(&t.metric, &at("max"), &t.max)?;
        match (min, max) {
            (None, None) => return Err(invalid(at("max"), "a threshold needs max or min")),
            (Some(a), Some(b)) if a > b => return Err(invalid(at("min"), "is larger than max")),
            _ => {}
        }
        if let (Some(step), Some(known)) = (&t.step, &steps) {
            if !known.contains(step) {
                return Err(invalid(
                    at("step"),
                    format!(
                        "the scenario has no step {step:?} (it has: {})",
                        known.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The parts of a websocket scenario checked here (the master checks the rest, naming the
/// same fields): durations, the Throttles and Coordinators it names, the variables it uses.
fn validate_websocket(
    ws: &WebSocketScenario,
    spec: &LoadTestSpec,
    throttles: &[String],
    coordinators: &[String],
) -> Result<(), Invalid> {
    let at = "spec.scenario.websocket";
    duration(&format!("{at}.timeout"), &ws.timeout)?;
    if ws.steps.is_empty() {
        return Err(invalid(format!("{at}.steps"), "needs at least one step"));
    }
    let mut templates: Vec<&str> = Vec::new();
    let mut json: Vec<&serde_json::Value> = Vec::new();
    for (i, s) in ws.steps.iter().enumerate() {
        let at = format!("{at}.steps[{i}]");
        check_step(&at, &StepRef::from(s), throttles, coordinators)?;
        ws_templates(&WsStepRef::from(s), &mut templates, &mut json);
        if let Some(l) = &s.loop_ {
            if l.steps.is_empty() {
                return Err(invalid(
                    format!("{at}.loop.steps"),
                    "needs at least one step",
                ));
            }
            for (j, inner) in l.steps.iter().enumerate() {
                let at = format!("{at}.loop.steps[{j}]");
                check_step(&at, &StepRef::from(inner), throttles, coordinators)?;
                ws_templates(&WsStepRef::from(inner), &mut templates, &mut json);
            }
        }
    }
    let mut used = Vec::new();
    templates.iter().for_each(|t| scan(t, &mut used));
    json.iter().for_each(|j| scan_json(j, &mut used));
    used.sort();
    used.dedup();
    for v in used {
        if !spec.vars.contains_key(&v) {
            return Err(invalid(
                at,
                format!("uses {{{{vars.{v}}}}}, but spec.vars has no {v:?}"),
            ));
        }
    }
    Ok(())
}

/// The templated parts of a websocket step.
struct WsStepRef<'a> {
    connect: Option<&'a murmuration_crds::websocket::Connect>,
    send: Option<&'a murmuration_crds::websocket::Send>,
    receive: Option<&'a murmuration_crds::websocket::Receive>,
}

impl<'a> From<&'a WebSocketStep> for WsStepRef<'a> {
    fn from(s: &'a WebSocketStep) -> Self {
        WsStepRef {
            connect: s.connect.as_ref(),
            send: s.send.as_ref(),
            receive: s.receive.as_ref(),
        }
    }
}

impl<'a> From<&'a WebSocketInnerStep> for WsStepRef<'a> {
    fn from(s: &'a WebSocketInnerStep) -> Self {
        WsStepRef {
            connect: s.connect.as_ref(),
            send: s.send.as_ref(),
            receive: s.receive.as_ref(),
        }
    }
}

fn ws_templates<'a>(
    s: &WsStepRef<'a>,
    texts: &mut Vec<&'a str>,
    json: &mut Vec<&'a serde_json::Value>,
) {
    if let Some(c) = s.connect {
        texts.push(&c.url);
        texts.extend(c.headers.values().map(String::as_str));
    }
    if let Some(m) = s.send {
        texts.extend(m.text.as_deref());
        json.extend(m.json.as_ref());
    }
    if let Some(r) = s.receive {
        texts.extend(r.body_contains.as_deref());
        json.extend(r.json.as_ref().map(|j| &j.equals));
    }
}

/// Adds the variables (`{{vars.NAME}}`) a templated text uses to `out`.
fn scan(text: &str, out: &mut Vec<String>) {
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { return };
        if let Some(name) = after[..end].trim().strip_prefix("vars.") {
            out.push(name.to_owned());
        }
        rest = &after[end + 2..];
    }
}

/// Adds the variables the strings of a JSON value use to `out`.
fn scan_json(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => scan(s, out),
        serde_json::Value::Array(a) => a.iter().for_each(|v| scan_json(v, out)),
        // Values only: when in doubt the master has the last word, and a test the
        // operator refused wrongly could not run at all.
        serde_json::Value::Object(o) => o.values().for_each(|v| scan_json(v, out)),
        _ => {}
    }
}

/// The variables (`{{vars.NAME}}`) the templated fields of an http scenario use: its
/// baseUrl and headers, and each request's url, path, headers, body and JSON strings.
fn vars_used(http: &murmuration_crds::loadtest::HttpScenario) -> Vec<String> {
    let mut out = Vec::new();
    let mut request = |r: &Request| {
        for t in [&r.url, &r.path, &r.body].into_iter().flatten() {
            scan(t, &mut out);
        }
        r.headers.values().for_each(|h| scan(h, &mut out));
        if let Some(j) = &r.json {
            scan_json(j, &mut out);
        }
    };
    for s in &http.steps {
        if let Some(r) = &s.request {
            request(r);
        }
        for inner in s.loop_.iter().flat_map(|l| &l.steps) {
            if let Some(r) = &inner.request {
                request(r);
            }
        }
    }
    if let Some(b) = &http.base_url {
        scan(b, &mut out);
    }
    http.headers.values().for_each(|h| scan(h, &mut out));
    out.sort();
    out.dedup();
    out
}

/// A threshold's bound as a number (milliseconds for latencies), as the engine reads it.
fn bound(metric: &str, field: &str, value: &Option<String>) -> Result<Option<f64>, Invalid> {
    let Some(v) = value else { return Ok(None) };
    if metric.starts_with("latency.") {
        return parse_duration(v)
            .map(|d: Duration| Some(d.as_secs_f64() * 1000.0))
            .map_err(|e| {
                invalid(
                    field,
                    format!("latency bounds are durations such as 500ms: {e}"),
                )
            });
    }
    let n: f64 = v
        .trim()
        .parse()
        .map_err(|_| invalid(field, format!("{v:?} is not a number")))?;
    if !n.is_finite() || n < 0.0 {
        return Err(invalid(field, "must be a number of zero or more"));
    }
    if metric == "errors.ratio" && n > 1.0 {
        return Err(invalid(field, "errors.ratio is between 0 and 1"));
    }
    Ok(Some(n))
}

/// The names of the requests of an http scenario, as the report and thresholds know them
/// (`name`, else `METHOD path`).
fn request_names(steps: &[Step]) -> Vec<String> {
    fn name(r: &Request) -> String {
        r.name.clone().unwrap_or_else(|| {
            let method = r.method.map(|m| format!("{m:?}")).unwrap_or("GET".into());
            format!(
                "{method} {}",
                r.path.as_deref().or(r.url.as_deref()).unwrap_or("")
            )
        })
    }
    let mut names = Vec::new();
    for s in steps {
        if let Some(r) = &s.request {
            names.push(name(r));
        }
        if let Some(l) = &s.loop_ {
            names.extend(l.steps.iter().filter_map(|i| i.request.as_ref()).map(name));
        }
    }
    names
}

/// The Throttles and Coordinators the steps of a test name.
pub fn names_used(spec: &LoadTestSpec) -> (Vec<String>, Vec<String>) {
    let (mut throttles, mut coordinators) = (Vec::new(), Vec::new());
    if let Some(http) = &spec.scenario.http {
        let mut note = |s: StepRef<'_>| {
            throttles.extend(s.throttle.cloned());
            coordinators.extend(s.coordinate.cloned());
        };
        for s in &http.steps {
            note(StepRef::from(s));
            for inner in s.loop_.iter().flat_map(|l| &l.steps) {
                note(StepRef::from(inner));
            }
        }
    }
    if let Some(ws) = &spec.scenario.websocket {
        let mut note = |s: StepRef<'_>| {
            throttles.extend(s.throttle.cloned());
            coordinators.extend(s.coordinate.cloned());
        };
        for s in &ws.steps {
            note(StepRef::from(s));
            for inner in s.loop_.iter().flat_map(|l| &l.steps) {
                note(StepRef::from(inner));
            }
        }
    }
    throttles.sort();
    throttles.dedup();
    coordinators.sort();
    coordinators.dedup();
    (throttles, coordinators)
}

/// Checks a Throttle of the test (fields named as `Throttle NAME: spec.interval`).
pub fn validate_throttle(name: &str, spec: &ThrottleSpec) -> Result<(), Invalid> {
    let at = |f: &str| format!("Throttle {name}: spec.{f}");
    if spec.rate < 0 {
        return Err(invalid(at("rate"), "cannot be negative"));
    }
    if let Some(i) = &spec.interval {
        let d = parse_duration(i).map_err(|e| invalid(at("interval"), e.to_string()))?;
        if !d.is_zero() && d < Duration::from_millis(1) {
            return Err(invalid(at("interval"), "must be 0s or at least 1ms"));
        }
    }
    if let Some(r) = &spec.ramp {
        let every =
            parse_duration(&r.every).map_err(|e| invalid(at("ramp.every"), e.to_string()))?;
        if every.is_zero() {
            return Err(invalid(at("ramp.every"), "must be longer than zero"));
        }
        if r.step < 1 {
            return Err(invalid(at("ramp.step"), "must be at least 1"));
        }
        if r.to < 0 {
            return Err(invalid(at("ramp.to"), "cannot be negative"));
        }
    }
    Ok(())
}

/// Checks a Coordinator of the test (fields named as `Coordinator NAME: spec.timeout`).
pub fn validate_coordinator(name: &str, spec: &CoordinatorSpec) -> Result<(), Invalid> {
    let at = |f: &str| format!("Coordinator {name}: spec.{f}");
    if let Some(t) = &spec.timeout {
        let d = parse_duration(t).map_err(|e| invalid(at("timeout"), e.to_string()))?;
        if d.is_zero() {
            return Err(invalid(at("timeout"), "must be longer than zero"));
        }
    }
    if spec.plan.is_empty() {
        return Err(invalid(at("plan"), "needs at least one item"));
    }
    Ok(())
}

/// Checks a test with the Throttles and Coordinators that name it: the test first, then
/// each of them (a bad Throttle would stop the master from starting the test).
pub fn validate_test<'a>(
    spec: &LoadTestSpec,
    throttles: impl IntoIterator<Item = (&'a str, &'a ThrottleSpec)> + Clone,
    coordinators: impl IntoIterator<Item = (&'a str, &'a CoordinatorSpec)> + Clone,
) -> Result<(), Invalid> {
    let tn: Vec<String> = throttles
        .clone()
        .into_iter()
        .map(|(n, _)| n.to_owned())
        .collect();
    let cn: Vec<String> = coordinators
        .clone()
        .into_iter()
        .map(|(n, _)| n.to_owned())
        .collect();
    validate(spec, &tn, &cn)?;
    for (n, t) in throttles {
        validate_throttle(n, t)?;
    }
    for (n, c) in coordinators {
        validate_coordinator(n, c)?;
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

impl<'a> From<&'a WebSocketStep> for StepRef<'a> {
    fn from(s: &'a WebSocketStep) -> Self {
        StepRef {
            think: s.think.as_ref().map(|t| (&t.duration, &t.min, &t.max)),
            throttle: s.throttle.as_ref(),
            coordinate: s.coordinate.as_ref(),
        }
    }
}

impl<'a> From<&'a WebSocketInnerStep> for StepRef<'a> {
    fn from(s: &'a WebSocketInnerStep) -> Self {
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
    fn websocket_steps_are_checked_as_the_engine_does() {
        let ws = "users: 2
vars: {target: ws://x}
scenario:
  websocket:
    steps:
      - connect: {url: \"{{vars.target}}/chat\"}
      - coordinate: pairs
      - loop: {times: 2, steps: [{throttle: rate}, {send: {json: {to: \"{{vars.room}}\"}}}]}
";
        let e = validate(&spec(ws), &["rate".into()], &[]).unwrap_err();
        assert_eq!(e.field, "spec.scenario.websocket.steps[1].coordinate");
        let e = validate(&spec(ws), &["rate".into()], &["pairs".into()]).unwrap_err();
        assert_eq!(e.field, "spec.scenario.websocket");
        assert!(e.reason.contains("vars.room"), "{e}");
        let fixed = ws.replace("vars: {target: ws://x}", "vars: {target: ws://x, room: r}");
        validate(&spec(&fixed), &["rate".into()], &["pairs".into()]).unwrap();
        assert_eq!(
            names_used(&spec(&fixed)),
            (vec!["rate".to_owned()], vec!["pairs".to_owned()])
        );
    }

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

    fn throttle(yaml: &str) -> ThrottleSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn thresholds_are_read_as_the_engine_reads_them() {
        let with = |t: &str| spec(&format!("{OK}thresholds:\n  - {t}\n"));
        let ok = |t: &str| validate(&with(t), &["rate".into()], &[]);
        let field = |t: &str| ok(t).unwrap_err().field;
        assert_eq!(ok("{metric: requests.rate, min: \"100\"}"), Ok(()));
        assert_eq!(ok("{metric: latency.p99, step: GET /, max: 20ms}"), Ok(()));
        assert_eq!(
            field("{metric: latency.p99, max: \"0.5\"}"),
            "spec.thresholds[0].max"
        );
        assert_eq!(
            field("{metric: errors.ratio, max: \"2\"}"),
            "spec.thresholds[0].max"
        );
        assert_eq!(
            field("{metric: errors.count, min: \"-1\"}"),
            "spec.thresholds[0].min"
        );
        assert_eq!(
            field("{metric: requests.count, min: \"10\", max: \"5\"}"),
            "spec.thresholds[0].min"
        );
        assert_eq!(field("{metric: errors.count}"), "spec.thresholds[0].max");
        let e = ok("{metric: latency.p99, step: buy, max: 1s}").unwrap_err();
        assert_eq!(e.field, "spec.thresholds[0].step");
        assert!(e.reason.ends_with("(it has: GET /)"), "{e}");
    }

    #[test]
    fn throttles_and_coordinators_of_the_test_are_checked_too() {
        let t = throttle("{loadTest: x, rate: 10, interval: 1 fortnight}");
        let c: CoordinatorSpec = serde_yaml::from_str("{loadTest: x, plan: []}").unwrap();
        let e = validate_test(&spec(OK), [("rate", &t)], []).unwrap_err();
        assert_eq!(e.field, "Throttle rate: spec.interval");
        let good = throttle("{loadTest: x, rate: 10, interval: 1s}");
        let e = validate_test(&spec(OK), [("rate", &good)], [("pairs", &c)]).unwrap_err();
        assert_eq!(e.field, "Coordinator pairs: spec.plan");
        let ramp = throttle("{loadTest: x, rate: 10, ramp: {to: 5, step: 0, every: 1s}}");
        assert_eq!(
            validate_throttle("r", &ramp).unwrap_err().field,
            "Throttle r: spec.ramp.step"
        );
        assert_eq!(validate_test(&spec(OK), [("rate", &good)], []), Ok(()));
    }

    #[test]
    fn every_var_a_template_uses_is_set() {
        let with = |extra: &str| spec(&format!("{OK}{extra}"));
        let uses = "users: 1\nvars: {host: h}\nscenario:\n  http:\n    baseUrl: \"http://{{vars.host}}\"\n    headers: {x-token: \"{{ vars.token }}\"}\n    steps:\n      - request: {path: /}\n";
        let base = spec(uses);
        let e = validate(&base, &[], &[]).unwrap_err();
        assert_eq!(e.field, "spec.scenario.http");
        assert_eq!(
            e.reason,
            "uses {{vars.token}}, but spec.vars has no \"token\""
        );
        let fixed = spec(&uses.replace("vars: {host: h}", "vars: {host: h, token: t}"));
        assert_eq!(validate(&fixed, &[], &[]), Ok(()));
        // JSON bodies too; user values are not vars.
        let e = validate(&with("vars: {}\n"), &["rate".into()], &[]);
        assert_eq!(e, Ok(()));
        let json = spec(
            &uses
                .replace(
                    "- request: {path: /}",
                    "- request: {path: /, json: {user: \"{{user.id}}\", shop: \"{{vars.shop}}\"}}",
                )
                .replace("vars: {host: h}", "vars: {host: h, token: t}"),
        );
        assert_eq!(
            validate(&json, &[], &[]).unwrap_err().reason,
            "uses {{vars.shop}}, but spec.vars has no \"shop\""
        );
    }
}
