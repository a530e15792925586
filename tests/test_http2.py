"""HTTP/2 end to end: curl, h2load and an h2 client through greenmesh; nginx as an h2c upstream."""

from __future__ import annotations

import http.client
import json
import re
import signal
import subprocess
import time

import h2.settings
import pytest

from greenmesh.testing.nginx import h2c_proxy_server, start_nginx
from tests.h2client import H2Client
from tests.h2server import H2Upstream
from tests.harness import (
    RawUpstream,
    free_port,
    mesh_config,
    raw_request,
    rss_kb,
    until,
    wait_port,
)


@pytest.fixture
def h2c_upstream(upstream, tmp_path):
    """nginx speaking h2c, proxying to the HTTP/1.1 test upstream (so /echo etc. work)."""
    port = free_port()
    proc = start_nginx(tmp_path, "h2c", 1, h2c_proxy_server(port, upstream.port))
    wait_port(port, proc)
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait()


def assert_serves(gm) -> None:
    """A new HTTP/2 connection still gets its request answered."""
    c = H2Client(gm.port())
    sid = c.request("GET", "/")
    c.pump(lambda: c.done(sid))
    assert c.responses[sid].status == 200
    c.close()


def h2_config(endpoint: str, listener: str = "http2", cluster: str = "http1", **kw) -> dict:
    kw.setdefault("listener", {})
    kw.setdefault("cluster", {})
    kw["listener"] = {"protocol": listener, **kw["listener"]}
    kw["cluster"] = {"protocol": cluster, **kw["cluster"]}
    return mesh_config([endpoint], **kw)


def curl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-s", "--max-time", str(timeout), *args], capture_output=True,
                          timeout=timeout + 5)


def test_curl_h2c_to_http1_upstream(upstream, start_mesh):
    gm = start_mesh(h2_config(upstream.address))
    r = curl("-i", "--http2-prior-knowledge", gm.url + "/")
    assert r.stdout.startswith(b"HTTP/2 200") and r.stdout.endswith(b"hello from up1\n")
    r = curl("--http2-prior-knowledge", "-H", "Cookie: a=1", "-H", "Cookie: b=2",
             "--data-binary", "payload", gm.url + "/echo?q=1")
    meta, _, body = r.stdout.partition(b"\n")
    meta = json.loads(meta)
    assert body == b"payload" and meta["query"] == "q=1" and meta["method"] == "POST"
    assert meta["headers"]["host"] == gm.url.split("//")[1]  # :authority became Host
    assert meta["headers"]["cookie"] == "a=1; b=2"  # crumbs joined for HTTP/1.1
    (first, *_rest) = gm.access()
    assert first["status"] == 200 and first["method"] == "GET"


def test_h2load_many_streams_on_few_connections(upstream, start_mesh):
    cfg = h2_config(upstream.address)
    cfg["clusters"][0]["connect_timeout"] = "5s"  # 400 connections at once on a busy machine
    gm = start_mesh(cfg)
    out = subprocess.run(["h2load", "-n", "2000", "-c", "4", "-m", "100", gm.url + "/"],
                         capture_output=True, text=True, timeout=120).stdout
    assert "2000 succeeded, 0 failed, 0 errored" in out, out
    assert "status codes: 2000 2xx" in out, out


def test_http1_client_to_h2c_upstream_multiplexes(h2c_upstream, start_mesh):
    cfg = h2_config(h2c_upstream, listener="http1", cluster="http2")
    gm = start_mesh(cfg)
    conn = http.client.HTTPConnection("127.0.0.1", gm.port(), timeout=10)
    conn.request("POST", "/echo", body=b"x" * 100000, headers={"X-Test": "1"})
    meta, _, body = conn.getresponse().read().partition(b"\n")
    assert json.loads(meta)["headers"]["x-test"] == "1" and body == b"x" * 100000
    out = subprocess.run(["wrk", "-t1", "-c20", "-d1s", gm.url + "/"], capture_output=True,
                         text=True, timeout=30).stdout
    assert "Non-2xx" not in out and "Socket errors" not in out, out
    admin = int(cfg["admin"]["address"].rsplit(":", 1)[1])
    stats = http.client.HTTPConnection("127.0.0.1", admin)
    stats.request("GET", "/stats")
    text = stats.getresponse().read().decode()
    assert "cluster.backend.upstream_cx_total: 1\n" in text  # 20 clients, one h2 connection


def test_h2c_to_h2c_with_large_bodies_and_bounded_memory(h2c_upstream, start_mesh, tmp_path):
    gm = start_mesh(h2_config(h2c_upstream, cluster="http2", timeout="120s"))
    assert curl("--http2-prior-knowledge", gm.url + "/").stdout == b"hello from up1\n"
    base = rss_kb(gm.proc.pid)
    size = 100 << 20
    r = curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
             f"{gm.url}/bytes/{size}")
    assert r.stdout == f"200 {size}".encode()
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(size)
    r = curl("--http2-prior-knowledge", "--data-binary", f"@{big}", gm.url + "/sink")
    assert r.stdout == f"{size}\n".encode()
    grown = rss_kb(gm.proc.pid, "VmHWM") - base
    assert grown < 24 * 1024, f"RSS grew by {grown} KiB"


def test_stalled_stream_does_not_stall_its_siblings(upstream, start_mesh):
    gm = start_mesh(h2_config(upstream.address))
    c = H2Client(gm.port())
    stalled = c.request("GET", "/bytes/50000000")
    c.stalled.add(stalled)  # never acknowledged: its window fills and stays full
    c.pump(lambda: len(c.responses[stalled].body) >= 65535, timeout=10)
    for i in range(20):
        sid = c.request("POST", f"/echo?i={i}", body=b"sibling")
        c.pump(lambda sid=sid: c.done(sid), timeout=5)
        assert c.responses[sid].status == 200 and c.responses[sid].body.endswith(b"sibling")
    assert len(c.responses[stalled].body) < 2 * 65535 and not c.responses[stalled].ended
    c.close()


def test_client_reset_cancels_the_upstream_request(upstream, start_mesh):
    cfg = h2_config(upstream.address)
    gm = start_mesh(cfg)
    c = H2Client(gm.port())
    sid = c.request("GET", "/delay/3")
    assert until(lambda: gm.host_stat("backend", upstream.address, "rq_active") == 1)
    c.reset(sid)
    other = c.request("GET", "/")
    c.pump(lambda: c.done(other))
    assert c.responses[other].status == 200
    cancelled = [e for e in gm.access(at_least=2, timeout=3) if e["path"] == "/delay/3"]
    assert cancelled and cancelled[0]["flags"] == "DC" and cancelled[0]["duration_ms"] < 2000
    c.close()


def test_trailers_pass_both_ways(start_mesh):
    up = H2Upstream()
    gm = start_mesh(h2_config(up.address, cluster="http2"))
    c = H2Client(gm.port())
    sid = c.request("POST", "/t", body=b"abc", headers=[("te", "trailers")], end=False)
    c.h2.send_headers(sid, [("x-req-trailer", "1")], end_stream=True)
    c.sock.sendall(c.h2.data_to_send())
    c.pump(lambda: c.done(sid))
    r = c.responses[sid]
    assert r.status == 200 and bytes(r.body) == b"abc"
    assert (b"x-got-trailer", b"1") in r.trailers and (b"grpc-status", b"0") in r.trailers
    c.close()
    up.stop()


def test_peer_stream_limit_opens_connections_and_a_dead_one_fails_only_its_own(start_mesh):
    up = H2Upstream(max_streams=1)
    gm = start_mesh(h2_config(up.address, cluster="http2"))
    c = H2Client(gm.port())
    warm = c.request("GET", "/warm")
    c.pump(lambda: c.done(warm))  # greenmesh learns the upstream's limit: 1 stream a connection
    slow = c.request("GET", "/slow")
    assert until(lambda: b"/slow" in up.seen)  # on the first connection, before /die comes
    dying = c.request("GET", "/die")
    c.pump(lambda: c.done(slow, dying))
    assert c.responses[slow].status == 200 and bytes(c.responses[slow].body) == b"/slow"
    assert c.responses[dying].status == 502
    assert up.connections == 2
    # Two streams at once again: the dead connection is replaced by a third.
    again, after = c.request("GET", "/slow"), c.request("GET", "/after")
    c.pump(lambda: c.done(again, after))
    assert c.responses[again].status == 200 and c.responses[after].status == 200
    assert up.connections == 3
    c.close()
    up.stop()


def test_goaway_on_shutdown_lets_streams_finish(upstream, start_mesh):
    gm = start_mesh(h2_config(upstream.address) | {"drain_timeout": "5s"})
    # nghttp (nghttp2's client) prints every frame it receives.
    client = subprocess.Popen(["nghttp", "-v", "-n", gm.url + "/delay/1"],
                              stdout=subprocess.PIPE, text=True)
    assert until(lambda: gm.host_stat("backend", upstream.address, "rq_active") == 1)
    gm.stopped_by_test = True
    gm.proc.send_signal(signal.SIGTERM)
    out = client.communicate(timeout=10)[0]
    assert client.returncode == 0, out
    goaway = re.search(r"recv GOAWAY frame.*\n.*last_stream_id=(\d+), error_code=(\w+)", out)
    assert goaway and goaway.groups() == ("13", "NO_ERROR"), out  # nghttp's first stream is 13
    assert out.index("recv GOAWAY") < out.index(":status: 200"), out  # the answer came after
    assert gm.proc.wait(10) == 0


def test_upstream_goaway_moves_new_streams_to_a_new_connection(upstream, start_mesh, tmp_path):
    port = free_port()
    proc = start_nginx(tmp_path, "h2c-goaway", 1, h2c_proxy_server(port, upstream.port, 10))
    wait_port(port, proc)
    try:
        cfg = h2_config(f"127.0.0.1:{port}", listener="http1", cluster="http2")
        gm = start_mesh(cfg)
        out = subprocess.run(["h2load", "-n", "300", "-c", "10", "--h1", gm.url + "/"],
                             capture_output=True, text=True, timeout=60).stdout
        assert "300 succeeded, 0 failed, 0 errored" in out, out
        assert "status codes: 300 2xx" in out, out
        admin = int(cfg["admin"]["address"].rsplit(":", 1)[1])
        stats = http.client.HTTPConnection("127.0.0.1", admin)
        stats.request("GET", "/stats")
        text = stats.getresponse().read().decode()
        total = int(re.search(r"cluster.backend.upstream_cx_total: (\d+)", text).group(1))
        assert total >= 30, text  # nginx says GOAWAY after every 10 requests
    finally:
        proc.terminate()
        proc.wait()


def test_auto_listener_serves_h2c_and_http1_on_one_port(upstream, start_mesh):
    gm = start_mesh(h2_config(upstream.address, listener="auto"))
    assert curl("--http2-prior-knowledge", gm.url + "/").stdout == b"hello from up1\n"
    assert curl("--http1.1", gm.url + "/").stdout == b"hello from up1\n"
    out = raw_request(gm.port(), b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200")


def test_h2_protocol_errors_get_goaway_and_spare_other_connections(upstream, start_mesh):
    gm = start_mesh(h2_config(upstream.address))
    good = H2Client(gm.port())
    # A preface, then a DATA frame on stream 0 (connection-level DATA is a PROTOCOL_ERROR).
    out = raw_request(gm.port(), b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
                      b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
                      b"\x00\x00\x03\x00\x00\x00\x00\x00\x00abc")
    assert b"\x07" in out  # a GOAWAY frame (type 7) came back before the close
    sid = good.request("GET", "/")
    good.pump(lambda: good.done(sid))
    assert good.responses[sid].status == 200
    good.close()


def test_oversized_request_headers_get_431_on_their_stream_only(upstream, start_mesh):
    gm = start_mesh(mesh_config([upstream.address], listener={"protocol": "http2",
                                                               "max_request_headers_kb": 4}))
    c = H2Client(gm.port())
    first = c.request("GET", "/")
    c.pump(lambda: c.done(first))
    assert c.h2.remote_settings.max_header_list_size == 4096  # advertised in SETTINGS
    big = c.request("GET", "/big", headers=[("x-big", "b" * 5000)])
    many = c.request("POST", "/many", headers=[(f"x-h{i}", "v") for i in range(120)], end=False)
    sibling = c.request("GET", "/after")
    c.pump(lambda: c.done(big, many, sibling))
    for sid in (big, many):
        assert c.responses[sid].status == 431
        assert bytes(c.responses[sid].body) == b"request headers too large\n"
    assert c.responses[sibling].status == 200 and c.goaway is None
    # A block past twice the advertised size and hpack's 64 KiB ends the connection only.
    other = H2Client(gm.port())
    bomb = c.request("GET", "/bomb", headers=[(f"x-{i}", "z" * 4000) for i in range(20)])
    c.pump(lambda: c.goaway is not None or c.closed)
    assert c.goaway is not None and c.goaway.error_code == 0xB  # ENHANCE_YOUR_CALM
    assert c.responses[bomb].status == 0
    sid = other.request("GET", "/")
    other.pump(lambda: other.done(sid))
    assert other.responses[sid].status == 200
    c.close()
    other.close()
    paths = {e["path"] for e in gm.access()}
    assert "/big" not in paths and "/after" in paths  # refused before the proxy saw them
    assert gm.wait_stat("http.ingress.downstream_rq_4xx", 2) == 2  # but counted and logged, with DPE
    assert [e["flags"] for e in gm.access() if e["status"] == 431] == ["DPE", "DPE"]


def test_rapid_reset_flood_is_bounded_and_gets_goaway(upstream, start_mesh):
    """CVE-2023-44487: HEADERS + RST_STREAM pairs must not start upstream work without bound."""
    def slow(conn, index, head):
        time.sleep(1)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    up = RawUpstream(slow)
    gm = start_mesh(mesh_config([up.address], listener={"protocol": "http2"}))
    c = H2Client(gm.port())
    head = [(":method", "GET"), (":scheme", "http"), (":authority", "t"), (":path", "/")]
    try:
        # Pairs in one burst: streams reset before their turn never reach the upstream.
        for _ in range(200):
            sid = c.h2.get_next_available_stream_id()
            c.h2.send_headers(sid, head, end_stream=True)
            c.h2.reset_stream(sid)
        c.sock.sendall(c.h2.data_to_send())
        c.ping()  # greenmesh has handled the burst, and the streams it started have run
        burst_requests = gm.stat("cluster.backend.upstream_cx_total")
        # Streams reset once their upstream request has started: cancelled at once, and after
        # 250 such premature resets (Envoy's rule) the connection gets GOAWAY and closes.
        for _ in range(12):
            sids = []
            for _ in range(50):
                sids.append(c.h2.get_next_available_stream_id())
                c.h2.send_headers(sids[-1], head, end_stream=True)
            c.sock.sendall(c.h2.data_to_send())
            c.ping()
            for sid in sids:
                c.h2.reset_stream(sid)
            c.sock.sendall(c.h2.data_to_send())
            c.ping()
        c.pump(lambda: c.goaway is not None or c.closed, timeout=5)
    except OSError:  # closed under our feet (the GOAWAY may be lost with the reset)
        pass
    assert burst_requests < 20  # 200 without the check (a pair split across reads may slip)
    assert len(up.requests) <= 6 * 50  # it stopped after the fifth or sixth round, not 12
    assert gm.wait_log("http2_premature_resets")
    assert c.goaway is None or c.goaway.error_code == 0xB
    assert_serves(gm)
    c.close()


def _rss_growth_while(gm, action) -> int:
    base = rss_kb(gm.proc.pid)
    action()
    return (rss_kb(gm.proc.pid) - base) // 1024


def test_peer_that_does_not_read_holds_back_its_streams_not_memory(upstream, start_mesh):
    """A 2 GiB window and no reading: greenmesh buffers about 1 MiB, not the whole body."""
    gm = start_mesh(h2_config(upstream.address))
    c = H2Client(gm.port())
    c.h2.increment_flow_control_window(2**31 - 1 - c.h2.inbound_flow_control_window)
    c.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
    backed_up = "listener.ingress.downstream_flow_control_backed_up_total"
    grew = _rss_growth_while(gm, lambda: (c.request("GET", "/bytes/200000000"),
                                          gm.wait_stat(backed_up)))
    assert grew < 24, f"greenmesh grew by {grew} MiB for a peer that does not read"
    assert_serves(gm)
    c.close()


def test_peer_that_reads_nothing_for_the_idle_timeout_loses_the_connection(upstream,
                                                                           start_mesh):
    gm = start_mesh(mesh_config([upstream.address], listener={"protocol": "http2",
                                                               "idle_timeout": "1s"}),
                    log_level="debug")
    c = H2Client(gm.port())
    c.h2.increment_flow_control_window(2**31 - 1 - c.h2.inbound_flow_control_window)
    c.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
    c.request("GET", "/bytes/200000000")
    (entry,) = gm.access(timeout=10)
    assert entry["flags"] == "DC" and entry["duration_ms"] < 5000, entry
    def reasons() -> list[str]:
        return [e["reason"] for e in gm.logs() if e.get("event") == "connection_closed"]
    assert until(lambda: "peer took nothing for 1s" in reasons()), reasons()
    c.close()


def test_protocol_error_from_a_peer_that_does_not_read(upstream, start_mesh):
    """The writer is stuck in a write to this peer: the GOAWAY must not become a second one."""
    gm = start_mesh(h2_config(upstream.address))
    c = H2Client(gm.port())
    c.h2.increment_flow_control_window(2**31 - 1 - c.h2.inbound_flow_control_window)
    c.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
    c.request("GET", "/bytes/50000000")
    gm.wait_stat("listener.ingress.downstream_flow_control_backed_up_total")  # its queue is full
    c.sock.sendall(b"\x00\x00\x03\x00\x00\x00\x00\x00\x00abc")  # DATA on stream 0
    assert gm.access()[0]["flags"] == "DC"  # the download ended with the connection
    assert gm.wait_log("http2_protocol_error")
    c.close()
    assert_serves(gm)


def test_ping_flood_without_reading_stops_being_read(upstream, start_mesh):
    gm = start_mesh(h2_config(upstream.address))
    c = H2Client(gm.port())
    ping = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + b"12345678"
    chunk = ping * 4096
    sent = [0]

    paused = "listener.ingress.downstream_flow_control_paused_reading_total"

    def flood() -> None:
        c.sock.setblocking(False)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                sent[0] += c.sock.send(chunk[sent[0] % len(chunk):])
            except BlockingIOError:  # the kernel's buffers are full too
                if gm.stat(paused):
                    return
                time.sleep(0.01)  # the flooder's pace of retrying, not a wait on greenmesh

    grew = _rss_growth_while(gm, flood)
    assert grew < 8, f"greenmesh grew by {grew} MiB answering PINGs nobody reads"
    # It stopped reading (what the kernel buffers on both sides is not greenmesh's).
    assert gm.stat(paused) >= 1, f"{sent[0] >> 20} MiB of PINGs read"
    assert_serves(gm)
    c.close()


def test_default_config_serves_http1_and_h2c(upstream, start_mesh):
    import yaml

    from tests.harness import ROOT
    cfg = yaml.safe_load((ROOT / "etc" / "mesh.yaml").read_text())
    cfg["admin"]["address"] = f"127.0.0.1:{free_port()}"
    cfg["listeners"][0]["address"] = f"127.0.0.1:{free_port()}"
    cfg["clusters"][0]["endpoints"] = [{"address": upstream.address}]
    gm = start_mesh(cfg)
    for flag in ("--http1.1", "--http2-prior-knowledge"):
        r = curl("-i", flag, gm.url + "/")
        assert r.stdout.startswith((b"HTTP/1.1 200", b"HTTP/2 200")), (flag, r.stdout[:80])


def test_h2c_on_an_http1_listener_is_told_so(upstream, start_mesh):
    gm = start_mesh(h2_config(upstream.address, listener="http1"))
    out = raw_request(gm.port(), b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400")
    (bad,) = gm.wait_log("bad_request")
    assert "HTTP/2 on an HTTP/1.1 listener" in bad["error"]
