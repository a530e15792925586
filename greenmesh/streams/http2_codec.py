"""HTTP/2 (RFC 9113), sans-IO: bytes in -> events out; calls -> bytes queued out.

greenmesh's own codec rather than h2: h2 alone cost more per proxied request than all of MOSN
(the HTTP/2 issue's measurements), in per-frame objects, per-event objects and state machines built
for generality. Here a frame is a 9-byte header unpacked with one ``struct`` call and a handler
picked from a tuple by type; events are calls on the shell's ``Events`` object (no event objects);
output accumulates in one buffer the shell flushes once per wake-up; window updates are batched.
Header blocks go through ``http2_headers`` (hpack, with caches, and field validation).

States are explicit: the connection's (``ConnState``) and each stream's (``StreamState``, RFC 9113
section 5.1). Errors follow section 5.4: a connection error queues one GOAWAY with its code and
raises ``ConnectionError_``; a stream error resets that stream only, and every other stream goes
on. Memory is bounded by open streams: a stream the shell has released is forgotten except for a
small record of recently closed ids, which says how to answer a late frame.
"""

from __future__ import annotations

import enum
import struct
from collections import OrderedDict
from typing import Protocol

from greenmesh.streams.http2_headers import (
    REQUEST_PSEUDO,
    RESPONSE_PSEUDO,
    CompressionError,
    HeaderCodec,
    Headers,
    Malformed,
    request_fields,
    response_fields,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_FRAME = struct.Struct(">BHBBL")  # length (24 bits: a byte and a short), type, flags, stream id
_U32 = struct.Struct(">L")
_GOAWAY = struct.Struct(">LL")
_SETTING = struct.Struct(">HL")

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

DEFAULT_WINDOW = 65535
MAX_WINDOW = 2**31 - 1
DEFAULT_FRAME_SIZE = 16384
MAX_FRAME_SIZE = 2**24 - 1
MAX_STREAM_ID = 2**31 - 1
RECENTLY_CLOSED = 1024  # ids remembered after release, to answer late frames precisely


class ErrorCode(enum.IntEnum):
    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB
    INADEQUATE_SECURITY = 0xC
    HTTP_1_1_REQUIRED = 0xD


def error_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"0x{code:x}"


class Setting(enum.IntEnum):
    HEADER_TABLE_SIZE = 0x1
    ENABLE_PUSH = 0x2
    MAX_CONCURRENT_STREAMS = 0x3
    INITIAL_WINDOW_SIZE = 0x4
    MAX_FRAME_SIZE = 0x5
    MAX_HEADER_LIST_SIZE = 0x6


class ConnState(enum.Enum):
    PREFACE = "preface"  # a server waits for the client's connection preface
    SETTINGS = "settings"  # the peer's first frame must be SETTINGS
    OPEN = "open"
    CLOSED = "closed"  # a connection error: nothing more is read


class StreamState(enum.Enum):
    """RFC 9113 section 5.1 (no push: no reserved states)."""

    IDLE = "idle"
    OPEN = "open"
    HALF_CLOSED_LOCAL = "half-closed (local)"  # we sent END_STREAM
    HALF_CLOSED_REMOTE = "half-closed (remote)"  # the peer sent END_STREAM
    CLOSED = "closed"


class _Closed(enum.Enum):
    """How a stream closed, for a frame that arrives on it afterwards."""

    RESET_SENT = "reset sent"  # late frames are ignored
    RESET_RECEIVED = "reset received"  # late frames are a stream error
    ENDED = "ended"  # both sides ended: late frames are a connection error


class ConnectionError_(Exception):
    """A connection error: GOAWAY with ``code`` is queued; the connection must close."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class _StreamError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class Events(Protocol):
    """What a codec tells its shell, as calls (one per event, no event objects)."""

    def on_headers(self, sid: int, headers: Headers, end_stream: bool) -> None:
        """A request (server) or a response head, 1xx included (client), checked."""

    def on_trailers(self, sid: int, headers: Headers) -> None: ...

    def on_data(self, sid: int, data: bytes, end_stream: bool) -> None:
        """Body bytes; the shell calls ``consumed(sid, len(data))`` as it takes them."""

    def on_reset(self, sid: int, code: int, remote: bool) -> None:
        """The stream ended early: the peer reset it, or it broke the protocol (then the codec
        has sent RST_STREAM itself)."""

    def on_window(self, sid: int) -> None:
        """More may be sent on a stream (0: on every stream)."""

    def on_settings(self) -> None:
        """The peer's settings changed (stream limit, initial window)."""

    def on_goaway(self, last_stream_id: int, code: int) -> None: ...

    def on_refused(self, sid: int, code: int, reason: str) -> None:
        """A stream the shell never saw was reset (malformed, over the limit, draining)."""


class _Stream:
    __slots__ = ("id", "state", "send_window", "recv_window", "unacked", "expected",
                 "received", "final", "head", "closed_by")

    def __init__(self, sid: int, send_window: int, recv_window: int):
        self.id = sid
        self.state = StreamState.IDLE
        self.send_window = send_window
        self.recv_window = recv_window
        self.unacked = 0  # bytes delivered and consumed, not yet given back by WINDOW_UPDATE
        self.expected = -1  # content-length of the peer's message, -1: none
        self.received = 0
        self.final = False  # client: the final (non-1xx) response head came
        self.head = False  # client: the request was HEAD (its response has no body)
        self.closed_by: _Closed | None = None


class H2Codec:
    """One end of one HTTP/2 connection."""

    def __init__(self, events: Events, client: bool, *, max_concurrent_streams: int = 100,
                 stream_window: int = 1 << 20, connection_window: int = 16 << 20,
                 max_header_list_size: int | None = None, max_header_block: int = 64 << 10):
        self.events = events
        self.client = client
        self.state = ConnState.SETTINGS if client else ConnState.PREFACE
        self.streams: dict[int, _Stream] = {}
        self._recently_closed: OrderedDict[int, _Closed] = OrderedDict()
        self.out = bytearray()
        self._rest = b""
        # Ours, as advertised.
        self.max_concurrent_streams = max_concurrent_streams
        self.stream_window = stream_window
        self.connection_window = connection_window
        self.max_header_list_size = max_header_list_size
        self.max_inbound_frame = DEFAULT_FRAME_SIZE
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
        self._handlers = (self._on_data, self._on_headers, self._on_priority,
                          self._on_rst_stream, self._on_settings, self._on_push_promise,
                          self._on_ping, self._on_goaway, self._on_window_update,
                          self._on_continuation)

    # -- output ------------------------------------------------------------------------------
    def _frame(self, kind: int, flags: int, sid: int, payload: bytes | memoryview = b"") -> None:
        n = len(payload)
        self.out += _FRAME.pack(n >> 16, n & 0xFFFF, kind, flags, sid)
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
        self._frame(SETTINGS, 0, 0, b"".join(_SETTING.pack(k, v) for k, v in settings))
        if self.connection_window > DEFAULT_WINDOW:
            self._frame(WINDOW_UPDATE, 0, 0, _U32.pack(self.connection_window - DEFAULT_WINDOW))
            self.recv_window = self.connection_window

    def open_stream(self) -> int:
        """A new stream id (client)."""
        sid = self._next_id
        if sid > MAX_STREAM_ID:
            raise ConnectionError_(ErrorCode.NO_ERROR, "stream ids exhausted")
        self._next_id += 2
        self.streams[sid] = _Stream(sid, self.peer_initial_window, self.stream_window)
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
        self._frame(RST_STREAM, 0, sid, _U32.pack(code))
        s.state = StreamState.CLOSED
        s.closed_by = _Closed.RESET_SENT

    def consumed(self, sid: int, n: int) -> None:
        """The shell took ``n`` body bytes: give the peer its window back, in batches."""
        self._conn_unacked += n
        if self._conn_unacked >= self.connection_window // 2:
            self._frame(WINDOW_UPDATE, 0, 0, _U32.pack(self._conn_unacked))
            self.recv_window += self._conn_unacked
            self._conn_unacked = 0
        s = self.streams.get(sid)
        if s is not None and s.state in (StreamState.OPEN, StreamState.HALF_CLOSED_LOCAL):
            s.unacked += n
            if s.unacked >= self.stream_window // 2:
                self._frame(WINDOW_UPDATE, 0, sid, _U32.pack(s.unacked))
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
            self._frame(RST_STREAM, 0, sid, _U32.pack(ErrorCode.NO_ERROR))
            s.closed_by = _Closed.RESET_SENT
        elif s.state is not StreamState.CLOSED:
            if s.state is not StreamState.IDLE:
                self._frame(RST_STREAM, 0, sid, _U32.pack(ErrorCode.CANCEL))
            s.closed_by = _Closed.RESET_SENT
        self._remember(sid, s.closed_by or _Closed.ENDED)
        if unread:
            self.consumed(0, unread)

    def goaway(self, code: int = ErrorCode.NO_ERROR, debug: bytes = b"",
               last_stream_id: int | None = None) -> None:
        """No new streams from the peer beyond ``last_stream_id`` (default: the last one it
        opened); those up to it are served."""
        last = self.highest_peer_id if last_stream_id is None else last_stream_id
        self.goaway_sent = last if self.goaway_sent is None else min(self.goaway_sent, last)
        self._frame(GOAWAY, 0, 0, _GOAWAY.pack(last, code) + debug[:100])

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
                hi, lo, kind, flags, sid = _FRAME.unpack_from(data, i)
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
                    except _StreamError as e:
                        self._stream_error(sid, e.code, str(e))
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

    def _remember(self, sid: int, how: _Closed) -> None:
        closed = self._recently_closed
        closed[sid] = how
        if len(closed) > RECENTLY_CLOSED:
            closed.popitem(last=False)

    def _stream_error(self, sid: int, code: int, reason: str) -> None:
        """Resets the stream; the connection and its other streams go on."""
        s = self.streams.get(sid)
        self._frame(RST_STREAM, 0, sid, _U32.pack(code))
        if s is None:
            self._remember(sid, _Closed.RESET_SENT)
            self.events.on_refused(sid, code, reason)
            return
        was_closed = s.state is StreamState.CLOSED
        s.state = StreamState.CLOSED
        s.closed_by = _Closed.RESET_SENT
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
        if how is _Closed.RESET_SENT:
            return  # frames the peer sent before it saw our reset: ignored
        if how is _Closed.RESET_RECEIVED:
            raise _StreamError(ErrorCode.STREAM_CLOSED, f"{kind} after RST_STREAM")
        if how is _Closed.ENDED or kind == "DATA":
            raise ConnectionError_(ErrorCode.STREAM_CLOSED, f"{kind} on a closed stream")
        raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, f"{kind} on a stream never opened")

    def _late_frame(self, s: _Stream, kind: str) -> None:
        """DATA or HEADERS on a stream the peer has ended or that was reset (section 5.1)."""
        if s.closed_by is _Closed.RESET_SENT:
            return  # sent before the peer saw our reset: ignored
        if s.closed_by is _Closed.ENDED:
            raise ConnectionError_(ErrorCode.STREAM_CLOSED, f"{kind} on a closed stream")
        raise _StreamError(ErrorCode.STREAM_CLOSED, f"{kind} after the end of the stream")

    def _padded(self, flags: int, data: bytes, start: int, end: int) -> tuple[int, int]:
        if flags & PADDED:
            if start >= end:
                raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "no pad length")
            pad = data[start]
            start += 1
            if pad > end - start:
                raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "padding longer than the frame")
            end -= pad
        return start, end

    def _on_data(self, flags: int, sid: int, data: bytes, start: int, end: int) -> None:
        if sid == 0:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "DATA on stream 0")
        length = end - start
        self.recv_window -= length
        if self.recv_window < 0:
            raise ConnectionError_(ErrorCode.FLOW_CONTROL_ERROR, "connection window exceeded")
        start, end = self._padded(flags, data, start, end)
        body = end - start
        if length > body:  # padding is flow-controlled but never delivered
            self.consumed(0, length - body)
        s = self.streams.get(sid)
        if s is None:
            self.consumed(0, body)  # nobody will read it: the connection window back at once
            if self._idle(sid):
                raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "DATA on an idle stream")
            self._closed_stream(sid, "DATA")
            return
        if s.state not in (StreamState.OPEN, StreamState.HALF_CLOSED_LOCAL):
            self.consumed(0, body)
            self._late_frame(s, "DATA")
            return
        s.recv_window -= length
        if s.recv_window < 0:
            self.consumed(0, body)
            raise _StreamError(ErrorCode.FLOW_CONTROL_ERROR, "stream window exceeded")
        s.received += body
        end_stream = bool(flags & END_STREAM)
        if s.expected >= 0 and (s.received > s.expected or
                                (end_stream and s.received != s.expected)):
            self.consumed(0, body)
            raise _StreamError(ErrorCode.PROTOCOL_ERROR, "body length differs from "
                                                         "content-length")
        if end_stream:
            self._end_remote(s)
        if body or end_stream:
            self.events.on_data(sid, data[start:end], end_stream)

    def _on_headers(self, flags: int, sid: int, data: bytes, start: int, end: int) -> None:
        if sid == 0:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "HEADERS on stream 0")
        start, end = self._padded(flags, data, start, end)
        self_dependent = False
        if flags & PRIORITY_FLAG:
            if end - start < 5:
                raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "HEADERS priority too short")
            self_dependent = _U32.unpack_from(data, start)[0] & MAX_STREAM_ID == sid
            start += 5
        if flags & END_HEADERS:
            self._header_block(sid, flags, data[start:end], self_dependent)
        else:
            self._continuation = (sid, flags | (PRIORITY_FLAG if self_dependent else 0),
                                  [data[start:end]])

    def _on_continuation(self, flags: int, sid: int, data: bytes, start: int, end: int) -> None:
        cont = self._continuation
        if cont is None or cont[0] != sid:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "CONTINUATION out of place")
        fragments = cont[2]
        fragments.append(data[start:end])
        if sum(len(f) for f in fragments) > self._block_cap:  # a CONTINUATION flood
            raise ConnectionError_(ErrorCode.ENHANCE_YOUR_CALM, "header block too large")
        if flags & END_HEADERS:
            self._continuation = None
            self._header_block(sid, cont[1], b"".join(fragments), bool(cont[1] & PRIORITY_FLAG))

    def _header_block(self, sid: int, flags: int, block: bytes, self_dependent: bool) -> None:
        """A whole header block: always decoded (HPACK state is the connection's), then
        judged by the stream's state."""
        try:
            headers = self.headers.decode(block)
        except CompressionError as e:
            raise ConnectionError_(ErrorCode.ENHANCE_YOUR_CALM if e.too_big
                                   else ErrorCode.COMPRESSION_ERROR, str(e)) from None
        end_stream = bool(flags & END_STREAM)
        s = self.streams.get(sid)
        if s is None:
            if self.peer_initiated(sid) and self._idle(sid) and not self.client:
                self._new_request(sid, headers, end_stream, self_dependent)
                return
            if self._idle(sid):
                raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "HEADERS on an idle stream")
            self._closed_stream(sid, "HEADERS")
            return
        if self_dependent:
            raise _StreamError(ErrorCode.PROTOCOL_ERROR, "stream depends on itself")
        if s.state not in (StreamState.OPEN, StreamState.HALF_CLOSED_LOCAL):
            self._late_frame(s, "HEADERS")
            return
        if self.client and not s.final:
            self._response_head(s, headers, end_stream)
            return
        # Trailers: they end the message.
        if not end_stream:
            raise _StreamError(ErrorCode.PROTOCOL_ERROR, "a second HEADERS without END_STREAM")
        try:
            self.headers.check_fields(headers, frozenset(), trailers=True)
        except Malformed as e:
            raise _StreamError(ErrorCode.PROTOCOL_ERROR, str(e)) from None
        if s.expected >= 0 and s.received != s.expected:
            raise _StreamError(ErrorCode.PROTOCOL_ERROR, "body length differs from "
                                                         "content-length")
        self._end_remote(s)
        self.events.on_trailers(sid, headers)

    def _new_request(self, sid: int, headers: Headers, end_stream: bool,
                     self_dependent: bool) -> None:
        self.highest_peer_id = sid
        if self_dependent:
            raise _StreamError(ErrorCode.PROTOCOL_ERROR, "stream depends on itself")
        if self.goaway_sent is not None and sid > self.goaway_sent:
            raise _StreamError(ErrorCode.REFUSED_STREAM, "going away")
        if len(self.streams) >= self.max_concurrent_streams:
            raise _StreamError(ErrorCode.REFUSED_STREAM, "too many concurrent streams")
        try:
            self.headers.check_fields(headers, REQUEST_PSEUDO)
            _, length = request_fields(headers)
        except Malformed as e:
            raise _StreamError(ErrorCode.PROTOCOL_ERROR, str(e)) from None
        if end_stream and length > 0:
            raise _StreamError(ErrorCode.PROTOCOL_ERROR, "content-length with no body")
        s = _Stream(sid, self.peer_initial_window, self.stream_window)
        s.state = StreamState.HALF_CLOSED_REMOTE if end_stream else StreamState.OPEN
        s.expected = length
        self.streams[sid] = s
        self.events.on_headers(sid, headers, end_stream)

    def _response_head(self, s: _Stream, headers: Headers, end_stream: bool) -> None:
        try:
            self.headers.check_fields(headers, RESPONSE_PSEUDO)
            status, length = response_fields(headers)
        except Malformed as e:
            raise _StreamError(ErrorCode.PROTOCOL_ERROR, str(e)) from None
        if status < 200:
            if end_stream:
                raise _StreamError(ErrorCode.PROTOCOL_ERROR, "an informational response "
                                                             "ends the stream")
        else:
            s.final = True
            if not s.head and status not in (204, 304):
                s.expected = length
            if end_stream:
                self._end_remote(s)
        self.events.on_headers(s.id, headers, end_stream)

    def _on_priority(self, flags: int, sid: int, data: bytes, start: int, end: int) -> None:
        if sid == 0:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "PRIORITY on stream 0")
        if end - start != 5:
            raise _StreamError(ErrorCode.FRAME_SIZE_ERROR, "PRIORITY of the wrong length")
        if _U32.unpack_from(data, start)[0] & MAX_STREAM_ID == sid:
            raise _StreamError(ErrorCode.PROTOCOL_ERROR, "stream depends on itself")
        # Parsed and ignored: greenmesh does not prioritise.

    def _on_rst_stream(self, flags: int, sid: int, data: bytes, start: int, end: int) -> None:
        if sid == 0:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if end - start != 4:
            raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "RST_STREAM of the wrong length")
        s = self.streams.get(sid)
        if s is None:
            if self._idle(sid):
                raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on an idle stream")
            return
        if s.state is StreamState.CLOSED:
            return
        s.state = StreamState.CLOSED
        s.closed_by = _Closed.RESET_RECEIVED
        self.events.on_reset(sid, _U32.unpack_from(data, start)[0], True)

    def _on_settings(self, flags: int, sid: int, data: bytes, start: int, end: int) -> None:
        if sid != 0:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if end != start:
                raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if (end - start) % 6:
            raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS of the wrong length")
        window_delta = 0
        for i in range(start, end, 6):
            key, value = _SETTING.unpack_from(data, i)
            if key == Setting.HEADER_TABLE_SIZE:
                self.headers.set_peer_table_size(value)
            elif key == Setting.ENABLE_PUSH:
                if value > 1:
                    raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "ENABLE_PUSH not 0 or 1")
            elif key == Setting.MAX_CONCURRENT_STREAMS:
                self.peer_max_concurrent = value
            elif key == Setting.INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ConnectionError_(ErrorCode.FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE "
                                                                         "too large")
                window_delta += value - self.peer_initial_window
                self.peer_initial_window = value
            elif key == Setting.MAX_FRAME_SIZE:
                if not DEFAULT_FRAME_SIZE <= value <= MAX_FRAME_SIZE:
                    raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "MAX_FRAME_SIZE out of range")
                self.peer_max_frame = value
            # Others (MAX_HEADER_LIST_SIZE, unknown ones) are advisory or ignored.
        if window_delta:
            for s in self.streams.values():
                s.send_window += window_delta
                if s.send_window > MAX_WINDOW:
                    raise ConnectionError_(ErrorCode.FLOW_CONTROL_ERROR, "a stream window "
                                                                         "over 2^31-1")
        self._frame(SETTINGS, ACK, 0)
        if self.state is ConnState.SETTINGS:
            self.state = ConnState.OPEN
        self.events.on_settings()

    def _on_push_promise(self, flags: int, sid: int, data: bytes, start: int, end: int) -> None:
        raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "PUSH_PROMISE (push is disabled)")

    def _on_ping(self, flags: int, sid: int, data: bytes, start: int, end: int) -> None:
        if sid != 0:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "PING on a stream")
        if end - start != 8:
            raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "PING of the wrong length")
        if not flags & ACK:
            self._frame(PING, ACK, 0, data[start:end])

    def _on_goaway(self, flags: int, sid: int, data: bytes, start: int, end: int) -> None:
        if sid != 0:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "GOAWAY on a stream")
        if end - start < 8:
            raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "GOAWAY too short")
        last, code = _GOAWAY.unpack_from(data, start)
        last &= MAX_STREAM_ID
        self.goaway_received = last if self.goaway_received is None else \
            min(self.goaway_received, last)
        self.events.on_goaway(last, code)

    def _on_window_update(self, flags: int, sid: int, data: bytes, start: int, end: int) -> None:
        if end - start != 4:
            raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "WINDOW_UPDATE of the wrong length")
        increment = _U32.unpack_from(data, start)[0] & MAX_WINDOW
        if sid == 0:
            if increment == 0:
                raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise ConnectionError_(ErrorCode.FLOW_CONTROL_ERROR, "connection window over "
                                                                     "2^31-1")
            self.events.on_window(0)
            return
        s = self.streams.get(sid)
        if s is None:
            if self._idle(sid):
                raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE on an idle "
                                                                 "stream")
            return  # a closed stream: allowed for a while, ignored
        if increment == 0:
            raise _StreamError(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
        if s.state is StreamState.CLOSED:
            return
        s.send_window += increment
        if s.send_window > MAX_WINDOW:
            raise _StreamError(ErrorCode.FLOW_CONTROL_ERROR, "stream window over 2^31-1")
        self.events.on_window(sid)

    # -- stream states -------------------------------------------------------------------------
    def _end_local(self, s: _Stream) -> None:
        if s.state is StreamState.OPEN:
            s.state = StreamState.HALF_CLOSED_LOCAL
        elif s.state is StreamState.HALF_CLOSED_REMOTE:
            s.state = StreamState.CLOSED
            s.closed_by = _Closed.ENDED

    def _end_remote(self, s: _Stream) -> None:
        if s.state is StreamState.OPEN:
            s.state = StreamState.HALF_CLOSED_REMOTE
        elif s.state is StreamState.HALF_CLOSED_LOCAL:
            s.state = StreamState.CLOSED
            s.closed_by = _Closed.ENDED

    def remote_ended(self, sid: int) -> bool:
        s = self.streams.get(sid)
        return s is None or s.state in (StreamState.HALF_CLOSED_REMOTE, StreamState.CLOSED)
