"""What stream filters cost on HTTP/1.1 (compiled build, access log on, each greenmesh pinned
to core 1, wrk -t1 -c50 on core 0, nginx upstream): greenmesh with no filters; with a chain
whose one filter overrides no hook (a context per request, every phase empty); with one Python
filter that adds a request header before routing. ``--baseline DIR`` adds the same no-filter
config run from another tree's compiled build (a worktree at the commit before the filter
chain: what the chain's mere presence in the proxy costs).

    .venv/bin/python bench/filters.py [--rounds N] [--seconds S] [--baseline DIR]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import (
    ROOT,
    Target,
    free_port,
    greenmesh,
    measure,
    one_route_config,
    pinned,
    print_table,
    round_args,
    wait_port,
)
from http1 import BODY, wrk

from greenmesh.testing.nginx import start_nginx

NONE = "greenmesh, no filters"
EMPTY = "greenmesh, a filter with no hooks"
ONE = "greenmesh, one Python filter"
BASELINE = "greenmesh before the chain"


def with_filter(config: str, cls: str) -> str:
    return config.replace("route_config: r}", "route_config: r, http_filters: [{name: f, "
                          "type: greenmesh.filters.python, config: {class: "
                          f"'bench_filters:{cls}'}}}}]}}")


def main() -> None:
    ap = round_args(__doc__)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--baseline", type=Path, help="another tree with build/compiled in it")
    args = ap.parse_args()
    os.environ["PYTHONPATH"] = str(ROOT / "bench")  # bench_filters, for the Python filter
    tmp = Path(tempfile.mkdtemp(prefix="greenmesh-bench-filters-"))
    up = free_port()
    procs = [start_nginx(tmp, "upstream", 2, f'server {{ listen 127.0.0.1:{up}; '
                                             f'location / {{ return 200 "{BODY.strip()}\\n"; }} }}')]
    wait_port(up)
    ports = {n: free_port() for n in (NONE, EMPTY, ONE, BASELINE)}
    started = {
        NONE: greenmesh(tmp, "none", one_route_config(ports[NONE], "http1", "http1", up)),
        EMPTY: greenmesh(tmp, "empty", with_filter(
            one_route_config(ports[EMPTY], "http1", "http1", up), "Nothing")),
        ONE: greenmesh(tmp, "one", with_filter(
            one_route_config(ports[ONE], "http1", "http1", up), "AddHeader")),
    }
    if args.baseline is not None:
        root = args.baseline.resolve() / "build" / "compiled"
        path = tmp / "baseline.yaml"
        path.write_text(one_route_config(ports[BASELINE], "http1", "http1", up))
        with open(tmp / "baseline.log", "wb") as log:
            started[BASELINE] = subprocess.Popen(pinned([
                sys.executable, "-m", "greenmesh.cli", "--config", str(path), "--log-format",
                "json"]), stdout=log, cwd=root, env=dict(os.environ, PYTHONPATH=str(root)))
    procs += started.values()

    def load(port: int, seconds: int) -> dict:
        return wrk(port, seconds, args.connections)
    targets = [Target(n, ports[n], p.pid, load) for n, p in started.items()]
    rows = measure(targets, procs, tmp, args.rounds, args.seconds)
    print_table(f"Filter cost, HTTP/1.1 keep-alive, wrk -t1 -c{args.connections}, {args.seconds} s "
                f"after a 1 s warm-up, median of {args.rounds} interleaved rounds; greenmesh "
                "pinned to core 1, wrk to core 0", rows,
                [(EMPTY, NONE), (ONE, NONE), (NONE, BASELINE)], "filters")


if __name__ == "__main__":
    main()
