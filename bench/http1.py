"""HTTP/1.1 proxy benchmark on loopback.

nginx (2 workers, ``return 200``) is the upstream. wrk (``-t1 -c50``) measures, per target, a
1 s warm-up then 5 s, in interleaved rounds; the table shows medians. Targets: the upstream
directly, nginx as a one-worker keep-alive reverse proxy, haproxy with one thread, the naive
gevent+h11 proxy in bench/naive_proxy.py (the floor), and greenmesh (its CLI, access log on).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from greenmesh.testing.nginx import start_nginx  # noqa: E402

BODY = "hello from nginx\n"


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


def start_all(tmp: Path) -> tuple[dict[str, int], list[subprocess.Popen]]:
    ports = {k: free_port() for k in ("direct", "nginx-proxy", "haproxy", "naive", "greenmesh")}
    up = ports["direct"]
    procs = []
    procs.append(start_nginx(
        tmp, "upstream", 2,
        f'server {{ listen 127.0.0.1:{up}; location / {{ return 200 "{BODY.strip()}\\n"; }} }}'))
    procs.append(start_nginx(
        tmp, "proxy", 1,
        f"upstream u {{ server 127.0.0.1:{up}; keepalive 64; }}\n"
        f"  server {{ listen 127.0.0.1:{ports['nginx-proxy']}; location / {{ proxy_pass http://u; "
        'proxy_http_version 1.1; proxy_set_header Connection ""; } }'))
    hap = tmp / "haproxy.cfg"
    hap.write_text(f"""
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
  bind 127.0.0.1:{ports['haproxy']}
  default_backend b
backend b
  server s1 127.0.0.1:{up}
""")
    procs.append(subprocess.Popen([which("haproxy"), "-f", str(hap), "-db"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    procs.append(subprocess.Popen([sys.executable, str(ROOT / "bench" / "naive_proxy.py"),
                                   str(ports["naive"]), str(up)]))
    gm = tmp / "greenmesh.yaml"
    gm.write_text(f"""
listeners:
  - {{name: ingress, address: 127.0.0.1:{ports['greenmesh']}, protocol: http1, route_config: r}}
route_configs:
  - name: r
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes: [{{match: {{prefix: /}}, route: {{cluster: nginx, timeout: 15s}}}}]
clusters:
  - {{name: nginx, protocol: http1, endpoints: ["127.0.0.1:{up}"]}}
""")
    with open(tmp / "greenmesh.log", "wb") as log:
        procs.append(subprocess.Popen([sys.executable, "-m", "greenmesh.cli", "--config", str(gm),
                                       "--log-format", "json"], stdout=log, cwd=ROOT))
    try:
        for port in ports.values():
            wait_port(port)
    except TimeoutError:
        stop_all(procs)
        raise
    return ports, procs


def stop_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(port: int, seconds: int, connections: int) -> dict:
    out = subprocess.run([which("wrk"), "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
                          f"http://127.0.0.1:{port}/"], capture_output=True, text=True,
                         timeout=seconds + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    return {"rps": rps, "p50": _ms(lat["50"]), "p99": _ms(lat["99"]),
            "errors": errors.group(0) if errors else ""}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--only", nargs="*", help="targets to measure (default: all)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="greenmesh-bench-"))
    ports, procs = start_all(tmp)
    targets = args.only or list(ports)
    results: dict[str, list[dict]] = {t: [] for t in targets}
    try:
        for r in range(args.rounds):
            for t in targets:
                wrk(ports[t], 1, args.connections)  # warm-up
                res = wrk(ports[t], args.seconds, args.connections)
                results[t].append(res)
                print(f"round {r + 1} {t:12s} {res['rps']:>10.0f} req/s  p50 {res['p50']:.2f} ms"
                      f"  p99 {res['p99']:.2f} ms {res['errors']}", file=sys.stderr)
    finally:
        stop_all(procs)
        shutil.rmtree(tmp, ignore_errors=True)
    med = {t: {k: statistics.median(x[k] for x in v) for k in ("rps", "p50", "p99")}
           for t, v in results.items()}
    print(f"\nHTTP/1.1, wrk -t1 -c{args.connections}, {args.seconds} s after a 1 s warm-up, "
          f"median of {args.rounds} interleaved rounds\n")
    print("| target | req/s | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|")
    for t, m in med.items():
        print(f"| {t} | {m['rps']:.0f} | {m['p50']:.2f} | {m['p99']:.2f} |")
    gm = med.get("greenmesh")
    if gm:
        print()
        for ref in ("nginx-proxy", "haproxy", "naive"):
            if ref in med:
                print(f"greenmesh / {ref}: {gm['rps'] / med[ref]['rps']:.2f}")


if __name__ == "__main__":
    main()
