"""Upstream pool limits and timeouts, and that abuse leaves no socket behind."""

from __future__ import annotations

import ast
import http.client
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from tests.harness import (
    ROOT,
    RawUpstream,
    free_port,
    mesh_config,
    parse_stats,
    raw_request,
    until,
)


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
    return parse_stats(text)


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
    assert until(lambda: up.closed == 1)  # the upstream closed the idle connection
    assert get(gm.port()).body == b"ok"
    assert up.connections == 2
    stats = admin_stats(cfg)
    assert "cluster.backend.upstream_rq_retry" not in stats
    assert stats["cluster.backend.upstream_cx_destroy"] == 1


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def assert_nothing_left(cfg: dict, gm, baseline: int, pooled_at_baseline: int) -> None:
    """Every downstream connection destroyed; open fds = the baseline's, plus idle pooled
    upstream connections (counted by the pool), minus those pooled at the baseline."""
    def all_destroyed() -> bool:
        stats = admin_stats(cfg)
        return stats["listener.ingress.downstream_cx_total"] == \
            stats["listener.ingress.downstream_cx_destroy"]
    assert until(all_destroyed, timeout=8), admin_stats(cfg)
    host = cfg["clusters"][0]["endpoints"][0]["address"]
    # Every upstream connection still open is idle in the pool (none is stuck mid-stream).
    assert until(lambda: gm.host_stat("backend", host, "cx_idle")
                 == gm.host_stat("backend", host, "cx_open"))
    idle = gm.host_stat("backend", host, "cx_idle")
    # (The admin connection just used may take a moment to close, and so may a probe that was
    # open at the baseline; a leak stays.)
    expected = baseline - pooled_at_baseline + idle
    assert until(lambda: fds(gm.proc.pid) <= expected, timeout=2), \
        (fds(gm.proc.pid), baseline, idle)


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
    assert_nothing_left(cfg, gm, baseline, pooled_at_baseline=1)
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


def _frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + sid.to_bytes(4, "big") + payload


def test_http2_abuse_leaves_no_socket_or_connection_behind(upstream, start_mesh):
    """Malformed and hostile HTTP/2, each on its own connection: GOAWAY or RST_STREAM, no leak."""
    from hpack import Encoder

    cfg = mesh_config([upstream.address], timeout="300ms",
                      listener={"protocol": "http2", "idle_timeout": "2s"})
    gm = start_mesh(cfg)
    port = gm.port()
    hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0)  # preface + SETTINGS

    def head(path: str, **extra) -> bytes:
        return Encoder().encode([(":method", "GET"), (":scheme", "http"), (":authority", "x"),
                                 (":path", path), *extra.items()])
    HEADERS, END_STREAM, END_HEADERS = 1, 0x1, 0x4
    abuse = [
        hello + _frame(HEADERS, END_STREAM, 1, head("/")[:3])  # no END_HEADERS, then a flood
        + b"".join(_frame(9, 0, 1, b"\x00" * 1000) for _ in range(200)),
        hello + _frame(HEADERS, END_STREAM | END_HEADERS, 0, head("/")),  # stream 0
        hello + _frame(HEADERS, END_STREAM | END_HEADERS, 1, b"\xff\xff\xff\xff\xff\xff"),  # HPACK
        hello + _frame(0, 0, 1, b"x" * 20000),  # over the 16 KiB max frame size
        hello + _frame(8, 0, 0, b"\x00\x00\x00\x00"),  # WINDOW_UPDATE of 0
        hello + _frame(HEADERS, END_STREAM | END_HEADERS, 1,
                       Encoder().encode([(":method", "GET"), (":path", "/"), ("X-Upper", "1")])),
        hello + _frame(HEADERS, END_STREAM | END_HEADERS, 5, head("/"))
        + _frame(HEADERS, END_STREAM | END_HEADERS, 3, head("/")),  # ids going backwards
        hello + _frame(0, END_STREAM, 7, b"data on an idle stream"),
        hello + b"\x17" * 500,  # garbage after the preface
        hello + b"\x00\x00",  # half a frame header, then the peer goes
        b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",  # a broken preface
        hello + _frame(HEADERS, END_STREAM | END_HEADERS, 1, head("/bytes/10000000")),
        hello + _frame(HEADERS, END_STREAM | END_HEADERS, 1, head("/delay/2")),
        hello + _frame(HEADERS, END_HEADERS, 1, head("/echo")) + _frame(0, 0, 1, b"half a body"),
    ]

    violations = len(abuse) - 5  # the last five are rude, not wrong: they just go away

    def hit(index: int) -> bytes:
        out = b""
        with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
            s.sendall(abuse[index % len(abuse)])
            while index % len(abuse) < violations:  # read the answer up to the close
                try:
                    chunk = s.recv(65536)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
        return out
    assert until(lambda: gm.stat("listener.ingress.downstream_cx_destroy") ==
                 gm.stat("listener.ingress.downstream_cx_total"))  # the start-up probe closed
    baseline = fds(gm.proc.pid)
    with ThreadPoolExecutor(20) as ex:
        answers = list(ex.map(hit, range(len(abuse) * 4)))
    for i, answer in enumerate(answers):
        if i % len(abuse) < violations:  # each got a GOAWAY (type 7) or RST_STREAM (type 3)
            assert _frame_types(answer) & {3, 7}, (abuse[i % len(abuse)][:60], answer[:80])
    assert_nothing_left(cfg, gm, baseline, pooled_at_baseline=0)


def _frame_types(data: bytes) -> set[int]:
    """The frame types in what an HTTP/2 server sent (skipping its SETTINGS at the start)."""
    types, i = set(), 0
    while i + 9 <= len(data):
        types.add(data[i + 3])
        i += 9 + int.from_bytes(data[i:i + 3], "big")
    return types


def test_connections_and_streams_are_freed_without_the_cyclic_collector():
    """Reference cycles between connections, streams, codecs, writers and greenlets are cut when
    each ends, on both sides of HTTP/1.1, HTTP/2 and bolt: nothing is left for gc to find."""
    ports = [str(free_port()) for _ in range(4)]
    out = subprocess.run([sys.executable, "-m", "tests.cycle_probe", *ports], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    result = ast.literal_eval(out.stdout.strip().splitlines()[-1])
    assert result == {"during": {}, "after_stop": {}}, result
