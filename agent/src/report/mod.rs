//! Reports: the JSON model, the self-contained HTML page, and the summary table.

pub mod model;

pub use model::*;
