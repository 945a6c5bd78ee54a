//! INTERFACE STUB — being replaced by the coordinator implementation (see helper task).
use std::collections::HashMap;
use std::sync::Arc;

use crate::scenario::UserId;

/// Why joining failed.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// No such coordinator.
    #[error("no coordinator named {0:?}")]
    Unknown(String),
}

/// A member of a group.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    /// Its user id.
    pub user: UserId,
    /// The data it registered.
    pub data: serde_json::Value,
}

/// What a user learns when released.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Coordination {
    /// The members of this user's group (first numbered item), itself included.
    pub members: Vec<Member>,
    /// The peers this user is paired with (`pairs` items).
    pub peers: Vec<Member>,
    /// True when released by the timeout.
    pub timed_out: bool,
}

/// A coordinator.
pub struct Coordinator {
    name: String,
}

impl Coordinator {
    /// name
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Coordinators by name.
#[derive(Default, Clone)]
pub struct Coordinators {
    map: HashMap<String, Arc<Coordinator>>,
}

impl Coordinators {
    /// join
    pub async fn join(
        &self,
        name: &str,
        user: UserId,
        data: serde_json::Value,
    ) -> Result<Coordination, CoordinatorError> {
        let _ = (user, data);
        self.map
            .get(name)
            .ok_or_else(|| CoordinatorError::Unknown(name.to_owned()))?;
        Ok(Coordination::default())
    }
}
#[allow(missing_docs)]
#[derive(Default)]
pub struct CoordinatorStats {
    pub groups: u64,
    pub timeouts: u64,
    pub waiting: u64,
}
#[allow(missing_docs)]
impl Coordinator {
    pub fn stats(&self) -> CoordinatorStats {
        CoordinatorStats::default()
    }
}
#[allow(missing_docs)]
impl Coordinators {
    pub fn from_specs<'a>(
        _i: impl Iterator<Item = (&'a str, &'a murmuration_crds::CoordinatorSpec)>,
    ) -> Result<Coordinators, String> {
        Ok(Coordinators::default())
    }
    pub fn all(&self) -> Vec<Arc<Coordinator>> {
        vec![]
    }
}
