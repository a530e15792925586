"""Load-balancing policies: pick one host from an immutable host tuple.

Hosts need ``weight`` and, for least_request, ``active`` (requests in flight). Hash-based
policies take the request's hash key (from the route's hash policy) and fall back to a random
pick when there is none, as Envoy does.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import random
from collections.abc import Callable, Sequence
from typing import Protocol as _Proto


class Weighted(_Proto):
    """What a balancer needs of a host."""

    weight: int
    priority: int

    @property
    def active(self) -> int: ...


class Balancer(_Proto):
    hosts: tuple[Weighted, ...]

    def pick(self, key: int | None = None) -> Weighted | None: ...


def stable_hash(data: bytes) -> int:
    """A 64-bit hash that is the same in every process (Python's hash() is salted per
    process), so every greenmesh instance maps a key to the same host."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


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

    def pick(self, key: int | None = None) -> Weighted | None:
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


class Random:
    __slots__ = ("hosts", "_cumulative", "_total")

    def __init__(self, hosts: Sequence[Weighted]):
        self.hosts = tuple(hosts)
        self._cumulative: list[int] = []
        total = 0
        for h in self.hosts:
            total += h.weight
            self._cumulative.append(total)
        self._total = total

    def pick(self, key: int | None = None) -> Weighted | None:
        if not self.hosts:
            return None
        return self.hosts[bisect.bisect_right(self._cumulative, random.random() * self._total)]


class LeastRequest:
    """Power of two choices: of two random hosts, the one with fewer requests in flight
    (relative to its weight when weights differ)."""

    __slots__ = ("hosts", "_weighted")

    def __init__(self, hosts: Sequence[Weighted]):
        self.hosts = tuple(hosts)
        self._weighted = len({h.weight for h in self.hosts}) > 1

    def pick(self, key: int | None = None) -> Weighted | None:
        hosts = self.hosts
        n = len(hosts)
        if n < 2:
            return hosts[0] if hosts else None
        a, b = hosts[random.randrange(n)], hosts[random.randrange(n)]
        if self._weighted:
            return a if (a.active + 1) / a.weight <= (b.active + 1) / b.weight else b
        return a if a.active <= b.active else b


class RingHash:
    """Consistent hashing on a ring (Ketama-style): each host owns points in proportion to
    its weight; a key goes to the next point clockwise. Removing a host moves only its keys."""

    __slots__ = ("hosts", "_points", "_owners")
    MIN_RING = 1024

    def __init__(self, hosts: Sequence[Weighted]):
        self.hosts = tuple(hosts)
        ring: list[tuple[int, int]] = []
        total = sum(h.weight for h in self.hosts) or 1
        per_weight = max(1, -(-self.MIN_RING // total))
        for i, h in enumerate(self.hosts):
            name = str(getattr(h, "address", i)).encode()
            for j in range(h.weight * per_weight):
                ring.append((stable_hash(b"%s_%d" % (name, j)), i))
        ring.sort()
        self._points = [p for p, _ in ring]
        self._owners = [i for _, i in ring]

    def pick(self, key: int | None = None) -> Weighted | None:
        if not self.hosts:
            return None
        if key is None:
            return random.choice(self.hosts)
        i = bisect.bisect_left(self._points, key)
        return self.hosts[self._owners[i if i < len(self._points) else 0]]


class Maglev:
    """Google's Maglev table (as Envoy's): a fixed-size lookup table filled from each host's
    permutation, so keys spread evenly and a host change moves few of them."""

    __slots__ = ("hosts", "_table")
    SIZE = 65537  # prime, Envoy's default

    def __init__(self, hosts: Sequence[Weighted]):
        self.hosts = tuple(hosts)
        self._table: list[int] = []
        if not self.hosts:
            return
        m = self.SIZE
        offsets, skips, nexts = [], [], []
        for i, h in enumerate(self.hosts):
            name = str(getattr(h, "address", i)).encode()
            offsets.append(stable_hash(name + b"#offset") % m)
            skips.append(stable_hash(name + b"#skip") % (m - 1) + 1)
            nexts.append(0)
        table = [-1] * m
        top = max(h.weight for h in self.hosts)
        credit = [0.0] * len(self.hosts)
        filled = 0
        while filled < m:
            for i, h in enumerate(self.hosts):
                credit[i] += h.weight / top  # lighter hosts earn their turns more slowly
                if credit[i] < 1.0:
                    continue
                credit[i] -= 1.0
                while True:
                    c = (offsets[i] + nexts[i] * skips[i]) % m
                    nexts[i] += 1
                    if table[c] < 0:
                        table[c] = i
                        filled += 1
                        break
                if filled == m:
                    break
        self._table = table

    def pick(self, key: int | None = None) -> Weighted | None:
        if not self.hosts:
            return None
        if key is None:
            return random.choice(self.hosts)
        return self.hosts[self._table[key % self.SIZE]]


POLICIES: dict[str, Callable[[Sequence[Weighted]], Balancer]] = {
    "round_robin": RoundRobin, "random": Random, "least_request": LeastRequest,
            "ring_hash": RingHash, "maglev": Maglev}
