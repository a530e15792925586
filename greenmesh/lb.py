"""Load-balancing policies: pick one host from an immutable host tuple."""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import Protocol as _Proto


class Weighted(_Proto):
    weight: int


class RoundRobin:
    """Plain rotation when weights are equal; earliest-deadline-first (Envoy's way) otherwise.

    EDF keeps each pick O(log n) however many hosts there are, where expanding weights into a
    list would cost memory in the sum of the weights.
    """

    __slots__ = ("hosts", "_next", "_heap", "_seq")

    def __init__(self, hosts: Sequence[Weighted]):
        self.hosts = tuple(hosts)
        self._next = 0
        self._seq = 0
        self._heap: list | None = None
        if len({h.weight for h in self.hosts}) > 1:
            self._heap = [(1.0 / h.weight, i, h) for i, h in enumerate(self.hosts)]
            heapq.heapify(self._heap)
            self._seq = len(self.hosts)

    def pick(self) -> Weighted | None:
        hosts = self.hosts
        if not hosts:
            return None
        heap = self._heap
        if heap is None:
            i = self._next
            self._next = i + 1 if i + 1 < len(hosts) else 0
            return hosts[i]
        deadline, _, host = heap[0]
        self._seq += 1
        heapq.heapreplace(heap, (deadline + 1.0 / host.weight, self._seq, host))
        return host


POLICIES = {"round_robin": RoundRobin}
