"""Stopping gracefully, and the admin endpoints."""

from __future__ import annotations

import http.client
import signal
import socket
import threading
import time

import pytest

from tests.harness import mesh_config


def test_sigterm_drains_requests_in_flight(upstream, start_mesh):
    gm = start_mesh(mesh_config([upstream.address], listener={}) | {"drain_timeout": "5s"})
    result = {}

    def slow():
        conn = http.client.HTTPConnection("127.0.0.1", gm.port(), timeout=10)
        conn.request("GET", "/delay/1")
        resp = conn.getresponse()
        result["status"], result["body"] = resp.status, resp.read()
        result["connection"] = resp.getheader("connection")
    t = threading.Thread(target=slow)
    t.start()
    idle = socket.create_connection(("127.0.0.1", gm.port()))  # keep-alive, between requests
    time.sleep(0.3)
    gm.stopped_by_test = True
    gm.proc.send_signal(signal.SIGTERM)
    assert idle.recv(10) == b""  # an idle connection is closed at once
    time.sleep(0.2)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", gm.port()), timeout=1)
    t.join(10)
    assert result == {"status": 200, "body": b"late\n", "connection": "close"}
    assert gm.proc.wait(10) == 0


def test_admin_endpoints(upstream, start_mesh):
    cfg = mesh_config([upstream.address])
    gm = start_mesh(cfg)
    admin = int(cfg["admin"]["address"].rsplit(":", 1)[1])

    def get(path: str) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=5)
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    conn = http.client.HTTPConnection("127.0.0.1", gm.port(), timeout=5)
    conn.request("GET", "/")
    conn.getresponse().read()
    assert get("/ready") == (200, "LIVE\n")
    status, stats = get("/stats")
    assert status == 200 and "downstream_rq_2xx: 1\n" in stats
    assert "cluster.backend.upstream_cx_total: 1\n" in stats
    status, clusters = get("/clusters")
    assert f"backend::{upstream.address}::cx_idle::1\n" in clusters
    status, dump = get("/config_dump")
    assert status == 200 and '"name": "backend"' in dump
    assert get("/nope")[0] == 404
