"""HTTP/2 on h2: frames on one connection demultiplexed into streams by id.

Per connection, one reader greenlet feeds whole reads to h2 and routes the events to streams by
id; one writer greenlet sends what h2 has queued, once per wake-up, so the frames of many
streams leave in one write and no stream ever blocks on the socket. Each stream is served (or
driven, upstream) by its own greenlet with blocking-looking calls that wait only on that
stream: its inbox for frames, its window for flow control.

Flow control both ways: received DATA is acknowledged (WINDOW_UPDATE) only as the stream's
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
from h2.config import H2Configuration
from h2.connection import (
    ConnectionInputs,
    H2Connection,
    H2ConnectionStateMachine,
)
from h2.connection import ConnectionState as H2State
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    InformationalResponseReceived,
    RemoteSettingsChanged,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import H2Error, ProtocolError
from h2.settings import SettingCodes

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
from greenmesh.streams.http_common import (
    clean_request_headers,
    clean_response_headers,
    local_reply_headers,
    send_http_local_reply,
)
from greenmesh.streams.multiplex import MultiplexServerConnection

log = structlog.get_logger("greenmesh.http2")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
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


class _GracefulStateMachine(H2ConnectionStateMachine):
    """GOAWAY keeps an open connection open.

    h2 moves to CLOSED on sending or receiving any GOAWAY (python-hyper/h2#1181), which
    refuses the responses of streams the peer promised to finish; RFC 9113 section 6.8 lets
    every stream up to the GOAWAY's last stream id complete. greenmesh refuses new streams
    itself after a GOAWAY, either way.
    """

    _transitions = {
        **H2ConnectionStateMachine._transitions,
        **{(state, goaway): (None, state)
           for state in (H2State.CLIENT_OPEN, H2State.SERVER_OPEN)
           for goaway in (ConnectionInputs.SEND_GOAWAY, ConnectionInputs.RECV_GOAWAY)},
    }


class _GracefulH2Connection(H2Connection):
    """h2 with a graceful GOAWAY (see _GracefulStateMachine); tested against nginx's GOAWAY."""

    def __init__(self, config: H2Configuration):
        super().__init__(config)
        self.state_machine = _GracefulStateMachine()
        #: What HPACK decodes before giving up on the connection (GOAWAY ENHANCE_YOUR_CALM).
        self.header_block_cap = self.decoder.max_header_list_size

    @property
    def backlog(self) -> int:
        """Bytes queued for the socket."""
        return len(self._data_to_send)

    def overlong_frame_pending(self) -> bool:
        """Whether the incomplete frame left after receive_data announces more than the
        allowed frame size. h2 checks a frame's length only once its whole body has arrived, so
        a peer could make it buffer 16 MiB (a 24-bit length) before the FRAME_SIZE_ERROR."""
        pending = self.incoming_buffer._data
        return len(pending) >= 9 and \
            int.from_bytes(pending[:3], "big") > self.max_inbound_frame_size

    def _local_settings_acked(self):
        # h2 makes our advertised MAX_HEADER_LIST_SIZE the decoder's hard limit, so a block one
        # byte over it would end the connection and every sibling stream; greenmesh answers
        # such a request with 431 on its own stream instead (RFC 9113 section 10.5.1) and keeps
        # the hard limit, twice the advertised size, for peers that ignore it altogether.
        changes = super()._local_settings_acked()
        self.decoder.max_header_list_size = self.header_block_cap
        return changes

    def _receive_goaway_frame(self, frame):
        # h2 drops the queued output here; the peer still reads the streams it will finish
        # (and a dropped HEADERS frame would desynchronise HPACK), so keep it.
        queued = bytes(self._data_to_send)
        frames, events = super()._receive_goaway_frame(frame)
        self._data_to_send += queued
        return frames, events


def new_h2(client_side: bool) -> _GracefulH2Connection:
    """An h2 state machine as greenmesh configures it (also what bench/http2_floor.py measures).

    What arrives is validated (peers are untrusted). What leaves was parsed and validated on its
    way in (llhttp or h2), lowercased and stripped of hop-by-hop headers by the codecs, so h2
    need not check it again: that was a fifth of the CPU (py-spy).
    """
    return _GracefulH2Connection(H2Configuration(
        client_side=client_side, header_encoding=None, validate_inbound_headers=True,
        validate_outbound_headers=False, normalize_outbound_headers=False))


class _Stream:
    """One stream's end of the connection: frames waiting to be read, and who waits."""

    __slots__ = ("id", "inbox", "readable", "writable", "reset_code", "reset_reason", "got_frames",
                 "remote_ended", "on_reset", "born")

    def __init__(self, stream_id: int):
        self.id = stream_id
        self.on_reset: Callable[[], None] | None = None
        self.inbox: deque = deque()
        self.readable = Event()
        self.writable = Event()
        self.reset_code: int | None = None
        self.reset_reason = ResetReason.LOCAL_RESET
        self.got_frames = False
        self.remote_ended = False
        self.born = 0.0  # server streams: when the request arrived (premature-reset accounting)

    def push(self, item: tuple) -> None:
        self.inbox.append(item)
        self.got_frames = True
        self.readable.set()

    def fail(self, code: int, reason: ResetReason) -> None:
        self.reset_code = code
        self.reset_reason = reason
        self.readable.set()
        self.writable.set()
        if self.on_reset is not None:
            callback, self.on_reset = self.on_reset, None
            callback()


class _H2Connection:
    """What server and client connections share: h2, the stream table, reader and writer."""

    side = ""
    error: type[StreamError] = StreamResetError

    def __init__(self, conn: Conn, client_side: bool):
        self.conn = conn
        self.h2 = new_h2(client_side)
        self.streams: dict[int, _Stream] = {}
        self.state = ConnectionState.OPEN  # DRAINING once a GOAWAY went either way
        self._writer: BatchWriter | None = None
        self._count: Callable[[str], None] = lambda name: None
        self._dispatch: dict[type, Callable] = {
            DataReceived: self._on_data, StreamEnded: self._on_ended,
            TrailersReceived: self._on_trailers, StreamReset: self._on_reset,
            WindowUpdated: self._on_window, RemoteSettingsChanged: self._on_settings,
            ConnectionTerminated: self._on_goaway,
        }

    @property
    def closed(self) -> bool:
        return self.state is ConnectionState.CLOSED

    def start(self, max_header_bytes: int | None = None,
              stall_timeout: float | None = STALL_TIMEOUT,
              count: Callable[[str], None] = lambda name: None) -> None:
        h2 = self.h2
        settings = {
            SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
            SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            SettingCodes.ENABLE_PUSH: 0,
        }
        if max_header_bytes is not None:
            settings[SettingCodes.MAX_HEADER_LIST_SIZE] = max_header_bytes
            h2.header_block_cap = max(h2.header_block_cap, 2 * max_header_bytes)
            h2.decoder.max_header_list_size = h2.header_block_cap
        h2.local_settings = type(h2.local_settings)(client=h2.config.client_side,
                                                    initial_values=settings)
        h2.initiate_connection()
        h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self._count = count
        self._writer = BatchWriter(self.conn, h2.data_to_send, self.close,
                                   lambda: h2.backlog, stall_timeout,
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
        """Reads until the peer goes; dispatches every event of a read before the next read."""
        h2, conn, dispatch = self.h2, self.conn, self._dispatch
        try:
            while not self.closed:
                data = conn.read(None if self.streams else idle_timeout)
                if not data:
                    break
                try:
                    events = h2.receive_data(data)
                except ProtocolError as e:  # h2 picks the code: e.g. ENHANCE_YOUR_CALM for a bomb
                    self._protocol_error(str(e), e.error_code)
                    break
                if h2.overlong_frame_pending():
                    self._protocol_error("frame over the maximum frame size",
                                         ErrorCodes.FRAME_SIZE_ERROR)
                    break
                for ev in events:
                    handler = dispatch.get(type(ev))
                    if handler is not None:
                        handler(ev)
                    if self.closed:
                        break
                self.wake_writer()
                # A peer that floods PINGs or SETTINGS but never reads the answers, or does not
                # read what its streams asked for: no more reading until the writer catches up.
                if h2.backlog > HIGH_WATER:
                    self._count("downstream_flow_control_paused_reading_total")
                    self.writer.wait_writable()
        except ConnError:
            pass
        finally:
            self.close("peer gone")

    def _protocol_error(self, reason: str, code: int = ErrorCodes.PROTOCOL_ERROR) -> None:
        log.info("http2_protocol_error", side=self.side, peer=self.conn.peer, error=reason)
        try:
            self.h2.close_connection(error_code=code, additional_data=reason[:100].encode())
        except H2Error:
            pass
        # The writer sends the GOAWAY after what is queued, then closes; a peer that does not
        # read gets a second to take it (nobody else may write the socket meanwhile).
        self.close_after_flush(reason)
        self.writer.join(GOAWAY_FLUSH_SECONDS)

    def _on_data(self, ev: DataReceived) -> None:
        s = self.streams.get(ev.stream_id)
        if s is None:  # a stream we already finished: give the window back at once
            if ev.flow_controlled_length:
                self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            return
        s.push((DATA, ev.data, ev.flow_controlled_length))

    def _on_ended(self, ev: StreamEnded) -> None:
        s = self.streams.get(ev.stream_id)
        if s is not None and not s.remote_ended:
            s.remote_ended = True
            s.push((END, None))

    def _on_trailers(self, ev: TrailersReceived) -> None:
        s = self.streams.get(ev.stream_id)
        if s is not None:
            s.remote_ended = True
            s.push((END, list(ev.headers)))

    def _on_reset(self, ev: StreamReset) -> None:
        s = self.streams.get(ev.stream_id)
        if s is not None:
            s.fail(ev.error_code, ResetReason.REMOTE_REFUSED_STREAM
                   if ev.error_code == ErrorCodes.REFUSED_STREAM else ResetReason.REMOTE_RESET)

    def _on_window(self, ev: WindowUpdated) -> None:
        if ev.stream_id:
            s = self.streams.get(ev.stream_id)
            if s is not None:
                s.writable.set()
        else:
            for s in self.streams.values():
                s.writable.set()

    def _on_settings(self, ev: RemoteSettingsChanged) -> None:
        for s in self.streams.values():  # the initial window may have grown
            s.writable.set()

    def _on_goaway(self, ev: ConnectionTerminated) -> None:
        if self.state is ConnectionState.OPEN:
            self.state = ConnectionState.DRAINING
        last = ev.last_stream_id if ev.last_stream_id is not None else 0
        for sid, s in list(self.streams.items()):
            if sid > last:
                s.fail(ErrorCodes.REFUSED_STREAM, ResetReason.REMOTE_REFUSED_STREAM)

    def close_after_flush(self, reason: str) -> None:
        """Closes once the writer has sent everything queued (the last responses, a GOAWAY)."""
        if self._writer is not None:
            self._writer.close_after_flush(reason)

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.state = ConnectionState.CLOSED
        for s in list(self.streams.values()):
            if s.reset_code is None:
                s.fail(ErrorCodes.CANCEL, ResetReason.CONNECTION_TERMINATION)
        self.conn.close(reason)
        self.wake_writer()  # so the writer sees the close and ends

    def _reset_error(self, s: _Stream) -> StreamError:
        code = ErrorCodes(s.reset_code).name if s.reset_code is not None else "connection closed"
        message = f"{self.side} stream reset ({code})"
        if self.error is DownstreamError:
            return DownstreamError(message)
        return StreamResetError(message, s.reset_reason if s.reset_code is not None
                                else ResetReason.CONNECTION_TERMINATION)

    # Stream operations, shared by server and client streams.
    def read(self, s: _Stream, timeout: float | None, block: bool):
        """The next inbox item of a stream, acknowledging DATA as it is taken."""
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
        if item[0] == DATA and item[2] and not self.closed:
            try:
                self.h2.acknowledge_received_data(item[2], s.id)
                self.wake_writer()
            except H2Error:
                pass
        return item

    def send_data(self, s: _Stream, data: bytes, end_stream: bool) -> None:
        h2 = self.h2
        view = memoryview(data)
        try:
            while True:
                if s.reset_code is not None or self.closed:
                    raise self._reset_error(s)
                if not view:
                    if end_stream:
                        h2.end_stream(s.id)
                    break
                window = min(h2.local_flow_control_window(s.id), h2.max_outbound_frame_size)
                if window <= 0:
                    s.writable.clear()
                    self.wake_writer()
                    s.writable.wait()
                    continue
                n = min(window, len(view))
                h2.send_data(s.id, view[:n].tobytes(), end_stream=end_stream and n == len(view))
                view = view[n:]
                if not view:
                    break
                if h2.backlog > HIGH_WATER:
                    self.writer.wait_writable()
        except H2Error as e:
            raise self.error(f"{self.side} stream: {e}") from None
        self.wake_writer()
        if h2.backlog > HIGH_WATER:  # a peer that reads slowly holds back this stream only
            self.writer.wait_writable()

    def send_headers(self, s: _Stream, headers: Headers, end_stream: bool) -> None:
        if s.reset_code is not None or self.closed:
            raise self._reset_error(s)
        try:
            self.h2.send_headers(s.id, headers, end_stream=end_stream)
        except H2Error as e:
            raise self.error(f"{self.side} stream: {e}") from None
        self.wake_writer()

    def reset_stream(self, s: _Stream, code: int = ErrorCodes.CANCEL) -> None:
        if s.reset_code is None and not self.closed:
            s.reset_code = code
            try:
                self.h2.reset_stream(s.id, error_code=code)
            except H2Error:
                pass
            self.wake_writer()

    def forget(self, s: _Stream) -> None:
        """The stream is done: unread data goes back into the connection window."""
        self.streams.pop(s.id, None)
        unread = sum(item[2] for item in s.inbox if item[0] == DATA)
        if unread and not self.closed:
            try:
                self.h2.acknowledge_received_data(unread, s.id)
            except H2Error:
                pass
            self.wake_writer()


def header_list_size(headers: Headers) -> int:
    """SETTINGS_MAX_HEADER_LIST_SIZE's measure: names and values plus 32 bytes per field."""
    return sum(len(name) + len(value) for name, value in headers) + 32 * len(headers)


def _pseudo_split(headers) -> tuple[dict[bytes, bytes], Headers]:
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
        _H2Connection.__init__(self, conn, client_side=False)
        MultiplexServerConnection.__init__(self, conn, opts, handler)
        self.peer_ip = opts.peer[0].encode() if opts.peer else None
        self.last_stream_id = 0
        self.opened = 0
        self.premature_resets = 0
        self._dispatch[RequestReceived] = self._on_request

    def _on_request(self, ev: RequestReceived) -> None:
        # Draining: streams above the GOAWAY's last id are refused. And a stream counts against
        # the concurrency limit until greenmesh has finished serving it, not only until the
        # peer resets it: otherwise HEADERS + RST_STREAM pairs (CVE-2023-44487, "rapid reset")
        # start upstream requests without bound while h2 sees no stream open.
        if self.state is not ConnectionState.OPEN or len(self.streams) >= MAX_CONCURRENT_STREAMS:
            try:
                self.h2.reset_stream(ev.stream_id, error_code=ErrorCodes.REFUSED_STREAM)
            except H2Error:  # the peer has already reset it
                pass
            return
        s = _Stream(ev.stream_id)
        s.got_frames = True
        s.born = _monotonic()
        self.streams[ev.stream_id] = s
        self.last_stream_id = ev.stream_id
        self.opened += 1
        self.spawn(self._serve_stream, s, ev.headers)

    def _on_reset(self, ev: StreamReset) -> None:
        s = self.streams.get(ev.stream_id)
        if s is not None and _monotonic() - s.born < PREMATURE_RESET_SECONDS:
            self.premature_resets += 1
            self._check_premature_resets()
        super()._on_reset(ev)

    def _check_premature_resets(self) -> None:
        """Envoy's rule: GOAWAY once half of the streams (counting at least 500) were reset by
        the peer within a second of opening; a well-behaved client that cancels now and then
        never gets there, a rapid-reset flood does after 250 streams."""
        n, resets = max(self.opened, PREMATURE_RESET_STREAMS), self.premature_resets
        if resets * 2 < n or self.closed:
            return
        log.warning("http2_premature_resets", peer=self.opts.peer, streams=self.opened,
                    resets=resets)
        self.state = ConnectionState.DRAINING  # no new streams; GOAWAY goes out, then we close
        try:
            self.h2.close_connection(error_code=ErrorCodes.ENHANCE_YOUR_CALM,
                                     last_stream_id=self.last_stream_id,
                                     additional_data=b"too many streams reset by the peer")
        except H2Error:
            pass
        self.close_after_flush("premature resets")

    def _serve_stream(self, s: _Stream, headers) -> None:
        try:
            if s.reset_code is not None:  # reset by the peer before its turn came: nothing to do
                return
            if len(headers) > MAX_HEADERS or header_list_size(headers) > self.opts.max_header_bytes:
                self._refuse_oversized(s, len(headers))
                return
            stream = Http2ServerStream(self, s, headers)
        except StreamError as e:
            self.reset_stream(s, ErrorCodes.PROTOCOL_ERROR)
            log.info("bad_request", peer=self.opts.peer, error=str(e))
        else:
            try:
                self.handler(stream)
            finally:
                if not stream.done:
                    self.reset_stream(s, ErrorCodes.INTERNAL_ERROR)
        finally:
            self.forget(s)

    def _refuse_oversized(self, s: _Stream, count: int) -> None:
        """431, as HTTP/1.1 gets: the connection and the other streams on it go on."""
        log.info("bad_request", peer=self.opts.peer, status=431, headers=count,
                 error="request headers too large")
        body = b"request headers too large\n"
        self.send_headers(s, [(b":status", b"431"), *local_reply_headers(body)], False)
        self.send_data(s, body, True)
        if not s.remote_ended:  # the response is complete; the request body is not wanted
            self.reset_stream(s, ErrorCodes.NO_ERROR)

    def announce_drain(self) -> None:
        """GOAWAY with the last stream id: those in flight finish, no new ones."""
        try:
            self.h2.close_connection(last_stream_id=self.last_stream_id)
        except H2Error:
            pass
        self.wake_writer()

    def run(self) -> None:
        self.start(self.opts.max_header_bytes, self.opts.idle_timeout, self.opts.count)
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

    def __init__(self, c: _ServerConnection, s: _Stream, raw_headers):
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
        self.request_complete = bool(inbox) and inbox[0][0] == END and s.remote_ended
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
        self.c.reset_stream(self.s, ErrorCodes.INTERNAL_ERROR)
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
        super().__init__(conn, client_side=True)
        self.max_streams = settings.max_concurrent_streams if settings else MAX_CONCURRENT_STREAMS
        self.active_streams = 0
        self.streams_opened = 0
        self._dispatch[ResponseReceived] = self._on_response
        self._dispatch[InformationalResponseReceived] = self._on_response
        self.start()
        self._reader = gevent.spawn(self.read_loop, None)

    @property
    def capacity(self) -> int:
        return min(self.h2.remote_settings.max_concurrent_streams, self.max_streams)

    @property
    def usable(self) -> bool:
        return self.state is ConnectionState.OPEN

    def _on_response(self, ev) -> None:
        s = self.streams.get(ev.stream_id)
        if s is not None:
            s.push((HEAD, ev.headers))

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

    def send_headers(self, head: RequestHead, end_stream: bool) -> None:
        c = self.c
        if head.upgrade:
            raise StreamError("cannot switch protocols over HTTP/2")
        if c.state is not ConnectionState.OPEN:
            raise StreamResetError("upstream connection going away")
        try:
            sid = c.h2.get_next_available_stream_id()
        except H2Error as e:
            raise StreamResetError(f"upstream: {e}") from None
        self.s = s = _Stream(sid)
        c.streams[sid] = s
        headers = [(b":method", head.method), (b":scheme", head.scheme or b"http"),
                   (b":authority", head.authority), (b":path", head.path)]
        headers.extend(head.headers)
        c.send_headers(s, headers, end_stream)

    @property
    def stream(self) -> _Stream:
        assert self.s is not None, "send_headers() first"
        return self.s

    def send_data(self, data: bytes, end_stream: bool) -> None:
        self.c.send_data(self.stream, data, end_stream)

    def send_trailers(self, trailers: Headers) -> None:
        self.c.send_headers(self.stream, trailers, True)

    def flush(self) -> None:
        self.c.wake_writer()

    def read_headers(self, timeout: float | None) -> ResponseHead:
        item = self.c.read(self.stream, timeout, True)
        if item[0] != HEAD:
            raise StreamResetError("upstream sent data before a response head")
        pseudo, regular = _pseudo_split(item[1])
        try:
            status = int(pseudo.get(b":status", b""))
        except ValueError:
            raise StreamResetError("upstream response without a valid :status") from None
        return ResponseHead(status, clean_response_headers(regular))

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
        raise StreamResetError("upstream sent a second response head")

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
            if not (self._body_done and self.s.remote_ended):
                c.reset_stream(self.s)
            c.forget(self.s)
        c.active_streams -= 1
        return c, c.usable

    def upgrade(self) -> Tunnel:
        raise StreamError("cannot switch protocols over HTTP/2")


PROTOCOL = Protocol(name="http2", match=match, server=server, client=Http2ClientConnection,
                    multiplexed=True, alpn="h2")
