"""Workers: processes sharing the listening addresses (SO_REUSEPORT) under a parent that
restarts one that dies, drains them all on SIGTERM, and answers admin for the set."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import mesh_config, parse_stats, until

pytestmark = pytest.mark.source_only  # config, xDS, admin, workers, reload: see conftest.py


def admin(gm, path: str, method: str = "GET") -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", gm.admin_port, timeout=10)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def get(port: int, path: str = "/") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def two_workers(upstream, start_mesh):
    cfg = mesh_config([upstream.address])
    cfg["workers"] = 2
    gm = start_mesh(cfg)
    assert until(lambda: admin(gm, "/ready")[0] == 200)
    return gm


def test_connections_reach_both_workers_and_admin_sums_them(upstream, start_mesh):
    gm = two_workers(upstream, start_mesh)
    sent = 0

    def both_served() -> bool:
        nonlocal sent
        assert get(gm.port()) == 200 and sent < 200  # new connections: the kernel spreads them
        sent += 1
        stats = parse_stats(admin(gm, "/stats?filter=downstream_rq_total")[1])
        return all(stats.get(f"worker.{i}.http.ingress.downstream_rq_total", 0) > 0
                   for i in (0, 1))
    assert until(both_served)
    stats = parse_stats(admin(gm, "/stats")[1])
    assert stats["http.ingress.downstream_rq_total"] == sent == (
        stats["worker.0.http.ingress.downstream_rq_total"]
        + stats["worker.1.http.ingress.downstream_rq_total"])
    families = {f.name: f for f in text_string_to_metric_families(
        admin(gm, "/stats/prometheus")[1])}
    [total] = families["envoy_http_downstream_rq"].samples
    assert total.value == sent
    info = json.loads(admin(gm, "/server_info")[1])
    assert info["workers"] == 2 and info["state"] == "LIVE" and len(info["worker_pids"]) == 2
    [started] = gm.wait_log("workers_started")
    assert started["workers"] == 2
    assert len([e for e in gm.logs() if e.get("event") == "mesh_started"]) == 2


def test_a_killed_worker_is_replaced(upstream, start_mesh):
    gm = two_workers(upstream, start_mesh)
    pids = json.loads(admin(gm, "/server_info")[1])["worker_pids"]
    os.kill(pids[0], signal.SIGKILL)
    [died] = gm.wait_log("worker_died")
    assert (died["worker"], died["pid"], died["exit_code"]) == (0, pids[0], -signal.SIGKILL)
    [restarted] = gm.wait_log("worker_restarted")
    assert restarted["pid"] not in pids
    assert until(lambda: admin(gm, "/ready")[0] == 200)
    assert all(get(gm.port()) == 200 for _ in range(10))


def test_sigterm_drains_every_worker_losing_no_accepted_request(upstream, start_mesh):
    gm = two_workers(upstream, start_mesh)
    results: list[int] = []
    socks = []
    for _ in range(8):  # accepted by either worker, each waiting on a slow upstream
        s = socket.create_connection(("127.0.0.1", gm.port()), timeout=10)
        s.sendall(b"GET /delay/1 HTTP/1.1\r\nHost: x\r\n\r\n")
        socks.append(s)

    def read(s: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        results.append(int(data.split(b" ", 2)[1]) if data else 0)
    readers = [threading.Thread(target=read, args=(s,)) for s in socks]
    for t in readers:
        t.start()
    stats = lambda: parse_stats(admin(gm, "/stats?filter=rq_active")[1])  # noqa: E731
    assert until(lambda: stats().get("http.ingress.downstream_rq_active") == 8)
    gm.proc.send_signal(signal.SIGTERM)
    for t in readers:
        t.join(15)
    assert results == [200] * 8
    assert gm.proc.wait(15) == 0
    gm.stopped_by_test = True
    assert gm.wait_log("workers_stopped")
    for s in socks:
        s.close()
