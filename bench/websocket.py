#!/usr/bin/env python3
"""WebSocket benchmarks of `murmur` against `murmur demo-server websocket`, on loopback.

    python3 bench/websocket.py [--only memory,census,most,messages] [--users 5000,19000]

Builds `murmur` in release mode. Every connection goes to 127.0.0.1, every run is bounded
in time, and each process stays under its open-files limit (here 20,000: the hard limit).

  memory    agent RSS per connected, idle user (connect, then `think`), at each --users
            count, over a 1-user run's RSS; kernel socket memory (both ends, loopback)
            from /proc/net/sockstat, separately.
  census    where an idle user's memory goes: the same idle users in one `murmur run`
            process built with a counting allocator (agent/examples/alloc_census.rs), live
            heap allocations by size, per user (N users' census minus 1 user's).
  most      the most connected users on this machine: 19,000 per agent (its limit), with
            pairs of (demo server, murmur run with 1 agent) until one fails to connect all
            its users or --most-pairs is reached.
  messages  10,000 users in pairs, each sending one message a second to its peer (through
            the server's room) and receiving the peer's: messages/s through one agent.

Results are printed and written to bench/results/websocket.json.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MURMUR = ROOT / "target" / "release" / "murmur"
CENSUS = ROOT / "target" / "release" / "examples" / "alloc_census"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def children(pid):
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def sockstat():
    """TCP sockets in use and their kernel memory (pages), from /proc/net/sockstat."""
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            f = line.split()[1:]
            d = dict(zip(f[::2], (int(x) for x in f[1::2])))
            return d.get("inuse", 0), d.get("mem", 0)
    return 0, 0


def demo_server(threads=1):
    port = free_port()
    p = subprocess.Popen(
        [str(MURMUR), "demo-server", "websocket", "--listen", f"127.0.0.1:{port}", "--threads", str(threads)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = p.stdout.readline()
    if "listening" not in line:
        p.kill()
        raise RuntimeError(f"demo server: {line!r}")
    return p, f"ws://127.0.0.1:{port}"


def idle_manifest(users, target, secs):
    return f"""apiVersion: murmuration.dev/v1alpha1
kind: LoadTest
metadata: {{name: ws-idle}}
spec:
  users: {users}
  userRate: 5000/s
  duration: {secs}s
  repeat: {{times: 1}}
  vars: {{target: "{target}"}}
  scenario:
    websocket:
      steps:
        - connect: {{url: "{{{{vars.target}}}}/idle"}}
        - think: {{duration: 1h}}
"""


def start_run(manifest, out, agents=1, workers=1):
    f = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    f.write(manifest)
    f.close()
    p = subprocess.Popen(
        [str(MURMUR), "run", f.name, "--agents", str(agents), "--workers", str(workers), "--plain", "--progress-every", "5", "--out", out],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    return p


def agent_pids(run, n, deadline=30):
    end = time.time() + deadline
    while time.time() < end:
        kids = children(run.pid)
        if len(kids) >= n:
            return kids
        time.sleep(0.1)
    raise RuntimeError("the agents did not start")


def wait_connected(pid, users, deadline):
    """Waits until the agent holds `users` more descriptors than it started with."""
    base = fds(pid)
    end = time.time() + deadline
    while time.time() < end:
        if fds(pid) - base >= users:
            return True
        time.sleep(0.2)
    return False


def stop(p):
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def idle_run(users, secs=60):
    server, target = demo_server()
    out = tempfile.mkdtemp()
    before_inuse, before_mem = sockstat()
    run = start_run(idle_manifest(users, target, secs), out)
    try:
        agent = agent_pids(run, 1)[0]
        ok = wait_connected(agent, users, deadline=secs - 10)
        time.sleep(2)
        rss = rss_kb(agent)
        inuse, mem = sockstat()
        return {
            "users": users,
            "connected": ok,
            "agent_rss_kib": rss,
            "server_rss_kib": rss_kb(server.pid),
            "tcp_sockets": inuse - before_inuse,
            "kernel_socket_kib": (mem - before_mem) * 4,
        }
    finally:
        stop(run)
        stop(server)


def census_run(users, secs=40):
    """Live heap allocations of `murmur run` (in-process, 1 worker) holding `users` idle users."""
    server, target = demo_server()
    d = Path(tempfile.mkdtemp())
    f = d / "idle.yaml"
    f.write_text(idle_manifest(users, target, secs))
    env = dict(os.environ, MURMUR_ALLOC_CENSUS=str(d / "census"))
    run = subprocess.Popen(
        [str(CENSUS), "run", str(f), "--workers", "1", "--plain", "--out", str(d / "out")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        ok = wait_connected(run.pid, users, deadline=secs - 10)
        time.sleep(3)  # a census is written every second
        census = json.loads((d / f"census.{run.pid}").read_text())
        census["rss_kib"] = rss_kb(run.pid)
        census["connected"] = ok
        return census
    finally:
        stop(run)
        stop(server)


def bench_census(args, results):
    base = census_run(1, secs=20)
    out = {"one_user": {k: base[k] for k in ("live_bytes", "malloc_bytes", "rss_kib")}, "runs": []}
    for n in args.users:
        c = census_run(n, secs=60)
        per = lambda k: round((c[k] - base[k]) / (n - 1))
        before = dict(base["by_size"])
        by_size = []
        for size, count in c["by_size"]:
            d = (count - before.get(size, 0)) / (n - 1)
            if abs(d) >= 0.05:
                by_size.append({"size_up_to": size, "per_user": round(d, 2)})
        r = {
            "users": n,
            "connected": c["connected"],
            "rss_bytes_per_user": round((c["rss_kib"] - base["rss_kib"]) * 1024 / (n - 1)),
            "live_bytes_per_user": per("live_bytes"),
            "malloc_bytes_per_user": per("malloc_bytes"),
            "allocs_per_user": round((c["live_allocs"] - base["live_allocs"]) / (n - 1), 2),
            "by_size": by_size,
        }
        log(f"census: {n} users: RSS {r['rss_bytes_per_user']} B/user, heap {r['live_bytes_per_user']} B/user asked, "
            f"{r['malloc_bytes_per_user']} B/user as malloc lays it out, {r['allocs_per_user']} allocations/user")
        for row in by_size:
            log(f"census:   {row['per_user']:6.2f} x up to {row['size_up_to']} B")
        out["runs"].append(r)
    results["census"] = out


def ok_all(r):
    return r["connected"]


def bench_memory(args, results):
    base = idle_run(1, secs=20)
    log(f"memory: 1 user: agent RSS {base['agent_rss_kib']} KiB")
    rows = []
    for n in args.users:
        r = idle_run(n)
        r["agent_kib_per_user"] = round((r["agent_rss_kib"] - base["agent_rss_kib"]) / (n - 1), 2)
        r["kernel_kib_per_connection_pair"] = round(r["kernel_socket_kib"] / n, 2)
        log(f"memory: {n} users {'connected' if ok_all(r) else 'NOT ALL CONNECTED'}: agent RSS {r['agent_rss_kib']} KiB, "
            f"{r['agent_kib_per_user']} KiB per user over 1 user's; kernel TCP memory (sockstat, both ends) "
            f"+{r['kernel_socket_kib']} KiB for +{r['tcp_sockets']} sockets; demo server RSS {r['server_rss_kib']} KiB")
        rows.append(r)
    results["memory"] = {"one_user_rss_kib": base["agent_rss_kib"], "runs": rows}


def bench_most(args, results):
    pairs = []
    total = 0
    stopped_by = f"--most-pairs {args.most_pairs} reached"
    try:
        for i in range(args.most_pairs):
            server, target = demo_server()
            out = tempfile.mkdtemp()
            run = start_run(idle_manifest(19000, target, 120), out)
            pairs.append((server, run))
            agent = agent_pids(run, 1)[0]
            ok = wait_connected(agent, 19000, deadline=60)
            avail = int(Path("/proc/meminfo").read_text().split("MemAvailable:")[1].split()[0])
            log(f"most: pair {i + 1}: {'all 19000 connected' if ok else 'not all connected'}, fds {fds(agent)}, MemAvailable {avail // 1024} MiB")
            if not ok:
                stopped_by = f"pair {i + 1} could not connect all its users"
                break
            total += 19000
    finally:
        inuse, mem = sockstat()
        for server, run in pairs:
            stop(run)
            stop(server)
    results["most"] = {"connected_users": total, "processes": len(pairs) * 3, "tcp_sockets_in_use": inuse, "kernel_socket_mib": mem * 4 // 1024, "stopped_by": stopped_by}
    log(f"most: {json.dumps(results['most'])}")


def messages_manifest(users, target, secs):
    return f"""apiVersion: murmuration.dev/v1alpha1
kind: LoadTest
metadata: {{name: ws-messages}}
spec:
  users: {users}
  userRate: 5000/s
  duration: {secs}s
  repeat: {{times: 1}}
  vars: {{target: "{target}"}}
  scenario:
    websocket:
      steps:
        - connect: {{url: "{{{{vars.target}}}}/chat"}}
        - coordinate: pairs
        - send: {{name: join, json: {{join: "room-{{{{group.ids}}}}"}}}}
        - receive: {{name: joined, json: {{path: $.members, equals: 2}}}}
        - loop:
            times: 100000
            steps:
              - send: {{name: say, json: {{room: "room-{{{{group.ids}}}}", from: "{{{{user.id}}}}"}}}}
              - receive: {{name: heard, json: {{path: $.from, equals: "{{{{group.peer}}}}"}}}}
              - think: {{duration: 1s}}
---
apiVersion: murmuration.dev/v1alpha1
kind: Coordinator
metadata: {{name: pairs}}
spec:
  loadTest: ws-messages
  timeout: 30s
  plan:
    - {{users: 2, action: pairs}}
"""


def bench_messages(args, results):
    server, target = demo_server(threads=1)
    out = tempfile.mkdtemp()
    secs = args.messages_secs
    run = start_run(messages_manifest(10000, target, secs), out, workers=1)
    try:
        run.wait(timeout=secs + 120)
    finally:
        stop(run)
        stop(server)
    report = json.loads((Path(out) / "report.json").read_text())
    steps = {s["name"]: s for s in report["steps"]}
    say, heard = steps["say"], steps["heard"]
    # Sent and received messages per second, over the test (users start in ~2 s).
    r = {
        "users": 10000,
        "duration_s": report["durationS"],
        "sent_per_s": round(say["requests"] / report["durationS"]),
        "received_per_s": round(heard["requests"] / report["durationS"]),
        "heard_p50_ms": heard["latencyMs"]["p50"],
        "heard_p99_ms": heard["latencyMs"]["p99"],
        "errors": report["total"]["errors"],
    }
    results["messages"] = r
    log(f"messages: {json.dumps(r)}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="memory,most,messages")
    ap.add_argument("--users", default="5000,19000")
    ap.add_argument("--most-pairs", type=int, default=4)
    ap.add_argument("--messages-secs", type=int, default=30)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--murmur", help="a murmur binary to measure instead of the release build")
    ap.add_argument("--census-binary", help="an alloc_census binary to use instead of the release build's")
    args = ap.parse_args()
    global MURMUR, CENSUS
    if args.census_binary:
        CENSUS = Path(args.census_binary).resolve()
    if args.murmur:
        MURMUR = Path(args.murmur).resolve()
        args.no_build = True
    args.users = [int(u) for u in args.users.split(",")]
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "murmuration-agent", "--bin", "murmur"], cwd=ROOT, check=True)
        if "census" in args.only.split(","):
            subprocess.run(["cargo", "build", "--release", "-p", "murmuration-agent", "--example", "alloc_census"], cwd=ROOT, check=True)
    results = {}
    only = args.only.split(",")
    if "memory" in only:
        bench_memory(args, results)
    if "census" in only:
        bench_census(args, results)
    if "messages" in only:
        bench_messages(args, results)
    if "most" in only:
        bench_most(args, results)
    Path(ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "websocket.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
