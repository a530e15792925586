"""A real grpcio client calls a real grpcio server through the greenmesh process (h2c both ways)."""

from __future__ import annotations

import http.client
import re
import threading
import time
from concurrent import futures

import grpc
import pytest

from tests.harness import mesh_config

SERVICE = "test.Echo"


class Recorder:
    def __init__(self):
        self.cancelled = threading.Event()
        self.deadlines: list[float | None] = []


def make_server(rec: Recorder) -> tuple[grpc.Server, int]:
    def unary(request: bytes, context):
        rec.deadlines.append(context.time_remaining())
        if request == b"fail":
            context.set_trailing_metadata((("x-why", "asked-to"),))
            context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        if request.startswith(b"sleep"):
            time.sleep(float(request[5:]))
        context.set_trailing_metadata((("x-trailer", "t-" + request.decode()[:10]),))
        return b"echo:" + request

    def server_stream(request: bytes, context):
        context.add_callback(rec.cancelled.set)
        for i in range(int(request)):
            yield b"item-%d" % i
            time.sleep(0.05)

    def client_stream(requests, context):
        return b"+".join(requests)

    def bidi(requests, context):
        for r in requests:
            yield r.upper()

    handler = grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


@pytest.fixture
def grpc_mesh(start_mesh):
    rec = Recorder()
    server, port = make_server(rec)
    cfg = mesh_config([f"127.0.0.1:{port}"], timeout="0s", listener={"protocol": "http2"},
                      cluster={"protocol": "http2"})
    gm = start_mesh(cfg)
    channel = grpc.insecure_channel(f"127.0.0.1:{gm.port()}")
    yield channel, rec, cfg
    channel.close()
    server.stop(0)


def call(channel, kind: str, name: str):
    method = f"/{SERVICE}/{name}"
    return getattr(channel, kind)(method)


def test_unary_with_trailers_and_status(grpc_mesh):
    channel, rec, _ = grpc_mesh
    unary = call(channel, "unary_unary", "Unary")
    resp, c = unary.with_call(b"hello", timeout=5)
    assert resp == b"echo:hello" and c.code() == grpc.StatusCode.OK
    assert ("x-trailer", "t-hello") in c.trailing_metadata()
    with pytest.raises(grpc.RpcError) as e:
        unary(b"fail", timeout=5)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert e.value.details() == "no such thing"
    assert ("x-why", "asked-to") in e.value.trailing_metadata()


def test_streaming_kinds(grpc_mesh):
    channel, _, _ = grpc_mesh
    items = list(call(channel, "unary_stream", "ServerStream")(b"5", timeout=10))
    assert items == [b"item-%d" % i for i in range(5)]
    total = call(channel, "stream_unary", "ClientStream")(iter([b"a", b"b", b"c"]), timeout=10)
    assert total == b"a+b+c"
    # Bidirectional: each reply comes back before the next request is sent.
    sent: list[bytes] = []
    replies = []
    ready = threading.Event()

    def requests():
        for word in (b"one", b"two", b"three"):
            sent.append(word)
            yield word
            assert ready.wait(5)
            ready.clear()
    for reply in call(channel, "stream_stream", "Bidi")(requests(), timeout=10):
        replies.append(reply)
        assert len(sent) == len(replies)  # interleaved, not batched at the end
        ready.set()
    assert replies == [b"ONE", b"TWO", b"THREE"]


def test_deadline_propagates_and_expires(grpc_mesh):
    channel, rec, _ = grpc_mesh
    unary = call(channel, "unary_unary", "Unary")
    unary(b"x", timeout=3)
    # grpc-timeout arrived (grpc rounds it to its units: a hair over 3 s happens)
    assert rec.deadlines[-1] is not None and 1.5 < rec.deadlines[-1] <= 3.1
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as e:
        unary(b"sleep2", timeout=0.5)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - t0 < 1.5


def test_client_cancellation_reaches_the_server(grpc_mesh):
    channel, rec, _ = grpc_mesh
    stream = call(channel, "unary_stream", "ServerStream")(b"1000", timeout=30)
    assert next(stream) == b"item-0"
    assert next(stream) == b"item-1"
    stream.cancel()
    assert rec.cancelled.wait(5), "the upstream server never saw the cancellation"


def test_many_concurrent_rpcs_share_one_upstream_connection(grpc_mesh):
    channel, _, cfg = grpc_mesh
    unary = call(channel, "unary_unary", "Unary")
    with futures.ThreadPoolExecutor(50) as ex:
        results = list(ex.map(lambda i: unary(b"n%d" % i, timeout=10), range(200)))
    assert results == [b"echo:n%d" % i for i in range(200)]
    admin = int(cfg["admin"]["address"].rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=5)
    conn.request("GET", "/stats")
    stats = conn.getresponse().read().decode()
    assert re.search(r"cluster.backend.upstream_cx_total: 1\n", stats), stats
