//! Murmuration's manifest model: the one compiler from manifests to a test plan.
//!
//! It reads LoadTest, Throttle and Coordinator documents (YAML with limits, or the JSON it
//! writes itself), checks everything a schema cannot (units, templates and their
//! variables, JSONPath, headers, steps, thresholds and their metrics, Throttle and
//! Coordinator specs) and produces a [`TestPlan`], or one [`ManifestError`] naming the
//! document, the field and the reason. `murmur run`, the master, every agent and the
//! operator call it, so a test is judged the same way everywhere; the operator skips only
//! the check of custom scenario names, which needs the agent binary.
//!
//! It also holds the pure rules every runner shares: user pacing at `userRate`, test
//! completion ([`pacing`]) and the throttle ramp ([`throttle::Ramp`]).
//!
//! Pure: no async runtime, no HTTP stack, no Kubernetes client.
#![warn(missing_docs)]

pub mod coordinator;
pub mod error;
pub mod http;
pub mod manifest;
pub mod messaging;
pub mod pacing;
pub mod plan;
pub mod remote_write;
pub mod template;
pub mod thresholds;
pub mod throttle;
pub mod websocket;

pub use error::{FieldError, ManifestError};
pub use manifest::{parse_manifests, read_manifests, Manifests};
pub use plan::{
    build_plan, compile, compile_file, compile_objects, compile_text, names_used, CustomScenarios,
    RepeatPlan, ScenarioPlan, TestPlan, UserId, Vars,
};
