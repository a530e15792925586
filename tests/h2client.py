"""A blocking HTTP/2 client on h2 for tests: several streams, stalls, resets, GOAWAY."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events


@dataclass
class Response:
    status: int = 0
    headers: list = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    trailers: list = field(default_factory=list)
    ended: bool = False
    reset: int | None = None


class H2Client:
    def __init__(self, port: int, window: int = 65535, checked: bool = True):
        """``checked=False``: h2 sends whatever it is given (to send malformed requests)."""
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=checked,
            normalize_outbound_headers=checked))
        self.h2.initiate_connection()
        # Like real clients: a connection window well above one stream's, so that one stalled
        # stream cannot use it all up.
        self.h2.increment_flow_control_window(16 << 20)
        if window != 65535:
            self.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.sock.sendall(self.h2.data_to_send())
        self.responses: dict[int, Response] = {}
        self.stalled: set[int] = set()  # streams whose data is never acknowledged
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = False
        self.acked: set[bytes] = set()  # PING payloads acknowledged
        self._pings = 0
        # Every RST_STREAM as (stream id, code), read off the wire: h2 drops those that come
        # for a stream it already considers closed.
        self.wire_resets: list[tuple[int, int]] = []
        self._frames = b""

    def request(self, method: str, path: str, body: bytes = b"", headers=(),
                end: bool = True) -> int:
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, [(":method", method), (":scheme", "http"),
                                   (":authority", "test"), (":path", path), *headers],
                             end_stream=end and not body)
        if body:
            self.h2.send_data(sid, body, end_stream=end)
        self.sock.sendall(self.h2.data_to_send())
        self.responses[sid] = Response()
        return sid

    def send(self, headers: list, end: bool = True) -> int:
        """A request made of exactly these header fields."""
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, headers, end_stream=end)
        self.sock.sendall(self.h2.data_to_send())
        self.responses[sid] = Response()
        return sid

    def reset(self, sid: int) -> None:
        self.h2.reset_stream(sid)
        self.sock.sendall(self.h2.data_to_send())

    def pump(self, until, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not until():
            if self.closed or time.monotonic() > deadline:
                raise TimeoutError("condition not reached")
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                self.closed = True
                continue
            self._scan(data)
            for ev in self.h2.receive_data(data):
                self._on(ev)
            out = self.h2.data_to_send()
            if out:
                self.sock.sendall(out)

    def _scan(self, data: bytes) -> None:
        buf = self._frames + data
        while len(buf) >= 9:
            length = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + length:
                break
            if buf[3] == 0x3:  # RST_STREAM
                sid = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
                self.wire_resets.append((sid, int.from_bytes(buf[9:13], "big")))
            buf = buf[9 + length:]
        self._frames = buf

    def _on(self, ev) -> None:
        r = self.responses.get(getattr(ev, "stream_id", None) or 0)
        if isinstance(ev, h2.events.ResponseReceived):
            r.headers = ev.headers
            r.status = int(dict(ev.headers)[b":status"])
        elif isinstance(ev, h2.events.DataReceived):
            r.body += ev.data
            if ev.stream_id not in self.stalled:
                self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.TrailersReceived):
            r.trailers = ev.headers
        elif isinstance(ev, h2.events.StreamEnded):
            r.ended = True
        elif isinstance(ev, h2.events.StreamReset):
            r.reset = ev.error_code
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.goaway = ev
        elif isinstance(ev, h2.events.PingAckReceived):
            self.acked.add(ev.ping_data)

    def ping(self, timeout: float = 10) -> None:
        """A PING round trip: once it is back, greenmesh has read and handled everything sent
        before it (it answers frames in order)."""
        self._pings += 1
        data = self._pings.to_bytes(8, "big")
        self.h2.ping(data)
        self.sock.sendall(self.h2.data_to_send())
        self.pump(lambda: data in self.acked, timeout)

    def done(self, *sids: int) -> bool:
        return all(self.responses[s].ended or self.responses[s].reset is not None for s in sids)

    def close(self) -> None:
        self.sock.close()
