"""HTTP/2 (h2c) proxy benchmark on loopback.

nginx (2 workers, ``return 200``) is the upstream, on an h2c port and an HTTP/1.1 port. h2load
(``-c10 -m10``: 10 connections, 10 streams in flight on each, pinned to core 0) measures each
target for 5 s after a 1 s warm-up, in interleaved rounds; the table shows medians, p50/p99 from
h2load's per-request log, and each proxy's CPU per request (it runs pinned to core 1). Targets:
nginx directly; haproxy with one thread (h2c in, h2c out); MOSN on one core (h2c -> h2c);
greenmesh (its compiled build) h2c -> h2c, h2c -> HTTP/1.1 and HTTP/1.1 -> h2c (the last loaded
by h2load --h1 with 50 connections), and h2c -> h2c run from the Python source.

    .venv/bin/python bench/http2.py [--rounds N] [--seconds S] [--only TARGET ...]
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

import http2_floor
from common import (
    LOAD_CORE,
    PURE,
    Target,
    free_port,
    greenmesh,
    haproxy,
    measure,
    mosn,
    one_route_config,
    pinned,
    print_table,
    round_args,
    wait_port,
    which,
)

from greenmesh.testing.nginx import start_nginx


def h2load(port: int, seconds: int, clients: int, streams: int, log: Path | None = None,
           h1: bool = False, rps: float | None = None) -> dict:
    """One h2load run: req/s, requests, errors, and p50/p99 (ms) from its per-request log when
    ``log`` names one; ``rps``: at most that many requests a second on each connection."""
    cmd = [which("h2load"), f"-c{clients}", f"-m{streams}", "-D", str(seconds),
           *(["--h1"] if h1 else []), *([f"--rps={rps:.1f}"] if rps else []),
           f"http://127.0.0.1:{port}/"]
    if log is not None:
        cmd[1:1] = ["--log-file", str(log)]
    out = subprocess.run(pinned(cmd, LOAD_CORE), capture_output=True, text=True,
                         timeout=seconds + 60).stdout
    rps = float(re.search(r"finished in .*?, ([\d.]+) req/s", out).group(1))
    ok = re.search(r"requests: .*?(\d+) succeeded, (\d+) failed, (\d+) errored", out)
    result = {"rps": rps, "p50": 0.0, "p99": 0.0, "requests": int(ok.group(1)) if ok else 0,
              "errors": "" if ok and ok.group(2) == ok.group(3) == "0" else (
                  ok.group(0) if ok else out[-300:])}
    if log is not None:
        durations = sorted(int(line.split("\t")[2]) for line in log.read_text().splitlines()
                           if line.count("\t") >= 2)
        if durations:
            result["p50"] = durations[len(durations) // 2] / 1000
            result["p99"] = durations[int(len(durations) * 0.99)] / 1000
        log.unlink()
    return result


def main() -> None:
    ap = round_args(__doc__)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--streams", type=int, default=10)
    ap.add_argument("--only", nargs="*", help="targets to measure (default: all)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="greenmesh-bench-h2-"))
    up_h2, up_h1 = free_port(), free_port()
    procs = [start_nginx(tmp, "upstream", 2,
                         f"server {{ listen 127.0.0.1:{up_h2} http2; listen 127.0.0.1:{up_h1}; "
                         'location / { return 200 "hello from nginx\\n"; } }')]
    wait_port(up_h2)

    def h2c(port: int, seconds: int) -> dict:
        return h2load(port, seconds, args.clients, args.streams, tmp / f"h2load-{port}.log")

    def h1(port: int, seconds: int) -> dict:
        return h2load(port, seconds, 50, 1, tmp / f"h2load-{port}.log", h1=True)

    targets = [Target("direct", up_h2, None, h2c)]
    pure = "greenmesh h2c->h2c" + PURE
    ports = {name: free_port() for name in ("haproxy h2c->h2c", "greenmesh h2c->h2c",
                                             "greenmesh h2c->http1", "greenmesh http1->h2c", pure)}
    started = {"haproxy h2c->h2c": haproxy(tmp, ports["haproxy h2c->h2c"], up_h2, h2=True)}
    m = mosn(tmp, up_h1, up_h2, free_port())
    if m is not None:
        started["MOSN h2c->h2c"] = m[0]
        ports["MOSN h2c->h2c"] = m[1]["h2"]
    for name, (listener, cluster, upstream) in {
            "greenmesh h2c->h2c": ("http2", "http2", up_h2),
            "greenmesh h2c->http1": ("http2", "http1", up_h1),
            "greenmesh http1->h2c": ("http1", "http2", up_h2)}.items():
        started[name] = greenmesh(tmp, name.replace(" ", "-").replace(">", ""),
                                  one_route_config(ports[name], listener, cluster, upstream))
    started[pure] = greenmesh(tmp, "h2c-h2c-pure", one_route_config(ports[pure], "http2", "http2",
                                                                    up_h2), compiled=False)
    procs += started.values()
    order = ["haproxy h2c->h2c", "MOSN h2c->h2c", "greenmesh h2c->h2c", "greenmesh h2c->http1",
             "greenmesh http1->h2c", pure]
    targets += [Target(n, ports[n], started[n].pid, h1 if "http1->" in n else h2c)
                for n in order if n in started]
    if args.only:
        targets = [t for t in targets if t.name in args.only]
    rows = measure(targets, procs, tmp, args.rounds, args.seconds)
    print_table(f"HTTP/2 h2c, h2load -c{args.clients} -m{args.streams} (http1->h2c: --h1 -c50), "
                f"{args.seconds} s after a 1 s warm-up, median of {args.rounds} interleaved "
                "rounds; proxies pinned to core 1, h2load to core 0", rows,
                [("greenmesh h2c->h2c", "MOSN h2c->h2c"), (pure, "MOSN h2c->h2c"),
                 ("greenmesh h2c->http1", "MOSN h2c->h2c"),
                 ("greenmesh http1->h2c", "MOSN h2c->h2c"),
                 ("greenmesh h2c->h2c", "haproxy h2c->h2c")], "http2")
    # The ceiling of any proxy on this codec (bench/http2_floor.py), to read the ratios against.
    floor_us = http2_floor.best(http2_floor.run, 30_000)
    print(f"\nthe HTTP/2 codec alone (no sockets, no proxy): {floor_us:.1f} us per h2c -> h2c "
          f"request")


if __name__ == "__main__":
    main()
