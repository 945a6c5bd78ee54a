//! The operator's Prometheus metrics (prefix `murmuration_operator_`, base units) and its
//! HTTP endpoint: `/metrics`, `/healthz` (alive), `/readyz` (leading and reconciling).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
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

/// Serves `/metrics`, `/healthz` and `/readyz` until the process ends.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    ready: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "metrics and health endpoint listening");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let metrics = metrics.clone();
            let ready = ready.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (code, body) = match req.uri().path() {
                            "/metrics" => (StatusCode::OK, metrics.text()),
                            "/healthz" => (StatusCode::OK, "ok".to_owned()),
                            "/readyz" if ready.load(Ordering::Acquire) => {
                                (StatusCode::OK, "ready".to_owned())
                            }
                            "/readyz" => {
                                (StatusCode::SERVICE_UNAVAILABLE, "not leading".to_owned())
                            }
                            _ => (StatusCode::NOT_FOUND, "no such path".to_owned()),
                        };
                        async move {
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .status(code)
                                    .body(Full::new(Bytes::from(body)))
                                    .expect("static response parts"),
                            )
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(())
}
