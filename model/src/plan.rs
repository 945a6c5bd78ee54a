//! From manifests to a test plan: checks everything a schema cannot and produces a
//! [`TestPlan`] with parsed durations, rates and compiled scenarios. Nothing starts until a
//! plan exists, and every error names the document, the field and the reason:
//! `checkout.yaml: document 1 (LoadTest checkout): spec.userRate: "20 per second" is not a
//! rate: ...`.

use std::time::Duration;

use murmuration_crds::units::{parse_duration, Rate};
use murmuration_crds::{
    Coordinator, CoordinatorSpec, LoadTest, LoadTestSpec, Throttle, ThrottleSpec,
};

use crate::error::{FieldError, ManifestError};
use crate::http::{HttpScenario, PartRef};
use crate::manifest::{parse_manifests, read_manifests, Manifests};
use crate::messaging::MessagingPlan;
use crate::thresholds::Thresholds;
use crate::websocket::WebSocketPlan;

/// A user's unique integer id: 1..=users.
pub type UserId = u64;

/// Scenario variables (`spec.vars`).
pub type Vars = serde_json::Map<String, serde_json::Value>;

/// How often each user runs the scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepeatPlan {
    /// Runs per user; `None` = until removed or the test ends.
    pub times: Option<u64>,
    /// Pause between two runs.
    pub interval: Duration,
}

/// Which scenario users run.
#[derive(Debug, Clone)]
pub enum ScenarioPlan {
    /// The declarative HTTP scenario, compiled.
    Http(HttpScenario),
    /// The declarative WebSocket scenario, compiled.
    WebSocket(WebSocketPlan),
    /// The messaging users of amoc's Livebook demo.
    Messaging(MessagingPlan),
    /// A scenario registered in the binary.
    Custom {
        /// Its registered name.
        name: String,
        /// `scenario.custom.config`.
        config: serde_json::Value,
    },
}

impl ScenarioPlan {
    /// `http`, `websocket`, `messaging` or `custom:<name>`.
    pub fn kind(&self) -> String {
        match self {
            ScenarioPlan::Http(_) => "http".into(),
            ScenarioPlan::WebSocket(_) => "websocket".into(),
            ScenarioPlan::Messaging(_) => "messaging".into(),
            ScenarioPlan::Custom { name, .. } => format!("custom:{name}"),
        }
    }
}

/// Everything needed to run a test, checked.
#[derive(Debug, Clone)]
pub struct TestPlan {
    /// The test's name.
    pub name: String,
    /// Users wanted at the start (ids 1..=users); a stage profile moves it.
    pub users: u64,
    /// The shape of the load: `users`, `stages` or `arrivals`.
    pub profile: murmuration_crds::profile::LoadProfile,
    /// Agents wanted.
    pub agents: u32,
    /// How fast users start and stop; `None` = all at once.
    pub user_rate: Option<Rate>,
    /// When the test ends by itself.
    pub duration: Option<Duration>,
    /// How often each user runs the scenario.
    pub repeat: RepeatPlan,
    /// Scenario variables.
    pub vars: Vars,
    /// The scenario.
    pub scenario: ScenarioPlan,
    /// Pass/fail criteria.
    pub thresholds: Thresholds,
    /// Throttles of the test.
    pub throttles: Vec<(String, ThrottleSpec)>,
    /// Coordinators of the test.
    pub coordinators: Vec<(String, CoordinatorSpec)>,
    /// How long to wait for all agents before failing.
    pub wait_for_agents: Duration,
    /// Where the master pushes the test's series (`spec.metrics.remoteWrite`), if anywhere.
    pub remote_write: Option<crate::remote_write::RemoteWritePlan>,
}

/// Which custom scenarios (`scenario.custom.name`) exist.
#[derive(Debug, Clone, Copy)]
pub enum CustomScenarios<'a> {
    /// Not checked: the operator does not know what the master's image holds (the one
    /// check it leaves to the master).
    Unchecked,
    /// The names built into this binary.
    Known(&'a [String]),
}

/// Checks a LoadTest spec (with its throttles and coordinators) and builds its plan.
/// Errors name the field of the LoadTest; see [`compile`] for errors naming the document.
pub fn build_plan(
    name: &str,
    spec: &LoadTestSpec,
    throttles: &[(String, ThrottleSpec)],
    coordinators: &[(String, CoordinatorSpec)],
    custom: CustomScenarios<'_>,
) -> Result<TestPlan, FieldError> {
    // Users, stages and arrivals (the load profile) are judged by their one rule.
    let profile = murmuration_crds::profile::compile_profile(spec)
        .map_err(|e| FieldError::new(e.field, e.reason))?;
    if !(1..=1000).contains(&spec.agents) {
        return Err(FieldError::new("spec.agents", "must be between 1 and 1000"));
    }
    let user_rate = spec
        .user_rate
        .as_deref()
        .map(Rate::parse)
        .transpose()
        .map_err(|e| FieldError::new("spec.userRate", e))?;
    if let Some(r) = &user_rate {
        if r.count <= 0.0 {
            return Err(FieldError::new(
                "spec.userRate",
                "must be more than zero (leave it out to start all users at once)",
            ));
        }
    }
    let duration = spec
        .duration
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|e| FieldError::new("spec.duration", e))?;
    if duration == Some(Duration::ZERO) {
        return Err(FieldError::new("spec.duration", "must be longer than zero"));
    }
    let repeat = match &spec.repeat {
        None => RepeatPlan {
            times: None,
            interval: Duration::ZERO,
        },
        Some(r) => {
            let times = match r.times {
                Some(t) if t < 1 => {
                    return Err(FieldError::new("spec.repeat.times", "must be at least 1"))
                }
                t => t.map(|t| t as u64),
            };
            let interval = r
                .interval
                .as_deref()
                .map(parse_duration)
                .transpose()
                .map_err(|e| FieldError::new("spec.repeat.interval", e))?
                .unwrap_or(Duration::ZERO);
            RepeatPlan { times, interval }
        }
    };
    let vars: Vars = spec
        .vars
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let wait_for_agents = spec
        .start
        .as_ref()
        .and_then(|s| s.wait_for_agents.as_deref())
        .map(parse_duration)
        .transpose()
        .map_err(|e| FieldError::new("spec.start.waitForAgents", e))?
        .unwrap_or(Duration::from_secs(300));
    let remote_write = crate::remote_write::compile(spec.metrics.as_ref())?;
    let scenario = scenario(spec, &vars, throttles, coordinators, custom)?;
    let thresholds = Thresholds::compile(&spec.thresholds)
        .map_err(|e| FieldError::new(e.field.clone(), e.reason.clone()))?;
    if let Some(b) = &spec.baseline {
        crate::thresholds::check_baseline(b)
            .map_err(|e| FieldError::new(e.field.clone(), e.reason.clone()))?;
    }
    let step_names = match &scenario {
        ScenarioPlan::Http(h) => Some(h.step_names()),
        ScenarioPlan::WebSocket(w) => Some(w.step_names()),
        _ => None,
    };
    if let Some(names) = step_names {
        thresholds
            .check_steps(&names)
            .map_err(|e| FieldError::new(e.field.clone(), e.reason.clone()))?;
    }
    Ok(TestPlan {
        name: name.to_owned(),
        users: profile.initial_users(),
        profile,
        agents: spec.agents as u32,
        user_rate,
        duration,
        repeat,
        vars,
        scenario,
        thresholds,
        throttles: throttles.to_vec(),
        coordinators: coordinators.to_vec(),
        wait_for_agents,
        remote_write,
    })
}

fn missing_var(field: &str, v: &str) -> FieldError {
    FieldError::new(
        field,
        format!("uses {{{{vars.{v}}}}}, but spec.vars has no {v:?} (murmur run can set it: --set {v}=...)"),
    )
}

/// Every Throttle and Coordinator a step names exists for this test; the error names the
/// step's own field.
fn check_parts(
    parts: &[PartRef],
    throttles: &[(String, ThrottleSpec)],
    coordinators: &[(String, CoordinatorSpec)],
) -> Result<(), FieldError> {
    for part in parts {
        let known = match part.kind {
            "Throttle" => throttles.iter().any(|(n, _)| *n == part.name),
            _ => coordinators.iter().any(|(n, _)| *n == part.name),
        };
        if !known {
            return Err(FieldError::new(
                &part.field,
                format!(
                    "names {kind} {name:?}, but no {kind} of that name is defined for this test",
                    kind = part.kind,
                    name = part.name
                ),
            ));
        }
    }
    Ok(())
}

fn scenario(
    spec: &LoadTestSpec,
    vars: &Vars,
    throttles: &[(String, ThrottleSpec)],
    coordinators: &[(String, CoordinatorSpec)],
    custom: CustomScenarios<'_>,
) -> Result<ScenarioPlan, FieldError> {
    let sc = &spec.scenario;
    if let Some(ws) = &sc.websocket {
        if sc.http.is_some() || sc.messaging.is_some() || sc.custom.is_some() {
            return Err(FieldError::new(
                "spec.scenario",
                "needs exactly one of http, websocket, messaging or custom",
            ));
        }
        let at = "spec.scenario.websocket";
        let w = WebSocketPlan::compile(ws, at)?;
        if let Some(v) = w.vars_used().into_iter().find(|v| !vars.contains_key(v)) {
            return Err(missing_var(at, &v));
        }
        w.check_urls(vars)?;
        check_parts(&w.parts, throttles, coordinators)?;
        return Ok(ScenarioPlan::WebSocket(w));
    }
    match (&sc.http, &sc.messaging, &sc.custom) {
        (Some(http), None, None) => {
            let h = HttpScenario::compile(http, "spec.scenario.http")?;
            if let Some(v) = h.vars_used().into_iter().find(|v| !vars.contains_key(v)) {
                return Err(missing_var("spec.scenario.http", &v));
            }
            check_parts(&h.parts, throttles, coordinators)?;
            Ok(ScenarioPlan::Http(h))
        }
        (None, Some(m), None) => {
            let at = "spec.scenario.messaging";
            let m = MessagingPlan::compile(m, at)?;
            if let Some(v) = m.server.vars().find(|v| !vars.contains_key(*v)) {
                return Err(missing_var(&format!("{at}.server"), v));
            }
            Ok(ScenarioPlan::Messaging(m))
        }
        (None, None, Some(c)) => {
            if let CustomScenarios::Known(known) = custom {
                if !known.contains(&c.name) {
                    return Err(FieldError::new(
                        "spec.scenario.custom.name",
                        if known.is_empty() {
                            format!("no scenario {:?} is built into this binary (it has no custom scenarios)", c.name)
                        } else {
                            format!(
                                "no scenario {:?} is built into this binary (it has: {})",
                                c.name,
                                known.join(", ")
                            )
                        },
                    ));
                }
            }
            Ok(ScenarioPlan::Custom {
                name: c.name.clone(),
                config: c.config.clone().unwrap_or(serde_json::Value::Null),
            })
        }
        _ => Err(FieldError::new(
            "spec.scenario",
            "needs exactly one of http, websocket, messaging or custom",
        )),
    }
}

/// Compiles manifests into a plan, with `vars` set on top of `spec.vars` (`murmur run
/// --set`). The LoadTest is checked first, then each Throttle and Coordinator (a bad one
/// would stop the test at its start); errors name the document they are in.
pub fn compile(
    mut m: Manifests,
    vars: &Vars,
    custom: CustomScenarios<'_>,
) -> Result<TestPlan, ManifestError> {
    for (k, v) in vars {
        m.test.spec.vars.insert(k.clone(), v.clone());
    }
    let name = m.name();
    let plan = build_plan(&name, &m.test.spec, &m.throttles, &m.coordinators, custom)
        .map_err(|e| e.in_document(m.label("LoadTest", &name)))?;
    for (n, spec) in &m.throttles {
        crate::throttle::compile(spec).map_err(|e| e.in_document(m.label("Throttle", n)))?;
    }
    for (n, spec) in &m.coordinators {
        crate::coordinator::compile(spec).map_err(|e| e.in_document(m.label("Coordinator", n)))?;
    }
    Ok(plan)
}

/// Reads a manifest file and compiles its plan (`murmur run FILE`).
pub fn compile_file(
    path: &str,
    vars: &Vars,
    custom: CustomScenarios<'_>,
) -> Result<TestPlan, ManifestError> {
    compile(read_manifests(path)?, vars, custom)
}

/// Compiles manifests given as text (`label` names them in errors): what the master does
/// with `MURMUR_TEST` and an agent with what its master sends.
pub fn compile_text(
    label: &str,
    text: &str,
    vars: &Vars,
    custom: CustomScenarios<'_>,
) -> Result<TestPlan, ManifestError> {
    compile(parse_manifests(label, text)?, vars, custom)
}

/// Compiles a LoadTest with the Throttles and Coordinators of its test, as the operator
/// has them from the API server. Custom scenario names are not checked (the master's image
/// knows its own); everything else is checked as `murmur run` checks it.
pub fn compile_objects(
    test: &LoadTest,
    throttles: &[Throttle],
    coordinators: &[Coordinator],
) -> Result<TestPlan, ManifestError> {
    compile(
        Manifests::of_objects(test, throttles, coordinators),
        &Vars::new(),
        CustomScenarios::Unchecked,
    )
}

/// The Throttles and Coordinators the steps of a test name, sorted (for looking them up
/// before the test is compiled). Empty for a scenario that does not compile: compiling it
/// reports why.
pub fn names_used(spec: &LoadTestSpec) -> (Vec<String>, Vec<String>) {
    let sc = &spec.scenario;
    let (mut throttles, mut coordinators) = if let Some(h) = sc
        .http
        .as_ref()
        .and_then(|h| HttpScenario::compile(h, "spec.scenario.http").ok())
    {
        (h.throttles(), h.coordinators())
    } else if let Some(w) = sc
        .websocket
        .as_ref()
        .and_then(|w| WebSocketPlan::compile(w, "spec.scenario.websocket").ok())
    {
        (w.throttles(), w.coordinators())
    } else {
        return Default::default();
    };
    throttles.sort();
    throttles.dedup();
    coordinators.sort();
    coordinators.dedup();
    (throttles, coordinators)
}
