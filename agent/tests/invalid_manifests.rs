//! One judge for every path: each invalid manifest the project knows is refused by
//! `murmur run` (the real binary: exit 2, stderr naming the field) and by the operator's
//! check (`murmuration_model::compile_objects`, the function its controller calls with the
//! LoadTest, Throttles and Coordinators it has from the API server), and both name the
//! SAME field of the same document.
//!
//! Only the custom scenario registry differs: the operator cannot know which scenarios the
//! master's image holds, so it leaves that one check to the master.

use std::process::{Command, Stdio};

use murmuration_crds::{Coordinator, LoadTest, Throttle};

const MURMUR: &str = env!("CARGO_BIN_EXE_murmur");

/// A test that runs (its parts included); every case breaks one thing of it.
const GOOD: &str = r#"apiVersion: murmuration.dev/v1alpha1
kind: LoadTest
metadata: {name: shop}
spec:
  users: 10
  agents: 1
  userRate: 5/s
  duration: 1m
  repeat: {times: 2, interval: 100ms}
  start: {waitForAgents: 1m}
  vars: {target: "http://127.0.0.1:1"}
  scenario:
    http:
      baseUrl: "{{vars.target}}"
      timeout: 5s
      headers: {x-common: "c"}
      steps:
        - request: {name: home, path: /, headers: {x-user: "{{user.id}}"}, extract: {o: "$.id"}}
        - think: {min: 10ms, max: 20ms}
        - throttle: rate
        - coordinate: pairs
  thresholds:
    - {metric: latency.p99, step: home, max: 500ms}
---
apiVersion: murmuration.dev/v1alpha1
kind: Throttle
metadata: {name: rate}
spec: {rate: 10, interval: 1s, ramp: {to: 20, step: 5, every: 1s}}
---
apiVersion: murmuration.dev/v1alpha1
kind: Coordinator
metadata: {name: pairs}
spec: {timeout: 5s, plan: [{users: 2, action: pairs}]}
"#;

const MESSAGING: &str = r#"apiVersion: murmuration.dev/v1alpha1
kind: LoadTest
metadata: {name: chat}
spec:
  users: 10
  vars: {target: "127.0.0.1:1"}
  scenario:
    messaging: {server: "{{vars.target}}", minMessages: 3, maxMessages: 5, interval: 50ms}
"#;

/// (what is wrong, the manifest, the field both must name, which document).
fn cases() -> Vec<(&'static str, String, &'static str, &'static str)> {
    let g = |from: &str, to: &str| {
        assert!(GOOD.contains(from), "{from}");
        GOOD.replacen(from, to, 1)
    };
    let m = |from: &str, to: &str| {
        assert!(MESSAGING.contains(from), "{from}");
        MESSAGING.replacen(from, to, 1)
    };
    let req = "- request: {name: home, path: /, headers: {x-user: \"{{user.id}}\"}, extract: {o: \"$.id\"}}";
    vec![
        (
            "duration 0s",
            g("duration: 1m", "duration: 0s"),
            "spec.duration",
            "LoadTest",
        ),
        (
            "duration without unit",
            g("duration: 1m", "duration: \"60\""),
            "spec.duration",
            "LoadTest",
        ),
        (
            "users < 0",
            g("users: 10", "users: -3"),
            "spec.users",
            "LoadTest",
        ),
        (
            "agents 0",
            g("agents: 1", "agents: 0"),
            "spec.agents",
            "LoadTest",
        ),
        (
            "remoteWrite url not http",
            g(
                "duration: 1m",
                "duration: 1m\n  metrics: {remoteWrite: {url: \"ftp://127.0.0.1:1/w\"}}",
            ),
            "spec.metrics.remoteWrite.url",
            "LoadTest",
        ),
        (
            "remoteWrite interval too short",
            g(
                "duration: 1m",
                "duration: 1m\n  metrics: {remoteWrite: {url: \"http://127.0.0.1:1/w\", interval: 100ms}}",
            ),
            "spec.metrics.remoteWrite.interval",
            "LoadTest",
        ),
        (
            "userRate not a rate",
            g("userRate: 5/s", "userRate: 5 per second"),
            "spec.userRate",
            "LoadTest",
        ),
        (
            "userRate zero",
            g("userRate: 5/s", "userRate: 0/s"),
            "spec.userRate",
            "LoadTest",
        ),
        (
            "repeat.times 0",
            g("times: 2", "times: 0"),
            "spec.repeat.times",
            "LoadTest",
        ),
        (
            "repeat.interval",
            g("interval: 100ms}", "interval: often}"),
            "spec.repeat.interval",
            "LoadTest",
        ),
        (
            "waitForAgents",
            g("waitForAgents: 1m", "waitForAgents: a minute"),
            "spec.start.waitForAgents",
            "LoadTest",
        ),
        (
            "scenario timeout 0",
            g("timeout: 5s\n      headers", "timeout: 0s\n      headers"),
            "spec.scenario.http.timeout",
            "LoadTest",
        ),
        (
            "think min > max",
            g("min: 10ms, max: 20ms", "min: 30ms, max: 20ms"),
            "spec.scenario.http.steps[1].think.min",
            "LoadTest",
        ),
        (
            "think not a duration",
            g("max: 20ms", "max: soon"),
            "spec.scenario.http.steps[1].think.max",
            "LoadTest",
        ),
        (
            "request with no path",
            g(req, "- request: {name: home}"),
            "spec.scenario.http.steps[0].request",
            "LoadTest",
        ),
        (
            "path with no baseUrl",
            g("      baseUrl: \"{{vars.target}}\"\n", ""),
            "spec.scenario.http.steps[0].request.path",
            "LoadTest",
        ),
        (
            "malformed template",
            g("path: /,", "path: \"/{{user.\","),
            "spec.scenario.http.steps[0].request.path",
            "LoadTest",
        ),
        (
            "unknown template placeholder",
            g("path: /,", "path: \"/{{user.name}}\","),
            "spec.scenario.http.steps[0].request.path",
            "LoadTest",
        ),
        (
            "unknown template variable",
            g("path: /,", "path: \"/{{vars.nope}}\","),
            "spec.scenario.http",
            "LoadTest",
        ),
        (
            "bad JSONPath",
            g("{o: \"$.id\"}", "{o: \"id[\"}"),
            "spec.scenario.http.steps[0].request.extract.o",
            "LoadTest",
        ),
        (
            "header value with a newline",
            g("{x-user: \"{{user.id}}\"}", "{x-user: \"a\\nb\"}"),
            "spec.scenario.http.steps[0].request.headers.x-user",
            "LoadTest",
        ),
        (
            "bad header name",
            g("{x-user: \"{{user.id}}\"}", "{\"x user\": \"a\"}"),
            "spec.scenario.http.steps[0].request.headers.x user",
            "LoadTest",
        ),
        (
            "bad common header",
            g("{x-common: \"c\"}", "{x-common: \"c\\r\\n\"}"),
            "spec.scenario.http.headers.x-common",
            "LoadTest",
        ),
        (
            "expect status",
            g("path: /,", "path: /, expect: {status: 999},"),
            "spec.scenario.http.steps[0].request.expect.status",
            "LoadTest",
        ),
        (
            "unknown threshold metric",
            g("metric: latency.p99", "metric: latency.p42"),
            "spec.thresholds[0].metric",
            "LoadTest",
        ),
        (
            "threshold step that does not exist",
            g("step: home", "step: checkout"),
            "spec.thresholds[0].step",
            "LoadTest",
        ),
        (
            "threshold bound",
            g("max: 500ms}", "max: \"500\"}"),
            "spec.thresholds[0].max",
            "LoadTest",
        ),
        (
            "throttle step naming no Throttle",
            g("- throttle: rate", "- throttle: nowhere"),
            "spec.scenario.http.steps[2].throttle",
            "LoadTest",
        ),
        (
            "coordinate step naming no Coordinator",
            g("- coordinate: pairs", "- coordinate: nobody"),
            "spec.scenario.http.steps[3].coordinate",
            "LoadTest",
        ),
        (
            "both http and messaging",
            g("    http:\n", "    messaging: {server: x}\n    http:\n"),
            "spec.scenario",
            "LoadTest",
        ),
        (
            "minMessages > maxMessages",
            m("minMessages: 3", "minMessages: 9"),
            "spec.scenario.messaging.minMessages",
            "LoadTest",
        ),
        (
            "messaging interval",
            m("interval: 50ms", "interval: 0s"),
            "spec.scenario.messaging.interval",
            "LoadTest",
        ),
        (
            "messaging server variable",
            m("{{vars.target}}", "{{vars.server}}"),
            "spec.scenario.messaging.server",
            "LoadTest",
        ),
        (
            "Throttle rate",
            g("rate: 10,", "rate: -1,"),
            "spec.rate",
            "Throttle",
        ),
        (
            "Throttle interval",
            g("interval: 1s, ramp", "interval: fast, ramp"),
            "spec.interval",
            "Throttle",
        ),
        (
            "Throttle ramp step",
            g("step: 5,", "step: 0,"),
            "spec.ramp.step",
            "Throttle",
        ),
        (
            "Throttle ramp every",
            g("every: 1s}", "every: 0s}"),
            "spec.ramp.every",
            "Throttle",
        ),
        (
            "Coordinator plan empty",
            g("plan: [{users: 2, action: pairs}]", "plan: []"),
            "spec.plan",
            "Coordinator",
        ),
        // Durations and rates are bounded where they are parsed, so that no deadline a test
        // computes from them can overflow (a year; one per year; a billion per second).
        (
            "duration beyond a year",
            g("duration: 1m", "duration: 18446744073709551615s"),
            "spec.duration",
            "LoadTest",
        ),
        (
            "think beyond a year",
            g(
                "think: {min: 10ms, max: 20ms}",
                "think: {min: 10ms, max: 400d}",
            ),
            "spec.scenario.http.steps[1].think.max",
            "LoadTest",
        ),
        (
            "userRate slower than one a year",
            g("userRate: 5/s", "userRate: 1e-300/s"),
            "spec.userRate",
            "LoadTest",
        ),
        (
            "userRate with a period beyond a year",
            g("userRate: 5/s", "userRate: 1/9999999999h"),
            "spec.userRate",
            "LoadTest",
        ),
        (
            "Throttle interval beyond a year",
            g("interval: 1s, ramp", "interval: 500d, ramp"),
            "spec.interval",
            "Throttle",
        ),
        (
            "Coordinator timeout",
            g("timeout: 5s, plan", "timeout: 0s, plan"),
            "spec.timeout",
            "Coordinator",
        ),
    ]
}

/// The operator's answer: the documents as the API server would hand them over, compiled
/// by the function its controller calls.
fn operator_answer(text: &str) -> Result<(), murmuration_model::ManifestError> {
    // The API server stores typed objects: what the schema accepts deserialises.
    let m = murmuration_model::parse_manifests("f.yaml", text)
        .unwrap_or_else(|e| panic!("not a schema-valid manifest: {e}\n{text}"));
    let test = LoadTest::new(&m.name(), m.test.spec.clone());
    let throttles: Vec<Throttle> = m
        .throttles
        .iter()
        .map(|(n, s)| Throttle::new(n, s.clone()))
        .collect();
    let coordinators: Vec<Coordinator> = m
        .coordinators
        .iter()
        .map(|(n, s)| Coordinator::new(n, s.clone()))
        .collect();
    murmuration_model::compile_objects(&test, &throttles, &coordinators).map(|_| ())
}

/// `murmur run FILE`: exit code and stderr.
fn murmur_answer(dir: &std::path::Path, i: usize, text: &str) -> (Option<i32>, String) {
    let path = dir.join(format!("case{i}.yaml"));
    std::fs::write(&path, text).unwrap();
    let o = Command::new(MURMUR)
        .args(["run", path.to_str().unwrap(), "--plain"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A value of the wrong shape (what the schema refuses at the API server) is refused by
/// `murmur run` in a person's words, with an example of the shape, never serde's type names.
#[test]
fn wrong_shapes_are_told_with_an_example() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (from, to, expect)) in [
        (
            "think: {min: 10ms, max: 20ms}",
            "think: 1s",
            "e.g. think: {duration: 1s}",
        ),
        (
            "repeat: {times: 2, interval: 100ms}",
            "repeat: 2",
            "e.g. repeat: {times: 3",
        ),
        ("users: 10", "users: ten", "expected a whole number"),
        ("users: 10", "users: 2.5", "expected a whole number"),
        (
            "agents: 1",
            "agents: 1\n  agents: 2",
            "duplicate mapping key: agents (each key once)",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        assert!(GOOD.contains(from), "{from}");
        let text = GOOD.replacen(from, to, 1);
        let (code, err) = murmur_answer(dir.path(), 1000 + i, &text);
        assert_eq!(code, Some(2), "{to}: {err}");
        assert!(err.contains(expect), "{to}: expected {expect:?} in {err}");
        for jargon in ["struct ", "i32", "i64", "DuplicateKeyPolicy"] {
            assert!(!err.contains(jargon), "{to}: {jargon:?} in {err}");
        }
    }
}

#[test]
fn the_starting_points_are_valid_for_both() {
    for text in [GOOD, MESSAGING] {
        operator_answer(text).unwrap();
        murmuration_model::compile(
            murmuration_model::parse_manifests("f.yaml", text).unwrap(),
            &Default::default(),
            murmuration_model::CustomScenarios::Known(&[]),
        )
        .unwrap();
    }
}

#[test]
fn murmur_run_and_the_operator_refuse_the_same_field() {
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (i, (what, text, field, kind)) in cases().into_iter().enumerate() {
        let op = match operator_answer(&text) {
            Ok(()) => {
                failures.push(format!("{what}: the operator accepted it"));
                continue;
            }
            Err(e) => e,
        };
        if op.field() != Some(field) || !op.document().is_some_and(|d| d.starts_with(kind)) {
            failures.push(format!(
                "{what}: the operator said {op}, expected {kind} … {field}"
            ));
        }
        let (code, stderr) = murmur_answer(dir.path(), i, &text);
        if code != Some(2) {
            failures.push(format!("{what}: murmur run exited {code:?}: {stderr}"));
            continue;
        }
        // `error: case3.yaml: document 1 (LoadTest shop): spec.duration: must be ...`
        let doc = format!("({kind} ");
        let named = format!("): {field}: ");
        if !stderr.contains(&doc) || !stderr.contains(&named) {
            failures.push(format!(
                "{what}: murmur run said {stderr:?}, expected {kind} … {field}"
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn only_custom_scenario_names_are_left_to_the_master() {
    let text = "apiVersion: murmuration.dev/v1alpha1\nkind: LoadTest\nmetadata: {name: own}\nspec:\n  users: 1\n  scenario:\n    custom: {name: mine}\n";
    let dir = tempfile::tempdir().unwrap();
    let (code, stderr) = murmur_answer(dir.path(), 0, text);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("spec.scenario.custom.name"), "{stderr}");
    operator_answer(text).unwrap();
}
