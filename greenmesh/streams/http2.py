"""HTTP/2 stream connections: the greenlet shell around ``http2_codec``.

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
from time import monotonic as _monotonic

import gevent
import structlog
from gevent.event import Event

from greenmesh import model
from greenmesh.conn import HIGH_WATER, STALL_TIMEOUT, BatchWriter, Conn, ConnError
from greenmesh.failures import LocalReply, ResetReason
from greenmesh.streams import Match, Protocol
from greenmesh.streams.base import (
    WOULD_BLOCK,
    Chunk,
    ClientConnection,
    ClientStream,
    ConnectionState,
    DownstreamError,
    Headers,
    RequestHead,
    ResponseHead,
    ServerConnection,
    ServerOptions,
    ServerStream,
    StreamError,
    StreamHandler,
    StreamTimeout,
    Tunnel,
)
from greenmesh.streams.base import StreamReset as StreamResetError
from greenmesh.streams.http2_codec import (
    PREFACE,
    ConnectionError_,
    ErrorCode,
    H2Codec,
    error_name,
)
from greenmesh.streams.http_common import (
    clean_request_headers,
    clean_response_headers,
    local_reply_headers,
    send_http_local_reply,
)
from greenmesh.streams.multiplex import MultiplexServerConnection

log = structlog.get_logger("greenmesh.http2")

MAX_CONCURRENT_STREAMS = 100
# A stream may have this much unread data in flight; the connection, this much over all streams.
STREAM_WINDOW = 1 << 20
CONNECTION_WINDOW = 16 << 20
HEAD, DATA, END = 0, 1, 2
MAX_HEADERS = 100  # Envoy's max_headers_count, pseudo-headers included
# Envoy's premature-reset defaults (overload protection against rapid reset).
PREMATURE_RESET_SECONDS = 1.0
PREMATURE_RESET_STREAMS = 500
GOAWAY_FLUSH_SECONDS = 1.0


def match(data: bytes) -> Match:
    n = min(len(data), len(PREFACE))
    if data[:n] != PREFACE[:n]:
        return Match.NO
    return Match.YES if n == len(PREFACE) else Match.AGAIN


class _Stream:
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


class _H2Connection:
    """What server and client connections share: the codec, the stream table, reader and
    writer, and the codec's events turned into stream inbox items."""

    side = ""
    error: type[StreamError] = StreamResetError

    def __init__(self, conn: Conn, client_side: bool, max_header_bytes: int | None = None):
        self.conn = conn
        self.codec = H2Codec(self, client_side, max_concurrent_streams=MAX_CONCURRENT_STREAMS,
                             stream_window=STREAM_WINDOW, connection_window=CONNECTION_WINDOW,
                             max_header_list_size=max_header_bytes)
        self.streams: dict[int, _Stream] = {}
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
                                   lambda: count("downstream_flow_control_backed_up_total"))
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
                if len(codec.out) > HIGH_WATER:
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

    def _reset_error(self, s: _Stream) -> StreamError:
        code = error_name(s.reset_code) if s.reset_code is not None else "connection closed"
        message = f"{self.side} stream reset ({code})"
        if self.error is DownstreamError:
            return DownstreamError(message)
        return StreamResetError(message, s.reset_reason if s.reset_code is not None
                                else ResetReason.CONNECTION_TERMINATION)

    # -- stream operations, shared by server and client streams -------------------------------
    def read(self, s: _Stream, timeout: float | None, block: bool):
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
            if not s.readable.wait(timeout):
                raise StreamTimeout(f"{self.side} stream timed out")
        item = inbox.popleft()
        if item[0] == DATA and not self.closed:
            self.codec.consumed(s.id, len(item[1]))
            self.wake_writer()
        return item

    def send_data(self, s: _Stream, data: bytes, end_stream: bool) -> None:
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
            if len(codec.out) > HIGH_WATER:
                self.writer.wait_writable()
        self.wake_writer()
        if len(codec.out) > HIGH_WATER:  # a peer that reads slowly holds back this stream only
            self.writer.wait_writable()

    def send_headers(self, s: _Stream, headers: Headers, end_stream: bool) -> None:
        if s.reset_code is not None or self.closed:
            raise self._reset_error(s)
        self.codec.send_headers(s.id, headers, end_stream)
        self.wake_writer()

    def reset_stream(self, s: _Stream, code: int = ErrorCode.CANCEL) -> None:
        if s.reset_code is None and not self.closed:
            s.reset_code = code
            self.codec.reset_stream(s.id, code)
            self.wake_writer()

    def forget(self, s: _Stream) -> None:
        """The stream is done: the codec forgets it (resetting it if it is still open) and its
        unread data goes back into the connection window."""
        self.streams.pop(s.id, None)
        if not self.closed:
            unread = sum(len(item[1]) for item in s.inbox if item[0] == DATA)
            self.codec.release(s.id, unread)
            self.wake_writer()


def header_list_size(headers: Headers) -> int:
    """SETTINGS_MAX_HEADER_LIST_SIZE's measure: names and values plus 32 bytes per field."""
    return sum(len(name) + len(value) for name, value in headers) + 32 * len(headers)


def _pseudo_split(headers: Headers) -> tuple[dict[bytes, bytes], Headers]:
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


class _ServerConnection(_H2Connection, MultiplexServerConnection):
    side = "downstream"
    error = DownstreamError

    def __init__(self, conn: Conn, opts: ServerOptions, handler: StreamHandler):
        _H2Connection.__init__(self, conn, False, opts.max_header_bytes)
        MultiplexServerConnection.__init__(self, conn, opts, handler)
        self.peer_ip = opts.peer[0].encode() if opts.peer else None
        self.opened = 0
        self.premature_resets = 0

    def on_headers(self, sid: int, headers: Headers, end_stream: bool) -> None:
        # A stream counts against the concurrency limit until greenmesh has finished serving
        # it (the codec forgets it only then), not only until the peer resets it: otherwise
        # HEADERS + RST_STREAM pairs (CVE-2023-44487, "rapid reset") would start upstream
        # requests without bound while no stream looks open. Draining: the codec refuses
        # streams above the GOAWAY's last id itself.
        s = _Stream(sid)
        s.got_frames = True
        s.born = _monotonic()
        if end_stream:
            s.inbox.append((END, None))
        self.streams[sid] = s
        self.opened += 1
        self.spawn(self._serve_stream, s, headers)

    def on_reset(self, sid: int, code: int, remote: bool) -> None:
        s = self.streams.get(sid)
        if remote and s is not None and _monotonic() - s.born < PREMATURE_RESET_SECONDS:
            self.premature_resets += 1
            self._check_premature_resets()
        super().on_reset(sid, code, remote)

    def on_refused(self, sid: int, code: int, reason: str) -> None:
        log.info("bad_request", peer=self.opts.peer, stream=sid, code=error_name(code),
                 error=reason)

    def _check_premature_resets(self) -> None:
        """Envoy's rule: GOAWAY once half of the streams (counting at least 500) were reset by
        the peer within a second of opening; a well-behaved client that cancels now and then
        never gets there, a rapid-reset flood does after 250 streams."""
        n, resets = max(self.opened, PREMATURE_RESET_STREAMS), self.premature_resets
        if resets * 2 < n or self.state is not ConnectionState.OPEN:
            return
        log.warning("http2_premature_resets", peer=self.opts.peer, streams=self.opened,
                    resets=resets)
        self.state = ConnectionState.DRAINING  # no new streams; GOAWAY goes out, then we close
        self.codec.goaway(ErrorCode.ENHANCE_YOUR_CALM, b"too many streams reset by the peer")
        self.close_after_flush("premature resets")

    def _serve_stream(self, s: _Stream, headers: Headers) -> None:
        try:
            if s.reset_code is not None:  # reset by the peer before its turn came: nothing to do
                return
            if len(headers) > MAX_HEADERS or header_list_size(headers) > self.opts.max_header_bytes:
                self._refuse_oversized(s, len(headers))
                return
            stream = Http2ServerStream(self, s, headers)
        except StreamError as e:
            self.reset_stream(s, ErrorCode.PROTOCOL_ERROR)
            log.info("bad_request", peer=self.opts.peer, error=str(e))
        else:
            try:
                self.handler(stream)
            finally:
                if not stream.done:
                    self.reset_stream(s, ErrorCode.INTERNAL_ERROR)
        finally:
            self.forget(s)

    def _refuse_oversized(self, s: _Stream, count: int) -> None:
        """431, as HTTP/1.1 gets: the connection and the other streams on it go on (the codec
        resets the stream with NO_ERROR when it is forgotten: the request body is not
        wanted)."""
        log.info("bad_request", peer=self.opts.peer, status=431, headers=count,
                 error="request headers too large")
        body = b"request headers too large\n"
        self.send_headers(s, [(b":status", b"431"), *local_reply_headers(body)], False)
        self.send_data(s, body, True)

    def announce_drain(self) -> None:
        """GOAWAY with the last stream id: those in flight finish, no new ones."""
        self.codec.goaway()
        self.wake_writer()

    def run(self) -> None:
        self.start(self.opts.idle_timeout, self.opts.count)
        try:
            self.read_loop(self.opts.idle_timeout)
        finally:
            self.close("done")
            # Every stream has been failed (its upstream request cancelled): let them end as
            # they do, with their access log lines, before killing what is left.
            self.finish_handlers()


class Http2ServerStream(ServerStream):
    __slots__ = ("c", "s", "request", "request_complete", "trailers", "_started", "done",
                 "_body_done")

    def __init__(self, c: _ServerConnection, s: _Stream, raw_headers: Headers):
        self.c = c
        self.s = s
        pseudo, regular = _pseudo_split(raw_headers)
        method = pseudo.get(b":method", b"")
        scheme = c.opts.scheme
        headers, host, _ = clean_request_headers(regular, c.peer_ip, scheme)
        authority = pseudo.get(b":authority") or host
        if method == b"CONNECT":
            raise StreamError("CONNECT is not supported")
        self.request = RequestHead(method, pseudo.get(b":path", b"/"), authority, scheme, headers)
        self.request.peer = c.peer_ip or b""
        self.trailers = None
        self._started = False
        self.done = False
        inbox = s.inbox
        self.request_complete = bool(inbox) and inbox[0][0] == END and inbox[0][1] is None
        if self.request_complete:
            inbox.popleft()
        self._body_done = self.request_complete

    def read_body(self, block: bool = True) -> Chunk:
        if self._body_done:
            return None
        item = self.c.read(self.s, None, block)
        if item is WOULD_BLOCK:
            return item
        if item[0] == DATA:
            return item[1]
        self._body_done = True
        self.trailers = item[1]
        return None

    def send_informational(self, head: ResponseHead) -> None:
        if head.status == 101:
            raise DownstreamError("HTTP/2 has no 101")
        self.c.send_headers(self.s, [(b":status", b"%d" % head.status), *head.headers], False)

    def send_headers(self, head: ResponseHead, end_stream: bool) -> None:
        self._started = True
        self.c.send_headers(self.s, [(b":status", b"%d" % head.status), *head.headers],
                            end_stream)
        if end_stream:
            self.done = True

    def send_data(self, data: bytes, end_stream: bool) -> None:
        self.c.send_data(self.s, data, end_stream)
        if end_stream:
            self.done = True

    def send_trailers(self, trailers: Headers) -> None:
        self.c.send_headers(self.s, trailers, True)
        self.done = True

    def send_local_reply(self, reply: LocalReply) -> int:
        return send_http_local_reply(self, reply)

    def flush(self) -> None:
        self.c.wake_writer()

    def reset(self, reason: str) -> None:
        self.c.reset_stream(self.s, ErrorCode.INTERNAL_ERROR)
        self.done = True

    @property
    def response_started(self) -> bool:
        return self._started

    def upgrade(self) -> Tunnel:
        raise DownstreamError("HTTP/2 streams cannot switch protocols")

    def on_reset(self, callback: Callable[[], None]) -> None:
        if self.s.reset_code is not None:  # reset before anyone listened
            callback()
        else:
            self.s.on_reset = callback


def server(conn: Conn, opts: ServerOptions, handler: StreamHandler) -> ServerConnection:
    return _ServerConnection(conn, opts, handler)


class Http2ClientConnection(_H2Connection, ClientConnection):
    """An upstream HTTP/2 connection: many streams at once, up to the peer's limit."""

    side = "upstream"

    def __init__(self, conn: Conn, settings: model.Cluster | None = None):
        super().__init__(conn, True)
        self.max_streams = settings.max_concurrent_streams if settings else MAX_CONCURRENT_STREAMS
        self.active_streams = 0
        self.streams_opened = 0
        self.start()
        self._reader = gevent.spawn(self.read_loop, None)

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
        self.s: _Stream | None = None
        self._body_done = False

    @property
    def stream(self) -> _Stream:
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
        self.s = s = _Stream(sid)
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
        pseudo, regular = _pseudo_split(item[1])
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


PROTOCOL = Protocol(name="http2", match=match, server=server, client=Http2ClientConnection,
                    multiplexed=True, alpn="h2")
