//! INTERFACE STUB — being replaced by the throttle implementation (see helper task).
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A throttle's limit: `rate` permits per `interval`; interval zero = max parallel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Permits per interval (or parallel executions when `interval` is zero).
    pub rate: u64,
    /// The window the rate applies to.
    pub interval: Duration,
}

/// Permit.
pub struct Permit {
    /// When the action should have started.
    pub intended: Instant,
}

/// Figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ThrottleStats {
    /// rate
    pub rate: u64,
    /// requested
    pub requested: u64,
    /// executed
    pub executed: u64,
    /// waiting
    pub waiting: u64,
}

/// Throttle.
pub struct Throttle {
    name: String,
}

impl Throttle {
    /// new
    pub fn new(name: impl Into<String>, _limit: Limit) -> Arc<Throttle> {
        Arc::new(Throttle { name: name.into() })
    }
    /// name
    pub fn name(&self) -> &str {
        &self.name
    }
    /// acquire
    pub async fn acquire(&self) -> Permit {
        Permit {
            intended: Instant::now(),
        }
    }
    /// stats
    pub fn stats(&self) -> ThrottleStats {
        ThrottleStats::default()
    }
}

/// Throttles by name.
#[derive(Default, Clone)]
pub struct Throttles {
    map: HashMap<String, Arc<Throttle>>,
}

impl Throttles {
    /// Adds one.
    pub fn insert(&mut self, t: Arc<Throttle>) {
        self.map.insert(t.name().to_owned(), t);
    }
    /// get
    pub fn get(&self, name: &str) -> Option<Arc<Throttle>> {
        self.map.get(name).cloned()
    }
    /// all
    pub fn all(&self) -> Vec<Arc<Throttle>> {
        self.map.values().cloned().collect()
    }
}
impl Throttles {
    /// Builds the throttles of a test.
    pub fn from_specs<'a>(
        _i: impl Iterator<Item = (&'a str, &'a murmuration_crds::ThrottleSpec)>,
    ) -> Result<Throttles, String> {
        Ok(Throttles::default())
    }
}
