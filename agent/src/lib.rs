//! Murmuration's load engine: the scenario model (amoc's `init`/`start`/`terminate`), users
//! as lightweight tasks, the declarative `http` and `websocket` scenarios, the `messaging` one, throttles,
//! coordinators, HDR-histogram metrics with a 1 s time series, thresholds, reports, the
//! bundled demo targets, and the `murmur` command line.
//!
//! Custom scenarios: implement [`scenario::Scenario`], register it in a
//! [`registry::Registry`], and call [`cli::main_with`] from your own `main` (see
//! `examples/`).
#![warn(missing_docs)]

pub mod agent;
pub mod arrivals;
pub mod cli;
pub mod client;
pub mod coordinator;
pub mod demo;
pub mod engine;
mod json_stream;
pub mod limits;
pub mod master;
pub mod metrics;
pub mod plan;
pub mod progress;
pub mod registry;
pub mod report;
pub mod scenario;
pub mod tally;
pub mod template;
pub mod thresholds;
pub mod throttle;
mod users;
pub mod wait;
pub mod wire;

#[cfg(test)]
mod test_support;
