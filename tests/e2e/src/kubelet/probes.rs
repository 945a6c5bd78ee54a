//! Readiness, liveness and startup probes.

#[allow(unused_imports)]
use super::*;

pub(super) async fn run_probes(
    ctx: Arc<PodCtx>,
    i: usize,
    c: Container,
    kill: tokio::sync::mpsc::Sender<String>,
) {
    if let Some(p) = &c.startup_probe {
        if !probe_until_success(&ctx, &c, p, &kill, "Startup").await {
            return;
        }
        update(&ctx, i, |s| {
            s.started = true;
            if c.readiness_probe.is_none() {
                s.ready = true;
            }
        });
    } else {
        update(&ctx, i, |s| s.started = true);
    }
    let readiness = c.readiness_probe.clone().map(|p| {
        let ctx = ctx.clone();
        let c = c.clone();
        tokio::spawn(async move {
            let period = Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64);
            let ok_needed = p.success_threshold.unwrap_or(1).max(1);
            let fail_needed = p.failure_threshold.unwrap_or(3).max(1);
            tokio::time::sleep(Duration::from_secs(
                p.initial_delay_seconds.unwrap_or(0).max(0) as u64,
            ))
            .await;
            let (mut oks, mut fails) = (0, 0);
            let mut ready = false;
            loop {
                let ok = probe_once(&ctx, &c, &p).await.is_ok();
                if ok {
                    oks += 1;
                    fails = 0;
                } else {
                    fails += 1;
                    oks = 0;
                }
                if !ready && oks >= ok_needed {
                    ready = true;
                    update(&ctx, i, |s| s.ready = true);
                } else if ready && fails >= fail_needed {
                    ready = false;
                    update(&ctx, i, |s| s.ready = false);
                }
                tokio::time::sleep(period).await;
            }
        })
    });
    if let Some(p) = &c.liveness_probe {
        let period = Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64);
        let fail_needed = p.failure_threshold.unwrap_or(3).max(1);
        tokio::time::sleep(Duration::from_secs(
            p.initial_delay_seconds.unwrap_or(0).max(0) as u64,
        ))
        .await;
        let mut fails = 0;
        loop {
            match probe_once(&ctx, &c, p).await {
                Ok(()) => fails = 0,
                Err(e) => {
                    fails += 1;
                    if fails >= fail_needed {
                        let _ = kill.send(format!("Liveness probe failed: {e}")).await;
                        break;
                    }
                }
            }
            tokio::time::sleep(period).await;
        }
    }
    if let Some(r) = readiness {
        // Ends when this task is aborted (container exit).
        struct AbortOnDrop(tokio::task::JoinHandle<()>);
        impl Drop for AbortOnDrop {
            fn drop(&mut self) {
                self.0.abort();
            }
        }
        let r = AbortOnDrop(r);
        std::future::pending::<()>().await;
        drop(r);
    }
}

pub(super) async fn probe_until_success(
    ctx: &PodCtx,
    c: &Container,
    p: &Probe,
    kill: &tokio::sync::mpsc::Sender<String>,
    what: &str,
) -> bool {
    let period = Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64);
    let fail_needed = p.failure_threshold.unwrap_or(3).max(1);
    tokio::time::sleep(Duration::from_secs(
        p.initial_delay_seconds.unwrap_or(0).max(0) as u64,
    ))
    .await;
    let mut fails = 0;
    loop {
        match probe_once(ctx, c, p).await {
            Ok(()) => return true,
            Err(e) => {
                fails += 1;
                if fails >= fail_needed {
                    let _ = kill.send(format!("{what} probe failed: {e}")).await;
                    return false;
                }
            }
        }
        tokio::time::sleep(period).await;
    }
}

pub(super) fn port_of(c: &Container, port: &IntOrString) -> Option<u16> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).ok(),
        IntOrString::String(name) => c
            .ports
            .as_ref()?
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

/// One probe attempt (httpGet: 200–399; tcpSocket: connect; exec: exit 0).
pub(super) async fn probe_once(
    ctx: &PodCtx,
    c: &Container,
    p: &Probe,
) -> std::result::Result<(), String> {
    let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1).max(1) as u64);
    if let Some(h) = &p.http_get {
        let port = port_of(c, &h.port).ok_or("bad probe port")?;
        let host = h.host.clone().unwrap_or_else(|| ctx.ip.to_string());
        let path = h.path.clone().unwrap_or_else(|| "/".into());
        let headers: Vec<(String, String)> = h
            .http_headers
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|hh| (hh.name, hh.value))
            .collect();
        let ip: Ipv4Addr = host
            .parse()
            .map_err(|_| format!("probe host {host:?} is not an IPv4 address"))?;
        let sa = SocketAddr::from((ip, port));
        let started = Instant::now();
        let r = tokio::task::spawn_blocking(move || {
            crate::util::http_get_addr(sa, &host, &path, &headers, timeout)
        })
        .await
        .map_err(|e| e.to_string())?;
        return match r {
            Ok(resp) if (200..400).contains(&resp.status) => Ok(()),
            Ok(resp) => Err(format!(
                "HTTP probe failed with statuscode: {}",
                resp.status
            )),
            Err(e) => Err(format!(
                "Get \"http://{sa}\": {e} (after {:?})",
                started.elapsed()
            )),
        };
    }
    if let Some(t) = &p.tcp_socket {
        let port = port_of(c, &t.port).ok_or("bad probe port")?;
        let ip: Ipv4Addr = t
            .host
            .clone()
            .unwrap_or_else(|| ctx.ip.to_string())
            .parse()
            .map_err(|_| "probe host is not an IPv4 address".to_string())?;
        return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((ip, port))).await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("dial tcp {ip}:{port}: {e}")),
            Err(_) => Err(format!("dial tcp {ip}:{port}: timeout")),
        };
    }
    if let Some(e) = &p.exec {
        let cmd = e.command.clone().unwrap_or_default();
        let Some(first) = cmd.first() else {
            return Err("empty exec probe".into());
        };
        let mut command = tokio::process::Command::new(first);
        command
            .args(&cmd[1..])
            .current_dir(ctx.dir.join(&c.name))
            .env("POD_IP", ctx.ip.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        return match tokio::time::timeout(timeout, command.status()).await {
            Ok(Ok(st)) if st.success() => Ok(()),
            Ok(Ok(st)) => Err(format!("command {cmd:?} exited with {st}")),
            Ok(Err(e)) => Err(format!("command {cmd:?}: {e}")),
            Err(_) => Err(format!("command {cmd:?} timed out")),
        };
    }
    Err("probe without a handler (grpc probes are not supported)".into())
}
