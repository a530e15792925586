"""HTTP/1.1 proxy benchmark on loopback.

nginx (2 workers, ``return 200``) is the upstream. wrk (``-t1 -c50``) measures, per target, a
1 s warm-up then 5 s, in interleaved rounds; the table shows medians. Targets: the upstream
directly, nginx as a one-worker keep-alive reverse proxy, haproxy with one thread, the naive
gevent+h11 proxy in bench/naive_proxy.py (the floor), and greenmesh (its CLI, access log on).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import (
    ROOT,
    free_port,
    greenmesh,
    haproxy,
    one_route_config,
    print_table,
    run_rounds,
    stop_all,
    wait_port,
    which,
)

from greenmesh.testing.nginx import start_nginx

BODY = "hello from nginx\n"


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
    procs.append(haproxy(tmp, ports["haproxy"], up, h2=False))
    procs.append(subprocess.Popen([sys.executable, str(ROOT / "bench" / "naive_proxy.py"),
                                   str(ports["naive"]), str(up)]))
    procs.append(greenmesh(tmp, "greenmesh", one_route_config(ports["greenmesh"], "http1",
                                                              "http1", up)))
    try:
        for port in ports.values():
            wait_port(port)
    except TimeoutError:
        stop_all(procs)
        raise
    return ports, procs


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
    targets = {t: ports[t] for t in (args.only or ports)}
    try:
        med = run_rounds(targets, lambda port: wrk(port, args.seconds, args.connections),
                         args.rounds, lambda port: wrk(port, 1, args.connections))
    finally:
        stop_all(procs)
        shutil.rmtree(tmp, ignore_errors=True)
    print_table(f"HTTP/1.1, wrk -t1 -c{args.connections}, {args.seconds} s after a 1 s warm-up, "
                f"median of {args.rounds} interleaved rounds", med,
                [("greenmesh", "nginx-proxy"), ("greenmesh", "haproxy"), ("greenmesh", "naive")])


if __name__ == "__main__":
    main()
