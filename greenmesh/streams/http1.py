"""HTTP/1.1 on h11: server and client stream connections.

h11 is the sans-IO state machine; this module is the thin part that feeds it reads from a Conn
and writes what it produces. One request at a time per connection, so pipelined requests are
answered in order simply by serving them one after another.
"""

from __future__ import annotations

from collections.abc import Callable

import h11
import structlog

from greenmesh.conn import Conn, ConnError, ConnTimeout
from greenmesh.streams import Match, Protocol
from greenmesh.streams.base import (
    WOULD_BLOCK,
    Chunk,
    ClientConnection,
    ClientStream,
    ConnTunnel,
    DownstreamError,
    Headers,
    RequestHead,
    ResponseHead,
    ServerOptions,
    ServerStream,
    StreamError,
    StreamHandler,
    StreamReset,
    StreamTimeout,
    Tunnel,
)
from greenmesh.streams.http_common import clean_request_headers, local_reply_headers

log = structlog.get_logger("greenmesh.http1")

_NEED_DATA = h11.NEED_DATA
_Data = h11.Data
_EndOfMessage = h11.EndOfMessage
_Request = h11.Request
_DONE = h11.DONE
_MAX_METHOD = 24


def match(data: bytes) -> Match:
    """A request line starts with an upper-case method token and a space."""
    for i, b in enumerate(data[:_MAX_METHOD]):
        if b == 0x20:
            return Match.YES if i else Match.NO
        if not (0x41 <= b <= 0x5A or b == 0x2D):  # A-Z or -
            return Match.NO
    return Match.AGAIN if len(data) < _MAX_METHOD else Match.NO


def _has_body(headers: Headers) -> bool:
    for name, value in headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


class _ServerConnection:
    """Serves the requests of one downstream connection, one after another."""

    def __init__(self, conn: Conn, opts: ServerOptions, handler: StreamHandler):
        self.conn = conn
        self.opts = opts
        self.handler = handler
        self.h = h11.Connection(h11.SERVER, max_incomplete_event_size=opts.max_header_bytes)
        self.peer_ip = opts.peer[0].encode() if opts.peer else None

    def next_event(self, block: bool = True):
        h = self.h
        while True:
            ev = h.next_event()
            if ev is not _NEED_DATA:
                return ev
            if not block:
                return WOULD_BLOCK
            h.receive_data(self.conn.read(self.opts.idle_timeout))

    def run(self) -> None:
        conn, h = self.conn, self.h
        while not conn.closed:
            try:
                ev = self.next_event()
            except h11.RemoteProtocolError as e:
                self.reject(e.error_status_hint, str(e))
                return
            except ConnError:  # idle timeout, or the client went away between requests
                return
            if type(ev) is not _Request:
                return  # ConnectionClosed
            # h11 bounds only a head that arrives in pieces; one read can bring a whole
            # oversized head, so measure what was parsed too.
            size = len(ev.target) + sum(len(n) + len(v) + 4 for n, v in ev.headers)
            if size > self.opts.max_header_bytes:
                self.reject(431, "request headers too large")
                return
            conn.busy = True
            stream = Http1ServerStream(self, ev)
            self.handler(stream)
            conn.busy = False
            if conn.closed:
                return
            if h.our_state is not _DONE or h.their_state is not _DONE:
                # A response cut short, a body the handler did not read, or Connection: close.
                conn.close("not reusable")
                return
            if self.opts.draining():
                conn.close("draining")
                return
            h.start_next_cycle()

    def reject(self, status: int, reason: str) -> None:
        """A request greenmesh cannot parse: say why on the wire, then close."""
        log.info("bad_request", peer=self.opts.peer, status=status, error=reason)
        h = self.h
        if h.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            body = f"{reason}\n".encode()
            headers = local_reply_headers(body) + [(b"connection", b"close")]
            try:
                self.conn.write(h.send(h11.Response(status_code=status, headers=headers))
                                + h.send(_Data(data=body)) + h.send(_EndOfMessage()))
            except (ConnError, h11.LocalProtocolError):
                pass
        self.conn.close(f"bad request: {reason}")


class Http1ServerStream(ServerStream):
    __slots__ = ("sc", "request", "request_complete", "trailers", "_body_done", "_out",
                 "_started", "_has_length")

    def __init__(self, sc: _ServerConnection, req: h11.Request):
        self.sc = sc
        headers, host, upgrade = clean_request_headers(req.headers, sc.peer_ip, sc.opts.scheme)
        self.request = RequestHead(req.method, req.target, host, sc.opts.scheme, headers, upgrade)
        self.trailers = None
        self.request_complete = not _has_body(req.headers)
        self._body_done = False
        self._out: list[bytes] = []
        self._started = False
        self._has_length = False
        if self.request_complete:
            self.sc.next_event(block=False)  # the EndOfMessage h11 has ready for a bodiless request
            self._body_done = True

    def read_body(self, block: bool = True) -> Chunk:
        if self._body_done:
            return None
        sc = self.sc
        if sc.h.they_are_waiting_for_100_continue:
            self._out.append(self._send(h11.InformationalResponse(status_code=100, headers=[])))
            self.flush()
        try:
            ev = sc.next_event(block)
        except h11.RemoteProtocolError as e:
            raise DownstreamError(f"bad request body: {e}", status=400) from None
        except ConnError as e:
            raise DownstreamError(f"downstream: {e}") from None
        t = type(ev)
        if t is _Data:
            return ev.data
        if t is _EndOfMessage:
            self._body_done = True
            if ev.headers:
                self.trailers = list(ev.headers)
            return None
        if ev is WOULD_BLOCK:
            return ev
        raise DownstreamError("downstream closed mid-request")

    def _send(self, event) -> bytes:
        try:
            return self.sc.h.send(event)
        except h11.LocalProtocolError as e:
            self.sc.conn.close("response not representable in HTTP/1.1")
            raise DownstreamError(f"cannot send response: {e}") from None

    def send_informational(self, head: ResponseHead) -> None:
        headers = head.headers
        if head.status == 101:
            headers = headers + [(b"connection", b"upgrade"), (b"upgrade", self.request.upgrade)]
        self._out.append(self._send(h11.InformationalResponse(
            status_code=head.status, headers=headers, reason=head.reason)))
        self.flush()

    def send_headers(self, head: ResponseHead, end_stream: bool) -> None:
        self._started = True
        headers = head.headers
        sc = self.sc
        # Say so when this connection will close after the response: draining, a broken
        # request, or a request body that the complete response leaves unread.
        if (sc.opts.draining() or sc.h.their_state is h11.ERROR
                or (end_stream and not self._body_done)):
            headers = headers + [(b"connection", b"close")]
        self._has_length = any(n == b"content-length" for n, _ in headers)
        out = self._out
        out.append(self._send(h11.Response(status_code=head.status, headers=headers,
                                           reason=head.reason)))
        if end_stream:
            out.append(self._send(_EndOfMessage()))
            self.flush()

    def send_data(self, data: bytes, end_stream: bool) -> None:
        out = self._out
        if data:
            out.append(self._send(_Data(data=data)))
        if end_stream:
            out.append(self._send(_EndOfMessage()))
            self.flush()

    def send_trailers(self, trailers: Headers) -> None:
        # Only chunked HTTP/1.1 carries trailers; otherwise they are dropped, as Envoy does.
        if self._has_length or self.sc.h.their_http_version != b"1.1":
            trailers = []
        self._out.append(self._send(_EndOfMessage(headers=trailers)))
        self.flush()

    def flush(self) -> None:
        out = self._out
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            try:
                self.sc.conn.write(data)
            except ConnError as e:
                raise DownstreamError(f"downstream: {e}") from None

    def reset(self, reason: str) -> None:
        self.sc.conn.close(reason)

    @property
    def response_started(self) -> bool:
        return self._started

    def upgrade(self) -> Tunnel:
        data, _ = self.sc.h.trailing_data
        if data:
            self.sc.conn.unread(bytes(data))
        return ConnTunnel(self.sc.conn)


def serve(conn: Conn, opts: ServerOptions, handler: StreamHandler) -> None:
    _ServerConnection(conn, opts, handler).run()


class Http1ClientConnection(ClientConnection):
    """An upstream HTTP/1.1 connection: one stream at a time, reused when both sides allow."""

    __slots__ = ("conn", "h", "active_streams", "requests")
    capacity = 1

    def __init__(self, conn: Conn):
        self.conn = conn
        self.h = h11.Connection(h11.CLIENT)
        self.active_streams = 0
        self.requests = 0

    def new_stream(self, on_finish: Callable[[ClientConnection, bool], None]) -> ClientStream:
        self.active_streams = 1
        self.requests += 1
        return Http1ClientStream(self, on_finish, self.requests > 1)

    @property
    def usable(self) -> bool:
        return not self.conn.closed


class Http1ClientStream(ClientStream):
    __slots__ = ("cc", "h", "conn", "on_finish", "reused", "trailers", "_out", "_got_bytes",
                 "_body_done", "_finished", "_chunked")

    def __init__(self, cc: Http1ClientConnection, on_finish, reused: bool):
        self.cc = cc
        self.h = cc.h
        self.conn = cc.conn
        self.on_finish = on_finish
        self.reused = reused
        self.trailers = None
        self._out: list[bytes] = []
        self._got_bytes = False
        self._body_done = False
        self._finished = False
        self._chunked = False

    def _send(self, event) -> bytes:
        try:
            return self.h.send(event)
        except h11.LocalProtocolError as e:
            raise StreamError(f"cannot send request upstream: {e}") from None

    def send_headers(self, head: RequestHead, end_stream: bool) -> None:
        headers = head.headers
        if head.authority:
            headers = [(b"host", head.authority), *headers]
        if head.upgrade:
            headers = [*headers, (b"connection", b"upgrade"), (b"upgrade", head.upgrade)]
        elif not end_stream and not any(n == b"content-length" for n, _ in headers):
            headers = [*headers, (b"transfer-encoding", b"chunked")]
            self._chunked = True
        out = self._out
        out.append(self._send(_Request(method=head.method, target=head.path, headers=headers)))
        if end_stream:
            out.append(self._send(_EndOfMessage()))
            self.flush()

    def send_data(self, data: bytes, end_stream: bool) -> None:
        out = self._out
        if data:
            out.append(self._send(_Data(data=data)))
        if end_stream:
            out.append(self._send(_EndOfMessage()))
            self.flush()

    def send_trailers(self, trailers: Headers) -> None:
        # Only a chunked body carries trailers; with a Content-Length they are dropped.
        self._out.append(self._send(_EndOfMessage(headers=trailers if self._chunked else [])))
        self.flush()

    def flush(self) -> None:
        out = self._out
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            try:
                self.conn.write(data)
            except ConnError as e:
                raise StreamReset(f"upstream: {e}") from None

    def _next(self, timeout: float | None, block: bool = True):
        h = self.h
        while True:
            try:
                ev = h.next_event()
            except h11.RemoteProtocolError as e:
                raise StreamReset(f"upstream protocol error: {e}") from None
            if ev is not _NEED_DATA:
                if type(ev) is h11.ConnectionClosed:
                    raise StreamReset("upstream closed the connection")
                return ev
            if not block:
                return WOULD_BLOCK
            try:
                data = self.conn.read(timeout)
            except ConnTimeout:
                raise StreamTimeout("upstream response timed out") from None
            except ConnError as e:
                raise StreamReset(f"upstream: {e}") from None
            if data:
                self._got_bytes = True
            elif not self._got_bytes:
                raise StreamReset("upstream closed the connection before responding")
            h.receive_data(data)

    def read_headers(self, timeout: float | None) -> ResponseHead:
        ev = self._next(timeout)
        if type(ev) is h11.Response or type(ev) is h11.InformationalResponse:
            return ResponseHead(ev.status_code, list(ev.headers), ev.reason)
        raise StreamReset(f"unexpected upstream event {type(ev).__name__}")

    def read_body(self, timeout: float | None, block: bool = True) -> Chunk:
        if self._body_done:
            return None
        ev = self._next(timeout, block)
        t = type(ev)
        if t is _Data:
            return ev.data
        if t is _EndOfMessage:
            self._body_done = True
            if ev.headers:
                self.trailers = list(ev.headers)
            return None
        return ev  # WOULD_BLOCK

    @property
    def response_started(self) -> bool:
        return self._got_bytes

    def reset(self, reason: str) -> None:
        self.conn.close(reason)
        self.finish()

    def finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        h = self.h
        reusable = h.our_state is _DONE and h.their_state is _DONE and not self.conn.closed
        if reusable:
            h.start_next_cycle()
        self.cc.active_streams = 0
        self.on_finish(self.cc, reusable)

    def upgrade(self) -> Tunnel:
        data, _ = self.h.trailing_data
        if data:
            self.conn.unread(bytes(data))
        return ConnTunnel(self.conn)


PROTOCOL = Protocol(name="http1", match=match, serve=serve, client=Http1ClientConnection,
                    multiplexed=False)
