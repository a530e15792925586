"""What a minimal hand-written HTTP/2 layer on hpack would cost per proxied request: a sketch.

Not greenmesh code and not a usable HTTP/2 implementation: it frames only what the common case of
``bench/http2_floor.py`` needs (HEADERS and DATA, END_STREAM, connection and stream windows with
WINDOW_UPDATE, a one-pass header check), with none of the rest (SETTINGS, CONTINUATION, PRIORITY,
padding, RST_STREAM, GOAWAY, stream states). It exists to put a number on the alternative to
h2 that issue 4's bar raises: the same shape and headers as ``http2_floor.py``, the same
``hpack`` library, only greenmesh's two halves timed. A full layer would cost more than this.

    .venv/bin/python bench/http2_lean_floor.py [--requests N]
"""

from __future__ import annotations

import argparse
import struct
import time

from common import ROOT  # noqa: F401  (puts the project on sys.path)
from hpack import Decoder, Encoder
from http2_floor import BODY, CLIENTS, FORWARDED, REQUEST, STREAMS, response

HEADER = struct.Struct(">BHBBI")  # length (24 bits as byte + short), type, flags, stream id
DATA, HEADERS, WINDOW_UPDATE = 0x0, 0x1, 0x8
END_STREAM, END_HEADERS = 0x1, 0x4
WINDOW = 65535
_BAD_NAME = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ \t\r\n\x00")
_CONNECTION_SPECIFIC = {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                        b"upgrade"}


def frame(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    n = len(payload)
    return HEADER.pack(n >> 16, n & 0xFFFF, kind, flags, sid) + payload


def check(headers: list) -> None:
    """The checks h2's inbound validation makes that matter for a proxy, in one pass."""
    regular = False
    for name, value in headers:
        if not name or _BAD_NAME.intersection(name) or b"\r" in value or b"\n" in value \
                or b"\x00" in value:
            raise ValueError("bad header")
        if name[0] == 58:  # ":"
            if regular:
                raise ValueError("pseudo-header after a regular one")
        else:
            regular = True
            if name in _CONNECTION_SPECIFIC or (name == b"te" and value != b"trailers"):
                raise ValueError("connection-specific header")


class Lean:
    """One end of a connection: an encoder, a decoder, windows, and what is queued to send."""

    def __init__(self) -> None:
        self.enc, self.dec = Encoder(), Decoder()
        self.out = bytearray()
        self.recv_window = WINDOW
        self.unacked = 0
        self.next_sid = 1

    def send_headers(self, sid: int, headers: list, end: bool) -> None:
        self.out += frame(HEADERS, END_HEADERS | (END_STREAM if end else 0), sid,
                          self.enc.encode(headers))

    def send_data(self, sid: int, data: bytes, end: bool) -> None:
        self.out += frame(DATA, END_STREAM if end else 0, sid, data)

    def take(self) -> bytes:
        data = bytes(self.out)
        self.out.clear()
        return data

    def receive(self, data: bytes) -> list[tuple]:
        """(kind, stream id, headers or data, end) per HEADERS/DATA frame."""
        events, i, n = [], 0, len(data)
        while i + 9 <= n:
            hi, lo, kind, flags, sid = HEADER.unpack_from(data, i)
            length = (hi << 16) | lo
            body = data[i + 9:i + 9 + length]
            i += 9 + length
            if kind == HEADERS:
                headers = self.dec.decode(body, raw=True)
                check(headers)
                events.append((HEADERS, sid, headers, flags & END_STREAM))
            elif kind == DATA:
                self.unacked += length
                events.append((DATA, sid, body, flags & END_STREAM))
        return events

    def acknowledge(self) -> None:
        """WINDOW_UPDATE for the connection once half the window is used, as h2 does."""
        if self.unacked >= WINDOW // 2:
            self.out += frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self.unacked))
            self.unacked = 0


def run(requests: int) -> float:
    clients = [Lean() for _ in range(CLIENTS)]
    downstream = [Lean() for _ in range(CLIENTS)]
    upstream, nginx = Lean(), Lean()
    timed, done = 0.0, 0
    while done < requests:
        for c in clients:
            for _ in range(STREAMS):
                c.send_headers(c.next_sid, REQUEST, True)
                c.next_sid += 2
        wires = [c.take() for c in clients]
        t0 = time.perf_counter()
        origin = {}
        for s, wire in zip(downstream, wires, strict=True):
            for kind, sid, headers, _ in s.receive(wire):
                if kind == HEADERS:
                    up_sid = upstream.next_sid
                    upstream.next_sid += 2
                    upstream.send_headers(up_sid, [*headers, *FORWARDED], True)
                    origin[up_sid] = (s, sid)
        up = upstream.take()
        t1 = time.perf_counter()
        resp = response()
        for kind, sid, _, _ in nginx.receive(up):
            if kind == HEADERS:
                nginx.send_headers(sid, resp, False)
                nginx.send_data(sid, BODY, True)
        down = nginx.take()
        t2 = time.perf_counter()
        for kind, sid, payload, end in upstream.receive(down):
            s, down_sid = origin[sid]
            if kind == HEADERS:
                s.send_headers(down_sid, payload, False)
            else:
                s.send_data(down_sid, payload, bool(end))
        upstream.acknowledge()
        outs = [s.take() for s in downstream]
        upstream.take()
        t3 = time.perf_counter()
        for c, out in zip(clients, outs, strict=True):
            c.receive(out)
            c.acknowledge()
            c.take()
        timed += (t1 - t0) + (t3 - t2)
        done += len(origin)
    return timed / done * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=50_000)
    args = ap.parse_args()
    run(2_000)
    us = min(run(args.requests // 3) for _ in range(3))
    print(f"minimal HTTP/2 layer on hpack (a sketch), greenmesh's two halves of one h2c -> h2c "
          f"request: {us:.1f} us -> at most {1e6 / us:,.0f} req/s on one core")


if __name__ == "__main__":
    main()
