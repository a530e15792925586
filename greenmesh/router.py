"""Compiled route tables: a request head in, a route out.

Virtual hosts are found Envoy's way: exact domain, then the longest ``*.suffix``, then ``*``;
the Host's port is ignored when the exact host-with-port is not listed. Routes are tried in
order and the first match wins.
"""

from __future__ import annotations

from greenmesh import model
from greenmesh.streams.base import RequestHead


class _CompiledRoute:
    __slots__ = ("route", "prefix", "path")

    def __init__(self, route: model.Route):
        self.route = route
        m = route.match
        self.prefix = m.prefix.encode() if m.prefix is not None else None
        self.path = m.path.encode() if m.path is not None else None

    def matches(self, path: bytes) -> bool:
        if self.prefix is not None:
            return path.startswith(self.prefix)
        # An exact path match ignores the query string, as Envoy's ``path`` does.
        q = path.find(b"?")
        return (path if q < 0 else path[:q]) == self.path


class RouteTable:
    __slots__ = ("config", "name", "_exact", "_suffixes", "_default")

    def __init__(self, config: model.RouteConfig):
        self.config = config
        self.name = config.name
        self._exact: dict[bytes, tuple[_CompiledRoute, ...]] = {}
        suffixes: list[tuple[bytes, tuple[_CompiledRoute, ...]]] = []
        self._default: tuple[_CompiledRoute, ...] | None = None
        for vh in config.virtual_hosts:
            routes = tuple(_CompiledRoute(r) for r in vh.routes)
            for domain in vh.domains:
                d = domain.encode()
                if d == b"*":
                    self._default = routes
                elif d.startswith(b"*"):
                    suffixes.append((d[1:], routes))
                else:
                    self._exact[d] = routes
        suffixes.sort(key=lambda s: len(s[0]), reverse=True)
        self._suffixes = tuple(suffixes)

    def _virtual_host(self, authority: bytes) -> tuple[_CompiledRoute, ...] | None:
        host = authority.lower()
        routes = self._exact.get(host)
        if routes is not None:
            return routes
        colon = host.rfind(b":")
        if colon > 0 and host.find(b"]", colon) < 0:  # not inside an IPv6 literal
            host = host[:colon]
            routes = self._exact.get(host)
            if routes is not None:
                return routes
        for suffix, routes in self._suffixes:
            if host.endswith(suffix) and len(host) > len(suffix):
                return routes
        return self._default

    def match(self, head: RequestHead) -> model.Route | None:
        routes = self._virtual_host(head.authority)
        if routes is None:
            return None
        path = head.path
        for r in routes:
            if r.matches(path):
                return r.route
        return None
