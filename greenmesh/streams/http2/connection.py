"""HTTP/2 stream connections: the greenlet shell around the sans-IO codec (``codec``).

Per connection, one reader greenlet feeds whole reads to the codec, whose events land in the
streams' inboxes; one writer greenlet sends what the codec has queued, once per wake-up, so the
frames of many streams leave in one write and no stream ever blocks on the socket. Each server
stream is served by its own greenlet (the proxy is written with blocking-looking calls); an
upstream stream is driven by the greenlet of the request it carries. Either waits only on its
own stream: its inbox for frames, its window for flow control.

Flow control both ways: received DATA is given back to the peer's window only as the stream's
consumer reads it, so a slow reader holds back its own sender and nobody else; sent DATA never
exceeds the peer's window, waiting for its WINDOW_UPDATE instead of buffering.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Final

from gevent.event import Event

from greenmesh.conn import HIGH_WATER, STALL_TIMEOUT, BatchWriter, Conn, ConnError
from greenmesh.deadline import Expired, within
from greenmesh.failures import ResetReason
from greenmesh.logger import get_logger
from greenmesh.streams.base import (
    WOULD_BLOCK,
    ConnectionState,
    DownstreamError,
    Headers,
    StreamError,
    StreamTimeout,
)
from greenmesh.streams.base import StreamReset as StreamResetError
from greenmesh.streams.http2.codec import H2Codec
from greenmesh.streams.http2.frames import ErrorCode, error_name
from greenmesh.streams.http2.state import ConnectionError_

log = get_logger("greenmesh.http2")

MAX_CONCURRENT_STREAMS: Final = 100
# A stream may have this much unread data in flight; the connection, this much over all streams.
STREAM_WINDOW: Final = 1 << 20
CONNECTION_WINDOW: Final = 16 << 20
HEAD: Final = 0
DATA: Final = 1
END: Final = 2
# A request's pseudo-headers, beside the max_headers_count regular fields it may have (HTTP/1.1
# counts regular fields only: the same limit reads the same on both).
PSEUDO_HEADERS: Final = 4
# Envoy's premature-reset defaults (overload protection against rapid reset).
PREMATURE_RESET_SECONDS: Final = 1.0
PREMATURE_RESET_STREAMS: Final = 500
GOAWAY_FLUSH_SECONDS: Final = 1.0
# What a server reads and drops of a request body that goes on after its response ended.
DISCARD_BYTES: Final = 1 << 16
DISCARD_SECONDS: Final = 1.0


class ShellStream:
    """One stream's end of the connection, in the shell: frames waiting to be read, who waits,
    and why it ended early if it did (its protocol state is the codec's)."""

    __slots__ = ("id", "inbox", "readable", "writable", "reset_code", "reset_reason",
                 "got_frames", "on_reset", "born")

    def __init__(self, stream_id: int):
        self.id = stream_id
        self.on_reset: Callable[[], None] | None = None
        self.inbox: deque = deque()
        self.readable = Event()
        self.writable = Event()
        self.reset_code: int | None = None
        self.reset_reason = ResetReason.LOCAL_RESET
        self.got_frames = False
        self.born = 0.0  # server streams: when the request arrived (premature-reset accounting)

    def push(self, item: tuple) -> None:
        self.inbox.append(item)
        self.got_frames = True
        self.readable.set()

    def fail(self, code: int, reason: ResetReason) -> None:
        if self.reset_code is not None:
            return
        self.reset_code = code
        self.reset_reason = reason
        self.readable.set()
        self.writable.set()
        if self.on_reset is not None:
            callback, self.on_reset = self.on_reset, None
            callback()


class H2Shell:
    """What server and client connections share: the codec, the stream table, reader and
    writer, and the codec's events turned into stream inbox items."""

    side = ""
    error: type[StreamError] = StreamResetError

    def __init__(self, conn: Conn, client_side: bool, max_header_bytes: int | None = None,
                 max_concurrent_streams: int = MAX_CONCURRENT_STREAMS,
                 max_frame_size: int | None = None, buffer_limit: int = HIGH_WATER):
        self.conn = conn
        self.codec = H2Codec(self, client_side, max_concurrent_streams=max_concurrent_streams,
                             stream_window=STREAM_WINDOW, connection_window=CONNECTION_WINDOW,
                             max_header_list_size=max_header_bytes,
                             max_frame_size=max_frame_size)
        self.buffer_limit = buffer_limit  # bytes queued for the peer before producers wait
        self.streams: dict[int, ShellStream] = {}
        self.state = ConnectionState.OPEN  # DRAINING once a GOAWAY went either way
        self._writer: BatchWriter | None = None
        self._count: Callable[[str], None] = lambda name: None

    @property
    def closed(self) -> bool:
        return self.state is ConnectionState.CLOSED

    def start(self, stall_timeout: float | None = STALL_TIMEOUT,
              count: Callable[[str], None] = lambda name: None) -> None:
        codec = self.codec
        codec.initiate()
        self._count = count
        self._writer = BatchWriter(self.conn, codec.data_to_send, self.close,
                                   lambda: len(codec.out), stall_timeout,
                                   lambda: count("downstream_flow_control_backed_up_total"),
                                   self.buffer_limit)
        self.wake_writer()

    @property
    def writer(self) -> BatchWriter:
        assert self._writer is not None, "start() first"
        return self._writer

    def wake_writer(self) -> None:
        if self._writer is not None:
            self._writer.wake()

    def read_loop(self, idle_timeout: float | None) -> None:
        """Reads until the peer goes; handles every frame of a read before the next read."""
        codec, conn = self.codec, self.conn
        try:
            while not self.closed:
                data = conn.read(None if self.streams else idle_timeout)
                if not data:
                    break
                try:
                    codec.receive(data)
                except ConnectionError_ as e:
                    self._protocol_error(str(e), e.code)
                    break
                self.wake_writer()
                # A peer that floods PINGs or SETTINGS but never reads the answers, or does not
                # read what its streams asked for: no more reading until the writer catches up.
                if len(codec.out) > self.buffer_limit:
                    self._count("downstream_flow_control_paused_reading_total")
                    self.writer.wait_writable()
        except ConnError:
            pass
        finally:
            self.close("peer gone")

    def _protocol_error(self, reason: str, code: int) -> None:
        """The codec has queued one GOAWAY with the code; the writer sends it after what is
        queued, then closes; a peer that does not read gets a second to take it (nobody else
        may write the socket meanwhile)."""
        log.info("http2_protocol_error", side=self.side, peer=self.conn.peer, error=reason,
                 code=error_name(code))
        self.close_after_flush(reason)
        self.writer.join(GOAWAY_FLUSH_SECONDS)

    # -- the codec's events -------------------------------------------------------------------
    def on_trailers(self, sid: int, headers: Headers) -> None:
        s = self.streams.get(sid)
        if s is not None:
            s.push((END, list(headers)))

    def on_data(self, sid: int, data: bytes, end_stream: bool) -> None:
        s = self.streams.get(sid)
        if s is None:  # a stream we already finished: give the window back at once
            if data:
                self.codec.consumed(sid, len(data))
            return
        if data:
            s.push((DATA, data))
        if end_stream:
            s.push((END, None))

    def on_reset(self, sid: int, code: int, remote: bool) -> None:
        s = self.streams.get(sid)
        if s is None:
            return
        if not remote:
            reason = ResetReason.PROTOCOL_ERROR
        elif code == ErrorCode.REFUSED_STREAM:
            reason = ResetReason.REMOTE_REFUSED_STREAM
        else:
            reason = ResetReason.REMOTE_RESET
        s.fail(code, reason)

    def on_window(self, sid: int) -> None:
        if sid:
            s = self.streams.get(sid)
            if s is not None:
                s.writable.set()
        else:
            for s in self.streams.values():
                s.writable.set()

    def on_settings(self) -> None:
        for s in self.streams.values():  # the initial window may have grown
            s.writable.set()

    def on_goaway(self, last_stream_id: int, code: int) -> None:
        if self.state is ConnectionState.OPEN:
            self.state = ConnectionState.DRAINING
        for sid, s in list(self.streams.items()):
            if sid > last_stream_id and not self.codec.peer_initiated(sid):
                s.fail(ErrorCode.REFUSED_STREAM, ResetReason.REMOTE_REFUSED_STREAM)

    def on_refused(self, sid: int, code: int, reason: str) -> None:
        pass

    # -----------------------------------------------------------------------------------------
    def on_headers(self, sid: int, headers: Headers, end_stream: bool) -> None:
        raise NotImplementedError  # a request (server) or a response (client): each side's own

    def close_after_flush(self, reason: str) -> None:
        """Closes once the writer has sent everything queued (the last responses, a GOAWAY)."""
        if self._writer is not None:
            self._writer.close_after_flush(reason)

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.state = ConnectionState.CLOSED
        for s in list(self.streams.values()):
            s.fail(ErrorCode.CANCEL, ResetReason.CONNECTION_TERMINATION)
        self.conn.close(reason)
        self.wake_writer()  # so the writer sees the close and ends

    def release(self) -> None:
        """Once the connection has ended and its streams with it: the codec stops calling into
        this shell and the writer's callbacks are let go, so the connection's memory returns
        when its last reference goes, not at the next full collection."""
        self.codec.detach()
        self._writer = None
        self.streams.clear()

    def _reset_error(self, s: ShellStream) -> StreamError:
        code = error_name(s.reset_code) if s.reset_code is not None else "connection closed"
        message = f"{self.side} stream reset ({code})"
        if self.error is DownstreamError:
            return DownstreamError(message)
        return StreamResetError(message, s.reset_reason if s.reset_code is not None
                                else ResetReason.CONNECTION_TERMINATION)

    # -- stream operations, shared by server and client streams -------------------------------
    def read(self, s: ShellStream, timeout: float | None, block: bool):
        """The next inbox item of a stream, giving DATA's window back as it is taken."""
        inbox = s.inbox
        while not inbox:
            if s.reset_code is not None:
                raise self._reset_error(s)
            if not block:
                return WOULD_BLOCK
            s.readable.clear()
            if inbox:
                break
            try:
                within(timeout, s.readable.wait)
            except Expired:
                raise StreamTimeout(f"{self.side} stream timed out") from None
        item = inbox.popleft()
        if item[0] == DATA and not self.closed:
            self.codec.consumed(s.id, len(item[1]))
            self.wake_writer()
        return item

    def send_data(self, s: ShellStream, data: bytes, end_stream: bool) -> None:
        codec = self.codec
        view = memoryview(data)
        while True:
            if s.reset_code is not None or self.closed:
                raise self._reset_error(s)
            n = codec.send_data(s.id, view, end_stream)
            view = view[n:]
            if not view:
                break
            if n == 0:  # the peer's window is shut: wait for its WINDOW_UPDATE
                s.writable.clear()
                self.wake_writer()
                if codec.window(s.id) <= 0:
                    s.writable.wait()
                continue
            if len(codec.out) > self.buffer_limit:
                self.writer.wait_writable()
        self.wake_writer()
        if len(codec.out) > self.buffer_limit:  # a peer that reads slowly holds back this stream only
            self.writer.wait_writable()

    def send_headers(self, s: ShellStream, headers: Headers, end_stream: bool) -> None:
        if s.reset_code is not None or self.closed:
            raise self._reset_error(s)
        self.codec.send_headers(s.id, headers, end_stream)
        self.wake_writer()

    def reset_stream(self, s: ShellStream, code: int = ErrorCode.CANCEL) -> None:
        if s.reset_code is None and not self.closed:
            s.reset_code = code
            self.codec.reset_stream(s.id, code)
            self.wake_writer()

    def forget(self, s: ShellStream) -> None:
        """The stream is done: the codec forgets it (resetting it if it is still open) and its
        unread data goes back into the connection window."""
        self.streams.pop(s.id, None)
        s.on_reset = None  # its exchange, which holds the stream that holds this record
        if not self.closed:
            unread = sum(len(item[1]) for item in s.inbox if item[0] == DATA)
            self.codec.release(s.id, unread)
            self.wake_writer()


def header_list_size(headers: Headers) -> int:
    """SETTINGS_MAX_HEADER_LIST_SIZE's measure: names and values plus 32 bytes per field."""
    return sum(len(name) + len(value) for name, value in headers) + 32 * len(headers)


def pseudo_split(headers: Headers) -> tuple[dict[bytes, bytes], Headers]:
    pseudo: dict[bytes, bytes] = {}
    regular: Headers = []
    cookies: list[bytes] = []
    for name, value in headers:
        if name[:1] == b":":
            pseudo[name] = value
        elif name == b"cookie":  # HTTP/2 may split cookies; HTTP/1.1 wants one header
            cookies.append(value)
        else:
            regular.append((name, value))
    if cookies:
        regular.append((b"cookie", b"; ".join(cookies)))
    return pseudo, regular


