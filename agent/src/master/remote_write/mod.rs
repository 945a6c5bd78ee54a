//! Prometheus remote-write from the master (and from `murmur run`): the series of
//! `/metrics` ([`families`], one source for both) are sampled every `interval` and pushed
//! to `spec.metrics.remoteWrite.url`, so that a test shorter than a scrape interval is not
//! missed.
//!
//! Two tasks share a bounded [`Buffer`]: the sampler adds a batch (the series at one
//! instant) each interval; the sender posts the oldest batch until the buffer is empty.
//! While the endpoint is down (connection errors, 5xx, 429) the sender retries the same
//! batch with a backoff and batches wait, up to [`BUFFER_WINDOW`] of them; past that the
//! oldest is dropped, logged and counted (`murmuration_remote_write_dropped_batches_total`).
//! A 4xx other than 429 will never succeed: that batch is dropped and counted. At the end
//! of the test a last sample is taken and the buffer flushed, within [`FLUSH_LIMIT`].

pub mod buffer;
pub mod proto;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Uri};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use crate::client::{ClientConfig, Connections, Origin, RequestHead};
use crate::master::metrics::{families, RemoteWriteFigures, Scrape};
use buffer::Buffer;

/// How much of the test's figures the buffer holds while the endpoint is down: the
/// buffer's bound in batches is this window divided by the push interval.
pub const BUFFER_WINDOW: Duration = Duration::from_secs(10 * 60);
/// How long the end of a test waits for the buffer to empty before giving up on the rest.
pub const FLUSH_LIMIT: Duration = Duration::from_secs(10);
/// Time limit of one push.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// First pause after a failed push; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(250);
/// Longest pause between two tries: also the longest a recovered endpoint waits for the
/// first of the batches it missed.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Where and how to push.
#[derive(Debug, Clone)]
pub struct RemoteWriteConfig {
    /// The endpoint (checked by the model: http or https, with a host).
    pub url: String,
    /// The bearer token, if one is sent.
    pub token: Option<String>,
    /// Time between two samples.
    pub interval: Duration,
}

/// Where the sampler takes the series from: the master's books, or `murmur run`'s last
/// tick. `None`: nothing to sample this time.
pub type Source = Box<dyn FnMut() -> Pin<Box<dyn Future<Output = Option<Scrape>> + Send>> + Send>;

/// A running pusher (cheap to clone; every clone is the same pusher).
#[derive(Clone)]
pub struct RemoteWriter {
    shared: Arc<Shared>,
}

struct Shared {
    target: Target,
    buffer: Mutex<Buffer>,
    /// A batch was added (wakes the sender).
    added: Notify,
    /// A batch left the buffer (wakes a flush).
    removed: Notify,
    /// Whether the buffer has overflowed since the last delivery (one warning per outage).
    overflowing: Mutex<bool>,
    sampler: Mutex<Option<AbortHandle>>,
    sender: Mutex<Option<AbortHandle>>,
}

/// The request every push makes, but for its body.
struct Target {
    url: String,
    origin: Origin,
    path: Uri,
    host: HeaderValue,
    headers: Vec<(HeaderName, HeaderValue)>,
    capacity: usize,
}

impl Target {
    fn new(config: &RemoteWriteConfig) -> Result<Target, String> {
        let (origin, uri) = murmuration_model::http::absolute(&config.url)?;
        let host = HeaderValue::from_str(origin.authority.as_str())
            .map_err(|e| format!("{}: {e}", config.url))?;
        let mut headers = vec![
            (
                http::header::CONTENT_ENCODING,
                HeaderValue::from_static("snappy"),
            ),
            (
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-protobuf"),
            ),
            (
                HeaderName::from_static("x-prometheus-remote-write-version"),
                HeaderValue::from_static("0.1.0"),
            ),
            (
                http::header::USER_AGENT,
                HeaderValue::from_static(concat!("murmuration/", env!("CARGO_PKG_VERSION"))),
            ),
        ];
        if let Some(token) = &config.token {
            let mut v =
                HeaderValue::from_str(&format!("Bearer {}", token.trim())).map_err(|_| {
                    "the remote-write token holds characters an HTTP header cannot carry".to_owned()
                })?;
            v.set_sensitive(true);
            headers.push((http::header::AUTHORIZATION, v));
        }
        let interval = config.interval.max(Duration::from_millis(1));
        let capacity = BUFFER_WINDOW.as_millis().div_ceil(interval.as_millis()) as usize;
        Ok(Target {
            url: config.url.clone(),
            origin,
            path: murmuration_model::http::path_of(&uri),
            host,
            headers,
            capacity,
        })
    }
}

/// What became of one push.
enum Pushed {
    Delivered,
    /// Never worth trying again (a 4xx other than 429).
    Refused(String),
    /// Worth trying again (no connection, timeout, 5xx, 429).
    Retry(String),
}

impl RemoteWriter {
    /// Starts sampling `source` every `config.interval` and pushing. Errors when the URL
    /// or the token cannot make a request.
    pub fn start(config: RemoteWriteConfig, mut source: Source) -> Result<RemoteWriter, String> {
        let target = Target::new(&config)?;
        tracing::info!(url = %target.url, interval = ?config.interval, buffer = target.capacity, "remote-write on");
        let writer = RemoteWriter {
            shared: Arc::new(Shared {
                buffer: Mutex::new(Buffer::new(target.capacity)),
                target,
                added: Notify::new(),
                removed: Notify::new(),
                overflowing: Mutex::new(false),
                sampler: Mutex::new(None),
                sender: Mutex::new(None),
            }),
        };
        let sender = tokio::spawn(send_loop(writer.shared.clone()));
        *writer.shared.sender.lock() = Some(sender.abort_handle());
        let w = writer.clone();
        let sampler = tokio::spawn(async move {
            let mut tick = tokio::time::interval(config.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                // Nothing yet (a local test before its first tick), or the books are gone.
                let Some(scrape) = source().await else {
                    continue;
                };
                let finished = scrape.status.phase == murmuration_crds::api::TestPhase::Finished;
                w.record(scrape);
                if finished {
                    // The final figures are in; the flush happens at `finish`.
                    return;
                }
            }
        });
        *writer.shared.sampler.lock() = Some(sampler.abort_handle());
        Ok(writer)
    }

    /// The pusher's own figures (for `/metrics`).
    pub fn figures(&self) -> RemoteWriteFigures {
        self.shared.buffer.lock().figures()
    }

    /// Samples `scrape` now: adds its series as a batch to the buffer.
    pub fn record(&self, mut scrape: Scrape) {
        let ts = crate::engine::now_ms() as i64;
        scrape.remote_write = Some(self.figures());
        let body = proto::body(&proto::write_request(&families(&scrape), ts));
        let dropped = self.shared.buffer.lock().push(ts, Bytes::from(body));
        if let Some(d) = dropped {
            let mut overflowing = self.shared.overflowing.lock();
            if !*overflowing {
                *overflowing = true;
                tracing::warn!(
                    url = %self.shared.target.url,
                    dropped_sampled_at_ms = d.timestamp_ms,
                    "remote-write buffer full ({} batches, {} of figures): its oldest batches are dropped until the endpoint takes them again (murmuration_remote_write_dropped_batches_total counts them)",
                    self.shared.target.capacity,
                    humantime::format_duration(BUFFER_WINDOW),
                );
            }
        }
        self.shared.added.notify_one();
    }

    /// Ends the push: stops sampling, records `last` (the final figures) if given, and
    /// waits until every batch is delivered, at most [`FLUSH_LIMIT`]. Returns the batches
    /// left undelivered.
    pub async fn finish(&self, last: Option<Scrape>) -> usize {
        if let Some(s) = self.shared.sampler.lock().take() {
            s.abort();
        }
        if let Some(scrape) = last {
            self.record(scrape);
        }
        let deadline = tokio::time::Instant::now() + FLUSH_LIMIT;
        let left = loop {
            let removed = self.shared.removed.notified();
            let left = self.shared.buffer.lock().len();
            if left == 0 || tokio::time::timeout_at(deadline, removed).await.is_err() {
                break self.shared.buffer.lock().len();
            }
        };
        if let Some(s) = self.shared.sender.lock().take() {
            s.abort();
        }
        let figures = self.figures();
        if left > 0 {
            tracing::warn!(
                url = %self.shared.target.url,
                left,
                "remote-write: {left} batches not delivered within {} at the end of the test",
                humantime::format_duration(FLUSH_LIMIT)
            );
        } else {
            tracing::info!(
                delivered = self.shared.buffer.lock().delivered(),
                dropped = figures.dropped_full,
                refused = figures.refused,
                "remote-write flushed"
            );
        }
        left
    }
}

/// Posts the oldest batch until none is left; retries with a backoff while the endpoint
/// cannot take it.
async fn send_loop(shared: Arc<Shared>) {
    let client = ClientConfig::new(false, false);
    let mut conns = Connections::default();
    let mut backoff = MIN_BACKOFF;
    let mut failing = false;
    loop {
        let oldest = shared.buffer.lock().oldest().cloned();
        let Some(batch) = oldest else {
            shared.added.notified().await;
            continue;
        };
        match post(&shared.target, &client, &mut conns, batch.body.clone()).await {
            Pushed::Delivered => {
                shared.buffer.lock().sent(batch.seq);
                *shared.overflowing.lock() = false;
                backoff = MIN_BACKOFF;
                if std::mem::take(&mut failing) {
                    tracing::info!(url = %shared.target.url, pending = shared.buffer.lock().len(), "remote-write delivers again");
                }
            }
            Pushed::Refused(why) => {
                shared.buffer.lock().refused(batch.seq);
                tracing::warn!(url = %shared.target.url, "remote-write batch refused, dropped: {why}");
            }
            Pushed::Retry(why) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(
                        url = %shared.target.url,
                        "remote-write fails ({why}): batches wait (up to {}) and are retried",
                        humantime::format_duration(BUFFER_WINDOW)
                    );
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        shared.removed.notify_waiters();
    }
}

/// One POST of a batch.
async fn post(
    target: &Target,
    client: &ClientConfig,
    conns: &mut Connections,
    body: Bytes,
) -> Pushed {
    let head = RequestHead {
        method: &Method::POST,
        uri: &target.path,
        host: &target.host,
        headers: &target.headers,
        encoded: None,
    };
    let answer = conns
        .send_within(
            client,
            &target.origin,
            head,
            body,
            true,
            std::time::Instant::now(),
            SEND_TIMEOUT,
        )
        .await;
    match answer {
        Err(e) => {
            conns.discard(&target.origin);
            Pushed::Retry(e.message)
        }
        Ok(a) if a.status.is_success() => Pushed::Delivered,
        Ok(a) => {
            let text = String::from_utf8_lossy(&a.body);
            let text: String = text.trim().chars().take(200).collect();
            let why = format!("{}: {text}", a.status);
            if a.status == http::StatusCode::TOO_MANY_REQUESTS || a.status.is_server_error() {
                Pushed::Retry(why)
            } else {
                Pushed::Refused(why)
            }
        }
    }
}
