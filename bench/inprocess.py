"""The in-process client against the loopback hop: the same request to the same upstream three
ways, in one application process with an embedded mesh (compiled build):

- ``direct``: a plain HTTP client (``http.client``, keep-alive, under gevent) to the upstream;
- ``listener``: the same client to the mesh's own listener on 127.0.0.1 (the hop an app pays
  without the in-process client), which forwards to the upstream;
- ``mesh.http``: the in-process client, the same route and cluster, no socket between app and
  mesh.

At 1 and at 10 greenlets, each in a closed loop. The upstream is nginx (``return 200``, one
worker) pinned to core 0; the application process to core 1. CPU per request is the whole
application process's (utime + stime over the measured run: app, client and mesh together).
Interleaved rounds, medians.

    .venv/bin/python bench/inprocess.py [--rounds N] [--seconds S]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import (
    COMPILED_ROOT,
    LOAD_CORE,
    free_port,
    pinned,
    save_results,
    stop_all,
    wait_port,
)

MODES = ("direct", "listener", "mesh.http")
CONCURRENCY = (1, 10)

APP = r'''
from gevent import monkey
monkey.patch_all()
import gc, http.client, json, os, sys, time
import gevent
from greenmesh.config import load_dict
from greenmesh.mesh import Mesh

up, listen, rounds, seconds = (int(a) for a in sys.argv[1:5])
route = [{"match": {"prefix": "/"}, "route": {"cluster": "c", "timeout": "5s"}}]
mesh = Mesh(load_dict({
    "listeners": [{"name": "ingress", "address": f"127.0.0.1:{listen}", "route_config": "r"}],
    "route_configs": [
        {"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": route}]},
        {"name": "outbound", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": route}]}],
    "clusters": [{"name": "c", "endpoints": [f"127.0.0.1:{up}"]}]})).start()
gc.freeze()  # what start-up made is never collected again: as the CLI and gunicorn_conf.py do


def plain(port):
    conn = http.client.HTTPConnection("127.0.0.1", port)
    def call():
        conn.request("GET", "/hello", headers={"host": "svc"})
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200 and body, (resp.status, body)
    return call


def in_process():
    def call():
        resp = mesh.http.get("http://svc/hello")
        assert resp.status_code == 200 and resp.content
    return call


def loop(make, until, latencies):
    call = make()
    while time.perf_counter() < until:
        began = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - began)


def run(mode, concurrency, secs):
    make = {"direct": lambda: plain(up), "listener": lambda: plain(listen),
            "mesh.http": in_process}[mode]
    latencies = []
    until = time.perf_counter() + secs
    cpu0, wall0 = os.times(), time.perf_counter()
    gevent.joinall([gevent.spawn(loop, make, until, latencies) for _ in range(concurrency)],
                   raise_error=True)
    cpu1, wall = os.times(), time.perf_counter() - wall0
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    latencies.sort()
    n = len(latencies)
    return {"rps": n / wall, "p50": latencies[n // 2] * 1e3,
            "p99": latencies[min(n - 1, int(n * 0.99))] * 1e3, "cpu_us": cpu * 1e6 / n}


results = {}
for r in range(rounds):
    for c in (1, 10):
        for mode in ("direct", "listener", "mesh.http"):
            run(mode, c, 0.5)  # warm-up: connections, code paths
            res = run(mode, c, seconds)
            results.setdefault(f"{mode} c{c}", []).append(res)
            print(f"round {r + 1} {mode:10s} c{c:<3d} {res['rps']:8.0f} req/s  "
                  f"p50 {res['p50']:.3f} ms  p99 {res['p99']:.3f} ms  "
                  f"{res['cpu_us']:.0f} us CPU/req", file=sys.stderr, flush=True)
mesh.stop(timeout=1)
print(json.dumps(results))
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=3)
    args = ap.parse_args()
    if not (COMPILED_ROOT / ".stamp").exists():
        sys.exit("bench: no compiled build in build/compiled (bash scripts/compile.sh builds it)")
    from greenmesh.testing.nginx import nginx_binary, nginx_conf
    tmp = Path(tempfile.mkdtemp(prefix="greenmesh-bench-inprocess-"))
    up, listen = free_port(), free_port()
    conf = nginx_conf(tmp, "origin", 1, f"server {{ listen 127.0.0.1:{up}; "
                      'location / { return 200 "hello from nginx\\n"; } }')
    procs = [subprocess.Popen(pinned([nginx_binary(), "-c", str(conf)], LOAD_CORE),
                              stderr=subprocess.DEVNULL)]
    try:
        wait_port(up)
        app = subprocess.run(pinned([sys.executable, "-c", APP, str(up), str(listen),
                                     str(args.rounds), str(args.seconds)]),
                             cwd=COMPILED_ROOT, stdout=subprocess.PIPE, check=True, text=True)
    finally:
        stop_all(procs)
    results = json.loads(app.stdout)
    rows = {name: {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50", "p99", "cpu_us")}
            for name, rs in results.items()}
    title = ("The same GET to nginx from one app process (core 1): direct, through the mesh's "
             "loopback listener, through mesh.http")
    print(f"\n{title}\n")
    print("| way | greenlets | req/s | p50 ms | p99 ms | µs CPU/req (whole process) |")
    print("|---|---:|---:|---:|---:|---:|")
    for c in CONCURRENCY:
        for mode in MODES:
            r = rows[f"{mode} c{c}"]
            print(f"| {mode} | {c} | {r['rps']:.0f} | {r['p50']:.3f} | {r['p99']:.3f} | "
                  f"{r['cpu_us']:.0f} |")
    print()
    verdict = {}
    for c in CONCURRENCY:
        mesh, hop = rows[f"mesh.http c{c}"], rows[f"listener c{c}"]
        line = (f"c{c}: mesh.http / listener: req/s {mesh['rps'] / hop['rps']:.2f}x, "
                f"p50 {mesh['p50'] / hop['p50']:.2f}x, p99 {mesh['p99'] / hop['p99']:.2f}x, "
                f"CPU per request {mesh['cpu_us'] / hop['cpu_us']:.2f}x")
        verdict[f"c{c}"] = line
        print(line)
    save_results("inprocess", {"title": title, "rows": rows, "ratios": verdict})


if __name__ == "__main__":
    main()
