//! Reports: the JSON model, the self-contained HTML page, the summary table, the JUnit
//! XML of the thresholds, and writing them.

pub mod html;
pub mod io;
pub mod junit;
pub mod model;
pub mod stored;
pub mod summary;

pub use model::*;
