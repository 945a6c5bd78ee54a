//! Reports: the JSON model, the self-contained HTML page (with its iteration scatter),
//! the summary table, the JUnit XML of the thresholds, and writing them.

pub mod baseline;
pub mod html;
pub mod io;
pub mod junit;
pub mod model;
pub mod scatter;
pub mod stored;
pub mod summary;

pub use model::*;
