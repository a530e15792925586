"""Compiled route tables: a request head in, a route out.

Virtual hosts are found Envoy's way: exact domain, then the longest ``*.suffix``, then ``*``;
the Host's port is ignored when the exact host-with-port is not listed. (For RPC protocols the
authority is the target application, empty when absent.) Routes are tried in order and the
first match wins: path prefix or exact path, and every header matcher.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from greenmesh import model
from greenmesh.streams.base import RequestHead


class _HeaderCheck:
    """One header matcher, compiled: Envoy's semantics (a missing header never matches a
    string matcher; ``invert`` flips the final answer)."""

    __slots__ = ("name", "test", "present", "invert")

    def __init__(self, m: model.HeaderMatcher):
        self.name = m.name.encode()
        self.present = m.present
        self.invert = m.invert
        self.test: Callable[[bytes], bool] | None = None
        if m.exact is not None:
            self.test = m.exact.encode().__eq__
        elif m.prefix is not None:
            prefix = m.prefix.encode()
            self.test = lambda v: v.startswith(prefix)
        elif m.suffix is not None:
            suffix = m.suffix.encode()
            self.test = lambda v: v.endswith(suffix)
        elif m.regex is not None:
            rx = re.compile(m.regex.encode())
            self.test = lambda v: rx.fullmatch(v) is not None

    def matches(self, head: RequestHead) -> bool:
        value = head.get(self.name)
        if self.test is None:
            result = (value is not None) == self.present
        else:
            result = value is not None and self.test(value)
        return result != self.invert


class _CompiledRoute:
    __slots__ = ("route", "prefix", "path", "headers")

    def __init__(self, route: model.Route):
        self.route = route
        m = route.match
        self.prefix = m.prefix.encode() if m.prefix is not None else None
        self.path = m.path.encode() if m.path is not None else None
        self.headers = tuple(_HeaderCheck(h) for h in m.headers)

    def matches(self, head: RequestHead) -> bool:
        path = head.path
        if self.prefix is not None:
            if not path.startswith(self.prefix):
                return False
        elif self.path is not None:
            # An exact path match ignores the query string, as Envoy's ``path`` does.
            q = path.find(b"?")
            if (path if q < 0 else path[:q]) != self.path:
                return False
        for check in self.headers:
            if not check.matches(head):
                return False
        return True


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
        for r in routes:
            if r.matches(head):
                return r.route
        return None
