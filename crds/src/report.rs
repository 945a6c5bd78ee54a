//! The stored report: how a finished test's report is kept in the cluster after its pods
//! are gone, written by the operator and read back by `murmur report`. One format for
//! both: the ConfigMap `<test>-report`, owned by the LoadTest, holding the report's JSON
//! gzip-compressed under [`KEY`] in `binaryData`, its series downsampled until it fits
//! [`MAX_BYTES`].

use std::future::Future;
use std::io::{Read, Write};

/// The key of the report in the ConfigMap's `binaryData`.
pub const KEY: &str = "report.json.gz";
/// Most bytes a stored report may take: a ConfigMap holds 1 MiB, with room to spare for
/// its metadata.
pub const MAX_BYTES: usize = 900 * 1024;
/// Series points asked for first (an hour of seconds).
pub const FIRST_POINTS: usize = 3600;
/// Fewest series points asked for: below this the report is stored as it is, too big or not.
pub const MIN_POINTS: usize = 10;

/// The ConfigMap that keeps the report of test `test`.
pub fn configmap_name(test: &str) -> String {
    format!("{test}-report")
}

/// A report's JSON, gzip-compressed.
pub fn compress(json: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(json).expect("writing into memory cannot fail");
    gz.finish().expect("writing into memory cannot fail")
}

/// The JSON of a stored report, or why the bytes are not one.
pub fn decompress(gz: &[u8]) -> Result<Vec<u8>, String> {
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut json)
        .map_err(|e| format!("not gzip: {e}"))?;
    Ok(json)
}

/// The report as stored: `fetch(n)` gives the report's JSON with its series downsampled to
/// at most `n` points; `n` halves from [`FIRST_POINTS`] until the compressed report fits
/// [`MAX_BYTES`] (or reaches [`MIN_POINTS`]). Returns the compressed bytes and the points
/// asked for.
pub async fn fit<F, Fut, J, E>(mut fetch: F) -> Result<(Vec<u8>, usize), E>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Result<J, E>>,
    J: AsRef<[u8]>,
{
    let mut points = FIRST_POINTS;
    loop {
        let gz = compress(fetch(points).await?.as_ref());
        if gz.len() <= MAX_BYTES || points <= MIN_POINTS {
            return Ok((gz, points));
        }
        points = (points / 2).max(MIN_POINTS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<T>(f: impl Future<Output = T>) -> T {
        // The fetches here never wait: one poll finishes them.
        let mut f = std::pin::pin!(f);
        let waker = std::task::Waker::noop();
        match f.as_mut().poll(&mut std::task::Context::from_waker(waker)) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("a fetch that never waits waited"),
        }
    }

    #[test]
    fn a_report_reads_back_and_garbage_is_named() {
        let json = br#"{"name":"t","series":[1,2,3]}"#;
        assert_eq!(decompress(&compress(json)).unwrap(), json);
        assert!(decompress(b"plain text").unwrap_err().contains("not gzip"));
    }

    /// A report too big for a ConfigMap is asked for again with half the points, until it
    /// fits; one that can never fit stops at the fewest points.
    #[test]
    fn the_series_halves_until_the_report_fits() {
        // Incompressible bytes, 400 per point.
        let report = |points: usize| -> Vec<u8> {
            let mut x: u32 = 1;
            (0..points * 400)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect()
        };
        let mut asked = Vec::new();
        let (gz, points) = block_on(fit(|n| {
            asked.push(n);
            std::future::ready(Ok::<_, ()>(report(n)))
        }))
        .unwrap();
        assert_eq!(asked, [3600, 1800]);
        assert_eq!(points, 1800);
        assert!(gz.len() <= MAX_BYTES);
        let mut asked = Vec::new();
        let (_, points) = block_on(fit(|n| {
            asked.push(n);
            std::future::ready(Ok::<_, ()>(report(10_000)))
        }))
        .unwrap();
        assert_eq!(points, MIN_POINTS);
        assert_eq!(*asked.last().unwrap(), MIN_POINTS);
    }
}
