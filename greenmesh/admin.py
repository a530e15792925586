"""The admin endpoints: readiness, counters, clusters and the config in force."""

from __future__ import annotations

import dataclasses
import gc
import json
from typing import TYPE_CHECKING

import greenlet
from gevent.pywsgi import WSGIServer

from greenmesh.overload import resident_bytes

if TYPE_CHECKING:
    from greenmesh.mesh import Mesh


def _server_gauges(mesh: Mesh) -> None:
    """Envoy's server.* gauges, measured when asked: what a soak watches for leaks."""
    stats = mesh.stats
    stats.set("server.memory_resident_bytes", resident_bytes())
    stats.set("server.total_connections", mesh.overload.connections)
    stats.set("server.live_greenlets", sum(
        1 for o in gc.get_objects() if isinstance(o, greenlet.greenlet) and not o.dead))


def _health_flags(host) -> str:
    """Envoy's /clusters spelling: ``healthy``, or the reasons a host is out."""
    import time
    flags = []
    if host.health.check_failed:
        flags.append("/failed_active_hc")
    if host.health.ejected_until > time.monotonic():
        flags.append("/failed_outlier_check")
    return "".join(flags) or "healthy"


class Admin:
    def __init__(self, mesh: Mesh, host: str, port: int):
        self.mesh = mesh
        self._server = WSGIServer((host, port), self._app, log=None, error_log=None)

    @property
    def address(self) -> tuple[str, int]:
        address = self._server.address
        assert isinstance(address, tuple)
        return address[0], address[1]

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop(timeout=1)

    def _app(self, environ, start_response):
        path = environ.get("PATH_INFO", "/")
        mesh = self.mesh
        if path == "/ready":
            status, body = ("200 OK", "LIVE\n") if mesh.running else ("503 Service Unavailable",
                                                                         "DRAINING\n")
        elif path == "/stats":
            _server_gauges(mesh)
            status, body = "200 OK", mesh.stats.render()
        elif path == "/clusters":
            lines = []
            for name, c in sorted(mesh.clusters.snapshot().items()):
                for h in c.hosts:
                    lines.append(f"{name}::{h.address}::weight::{h.weight}")
                    lines.append(f"{name}::{h.address}::cx_open::{h.pool.open_connections}")
                    lines.append(f"{name}::{h.address}::cx_idle::{h.pool.idle_connections}")
                    lines.append(f"{name}::{h.address}::rq_active::{h.pool.active}")
                    lines.append(f"{name}::{h.address}::health_flags::{_health_flags(h)}")
            status, body = "200 OK", "".join(line + "\n" for line in lines)
        elif path == "/config_dump":
            status = "200 OK"
            body = json.dumps(dataclasses.asdict(mesh.config), indent=2, default=str) + "\n"
        else:
            status, body = "404 Not Found", "endpoints: /ready /stats /clusters /config_dump\n"
        data = body.encode()
        start_response(status, [("content-type", "text/plain; charset=utf-8"),
                                ("content-length", str(len(data)))])
        return [data]
