"""Latency a proxy adds: p50 and p99 through it minus direct, HTTP/1.1 and h2c.

nginx (one worker, ``return 200``) is the origin, pinned to core 0 with h2load. h2load (per-request
log) loads each target with 1 and with 10 connections, one request in flight on each (closed
loop), and then at a fixed rate of half greenmesh's peak (``--rps`` per connection over 10
connections; peak: greenmesh's req/s with 50 connections for HTTP/1.1, 10 connections x 10 in
flight for h2c, measured first in the same run). Each case
runs on the origin directly, MOSN and greenmesh (compiled build, access log on) in interleaved
rounds; each proxy is pinned to core 1. "added" is the target's percentile minus direct's in the
same case: medians over the rounds.

    .venv/bin/python bench/latency.py [--rounds N] [--seconds S]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import (
    LOAD_CORE,
    cpu_seconds,
    free_port,
    greenmesh,
    mosn,
    one_route_config,
    pinned,
    save_results,
    stop_all,
    wait_port,
)
from http2 import h2load

from greenmesh.testing.nginx import nginx_binary, nginx_conf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=4)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="greenmesh-bench-latency-"))
    up_h1, up_h2 = free_port(), free_port()
    # The origin shares core 0 with h2load: core 1 is the proxy's alone.
    conf = nginx_conf(tmp, "origin", 1,
                      f"server {{ listen 127.0.0.1:{up_h1}; listen 127.0.0.1:{up_h2} http2; "
                      'location / { return 200 "hello from nginx\\n"; } }')
    procs = [subprocess.Popen(pinned([nginx_binary(), "-c", str(conf)], LOAD_CORE),
                              stderr=subprocess.DEVNULL)]
    gm_h1, gm_h2 = free_port(), free_port()
    procs.append(gm1 := greenmesh(tmp, "gm-h1", one_route_config(gm_h1, "http1", "http1", up_h1)))
    procs.append(gm2 := greenmesh(tmp, "gm-h2", one_route_config(gm_h2, "http2", "http2", up_h2)))
    targets = {"HTTP/1.1": {"direct": (up_h1, None), "greenmesh": (gm_h1, gm1.pid)},
               "h2c": {"direct": (up_h2, None), "greenmesh": (gm_h2, gm2.pid)}}
    m = mosn(tmp, up_h1, up_h2, free_port())
    if m is not None:
        procs.append(m[0])
        targets["HTTP/1.1"]["MOSN"] = (m[1]["h1"], m[0].pid)
        targets["h2c"]["MOSN"] = (m[1]["h2"], m[0].pid)
    results: dict[str, dict[str, list[dict]]] = {}
    peaks: dict[str, float] = {}
    try:
        for group in targets.values():
            for port, _ in group.values():
                wait_port(port)
        for proto, group in targets.items():
            h1 = proto == "HTTP/1.1"
            port = group["greenmesh"][0]
            # Peak as the throughput benches load it: 50 connections (HTTP/1.1), 10 x 10 (h2c).
            clients, streams = (50, 1) if h1 else (10, 10)
            h2load(port, 1, clients, streams, tmp / "warm.log", h1)
            peaks[proto] = h2load(port, args.seconds, clients, streams, tmp / "peak.log",
                                  h1)["rps"]
            print(f"{proto}: greenmesh peak {peaks[proto]:.0f} req/s ({clients} x {streams} in "
                  "flight)", file=sys.stderr)
            cases = [("1 connection", 1, None), ("10 connections", 10, None),
                     (f"half peak ({peaks[proto] / 2:.0f} req/s)", 10, peaks[proto] / 20)]
            for r in range(args.rounds):
                for case, clients, rate in cases:
                    for name, (tport, pid) in group.items():
                        before = cpu_seconds(pid) if pid else 0.0
                        res = h2load(tport, args.seconds, clients, 1, tmp / "run.log", h1, rate)
                        if pid and res["requests"]:
                            res["cpu_us"] = (cpu_seconds(pid) - before) * 1e6 / res["requests"]
                        results.setdefault(f"{proto}, {case}", {}).setdefault(name, []).append(res)
                        print(f"round {r + 1} {proto}, {case}, {name}: {res['rps']:.0f} req/s "
                              f"p50 {res['p50']:.3f} ms p99 {res['p99']:.3f} ms {res['errors']}",
                              file=sys.stderr)
    finally:
        stop_all(procs)
        shutil.rmtree(tmp, ignore_errors=True)
    rows: dict[str, dict[str, dict]] = {}
    for case, by_target in results.items():
        med = {name: {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50", "p99")}
               for name, runs in by_target.items()}
        for name, runs in by_target.items():
            cpus = [r["cpu_us"] for r in runs if "cpu_us" in r]
            med[name]["cpu_us"] = statistics.median(cpus) if cpus else None
            med[name]["errors"] = [r["errors"] for r in runs if r["errors"]]
            if name != "direct":
                med[name]["added_p50"] = med[name]["p50"] - med["direct"]["p50"]
                med[name]["added_p99"] = med[name]["p99"] - med["direct"]["p99"]
        rows[case] = med
    title = (f"Added latency, h2load one request in flight per connection, {args.seconds} s per "
             f"case, median of {args.rounds} interleaved rounds; proxies pinned to core 1, "
             "h2load to core 0")
    print(f"\n{title}\n")
    print("| case | target | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms | µs CPU/req |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for case, med in rows.items():
        for name, row in med.items():
            added = (f"{row['added_p50']:+.3f} | {row['added_p99']:+.3f}" if "added_p50" in row
                     else "— | —")
            cpu = f"{row['cpu_us']:.0f}" if row["cpu_us"] else "—"
            print(f"| {case} | {name} | {row['rps']:.0f} | {row['p50']:.3f} | {row['p99']:.3f} | "
                  f"{added} | {cpu} |")
    print()
    for case, med in rows.items():
        if "half peak" in case:
            print(f"{case}: greenmesh added p99 {med['greenmesh']['added_p99']:.3f} ms"
                  + (f" (MOSN {med['MOSN']['added_p99']:.3f} ms)" if "MOSN" in med else ""))
        errors = {n: r["errors"] for n, r in med.items() if r["errors"]}
        if errors:
            print(f"{case}: errors: {errors}")
    save_results("latency", {"title": title, "greenmesh_peak_rps": peaks, "rows": rows})


if __name__ == "__main__":
    main()
