"""What admin pages show of a Mesh, built when asked: the gauges measured from live state,
/clusters (Envoy's text and JSON), /config_dump (Envoy's ConfigDump shape)."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from greenmesh.upstream.host import Host

if TYPE_CHECKING:
    from greenmesh.mesh import Mesh

_DUMP = "type.googleapis.com/envoy.admin.v3."


def gauges(mesh: Mesh) -> None:
    """The gauges read off live objects rather than kept per request: listeners' open
    connections; per cluster its pools' connections and requests, breakers that are open,
    hosts ejected and healthy; the control plane's state."""
    stats = mesh.stats
    now = time.monotonic()
    for name, lst in mesh.listeners.items():
        stats.set(f"listener.{name}.downstream_cx_active", lst.active_connections)
    for name, c in mesh.clusters.snapshot().items():
        p = f"cluster.{name}."
        stats.set(p + "upstream_cx_active", sum(h.pool.open_connections for h in c.hosts))
        stats.set(p + "upstream_cx_idle", sum(h.pool.idle_connections for h in c.hosts))
        stats.set(p + "upstream_rq_active", sum(h.pool.active for h in c.hosts))
        b, limits = c.breakers, c.breakers.limits
        stats.set(p + "circuit_breakers.default.cx_open",
                  int(b.connections >= limits.max_connections))
        stats.set(p + "circuit_breakers.default.rq_pending_open",
                  int(b.pending >= limits.max_pending_requests))
        stats.set(p + "circuit_breakers.default.rq_open", int(b.requests >= limits.max_requests))
        stats.set(p + "circuit_breakers.default.rq_retry_open",
                  int(b.retries >= limits.max_retries))
        stats.set(p + "outlier_detection.ejections_active",
                  sum(1 for h in c.hosts if h.health.ejected_until > now))
        stats.set(p + "membership_total", len(c.hosts))
        stats.set(p + "membership_healthy", sum(1 for h in c.hosts if h.available(now)))
    xds = mesh.xds
    if xds is not None:
        stats.set("control_plane.connected_state", int(xds.connected))
        stats.set("control_plane.initialized", int(xds.initialized.is_set()))


def health_flags(host: Host, now: float | None = None) -> str:
    """Envoy's /clusters spelling: ``healthy``, or the reasons a host is out."""
    now = time.monotonic() if now is None else now
    flags = []
    if host.health.check_failed:
        flags.append("/failed_active_hc")
    if host.health.ejected_until > now:
        flags.append("/failed_outlier_check")
    return "".join(flags) or "healthy"


def _host_stats(host: Host) -> list[tuple[str, int, str]]:
    pool, health = host.pool, host.health
    return [("cx_active", pool.open_connections, "GAUGE"),
            ("cx_idle", pool.idle_connections, "GAUGE"),
            ("rq_active", pool.active, "GAUGE"),
            ("rq_total", health.rq_total, "COUNTER"),
            ("rq_error", health.rq_error, "COUNTER")]


def clusters_text(mesh: Mesh) -> str:
    lines = []
    now = time.monotonic()
    for name, c in sorted(mesh.clusters.snapshot().items()):
        for h in c.hosts:
            at = f"{name}::{h.address}::"
            lines += [f"{at}weight::{h.weight}", f"{at}priority::{h.priority}",
                      f"{at}locality::{h.locality}"]
            # cx_open: greenmesh's older name for cx_active, kept for scripts that read it.
            lines.append(f"{at}cx_open::{h.pool.open_connections}")
            lines += [f"{at}{stat}::{value}" for stat, value, _ in _host_stats(h)]
            lines.append(f"{at}health_flags::{health_flags(h, now)}")
    return "".join(line + "\n" for line in lines)


def _locality(text: str) -> dict[str, str]:
    parts = (text.split("/") + ["", "", ""])[:3]
    return {k: v for k, v in zip(("region", "zone", "sub_zone"), parts, strict=True) if v}


def clusters_json(mesh: Mesh) -> dict:
    """Envoy's /clusters?format=json: cluster_statuses[].host_statuses[]."""
    now = time.monotonic()
    out = []
    dynamic = mesh.dynamic_cluster_names()
    for name, c in sorted(mesh.clusters.snapshot().items()):
        hosts = []
        for h in c.hosts:
            hosts.append({
                "address": {"socket_address": {"address": h.address.host,
                                               "port_value": h.address.port}},
                "stats": [{"name": n, "value": v, "type": t} for n, v, t in _host_stats(h)],
                "health_status": {"eds_health_status": "HEALTHY",
                                  "failed_active_health_check": h.health.check_failed,
                                  "failed_outlier_check": h.health.ejected_until > now},
                "weight": h.weight, "priority": h.priority, "locality": _locality(h.locality)})
        out.append({"name": name, "added_via_api": name in dynamic, "host_statuses": hosts})
    return {"cluster_statuses": out}


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


def _plain(obj: Any) -> Any:
    return dataclasses.asdict(obj)


def config_dump(mesh: Mesh) -> dict:
    """Envoy's ConfigDump: the bootstrap, then clusters, listeners, routes and endpoints, each
    static (from the file) and dynamic (from xDS, with the version and time of the update that
    last brought its type; greenmesh keeps those per type, not per resource)."""
    cfg, xds = mesh.config, mesh.xds
    started = _when(mesh.started_at or time.time())
    applied = xds.applied if xds is not None else {}

    def version(type_url: str) -> tuple[str, str]:
        v, at = applied.get(type_url, ("", 0.0))
        return v, _when(at) if at else ""

    from greenmesh.xds.resources import CDS, EDS, LDS, RDS
    cds_v, cds_at = version(CDS)
    lds_v, lds_at = version(LDS)
    rds_v, rds_at = version(RDS)
    eds_v, eds_at = version(EDS)
    dyn = xds.dynamic() if xds is not None else None
    static_routes = {rc.name for rc in cfg.route_configs}
    return {"configs": [
        {"@type": _DUMP + "BootstrapConfigDump", "bootstrap": _plain(cfg),
         "last_updated": started},
        {"@type": _DUMP + "ClustersConfigDump", "version_info": cds_v,
         "static_clusters": [{"cluster": _plain(c), "last_updated": started}
                             for c in cfg.clusters],
         "dynamic_active_clusters": [
             {"version_info": cds_v, "cluster": _plain(c), "last_updated": cds_at}
             for c in (dyn.clusters if dyn else ())]},
        {"@type": _DUMP + "ListenersConfigDump", "version_info": lds_v,
         "static_listeners": [{"listener": _plain(lc), "last_updated": started}
                              for lc in cfg.listeners],
         "dynamic_listeners": [
             {"name": lc.name, **({"active_state": {"version_info": lds_v,
                                                    "listener": _plain(lc),
                                                    "last_updated": lds_at}}
                                  if lc.name in mesh.listeners else
                                  {"warming_state": {"version_info": lds_v,
                                                     "listener": _plain(lc),
                                                     "last_updated": lds_at}})}
             for lc in (dyn.listeners if dyn else ())]},
        {"@type": _DUMP + "RoutesConfigDump",
         "static_route_configs": [{"route_config": _plain(rc), "last_updated": started}
                                  for rc in cfg.route_configs],
         "dynamic_route_configs": [
             {"version_info": rds_v if inline is False else lds_v, "route_config": _plain(rc),
              "last_updated": rds_at if inline is False else lds_at}
             for rc, inline in (dyn.routes if dyn else ()) if rc.name not in static_routes]},
        {"@type": _DUMP + "EndpointsConfigDump",
         "dynamic_endpoint_configs": [
             {"version_info": eds_v, "endpoint_config": {
                 "cluster_name": name, "endpoints": [_plain(e) for e in endpoints]},
              "last_updated": eds_at}
             for name, endpoints in (dyn.endpoints if dyn else ())]},
    ]}
