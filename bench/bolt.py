"""bolt benchmark on loopback.

A batched Python bolt echo server is the upstream. bench/bolt_load.py (pinned to core 0) keeps N
connections x M requests in flight for 5 s after a 1 s warm-up, in interleaved rounds; the table
shows medians and each proxy's CPU per request (pinned to core 1). Targets: the echo server
directly; MOSN on one core; greenmesh with a multiplexed upstream (all requests share one
connection, the path users run); greenmesh with one request per upstream connection at a time
(max_concurrent_streams: 1), to show what multiplexing buys; both compiled builds, and the
multiplexed one again from the Python source.

    .venv/bin/python bench/bolt.py [--rounds N] [--seconds S] [--only TARGET ...]
"""

from __future__ import annotations

import json
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
    measure,
    mosn,
    pinned,
    print_table,
    round_args,
    wait_port,
)

BENCH = ROOT / "bench"


def config(port: int, upstream: int, max_streams: int) -> str:
    return f"""
listeners:
  - {{name: rpc-in, address: 127.0.0.1:{port}, protocol: bolt, route_config: rpc}}
route_configs:
  - name: rpc
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: {{headers: [{{name: service, string_match: {{exact: "com.example.EchoService:1.0"}}}}]}}
            route: {{cluster: echo, timeout: 3s}}
clusters:
  - name: echo
    protocol: bolt
    max_concurrent_streams: {max_streams}
    max_connections: 10000
    endpoints: ["127.0.0.1:{upstream}"]
"""


def main() -> None:
    ap = round_args(__doc__)
    ap.add_argument("--connections", type=int, default=10)
    ap.add_argument("--in-flight", type=int, default=10)
    ap.add_argument("--only", nargs="*", help="targets to measure (default: all)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="greenmesh-bench-bolt-"))
    up = free_port()
    procs = [subprocess.Popen([sys.executable, str(BENCH / "bolt_echo.py"), str(up)], cwd=BENCH)]
    wait_port(up)
    mux, one = "greenmesh multiplexed", "greenmesh one per request"
    ports = {mux: free_port(), one: free_port(), mux + PURE: free_port()}
    started = {mux: greenmesh(tmp, "gm-mux", config(ports[mux], up, 100000)),
               one: greenmesh(tmp, "gm-one", config(ports[one], up, 1)),
               mux + PURE: greenmesh(tmp, "gm-mux-pure", config(ports[mux + PURE], up, 100000),
                                     compiled=False)}
    m = mosn(tmp, free_port(), free_port(), up)
    if m is not None:
        started["MOSN"] = m[0]
        ports["MOSN"] = m[1]["bolt"]
    procs += started.values()

    def load(port: int, seconds: int) -> dict:
        out = subprocess.run(pinned([sys.executable, str(BENCH / "bolt_load.py"), str(port),
                                     str(args.connections), str(args.in_flight), str(seconds)],
                                    LOAD_CORE), capture_output=True, text=True,
                             timeout=seconds + 60, cwd=BENCH)
        return json.loads(out.stdout)
    order = ["MOSN", mux, one, mux + PURE]
    targets = [Target("direct", up, None, load)] + [
        Target(n, ports[n], started[n].pid, load) for n in order if n in started]
    if args.only:
        targets = [t for t in targets if t.name in args.only]
    rows = measure(targets, procs, tmp, args.rounds, args.seconds)
    print_table(f"bolt, {args.connections} connections x {args.in_flight} in flight, "
                f"{args.seconds} s after a 1 s warm-up, median of {args.rounds} interleaved rounds; "
                "proxies pinned to core 1, the load generator to core 0", rows,
                [(mux, "MOSN"), (mux + PURE, "MOSN"), (mux, one)], "bolt")


if __name__ == "__main__":
    main()
