"""Upstream pool limits and timeouts, and that abuse leaves no socket behind."""

from __future__ import annotations

import http.client
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from tests.harness import RawUpstream, mesh_config, raw_request


def get(port: int, path: str = "/", timeout: float = 10) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("GET", path)
    resp = conn.getresponse()
    resp.body = resp.read()
    conn.close()
    return resp


def admin_stats(cfg: dict) -> dict[str, int]:
    port = int(cfg["admin"]["address"].rsplit(":", 1)[1])
    text = get(port, "/stats").body.decode()
    return {k: int(v) for k, v in (line.split(": ") for line in text.splitlines())}


def test_connect_timeout_is_503(start_mesh):
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(0)
    filler = socket.create_connection(blackhole.getsockname())  # the one slot; SYNs now drop
    gm = start_mesh(mesh_config([f"127.0.0.1:{blackhole.getsockname()[1]}"],
                                cluster={"connect_timeout": "300ms"}))
    t0 = time.monotonic()
    resp = get(gm.port())
    assert resp.status == 503 and b"connection failure" in resp.body
    assert 0.25 < time.monotonic() - t0 < 2
    assert gm.access()[0]["flags"] == "UF"
    filler.close()
    blackhole.close()


def test_per_host_limit_queues_then_overflows(upstream, start_mesh):
    cfg = mesh_config([upstream.address],
                      cluster={"max_connections": 1, "max_pending_requests": 1})
    gm = start_mesh(cfg)
    barrier = threading.Barrier(3)

    def one(_):
        barrier.wait()
        return get(gm.port(), "/delay/0.5")
    with ThreadPoolExecutor(3) as ex:
        results = list(ex.map(one, range(3)))
    statuses = sorted(r.status for r in results)
    assert statuses == [200, 200, 503], statuses
    (over,) = [r for r in results if r.status == 503]
    assert over.getheader("x-envoy-overloaded") == "true"
    stats = admin_stats(cfg)
    assert stats["cluster.backend.upstream_cx_total"] == 1  # the waiter reused the one connection
    assert stats["cluster.backend.upstream_rq_pending_overflow"] == 1


def test_idle_upstream_close_is_noticed_without_a_retry(start_mesh):
    def script(conn, index, head):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        time.sleep(0.2)
        return False  # the upstream closes its idle keep-alive connection
    up = RawUpstream(script)
    cfg = mesh_config([up.address])
    gm = start_mesh(cfg)
    assert get(gm.port()).body == b"ok"
    time.sleep(0.5)
    assert get(gm.port()).body == b"ok"
    assert up.connections == 2
    stats = admin_stats(cfg)
    assert "upstream_rq_retry" not in stats
    assert stats["cluster.backend.upstream_cx_destroy"] == 1


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_abuse_leaves_no_socket_or_connection_behind(upstream, start_mesh):
    cfg = mesh_config([upstream.address], timeout="300ms", listener={"idle_timeout": "2s"})
    gm = start_mesh(cfg)
    port = gm.port()
    assert get(port).status == 200
    baseline = fds(gm.proc.pid)
    abuse = [
        b"GARBAGE\r\n\r\n",
        b"\x00\x01\x02\x03" * 100,
        b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 70000 + b"\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nshort",  # then close
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nfff\r\nabc",
        b"GET /close HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /delay/2 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /bytes/10000000 HTTP/1.1\r\nHost: x\r\n\r\n",  # close without reading
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nhi",
        b"GET / HTTP/1.1\r\nHo",  # a head that never ends
    ]

    def hit(data: bytes) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
            s.sendall(data)
            try:
                s.recv(100)
            except OSError:
                pass
    with ThreadPoolExecutor(20) as ex:
        list(ex.map(hit, abuse * 5))
    assert get(port).status == 200  # still serving
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        stats = admin_stats(cfg)
        if stats["listener.ingress.downstream_cx_total"] == \
                stats["listener.ingress.downstream_cx_destroy"]:
            break
        time.sleep(0.2)
    assert stats["listener.ingress.downstream_cx_total"] == \
        stats["listener.ingress.downstream_cx_destroy"], stats
    # What is still open upstream is pooled idle connections, counted by the pool.
    time.sleep(0.3)
    clusters = get(int(cfg["admin"]["address"].rsplit(":", 1)[1]), "/clusters").body.decode()
    idle = int(clusters.split("::cx_idle::")[1].split()[0])
    opened = int(clusters.split("::cx_open::")[1].split()[0])
    assert idle == opened, clusters
    # The baseline held one pooled connection; the pool now holds ``idle``, and nothing else.
    # (The admin connection this test just used may take a moment to close; a leak stays.)
    deadline = time.monotonic() + 2
    while fds(gm.proc.pid) != baseline - 1 + idle and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fds(gm.proc.pid) == baseline - 1 + idle, (fds(gm.proc.pid), baseline, idle)
    raw_request(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")


def test_connection_limit_spans_the_cluster(start_mesh):
    from tests.harness import Upstream
    ups = [Upstream(f"c{i}") for i in range(2)]
    try:
        cfg = mesh_config([u.address for u in ups],
                          cluster={"max_connections": 1, "max_pending_requests": 0})
        gm = start_mesh(cfg)
        barrier = threading.Barrier(2)

        def one(_):
            barrier.wait()
            return get(gm.port(), "/delay/0.4").status
        with ThreadPoolExecutor(2) as ex:
            statuses = sorted(ex.map(one, range(2)))
        assert statuses == [200, 503]  # two hosts, one connection for the whole cluster
    finally:
        for u in ups:
            u.stop()
