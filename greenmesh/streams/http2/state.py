"""The codec's state vocabulary: connection and stream states (RFC 9113 section 5.1), how a
stream closed, the two kinds of error (section 5.4), the events a shell receives, and the
record the codec keeps per open stream."""

from __future__ import annotations

import enum
from typing import Protocol

from greenmesh.streams.http2.headers import Headers


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


class Closed(enum.Enum):
    """How a stream closed, for a frame that arrives on it afterwards."""

    RESET_SENT = "reset sent"  # late frames are ignored
    RESET_RECEIVED = "reset received"  # late frames are a stream error
    ENDED = "ended"  # both sides ended: late frames are a connection error


class ConnectionError_(Exception):
    """A connection error: GOAWAY with ``code`` is queued; the connection must close."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class StreamError_(Exception):
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


class Detached:
    """The events of a codec whose connection has ended: nobody listens any more."""

    def on_headers(self, sid: int, headers: Headers, end_stream: bool) -> None:
        pass

    def on_trailers(self, sid: int, headers: Headers) -> None:
        pass

    def on_data(self, sid: int, data: bytes, end_stream: bool) -> None:
        pass

    def on_reset(self, sid: int, code: int, remote: bool) -> None:
        pass

    def on_window(self, sid: int) -> None:
        pass

    def on_settings(self) -> None:
        pass

    def on_goaway(self, last_stream_id: int, code: int) -> None:
        pass

    def on_refused(self, sid: int, code: int, reason: str) -> None:
        pass


class StreamRecord:
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
        self.closed_by: Closed | None = None


