"""Counters, gauges and latency histograms, per Mesh instance (no module-level state): what
the admin pages show (/stats, /stats?format=json, /stats/prometheus).

Names are Envoy's, dotted by scope (``cluster.<name>.upstream_rq_2xx``,
``http.<listener>.downstream_rq_total``), so that dashboards and habits carry over; the
Prometheus page turns the scope's name into a label as Envoy's tag extraction does.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from typing import Final

# Envoy's default histogram bucket bounds, in milliseconds.
BUCKETS: Final = (0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0,
                  5000.0, 10000.0, 30000.0, 60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0)
QUANTILES: Final = (0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 1.0)


class Histogram:
    """Counts per bucket (the last one past every bound) and the sum, in milliseconds."""

    __slots__ = ("counts", "sum", "count")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0
        self.count = 0

    def record(self, ms: float) -> None:
        self.counts[bisect_left(BUCKETS, ms)] += 1
        self.sum += ms
        self.count += 1

    def cumulative(self) -> list[int]:
        """Observations at or under each bound, then all of them (Prometheus's ``le``)."""
        out, total = [], 0
        for n in self.counts:
            total += n
            out.append(total)
        return out

    def quantile(self, q: float) -> float | None:
        """Estimated by linear interpolation inside the bucket that holds it, as Prometheus's
        histogram_quantile does; None with no observations."""
        if not self.count:
            return None
        rank = q * self.count
        below = 0
        lower = 0.0
        for i, n in enumerate(self.counts):
            if n and below + n >= rank:
                if i == len(BUCKETS):
                    return lower  # past the last bound: the last bound is all that is known
                upper = BUCKETS[i]
                return lower + (upper - lower) * max(0.0, rank - below) / n
            below += n
            lower = BUCKETS[i] if i < len(BUCKETS) else lower
        return lower


class Stats:
    """Counters and gauges share one map (Envoy's /stats page lists both); gauges are the names
    given to ``set`` or ``add``, so the Prometheus page can type them."""

    __slots__ = ("counters", "gauges", "histograms")

    def __init__(self) -> None:
        self.counters: defaultdict[str, int] = defaultdict(int)
        self.gauges: set[str] = set()
        self.histograms: dict[str, Histogram] = {}

    def inc(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def set(self, name: str, value: int) -> None:
        """A gauge's value."""
        self.counters[name] = value
        self.gauges.add(name)

    def add(self, name: str, n: int) -> None:
        """Moves a gauge up or down (requests active...)."""
        self.counters[name] += n
        self.gauges.add(name)

    def get(self, name: str) -> int:
        return self.counters.get(name, 0)

    def histogram(self, name: str) -> Histogram:
        h = self.histograms.get(name)
        if h is None:
            h = self.histograms[name] = Histogram()
        return h

    def render(self) -> str:
        """Envoy's /stats text: ``name: value``, histograms with their quantiles."""
        lines = [f"{k}: {v}\n" for k, v in sorted(self.counters.items())]
        for name, h in sorted(self.histograms.items()):
            qs = " ".join(f"P{q * 100:g}({_ms(h.quantile(q))})" for q in QUANTILES)
            lines.append(f"{name}: {qs} count={h.count} sum={h.sum:g}\n")
        return "".join(lines)

    def as_json(self) -> dict:
        """Envoy's /stats?format=json shape: ``{"stats": [{name, value}..., {"histograms":
        {supported_quantiles, computed_quantiles}}]}`` (cumulative values)."""
        out: list[dict] = [{"name": k, "value": v} for k, v in sorted(self.counters.items())]
        out.append({"histograms": {
            "supported_quantiles": [q * 100 for q in QUANTILES],
            "computed_quantiles": [
                {"name": name, "values": [{"cumulative": h.quantile(q)} for q in QUANTILES]}
                for name, h in sorted(self.histograms.items())]}})
        return {"stats": out}


def _ms(value: float | None) -> str:
    return "nan" if value is None else f"{value:g}"


class RequestStats:
    """One scope's per-request counters with their keys formatted once (never per request):
    ``<prefix>rq_total``, ``<prefix>rq_<c>xx``, ``<prefix>rq_active`` and the
    ``<prefix>rq_time`` histogram. ``prefix``: ``http.<listener>.downstream_`` or
    ``cluster.<name>.upstream_``."""

    __slots__ = ("stats", "prefix", "_total", "_classes", "_active", "time")

    def __init__(self, stats: Stats, prefix: str, active: bool = True):
        """``active``: keep the rq_active gauge here (else it is measured when asked)."""
        self.stats = stats
        self.prefix = prefix
        self._total = prefix + "rq_total"
        self._classes = tuple(f"{prefix}rq_{c}xx" for c in range(6))
        self._active = prefix + "rq_active" if active else ""
        self.time = stats.histogram(prefix + "rq_time")
        stats.inc(self._total, 0)  # listed from the start, as Envoy's are
        if active:
            stats.add(self._active, 0)

    def start(self) -> None:
        self.stats.counters[self._active] += 1

    def done(self, status: int, seconds: float | None) -> None:
        """A request over (counted in by ``start`` when the gauge is kept here): counted, its
        class counted (none for 0: reset before any answer), its time recorded (if known)."""
        counters = self.stats.counters
        counters[self._total] += 1
        if 0 < status < 600:
            counters[self._classes[status // 100]] += 1
        if self._active:
            counters[self._active] -= 1
        if seconds is not None:
            self.time.record(seconds * 1000.0)

    def refused(self, status: int) -> None:
        """A request answered before it became a stream (a codec's 400): counted, not timed."""
        counters = self.stats.counters
        counters[self._total] += 1
        counters[self._classes[status // 100]] += 1

    def count(self, name: str) -> None:
        """A rarer counter of the scope (``rq_timeout``...), formatted when it happens."""
        self.stats.counters[self.prefix + name] += 1
