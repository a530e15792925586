"""HTTP/2 (h2c) proxy benchmark on loopback.

nginx (2 workers, ``return 200``) is the upstream, on an h2c port and an HTTP/1.1 port. h2load
(``-c10 -m10``: 10 connections, 10 streams in flight on each) measures, per target, 5 s after a
1 s warm-up, in interleaved rounds; the table shows medians, with p50/p99 from h2load's
per-request log. Targets: nginx directly, haproxy with one thread (h2c in, h2c out: nginx
cannot proxy HTTP/2 upstream), greenmesh h2c -> h2c, and greenmesh h2c -> HTTP/1.1.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import http2_floor
from common import (
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


def start_all(tmp: Path) -> tuple[dict[str, int], list[subprocess.Popen]]:
    up_h2, up_h1 = free_port(), free_port()
    ports = {"direct": up_h2, "haproxy h2c->h2c": free_port(),
             "greenmesh h2c->h2c": free_port(), "greenmesh h2c->http1": free_port()}
    procs = [start_nginx(tmp, "upstream", 2,
                         f"server {{ listen 127.0.0.1:{up_h2} http2; listen 127.0.0.1:{up_h1}; "
                         'location / { return 200 "hello from nginx\\n"; } }'),
             haproxy(tmp, ports["haproxy h2c->h2c"], up_h2, h2=True),
             greenmesh(tmp, "gm-h2", one_route_config(ports["greenmesh h2c->h2c"], "http2",
                                                      "http2", up_h2)),
             greenmesh(tmp, "gm-h1", one_route_config(ports["greenmesh h2c->http1"], "http2",
                                                      "http1", up_h1))]
    try:
        for port in (*ports.values(), up_h1):
            wait_port(port)
    except TimeoutError:
        stop_all(procs)
        raise
    return ports, procs


def h2load(port: int, seconds: int, clients: int, streams: int, log: Path | None = None) -> dict:
    cmd = [which("h2load"), f"-c{clients}", f"-m{streams}", "-D", str(seconds),
           f"http://127.0.0.1:{port}/"]
    if log is not None:
        cmd[1:1] = ["--log-file", str(log)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    rps = float(re.search(r"finished in .*?, ([\d.]+) req/s", out).group(1))
    ok = re.search(r"requests: .*?(\d+) succeeded, (\d+) failed, (\d+) errored", out)
    result = {"rps": rps, "p50": 0.0, "p99": 0.0,
              "errors": "" if ok and ok.group(2) == ok.group(3) == "0" else ok.group(0)}
    if log is not None:
        durations = sorted(int(line.split("\t")[2]) for line in log.read_text().splitlines()
                           if line.count("\t") >= 2)
        if durations:
            result["p50"] = durations[len(durations) // 2] / 1000
            result["p99"] = durations[int(len(durations) * 0.99)] / 1000
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--streams", type=int, default=10)
    ap.add_argument("--only", nargs="*", help="targets to measure (default: all)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="greenmesh-bench-h2-"))
    ports, procs = start_all(tmp)
    targets = {t: ports[t] for t in (args.only or ports)}
    try:
        med = run_rounds(
            targets, lambda port: h2load(port, args.seconds, args.clients, args.streams,
                                         tmp / f"h2load-{port}.log"),
            args.rounds, lambda port: h2load(port, 1, args.clients, args.streams))
    finally:
        stop_all(procs)
        shutil.rmtree(tmp, ignore_errors=True)
    print_table(f"HTTP/2 h2c, h2load -c{args.clients} -m{args.streams}, {args.seconds} s after a "
                f"1 s warm-up, median of {args.rounds} interleaved rounds", med,
                [("greenmesh h2c->h2c", "haproxy h2c->h2c"),
                 ("greenmesh h2c->http1", "haproxy h2c->h2c")])
    # The ceiling of any proxy on h2 (bench/http2_floor.py), to read the ratios against.
    floor_us = http2_floor.measure(30_000)
    line = f"\nh2 alone (no sockets, no proxy): {floor_us:.1f} us per h2c -> h2c request, " \
           f"at most {1e6 / floor_us:,.0f} req/s"
    if "greenmesh h2c->h2c" in med:
        line += f"; greenmesh h2c->h2c reaches {med['greenmesh h2c->h2c']['rps'] * floor_us / 1e4:.0f}%"
    print(line)


if __name__ == "__main__":
    main()
