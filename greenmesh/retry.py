"""A route's retry policy applied to one request (Envoy's RetryState): which failures it
retries, how many times, the back-off between tries, and the cluster's retry circuit breaker.

What counts as retriable follows Envoy's router: ``5xx`` and ``gateway-error`` cover every
upstream reset and connect failure (they end in a 5xx), ``reset`` every reset, ``connect-failure``
and ``refused-stream`` only their own reasons; an overflow is never retried.
"""

from __future__ import annotations

import random
import time
from typing import Final

import gevent

from greenmesh import model
from greenmesh.failures import ResetReason, ResponseFlag
from greenmesh.stats import Stats
from greenmesh.upstream.cluster import ClusterSnapshot

_monotonic: Final = time.monotonic


def _reset_conditions(reason: ResetReason | None) -> tuple[str, ...]:
    """The retry_on conditions an upstream failure satisfies (None: a per-try timeout)."""
    if reason is ResetReason.OVERFLOW:
        return ()
    if reason is ResetReason.CONNECTION_FAILURE:
        return ("5xx", "gateway-error", "reset", "connect-failure")
    if reason is ResetReason.REMOTE_REFUSED_STREAM:
        return ("5xx", "gateway-error", "reset", "refused-stream")
    return ("5xx", "gateway-error", "reset")


class RetryState:
    __slots__ = ("policy", "left", "done", "deadline", "try_timeout", "refused", "_stats",
                 "_cluster")

    def __init__(self, policy: model.RetryPolicy | None, timeout: float | None,
                 idle: float | None, stats: Stats, cluster: ClusterSnapshot):
        self.policy = policy
        self._cluster = cluster
        self.left = policy.num_retries if policy else 0
        self.done = 0  # retries made (each holds the retry breaker until the request ends)
        self.deadline = _monotonic() + timeout if timeout else None
        # For the response head: the shortest of the limits that are set.
        wait = timeout or None
        for limit in (policy.per_try_timeout if policy else None, idle):
            if limit and (wait is None or limit < wait):
                wait = limit
        self.try_timeout = wait
        #: Why a retry the policy wanted was not made: URX (retries or time used up) or UO
        #: (the max_retries breaker), for the access log.
        self.refused: ResponseFlag | None = None
        self._stats = stats

    def on_reset(self, reason: ResetReason | None, replayable: bool) -> bool:
        """Whether to try again after the upstream failed before answering (reason None: a
        per-try timeout); sleeps the back-off first when so."""
        policy = self.policy
        if policy is None or not replayable:
            return False
        if not any(c in policy.retry_on for c in _reset_conditions(reason)):
            return False
        return self._spend()

    def on_status(self, status: int, replayable: bool) -> bool:
        """Whether to try again instead of forwarding a response with this status."""
        policy = self.policy
        if policy is None or not replayable:
            return False
        on = policy.retry_on
        if not ((status >= 500 and "5xx" in on)
                or (status in (502, 503, 504) and "gateway-error" in on)
                or (status in policy.retriable_status_codes and "retriable-status-codes" in on)):
            return False
        return self._spend()

    def _spend(self) -> bool:
        assert self.policy is not None
        if not self.left:
            self.refused = ResponseFlag.UPSTREAM_RETRY_LIMIT_EXCEEDED
            return False
        base = self.policy.base_interval
        cap = self.policy.max_interval or 10 * base
        delay = random.uniform(0, min(cap, base * (2 ** self.done)))
        if self.deadline is not None and _monotonic() + delay >= self.deadline:
            self.refused = ResponseFlag.UPSTREAM_RETRY_LIMIT_EXCEEDED  # no time left for a try
            return False
        key = f"cluster.{self._cluster.name}.upstream_rq_retry"  # formatted only when retrying
        if not self._cluster.breakers.try_retry():
            self._stats.inc(key + "_overflow")
            self.refused = ResponseFlag.UPSTREAM_OVERFLOW
            return False
        self.left -= 1
        self.done += 1
        self._stats.inc(key)
        gevent.sleep(delay)
        return True
