//! `murmur run` and `murmur master` with `spec.metrics.remoteWrite`: where the bearer
//! token comes from outside a cluster, and a test run in this process pushing the same
//! series a master pushes.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::engine::{run_test_observed, Command, EngineError, EngineOptions};
use crate::master::metrics::Scrape;
use crate::master::remote_write::{RemoteWriteConfig, RemoteWriter, Source};
use crate::progress::Progress;
use crate::registry::Registry;
use crate::report::baseline::Baseline;
use crate::report::Report;
use murmuration_model::remote_write::RemoteWritePlan;
use murmuration_model::TestPlan;

use murmuration_crds::metrics::REMOTE_WRITE_TOKEN_ENV as TOKEN_ENV;

/// The remote-write token's options, shared by `run` and `master`.
#[derive(clap::Args, Debug, Clone)]
pub(super) struct RemoteWriteArgs {
    /// File holding the bearer token of `spec.metrics.remoteWrite` (else the
    /// MURMUR_REMOTE_WRITE_TOKEN variable). Outside a cluster the Secret that
    /// `bearerTokenSecret` names cannot be read: this takes its place.
    #[arg(long, value_name = "FILE")]
    remote_write_token_file: Option<PathBuf>,
}

impl RemoteWriteArgs {
    /// The token to send, if the test pushes: from the file, else the environment. A test
    /// whose spec names a Secret but gets no token here is refused: a push without its
    /// credentials would only collect 401s.
    pub(super) fn token(&self, plan: Option<&RemoteWritePlan>) -> Result<Option<String>, String> {
        let Some(plan) = plan else {
            return Ok(None);
        };
        let token = match &self.remote_write_token_file {
            Some(f) => {
                let t = std::fs::read_to_string(f)
                    .map_err(|e| format!("--remote-write-token-file {}: {e}", f.display()))?;
                let t = t.trim().to_owned();
                if t.is_empty() {
                    return Err(format!(
                        "--remote-write-token-file {}: the file is empty",
                        f.display()
                    ));
                }
                Some(t)
            }
            None => std::env::var(TOKEN_ENV)
                .ok()
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty()),
        };
        match (&token, &plan.token_secret) {
            (None, Some((name, key))) => Err(format!(
                "spec.metrics.remoteWrite.bearerTokenSecret: Secret {name:?} (key {key:?}) is read \
                 by the operator only; outside a cluster pass --remote-write-token-file FILE or set \
                 {TOKEN_ENV}"
            )),
            _ => Ok(token),
        }
    }
}

/// The remote-write plan of manifests not compiled yet (`None` also when it is invalid:
/// the master's compile names that error with its document).
pub(super) fn plan_of(m: &crate::plan::Manifests) -> Option<RemoteWritePlan> {
    murmuration_model::remote_write::compile(m.test.spec.metrics.as_ref())
        .ok()
        .flatten()
}

/// Runs a test in this process; with `spec.metrics.remoteWrite`, its series are pushed
/// while it runs and flushed at its end (within the flush limit) before the report.
pub(super) async fn run_local(
    plan: TestPlan,
    registry: &Registry,
    opts: EngineOptions,
    baseline: Option<Arc<Baseline>>,
    commands: mpsc::UnboundedReceiver<Command>,
    progress: &mut Progress,
    token: Option<String>,
) -> Result<Report, EngineError> {
    let Some(push) = plan.remote_write.clone() else {
        return crate::engine::run_test_against(plan, registry, opts, baseline, commands, |r| {
            progress.update(r)
        })
        .await;
    };
    // The latest figures, which the sampler takes at its own pace.
    let latest: Arc<parking_lot::Mutex<Option<Scrape>>> = Default::default();
    let source: Source = {
        let latest = latest.clone();
        Box::new(move || {
            let s = latest.lock().clone();
            Box::pin(async move { s })
        })
    };
    let config = RemoteWriteConfig {
        url: push.url,
        token,
        interval: push.interval,
    };
    // The URL and token were checked before; a failure here is a bug's message, not a panic.
    let writer = match RemoteWriter::start(config, source) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::error!("spec.metrics.remoteWrite: {e}: not pushing");
            None
        }
    };
    let mut last = None;
    let report = run_test_observed(plan, registry, opts, baseline, commands, |tick| {
        let scrape = Scrape::of_local_run(tick.report, tick.tally, tick.finished);
        if tick.finished {
            last = Some(scrape);
        } else {
            progress.update(tick.report);
            *latest.lock() = Some(scrape);
        }
    })
    .await;
    if let Some(w) = writer {
        w.finish(last).await;
    }
    report
}
