"""The cluster manager: clusters, their hosts and load balancers, swapped whole under a lock.

Readers take ``get(name)`` once per request and keep that snapshot for the request's life, so an
update never shows a request half of the old host set and half of the new. A host that stays
keeps its pool (and its warm connections); a host that goes drains: its streams in flight
finish, then its connections close.
"""

from __future__ import annotations

import bisect
import random
import threading
import time
from collections.abc import Iterable

import gevent

from greenmesh import model, tls
from greenmesh.conn import Conn, ConnError
from greenmesh.cooperate import Slicer
from greenmesh.lb import POLICIES
from greenmesh.pool import Load, Pool, make_pool
from greenmesh.stats import Stats
from greenmesh.streams import Registry


class HostHealth:
    """What is known about an address's health; it outlives snapshot rebuilds."""

    __slots__ = ("consecutive_5xx", "consecutive_gateway", "ejections", "ejected_until",
                 "check_failed", "checks_ok", "checks_failed")

    def __init__(self) -> None:
        self.consecutive_5xx = 0
        self.consecutive_gateway = 0
        self.ejections = 0
        self.ejected_until = 0.0
        self.check_failed = False  # by active health checking
        self.checks_ok = 0
        self.checks_failed = 0


class Host:
    __slots__ = ("address", "weight", "pool", "health", "priority")

    def __init__(self, address: model.Address, weight: int, pool: Pool,
                 health: HostHealth | None = None, priority: int = 0):
        self.address = address
        self.weight = weight
        self.pool = pool
        self.health = health or HostHealth()
        self.priority = priority

    @property
    def active(self) -> int:
        return self.pool.active

    def available(self, now: float) -> bool:
        health = self.health
        return not health.check_failed and now >= health.ejected_until


class ClusterSnapshot:
    """One cluster as requests see it: immutable once published. Its load balancer covers
    the available hosts, or all of them in panic (under half available, as Envoy)."""

    __slots__ = ("config", "hosts", "lb", "name", "manager", "load")

    def __init__(self, config: model.Cluster, hosts: tuple[Host, ...],
                 manager: ClusterManager | None = None, load: Load | None = None):
        self.config = config
        self.name = config.name
        self.hosts = hosts
        self.manager = manager
        self.load = load or Load()
        now = time.monotonic()
        available = [h for h in hosts if h.available(now)]
        policy = POLICIES[config.lb_policy]
        if len(available) * 2 < len(hosts):
            self.lb = policy(list(hosts))  # panic: spread over everything, not overload few
        elif any(h.priority for h in hosts):
            self.lb = PriorityLoad(hosts, available, policy)
        else:
            self.lb = policy(available)

    def record(self, host: Host, status: int) -> None:
        """An upstream outcome (a status, or 0 for a connect failure or reset), for outlier
        detection."""
        od = self.config.outlier_detection
        if od is None:
            return
        h = host.health
        failed = status == 0 or status >= 500
        gateway = status == 0 or status in (502, 503, 504)
        h.consecutive_5xx = h.consecutive_5xx + 1 if failed else 0
        h.consecutive_gateway = h.consecutive_gateway + 1 if gateway else 0
        if ((od.consecutive_5xx and h.consecutive_5xx >= od.consecutive_5xx) or
                (od.consecutive_gateway_failure
                 and h.consecutive_gateway >= od.consecutive_gateway_failure)):
            if self.manager is not None:
                self.manager.eject(self.name, host)


def _probe(host: Host, hc: model.HealthCheck, cluster: str) -> bool:
    """One check: a TCP connect, or an HTTP GET whose status is in an expected range."""
    try:
        conn = Conn.connect(host.address.host, host.address.port, hc.timeout)
    except ConnError:
        return False
    try:
        if hc.http_path is None:
            return True
        conn.write(b"GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: greenmesh-health-check\r\n"
                   b"Connection: close\r\n\r\n" % (hc.http_path.encode(), cluster.encode()))
        data = b""
        while b"\r\n" not in data and len(data) < 1024:
            chunk = conn.read(hc.timeout)
            if not chunk:
                return False
            data += chunk
        parts = data.split(b" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        return any(start <= status < end for start, end in hc.expected_statuses)
    except ConnError:
        return False
    finally:
        conn.close("health check done")


def _check_host(host: Host, hc: model.HealthCheck, cluster: str) -> bool:
    """Checks a host and counts the result; True if the host flipped in or out."""
    state = host.health
    if _probe(host, hc, cluster):
        state.checks_failed = 0
        state.checks_ok += 1
        if state.check_failed and state.checks_ok >= hc.healthy_threshold:
            state.check_failed = False
            return True
    else:
        state.checks_ok = 0
        state.checks_failed += 1
        if not state.check_failed and state.checks_failed >= hc.unhealthy_threshold:
            state.check_failed = True
            return True
    return False


OVERPROVISIONING = 1.4  # Envoy's default overprovisioning factor


class PriorityLoad:
    """Envoy's priority levels: each level takes its available share x 1.4 of what is left,
    level 0 first, so traffic spills to the next level only as hosts become unavailable."""

    __slots__ = ("levels", "_cumulative")

    def __init__(self, hosts, available, policy) -> None:
        by_level: dict[int, list] = {}
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
        self._cumulative, acc = [], 0.0
        for _, s in shares:
            acc += s / total
            self._cumulative.append(acc)

    def pick(self, key: int | None = None):
        if not self.levels:
            return None
        i = bisect.bisect_left(self._cumulative, random.random())
        return self.levels[min(i, len(self.levels) - 1)].pick(key)


def _pool_settings(c: model.Cluster) -> tuple:
    """What a pool depends on: a change here means new pools, not reused ones."""
    return (c.protocol, c.connect_timeout, c.max_connections, c.max_pending_requests,
            c.idle_timeout, c.tls)


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
        health = {h.address: h.health for h in old.hosts} if old is not None else {}
        same = old is not None and _pool_settings(old.config) == _pool_settings(config)
        if same:
            reusable = {h.address: h.pool for h in old.hosts}
        protocol = self._registry.get(config.protocol)
        ctx = (tls.client_context(config.tls, [protocol.alpn] if protocol.alpn else [])
               if config.tls else None)
        load = old.load if same else Load()
        hosts = []
        slicer = Slicer()  # a big host set is built while traffic keeps flowing
        for ep in config.endpoints:
            slicer.tick()
            pool = reusable.get(ep.address) or make_pool(ep.address, protocol, config,
                                                         self._stats, ctx, load)
            hosts.append(Host(ep.address, ep.weight, pool, health.get(ep.address), ep.priority))
        return ClusterSnapshot(config, tuple(hosts), self, load)

    def eject(self, name: str, host: Host) -> None:
        """Outlier ejection: out of the balancer for base_ejection_time x ejections so far."""
        snapshot = self._clusters.get(name)
        od = snapshot.config.outlier_detection if snapshot is not None else None
        if od is None or host not in snapshot.hosts:
            return
        now = time.monotonic()
        ejected = sum(1 for h in snapshot.hosts if not h.available(now))
        if ejected and (ejected + 1) * 100 > od.max_ejection_percent * len(snapshot.hosts):
            return  # the cap: but one host may always go
        h = host.health
        h.ejections += 1
        duration = min(od.base_ejection_time * h.ejections, od.max_ejection_time)
        h.ejected_until = now + duration
        h.consecutive_5xx = h.consecutive_gateway = 0
        self._stats.inc(f"cluster.{name}.outlier_detection.ejections_total")
        self.refresh(name)
        gevent.spawn_later(duration, self.refresh, name)

    def refresh(self, name: str) -> None:
        """A new snapshot of the same hosts whose balancer sees who is available now."""
        with self._lock:
            old = self._clusters.get(name)
            if old is None:
                return
            new = dict(self._clusters)
            new[name] = ClusterSnapshot(old.config, old.hosts, self, old.load)
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
                self._checkers[name] = (hc, gevent.spawn(self._check_loop, name))

    def _check_loop(self, name: str) -> None:
        while True:
            snapshot = self._clusters.get(name)
            if snapshot is None or snapshot.config.health_check is None:
                return
            hc = snapshot.config.health_check
            jobs = [gevent.spawn(_check_host, h, hc, name) for h in snapshot.hosts]
            gevent.joinall(jobs, timeout=hc.timeout + 1)
            if any(j.value for j in jobs):
                self.refresh(name)
            gevent.sleep(hc.interval)

    def replace_all(self, clusters: Iterable[model.Cluster]) -> None:
        clusters = list(clusters)
        keep = {c.name for c in clusters}
        self.update(clusters, remove=[n for n in self._clusters if n not in keep])

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
