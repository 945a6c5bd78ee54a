//! The declarative `http` scenario compiled: steps written in the manifest (request, think,
//! throttle, coordinate, loop) checked once and turned into plain data that the engine
//! runs for every user with its own connections. Static URLs are resolved here, once.

use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::uri::{Authority, Scheme};
use murmuration_crds::loadtest::{self as spec, HttpVersion};
use murmuration_crds::units::parse_duration;
use serde_json_path::JsonPath;

use crate::error::FieldError;
use crate::template::{JsonTemplate, Template};

/// Default time limit of one request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a connection goes: scheme, host and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `http` or `https`.
    pub tls: bool,
    /// Host and port as in the URL.
    pub authority: Authority,
}

impl Origin {
    /// The origin of an absolute URI, or why it has none.
    pub fn of(uri: &http::Uri) -> Result<Origin, String> {
        let tls = match uri.scheme() {
            Some(s) if *s == Scheme::HTTPS => true,
            Some(s) if *s == Scheme::HTTP => false,
            Some(s) => return Err(format!("scheme {s} is not http or https")),
            None => return Err("the URL has no scheme (http:// or https://)".into()),
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| "the URL has no host".to_string())?;
        Ok(Origin { tls, authority })
    }

    /// The port, explicit or the scheme's.
    pub fn port(&self) -> u16 {
        self.authority
            .port_u16()
            .unwrap_or(if self.tls { 443 } else { 80 })
    }
}

/// A compiled HTTP scenario.
#[derive(Debug, Clone)]
pub struct HttpScenario {
    /// `baseUrl`, which paths are appended to.
    pub base_url: Option<Template>,
    /// How users connect.
    pub client: ClientSettings,
    /// Time limit of one request.
    pub timeout: Duration,
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// How many requests (measured steps) there are; each has an `index` below this.
    pub requests: usize,
    /// The Throttles and Coordinators its steps name, with the field naming each.
    pub parts: Vec<PartRef>,
}

/// A Throttle or Coordinator named by a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartRef {
    /// The field (`spec.scenario.http.steps[2].throttle`).
    pub field: String,
    /// `Throttle` or `Coordinator`.
    pub kind: &'static str,
    /// The name.
    pub name: String,
}

impl PartRef {
    /// The Throttle (`kind` "Throttle", field `throttle`) or Coordinator ("Coordinator",
    /// `coordinate`) that the step at `at` names, checked to name one; the same rule for
    /// http and websocket steps. Whether it exists is checked once the documents are read
    /// (`check_parts`).
    pub fn named(at: &str, kind: &'static str, name: &str) -> Result<PartRef, FieldError> {
        let (field, what) = match kind {
            "Throttle" => ("throttle", "throttle"),
            _ => ("coordinate", "coordinator"),
        };
        let field = format!("{at}.{field}");
        if name.trim().is_empty() {
            return Err(FieldError::new(field, format!("names no {what}")));
        }
        Ok(PartRef {
            field,
            kind,
            name: name.to_string(),
        })
    }
}

/// How users connect.
#[derive(Debug, Clone, Copy)]
pub struct ClientSettings {
    /// Speak HTTP/2 instead of HTTP/1.1.
    pub http2: bool,
    /// Accept any TLS certificate (`insecureSkipVerify`).
    pub insecure: bool,
}

/// One step of the scenario.
#[derive(Debug, Clone)]
pub enum Step {
    /// A measured request.
    Request(Box<Request>),
    /// A pause, drawn uniformly from `min..=max`.
    Think {
        /// Shortest pause.
        min: Duration,
        /// Longest pause.
        max: Duration,
    },
    /// Wait for a permit of the named Throttle.
    Throttle(String),
    /// Join the named Coordinator and wait for the group.
    Coordinate(String),
    /// Run `steps` `times` times.
    Loop {
        /// How many times.
        times: u64,
        /// The steps of one round (no loops inside).
        steps: Vec<Step>,
    },
}

/// A compiled request.
#[derive(Debug, Clone)]
pub struct Request {
    /// Index among the scenario's requests (its metrics slot).
    pub index: usize,
    /// The step's name in reports.
    pub name: String,
    /// The method.
    pub method: http::Method,
    /// Where it goes.
    pub target: Target,
    /// Headers, the scenario's common ones included.
    pub headers: Vec<(HeaderName, Template)>,
    /// The body.
    pub body: Body,
    /// The status expected (`None`: any 2xx or 3xx).
    pub expect_status: Option<u16>,
    /// Text the answer's body must contain.
    pub body_contains: Option<String>,
    /// Values to take from the JSON answer: (user value name, path).
    pub extract: Vec<(String, JsonPath)>,
}

/// Where a request goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// Known at compile time: nothing to render per request.
    Static {
        /// Scheme, host and port.
        origin: Origin,
        /// What goes on the request line: the path for HTTP/1, the full URI for HTTP/2.
        uri: http::Uri,
        /// The `Host` header.
        host: HeaderValue,
    },
    /// Rendered per request: an absolute URL.
    Url(Template),
    /// Rendered per request: a path appended to the base URL.
    Path(Template),
}

/// A request's body.
#[derive(Debug, Clone)]
pub enum Body {
    /// None.
    None,
    /// Known at compile time.
    Static(Bytes),
    /// A text template.
    Text(Template),
    /// A JSON template.
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
            parts: Vec::new(),
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
            parts: c.parts,
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

/// Calls `f` on every step, those inside loops included.
pub fn walk<'a>(steps: &'a [Step], f: &mut dyn FnMut(&'a Step)) {
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
    parts: Vec<PartRef>,
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
            self.parts.push(PartRef::named(at, "Throttle", name)?);
            return Ok(Step::Throttle(name.clone()));
        }
        if let Some(name) = &s.coordinate {
            self.parts.push(PartRef::named(at, "Coordinator", name)?);
            return Ok(Step::Coordinate(name.clone()));
        }
        let l = s.loop_.as_ref().expect("counted above");
        check_loop(at, top, l.times, l.steps.len())?;
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
    let (min, max) = think_bounds(t, at)?;
    Ok(Step::Think { min, max })
}

/// The rules of a `loop` step, shared by the declarative scenarios: only at the top level,
/// at least one run and at least one step; `at` is the step's field path.
pub fn check_loop(at: &str, top: bool, times: i64, steps: usize) -> Result<(), FieldError> {
    if !top {
        return Err(FieldError::new(
            format!("{at}.loop"),
            "a loop cannot be inside a loop",
        ));
    }
    if times < 1 {
        return Err(FieldError::new(
            format!("{at}.loop.times"),
            "must be at least 1",
        ));
    }
    if steps == 0 {
        return Err(FieldError::new(
            format!("{at}.loop.steps"),
            "needs at least one step",
        ));
    }
    Ok(())
}

/// The shortest and longest pause of a `think` step (equal for a fixed pause); `at` is the
/// step's field path. Shared by the declarative scenarios.
pub fn think_bounds(t: &spec::Think, at: &str) -> Result<(Duration, Duration), FieldError> {
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
        (Some(f), None, None) => Ok((f, f)),
        (None, Some(min), Some(max)) if min <= max => Ok((min, max)),
        (None, Some(_), Some(_)) => Err(FieldError::new(
            format!("{at}.min"),
            "must not be longer than max",
        )),
        (None, Some(min), None) => Ok((min, min)),
        _ => Err(FieldError::new(at, "set duration, or min and max")),
    }
}

/// A header of the manifest: a valid name, and a template (checked as a value when it
/// holds no placeholder). Shared by the declarative scenarios.
pub fn header(name: &str, value: &str, at: &str) -> Result<(HeaderName, Template), FieldError> {
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
pub fn join(base: &str, path: &str) -> String {
    match (base.ends_with('/'), path.starts_with('/')) {
        (true, true) => format!("{}{}", base, &path[1..]),
        (false, false) if !path.is_empty() => format!("{base}/{path}"),
        _ => format!("{base}{path}"),
    }
}

/// The origin and URI of an absolute URL, or why it is not one.
pub fn absolute(url: &str) -> Result<(Origin, http::Uri), String> {
    let uri = http::Uri::from_str(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let origin = Origin::of(&uri).map_err(|e| format!("{url:?}: {e}"))?;
    Ok((origin, uri))
}

/// The path and query of a URI (what HTTP/1 puts on the request line).
pub fn path_of(uri: &http::Uri) -> http::Uri {
    uri.path_and_query()
        .map(|p| http::Uri::from_str(p.as_str()).expect("a path is a URI"))
        .unwrap_or_else(|| http::Uri::from_static("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(yaml: &str) -> Result<HttpScenario, FieldError> {
        let s: spec::HttpScenario = serde_saphyr::from_str(yaml).unwrap();
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
