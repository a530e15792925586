"""A cluster as requests see it: one immutable snapshot of its hosts and their balancer."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from greenmesh import model
from greenmesh.stats import RequestStats
from greenmesh.upstream.breakers import Breakers
from greenmesh.upstream.host import Host
from greenmesh.upstream.lb import POLICIES, Balancer
from greenmesh.upstream.priority import PriorityLoad

if TYPE_CHECKING:
    from greenmesh.upstream.manager import ClusterManager


class ClusterSnapshot:
    """Immutable once published. Its balancer covers the available hosts, or all of them in
    panic (under half available, as Envoy), by priority level when hosts have levels."""

    __slots__ = ("config", "hosts", "lb", "name", "manager", "breakers", "stats")

    def __init__(self, config: model.Cluster, hosts: tuple[Host, ...],
                 manager: ClusterManager | None = None, breakers: Breakers | None = None,
                 stats: RequestStats | None = None):
        self.config = config
        self.name = config.name
        self.hosts = hosts
        self.manager = manager
        self.breakers = breakers or Breakers(config.circuit_breakers)
        # Its upstream_rq_* counters and time histogram (outlive snapshots, as breakers do).
        self.stats = stats
        now = time.monotonic()
        available = [h for h in hosts if h.available(now)]
        policy = POLICIES[config.lb_policy]
        self.lb: Balancer | PriorityLoad
        if len(available) * 2 < len(hosts):
            self.lb = policy(list(hosts))  # panic: spread over everything, not overload few
        elif any(h.priority for h in hosts):
            self.lb = PriorityLoad(hosts, available, policy)
        else:
            self.lb = policy(available)

    def pick(self, key: int | None = None) -> Host | None:
        return self.lb.pick(key)  # type: ignore[return-value]  # balancers hold Hosts here

    def record(self, host: Host, status: int, began: float | None = None) -> None:
        """An attempt's outcome (a status, or 0 for a connect failure or reset; ``began`` on
        the monotonic clock, when it is to be timed): counted, and given to outlier
        detection."""
        if self.stats is not None:
            self.stats.done(status, time.monotonic() - began if began is not None else None)
        health = host.health
        health.rq_total += 1
        if status == 0 or status >= 500:
            health.rq_error += 1
        if self.config.outlier_detection is not None and self.manager is not None:
            self.manager.record(self.name, host, status)
