"""One multiplexed stream connection for every xprotocol codec, both sides.

Server side: one reader decodes every frame of a read; heartbeats are answered on the spot;
each request becomes a stream served in its own greenlet; responses go back as they complete,
out of order, through a queue that one writer greenlet flushes in batches.

Client side: each upstream request gets a fresh id from a per-connection counter that skips ids
still in flight when it wraps; a reader greenlet hands each response to the stream waiting on
that id (the server side then writes it back under the client's own id). Idle connections are
probed with heartbeats and closed when a probe goes unanswered.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Container

import gevent
from gevent.event import AsyncResult, Event
from mypy_extensions import trait

from greenmesh import model
from greenmesh.conn import HIGH_WATER, STALL_TIMEOUT, BatchWriter, Conn, ConnError
from greenmesh.deadline import Expired, within
from greenmesh.failures import LocalReply, ResponseFlag
from greenmesh.logger import get_logger
from greenmesh.streams import Protocol
from greenmesh.streams.base import (
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
    StreamReset,
    StreamTimeout,
    Tunnel,
)
from greenmesh.streams.multiplex import MultiplexServerConnection
from greenmesh.streams.xprotocol import MAX_FRAME, CodecError, XCodec, XFrame

log = get_logger("greenmesh.xprotocol")


class _WriteQueue(BatchWriter):
    """Frames queued by many streams, joined and written by one greenlet per batch."""

    __slots__ = ("_pending", "_pending_bytes")

    def __init__(self, conn: Conn, on_close: Callable[[str], None],
                 stall_timeout: float | None = STALL_TIMEOUT,
                 on_wait: Callable[[], None] = lambda: None, high_water: int = HIGH_WATER):
        self._pending: list[bytes | bytearray] = []
        self._pending_bytes = 0
        super().__init__(conn, self._take, on_close, lambda: self._pending_bytes, stall_timeout,
                         on_wait, high_water)

    def send(self, data: bytes | bytearray) -> None:
        self._pending.append(data)
        self._pending_bytes += len(data)
        self.wake()

    def _take(self) -> bytes:
        pending = self._pending
        if not pending:
            return b""
        data = b"".join(pending)
        pending.clear()
        self._pending_bytes = 0
        return data


class _ServerConnection(MultiplexServerConnection):
    """Reads no further while the requests it is serving hold more than the listener's buffer
    limit (they are forwarded and answered asynchronously, so a fast client could otherwise
    queue any number), or while the client leaves more than that of responses unread."""

    def __init__(self, codec: XCodec, conn: Conn, opts: ServerOptions, handler: StreamHandler):
        super().__init__(conn, opts, handler)
        self.codec = codec
        self.writer = _WriteQueue(conn, self.close, opts.idle_timeout,
                                  high_water=opts.buffer_limit)
        self._paused = lambda: opts.count("downstream_flow_control_paused_reading_total")
        self.inflight_bytes = 0  # of the requests being served
        self.inflight = 0  # requests being served
        self._room = Event()

    def close(self, reason: str) -> None:
        self.state = ConnectionState.CLOSED
        self.conn.close(reason)

    def close_after_flush(self, reason: str) -> None:
        self.writer.close_after_flush(reason)

    def run(self) -> None:
        codec, conn, opts = self.codec, self.conn, self.opts
        frame_limit, high = opts.max_frame_size or MAX_FRAME, opts.buffer_limit
        buf = bytearray()
        try:
            while not conn.closed:
                data = conn.read(opts.idle_timeout if self.idle else None)
                if not data:
                    return
                buf += data
                offset = 0
                while True:
                    try:
                        frame, offset = codec.decode(buf, offset, frame_limit)
                    except CodecError as e:
                        self._codec_error(e)
                        return
                    if frame is None:
                        break
                    limit = self.opts.max_concurrent_streams
                    while self.inflight >= limit and not conn.closed:
                        self._room.clear()  # max_concurrent_streams in flight: read no more
                        self._room.wait()
                    self._dispatch(frame)
                del buf[:offset]
                if self.writer.backed_up or self.inflight_bytes > high:
                    self._paused()
                    self.writer.wait_writable()  # a client not reading its responses
                    while self.inflight_bytes > high and not conn.closed:
                        self._room.clear()
                        self._room.wait()  # requests coming faster than they are answered
        except ConnError:
            pass
        finally:
            # A client may half-close after its last request: answer what is in flight first.
            if not self.idle and not conn.closed:
                gevent.joinall(list(self.handlers), timeout=self.opts.idle_timeout)
            self.writer.close_after_flush("done")
            self.writer.join(timeout=5)
            self.state = ConnectionState.CLOSED
            self.finish_handlers(grace=0)

    def _codec_error(self, e: CodecError) -> None:
        log.info("bad_request", peer=self.opts.peer, protocol=self.codec.name, error=str(e))
        self.writer.send(self.codec.error_response(
            e.request_id, ResponseFlag.DOWNSTREAM_PROTOCOL_ERROR, 400))
        self.writer.close_after_flush(f"codec error: {e}")
        gevent.sleep(0)  # let the writer send it before the connection goes

    def _dispatch(self, frame: XFrame) -> None:
        if not frame.is_request:
            return  # a client has no business sending responses: ignored
        if frame.heartbeat:
            self.writer.send(self.codec.heartbeat_reply(frame))
            return
        self.inflight_bytes += len(frame.raw)
        self.inflight += 1
        self.spawn(self._serve, frame)

    def _serve(self, frame: XFrame) -> None:
        try:
            self.handler(XServerStream(self, frame))
        finally:
            self.inflight_bytes -= len(frame.raw)
            self.inflight -= 1
            if self.inflight_bytes <= self.opts.buffer_limit:
                self._room.set()


@trait
class _WholeFrames:
    """RPC frames arrive and leave whole: there is no separate body or trailers to move."""

    __slots__ = ()

    def send_data(self, data: bytes, end_stream: bool) -> None:
        pass

    def send_trailers(self, trailers: Headers) -> None:
        pass

    def flush(self) -> None:
        pass


class _FrameResponseHead(ResponseHead):
    """A response frame's head whose header map is decoded only when the proxy asks
    (``load_headers``: a route or a filter edits response headers); unless a new map was
    assigned since, the frame is forwarded as it came. (No property over ``headers``: compiled
    code would bypass it.)"""

    __slots__ = ("original",)

    def __init__(self, status: int, frame: XFrame):
        super().__init__(status, [], b"", frame, len(frame.raw))
        self.original = self.headers  # replaced (not edited in place) means edited

    def load_headers(self) -> None:
        if self.headers is self.original and not self.headers:
            self.headers = self.original = self.native.headers  # type: ignore[attr-defined]


class XServerStream(_WholeFrames, ServerStream):
    __slots__ = ("sc", "frame", "request", "request_complete", "trailers", "_done")

    def __init__(self, sc: _ServerConnection, frame: XFrame):
        self.sc = sc
        self.frame = frame
        try:
            service, method, target = sc.codec.route_info(frame)
            headers = frame.headers
        except CodecError:
            service, method, target, headers = b"", b"", b"", []
        self.request = RequestHead(method, service, target, b"", headers, native=frame)
        self.request.message_bytes = len(frame.raw)
        self.request_complete = True  # a frame arrives whole
        self.trailers = None
        self._done = False

    def read_body(self, block: bool = True) -> Chunk:
        return None

    def send_informational(self, head: ResponseHead) -> None:
        pass

    def send_headers(self, head: ResponseHead, end_stream: bool) -> None:
        native = head.native
        if isinstance(native, XFrame) and not native.is_request and \
                type(native) is type(self.frame):
            # Back under the client's own id; re-encoded only if a route edited its headers.
            headers = None if isinstance(head, _FrameResponseHead) and \
                head.headers is head.original else head.headers
            self._send(lambda codec, frame: codec.encode(native, frame.request_id, headers))
        else:  # not a response of this protocol: its status is all there is to say
            self._send(lambda codec, frame: codec.error_response(frame.request_id, None,
                                                                 head.status, frame))

    def send_local_reply(self, reply: LocalReply) -> int:
        return self._send(lambda codec, frame: codec.error_response(frame.request_id, reply.flag,
                                                                    reply.status, frame))

    def _send(self, encode: Callable[[XCodec, XFrame], bytes | bytearray]) -> int:
        """The one response, under the client's own request id (none for oneway calls)."""
        if self._done or self.frame.oneway:
            self._done = True
            return 0
        self._done = True
        data = encode(self.sc.codec, self.frame)
        self.sc.writer.send(data)
        return len(data)

    def reset(self, reason: str) -> None:
        self.send_local_reply(LocalReply(502, [ResponseFlag.UPSTREAM_CONNECTION_TERMINATION]))

    def drain_connection(self) -> None:
        self.sc.drain()

    @property
    def response_started(self) -> bool:
        return self._done

    def upgrade(self) -> Tunnel:
        raise DownstreamError("RPC streams cannot switch protocols")


class RequestIds:
    """An upstream connection's request ids: the next one not in flight, wrapping from the
    codec's largest back to 1."""

    __slots__ = ("next", "top")

    def __init__(self, top: int, first: int = 1):
        self.next = first
        self.top = top

    def allocate(self, in_flight: Container[int], probe: int | None) -> int:
        top = self.top
        while True:
            rid = self.next
            self.next = rid + 1 if rid < top else 1
            if rid not in in_flight and rid != probe:
                return rid


class XClientConnection(ClientConnection):
    def __init__(self, codec: XCodec, conn: Conn, settings: model.Cluster | None):
        self.codec = codec
        self.conn = conn
        self._capacity = settings.max_concurrent_streams if settings else 100
        self.keepalive = settings.keepalive_interval if settings else 15.0
        self.in_flight: dict[int, XClientStream] = {}
        self.active_streams = 0
        self.streams_opened = 0
        self.state = ConnectionState.OPEN
        self._ids = RequestIds(codec.max_request_id)
        self._last_read = time.monotonic()
        self._probe: int | None = None
        self.writer = _WriteQueue(conn, self.close, high_water=(
            settings.per_connection_buffer_limit_bytes if settings else HIGH_WATER))
        self._closed = Event()
        self._reader = gevent.spawn(self._read_loop)
        self._keeper = gevent.spawn(self._keepalive_loop)

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def usable(self) -> bool:
        return self.state is ConnectionState.OPEN

    def allocate_id(self) -> int:
        return self._ids.allocate(self.in_flight, self._probe)

    def new_stream(self, on_finish: Callable[[ClientConnection, bool], None]) -> ClientStream:
        self.active_streams += 1
        self.streams_opened += 1
        return XClientStream(self, on_finish, self.streams_opened > 1)

    def _read_loop(self) -> None:
        codec, conn = self.codec, self.conn
        buf = bytearray()
        try:
            while True:
                data = conn.read(None)
                if not data:
                    break
                self._last_read = time.monotonic()
                buf += data
                offset = 0
                while True:
                    frame, offset = codec.decode(buf, offset)
                    if frame is None:
                        break
                    if frame.heartbeat:
                        if frame.request_id == self._probe:
                            self._probe = None
                        continue
                    stream = self.in_flight.pop(frame.request_id, None)
                    if stream is not None:  # else: late, its stream gave up
                        stream.result.set(frame)
                del buf[:offset]
        except (ConnError, CodecError) as e:
            log.info("upstream_connection_error", protocol=codec.name, peer=conn.peer,
                     error=str(e))
        finally:
            self.close("upstream gone")

    def _keepalive_loop(self) -> None:
        interval = self.keepalive
        while self.state is ConnectionState.OPEN:
            if self._closed.wait(interval):  # set on close: ends without a kill
                return
            if self._probe is not None:  # the last probe got no answer in a whole interval
                self.close("heartbeat unanswered")
                return
            if time.monotonic() - self._last_read >= interval:
                self._probe = rid = self.allocate_id()
                self.writer.send(self.codec.heartbeat(rid))

    def close(self, reason: str) -> None:
        if self.state is ConnectionState.CLOSED:
            return
        self.state = ConnectionState.CLOSED
        self.conn.close(reason)
        self.writer.stop()
        self._closed.set()  # the reader ends too: its read fails on the closed socket
        for stream in list(self.in_flight.values()):
            stream.result.set(None)
        self.in_flight.clear()


class XClientStream(_WholeFrames, ClientStream):
    __slots__ = ("c", "result", "rid", "_oneway", "_got")

    def __init__(self, c: XClientConnection, on_finish, reused: bool):
        super().__init__(on_finish, reused)
        self.c = c
        self.result: AsyncResult = AsyncResult()
        self.rid = 0
        self._oneway = False
        self._got = False

    def send_headers(self, head: RequestHead, end_stream: bool) -> None:
        c = self.c
        frame = head.native
        if not isinstance(frame, XFrame) or not frame.is_request:
            raise StreamError(f"only {c.codec.name} requests can go to a {c.codec.name} upstream")
        if c.state is not ConnectionState.OPEN:
            raise StreamReset("upstream connection closed")
        self.rid = c.allocate_id()
        self._oneway = frame.oneway
        if not frame.oneway:
            c.in_flight[self.rid] = self
        # Forwarded as it came, unless a route edited its header map (then re-encoded).
        c.writer.send(c.codec.encode(frame, self.rid,
                                     None if head.headers is frame.headers else head.headers))
        c.writer.wait_writable()  # an upstream that does not read holds this request back

    def read_headers(self, timeout: float | None) -> ResponseHead:
        if self._oneway:
            return ResponseHead(200, [])  # sent: that is all a oneway request gets
        try:
            frame = within(timeout, self.result.get)
        except Expired:
            raise StreamTimeout("upstream response timed out") from None
        if frame is None:
            raise StreamReset("upstream connection closed")
        self._got = True
        return _FrameResponseHead(self.c.codec.http_status(frame), frame)

    def read_body(self, timeout: float | None, block: bool = True) -> Chunk:
        return None

    @property
    def response_started(self) -> bool:
        return self._got

    def reset(self, reason: str) -> None:
        self.finish()

    def _release(self) -> tuple[ClientConnection, bool]:
        c = self.c
        c.in_flight.pop(self.rid, None)
        c.active_streams -= 1
        return c, c.usable

    def upgrade(self) -> Tunnel:
        raise StreamError("RPC streams cannot switch protocols")


def make_protocol(codec: XCodec) -> Protocol:
    """A registry entry for an xprotocol codec: the connection code above, shared."""

    def server(conn: Conn, opts: ServerOptions, handler: StreamHandler) -> ServerConnection:
        return _ServerConnection(codec, conn, opts, handler)

    def client(conn: Conn, settings: model.Cluster | None = None) -> ClientConnection:
        return XClientConnection(codec, conn, settings)

    return Protocol(name=codec.name, match=codec.match, server=server, client=client,
                    multiplexed=codec.multiplexed)
