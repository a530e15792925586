"""A scriptable h2c upstream on threads (plain h2, not greenmesh), for what nginx won't do:
a small stream limit, request trailers answered with trailers, a connection killed mid-flight."""

from __future__ import annotations

import socket
import threading

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings

from tests.harness import LoopbackServer


class H2Upstream(LoopbackServer):
    def __init__(self, max_streams: int = 100, refuse: int = 0):
        self.max_streams = max_streams
        self.seen: list[bytes] = []  # the paths of the requests received, on any connection
        self.refuse = refuse  # the first so many streams get RST_STREAM REFUSED_STREAM
        super().__init__()

    def _serve(self, conn: socket.socket) -> None:
        _Conn(conn, self.max_streams, self.seen, self).serve()


class _Conn:
    def __init__(self, sock: socket.socket, max_streams: int, seen: list[bytes],
                 server: H2Upstream):
        self.sock = sock
        self.seen = seen
        self.server = server
        self.lock = threading.Lock()
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None))
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_streams})
        self.h2.initiate_connection()
        self.bodies: dict[int, bytes] = {}
        self.trailers: dict[int, dict] = {}
        self.paths: dict[int, bytes] = {}

    def send(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.sock.sendall(data)

    def serve(self) -> None:
        with self.lock:
            self.send()
        try:
            while data := self.sock.recv(65536):
                with self.lock:
                    for ev in self.h2.receive_data(data):
                        self.on_event(ev)
                    self.send()
        except OSError:
            pass
        self.sock.close()

    def on_event(self, ev) -> None:
        if isinstance(ev, h2.events.RequestReceived):
            self.paths[ev.stream_id] = dict(ev.headers)[b":path"]
            self.seen.append(self.paths[ev.stream_id])
        elif isinstance(ev, h2.events.DataReceived):
            self.bodies[ev.stream_id] = self.bodies.get(ev.stream_id, b"") + ev.data
            self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.TrailersReceived):
            self.trailers[ev.stream_id] = dict(ev.headers)
        elif isinstance(ev, h2.events.StreamEnded):
            path = self.paths[ev.stream_id]
            if self.server.refuse > 0:
                self.server.refuse -= 1
                self.h2.reset_stream(ev.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            elif path == b"/die":  # the whole connection goes, mid-flight
                threading.Timer(0.2, self.sock.shutdown, (socket.SHUT_RDWR,)).start()
            elif path == b"/slow":
                threading.Timer(0.5, self.answer, (ev.stream_id,)).start()
            else:
                self.answer(ev.stream_id, locked=True)

    def answer(self, sid: int, locked: bool = False) -> None:
        if not locked:
            with self.lock:
                self.answer(sid, locked=True)
                self.send()
            return
        got = self.trailers.get(sid, {})
        self.h2.send_headers(sid, [(b":status", b"200"), (b"x-conn", b"%d" % id(self))])
        self.h2.send_data(sid, self.bodies.get(sid, b"") or self.paths[sid])
        self.h2.send_headers(sid, [(b"grpc-status", b"0"),
                                   (b"x-got-trailer", got.get(b"x-req-trailer", b"-"))],
                             end_stream=True)
