"""Active health checking (Envoy's): a TCP connect, or an HTTP/1.1 GET through greenmesh's own
HTTP/1.1 client codec whose status must be in an expected range; a host flips out after so
many failures in a row and back after so many successes."""

from __future__ import annotations

from collections.abc import Callable

import gevent

from greenmesh import model
from greenmesh.conn import Conn, ConnError
from greenmesh.logger import get_logger
from greenmesh.streams import Registry
from greenmesh.streams.base import RequestHead, StreamError
from greenmesh.upstream.host import Host

USER_AGENT = b"greenmesh-health-check"
log = get_logger("greenmesh.health")


def probe(host: Host, hc: model.HealthCheck, cluster: str, registry: Registry) -> bool:
    """One check of one host."""
    try:
        conn = Conn.connect(host.address.host, host.address.port, hc.timeout)
    except ConnError:
        return False
    try:
        if hc.http_path is None:
            return True
        stream = registry.get("http1").client(conn, None).new_stream(lambda cc, reusable: None)
        # Envoy's default Host for a health check is the cluster's name.
        stream.send_headers(RequestHead(b"GET", hc.http_path.encode(), cluster.encode(), b"http",
                                        [(b"user-agent", USER_AGENT),
                                         (b"connection", b"close")]), end_stream=True)
        status = stream.read_headers(hc.timeout).status
        while status < 200:
            status = stream.read_headers(hc.timeout).status
        return any(start <= status < end for start, end in hc.expected_statuses)
    except StreamError:
        return False
    finally:
        conn.close("health check done")


def check(host: Host, hc: model.HealthCheck, cluster: str, registry: Registry,
          count: Callable[[str], None] = lambda name: None) -> bool:
    """Checks a host and counts the result (``count``: the cluster's health_check.* stat);
    True if the host flipped in or out, which is logged with why."""
    state = host.health
    if probe(host, hc, cluster, registry):
        count("success")
        state.checks_failed = 0
        state.checks_ok += 1
        if state.check_failed and state.checks_ok >= hc.healthy_threshold:
            state.check_failed = False
            log.info("host_healthy", cluster=cluster, host=host.label,
                     reason=f"{state.checks_ok} health checks passed in a row")
            return True
    else:
        count("failure")
        state.checks_ok = 0
        state.checks_failed += 1
        if not state.check_failed and state.checks_failed >= hc.unhealthy_threshold:
            state.check_failed = True
            log.info("host_unhealthy", cluster=cluster, host=host.label,
                     reason=f"{state.checks_failed} health checks failed in a row")
            return True
    return False


def check_loop(name: str, hosts: Callable[[], tuple[model.HealthCheck, tuple[Host, ...]] | None],
               on_flip: Callable[[], None], registry: Registry,
               count: Callable[[str], None] = lambda name: None) -> None:
    """Checks a cluster's hosts every interval, for as long as ``hosts()`` says it has a check;
    ``on_flip`` runs after a round in which a host went in or out."""
    while True:
        current = hosts()
        if current is None:
            return
        hc, members = current
        jobs = [gevent.spawn(check, h, hc, name, registry, count) for h in members]
        gevent.joinall(jobs, timeout=hc.timeout + 1)
        if any(j.value for j in jobs):
            on_flip()
        gevent.sleep(hc.interval)
