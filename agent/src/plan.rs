//! From manifests to a test plan: reads the LoadTest (and its Throttle and Coordinator
//! documents) from YAML, checks everything a schema cannot, and produces a [`TestPlan`]
//! with parsed durations, rates and compiled scenarios.
//!
//! Nothing starts until a plan exists, and every error names the document, the field and
//! the reason: `checkout.yaml: document 1 (LoadTest checkout): spec.userRate: "20 per
//! second" is not a rate: ...`.

use std::collections::BTreeSet;
use std::fmt;

use std::time::Duration;

use murmuration_crds::loadtest::{LoadTestSpec, MessagingScenario};
use murmuration_crds::units::{parse_duration, Rate};
use murmuration_crds::{CoordinatorSpec, LoadTest, ThrottleSpec};
use serde::Deserialize;

use crate::scenario::http::HttpScenario;
use crate::scenario::websocket_plan::WebSocketPlan;
use crate::scenario::{Registry, Vars};
use crate::thresholds::Thresholds;

pub use crate::field::FieldError;

/// Why a manifest file cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A document is not valid YAML or does not match its kind's schema.
    #[error("{document}: {field}: {reason}")]
    Invalid {
        /// Which document (`FILE: document N (Kind name)`).
        document: String,
        /// The field path (`spec.users`), or `(document)`.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

impl ManifestError {
    fn invalid(
        document: &str,
        field: impl Into<String>,
        reason: impl fmt::Display,
    ) -> ManifestError {
        ManifestError::Invalid {
            document: document.to_owned(),
            field: field.into(),
            reason: reason.to_string(),
        }
    }
}

/// What the manifest file holds.
#[derive(Debug, Clone)]
pub struct Manifests {
    /// The LoadTest.
    pub test: LoadTest,
    /// Throttles, by name.
    pub throttles: Vec<(String, ThrottleSpec)>,
    /// Coordinators, by name.
    pub coordinators: Vec<(String, CoordinatorSpec)>,
    /// Where each came from, for messages: (kind, name) → document label.
    labels: Vec<(String, String, String)>,
}

impl Manifests {
    /// The documents as YAML again (what a master hands its agents, after `murmur run`'s
    /// overrides were applied).
    pub fn to_text(&self) -> String {
        let mut docs = vec![serde_yaml::to_string(&self.test).unwrap_or_default()];
        for (name, spec) in &self.throttles {
            let t = murmuration_crds::Throttle::new(name, spec.clone());
            docs.push(serde_yaml::to_string(&t).unwrap_or_default());
        }
        for (name, spec) in &self.coordinators {
            let c = murmuration_crds::Coordinator::new(name, spec.clone());
            docs.push(serde_yaml::to_string(&c).unwrap_or_default());
        }
        docs.join("---\n")
    }

    /// The label (`FILE: document N (Kind name)`) of a document.
    pub fn label(&self, kind: &str, name: &str) -> String {
        self.labels
            .iter()
            .find(|(k, n, _)| k == kind && n == name)
            .map(|(_, _, l)| l.clone())
            .unwrap_or_else(|| format!("{kind} {name}"))
    }
}

#[derive(Deserialize)]
struct Head {
    #[serde(rename = "apiVersion")]
    api_version: Option<String>,
    kind: Option<String>,
    metadata: Option<Meta>,
}

#[derive(Deserialize)]
struct Meta {
    name: Option<String>,
}

const API_VERSION: &str = "murmuration.dev/v1alpha1";

/// Reads a manifest file: exactly one LoadTest, and any number of Throttle and Coordinator
/// documents.
pub fn read_manifests(path: &str) -> Result<Manifests, ManifestError> {
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_manifests(path, &text)
}

/// Parses manifest text; `file` names it in messages.
pub fn parse_manifests(file: &str, text: &str) -> Result<Manifests, ManifestError> {
    let mut test: Option<(LoadTest, String)> = None;
    let mut throttles = Vec::new();
    let mut coordinators = Vec::new();
    let mut labels = Vec::new();
    let mut index = 0;
    for doc in serde_yaml::Deserializer::from_str(text) {
        index += 1;
        let value = serde_yaml::Value::deserialize(doc).map_err(|e| {
            ManifestError::invalid(
                &format!("{file}: document {index}"),
                "(document)",
                format!("not valid YAML: {e}"),
            )
        })?;
        if value.is_null() {
            continue; // an empty document between `---` separators
        }
        let head: Head = serde_yaml::from_value(value.clone()).map_err(|e| {
            ManifestError::invalid(
                &format!("{file}: document {index}"),
                "(document)",
                format!("not a Kubernetes object: {e}"),
            )
        })?;
        let kind = head.kind.unwrap_or_default();
        let name = head.metadata.and_then(|m| m.name).unwrap_or_default();
        let label = format!("{file}: document {index} ({kind} {name})");
        if head.api_version.as_deref() != Some(API_VERSION) {
            return Err(ManifestError::invalid(
                &label,
                "apiVersion",
                format!(
                    "must be {API_VERSION} (found {:?})",
                    head.api_version.unwrap_or_default()
                ),
            ));
        }
        if name.is_empty() {
            return Err(ManifestError::invalid(
                &label,
                "metadata.name",
                "is required",
            ));
        }
        labels.push((kind.clone(), name.clone(), label.clone()));
        match kind.as_str() {
            "LoadTest" => {
                let lt: LoadTest = typed(&label, value)?;
                if let Some((_, first)) = &test {
                    return Err(ManifestError::invalid(
                        &label,
                        "kind",
                        format!("a file runs one LoadTest, and {first} is one already"),
                    ));
                }
                test = Some((lt, label));
            }
            "Throttle" => {
                let t: murmuration_crds::Throttle = typed(&label, value)?;
                if throttles.iter().any(|(n, _)| *n == name) {
                    return Err(ManifestError::invalid(
                        &label,
                        "metadata.name",
                        "another Throttle has this name",
                    ));
                }
                throttles.push((name, t.spec));
            }
            "Coordinator" => {
                let c: murmuration_crds::Coordinator = typed(&label, value)?;
                if coordinators.iter().any(|(n, _)| *n == name) {
                    return Err(ManifestError::invalid(
                        &label,
                        "metadata.name",
                        "another Coordinator has this name",
                    ));
                }
                coordinators.push((name, c.spec));
            }
            other => {
                return Err(ManifestError::invalid(
                    &label,
                    "kind",
                    format!("{other:?} is not LoadTest, Throttle or Coordinator"),
                ))
            }
        }
    }
    let (test, _) =
        test.ok_or_else(|| ManifestError::invalid(file, "(file)", "holds no LoadTest document"))?;
    Ok(Manifests {
        test,
        throttles,
        coordinators,
        labels,
    })
}

/// Deserialises a document, naming the exact field that does not fit.
fn typed<T: serde::de::DeserializeOwned>(
    label: &str,
    value: serde_yaml::Value,
) -> Result<T, ManifestError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "(document)".to_owned()
        } else {
            path
        };
        ManifestError::invalid(label, field, e.into_inner())
    })
}

pub use crate::users::RepeatPlan;

/// Which scenario users run.
#[derive(Debug, Clone)]
pub enum ScenarioPlan {
    /// The declarative HTTP scenario, compiled.
    Http(HttpScenario),
    /// The declarative WebSocket scenario, compiled.
    WebSocket(WebSocketPlan),
    /// The messaging users of amoc's Livebook demo.
    Messaging(MessagingScenario),
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
}

/// Checks a LoadTest spec (with its throttles and coordinators) and builds its plan.
/// `registry` holds the custom scenarios this binary knows.
pub fn build_plan(
    name: &str,
    spec: &LoadTestSpec,
    throttles: &[(String, ThrottleSpec)],
    coordinators: &[(String, CoordinatorSpec)],
    registry: &Registry,
) -> Result<TestPlan, FieldError> {
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
    let sc = &spec.scenario;
    let kinds = [
        sc.http.is_some(),
        sc.messaging.is_some(),
        sc.custom.is_some(),
        sc.websocket.is_some(),
    ];
    let scenario = match kinds {
        [false, false, false, true] => {
            let at = "spec.scenario.websocket";
            let w = WebSocketPlan::compile(sc.websocket.as_ref().expect("checked"), at)?;
            for v in w.vars_used() {
                if !vars.contains_key(&v) {
                    return Err(FieldError::new(
                        at,
                        format!("uses {{{{vars.{v}}}}}, but spec.vars has no {v:?} (murmur run can set it: --set {v}=...)"),
                    ));
                }
            }
            w.check_urls(&vars)?;
            ScenarioPlan::WebSocket(w)
        }
        [true, false, false, false] => {
            let h =
                HttpScenario::compile(sc.http.as_ref().expect("checked"), "spec.scenario.http")?;
            for v in h.vars_used() {
                if !vars.contains_key(&v) {
                    return Err(FieldError::new(
                        "spec.scenario.http",
                        format!("uses {{{{vars.{v}}}}}, but spec.vars has no {v:?} (murmur run can set it: --set {v}=...)"),
                    ));
                }
            }
            ScenarioPlan::Http(h)
        }
        [false, true, false, false] => {
            let m = sc.messaging.clone().expect("checked");
            crate::scenario::messaging::MessagingUsers::new(&m)
                .map_err(|e| FieldError::new("spec.scenario.messaging", e))?;
            ScenarioPlan::Messaging(m)
        }
        [false, false, true, false] => {
            let c = sc.custom.as_ref().expect("checked");
            if !registry.contains(&c.name) {
                let known = registry.names();
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
            ScenarioPlan::Custom {
                name: c.name.clone(),
                config: c.config.clone().unwrap_or(serde_json::Value::Null),
            }
        }
        _ => {
            return Err(FieldError::new(
                "spec.scenario",
                "needs exactly one of http, websocket, messaging or custom",
            ))
        }
    };
    let used = match &scenario {
        ScenarioPlan::Http(h) => {
            Some(("spec.scenario.http.steps", h.throttles(), h.coordinators()))
        }
        ScenarioPlan::WebSocket(w) => Some((
            "spec.scenario.websocket.steps",
            w.throttles(),
            w.coordinators(),
        )),
        _ => None,
    };
    if let Some((at, used_throttles, used_coordinators)) = used {
        let known: BTreeSet<&str> = throttles.iter().map(|(n, _)| n.as_str()).collect();
        for t in used_throttles {
            if !known.contains(t.as_str()) {
                return Err(FieldError::new(
                    at,
                    format!("a throttle step names {t:?}, but no Throttle of that name is defined"),
                ));
            }
        }
        let known: BTreeSet<&str> = coordinators.iter().map(|(n, _)| n.as_str()).collect();
        for c in used_coordinators {
            if !known.contains(c.as_str()) {
                return Err(FieldError::new(
                    at,
                    format!(
                        "a coordinate step names {c:?}, but no Coordinator of that name is defined"
                    ),
                ));
            }
        }
    }
    let thresholds = Thresholds::compile(&spec.thresholds)
        .map_err(|e| FieldError::new(e.field.clone(), e.reason.clone()))?;
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
    let wait_for_agents = spec
        .start
        .as_ref()
        .and_then(|s| s.wait_for_agents.as_deref())
        .map(parse_duration)
        .transpose()
        .map_err(|e| FieldError::new("spec.start.waitForAgents", e))?
        .unwrap_or(Duration::from_secs(300));
    // Throttles and coordinators are checked by building them once.
    crate::throttle::Throttles::from_specs(throttles.iter().map(|(n, s)| (n.as_str(), s)))
        .map_err(|e| FieldError::new("Throttle", e))?;
    crate::coordinator::Coordinators::from_specs(coordinators.iter().map(|(n, s)| (n.as_str(), s)))
        .map_err(|e| FieldError::new("Coordinator", e))?;
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
    })
}

/// Reads a manifest file and builds its plan, with errors naming document and field.
pub fn load_plan(path: &str, registry: &Registry) -> Result<TestPlan, ManifestError> {
    load_plan_with_vars(path, registry, &Vars::new())
}

/// Like [`load_plan`], with variables set on top of `spec.vars` (`murmur run --set`).
pub fn load_plan_with_vars(
    path: &str,
    registry: &Registry,
    vars: &Vars,
) -> Result<TestPlan, ManifestError> {
    let m = read_manifests(path)?;
    plan_of_manifests(m, path, registry, vars)
}

/// Builds the plan of manifests given as text (`label` names them in errors): what the
/// master does with `MURMUR_TEST` and an agent with what its master sends.
pub fn plan_from_text(
    label: &str,
    text: &str,
    registry: &Registry,
    vars: &Vars,
) -> Result<TestPlan, ManifestError> {
    let m = parse_manifests(label, text)?;
    plan_of_manifests(m, label, registry, vars)
}

fn plan_of_manifests(
    mut m: Manifests,
    path: &str,
    registry: &Registry,
    vars: &Vars,
) -> Result<TestPlan, ManifestError> {
    for (k, v) in vars {
        m.test.spec.vars.insert(k.clone(), v.clone());
    }
    let name = m.test.metadata.name.clone().unwrap_or_default();
    build_plan(&name, &m.test.spec, &m.throttles, &m.coordinators, registry).map_err(|e| {
        let kind = if e.field == "Throttle" {
            "Throttle"
        } else if e.field == "Coordinator" {
            "Coordinator"
        } else {
            "LoadTest"
        };
        let label = if kind == "LoadTest" {
            m.label("LoadTest", &name)
        } else {
            // The message names the throttle or coordinator; point at the file.
            path.to_owned()
        };
        ManifestError::Invalid {
            document: label,
            field: if kind == "LoadTest" {
                e.field
            } else {
                kind.to_owned()
            },
            reason: e.reason,
        }
    })
}
