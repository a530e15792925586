"""Circuit breakers (Envoy's, per cluster): how much of the cluster is in use, against limits.

One ``Breakers`` per cluster outlives its snapshots, so a config or host-set change does not reset
the counts of what is in flight; its hosts' pools share it, which makes ``max_connections`` and
``max_pending_requests`` cluster-wide, as in Envoy.
"""

from __future__ import annotations

from greenmesh import model


class Breakers:
    __slots__ = ("limits", "connections", "pending", "requests", "retries")

    def __init__(self, limits: model.CircuitBreakers):
        self.limits = limits
        self.connections = 0  # open or being opened
        self.pending = 0  # requests waiting for a connection
        self.requests = 0  # requests in flight
        self.retries = 0  # retries in flight

    def can_connect(self) -> bool:
        return self.connections < self.limits.max_connections

    def can_wait(self) -> bool:
        return self.pending < self.limits.max_pending_requests

    def try_request(self) -> bool:
        """Counts a request in if the max_requests breaker allows it (``end_request`` after)."""
        if self.requests >= self.limits.max_requests:
            return False
        self.requests += 1
        return True

    def end_request(self, retries: int) -> None:
        self.requests -= 1
        self.retries -= retries

    def try_retry(self) -> bool:
        """Counts a retry in if the max_retries breaker allows it (given back by end_request)."""
        if self.retries >= self.limits.max_retries:
            return False
        self.retries += 1
        return True
