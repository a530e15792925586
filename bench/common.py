"""What the benchmarks share: ports, processes, rounds, medians and the table."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10) -> None:
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


def greenmesh(tmp: Path, name: str, config: str) -> subprocess.Popen:
    """The greenmesh CLI with its access log on, JSON to a file, as in production."""
    path = tmp / f"{name}.yaml"
    path.write_text(config)
    with open(tmp / f"{name}.log", "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "greenmesh.cli", "--config", str(path),
                                 "--log-format", "json"], stdout=log, cwd=ROOT)


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
  - {{name: up, protocol: {cluster_protocol}, endpoints: ["127.0.0.1:{upstream_port}"]}}
"""


def haproxy(tmp: Path, port: int, upstream_port: int, h2: bool) -> subprocess.Popen:
    """haproxy with one thread; ``h2``: h2c in and h2c out."""
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
    return subprocess.Popen([which("haproxy"), "-f", str(cfg), "-db"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


def run_rounds(targets: dict[str, int], measure: Callable[[int], dict], rounds: int,
               warm: Callable[[int], object]) -> dict[str, dict[str, float]]:
    """Interleaved rounds (target after target, then again), medians per target."""
    results: dict[str, list[dict]] = {t: [] for t in targets}
    for r in range(rounds):
        for t, port in targets.items():
            warm(port)
            res = measure(port)
            results[t].append(res)
            print(f"round {r + 1} {t:24s} {res['rps']:>10.0f} req/s  p50 {res['p50']:.2f} ms"
                  f"  p99 {res['p99']:.2f} ms {res.get('errors', '')}", file=sys.stderr)
    return {t: {k: statistics.median(x[k] for x in v) for k in ("rps", "p50", "p99")}
            for t, v in results.items()}


def print_table(title: str, med: dict[str, dict[str, float]],
                ratios: list[tuple[str, str]]) -> None:
    print(f"\n{title}\n")
    print("| target | req/s | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|")
    for t, m in med.items():
        print(f"| {t} | {m['rps']:.0f} | {m['p50']:.2f} | {m['p99']:.2f} |")
    print()
    for a, b in ratios:
        if a in med and b in med:
            print(f"{a} / {b}: {med[a]['rps'] / med[b]['rps']:.2f}")
