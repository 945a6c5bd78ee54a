//! Service names for processes on this machine: a marked block in `/etc/hosts`.
//!
//! Each owner (a test kubelet) keeps one block
//!
//! ```text
//! # BEGIN murmuration-e2e <run-id> pid=<pid>
//! 127.0.0.2 web.default.svc web.default.svc.cluster.local
//! # END murmuration-e2e <run-id>
//! ```
//!
//! rewritten atomically (temp file + rename) under a file lock whenever it changes, removed
//! on drop, on interruption (the cleanup registry) and, for blocks whose owning process is
//! dead (a crashed or killed earlier run), at the next write by anyone.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::procs::{self, Cleanup, CleanupGuard};

const MARK: &str = "murmuration-e2e";

/// The hosts file used: `MURMURATION_E2E_HOSTS_FILE` or `/etc/hosts`.
pub fn hosts_file() -> PathBuf {
    std::env::var_os("MURMURATION_E2E_HOSTS_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/hosts"))
}

/// One owner's block in the hosts file.
#[derive(Debug)]
pub struct HostsBlock {
    inner: Arc<Inner>,
    _guard: CleanupGuard,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    run_id: String,
    last: Mutex<Option<String>>,
    /// Set (under the file lock) once the block is removed for good: later writes are
    /// dropped, so a kubelet still running during an interruption cannot write it back.
    closed: std::sync::atomic::AtomicBool,
}

impl HostsBlock {
    /// Creates an (empty, not yet written) block for `run_id` in `path`, and removes stale
    /// blocks of dead processes.
    pub fn new(path: PathBuf, run_id: &str) -> std::io::Result<Self> {
        let inner = Arc::new(Inner {
            path,
            run_id: run_id.to_string(),
            last: Mutex::new(None),
            closed: std::sync::atomic::AtomicBool::new(false),
        });
        let for_cleanup = inner.clone();
        let guard = procs::register(Cleanup::Action(Box::new(move || {
            let _ = for_cleanup.close();
        })));
        inner.write(None)?;
        Ok(HostsBlock {
            inner,
            _guard: guard,
        })
    }

    /// The file this block lives in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Sets the block's entries (name → addresses); writes only when they changed.
    pub fn set(&self, entries: &BTreeMap<String, Vec<Ipv4Addr>>) -> std::io::Result<()> {
        let mut body = String::new();
        // One line per address, names grouped by address, in a stable order.
        let mut by_ip: BTreeMap<Ipv4Addr, Vec<&str>> = BTreeMap::new();
        for (name, ips) in entries {
            for ip in ips {
                by_ip.entry(*ip).or_default().push(name);
            }
        }
        for (ip, names) in by_ip {
            body.push_str(&format!("{ip} {}\n", names.join(" ")));
        }
        {
            let last = self.inner.last.lock().unwrap_or_else(|e| e.into_inner());
            if last.as_deref() == Some(body.as_str()) {
                return Ok(());
            }
        }
        self.inner.write(Some(&body))
    }
}

impl Drop for HostsBlock {
    fn drop(&mut self) {
        if let Err(e) = self.inner.close() {
            eprintln!(
                "murmuration-e2e: could not remove block {} from {}: {e}",
                self.inner.run_id,
                self.inner.path.display()
            );
        }
    }
}

impl Inner {
    /// Removes the block for good.
    fn close(&self) -> std::io::Result<()> {
        self.write_locked(None, true)
    }

    /// Rewrites the file with this block set to `body` (None: removed).
    fn write(&self, body: Option<&str>) -> std::io::Result<()> {
        self.write_locked(body, false)
    }

    fn write_locked(&self, body: Option<&str>, close: bool) -> std::io::Result<()> {
        use std::sync::atomic::Ordering;
        let _lock = FileLock::acquire(&lock_path(&self.path))?;
        if close {
            self.closed.store(true, Ordering::SeqCst);
        } else if self.closed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let body = if close { None } else { body };
        let current = std::fs::read_to_string(&self.path).unwrap_or_default();
        let mut out = strip_blocks(&current, &self.run_id);
        if let Some(body) = body {
            if !body.is_empty() {
                if !out.is_empty() && !out.ends_with('\n') {
                    out.push('\n');
                }
                out.push_str(&format!(
                    "# BEGIN {MARK} {} pid={}\n{body}# END {MARK} {}\n",
                    self.run_id,
                    std::process::id(),
                    self.run_id
                ));
            }
        }
        if out != current {
            atomic_write(&self.path, &out)?;
        }
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = body.map(str::to_string);
        Ok(())
    }
}

/// Removes the blocks of dead processes (crashed or killed runs) from `path`.
pub fn remove_stale_blocks(path: &Path) -> std::io::Result<()> {
    let _lock = FileLock::acquire(&lock_path(path))?;
    let current = match std::fs::read_to_string(path) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let out = strip_blocks(&current, "");
    if out != current {
        atomic_write(path, &out)?;
    }
    Ok(())
}

/// Removes the block of `run_id` and every block whose owner pid is dead.
fn strip_blocks(text: &str, run_id: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut skipping = false;
    for line in text.split_inclusive('\n') {
        let t = line.trim_end();
        if let Some(rest) = t.strip_prefix(&format!("# BEGIN {MARK} ")) {
            let mut parts = rest.split_whitespace();
            let id = parts.next().unwrap_or("");
            let pid = parts
                .next()
                .and_then(|p| p.strip_prefix("pid="))
                .and_then(|p| p.parse::<u32>().ok())
                .unwrap_or(0);
            if id == run_id || !procs::pid_alive(pid) {
                skipping = true;
                continue;
            }
        }
        if skipping {
            if t.starts_with(&format!("# END {MARK} ")) {
                skipping = false;
            }
            continue;
        }
        out.push_str(line);
    }
    out
}

/// One lock for all edits of hosts files by these fixtures (all processes).
fn lock_path(_hosts: &Path) -> PathBuf {
    std::env::temp_dir().join("murmuration-e2e-hosts.lock")
}

fn atomic_write(path: &Path, contents: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let tmp = dir.join(format!(
        ".{}.{MARK}.{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode())
        .unwrap_or(0o644);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        // A bind-mounted /etc/hosts (containers) cannot be replaced: write it in place.
        if e.raw_os_error() == Some(libc::EBUSY) || e.raw_os_error() == Some(libc::EXDEV) {
            return std::fs::write(path, contents);
        }
        return Err(e);
    }
    Ok(())
}

/// An exclusive `flock` held until drop.
pub(crate) struct FileLock(#[allow(dead_code)] std::fs::File);

impl FileLock {
    pub(crate) fn acquire(path: &Path) -> std::io::Result<FileLock> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        use std::os::fd::AsRawFd;
        loop {
            // SAFETY: flock on an fd we own.
            let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
            if r == 0 {
                return Ok(FileLock(f));
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_written_replaced_and_removed_and_stale_blocks_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        std::fs::write(
            &path,
            "127.0.0.1 localhost\n# BEGIN murmuration-e2e old pid=999999999\n127.0.0.9 x\n# END murmuration-e2e old\n",
        )
        .unwrap();
        let block = HostsBlock::new(path.clone(), "run1").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "127.0.0.1 localhost\n"
        );
        let mut m = BTreeMap::new();
        m.insert("a.ns.svc".to_string(), vec![Ipv4Addr::new(127, 0, 0, 2)]);
        m.insert(
            "a.ns.svc.cluster.local".to_string(),
            vec![Ipv4Addr::new(127, 0, 0, 2)],
        );
        block.set(&m).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("127.0.0.2 a.ns.svc a.ns.svc.cluster.local\n"),
            "{text}"
        );
        m.clear();
        m.insert("b.ns.svc".to_string(), vec![Ipv4Addr::new(127, 0, 0, 3)]);
        block.set(&m).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains("a.ns.svc") && text.contains("127.0.0.3 b.ns.svc"),
            "{text}"
        );
        drop(block);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "127.0.0.1 localhost\n"
        );
    }
}
