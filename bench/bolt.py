"""bolt benchmark on loopback.

A batched Python bolt echo server is the upstream. bench/bolt_load.py keeps N connections x M
requests in flight for 5 s after a 1 s warm-up, in interleaved rounds; the table shows medians.
Targets: the echo server directly; greenmesh with a multiplexed upstream (all requests share
one connection); greenmesh with one request per upstream connection at a time
(max_concurrent_streams: 1), to show what multiplexing buys.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import (
    ROOT,
    free_port,
    greenmesh,
    print_table,
    run_rounds,
    stop_all,
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


def load(port: int, conns: int, in_flight: int, seconds: int) -> dict:
    out = subprocess.run([sys.executable, str(BENCH / "bolt_load.py"), str(port), str(conns),
                          str(in_flight), str(seconds)], capture_output=True, text=True,
                         timeout=seconds + 60, cwd=BENCH)
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=10)
    ap.add_argument("--in-flight", type=int, default=10)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="greenmesh-bench-bolt-"))
    up = free_port()
    ports = {"direct": up, "greenmesh multiplexed": free_port(),
             "greenmesh one per request": free_port()}
    procs = [subprocess.Popen([sys.executable, str(BENCH / "bolt_echo.py"), str(up)],
                              cwd=BENCH),
             greenmesh(tmp, "gm-mux", config(ports["greenmesh multiplexed"], up, 100000)),
             greenmesh(tmp, "gm-one", config(ports["greenmesh one per request"], up, 1))]
    try:
        for port in ports.values():
            wait_port(port)
        med = run_rounds(ports, lambda p: load(p, args.connections, args.in_flight,
                                               args.seconds),
                         args.rounds, lambda p: load(p, args.connections, args.in_flight, 1))
    finally:
        stop_all(procs)
        shutil.rmtree(tmp, ignore_errors=True)
    print_table(f"bolt, {args.connections} connections x {args.in_flight} in flight, "
                f"{args.seconds} s after a 1 s warm-up, median of {args.rounds} interleaved "
                "rounds", med, [("greenmesh multiplexed", "direct"),
                                ("greenmesh multiplexed", "greenmesh one per request")])


if __name__ == "__main__":
    main()
