//! The fixtures' error type: every failure says what was being done and, for processes,
//! where their logs are.

use std::time::Duration;

/// Result of the e2e fixtures.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong while setting up or driving the test environment.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A Kubernetes API call failed.
    #[error("{context}: {source}")]
    Kube {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: kube::Error,
    },
    /// Something did not happen in time.
    #[error("timed out after {after:?} waiting for {what}{}", logs_hint(.logs))]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long it was awaited.
        after: Duration,
        /// Log files that may tell why (may be empty).
        logs: Vec<std::path::PathBuf>,
    },
    /// A process of the environment exited when it should not have.
    #[error("{what} exited ({status}){}", logs_hint(.logs))]
    Exited {
        /// Which process.
        what: String,
        /// Its exit status.
        status: String,
        /// Its log files, with their last lines.
        logs: Vec<std::path::PathBuf>,
    },
    /// Anything else in setting up the environment.
    #[error("{0}")]
    Setup(String),
}

fn logs_hint(logs: &[std::path::PathBuf]) -> String {
    if logs.is_empty() {
        return String::new();
    }
    let mut s = String::from("; see the logs:");
    for l in logs {
        s.push_str("\n  ");
        s.push_str(&l.display().to_string());
        if let Some(tail) = crate::util::tail_file(l, 15) {
            for line in tail.lines() {
                s.push_str("\n    | ");
                s.push_str(line);
            }
        }
    }
    s
}

/// Adds context to an io::Result.
pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: context(),
            source,
        })
    }
}

/// Adds context to a kube::Result.
pub(crate) trait KubeContext<T> {
    fn kctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> KubeContext<T> for kube::Result<T> {
    fn kctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Kube {
            context: context(),
            source,
        })
    }
}
