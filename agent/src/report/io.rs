//! Writing and reading reports: `report.json` and `report.html`, written atomically, and
//! downsampling so that a report fits a size limit (the operator stores it in a ConfigMap).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::report::{Report, SeriesPoint};

/// Why a report could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a report.
    #[error("{path}: not a Murmuration report: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Writes a file atomically (a temporary file renamed into place), so that a reader never
/// sees half of it.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    let io = |source| ReportError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Writes `report.json` and `report.html` into `dir` (created if needed); returns their
/// paths.
pub fn write_reports(dir: &Path, report: &Report) -> Result<Vec<PathBuf>, ReportError> {
    std::fs::create_dir_all(dir).map_err(|source| ReportError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let json = dir.join("report.json");
    let text = serde_json::to_vec_pretty(report).expect("a report always serialises");
    write_file(&json, &text)?;
    let html = dir.join("report.html");
    write_file(&html, crate::report::html::render_html(report).as_bytes())?;
    Ok(vec![json, html])
}

/// Reads a `report.json`, or a stored report's gzip-compressed `report.json.gz` (what the
/// operator keeps in a ConfigMap).
pub fn read_report(path: &Path) -> Result<Report, ReportError> {
    let mut text = std::fs::read(path).map_err(|source| ReportError::Io {
        path: path.to_owned(),
        source,
    })?;
    if text.starts_with(&[0x1f, 0x8b]) {
        text =
            murmuration_crds::report::decompress(&text).map_err(|reason| ReportError::Format {
                path: path.to_owned(),
                reason,
            })?;
    }
    serde_json::from_slice(&text).map_err(|e| ReportError::Format {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Merges consecutive series points so that at most `max_points` remain. Counts add up;
/// `users` is the last of the bucket; `max` is the bucket's max; `p50/p90/p99` (and the
/// per-step ones) are the
/// largest of the merged points (an upper bound: exact merged percentiles need the
/// histograms, which the series does not keep).
pub fn downsample(report: &Report, max_points: usize) -> Report {
    let mut r = report.clone();
    let max_points = max_points.max(1);
    let n = report.series.len();
    if n <= max_points {
        return r;
    }
    let factor = n.div_ceil(max_points);
    let merge = |points: &[SeriesPoint]| -> SeriesPoint {
        let mut m = SeriesPoint {
            t: points.last().map(|p| p.t).unwrap_or(0.0),
            users: points.last().map(|p| p.users).unwrap_or(0),
            ..Default::default()
        };
        let start = points.first().map(|p| p.t).unwrap_or(0.0);
        let mut prev_t = start;
        let mut span = 0.0;
        for (i, p) in points.iter().enumerate() {
            m.requests += p.requests;
            m.errors += p.errors;
            m.p50 = m.p50.max(p.p50);
            m.p90 = m.p90.max(p.p90);
            m.p99 = m.p99.max(p.p99);
            m.max = m.max.max(p.max);
            if i > 0 {
                span += p.t - prev_t;
            }
            prev_t = p.t;
            for (j, v) in p.step_requests.iter().enumerate() {
                if m.step_requests.len() <= j {
                    m.step_requests.resize(j + 1, 0);
                }
                m.step_requests[j] += v;
            }
            for (j, v) in p.step_errors.iter().enumerate() {
                if m.step_errors.len() <= j {
                    m.step_errors.resize(j + 1, 0);
                }
                m.step_errors[j] += v;
            }
            // Upper bounds, like p50/p99 above.
            for (merged, point) in [
                (&mut m.step_p50, &p.step_p50),
                (&mut m.step_p99, &p.step_p99),
            ] {
                if merged.len() < point.len() {
                    merged.resize(point.len(), 0.0);
                }
                for (j, v) in point.iter().enumerate() {
                    merged[j] = merged[j].max(*v);
                }
            }
        }
        // The first point's own span is unknown here: assume the series' bucket size.
        let span = span + report.bucket_s as f64;
        m.rps = m.requests as f64 / span.max(1e-9);
        m
    };
    r.series = report.series.chunks(factor).map(merge).collect();
    r.bucket_s = report.bucket_s * factor as u32;
    for series in r.agents.values_mut() {
        *series = series.chunks(factor).map(merge).collect();
    }
    r
}

/// The report's JSON, gzip-compressed as it is stored ([`murmuration_crds::report`]).
pub fn compressed_json(report: &Report) -> Vec<u8> {
    murmuration_crds::report::compress(
        &serde_json::to_vec(report).expect("a report always serialises"),
    )
}

/// Downsamples until the gzip-compressed JSON fits `max_bytes` (or the series is a
/// single point).
pub fn fit_to_size(report: &Report, max_bytes: usize) -> Report {
    let mut r = report.clone();
    let mut points = r.series.len();
    while compressed_json(&r).len() > max_bytes && points > 1 {
        points /= 2;
        r = downsample(report, points);
    }
    r
}
