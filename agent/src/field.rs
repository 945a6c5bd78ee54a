//! Errors that name the field of a spec that is wrong.

use std::fmt;

/// A field of a spec that is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// Path of the field, e.g. `spec.scenario.http.steps[2].request.path`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FieldError {
    /// An error at `field`.
    pub fn new(field: impl Into<String>, reason: impl fmt::Display) -> FieldError {
        FieldError {
            field: field.into(),
            reason: reason.to_string(),
        }
    }
}
