"""SOFA bolt through greenmesh: a bolt client and server written from the spec, real sockets."""

from __future__ import annotations

import http.client
import socket
import threading
import time

from greenmesh.streams.xprotocol.bolt import BoltCodec
from greenmesh.streams.xprotocol.stream import RequestIds
from tests.boltpeer import BoltClient, BoltServer, heartbeat, request
from tests.harness import free_port, mesh_config, parse_stats, raw_request, rss_kb, until

SERVICE = "com.example.EchoService:1.0"


def bolt_config(endpoint: str, timeout: str = "3s", listener: dict | None = None,
                cluster: dict | None = None) -> dict:
    return mesh_config([endpoint], routes=[{
        "match": {"headers": [{"name": "service", "string_match": {"exact": SERVICE}}]},
        "route": {"cluster": "backend", "timeout": timeout}}],
        listener={"protocol": "bolt", **(listener or {})},
        cluster={"protocol": "bolt", **(cluster or {})})


def stats(cfg: dict) -> dict[str, int]:
    port = int(cfg["admin"]["address"].rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/stats")
    return parse_stats(conn.getresponse().read().decode())


def test_out_of_order_responses_each_matched_to_its_request(start_mesh):
    up = BoltServer()
    gm = start_mesh(bolt_config(up.address))
    c = BoltClient(gm.port())
    contents = {1: b"sleep:0.4:a", 2: b"sleep:0.1:b", 3: b"c", 4: b"sleep:0.2:d", 5: b"e"}
    c.send(b"".join(request(rid, body) for rid, body in contents.items()))
    got = c.receive(5)
    assert {f["id"]: f["content"] for f in got} == {k: b"echo:" + v for k, v in contents.items()}
    assert all(f["status"] == 0 for f in got)
    order = [f["id"] for f in got]
    assert order != sorted(order) and order[-1] == 1  # answered as they completed
    c.close()
    up.stop()


def test_1000_outstanding_on_10_connections_share_one_upstream(start_mesh):
    up = BoltServer()
    cfg = bolt_config(up.address, cluster={"max_concurrent_streams": 2000})
    gm = start_mesh(cfg)
    results: dict[int, dict] = {}

    def client(n: int) -> None:
        c = BoltClient(gm.port())
        ids = range(n * 1000 + 1, n * 1000 + 101)  # ids overlap nothing; the same id is fine too
        c.send(b"".join(request(rid, b"m%d" % rid) for rid in ids))
        for f in c.receive(100):
            results[f["id"]] = f
        c.close()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 1000
    assert all(f["content"] == b"echo:m%d" % rid for rid, f in results.items())
    assert up.connections == 1  # 1,000 in flight, one upstream connection
    assert stats(cfg)["cluster.backend.upstream_cx_total"] == 1
    up.stop()


def test_client_ids_are_restored_even_at_the_top_of_the_range(start_mesh):
    up = BoltServer()
    gm = start_mesh(bolt_config(up.address))
    c = BoltClient(gm.port())
    ids = [2**32 - 1, 0, 7, 7]  # the largest id, zero, and the same id twice
    c.send(b"".join(request(rid, b"x%d" % i) for i, rid in enumerate(ids)))
    got = sorted((f["id"], f["content"]) for f in c.receive(4))
    assert got == sorted((rid, b"echo:x%d" % i) for i, rid in enumerate(ids))
    c.close()
    up.stop()


def test_upstream_id_allocation_wraps_and_skips_ids_in_flight():
    ids = RequestIds(BoltCodec().max_request_id, first=2**32 - 2)
    in_flight = {2**32 - 1, 1, 3}
    assert [ids.allocate(in_flight, None) for _ in range(3)] == [2**32 - 2, 2, 4]
    assert ids.allocate(in_flight, 5) == 6  # the heartbeat probe's id is taken too


def test_heartbeats_answered_locally_and_upstreams_kept_alive(start_mesh):
    up = BoltServer()
    cfg = bolt_config(up.address, cluster={"keepalive_interval": "300ms"})
    gm = start_mesh(cfg)
    c = BoltClient(gm.port())
    c.send(heartbeat(42))
    (hb,) = c.receive(1)
    assert (hb["id"], hb["cmdcode"], hb["status"]) == (42, 0, 0)
    assert up.heartbeats == 0  # the client's heartbeat stopped at greenmesh
    c.send(request(1, b"x"))
    assert c.receive(1)[0]["content"] == b"echo:x"
    assert until(lambda: up.heartbeats >= 2)  # idle: greenmesh probes its upstream connection
    assert up.connections == 1
    c.close()
    up.stop()


def test_unanswered_heartbeats_close_the_upstream_connection(start_mesh):
    up = BoltServer(answer_heartbeats=False)
    cfg = bolt_config(up.address, cluster={"keepalive_interval": "200ms"})
    gm = start_mesh(cfg)
    c = BoltClient(gm.port())
    c.send(request(1, b"x"))
    assert c.receive(1)[0]["content"] == b"echo:x"
    # The probe goes unanswered: greenmesh closes that connection (the pool counts it as
    # destroyed only when it next looks, so the peer's side is what shows it first).
    assert until(lambda: up.hung_up == 1, timeout=5)
    c.send(request(2, b"y"))  # a fresh connection takes over
    assert c.receive(1)[0]["content"] == b"echo:y"
    assert up.connections == 2
    c.close()
    up.stop()


def test_error_statuses(start_mesh):
    up = BoltServer()
    cfg = bolt_config(up.address, timeout="300ms",
                      cluster={"max_connections": 1, "max_concurrent_streams": 1,
                               "max_pending_requests": 0})
    gm = start_mesh(cfg)
    c = BoltClient(gm.port())
    c.send(request(1, b"x", service="com.example.Unknown:1.0"))
    assert c.receive(1)[0]["status"] == 6  # no route: no processor
    c.send(request(2, b"sleep:1:slow"))
    assert c.receive(1)[0]["status"] == 7  # the upstream did not answer in time
    assert until(lambda: up.replies == 1)  # the late answer went out (greenmesh drops it)
    c.send(request(3, b"sleep:0.2:busy") + request(4, b"second"))
    got = {f["id"]: f["status"] for f in c.receive(2)}
    assert got == {3: 0, 4: 4}  # one in flight allowed, none pending: server busy
    c.send(request(5, b"fire", oneway=True) + request(6, b"after"))
    (only,) = c.receive(1)
    assert only["id"] == 6 and up.oneways == 1  # a oneway request gets no answer
    c.close()
    # Undecodable bytes: a codec exception, then the connection closes.
    bad = BoltClient(gm.port())
    bad.send(b"\x01\x01\x00\x07" + b"\x01" + b"\x00" * 17)  # command code 7: no such command
    (err,) = bad.receive(1)
    assert err["status"] == 9
    assert bad.sock.recv(10) == b""
    bad.close()
    up.stop()


def test_upstream_failure_and_no_healthy_upstream_are_told_apart(start_mesh):
    gm = start_mesh(bolt_config(f"127.0.0.1:{free_port()}"))
    c = BoltClient(gm.port())
    c.send(request(9, b"x"))
    assert c.receive(1)[0]["status"] == 5  # refused: a communication error, not "no route"
    c.close()
    assert gm.access()[0]["flags"] == "UF"
    cfg = bolt_config(f"127.0.0.1:{free_port()}")
    cfg["clusters"][0]["endpoints"] = []
    empty = start_mesh(cfg)
    c = BoltClient(empty.port())
    c.send(request(10, b"x"))
    assert c.receive(1)[0]["status"] == 6  # no host at all: no processor, as MOSN answers
    c.close()
    assert empty.access()[0]["flags"] == "UH"


def test_frames_split_into_tiny_segments_and_many_in_one(start_mesh):
    up = BoltServer()
    gm = start_mesh(bolt_config(up.address))
    c = BoltClient(gm.port())
    c.send(b"".join(request(rid, b"split-%d" % rid) for rid in (1, 2, 3)), chunk=1)
    assert sorted(f["content"] for f in c.receive(3)) == [b"echo:split-%d" % i for i in (1, 2, 3)]
    c.send(b"".join(request(rid, b"m") for rid in range(100, 200)))
    assert len(c.receive(100)) == 100
    c.close()
    up.stop()


def test_http_and_bolt_share_one_auto_listener(start_mesh, upstream):
    bolt_up = BoltServer()
    cfg = bolt_config(bolt_up.address, listener={"protocol": "auto"})
    cfg["route_configs"][0]["virtual_hosts"][0]["routes"].append(
        {"match": {"prefix": "/"}, "route": {"cluster": "web"}})
    cfg["clusters"].append({"name": "web", "endpoints": [{"address": upstream.address}]})
    gm = start_mesh(cfg)
    out = raw_request(gm.port(), b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200") and out.endswith(b"hello from up1\n")
    c = BoltClient(gm.port())
    c.send(request(1, b"over auto"))
    assert c.receive(1)[0]["content"] == b"echo:over auto"
    c.close()
    # A byte 0x01 alone is not bolt: the next bytes must fit too (type 9 here).
    with socket.create_connection(("127.0.0.1", gm.port()), timeout=5) as s:
        s.sendall(b"\x01\x09\x00\x01\x01")
        assert s.recv(10) == b""
    bolt_up.stop()


def test_domains_match_the_target_app(start_mesh):
    app_up, other_up = BoltServer(), BoltServer()
    cfg = bolt_config(other_up.address)
    route = cfg["route_configs"][0]["virtual_hosts"][0]["routes"][0]
    cfg["route_configs"][0]["virtual_hosts"].insert(0, {
        "name": "app-a", "domains": ["app-a"],
        "routes": [{**route, "route": {"cluster": "app-a"}}]})
    cfg["clusters"].append({"name": "app-a", "protocol": "bolt",
                            "endpoints": [{"address": app_up.address}]})
    gm = start_mesh(cfg)
    c = BoltClient(gm.port())
    c.send(request(1, b"to-a", app="app-a") + request(2, b"to-any"))
    assert len(c.receive(2)) == 2
    assert (app_up.requests, other_up.requests) == ([1], [1])  # one each, ids rewritten
    c.close()
    app_up.stop()
    other_up.stop()


def test_client_that_does_not_read_responses_stops_being_read(start_mesh):
    up = BoltServer()
    cfg = bolt_config(up.address, cluster={"max_concurrent_streams": 5000})
    gm = start_mesh(cfg)
    c = BoltClient(gm.port())
    content = b"x" * 65536
    base = rss_kb(gm.proc.pid)
    c.sock.setblocking(False)
    sent, rid = 0, 1
    frame = b""
    paused = "listener.ingress.downstream_flow_control_paused_reading_total"
    deadline = time.monotonic() + 10
    # Echoed responses pile up at about 1 MiB in greenmesh; then it stops reading requests.
    # What the kernel buffers on both sides (up to tcp_rmem + tcp_wmem) is not greenmesh's.
    while time.monotonic() < deadline and sent < (256 << 20):
        if not frame:
            frame, rid = request(rid, content), rid + 1
        try:
            n = c.sock.send(frame)
            sent, frame = sent + n, frame[n:]
        except BlockingIOError:  # the kernel's buffers are full too
            if gm.stat(paused):
                break
            time.sleep(0.01)  # the client's pace of retrying, not a wait on greenmesh
    assert gm.stat(paused) >= 1, f"greenmesh kept reading ({sent >> 20} MiB sent)"
    grew = (rss_kb(gm.proc.pid) - base) >> 10
    assert grew < 16, f"greenmesh holds {grew} MiB for a client that does not read"
    c.sock.setblocking(True)
    assert len(c.receive(rid // 2, timeout=10)) >= rid // 2  # and serves them once read
    c.close()
    up.stop()


def test_route_header_operations_edit_bolt_frames_both_ways(start_mesh):
    from tests.boltpeer import parse_header_map
    up = BoltServer()
    cfg = bolt_config(up.address)
    route = cfg["route_configs"][0]["virtual_hosts"][0]["routes"][0]
    route["request_headers_to_add"] = [{"header": {"key": "x-mesh", "value": "greenmesh"}}]
    route["request_headers_to_remove"] = ["x-secret"]
    route["response_headers_to_add"] = [{"header": {"key": "x-served-by", "value": "gm"}}]
    gm = start_mesh(cfg)
    c = BoltClient(gm.port())
    c.send(request(5, b"hdr", extra={"x-secret": "s3", "rpc_trace_context.sofaTraceId": "t1"}))
    (answer,) = c.receive(1)
    assert (answer["id"], answer["content"]) == (5, b"echo:hdr")
    seen = dict(up.headers[0])
    assert seen["x-mesh"] == "greenmesh" and "x-secret" not in seen
    assert seen["rpc_trace_context.sofaTraceId"] == "t1"  # a name keeps its own case
    assert seen["service"] == SERVICE
    assert parse_header_map(answer["raw_headers"]) == [("x-served-by", "gm")]
    c.close()
    entry = gm.access()[0]
    assert entry["bytes_in"] > 100 and entry["bytes_out"] == len(answer["content"]) + 20 + len(
        b"com.alipay.sofa.rpc.core.response.SofaResponse")  # whole frames, as they came
    up.stop()
