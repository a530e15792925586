"""The in-process client: an application calls services through the mesh it embeds
(``mesh.http``, ``mesh.bolt``), with no loopback hop to a listener.

Each call is an ``InProcessStream`` (``streams/inprocess.py``) served by the same ``Proxy`` as a
listener's streams, so routes, retries, timeouts, mirrors, circuit breakers, outlier detection
and pools are the ones every listener uses. Stats and the access log count the calls under the
listener name ``inprocess``; the route config is ``outbound`` unless a client is
``using(name)`` another.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import gevent
import gevent.event

from greenmesh.client.errors import MeshStopped, mesh_error
from greenmesh.cooperate import spawn_held
from greenmesh.streams.base import StreamHandler
from greenmesh.streams.inprocess import CallState, InProcessStream

if TYPE_CHECKING:
    from greenmesh.proxy import Proxy

#: The listener name the in-process calls are counted and logged under.
LISTENER: Final = "inprocess"
#: The route config a client uses unless told another.
ROUTE_CONFIG: Final = "outbound"


class InProcess:
    """One mesh's in-process listener: a proxy per route config, and the calls in flight (so
    that stopping the mesh drains them)."""

    def __init__(self, make_proxy: Callable[[str], Proxy], running: Callable[[], bool],
                 await_routes: Callable[[str], None]):
        """``await_routes(name)``: returns once the route config is known, or will not be
        soon (routes from a control plane)."""
        self._make_proxy = make_proxy
        self._running = running
        self._await_routes = await_routes
        self._handlers: dict[tuple[str, str], StreamHandler] = {}
        self._streams: set[InProcessStream] = set()  # the calls in flight
        self._greenlets: set[gevent.Greenlet] = set()  # those served in greenlets of their own
        self._idle = gevent.event.Event()  # set whenever no call is in flight

    def _handler(self, route_config: str, protocol: str) -> StreamHandler:
        handler = self._handlers.get((route_config, protocol))
        if handler is None:
            handler = self._handlers[route_config, protocol] = \
                self._make_proxy(route_config).handler(protocol)
        return handler

    def start(self, route_config: str, protocol: str, stream: InProcessStream,
              target: str, background: bool) -> None:
        """Serves ``stream``: in the caller's greenlet until the proxy is done with it, or (a
        streamed response: ``background``) in a greenlet of its own, returning once its
        response head came. Raises MeshStopped when the mesh is not running, and the call's
        MeshError when greenmesh answered it with a failure."""
        handler = self._handler(route_config, protocol)
        if self._running():
            self._await_routes(route_config)
        if not self._running():
            raise MeshStopped(f"{target}: the mesh is not running", [])
        streams = self._streams
        streams.add(stream)
        if background:
            g = spawn_held(handler, stream)

            def ended(done: gevent.Greenlet) -> None:  # also when killed before it ran
                streams.discard(stream)
                stream.end()
                if not streams:
                    self._idle.set()
            g.rawlink(ended)
            self._greenlets.add(g)
            g.rawlink(self._greenlets.discard)
            try:
                stream.wait_head()
            except BaseException:  # the caller's own timeout or kill: the call is abandoned
                stream.cancel()
                raise
        else:
            try:
                handler(stream)  # a kill or the caller's timeout: the proxy cleans up, re-raises
            finally:
                streams.discard(stream)
                stream.end()
                if not streams:
                    self._idle.set()
        self.raise_failure(stream, target)

    def raise_failure(self, stream: InProcessStream, target: str) -> None:
        """Raises what the caller should see now, if anything: its own body iterable's
        exception, or the call's failure (greenmesh answered with a flagged reply, or the
        stream ended without a whole response)."""
        local = stream.local
        if local is None and stream.state is not CallState.FAILED:
            return
        stream.wait_end()  # the flags and details come last
        if stream.body_error is not None:
            raise stream.body_error
        if local is not None:
            if local.flags:
                raise mesh_error(target, stream.flags or local.flags, local.status,
                                 stream.details, local.body)
            return
        if not self._running():  # stopping cut it short
            raise MeshStopped(f"{target}: the mesh stopped during the call", stream.flags)
        raise mesh_error(target, stream.flags, 0, stream.details or "the response was cut short")

    def stop(self, timeout: float) -> None:
        """Calls in flight get ``timeout`` to finish; then they are cancelled as a client that
        went away is (their upstream streams reset: their callers get MeshStopped)."""
        if self._streams:
            self._idle.clear()
            self._idle.wait(timeout)
        for stream in list(self._streams):
            stream.cancel()
        if self._greenlets:  # what was not waiting on an upstream stream
            gevent.joinall(list(self._greenlets), timeout=1)
            gevent.killall(list(self._greenlets), block=True, timeout=1)
