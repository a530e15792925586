"""``greenmesh status [--admin ADDR] [--interval S]``: a short summary of a running greenmesh
for a terminal, read from its admin endpoints (server_info, listeners, stats, clusters); request
rates from two readings of the stats ``--interval`` apart."""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request


def _get(admin: str, path: str) -> dict:
    with urllib.request.urlopen(f"http://{admin}{path}", timeout=5) as resp:
        return json.loads(resp.read())


def _stats(admin: str) -> dict[str, int]:
    return {e["name"]: e["value"] for e in _get(admin, "/stats?format=json")["stats"]
            if "name" in e}


def _uptime(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def summary(admin: str, interval: float) -> str:
    info = _get(admin, "/server_info")
    before = _stats(admin)
    time.sleep(interval)
    stats = _stats(admin)
    listeners = _get(admin, "/listeners?format=json")["listener_statuses"]
    clusters = _get(admin, "/clusters?format=json")["cluster_statuses"]

    def rate(name: str) -> float:
        return (stats.get(name, 0) - before.get(name, 0)) / interval

    lines = [f"greenmesh {info['version']}  {info['state']}  up "
             f"{_uptime(int(info['uptime_current_epoch'].rstrip('s')))}  "
             f"workers {info['workers']}", "", "listeners:"]
    for lst in listeners:
        name = lst["name"]
        sa = lst["local_address"]["socket_address"]
        p = f"http.{name}.downstream_rq_"
        classes = ", ".join(f"{c}xx {stats[p + f'{c}xx']}" for c in range(1, 6)
                            if stats.get(p + f"{c}xx"))
        lines.append(f"  {name:16} {sa['address']}:{sa['port_value']:<6} "
                     f"{stats.get(f'listener.{name}.downstream_cx_active', 0)} connections, "
                     f"{rate(p + 'total'):.1f} req/s, {stats.get(p + 'total', 0)} requests"
                     + (f" ({classes})" if classes else ""))
    lines += ["", "clusters:"]
    for c in clusters:
        name, hosts = c["name"], c["host_statuses"]
        healthy = sum(1 for h in hosts if not h["health_status"]["failed_active_health_check"]
                      and not h["health_status"]["failed_outlier_check"])
        p = f"cluster.{name}.upstream_rq_"
        errors = stats.get(p + "5xx", 0)
        lines.append(f"  {name:16} {healthy}/{len(hosts)} healthy, "
                     f"{rate(p + 'total'):.1f} req/s, {stats.get(p + 'total', 0)} requests, "
                     f"{errors} 5xx, {stats.get(p + 'retry', 0)} retries"
                     + (" (xDS)" if c.get("added_via_api") else ""))
    if "control_plane.connected_state" in stats:
        updates = ", ".join(
            f"{kind} {stats.get(f'xds.{kind}.update_success', 0)} applied"
            + (f"/{stats[f'xds.{kind}.update_rejected']} rejected"
               if stats.get(f"xds.{kind}.update_rejected") else "")
            for kind in ("cds", "eds", "lds", "rds"))
        lines += ["", "xDS: " + ("connected" if stats["control_plane.connected_state"]
                                 else "DISCONNECTED")
                  + (", initialized" if stats.get("control_plane.initialized")
                     else ", waiting for the first fetch") + f"; {updates}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="greenmesh status",
                                description="A summary of a running greenmesh, from its admin.")
    p.add_argument("--admin", default="127.0.0.1:15000", help="admin address (host:port)")
    p.add_argument("--interval", type=float, default=1.0,
                   help="seconds between the two readings that give rates (default 1)")
    args = p.parse_args(argv)
    try:
        sys.stdout.write(summary(args.admin, args.interval))
    except (OSError, urllib.error.URLError) as e:
        sys.stderr.write(f"greenmesh status: cannot read the admin at {args.admin}: {e}\n")
        return 1
    return 0
