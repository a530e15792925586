"""What the HTTP/2 layer alone costs per proxied request: the ceiling of any proxy built on it.

No sockets, no greenlets, no routing: only the codec calls greenmesh makes for one h2c -> h2c
request, in the shape of ``bench/http2.py``: 10 downstream connections with 10 streams in flight
each, one upstream connection carrying all 100, headers as h2load and nginx send them. The peers
(h2load and nginx stand-ins) are codecs too, but only greenmesh's two halves are timed: the
downstream server side (receive the request, send the response) and the upstream client side
(send the request, receive the response, give its window back).

``--library h2`` times the same with the h2 library (configured as greenmesh configured it before
it had its own codec): the number that made greenmesh write its own. ``--hpack-only`` times only
the four HPACK operations with the ``hpack`` library, without greenmesh's block caches.

    .venv/bin/python bench/http2_floor.py [--requests N] [--library greenmesh|h2] [--hpack-only]
"""

from __future__ import annotations

import argparse
import time

from common import ROOT  # noqa: F401  (puts the project on sys.path)
from hpack import Decoder, Encoder

from greenmesh.streams.http2.codec import H2Codec

CLIENTS, STREAMS = 10, 10
REQUEST = [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"),
           (b":authority", b"127.0.0.1:15001"), (b"accept", b"*/*"),
           (b"accept-encoding", b"gzip, deflate"), (b"user-agent", b"h2load nghttp2/1.52.0")]
FORWARDED = [(b"x-forwarded-for", b"127.0.0.1"), (b"x-forwarded-proto", b"http")]
BODY = b"hello from nginx\n"


def response() -> list[tuple[bytes, bytes]]:
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime()).encode()
    return [(b":status", b"200"), (b"server", b"nginx/1.22.1"), (b"date", date),
            (b"content-type", b"text/plain"), (b"content-length", b"%d" % len(BODY))]


class Recorder:
    """A codec's events, kept as tuples for the benchmark loop."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_headers(self, sid, headers, end_stream):
        self.events.append(("headers", sid, headers, end_stream))

    def on_data(self, sid, data, end_stream):
        self.events.append(("data", sid, data, end_stream))

    def on_trailers(self, sid, headers):
        pass

    def on_reset(self, sid, code, remote):
        raise AssertionError(f"reset {sid} {code}")

    def on_window(self, sid):
        pass

    def on_settings(self):
        pass

    def on_goaway(self, last, code):
        raise AssertionError("goaway")

    def on_refused(self, sid, code, reason):
        raise AssertionError(f"refused {sid}: {reason}")

    def take(self) -> list[tuple]:
        events, self.events = self.events, []
        return events


def codec(client: bool) -> tuple[H2Codec, Recorder]:
    r = Recorder()
    return H2Codec(r, client, max_header_list_size=None if client else 60 * 1024), r


def handshake(client: H2Codec, server: H2Codec) -> None:
    client.initiate()
    server.initiate()
    server.receive(client.data_to_send())
    client.receive(server.data_to_send())
    server.receive(client.data_to_send())


def run(requests: int) -> float:
    clients = [codec(True) for _ in range(CLIENTS)]        # h2load
    downstream = [codec(False) for _ in range(CLIENTS)]    # greenmesh, server side
    upstream, nginx = codec(True), codec(False)            # greenmesh client side; nginx
    for (c, _), (s, _) in zip(clients, downstream, strict=True):
        handshake(c, s)
    handshake(upstream[0], nginx[0])
    timed = 0.0
    done = 0
    up, up_events = upstream
    while done < requests:
        for c, _ in clients:
            for _ in range(STREAMS):
                c.send_headers(c.open_stream(), REQUEST, end_stream=True)
        wires = [c.data_to_send() for c, _ in clients]
        t0 = time.perf_counter()
        origin = {}  # upstream stream id -> (downstream codec, its stream id)
        for (s, events), wire in zip(downstream, wires, strict=True):
            s.receive(wire)
            for _, sid, headers, _end in events.take():
                usid = up.open_stream()
                up.send_headers(usid, [*headers, *FORWARDED], end_stream=True)
                origin[usid] = (s, sid)
        wire = up.data_to_send()
        t1 = time.perf_counter()
        resp = response()
        n, n_events = nginx
        n.receive(wire)
        for _, sid, _headers, _end in n_events.take():
            n.send_headers(sid, resp, False)
            n.send_data(sid, BODY, True)
            n.release(sid)
        down = n.data_to_send()
        t2 = time.perf_counter()
        up.receive(down)
        for kind, usid, payload, end in up_events.take():
            s, sid = origin[usid]
            if kind == "headers":
                s.send_headers(sid, payload, False)
            else:
                up.consumed(usid, len(payload))
                s.send_data(sid, payload, end)
                s.release(sid)
                up.release(usid)
        outs = [s.data_to_send() for s, _ in downstream]
        ack = up.data_to_send()
        t3 = time.perf_counter()
        n.receive(ack)
        for (c, events), out in zip(clients, outs, strict=True):
            c.receive(out)
            for kind, sid, payload, _end in events.take():
                if kind == "data":
                    c.consumed(sid, len(payload))
                    c.release(sid)
        timed += (t1 - t0) + (t3 - t2)
        done += len(origin)
    return timed / done * 1e6


def run_h2(requests: int) -> float:
    """The same on h2 (in the test extra), configured as greenmesh configured it."""
    from h2.config import H2Configuration
    from h2.connection import H2Connection
    from h2.events import DataReceived, RequestReceived, ResponseReceived

    def new(client: bool) -> H2Connection:
        return H2Connection(H2Configuration(
            client_side=client, header_encoding=None, validate_inbound_headers=True,
            validate_outbound_headers=False, normalize_outbound_headers=False))

    def shake(client, server) -> None:
        client.initiate_connection()
        server.initiate_connection()
        server.receive_data(client.data_to_send())
        client.receive_data(server.data_to_send())
        server.receive_data(client.data_to_send())
    clients = [new(True) for _ in range(CLIENTS)]
    downstream = [new(False) for _ in range(CLIENTS)]
    upstream, nginx = new(True), new(False)
    for c, s in zip(clients, downstream, strict=True):
        shake(c, s)
    shake(upstream, nginx)
    timed, done = 0.0, 0
    while done < requests:
        for c in clients:
            for _ in range(STREAMS):
                c.send_headers(c.get_next_available_stream_id(), REQUEST, end_stream=True)
        wires = [c.data_to_send() for c in clients]
        t0 = time.perf_counter()
        origin = {}
        for s, wire in zip(downstream, wires, strict=True):
            for ev in s.receive_data(wire):
                if isinstance(ev, RequestReceived):
                    sid = upstream.get_next_available_stream_id()
                    upstream.send_headers(sid, [*ev.headers, *FORWARDED], end_stream=True)
                    origin[sid] = (s, ev.stream_id)
        up = upstream.data_to_send()
        t1 = time.perf_counter()
        resp = response()
        for ev in nginx.receive_data(up):
            if isinstance(ev, RequestReceived):
                nginx.send_headers(ev.stream_id, resp)
                nginx.send_data(ev.stream_id, BODY, end_stream=True)
        down = nginx.data_to_send()
        t2 = time.perf_counter()
        for ev in upstream.receive_data(down):
            if isinstance(ev, ResponseReceived):
                s, sid = origin[ev.stream_id]
                s.send_headers(sid, ev.headers)
            elif isinstance(ev, DataReceived):
                upstream.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                s, sid = origin[ev.stream_id]
                s.send_data(sid, ev.data, end_stream=ev.stream_ended is not None)
        outs = [s.data_to_send() for s in downstream]
        ack = upstream.data_to_send()
        t3 = time.perf_counter()
        nginx.receive_data(ack)
        for c, out in zip(clients, outs, strict=True):
            for ev in c.receive_data(out):
                if isinstance(ev, DataReceived):
                    c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        timed += (t1 - t0) + (t3 - t2)
        done += len(origin)
    return timed / done * 1e6


def run_hpack(requests: int) -> float:
    """One encoder/decoder pair per direction of each hop, as on real connections."""
    h2load, gm_in, gm_out, nginx = Encoder(), Decoder(), Encoder(), Decoder()
    nginx_out, gm_in_resp, gm_out_resp, h2load_in = Encoder(), Decoder(), Encoder(), Decoder()
    timed = 0.0
    resp = response()
    for _ in range(requests):
        block = h2load.encode(REQUEST)
        t0 = time.perf_counter()
        upstream_block = gm_out.encode([*gm_in.decode(block, raw=True), *FORWARDED])
        t1 = time.perf_counter()
        nginx.decode(upstream_block, raw=True)
        block = nginx_out.encode(resp)
        t2 = time.perf_counter()
        downstream_block = gm_out_resp.encode(gm_in_resp.decode(block, raw=True))
        t3 = time.perf_counter()
        h2load_in.decode(downstream_block, raw=True)
        timed += (t1 - t0) + (t3 - t2)
    return timed / requests * 1e6


def best(fn, requests: int) -> float:
    """Microseconds per request: the best of three runs after a warm-up."""
    fn(2_000)  # warm-up: HPACK tables filled, code paths hot
    return min(fn(requests // 3) for _ in range(3))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=50_000)
    ap.add_argument("--library", choices=("greenmesh", "h2"), default="greenmesh")
    ap.add_argument("--hpack-only", action="store_true",
                    help="time only the HPACK work of the same request, with the hpack library")
    args = ap.parse_args()
    if args.hpack_only:
        us = best(run_hpack, args.requests)
        print(f"hpack alone, greenmesh's two decodes and two encodes of one h2c -> h2c request: "
              f"{us:.1f} us -> at most {1e6 / us:,.0f} req/s on one core")
        return
    us = best(run_h2 if args.library == "h2" else run, args.requests)
    print(f"{args.library} alone, greenmesh's two halves of one h2c -> h2c request: {us:.1f} us"
          f" -> at most {1e6 / us:,.0f} req/s on one core")


if __name__ == "__main__":
    main()
