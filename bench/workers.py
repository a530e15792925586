"""One worker against two (``workers: 2``), compiled build, access log on, under the HTTP/1.1
bench (nginx upstream, wrk), the bolt bench (the batched echo upstream, bolt_load.py), and
HTTP/1.1 with a direct response (no upstream sharing the cores).

Nothing is pinned here: two workers are meant to use both cores, and on a 2-core machine the
load generator and the upstream share them, so the table gives, beside req/s, the CPU each
process used over the measured run (greenmesh's parent and each worker; the load generator; the
upstream). Interleaved rounds, medians.

    .venv/bin/python bench/workers.py [--rounds N] [--seconds S]
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bolt import config as bolt_bench_config
from common import (
    COMPILED_ROOT,
    RESULTS,
    ROOT,
    _descendants,
    cpu_seconds,
    free_port,
    round_args,
    stop_all,
    wait_port,
    which,
)
from http1 import BODY

from greenmesh.testing.nginx import start_nginx

BENCH = ROOT / "bench"


def _proc_cpu(pid: int) -> float:
    """utime + stime of one process (not its children)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


def start_greenmesh(tmp: Path, name: str, config: str, workers: int, admin: int
                    ) -> subprocess.Popen:
    path = tmp / f"{name}.yaml"
    path.write_text(config + f"workers: {workers}\nadmin: {{address: 127.0.0.1:{admin}}}\n")
    with open(tmp / f"{name}.log", "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "greenmesh.cli", "--config", str(path),
                                 "--log-format", "json"], stdout=log, cwd=COMPILED_ROOT)


def wait_ready(admin: int, timeout: float = 30) -> None:
    import http.client
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=2)
            conn.request("GET", "/ready")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit(f"bench: greenmesh with admin {admin} never became ready")


def _config(port: int, action: str, clusters: str = "") -> str:
    return f"""
listeners:
  - {{name: in, address: 127.0.0.1:{port}, route_config: r}}
route_configs:
  - {{name: r, virtual_hosts: [{{name: v, domains: ["*"], routes: [{{match: {{prefix: /}},
      {action}}}]}}]}}
{clusters}"""


def http_config(port: int, upstream: int) -> str:
    return _config(port, "route: {cluster: up}", "clusters:\n  - {name: up, max_connections: "
                   f'10000, endpoints: ["127.0.0.1:{upstream}"]}}\n')


def direct_config(port: int, upstream: int) -> str:
    """No upstream: what the workers can do when the upstream does not share their cores."""
    return _config(port, 'direct_response: {status: 200, body: {inline_string: "hello\\n"}}')


def bolt_config(port: int, upstream: int) -> str:
    """bench/bolt.py's config, its connections multiplexed."""
    return bolt_bench_config(port, upstream, 100)


def wrk_load(port: int, seconds: int) -> tuple[subprocess.Popen, Callable[[], dict]]:
    proc = subprocess.Popen([which("wrk"), "-t1", "-c100", f"-d{seconds}s", "--timeout", "5s",
                             f"http://127.0.0.1:{port}/"], stdout=subprocess.PIPE, text=True)

    def result() -> dict:
        import re
        out = proc.communicate(timeout=seconds + 30)[0]
        errors = re.findall(r"Non-2xx or 3xx responses: \d+|Socket errors: .*", out)
        return {"requests": int(re.search(r"(\d+) requests in", out).group(1)),
                "errors": "; ".join(errors)}
    return proc, result


def bolt_load(port: int, seconds: int) -> tuple[list[subprocess.Popen], Callable[[], dict]]:
    """Two bolt_load.py processes (one is a single Python process: it would be the limit)."""
    procs = [subprocess.Popen([sys.executable, str(BENCH / "bolt_load.py"), str(port), "10",
                               "10", str(seconds)], stdout=subprocess.PIPE, text=True, cwd=BENCH)
             for _ in range(2)]

    def result() -> dict:
        outs = [json.loads(p.communicate(timeout=seconds + 60)[0]) for p in procs]
        return {"requests": sum(o["requests"] for o in outs),
                "errors": "; ".join(o["errors"] for o in outs if o.get("errors"))}
    return procs, result


def run(gm: subprocess.Popen, upstream: subprocess.Popen, port: int, load, seconds: int) -> dict:
    load(port, 1)[1]()  # warm-up
    workers = [p for p in _descendants(gm.pid) if p != gm.pid]
    procs = {"parent": gm.pid, **{f"worker {i}": p for i, p in enumerate(sorted(workers))}}
    before = {name: _proc_cpu(pid) for name, pid in procs.items()}
    up_before = cpu_seconds(upstream.pid)
    load_before = _children_cpu()
    started = time.monotonic()
    _, result = load(port, seconds)
    res = result()
    elapsed = time.monotonic() - started
    load_cpu = _children_cpu() - load_before  # the load generators, waited for by result()
    cpu = {name: _proc_cpu(pid) - before[name] for name, pid in procs.items()}
    total = sum(cpu.values())
    return {"rps": res["requests"] / elapsed, "requests": res["requests"],
            "errors": res["errors"], "greenmesh_cpu_s": cpu,
            "us_cpu_per_request": total * 1e6 / max(1, res["requests"]),
            "upstream_cpu_s": cpu_seconds(upstream.pid) - up_before, "load_cpu_s": load_cpu,
            "elapsed_s": elapsed}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = round_args(__doc__)
    args = ap.parse_args()
    if not (COMPILED_ROOT / ".stamp").exists():
        sys.exit("bench: no compiled build (bash scripts/compile.sh)")
    tmp = Path(tempfile.mkdtemp(prefix="greenmesh-bench-workers-"))
    up_http = free_port()
    up_bolt = free_port()
    upstreams: dict[str, subprocess.Popen] = {
        "http1": start_nginx(tmp, "upstream", 2, f'server {{ listen 127.0.0.1:{up_http}; '
                                                 f'location / {{ return 200 "{BODY.strip()}\\n"; }} }}'),
        "bolt": subprocess.Popen([sys.executable, str(BENCH / "bolt_echo.py"), str(up_bolt)],
                                 cwd=BENCH)}
    upstreams["http1 direct response"] = upstreams["http1"]  # started, and idle
    benches = {"http1": (http_config, up_http, wrk_load), "bolt": (bolt_config, up_bolt, bolt_load),
               "http1 direct response": (direct_config, up_http, wrk_load)}
    procs: list[subprocess.Popen] = list({id(p): p for p in upstreams.values()}.values())
    rows: dict[str, list[dict]] = {}
    try:
        wait_port(up_http)
        wait_port(up_bolt)
        started = {}
        admins = []
        for proto, (config, up, _) in benches.items():
            for n in (1, 2):
                port, admin = free_port(), free_port()
                gm = start_greenmesh(tmp, f"{proto}-{n}", config(port, up), n, admin)
                procs.append(gm)
                started[(proto, n)] = (gm, port)
                admins.append(admin)
        for admin in admins:  # every worker of a set listening: the set's /ready says so
            wait_ready(admin)
        for r in range(args.rounds):
            for (proto, n), (gm, port) in started.items():
                _, _, load = benches[proto]
                res = run(gm, upstreams[proto], port, load, args.seconds)
                rows.setdefault(f"{proto}, {n} worker{'s' if n > 1 else ''}", []).append(res)
                print(f"round {r + 1} {proto} {n} workers: {res['rps']:.0f} req/s, "
                      f"{res['us_cpu_per_request']:.0f} µs CPU/req, cpu "
                      f"{ {k: round(v, 2) for k, v in res['greenmesh_cpu_s'].items()} }, "
                      f"upstream {res['upstream_cpu_s']:.2f} s {res['errors']}", file=sys.stderr)
    finally:
        stop_all(procs)
    print(f"\n1 vs 2 workers, {args.seconds} s runs after a 1 s warm-up, median of {args.rounds} "
          "interleaved rounds, nothing pinned (2 cores shared with the load and the upstream)\n")
    print("| target | req/s | µs CPU/req (all greenmesh processes) | CPU s per process "
          "(parent, workers) | upstream CPU s | load generator CPU s | run s | errors |")
    print("|---|---:|---:|---|---:|---:|---:|---|")
    summary = {}
    for name, results in rows.items():
        med = statistics.median(x["rps"] for x in results)
        mid = sorted(results, key=lambda x: x["rps"])[len(results) // 2]
        summary[name] = {"rps": med, "us_cpu_per_request": mid["us_cpu_per_request"],
                         "cpu_s": mid["greenmesh_cpu_s"], "upstream_cpu_s": mid["upstream_cpu_s"],
                         "load_cpu_s": mid["load_cpu_s"], "elapsed_s": mid["elapsed_s"],
                         "errors": [x["errors"] for x in results if x["errors"]]}
        print(f"| {name} | {med:.0f} | {mid['us_cpu_per_request']:.0f} | "
              + ", ".join(f"{v:.2f}" for v in mid["greenmesh_cpu_s"].values())
              + f" | {mid['upstream_cpu_s']:.2f} | {mid['load_cpu_s']:.2f} | "
              f"{mid['elapsed_s']:.1f} | {'; '.join(summary[name]['errors']) or 'none'} |")
    print()
    for proto in benches:
        one, two = summary.get(f"{proto}, 1 worker"), summary.get(f"{proto}, 2 workers")
        if one and two:
            print(f"{proto}: 2 workers / 1 worker: req/s {two['rps'] / one['rps']:.2f}x")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "workers.json").write_text(json.dumps(summary, indent=2))
    print("(also in bench/results/workers.json)")


if __name__ == "__main__":
    main()
