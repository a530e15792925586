"""HTTP/2 (RFC 9113), sans-IO: bytes in -> events out; calls -> bytes queued out.

greenmesh's own codec rather than h2: h2 alone cost more per proxied request than all of MOSN
(the HTTP/2 issue's measurements), in per-frame objects, per-event objects and state machines built
for generality. Here a frame is a 9-byte header unpacked with one ``struct`` call and a handler
picked from a tuple by type; events are calls on the shell's ``Events`` object (no event objects);
output accumulates in one buffer the shell flushes once per wake-up; window updates are batched.
Header blocks go through ``headers`` (hpack, with caches, and field validation); the
frame handlers are in ``inbound``, the states, errors and events in ``state``.

States are explicit: the connection's (``ConnState``) and each stream's (``StreamState``, RFC 9113
section 5.1). Errors follow section 5.4: a connection error queues one GOAWAY with its code and
raises ``ConnectionError_``; a stream error resets that stream only, and every other stream goes
on. Memory is bounded by open streams: a stream the shell has released is forgotten except for a
small record of recently closed ids, which says how to answer a late frame.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from greenmesh.streams.http2.frames import (
    ACK,
    CONTINUATION,
    DATA,
    DEFAULT_FRAME_SIZE,
    DEFAULT_WINDOW,
    END_HEADERS,
    END_STREAM,
    FRAME_HEADER,
    GOAWAY,
    GOAWAY_BODY,
    HEADERS,
    MAX_STREAM_ID,
    PING,
    PREFACE,
    RECENTLY_CLOSED,
    RST_STREAM,
    SETTING,
    SETTINGS,
    U32,
    WINDOW_UPDATE,
    ErrorCode,
    Setting,
)
from greenmesh.streams.http2.headers import HeaderCodec, Headers
from greenmesh.streams.http2.inbound import FrameHandlers
from greenmesh.streams.http2.state import (
    Closed,
    ConnectionError_,
    ConnState,
    Detached,
    Events,
    StreamError_,
    StreamRecord,
    StreamState,
)


class H2Codec(FrameHandlers):
    """One end of one HTTP/2 connection."""

    def __init__(self, events: Events, client: bool, *, max_concurrent_streams: int = 100,
                 stream_window: int = 1 << 20, connection_window: int = 16 << 20,
                 max_header_list_size: int | None = None, max_header_block: int = 64 << 10,
                 max_frame_size: int | None = None):
        self.events = events
        self.client = client
        self.state = ConnState.SETTINGS if client else ConnState.PREFACE
        self.streams: dict[int, StreamRecord] = {}
        self._recently_closed: OrderedDict[int, Closed] = OrderedDict()
        self.out = bytearray()
        self._rest = b""
        # Ours, as advertised.
        self.max_concurrent_streams = max_concurrent_streams
        self.stream_window = stream_window
        self.connection_window = connection_window
        self.max_header_list_size = max_header_list_size
        # Enforced from the start: a larger limit than the default needs no acknowledgement.
        self.max_inbound_frame = max_frame_size or DEFAULT_FRAME_SIZE
        # The peer's.
        self.peer_max_concurrent = 2**31  # unlimited until it says
        self.peer_initial_window = DEFAULT_WINDOW
        self.peer_max_frame = DEFAULT_FRAME_SIZE
        # Connection windows: what we may send, what the peer may still send us.
        self.send_window = DEFAULT_WINDOW
        self.recv_window = DEFAULT_WINDOW
        self._conn_unacked = 0
        self.headers = HeaderCodec(max(max_header_block, 2 * (max_header_list_size or 0)))
        self._continuation: tuple[int, int, list[bytes]] | None = None  # sid, flags, fragments
        self._block_cap = max(max_header_block, 2 * (max_header_list_size or 0))
        self.highest_peer_id = 0  # the highest stream id the peer opened
        self._next_id = 1 if client else 2
        self.goaway_sent: int | None = None  # the last stream id we promised to serve
        self.goaway_received: int | None = None
        self._handlers: tuple[Callable[[int, int, bytes, int, int], None], ...] = (
                          self._on_data, self._on_headers, self._on_priority,
                          self._on_rst_stream, self._on_settings, self._on_push_promise,
                          self._on_ping, self._on_goaway, self._on_window_update,
                          self._on_continuation)

    def detach(self) -> None:
        """The connection has ended: the events go nowhere and the frame handlers (bound
        methods, so a cycle through this codec) are let go."""
        self.events = Detached()
        self._handlers = ()
        self.state = ConnState.CLOSED

    # -- output ------------------------------------------------------------------------------
    def _frame(self, kind: int, flags: int, sid: int, payload: bytes | memoryview = b"") -> None:
        n = len(payload)
        self.out += FRAME_HEADER.pack(n >> 16, n & 0xFFFF, kind, flags, sid)
        if n:
            self.out += payload

    def data_to_send(self) -> bytes:
        out = self.out
        if not out:
            return b""
        data = bytes(out)
        out.clear()
        return data

    def initiate(self) -> None:
        """The preface (client), our SETTINGS, and the connection window beyond the default."""
        if self.client:
            self.out += PREFACE
        settings = [(Setting.MAX_CONCURRENT_STREAMS, self.max_concurrent_streams),
                    (Setting.INITIAL_WINDOW_SIZE, self.stream_window),
                    (Setting.ENABLE_PUSH, 0)]
        if self.max_header_list_size is not None:
            settings.append((Setting.MAX_HEADER_LIST_SIZE, self.max_header_list_size))
        if self.max_inbound_frame != DEFAULT_FRAME_SIZE:
            settings.append((Setting.MAX_FRAME_SIZE, self.max_inbound_frame))
        self._frame(SETTINGS, 0, 0, b"".join(SETTING.pack(k, v) for k, v in settings))
        if self.connection_window > DEFAULT_WINDOW:
            self._frame(WINDOW_UPDATE, 0, 0, U32.pack(self.connection_window - DEFAULT_WINDOW))
            self.recv_window = self.connection_window

    def open_stream(self) -> int:
        """A new stream id (client)."""
        sid = self._next_id
        if sid > MAX_STREAM_ID:
            raise ConnectionError_(ErrorCode.NO_ERROR, "stream ids exhausted")
        self._next_id += 2
        self.streams[sid] = StreamRecord(sid, self.peer_initial_window, self.stream_window)
        return sid

    def send_headers(self, sid: int, headers: Headers, end_stream: bool) -> None:
        """A request or response head, or trailers (with end_stream)."""
        s = self.streams[sid]
        if s.state is StreamState.IDLE:
            s.state = StreamState.OPEN
            if self.client and headers and headers[0] == (b":method", b"HEAD"):
                s.head = True
        block = self.headers.encode(headers)
        limit = self.peer_max_frame
        flags = END_STREAM if end_stream else 0
        if len(block) <= limit:
            self._frame(HEADERS, flags | END_HEADERS, sid, block)
        else:
            self._frame(HEADERS, flags, sid, block[:limit])
            for i in range(limit, len(block), limit):
                last = i + limit >= len(block)
                self._frame(CONTINUATION, END_HEADERS if last else 0, sid, block[i:i + limit])
        if end_stream:
            self._end_local(s)

    def send_data(self, sid: int, data: bytes | memoryview, end_stream: bool) -> int:
        """Queues as much of ``data`` as the windows allow; returns how much. END_STREAM goes
        with the last byte only if all of it went."""
        s = self.streams[sid]
        n = min(len(data), s.send_window, self.send_window)
        if (n <= 0 and data) or (not data and not end_stream):
            return 0
        limit = self.peer_max_frame
        i = 0
        while True:
            j = min(i + limit, n)
            last = j == n
            self._frame(DATA, END_STREAM if last and end_stream and n == len(data) else 0, sid,
                        data[i:j])
            i = j
            if last:
                break
        s.send_window -= n
        self.send_window -= n
        if end_stream and n == len(data):
            self._end_local(s)
        return n

    def window(self, sid: int) -> int:
        """What may be sent on a stream now."""
        s = self.streams.get(sid)
        return 0 if s is None else min(s.send_window, self.send_window)

    def reset_stream(self, sid: int, code: int = ErrorCode.CANCEL) -> None:
        s = self.streams.get(sid)
        if s is None or s.state is StreamState.CLOSED:
            return
        self._frame(RST_STREAM, 0, sid, U32.pack(code))
        s.state = StreamState.CLOSED
        s.closed_by = Closed.RESET_SENT

    def consumed(self, sid: int, n: int) -> None:
        """The shell took ``n`` body bytes: give the peer its window back, in batches."""
        self._conn_unacked += n
        if self._conn_unacked >= self.connection_window // 2:
            self._frame(WINDOW_UPDATE, 0, 0, U32.pack(self._conn_unacked))
            self.recv_window += self._conn_unacked
            self._conn_unacked = 0
        s = self.streams.get(sid)
        if s is not None and s.state in (StreamState.OPEN, StreamState.HALF_CLOSED_LOCAL):
            s.unacked += n
            if s.unacked >= self.stream_window // 2:
                self._frame(WINDOW_UPDATE, 0, sid, U32.pack(s.unacked))
                s.recv_window += s.unacked
                s.unacked = 0

    def release(self, sid: int, unread: int = 0) -> None:
        """The shell is done with a stream: it stops counting against the concurrency limit.
        A stream still open is reset (NO_ERROR once our side ended: the rest of the request
        is not wanted; else CANCEL); ``unread`` body bytes go back to the connection window."""
        s = self.streams.pop(sid, None)
        if s is None:
            return
        if s.state is StreamState.HALF_CLOSED_LOCAL and not self.client:
            self._frame(RST_STREAM, 0, sid, U32.pack(ErrorCode.NO_ERROR))
            s.closed_by = Closed.RESET_SENT
        elif s.state is not StreamState.CLOSED:
            if s.state is not StreamState.IDLE:
                self._frame(RST_STREAM, 0, sid, U32.pack(ErrorCode.CANCEL))
            s.closed_by = Closed.RESET_SENT
        self._remember(sid, s.closed_by or Closed.ENDED)
        if unread:
            self.consumed(0, unread)

    def goaway(self, code: int = ErrorCode.NO_ERROR, debug: bytes = b"",
               last_stream_id: int | None = None) -> None:
        """No new streams from the peer beyond ``last_stream_id`` (default: the last one it
        opened); those up to it are served."""
        last = self.highest_peer_id if last_stream_id is None else last_stream_id
        self.goaway_sent = last if self.goaway_sent is None else min(self.goaway_sent, last)
        self._frame(GOAWAY, 0, 0, GOAWAY_BODY.pack(last, code) + debug[:100])

    def ping(self, data: bytes = b"\0" * 8) -> None:
        self._frame(PING, 0, 0, data)

    # -- input -------------------------------------------------------------------------------
    def receive(self, data: bytes) -> None:
        """Handles every whole frame in ``data`` (with what was left over before), calling the
        events as it goes. Raises ConnectionError_ (GOAWAY already queued) on a connection
        error; the rest of the input is then ignored."""
        if self.state is ConnState.CLOSED:
            return
        if self._rest:
            data = self._rest + data
            self._rest = b""
        try:
            i = 0
            if self.state is ConnState.PREFACE:
                i = self._preface(data)
                if self.state is ConnState.PREFACE:
                    return
            n = len(data)
            handlers, max_frame = self._handlers, self.max_inbound_frame
            while n - i >= 9:
                hi, lo, kind, flags, sid = FRAME_HEADER.unpack_from(data, i)
                length = (hi << 16) | lo
                if length > max_frame:  # refused on its header: never buffered
                    raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "frame too large")
                end = i + 9 + length
                if end > n:
                    break
                sid &= MAX_STREAM_ID
                if self._continuation is not None and kind != CONTINUATION:
                    raise ConnectionError_(ErrorCode.PROTOCOL_ERROR,
                                           "header block interrupted")
                if self.state is ConnState.SETTINGS and (kind != SETTINGS or flags & ACK):
                    raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "SETTINGS must come first")
                if kind < 10:
                    try:
                        handlers[kind](flags, sid, data, i + 9, end)
                    except StreamError_ as stream_err:
                        self._stream_error(sid, stream_err.code, str(stream_err))
                i = end
                max_frame = self.max_inbound_frame
            if i < n:
                self._rest = data[i:]
        except ConnectionError_ as e:
            self.goaway(e.code, str(e).encode())
            self.state = ConnState.CLOSED
            raise

    def _preface(self, data: bytes) -> int:
        n = min(len(data), len(PREFACE))
        if data[:n] != PREFACE[:n]:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "bad connection preface")
        if n < len(PREFACE):
            self._rest = data
            return len(data)
        self.state = ConnState.SETTINGS
        return len(PREFACE)

    def _remember(self, sid: int, how: Closed) -> None:
        closed = self._recently_closed
        closed[sid] = how
        if len(closed) > RECENTLY_CLOSED:
            closed.popitem(last=False)

    def _stream_error(self, sid: int, code: int, reason: str) -> None:
        """Resets the stream; the connection and its other streams go on."""
        s = self.streams.get(sid)
        self._frame(RST_STREAM, 0, sid, U32.pack(code))
        if s is None:
            self._remember(sid, Closed.RESET_SENT)
            self.events.on_refused(sid, code, reason)
            return
        was_closed = s.state is StreamState.CLOSED
        s.state = StreamState.CLOSED
        s.closed_by = Closed.RESET_SENT
        if not was_closed:
            self.events.on_reset(sid, code, False)

    def peer_initiated(self, sid: int) -> bool:
        return bool(sid & 1) != self.client  # clients open odd streams

    def _idle(self, sid: int) -> bool:
        """A stream id nobody has opened yet."""
        if self.peer_initiated(sid):
            return sid > self.highest_peer_id
        return sid >= self._next_id

    def _closed_stream(self, sid: int, kind: str) -> None:
        """A frame for a stream greenmesh no longer tracks (RFC 9113 section 5.1, closed)."""
        how = self._recently_closed.get(sid)
        if how is Closed.RESET_SENT:
            return  # frames the peer sent before it saw our reset: ignored
        if how is Closed.RESET_RECEIVED:
            raise StreamError_(ErrorCode.STREAM_CLOSED, f"{kind} after RST_STREAM")
        if how is Closed.ENDED or kind == "DATA":
            raise ConnectionError_(ErrorCode.STREAM_CLOSED, f"{kind} on a closed stream")
        raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, f"{kind} on a stream never opened")

    def _late_frame(self, s: StreamRecord, kind: str) -> None:
        """DATA or HEADERS on a stream the peer has ended or that was reset (section 5.1)."""
        if s.closed_by is Closed.RESET_SENT:
            return  # sent before the peer saw our reset: ignored
        if s.closed_by is Closed.ENDED:
            raise ConnectionError_(ErrorCode.STREAM_CLOSED, f"{kind} on a closed stream")
        raise StreamError_(ErrorCode.STREAM_CLOSED, f"{kind} after the end of the stream")

    # -- stream states -------------------------------------------------------------------------
    def _end_local(self, s: StreamRecord) -> None:
        if s.state is StreamState.OPEN:
            s.state = StreamState.HALF_CLOSED_LOCAL
        elif s.state is StreamState.HALF_CLOSED_REMOTE:
            s.state = StreamState.CLOSED
            s.closed_by = Closed.ENDED

    def _end_remote(self, s: StreamRecord) -> None:
        if s.state is StreamState.OPEN:
            s.state = StreamState.HALF_CLOSED_REMOTE
        elif s.state is StreamState.HALF_CLOSED_LOCAL:
            s.state = StreamState.CLOSED
            s.closed_by = Closed.ENDED

    def remote_ended(self, sid: int) -> bool:
        s = self.streams.get(sid)
        return s is None or s.state in (StreamState.HALF_CLOSED_REMOTE, StreamState.CLOSED)
