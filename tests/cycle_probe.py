"""Run by tests/test_pool_and_leaks.py in a process of its own: serves HTTP/1.1, HTTP/2 (both
sides) and bolt (both sides) with the cyclic collector off, then lists what only the collector
could free. Connections and streams must be freed by reference counting alone, the moment they
end: with hundreds of connections coming and going, waiting for a full collection holds their
buffers (and an HTTP/2 codec's tables) for seconds."""

from __future__ import annotations

import collections
import gc
import sys

import gevent
import h2.config
import h2.connection
import h2.events
from gevent import socket

from greenmesh.config import load_dict
from greenmesh.mesh import Mesh
from greenmesh.testing.upstream import serve
from tests.boltpeer import BoltServer, parse, request

SERVICE = "com.example.EchoService:1.0"


def http1(port: int) -> None:
    s = socket.create_connection(("127.0.0.1", port))
    for _ in range(2):  # keep-alive: the second request reuses the connection
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while b"hello" not in data:
            data += s.recv(65536)
    s.close()


def http2(port: int) -> None:
    s = socket.create_connection(("127.0.0.1", port))
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    for sid in (1, 3):
        c.send_headers(sid, [(":method", "GET"), (":scheme", "http"), (":authority", "x"),
                             (":path", "/")], end_stream=True)
    s.sendall(c.data_to_send())
    ended = 0
    while ended < 2:
        for ev in c.receive_data(s.recv(65536)):
            ended += isinstance(ev, h2.events.StreamEnded)
        s.sendall(c.data_to_send())
    s.close()


def bolt(port: int) -> None:
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(request(1, b"x") + request(2, b"y"))
    buf = bytearray()
    got: list = []
    while len(got) < 2:
        buf += s.recv(65536)
        got += parse(buf)
    s.close()


def main() -> None:
    up, bolt_up = serve(0), BoltServer()
    ports = [int(p) for p in sys.argv[1:5]]
    route = {"match": {"prefix": "/"}, "route": {"cluster": "web"}}
    config = load_dict({
        "listeners": [
            {"name": "h1", "address": f"127.0.0.1:{ports[0]}", "route_config": "web"},
            {"name": "h2", "address": f"127.0.0.1:{ports[1]}", "route_config": "web",
             "protocol": "http2"},
            {"name": "to_h2", "address": f"127.0.0.1:{ports[2]}", "route_config": "to_h2"},
            {"name": "bolt", "address": f"127.0.0.1:{ports[3]}", "route_config": "bolt",
             "protocol": "bolt"}],
        "route_configs": [
            {"name": "web", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [route]}]},
            {"name": "to_h2", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
                {"match": {"prefix": "/"}, "route": {"cluster": "h2_hop"}}]}]},
            {"name": "bolt", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [{
                "match": {"headers": [{"name": "service", "string_match": {"exact": SERVICE}}]},
                "route": {"cluster": "bolt_up"}}]}]}],
        "clusters": [
            {"name": "web", "endpoints": [f"127.0.0.1:{up.server_port}"]},
            {"name": "h2_hop", "protocol": "http2", "endpoints": [f"127.0.0.1:{ports[1]}"]},
            {"name": "bolt_up", "protocol": "bolt", "endpoints": [bolt_up.address]}],
    })
    mesh = Mesh(config).start()

    def traffic() -> None:
        gevent.joinall([gevent.spawn(f, p) for f, p in
                        ((http1, ports[0]), (http2, ports[1]), (http1, ports[2]),
                         (bolt, ports[3])) for _ in range(5)], raise_error=True)
        counters = mesh.stats.counters
        # Until every client's connection has been closed and counted (the h2 listener keeps
        # one: the pooled connection of the to_h2 hop).
        for _ in range(1000):
            if all(counters[f"listener.{n}.downstream_cx_total"]
                   - counters[f"listener.{n}.downstream_cx_destroy"] == (n == "h2")
                   for n in ("h1", "h2", "to_h2", "bolt")):
                break
            gevent.sleep(0.01)
        else:
            raise AssertionError(f"connections still open: {dict(counters)}")
        gevent.sleep(0)  # a turn of the loop for what ended with them

    traffic()  # warm: what lives as long as the mesh is made now
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    traffic()
    gc.collect()
    during = _ours(gc.garbage)
    gc.garbage.clear()
    mesh.stop(timeout=2)
    gevent.sleep(0)
    gc.collect()
    after_stop = _ours(gc.garbage)
    print({"during": during, "after_stop": after_stop})
    bolt_up.stop()


def _ours(garbage: list) -> dict[str, int]:
    """greenmesh's objects and greenlets among the garbage (the test clients' h2 library makes
    cycles of its own, not counted)."""
    kinds = collections.Counter(
        f"{type(o).__module__}.{type(o).__qualname__}" for o in garbage
        if type(o).__module__.startswith("greenmesh") or isinstance(o, gevent.Greenlet))
    return dict(kinds)


if __name__ == "__main__":
    main()
