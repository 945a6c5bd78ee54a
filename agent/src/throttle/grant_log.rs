//! The grant log: when `MURMUR_GRANT_LOG=DIR` is set, every rate throttle of the process
//! appends the time of each grant it makes, and the rate in force for it, to
//! `DIR/NAME.PID.grants`. Tests and benchmarks read these files to judge the throttle's
//! promise ("never more than `rate` grants in any window of one interval") on the very
//! times the throttle decided on, not on times observed later by a sender or a target.
//!
//! Off (the variable unset), it costs one `Option` check per dispatcher wake-up. On, it
//! costs one `write` per wake-up (the grants of that wake-up together), so that a process
//! killed with SIGKILL loses at most the grants of the wake-up it died in. A file holds at
//! most [`MAX_GRANTS`] grants; then a `truncated` line ends it, so that a reader never
//! mistakes a cut log for a complete one.
//!
//! Format, one line per grant: `UNIX_NANOS RATE`. Times are the throttle's monotonic
//! clock placed on the Unix epoch through one anchor per process: exact differences within
//! a process, and a constant offset (well under a microsecond) between processes, which
//! shifts every window of one process alike and so cannot change what it counts.

use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The environment variable naming the directory of the grant logs.
pub const GRANT_LOG_ENV: &str = "MURMUR_GRANT_LOG";

/// Grants one file holds at most (about 30 MB of text).
pub const MAX_GRANTS: u64 = 1_000_000;

/// The grant times of one throttle in this process.
pub(crate) struct GrantLog {
    file: std::fs::File,
    path: PathBuf,
    /// Lines not written yet: the grants of the current dispatcher wake-up.
    pending: String,
    logged: u64,
    /// Set once the file is full or a write failed: nothing more is written.
    closed: bool,
}

impl GrantLog {
    /// The log of throttle `name` if `MURMUR_GRANT_LOG` asks for one; a directory that
    /// cannot be written is reported once and the throttle runs without a log.
    pub(crate) fn from_env(name: &str) -> Option<GrantLog> {
        let dir = PathBuf::from(std::env::var_os(GRANT_LOG_ENV)?);
        // A name is a Kubernetes object name; keep the file name plain whatever it is.
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = dir.join(format!("{safe}.{}.grants", std::process::id()));
        let opened = std::fs::create_dir_all(&dir).and_then(|()| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
        });
        match opened {
            Ok(file) => {
                anchor();
                Some(GrantLog {
                    file,
                    path,
                    pending: String::new(),
                    logged: 0,
                    closed: false,
                })
            }
            Err(e) => {
                tracing::warn!(throttle = name, path = %path.display(), "no grant log: {e}");
                None
            }
        }
    }

    /// Notes one grant made at `at` with `rate` in force.
    pub(crate) fn grant(&mut self, at: Instant, rate: u64) {
        if self.closed {
            return;
        }
        if self.logged == MAX_GRANTS {
            self.pending.push_str("truncated\n");
            self.flush();
            self.closed = true;
            return;
        }
        self.logged += 1;
        use std::fmt::Write as _;
        let _ = writeln!(self.pending, "{} {rate}", unix_nanos(at));
    }

    /// Writes the grants noted since the last flush, in one write.
    pub(crate) fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        if let Err(e) = self.file.write_all(self.pending.as_bytes()) {
            tracing::warn!(path = %self.path.display(), "grant log given up: {e}");
            self.closed = true;
        }
        self.pending.clear();
    }
}

/// The process's anchor: an instant and the Unix time it corresponds to.
fn anchor() -> (Instant, i128) {
    static ANCHOR: OnceLock<(Instant, i128)> = OnceLock::new();
    *ANCHOR.get_or_init(|| {
        // The pair read closest together (the thread may be preempted between two reads):
        // its error is under half the gap.
        let mut best: Option<(Duration, Instant, i128)> = None;
        for _ in 0..16 {
            let before = Instant::now();
            let wall = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i128);
            let after = Instant::now();
            let gap = after - before;
            if best.is_none_or(|(g, _, _)| gap < g) {
                best = Some((gap, before + gap / 2, wall));
            }
        }
        let (_, at, wall) = best.expect("read at least once");
        (at, wall)
    })
}

/// `at` on the Unix epoch, in nanoseconds.
fn unix_nanos(at: Instant) -> i128 {
    let (base, wall) = anchor();
    if at >= base {
        wall + (at - base).as_nanos() as i128
    } else {
        wall - (base - at).as_nanos() as i128
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_keep_their_differences_exactly() {
        let a = Instant::now();
        let b = a + Duration::from_nanos(123_456_789);
        assert_eq!(unix_nanos(b) - unix_nanos(a), 123_456_789);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i128;
        assert!((unix_nanos(Instant::now()) - now).abs() < 1_000_000_000);
    }
}
