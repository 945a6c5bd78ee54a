//! Murmuration's load engine (being assembled; see the full module list in the next commit).
#![warn(missing_docs)]

pub mod client;
pub mod coordinator;
pub mod field;
pub mod metrics;
pub mod report;
pub mod scenario;
pub mod template;
pub mod throttle;
mod users;

#[cfg(test)]
mod test_support;
