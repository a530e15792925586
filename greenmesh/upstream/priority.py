"""Envoy's priority levels over any balancer: each level takes its available share x 1.4 of
what is left, level 0 first, so traffic spills to the next level only as hosts become
unavailable."""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Sequence
from typing import Final

from greenmesh.upstream.lb import Balancer, Weighted

OVERPROVISIONING: Final = 1.4  # Envoy's default overprovisioning factor


class PriorityLoad:
    __slots__ = ("levels", "_cumulative")

    def __init__(self, hosts: Sequence[Weighted], available: Sequence[Weighted],
                 policy: Callable[[Sequence[Weighted]], Balancer]) -> None:
        by_level: dict[int, list[Weighted]] = {}
        for h in hosts:
            by_level.setdefault(h.priority, [])
        for h in available:
            by_level[h.priority].append(h)
        totals = {p: sum(1 for h in hosts if h.priority == p) for p in by_level}
        left, shares = 1.0, []
        for p in sorted(by_level):
            share = min(left, OVERPROVISIONING * len(by_level[p]) / totals[p])
            if share > 0 and by_level[p]:
                shares.append((p, share))
                left -= share
        total = sum(s for _, s in shares) or 1.0  # under 100% in all: normalised, as Envoy
        self.levels = [policy(by_level[p]) for p, _ in shares]
        self._cumulative: list[float] = []
        acc = 0.0
        for _, s in shares:
            acc += s / total
            self._cumulative.append(acc)

    def pick(self, key: int | None = None) -> Weighted | None:
        if not self.levels:
            return None
        i = bisect.bisect_left(self._cumulative, random.random())
        return self.levels[min(i, len(self.levels) - 1)].pick(key)
