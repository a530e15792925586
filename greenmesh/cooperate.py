"""Long control-plane work in slices, so traffic on the same loop is not stalled; and
greenlets whose arguments outlive a kill. Interpreted on purpose (see spawn_held)."""

from __future__ import annotations

import time
from collections.abc import Callable

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


def spawn_held(func: Callable[..., object], *args: object) -> gevent.Greenlet:
    """``gevent.spawn`` for a greenlet that may be killed while it runs a compiled function.

    gevent's compiled ``Greenlet.run`` passes its args tuple on without a reference of its
    own, and ``kill()`` empties that tuple at once (``Greenlet.__free``), even while the
    greenlet runs; a mypyc-compiled function borrows its arguments instead of owning them, so
    an argument nothing else held was freed under it (seen: a request pump calling a freed
    callback; tests/test_spawn_held.py). This module is interpreted: its frame owns them."""
    return gevent.spawn(_held, func, args)


def _held(func: Callable[..., object], args: tuple) -> object:
    return func(*args)
