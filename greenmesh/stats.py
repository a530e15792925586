"""Counters, per Mesh instance (no module-level state): what the admin /stats page shows."""

from __future__ import annotations

from collections import defaultdict


class Stats:
    __slots__ = ("counters",)

    def __init__(self) -> None:
        self.counters: defaultdict[str, int] = defaultdict(int)

    def inc(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def set(self, name: str, value: int) -> None:
        """A gauge (Envoy's gauges and counters share the page)."""
        self.counters[name] = value

    def get(self, name: str) -> int:
        return self.counters.get(name, 0)

    def render(self) -> str:
        return "".join(f"{k}: {v}\n" for k, v in sorted(self.counters.items()))
