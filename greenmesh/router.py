"""Compiled route tables: a request head in, a route out.

Virtual hosts are found Envoy's way: exact domain, then the longest ``*.suffix``, then the
longest ``prefix.*``, then ``*``;
the Host's port is ignored when the exact host-with-port is not listed. (For RPC protocols the
authority is the target application, empty when absent.) Routes are tried in order and the
first match wins: path prefix or exact path, and every header matcher.
"""

from __future__ import annotations

import bisect
import random
import re
from collections.abc import Callable
from urllib.parse import unquote_to_bytes

from greenmesh import model
from greenmesh.streams.base import RequestHead
from greenmesh.upstream.lb import stable_hash


class HeaderCheck:
    """One header matcher, compiled: Envoy's semantics (a missing header never matches a
    string matcher; ``invert`` flips the final answer)."""

    __slots__ = ("name", "test", "present", "invert")

    def __init__(self, m: model.HeaderMatcher):
        self.name = m.name.encode()
        self.present = m.present
        self.invert = m.invert
        self.test = _string_test(m.exact, m.prefix, m.suffix, m.regex)

    def matches(self, head: RequestHead) -> bool:
        value = head.get(self.name)
        if self.test is None:
            result = (value is not None) == self.present
        else:
            result = value is not None and self.test(value)
        return result != self.invert


def _string_test(exact, prefix, suffix, regex) -> Callable[[bytes], bool] | None:
    if exact is not None:
        return exact.encode().__eq__
    if prefix is not None:
        p = prefix.encode()
        return lambda v: v.startswith(p)
    if suffix is not None:
        x = suffix.encode()
        return lambda v: v.endswith(x)
    if regex is not None:
        rx = re.compile(regex.encode())
        return lambda v: rx.fullmatch(v) is not None
    return None


class _QueryCheck:
    __slots__ = ("name", "test", "present")

    def __init__(self, m: model.QueryParameterMatcher):
        self.name = m.name.encode()
        self.present = m.present
        self.test = _string_test(m.exact, m.prefix, m.suffix, m.regex)

    def matches(self, query: dict[bytes, bytes]) -> bool:
        value = query.get(self.name)
        if self.test is None:
            return (value is not None) == self.present
        return value is not None and self.test(value)


class _MetadataCheck:
    """Envoy's metadata matcher on dynamic metadata: the value at namespace + path, as a
    string (numbers and booleans as Envoy prints them), or its presence."""

    __slots__ = ("namespace", "path", "test", "present", "invert")

    def __init__(self, m: model.MetadataMatcher):
        self.namespace = m.namespace
        self.path = m.path
        self.present = m.present
        self.invert = m.invert
        test = _string_test(m.exact, m.prefix, m.suffix, m.regex)
        self.test = test

    def matches(self, metadata: dict | None) -> bool:
        value = (metadata or {}).get(self.namespace)
        for key in self.path:
            value = value.get(key) if isinstance(value, dict) else None
        if self.test is None:
            result = (value is not None) == self.present
        elif value is None or isinstance(value, dict):
            result = False
        else:
            text = ("true" if value else "false") if isinstance(value, bool) else (
                str(int(value)) if isinstance(value, float) and value.is_integer()
                else str(value))
            result = self.test(text.encode())
        return result != self.invert


def _query(path: bytes) -> dict[bytes, bytes]:
    q = path.find(b"?")
    if q < 0:
        return {}
    out: dict[bytes, bytes] = {}
    for part in path[q + 1:].split(b"&"):
        k, _, v = part.partition(b"=")
        out.setdefault(unquote_to_bytes(k.replace(b"+", b" ")),
                       unquote_to_bytes(v.replace(b"+", b" ")))
    return out


def _cookie(head: RequestHead, name: bytes) -> bytes | None:
    wanted = name + b"="
    value = None
    for n, v in head.headers:
        if n == b"cookie":
            for part in v.split(b";"):
                part = part.strip()
                if part.startswith(wanted):
                    value = part[len(wanted):]
    return value


class CompiledRoute:
    """A route, compiled once: its path test, header and query checks, and the header
    operations of its route, virtual host and route config merged (route first, as Envoy)."""

    __slots__ = ("route", "path_test", "headers", "queries", "metadata", "request_add",
                 "request_remove", "response_add", "response_remove", "filter_overrides",
                 "filter_instances", "_weighted", "_rewrite")

    def __init__(self, route: model.Route, vhost: model.VirtualHost | None = None,
                 config: model.RouteConfig | None = None):
        self.route = route
        m = route.match
        self.path_test = self._path_test(m)
        self.headers = tuple(HeaderCheck(h) for h in m.headers)
        self.queries = tuple(_QueryCheck(q) for q in m.query_parameters)
        self.metadata = tuple(_MetadataCheck(x) for x in m.dynamic_metadata)
        outer = tuple(x.headers for x in (vhost, config) if x is not None)
        levels = (route.headers, *outer)
        # Per-filter settings, the most specific level winning (route > virtual host > config).
        overrides: dict[str, model.FilterOverride] = {}
        for level in (config, vhost, route):
            if level is not None:
                overrides.update(level.filter_overrides)
        self.filter_overrides = overrides
        # Filters made from this route's own filter configs (filters.chain fills it).
        self.filter_instances: dict[str, object] = {}
        self.request_add = tuple((o.key.encode(), o.value.encode(), o.append)
                                 for ops in levels for o in ops.request_add)
        self.request_remove = frozenset(n.encode() for ops in levels for n in ops.request_remove)
        self.response_add = tuple((o.key.encode(), o.value.encode(), o.append)
                                  for ops in levels for o in ops.response_add)
        self.response_remove = frozenset(n.encode() for ops in levels
                                         for n in ops.response_remove)
        action = route.route
        self._weighted = None
        if action is not None and action.weighted_clusters:
            total, cumulative = 0, []
            for wc in action.weighted_clusters:
                total += wc.weight
                cumulative.append(total)
            self._weighted = ([wc.name for wc in action.weighted_clusters], cumulative, total)
        self._rewrite = None
        if action is not None and action.regex_rewrite is not None:
            pattern, substitution = action.regex_rewrite
            self._rewrite = (re.compile(pattern.encode()), substitution.encode())

    def cluster_name(self, head: RequestHead) -> str | None:
        """The upstream cluster for this request: fixed, weighted (random by weight), or named
        by a request header."""
        action = self.route.route
        assert action is not None  # asked only of routes that forward
        if action.cluster is not None:
            return action.cluster
        if self._weighted is not None:
            names, cumulative, total = self._weighted
            return names[bisect.bisect_right(cumulative, random.random() * total)]
        value = head.get((action.cluster_header or "").encode())
        return value.decode("latin-1") if value else None

    def rewrite_path(self, path: bytes, prefix_rewrite: str | None) -> bytes:
        """Envoy's prefix_rewrite (the matched prefix, or the whole path for an exact match)
        and regex_rewrite (on the path without its query)."""
        q = path.find(b"?")
        bare, query = (path, b"") if q < 0 else (path[:q], path[q:])
        m = self.route.match
        if prefix_rewrite is not None:
            new = prefix_rewrite.encode()
            matched = m.prefix or m.path_separated_prefix
            if matched is not None:
                bare = new + bare[len(matched):]
            else:
                bare = new
        elif self._rewrite is not None:
            rx, substitution = self._rewrite
            bare = rx.sub(substitution, bare)
        return bare + query

    def hash_key(self, head: RequestHead) -> int | None:
        """What a hash-based balancer hashes for this request: the first of the route's hash
        policies that finds a value (Envoy's, without combining several)."""
        for p in self.route.route.hash_policy if self.route.route is not None else ():
            value: bytes | None = None
            if p.header is not None:
                value = head.get(p.header.encode())
            elif p.cookie is not None:
                value = _cookie(head, p.cookie.encode())
            elif p.source_ip:
                value = head.peer or None
            if value:
                return stable_hash(value)
        return None

    def redirect_location(self, head: RequestHead) -> bytes:
        """The Location of the route's redirect for this request."""
        r = self.route.redirect
        assert r is not None
        scheme = (r.scheme_redirect.encode() if r.scheme_redirect else head.scheme) or b"http"
        authority = head.authority
        if r.host_redirect is not None:
            authority = r.host_redirect.encode()
        if r.port_redirect is not None:
            host = authority.rsplit(b":", 1)[0] if authority.count(b":") == 1 else authority
            authority = host + b":%d" % r.port_redirect
        if r.path_redirect is not None:
            path = r.path_redirect.encode()
        elif r.prefix_rewrite is not None:
            path = self.rewrite_path(head.path, r.prefix_rewrite)
        else:
            path = head.path
        if r.strip_query:
            path = path.split(b"?", 1)[0]
        return scheme + b"://" + authority + path

    @staticmethod
    def _path_test(m: model.RouteMatch) -> Callable[[bytes], bool]:
        fold = (lambda p: p.lower()) if not m.case_sensitive else (lambda p: p)

        def no_query(p: bytes) -> bytes:
            q = p.find(b"?")
            return p if q < 0 else p[:q]
        if m.prefix is not None:
            prefix = fold(m.prefix.encode())
            return lambda p: fold(p).startswith(prefix)
        if m.path is not None:
            # An exact path match ignores the query string, as Envoy's ``path`` does.
            exact = fold(m.path.encode())
            return lambda p: fold(no_query(p)) == exact
        if m.safe_regex is not None:
            rx = re.compile(m.safe_regex.encode(), 0 if m.case_sensitive else re.IGNORECASE)
            return lambda p: rx.fullmatch(no_query(p)) is not None
        if m.path_separated_prefix is not None:
            sep = fold(m.path_separated_prefix.encode())
            n = len(sep)

            def separated(p: bytes) -> bool:
                p = fold(no_query(p))
                return p.startswith(sep) and (len(p) == n or p[n:n + 1] == b"/")
            return separated
        return lambda p: True  # headers or query parameters alone

    def matches(self, head: RequestHead, metadata: dict | None) -> bool:
        if not self.path_test(head.path):
            return False
        for check in self.headers:
            if not check.matches(head):
                return False
        if self.queries:
            query = _query(head.path)
            for q in self.queries:
                if not q.matches(query):
                    return False
        for mc in self.metadata:
            if not mc.matches(metadata):
                return False
        return True


class RouteTable:
    __slots__ = ("config", "name", "_exact", "_suffixes", "_prefixes", "_default")

    def __init__(self, config: model.RouteConfig):
        self.config = config
        self.name = config.name
        self._exact: dict[bytes, tuple[CompiledRoute, ...]] = {}
        suffixes: list[tuple[bytes, tuple[CompiledRoute, ...]]] = []
        prefixes: list[tuple[bytes, tuple[CompiledRoute, ...]]] = []
        self._default: tuple[CompiledRoute, ...] | None = None
        for vh in config.virtual_hosts:
            routes = tuple(CompiledRoute(r, vh, config) for r in vh.routes)
            for domain in vh.domains:
                d = domain.encode()
                if d == b"*":
                    self._default = routes
                elif d.startswith(b"*"):
                    suffixes.append((d[1:], routes))
                elif d.endswith(b"*"):
                    prefixes.append((d[:-1], routes))
                else:
                    self._exact[d] = routes
        suffixes.sort(key=lambda s: len(s[0]), reverse=True)
        prefixes.sort(key=lambda s: len(s[0]), reverse=True)
        self._suffixes = tuple(suffixes)
        self._prefixes = tuple(prefixes)

    def _virtual_host(self, authority: bytes) -> tuple[CompiledRoute, ...] | None:
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
        for prefix, routes in self._prefixes:
            if host.startswith(prefix) and len(host) > len(prefix):
                return routes
        return self._default

    def match(self, head: RequestHead, metadata: dict | None = None) -> CompiledRoute | None:
        """The matching route (``.route`` is its config) with its header operations;
        ``metadata``: the request's dynamic metadata, set by filters before routing."""
        routes = self._virtual_host(head.authority)
        if routes is None:
            return None
        for r in routes:
            if r.matches(head, metadata):
                return r
        return None
