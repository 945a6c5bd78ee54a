//! The wire format of Prometheus remote-write 1.0: the few protobuf messages of
//! `prompb/remote.proto` and `prompb/types.proto` it needs (derived with prost, field
//! numbers as upstream), and a batch body — the series of [`families`] at one instant,
//! protobuf-encoded then snappy-compressed in the block format.
//!
//! Histograms go as classic series (`_bucket{le=...}`, `_sum`, `_count`), the names and
//! `le` values as the text exposition writes them, so that one query reads a scraped and a
//! pushed series alike.
//!
//! [`families`]: crate::master::metrics::families

use prometheus::proto::{MetricFamily, MetricType as PromType};

/// `prometheus.WriteRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    /// The series, each with its samples.
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
    /// Type and help of each metric family.
    #[prost(message, repeated, tag = "3")]
    pub metadata: Vec<MetricMetadata>,
}

/// `prometheus.TimeSeries`: labels sorted by name, `__name__` among them.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    /// The labels, sorted by name.
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    /// The samples, oldest first.
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

/// `prometheus.Label`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Label {
    /// Its name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Its value.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `prometheus.Sample`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    /// The value.
    #[prost(double, tag = "1")]
    pub value: f64,
    /// Milliseconds since the Unix epoch.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// `prometheus.MetricMetadata`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetricMetadata {
    /// `MetricType`: 1 counter, 2 gauge, 3 histogram, 5 summary, 0 unknown.
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    /// The family's name.
    #[prost(string, tag = "2")]
    pub metric_family_name: String,
    /// Its help text.
    #[prost(string, tag = "4")]
    pub help: String,
    /// Its unit (empty: in the name).
    #[prost(string, tag = "5")]
    pub unit: String,
}

/// The families as remote-write series, every sample at `timestamp_ms`.
pub fn write_request(families: &[MetricFamily], timestamp_ms: i64) -> WriteRequest {
    let mut timeseries = Vec::new();
    let mut metadata = Vec::new();
    for mf in families {
        let name = mf.name();
        let kind = mf.get_field_type();
        metadata.push(MetricMetadata {
            r#type: match kind {
                PromType::COUNTER => 1,
                PromType::GAUGE => 2,
                PromType::HISTOGRAM => 3,
                PromType::SUMMARY => 5,
                PromType::UNTYPED => 0,
            },
            metric_family_name: name.to_owned(),
            help: mf.help().to_owned(),
            unit: String::new(),
        });
        for m in mf.get_metric() {
            let labels: Vec<(&str, &str)> = m
                .get_label()
                .iter()
                .map(|l| (l.name(), l.value()))
                .collect();
            let mut push = |suffix: &str, extra: Option<(&str, &str)>, value: f64| {
                timeseries.push(series(
                    &format!("{name}{suffix}"),
                    &labels,
                    extra,
                    value,
                    timestamp_ms,
                ));
            };
            match kind {
                PromType::COUNTER => push("", None, m.get_counter().get_value()),
                PromType::GAUGE => push("", None, m.get_gauge().get_value()),
                // The master builds no untyped metric (and prometheus deprecates them).
                PromType::UNTYPED => {}
                PromType::HISTOGRAM => {
                    let h = m.get_histogram();
                    let mut inf_seen = false;
                    for b in h.get_bucket() {
                        let le = b.upper_bound();
                        inf_seen |= le.is_infinite() && le.is_sign_positive();
                        // As the text encoder writes it, so that `le="0.001"` matches both.
                        let le = if le.is_infinite() {
                            "+Inf".to_owned()
                        } else {
                            le.to_string()
                        };
                        push("_bucket", Some(("le", &le)), b.cumulative_count() as f64);
                    }
                    if !inf_seen {
                        push("_bucket", Some(("le", "+Inf")), h.get_sample_count() as f64);
                    }
                    push("_sum", None, h.get_sample_sum());
                    push("_count", None, h.get_sample_count() as f64);
                }
                PromType::SUMMARY => {
                    let s = m.get_summary();
                    for q in s.get_quantile() {
                        push("", Some(("quantile", &q.quantile().to_string())), q.value());
                    }
                    push("_sum", None, s.sample_sum());
                    push("_count", None, s.sample_count() as f64);
                }
            }
        }
    }
    WriteRequest {
        timeseries,
        metadata,
    }
}

/// One series with one sample; labels sorted by name, as the receiver requires.
fn series(
    name: &str,
    labels: &[(&str, &str)],
    extra: Option<(&str, &str)>,
    value: f64,
    timestamp_ms: i64,
) -> TimeSeries {
    let mut labels: Vec<Label> = std::iter::once(("__name__", name))
        .chain(labels.iter().copied())
        .chain(extra)
        .map(|(n, v)| Label {
            name: n.to_owned(),
            value: v.to_owned(),
        })
        .collect();
    labels.sort_by(|a, b| a.name.cmp(&b.name));
    TimeSeries {
        labels,
        samples: vec![Sample {
            value,
            timestamp: timestamp_ms,
        }],
    }
}

/// A request's body: protobuf, then snappy's block format (not its framed stream format).
pub fn body(request: &WriteRequest) -> Vec<u8> {
    use prost::Message;
    let raw = request.encode_to_vec();
    snap::raw::Encoder::new()
        .compress_vec(&raw)
        .expect("snappy compresses any input up to 4 GiB")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::metrics::{families, prometheus_text, Scrape};
    use crate::metrics::StepStats;

    fn scrape() -> Scrape {
        let status = serde_json::from_value(serde_json::json!({
            "test": "shop", "phase": "Running", "endedBy": null, "result": null, "message": null,
            "startedAtMs": 1795000000000u64, "elapsedS": 4.0,
            "users": {"desired": 3, "running": 3, "started": 3, "finished": 0, "failed": 0},
            "agents": {"desired": 1, "ready": 1}, "agentStatus": [],
            "requests": {"total": 2, "perSecond": 1.0, "errors": 0},
            "latencyMs": {"p50": 1.0, "p95": 1.0, "p99": 1.0, "max": 1.0},
            "thresholds": [], "throttles": [], "coordinators": []
        }))
        .unwrap();
        let mut home = StepStats::default();
        home.record(std::time::Duration::from_millis(3), None, None);
        home.record(std::time::Duration::from_millis(30), None, None);
        Scrape {
            status,
            namespace: "team-a".into(),
            steps: vec![("home".into(), home)],
            remote_write: Some(Default::default()),
            iterations: crate::metrics::new_histogram(),
        }
    }

    fn labels_of(ts: &TimeSeries) -> Vec<(&str, &str)> {
        ts.labels
            .iter()
            .map(|l| (l.name.as_str(), l.value.as_str()))
            .collect()
    }

    #[test]
    fn the_pushed_series_are_the_scraped_ones_with_sorted_labels() {
        use prost::Message;
        let s = scrape();
        let body = body(&write_request(&families(&s), 1_795_000_004_000));
        // Snappy's block format, then protobuf: what the receiver decodes.
        let raw = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
        let req = WriteRequest::decode(raw.as_slice()).unwrap();
        // Every sample line of the text exposition is one pushed series, same value.
        let text = prometheus_text(&s);
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(req.timeseries.len(), lines.len(), "{text}");
        for ts in &req.timeseries {
            let names: Vec<&str> = ts.labels.iter().map(|l| l.name.as_str()).collect();
            let mut sorted = names.clone();
            sorted.sort();
            assert_eq!(names, sorted, "labels sorted by name");
            assert_eq!(ts.samples.len(), 1);
            assert_eq!(ts.samples[0].timestamp, 1_795_000_004_000);
            let labels = labels_of(ts);
            let name = labels.iter().find(|(n, _)| *n == "__name__").unwrap().1;
            // The text writes a histogram's `le` last, the others sorted.
            let rest: Vec<String> = labels
                .iter()
                .filter(|(n, _)| *n != "__name__" && *n != "le")
                .chain(labels.iter().filter(|(n, _)| *n == "le"))
                .map(|(n, v)| format!("{n}=\"{v}\""))
                .collect();
            let line = if rest.is_empty() {
                format!("{name} ")
            } else {
                format!("{name}{{{}}} ", rest.join(","))
            };
            let found = lines
                .iter()
                .find(|l| l.starts_with(&line))
                .unwrap_or_else(|| panic!("{line} not in\n{text}"));
            let value: f64 = found.rsplit(' ').next().unwrap().parse().unwrap();
            assert_eq!(value, ts.samples[0].value, "{line}");
        }
        // The histogram as classic series, `le` as the text writes it.
        let bucket = |le: &str| {
            req.timeseries
                .iter()
                .find(|t| {
                    let l = labels_of(t);
                    l.contains(&("__name__", "murmuration_request_duration_seconds_bucket"))
                        && l.contains(&("le", le))
                        && l.contains(&("step", "home"))
                })
                .map(|t| t.samples[0].value)
        };
        assert_eq!(bucket("0.005"), Some(1.0));
        assert_eq!(bucket("0.05"), Some(2.0));
        assert_eq!(bucket("+Inf"), Some(2.0));
        assert!(req
            .metadata
            .iter()
            .any(|m| m.metric_family_name == "murmuration_requests_total" && m.r#type == 1));
        assert!(req.timeseries.iter().any(|t| labels_of(t)
            .contains(&("__name__", "murmuration_remote_write_dropped_batches_total"))));
    }
}
