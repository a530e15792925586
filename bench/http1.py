"""HTTP/1.1 proxy benchmark on loopback.

nginx (2 workers, ``return 200``) is the upstream. wrk (``-t1 -c50``, pinned to core 0) measures
each target for 5 s after a 1 s warm-up, in interleaved rounds; the table shows medians and each
proxy's CPU per request (every proxy pinned to core 1). Targets: the upstream directly; nginx as
a one-worker keep-alive reverse proxy; haproxy with one thread; MOSN on one core; the naive
gevent+h11 proxy in bench/naive_proxy.py; greenmesh (its CLI, compiled build, access log on, JSON
to a file), greenmesh with the access log off (what the log costs), and greenmesh run from the
Python source (what the compiled build buys).

    .venv/bin/python bench/http1.py [--rounds N] [--seconds S] [--connections C] [--only T ...]
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

from common import (
    LOAD_CORE,
    PURE,
    ROOT,
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

from greenmesh.testing.nginx import nginx_binary, nginx_conf, start_nginx

BODY = "hello from nginx\n"
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * _UNITS[m.group(2)] if m else 0.0


def wrk(port: int, seconds: int, connections: int, path: str = "/") -> dict:
    out = subprocess.run(pinned([which("wrk"), "-t1", f"-c{connections}", f"-d{seconds}s",
                                 "--latency", "--timeout", "5s", f"http://127.0.0.1:{port}{path}"],
                                LOAD_CORE), capture_output=True, text=True,
                         timeout=seconds + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    errors = re.findall(r"Non-2xx or 3xx responses: \d+|Socket errors: .*", out)
    return {"rps": rps, "p50": _ms(lat.get("50", "")), "p99": _ms(lat.get("99", "")),
            "requests": requests, "errors": "; ".join(errors)}


def main() -> None:
    ap = round_args(__doc__)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--only", nargs="*", help="targets to measure (default: all)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="greenmesh-bench-h1-"))
    up = free_port()
    procs = [start_nginx(tmp, "upstream", 2, f'server {{ listen 127.0.0.1:{up}; '
                                             f'location / {{ return 200 "{BODY.strip()}\\n"; }} }}')]
    wait_port(up)
    ports = {n: free_port() for n in ("nginx-proxy", "haproxy", "naive", "greenmesh",
                                       "greenmesh, no access log", "greenmesh" + PURE)}
    started = {
        "nginx-proxy": subprocess.Popen(pinned([nginx_binary(), "-c", str(nginx_conf(
            tmp, "proxy", 1,
            f"upstream u {{ server 127.0.0.1:{up}; keepalive 64; }}\n"
            f"  server {{ listen 127.0.0.1:{ports['nginx-proxy']}; location / {{ "
            'proxy_pass http://u; proxy_http_version 1.1; proxy_set_header Connection ""; '
            "} }"))]), stderr=subprocess.DEVNULL),
        "haproxy": haproxy(tmp, ports["haproxy"], up, h2=False),
        "naive": subprocess.Popen(pinned([sys.executable, str(ROOT / "bench" / "naive_proxy.py"),
                                          str(ports["naive"]), str(up)])),
        "greenmesh": greenmesh(tmp, "gm", one_route_config(ports["greenmesh"], "http1", "http1",
                                                           up)),
        "greenmesh, no access log": greenmesh(
            tmp, "gm-quiet", one_route_config(ports["greenmesh, no access log"], "http1",
                                              "http1", up).replace(
                "route_config: r}", "route_config: r, access_log: false}")),
        "greenmesh" + PURE: greenmesh(tmp, "gm-pure", one_route_config(
            ports["greenmesh" + PURE], "http1", "http1", up), compiled=False),
    }
    m = mosn(tmp, up, free_port(), free_port())
    if m is not None:
        started["MOSN"] = m[0]
        ports["MOSN"] = m[1]["h1"]
    procs += started.values()

    def load(port: int, seconds: int) -> dict:
        return wrk(port, seconds, args.connections)
    order = ["nginx-proxy", "haproxy", "MOSN", "naive", "greenmesh", "greenmesh, no access log",
             "greenmesh" + PURE]
    targets = [Target("direct", up, None, load)] + [
        Target(n, ports[n], started[n].pid, load) for n in order if n in started]
    if args.only:
        targets = [t for t in targets if t.name in args.only]
    rows = measure(targets, procs, tmp, args.rounds, args.seconds)
    print_table(f"HTTP/1.1 keep-alive, wrk -t1 -c{args.connections}, {args.seconds} s after a 1 s "
                f"warm-up, median of {args.rounds} interleaved rounds; proxies pinned to core 1, "
                "wrk to core 0", rows,
                [("greenmesh", "MOSN"), ("greenmesh" + PURE, "MOSN"), ("greenmesh", "nginx-proxy"),
                 ("greenmesh", "naive"), ("greenmesh", "greenmesh, no access log")], "http1")


if __name__ == "__main__":
    main()
