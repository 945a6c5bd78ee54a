//! The declarative `http` scenario run: the steps the model compiled
//! ([`murmuration_model::http`]: request, think, throttle, coordinate, loop), run by every
//! user with its own connections.
//!
//! A failed request is counted (by step and kind) and the user goes on with the next step,
//! as a browser user would; only a failed connection ends the iteration early, since the
//! rest of the journey cannot happen without one.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HeaderValue;
use murmuration_model::http::{absolute, join, path_of, walk, Body, Request, Step, Target};
use rand::Rng;

pub use murmuration_model::http::{HttpScenario, DEFAULT_TIMEOUT};

use crate::client::{
    encode_request, Answer, ClientConfig, ClientError, Connections, Origin, RequestHead,
};
use crate::metrics::{ErrorKind, StepId};
use crate::scenario::{InitContext, Scenario, ScenarioError, User};
use crate::throttle::Permit;

/// Pause after a failed connection before the user goes on, so that a target that is down
/// is not hammered in a tight loop (the failure is counted all the same).
const CONNECT_BACKOFF: Duration = Duration::from_millis(100);

/// What a user of the http scenario keeps between iterations: its connections.
#[derive(Default)]
struct UserState {
    conns: Connections,
    permit: Option<Permit>,
}

/// The http scenario bound to a test: step ids interned and the client configured.
pub struct HttpState {
    steps: Vec<StepId>,
    /// By request index: the whole HTTP/1.1 request of a step with nothing to render.
    encoded: Vec<Option<Bytes>>,
    client: ClientConfig,
}

impl Scenario for HttpScenario {
    type State = HttpState;

    async fn init(&self, ctx: &InitContext) -> Result<HttpState, ScenarioError> {
        let mut steps = vec![StepId(0); self.requests];
        let mut encoded = vec![None; self.requests];
        walk(&self.steps, &mut |s| {
            if let Step::Request(r) = s {
                steps[r.index] = ctx.step(&r.name);
                if !self.client.http2 {
                    encoded[r.index] = encode_static(r);
                }
            }
        });
        for name in self.throttles() {
            if ctx.env.throttles.get(&name).is_none() {
                return Err(ScenarioError::Unknown(format!(
                    "a throttle step names {name:?}, which is not defined"
                )));
            }
        }
        Ok(HttpState {
            steps,
            encoded,
            client: ClientConfig::new(self.client.http2, self.client.insecure),
        })
    }

    // Not an `async fn`, which would store its arguments twice (rust-lang/rust#62958):
    // this future is part of every user's memory.
    #[allow(clippy::manual_async_fn)]
    fn start(
        &self,
        user: &mut User,
        state: &HttpState,
    ) -> impl std::future::Future<Output = Result<(), ScenarioError>> + Send {
        async move {
            // Connections live as long as the user, across iterations; a user that has
            // not made a request yet has none and costs nothing for them.
            let mut us = user.take_extension::<UserState>();
            let r = run_steps(self, state, user, &mut us, &self.steps).await;
            if let Some(us) = us {
                user.put_extension(us);
            }
            r
        }
    }
}

async fn run_steps(
    sc: &HttpScenario,
    state: &HttpState,
    user: &mut User,
    us: &mut Option<Box<UserState>>,
    steps: &[Step],
) -> Result<(), ScenarioError> {
    for step in steps {
        match step {
            // Inline, because a user spends most of its life here: its future is just this
            // timer. Every other step runs boxed, so that its state (a request in flight,
            // a wait for a permit or a group) is allocated only while it runs. A request
            // step's future is kept under 1 KiB (what it rarely needs, a new connection or a
            // rendered target, is boxed inside), so that the allocator serves it from its
            // per-thread cache.
            Step::Think { min, max } => {
                let d = if min == max {
                    *min
                } else {
                    let (a, b) = (min.as_micros() as u64, max.as_micros() as u64);
                    Duration::from_micros(user.rng().random_range(a..=b))
                };
                tokio::time::sleep(d).await;
            }
            Step::Loop { times, steps } => {
                for _ in 0..*times {
                    Box::pin(run_steps(sc, state, user, us, steps)).await?;
                }
            }
            other => Box::pin(run_step(sc, state, user, us, other)).await?,
        }
    }
    Ok(())
}

async fn run_step(
    sc: &HttpScenario,
    state: &HttpState,
    user: &mut User,
    us: &mut Option<Box<UserState>>,
    step: &Step,
) -> Result<(), ScenarioError> {
    match step {
        Step::Request(r) => {
            let id = state.steps[r.index];
            let started = user.now();
            let us = us.get_or_insert_with(Box::default);
            let result = exchange(sc, state, user, us, r, started).await;
            us.permit = None;
            match result {
                Ok(()) => user.record(id, started, None),
                Err(e) => {
                    user.record(id, started, Some(e.kind));
                    tracing::trace!(user = user.id(), step = %r.name, kind = ?e.kind, "{}", e.message);
                    if e.kind == ErrorKind::Connect {
                        tokio::time::sleep(CONNECT_BACKOFF).await;
                        return Err(ScenarioError::User {
                            kind: e.kind,
                            message: e.message,
                        });
                    }
                }
            }
        }
        Step::Throttle(name) => {
            let permit = user.throttle(name).await?;
            us.get_or_insert_with(Box::default).permit = Some(permit);
        }
        Step::Coordinate(name) => user.coordinate_into_locals(name).await?,
        Step::Think { .. } | Step::Loop { .. } => unreachable!("run by run_steps"),
    }
    Ok(())
}

/// The whole HTTP/1.1 request of a step whose target, headers and body are all known before
/// any user runs; `None` when something in it is rendered per user (or a header would not
/// be valid, which the per-request path reports).
fn encode_static(r: &Request) -> Option<Bytes> {
    let Target::Static { uri, host, .. } = &r.target else {
        return None;
    };
    let mut headers = Vec::with_capacity(r.headers.len());
    for (name, value) in &r.headers {
        if !value.is_static() {
            return None;
        }
        headers.push((name.clone(), HeaderValue::from_str(value.source()).ok()?));
    }
    let body = match &r.body {
        Body::None => Bytes::new(),
        Body::Static(b) => b.clone(),
        Body::Text(_) | Body::Json(_) => return None,
    };
    let head = RequestHead {
        method: &r.method,
        uri,
        host,
        headers: &headers,
        encoded: None,
    };
    Some(encode_request(&head, &body))
}

/// One request step's exchange and the checks on its answer.
async fn exchange(
    sc: &HttpScenario,
    state: &HttpState,
    user: &mut User,
    us: &mut UserState,
    r: &Request,
    started: Instant,
) -> Result<(), ClientError> {
    let keep_body = r.body_contains.is_some() || !r.extract.is_empty();
    let answer = match (&state.encoded[r.index], &r.target) {
        // Nothing to render: the request goes as it was encoded at init.
        (Some(encoded), Target::Static { origin, uri, host }) => {
            let head = RequestHead {
                method: &r.method,
                uri,
                host,
                headers: &[],
                encoded: Some(encoded),
            };
            let send = us.conns.send_within(
                &state.client,
                origin,
                head,
                Bytes::new(),
                keep_body,
                started,
                sc.timeout,
            );
            send.await?
        }
        // Boxed: the rendered target and headers would otherwise make every request
        // step's future larger (it is allocated per request step; see `run_steps`).
        _ => Box::pin(send_rendered(sc, state, user, us, r, keep_body, started)).await?,
    };
    check(user, r, answer)
}

/// Renders a request's templated parts (target, headers, body) and sends it.
async fn send_rendered(
    sc: &HttpScenario,
    state: &HttpState,
    user: &mut User,
    us: &mut UserState,
    r: &Request,
    keep_body: bool,
    started: Instant,
) -> Result<Answer, ClientError> {
    // A static target is used as compiled; only a templated one is built per request.
    let dynamic;
    let (origin, uri, host) = match &r.target {
        Target::Static { origin, uri, host } => (origin, uri, host),
        Target::Url(t) => {
            dynamic = dynamic_target(&t.render(user), sc.client.http2)?;
            (&dynamic.0, &dynamic.1, &dynamic.2)
        }
        Target::Path(t) => {
            let base = sc
                .base_url
                .as_ref()
                .map(|b| b.render(user))
                .unwrap_or_default();
            dynamic = dynamic_target(&join(&base, &t.render(user)), sc.client.http2)?;
            (&dynamic.0, &dynamic.1, &dynamic.2)
        }
    };
    // Empty (no allocation) when the step has no headers.
    let mut headers = Vec::with_capacity(r.headers.len());
    for (name, value) in &r.headers {
        let v = value.render(user);
        let v = HeaderValue::from_str(&v).map_err(|_| ClientError {
            kind: ErrorKind::Other,
            message: format!("header {name} rendered to an invalid value {v:?}"),
        })?;
        headers.push((name.clone(), v));
    }
    let body = match &r.body {
        Body::None => Bytes::new(),
        Body::Static(b) => b.clone(),
        Body::Text(t) => Bytes::from(t.render(user)),
        Body::Json(j) => Bytes::from(j.render(user).to_string()),
    };
    let head = RequestHead {
        method: &r.method,
        uri,
        host,
        headers: &headers,
        encoded: None,
    };
    us.conns
        .send_within(
            &state.client,
            origin,
            head,
            body,
            keep_body,
            started,
            sc.timeout,
        )
        .await
}

/// What the step expects of its answer (status, body text), and the values it extracts.
fn check(user: &mut User, r: &Request, answer: Answer) -> Result<(), ClientError> {
    let Answer { status, body } = answer;
    let status_ok = match r.expect_status {
        Some(s) => status.as_u16() == s,
        None => status.is_success() || status.is_redirection(),
    };
    if !status_ok {
        return Err(ClientError {
            kind: ErrorKind::Status,
            message: format!("status {status}"),
        });
    }
    if let Some(needle) = &r.body_contains {
        if !memchr_contains(&body, needle.as_bytes()) {
            return Err(ClientError {
                kind: ErrorKind::Check,
                message: format!("body does not contain {needle:?}"),
            });
        }
    }
    if !r.extract.is_empty() {
        let doc: serde_json::Value = serde_json::from_slice(&body).map_err(|e| ClientError {
            kind: ErrorKind::Extract,
            message: format!("answer is not JSON: {e}"),
        })?;
        for (var, path) in &r.extract {
            match path.query(&doc).first() {
                Some(v) => {
                    user.locals.insert(var.clone(), v.clone());
                }
                None => {
                    return Err(ClientError {
                        kind: ErrorKind::Extract,
                        message: format!("{} matched nothing for {var}", path),
                    })
                }
            }
        }
    }
    Ok(())
}

fn dynamic_target(url: &str, http2: bool) -> Result<(Origin, http::Uri, HeaderValue), ClientError> {
    let bad = |message: String| ClientError {
        kind: ErrorKind::Other,
        message,
    };
    let (origin, uri) = absolute(url).map_err(bad)?;
    let host = HeaderValue::from_str(origin.authority.as_str()).map_err(|e| bad(e.to_string()))?;
    let uri = if http2 { uri } else { path_of(&uri) };
    Ok((origin, uri, host))
}

fn memchr_contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_search_finds_a_needle_anywhere() {
        assert!(memchr_contains(b"{\"id\": 7}", b"\"id\""));
        assert!(memchr_contains(b"abc", b""));
        assert!(!memchr_contains(b"ab", b"abc"));
    }
}
