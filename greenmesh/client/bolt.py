"""``mesh.bolt``: SOFA bolt calls through the mesh in the application's own process.

``invoke(service, method, payload)`` makes a bolt request frame with SOFARPC's header keys
(``service``, ``sofa_head_method_name``, ``sofa_head_target_app``), routed as a bolt listener
routes one, and returns the response frame's status, header map and content. As with
``mesh.http``, what the mesh could not get an answer for raises a ``MeshError`` with Envoy's
response flags; an upstream's own error status (SERVER_EXCEPTION...) is a response.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from greenmesh.client import ROUTE_CONFIG, InProcess
from greenmesh.streams.base import RequestHead
from greenmesh.streams.inprocess import InProcessStream
from greenmesh.streams.xprotocol.bolt import (
    SOFA_REQUEST,
    STATUS_FROM_HTTP,
    SUCCESS,
    UNKNOWN,
    BoltFrame,
    request_frame,
)


@dataclass(frozen=True, slots=True)
class BoltResponse:
    """A bolt response: ``status`` is SOFABolt's ResponseStatus (0 SUCCESS, 2 SERVER_EXCEPTION,
    ...); ``headers`` its header map; ``content`` the serialized response object."""

    status: int
    headers: dict[str, str]
    content: bytes
    class_name: str = ""

    @property
    def ok(self) -> bool:
        return self.status == SUCCESS


class BoltClient:
    def __init__(self, calls: InProcess, route_config: str = ROUTE_CONFIG):
        self._calls = calls
        self.route_config = route_config

    def using(self, route_config: str) -> BoltClient:
        """The same client on another route config."""
        return BoltClient(self._calls, route_config)

    def invoke(self, service: str, method: str, payload: bytes = b"", *,
               headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
               timeout: float | None = None, target_app: str = "", oneway: bool = False,
               class_name: str = SOFA_REQUEST.decode()) -> BoltResponse | None:
        """Calls ``service``'s ``method`` with ``payload`` (already serialized, e.g. Hessian2).
        ``timeout`` (seconds) goes in the frame and replaces the route's; a ``oneway`` call
        returns None once it was sent."""
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive seconds, not {timeout!r}")
        items = (headers.items() if isinstance(headers, Mapping) else headers) or ()
        frame = request_frame(service.encode(), method.encode(), bytes(payload),
                              [(str(k).encode(), str(v).encode()) for k, v in items],
                              target_app.encode(),
                              int(timeout * 1000) if timeout is not None else -1, oneway,
                              class_name.encode())
        head = RequestHead(method.encode(), service.encode(), target_app.encode(), b"",
                           frame.headers, native=frame)
        head.message_bytes = len(frame.raw)
        head.timeout = timeout
        call = InProcessStream(head, None, 0)
        self._calls.start(self.route_config, "bolt", call, f"bolt {service}#{method}",
                          background=False)
        if oneway:
            return None
        response = call.head
        assert response is not None
        native = response.native
        if isinstance(native, BoltFrame):
            return BoltResponse(native.status,
                                {k.decode("latin-1"): v.decode("latin-1") for k, v in native.pairs},
                                native.content, native.class_name.decode("latin-1"))
        # Not a bolt upstream's frame (a route's direct response): its status is all there is.
        return BoltResponse(STATUS_FROM_HTTP.get(response.status, UNKNOWN), {}, b"")
