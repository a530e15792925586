"""What an in-process call raises when the mesh could not get it an answer: the Envoy response
flags that say why (the access log's), greenmesh's status and details. Familiar bases too, so
``except TimeoutError`` and ``except ConnectionError`` catch what they say."""

from __future__ import annotations

from typing import Final

from greenmesh.failures import ResponseFlag, render_flags


class MeshError(Exception):
    """The call failed in the mesh. ``flags``: Envoy's response flags (``flag``: the first,
    the main reason); ``status``: the HTTP status greenmesh would have answered a listener's
    client (0 when it ended after the response began); ``details``: what went wrong, as the
    access log says it; ``body``: greenmesh's answer's body."""

    def __init__(self, message: str, flags: list[ResponseFlag], status: int = 0,
                 details: str = "", body: bytes = b""):
        super().__init__(message)
        self.flags = flags
        self.status = status
        self.details = details
        self.body = body

    @property
    def flag(self) -> ResponseFlag | None:
        return self.flags[0] if self.flags else None


class NoRoute(MeshError, LookupError):
    """No route matched the call (NR), or its cluster does not exist (NC)."""


class UpstreamTimeout(MeshError, TimeoutError):
    """The route's timeout (or the call's ``timeout=``) passed (UT), or a stream limit did."""


class UpstreamUnavailable(MeshError, ConnectionError):
    """No upstream could take the call: none healthy (UH), connections failed (UF) or broke
    (UC), a circuit breaker was open (UO), retries ran out (URX), or overload (OM)."""


class MeshStopped(MeshError, ConnectionError):
    """The mesh is not running (stopped, or not started yet)."""


_KINDS: Final = {
    ResponseFlag.NO_ROUTE_FOUND: NoRoute,
    ResponseFlag.NO_CLUSTER_FOUND: NoRoute,
    ResponseFlag.UPSTREAM_REQUEST_TIMEOUT: UpstreamTimeout,
    ResponseFlag.DURATION_TIMEOUT: UpstreamTimeout,
    ResponseFlag.STREAM_IDLE_TIMEOUT: UpstreamTimeout,
    ResponseFlag.NO_HEALTHY_UPSTREAM: UpstreamUnavailable,
    ResponseFlag.UPSTREAM_CONNECTION_FAILURE: UpstreamUnavailable,
    ResponseFlag.UPSTREAM_CONNECTION_TERMINATION: UpstreamUnavailable,
    ResponseFlag.UPSTREAM_OVERFLOW: UpstreamUnavailable,
    ResponseFlag.UPSTREAM_PROTOCOL_ERROR: UpstreamUnavailable,
    ResponseFlag.UPSTREAM_RETRY_LIMIT_EXCEEDED: UpstreamUnavailable,
    ResponseFlag.OVERLOAD_MANAGER: UpstreamUnavailable,
}


def mesh_error(target: str, flags: list[ResponseFlag], status: int, details: str,
               body: bytes = b"") -> MeshError:
    """The exception for a call that ended with ``flags``, of the kind its main flag says."""
    kind = _KINDS.get(flags[0], MeshError) if flags else MeshError
    said = f" {status}" if status else ""
    why = f": {details}" if details else (f": {body.decode('latin-1').strip()}" if body else "")
    return kind(f"{target}:{said} {render_flags(flags)}{why}", flags, status, details, body)
