"""The cluster manager: clusters, their hosts and load balancers, swapped whole under a lock.

Readers take ``get(name)`` once per request and keep that snapshot for the request's life, so an
update never shows a request half of the old host set and half of the new. A host that stays
keeps its pool (and its warm connections) and its health; a host that goes drains: its streams
in flight finish, then its connections close.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterable

import gevent

from greenmesh import model, tls
from greenmesh.cooperate import Slicer
from greenmesh.logger import get_logger
from greenmesh.stats import RequestStats, Stats
from greenmesh.streams import Registry
from greenmesh.upstream import health, outlier
from greenmesh.upstream.breakers import Breakers
from greenmesh.upstream.cluster import ClusterSnapshot
from greenmesh.upstream.host import Host, HostHealth
from greenmesh.upstream.pool import Pool, make_pool

log = get_logger("greenmesh.upstream")


def _pool_settings(c: model.Cluster) -> tuple:
    """What a pool depends on: a change here means new pools, not reused ones."""
    return (c.protocol, c.connect_timeout, c.idle_timeout, c.tls, c.max_concurrent_streams,
            c.keepalive_interval)


class ClusterManager:
    def __init__(self, registry: Registry, stats: Stats, sweep_interval: float = 5.0):
        self._registry = registry
        self._stats = stats
        self._lock = threading.Lock()
        self._clusters: dict[str, ClusterSnapshot] = {}
        self._sweep_interval = sweep_interval
        self._sweeper: gevent.Greenlet | None = None
        self._checkers: dict[str, tuple[model.HealthCheck, gevent.Greenlet]] = {}

    def get(self, name: str) -> ClusterSnapshot | None:
        return self._clusters.get(name)

    def names(self) -> list[str]:
        return sorted(self._clusters)

    def snapshot(self) -> dict[str, ClusterSnapshot]:
        return self._clusters

    def _build(self, config: model.Cluster, old: ClusterSnapshot | None) -> ClusterSnapshot:
        reusable: dict[model.Address, Pool] = {}
        healths: dict[model.Address, HostHealth] = (
            {h.address: h.health for h in old.hosts} if old is not None else {})
        if old is not None and _pool_settings(old.config) == _pool_settings(config):
            reusable = {h.address: h.pool for h in old.hosts}
        breakers = old.breakers if old is not None else Breakers(config.circuit_breakers)
        breakers.limits = config.circuit_breakers
        protocol = self._registry.get(config.protocol)
        ctx = (tls.client_context(config.tls, [protocol.alpn] if protocol.alpn else [])
               if config.tls else None)
        hosts = []
        slicer = Slicer()  # a big host set is built while traffic keeps flowing
        for ep in config.endpoints:
            slicer.tick()
            pool = reusable.get(ep.address) or make_pool(ep.address, protocol, config,
                                                         self._stats, ctx, breakers)
            hosts.append(Host(ep.address, ep.weight, pool, healths.get(ep.address), ep.priority,
                              ep.locality))
        stats = (old.stats if old is not None else None) or RequestStats(
            self._stats, f"cluster.{config.name}.upstream_", active=False)
        return ClusterSnapshot(config, tuple(hosts), self, breakers, stats)

    def record(self, name: str, host: Host, status: int) -> None:
        """An upstream outcome for outlier detection; the host is matched by address, so a
        request that started on an older snapshot still counts for it."""
        snapshot = self._clusters.get(name)
        od = snapshot.config.outlier_detection if snapshot is not None else None
        health = host.health
        if od is None or snapshot is None or not outlier.record(od, health, status):
            return
        if not any(h.address == host.address for h in snapshot.hosts):
            return  # the host has left the cluster
        # Why, before ejecting resets the counts: the 5xx run unless only the gateway one is due.
        reason = (f"{health.consecutive_5xx} consecutive 5xx"
                  if 0 < od.consecutive_5xx <= health.consecutive_5xx else
                  f"{health.consecutive_gateway} consecutive gateway failures")
        duration = outlier.eject(od, host.health, [h.health for h in snapshot.hosts],
                                 time.monotonic())
        if duration is None:
            return
        self._stats.inc(f"cluster.{name}.outlier_detection.ejections_total")
        log.info("host_ejected", cluster=name, host=host.label, seconds=round(duration, 3),
                 reason=reason, ejections=health.ejections)
        self.refresh(name)
        gevent.spawn_later(duration, self._returned, name, host)

    def _returned(self, name: str, host: Host) -> None:
        """An ejection's time is over: the host is back in the balancer."""
        log.info("host_returned", cluster=name, host=host.label, reason="ejection time over")
        self.refresh(name)

    def refresh(self, name: str) -> None:
        """A new snapshot of the same hosts whose balancer sees who is available now."""
        with self._lock:
            old = self._clusters.get(name)
            if old is None:
                return
            new = dict(self._clusters)
            new[name] = ClusterSnapshot(old.config, old.hosts, self, old.breakers, old.stats)
            self._clusters = new

    def update(self, clusters: Iterable[model.Cluster], remove: Iterable[str] = ()) -> None:
        """Adds or replaces the given clusters and removes the named ones, in one swap.

        The new snapshots are built off to the side (yielding to traffic on big host sets)
        and swapped in one assignment under the lock; if another update swapped first, they
        are built again on top of it."""
        clusters = list(clusters)
        while True:
            old = self._clusters
            built = [self._build(config, old.get(config.name)) for config in clusters]
            with self._lock:
                if self._clusters is not old:
                    continue
                new = dict(old)
                for name in remove:
                    new.pop(name, None)
                for snapshot in built:
                    new[snapshot.name] = snapshot
                self._clusters = new
                break
        self._drain_retired(old, new)
        self._sync_checkers()

    def replace_all(self, clusters: Iterable[model.Cluster]) -> None:
        clusters = list(clusters)
        keep = {c.name for c in clusters}
        self.update(clusters, remove=[n for n in self._clusters if n not in keep])

    def _sync_checkers(self) -> None:
        """One health-checking greenlet per cluster that asks for it, restarted on change."""
        wanted = {n: c.config.health_check for n, c in self._clusters.items()
                  if c.config.health_check is not None}
        for name, (hc, g) in list(self._checkers.items()):
            if wanted.get(name) != hc:
                g.kill(block=False)
                del self._checkers[name]
        for name, hc in wanted.items():
            if name not in self._checkers:
                self._checkers[name] = (hc, gevent.spawn(
                    health.check_loop, name, functools.partial(self._checked_hosts, name),
                    functools.partial(self.refresh, name), self._registry,
                    functools.partial(self._count, f"cluster.{name}.health_check.")))

    def _count(self, prefix: str, name: str) -> None:
        self._stats.inc(prefix + name)

    def _checked_hosts(self, name: str) -> tuple[model.HealthCheck, tuple[Host, ...]] | None:
        snapshot = self._clusters.get(name)
        if snapshot is None or snapshot.config.health_check is None:
            return None
        return snapshot.config.health_check, snapshot.hosts

    @staticmethod
    def _drain_retired(old: dict[str, ClusterSnapshot], new: dict[str, ClusterSnapshot]) -> None:
        slicer = Slicer()
        live = {id(h.pool) for c in new.values() for h in c.hosts}
        for c in old.values():
            for h in c.hosts:
                slicer.tick()
                if id(h.pool) not in live:
                    h.pool.drain()

    def start(self) -> None:
        self._sweeper = gevent.spawn(self._sweep_loop)

    def _sweep_loop(self) -> None:
        while True:
            gevent.sleep(self._sweep_interval)
            now = time.monotonic()
            for c in self._clusters.values():
                for h in c.hosts:
                    h.pool.sweep(now)

    def close(self) -> None:
        for _, g in self._checkers.values():
            g.kill(block=False)
        self._checkers.clear()
        if self._sweeper is not None:
            self._sweeper.kill()
            self._sweeper = None
        with self._lock:
            old, self._clusters = self._clusters, {}
        self._drain_retired(old, {})
