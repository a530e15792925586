"""What the server side of every multiplexed protocol shares (HTTP/2, each xprotocol codec):
streams served in greenlets of their own, the connection's state, draining, and an end that
gives the streams in flight a moment to finish with their access-log lines."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable

import gevent

from greenmesh.conn import Conn
from greenmesh.streams.base import ConnectionState, ServerConnection, ServerOptions, StreamHandler

# When a connection ends, its streams (already failed, their upstream requests cancelled) get
# this long to finish as they do before what is left is killed.
HANDLERS_GRACE_SECONDS = 1.0


class MultiplexServerConnection(ServerConnection):
    def __init__(self, conn: Conn, opts: ServerOptions, handler: StreamHandler):
        self.conn = conn
        self.opts = opts
        self.handler = handler
        self.state = ConnectionState.OPEN
        self.handlers: set[gevent.Greenlet] = set()

    @property
    def idle(self) -> bool:
        return not self.handlers

    def spawn(self, serve: Callable[..., None], *args: object) -> None:
        """Serves one stream in a greenlet of its own."""
        self.handlers.add(gevent.spawn(self._run_stream, serve, *args))

    def _run_stream(self, serve: Callable[..., None], *args: object) -> None:
        try:
            serve(*args)
        finally:
            self.handlers.discard(gevent.getcurrent())
            if not self.handlers and self.state is ConnectionState.DRAINING:
                self.close_after_flush("drained")

    def drain(self) -> None:
        if self.state is not ConnectionState.OPEN:
            return
        self.state = ConnectionState.DRAINING
        self.announce_drain()
        if self.idle:
            self.close_after_flush("drained")

    def announce_drain(self) -> None:  # noqa: B027 - most protocols have nothing to say
        """Tells the peer to open no more streams (HTTP/2: GOAWAY)."""

    @abstractmethod
    def close_after_flush(self, reason: str) -> None:
        """Closes once what is queued for the peer has been written."""

    def finish_handlers(self, grace: float = HANDLERS_GRACE_SECONDS) -> None:
        """Once the connection has ended: its streams get ``grace`` to end as they do."""
        if self.handlers:
            gevent.joinall(list(self.handlers), timeout=grace)
        gevent.killall(list(self.handlers), block=False)
