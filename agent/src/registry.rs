//! Scenarios by name, as the engine stores them: the custom scenarios a `murmur` binary is
//! built with ([`Registry`]), and the built-in ones, behind one trait object.

use std::collections::HashMap;
use std::sync::Arc;

use crate::scenario::{BoxFuture, InitContext, Scenario, ScenarioError};
use crate::users::{Bound, RunningScenario};

/// A scenario behind a trait object, as the engine stores it.
pub(crate) trait DynScenario: Send + Sync + 'static {
    /// Runs `init`, returning the scenario bound to its state.
    fn init<'a>(
        &'a self,
        ctx: &'a InitContext,
    ) -> BoxFuture<'a, Result<Arc<dyn RunningScenario>, ScenarioError>>;
}

impl<S: Scenario> DynScenario for Arc<S> {
    fn init<'a>(
        &'a self,
        ctx: &'a InitContext,
    ) -> BoxFuture<'a, Result<Arc<dyn RunningScenario>, ScenarioError>> {
        Box::pin(async move {
            let state = Scenario::init(&**self, ctx).await?;
            Ok(Arc::new(Bound {
                scenario: self.clone(),
                state,
            }) as Arc<dyn RunningScenario>)
        })
    }
}

/// Custom scenarios by name: what `scenario: {custom: {name: ...}}` selects. Build your own
/// `murmur` binary with `murmuration_agent::cli::main_with` and a registry holding your
/// scenarios.
#[derive(Default, Clone)]
pub struct Registry {
    scenarios: HashMap<String, Arc<dyn DynScenario>>,
}

impl Registry {
    /// An empty registry (the built-in `http` and `messaging` scenarios need no entry).
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Registers `scenario` under `name`.
    pub fn register<S: Scenario>(mut self, name: &str, scenario: S) -> Registry {
        self.scenarios
            .insert(name.to_owned(), Arc::new(Arc::new(scenario)));
        self
    }

    /// The scenario registered under `name`.
    pub(crate) fn get(&self, name: &str) -> Option<Arc<dyn DynScenario>> {
        self.scenarios.get(name).cloned()
    }

    /// Whether a scenario is registered under `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.scenarios.contains_key(name)
    }

    /// Registered names, sorted (for error messages).
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.scenarios.keys().cloned().collect();
        v.sort();
        v
    }
}
