"""A listener's filter chain at run time: its filters instantiated once, called phase by phase
for each stream by the proxy (the router is the proxy itself, after the last filter).

Per route, the filters that apply are worked out once and kept: a filter a route disables is
left out, one a route configures runs as a separate instance made from that config (its own
token bucket, say), kept with the compiled route so it lives as long as the route table.
A hook is called only if the filter's class overrides it, so an unused phase costs nothing.
"""

from __future__ import annotations

import traceback
from typing import Any, Final

from greenmesh import model
from greenmesh.failures import LocalReply, ResponseFlag
from greenmesh.filters.api import Filter, FilterContext, ResetStream
from greenmesh.filters.registry import FilterRegistry
from greenmesh.logger import get_logger
from greenmesh.stats import Stats
from greenmesh.streams.base import FilterError, Headers, RequestHead, ResponseHead

log = get_logger("greenmesh.filters")

_PHASES: Final = ("before_route", "after_route", "after_host", "request_data",
                  "request_trailers", "response_headers", "response_data", "response_trailers",
                  "done")
_CACHE_LIMIT: Final = 4096  # routes whose filter lists are kept (a table rebuilt often)


def _overrides(f: Filter, hook: str) -> bool:
    return getattr(type(f), hook) is not getattr(Filter, hook)


Phase = tuple[tuple[str, Filter], ...]


class Active:
    """The filters that apply to one route, per phase, in chain order (response phases in
    reverse, as Envoy's encoder filters)."""

    __slots__ = (*_PHASES, "wants_request_body", "wants_response_body")

    def __init__(self, filters: list[tuple[str, Filter]]):
        def having(hook: str) -> Phase:
            return tuple((n, f) for n, f in filters if _overrides(f, hook))

        self.before_route = having("before_route")
        self.after_route = having("after_route")
        self.after_host = having("after_host")
        self.done = having("done")
        self.response_headers = having("response_headers")[::-1]
        body_in = [(n, f) for n, f in filters if f.wants_request_body]
        body_out = [(n, f) for n, f in filters if f.wants_response_body][::-1]
        self.request_data = tuple(x for x in body_in if _overrides(x[1], "request_data"))
        self.request_trailers = tuple(x for x in body_in
                                      if _overrides(x[1], "request_trailers"))
        self.response_data = tuple(x for x in body_out if _overrides(x[1], "response_data"))
        self.response_trailers = tuple(x for x in body_out
                                       if _overrides(x[1], "response_trailers"))
        self.wants_request_body = bool(self.request_data or self.request_trailers)
        self.wants_response_body = bool(self.response_data or self.response_trailers)


class StreamFilters(FilterContext):
    """One stream's filters: the context every hook gets (this object: one allocation per
    stream, not two), and the filters that apply (the listener's until a route is matched, the
    route's after). The proxy looks at ``active`` to skip a phase no filter has."""

    __slots__ = ("chain", "active")

    def __init__(self, chain: FilterChain, request: RequestHead):
        super().__init__(chain.listener, request, chain.stats, chain.prefix)
        self.chain = chain
        self.active: Active = chain.listener_filters

    def _call(self, name: str, hook: Any, *args: Any) -> Any:
        try:
            return hook(self, *args)
        except ResetStream as e:
            raise FilterError(f"filter {name} reset the stream: {e}") from None
        except Exception as e:  # the filter's bug: this stream's problem only
            chain = self.chain
            chain.stats.inc(f"http.{chain.listener}.filter.{name}.errors")
            log.error("filter_error", listener=chain.listener, filter=name,
                      error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
            raise FilterError(f"filter {name} failed: {type(e).__name__}: {e}", 500,
                              ResponseFlag.INTERNAL_ERROR) from None

    def _heads(self, phase: Phase, hook: str, *args: Any) -> LocalReply | None:
        """Each filter of a phase in turn, until one answers."""
        for name, f in phase:
            reply = self._call(name, getattr(f, hook), *args)
            if reply is not None:
                return reply
        return None

    def before_route(self) -> LocalReply | None:
        return self._heads(self.active.before_route, "before_route")

    def after_route(self, route: Any, cluster: str | None) -> LocalReply | None:
        """``route``: the compiled route (None if none matched)."""
        self.route = route.route if route is not None else None
        self.cluster = cluster
        if route is not None:
            self.active = self.chain.for_route(route)
        phase = self.active.after_route
        return self._heads(phase, "after_route") if phase else None

    def after_host(self) -> LocalReply | None:
        """(The proxy sets ``host`` first.)"""
        return self._heads(self.active.after_host, "after_host")

    def _through(self, phase: Phase, hook: str, value: Any) -> Any:
        """A body chunk or trailers, passed through each filter of a phase in turn."""
        for name, f in phase:
            value = self._call(name, getattr(f, hook), value)
        return value

    def request_data(self, chunk: bytes) -> bytes:
        return self._through(self.active.request_data, "request_data", chunk)

    def request_trailers(self, trailers: Headers) -> Headers:
        return self._through(self.active.request_trailers, "request_trailers", trailers)

    def response_headers(self, head: ResponseHead) -> LocalReply | None:
        head.load_headers()
        self.response = head
        phase = self.active.response_headers
        return self._heads(phase, "response_headers", head) if phase else None

    def local_reply(self, reply: LocalReply) -> LocalReply:
        """A local reply on its way out passes the response-head hooks too (as Envoy's encoder
        filters see local replies): they may edit its status and headers, or replace it."""
        if not self.active.response_headers:
            return reply
        head = ResponseHead(reply.status, reply.headers)
        replaced = self.response_headers(head)
        if replaced is not None:
            return replaced
        reply.status = head.status
        reply.headers = head.headers
        return reply

    def response_data(self, chunk: bytes) -> bytes:
        return self._through(self.active.response_data, "response_data", chunk)

    def response_trailers(self, trailers: Headers) -> Headers:
        return self._through(self.active.response_trailers, "response_trailers", trailers)

    def done(self) -> None:
        for name, f in self.active.done:
            try:
                f.done(self)
            except Exception as e:  # too late to answer for it; said and counted
                chain = self.chain
                chain.stats.inc(f"http.{chain.listener}.filter.{name}.errors")
                log.error("filter_error", listener=chain.listener, filter=name,
                          error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())


class FilterChain:
    """A listener's filters, in order."""

    def __init__(self, listener: str, filters: tuple[model.HttpFilter, ...],
                 registry: FilterRegistry, stats: Stats):
        self.listener = listener
        self.stats = stats
        self.prefix = f"http.{listener}."  # the listener's counters (Envoy's HCM stat prefix)
        self._registry = registry
        self._filters = [(f.name, registry.create(f.kind, f.config)) for f in filters]
        self.listener_filters = Active(self._filters)
        self._routes: dict[Any, Active] = {}

    def start(self, request: RequestHead) -> StreamFilters:
        return StreamFilters(self, request)

    def for_route(self, route: Any) -> Active:
        """The filters that apply on a compiled route (its overrides merged route > virtual
        host > route config, as Envoy)."""
        active = self._routes.get(route)
        if active is not None:
            return active
        overrides: dict[str, model.FilterOverride] = route.filter_overrides
        if not overrides:
            active = self.listener_filters
        else:
            chosen: list[tuple[str, Filter]] = []
            for name, f in self._filters:
                o = overrides.get(name)
                if o is None:
                    chosen.append((name, f))
                elif not o.disabled:
                    chosen.append((name, self._route_instance(route, name, o, f)))
            active = Active(chosen)
        if len(self._routes) >= _CACHE_LIMIT:
            self._routes.clear()
        self._routes[route] = active
        return active

    def _route_instance(self, route: Any, name: str, o: model.FilterOverride,
                        listener_filter: Filter) -> Filter:
        """The filter built from a route's own config, made once per compiled route."""
        made: dict[str, Filter] = route.filter_instances
        f = made.get(name)
        if f is None:
            f = self._registry.create(o.kind, o.config)
            if type(f) is not type(listener_filter):  # a config of another filter's type
                log.warning("filter_override_ignored", listener=self.listener, filter=name,
                            reason=f"the route's config is of type {o.kind}")
                f = listener_filter
            made[name] = f
        return f
