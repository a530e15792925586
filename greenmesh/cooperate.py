"""Long control-plane work in slices, so traffic on the same loop is not stalled."""

from __future__ import annotations

import time

import gevent

SLICE = 0.005  # seconds of work between yields


class Slicer:
    """Call ``tick()`` inside a long loop: every SLICE of work it yields through a real timer.

    ``gevent.sleep(0)`` would only run callbacks, not poll sockets, so requests would still
    wait for the whole loop; a timer lets the event loop poll IO in between.
    """

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = time.monotonic() + SLICE

    def tick(self) -> None:
        now = time.monotonic()
        if now >= self._next:
            gevent.sleep(0.0005)
            self._next = time.monotonic() + SLICE
