"""Envoy's overload manager at run time: the global connection limit, and actions under memory
pressure.

Listeners ask ``refusal()`` before each accept; at a limit they stop accepting (connections wait
in the kernel's backlog) and ask to be woken by ``wait()``, rather than accepting and closing at
full CPU. The memory monitor samples resident memory every ``refresh_interval``; an action is on
while the pressure is at or above its threshold.
"""

from __future__ import annotations

import math
import os
import resource
import time
from collections.abc import Callable
from typing import Final

import gevent

from greenmesh import model
from greenmesh.config.overload import (
    DISABLE_HTTP_KEEPALIVE,
    FIXED_HEAP,
    STOP_ACCEPTING_CONNECTIONS,
    STOP_ACCEPTING_REQUESTS,
)
from greenmesh.logger import get_logger
from greenmesh.stats import Stats

log = get_logger("greenmesh.overload")

# File descriptors kept for the process itself (logs, admin, control plane, health checks).
RESERVED_FDS: Final = 64
# A downstream connection may hold an upstream one too.
FDS_PER_CONNECTION: Final = 2
LIMIT_LOG_EVERY: Final = 10.0  # seconds between two warnings about the same limit


def default_connection_limit() -> tuple[int, str]:
    """The global connection limit sized to the process's file limit, and how it was sized."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    limit = max(1, (soft - RESERVED_FDS) // FDS_PER_CONNECTION)
    return limit, (f"RLIMIT_NOFILE {soft}: {FDS_PER_CONNECTION} per connection, "
                   f"{RESERVED_FDS} kept for the process")


def resident_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the peak is the best there is
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class LimitLog:
    """Warnings about one limit, at most one per ``LIMIT_LOG_EVERY`` seconds with the number of
    times since: a limit hit over and over under load must show, but must not flood the log."""

    __slots__ = ("_last", "_times", "_told")

    def __init__(self) -> None:
        self._last = -math.inf
        self._times = 0
        self._told = False  # a warning went out and its clearing is still to be said

    def reached(self, **kw) -> None:
        self._times += 1
        now = time.monotonic()
        if now - self._last >= LIMIT_LOG_EVERY:
            log.warning("connection_limit_reached", times=self._times, **kw)
            self._last, self._times, self._told = now, 0, True

    def cleared(self, **kw) -> None:
        if self._told:
            self._told = False
            log.info("connection_limit_cleared", **kw)


class OverloadManager:
    """One per Mesh: counts the downstream connections of every listener, runs the monitor."""

    def __init__(self, config: model.Overload, stats: Stats) -> None:
        self.config = config
        self._stats = stats
        if config.max_active_downstream_connections is not None:
            self.max_connections = config.max_active_downstream_connections
            self.limit_source = "overload_manager"
        else:
            self.max_connections, self.limit_source = default_connection_limit()
        self.connections = 0
        # Any action on: the one attribute the proxy reads per request.
        self.active = False
        self.accepting_connections = True
        self.keepalive = True
        self.accepting_requests = True
        self._waiting: set[Callable[[], None]] = set()
        self.limit_log = LimitLog()  # the global limit's warnings, whichever listener hits it
        self._monitor: gevent.Greenlet | None = None

    def start(self) -> None:
        if self.config.max_heap_size_bytes is not None:
            self.sample()
            self._monitor = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._monitor is not None:
            self._monitor.kill()
            self._monitor = None
        self._waiting.clear()

    def refusal(self) -> tuple[str, str] | None:
        """Why a listener must not accept now: the listener stat it counts and the limit in
        words; None when it may."""
        if not self.accepting_connections:
            return "downstream_cx_overload_reject", "overload_manager stop_accepting_connections"
        if self.connections >= self.max_connections:
            return ("downstream_global_cx_overflow",
                    f"global max_active_downstream_connections {self.max_connections}")
        return None

    def wait(self, resume: Callable[[], None]) -> None:
        """``resume`` is called once the connections may be accepted again."""
        self._waiting.add(resume)

    def opened(self) -> None:
        self.connections += 1

    def closed(self) -> None:
        self.connections -= 1
        if self._waiting and self.refusal() is None:
            self._wake()

    def _wake(self) -> None:
        waiting, self._waiting = self._waiting, set()
        for resume in waiting:
            resume()

    def _run(self) -> None:
        while True:
            gevent.sleep(self.config.refresh_interval)
            self.sample()

    def sample(self) -> None:
        """Measures the memory pressure and turns the actions on or off."""
        limit = self.config.max_heap_size_bytes
        assert limit is not None
        pressure = resident_bytes() / limit
        stats = self._stats
        stats.set(f"overload.{FIXED_HEAP}.pressure", min(100, int(pressure * 100)))
        on = {a.name for a in self.config.actions if pressure >= a.threshold}
        for name, was in ((STOP_ACCEPTING_CONNECTIONS, not self.accepting_connections),
                          (DISABLE_HTTP_KEEPALIVE, not self.keepalive),
                          (STOP_ACCEPTING_REQUESTS, not self.accepting_requests)):
            now = name in on
            if now != was:
                stats.set(f"overload.{name}.active", int(now))
                (log.warning if now else log.info)(
                    "overload_action", action=name, active=now, pressure=round(pressure, 3))
        self.accepting_connections = STOP_ACCEPTING_CONNECTIONS not in on
        self.keepalive = DISABLE_HTTP_KEEPALIVE not in on
        self.accepting_requests = STOP_ACCEPTING_REQUESTS not in on
        self.active = bool(on)
        if self._waiting and self.refusal() is None:
            self._wake()
