"""``Mesh``: owns listeners, the cluster manager, the route tables and admin.

Start and stop it inside any running gevent process (a gunicorn-gevent worker, a test) as often
as needed: all its state hangs off the instance, none off a module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import gevent
import gevent.event
import structlog

from greenmesh import config as config_loader
from greenmesh import model
from greenmesh.access_log import AccessLog
from greenmesh.admin import Admin
from greenmesh.filters.chain import FilterChain
from greenmesh.filters.registry import FilterRegistry
from greenmesh.listener import Listener
from greenmesh.overload import OverloadManager
from greenmesh.proxy import Proxy
from greenmesh.router import RouteTable
from greenmesh.stats import Stats
from greenmesh.streams import Registry, default_registry
from greenmesh.upstream.manager import ClusterManager

if TYPE_CHECKING:
    from greenmesh.xds.client import XdsClient

log = structlog.get_logger("greenmesh")


class Mesh:
    def __init__(self, config: model.MeshConfig, *, registry: Registry | None = None,
                 access_log: AccessLog | None = None, filters: FilterRegistry | None = None):
        """``access_log``: where listeners write their access-log lines (default: through
        structlog, so an embedding application's logging configuration applies).
        ``filters``: the filter types (default: those that ship, and entry points); a config
        naming an application's own types must have been loaded with the same registry."""
        self.config = config
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
            self.xds.start()
        self.running = True
        self._stopped.clear()
        log.info("mesh_started", listeners=len(self.listeners), clusters=len(cfg.clusters),
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
        if listeners:
            gevent.joinall([gevent.spawn(lst.stop, timeout) for lst in listeners])
        if self.admin is not None:
            self.admin.stop()
            self.admin = None
        self.clusters.close()
        self.overload.stop()
        self._stopped.set()
        log.info("mesh_stopped")

    def _start_listener(self, lc: model.Listener) -> Listener:
        name = lc.route_config
        chain = FilterChain(lc.name, lc.http_filters, self.filters, self.stats) \
            if lc.http_filters else None
        proxy = Proxy(lc.name, lambda: self._routes.get(name), self.clusters, self.stats,
                      access_log=self._access_log if lc.access_log else None,
                      tunnel_idle_timeout=lc.idle_timeout, filters=chain,
                      overload=self.overload, max_stream_duration=lc.max_stream_duration,
                      stream_idle_timeout=lc.stream_idle_timeout)
        listener = Listener(lc, self.registry, proxy, self.stats, self.overload)
        listener.start()
        self.listeners[lc.name] = listener
        return listener

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
            self._routes = routes
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
                if name not in self.listeners:
                    self._start_listener(lc)
                    self._dynamic_listeners.add(name)

    def wait(self) -> None:
        """Blocks until ``stop()``."""
        self._stopped.wait()
