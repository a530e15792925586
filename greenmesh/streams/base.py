"""The contract in the middle: every protocol turns its bytes into these streams.

The proxy moves one stream's parts to another and never asks which protocol is on either side.
Headers are lists of ``(lowercase name, value)`` byte pairs: what h11 and h2 hand out, so no
per-request re-encoding. ``authority`` is kept out of the header list (HTTP/2's ``:authority``,
HTTP/1.1's ``Host``); each codec puts it where its wire format wants it.

The interfaces (streams, connections, tunnels) are traits (``mypy_extensions.trait``, nothing at
all in pure Python): in the optional compiled build a class may have one ordinary base only, and
traits are how a protocol's class also takes a shared mixin.
"""

from __future__ import annotations

import enum
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Union

from mypy_extensions import trait

from greenmesh.conn import Conn, ConnError, ConnTimeout
from greenmesh.failures import LocalReply, ResetReason, ResponseFlag

Headers = list[tuple[bytes, bytes]]


class _WouldBlock:
    __slots__ = ()

    def __repr__(self) -> str:
        return "WOULD_BLOCK"


WOULD_BLOCK: Final = _WouldBlock()
"""Returned by a non-blocking body read when nothing is buffered yet."""

Chunk = Union[bytes, None, _WouldBlock]  # noqa: UP007 - a runtime alias, not an annotation
"""A body read: bytes, ``None`` at the end of the body, or WOULD_BLOCK."""


class ConnectionState(enum.Enum):
    """A connection's lifecycle, on either side (h11's and Envoy's ActiveClient's, reduced to
    what a proxy needs): it only ever moves down this list."""

    OPEN = "open"  # takes new requests or streams
    DRAINING = "draining"  # finishes what it carries, then closes (GOAWAY; HTTP/1.1: must close)
    CLOSED = "closed"


class MessageState(enum.Enum):
    """One direction of one exchange (a request, or its response)."""

    HEAD = "head"  # the head has not passed yet
    BODY = "body"  # the head passed; body chunks (and perhaps trailers) follow
    DONE = "done"  # the whole message passed


class StreamError(Exception):
    """The stream cannot go on."""


class StreamReset(StreamError):
    """The peer reset the stream or the connection broke; ``reason`` says which (retry
    policies and the proxy's answer depend on it)."""

    def __init__(self, message: str,
                 reason: ResetReason = ResetReason.CONNECTION_TERMINATION):
        super().__init__(message)
        self.reason = reason


class StreamTimeout(StreamError):
    """The peer did not send in time."""


class DownstreamError(StreamError):
    """The downstream side failed (reset, timed out, sent garbage): nobody is left to answer.

    Server streams raise only this, so the proxy can tell a client that went away from an
    upstream that failed without asking which protocol either speaks. ``status`` is set when
    the client is still there and deserves an answer (a malformed body: 400).
    """

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


class DownstreamTimeout(DownstreamError):
    """The client sent nothing of its request body for the listener's stream idle timeout:
    answered 408 with SI, as Envoy's stream_idle_timeout."""

    def __init__(self, message: str):
        super().__init__(message, 408)


class FilterError(DownstreamError):
    """A stream filter failed (it raised) or ended the stream (``ResetStream``): the proxy
    answers ``status`` (500) with ``flag`` if it still can, else resets the stream. Defined here,
    beside its base, so that compiled and interpreted code share one class."""

    def __init__(self, message: str, status: int = 0, flag: ResponseFlag | None = None):
        super().__init__(message, status)
        self.flag = flag


class MessageHead:
    """What a request's and a response's head share: the header list, the decoded message
    itself for RPC frames (``native``: a codec of the same protocol forwards it as it came,
    only its request id rewritten, instead of re-encoding the parts) and, for messages that
    arrive whole, their size (``message_bytes``: the access log counts it as the body; HTTP
    bodies are counted as they stream).

    Header edits assign a new list: an RPC codec forwards a frame as it came unless its header
    map was replaced, so a list edited in place would go unseen."""

    __slots__ = ("headers", "native", "message_bytes")

    def __init__(self, headers: Headers, native: object, message_bytes: int):
        self.headers = headers
        self.native = native
        self.message_bytes = message_bytes

    def get(self, name: bytes, default: bytes | None = None) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return default

    def set(self, name: bytes, value: bytes) -> None:
        """Sets a header, replacing every value it had."""
        self.headers = [(k, v) for k, v in self.headers if k != name] + [(name, value)]

    def add(self, name: bytes, value: bytes) -> None:
        self.headers = [*self.headers, (name, value)]

    def remove(self, name: bytes) -> None:
        self.headers = [(k, v) for k, v in self.headers if k != name]


class RequestHead(MessageHead):
    """For RPC protocols: method = the RPC method, path = the service, authority = the target
    application, headers = the protocol's header map."""

    __slots__ = ("method", "path", "authority", "scheme", "upgrade", "peer", "timeout")

    def __init__(self, method: bytes, path: bytes, authority: bytes, scheme: bytes,
                 headers: Headers, upgrade: bytes = b"", native: object = None):
        super().__init__(headers, native, 0)
        self.method = method
        self.path = path
        self.authority = authority
        self.scheme = scheme
        # The protocol the client asks to switch to (HTTP/1.1 ``Upgrade``), or empty.
        self.upgrade = upgrade
        # The client's IP (for hashing on it), when the codec knows it.
        self.peer = b""
        # The route timeout this request asks for instead of its route's, in seconds (the
        # in-process client's ``timeout=``: a caller in the same process is trusted, as Envoy
        # trusts x-envoy-upstream-rq-timeout-ms from internal callers); None: the route's.
        self.timeout: float | None = None


class ResponseHead(MessageHead):
    """``status`` is HTTP's (RPC codecs map theirs onto it, for the proxy and the logs). Client
    streams hand out heads already cleaned of what belongs to their hop (HTTP's hop-by-hop
    headers), so the proxy forwards a head as it is unless a route edits it."""

    __slots__ = ("status", "reason")

    def __init__(self, status: int, headers: Headers, reason: bytes = b"",
                 native: object = None, message_bytes: int = 0):
        super().__init__(headers, native, message_bytes)
        self.status = status
        self.reason = reason

    def load_headers(self) -> None:
        """Decodes what a codec left undecoded (an RPC frame's header map: most responses are
        forwarded as they came), before the proxy or a filter reads or edits ``headers``."""


@trait
class Tunnel:
    """Raw bytes both ways once a stream has switched protocols (WebSocket after a 101)."""

    @abstractmethod
    def read(self, timeout: float | None) -> bytes: ...

    @abstractmethod
    def write(self, data: bytes) -> None: ...

    @abstractmethod
    def shutdown_write(self) -> None: ...


class ConnTunnel(Tunnel):
    """A tunnel straight over a connection (HTTP/1.1 after a 101)."""

    __slots__ = ("conn",)

    def __init__(self, conn: Conn):
        self.conn = conn

    def read(self, timeout: float | None) -> bytes:
        try:
            return self.conn.read(timeout)
        except ConnTimeout:
            raise StreamTimeout("tunnel idle") from None
        except ConnError as e:
            raise StreamReset(str(e)) from None

    def write(self, data: bytes) -> None:
        try:
            self.conn.write(data)
        except ConnError as e:
            raise StreamReset(str(e)) from None

    def shutdown_write(self) -> None:
        self.conn.shutdown_write()


@trait
class ServerStream:
    """One downstream request and its response."""

    request: RequestHead
    #: True when the request had no body (nothing to read).
    request_complete: bool
    #: Trailers of the request body, once read_body returned None.
    trailers: Headers | None = None

    @abstractmethod
    def read_body(self, block: bool = True) -> Chunk: ...

    @abstractmethod
    def send_informational(self, head: ResponseHead) -> None: ...

    @abstractmethod
    def send_headers(self, head: ResponseHead, end_stream: bool) -> None:
        """Buffers until the end or ``flush()``: a small response goes out in one write."""

    @abstractmethod
    def send_data(self, data: bytes, end_stream: bool) -> None:
        """Buffers like send_headers; the caller flushes before it would block."""

    @abstractmethod
    def send_trailers(self, trailers: Headers) -> None: ...

    @abstractmethod
    def send_local_reply(self, reply: LocalReply) -> int:
        """Answers with greenmesh's own reply, mapped once to the protocol's wire form (HTTP:
        status, headers and body; RPC: the status its flags map to); returns the body bytes
        sent."""

    @abstractmethod
    def flush(self) -> None: ...

    @abstractmethod
    def reset(self, reason: str) -> None:
        """Aborts the response (HTTP/1.1: closes the connection; HTTP/2: RST_STREAM)."""

    @abstractmethod
    def drain_connection(self) -> None:
        """Ends the connection after this exchange (HTTP/1.1: ``connection: close``; a
        multiplexed one drains, HTTP/2 with GOAWAY): keep-alive off under overload."""

    @property
    @abstractmethod
    def response_started(self) -> bool: ...

    @abstractmethod
    def upgrade(self) -> Tunnel: ...

    def on_reset(self, callback: Callable[[], None]) -> None:  # noqa: B027 - a no-op default
        """Calls ``callback`` (from another greenlet; it must not block) if the client resets
        the stream while the response is being produced. Protocols that cannot tell ignore it."""

    def finished(self, flags: list[ResponseFlag], details: str) -> None:  # noqa: B027
        """The proxy is done with the stream; why it ended as it did (the access log's response
        flags and details). The in-process stream hands them to its caller; a wire protocol
        has said all it can already."""


@trait
class ClientStream:
    """One upstream request, opened from a pool; ``finish()`` hands the connection back."""

    __slots__ = ("on_finish", "reused", "trailers", "_finished")

    def __init__(self, on_finish: Callable[[ClientConnection, bool], None], reused: bool):
        self.on_finish = on_finish
        #: True when the stream runs on a connection that carried earlier requests.
        self.reused = reused
        self.trailers: Headers | None = None
        self._finished = False

    @abstractmethod
    def send_headers(self, head: RequestHead, end_stream: bool) -> None:
        """Buffers until the end or ``flush()``, like the server side."""

    @abstractmethod
    def send_data(self, data: bytes, end_stream: bool) -> None: ...

    @abstractmethod
    def send_trailers(self, trailers: Headers) -> None: ...

    @abstractmethod
    def flush(self) -> None: ...

    @abstractmethod
    def read_headers(self, timeout: float | None) -> ResponseHead:
        """The next response head; 1xx heads come back too, before the final one."""

    @abstractmethod
    def read_body(self, timeout: float | None, block: bool = True) -> Chunk: ...

    @property
    @abstractmethod
    def response_started(self) -> bool:
        """Whether any response byte arrived (a request that saw none may be retried)."""

    @abstractmethod
    def reset(self, reason: str) -> None: ...

    def finish(self) -> None:
        """Hands the connection back to its pool, once, whatever happened before."""
        if self._finished:
            return
        self._finished = True
        self.on_finish(*self._release())

    @abstractmethod
    def _release(self) -> tuple[ClientConnection, bool]:
        """Ends this stream's use of its connection: the connection, and whether it may carry
        another request."""

    @abstractmethod
    def upgrade(self) -> Tunnel: ...


@trait
class ServerConnection:
    """A downstream connection as its listener sees it: served until it ends, drained on stop."""

    conn: Conn

    @abstractmethod
    def run(self) -> None:
        """Serves the connection's requests until it ends."""

    @abstractmethod
    def drain(self) -> None:
        """No new requests (HTTP/2: GOAWAY); the connection closes once those in flight finish."""

    @property
    @abstractmethod
    def idle(self) -> bool:
        """No request in progress."""


@trait
class ClientConnection:
    """An upstream connection as a pool sees it."""

    active_streams: int
    conn: Conn

    @property
    @abstractmethod
    def capacity(self) -> int:
        """How many streams may run on it at once (1 for HTTP/1.1)."""

    @abstractmethod
    def new_stream(self, on_finish: Callable[[ClientConnection, bool], None]) -> ClientStream:
        """``on_finish(connection, reusable)`` runs once the stream is done with the connection."""

    @property
    @abstractmethod
    def usable(self) -> bool:
        """False once closed or draining: no new streams."""

    def close(self, reason: str) -> None:
        self.conn.close(reason)


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """What a server stream connection needs to know about its listener and peer."""

    peer: tuple | None
    max_header_bytes: int = 60 * 1024
    idle_timeout: float | None = 300.0
    scheme: bytes = b"http"
    #: HTTP/1.0 requests are served (Envoy's ``accept_http_10``; else 426).
    accept_http10: bool = False
    #: Header fields in a request head before 431.
    max_headers: int = 100
    #: A request body that sends nothing for this long: DownstreamTimeout (None: no limit).
    stream_idle_timeout: float | None = None
    #: From a request's first byte to the end of its head, then 408 (None: no limit).
    request_headers_timeout: float | None = None
    #: Streams (HTTP/2) or requests in flight (RPC) at once on the connection.
    max_concurrent_streams: int = 100
    #: The largest frame the client may send (None: the protocol's default).
    max_frame_size: int | None = None
    #: Bytes queued for the client, or held by requests in flight, before reading pauses.
    buffer_limit: int = 1 << 20
    #: Counts a listener stat (``downstream_flow_control_paused_reading_total``...).
    count: Callable[[str], None] = lambda name: None
    #: A request the codec answered itself, never a stream (400, 431...): ``(status, method,
    #: path, why)``, so that stats and the access log count it as Envoy's do.
    rejected: Callable[[int, bytes, bytes, str], None] = lambda status, method, path, why: None


StreamHandler = Callable[[ServerStream], None]
