"""Upstream connection pools, one per host: hand out a client stream, take the connection back.

The proxy sees only ``new_stream(timeout)`` and ``stream.finish()``; whether a connection carries
one stream at a time (HTTP/1.1) or many (HTTP/2) is the pool's business. Connecting, waiting for
a free slot, limits and stats are written once here; the two pools differ only in how they
share a connection.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Final

from gevent import ssl
from gevent.event import AsyncResult
from gevent.timeout import Timeout

from greenmesh import model
from greenmesh.conn import Conn, ConnError
from greenmesh.failures import ResetReason
from greenmesh.stats import Stats
from greenmesh.streams import Protocol
from greenmesh.streams.base import ClientConnection, ClientStream, StreamReset, StreamTimeout
from greenmesh.upstream.breakers import Breakers

# A connection back in the pool for less than this is reused without first checking whether
# the peer closed it (a MSG_PEEK syscall): under load every request would pay for the check,
# while a close that races the reuse costs one retry on another connection (the stale
# keep-alive retry), which a close racing a request costs Envoy too.
PEEK_AFTER: Final = 0.1


class ConnectFailure(StreamReset):
    """The upstream refused, was unreachable, or did not accept in time."""

    def __init__(self, message: str):
        super().__init__(message, ResetReason.CONNECTION_FAILURE)


class PoolOverflow(StreamReset):
    """Too many requests already wait for a connection (the max_pending_requests breaker)."""

    def __init__(self, message: str):
        super().__init__(message, ResetReason.OVERFLOW)


class PoolClosed(ConnectFailure):
    """The host left the cluster while the request waited: no connection to it is coming."""


class _Pool:
    def __init__(self, address: model.Address, protocol: Protocol, settings: model.Cluster,
                 stats: Stats, tls: ssl.SSLContext | None = None,
                 breakers: Breakers | None = None):
        self.address = address
        self.tls = tls
        self.breakers = breakers or Breakers(settings.circuit_breakers)
        self.protocol = protocol
        self.settings = settings
        self.stats = stats
        self._open = 0  # connections open or being opened
        self.active = 0  # streams in flight (least_request balances on it)
        self._waiters: deque[AsyncResult] = deque()
        self.closed = False
        prefix = f"cluster.{settings.name}."
        self._k_cx = prefix + "upstream_cx_total"
        self._k_fail = prefix + "upstream_cx_connect_fail"
        self._k_overflow = prefix + "upstream_rq_pending_overflow"
        self._k_destroy = prefix + "upstream_cx_destroy"
        self._init_connections()

    def _init_connections(self) -> None:
        """The subclass's own connection bookkeeping (a hook, so that its signature is one)."""
        raise NotImplementedError

    @property
    def open_connections(self) -> int:
        return self._open

    def _connect(self) -> ClientConnection:
        self._open += 1
        self.breakers.connections += 1
        self.stats.inc(self._k_cx)
        try:
            conn = Conn.connect(self.address.host, self.address.port,
                                self.settings.connect_timeout, self.tls,
                                self.settings.tls.sni if self.settings.tls else "")
        except BaseException as e:
            self._open -= 1
            self.breakers.connections -= 1
            self._wake(None)
            if not isinstance(e, ConnError):
                raise  # thrown into the wait (a stream's max duration): not a connect failure
            self.stats.inc(self._k_fail)
            raise ConnectFailure(str(e)) from None
        return self.protocol.client(conn, self.settings)

    def _wait(self, timeout: float | None) -> ClientConnection | None:
        """Queues for a connection (or a free slot: None) until one is released."""
        if not self.breakers.can_wait():
            self.stats.inc(self._k_overflow)
            raise PoolOverflow("too many pending requests")
        waiter: AsyncResult = AsyncResult()
        self._waiters.append(waiter)
        self.breakers.pending += 1
        try:
            result = waiter.get(timeout=timeout)
        except Timeout:
            raise StreamTimeout("no upstream connection became free in time") from None
        except BaseException:
            # Thrown into the wait (a stream's max duration) after a connection or a slot was
            # handed to it: the next waiter gets it instead.
            if waiter.successful():
                self._hand_on(waiter.value)
            raise
        finally:
            self.breakers.pending -= 1
            try:
                self._waiters.remove(waiter)
            except ValueError:
                pass
        if self.closed:
            raise PoolClosed("host removed")
        return result

    def _wake(self, value: ClientConnection | None) -> bool:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.ready():
                waiter.set(value)
                return True
        return False

    def _hand_on(self, value: ClientConnection | None) -> None:
        """A freed connection (or slot: None) goes to the next waiter."""
        self._wake(value)

    def _stream(self, cc: ClientConnection) -> ClientStream:
        self.active += 1
        return cc.new_stream(self._release)

    def _release(self, cc: ClientConnection, reusable: bool) -> None:
        """A stream is done with ``cc`` (the pool decides what becomes of it)."""
        raise NotImplementedError

    def _discard(self, cc: ClientConnection, reason: str) -> None:
        cc.close(reason)
        self._open -= 1
        self.breakers.connections -= 1
        self.stats.inc(self._k_destroy)
        self._wake(None)


class ExclusivePool(_Pool):
    """A connection carries one stream at a time; idle ones are reused newest first."""

    def _init_connections(self) -> None:
        self._idle: list[tuple[ClientConnection, float]] = []

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    def new_stream(self, timeout: float | None) -> ClientStream:
        """A stream on an idle connection, a new one, or the next one freed (within timeout)."""
        if self.closed:
            raise PoolClosed("host removed")
        idle = self._idle
        while idle:
            cc, since = idle.pop()
            age = time.monotonic() - since
            if age > self.settings.idle_timeout or (age > PEEK_AFTER
                                                    and cc.conn.readable_or_closed()):
                self._discard(cc, "stale idle connection")
                continue
            return self._stream(cc)
        if self.breakers.can_connect():
            return self._stream(self._connect())
        cc = self._wait(timeout) or self._connect()
        return self._stream(cc)

    def _release(self, cc: ClientConnection, reusable: bool) -> None:
        self.active -= 1
        if reusable and not self.closed and cc.usable:
            self._hand_on(cc)
            return
        self._discard(cc, "not reusable")

    def _hand_on(self, value: ClientConnection | None) -> None:
        """The next waiter takes the connection, or it waits idle."""
        if not self._wake(value) and value is not None:
            self._idle.append((value, time.monotonic()))

    def sweep(self, now: float) -> None:
        """Closes connections idle longer than the cluster's idle timeout."""
        limit = self.settings.idle_timeout
        keep: list[tuple[ClientConnection, float]] = []
        stale: list[tuple[ClientConnection, float]] = []
        for item in self._idle:
            (keep if now - item[1] <= limit and item[0].usable else stale).append(item)
        if stale:
            self._idle = keep
            for cc, _ in stale:
                self._discard(cc, "idle timeout")

    def drain(self) -> None:
        """No new streams; idle connections close now, busy ones when their stream finishes."""
        self.closed = True
        idle, self._idle = self._idle, []
        for cc, _ in idle:
            self._discard(cc, "draining")
        while self._wake(None):
            pass


class MultiplexPool(_Pool):
    """Streams share connections; another connection opens only when all are at the peer's
    concurrency limit. A connection that got GOAWAY takes no new streams and closes when its
    last one finishes; one that died fails only its own streams."""

    def _init_connections(self) -> None:
        self._conns: list[ClientConnection] = []
        self._idle_since: dict[int, float] = {}
        self._connecting: AsyncResult | None = None

    @property
    def idle_connections(self) -> int:
        return sum(1 for cc in self._conns if cc.active_streams == 0)

    def new_stream(self, timeout: float | None) -> ClientStream:
        while True:
            if self.closed:
                raise PoolClosed("host removed")
            for cc in self._conns:
                if cc.usable and cc.active_streams < cc.capacity:
                    self._idle_since.pop(id(cc), None)
                    return self._stream(cc)
            self._prune()
            if self._connecting is not None:  # someone is opening one: share it
                try:
                    self._connecting.get(timeout=timeout)
                except Timeout:
                    raise StreamTimeout("upstream connection not ready in time") from None
                continue
            if self.breakers.can_connect():
                pending: AsyncResult = AsyncResult()
                self._connecting = pending
                try:
                    cc = self._connect()
                finally:
                    self._connecting = None
                    pending.set(None)
                self._conns.append(cc)
                return self._stream(cc)
            self._wait(timeout)

    def _prune(self) -> None:
        for cc in [c for c in self._conns if not c.usable and c.active_streams == 0]:
            self._conns.remove(cc)
            self._idle_since.pop(id(cc), None)
            self._discard(cc, "gone away")

    def _release(self, cc: ClientConnection, reusable: bool) -> None:
        self.active -= 1
        if cc.active_streams == 0:
            if not reusable or self.closed:
                if cc in self._conns:
                    self._conns.remove(cc)
                    self._idle_since.pop(id(cc), None)
                    self._discard(cc, "not reusable")
                return
            self._idle_since[id(cc)] = time.monotonic()
        self._wake(None)

    def sweep(self, now: float) -> None:
        limit = self.settings.idle_timeout
        for cc in list(self._conns):
            since = self._idle_since.get(id(cc))
            if (since is not None and now - since > limit) or (not cc.usable and
                                                               cc.active_streams == 0):
                self._conns.remove(cc)
                self._idle_since.pop(id(cc), None)
                self._discard(cc, "idle timeout")

    def drain(self) -> None:
        self.closed = True
        for cc in [c for c in self._conns if c.active_streams == 0]:
            self._conns.remove(cc)
            self._discard(cc, "draining")
        while self._wake(None):
            pass


Pool = ExclusivePool | MultiplexPool


def make_pool(address: model.Address, protocol: Protocol, settings: model.Cluster,
              stats: Stats, tls: ssl.SSLContext | None = None, breakers: Breakers | None = None
              ) -> Pool:
    cls = MultiplexPool if protocol.multiplexed else ExclusivePool
    return cls(address, protocol, settings, stats, tls, breakers)
