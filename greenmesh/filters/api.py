"""What a stream filter is: the class users subclass, and the context each hook gets.

A filter sees one request at the phases MOSN names (before routing, after routing, after a host
is chosen) and its response on the way back, as Envoy's decoder/encoder filters do. A hook runs
in the stream's own greenlet, so it may block (call a service, wait on a lock, sleep): the
stream waits, the others go on. A hook continues by returning None, answers in greenmesh's place
by returning a ``LocalReply`` (``ctx.reply(...)``; the codec maps it for RPC protocols), or
ends the stream by raising ``ResetStream``. Anything else it raises is contained: that stream
gets a 500 (or the protocol's error), the error is logged with the filter's name and counted.

One instance serves every stream of a listener (or, for a per-route config, of a route):
per-stream state goes in ``ctx.state``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from greenmesh.failures import LocalReply, ResponseFlag
from greenmesh.stats import Stats
from greenmesh.streams.base import Headers, RequestHead, ResponseHead

__all__ = ["Filter", "FilterContext", "LocalReply", "ResetStream", "ResponseFlag"]


class ResetStream(Exception):
    """Raised by a hook to end the stream without an answer (HTTP/1.1: the connection closes;
    HTTP/2: RST_STREAM)."""


class FilterContext:
    """One request as the filters see it. ``request`` is the head the router will see (for RPC
    protocols: method = the RPC method, path = the service, authority = the target app,
    headers = the protocol's header map); edit headers with its ``set``/``add``/``remove``.
    ``metadata`` is Envoy's dynamic metadata (namespace -> key -> value): routes can match on
    it and the access log prints it."""

    __slots__ = ("listener", "request", "route", "cluster", "host", "response", "metadata",
                 "state", "flags", "stats", "_prefix")

    def __init__(self, listener: str, request: RequestHead, stats: Stats, prefix: str = ""):
        self.listener = listener
        self.request = request
        self.route: Any = None  # the matched model.Route, from after_route on (None: no route)
        self.cluster: str | None = None  # the upstream cluster's name, from after_route on
        self.host: str | None = None  # the chosen upstream host, from after_host on
        self.response: ResponseHead | None = None
        self.metadata: dict[str, dict[str, Any]] = {}
        self.state: dict[str, Any] = {}
        # Response flags a filter adds for the access log (the fault filter's DI).
        self.flags: list[ResponseFlag] = []
        self.stats = stats
        self._prefix = prefix or f"http.{listener}."

    def reply(self, status: int, body: bytes | str = b"",
              headers: Headers | None = None, flag: ResponseFlag | None = None) -> LocalReply:
        """A local answer to return from a hook."""
        if isinstance(body, str):
            body = body.encode()
        return LocalReply(status, [flag] if flag is not None else [], body, list(headers or []))

    def set_metadata(self, namespace: str, key: str, value: Any) -> None:
        self.metadata.setdefault(namespace, {})[key] = value

    def count(self, name: str, n: int = 1) -> None:
        """Adds to the listener's counter ``http.<listener>.<name>`` (Envoy's HCM stat prefix)."""
        self.stats.inc(self._prefix + name, n)


class Filter:
    """Subclass and override the hooks you need; the chain calls only those overridden.

    ``config`` is what the listener (or a route's override) gave under the filter's
    ``typed_config``/``config``: a mapping for user filters, a parsed object for those that ship.
    Set ``wants_request_body``/``wants_response_body`` to see body chunks (the chain otherwise
    never touches a body). A filter that changes a body's length must fix ``content-length``."""

    wants_request_body: ClassVar[bool] = False
    wants_response_body: ClassVar[bool] = False

    def __init__(self, config: Any = None):
        self.config = config

    @classmethod
    def create(cls, config: Any) -> Filter:
        """The instance a chain uses for a config this type parsed (``cls(config)``; a type that
        stands for another, as ``greenmesh.filters.python``, returns that one)."""
        return cls(config)

    @classmethod
    def validate(cls, config: Any) -> None:
        """Raises ValueError (its message becomes a config error at the filter's key path) if
        ``config`` will not do; runs when the config is loaded, before any traffic."""

    def before_route(self, ctx: FilterContext) -> LocalReply | None:
        """The request head is in; no route yet (what a filter sets here can steer routing).
        Per-route overrides apply from after_route on."""
        return None

    def after_route(self, ctx: FilterContext) -> LocalReply | None:
        """The route (``ctx.route``, None if none matched) and cluster are known."""
        return None

    def after_host(self, ctx: FilterContext) -> LocalReply | None:
        """A host was chosen (``ctx.host``); runs again for each retry."""
        return None

    def request_data(self, ctx: FilterContext, chunk: bytes) -> bytes:
        return chunk

    def request_trailers(self, ctx: FilterContext, trailers: Headers) -> Headers:
        return trailers

    def response_headers(self, ctx: FilterContext, head: ResponseHead) -> LocalReply | None:
        """The response head on its way back (an upstream's, or a local reply's); filters run
        in reverse order here, as Envoy's encoder filters."""
        return None

    def response_data(self, ctx: FilterContext, chunk: bytes) -> bytes:
        return chunk

    def response_trailers(self, ctx: FilterContext, trailers: Headers) -> Headers:
        return trailers

    def done(self, ctx: FilterContext) -> None:
        """The stream ended (however it did): release what the filter holds for it."""
