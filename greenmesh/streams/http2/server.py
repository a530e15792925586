"""The server side of HTTP/2: streams served in greenlets of their own, 431 for oversized
heads on their own stream, the rapid-reset defence, GOAWAY when draining."""

from __future__ import annotations

from collections.abc import Callable
from time import monotonic as _monotonic

from greenmesh.conn import Conn
from greenmesh.failures import LocalReply
from greenmesh.streams.base import (
    WOULD_BLOCK,
    Chunk,
    ConnectionState,
    DownstreamError,
    DownstreamTimeout,
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
from greenmesh.streams.http2.connection import (
    DATA,
    DISCARD_BYTES,
    DISCARD_SECONDS,
    END,
    PREMATURE_RESET_SECONDS,
    PREMATURE_RESET_STREAMS,
    PSEUDO_HEADERS,
    H2Shell,
    ShellStream,
    header_list_size,
    log,
    pseudo_split,
)
from greenmesh.streams.http2.frames import ErrorCode, error_name
from greenmesh.streams.http_common import (
    clean_request_headers,
    local_reply_headers,
    send_http_local_reply,
)
from greenmesh.streams.multiplex import MultiplexServerConnection


class _ServerConnection(H2Shell, MultiplexServerConnection):
    side = "downstream"
    error = DownstreamError

    def __init__(self, conn: Conn, opts: ServerOptions, handler: StreamHandler):
        H2Shell.__init__(self, conn, False, opts.max_header_bytes, opts.max_concurrent_streams,
                         opts.max_frame_size, opts.buffer_limit)
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
        s = ShellStream(sid)
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

    def _serve_stream(self, s: ShellStream, headers: Headers) -> None:
        try:
            if s.reset_code is not None:  # reset by the peer before its turn came: nothing to do
                return
            if len(headers) > self.opts.max_headers + PSEUDO_HEADERS or \
                    header_list_size(headers) > self.opts.max_header_bytes:
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
                else:
                    self._discard_rest(s)
                if stream.drain_after:
                    self.drain()
        finally:
            self.forget(s)

    def _discard_rest(self, s: ShellStream) -> None:
        """A response that ended before its request (a local reply, an early upstream answer):
        a little more of the request body is read and dropped before the stream is forgotten,
        as nginx discards a body, so a peer still sending gets its END_STREAM seen and a body
        that breaks the rules (content-length) its PROTOCOL_ERROR, not a NO_ERROR reset that
        depends on timing. Bounded in bytes and time; past either, the reset goes out."""
        if s.reset_code is not None or self.codec.remote_ended(s.id):
            return
        deadline = _monotonic() + DISCARD_SECONDS
        left = DISCARD_BYTES
        try:
            while left > 0:
                kind, data = self.read(s, max(deadline - _monotonic(), 0.0), True)
                if kind == END:
                    return
                left -= len(data)
        except StreamError:
            return  # reset by the peer or for its error, or out of time

    def _refuse_oversized(self, s: ShellStream, count: int) -> None:
        """431, as HTTP/1.1 gets: the connection and the other streams on it go on (the codec
        resets the stream with NO_ERROR when it is forgotten: the request body is not
        wanted)."""
        log.info("bad_request", peer=self.opts.peer, status=431, headers=count,
                 error="request headers too large")
        self.opts.rejected(431, b"", b"", "request headers too large")
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
            self.release()


class Http2ServerStream(ServerStream):
    __slots__ = ("c", "s", "request", "request_complete", "trailers", "_started", "done",
                 "_body_done", "drain_after")

    def __init__(self, c: _ServerConnection, s: ShellStream, raw_headers: Headers):
        self.c = c
        self.s = s
        pseudo, regular = pseudo_split(raw_headers)
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
        self.drain_after = False  # GOAWAY once this stream is over (keep-alive off)
        inbox = s.inbox
        self.request_complete = bool(inbox) and inbox[0][0] == END and inbox[0][1] is None
        if self.request_complete:
            inbox.popleft()
        self._body_done = self.request_complete

    def read_body(self, block: bool = True) -> Chunk:
        if self._body_done:
            return None
        c = self.c
        try:
            item = c.read(self.s, c.opts.stream_idle_timeout, block)
        except StreamTimeout:
            raise DownstreamTimeout("the request body stalled (stream idle timeout)") from None
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

    def drain_connection(self) -> None:
        # After the response, not before it: a GOAWAY ahead of a stream's HEADERS is legal,
        # but some clients (python-h2) stop reading the connection at a GOAWAY.
        self.drain_after = True

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


