"""HTTP/1.1 wire format, sans-IO: bytes in -> events out on llhttp (via httptools); bytes out.

llhttp is the C parser of Node.js, successor of the http-parser Envoy used: strict about
framing (it refuses conflicting Transfer-Encoding/Content-Length, bad chunk sizes, bare CR/LF
in values), and about 25 times cheaper per message than a pure-Python parser, which matters
because parsing both sides is most of an HTTP/1.1 proxy's work. Serialising is simple enough to
do here; the framing rules below are RFC 9112's.
"""

from __future__ import annotations

from typing import Any, Final

import httptools

from greenmesh.streams.base import Headers

HEAD: Final = 0
DATA: Final = 1
END: Final = 2
MAX_HEADERS: Final = 100  # Envoy's default max_headers_count

_NO_BODY_STATUS: Final = frozenset((204, 304))


class ParseError(Exception):
    """The peer sent something that is not HTTP/1.1; ``status`` is what to answer (400/431)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class MessageHead:
    """A parsed request or response head."""

    __slots__ = ("method", "target", "status", "reason", "headers", "keep_alive", "upgrade",
                 "version", "has_length", "chunked")

    def __init__(self) -> None:
        self.method = b""
        self.target = b""
        self.status = 0
        self.reason = b""
        self.headers: Headers = []
        self.keep_alive = True
        self.upgrade = False
        self.version = "1.1"
        self.has_length = False
        self.chunked = False


class _HeadOnly(Exception):
    """Stops llhttp after the head of a response that has no body (the answer to a HEAD)."""


class EventQueue:
    """The parser's (kind, payload) events in order: a list and a read index. A deque would
    allocate a 64-slot block at once: 0.6 KiB that every idle keep-alive connection holds."""

    __slots__ = ("_items", "_next")

    def __init__(self) -> None:
        self._items: list[tuple[int, Any]] = []
        self._next = 0

    def __bool__(self) -> bool:
        return self._next < len(self._items)

    def append(self, event: tuple[int, Any]) -> None:
        self._items.append(event)

    def first(self) -> tuple[int, Any]:
        return self._items[self._next]

    def popleft(self) -> tuple[int, Any]:
        items = self._items
        event = items[self._next]
        self._next += 1
        if self._next == len(items):
            items.clear()  # back to an empty list: its array is freed
            self._next = 0
        return event

    def take_all(self) -> list[tuple[int, Any]]:
        """Every event not yet taken, in order; the queue is then empty."""
        rest = self._items[self._next:]
        self._items.clear()
        self._next = 0
        return rest


class _Parser:
    """Feeds llhttp and queues (kind, payload) events; one parser per connection."""

    __slots__ = ("_p", "_response", "_limit", "events", "_head", "_size", "_trailers", "_url",
                 "_reason", "_too_large", "upgrade_data", "head_request", "clean_stop", "error",
                 "_accept_http10", "_max_headers")

    def __init__(self, response: bool, max_header_bytes: int = 60 * 1024,
                 accept_http10: bool = False, max_headers: int = MAX_HEADERS):
        self._response = response
        self._max_headers = max_headers
        self._limit = max_header_bytes
        self._accept_http10 = accept_http10
        self.events = EventQueue()
        self.upgrade_data: bytes | None = None
        #: Set by the client before a HEAD request: its response has a head only.
        self.head_request = False
        #: After a head-only response: whether the read ended exactly where the head did.
        self.clean_stop = True
        #: A parse error held back until the events before it (a good pipelined request) are used.
        self.error: ParseError | None = None
        self._new()

    def _new(self) -> None:
        cls = httptools.HttpResponseParser if self._response else httptools.HttpRequestParser
        self._p: Any = cls(self)  # httptools' request or response parser
        self._begin()

    def _begin(self) -> None:
        self._head: MessageHead | None = None
        self._size = 0
        self._trailers: Headers | None = None
        self._url = b""
        self._reason = b""
        self._too_large = ""

    # llhttp callbacks (called from inside feed_data)
    def on_message_begin(self) -> None:
        self._begin()
        self._head = MessageHead()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count(len(url))

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        if self._trailers is not None:
            self._trailers.append((name.lower(), value))
            return
        assert self._head is not None  # llhttp calls on_message_begin first
        headers = self._head.headers
        if len(headers) >= self._max_headers:
            self._too_large = f"more than {self._max_headers} headers"
            raise ParseError(self._too_large, 431)
        headers.append((name.lower(), value))

    def _count(self, n: int) -> None:
        self._size += n
        if self._size > self._limit:
            self._too_large = "headers too large"
            raise ParseError(self._too_large, 431)

    def on_headers_complete(self) -> None:
        head, p = self._head, self._p
        assert head is not None
        head.keep_alive = p.should_keep_alive()
        head.upgrade = p.should_upgrade()
        head.version = p.get_http_version()
        hosts = 0
        for name, value in head.headers:
            if name == b"content-length":
                head.has_length = True
            elif name == b"transfer-encoding":
                head.chunked = value.lower().endswith(b"chunked")
            elif name == b"host":
                hosts += 1
        if self._response:
            head.status = p.get_status_code()
            head.reason = self._reason
        else:
            head.method = p.get_method()
            head.target = self._url
            self._check_request(head.version, hosts)
        self._trailers = []
        self.events.append((HEAD, head))
        if self.head_request and head.status >= 200:
            self.events.append((END, None))
            raise _HeadOnly

    def _check_request(self, version: str, hosts: int) -> None:
        """RFC 9112's rules a proxy enforces (Envoy's): HTTP/0.9 has no place in a proxy;
        HTTP/1.0 only where the listener accepts it (Envoy's ``accept_http_10``, else 426); an
        HTTP/1.1 request has exactly one Host (§3.2; counted in the one pass over the head)."""
        if version == "1.1":
            if hosts != 1:
                raise ParseError("missing host header" if not hosts
                                 else "more than one host header", 400)
        elif version == "1.0":
            if not self._accept_http10:
                raise ParseError("HTTP/1.0 is not accepted here (accept_http_10)", 426)
        else:
            raise ParseError(f"HTTP/{version} is not supported", 400)

    def on_body(self, body: bytes) -> None:
        self.events.append((DATA, body))

    def on_message_complete(self) -> None:
        self.events.append((END, self._trailers or None))
        self._head = None

    def feed(self, data: bytes) -> None:
        """Parses what it can; raises ParseError at once only if nothing came before the error."""
        try:
            self._feed(data)
        except ParseError as e:
            if not self.events:
                raise
            self.error = e

    def _feed(self, data: bytes) -> None:
        if self.error is not None:
            raise self.error
        try:
            self._p.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self.upgrade_data = data[e.args[0]:]
        except httptools.HttpParserCallbackError as cb_err:
            if isinstance(cb_err.__context__, _HeadOnly):
                self.clean_stop = data.endswith(b"\r\n\r\n")
                self._new()
                return
            if self._too_large:
                raise ParseError(self._too_large, 431) from None
            cause = cb_err.__context__
            if isinstance(cause, ParseError):  # raised by a callback, with its own status
                raise cause from None
            raise ParseError(str(cause or cb_err)) from None
        except httptools.HttpParserError as parse_err:
            if str(parse_err) == "Pause on PRI/Upgrade":  # llhttp stops at the HTTP/2 connection preface
                raise ParseError("HTTP/2 on an HTTP/1.1 listener (protocol: http2 or auto serves"
                                 " it)") from None
            raise ParseError(str(parse_err).replace("HPE_", "")) from None

    def release(self) -> None:
        """Ends the parser with its connection: llhttp holds this object's callbacks and this
        object holds llhttp, a cycle only the full collector would otherwise free. A feed after
        this is a parse error, not a crash."""
        self._p = None
        if self.error is None:
            self.error = ParseError("connection closed")

    @property
    def at_message_boundary(self) -> bool:
        """Nothing is left over from the last message: no bytes past a head-only response, no
        switched-protocol bytes, no queued event."""
        return self.clean_stop and self.upgrade_data is None and not self.events

    def feed_eof(self) -> bool:
        """The peer closed. True if that ended a message (a body delimited by the close)."""
        head = self._head
        if head is not None and self._trailers is not None and not head.has_length \
                and not head.chunked and self._response:
            self.events.append((END, None))
            self._head = None
            return True
        return False

def request_parser(max_header_bytes: int, accept_http10: bool = False,
                   max_headers: int = MAX_HEADERS) -> _Parser:
    return _Parser(response=False, max_header_bytes=max_header_bytes,
                   accept_http10=accept_http10, max_headers=max_headers)


def response_parser() -> _Parser:
    return _Parser(response=True, max_header_bytes=256 * 1024)


def encode_headers(out: list[bytes], headers: Headers) -> None:
    for name, value in headers:
        out.append(name)
        out.append(b": ")
        out.append(value)
        out.append(b"\r\n")


def encode_request_head(method: bytes, target: bytes, authority: bytes, headers: Headers,
                        chunked: bool) -> bytes:
    out = [method, b" ", target, b" HTTP/1.1\r\n"]
    if authority:
        out.append(b"host: ")
        out.append(authority)
        out.append(b"\r\n")
    encode_headers(out, headers)
    if chunked:
        out.append(b"transfer-encoding: chunked\r\n")
    out.append(b"\r\n")
    return b"".join(out)


def encode_response_head(status: int, reason: bytes, headers: Headers, extra: Headers) -> bytes:
    out = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
    encode_headers(out, headers)
    encode_headers(out, extra)
    out.append(b"\r\n")
    return b"".join(out)


def encode_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def encode_last_chunk(trailers: Headers | None) -> bytes:
    if not trailers:
        return b"0\r\n\r\n"
    out = [b"0\r\n"]
    encode_headers(out, trailers)
    out.append(b"\r\n")
    return b"".join(out)


def response_has_body(method: bytes, status: int) -> bool:
    return method != b"HEAD" and status >= 200 and status not in _NO_BODY_STATUS

