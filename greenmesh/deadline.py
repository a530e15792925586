"""Waiting with a deadline without gevent's Timeout objects.

``Event.wait(timeout)`` and ``AsyncResult.get(timeout=...)`` wrap each wait in a gevent Timeout,
Python code that measured about 3% of a bolt request's CPU; a multiplexed stream waits once or
twice a request. Here a libev timer throws ``Expired`` into the waiting greenlet instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from gevent.hub import get_hub
from greenlet import getcurrent

T = TypeVar("T")


class Expired(Exception):
    """Thrown by a deadline's timer into the greenlet waiting under it."""


def within(timeout: float | None, wait: Callable[[], T]) -> T:
    """``wait()``, interrupted by ``Expired`` after ``timeout`` seconds (None: no limit)."""
    if timeout is None:
        return wait()
    timer = get_hub().loop.timer(timeout)
    timer.start(getcurrent().throw, Expired)
    try:
        return wait()
    finally:
        timer.stop()
