//! `--junit FILE`: a report's thresholds as a JUnit XML test suite, one test case per
//! threshold, so that CI systems (GitLab, Jenkins, GitHub test reporters) show which
//! threshold failed and by how much, not only that the job did.
//!
//! A run that failed without a failing threshold (it could not run, or it was stopped by
//! an error) gets a failing `run` case, so that the suite is never green when the exit code
//! is not; a run without thresholds gets a passing `run` case, so that the suite is never
//! empty.

use std::fmt::Write as _;
use std::path::Path;

use crate::report::{Outcome, Report, ThresholdOutcome};

/// The name a threshold's test case carries: `latency.p99 of buy max: 500ms`.
pub fn case_name(t: &ThresholdOutcome) -> String {
    match &t.step {
        Some(step) => format!("{} of {step} {}", t.metric, t.bound),
        None => format!("{} {}", t.metric, t.bound),
    }
}

/// Text for XML: markup characters escaped (quick-xml's escaping, which also covers
/// quotes for attributes), and the characters XML 1.0 cannot carry at all (control
/// characters other than tab and newlines) replaced by U+FFFD, since names and error
/// messages come from users' manifests and servers.
fn xml_text(s: &str) -> String {
    let clean: String = s
        .chars()
        .map(|c| match c {
            '\t' | '\n' | '\r' => c,
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => '\u{fffd}',
            c => c,
        })
        .collect();
    quick_xml::escape::escape(clean.as_str()).into_owned()
}

/// The JUnit XML of a report: one `<testsuite>` named after the test, one `<testcase>` per
/// threshold (failing ones carry a `<failure>` with the observed value and the bound).
pub fn junit_xml(r: &Report) -> String {
    struct Case {
        name: String,
        failure: Option<(String, String)>,
        skipped: Option<String>,
    }
    let mut cases: Vec<Case> = r
        .thresholds
        .iter()
        .map(|t| Case {
            name: case_name(t),
            skipped: t.skipped.clone(),
            failure: (!t.passed).then(|| {
                (
                    format!("observed {}, bound {}", t.observed, t.bound),
                    format!(
                        "threshold {} failed: observed {}, bound {}",
                        case_name(t),
                        t.observed,
                        t.bound
                    ),
                )
            }),
        })
        .collect();
    let any_threshold_failed = r.thresholds.iter().any(|t| !t.passed);
    if r.result == Outcome::Failed && !any_threshold_failed {
        cases.push(Case {
            name: "run".into(),
            skipped: None,
            failure: Some((
                format!("the test failed: ended by {}", r.ended_by),
                format!(
                    "the test failed without a failing threshold: ended by {}",
                    r.ended_by
                ),
            )),
        });
    } else if cases.is_empty() {
        cases.push(Case {
            name: "run".into(),
            failure: None,
            skipped: None,
        });
    }
    let failures = cases.iter().filter(|c| c.failure.is_some()).count();
    let skipped = cases.iter().filter(|c| c.skipped.is_some()).count();
    let class = format!("murmuration.{}", r.name);
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        x,
        "<testsuites name=\"murmuration\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" time=\"{:.3}\">",
        cases.len(),
        r.duration_s
    );
    let _ = writeln!(
        x,
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" time=\"{:.3}\" timestamp=\"{}\">",
        xml_text(&r.name),
        cases.len(),
        r.duration_s,
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(r.started_at_ms)
        )
    );
    for c in &cases {
        // The time of each case is the test's: a threshold is judged over the whole run.
        let _ = write!(
            x,
            "    <testcase name=\"{}\" classname=\"{}\" time=\"{:.3}\"",
            xml_text(&c.name),
            xml_text(&class),
            r.duration_s
        );
        match (&c.failure, &c.skipped) {
            (None, Some(why)) => {
                let _ = writeln!(
                    x,
                    ">\n      <skipped message=\"{}\"/>\n    </testcase>",
                    xml_text(why)
                );
            }
            (None, None) => x.push_str("/>\n"),
            (Some((message, text)), _) => {
                let _ = writeln!(
                    x,
                    ">\n      <failure message=\"{}\" type=\"threshold\">{}</failure>\n    </testcase>",
                    xml_text(message),
                    xml_text(text)
                );
            }
        }
    }
    x.push_str("  </testsuite>\n</testsuites>\n");
    x
}

/// Writes [`junit_xml`] to `path`.
pub fn write_junit(path: &Path, r: &Report) -> Result<(), crate::report::io::ReportError> {
    crate::report::io::write_file(path, junit_xml(r).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use quick_xml::events::Event;
    use quick_xml::XmlVersion;

    fn report(thresholds: Vec<ThresholdOutcome>, result: Outcome) -> Report {
        let mut r: Report = serde_json::from_value(serde_json::json!({
            "format": 1, "name": "shop <&> \"q\"", "scenario": "http", "startedAtMs": 1_700_000_000_000u64,
            "durationS": 12.5, "result": "Passed", "endedBy": "duration",
            "users": {"desired": 1, "peak": 1, "started": 1, "finished": 1, "failed": 0, "iterations": 3},
            "total": {"name": "total", "requests": 3, "errors": 0, "errorsByKind": {}, "rate": 3.0,
                      "latencyMs": {"min": 1.0, "mean": 1.0, "p50": 1.0, "p90": 1.0, "p95": 1.0, "p99": 1.0, "p999": 1.0, "max": 1.0},
                      "histogram": ""},
            "steps": [], "thresholds": [], "throttles": [], "coordinators": [], "series": [], "bucketS": 1
        }))
        .unwrap();
        r.thresholds = thresholds;
        r.result = result;
        r
    }

    fn threshold(
        metric: &str,
        step: Option<&str>,
        observed: &str,
        passed: bool,
    ) -> ThresholdOutcome {
        ThresholdOutcome {
            metric: metric.into(),
            step: step.map(Into::into),
            bound: "≤ 500ms".into(),
            observed: observed.into(),
            passed,
            ..Default::default()
        }
    }

    /// The test cases as a parser reads them: (name, failure message if any), with the
    /// suite's counts.
    fn parse(xml: &str) -> (Vec<(String, Option<String>)>, String, String) {
        let mut reader = quick_xml::Reader::from_str(xml);
        let mut cases: Vec<(String, Option<String>)> = Vec::new();
        let (mut tests, mut failures) = (String::new(), String::new());
        let attr = |e: &quick_xml::events::BytesStart, name: &str| -> String {
            e.try_get_attribute(name)
                .expect("well-formed attributes")
                .unwrap_or_else(|| panic!("attribute {name}"))
                .normalized_value(XmlVersion::Explicit1_0)
                .expect("attribute value unescapes")
                .into_owned()
        };
        loop {
            match reader.read_event().expect("well-formed XML") {
                Event::Eof => break,
                Event::Start(e) | Event::Empty(e) => match e.name().as_ref() {
                    "testsuite" => {
                        tests = attr(&e, "tests");
                        failures = attr(&e, "failures");
                        assert_eq!(attr(&e, "name"), "shop <&> \"q\"");
                    }
                    "testcase" => cases.push((attr(&e, "name"), None)),
                    "failure" => {
                        cases.last_mut().expect("a failure in a case").1 = Some(attr(&e, "message"))
                    }
                    _ => {}
                },
                _ => {}
            }
        }
        (cases, tests, failures)
    }

    #[test]
    fn one_case_per_threshold_and_the_failed_one_says_why() {
        let r = report(
            vec![
                threshold("latency.p99", Some("buy <cart> & \"pay\""), "12.0ms", true),
                threshold("errors.ratio", None, "0.2\u{1}", false),
            ],
            Outcome::Failed,
        );
        let (cases, tests, failures) = parse(&junit_xml(&r));
        assert_eq!((tests.as_str(), failures.as_str()), ("2", "1"));
        assert_eq!(
            cases,
            vec![
                (
                    "latency.p99 of buy <cart> & \"pay\" ≤ 500ms".to_owned(),
                    None
                ),
                (
                    "errors.ratio ≤ 500ms".to_owned(),
                    // A control character XML cannot carry is replaced, not written.
                    Some("observed 0.2\u{fffd}, bound ≤ 500ms".to_owned())
                ),
            ]
        );
    }

    #[test]
    fn a_relative_threshold_without_a_baseline_is_a_skipped_case() {
        let mut t = threshold("latency.p99", Some("buy"), "12.0ms (no baseline)", true);
        t.skipped = Some("no baseline".into());
        let xml = junit_xml(&report(vec![t], Outcome::Passed));
        let (cases, tests, failures) = parse(&xml);
        assert_eq!((tests.as_str(), failures.as_str()), ("1", "0"));
        assert_eq!(cases[0].1, None);
        assert!(xml.contains("skipped=\"1\""), "{xml}");
        assert!(xml.contains("<skipped message=\"no baseline\"/>"), "{xml}");
    }

    #[test]
    fn a_failed_run_without_failed_thresholds_is_never_green() {
        let (cases, _, failures) = parse(&junit_xml(&report(vec![], Outcome::Failed)));
        assert_eq!(failures, "1");
        assert_eq!(cases[0].0, "run");
        assert!(cases[0].1.as_deref().unwrap().contains("ended by duration"));
        let (cases, _, failures) = parse(&junit_xml(&report(vec![], Outcome::Passed)));
        assert_eq!((cases.len(), failures.as_str()), (1, "0"));
    }
}
