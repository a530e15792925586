"""Connection limits and the overload manager: at a limit a listener stops accepting (the next
connections wait in the kernel's backlog) and resumes when one closes; under memory pressure
the configured actions refuse connections, end keep-alive, refuse requests."""

from __future__ import annotations

import http.client
import select
import socket
import threading

import pytest

from greenmesh.config import ConfigError, load_dict
from tests.boltpeer import BoltClient, BoltServer, request
from tests.h2client import H2Client
from tests.harness import RawUpstream, free_port, mesh_config, until
from tests.test_bolt import bolt_config

GET_CLOSE = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
STOP_CONNECTIONS = "envoy.overload_actions.stop_accepting_connections"
NO_KEEPALIVE = "envoy.overload_actions.disable_http_keepalive"
STOP_REQUESTS = "envoy.overload_actions.stop_accepting_requests"


def _read_all(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def _round_trip(s: socket.socket) -> bytes:
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while not data.endswith(b"hello from up1\n"):
        data += s.recv(65536)
    return data


def _settled(gm, listener: str = "ingress") -> int:
    """Waits until the harness's readiness probe is gone; returns connections accepted so far."""
    total = f"listener.{listener}.downstream_cx_total"
    destroyed = f"listener.{listener}.downstream_cx_destroy"
    assert until(lambda: (s := gm.stats()).get(total) == s.get(destroyed))
    return gm.stat(total)


def _overload(actions: list[str], max_heap: int = 1) -> dict:
    """An overload manager whose memory monitor is past every threshold (1 byte of heap)."""
    return {"refresh_interval": "0.1s",
            "resource_monitors": [{"name": "envoy.resource_monitors.fixed_heap", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3."
                         "FixedHeapConfig", "max_heap_size_bytes": max_heap}}],
            "actions": [{"name": a, "triggers": [{"name": "envoy.resource_monitors.fixed_heap",
                                                   "threshold": {"value": 0.9}}]}
                        for a in actions]}


def test_a_listener_at_its_limit_stops_accepting_until_a_connection_closes(upstream,
                                                                           start_mesh):
    gm = start_mesh(mesh_config([upstream.address], listener={"max_connections": 2}))
    before = _settled(gm)
    held = [socket.create_connection(("127.0.0.1", gm.port()), timeout=5) for _ in range(2)]
    for s in held:
        assert _round_trip(s).startswith(b"HTTP/1.1 200")
    extra = socket.create_connection(("127.0.0.1", gm.port()), timeout=5)  # the backlog holds it
    extra.sendall(GET_CLOSE)
    assert _round_trip(held[1]).startswith(b"HTTP/1.1 200")  # greenmesh ran after that send
    assert select.select([extra], [], [], 0)[0] == []  # not accepted, so neither answered...
    assert gm.stat("listener.ingress.downstream_cx_total") == before + 2  # ...nor closed
    assert gm.stat("listener.ingress.downstream_cx_overflow") >= 1
    [warning] = gm.wait_log("connection_limit_reached")
    assert warning["level"] == "warning" and warning["limit"] == "listener max_connections 2"
    held[0].close()
    assert _read_all(extra).startswith(b"HTTP/1.1 200")
    [cleared] = gm.wait_log("connection_limit_cleared")
    assert cleared["listener"] == "ingress" and cleared["paused_s"] >= 0
    held[1].close()
    extra.close()


def test_the_global_limit_counts_every_listener(upstream, start_mesh):
    cfg = mesh_config([upstream.address])
    cfg["listeners"].append({**cfg["listeners"][0], "name": "second",
                             "address": f"127.0.0.1:{free_port()}"})
    cfg["overload_manager"] = {"resource_monitors": [{
        "name": "envoy.resource_monitors.global_downstream_max_connections",
        "typed_config": {"max_active_downstream_connections": 2}}]}
    gm = start_mesh(cfg)
    [started] = gm.wait_log("mesh_started")
    assert started["max_downstream_connections"] == 2
    _settled(gm)
    _settled(gm, "second")
    on_first = socket.create_connection(("127.0.0.1", gm.port(0)), timeout=5)
    on_second = socket.create_connection(("127.0.0.1", gm.port(1)), timeout=5)
    assert _round_trip(on_first).startswith(b"HTTP/1.1 200")
    assert _round_trip(on_second).startswith(b"HTTP/1.1 200")
    waiting = socket.create_connection(("127.0.0.1", gm.port(0)), timeout=5)
    waiting.sendall(GET_CLOSE)
    assert _round_trip(on_first).startswith(b"HTTP/1.1 200")
    assert select.select([waiting], [], [], 0)[0] == []
    assert gm.stat("listener.ingress.downstream_global_cx_overflow") >= 1
    [warning] = gm.wait_log("connection_limit_reached")
    assert warning["limit"] == "global max_active_downstream_connections 2"
    on_second.close()  # a place frees on the other listener: this one accepts again
    assert _read_all(waiting).startswith(b"HTTP/1.1 200")
    on_first.close()
    waiting.close()


def test_the_default_limit_is_sized_to_the_file_limit_and_said_at_start(upstream, start_mesh):
    gm = start_mesh(mesh_config([upstream.address]), nofile=200)
    [started] = gm.wait_log("mesh_started")
    assert started["max_downstream_connections"] == (200 - 64) // 2
    assert started["connection_limit_from"].startswith("RLIMIT_NOFILE 200")


def test_under_memory_pressure_requests_are_refused_and_keepalive_ends(upstream, start_mesh,
                                                                       ):
    gm = start_mesh(mesh_config([upstream.address]) |
                    {"overload_manager": _overload([NO_KEEPALIVE, STOP_REQUESTS])})
    conn = http.client.HTTPConnection("127.0.0.1", gm.port(), timeout=5)
    conn.request("GET", "/")
    resp = conn.getresponse()
    assert resp.status == 503 and resp.read() == b"envoy overloaded"
    assert resp.getheader("connection") == "close"
    [entry] = gm.access(1)
    assert entry["flags"] == "OM" and entry["status"] == 503
    stats = gm.stats()
    assert stats[f"overload.{STOP_REQUESTS}.active"] == 1
    assert stats[f"overload.{NO_KEEPALIVE}.active"] == 1
    assert stats["overload.envoy.resource_monitors.fixed_heap.pressure"] == 100
    assert any(e.get("action") == STOP_REQUESTS and e["active"]
               for e in gm.wait_log("overload_action"))


def test_keepalive_off_sends_goaway_on_http2_after_the_request(upstream, start_mesh):
    gm = start_mesh(mesh_config([upstream.address], listener={"protocol": "http2"}) |
                    {"overload_manager": _overload([NO_KEEPALIVE])})
    c = H2Client(gm.port())
    sid = c.request("GET", "/")
    c.pump(lambda: c.responses[sid].ended and c.goaway is not None)
    assert c.responses[sid].status == 200 and bytes(c.responses[sid].body) == b"hello from up1\n"
    assert c.goaway.last_stream_id == sid


def test_keepalive_off_closes_a_bolt_connection_after_its_answer(start_mesh):
    up = BoltServer()
    gm = start_mesh(bolt_config(up.address) | {"overload_manager": _overload([NO_KEEPALIVE])})
    c = BoltClient(gm.port())
    c.send(request(7, b"x"))
    [answer] = c.receive(1)
    assert answer["id"] == 7 and answer["status"] == 0
    assert c.sock.recv(10) == b""  # then closed: the client opens a new one
    c.close()
    up.stop()


def test_under_memory_pressure_connections_wait(upstream, start_mesh):
    gm = start_mesh(mesh_config([upstream.address]) |
                    {"overload_manager": _overload([STOP_CONNECTIONS])})
    gm.wait_stat("listener.ingress.downstream_cx_overload_reject")
    s = socket.create_connection(("127.0.0.1", gm.port()), timeout=5)
    s.sendall(GET_CLOSE)
    gm.wait_stat("overload.envoy.resource_monitors.fixed_heap.pressure", 100)
    assert gm.stat(f"overload.{STOP_CONNECTIONS}.active") == 1
    assert select.select([s], [], [], 0)[0] == []
    assert gm.stat("listener.ingress.downstream_cx_total") == 0
    s.close()


def test_max_headers_count_answers_431_on_http1_and_on_the_http2_stream(upstream, start_mesh):
    gm = start_mesh(mesh_config([upstream.address], listener={"max_headers_count": 5}))
    five = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"x-%d: 1\r\n" % i for i in range(4))
    assert _read_all_of(gm.port(), five + b"Connection: close\r\n\r\n").startswith(
        b"HTTP/1.1 431")  # Connection makes six
    assert _read_all_of(gm.port(), five[:-8] + b"Connection: close\r\n\r\n").startswith(
        b"HTTP/1.1 200")
    h2 = start_mesh(mesh_config([upstream.address], listener={
        "protocol": "http2", "max_headers_count": 5}))
    c = H2Client(h2.port())
    over = c.request("GET", "/", headers=[(f"x-{i}", "1") for i in range(6)])
    ok = c.request("GET", "/", headers=[(f"x-{i}", "1") for i in range(5)])
    c.pump(lambda: c.responses[over].ended and c.responses[ok].ended)
    assert (c.responses[over].status, c.responses[ok].status) == (431, 200)


def _read_all_of(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        return _read_all(s)


def test_a_head_sent_too_slowly_gets_408(upstream, start_mesh):
    """Slowloris: a byte every 50 ms keeps the connection from being idle, but the head must be
    complete within request_headers_timeout."""
    gm = start_mesh(mesh_config([upstream.address], listener={"request_headers_timeout": "0.5s"}))
    s = socket.create_connection(("127.0.0.1", gm.port()), timeout=10)
    stop = threading.Event()

    def trickle() -> None:
        for b in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200:
            if stop.wait(0.05):
                return
            try:
                s.send(bytes([b]))
            except OSError:
                return
    t = threading.Thread(target=trickle)
    t.start()
    try:
        answer = _read_all(s)
    finally:
        stop.set()
        t.join()
        s.close()
    assert answer.startswith(b"HTTP/1.1 408") and b"request headers timeout" in answer
    [entry] = gm.access(1)
    assert entry["status"] == 408 and entry["flags"] == "DPE"


def test_max_concurrent_streams_is_what_http2_clients_are_told(upstream, start_mesh):
    gm = start_mesh(mesh_config([upstream.address], listener={
        "protocol": "http2", "max_concurrent_streams": 2}))
    c = H2Client(gm.port())
    sid = c.request("GET", "/")
    c.pump(lambda: c.responses[sid].ended)
    assert c.h2.remote_settings.max_concurrent_streams == 2


def test_a_bolt_connection_is_not_read_past_max_concurrent_streams(start_mesh):
    up = BoltServer()
    gm = start_mesh(bolt_config(up.address, listener={"max_concurrent_streams": 2}))
    c = BoltClient(gm.port())
    c.send(request(1, b"sleep:0.3:a") + request(2, b"sleep:0.3:b") + request(3, b"quick"))
    order = [f["id"] for f in c.receive(3)]
    assert sorted(order) == [1, 2, 3] and order[0] != 3  # 3 waited for a place
    c.close()
    up.stop()


def test_max_stream_duration_answers_408_or_resets_what_was_already_answering(start_mesh):
    """Envoy's max_stream_duration: 408 DT while the upstream has said nothing; once the
    response began, the client's stream is cut and so is the upstream's."""
    upstream_saw_close = threading.Event()

    def script(conn: socket.socket, index: int, head: bytes) -> bool:
        if b"/stall-head" not in head:
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nfirst")
        while conn.recv(65536):  # nothing more is said until greenmesh lets go
            pass
        upstream_saw_close.set()
        return False
    up = RawUpstream(script)
    gm = start_mesh(mesh_config([up.address], timeout="0s",
                                listener={"max_stream_duration": "0.3s"}))
    answer = _read_all_of(gm.port(), b"GET /stall-head HTTP/1.1\r\nHost: x\r\n"
                                       b"Connection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 408") and answer.endswith(b"downstream duration timeout")
    [entry] = gm.access(1)
    assert (entry["status"], entry["flags"]) == (408, "DT")
    assert upstream_saw_close.wait(10)
    upstream_saw_close.clear()
    cut = _read_all_of(gm.port(), b"GET /stall-body HTTP/1.1\r\nHost: x\r\n\r\n")
    assert cut.startswith(b"HTTP/1.1 200") and cut.endswith(b"first")  # 95 bytes never came
    assert gm.access(2)[1]["flags"] == "DT"
    assert upstream_saw_close.wait(10)
    up.stop()


def test_max_stream_duration_spares_the_other_streams_of_a_connection(upstream, start_mesh):
    gm = start_mesh(mesh_config([upstream.address], listener={
        "protocol": "http2", "max_stream_duration": "0.5s"}))
    c = H2Client(gm.port())
    slow = c.request("GET", "/delay/5")
    quick = c.request("GET", "/")
    c.pump(lambda: c.done(slow, quick))
    assert (c.responses[slow].status, c.responses[quick].status) == (408, 200)
    again = c.request("GET", "/")  # the connection serves on
    c.pump(lambda: c.done(again))
    assert c.responses[again].status == 200
    c.close()


def test_max_stream_duration_ends_a_wait_for_a_pooled_connection_cleanly(upstream, start_mesh):
    """The duration passes while the request queues for the cluster's only connection: 408,
    and the queue forgets it (the connection, once free, serves the next request)."""
    cfg = mesh_config([upstream.address], cluster={"max_connections": 1})
    cfg["listeners"].append({**cfg["listeners"][0], "name": "bounded",
                             "address": f"127.0.0.1:{free_port()}", "max_stream_duration": "0.3s"})
    gm = start_mesh(cfg)
    holder = socket.create_connection(("127.0.0.1", gm.port(0)), timeout=10)
    holder.sendall(b"GET /delay/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert until(lambda: gm.stat("cluster.backend.upstream_cx_total") == 1)
    queued = _read_all_of(gm.port(1), GET_CLOSE)
    assert queued.startswith(b"HTTP/1.1 408")
    assert _read_all(holder).startswith(b"HTTP/1.1 200")
    holder.close()
    assert _read_all_of(gm.port(1), GET_CLOSE).startswith(b"HTTP/1.1 200")
    assert gm.stat("cluster.backend.upstream_cx_total") == 1  # one connection, handed on


def test_max_stream_duration_answers_a_bolt_request_with_timeout(start_mesh):
    up = BoltServer()
    gm = start_mesh(bolt_config(up.address, listener={"max_stream_duration": "0.3s"}))
    c = BoltClient(gm.port())
    c.send(request(1, b"sleep:5:slow") + request(2, b"quick"))
    answers = {f["id"]: f for f in c.receive(2)}
    assert answers[2]["status"] == 0 and answers[1]["status"] == 7  # bolt TIMEOUT
    c.close()
    up.stop()


def test_max_frame_size_is_advertised_and_taken_on_http2(upstream, start_mesh):
    gm = start_mesh(mesh_config([upstream.address], listener={
        "protocol": "http2", "max_frame_size": 65536}))
    c = H2Client(gm.port())
    warm = c.request("GET", "/")
    c.pump(lambda: c.done(warm))
    assert c.h2.remote_settings.max_frame_size == 65536
    sid = c.request("POST", "/sink", body=b"x" * 40000)  # one DATA frame of 40000 bytes
    c.pump(lambda: c.done(sid))
    assert c.responses[sid].status == 200 and c.responses[sid].body == b"40000\n"
    c.close()


def test_max_frame_size_bounds_a_bolt_frame(start_mesh):
    up = BoltServer()
    gm = start_mesh(bolt_config(up.address, listener={"max_frame_size": 16384}))
    c = BoltClient(gm.port())
    c.send(request(1, b"a" * 15000))
    [ok] = c.receive(1)
    assert ok["status"] == 0
    c.send(request(2, b"b" * 17000))
    [refused] = c.receive(1)
    assert refused["id"] == 2 and refused["status"] == 9  # CODEC_EXCEPTION, then closed
    assert c.sock.recv(1) == b""
    c.close()
    up.stop()


def test_per_connection_buffer_limit_pauses_reading_past_it(start_mesh):
    """Two bolt requests of 12 KB in flight hold more than a 20000-byte limit: the connection
    is read no further until one is answered (and all three are)."""
    up = BoltServer()
    stat = "listener.ingress.downstream_flow_control_paused_reading_total"
    for limit, pauses in ((20000, True), (None, False)):
        extra = {"per_connection_buffer_limit_bytes": limit} if limit else {}
        gm = start_mesh(bolt_config(up.address, listener=extra))
        c = BoltClient(gm.port())
        c.send(b"".join(request(i, b"sleep:0.2:" + b"p" * 12000) for i in (1, 2, 3)))
        assert sorted(f["id"] for f in c.receive(3)) == [1, 2, 3]
        assert (gm.stat(stat) >= 1) is pauses
        c.close()
    up.stop()


def test_a_stalled_request_body_gets_408_si_and_the_connections_other_streams_go_on(
        upstream, start_mesh):
    """Envoy's stream_idle_timeout on the downstream side: an HTTP/2 request whose body stops
    coming is answered 408 with SI; the connection's other streams are served."""
    gm = start_mesh(mesh_config([upstream.address], listener={
        "protocol": "http2", "stream_idle_timeout": "0.4s"}))
    c = H2Client(gm.port())
    stalled = c.send([(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"t"),
                      (b":path", b"/sink")], end=False)
    quick = c.request("GET", "/")
    c.pump(lambda: c.done(stalled, quick))
    assert (c.responses[stalled].status, c.responses[quick].status) == (408, 200)
    entries = {e["path"]: e for e in gm.access(2)}
    assert (entries["/sink"]["status"], entries["/sink"]["flags"]) == (408, "SI")
    c.close()


def test_a_stalled_http1_body_gets_408_and_close_before_the_connection_idle_timeout(
        upstream, start_mesh):
    gm = start_mesh(mesh_config([upstream.address], listener={
        "stream_idle_timeout": "0.4s", "idle_timeout": "60s"}))
    answer = _read_all_of(gm.port(), b"POST /sink HTTP/1.1\r\nHost: x\r\n"
                                     b"Content-Length: 10\r\n\r\nabc")
    assert answer.startswith(b"HTTP/1.1 408") and b"connection: close" in answer.lower()
    assert answer.endswith(b"stream timeout")
    [entry] = gm.access(1)
    assert (entry["status"], entry["flags"]) == (408, "SI")


def test_stream_idle_timeout_cuts_a_silent_upstream_where_the_route_sets_none(start_mesh):
    """Upstream side: with no route timeout and no route idle_timeout, the listener's
    stream_idle_timeout still ends a response that stops coming."""
    def stall(conn: socket.socket, index: int, head: bytes) -> bool:
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        while conn.recv(65536):
            pass
        return False
    up = RawUpstream(stall)
    gm = start_mesh(mesh_config([up.address], timeout="0s",
                                listener={"stream_idle_timeout": "0.4s"}))
    out = _read_all_of(gm.port(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200") and b"first" in out and not out.endswith(b"0\r\n\r\n")
    assert gm.access(1)[0]["flags"] == "UT"
    up.stop()


def test_limits_read_from_envoys_connection_manager():
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network."
                    "http_connection_manager.v3.HttpConnectionManager",
           "rds": {"route_config_name": "r", "config_source": {"ads": {}}},
           "request_headers_timeout": "0s", "stream_idle_timeout": "0s",
           "common_http_protocol_options": {
               "max_headers_count": 50, "max_stream_duration": "2.5s"},
           "http2_protocol_options": {"max_concurrent_streams": 7}}
    config = load_dict({"xds": {"server": "127.0.0.1:1", "node": {"id": "n"}}, "listeners": [{
        "name": "l", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]}]})
    [lst] = config.listeners
    assert (lst.max_headers_count, lst.request_headers_timeout, lst.max_concurrent_streams,
            lst.max_stream_duration, lst.stream_idle_timeout) == (50, None, 7, 2.5, None)
    # 0s: off, as Envoy
    assert load_dict({}).listeners == ()
    [cluster] = load_dict(mesh_config(["127.0.0.1:1"], cluster={
        "per_connection_buffer_limit_bytes": 4096})).clusters
    assert cluster.per_connection_buffer_limit_bytes == 4096
    defaults = load_dict({"listeners": [{"name": "d", "address": "127.0.0.1:1",
                                         "route_config": "r"}],
                          "route_configs": [{"name": "r", "virtual_hosts": [{
                              "name": "v", "domains": ["*"], "routes": [{
                                  "match": {"prefix": "/"},
                                  "direct_response": {"status": 200}}]}]}]}).listeners[0]
    assert (defaults.max_headers_count, defaults.request_headers_timeout,
            defaults.max_concurrent_streams, defaults.max_connections,
            defaults.max_stream_duration, defaults.max_frame_size,
            defaults.per_connection_buffer_limit_bytes, defaults.stream_idle_timeout) == (
        100, 60.0, 100, None, None, None, 1 << 20, 300.0)


@pytest.mark.parametrize(("listener", "error"), [
    ({"max_frame_size": 1024},
     "listeners[0].max_frame_size: expected a frame size between 16384 and 16777215"),
    ({"max_frame_size": 1 << 24},
     "listeners[0].max_frame_size: expected a frame size between 16384 and 16777215"),
    ({"per_connection_buffer_limit_bytes": 0},
     "listeners[0].per_connection_buffer_limit_bytes: expected a positive integer"),
    ({"max_stream_duration": "soon"}, "listeners[0].max_stream_duration:"),
    ({"stream_idle_timeout": -1}, "listeners[0].stream_idle_timeout:"),
])
def test_limit_errors_name_their_key(listener, error):
    with pytest.raises(ConfigError) as e:
        load_dict(mesh_config(["127.0.0.1:1"], listener=listener))
    assert error in str(e.value)


@pytest.mark.parametrize(("overload", "error"), [
    ({"resource_monitors": [{"name": "envoy.resource_monitors.injected_resource"}]},
     "overload_manager.resource_monitors[0].name: expected one of"),
    ({"resource_monitors": [{"name": "envoy.resource_monitors.fixed_heap",
                             "typed_config": {"max_heap_size_bytes": -1}}]},
     "overload_manager.resource_monitors[0].typed_config.max_heap_size_bytes:"),
    ({"actions": [{"name": STOP_REQUESTS, "triggers": [{
        "name": "envoy.resource_monitors.fixed_heap", "threshold": {"value": 0.9}}]}]},
     "overload_manager.actions[0].triggers[0].name: envoy.resource_monitors.fixed_heap is not "
     "among the resource_monitors"),
    ({**_overload([STOP_REQUESTS]), "actions": [{"name": STOP_REQUESTS, "triggers": [{
        "name": "envoy.resource_monitors.fixed_heap", "threshold": {"value": 1.5}}]}]},
     "overload_manager.actions[0].triggers[0].threshold.value: expected a number in (0, 1]"),
    ({**_overload([STOP_REQUESTS]), "actions": [{"name": STOP_REQUESTS, "triggers": [{
        "name": "envoy.resource_monitors.fixed_heap", "scaled": {}}]}]},
     "overload_manager.actions[0].triggers[0].scaled: unknown key"),
    ({**_overload([]), "actions": [{"name": "envoy.overload_actions.shrink_heap",
                                    "triggers": [{"name": "envoy.resource_monitors.fixed_heap",
                                                  "threshold": {"value": 0.5}}]}]},
     "overload_manager.actions[0].name: expected one of"),
])
def test_overload_config_errors_name_their_key(overload, error):
    with pytest.raises(ConfigError) as e:
        load_dict({"overload_manager": overload})
    assert any(line.startswith(error) for line in e.value.errors), e.value.errors
