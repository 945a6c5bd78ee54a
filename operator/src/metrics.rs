//! The operator's Prometheus metrics (prefix `murmuration_operator_`, base units) and its
//! HTTP endpoint: `/metrics`, `/healthz` (alive), `/readyz` (leading and reconciling).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use http::StatusCode;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// The operator's metrics.
#[derive(Clone)]
pub struct Metrics {
    /// Where they are registered.
    pub registry: Registry,
    /// Reconciles by result.
    pub reconciles: IntCounterVec,
    /// Failed reconciles.
    pub errors: IntCounter,
    /// How long reconciles take.
    pub duration: Histogram,
    /// LoadTests by phase.
    pub tests: IntGaugeVec,
    /// Status writes of LoadTests, by why: a transition, or live figures (paced).
    pub status_writes: IntCounterVec,
    /// Server-side applies of a test's objects (Service, StatefulSet), by kind: only when
    /// what they derive from changed.
    pub applies: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "murmuration_operator_reconciles_total",
                "Reconciles of LoadTests, by result",
            ),
            &["result"],
        )
        .expect("valid metric");
        let errors = IntCounter::new(
            "murmuration_operator_reconcile_errors_total",
            "Reconciles that failed",
        )
        .expect("valid metric");
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "murmuration_operator_reconcile_duration_seconds",
                "Time per reconcile",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )
        .expect("valid metric");
        let tests = IntGaugeVec::new(
            Opts::new("murmuration_operator_tests", "LoadTests by phase"),
            &["phase"],
        )
        .expect("valid metric");
        let status_writes = IntCounterVec::new(
            Opts::new(
                "murmuration_operator_status_writes_total",
                "Status writes of LoadTests, by why (transition or figures)",
            ),
            &["why"],
        )
        .expect("valid metric");
        let applies = IntCounterVec::new(
            Opts::new(
                "murmuration_operator_applies_total",
                "Server-side applies of the tests' Services and StatefulSets, by kind",
            ),
            &["kind"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(applies.clone()))
            .expect("registered once");
        registry
            .register(Box::new(reconciles.clone()))
            .expect("registered once");
        registry
            .register(Box::new(status_writes.clone()))
            .expect("registered once");
        registry
            .register(Box::new(errors.clone()))
            .expect("registered once");
        registry
            .register(Box::new(duration.clone()))
            .expect("registered once");
        registry
            .register(Box::new(tests.clone()))
            .expect("registered once");
        Metrics {
            registry,
            reconciles,
            errors,
            duration,
            tests,
            status_writes,
            applies,
        }
    }
}

impl Metrics {
    /// Counts one reconcile.
    pub fn observe(&self, took: Duration, ok: bool) {
        self.duration.observe(took.as_secs_f64());
        self.reconciles
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }

    /// The metrics in the text format.
    pub fn text(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// The routes of the metrics and health endpoint: `/metrics`, `/healthz` and `/readyz`
/// (ready while `ready` holds: leading).
pub fn router(metrics: Metrics, ready: Arc<AtomicBool>) -> Router {
    Router::new()
        .route("/metrics", get(move || async move { metrics.text() }))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || async move {
                if ready.load(Ordering::Acquire) {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not leading")
                }
            }),
        )
}

/// Serves [`router`] on `addr` until the process ends.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    ready: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "metrics and health endpoint listening");
    let app = router(metrics, ready);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("metrics and health endpoint: {e}");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        let code = text[9..12].parse().unwrap();
        (code, text)
    }

    #[tokio::test]
    async fn metrics_health_and_readiness_answer_on_their_paths() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Metrics::default();
        metrics.errors.inc();
        let ready = Arc::new(AtomicBool::new(false));
        let app = router(metrics, ready.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let (code, text) = get(addr, "/metrics").await;
        assert_eq!(code, 200);
        assert!(
            text.contains("murmuration_operator_reconcile_errors_total 1"),
            "{text}"
        );
        assert_eq!(get(addr, "/healthz").await.0, 200);
        assert_eq!(get(addr, "/readyz").await.0, 503);
        ready.store(true, Ordering::Release);
        assert_eq!(get(addr, "/readyz").await.0, 200);
        assert_eq!(get(addr, "/nowhere").await.0, 404);
    }
}
