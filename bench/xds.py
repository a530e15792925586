"""xDS benchmark: an EDS push of 10,000 endpoints while traffic flows.

greenmesh runs with a static listener and cluster (a steady stream of requests goes there, on
a keep-alive connection) and an EDS cluster from a real grpcio control plane
(greenmesh.testing.controlplane). Each round pushes 10,000 fresh endpoints and reports the time
from the push until greenmesh's ACK (sent once the update is applied) and the longest request
of the concurrent stream during that window (the stall the update caused).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, free_port, greenmesh, stop_all, wait_port

sys.path.insert(0, str(ROOT))
from greenmesh.testing.controlplane import CDS, EDS, ControlPlane  # noqa: E402
from tests.test_xds import cla, eds_cluster  # noqa: E402 - the same resource builders


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--endpoints", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="greenmesh-bench-xds-"))
    up_port, port = free_port(), free_port()
    cp = ControlPlane()
    upstream = subprocess.Popen([sys.executable, "-m", "greenmesh.testing.upstream",
                                 str(up_port)], cwd=ROOT, stderr=subprocess.DEVNULL)
    gm = greenmesh(tmp, "gm", f"""
xds: {{server: 127.0.0.1:{cp.port}, node: {{id: bench}}, initial_fetch_timeout: 5s}}
listeners: [{{name: in, address: 127.0.0.1:{port}, route_config: r}}]
route_configs:
  - name: r
    virtual_hosts:
      - {{name: all, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: steady}}}}]}}
clusters: [{{name: steady, endpoints: ["127.0.0.1:{up_port}"]}}]
""")
    try:
        wait_port(up_port)
        wait_port(port)
        version = cp.set(CDS, [eds_cluster("big")])
        assert cp.wait_for(lambda: cp.ack_time(CDS, version) is not None)
        resources = [cla("big", *[f"10.{10 + r}.{i // 256}.{i % 256}:8080"
                                  for i in range(args.endpoints)]) for r in range(args.rounds)]
        load = subprocess.Popen([sys.executable, str(ROOT / "bench" / "steady_load.py"),
                                 str(port), str(2 + 2 * args.rounds)], stdout=subprocess.PIPE)
        time.sleep(1)
        pushes = []
        for resource in resources:
            version = cp.set(EDS, [resource])  # packed before the push time is taken
            pushed = cp.push_times[EDS]
            if not cp.wait_for(lambda v=version: cp.ack_time(EDS, v) is not None, timeout=30):
                raise RuntimeError("no ACK")
            pushes.append((pushed, cp.ack_time(EDS, version)))
            time.sleep(1)
        samples = json.loads(load.communicate(timeout=60)[0])
        applied, stalls = [], []
        typical = statistics.median(d for _, d in samples) * 1000
        for r, (pushed, acked) in enumerate(pushes):
            window = [d for end, d in samples if pushed <= end <= acked + 0.2]
            applied.append((acked - pushed) * 1000)
            stalls.append(max(window) * 1000 if window else 0.0)
            print(f"round {r + 1}: applied in {applied[-1]:.0f} ms, longest request "
                  f"{stalls[-1]:.1f} ms ({len(window)} requests in the window)", file=sys.stderr)
        failed = sum(1 for _, d in samples if d == float("inf"))
        print(f"\nEDS push of {args.endpoints} endpoints, {args.rounds} rounds, medians; "
              f"{len(samples)} steady requests, {failed} failed, typical {typical:.2f} ms:\n")
        print("| measure | ms | bar |")
        print("|---|---:|---:|")
        print(f"| push -> applied (ACK) | {statistics.median(applied):.0f} | < 500 |")
        print(f"| longest concurrent request | {statistics.median(stalls):.1f} | < 50 |")
    finally:
        stop_all([gm, upstream])
        cp.stop()


if __name__ == "__main__":
    main()
