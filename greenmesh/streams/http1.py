"""HTTP/1.1 stream connections: the thin part that feeds ``http1_codec`` from a Conn.

One request at a time per connection, so pipelined requests are answered in order simply by
serving them one after another; the parser queues what it has read ahead, and nothing more is
read until that queue is drained, which bounds memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from greenmesh.conn import Conn, ConnError, ConnTimeout
from greenmesh.failures import LocalReply, ResetReason
from greenmesh.logger import get_logger
from greenmesh.streams import Match, Protocol
from greenmesh.streams.base import (
    WOULD_BLOCK,
    Chunk,
    ClientConnection,
    ClientStream,
    ConnectionState,
    ConnTunnel,
    DownstreamError,
    DownstreamTimeout,
    Headers,
    MessageState,
    RequestHead,
    ResponseHead,
    ServerConnection,
    ServerOptions,
    ServerStream,
    StreamHandler,
    StreamReset,
    StreamTimeout,
    Tunnel,
)
from greenmesh.streams.http1_codec import (
    DATA,
    END,
    HEAD,
    MessageHead,
    ParseError,
    encode_chunk,
    encode_last_chunk,
    encode_request_head,
    encode_response_head,
    request_parser,
    response_has_body,
    response_parser,
)
from greenmesh.streams.http_common import (
    REASONS,
    clean_request_headers,
    clean_response_headers,
    local_reply_headers,
    send_http_local_reply,
)

log = get_logger("greenmesh.http1")

_MAX_METHOD: Final = 24
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_LAST_CHUNK: Final = b"0\r\n\r\n"
_CLOSE: Final = [(b"connection", b"close")]
_CHUNKED: Final = [(b"transfer-encoding", b"chunked")]
_EMPTY: Final = [(b"content-length", b"0")]


def match(data: bytes) -> Match:
    """A request line starts with an upper-case method token and a space."""
    for i, b in enumerate(data[:_MAX_METHOD]):
        if b == 0x20:
            return Match.YES if i else Match.NO
        if not (0x41 <= b <= 0x5A or b == 0x2D):  # A-Z or -
            return Match.NO
    return Match.AGAIN if len(data) < _MAX_METHOD else Match.NO


class _MessageWriter:
    """Buffers one message at a time for a connection: head, body (chunk-framed or raw), end.

    Nothing is written until ``flush()`` or the end, so a small message leaves in one write.
    """

    __slots__ = ("conn", "out", "chunked", "_error", "_side")

    def __init__(self, conn: Conn, error: type[Exception], side: str):
        self.conn = conn
        self.out: list[bytes] = []
        self.chunked = False
        self._error = error
        self._side = side

    def body(self, data: bytes) -> None:
        if data:
            self.out.append(encode_chunk(data) if self.chunked else data)

    def end(self, trailers: Headers | None = None) -> None:
        # Only a chunked body carries trailers; after a Content-Length they are dropped, as
        # Envoy does.
        if self.chunked:
            self.out.append(encode_last_chunk(trailers) if trailers else _LAST_CHUNK)
            self.chunked = False
        self.flush()

    def flush(self) -> None:
        out = self.out
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            try:
                self.conn.write(data)
            except ConnError as e:
                raise self._error(f"{self._side}: {e}") from None


class _ServerConnection(ServerConnection):
    """Serves the requests of one downstream connection, one after another. DRAINING means
    the connection closes after the exchange in progress (h11's MUST_CLOSE): the client asked,
    HTTP/1.0, a body left unread, or the listener drains."""

    __slots__ = ("conn", "opts", "handler", "parser", "events", "peer_ip", "writer", "state",
                 "current", "served", "_head_deadline")

    def __init__(self, conn: Conn, opts: ServerOptions, handler: StreamHandler):
        self.conn = conn
        self.writer = _MessageWriter(conn, DownstreamError, "downstream")
        self.opts = opts
        self.handler = handler
        self.parser = request_parser(opts.max_header_bytes, opts.accept_http10, opts.max_headers)
        self.events = self.parser.events
        # When the head of the request being received must be complete (request_headers_timeout).
        self._head_deadline: float | None = None
        self.peer_ip = opts.peer[0].encode() if opts.peer else None
        self.state = ConnectionState.OPEN
        self.current: Http1ServerStream | None = None
        self.served = 0  # requests answered on this connection

    @property
    def idle(self) -> bool:
        return self.current is None

    def drain(self) -> None:
        if self.state is ConnectionState.OPEN:
            self.state = ConnectionState.DRAINING
        if self.idle:  # between requests: nothing to finish
            self.close("draining")

    def close(self, reason: str) -> None:
        self.state = ConnectionState.CLOSED
        self.conn.close(reason)

    def next_event(self, block: bool = True):
        """The next parser event; None at EOF; WOULD_BLOCK if not blocking and none is ready."""
        events = self.events
        while not events:
            if self.parser.error is not None:
                raise self.parser.error
            if not block:
                return WOULD_BLOCK
            opts = self.opts
            timeout = opts.idle_timeout
            idle = opts.stream_idle_timeout
            if self.current is not None and idle is not None and (timeout is None
                                                                  or idle < timeout):
                timeout = idle  # within a request body
            deadline = self._head_deadline if self.current is None else None
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ParseError("request headers timeout", 408)
                timeout = left if timeout is None else min(timeout, left)
            # After an answer, the client's next request comes once it has read ours.
            try:
                data = self.conn.read(timeout,
                                      wait_first=self.current is None and self.served > 0)
            except ConnTimeout:
                if deadline is not None and time.monotonic() >= deadline:
                    raise ParseError("request headers timeout", 408) from None
                raise
            if not data:
                return None
            limit = self.opts.request_headers_timeout
            if self.current is None and self._head_deadline is None and limit is not None:
                self._head_deadline = time.monotonic() + limit  # a head has begun
            self.parser.feed(data)
        ev = events.popleft()
        if ev[0] == HEAD:
            self._head_deadline = None
        return ev

    def run(self) -> None:
        try:
            self._serve()
        finally:
            self.parser.release()

    def _serve(self) -> None:
        conn = self.conn
        while self.state is ConnectionState.OPEN and not conn.closed:
            try:
                ev = self.next_event()
            except ParseError as e:
                self.reject(e.status, str(e))
                return
            except ConnError:  # idle timeout, or the client went away between requests
                return
            if ev is None:
                return
            head = ev[1]
            if head.method == b"CONNECT":
                self.reject(405, "CONNECT is not supported", head.method, head.target)
                return
            self.current = stream = Http1ServerStream(self, head)
            self.handler(stream)
            self.current = None
            self.served += 1
            if conn.closed or not stream.reusable:
                self.close("not reusable" if self.state is ConnectionState.OPEN else "draining")
                return
            leftover = self.parser.upgrade_data  # an upgrade the upstream declined
            if leftover is not None:
                self.parser.upgrade_data = None
                conn.unread(leftover)

    def reject(self, status: int, reason: str, method: bytes = b"", path: bytes = b"") -> None:
        """A request greenmesh cannot parse: say why on the wire, then close."""
        log.info("bad_request", peer=self.opts.peer, status=status, error=reason)
        self.opts.rejected(status, method, path, reason)
        body = f"{reason}\n".encode()
        try:
            self.conn.write(encode_response_head(status, REASONS.get(status, b""),
                                                 local_reply_headers(body), _CLOSE) + body)
        except ConnError:
            pass
        self.conn.close(f"bad request: {reason}")


class Http1ServerStream(ServerStream):
    __slots__ = ("sc", "request", "request_complete", "trailers", "request_state",
                 "response_state", "_w", "_response_has_body", "_continue", "_http10")

    def __init__(self, sc: _ServerConnection, head: MessageHead):
        self.sc = sc
        scheme = sc.opts.scheme
        headers, host, upgrade = clean_request_headers(head.headers, sc.peer_ip, scheme)
        if not head.upgrade or upgrade.lower() == b"h2c":  # h2c upgrades are ignored, as Envoy does
            upgrade = b""
        self.request = RequestHead(head.method, head.target, host, scheme, headers, upgrade)
        self.request.peer = sc.peer_ip or b""
        self.trailers = None
        self._http10 = head.version != "1.1"
        if not head.keep_alive or self._http10:
            sc.state = ConnectionState.DRAINING  # closes after this exchange
        events = sc.events
        self.request_complete = bool(events) and events.first()[0] == END
        if self.request_complete:
            events.popleft()
        self.request_state = MessageState.DONE if self.request_complete else MessageState.BODY
        self.response_state = MessageState.HEAD
        # The client waits for our go-ahead before it sends the body.
        self._continue = not self.request_complete and any(
            n == b"expect" and v.lower() == b"100-continue" for n, v in head.headers)
        self._w = sc.writer
        self._response_has_body = True

    def drain_connection(self) -> None:
        sc = self.sc
        if sc.state is ConnectionState.OPEN:
            sc.state = ConnectionState.DRAINING

    @property
    def reusable(self) -> bool:
        """The connection may carry another request after this one."""
        return (self.request_state is MessageState.DONE
                and self.response_state is MessageState.DONE
                and self.sc.state is ConnectionState.OPEN)

    def read_body(self, block: bool = True) -> Chunk:
        if self.request_state is MessageState.DONE:
            return None
        sc = self.sc
        if self._continue:
            self._continue = False
            if not sc.events:
                self._w.out.append(_CONTINUE)
                self._w.flush()
        try:
            ev = sc.next_event(block)
        except ParseError as e:
            sc.state = ConnectionState.DRAINING
            raise DownstreamError(f"bad request body: {e}", status=e.status) from None
        except ConnTimeout:
            sc.state = ConnectionState.DRAINING
            raise DownstreamTimeout("the request body stalled (stream idle timeout)") from None
        except ConnError as err:
            raise DownstreamError(f"downstream: {err}") from None
        if ev is WOULD_BLOCK:
            return ev
        if ev is None:
            raise DownstreamError("downstream closed mid-request")
        kind, payload = ev
        if kind == DATA:
            return payload
        self.request_state = MessageState.DONE
        self.trailers = payload
        return None

    def send_informational(self, head: ResponseHead) -> None:
        extra = ([(b"connection", b"upgrade"), (b"upgrade", self.request.upgrade)]
                 if head.status == 101 else [])
        self._w.out.append(encode_response_head(head.status, head.reason or
                                                REASONS.get(head.status, b""), head.headers, extra))
        self._w.flush()

    def send_headers(self, head: ResponseHead, end_stream: bool) -> None:
        self.response_state = MessageState.BODY
        status = head.status
        headers = head.headers
        has_body = self._response_has_body = response_has_body(self.request.method, status)
        extra = []
        sc = self.sc
        if has_body and not any(n == b"content-length" for n, _ in headers):
            if end_stream:
                extra = _EMPTY
            elif self._http10:
                sc.state = ConnectionState.DRAINING  # the body is delimited by the close
            else:
                extra = _CHUNKED
                self._w.chunked = True
        if end_stream and self.request_state is not MessageState.DONE:
            sc.state = ConnectionState.DRAINING  # the complete response leaves the body unread
        if sc.state is not ConnectionState.OPEN:  # say so when the connection closes after it
            extra = extra + _CLOSE
        self._w.out.append(encode_response_head(status, head.reason or REASONS.get(status, b""),
                                                headers, extra))
        if end_stream:
            self._end()

    def _end(self, trailers: Headers | None = None) -> None:
        self.response_state = MessageState.DONE
        self._w.end(trailers)

    def send_data(self, data: bytes, end_stream: bool) -> None:
        if self._response_has_body:
            self._w.body(data)
        if end_stream:
            self._end()

    def send_trailers(self, trailers: Headers) -> None:
        self._end(trailers)

    def send_local_reply(self, reply: LocalReply) -> int:
        return send_http_local_reply(self, reply)

    def flush(self) -> None:
        self._w.flush()

    def reset(self, reason: str) -> None:
        self.sc.close(reason)

    @property
    def response_started(self) -> bool:
        return self.response_state is not MessageState.HEAD

    def upgrade(self) -> Tunnel:
        self.sc.state = ConnectionState.DRAINING
        parser = self.sc.parser
        if parser.upgrade_data:
            self.sc.conn.unread(parser.upgrade_data)
        parser.upgrade_data = None
        return ConnTunnel(self.sc.conn)


def server(conn: Conn, opts: ServerOptions, handler: StreamHandler) -> ServerConnection:
    return _ServerConnection(conn, opts, handler)


class Http1ClientConnection(ClientConnection):
    """An upstream HTTP/1.1 connection: one stream at a time, reused when both sides allow.
    DRAINING means it closes after the exchange in progress (the upstream said so, it closed
    its side, or the connection switched protocols)."""

    __slots__ = ("conn", "parser", "writer", "active_streams", "requests", "state")

    def __init__(self, conn: Conn, settings: object = None):
        self.conn = conn
        self.parser = response_parser()
        self.writer = _MessageWriter(conn, StreamReset, "upstream")
        self.active_streams = 0
        self.requests = 0
        self.state = ConnectionState.OPEN

    def new_stream(self, on_finish: Callable[[ClientConnection, bool], None]) -> ClientStream:
        self.active_streams = 1
        self.requests += 1
        return Http1ClientStream(self, on_finish, self.requests > 1)

    @property
    def capacity(self) -> int:
        return 1

    def close(self, reason: str) -> None:
        self.conn.close(reason)
        if not self.active_streams:  # else its stream releases the parser when it is done
            self.parser.release()

    @property
    def usable(self) -> bool:
        return self.state is ConnectionState.OPEN and not self.conn.closed


class Http1ClientStream(ClientStream):
    __slots__ = ("cc", "conn", "parser", "events", "_w", "_got_bytes", "request_state",
                 "response_state")

    def __init__(self, cc: Http1ClientConnection, on_finish, reused: bool):
        super().__init__(on_finish, reused)
        self.cc = cc
        self.conn = cc.conn
        self.parser = cc.parser
        self.events = cc.parser.events
        self._w = cc.writer
        self._got_bytes = False  # any response byte (a request that saw none may be retried)
        self.request_state = MessageState.HEAD
        self.response_state = MessageState.HEAD

    def send_headers(self, head: RequestHead, end_stream: bool) -> None:
        headers = head.headers
        self.parser.head_request = head.method == b"HEAD"
        if head.upgrade:
            headers = [*headers, (b"connection", b"upgrade"), (b"upgrade", head.upgrade)]
        w = self._w
        w.chunked = (not end_stream and not head.upgrade
                     and not any(n == b"content-length" for n, _ in headers))
        w.out.append(encode_request_head(head.method, head.path, head.authority, headers,
                                         w.chunked))
        self.request_state = MessageState.BODY
        if end_stream:
            self._end()

    def _end(self, trailers: Headers | None = None) -> None:
        self.request_state = MessageState.DONE
        self._w.end(trailers)

    def send_data(self, data: bytes, end_stream: bool) -> None:
        self._w.body(data)
        if end_stream:
            self._end()

    def send_trailers(self, trailers: Headers) -> None:
        self._end(trailers)

    def flush(self) -> None:
        self._w.flush()

    def _next(self, timeout: float | None, block: bool = True):
        events = self.events
        while not events:
            if self.parser.error is not None:
                raise StreamReset(f"upstream protocol error: {self.parser.error}",
                                  ResetReason.PROTOCOL_ERROR)
            if not block:
                return WOULD_BLOCK
            try:
                # Right after the request, the response has yet to come.
                data = self.conn.read(timeout, wait_first=not self._got_bytes)
            except ConnTimeout:
                raise StreamTimeout("upstream response timed out") from None
            except ConnError as e:
                raise StreamReset(f"upstream: {e}") from None
            if not data:
                self.cc.state = ConnectionState.DRAINING  # the upstream closed its side
                if self.parser.feed_eof():
                    continue
                raise StreamReset("upstream closed the connection" +
                                  ("" if self._got_bytes else " before responding"))
            self._got_bytes = True
            try:
                self.parser.feed(data)
            except ParseError as bad:
                raise StreamReset(f"upstream protocol error: {bad}",
                                  ResetReason.PROTOCOL_ERROR) from None
        return events.popleft()

    def read_headers(self, timeout: float | None) -> ResponseHead:
        while True:
            kind, head = self._next(timeout)
            if kind == HEAD:
                if head.status >= 200:
                    self.response_state = MessageState.BODY
                if not head.keep_alive:
                    self.cc.state = ConnectionState.DRAINING
                return ResponseHead(head.status, clean_response_headers(head.headers),
                                    head.reason)
            if kind != END:  # END closes an informational (1xx) message
                raise StreamReset("upstream sent a body before a response head",
                                  ResetReason.PROTOCOL_ERROR)

    def read_body(self, timeout: float | None, block: bool = True) -> Chunk:
        if self.response_state is MessageState.DONE:
            return None
        ev = self._next(timeout, block)
        if ev is WOULD_BLOCK:
            return ev
        kind, payload = ev
        if kind == DATA:
            return payload
        if kind == END:
            self.response_state = MessageState.DONE
            self.trailers = payload
            return None
        raise StreamReset("upstream sent a second response head", ResetReason.PROTOCOL_ERROR)

    @property
    def response_started(self) -> bool:
        return self._got_bytes

    def reset(self, reason: str) -> None:
        self.cc.state = ConnectionState.CLOSED
        self.conn.close(reason)
        self.finish()

    def _release(self) -> tuple[ClientConnection, bool]:
        cc = self.cc
        reusable = (self.request_state is MessageState.DONE
                    and self.response_state is MessageState.DONE
                    and cc.usable and self.parser.at_message_boundary)
        self.parser.head_request = False
        cc.active_streams = 0
        if cc.conn.closed:
            self.parser.release()
        return cc, reusable

    def upgrade(self) -> Tunnel:
        parser = self.parser
        if parser.upgrade_data:
            self.conn.unread(parser.upgrade_data)
        parser.upgrade_data = None
        self.cc.state = ConnectionState.DRAINING
        return ConnTunnel(self.conn)


_TEXT: Final = frozenset((9, 10, 13, *range(32, 127)))


def refusal(data: bytes) -> bytes | None:
    """First bytes no protocol claims but that read as text (a mistyped method, a stray line):
    HTTP/1.1's 400 and close, as haproxy and Envoy answer them."""
    first = data[:64]
    if not first or not all(c in _TEXT for c in first):
        return None
    body = b"bad request: not a protocol this listener speaks\n"
    return encode_response_head(400, b"Bad Request", local_reply_headers(body), _CLOSE) + body


PROTOCOL: Final = Protocol(name="http1", match=match, server=server, client=Http1ClientConnection,
                           multiplexed=False, alpn="http/1.1", refusal=refusal)
