"""What h2 alone costs per proxied HTTP/2 request: the ceiling any proxy built on it can reach.

No sockets, no greenlets, no routing: only the h2 calls greenmesh makes for one h2c -> h2c
request, on h2 connections configured as greenmesh configures them (``new_h2``), in the shape
of ``bench/http2.py``: 10 downstream connections with 10 streams in flight each, one upstream
connection carrying all 100, headers as h2load and nginx send them. Both peers (the h2load
and nginx stand-ins) are h2 connections too, but only greenmesh's two halves are timed: the
downstream server side (receive the request, send the response) and the upstream client side
(send the request, receive the response, acknowledge its data).

``--hpack-only`` times only the four HPACK operations of the same request (decode the request,
encode it upstream, decode the response, encode it downstream) with the ``hpack`` library h2
uses: the floor for any HTTP/2 layer built on that library.

    .venv/bin/python bench/http2_floor.py [--requests N] [--no-validate] [--hpack-only]
"""

from __future__ import annotations

import argparse
import time

from common import ROOT  # noqa: F401  (puts the project on sys.path)
from h2.events import DataReceived, RequestReceived, ResponseReceived
from hpack import Decoder, Encoder

from greenmesh.streams.http2 import new_h2

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


def handshake(client, server) -> None:
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())


def run(requests: int, validate: bool) -> float:
    clients = [new_h2(True) for _ in range(CLIENTS)]       # h2load
    downstream = [new_h2(False) for _ in range(CLIENTS)]   # greenmesh, server side
    upstream, nginx = new_h2(True), new_h2(False)          # greenmesh client side; nginx
    for conn in (*clients, *downstream, upstream, nginx):
        conn.config.validate_inbound_headers = validate
    for c, s in zip(clients, downstream, strict=True):
        handshake(c, s)
    handshake(upstream, nginx)
    timed = 0.0
    done = 0
    while done < requests:
        for c in clients:
            for _ in range(STREAMS):
                c.send_headers(c.get_next_available_stream_id(), REQUEST, end_stream=True)
        wires = [c.data_to_send() for c in clients]
        t0 = time.perf_counter()
        origin = {}  # upstream stream id -> (downstream connection, its stream id)
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


def measure(requests: int, validate: bool = True) -> float:
    """Microseconds per request: the best of three runs after a warm-up."""
    run(2_000, validate)  # warm-up: HPACK tables filled, code paths hot
    return min(run(requests // 3, validate) for _ in range(3))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=50_000)
    ap.add_argument("--no-validate", action="store_true",
                    help="turn h2's inbound header validation off (greenmesh keeps it on)")
    ap.add_argument("--hpack-only", action="store_true",
                    help="time only the HPACK work of the same request, with the hpack library")
    args = ap.parse_args()
    if args.hpack_only:
        run_hpack(2_000)
        us = min(run_hpack(args.requests // 3) for _ in range(3))
        print(f"hpack alone, greenmesh's two decodes and two encodes of one h2c -> h2c request: "
              f"{us:.1f} us -> at most {1e6 / us:,.0f} req/s on one core")
        return
    us = measure(args.requests, not args.no_validate)
    print(f"h2 alone, greenmesh's two halves of one h2c -> h2c request "
          f"(validation {'off' if args.no_validate else 'on'}): {us:.1f} us"
          f" -> at most {1e6 / us:,.0f} req/s on one core")


if __name__ == "__main__":
    main()
