"""The client side of HTTP/2: an upstream connection carrying many streams, up to the peer's
limit, for the multiplexed pool."""

from __future__ import annotations

from collections.abc import Callable

import gevent

from greenmesh import model
from greenmesh.conn import HIGH_WATER, Conn
from greenmesh.failures import ResetReason
from greenmesh.streams.base import (
    WOULD_BLOCK,
    Chunk,
    ClientConnection,
    ClientStream,
    ConnectionState,
    Headers,
    RequestHead,
    ResponseHead,
    StreamError,
    Tunnel,
)
from greenmesh.streams.base import StreamReset as StreamResetError
from greenmesh.streams.http2.connection import (
    DATA,
    END,
    HEAD,
    MAX_CONCURRENT_STREAMS,
    H2Shell,
    ShellStream,
    pseudo_split,
)
from greenmesh.streams.http2.state import ConnectionError_
from greenmesh.streams.http_common import clean_response_headers


class Http2ClientConnection(H2Shell, ClientConnection):
    """An upstream HTTP/2 connection: many streams at once, up to the peer's limit."""

    side = "upstream"

    def __init__(self, conn: Conn, settings: model.Cluster | None = None):
        super().__init__(conn, True, buffer_limit=settings.per_connection_buffer_limit_bytes
                         if settings else HIGH_WATER)
        self.max_streams = settings.max_concurrent_streams if settings else MAX_CONCURRENT_STREAMS
        self.active_streams = 0
        self.streams_opened = 0
        self.start()
        self._reader = gevent.spawn(self._read)

    def _read(self) -> None:
        try:
            self.read_loop(None)
        finally:
            self.release()  # closed: its streams have failed and the pool lets it go

    @property
    def capacity(self) -> int:
        return min(self.codec.peer_max_concurrent, self.max_streams)

    @property
    def usable(self) -> bool:
        return self.state is ConnectionState.OPEN

    def on_headers(self, sid: int, headers: Headers, end_stream: bool) -> None:
        s = self.streams.get(sid)
        if s is not None:
            s.push((HEAD, headers))
            if end_stream:
                s.push((END, None))

    def new_stream(self, on_finish: Callable[[ClientConnection, bool], None]) -> ClientStream:
        self.active_streams += 1
        self.streams_opened += 1
        return Http2ClientStream(self, on_finish, self.streams_opened > 1)


class Http2ClientStream(ClientStream):
    __slots__ = ("c", "s", "_body_done")

    def __init__(self, c: Http2ClientConnection, on_finish, reused: bool):
        super().__init__(on_finish, reused)
        self.c = c
        self.s: ShellStream | None = None
        self._body_done = False

    @property
    def stream(self) -> ShellStream:
        assert self.s is not None, "send_headers() first"
        return self.s

    def send_headers(self, head: RequestHead, end_stream: bool) -> None:
        c = self.c
        if head.upgrade:
            raise StreamError("cannot switch protocols over HTTP/2")
        if c.state is not ConnectionState.OPEN:
            raise StreamResetError("upstream connection going away")
        try:
            sid = c.codec.open_stream()
        except ConnectionError_ as e:
            c.state = ConnectionState.DRAINING
            raise StreamResetError(f"upstream: {e}") from None
        self.s = s = ShellStream(sid)
        c.streams[sid] = s
        headers = [(b":method", head.method), (b":scheme", head.scheme or b"http"),
                   (b":authority", head.authority), (b":path", head.path)]
        headers.extend(head.headers)
        c.send_headers(s, headers, end_stream)

    def send_data(self, data: bytes, end_stream: bool) -> None:
        self.c.send_data(self.stream, data, end_stream)

    def send_trailers(self, trailers: Headers) -> None:
        self.c.send_headers(self.stream, trailers, True)

    def flush(self) -> None:
        self.c.wake_writer()

    def read_headers(self, timeout: float | None) -> ResponseHead:
        item = self.c.read(self.stream, timeout, True)
        if item[0] != HEAD:
            raise StreamResetError("upstream sent data before a response head",
                                   ResetReason.PROTOCOL_ERROR)
        pseudo, regular = pseudo_split(item[1])
        return ResponseHead(int(pseudo[b":status"]), clean_response_headers(regular))

    def read_body(self, timeout: float | None, block: bool = True) -> Chunk:
        if self._body_done:
            return None
        item = self.c.read(self.stream, timeout, block)
        if item is WOULD_BLOCK:
            return item
        kind = item[0]
        if kind == DATA:
            return item[1]
        if kind == END:
            self._body_done = True
            self.trailers = item[1]
            return None
        raise StreamResetError("upstream sent a second response head",
                               ResetReason.PROTOCOL_ERROR)

    @property
    def response_started(self) -> bool:
        return self.s is not None and self.s.got_frames

    def reset(self, reason: str) -> None:
        if self.s is not None:
            self.c.reset_stream(self.s)
        self.finish()

    def _release(self) -> tuple[ClientConnection, bool]:
        c = self.c
        if self.s is not None:
            c.forget(self.s)  # the codec resets it if the exchange did not complete
        c.active_streams -= 1
        return c, c.usable

    def upgrade(self) -> Tunnel:
        raise StreamError("cannot switch protocols over HTTP/2")


