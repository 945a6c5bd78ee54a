//! The scenario model of amoc: `init` once per test, `start` for each user (with its unique
//! integer id), optional `terminate`. A scenario is a small piece of Rust; the engine runs
//! it for every user as a lightweight task, and the [`User`] handle gives it the test's
//! variables, throttles, coordinators and metrics.
//!
//! ```no_run
//! use murmuration_agent::scenario::{InitContext, Scenario, ScenarioError, User};
//!
//! struct Ping;
//!
//! impl Scenario for Ping {
//!     type State = murmuration_agent::metrics::StepId;
//!     async fn init(&self, ctx: &InitContext) -> Result<Self::State, ScenarioError> {
//!         Ok(ctx.step("ping"))
//!     }
//!     async fn start(&self, user: &mut User, step: &Self::State) -> Result<(), ScenarioError> {
//!         let t = user.now();
//!         // ... talk to the system under test ...
//!         user.record(*step, t, None);
//!         Ok(())
//!     }
//! }
//! ```

pub mod http;
pub mod messaging;
pub mod websocket;

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use rand::rngs::SmallRng;

use crate::coordinator::{Coordination, CoordinatorError, Coordinators};
use crate::metrics::{ErrorKind, StepId, StepNames, WorkerMetrics};
use crate::throttle::{Permit, Throttles};

/// A user's unique integer id: 1..=users.
pub use murmuration_model::UserId;

/// Scenario variables (`spec.vars`), replaced as a whole when they change at runtime.
pub use murmuration_model::Vars;

/// A boxed future, as scenarios are stored behind trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a scenario could not initialise, or why a user's run ended early.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The scenario's configuration is wrong (a bad address, a missing variable). Reported
    /// before any user starts.
    #[error("{0}")]
    Config(String),
    /// The user cannot go on (its failures are already counted in the step metrics).
    #[error("{kind:?}: {message}")]
    User {
        /// What kind of failure ended it.
        kind: ErrorKind,
        /// For logs.
        message: String,
    },
    /// A `throttle` or `coordinate` step named something that does not exist.
    #[error("{0}")]
    Unknown(String),
}

/// A load-test scenario in the style of amoc: `init` once, `start` per user.
pub trait Scenario: Send + Sync + 'static {
    /// Shared state returned by `init` and handed to every user.
    type State: Send + Sync + 'static;

    /// Runs once per test (per agent), before any user starts. Intern step names here
    /// ([`InitContext::step`]) so that recording costs an index, not a lookup.
    fn init(
        &self,
        ctx: &InitContext,
    ) -> impl Future<Output = Result<Self::State, ScenarioError>> + Send;

    /// Runs one iteration of one user. The engine calls it again per `spec.repeat`; a
    /// graceful removal lets the current iteration finish, a forced one drops it.
    fn start(
        &self,
        user: &mut User,
        state: &Self::State,
    ) -> impl Future<Output = Result<(), ScenarioError>> + Send;

    /// Runs once at the end of the test (per agent).
    fn terminate(&self, _state: &Self::State) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// What `init` gets: the test's configuration and a way to name measured steps.
pub struct InitContext {
    /// The test environment shared by all users.
    pub env: Arc<TestEnv>,
    /// `scenario.custom.config` for custom scenarios; `Null` otherwise.
    pub config: serde_json::Value,
}

impl InitContext {
    /// The metrics id of a named step (interned once).
    pub fn step(&self, name: &str) -> StepId {
        self.env.steps.intern(name)
    }

    /// A variable's current value.
    pub fn var(&self, name: &str) -> Option<serde_json::Value> {
        self.env.vars.load().get(name).cloned()
    }
}

/// What every user of a test shares: name, live variables, throttles, coordinators, step
/// names.
pub struct TestEnv {
    /// The test's name (`metadata.name`).
    pub name: String,
    /// `spec.vars`, swapped as a whole on update so that readers never lock.
    pub vars: ArcSwap<Vars>,
    /// The test's throttles by name.
    pub throttles: Throttles,
    /// The test's coordinators by name.
    pub coordinators: Coordinators,
    /// Names of measured steps.
    pub steps: StepNames,
}

/// A user's own named values. A user has a handful at most, so a small vector beats a
/// hash map, and it costs nothing until the first one is set (users must stay tiny).
#[derive(Debug, Default, Clone)]
pub struct Locals(Vec<(String, serde_json::Value)>);

impl Locals {
    /// Sets `name` to `value`, replacing an earlier value.
    pub fn insert(&mut self, name: String, value: serde_json::Value) {
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name, value)),
        }
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&serde_json::Value> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

/// One simulated user, as a scenario sees it.
pub struct User {
    id: UserId,
    iteration: u64,
    env: Arc<TestEnv>,
    metrics: Arc<WorkerMetrics>,
    rng: SmallRng,
    /// When the next measured action should have started, set by a throttle permit (paced,
    /// open-model load); used for coordinated-omission-corrected latency.
    intended: Option<Instant>,
    /// An arrival of an open model: every recorded action also goes to the corrected
    /// histogram (the first one measured from the arrival's intended time).
    arrival: bool,
    /// Values this user extracted or was given (`{{order}}`, `{{group.ids}}`).
    pub locals: Locals,
    /// What a scenario keeps for a user between iterations (its connections).
    extension: Option<Box<dyn Any + Send>>,
}

impl User {
    /// A user of `env` recording into `metrics`.
    pub fn new(id: UserId, env: Arc<TestEnv>, metrics: Arc<WorkerMetrics>) -> User {
        use rand::SeedableRng;
        User {
            id,
            iteration: 0,
            env,
            metrics,
            rng: SmallRng::seed_from_u64(id.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            intended: None,
            arrival: false,
            locals: Locals::default(),
            extension: None,
        }
    }

    /// This user's unique id (1..=users).
    pub fn id(&self) -> UserId {
        self.id
    }

    /// Which run of the scenario this is for this user (0-based).
    pub fn iteration(&self) -> u64 {
        self.iteration
    }

    /// Makes this user an arrival of an open model, due at `intended`: its first action's
    /// corrected latency counts from then, however late the engine started it.
    pub(crate) fn set_arrival(&mut self, intended: Instant) {
        self.arrival = true;
        self.intended = Some(intended);
    }

    pub(crate) fn set_iteration(&mut self, i: u64) {
        self.iteration = i;
    }

    /// The test environment.
    pub fn env(&self) -> &Arc<TestEnv> {
        &self.env
    }

    /// A variable's current value (sees runtime updates at once).
    pub fn var(&self, name: &str) -> Option<serde_json::Value> {
        self.env.vars.load().get(name).cloned()
    }

    /// This user's random number generator (seeded by its id: runs are reproducible).
    pub fn rng(&mut self) -> &mut SmallRng {
        &mut self.rng
    }

    /// The current time, for measuring an action with [`User::record`].
    #[inline]
    pub fn now(&self) -> Instant {
        Instant::now()
    }

    /// Records an action of `step` that started at `started` and ends now, failed with
    /// `error` if given. When a throttle paced this action, or the user is an arrival, the
    /// latency from its intended start is recorded too (an arrival's later actions, which
    /// nothing held back, count from their own start there).
    #[inline]
    pub fn record(&mut self, step: StepId, started: Instant, error: Option<ErrorKind>) {
        let now = Instant::now();
        let intended = match self.intended.take() {
            Some(i) => Some(i),
            None if self.arrival => Some(started),
            None => None,
        }
        .map(|i| now.saturating_duration_since(i.min(started)));
        self.metrics.record(
            step,
            now.saturating_duration_since(started),
            intended,
            error,
        );
    }

    /// Waits for a permit of the named throttle. The permit's intended time becomes the
    /// reference for the next recorded action's corrected latency.
    pub async fn throttle(&mut self, name: &str) -> Result<Permit, ScenarioError> {
        let throttle = self
            .env
            .throttles
            .get(name)
            .ok_or_else(|| ScenarioError::Unknown(format!("no throttle named {name:?}")))?;
        let permit = throttle.acquire().await;
        self.intended = Some(permit.intended);
        Ok(permit)
    }

    /// Joins the named coordinator with `data` and waits until this user's group forms.
    pub async fn coordinate(
        &mut self,
        name: &str,
        data: serde_json::Value,
    ) -> Result<Coordination, ScenarioError> {
        self.env
            .coordinators
            .join(name, self.id, data)
            .await
            .map_err(|e: CoordinatorError| ScenarioError::Unknown(e.to_string()))
    }

    /// Counts a message that did not match what the user waited for (it is kept for
    /// later; the report shows how many there were).
    pub fn count_unmatched(&self) {
        self.metrics.user_event(|u| u.unmatched += 1);
    }

    /// Joins the named coordinator with this user's id and, once its group forms, makes
    /// the group known to templates: `{{group.ids}}`, `{{group.size}}`, `{{group.peer}}`
    /// (the first peer, or nothing), `{{group.peers}}` and `{{group.timedOut}}`. What the
    /// declarative scenarios' `coordinate` step does.
    pub async fn coordinate_into_locals(&mut self, name: &str) -> Result<(), ScenarioError> {
        let c = self
            .coordinate(name, serde_json::json!({"id": self.id}))
            .await?;
        let ids: Vec<u64> = c.members.iter().map(|m| m.user).collect();
        let peers: Vec<u64> = c.peers.iter().map(|m| m.user).collect();
        self.locals.insert("group.size".into(), ids.len().into());
        self.locals.insert("group.ids".into(), ids.into());
        self.locals.insert(
            "group.peer".into(),
            peers
                .first()
                .copied()
                .map(Into::into)
                .unwrap_or(serde_json::Value::Null),
        );
        self.locals.insert("group.peers".into(), peers.into());
        self.locals
            .insert("group.timedOut".into(), c.timed_out.into());
        Ok(())
    }

    /// Takes what the scenario stored for this user between iterations (see
    /// [`User::put_extension`]), if it is a `T`.
    pub fn take_extension<T: Any + Send>(&mut self) -> Option<Box<T>> {
        self.extension.take().and_then(|b| b.downcast::<T>().ok())
    }

    /// Stores per-user scenario state (connections, sessions) until the next iteration.
    pub fn put_extension<T: Any + Send>(&mut self, value: Box<T>) {
        self.extension = Some(value);
    }
}
