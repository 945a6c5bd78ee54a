//! Helpers for unit tests: a user of a throwaway test environment.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::coordinator::Coordinators;
use crate::metrics::{StepNames, WorkerMetrics};
use crate::scenario::{TestEnv, User, UserId};
use crate::throttle::Throttles;

/// A test environment with `vars` (a JSON object) and nothing else.
pub fn test_env(vars: serde_json::Value) -> Arc<TestEnv> {
    let vars = match vars {
        serde_json::Value::Object(m) => m,
        _ => Default::default(),
    };
    Arc::new(TestEnv {
        name: "test".into(),
        vars: ArcSwap::from_pointee(vars),
        throttles: Throttles::default(),
        coordinators: Coordinators::default(),
        steps: StepNames::default(),
    })
}

/// User `id` of a fresh environment with `vars`.
pub fn test_user(id: UserId, vars: serde_json::Value) -> User {
    User::new(id, test_env(vars), WorkerMetrics::new())
}
