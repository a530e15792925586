"""What the benchmarks share: ports, pinned processes, rounds, CPU per request, the table.

Every proxy runs pinned to one core (``taskset -c 1``: MOSN with GOMAXPROCS=1, haproxy with one
thread, nginx with one worker, greenmesh as it is) and every load generator to the other (core 0),
so a proxy's CPU time per request can be read from /proc (utime + stime of its processes over the
measured run) and compared within one run: these machines differ by up to 2.5x from one to the
next, so only ratios measured side by side mean anything.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PROXY_CORE, LOAD_CORE = "1", "0"
MOSN = Path(os.environ.get("MOSN", ROOT.parent / "shared" / "tools" / "mosn" / "mosn"))
RESULTS = ROOT / "bench" / "results"
# scripts/compile.sh's compiled build (bench/run.sh builds it first): what "greenmesh" rows run.
COMPILED_ROOT = ROOT / "build" / "compiled"
PURE = ", pure Python"  # the suffix of the rows that run the Python source
_TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port}")


def which(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}")
                                  else None)
    if path is None:
        sys.exit(f"bench: {name} is not installed (bench/run.sh installs it)")
    return path


def pinned(cmd: list[str], core: str = PROXY_CORE) -> list[str]:
    """``cmd`` bound to one core (taskset execs it: the pid stays the command's)."""
    if os.cpu_count() and os.cpu_count() > 1 and shutil.which("taskset"):
        return ["taskset", "-c", core, *cmd]
    return cmd


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and all its descendants (nginx's workers, say)."""
    total = 0
    for p in _descendants(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            continue
    return total / _TICK


def rss_mib(pid: int) -> float:
    total = 0
    for p in _descendants(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


@dataclass
class Target:
    """One thing to measure: its port, the process whose CPU counts, how to load it."""

    name: str
    port: int
    pid: int | None
    load: Callable[[int, int], dict]  # (port, seconds) -> {rps, p50, p99, requests, errors}


def greenmesh(tmp: Path, name: str, config: str, access_log: bool = True,
              compiled: bool = True) -> subprocess.Popen:
    """The greenmesh CLI pinned to the proxy core, its access log on (JSON to a file), as in
    production: the compiled build, or the Python source (``compiled=False``)."""
    root = COMPILED_ROOT if compiled else ROOT
    if compiled and not (root / ".stamp").exists():
        sys.exit("bench: no compiled build in build/compiled (bash scripts/compile.sh builds it; "
                 "bench/run.sh does)")
    path = tmp / f"{name}.yaml"
    path.write_text(config)
    with open(tmp / f"{name}.log", "wb") as log:
        return subprocess.Popen(pinned([sys.executable, "-m", "greenmesh.cli", "--config",
                                        str(path), "--log-format", "json"]),
                                stdout=log if access_log else subprocess.DEVNULL, cwd=root)


def one_route_config(port: int, listener_protocol: str, cluster_protocol: str,
                     upstream_port: int) -> str:
    return f"""
listeners:
  - {{name: ingress, address: 127.0.0.1:{port}, protocol: {listener_protocol}, route_config: r}}
route_configs:
  - name: r
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes: [{{match: {{prefix: /}}, route: {{cluster: up, timeout: 15s}}}}]
clusters:
  - {{name: up, protocol: {cluster_protocol}, connect_timeout: 5s,
      endpoints: ["127.0.0.1:{upstream_port}"]}}
"""


def haproxy(tmp: Path, port: int, upstream_port: int, h2: bool) -> subprocess.Popen:
    """haproxy with one thread on the proxy core; ``h2``: h2c in and h2c out."""
    proto = " proto h2" if h2 else ""
    cfg = tmp / f"haproxy-{port}.cfg"
    cfg.write_text(f"""
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend f
  bind 127.0.0.1:{port}{proto}
  default_backend b
backend b
  server s1 127.0.0.1:{upstream_port}{proto}
""")
    return subprocess.Popen(pinned([which("haproxy"), "-f", str(cfg), "-db"]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def mosn(tmp: Path, up_h1: int, up_h2: int, up_bolt: int
         ) -> tuple[subprocess.Popen, dict[str, int]] | None:
    """MOSN v0.26 on the proxy core (GOMAXPROCS=1), from its README's template: listeners for
    HTTP/1.1, h2c and bolt in front of the given upstreams. None when there is no binary
    (``MOSN=path`` names one; the default is ../shared/tools/mosn/mosn)."""
    if not MOSN.exists():
        print(f"bench: no MOSN at {MOSN} (set MOSN=path): its rows are left out",
              file=sys.stderr)
        return None
    ports = {"h1": free_port(), "h2": free_port(), "bolt": free_port()}
    admin = 20000 + os.getpid() % 10000  # below 32768: no client socket takes it first
    text = (MOSN.parent / "mosn.json.template").read_text()
    for key, value in {"@RUN@": str(tmp / "mosn"), "@MOSN_H1@": ports["h1"],
                       "@MOSN_H2@": ports["h2"], "@MOSN_BOLT@": ports["bolt"],
                       "@UP_H1@": up_h1, "@UP_H2@": up_h2, "@BOLT_ECHO@": up_bolt,
                       "@MOSN_ADMIN@": admin}.items():
        text = text.replace(key, str(value))
    (tmp / "mosn" / "logs").mkdir(parents=True, exist_ok=True)
    (tmp / "mosn.json").write_text(text)
    proc = subprocess.Popen(pinned([str(MOSN), "start", "-c", str(tmp / "mosn.json")]),
                            env=dict(os.environ, GOMAXPROCS="1"), cwd=tmp,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, ports


def stop_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


@dataclass
class Row:
    rps: float
    p50: float
    p99: float
    cpu_us: float | None  # proxy CPU per request
    rss: float | None  # MiB
    errors: list[str] = field(default_factory=list)


def round_args(doc: str | None) -> argparse.ArgumentParser:
    """The arguments every interleaved-rounds bench takes (each adds its own)."""
    ap = argparse.ArgumentParser(description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    return ap


def measure(targets: list[Target], procs: list[subprocess.Popen], tmp: Path, rounds: int,
            seconds: int) -> dict[str, Row]:
    """Waits for every target, runs the rounds, then stops what was started and removes
    ``tmp`` whatever happened."""
    try:
        for t in targets:
            wait_port(t.port)
        return run_rounds(targets, rounds, seconds)
    finally:
        stop_all(procs)
        shutil.rmtree(tmp, ignore_errors=True)


def run_rounds(targets: list[Target], rounds: int, seconds: int) -> dict[str, Row]:
    """Interleaved rounds (target after target, then again), a 1 s warm-up before each, medians
    per target; the proxy's CPU is read around the measured run only."""
    results: dict[str, list[tuple[dict, float | None, float | None]]] = {t.name: []
                                                                          for t in targets}
    for r in range(rounds):
        for t in targets:
            t.load(t.port, 1)
            before = cpu_seconds(t.pid) if t.pid else None
            res = t.load(t.port, seconds)
            cpu = cpu_seconds(t.pid) - before if t.pid and before is not None else None
            per = cpu * 1e6 / res["requests"] if cpu is not None and res["requests"] else None
            rss = rss_mib(t.pid) if t.pid else None
            results[t.name].append((res, per, rss))
            print(f"round {r + 1} {t.name:26s} {res['rps']:>9.0f} req/s  p50 {res['p50']:.2f} ms"
                  f"  p99 {res['p99']:.2f} ms" + (f"  {per:.0f} us CPU/req" if per else "")
                  + (f"  {res['errors']}" if res.get("errors") else ""), file=sys.stderr)
    out = {}
    for name, rs in results.items():
        cpus = [p for _, p, _ in rs if p is not None]
        rsss = [m for _, _, m in rs if m is not None]
        out[name] = Row(statistics.median(x["rps"] for x, _, _ in rs),
                        statistics.median(x["p50"] for x, _, _ in rs),
                        statistics.median(x["p99"] for x, _, _ in rs),
                        statistics.median(cpus) if cpus else None,
                        max(rsss) if rsss else None,
                        [x["errors"] for x, _, _ in rs if x.get("errors")])
    return out


def print_table(title: str, rows: dict[str, Row], ratios: list[tuple[str, str]],
                json_name: str) -> None:
    """The table (markdown), greenmesh / peer ratios of CPU per request and of req/s, and the
    same as JSON in bench/results/<json_name>.json."""
    print(f"\n{title}\n")
    print("| target | req/s | p50 ms | p99 ms | µs CPU/req | RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        cpu = f"{r.cpu_us:.0f}" if r.cpu_us is not None else "—"
        rss = f"{r.rss:.0f}" if r.rss is not None else "—"
        print(f"| {name} | {r.rps:.0f} | {r.p50:.2f} | {r.p99:.2f} | {cpu} | {rss} |")
    print()
    ratio_lines = {}
    for a, b in ratios:
        if a in rows and b in rows:
            ra, rb = rows[a], rows[b]
            line = f"{a} / {b}: req/s {ra.rps / rb.rps:.2f}"
            if ra.cpu_us and rb.cpu_us:
                line += f", CPU per request {ra.cpu_us / rb.cpu_us:.2f}x"
            ratio_lines[f"{a} / {b}"] = line
            print(line)
    for name, r in rows.items():
        if r.errors:
            print(f"{name}: errors: {r.errors}")
    save_results(json_name, {"title": title, "rows": {k: vars(v) for k, v in rows.items()},
                             "ratios": ratio_lines})


def save_results(name: str, result: dict) -> None:
    """A benchmark's table as JSON in bench/results/<name>.json, and where it went."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"(also in {path.relative_to(ROOT)})")
