"""Many connections, HTTP/1.1: memory per idle connection, 10,000 held open under load, and
1,000 concurrent connections on a fresh process.

nginx (2 workers, ``return 200``) is the origin. For MOSN and greenmesh (compiled build, access
log on), each pinned to core 1, and each case on a fresh process:

- idle: RSS before and after 1,000 keep-alive connections that each made one request and stay
  open (per 1,000 connections, MiB);
- held: wrk -t1 -c50 (pinned to core 0) for S seconds, then again with 10,000 idle keep-alive
  connections held open beside it: req/s both ways, and RSS;
- c1000: wrk -t1 -c1000 for S seconds at once on a fresh process (no warm-up: the cold start
  counts), then wrk -c50 on the same process: req/s, p50, p99, timeouts and errors of each.
- at the limit (greenmesh): its global connection limit set to N + 25, N idle connections
  held, then wrk -c50: 25 of wrk's connections are served and 25 wait in the kernel's backlog
  (greenmesh stops accepting rather than accepting and closing): req/s and greenmesh's CPU.

greenmesh's global connection limit is set to N + 1000 for the held case (its default, half
the file limit, may be under N on a machine whose hard file limit is 20,000).

    .venv/bin/python bench/scale.py [--seconds S] [--held N]
"""

from __future__ import annotations

import argparse
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from common import (
    MOSN,
    cpu_seconds,
    free_port,
    greenmesh,
    mosn,
    one_route_config,
    rss_mib,
    save_results,
    stop_all,
    wait_port,
)
from http1 import wrk

from greenmesh.testing.nginx import start_nginx

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


def _whole_response(data: bytes) -> bool:
    """A whole response head and its content-length's worth of body."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return m is not None and len(body) >= int(m.group(1))


def hold(port: int, n: int) -> list[socket.socket]:
    """``n`` keep-alive connections, each after one whole request and response."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(REQUEST)
        got = b""
        while not _whole_response(got):
            chunk = s.recv(4096)
            if not chunk:
                raise RuntimeError(f"port {port} closed a held connection")
            got += chunk
        socks.append(s)
    return socks


def release(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()


def global_limit(n: int) -> str:
    """Envoy's overload manager limiting downstream connections over every listener to n."""
    return f"""
overload_manager:
  resource_monitors:
    - name: envoy.resource_monitors.global_downstream_max_connections
      typed_config: {{max_active_downstream_connections: {n}}}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--held", type=int, default=10_000)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.held + 2000
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    tmp = Path(tempfile.mkdtemp(prefix="greenmesh-bench-scale-"))
    up = free_port()
    procs = [start_nginx(tmp, "origin", 2, f"server {{ listen 127.0.0.1:{up}; "
                                           'location / { return 200 "hello from nginx\\n"; } }')]
    wait_port(up)
    count = [0]

    def fresh(name: str, limit: int | None = None) -> tuple[subprocess.Popen, int]:
        count[0] += 1
        if name == "MOSN":
            m = mosn(tmp / f"m{count[0]}", up, free_port(), free_port())
            assert m is not None
            proc, port = m[0], m[1]["h1"]
        else:
            port = free_port()
            config = one_route_config(port, "http1", "http1", up)
            if limit is not None:
                config += global_limit(limit)
            proc = greenmesh(tmp, f"gm{count[0]}", config)
        procs.append(proc)
        wait_port(port)
        return proc, port

    def stop(proc: subprocess.Popen) -> None:
        stop_all([proc])
        procs.remove(proc)

    names = ["greenmesh"] + (["MOSN"] if MOSN.exists() else [])
    rows: dict[str, dict] = {n: {} for n in names}
    try:
        for name in names:
            row = rows[name]
            proc, port = fresh(name)
            before = rss_mib(proc.pid)
            socks = hold(port, 1000)
            row["idle_mib_per_1000"] = rss_mib(proc.pid) - before
            release(socks)
            stop(proc)
            print(f"{name}: idle {row['idle_mib_per_1000']:.1f} MiB per 1000", file=sys.stderr)

            proc, port = fresh(name, args.held + 1000)
            wrk(port, 1, 50)
            row["c50"] = wrk(port, args.seconds, 50)
            socks = hold(port, args.held)
            row["held_rss_mib"] = rss_mib(proc.pid)
            row["c50_with_held"] = wrk(port, args.seconds, 50)
            release(socks)
            stop(proc)
            print(f"{name}: c50 {row['c50']['rps']:.0f} req/s, with {args.held} held "
                  f"{row['c50_with_held']['rps']:.0f} req/s, RSS {row['held_rss_mib']:.0f} MiB",
                  file=sys.stderr)

            proc, port = fresh(name)
            row["c1000_fresh"] = wrk(port, args.seconds, 1000)
            row["c50_after"] = wrk(port, args.seconds, 50)
            stop(proc)
            print(f"{name}: c1000 fresh {row['c1000_fresh']}", file=sys.stderr)

            if name == "greenmesh":
                proc, port = fresh(name, args.held + 25)
                socks = hold(port, args.held)
                before = cpu_seconds(proc.pid)
                row["at_limit"] = at = wrk(port, args.seconds, 50)
                at["cpu_us_per_request"] = ((cpu_seconds(proc.pid) - before) * 1e6
                                            / max(at["requests"], 1))
                release(socks)
                stop(proc)
                print(f"{name}: at the limit {at}", file=sys.stderr)
    finally:
        stop_all(procs)
        shutil.rmtree(tmp, ignore_errors=True)
    title = (f"Many HTTP/1.1 connections, wrk -t1 {args.seconds} s (core 0), proxies pinned to "
             "core 1, a fresh process per case")
    print(f"\n{title}\n")
    print(f"| target | RSS per 1000 idle MiB | -c50 req/s | -c50 with {args.held} held req/s "
          "| RSS with held MiB | -c1000 fresh req/s | p50 ms | p99 ms | errors | -c50 after "
          "req/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for name, r in rows.items():
        c1k = r["c1000_fresh"]
        print(f"| {name} | {r['idle_mib_per_1000']:.1f} | {r['c50']['rps']:.0f} | "
              f"{r['c50_with_held']['rps']:.0f} | {r['held_rss_mib']:.0f} | {c1k['rps']:.0f} | "
              f"{c1k['p50']:.2f} | {c1k['p99']:.2f} | {c1k['errors'] or 'none'} | "
              f"{r['c50_after']['rps']:.0f} |")
    print()
    ratios = {}
    if "MOSN" in rows:
        g, m = rows["greenmesh"], rows["MOSN"]
        ratios = {
            "idle memory": g["idle_mib_per_1000"] / m["idle_mib_per_1000"],
            "req/s at -c1000 fresh": g["c1000_fresh"]["rps"] / m["c1000_fresh"]["rps"],
            "req/s at -c50 (after)": g["c50_after"]["rps"] / m["c50_after"]["rps"],
            "p99 at -c1000 fresh": g["c1000_fresh"]["p99"] / m["c1000_fresh"]["p99"],
        }
        for what, x in ratios.items():
            print(f"greenmesh / MOSN, {what}: {x:.2f}")
    at = rows["greenmesh"]["at_limit"]
    print(f"greenmesh at its limit ({args.held} held, limit {args.held + 25}), wrk -c50: "
          f"{at['rps']:.0f} req/s at {at['cpu_us_per_request']:.0f} µs of CPU each, "
          f"errors: {at['errors'] or 'none'}")
    for name, r in rows.items():
        print(f"{name}: with {args.held} idle connections held, -c50 keeps "
              f"{r['c50_with_held']['rps'] / r['c50']['rps']:.0%} of its req/s")
    save_results("scale", {"title": title, "rows": rows, "ratios": ratios})


if __name__ == "__main__":
    main()
