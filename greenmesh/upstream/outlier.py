"""Outlier detection (Envoy's passive health checking): hosts failing in a row are ejected for a
while, longer each time, never more than max_ejection_percent of the cluster (but always one)."""

from __future__ import annotations

import random
from collections.abc import Sequence

from greenmesh import model
from greenmesh.upstream.host import HostHealth


def record(od: model.OutlierDetection, health: HostHealth, status: int) -> bool:
    """Counts an upstream outcome (an HTTP status, or 0 for a connect failure or reset);
    True when the host has now failed enough in a row to be ejected."""
    failed = status == 0 or status >= 500
    gateway = status == 0 or status in (502, 503, 504)
    health.consecutive_5xx = health.consecutive_5xx + 1 if failed else 0
    health.consecutive_gateway = health.consecutive_gateway + 1 if gateway else 0
    return ((0 < od.consecutive_5xx <= health.consecutive_5xx
             and _enforced(od.enforcing_consecutive_5xx)) or
            (0 < od.consecutive_gateway_failure <= health.consecutive_gateway
             and _enforced(od.enforcing_consecutive_gateway_failure)))


def _enforced(percent: int) -> bool:
    return percent >= 100 or (percent > 0 and random.random() * 100 < percent)


def eject(od: model.OutlierDetection, health: HostHealth, cluster: Sequence[HostHealth],
          now: float) -> float | None:
    """Ejects the host for base_ejection_time x its ejections so far (capped at
    max_ejection_time) and returns for how long; None when the cap on ejected hosts forbids."""
    ejected = sum(1 for h in cluster if not h.available(now))
    if ejected and (ejected + 1) * 100 > od.max_ejection_percent * len(cluster):
        return None  # the cap: but one host may always go
    health.ejections += 1
    duration = min(od.base_ejection_time * health.ejections, od.max_ejection_time)
    health.ejected_until = now + duration
    health.consecutive_5xx = health.consecutive_gateway = 0
    return duration
