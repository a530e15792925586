"""Upstream connection pools, one per host: hand out a client stream, take the connection back.

The proxy sees only ``new_stream(timeout)`` and ``stream.finish()``; whether a connection carries
one stream at a time (HTTP/1.1) or many is the pool's business.
"""

from __future__ import annotations

import time
from collections import deque

from gevent.event import AsyncResult
from gevent.timeout import Timeout

from greenmesh import model
from greenmesh.conn import Conn, ConnError
from greenmesh.stats import Stats
from greenmesh.streams import Protocol
from greenmesh.streams.base import ClientConnection, ClientStream, StreamTimeout


class ConnectFailure(Exception):
    """The upstream refused, was unreachable, or did not accept in time."""


class PoolOverflow(Exception):
    """Too many requests already wait for a connection to this host."""


class PoolClosed(Exception):
    """The host left the cluster while the request waited."""


class ExclusivePool:
    """A connection carries one stream at a time; idle ones are reused newest first."""

    def __init__(self, address: model.Address, protocol: Protocol, settings: model.Cluster,
                 stats: Stats):
        self.address = address
        self.protocol = protocol
        self.settings = settings
        self.stats = stats
        self._idle: list[tuple[ClientConnection, float]] = []
        self._open = 0  # idle + busy + connecting
        self._waiters: deque[AsyncResult] = deque()
        self.closed = False
        prefix = f"cluster.{settings.name}."
        self._k_cx = prefix + "upstream_cx_total"
        self._k_fail = prefix + "upstream_cx_connect_fail"
        self._k_overflow = prefix + "upstream_rq_pending_overflow"
        self._k_destroy = prefix + "upstream_cx_destroy"

    @property
    def open_connections(self) -> int:
        return self._open

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    def new_stream(self, timeout: float | None) -> ClientStream:
        """A stream on an idle connection, a new one, or the next one freed (waiting ``timeout``)."""
        if self.closed:
            raise PoolClosed("host removed")
        idle = self._idle
        while idle:
            cc, since = idle.pop()
            if (time.monotonic() - since > self.settings.idle_timeout
                    or cc.conn.readable_or_closed()):
                self._discard(cc, "stale idle connection")
                continue
            return cc.new_stream(self._release)
        if self._open < self.settings.max_connections:
            return self._connect().new_stream(self._release)
        if len(self._waiters) >= self.settings.max_pending_requests:
            self.stats.inc(self._k_overflow)
            raise PoolOverflow("too many pending requests")
        waiter = AsyncResult()
        self._waiters.append(waiter)
        try:
            cc = waiter.get(timeout=timeout)
        except Timeout:
            raise StreamTimeout("no upstream connection became free in time") from None
        finally:
            try:
                self._waiters.remove(waiter)
            except ValueError:
                pass
        if cc is None:  # a slot was freed: open a connection of our own
            if self.closed:
                raise PoolClosed("host removed")
            return self._connect().new_stream(self._release)
        return cc.new_stream(self._release)

    def _connect(self) -> ClientConnection:
        self._open += 1
        self.stats.inc(self._k_cx)
        try:
            conn = Conn.connect(self.address.host, self.address.port,
                                self.settings.connect_timeout)
        except ConnError as e:
            self._open -= 1
            self.stats.inc(self._k_fail)
            self._wake_for_slot()
            raise ConnectFailure(str(e)) from None
        return self.protocol.client(conn)

    def _release(self, cc: ClientConnection, reusable: bool) -> None:
        if reusable and not self.closed and cc.usable:
            while self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.ready():
                    waiter.set(cc)
                    return
            self._idle.append((cc, time.monotonic()))
            return
        self._discard(cc, "not reusable")

    def _discard(self, cc: ClientConnection, reason: str) -> None:
        cc.close(reason)
        self._open -= 1
        self.stats.inc(self._k_destroy)
        self._wake_for_slot()

    def _wake_for_slot(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.ready():
                waiter.set(None)
                return

    def sweep(self, now: float) -> None:
        """Closes connections idle longer than the cluster's idle timeout."""
        limit = self.settings.idle_timeout
        keep, stale = [], []
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
        while self._waiters:
            self._waiters.popleft().set(None)


def make_pool(address: model.Address, protocol: Protocol, settings: model.Cluster,
              stats: Stats) -> ExclusivePool:
    if protocol.multiplexed:
        raise NotImplementedError(f"no multiplexed pool yet for {protocol.name}")
    return ExclusivePool(address, protocol, settings, stats)
