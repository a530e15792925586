"""Stopping gracefully, and the admin endpoints."""

from __future__ import annotations

import http.client
import signal
import socket
import threading

import pytest

from tests.harness import mesh_config, until


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
    idle.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = b""
    while not answer.endswith(b"hello from up1\n"):  # the whole response, head and body
        answer += idle.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200")
    assert until(lambda: gm.host_stat("backend", upstream.address, "rq_active") == 1)
    gm.stopped_by_test = True
    gm.proc.send_signal(signal.SIGTERM)
    assert idle.recv(10) == b""  # an idle connection is closed at once (after the listener)
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
    assert status == 200 and "http.ingress.downstream_rq_2xx: 1\n" in stats
    assert "cluster.backend.upstream_cx_total: 1\n" in stats
    status, clusters = get("/clusters")
    assert f"backend::{upstream.address}::cx_idle::1\n" in clusters
    status, dump = get("/config_dump")
    assert status == 200 and '"name": "backend"' in dump
    assert get("/nope")[0] == 404


def test_greenmesh_says_what_to_try_from_the_config_it_loaded(upstream, start_mesh):
    cfg = mesh_config([upstream.address], listener={"protocol": "auto"})
    gm = start_mesh(cfg)
    [line] = gm.wait_log("try")
    assert line["commands"] == [f"curl -i http://127.0.0.1:{gm.port()}/",
                                f"curl -i --http2-prior-knowledge http://127.0.0.1:{gm.port()}/",
                                f"curl http://127.0.0.1:{gm.admin_port}/help"]
    [started] = gm.wait_log("mesh_started")
    assert started["listeners"] == {"ingress": f"127.0.0.1:{gm.port()}"}
    assert started["admin"] == f"127.0.0.1:{gm.admin_port}" and started["workers"] == 1
    assert started["version"]
