//! The declarative `http` scenario: steps written in the manifest (request, think, throttle,
//! coordinate, loop) compiled once into a plan that every user runs with its own
//! connections.
//!
//! A failed request is counted (by step and kind) and the user goes on with the next step,
//! as a browser user would; only a failed connection ends the iteration early, since the
//! rest of the journey cannot happen without one.

use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use murmuration_crds::loadtest::{self as spec, HttpVersion};
use murmuration_crds::units::parse_duration;
use rand::Rng;
use serde_json_path::JsonPath;

use crate::client::{
    with_timeout, Answer, ClientConfig, ClientError, Connections, Origin, RequestHead,
};
use crate::field::FieldError;
use crate::metrics::{ErrorKind, StepId};
use crate::scenario::{InitContext, Scenario, ScenarioError, User};
use crate::template::{JsonTemplate, Template};
use crate::throttle::Permit;

/// Default time limit of one request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Pause after a failed connection before the user goes on, so that a target that is down
/// is not hammered in a tight loop (the failure is counted all the same).
const CONNECT_BACKOFF: Duration = Duration::from_millis(100);

/// A compiled HTTP scenario.
#[derive(Debug, Clone)]
pub struct HttpScenario {
    base_url: Option<Template>,
    client: ClientSettings,
    timeout: Duration,
    steps: Vec<Step>,
    requests: usize,
}

#[derive(Debug, Clone, Copy)]
struct ClientSettings {
    http2: bool,
    insecure: bool,
}

#[derive(Debug, Clone)]
enum Step {
    Request(Box<Request>),
    Think { min: Duration, max: Duration },
    Throttle(String),
    Coordinate(String),
    Loop { times: u64, steps: Vec<Step> },
}

#[derive(Debug, Clone)]
struct Request {
    /// Index among the scenario's requests (for its [`StepId`]).
    index: usize,
    name: String,
    method: http::Method,
    target: Target,
    headers: Vec<(HeaderName, Template)>,
    body: Body,
    expect_status: Option<u16>,
    body_contains: Option<String>,
    extract: Vec<(String, JsonPath)>,
}

#[derive(Debug, Clone)]
enum Target {
    /// Known at compile time: nothing to render per request.
    Static {
        origin: Origin,
        /// What goes on the request line: the path for HTTP/1, the full URI for HTTP/2.
        uri: http::Uri,
        host: HeaderValue,
    },
    /// Rendered per request: an absolute URL, or a path appended to the base URL.
    Url(Template),
    Path(Template),
}

#[derive(Debug, Clone)]
enum Body {
    None,
    Static(Bytes),
    Text(Template),
    Json(JsonTemplate),
}

impl HttpScenario {
    /// Compiles the manifest's scenario; `at` is the field path for messages
    /// (`spec.scenario.http`). Every error names the field and the reason.
    pub fn compile(s: &spec::HttpScenario, at: &str) -> Result<HttpScenario, FieldError> {
        let base_url = s
            .base_url
            .as_deref()
            .map(|b| {
                let t =
                    Template::parse(b).map_err(|e| FieldError::new(format!("{at}.baseUrl"), e))?;
                if t.is_static() {
                    absolute(b).map_err(|e| FieldError::new(format!("{at}.baseUrl"), e))?;
                }
                Ok(t)
            })
            .transpose()?;
        let timeout = match &s.timeout {
            Some(t) => {
                parse_duration(t).map_err(|e| FieldError::new(format!("{at}.timeout"), e))?
            }
            None => DEFAULT_TIMEOUT,
        };
        if timeout.is_zero() {
            return Err(FieldError::new(
                format!("{at}.timeout"),
                "must be longer than zero",
            ));
        }
        let http2 = s.version == Some(HttpVersion::Http2);
        let mut common = Vec::new();
        for (k, v) in &s.headers {
            common.push(header(k, v, &format!("{at}.headers.{k}"))?);
        }
        if s.steps.is_empty() {
            return Err(FieldError::new(
                format!("{at}.steps"),
                "needs at least one step",
            ));
        }
        let mut c = Compiler {
            base_static: base_url
                .as_ref()
                .filter(|t| t.is_static())
                .map(|t| t.source().to_owned()),
            has_base: base_url.is_some(),
            http2,
            common,
            requests: 0,
        };
        let steps = s
            .steps
            .iter()
            .enumerate()
            .map(|(i, step)| c.step(step, &format!("{at}.steps[{i}]"), true))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(HttpScenario {
            base_url,
            client: ClientSettings {
                http2,
                insecure: s.insecure_skip_verify,
            },
            timeout,
            steps,
            requests: c.requests,
        })
    }

    /// Names of the throttles its steps wait for.
    pub fn throttles(&self) -> Vec<String> {
        let mut v = Vec::new();
        walk(&self.steps, &mut |s| {
            if let Step::Throttle(n) = s {
                v.push(n.clone())
            }
        });
        v
    }

    /// Names of the coordinators its steps join.
    pub fn coordinators(&self) -> Vec<String> {
        let mut v = Vec::new();
        walk(&self.steps, &mut |s| {
            if let Step::Coordinate(n) = s {
                v.push(n.clone())
            }
        });
        v
    }

    /// Names of its requests (its measured steps), in order.
    pub fn step_names(&self) -> Vec<String> {
        let mut v = vec![String::new(); self.requests];
        walk(&self.steps, &mut |s| {
            if let Step::Request(r) = s {
                v[r.index] = r.name.clone()
            }
        });
        v.dedup();
        v
    }

    /// Variables (`vars.NAME`) its templates use.
    pub fn vars_used(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        let mut add = |t: &Template| v.extend(t.vars().map(str::to_owned));
        if let Some(b) = &self.base_url {
            add(b);
        }
        walk(&self.steps, &mut |s| {
            if let Step::Request(r) = s {
                match &r.target {
                    Target::Url(t) | Target::Path(t) => add(t),
                    Target::Static { .. } => {}
                }
                r.headers.iter().for_each(|(_, t)| add(t));
                match &r.body {
                    Body::Text(t) => add(t),
                    Body::Json(j) => j.templates().into_iter().for_each(&mut add),
                    _ => {}
                }
            }
        });
        v.sort();
        v.dedup();
        v
    }
}

fn walk<'a>(steps: &'a [Step], f: &mut dyn FnMut(&'a Step)) {
    for s in steps {
        f(s);
        if let Step::Loop { steps, .. } = s {
            walk(steps, f);
        }
    }
}

struct Compiler {
    base_static: Option<String>,
    has_base: bool,
    http2: bool,
    common: Vec<(HeaderName, Template)>,
    requests: usize,
}

impl Compiler {
    fn step(&mut self, s: &spec::Step, at: &str, top: bool) -> Result<Step, FieldError> {
        let set = [
            s.request.is_some(),
            s.think.is_some(),
            s.throttle.is_some(),
            s.coordinate.is_some(),
            s.loop_.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if set != 1 {
            return Err(FieldError::new(
                at,
                format!(
                    "a step needs exactly one of request, think, throttle, coordinate{} (found {set})",
                    if top { ", loop" } else { "" }
                ),
            ));
        }
        if let Some(r) = &s.request {
            return Ok(Step::Request(Box::new(
                self.request(r, &format!("{at}.request"))?,
            )));
        }
        if let Some(t) = &s.think {
            return think(t, &format!("{at}.think"));
        }
        if let Some(name) = &s.throttle {
            if name.trim().is_empty() {
                return Err(FieldError::new(
                    format!("{at}.throttle"),
                    "names no throttle",
                ));
            }
            return Ok(Step::Throttle(name.clone()));
        }
        if let Some(name) = &s.coordinate {
            if name.trim().is_empty() {
                return Err(FieldError::new(
                    format!("{at}.coordinate"),
                    "names no coordinator",
                ));
            }
            return Ok(Step::Coordinate(name.clone()));
        }
        let l = s.loop_.as_ref().expect("counted above");
        if !top {
            return Err(FieldError::new(
                format!("{at}.loop"),
                "a loop cannot be inside a loop",
            ));
        }
        if l.times < 1 {
            return Err(FieldError::new(
                format!("{at}.loop.times"),
                "must be at least 1",
            ));
        }
        if l.steps.is_empty() {
            return Err(FieldError::new(
                format!("{at}.loop.steps"),
                "needs at least one step",
            ));
        }
        let steps = l
            .steps
            .iter()
            .enumerate()
            .map(|(i, inner)| {
                self.step(
                    &spec::Step::from(inner.clone()),
                    &format!("{at}.loop.steps[{i}]"),
                    false,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Step::Loop {
            times: l.times as u64,
            steps,
        })
    }

    fn request(&mut self, r: &spec::Request, at: &str) -> Result<Request, FieldError> {
        let method = match r.method {
            Some(m) => http::Method::from_str(&format!("{m:?}")).expect("enum names are methods"),
            None => http::Method::GET,
        };
        let target = match (&r.url, &r.path) {
            (Some(_), Some(_)) => {
                return Err(FieldError::new(at, "set either url or path, not both"))
            }
            (None, None) => return Err(FieldError::new(at, "needs a url or a path")),
            (Some(url), None) => {
                let t =
                    Template::parse(url).map_err(|e| FieldError::new(format!("{at}.url"), e))?;
                if t.is_static() {
                    self.static_target(url)
                        .map_err(|e| FieldError::new(format!("{at}.url"), e))?
                } else {
                    Target::Url(t)
                }
            }
            (None, Some(path)) => {
                if !self.has_base {
                    return Err(FieldError::new(
                        format!("{at}.path"),
                        "a path needs the scenario's baseUrl (or use url)",
                    ));
                }
                let t =
                    Template::parse(path).map_err(|e| FieldError::new(format!("{at}.path"), e))?;
                match (&self.base_static, t.is_static()) {
                    (Some(base), true) => {
                        let url = join(base, path);
                        self.static_target(&url)
                            .map_err(|e| FieldError::new(format!("{at}.path"), e))?
                    }
                    _ => Target::Path(t),
                }
            }
        };
        let name = r.name.clone().unwrap_or_else(|| {
            format!(
                "{method} {}",
                r.path.as_deref().or(r.url.as_deref()).unwrap_or("")
            )
        });
        let mut headers = self.common.clone();
        for (k, v) in &r.headers {
            let h = header(k, v, &format!("{at}.headers.{k}"))?;
            headers.retain(|(n, _)| *n != h.0);
            headers.push(h);
        }
        let body = match (&r.body, &r.json) {
            (Some(_), Some(_)) => {
                return Err(FieldError::new(at, "set either body or json, not both"))
            }
            (Some(b), None) => {
                let t = Template::parse(b).map_err(|e| FieldError::new(format!("{at}.body"), e))?;
                if t.is_static() {
                    Body::Static(Bytes::from(b.clone()))
                } else {
                    Body::Text(t)
                }
            }
            (None, Some(j)) => {
                if !headers.iter().any(|(n, _)| *n == CONTENT_TYPE) {
                    headers.push((
                        CONTENT_TYPE,
                        Template::parse("application/json").expect("static"),
                    ));
                }
                let t =
                    JsonTemplate::parse(j).map_err(|e| FieldError::new(format!("{at}.json"), e))?;
                match t {
                    JsonTemplate::Fixed(v) => Body::Static(Bytes::from(v.to_string())),
                    t => Body::Json(t),
                }
            }
            (None, None) => Body::None,
        };
        let (expect_status, body_contains) = match &r.expect {
            Some(e) => {
                if let Some(s) = e.status {
                    if !(100..=599).contains(&s) {
                        return Err(FieldError::new(
                            format!("{at}.expect.status"),
                            "must be between 100 and 599",
                        ));
                    }
                }
                (e.status, e.body_contains.clone())
            }
            None => (None, None),
        };
        let mut extract = Vec::new();
        for (var, path) in &r.extract {
            if var.is_empty() || var.starts_with("vars.") || var.starts_with("user.") {
                return Err(FieldError::new(
                    format!("{at}.extract.{var}"),
                    "the variable name cannot be empty or start with vars. or user.",
                ));
            }
            let p = JsonPath::parse(path).map_err(|e| {
                FieldError::new(
                    format!("{at}.extract.{var}"),
                    format!("{path:?} is not a JSONPath: {e}"),
                )
            })?;
            extract.push((var.clone(), p));
        }
        let index = self.requests;
        self.requests += 1;
        Ok(Request {
            index,
            name,
            method,
            target,
            headers,
            body,
            expect_status,
            body_contains,
            extract,
        })
    }

    fn static_target(&self, url: &str) -> Result<Target, String> {
        let (origin, uri) = absolute(url)?;
        let host = HeaderValue::from_str(origin.authority.as_str()).map_err(|e| e.to_string())?;
        let uri = if self.http2 { uri } else { path_of(&uri) };
        Ok(Target::Static { origin, uri, host })
    }
}

fn think(t: &spec::Think, at: &str) -> Result<Step, FieldError> {
    let d = |v: &Option<String>, f: &str| {
        v.as_deref()
            .map(parse_duration)
            .transpose()
            .map_err(|e| FieldError::new(format!("{at}.{f}"), e))
    };
    let (fixed, min, max) = (
        d(&t.duration, "duration")?,
        d(&t.min, "min")?,
        d(&t.max, "max")?,
    );
    match (fixed, min, max) {
        (Some(f), None, None) => Ok(Step::Think { min: f, max: f }),
        (None, Some(min), Some(max)) if min <= max => Ok(Step::Think { min, max }),
        (None, Some(_), Some(_)) => Err(FieldError::new(
            format!("{at}.min"),
            "must not be longer than max",
        )),
        (None, Some(min), None) => Ok(Step::Think { min, max: min }),
        _ => Err(FieldError::new(at, "set duration, or min and max")),
    }
}

fn header(name: &str, value: &str, at: &str) -> Result<(HeaderName, Template), FieldError> {
    let n = HeaderName::from_str(name)
        .map_err(|_| FieldError::new(at, format!("{name:?} is not a header name")))?;
    let t = Template::parse(value).map_err(|e| FieldError::new(at, e))?;
    if t.is_static() {
        HeaderValue::from_str(value)
            .map_err(|_| FieldError::new(at, "is not a valid header value"))?;
    }
    Ok((n, t))
}

/// Joins a base URL and a path with exactly one `/` between them.
fn join(base: &str, path: &str) -> String {
    match (base.ends_with('/'), path.starts_with('/')) {
        (true, true) => format!("{}{}", base, &path[1..]),
        (false, false) if !path.is_empty() => format!("{base}/{path}"),
        _ => format!("{base}{path}"),
    }
}

fn absolute(url: &str) -> Result<(Origin, http::Uri), String> {
    let uri = http::Uri::from_str(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let origin = Origin::of(&uri).map_err(|e| format!("{url:?}: {e}"))?;
    Ok((origin, uri))
}

fn path_of(uri: &http::Uri) -> http::Uri {
    uri.path_and_query()
        .map(|p| http::Uri::from_str(p.as_str()).expect("a path is a URI"))
        .unwrap_or_else(|| http::Uri::from_static("/"))
}

/// What a user of the http scenario keeps between iterations: its connections.
#[derive(Default)]
struct UserState {
    conns: Connections,
    permit: Option<Permit>,
}

/// The http scenario bound to a test: step ids interned and the client configured.
pub struct HttpState {
    steps: Vec<StepId>,
    client: ClientConfig,
}

impl Scenario for HttpScenario {
    type State = HttpState;

    async fn init(&self, ctx: &InitContext) -> Result<HttpState, ScenarioError> {
        let mut steps = vec![StepId(0); self.requests];
        walk(&self.steps, &mut |s| {
            if let Step::Request(r) = s {
                steps[r.index] = ctx.step(&r.name)
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
            // a wait for a permit or a group) is allocated only while it runs.
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
            let result = exchange(sc, state, user, us, r).await;
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
        Step::Coordinate(name) => {
            let c = user
                .coordinate(name, serde_json::json!({"id": user.id()}))
                .await?;
            let ids: Vec<u64> = c.members.iter().map(|m| m.user).collect();
            let peers: Vec<u64> = c.peers.iter().map(|m| m.user).collect();
            user.locals.insert("group.size".into(), ids.len().into());
            user.locals.insert("group.ids".into(), ids.into());
            user.locals.insert(
                "group.peer".into(),
                peers
                    .first()
                    .copied()
                    .map(Into::into)
                    .unwrap_or(serde_json::Value::Null),
            );
            user.locals.insert("group.peers".into(), peers.into());
            user.locals
                .insert("group.timedOut".into(), c.timed_out.into());
        }
        Step::Think { .. } | Step::Loop { .. } => unreachable!("run by run_steps"),
    }
    Ok(())
}

async fn exchange(
    sc: &HttpScenario,
    state: &HttpState,
    user: &mut User,
    us: &mut UserState,
    r: &Request,
) -> Result<(), ClientError> {
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
    };
    let keep_body = r.body_contains.is_some() || !r.extract.is_empty();
    // Pinned where it is: wrapping the (large) exchange in a timeout by value would copy it.
    let answer = {
        let send = us.conns.send(&state.client, origin, head, body, keep_body);
        tokio::pin!(send);
        with_timeout(sc.timeout, send).await
    };
    let Answer { status, body } = match answer {
        Ok(a) => a,
        Err(e) => {
            if e.kind == ErrorKind::Timeout {
                us.conns.discard(origin);
            }
            return Err(e);
        }
    };
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

    fn compile(yaml: &str) -> Result<HttpScenario, FieldError> {
        let s: spec::HttpScenario = serde_yaml::from_str(yaml).unwrap();
        HttpScenario::compile(&s, "spec.scenario.http")
    }

    #[test]
    fn compiles_the_design_example() {
        let s = compile(
            r#"
baseUrl: "{{vars.base_url}}"
steps:
  - request: {name: home, method: GET, path: /, expect: {status: 200}}
  - think: {min: 500ms, max: 1500ms}
  - throttle: checkout-rate
  - request: {name: buy, method: POST, path: /cart, json: {user: "{{user.id}}"}, extract: {order: "$.id"}}
  - coordinate: pairs
"#,
        )
        .unwrap();
        assert_eq!(s.step_names(), ["home", "buy"]);
        assert_eq!(s.throttles(), ["checkout-rate"]);
        assert_eq!(s.coordinators(), ["pairs"]);
        assert_eq!(s.vars_used(), ["base_url"]);
    }

    #[test]
    fn static_urls_are_resolved_once() {
        let s = compile("baseUrl: http://127.0.0.1:8080/api\nsteps: [{request: {path: /items}}]")
            .unwrap();
        match &s.steps[0] {
            Step::Request(r) => match &r.target {
                Target::Static { uri, host, .. } => {
                    assert_eq!(uri, "/api/items");
                    assert_eq!(host, "127.0.0.1:8080");
                }
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("steps: []", "spec.scenario.http.steps", "at least one step"),
            (
                "steps: [{}]",
                "spec.scenario.http.steps[0]",
                "exactly one of",
            ),
            (
                "steps: [{request: {path: /}}]",
                "spec.scenario.http.steps[0].request.path",
                "baseUrl",
            ),
            (
                "steps: [{request: {url: 'ftp://x/'}}]",
                "spec.scenario.http.steps[0].request.url",
                "not http or https",
            ),
            (
                "baseUrl: http://x\nsteps: [{think: {min: 2s, max: 1s}}]",
                "spec.scenario.http.steps[0].think.min",
                "max",
            ),
            (
                "baseUrl: http://x\nsteps: [{throttle: ''}]",
                "spec.scenario.http.steps[0].throttle",
                "names no throttle",
            ),
            (
                "baseUrl: http://x\nsteps: [{request: {path: '/{{user.id'}}]",
                "spec.scenario.http.steps[0].request.path",
                "not closed",
            ),
            (
                "baseUrl: http://x\nsteps: [{request: {path: /, extract: {o: 'id'}}}]",
                "spec.scenario.http.steps[0].request.extract.o",
                "JSONPath",
            ),
            (
                "baseUrl: http://x\nsteps: [{loop: {times: 2, steps: []}}]",
                "spec.scenario.http.steps[0].loop.steps",
                "at least one",
            ),
            (
                "baseUrl: http://x\ntimeout: 0s\nsteps: [{think: {duration: 1s}}]",
                "spec.scenario.http.timeout",
                "longer than zero",
            ),
        ];
        for (yaml, field, reason) in cases {
            let e = compile(yaml).unwrap_err();
            assert_eq!(e.field, field, "{yaml}: {e}");
            assert!(e.reason.contains(reason), "{yaml}: {e}");
        }
    }

    #[test]
    fn joins_paths() {
        assert_eq!(join("http://a/", "/b"), "http://a/b");
        assert_eq!(join("http://a", "b"), "http://a/b");
        assert_eq!(join("http://a", "/b"), "http://a/b");
        assert_eq!(join("http://a/", "?q"), "http://a/?q");
    }
}
