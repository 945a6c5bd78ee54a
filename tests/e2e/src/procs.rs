//! Child processes that cannot outlive the test, and the process-wide cleanup registry.
//!
//! Every process the fixtures start (etcd, the API server, the controller manager, the
//! pods' containers) is:
//!
//! - the leader of its own process group, so that a kill reaches whatever it started, and
//!   so that the terminal's Ctrl-C does not reach it before the fixture can clean up;
//! - started with `prctl(PR_SET_PDEATHSIG, SIGKILL)`, so the kernel kills it when the test
//!   process dies, even by `SIGKILL`. The death signal fires when the *thread* that forked
//!   the child exits, so all children are forked by one spawner thread that lives as long
//!   as the process.
//!
//! Cleanups that must happen even when the test is interrupted (killing process groups,
//! removing the `/etc/hosts` block, removing temp dirs) are registered here; they run on
//! `SIGINT`, `SIGTERM` and `SIGHUP` (after which the signal's default action is taken) and
//! at process exit (`atexit`), besides the owners' own `Drop`.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("e2e-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
                // The channel's sender lives in a static: never reached before exit. Park
                // so that the children's parent-death signal does not fire early.
                loop {
                    std::thread::park();
                }
            })
            .expect("spawn the e2e spawner thread");
        Mutex::new(tx)
    })
}

/// Starts `cmd` as a process-group leader that is killed when this process dies.
///
/// The returned child's pid is also its process group id.
pub fn spawn_guarded(mut cmd: Command) -> io::Result<Child> {
    install_cleanup_hooks();
    if shutting_down() {
        return Err(io::Error::other("the test process is shutting down"));
    }
    let parent = std::process::id() as libc::pid_t;
    cmd.process_group(0);
    // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() != parent {
                libc::_exit(137);
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    spawner()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, tx))
        .map_err(|_| io::Error::other("e2e spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| io::Error::other("e2e spawner thread did not answer"))?
}

/// Sends `sig` to the process group `pgid`. Returns false when the group no longer exists.
pub fn signal_group(pgid: u32, sig: libc::c_int) -> bool {
    if pgid <= 1 {
        return false;
    }
    // SAFETY: plain syscall.
    unsafe { libc::kill(-(pgid as libc::pid_t), sig) == 0 }
}

/// True while a process with this pid exists (and is not a zombie we could not see).
pub fn pid_alive(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    // SAFETY: plain syscall; signal 0 only checks existence.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    if r != 0 {
        return io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    }
    // A zombie still answers kill(0); look at its state.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Kills a child's whole process group (SIGTERM, then SIGKILL after `grace`) and reaps it.
pub fn kill_child(child: &mut Child, grace: Duration) {
    let pgid = child.id();
    if matches!(child.try_wait(), Ok(Some(_))) {
        signal_group(pgid, libc::SIGKILL);
        return;
    }
    if grace.is_zero() {
        signal_group(pgid, libc::SIGKILL);
    } else {
        signal_group(pgid, libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        signal_group(pgid, libc::SIGKILL);
    }
    let _ = child.wait();
}

/// What the registry does for a registered resource at interruption or exit.
pub enum Cleanup {
    /// SIGKILL this process group.
    KillGroup(u32),
    /// Remove this directory tree.
    RemoveDir(std::path::PathBuf),
    /// Any other action (must not block for long).
    Action(Box<dyn FnMut() + Send>),
}

/// Removes its registry entry when dropped (the owner then cleans up by itself).
#[derive(Debug)]
pub struct CleanupGuard(u64);

impl CleanupGuard {
    /// Id of the registry entry.
    pub fn id(&self) -> u64 {
        self.0
    }
}

impl Drop for CleanupGuard {
    fn drop(&mut self) {
        registry()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.0);
    }
}

fn registry() -> &'static Mutex<BTreeMap<u64, Cleanup>> {
    static REG: OnceLock<Mutex<BTreeMap<u64, Cleanup>>> = OnceLock::new();
    REG.get_or_init(|| Mutex::new(BTreeMap::new()))
}

/// Registers a cleanup to run if the process is interrupted or exits before the guard is
/// dropped.
pub fn register(c: Cleanup) -> CleanupGuard {
    install_cleanup_hooks();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, c);
    CleanupGuard(id)
}

static RUNNING_ALL: AtomicBool = AtomicBool::new(false);
static SHUTTING_DOWN: AtomicBool = AtomicBool::new(false);

/// True once a signal or the process exit started the cleanups: nothing new is started.
pub fn shutting_down() -> bool {
    SHUTTING_DOWN.load(Ordering::SeqCst)
}

/// Runs every registered cleanup, newest first (kills before directory removals of the
/// same owner, since owners register their dirs first).
pub fn run_all_cleanups() {
    if RUNNING_ALL.swap(true, Ordering::SeqCst) {
        return;
    }
    // Never block forever at exit on a mutex held by a thread that is gone.
    let mut entries = Vec::new();
    for _ in 0..50 {
        if let Ok(mut reg) = registry().try_lock() {
            entries = std::mem::take(&mut *reg).into_iter().collect::<Vec<_>>();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    entries.sort_by_key(|(id, _)| std::cmp::Reverse(*id));
    // Kill everything first, then the other actions.
    let mut groups = Vec::new();
    for (_, c) in entries.iter() {
        if let Cleanup::KillGroup(pgid) = c {
            signal_group(*pgid, libc::SIGKILL);
            groups.push(*pgid);
        }
    }
    // Reap them (for at most a second), so that no zombie outlives this process.
    let deadline = Instant::now() + Duration::from_secs(1);
    for pgid in groups {
        loop {
            let mut status = 0;
            // SAFETY: plain syscall; reaps only children in the group.
            let r = unsafe { libc::waitpid(-(pgid as libc::pid_t), &mut status, libc::WNOHANG) };
            if r < 0 || (r == 0 && Instant::now() > deadline) {
                break;
            }
            if r == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
    for (_, c) in entries.iter_mut() {
        match c {
            Cleanup::KillGroup(_) => {}
            Cleanup::RemoveDir(p) => {
                let _ = std::fs::remove_dir_all(p);
            }
            Cleanup::Action(f) => f(),
        }
    }
    RUNNING_ALL.store(false, Ordering::SeqCst);
}

extern "C" fn at_exit() {
    SHUTTING_DOWN.store(true, Ordering::SeqCst);
    run_all_cleanups();
}

fn install_cleanup_hooks() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: registering a plain extern "C" fn.
        unsafe {
            libc::atexit(at_exit);
        }
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
            Ok(mut signals) => {
                let _ = std::thread::Builder::new()
                    .name("e2e-signals".into())
                    .spawn(move || {
                        if let Some(sig) = signals.forever().next() {
                            eprintln!(
                                "murmuration-e2e: signal {sig}: stopping the control plane and test pods"
                            );
                            SHUTTING_DOWN.store(true, Ordering::SeqCst);
                            run_all_cleanups();
                            let _ = signal_hook::low_level::emulate_default_handler(sig);
                            std::process::exit(128 + sig);
                        }
                    });
            }
            Err(e) => eprintln!("murmuration-e2e: cannot install signal handlers: {e}"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guarded_child_is_group_leader_and_killed() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let mut child = spawn_guarded(cmd).expect("spawn sleep");
        let pid = child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        assert_eq!(fields[2], pid.to_string(), "pgid == pid");
        kill_child(&mut child, Duration::from_millis(500));
        assert!(!pid_alive(pid));
    }
}
