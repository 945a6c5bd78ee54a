//! The `Coordinator` custom resource: groups users across agents as they arrive at a
//! `coordinate` step (amoc's coordinator, distributed). Design section 4.

use std::fmt;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// Groups users as they reach a `coordinate: NAME` step, following a plan of
/// `{users, action}` items; partial groups are released after `timeout`.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "murmuration.dev",
    version = "v1alpha1",
    kind = "Coordinator",
    plural = "coordinators",
    shortname = "coord",
    namespaced,
    status = "CoordinatorStatus",
    printcolumn(name = "Test", type_ = "string", json_path = ".spec.loadTest"),
    printcolumn(name = "Waiting", type_ = "integer", json_path = ".status.waiting"),
    printcolumn(name = "Groups", type_ = "integer", json_path = ".status.groups"),
    printcolumn(name = "Timeouts", type_ = "integer", json_path = ".status.timeouts"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CoordinatorSpec {
    /// Name of the LoadTest (same namespace) whose users this coordinator groups. Ignored by
    /// `murmur run`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_test: Option<String>,

    /// After this long without a new user arriving, waiting users are released as a partial
    /// group (event type `timeout`), and the `all` items fire. Default `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::optional_duration_string")]
    pub timeout: Option<String>,

    /// The coordination plan: every item counts arriving users on its own.
    #[schemars(length(min = 1, max = 64))]
    pub plan: Vec<PlanItem>,
}

/// One item of a coordination plan.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlanItem {
    /// Group size: a number (`2`), a range (`{min: 3, max: 5}`, a new size is drawn for each
    /// group), or `all` (everyone who arrived, on timeout).
    #[schemars(schema_with = "crate::schema::group_size")]
    pub users: GroupSize,

    /// What a formed group does: `group` (members learn each other's ids), `pairs` (members
    /// are matched in distinct pairs), or `release` (members just go on together).
    pub action: CoordinationAction,
}

/// How many users make a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupSize {
    /// Exactly this many.
    Exactly(u32),
    /// A size drawn uniformly from `min..=max` for each group.
    Range {
        /// Smallest group.
        min: u32,
        /// Largest group.
        max: u32,
    },
    /// Everyone who arrived; fires on timeout only.
    All,
}

impl Serialize for GroupSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            GroupSize::Exactly(n) => s.serialize_u32(*n),
            GroupSize::All => s.serialize_str("all"),
            GroupSize::Range { min, max } => {
                use serde::ser::SerializeMap;
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("min", min)?;
                m.serialize_entry("max", max)?;
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for GroupSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = GroupSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a positive number, \"all\", or {min, max}")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<GroupSize, E> {
                match u32::try_from(n) {
                    Ok(0) => Err(E::custom("group size must be at least 1")),
                    Ok(n) => Ok(GroupSize::Exactly(n)),
                    Err(_) => Err(E::custom(format!("group size {n} is absurdly large"))),
                }
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<GroupSize, E> {
                if n < 1 {
                    return Err(E::custom(format!("group size {n} must be at least 1")));
                }
                self.visit_u64(n as u64)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<GroupSize, E> {
                match s {
                    "all" => Ok(GroupSize::All),
                    other => Err(E::custom(format!(
                        "{other:?} is not a group size (a number, \"all\", or {{min, max}})"
                    ))),
                }
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<GroupSize, A::Error> {
                let (mut min, mut max) = (None, None);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "min" => min = Some(map.next_value::<u32>()?),
                        "max" => max = Some(map.next_value::<u32>()?),
                        other => {
                            return Err(de::Error::unknown_field(other, &["min", "max"]));
                        }
                    }
                }
                let min = min.ok_or_else(|| de::Error::missing_field("min"))?;
                let max = max.ok_or_else(|| de::Error::missing_field("max"))?;
                if min < 1 || max < min {
                    return Err(de::Error::custom(format!(
                        "group size range {{min: {min}, max: {max}}} needs 1 <= min <= max"
                    )));
                }
                Ok(GroupSize::Range { min, max })
            }
        }
        d.deserialize_any(V)
    }
}

/// What a formed group does.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::schema::field_describes)]
pub enum CoordinationAction {
    /// Release the members together; each learns the ids of the whole group.
    Group,
    /// Release the members together, matched in distinct pairs (amoc's `fun(Event, U1, U2)`):
    /// each member learns the peers it is paired with.
    Pairs,
    /// Release the members together; they only learn how many they were.
    Release,
}

/// Live figures of a coordinator.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct CoordinatorStatus {
    /// Users waiting for their group now.
    #[serde(default)]
    pub waiting: i64,
    /// Groups formed since the start (of all plan items).
    #[serde(default)]
    pub groups: i64,
    /// Partial groups released by the timeout.
    #[serde(default)]
    pub timeouts: i64,
}
