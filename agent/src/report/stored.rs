//! `murmur report NAME`: the report of a test run by the operator, read back from the
//! ConfigMap the operator keeps it in (format: [`murmuration_crds::report`]; owned by the
//! LoadTest, so that it outlives the pods), with the user's kubeconfig.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;

use crate::report::baseline::{rebase, Baseline};
use crate::report::io::write_reports;
use crate::report::Report;
use murmuration_crds::report::{configmap_name, decompress, KEY};

/// Why the stored report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum StoredReportError {
    /// No kubeconfig, or the cluster is unreachable.
    #[error("cannot reach the cluster: {0}")]
    Cluster(#[source] kube::Error),
    /// No such ConfigMap: the test has not finished, or is unknown.
    #[error("no report for LoadTest {name} in namespace {namespace}: ConfigMap {} not found (is the test finished?)", configmap_name(.name))]
    Missing {
        /// The test.
        name: String,
        /// Its namespace.
        namespace: String,
    },
    /// The ConfigMap holds no readable report.
    #[error("ConfigMap {} holds no readable report: {}", configmap_name(.0), .1)]
    Unreadable(String, String),
    /// Writing the files failed.
    #[error(transparent)]
    Write(#[from] crate::report::io::ReportError),
}

/// Reads the stored report of test `name` (in `namespace`, else the kubeconfig's),
/// compares it with `baseline` if given ([`rebase`]), and writes `report.json` and
/// `report.html` into `out`; returns the report and the files.
pub async fn write_stored_report(
    name: &str,
    namespace: Option<&str>,
    out: &Path,
    baseline: Option<&Baseline>,
) -> Result<(Report, Vec<PathBuf>), StoredReportError> {
    let client = kube::Client::try_default()
        .await
        .map_err(StoredReportError::Cluster)?;
    let namespace = namespace
        .map(str::to_owned)
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let mut report = read_stored_report(client, name, &namespace)
        .await?
        .ok_or_else(|| StoredReportError::Missing {
            name: name.to_owned(),
            namespace: namespace.clone(),
        })?;
    if let Some(b) = baseline {
        rebase(&mut report, b);
    }
    let paths = write_reports(out, &report)?;
    Ok((report, paths))
}

/// The stored report of test `name` in `namespace`; `None` while there is none (the test
/// has not finished, or is unknown).
pub async fn read_stored_report(
    client: kube::Client,
    name: &str,
    namespace: &str,
) -> Result<Option<Report>, StoredReportError> {
    let cms: Api<ConfigMap> = Api::namespaced(client, namespace);
    let Some(cm) = cms
        .get_opt(&configmap_name(name))
        .await
        .map_err(StoredReportError::Cluster)?
    else {
        return Ok(None);
    };
    let gz = cm
        .binary_data
        .and_then(|d| d.get(KEY).map(|b| b.0.clone()))
        .ok_or_else(|| StoredReportError::Unreadable(name.into(), format!("no {KEY}")))?;
    decode(&gz)
        .map(Some)
        .map_err(|e| StoredReportError::Unreadable(name.into(), e))
}

/// A report as stored.
pub fn decode(gz: &[u8]) -> Result<Report, String> {
    serde_json::from_slice(&decompress(gz)?).map_err(|e| format!("not a report: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compressed_report_reads_back_and_garbage_is_named() {
        let report: Report = serde_json::from_value(serde_json::json!({
            "format": 1, "name": "t", "scenario": "http", "startedAtMs": 1, "durationS": 1.0,
            "result": "Passed", "endedBy": "duration",
            "users": {"desired": 1, "peak": 1, "started": 1, "finished": 1, "failed": 0, "iterations": 3},
            "total": {"name": "total", "requests": 3, "errors": 0, "errorsByKind": {}, "rate": 3.0,
                      "latencyMs": {"min": 1.0, "mean": 1.0, "p50": 1.0, "p90": 1.0, "p95": 1.0, "p99": 1.0, "p999": 1.0, "max": 1.0},
                      "histogram": ""},
            "steps": [], "thresholds": [], "throttles": [], "coordinators": [], "series": [], "bucketS": 1, "agents": {}
        }))
        .unwrap();
        let gz = crate::report::io::compressed_json(&report);
        assert_eq!(decode(&gz).unwrap().total.requests, 3);
        assert!(decode(b"plain text").unwrap_err().contains("not gzip"));
    }
}
