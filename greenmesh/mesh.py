"""``Mesh``: owns listeners, the cluster manager, the route tables, admin and the in-process
client (``mesh.http``, ``mesh.bolt``).

Start and stop it inside any running gevent process (a gunicorn-gevent worker, a test) as often
as needed: all its state hangs off the instance, none off a module.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import gevent
import gevent.event

from greenmesh import config as config_loader
from greenmesh import model
from greenmesh.access_format import DEFAULT_FORMAT, compile_json, compile_text
from greenmesh.access_log import AccessLog, FormattedAccessLog
from greenmesh.admin import Admin
from greenmesh.client import LISTENER, InProcess
from greenmesh.client.bolt import BoltClient
from greenmesh.client.http import HttpClient
from greenmesh.filters.chain import FilterChain
from greenmesh.filters.registry import FilterRegistry
from greenmesh.listener import Listener
from greenmesh.logfile import FileLineWriter
from greenmesh.logger import get_logger
from greenmesh.overload import OverloadManager
from greenmesh.proxy import Proxy
from greenmesh.router import RouteTable
from greenmesh.stats import Stats
from greenmesh.streams import Registry, default_registry
from greenmesh.upstream.manager import ClusterManager

if TYPE_CHECKING:
    from greenmesh.xds.client import XdsClient

log = get_logger("greenmesh")


class ServerState(enum.Enum):
    """Envoy's server states, as /ready and /server_info say them."""

    PRE_INITIALIZING = "PRE_INITIALIZING"  # started, the control plane's first fetch not done
    LIVE = "LIVE"
    DRAINING = "DRAINING"  # stopping, listeners drained, or the health check failed by admin
    STOPPED = "STOPPED"


def _stdlib_level(level: str) -> None:
    """An embedded mesh's /logging: greenmesh's loggers in the host's standard logging."""
    logging.getLogger("greenmesh").setLevel(level.upper())


class Mesh:
    def __init__(self, config: model.MeshConfig, *, registry: Registry | None = None,
                 access_log: AccessLog | None = None, filters: FilterRegistry | None = None,
                 set_log_level: Callable[[str], None] | None = None, workers: int = 1,
                 log_line: Callable[[str], None] | None = None):
        """``access_log``: where listeners write their access-log lines (default: the logger
        ``greenmesh.access``: structlog's once configured, else the standard logging, so an
        embedding application's logging configuration applies).
        ``filters``: the filter types (default: those that ship, and entry points); a config
        naming an application's own types must have been loaded with the same registry.
        ``set_log_level``: what admin's POST /logging?level= calls (the CLI's structlog set-up;
        by default the ``greenmesh`` logger of the standard logging). ``log_line``: where a
        listener's own access-log format writes when it names no file (the CLI's log stream;
        by default the ``greenmesh.access`` logger of the standard logging)."""
        self._log_line = log_line or logging.getLogger("greenmesh.access").info
        self._log_files: dict[str, FileLineWriter] = {}  # access logs' files, by path
        self.config = config
        self.workers = workers  # processes serving the same addresses (this is one of them)
        self.set_log_level = set_log_level or _stdlib_level
        self.started_at = 0.0  # wall clock, for /server_info's uptime
        self.health_failed = False  # admin's POST /healthcheck/fail
        self.listeners_drained = False  # admin's POST /drain_listeners
        self._access_log = access_log or AccessLog()
        self.registry = registry or default_registry()
        self.filters = filters or FilterRegistry()
        self.stats = Stats()
        self.clusters = ClusterManager(self.registry, self.stats)
        self.overload = OverloadManager(config.overload, self.stats)
        self._routes: dict[str, RouteTable] = {}
        self.listeners: dict[str, Listener] = {}
        self.admin: Admin | None = None
        self.running = False
        self._stopped = gevent.event.Event()
        self.xds: XdsClient | None = None
        # Names the control plane owns (static ones are never touched by xDS, as in Envoy).
        self._dynamic_clusters: set[str] = set()
        self._dynamic_listeners: set[str] = set()
        self._inprocess = InProcess(self._inprocess_proxy, lambda: self.running,
                                    self._await_routes)
        self._client_routes: set[str] = set()  # the route configs in-process calls have used
        self._routes_changed = gevent.event.Event()  # set (and replaced) at each change
        #: The in-process clients: calls through this mesh with no loopback hop.
        self.http = HttpClient(self._inprocess)
        self.bolt = BoltClient(self._inprocess)

    @classmethod
    def from_file(cls, path: str, **kwargs) -> Mesh:
        filters = kwargs.setdefault("filters", FilterRegistry())
        return cls(config_loader.load_file(path, filters=filters), **kwargs)

    def start(self) -> Mesh:
        """Binds every listener and admin; returns once they accept connections."""
        cfg = self.config
        self.clusters.replace_all(cfg.clusters)
        self.clusters.start()
        self.overload.start()
        self._routes = {rc.name: RouteTable(rc) for rc in cfg.route_configs}
        try:
            for lc in cfg.listeners:
                self._start_listener(lc)
            if cfg.admin is not None:
                self.admin = Admin(self, cfg.admin.address.host, cfg.admin.address.port)
                self.admin.start()
        except Exception:
            self.stop(timeout=0)
            raise
        if cfg.xds is not None:
            from greenmesh.xds.client import XdsClient
            self.xds = XdsClient(cfg.xds, self)
            self._want_client_routes()
            self.xds.start()
        self.running = True
        self.started_at = time.time()
        self.health_failed = self.listeners_drained = False
        self._stopped.clear()
        from greenmesh import __version__
        log.info("mesh_started", version=__version__,
                 listeners={name: f"{lst.address[0]}:{lst.address[1]}"
                            for name, lst in self.listeners.items()},
                 admin=(f"{self.admin.address[0]}:{self.admin.address[1]}"
                        if self.admin is not None else None),
                 xds=str(cfg.xds.server) if cfg.xds is not None else None,
                 clusters=len(cfg.clusters), workers=self.workers,
                 max_downstream_connections=self.overload.max_connections,
                 connection_limit_from=self.overload.limit_source)
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Drains: no new connections, requests in flight get ``timeout`` to finish."""
        timeout = self.config.drain_timeout if timeout is None else timeout
        self.running = False
        if self.xds is not None:
            self.xds.stop()
            self.xds = None
        listeners, self.listeners = list(self.listeners.values()), {}
        stopping = [gevent.spawn(lst.stop, timeout) for lst in listeners]
        stopping.append(gevent.spawn(self._inprocess.stop, timeout))
        gevent.joinall(stopping)
        if self.admin is not None:
            self.admin.stop()
            self.admin = None
        self.clusters.close()
        self.overload.stop()
        for sink in self._log_files.values():
            sink.close()
        self._log_files = {}
        self._stopped.set()
        log.info("mesh_stopped")

    def dynamic_cluster_names(self) -> set[str]:
        return set(self._dynamic_clusters)

    @property
    def state(self) -> ServerState:
        if not self.running:
            return ServerState.STOPPED if self._stopped.is_set() else ServerState.DRAINING
        if self.health_failed or self.listeners_drained:
            return ServerState.DRAINING
        if self.xds is not None and not self.xds.initialized.is_set():
            return ServerState.PRE_INITIALIZING
        return ServerState.LIVE

    def drain_listeners(self) -> None:
        """Envoy's graceful /drain_listeners: every listener stops accepting and its
        connections drain (HTTP/1.1 ``connection: close``, HTTP/2 GOAWAY); admin stays."""
        self.listeners_drained = True
        listeners, self.listeners = list(self.listeners.values()), {}
        self._dynamic_listeners.clear()
        for lst in listeners:
            lst.close_listening()
            gevent.spawn(lst.stop, self.config.drain_timeout)
        log.info("listeners_draining", listeners=[lst.config.name for lst in listeners])

    def _listener_access_log(self, lc: model.Listener) -> AccessLog | None:
        if not lc.access_log:
            return None
        fmt = lc.access_log_format
        if fmt is None:
            return self._access_log
        if fmt.json_format is not None:
            render = compile_json(dict(fmt.json_format))
        else:
            render = compile_text(fmt.text_format or DEFAULT_FORMAT)
        write = self._log_line
        if fmt.path is not None:
            sink = self._log_files.get(fmt.path)
            if sink is None:
                sink = self._log_files[fmt.path] = FileLineWriter(fmt.path)
            write = sink.line
        return FormattedAccessLog(render, write)

    def reopen_logs(self) -> None:
        """SIGUSR1: access-log files opened again at their paths (log rotation)."""
        for sink in self._log_files.values():
            sink.reopen()
        log.info("access_logs_reopened", paths=sorted(self._log_files))

    def _start_listener(self, lc: model.Listener) -> Listener:
        name = lc.route_config
        chain = FilterChain(lc.name, lc.http_filters, self.filters, self.stats) \
            if lc.http_filters else None
        proxy = Proxy(lc.name, lambda: self._routes.get(name), self.clusters, self.stats,
                      access_log=self._listener_access_log(lc),
                      tunnel_idle_timeout=lc.idle_timeout, filters=chain,
                      overload=self.overload, max_stream_duration=lc.max_stream_duration,
                      stream_idle_timeout=lc.stream_idle_timeout,
                      request_ids=lc.generate_request_id)
        listener = Listener(lc, self.registry, proxy, self.stats, self.overload)
        listener.start()
        self.listeners[lc.name] = listener
        return listener

    def _inprocess_proxy(self, route_config: str) -> Proxy:
        """The proxy of in-process calls on ``route_config`` (``mesh.http``, ``mesh.bolt``):
        counted and logged as the listener ``inprocess``."""
        self._client_routes.add(route_config)
        self._want_client_routes()
        return Proxy(LISTENER, lambda: self._routes.get(route_config), self.clusters,
                     self.stats, access_log=self._access_log, overload=self.overload,
                     stream_idle_timeout=model.STREAM_IDLE_TIMEOUT)

    def _want_client_routes(self) -> None:
        """The control plane is asked for the route configs in-process calls use that the
        static config does not have (only once used: a control plane that lacks a name it is
        asked for may hold back its whole RDS answer, as go-control-plane's cache does)."""
        if self.xds is not None:
            static = {rc.name for rc in self.config.route_configs}
            self.xds.want_routes(self._client_routes - static)

    def _await_routes(self, name: str) -> None:
        """Before an in-process call: a route config the control plane has yet to send is
        waited for, up to the initial fetch timeout (Envoy's on-demand routes wait likewise);
        then the call goes on, and gets NR if it still has none."""
        if name in self._routes or self.xds is None:
            return
        deadline = time.monotonic() + self.xds.cfg.initial_fetch_timeout
        while name not in self._routes and self.running:
            left = deadline - time.monotonic()
            if left <= 0 or not self._routes_changed.wait(left):
                return

    def _set_routes(self, routes: dict[str, RouteTable]) -> None:
        self._routes = routes
        changed, self._routes_changed = self._routes_changed, gevent.event.Event()
        changed.set()

    def apply_dynamic(self, *, clusters: list[model.Cluster] | None = None,
                      route_configs: list[model.RouteConfig] | None = None,
                      listeners: list[model.Listener] | None = None) -> None:
        """The control plane's complete set of each kind given: swapped in beside the static
        config. Listeners that stay keep their connections; removed ones drain."""
        cfg = self.config
        if clusters is not None:
            static = {c.name for c in cfg.clusters}
            dynamic = [c for c in clusters if c.name not in static]
            names = {c.name for c in dynamic}
            self.clusters.update(dynamic, remove=[n for n in self._dynamic_clusters
                                                  if n not in names])
            self._dynamic_clusters = names
        if route_configs is not None:
            routes = {rc.name: RouteTable(rc) for rc in cfg.route_configs}
            for rc in route_configs:
                routes.setdefault(rc.name, RouteTable(rc))
            self._set_routes(routes)
        if listeners is not None:
            static = {lc.name for lc in cfg.listeners}
            wanted = {lc.name: lc for lc in listeners if lc.name not in static}
            for name in list(self._dynamic_listeners):
                if wanted.get(name) != self.listeners[name].config:
                    old = self.listeners.pop(name)
                    self._dynamic_listeners.discard(name)
                    old.close_listening()  # its port is free at once; its connections drain
                    gevent.spawn(old.stop, cfg.drain_timeout)
            for name, lc in wanted.items():
                if name not in self.listeners and not self.listeners_drained:
                    self._start_listener(lc)
                    self._dynamic_listeners.add(name)

    def reload(self, new: model.MeshConfig) -> dict[str, list[str]]:
        """A new static config (SIGHUP), applied through the same swaps as xDS updates: what
        did not change is not touched (its listeners keep their connections, its clusters their
        pools). Returns what changed, by kind; admin, xds and overload_manager changes need a
        restart (said in the result, as ``restart_needed``)."""
        old, self.config = self.config, new
        changes: dict[str, list[str]] = {}

        def diff(kind: str, before: dict, after: dict) -> tuple[list, list[str]]:
            changed = [v for k, v in after.items() if before.get(k) != v]
            removed = [k for k in before if k not in after]
            if changed or removed:
                changes[kind] = sorted([*(v.name for v in changed), *removed])
            return changed, removed

        clusters, gone = diff("clusters", {c.name: c for c in old.clusters},
                              {c.name: c for c in new.clusters})
        if clusters or gone:
            self._dynamic_clusters -= {c.name for c in clusters}  # a static name wins
            self.clusters.update(clusters, remove=gone)
        routes, gone_routes = diff("route_configs", {rc.name: rc for rc in old.route_configs},
                                   {rc.name: rc for rc in new.route_configs})
        if routes or gone_routes:
            tables = dict(self._routes)
            for name in gone_routes:
                tables.pop(name, None)
            for rc in routes:
                tables[rc.name] = RouteTable(rc)
            self._set_routes(tables)
        listeners, gone_listeners = diff("listeners", {lc.name: lc for lc in old.listeners},
                                         {lc.name: lc for lc in new.listeners})
        for name in [*gone_listeners, *(lc.name for lc in listeners)]:
            running = self.listeners.pop(name, None)
            if running is not None:
                running.close_listening()  # its port is free at once; its connections drain
                gevent.spawn(running.stop, new.drain_timeout)
        if not self.listeners_drained:
            for lc in listeners:
                try:
                    self._start_listener(lc)
                except OSError as e:  # its address is taken: the rest applies, this is said
                    log.error("listener_start_failed", listener=lc.name,
                              address=str(lc.address), error=str(e))
                    changes.setdefault("failed", []).append(lc.name)
        restart = [key for key in ("admin", "xds", "overload")
                   if getattr(old, key) != getattr(new, key)]
        if restart:
            changes["restart_needed"] = restart
        return changes

    def wait(self) -> None:
        """Blocks until ``stop()``."""
        self._stopped.wait()
