"""The admin endpoints, at Envoy's paths with Envoy's shapes, so that habits and dashboards carry
over: /ready, /stats (text, ?format=json, ?filter=), /stats/prometheus, /clusters (text,
?format=json), /config_dump, /server_info, /help; and, POST only, /logging, /healthcheck/fail,
/healthcheck/ok, /drain_listeners, /quitquitquit."""

from __future__ import annotations

import gc
import json
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

import gevent
import greenlet
from gevent.pywsgi import WSGIServer

from greenmesh.admin import prometheus
from greenmesh.admin.views import clusters_json, clusters_text, config_dump, gauges
from greenmesh.logger import get_logger
from greenmesh.overload import resident_bytes

if TYPE_CHECKING:
    from greenmesh.mesh import Mesh

log = get_logger("greenmesh.admin")

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
LEVELS = ("debug", "info", "warning", "error", "critical")


class _Reply:
    __slots__ = ("status", "body", "content_type")

    def __init__(self, status: str, body: str, content_type: str = TEXT):
        self.status = status
        self.body = body
        self.content_type = content_type


def _json(value: object) -> _Reply:
    return _Reply("200 OK", json.dumps(value, indent=2, default=str) + "\n", JSON)


def _server_gauges(mesh: Mesh) -> None:
    """Envoy's server.* gauges and the pools' and hosts' state, measured when asked."""
    stats = mesh.stats
    stats.set("server.memory_resident_bytes", resident_bytes())
    stats.set("server.total_connections", mesh.overload.connections)
    stats.set("server.live_greenlets", sum(
        1 for o in gc.get_objects() if isinstance(o, greenlet.greenlet) and not o.dead))
    stats.set("server.uptime", int(time.time() - mesh.started_at) if mesh.started_at else 0)
    stats.set("server.state", list(type(mesh.state)).index(mesh.state))
    gauges(mesh)


class Admin:
    def __init__(self, mesh: Mesh, host: str, port: int):
        self.mesh = mesh
        self._server = WSGIServer((host, port), self._app, log=None, error_log=None)
        # path -> (method, handler, help); handlers take the query's parameters.
        self.endpoints: dict[str, tuple[str, Callable[[dict[str, str]], _Reply], str]] = {
            "/ready": ("GET", self._ready, "200 LIVE when serving, else 503 and the state"),
            "/stats": ("GET", self._stats,
                       "counters, gauges, histograms (?format=json, ?filter=REGEX)"),
            "/stats/prometheus": ("GET", self._prometheus, "the stats in Prometheus's format"),
            "/clusters": ("GET", self._clusters,
                          "per host: health flags, weight, priority, locality, counters "
                          "(?format=json)"),
            "/config_dump": ("GET", lambda q: _json(config_dump(self.mesh)),
                             "the bootstrap and the dynamic resources with their versions"),
            "/listeners": ("GET", self._listeners, "listener names and addresses "
                                                   "(?format=json)"),
            "/server_info": ("GET", self._server_info, "version, state, uptime, workers"),
            "/help": ("GET", self._help, "this list"),
            "/logging": ("POST", self._logging, "?level=debug|info|warning|error|critical"),
            "/healthcheck/fail": ("POST", self._health(True), "/ready answers 503 (DRAINING)"),
            "/healthcheck/ok": ("POST", self._health(False), "/ready answers as the state says"),
            "/drain_listeners": ("POST", self._drain, "stop accepting, drain connections"),
            "/quitquitquit": ("POST", self._quit, "drain and exit"),
        }

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
        query = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        endpoint = self.endpoints.get(path)
        if endpoint is None:
            reply = _Reply("404 Not Found", "no such endpoint; GET /help lists them\n")
        elif environ.get("REQUEST_METHOD") != endpoint[0]:
            reply = _Reply("405 Method Not Allowed", f"{path} takes {endpoint[0]}\n")
        else:
            try:
                reply = endpoint[1](query)
            except ValueError as e:
                reply = _Reply("400 Bad Request", f"{e}\n")
        data = reply.body.encode()
        start_response(reply.status, [("content-type", reply.content_type),
                                      ("content-length", str(len(data)))])
        return [data]

    # -- GET ------------------------------------------------------------------------------------
    def _ready(self, query: dict[str, str]) -> _Reply:
        state = self.mesh.state.value
        return _Reply("200 OK" if state == "LIVE" else "503 Service Unavailable", state + "\n")

    def _stats(self, query: dict[str, str]) -> _Reply:
        _server_gauges(self.mesh)
        stats = self.mesh.stats
        pattern = query.get("filter")
        if pattern is not None:
            try:
                matcher = re.compile(pattern)
            except re.error as e:
                raise ValueError(f"filter: {e}") from None
            keep = [k for k in stats.counters if matcher.search(k)]
            hists = {k: h for k, h in stats.histograms.items() if matcher.search(k)}
            stats = type(stats)()
            stats.counters.update({k: self.mesh.stats.counters[k] for k in keep})
            stats.histograms.update(hists)
        fmt = query.get("format", "text")
        if fmt == "json":
            return _json(stats.as_json())
        if fmt == "prometheus":
            return self._prometheus(query)
        if fmt != "text":
            raise ValueError("format: expected text, json or prometheus")
        return _Reply("200 OK", stats.render())

    def _prometheus(self, query: dict[str, str]) -> _Reply:
        mesh = self.mesh
        _server_gauges(mesh)
        known = [*mesh.clusters.names(), *(lc.name for lc in mesh.config.listeners),
                 *mesh.listeners]
        return _Reply("200 OK", prometheus.render(mesh.stats, known), prometheus.CONTENT_TYPE)

    def _clusters(self, query: dict[str, str]) -> _Reply:
        if query.get("format") == "json":
            return _json(clusters_json(self.mesh))
        return _Reply("200 OK", clusters_text(self.mesh))

    def _listeners(self, query: dict[str, str]) -> _Reply:
        """Envoy's /listeners: each listener's name and bound address."""
        bound = [(name, lst.address) for name, lst in self.mesh.listeners.items()]
        if query.get("format") == "json":
            return _json({"listener_statuses": [
                {"name": name, "local_address": {"socket_address": {
                    "address": host, "port_value": port}}} for name, (host, port) in bound]})
        return _Reply("200 OK", "".join(f"{name}::{host}:{port}\n"
                                        for name, (host, port) in bound))

    def _server_info(self, query: dict[str, str]) -> _Reply:
        from greenmesh import __version__
        mesh = self.mesh
        uptime = int(time.time() - mesh.started_at) if mesh.started_at else 0
        return _json({"version": __version__, "state": mesh.state.value,
                      "uptime_current_epoch": f"{uptime}s", "uptime_all_epochs": f"{uptime}s",
                      "workers": mesh.workers, "node": _node(mesh),
                      "command_line_options": {"drain_time": f"{mesh.config.drain_timeout:g}s"}})

    def _help(self, query: dict[str, str]) -> _Reply:
        width = max(map(len, self.endpoints))
        return _Reply("200 OK", "admin commands are:\n" + "".join(
            f"  {method:4} {path:{width}}  {text}\n"
            for path, (method, _, text) in self.endpoints.items()))

    # -- POST -----------------------------------------------------------------------------------
    def _logging(self, query: dict[str, str]) -> _Reply:
        level = query.get("level", "").lower()
        if level not in LEVELS:
            raise ValueError(f"level: expected one of {', '.join(LEVELS)}")
        self.mesh.set_log_level(level)
        log.warning("log_level_set", level=level)
        return _Reply("200 OK", f"level: {level}\n")

    def _health(self, failed: bool) -> Callable[[dict[str, str]], _Reply]:
        def answer(query: dict[str, str]) -> _Reply:
            self.mesh.health_failed = failed
            log.info("health_check_failed_by_admin" if failed else "health_check_ok_by_admin")
            return _Reply("200 OK", "OK\n")
        return answer

    def _drain(self, query: dict[str, str]) -> _Reply:
        self.mesh.drain_listeners()
        return _Reply("200 OK", "OK\n")

    def _quit(self, query: dict[str, str]) -> _Reply:
        log.info("quit_asked_by_admin")
        gevent.spawn(self.mesh.stop)  # after this answer has gone out
        return _Reply("200 OK", "OK\n")


def _node(mesh: Mesh) -> dict:
    xds = mesh.config.xds
    return {"id": xds.node.id, "cluster": xds.node.cluster} if xds is not None else {}
