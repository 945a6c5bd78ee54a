//! The open-files limit (`RLIMIT_NOFILE`): every connected user holds a socket, so a
//! process raises its soft limit to the hard one when it starts, and when users need more
//! descriptors than that, says so once (which limit, how to raise it) instead of leaving
//! only a count of failed connects.

use std::sync::atomic::{AtomicBool, Ordering};

/// Raises the soft open-files limit to the hard one (no privilege needed) and returns the
/// limits now in force, `(soft, hard)`; `None` where the platform has no such limit.
pub fn raise_open_files() -> Option<(u64, u64)> {
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).ok()?;
    match rlimit::increase_nofile_limit(hard) {
        Ok(soft) => {
            tracing::debug!(soft, hard, "open-files limit raised to the hard limit");
            Some((soft, hard))
        }
        Err(e) => {
            tracing::warn!("could not raise the open-files limit: {e}");
            rlimit::getrlimit(rlimit::Resource::NOFILE).ok()
        }
    }
}

static TOLD: AtomicBool = AtomicBool::new(false);

/// Whether `e` means this process (or the machine) has no descriptor left.
pub fn is_out_of_files(e: &std::io::Error) -> bool {
    // EMFILE (per process) and ENFILE (system-wide).
    matches!(e.raw_os_error(), Some(24) | Some(23))
}

/// Says once per process that users need more descriptors than the limit allows; each
/// failed connect is still counted (kind `connect`).
pub fn tell_out_of_files(e: &std::io::Error) {
    if TOLD.swap(true, Ordering::Relaxed) {
        return;
    }
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((0, 0));
    let which = if e.raw_os_error() == Some(23) {
        "the machine's open-files table is full (fs.file-max); raise it with sysctl, or run fewer connections on this machine".to_owned()
    } else {
        format!(
            "this process may open {soft} files (RLIMIT_NOFILE soft {soft}, hard {hard}), one per connected user plus a few: raise the hard limit (`ulimit -Hn`, systemd LimitNOFILE, the container runtime's nofile ulimit) or spread the users over more agents (spec.agents, murmur run --agents N)"
        )
    };
    tracing::error!("users need more connections than this process can open: {which}; further failed connects are only counted (kind connect)");
}
