//! Murmuration's API: the `LoadTest`, `Throttle` and `Coordinator` custom resources
//! (group `murmuration.dev`, version `v1alpha1`), the units manifests are written in, and
//! the CRD definitions generated from these types, and the format of a stored report.
//!
//! This crate is shared by the operator, the master and the agents; it pulls in no load
//! engine and no Kubernetes client.
#![warn(missing_docs)]
// kube's `printcolumn(...)` attributes repeat `type_ = ...`, which this lint mistakes for
// duplicates.
#![allow(clippy::duplicated_attributes)]

pub mod api;
pub mod coordinator;
pub mod crd;
pub mod loadtest;
pub mod metrics;
pub mod profile;
pub mod report;
pub mod schema;
pub mod thresholds;
pub mod throttle;
pub mod units;
pub mod websocket;

pub use coordinator::{Coordinator, CoordinatorSpec, CoordinatorStatus};
pub use loadtest::{LoadTest, LoadTestSpec, LoadTestStatus};
pub use throttle::{Throttle, ThrottleSpec, ThrottleStatus};
