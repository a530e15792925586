"""The codec's inbound half: one handler per frame type, each checking what RFC 9113 asks of
that frame in the stream's state, then updating the state and calling the shell's events.
A mixin of ``H2Codec`` (``codec.py``), which holds the state these handlers read and write."""

from __future__ import annotations

from abc import abstractmethod

from greenmesh.streams.http2.frames import (
    ACK,
    DEFAULT_FRAME_SIZE,
    END_HEADERS,
    END_STREAM,
    GOAWAY_BODY,
    MAX_FRAME_SIZE,
    MAX_STREAM_ID,
    MAX_WINDOW,
    PADDED,
    PING,
    PRIORITY_FLAG,
    SETTING,
    SETTINGS,
    U32,
    ErrorCode,
    Setting,
)
from greenmesh.streams.http2.headers import (
    REQUEST_PSEUDO,
    RESPONSE_PSEUDO,
    CompressionError,
    HeaderCodec,
    Headers,
    Malformed,
    request_fields,
    response_fields,
)
from greenmesh.streams.http2.state import (
    Closed,
    ConnectionError_,
    ConnState,
    Events,
    StreamError_,
    StreamRecord,
    StreamState,
)


class FrameHandlers:
    # What the handlers use of the codec (set by H2Codec).
    state: ConnState
    events: Events
    client: bool
    streams: dict[int, StreamRecord]
    headers: HeaderCodec
    recv_window: int
    send_window: int
    stream_window: int
    max_concurrent_streams: int
    peer_initial_window: int
    peer_max_concurrent: int
    peer_max_frame: int
    highest_peer_id: int
    goaway_sent: int | None
    goaway_received: int | None
    _continuation: tuple[int, int, list[bytes]] | None
    _block_cap: int

    # ... and the codec's methods they call (declared as methods, not attributes: in the
    # compiled build an attribute would be a slot of its own that the codec's method never fills).
    @abstractmethod
    def _frame(self, kind: int, flags: int, sid: int, payload: bytes | memoryview = b"") -> None:
        ...

    @abstractmethod
    def consumed(self, sid: int, n: int) -> None: ...

    @abstractmethod
    def peer_initiated(self, sid: int) -> bool: ...

    @abstractmethod
    def _idle(self, sid: int) -> bool: ...

    @abstractmethod
    def _closed_stream(self, sid: int, kind: str) -> None: ...

    @abstractmethod
    def _late_frame(self, s: StreamRecord, kind: str) -> None: ...

    @abstractmethod
    def _end_remote(self, s: StreamRecord) -> None: ...

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
            raise StreamError_(ErrorCode.FLOW_CONTROL_ERROR, "stream window exceeded")
        s.received += body
        end_stream = bool(flags & END_STREAM)
        if s.expected >= 0 and (s.received > s.expected or
                                (end_stream and s.received != s.expected)):
            self.consumed(0, body)
            raise StreamError_(ErrorCode.PROTOCOL_ERROR, "body length differs from "
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
            self_dependent = U32.unpack_from(data, start)[0] & MAX_STREAM_ID == sid
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
            raise StreamError_(ErrorCode.PROTOCOL_ERROR, "stream depends on itself")
        if s.state not in (StreamState.OPEN, StreamState.HALF_CLOSED_LOCAL):
            self._late_frame(s, "HEADERS")
            return
        if self.client and not s.final:
            self._response_head(s, headers, end_stream)
            return
        # Trailers: they end the message.
        if not end_stream:
            raise StreamError_(ErrorCode.PROTOCOL_ERROR, "a second HEADERS without END_STREAM")
        try:
            self.headers.check_fields(headers, frozenset(), trailers=True)
        except Malformed as bad:
            raise StreamError_(ErrorCode.PROTOCOL_ERROR, str(bad)) from None
        if s.expected >= 0 and s.received != s.expected:
            raise StreamError_(ErrorCode.PROTOCOL_ERROR, "body length differs from "
                                                         "content-length")
        self._end_remote(s)
        self.events.on_trailers(sid, headers)

    def _new_request(self, sid: int, headers: Headers, end_stream: bool,
                     self_dependent: bool) -> None:
        self.highest_peer_id = sid
        if self_dependent:
            raise StreamError_(ErrorCode.PROTOCOL_ERROR, "stream depends on itself")
        if self.goaway_sent is not None and sid > self.goaway_sent:
            raise StreamError_(ErrorCode.REFUSED_STREAM, "going away")
        if len(self.streams) >= self.max_concurrent_streams:
            raise StreamError_(ErrorCode.REFUSED_STREAM, "too many concurrent streams")
        try:
            self.headers.check_fields(headers, REQUEST_PSEUDO)
            _, length = request_fields(headers)
        except Malformed as e:
            raise StreamError_(ErrorCode.PROTOCOL_ERROR, str(e)) from None
        if end_stream and length > 0:
            raise StreamError_(ErrorCode.PROTOCOL_ERROR, "content-length with no body")
        s = StreamRecord(sid, self.peer_initial_window, self.stream_window)
        s.state = StreamState.HALF_CLOSED_REMOTE if end_stream else StreamState.OPEN
        s.expected = length
        self.streams[sid] = s
        self.events.on_headers(sid, headers, end_stream)

    def _response_head(self, s: StreamRecord, headers: Headers, end_stream: bool) -> None:
        try:
            self.headers.check_fields(headers, RESPONSE_PSEUDO)
            status, length = response_fields(headers)
        except Malformed as e:
            raise StreamError_(ErrorCode.PROTOCOL_ERROR, str(e)) from None
        if status < 200:
            if end_stream:
                raise StreamError_(ErrorCode.PROTOCOL_ERROR, "an informational response "
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
            raise StreamError_(ErrorCode.FRAME_SIZE_ERROR, "PRIORITY of the wrong length")
        if U32.unpack_from(data, start)[0] & MAX_STREAM_ID == sid:
            raise StreamError_(ErrorCode.PROTOCOL_ERROR, "stream depends on itself")
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
        s.closed_by = Closed.RESET_RECEIVED
        self.events.on_reset(sid, U32.unpack_from(data, start)[0], True)

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
            key, value = SETTING.unpack_from(data, i)
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
        last, code = GOAWAY_BODY.unpack_from(data, start)
        last &= MAX_STREAM_ID
        self.goaway_received = last if self.goaway_received is None else \
            min(self.goaway_received, last)
        self.events.on_goaway(last, code)

    def _on_window_update(self, flags: int, sid: int, data: bytes, start: int, end: int) -> None:
        if end - start != 4:
            raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "WINDOW_UPDATE of the wrong length")
        increment = U32.unpack_from(data, start)[0] & MAX_WINDOW
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
            raise StreamError_(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
        if s.state is StreamState.CLOSED:
            return
        s.send_window += increment
        if s.send_window > MAX_WINDOW:
            raise StreamError_(ErrorCode.FLOW_CONTROL_ERROR, "stream window over 2^31-1")
        self.events.on_window(sid)

