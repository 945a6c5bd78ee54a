#!/usr/bin/env python3
"""Murmuration benchmarks, side by side with other tools, in one run on this machine.

    python3 bench/run.py [--duration 8] [--rounds 2] [--connections 50] [--no-peers]
                         [--only throughput,instructions,memory,throttle,distributed]

Installs what it needs (wrk, nginx and valgrind from Debian, oha from crates.io, Goose built from
bench/goose, Locust in a venv; idempotent, cached under ~/.cache/murmuration), builds
`murmur` in release mode, and prints the figures and the ratios. Every load goes to
127.0.0.1 only, and every run is bounded in time. Results are also written as JSON to
bench/results/latest.json.

Benchmarks:
  throughput  the cost of a request: requests/s AND CPU seconds (user+sys of the load
              tool's own process tree, from its rusage) per 100,000 requests, for wrk -t1
              and -t2, oha, Goose, Locust FastHttpUser and `murmur run` with 1 and 2
              workers, against nginx (1 worker) answering `return 200` and serving a static
              file; same connections and duration for every tool, several rounds, ratios
              to wrk -t1 of the same round. Goose and Locust are left out with --no-peers
              (and always when CI is set).
  instructions user-space instructions per request of wrk -t1 and `murmur run --workers 1`
              on the same two targets, counted by valgrind's callgrind (the difference of
              a 2 s and a 5 s run): unlike CPU seconds, unchanged by other work on the
              machine. Skipped when valgrind is not installed.
  memory      resident memory per user with 100,000 and 1,000,000 users sleeping in a
              `think` step.
  throttle    a Throttle of 20,000/s saturated by many users for 30 s: share of the limit
              executed, and the busiest 1 s window; then a Throttle of 10,000/s shared by
              4 agent processes (`--agents 4`). Windows are counted on the grant times the
              throttles log (MURMUR_GRANT_LOG), sliding, not aligned. These saturation
              figures are machine-speed figures: the tests only check the limit.
  distributed 1 master + 2 agent processes against in-process and wrk, and how fast a
              running test scales up.
  arrivals    the highest arrival rate (open model, `spec.arrivals`) one `murmur run`
              sustains within 1% against nginx (1 worker, `return 200`), on a ladder of
              rates, beside oha's rate limiter (`oha -q RATE -n RATE*SECONDS`) at the same
              rates in the same run: once with a new connection per request (`--disable-keepalive`, as each
              arrival is a new user with its own connection) and once keep-alive (-c 50).
              Not in the default set: `--only arrivals`.
"""

import argparse
import urllib.request
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MURMUR = ROOT / "target" / "release" / "murmur"
CACHE = Path(os.environ.get("MURMURATION_CACHE", Path.home() / ".cache" / "murmuration"))


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=isinstance(cmd, str), check=True, **kw)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, deadline=10.0):
    end = time.time() + deadline
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {deadline}s")


GOOSE_DIR = ROOT / "bench" / "goose"
LOCUST_VENV = CACHE / "locust-venv"
LOCUST_VERSION = "2.47.0"


def ensure_tools(peers):
    """Installs what the benchmarks need (each step only once) and builds murmur; returns
    the paths of oha, Goose and Locust (None for the peers when they are left out)."""
    missing = [p for p, b in (("wrk", "wrk"), ("nginx-light", "nginx"), ("valgrind", "valgrind"))
               if not shutil.which(b)]
    if missing:
        log(f"installing {' '.join(missing)} from Debian")
        sh("apt-get update -qq", stdout=subprocess.DEVNULL)
        sh(["apt-get", "install", "-y", "-qq", *missing], stdout=subprocess.DEVNULL)
    oha = CACHE / "bin" / "oha"
    if not oha.exists() and not shutil.which("oha"):
        log("building oha from crates.io (once; cached in %s)" % CACHE)
        sh(["cargo", "install", "--locked", "--root", str(CACHE), "oha"], stdout=subprocess.DEVNULL)
    tools = dict(oha=str(oha) if oha.exists() else shutil.which("oha"), goose=None, locust=None)
    if peers:
        # Goose: a small crate outside the workspace, built into the cache (cargo only
        # rebuilds it when bench/goose changes).
        log("building the Goose bench (bench/goose; cached in %s)" % CACHE)
        target = CACHE / "goose-target"
        sh(["cargo", "build", "--release", "--locked", "-q", "--target-dir", str(target)], cwd=GOOSE_DIR)
        tools["goose"] = str(target / "release" / "murmur-bench-goose")
        locust = LOCUST_VENV / "bin" / "locust"
        if not locust.exists():
            log(f"installing Locust {LOCUST_VERSION} in a venv (once; {LOCUST_VENV})")
            sh([sys.executable, "-m", "venv", str(LOCUST_VENV)])
            sh([str(LOCUST_VENV / "bin" / "pip"), "install", "-q", f"locust=={LOCUST_VERSION}"],
               stdout=subprocess.DEVNULL)
        tools["locust"] = str(locust)
    log("building murmur (release)")
    sh(["cargo", "build", "--release", "-q", "-p", "murmuration-agent", "--bin", "murmur"], cwd=ROOT)
    return tools


class Nginx:
    """nginx with one worker on a loopback port, answering every request with the same
    13-byte body: `fixed` from the configuration (`return 200`), `static` from a file."""

    BODY = "Hello, world!"

    def __init__(self, workers=1, answer="static"):
        self.dir = Path(tempfile.mkdtemp(prefix="murmur-bench-nginx-"))
        (self.dir / "www").mkdir()
        (self.dir / "www" / "index.html").write_text(self.BODY)
        # nginx's workers drop root's rights: they must be able to read the page, or every
        # tool would be measured on 403s.
        for p in (self.dir, self.dir / "www", self.dir / "www" / "index.html"):
            p.chmod(0o755)
        self.port = free_port()
        location = {"static": "{ }", "fixed": f'{{ return 200 "{self.BODY}"; }}'}[answer]
        (self.dir / "nginx.conf").write_text(f"""
worker_processes {workers};
daemon off;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  default_type text/plain;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  server {{ listen 127.0.0.1:{self.port} reuseport; root {self.dir}/www; location / {location} }}
}}
""")
        self.proc = subprocess.Popen(["nginx", "-c", str(self.dir / "nginx.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        self.url = f"http://127.0.0.1:{self.port}/"

    def cpu_s(self):
        """CPU seconds (user+sys) nginx's processes have used so far: read before and after
        a tool's run, it says what each request cost the target, which is what decides req/s
        when the target is the bottleneck."""
        tick = os.sysconf("SC_CLK_TCK")
        pids = [self.proc.pid]
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            pids += [int(c) for c in (task / "children").read_text().split()]
        total = 0
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
        return total / tick

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class DemoServer:
    """The bundled `murmur demo-server http`."""

    def __init__(self, threads=1):
        self.port = free_port()
        self.proc = subprocess.Popen([str(MURMUR), "demo-server", "http", "--listen", f"127.0.0.1:{self.port}",
                                      "--threads", str(threads)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        self.url = f"http://127.0.0.1:{self.port}/"

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


def run_measured(cmd, timeout, env=None):
    """Runs `cmd` to its end; returns (stdout, CPU seconds, wall seconds). The CPU is
    user+sys of the process and of every descendant it waited for (wait4's rusage), so a
    tool's whole tree is counted and nothing else (not the target, not this script). A
    run past `timeout` is killed, with its whole process group."""
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, start_new_session=True)
    timer = threading.Timer(timeout, lambda: os.killpg(p.pid, signal.SIGKILL))
    timer.start()
    try:
        _, status, usage = os.wait4(p.pid, 0)
    finally:
        timer.cancel()
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    err.seek(0)
    stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited with {p.returncode}"
                           f"{' (killed after %ds)' % timeout if wall >= timeout else ''}:\n{stderr[-2000:]}")
    return stdout, usage.ru_utime + usage.ru_stime, wall


def measured(requests, seconds, cpu, failed=0):
    """One tool's run: requests completed, over how long, its CPU, and failed requests."""
    return dict(requests=requests, seconds=seconds, rate=requests / seconds, cpu_s=cpu,
                cpu_per_100k=cpu / max(requests, 1) * 100_000, failed=failed)


def wrk(url, conns, secs, threads, wrapper=()):
    out, cpu, _ = run_measured([*wrapper, "wrk", f"-t{threads}", f"-c{conns}", f"-d{secs}s", url], secs + 30)
    requests = seconds = None
    failed = 0
    for line in out.splitlines():
        words = line.split()
        if "requests in" in line:
            requests, seconds = int(words[0]), humantime_s(words[3].rstrip(","))
        elif line.strip().startswith("Non-2xx or 3xx responses:"):
            failed = int(words[-1])
    if requests is None:
        raise RuntimeError("wrk printed no request count:\n" + out)
    return measured(requests, seconds, cpu, failed)


def humantime_s(text):
    """wrk's durations: 8.00s, 1.00m."""
    for suffix, mult in (("ms", 1e-3), ("us", 1e-6), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * mult
    raise ValueError(f"not a wrk duration: {text}")


def oha(binary, url, conns, secs):
    out, cpu, _ = run_measured([binary, "-c", str(conns), "-z", f"{secs}s", "--no-tui",
                                "--output-format", "json", url], secs + 60)
    doc = json.loads(out)
    codes = doc.get("statusCodeDistribution", {})
    # Requests cut off by the deadline are in errorDistribution, as "aborted due to
    # deadline": not failures of the target, and not completed, so not counted.
    return measured(sum(codes.values()), float(doc["summary"]["total"]), cpu,
                    sum(n for c, n in codes.items() if not c.startswith(("2", "3"))))


def goose(binary, url, conns, secs):
    # All users start in the first second (increase rate = users); Goose's own duration is
    # the time it measured over.
    out, cpu, _ = run_measured([binary, "--host", url.rstrip("/"), "--users", str(conns),
                                "--increase-rate", str(conns), "--run-time", f"{secs}s",
                                "--no-reset-metrics", "--quiet", "--no-print-metrics"], secs + 60)
    doc = json.loads(out.strip().splitlines()[-1])
    return measured(doc["requests"], float(doc["seconds"]), cpu, doc["failed"])


LOCUSTFILE = """
from locust import FastHttpUser, constant, task


class Bench(FastHttpUser):
    wait_time = constant(0)

    @task
    def root(self):
        self.client.get("/")
"""


def locust(binary, url, conns, secs):
    d = Path(tempfile.mkdtemp(prefix="murmur-bench-locust-"))
    try:
        (d / "locustfile.py").write_text(LOCUSTFILE)
        out, cpu, _ = run_measured([binary, "-f", str(d / "locustfile.py"), "--headless", "--only-summary",
                                    "--json", "-u", str(conns), "-r", str(conns), "-t", f"{secs}s",
                                    "--host", url.rstrip("/"), "--loglevel", "WARNING"], secs + 60)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    stats = json.loads(out[out.index("["):])
    requests = sum(s["num_requests"] for s in stats)
    failed = sum(s["num_failures"] for s in stats)
    seconds = max(s["last_request_timestamp"] for s in stats) - min(s["start_time"] for s in stats)
    return measured(requests, seconds, cpu, failed)


def murmur_tool(url, conns, secs, workers, wrapper=()):
    d = Path(tempfile.mkdtemp(prefix="murmur-bench-"))
    try:
        (d / "test.yaml").write_text(http_manifest(url, conns, secs))
        _, cpu, _ = run_measured([*wrapper, str(MURMUR), "run", str(d / "test.yaml"), "--out", str(d), "--plain",
                                  "--progress-every", "3600", "--workers", str(workers)], secs + 60)
        rep = json.loads((d / "report.json").read_text())
    finally:
        shutil.rmtree(d, ignore_errors=True)
    total = rep["total"]
    if total["errors"]:
        raise RuntimeError(f"murmur saw {total['errors']} errors against {url}: "
                           f"{total['errorsByKind']}; the figures would compare failures")
    return measured(total["requests"], rep["durationS"], cpu, total["errors"])


def murmur_run(manifest_text, workers=None, timeout=120, env=None, sample_rss_after=None, agents=0):
    """Runs `murmur run` on a manifest; returns (report, peak RSS sampled in kB or None)."""
    d = Path(tempfile.mkdtemp(prefix="murmur-bench-"))
    (d / "test.yaml").write_text(manifest_text)
    cmd = [str(MURMUR), "run", str(d / "test.yaml"), "--out", str(d), "--plain", "--progress-every", "3600"]
    if workers:
        cmd += ["--workers", str(workers)]
    if agents:
        cmd += ["--agents", str(agents)]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    rss = None
    if sample_rss_after is not None:
        time.sleep(sample_rss_after)
        rss = rss_kb(p.pid)
    p.wait(timeout)
    report = json.loads((d / "report.json").read_text())
    shutil.rmtree(d, ignore_errors=True)
    return report, rss


def rss_kb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


def http_manifest(url, users, secs):
    return f"""apiVersion: murmuration.dev/v1alpha1
kind: LoadTest
metadata: {{name: bench}}
spec:
  users: {users}
  duration: {secs}s
  scenario:
    http:
      steps:
        - request: {{name: get, url: "{url}"}}
"""


def bench_throughput(args, tools, results):
    conns, secs = args.connections, args.duration
    runners = [
        ("wrk -t1", lambda url: wrk(url, conns, secs, 1)),
        ("wrk -t2", lambda url: wrk(url, conns, secs, 2)),
        ("murmur --workers 1", lambda url: murmur_tool(url, conns, secs, 1)),
        ("murmur --workers 2", lambda url: murmur_tool(url, conns, secs, 2)),
    ]
    if tools["oha"]:
        runners.insert(2, ("oha", lambda url: oha(tools["oha"], url, conns, secs)))
    if tools["goose"]:
        runners.append(("Goose", lambda url: goose(tools["goose"], url, conns, secs)))
    if tools["locust"]:
        runners.append(("Locust FastHttpUser", lambda url: locust(tools["locust"], url, conns, secs)))
    targets = [("nginx return 200", Nginx(1, "fixed")), ("nginx static file", Nginx(1, "static"))]
    log(f"throughput: {len(runners)} tools x {len(targets)} targets x {args.rounds} rounds, "
        f"{conns} connections, {secs}s each")
    rows = []
    try:
        for rnd in range(1, args.rounds + 1):
            for target_name, target in targets:
                load = os.getloadavg()[0]
                for tool, run in runners:
                    log(f"  round {rnd}, {target_name}: {tool}")
                    target_before = target.cpu_s()
                    m = run(target.url)
                    m["target_cpu_per_100k"] = (target.cpu_s() - target_before) / max(m["requests"], 1) * 100_000
                    if m["failed"]:
                        raise RuntimeError(f"{tool} saw {m['failed']} failed requests against {target_name}: "
                                           "the figures would compare failures")
                    rows.append(dict(round=rnd, target=target_name, tool=tool, load_before=load, **m))
    finally:
        for _, t in targets:
            t.stop()
    print(f"\n## Throughput and CPU per request ({conns} connections, {secs} s, nginx with 1 worker)")
    print("CPU = user+sys of the tool's own processes; ratios to wrk -t1 in the same round and target;")
    print("nginx = nginx's CPU per 100k requests of that run (at ~1 s per second, nginx is the bottleneck)")
    print(f"{'target':<18} {'rnd':>3} {'tool':<20} {'req/s':>9} {'CPU s/100k':>10} "
          f"{'req/s / wrk':>11} {'CPU / wrk':>9} {'nginx s/100k':>12}")
    for r in rows:
        base = next(b for b in rows if b["round"] == r["round"] and b["target"] == r["target"]
                    and b["tool"] == "wrk -t1")
        r["rate_vs_wrk1"] = r["rate"] / base["rate"]
        r["cpu_vs_wrk1"] = r["cpu_per_100k"] / base["cpu_per_100k"]
        print(f"{r['target']:<18} {r['round']:>3} {r['tool']:<20} {r['rate']:>9.0f} {r['cpu_per_100k']:>10.2f} "
              f"{r['rate_vs_wrk1']:>11.2f} {r['cpu_vs_wrk1']:>9.2f} {r['target_cpu_per_100k']:>12.2f}")
    results["throughput"] = rows


def bench_instructions(args, results):
    """User-space instructions per request of wrk -t1 and murmur (1 worker), counted by
    valgrind's callgrind: a figure that other work on the machine does not change, unlike
    CPU seconds (perf's hardware counters are not available on every machine)."""
    if not shutil.which("valgrind"):
        log("instructions: valgrind is not installed (apt-get install valgrind); skipped")
        return
    conns = args.connections
    log("instructions: wrk -t1 and murmur --workers 1 under callgrind, runs of 2 s and 5 s")
    tools = [("wrk -t1", lambda url, s, w: wrk(url, conns, s, 1, w)),
             ("murmur --workers 1", lambda url, s, w: murmur_tool(url, conns, s, 1, w))]
    rows = []
    for target_name, answer in (("nginx return 200", "fixed"), ("nginx static file", "static")):
        target = Nginx(1, answer)
        try:
            for tool, run in tools:
                runs = []
                for secs in (2, 5):
                    with tempfile.TemporaryDirectory() as d:
                        out = Path(d) / "callgrind.out"
                        m = run(target.url, secs, ["valgrind", "--tool=callgrind", "--cache-sim=no",
                                                   f"--callgrind-out-file={out}"])
                        total = next(int(line.split()[1]) for line in out.read_text().splitlines()
                                     if line.startswith("totals:"))
                    runs.append((total, m["requests"]))
                # The difference of the two runs leaves out start-up and shutdown.
                per_request = (runs[1][0] - runs[0][0]) / max(runs[1][1] - runs[0][1], 1)
                rows.append(dict(target=target_name, tool=tool, instructions_per_request=per_request,
                                 runs=[dict(instructions=i, requests=r) for i, r in runs]))
        finally:
            target.stop()
    print("\n## User-space instructions per request (callgrind; the kernel's share is not counted)")
    for r in rows:
        base = next(b for b in rows if b["target"] == r["target"] and b["tool"] == "wrk -t1")
        print(f"{r['target']:<18} {r['tool']:<20} {r['instructions_per_request']:>8.0f} "
              f"({r['instructions_per_request'] / base['instructions_per_request']:.2f}x wrk)")
    results["instructions"] = rows


def think_manifest(users, secs):
    return f"""apiVersion: murmuration.dev/v1alpha1
kind: LoadTest
metadata: {{name: memory}}
spec:
  users: {users}
  duration: {secs}s
  scenario:
    http:
      steps:
        - think: {{duration: 10m}}
"""


def bench_memory(args, results):
    log("memory: users sleeping in a think step")
    base_report, base = murmur_run(think_manifest(1, 6), sample_rss_after=3)
    rows = []
    for users, wait, secs in ((100_000, 4, 8), (1_000_000, 15, 25)):
        rep, rss = murmur_run(think_manifest(users, secs), sample_rss_after=wait, timeout=secs + 120)
        per_user = (rss - base) * 1024 / users
        rows.append(dict(users=users, rss_kb=rss, baseline_kb=base, bytes_per_user=per_user,
                         started=rep["users"]["started"]))
    print("\n## Memory (users sleeping in `think`; resident memory of the whole process)")
    print(f"{'users':>10} {'RSS':>10} {'per user':>10}   (baseline with 1 user: {base / 1024:.1f} MiB)")
    for r in rows:
        print(f"{r['users']:>10} {r['rss_kb'] / 1024:>8.1f}Mi {r['bytes_per_user']:>8.0f} B")
    print("   amoc: ~2.6 KiB per Erlang process alone; Locust ~1 MB per user; k6 0.4-5 MB per VU")
    results["memory"] = rows


def bench_throttle(args, results):
    rate, secs, users = 20_000, args.throttle_seconds, 2000
    log(f"throttle: {rate}/s saturated by {users} users for {secs}s")
    target = DemoServer(1)
    try:
        manifest = f"""apiVersion: murmuration.dev/v1alpha1
kind: LoadTest
metadata: {{name: throttle}}
spec:
  users: {users}
  duration: {secs}s
  scenario:
    http:
      steps:
        - throttle: limit
        - request: {{name: get, url: "{target.url}"}}
---
apiVersion: murmuration.dev/v1alpha1
kind: Throttle
metadata: {{name: limit}}
spec:
  rate: {rate}
  interval: 1s
"""
        rep, _ = murmur_run(manifest, timeout=secs + 120)
    finally:
        target.stop()
    thr = rep["throttles"][0]
    # Full seconds only (the first and last buckets are partial: users starting, stopping).
    series = rep["series"]
    windows = []
    prev_t = 0.0
    for p in series:
        span = p["t"] - prev_t
        prev_t = p["t"]
        windows.append((span, p["requests"]))
    full = windows[1:-1]
    busiest = max((n / span for span, n in full), default=0)
    executed_rate = thr["executed"] / rep["durationS"]
    steady = sum(n for _, n in full) / max(sum(s for s, _ in full), 1e-9)
    print("\n## Throttle precision (limit 20,000/s, saturated)")
    print(f"executed {thr['executed']} permits in {rep['durationS']:.1f}s: {executed_rate:.0f}/s overall, "
          f"{steady:.0f}/s in full seconds = {steady / rate * 100:.2f}% of the limit")
    print(f"busiest 1 s window: {busiest:.0f}/s ({'within' if busiest <= rate * 1.001 else 'ABOVE'} the limit); "
          f"errors: {rep['total']['errors']} {rep['total']['errorsByKind']}")
    results["throttle"] = dict(rate=rate, seconds=secs, executed=thr["executed"], steady_per_s=steady,
                               busiest_window_per_s=busiest, errors=rep["total"]["errors"])


def logged_grants(d):
    """The grant times (ns) of every throttle log in `d` (MURMUR_GRANT_LOG), sorted."""
    times = []
    for f in sorted(Path(d).glob("*.grants")):
        for line in f.read_text().splitlines():
            if line == "truncated":
                raise RuntimeError(f"{f}: grant log cut short")
            times.append(int(line.split()[0]))
    times.sort()
    return times


def busiest_window(times, interval_ns=1_000_000_000):
    """The most grants in any window of `interval_ns` (one starting at every grant)."""
    best, j = 0, 0
    for i in range(len(times)):
        while times[i] - times[j] >= interval_ns:
            j += 1
        best = max(best, i - j + 1)
    return best


def bench_throttle_shared(args, results):
    """A Throttle of 10,000/s shared by 4 agent processes (1 worker each), saturated by 200
    users: the share of the limit granted past the first second, and the busiest sliding
    1 s window, both on the grant times the agents' throttles log."""
    rate, secs, users, agents = 10_000, min(args.throttle_seconds, 20), 200, 4
    log(f"throttle: {rate}/s shared by {agents} agents, {users} users, {secs}s")
    target = DemoServer(1)
    grants = Path(tempfile.mkdtemp(prefix="murmur-grants-"))
    try:
        manifest = f"""apiVersion: murmuration.dev/v1alpha1
kind: LoadTest
metadata: {{name: shared}}
spec:
  users: {users}
  agents: {agents}
  duration: {secs}s
  scenario:
    http:
      steps:
        - throttle: limit
        - request: {{name: get, url: "{target.url}"}}
---
apiVersion: murmuration.dev/v1alpha1
kind: Throttle
metadata: {{name: limit}}
spec: {{rate: {rate}, interval: 1s}}
"""
        env = dict(os.environ, MURMUR_GRANT_LOG=str(grants))
        rep, _ = murmur_run(manifest, workers=1, agents=agents, env=env, timeout=secs + 120)
        times = logged_grants(grants)
    finally:
        target.stop()
        shutil.rmtree(grants, ignore_errors=True)
    if not times:
        raise RuntimeError("no grants logged")
    # Past the first second (shares being handed out) and before the last (users stopping).
    lo, hi = times[0] + 1_000_000_000, times[-1] - 1_000_000_000
    steady = sum(1 for t in times if lo <= t < hi) / max((hi - lo) / 1e9, 1e-9)
    busiest = busiest_window(times)
    print(f"\n## Throttle shared by {agents} agent processes (limit {rate:,}/s, saturated)")
    print(f"granted {len(times)} permits: {steady:.0f}/s past the first second = "
          f"{steady / rate * 100:.2f}% of the limit")
    print(f"busiest sliding 1 s window: {busiest} ({'within' if busiest <= rate else 'ABOVE'} the limit); "
          f"errors: {rep['total']['errors']} {rep['total']['errorsByKind']}")
    results["throttle_shared"] = dict(rate=rate, agents=agents, seconds=secs, granted=len(times),
                                      steady_per_s=steady, busiest_window=busiest,
                                      errors=rep["total"]["errors"])


def bench_distributed(args, results):
    """1 master + 2 agent processes against in-process and wrk (same target, connections,
    duration), then the time from "set desired users" to all new users running."""
    log(f"distributed: {args.connections} connections, {args.duration}s per run")
    target = Nginx(1)
    try:
        w = wrk(target.url, args.connections, args.duration, 2)["rate"]
        manifest = http_manifest(target.url, args.connections, args.duration)
        local, _ = murmur_run(manifest, workers=2)
        dist, _ = murmur_run(manifest, workers=1, agents=2)
    finally:
        target.stop()
    for name, rep in (("in-process", local), ("2 agents", dist)):
        if rep["total"]["errors"]:
            raise RuntimeError(f"murmur ({name}) saw errors: {rep['total']['errorsByKind']}")
    lrate = local["total"]["requests"] / local["durationS"]
    drate = dist["total"]["requests"] / dist["durationS"]
    print("\n## Distributed: 1 master + 2 agent processes (1 worker each) vs in-process (2 workers)")
    print(f"{'':<24} {'requests/s':>12} {'/ wrk':>8}")
    print(f"{'wrk -t2':<24} {w:>12.0f} {1.0:>8.2f}")
    print(f"{'murmur in-process':<24} {lrate:>12.0f} {lrate / w:>8.2f}")
    print(f"{'murmur --agents 2':<24} {drate:>12.0f} {drate / w:>8.2f}")
    print(f"distributed / in-process: {drate / lrate:.3f} (overhead {100 * (1 - drate / lrate):.1f}%)")

    # Scale-up: +10,000 users with no user rate, from the API call to every user running
    # (read live from the agents' /users).
    d = Path(tempfile.mkdtemp(prefix="murmur-bench-"))
    (d / "test.yaml").write_text("""apiVersion: murmuration.dev/v1alpha1
kind: LoadTest
metadata: {name: scale}
spec:
  users: 0
  agents: 2
  scenario:
    http:
      baseUrl: http://127.0.0.1:9
      steps:
        - think: {duration: 30s}
""")
    token = "bench-token-0123456789abcdef"
    env = dict(os.environ, MURMUR_TOKEN=token)
    port = free_port()
    procs = [subprocess.Popen([str(MURMUR), "master", str(d / "test.yaml"), "--listen", f"127.0.0.1:{port}"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    healths = []
    try:
        wait_port(port)
        for i in range(2):
            hp = free_port()
            healths.append(hp)
            procs.append(subprocess.Popen([str(MURMUR), "agent", "--master", f"127.0.0.1:{port}", "--name", f"agent-{i}",
                                           "--workers", "1", "--health-listen", f"127.0.0.1:{hp}"],
                                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for hp in healths:
            wait_port(hp)

        def api(method, path, body=None):
            req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                         data=json.dumps(body).encode() if body is not None else None,
                                         headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
            return json.loads(urllib.request.urlopen(req, timeout=10).read())

        def running():
            total = 0
            for hp in healths:
                ranges = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{hp}/users", timeout=10).read())
                total += sum(b - a + 1 for a, b in ranges)
            return total

        deadline = time.time() + 20
        while api("GET", "/api/v1/status")["phase"] != "Running":
            if time.time() > deadline:
                raise RuntimeError("the scale test did not start")
            time.sleep(0.05)
        times = []
        for target_users in (10_000, 20_000):
            t0 = time.perf_counter()
            api("PUT", "/api/v1/users", {"users": target_users})
            deadline = time.time() + 30
            while running() < target_users:
                if time.time() > deadline:
                    raise RuntimeError(f"{target_users} users not running within 30 s")
                time.sleep(0.01)
            times.append(time.perf_counter() - t0)
    finally:
        for p in procs:
            p.kill()
            p.wait()
        shutil.rmtree(d, ignore_errors=True)
    print(f"set desired users -> all running: 0 -> 10,000: {times[0] * 1000:.0f} ms; "
          f"10,000 -> 20,000: {times[1] * 1000:.0f} ms (2 agents, no user rate)")
    results["distributed"] = dict(wrk=w, in_process=lrate, agents_2=drate, overhead=1 - drate / lrate,
                                  scale_up_10k_s=times)


def arrivals_manifest(url, rate, secs):
    return f"""apiVersion: murmuration.dev/v1alpha1
kind: LoadTest
metadata: {{name: bench-arrivals}}
spec:
  arrivals:
    rate: {rate}/s
    maxConcurrent: 20000
    stages: [{{duration: {secs}s, rate: {rate}/s}}]
  scenario:
    http:
      timeout: 10s
      steps:
        - request: {{name: get, url: "{url}"}}
"""


def murmur_arrivals(url, rate, secs):
    """One `murmur run` of an open model at `rate`/s for `secs` s. Sustained when every
    arrival was started (none dropped) and answered without error, and every full second
    but the first and the last completed within 1% of `rate` requests."""
    d = Path(tempfile.mkdtemp(prefix="murmur-bench-"))
    try:
        (d / "test.yaml").write_text(arrivals_manifest(url, rate, secs))
        _, cpu, _ = run_measured([str(MURMUR), "run", str(d / "test.yaml"), "--out", str(d), "--plain",
                                  "--progress-every", "3600"], secs + 60)
        rep = json.loads((d / "report.json").read_text())
    finally:
        shutil.rmtree(d, ignore_errors=True)
    total, users = rep["total"], rep["users"]
    planned = rate * secs
    seconds, worst = [], 0.0
    prev = 0.0
    for p in rep["series"]:
        t, span = p["t"], p["t"] - prev
        prev = p["t"]
        if 1.0 < t <= secs - 0.5 and span > 0.5:
            off = abs(p["requests"] / span - rate) / rate
            worst = max(worst, off)
            seconds.append(p["requests"] / span)
    ok = (users.get("dropped", 0) == 0 and total["errors"] == 0 and total["requests"] == planned
          and users.get("started") == planned and worst <= 0.01)
    return dict(rate=rate, ok=ok, requests=total["requests"], planned=planned,
                dropped=users.get("dropped", 0), errors=total["errors"], worst_second=worst,
                p99_ms=total["correctedLatencyMs"]["p99"], cpu_s=cpu)


def oha_rate(binary, url, rate, secs, keepalive):
    """`oha -q RATE -n RATE*secs`: sustained when every request succeeded and they took
    no more than 1% longer than the schedule (oha's own measured time)."""
    planned = rate * secs
    cmd = [binary, "-q", str(rate), "-n", str(planned), "--no-tui", "--output-format", "json"]
    cmd += ["-c", "50"] if keepalive else ["-c", "200", "--disable-keepalive"]
    out, cpu, _ = run_measured(cmd + [url], secs * 3 + 60)
    doc = json.loads(out)
    codes = doc.get("statusCodeDistribution", {})
    good = sum(n for c, n in codes.items() if c.startswith("2"))
    failed = sum(n for c, n in codes.items() if not c.startswith("2"))
    errors = sum(doc.get("errorDistribution", {}).values())
    achieved = good / float(doc["summary"]["total"])
    ok = failed == 0 and errors == 0 and good == planned and achieved >= rate * 0.99
    p99 = (doc.get("latencyPercentiles") or {}).get("p99")
    return dict(rate=rate, ok=ok, requests=good, achieved=achieved, failed=failed + errors,
                p99_ms=p99 * 1000 if p99 is not None else None, cpu_s=cpu)


def bench_arrivals(args, tools, results):
    secs = args.arrival_seconds
    rates = [int(r) for r in args.arrival_rates.split(",")]
    nginx = Nginx(1, "fixed")
    tools_run = [("murmur run (arrivals)", lambda r: murmur_arrivals(nginx.url, r, secs))]
    if tools["oha"]:
        tools_run += [("oha -q, new connection each", lambda r: oha_rate(tools["oha"], nginx.url, r, secs, False)),
                      ("oha -q, keep-alive -c50", lambda r: oha_rate(tools["oha"], nginx.url, r, secs, True))]
    rows = {name: [] for name, _ in tools_run}
    try:
        for rate in rates:
            for name, f in tools_run:
                # A tool that failed a rate is not tried at higher ones.
                if rows[name] and not rows[name][-1]["ok"]:
                    continue
                log(f"arrivals: {name} at {rate}/s")
                rows[name].append(f(rate))
    finally:
        nginx.stop()
    print(f"\n## Highest arrival rate sustained within 1% ({secs} s per rate, nginx 1 worker, "
          f"{os.cpu_count()} cores)")
    print("| tool | rate/s | sustained | requests | worst second off / achieved | p99 ms | CPU s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    best = {}
    for name, rs in rows.items():
        for r in rs:
            fig = (f"{r['worst_second'] * 100:.2f}%" if "worst_second" in r else f"{r['achieved']:.0f}/s")
            p99 = "-" if r["p99_ms"] is None else f"{r['p99_ms']:.1f}"
            print(f"| {name} | {r['rate']} | {'yes' if r['ok'] else 'no'} | {r['requests']} | {fig} | "
                  f"{p99} | {r['cpu_s']:.1f} |")
        best[name] = max((r["rate"] for r in rs if r["ok"]), default=0)
    print()
    for name, b in best.items():
        print(f"highest sustained: {name}: {b}/s")
    m = best["murmur run (arrivals)"]
    for name, b in best.items():
        if name != "murmur run (arrivals)" and b:
            print(f"murmur / {name}: {m / b:.2f}")
    results["arrivals"] = dict(seconds=secs, rows=rows, best=best)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=8, help="seconds per throughput run")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of the throughput benchmark")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--throttle-seconds", type=int, default=30)
    ap.add_argument("--peers", action=argparse.BooleanOptionalAction, default=not os.environ.get("CI"),
                    help="also measure Goose and Locust (slow to install; never in CI)")
    ap.add_argument("--arrival-seconds", type=int, default=6, help="seconds per arrival rate")
    ap.add_argument("--arrival-rates", default="1000,2000,4000,6000,8000,10000,13000,16000,20000,25000",
                    help="the ladder of arrival rates per second")
    ap.add_argument("--only", default="throughput,instructions,memory,throttle,distributed",
                    help="any of throughput,instructions,memory,throttle,distributed,arrivals")
    args = ap.parse_args()
    todo = args.only.split(",")
    tools = ensure_tools(args.peers and "throughput" in todo)
    results = dict(machine=dict(cores=os.cpu_count()), when=time.strftime("%Y-%m-%d %H:%M:%S"))
    if "throughput" in todo:
        bench_throughput(args, tools, results)
    if "instructions" in todo:
        bench_instructions(args, results)
    if "memory" in todo:
        bench_memory(args, results)
    if "throttle" in todo:
        bench_throttle(args, results)
        bench_throttle_shared(args, results)
    if "distributed" in todo:
        bench_distributed(args, results)
    if "arrivals" in todo:
        bench_arrivals(args, tools, results)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2))
    log(f"\nresults written to {out / 'latest.json'}")


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    main()
