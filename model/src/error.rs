//! The one error type of the model: which document, which field, and why. Every caller
//! (`murmur run`, the master, the agents, the operator) reports these as they are.

use std::fmt;

/// A field of a spec that is wrong, and why (within one document).
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

    /// The same error in `document`.
    pub fn in_document(self, document: impl Into<String>) -> ManifestError {
        ManifestError::Invalid {
            document: document.into(),
            field: self.field,
            reason: self.reason,
        }
    }
}

/// Why manifests cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A document is not valid YAML, breaks a limit, does not match its kind's schema, or
    /// holds a value the test cannot run with.
    #[error("{document}: {field}: {reason}")]
    Invalid {
        /// Which document: `FILE: document N (Kind name)` for text, `Kind name` for objects.
        document: String,
        /// The field path (`spec.users`), or `(document)` / `(file)`.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

impl ManifestError {
    /// An error at `field` of `document`.
    pub fn invalid(
        document: impl Into<String>,
        field: impl Into<String>,
        reason: impl fmt::Display,
    ) -> ManifestError {
        ManifestError::Invalid {
            document: document.into(),
            field: field.into(),
            reason: reason.to_string(),
        }
    }

    /// The field named, if the error names one.
    pub fn field(&self) -> Option<&str> {
        match self {
            ManifestError::Invalid { field, .. } => Some(field),
            ManifestError::Read { .. } => None,
        }
    }

    /// The document named, if the error names one.
    pub fn document(&self) -> Option<&str> {
        match self {
            ManifestError::Invalid { document, .. } => Some(document),
            ManifestError::Read { .. } => None,
        }
    }
}
