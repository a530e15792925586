"""The in-process stream: a request made by a Python call (``mesh.http``, ``mesh.bolt``), served
by the same proxy as a listener's streams, with no socket and no codec in between.

A call that wants its whole response runs the proxy in the caller's own greenlet (no greenlet
spawned, no switch: the response is all there when the proxy returns). A streamed response is
served in a greenlet of its own, as a listener's connection would; the caller's greenlet waits
for the head, then takes the body as the proxy hands it over, and what was handed over and not
yet taken is bounded (the proxy's ``send_data`` waits past ``buffer_limit``), so a large
response streams through in bounded memory. A request body is pulled from the caller's iterable
only as fast as the upstream takes it.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Iterable, Iterator

from gevent.event import Event

from greenmesh.failures import LocalReply, ResponseFlag
from greenmesh.streams.base import (
    WOULD_BLOCK,
    Chunk,
    DownstreamError,
    Headers,
    RequestHead,
    ResponseHead,
    ServerStream,
    Tunnel,
)


class CallState(enum.Enum):
    """An in-process call's lifecycle, as its caller sees it: only ever moves down the list
    (to COMPLETE or to FAILED)."""

    WAITING = "waiting"  # no response head yet
    STREAMING = "streaming"  # the head came; body chunks follow
    COMPLETE = "complete"  # the whole response was handed over
    FAILED = "failed"  # ended without a (whole) response: ``flags`` and ``details`` say why


class InProcessStream(ServerStream):
    """One call: the request the caller made, the response as the proxy produces it."""

    __slots__ = ("request", "request_complete", "trailers", "state", "head", "local",
                 "response_trailers", "flags", "details", "body_error", "ended",
                 "_first", "_body", "_chunks", "_buffered", "_limit", "_idle", "_changed",
                 "_taken", "_on_reset", "_cancelled")

    def __init__(self, request: RequestHead, body: bytes | Iterable[bytes] | None,
                 buffer_limit: int = 1 << 20, idle_timeout: float | None = 300.0):
        """``body``: bytes, an iterable of bytes (sent as it yields), or None.
        ``buffer_limit``: 0 when the proxy runs in the caller's greenlet (nobody else could
        take what it hands over, and the caller wants all of it).
        ``idle_timeout``: how long the proxy waits for a caller that takes nothing of a
        streamed response before it gives up on it (Envoy's stream idle timeout)."""
        self.request = request
        self.trailers: Headers | None = None
        self._first: bytes | None = None
        self._body: Iterator[bytes] | None = None
        if isinstance(body, (bytes, bytearray, memoryview)):
            self._first = bytes(body) or None
        elif body is not None:
            self._body = iter(body)
        self.request_complete = self._first is None and self._body is None
        self.state = CallState.WAITING
        self.head: ResponseHead | None = None
        #: greenmesh's own answer, when it gave one (its flags say why, if it failed).
        self.local: LocalReply | None = None
        self.response_trailers: Headers | None = None
        #: Why the call ended as it did: the access log's response flags and details.
        self.flags: list[ResponseFlag] = []
        self.details = ""
        #: What the caller's own request-body iterable raised (given back to the caller).
        self.body_error: BaseException | None = None
        self.ended = False  # the proxy is done with the stream
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._limit = buffer_limit
        self._idle = idle_timeout
        self._changed = Event()  # for the caller: a head, a chunk, the end
        self._taken = Event()  # for the proxy: the caller took chunks (room again)
        self._on_reset: Callable[[], None] | None = None
        self._cancelled = False

    # The proxy's side (ServerStream).

    def read_body(self, block: bool = True) -> Chunk:
        first = self._first
        if first is not None:
            self._first = None
            if self._body is None:
                self.request_complete = True
            return first
        body = self._body
        if body is None:
            return None
        if self._cancelled:
            raise DownstreamError("the caller gave up")
        if not block:  # the iterable may block (a file, a socket): only the pump pulls it
            return WOULD_BLOCK
        while True:
            try:
                chunk = next(body)
            except StopIteration:
                self._body = None
                return None
            except Exception as e:  # the caller's own code: handed back to the caller
                self._body = None
                self.body_error = e
                raise DownstreamError(f"the request body's iterable raised {e!r}") from None
            if chunk:
                return bytes(chunk) if not isinstance(chunk, bytes) else chunk

    def send_informational(self, head: ResponseHead) -> None:
        pass  # 1xx heads are the proxy's business; the caller gets the final one

    def send_headers(self, head: ResponseHead, end_stream: bool) -> None:
        self.head = head
        self.state = CallState.COMPLETE if end_stream else CallState.STREAMING
        self._changed.set()

    def send_data(self, data: bytes, end_stream: bool) -> None:
        if self._cancelled:
            return  # nobody will take it
        if data:
            self._chunks.append(data)
            self._buffered += len(data)
        if end_stream:
            self.state = CallState.COMPLETE
        self._changed.set()
        while self._limit and self._buffered > self._limit and not self._cancelled:
            self._taken.clear()
            # The caller reads slower than the upstream sends; one that reads nothing at all
            # (a streamed response forgotten) must not hold the upstream stream for ever.
            if not self._taken.wait(self._idle):
                self.cancel()
                raise DownstreamError("the caller took nothing of the response for "
                                      f"{self._idle} s")

    def send_trailers(self, trailers: Headers) -> None:
        self.response_trailers = trailers
        self.state = CallState.COMPLETE
        self._changed.set()

    def send_local_reply(self, reply: LocalReply) -> int:
        self.local = reply
        self.head = ResponseHead(reply.status, list(reply.headers))
        if reply.body:
            self._chunks.append(reply.body)
        self.state = CallState.COMPLETE
        self._changed.set()
        return len(reply.body)

    def flush(self) -> None:
        pass

    def reset(self, reason: str) -> None:
        if self.state is not CallState.COMPLETE:
            self.state = CallState.FAILED
            self.details = self.details or reason
        self._changed.set()

    def drain_connection(self) -> None:
        pass

    @property
    def response_started(self) -> bool:
        return self.head is not None or self.state is CallState.FAILED

    def upgrade(self) -> Tunnel:
        raise DownstreamError("in-process calls cannot switch protocols")

    def on_reset(self, callback: Callable[[], None]) -> None:
        if self._cancelled:
            callback()
        else:
            self._on_reset = callback

    def finished(self, flags: list[ResponseFlag], details: str) -> None:
        self.flags = flags
        self.details = details or self.details
        self.end()

    # The caller's side.

    def end(self) -> None:
        """The proxy is done with the stream (also when its greenlet was killed)."""
        if not self.ended:
            self.ended = True
            if self.state is CallState.WAITING or self.state is CallState.STREAMING:
                self.state = CallState.FAILED
            self._changed.set()

    def wait_head(self) -> None:
        """Until the response head came, or the proxy ended the stream without one (or, for
        greenmesh's own answers, until the proxy is done: their flags come last)."""
        while not self.ended and (self.head is None or self.local is not None):
            self._changed.clear()
            self._changed.wait()

    def wait_end(self) -> None:
        while not self.ended:
            self._changed.clear()
            self._changed.wait()

    def next_chunk(self) -> bytes | None:
        """The next piece of the response body; None at its end. Raises nothing: after None,
        ``state`` says whether the body was whole."""
        while True:
            chunks = self._chunks
            if chunks:
                chunk = chunks.popleft()
                self._buffered -= len(chunk)
                self._taken.set()
                return chunk
            if self.state is not CallState.STREAMING:
                return None
            self._changed.clear()
            self._changed.wait()

    def cancel(self) -> None:
        """The caller gave up (an exception, a timeout of its own, a streamed response closed
        before its end): the proxy resets the upstream stream, as for a client that left."""
        if self._cancelled:
            return
        self._cancelled = True
        self._chunks.clear()
        self._buffered = 0
        self._taken.set()
        callback, self._on_reset = self._on_reset, None
        if callback is not None:
            callback()
