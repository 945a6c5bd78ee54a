//! The `websocket` scenario compiled: the manifest's steps checked once (every error names
//! its field) and turned into a plan that every user runs (the agent's
//! `scenario::websocket` runs it).

use std::str::FromStr;
use std::time::Duration;

use http::header::HeaderName;
use murmuration_crds::loadtest::Think;
use murmuration_crds::units::parse_duration;
use murmuration_crds::websocket as spec;
use serde_json_path::JsonPath;

use crate::error::FieldError;
use crate::http::{check_loop, header, think_bounds, PartRef};
use crate::template::{JsonTemplate, Template};

/// Default time limit of a connect and of a receive.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A compiled WebSocket scenario.
#[derive(Debug, Clone)]
pub struct WebSocketPlan {
    /// Accept any TLS certificate.
    pub insecure: bool,
    /// Time limit of a connect.
    pub timeout: Duration,
    /// The steps, in order.
    pub steps: Vec<WsStep>,
    /// The Throttles and Coordinators its steps name, with the field naming each.
    pub parts: Vec<PartRef>,
    /// Names of the measured steps; a step's `index` points here (steps of the same name
    /// share a row of the report).
    pub names: Vec<String>,
}

/// One compiled step.
#[derive(Debug, Clone)]
pub enum WsStep {
    /// Open the connection (or keep the one still open).
    Connect(Box<ConnectStep>),
    /// Send a message.
    Send(Box<SendStep>),
    /// Wait for a matching message.
    Receive(Box<ReceiveStep>),
    /// Close the connection.
    Close {
        /// Measured step.
        index: usize,
    },
    /// Pause between `min` and `max`.
    Think {
        /// Shortest pause.
        min: Duration,
        /// Longest pause.
        max: Duration,
    },
    /// Wait for a permit of the named Throttle.
    Throttle(String),
    /// Join the named Coordinator.
    Coordinate(String),
    /// Run inner steps `times` times.
    Loop {
        /// How many times.
        times: u64,
        /// The inner steps.
        steps: Vec<WsStep>,
    },
}

/// A compiled `connect`.
#[derive(Debug, Clone)]
pub struct ConnectStep {
    /// Measured step.
    pub index: usize,
    /// The `ws://` or `wss://` URL.
    pub url: Template,
    /// Extra handshake headers.
    pub headers: Vec<(HeaderName, Template)>,
    /// Subprotocols offered.
    pub subprotocols: Vec<String>,
    /// Field path of its URL, for messages.
    pub field: String,
}

/// What a `send` sends.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// Text, templated.
    Text(Template),
    /// JSON, sent as text.
    Json(JsonTemplate),
}

/// A compiled `send`.
#[derive(Debug, Clone)]
pub struct SendStep {
    /// Measured step (and what a receive's `after` refers to).
    pub index: usize,
    /// The message.
    pub message: Outgoing,
}

/// A compiled `receive`.
#[derive(Debug, Clone)]
pub struct ReceiveStep {
    /// Measured step.
    pub index: usize,
    /// The send step (its `index`) the latency is measured from.
    pub after: Option<usize>,
    /// Text the message must contain.
    pub body_contains: Option<Template>,
    /// A JSON field that must equal a value.
    pub json: Option<(JsonPath, JsonTemplate)>,
    /// How long to wait.
    pub timeout: Duration,
    /// Values taken from the message into user variables.
    pub extract: Vec<(String, JsonPath)>,
}

impl WebSocketPlan {
    /// Compiles the manifest's scenario; `at` is its field path
    /// (`spec.scenario.websocket`). Every error names the field and the reason.
    pub fn compile(s: &spec::WebSocketScenario, at: &str) -> Result<WebSocketPlan, FieldError> {
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
        if s.steps.is_empty() {
            return Err(FieldError::new(
                format!("{at}.steps"),
                "needs at least one step",
            ));
        }
        let mut c = Compiler {
            timeout,
            names: Vec::new(),
            sends: Vec::new(),
            connected: false,
            parts: Vec::new(),
        };
        let steps = s
            .steps
            .iter()
            .enumerate()
            .map(|(i, step)| c.step(step, &format!("{at}.steps[{i}]"), true))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(WebSocketPlan {
            insecure: s.insecure_skip_verify,
            timeout,
            steps,
            parts: c.parts,
            names: c.names,
        })
    }

    /// Names of the throttles its steps wait for.
    pub fn throttles(&self) -> Vec<String> {
        let mut v = Vec::new();
        walk(&self.steps, &mut |s| {
            if let WsStep::Throttle(n) = s {
                v.push(n.clone())
            }
        });
        v
    }

    /// Names of the coordinators its steps join.
    pub fn coordinators(&self) -> Vec<String> {
        let mut v = Vec::new();
        walk(&self.steps, &mut |s| {
            if let WsStep::Coordinate(n) = s {
                v.push(n.clone())
            }
        });
        v
    }

    /// Names of its measured steps, in order of first use.
    pub fn step_names(&self) -> Vec<String> {
        self.names.clone()
    }

    /// Every template of its steps (for checks of `vars.NAME`).
    pub fn templates(&self) -> Vec<&Template> {
        let mut v: Vec<&Template> = Vec::new();
        walk(&self.steps, &mut |s| match s {
            WsStep::Connect(c) => {
                v.push(&c.url);
                v.extend(c.headers.iter().map(|(_, t)| t));
            }
            WsStep::Send(s) => match &s.message {
                Outgoing::Text(t) => v.push(t),
                Outgoing::Json(j) => v.extend(j.templates()),
            },
            WsStep::Receive(r) => {
                v.extend(r.body_contains.iter());
                if let Some((_, j)) = &r.json {
                    v.extend(j.templates());
                }
            }
            _ => {}
        });
        v
    }

    /// Variables (`vars.NAME`) its templates use.
    pub fn vars_used(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .templates()
            .into_iter()
            .flat_map(|t| t.vars().map(str::to_owned))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Checks what the test's variables make of its connect URLs (`{{vars.target}}/chat`),
    /// so that a URL that is not `ws://` or `wss://` stops the test before it starts.
    pub fn check_urls(
        &self,
        vars: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), FieldError> {
        let mut err = None;
        walk(&self.steps, &mut |s| {
            if let WsStep::Connect(c) = s {
                if let Some(url) = c.url.render_with_vars(vars) {
                    if let Err(e) = parse_url(&url) {
                        err.get_or_insert(FieldError::new(
                            c.field.clone(),
                            format!("{:?} with spec.vars: {e}", c.url.source()),
                        ));
                    }
                }
            }
        });
        err.map_or(Ok(()), Err)
    }
}

/// Where a `ws://` or `wss://` URL goes: TLS or not, host, port, and the URI itself.
#[derive(Debug, Clone)]
pub struct WsUrl {
    /// `wss://`.
    pub tls: bool,
    /// Host name or address.
    pub host: String,
    /// Port (80 or 443 unless given).
    pub port: u16,
    /// The whole URL.
    pub uri: http::Uri,
}

/// Parses a WebSocket URL, or says why it is not one.
pub fn parse_url(url: &str) -> Result<WsUrl, String> {
    let uri = http::Uri::from_str(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let tls = match uri.scheme_str() {
        Some("ws") => false,
        Some("wss") => true,
        Some(other) => {
            return Err(format!(
                "{url:?}: scheme {other} is not ws or wss (e.g. ws://127.0.0.1:8080/chat)"
            ))
        }
        None => {
            return Err(format!(
                "{url:?} has no scheme: write ws://HOST:PORT/PATH or wss://..."
            ))
        }
    };
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("{url:?} has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    Ok(WsUrl {
        tls,
        host,
        port,
        uri,
    })
}

fn walk<'a>(steps: &'a [WsStep], f: &mut dyn FnMut(&'a WsStep)) {
    for s in steps {
        f(s);
        if let WsStep::Loop { steps, .. } = s {
            walk(steps, f);
        }
    }
}

struct Compiler {
    timeout: Duration,
    names: Vec<String>,
    /// Indexes of the send steps, for `after`.
    sends: Vec<usize>,
    /// Whether a connect came before (in the order steps are written).
    connected: bool,
    parts: Vec<PartRef>,
}

impl Compiler {
    fn index(&mut self, name: Option<&String>, default: &str) -> usize {
        let name = name.map(String::as_str).unwrap_or(default);
        match self.names.iter().position(|n| n == name) {
            Some(i) => i,
            None => {
                self.names.push(name.to_owned());
                self.names.len() - 1
            }
        }
    }

    fn needs_connection(&self, at: &str, what: &str) -> Result<(), FieldError> {
        if self.connected {
            Ok(())
        } else {
            Err(FieldError::new(
                at,
                format!("a {what} step needs a connect step before it"),
            ))
        }
    }

    fn step(&mut self, s: &spec::WebSocketStep, at: &str, top: bool) -> Result<WsStep, FieldError> {
        let set = [
            s.connect.is_some(),
            s.send.is_some(),
            s.receive.is_some(),
            s.close.is_some(),
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
                    "a step needs exactly one of connect, send, receive, close, think, throttle, coordinate{} (found {set})",
                    if top { ", loop" } else { "" }
                ),
            ));
        }
        if let Some(c) = &s.connect {
            return self.connect(c, &format!("{at}.connect"));
        }
        if let Some(m) = &s.send {
            let at = format!("{at}.send");
            self.needs_connection(&at, "send")?;
            return self.send(m, &at);
        }
        if let Some(r) = &s.receive {
            let at = format!("{at}.receive");
            self.needs_connection(&at, "receive")?;
            return self.receive(r, &at);
        }
        if let Some(c) = &s.close {
            self.needs_connection(&format!("{at}.close"), "close")?;
            return Ok(WsStep::Close {
                index: self.index(c.name.as_ref(), "close"),
            });
        }
        if let Some(t) = &s.think {
            return think(t, &format!("{at}.think"));
        }
        if let Some(name) = &s.throttle {
            self.parts.push(PartRef::named(at, "Throttle", name)?);
            return Ok(WsStep::Throttle(name.clone()));
        }
        if let Some(name) = &s.coordinate {
            self.parts.push(PartRef::named(at, "Coordinator", name)?);
            return Ok(WsStep::Coordinate(name.clone()));
        }
        let l = s.loop_.as_ref().expect("counted above");
        check_loop(at, top, l.times, l.steps.len())?;
        let steps = l
            .steps
            .iter()
            .enumerate()
            .map(|(i, inner)| {
                self.step(
                    &spec::WebSocketStep::from(inner.clone()),
                    &format!("{at}.loop.steps[{i}]"),
                    false,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(WsStep::Loop {
            times: l.times as u64,
            steps,
        })
    }

    fn connect(&mut self, c: &spec::Connect, at: &str) -> Result<WsStep, FieldError> {
        let url = Template::parse(&c.url).map_err(|e| FieldError::new(format!("{at}.url"), e))?;
        if url.is_static() {
            parse_url(&c.url).map_err(|e| FieldError::new(format!("{at}.url"), e))?;
        } else if let Some(scheme) = static_scheme(&c.url) {
            // `ws://{{vars.host}}/...`: the scheme is known already.
            if scheme != "ws" && scheme != "wss" {
                return Err(FieldError::new(
                    format!("{at}.url"),
                    format!("scheme {scheme} is not ws or wss (e.g. ws://127.0.0.1:8080/chat)"),
                ));
            }
        }
        let mut headers = Vec::new();
        for (k, v) in &c.headers {
            headers.push(header(k, v, &format!("{at}.headers.{k}"))?);
        }
        for (i, p) in c.subprotocols.iter().enumerate() {
            let token = !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
            if !token {
                return Err(FieldError::new(
                    format!("{at}.subprotocols[{i}]"),
                    format!("{p:?} is not a subprotocol name (letters, digits, -._~!#$&'*+^`|)"),
                ));
            }
        }
        self.connected = true;
        Ok(WsStep::Connect(Box::new(ConnectStep {
            index: self.index(c.name.as_ref(), "connect"),
            url,
            headers,
            subprotocols: c.subprotocols.clone(),
            field: format!("{at}.url"),
        })))
    }

    fn send(&mut self, m: &spec::Send, at: &str) -> Result<WsStep, FieldError> {
        let message = match (&m.text, &m.json) {
            (Some(_), Some(_)) => {
                return Err(FieldError::new(at, "set either text or json, not both"))
            }
            (None, None) => {
                return Err(FieldError::new(
                    at,
                    "needs text or json (e.g. json: {join: lobby})",
                ))
            }
            (Some(t), None) => Outgoing::Text(
                Template::parse(t).map_err(|e| FieldError::new(format!("{at}.text"), e))?,
            ),
            (None, Some(j)) => Outgoing::Json(
                JsonTemplate::parse(j).map_err(|e| FieldError::new(format!("{at}.json"), e))?,
            ),
        };
        let index = self.index(m.name.as_ref(), "send");
        self.sends.push(index);
        Ok(WsStep::Send(Box::new(SendStep { index, message })))
    }

    fn receive(&mut self, r: &spec::Receive, at: &str) -> Result<WsStep, FieldError> {
        if r.body_contains.is_none() && r.json.is_none() {
            return Err(FieldError::new(
                at,
                "needs a matcher: bodyContains, json, or both (e.g. json: {path: $.from, equals: \"{{group.peer}}\"})",
            ));
        }
        let body_contains = r
            .body_contains
            .as_deref()
            .map(|b| {
                Template::parse(b).map_err(|e| FieldError::new(format!("{at}.bodyContains"), e))
            })
            .transpose()?;
        let json = match &r.json {
            Some(j) => {
                let path = JsonPath::parse(&j.path).map_err(|e| {
                    FieldError::new(
                        format!("{at}.json.path"),
                        format!("{:?} is not a JSONPath: {e}", j.path),
                    )
                })?;
                let equals = JsonTemplate::parse(&j.equals)
                    .map_err(|e| FieldError::new(format!("{at}.json.equals"), e))?;
                Some((path, equals))
            }
            None => None,
        };
        let after = match &r.after {
            Some(name) => {
                let found = self
                    .names
                    .iter()
                    .position(|n| n == name)
                    .filter(|i| self.sends.contains(i));
                match found {
                    Some(i) => Some(i),
                    None => {
                        let sends: Vec<&str> =
                            self.sends.iter().map(|i| self.names[*i].as_str()).collect();
                        return Err(FieldError::new(
                            format!("{at}.after"),
                            if sends.is_empty() {
                                format!("names {name:?}, but no send step comes before it")
                            } else {
                                format!(
                                    "names {name:?}, which is not a send step before it (they are: {})",
                                    sends.join(", ")
                                )
                            },
                        ));
                    }
                }
            }
            None => None,
        };
        let timeout = match &r.timeout {
            Some(t) => {
                let d =
                    parse_duration(t).map_err(|e| FieldError::new(format!("{at}.timeout"), e))?;
                if d.is_zero() {
                    return Err(FieldError::new(
                        format!("{at}.timeout"),
                        "must be longer than zero",
                    ));
                }
                d
            }
            None => self.timeout,
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
        Ok(WsStep::Receive(Box::new(ReceiveStep {
            index: self.index(r.name.as_ref(), "receive"),
            after,
            body_contains,
            json,
            timeout,
            extract,
        })))
    }
}

fn think(t: &Think, at: &str) -> Result<WsStep, FieldError> {
    let (min, max) = think_bounds(t, at)?;
    Ok(WsStep::Think { min, max })
}

/// The scheme of a templated URL when it is written out (`wss://{{vars.host}}`).
fn static_scheme(url: &str) -> Option<&str> {
    let (scheme, _) = url.split_once("://")?;
    (!scheme.contains("{{")).then_some(scheme)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(yaml: &str) -> Result<WebSocketPlan, FieldError> {
        let s: spec::WebSocketScenario = serde_saphyr::from_str(yaml).unwrap();
        WebSocketPlan::compile(&s, "spec.scenario.websocket")
    }

    #[test]
    fn compiles_a_chat_journey() {
        let p = compile(
            r#"
steps:
  - connect: {url: "{{vars.target}}/chat", headers: {authorization: "Bearer {{user.id}}"}, subprotocols: [chat]}
  - coordinate: pairs
  - send: {name: join, json: {join: "room-{{group.ids}}"}}
  - receive: {name: joined, after: join, json: {path: $.members, equals: 2}}
  - loop: {times: 3, steps: [{send: {name: say, text: "hi {{user.id}}"}}, {receive: {after: say, bodyContains: "hi"}}, {think: {duration: 1s}}]}
  - throttle: rate
  - close: {}
"#,
        )
        .unwrap();
        assert_eq!(
            p.step_names(),
            ["connect", "join", "joined", "say", "receive", "close"]
        );
        assert_eq!(p.throttles(), ["rate"]);
        assert_eq!(p.coordinators(), ["pairs"]);
        assert_eq!(p.vars_used(), ["target"]);
        match &p.steps[3] {
            WsStep::Receive(r) => assert_eq!(r.after, Some(1)),
            other => panic!("{other:?}"),
        }
        let vars = serde_json::json!({"target": "http://x"});
        let e = p.check_urls(vars.as_object().unwrap()).unwrap_err();
        assert_eq!(e.field, "spec.scenario.websocket.steps[0].connect.url");
        assert!(e.reason.contains("not ws or wss"), "{e}");
        let vars = serde_json::json!({"target": "ws://127.0.0.1:1"});
        p.check_urls(vars.as_object().unwrap()).unwrap();
    }

    #[test]
    fn errors_name_the_field() {
        let at = "spec.scenario.websocket";
        let cases = [
            ("steps: []", format!("{at}.steps"), "at least one step"),
            ("steps: [{}]", format!("{at}.steps[0]"), "exactly one of"),
            (
                "steps: [{connect: {url: 'http://x/'}}]",
                format!("{at}.steps[0].connect.url"),
                "not ws or wss",
            ),
            (
                "steps: [{connect: {url: 'https://{{vars.h}}/'}}]",
                format!("{at}.steps[0].connect.url"),
                "not ws or wss",
            ),
            (
                "steps: [{connect: {url: 'ws://x/{{user.id'}}]",
                format!("{at}.steps[0].connect.url"),
                "not closed",
            ),
            (
                "steps: [{send: {text: hi}}]",
                format!("{at}.steps[0].send"),
                "connect step before",
            ),
            (
                "steps: [{connect: {url: 'ws://x'}}, {receive: {timeout: 1s}}]",
                format!("{at}.steps[1].receive"),
                "needs a matcher",
            ),
            (
                "steps: [{connect: {url: 'ws://x'}}, {receive: {bodyContains: a, after: nope}}]",
                format!("{at}.steps[1].receive.after"),
                "no send step",
            ),
            (
                "steps: [{connect: {url: 'ws://x'}}, {send: {name: s, text: a}}, {receive: {bodyContains: a, after: connect}}]",
                format!("{at}.steps[2].receive.after"),
                "they are: s",
            ),
            (
                "steps: [{connect: {url: 'ws://x'}}, {receive: {json: {path: 'from', equals: 1}}}]",
                format!("{at}.steps[1].receive.json.path"),
                "JSONPath",
            ),
            (
                "steps: [{connect: {url: 'ws://x'}}, {receive: {bodyContains: a, extract: {r: '$[x'}}}]",
                format!("{at}.steps[1].receive.extract.r"),
                "JSONPath",
            ),
            (
                "steps: [{connect: {url: 'ws://x'}}, {send: {text: a, json: {}}}]",
                format!("{at}.steps[1].send"),
                "not both",
            ),
            (
                "steps: [{connect: {url: 'ws://x', subprotocols: ['a b']}}]",
                format!("{at}.steps[0].connect.subprotocols[0]"),
                "not a subprotocol",
            ),
            (
                "steps: [{connect: {url: 'ws://x', headers: {'bad name': v}}}]",
                format!("{at}.steps[0].connect.headers.bad name"),
                "not a header name",
            ),
            (
                "timeout: 0s\nsteps: [{think: {duration: 1s}}]",
                format!("{at}.timeout"),
                "longer than zero",
            ),
            (
                "steps: [{loop: {times: 2, steps: [{loop: {times: 1, steps: []}}]}}]",
                format!("{at}.steps[0].loop.steps[0]"),
                "exactly one of",
            ),
        ];
        for (yaml, field, reason) in cases {
            match serde_saphyr::from_str::<spec::WebSocketScenario>(yaml) {
                Ok(s) => {
                    let e = WebSocketPlan::compile(&s, at).unwrap_err();
                    assert_eq!(e.field, field, "{yaml}: {e}");
                    assert!(e.reason.contains(reason), "{yaml}: {e}");
                }
                // A loop in a loop is refused by the types already.
                Err(e) => assert!(yaml.contains("loop: {times: 1"), "{yaml}: {e}"),
            }
        }
    }

    #[test]
    fn parses_urls() {
        let u = parse_url("wss://example.test/chat?x=1").unwrap();
        assert!(u.tls);
        assert_eq!((u.host.as_str(), u.port), ("example.test", 443));
        let u = parse_url("ws://[::1]:9000/").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.tls), ("::1", 9000, false));
        assert!(parse_url("127.0.0.1:80").is_err());
    }
}
