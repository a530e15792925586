"""A host of a cluster: its address, weight, priority, pool, and what is known of its health."""

from __future__ import annotations

from typing import TYPE_CHECKING

from greenmesh import model

if TYPE_CHECKING:
    from greenmesh.upstream.pool import Pool


class HostHealth:
    """What is known about an address's health. Kept by address across snapshot rebuilds, so a
    result recorded through a host of an older snapshot still counts for it."""

    __slots__ = ("consecutive_5xx", "consecutive_gateway", "ejections", "ejected_until",
                 "check_failed", "checks_ok", "checks_failed", "rq_total", "rq_error")

    def __init__(self) -> None:
        self.consecutive_5xx = 0
        self.consecutive_gateway = 0
        self.ejections = 0
        self.ejected_until = 0.0  # outlier detection: out of the balancer until then
        self.check_failed = False  # by active health checking
        self.checks_ok = 0
        self.checks_failed = 0
        self.rq_total = 0  # attempts sent to the address (admin's /clusters)
        self.rq_error = 0  # of which failed: 5xx, or no response

    def available(self, now: float) -> bool:
        return not self.check_failed and now >= self.ejected_until


class Host:
    __slots__ = ("address", "label", "weight", "pool", "health", "priority", "locality")

    def __init__(self, address: model.Address, weight: int, pool: Pool,
                 health: HostHealth | None = None, priority: int = 0, locality: str = ""):
        self.address = address
        self.label = str(address)  # host:port, as the access log and the stats name it
        self.weight = weight
        self.pool = pool
        self.health = health or HostHealth()
        self.priority = priority
        self.locality = locality  # region/zone/sub_zone

    @property
    def active(self) -> int:
        """Requests in flight (least_request balances on it)."""
        return self.pool.active

    def available(self, now: float) -> bool:
        return self.health.available(now)
