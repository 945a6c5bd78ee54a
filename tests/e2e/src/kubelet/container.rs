//! One container: its process, restarts, termination and termination message.

#[allow(unused_imports)]
use super::*;

/// Runs one container until the pod stops or the restart policy says it is done.
pub(super) async fn run_container(ctx: Arc<PodCtx>, i: usize, c: Container) {
    let mut stop = ctx.stop.subscribe();
    let policy = {
        let p = lock(&ctx.pod);
        p.spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    };
    let log_path = ctx.dir.join(format!("{}.log", c.name));
    let mut backoff = ctx.shared.cfg.min_backoff;
    let mut first = true;
    loop {
        if stop.borrow().is_some() {
            break;
        }
        if !first {
            // Restart backoff (interruptible by the pod's deletion).
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => break,
            }
            backoff = (backoff * 2).min(ctx.shared.cfg.max_backoff);
            update(&ctx, i, |s| s.restarts += 1);
        }
        first = false;

        let prepared = prepare(&ctx, &c).await;
        let (program, mut args, mut env, cwd) = match prepared {
            Ok(p) => p,
            Err((reason, message)) => {
                update(&ctx, i, |s| {
                    s.waiting = Some((reason, message));
                    s.running_since = None;
                });
                first = true; // config errors are retried without counting restarts
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => break,
                }
                backoff = (backoff * 2).min(ctx.shared.cfg.max_backoff);
                continue;
            }
        };
        let termination = TerminationLog::create(&ctx, &c);
        termination.mount(&mut args, &mut env);
        let started = SystemTime::now();
        let mut cmd = Command::new(&program);
        cmd.args(&args)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(&cwd);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path);
        let mut log_start = 0;
        let spawned = match log {
            Ok(mut f) => {
                use std::io::Write;
                let _ = writeln!(
                    f,
                    "==> murmuration-e2e: start {} at {}: {} {}",
                    lock(&ctx.containers)[i].restarts,
                    rfc3339(started),
                    program.display(),
                    args.join(" ")
                );
                // Where this run's output starts (for a message from the log's tail).
                log_start = f.metadata().map(|m| m.len()).unwrap_or(0);
                let f2 = f.try_clone();
                match f2 {
                    Ok(f2) => {
                        cmd.stdin(Stdio::null()).stdout(f).stderr(f2);
                        procs::spawn_guarded(cmd)
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        let mut child = match spawned {
            Ok(ch) => ch,
            Err(e) => {
                let now = SystemTime::now();
                update(&ctx, i, |s| {
                    s.waiting = None;
                    s.running_since = None;
                    s.last_terminated = s.terminated.take();
                    s.terminated = Some(Terminated {
                        code: 128,
                        reason: "StartError".into(),
                        started: now,
                        finished: now,
                        message: Some(format!("starting {}: {e}", program.display())),
                    });
                });
                if policy == "Never" {
                    update(&ctx, i, |s| s.done = true);
                    break;
                }
                continue;
            }
        };
        let pgid = child.id();
        let guard = procs::register(procs::Cleanup::KillGroup(pgid));
        let (exit_tx, mut exit_rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let st = child.wait();
            let _ = exit_tx.send(st);
        });
        update(&ctx, i, |s| {
            s.waiting = None;
            s.running_since = Some(started);
            s.last_terminated = s.terminated.take().or(s.last_terminated.take());
            s.pgid = Some(pgid);
            s.ready = c.readiness_probe.is_none() && c.startup_probe.is_none();
            s.started = c.startup_probe.is_none();
        });
        let (kill_tx, mut kill_rx) = tokio::sync::mpsc::channel::<String>(1);
        let probes = tokio::spawn(run_probes(ctx.clone(), i, c.clone(), kill_tx));

        let mut killed_for: Option<String> = None;
        let mut stopping = false;
        let status = tokio::select! {
            st = &mut exit_rx => st.ok().and_then(|r| r.ok()),
            // (Without liveness/startup probes the sender is dropped at once: that
            // disables this branch rather than killing the container.)
            Some(reason) = kill_rx.recv() => {
                killed_for = Some(reason);
                kill_group(pgid, Duration::from_secs(c_grace(&ctx)).min(ctx.shared.cfg.max_grace), &mut exit_rx).await
            }
            _ = stop.changed() => {
                stopping = true;
                let grace = stop.borrow().unwrap_or(Duration::ZERO);
                kill_group(pgid, grace, &mut exit_rx).await
            }
        };
        probes.abort();
        // Whatever the process left in its group goes too.
        procs::signal_group(pgid, libc::SIGKILL);
        drop(guard);
        let finished = SystemTime::now();
        let code = status
            .map(|st| {
                use std::os::unix::process::ExitStatusExt;
                st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(9))
            })
            .unwrap_or(137);
        let reason = if killed_for.is_some() || (stopping && code != 0) {
            if code == 137 {
                "Killed"
            } else {
                "Error"
            }
        } else if code == 0 {
            "Completed"
        } else {
            "Error"
        };
        let reason = if code == 0 { "Completed" } else { reason };
        let message = termination
            .message(code, &log_path, log_start)
            .or_else(|| killed_for.clone());
        let restart = !stopping
            && match policy.as_str() {
                "Always" => true,
                "OnFailure" => code != 0,
                _ => false,
            };
        update(&ctx, i, |s| {
            s.running_since = None;
            s.ready = false;
            s.pgid = None;
            s.terminated = Some(Terminated {
                code,
                reason: reason.to_string(),
                started,
                finished,
                message,
            });
            if !restart {
                s.done = true;
            } else {
                s.waiting = Some((
                    "CrashLoopBackOff".into(),
                    format!(
                        "back-off restarting container {} (exit code {code})",
                        c.name
                    ),
                ));
            }
        });
        if !restart {
            break;
        }
        if finished.duration_since(started).unwrap_or_default() > Duration::from_secs(10) {
            backoff = ctx.shared.cfg.min_backoff;
        }
    }
    update(&ctx, i, |s| {
        if s.running_since.is_none() && s.terminated.is_some() {
            s.waiting = None;
        }
        s.done = true;
    });
}

/// A container's termination message file. A kubelet creates one per container start
/// and bind-mounts it at the container's `terminationMessagePath` (default
/// `/dev/termination-log`); processes here share the host's filesystem, so the file is
/// the pod's own (`<pod dir>/<container>.termination-log`) and the mount is emulated by
/// giving the process that file wherever its args or env name the path. The kubelet then
/// reads the message as a kubelet does: the file (at most 4 KiB), else, with
/// `terminationMessagePolicy: FallbackToLogsOnError` and a failed exit, the tail of the
/// run's log (at most 80 lines and 2 KiB).
pub(super) struct TerminationLog {
    /// The path the container expects.
    pub(super) mount_path: String,
    /// The pod's own file behind it.
    pub(super) file: PathBuf,
    pub(super) fallback_to_logs: bool,
}

impl TerminationLog {
    /// Most of a termination message file a kubelet reads.
    const MAX_FILE: usize = 4096;
    /// Most of the log's tail a kubelet takes as the message.
    const MAX_LOG_LINES: usize = 80;
    const MAX_LOG_BYTES: usize = 2048;

    fn create(ctx: &PodCtx, c: &Container) -> TerminationLog {
        let file = ctx.dir.join(format!("{}.termination-log", c.name));
        // A new, empty file for every start, as a kubelet's per-container-instance file.
        let _ = std::fs::write(&file, b"");
        TerminationLog {
            mount_path: c
                .termination_message_path
                .clone()
                .unwrap_or_else(|| "/dev/termination-log".into()),
            file,
            fallback_to_logs: c.termination_message_policy.as_deref()
                == Some("FallbackToLogsOnError"),
        }
    }

    /// Points the container's references to its termination message path at the file.
    fn mount(&self, args: &mut [String], env: &mut [(String, String)]) {
        let file = self.file.display().to_string();
        for a in args.iter_mut() {
            *a = a.replace(&self.mount_path, &file);
        }
        for (_, v) in env.iter_mut() {
            *v = v.replace(&self.mount_path, &file);
        }
    }

    /// The message of a run that ended with `code`, its output in `log` from `start` on.
    fn message(&self, code: i32, log: &Path, start: u64) -> Option<String> {
        let mut text = std::fs::read(&self.file).unwrap_or_default();
        text.truncate(Self::MAX_FILE);
        if text.is_empty() && self.fallback_to_logs && code != 0 {
            let all = std::fs::read(log).unwrap_or_default();
            let run = all.get(start as usize..).unwrap_or_default();
            let run = String::from_utf8_lossy(run);
            let lines: Vec<&str> = run.lines().collect();
            let tail = lines[lines.len().saturating_sub(Self::MAX_LOG_LINES)..].join("\n");
            let cut = tail.len().saturating_sub(Self::MAX_LOG_BYTES);
            let cut = (cut..=tail.len())
                .find(|i| tail.is_char_boundary(*i))
                .unwrap_or(tail.len());
            text = tail.as_bytes()[cut..].to_vec();
        }
        let text = String::from_utf8_lossy(&text).into_owned();
        (!text.is_empty()).then_some(text)
    }
}

pub(super) fn c_grace(ctx: &PodCtx) -> u64 {
    let p = lock(&ctx.pod);
    p.spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30)
        .max(0) as u64
}

/// SIGTERM to the group, SIGKILL after `grace`; waits for the leader's exit.
pub(super) async fn kill_group(
    pgid: u32,
    grace: Duration,
    exit_rx: &mut tokio::sync::oneshot::Receiver<std::io::Result<std::process::ExitStatus>>,
) -> Option<std::process::ExitStatus> {
    if grace.is_zero() {
        procs::signal_group(pgid, libc::SIGKILL);
    } else {
        procs::signal_group(pgid, libc::SIGTERM);
        if let Ok(r) = tokio::time::timeout(grace, &mut *exit_rx).await {
            return r.ok().and_then(|r| r.ok());
        }
        procs::signal_group(pgid, libc::SIGKILL);
    }
    match tokio::time::timeout(Duration::from_secs(10), exit_rx).await {
        Ok(r) => r.ok().and_then(|r| r.ok()),
        Err(_) => None,
    }
}
