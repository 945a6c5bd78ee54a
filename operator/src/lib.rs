//! Murmuration's operator: LoadTests (with their Throttles and Coordinators) become a
//! token Secret, a master pod and Service, and a StatefulSet of agents; the live settings
//! go to the master's API; the master's state comes back as status, conditions and Events;
//! at the end the report is kept in a ConfigMap and the pods go.
//!
//! A test is judged by the model's compiler ([`murmuration_model::compile_objects`]), as
//! `murmur run` and the master judge it. Parts: [`build`] (the desired objects, pure),
//! [`status`] (status from the master's, pure), [`master`] (the master's API client),
//! [`controller`] (the reconcile pipeline), [`lease`] (leader election), [`metrics`].
#![warn(missing_docs)]

pub mod build;
pub mod controller;
pub mod lease;
pub mod master;
pub mod metrics;
pub mod names;
pub mod status;
