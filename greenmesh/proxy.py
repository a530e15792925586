"""One request: route -> host -> pool -> forward head, body and trailers both ways -> access log.

Written once for every protocol: it only speaks the stream contract in ``streams.base``.
Failures are types (Envoy's response flags and reset reasons, ``greenmesh.failures``); a local
reply carries its flags to the codec, which maps them to its own wire answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from random import getrandbits
from typing import Final

import gevent
from gevent.hub import get_hub
from greenlet import getcurrent

from greenmesh.access_log import AccessLog
from greenmesh.cooperate import spawn_held
from greenmesh.failures import LocalReply, ResetReason, ResponseFlag, render_flags
from greenmesh.filters.chain import FilterChain, StreamFilters
from greenmesh.logger import get_logger
from greenmesh.mirror import send_mirror
from greenmesh.overload import OverloadManager
from greenmesh.retry import RetryState
from greenmesh.router import CompiledRoute, RouteTable
from greenmesh.stats import RequestStats, Stats
from greenmesh.streams.base import (
    WOULD_BLOCK,
    Chunk,
    ClientStream,
    DownstreamError,
    DownstreamTimeout,
    FilterError,
    Headers,
    RequestHead,
    ResponseHead,
    ServerStream,
    StreamError,
    StreamHandler,
    StreamReset,
    StreamTimeout,
    Tunnel,
)
from greenmesh.upstream.cluster import ClusterSnapshot
from greenmesh.upstream.manager import ClusterManager
from greenmesh.upstream.pool import PoolOverflow

log = get_logger("greenmesh.proxy")

IDEMPOTENT: Final = frozenset((b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"))
# A request body up to this size is kept so the request can be sent again on a fresh connection.
REPLAY_LIMIT: Final = 64 * 1024

_monotonic: Final = time.monotonic
# Envoy's cluster counters that a request's response flags imply.
_CLUSTER_FAILURE_STATS: Final = {ResponseFlag.UPSTREAM_REQUEST_TIMEOUT: "rq_timeout",
                                 ResponseFlag.UPSTREAM_RETRY_LIMIT_EXCEEDED: "rq_retry_limit_exceeded"}
_OVERLOADED: Final = [(b"x-envoy-overloaded", b"true")]
_UF: Final = ResponseFlag.UPSTREAM_CONNECTION_FAILURE
_IE: Final = ResponseFlag.INTERNAL_ERROR
_HASH_MASK: Final = (1 << 64) - 1


# The protocols whose requests carry x-request-id ("http": the in-process client's).
_HTTP: Final = ("http1", "http2", "http")
_ID_MASK: Final = (1 << 48) - 1


class _Downstream:
    """One protocol's requests on a listener: its name, its request counter's key, whether
    its requests get an x-request-id."""

    __slots__ = ("protocol", "total", "request_id")

    def __init__(self, protocol: str, total: str, request_id: bool):
        self.protocol = protocol
        self.total = total
        self.request_id = request_id


class _RequestIds:
    """Envoy's generate_request_id: a request without x-request-id gets one in UUID4's shape,
    which goes upstream and into the access log. The first 80 bits are random per listener and
    the last 48 count requests: unique without 128 fresh random bits a request (which cost
    more than the rest of the access log line, profiled)."""

    __slots__ = ("_prefix", "_next")

    def __init__(self) -> None:
        r = getrandbits(64)
        self._prefix = (f"{r >> 32:08x}-{(r >> 16) & 0xFFFF:04x}-4{(r >> 4) & 0xFFF:03x}-"
                        f"{0x8000 | (r & 0xF) << 10 | getrandbits(10):04x}-").encode()
        self._next = getrandbits(47)

    def ensure(self, head: RequestHead) -> None:
        headers = head.headers
        for name, _ in headers:
            if name == b"x-request-id":
                return
        self._next = n = (self._next + 1) & _ID_MASK
        # In place: only HTTP heads get one, and their lists are not forwarded as they came.
        headers.append((b"x-request-id", self._prefix + b"%012x" % n))


class _Exchange:
    """What one request did: the access log's fields, filled in as the proxy goes."""

    __slots__ = ("status", "flags", "upstream", "cluster", "bytes_in", "bytes_out",
                 "body_done_at", "replay", "replay_ok", "error", "downstream_error", "route",
                 "filters", "body", "upstream_stream")

    def __init__(self, stream: ServerStream, filters: StreamFilters | None) -> None:
        self.status = 0
        self.flags: list[ResponseFlag] = []
        self.upstream: str | None = None
        self.cluster: str | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.body_done_at: float | None = None
        self.downstream_error: DownstreamError | None = None
        self.route: CompiledRoute | None = None  # for response header operations
        self.replay: list[bytes] = []
        self.replay_ok = True
        self.error = ""
        self.filters = filters  # the stream's filters, when the listener has a chain
        # Where the request body is read from: the stream, or its filters in front of it.
        self.body: ServerStream | _Filtered = stream
        self.upstream_stream: ClientStream | None = None  # while one is open


class DurationExpired(BaseException):
    """Thrown into a stream's greenlet when its listener's max_stream_duration passes, wherever
    it waits (a BaseException, as gevent's Timeout, so that no ``except Exception`` on the way
    takes it for a failure of its own)."""


def _ignore(_: bytes) -> None:
    pass


class _Filtered:
    """A body source with filters in front: each chunk and the trailers pass through them (a
    chunk a filter swallows whole is not forwarded: an empty HTTP/1.1 chunk would end it)."""

    __slots__ = ("_read", "_src", "_chunk", "_trailers", "trailers")

    def __init__(self, read: Callable[[bool], Chunk], src, on_chunk: Callable[[bytes], bytes],
                 on_trailers: Callable[[Headers], Headers]):
        self._read = read
        self._src = src
        self._chunk = on_chunk
        self._trailers = on_trailers
        self.trailers: Headers | None = None

    def read(self, block: bool) -> Chunk:
        while True:
            chunk = self._read(block)
            if chunk is None:
                trailers = self._src.trailers
                self.trailers = self._trailers(trailers) if trailers else trailers
                return None
            if not isinstance(chunk, bytes):
                return chunk
            chunk = self._chunk(chunk)
            if chunk:
                return chunk


class _Relay:
    """Moves one body from a source stream to a destination stream.

    Chunks go on as they come; the last one is held back so that it carries the end of the
    stream (no empty end-of-stream frame in HTTP/2, no separate write in HTTP/1.1); whenever
    the source would block, what is buffered is flushed first, so nothing waits on a stall.
    """

    __slots__ = ("read", "src", "dst", "on_chunk", "held")

    def __init__(self, read: Callable[[bool], Chunk], src, dst, on_chunk: Callable[[bytes], None]):
        self.read = read
        self.src = src  # where the trailers come from
        self.dst = dst
        self.on_chunk = on_chunk
        self.held: bytes | None = None

    def run(self, block: bool) -> bool:
        """True once the body ended; False if not blocking and the source would block."""
        read, dst = self.read, self.dst
        while True:
            chunk = read(False)
            if chunk is WOULD_BLOCK:
                if self.held is not None:
                    dst.send_data(self.held, end_stream=False)
                    self.held = None
                dst.flush()
                if not block:
                    return False
                chunk = read(True)
            if chunk is None:
                break
            assert isinstance(chunk, bytes)
            self.on_chunk(chunk)
            if self.held is not None:
                dst.send_data(self.held, end_stream=False)
            self.held = chunk
        held, self.held = self.held, None
        trailers = self.src.trailers
        if trailers:
            if held is not None:
                dst.send_data(held, end_stream=False)
            dst.send_trailers(trailers)
        else:
            dst.send_data(held if held is not None else b"", end_stream=True)
        return True


class _Answer(Exception):
    """Ends the request with greenmesh's own reply."""

    def __init__(self, reply: LocalReply):
        self.reply = reply


def _answer(status: int, flag: ResponseFlag | None, body: bytes,
            headers: Headers | None = None) -> _Answer:
    return _Answer(LocalReply(status, [flag] if flag else [], body, headers or []))


def _upstream_failure(e: StreamError) -> _Answer:
    """What the client hears when the upstream failed before a response head (Envoy's words)."""
    if isinstance(e, StreamTimeout):
        return _answer(504, ResponseFlag.UPSTREAM_REQUEST_TIMEOUT, b"upstream request timeout")
    reason = e.reason if isinstance(e, StreamReset) else ResetReason.PROTOCOL_ERROR
    flag = (ResponseFlag.UPSTREAM_PROTOCOL_ERROR if reason is ResetReason.PROTOCOL_ERROR
            else ResponseFlag.UPSTREAM_CONNECTION_TERMINATION)
    return _answer(502, flag, b"upstream connect error or disconnect/reset before headers. "
                   b"reset reason: " + reason.value.encode())


def _replayable_body(stream: ServerStream, ex: _Exchange) -> bool:
    """All of the request body was read and kept (so it can be sent again elsewhere)."""
    return ex.replay_ok and (stream.request_complete or ex.body_done_at is not None)


def _replayable(stream: ServerStream, ex: _Exchange) -> bool:
    """Whether the request can be sent again: all of it was read and kept, and nothing of a
    response has reached the client yet."""
    return not stream.response_started and _replayable_body(stream, ex)


def _apply_header_ops(headers: Headers, add: tuple, remove: frozenset) -> Headers:
    """Envoy's *_headers_to_remove, then *_headers_to_add (append, or overwrite)."""
    if remove:
        headers = [(n, v) for n, v in headers if n not in remove]
    else:
        headers = list(headers)
    for key, value, append in add:
        if not append:
            headers = [(n, v) for n, v in headers if n != key]
        headers.append((key, value))
    return headers


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    left = deadline - _monotonic()
    if left <= 0:
        raise StreamTimeout("route timeout")
    return left


class _RetryStatus(Exception):
    """The upstream's response status is one the route retries on."""

    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


class Proxy:
    """Forwards the streams of one listener."""

    def __init__(self, listener: str, routes: Callable[[], RouteTable | None],
                 clusters: ClusterManager, stats: Stats, *, access_log: AccessLog | None = None,
                 tunnel_idle_timeout: float | None = 300.0, filters: FilterChain | None = None,
                 overload: OverloadManager | None = None,
                 max_stream_duration: float | None = None,
                 stream_idle_timeout: float | None = None, request_ids: bool = True):
        """``request_ids``: HTTP requests without x-request-id get one (Envoy's
        generate_request_id)."""
        self.listener = listener
        self._request_ids = request_ids
        self._ids = _RequestIds()
        self._stream_idle = stream_idle_timeout  # for routes that set no idle_timeout
        self._max_duration = max_stream_duration
        self._overload = overload
        self._filters = filters
        self._routes = routes
        self._clusters = clusters
        self._stats = stats
        self._access_log = access_log
        self._tunnel_idle = tunnel_idle_timeout
        self._rq = RequestStats(stats, f"http.{listener}.downstream_")
        self._downstreams: dict[str, _Downstream] = {}

    def _downstream(self, protocol: str) -> _Downstream:
        scope = self._downstreams.get(protocol)
        if scope is None:
            scope = self._downstreams[protocol] = _Downstream(
                protocol, f"http.{self.listener}.downstream_rq_{protocol}_total",
                self._request_ids and protocol in _HTTP)
            self._stats.inc(scope.total, 0)
        return scope

    def handler(self, protocol: str) -> StreamHandler:
        """What a connection of ``protocol`` calls with each of its streams."""
        scope = self._downstream(protocol)
        return lambda stream: self.handle(stream, scope)

    def handle(self, stream: ServerStream, scope: _Downstream) -> None:
        """Serves one stream; raises nothing but what ends its greenlet from outside (a kill, a
        caller's own timeout), after cleaning up (one bad request must not end the connection
        loop).
        ``scope``: what is the same for every stream of its protocol on this listener."""
        start = _monotonic()
        self._rq.start()
        if scope.request_id:
            self._ids.ensure(stream.request)
        chain = self._filters
        ex = _Exchange(stream, chain.start(stream.request) if chain is not None else None)
        timer = None
        cancelled: BaseException | None = None
        if self._max_duration is not None:
            timer = get_hub().loop.timer(self._max_duration)
            timer.start(getcurrent().throw, DurationExpired)
        try:
            try:
                overload = self._overload
                if overload is not None and overload.active:
                    if not overload.keepalive:
                        stream.drain_connection()
                    if not overload.accepting_requests:
                        raise _answer(503, ResponseFlag.OVERLOAD_MANAGER, b"envoy overloaded")
                self._forward(stream, ex)
            finally:
                if timer is not None:
                    timer.stop()
        except DurationExpired:
            # Envoy's answer: 408 if nothing of the response was sent, else the stream is reset.
            cs = ex.upstream_stream
            if cs is not None:
                cs.reset("max stream duration")
            ex.error = "max stream duration reached"
            self._local_reply(stream, ex, LocalReply(408, [ResponseFlag.DURATION_TIMEOUT],
                                                     b"downstream duration timeout"))
        except _Answer as a:
            self._local_reply(stream, ex, a.reply)
        except DownstreamError as e:
            e = ex.downstream_error or e
            ex.error = str(e)
            if e.status and not stream.response_started:
                if isinstance(e, FilterError):  # its text is the filter's, not the client's
                    reply = LocalReply(e.status, [_IE], b"filter error\n")
                elif isinstance(e, DownstreamTimeout):
                    reply = LocalReply(408, [ResponseFlag.STREAM_IDLE_TIMEOUT], b"stream timeout")
                else:
                    reply = LocalReply(e.status, [ResponseFlag.DOWNSTREAM_PROTOCOL_ERROR],
                                       f"{e}\n".encode())
                self._local_reply(stream, ex, reply)
            else:
                if not isinstance(e, FilterError):
                    ex.flags.append(ResponseFlag.DOWNSTREAM_CONNECTION_TERMINATION)
                stream.reset("downstream error")
        except Exception:  # a bug: log it, lose this request only
            log.exception("proxy_error", listener=self.listener)
            ex.flags.append(_IE)
            stream.reset("internal error")
        except BaseException as stop:
            # The greenlet is killed, or an in-process caller's own timeout fired (its call
            # runs in its greenlet): nobody is left to answer, but the upstream stream must not
            # be left open, and the request is still counted and logged. Raised again below.
            cs = ex.upstream_stream
            if cs is not None:
                cs.reset("cancelled")
            ex.flags.append(ResponseFlag.DOWNSTREAM_CONNECTION_TERMINATION)
            ex.error = ex.error or f"cancelled ({type(stop).__name__})"
            stream.reset("cancelled")
            cancelled = stop
        metadata = None
        sf = ex.filters
        if sf is not None:
            if sf.active.done:
                sf.done()
            if sf.flags:
                ex.flags.extend(f for f in sf.flags if f not in ex.flags)
            metadata = sf.metadata or None
        stream.finished(ex.flags, ex.error)
        status = ex.status
        took = _monotonic() - start
        self._rq.done(status, took)
        self._stats.counters[scope.total] += 1
        if ex.flags and ex.cluster is not None:
            self._count_failure(ex)
        if self._access_log is not None:
            self._access_log.log(self.listener, scope.protocol, stream.request, status,
                                 render_flags(ex.flags), ex.bytes_in, ex.bytes_out,
                                 int(took * 1e6), ex.cluster, ex.upstream, ex.error, metadata)
        if cancelled is not None:
            raise cancelled

    def _count_failure(self, ex: _Exchange) -> None:
        """The cluster's counters of why requests failed, from their response flags."""
        assert ex.cluster is not None
        cluster = self._clusters.get(ex.cluster)
        cs = cluster.stats if cluster is not None else None
        if cs is None:
            return
        for flag in ex.flags:
            name = _CLUSTER_FAILURE_STATS.get(flag)
            if name is not None:
                cs.count(name)

    def rejected(self, status: int, method: bytes, path: bytes, details: str,
                 protocol: str = "http1") -> None:
        """A request its codec answered itself (400, 431...: no stream was made): counted and
        logged as Envoy's are, with DPE."""
        self._rq.refused(status)
        if self._access_log is not None:
            self._access_log.log(self.listener, protocol,
                                 RequestHead(method, path, b"", b"", []), status,
                                 ResponseFlag.DOWNSTREAM_PROTOCOL_ERROR.value, 0, 0, 0, None,
                                 None, details)

    def _local_reply(self, stream: ServerStream, ex: _Exchange, reply: LocalReply) -> None:
        if stream.response_started:
            ex.flags.extend(f for f in reply.flags if f not in ex.flags)
            stream.reset(render_flags(reply.flags))
            return
        if ex.filters is not None:
            try:
                reply = ex.filters.local_reply(reply)
            except FilterError as e:  # a response hook failed on the way out
                ex.error = str(e)
                if not e.status:
                    stream.reset("filter reset")
                    return
                reply = LocalReply(e.status, [_IE], b"filter error\n")
        ex.flags.extend(f for f in reply.flags if f not in ex.flags)
        ex.status = reply.status
        try:
            ex.bytes_out = stream.send_local_reply(reply)
        except DownstreamError:
            stream.reset("downstream error")

    def _forward(self, stream: ServerStream, ex: _Exchange) -> None:
        head = stream.request
        ex.bytes_in += head.message_bytes
        sf = ex.filters
        if sf is not None and sf.active.before_route:
            reply = sf.before_route()
            if reply is not None:
                raise _Answer(reply)
        table = self._routes()
        matched = None
        if table is not None:
            matched = table.match(head, sf.metadata if sf is not None else None)
        if matched is None:
            if sf is not None:
                reply = sf.after_route(None, None)
                if reply is not None:
                    raise _Answer(reply)
            raise _answer(404, ResponseFlag.NO_ROUTE_FOUND, b"")
        ex.route = matched
        route = matched.route
        name = matched.cluster_name(head) if route.route is not None else None
        if sf is not None:
            reply = sf.after_route(matched, name)
            if reply is not None:
                raise _Answer(reply)
            if sf.active.wants_request_body and not stream.request_complete:
                ex.body = _Filtered(stream.read_body, stream, sf.request_data,
                                    sf.request_trailers)
        if route.direct_response is not None:
            dr = route.direct_response
            raise _answer(dr.status, None, dr.body.encode())
        if route.redirect is not None:
            raise _answer(route.redirect.response_code, None, b"",
                          [(b"location", matched.redirect_location(head))])
        action = route.route
        assert action is not None
        ex.cluster = name
        cluster = self._clusters.get(name) if name else None
        if cluster is None:
            raise _answer(503, ResponseFlag.NO_CLUSTER_FOUND, b"cluster not found")
        if action.prefix_rewrite is not None or action.regex_rewrite is not None:
            head.path = matched.rewrite_path(head.path, action.prefix_rewrite)
        if action.host_rewrite_literal is not None:
            head.authority = action.host_rewrite_literal.encode()
        if matched.request_add or matched.request_remove:
            head.headers = _apply_header_ops(head.headers, matched.request_add,
                                             matched.request_remove)
        timeout = head.timeout if head.timeout is not None else action.timeout or None
        breakers = cluster.breakers
        if not breakers.try_request():
            self._stats.inc(f"cluster.{cluster.name}.upstream_rq_overflow")
            raise _answer(503, ResponseFlag.UPSTREAM_OVERFLOW, b"upstream overflow", _OVERLOADED)
        idle = action.idle_timeout or self._stream_idle  # the route's, else the listener's
        retries = RetryState(action.retry_policy, timeout, idle, self._stats, cluster)
        try:
            self._attempts(stream, ex, head, matched, cluster, retries, timeout)
        finally:
            breakers.end_request(retries.done)
        if action.request_mirror_policies and _replayable_body(stream, ex):
            for mirror in action.request_mirror_policies:
                gevent.spawn(send_mirror, self._clusters.get(mirror), self._stats, mirror, head,
                             list(ex.replay), ex.body.trailers, timeout)

    @staticmethod
    def _give_up(retries: RetryState, answer: _Answer) -> _Answer:
        """The failure's answer, with why the retry policy could not hide it (URX, UO)."""
        if retries.refused is not None:
            answer.reply.flags.append(retries.refused)
        return answer

    def _attempts(self, stream: ServerStream, ex: _Exchange, head: RequestHead,
                  matched: CompiledRoute, cluster: ClusterSnapshot, retries: RetryState,
                  timeout: float | None) -> None:
        stale_retry = head.method in IDEMPOTENT  # one free retry on a stale keep-alive
        attempt = 0
        action = matched.route.route
        assert action is not None
        key: int | None = matched.hash_key(head) if action.hash_policy else None
        policy = action.retry_policy
        tried: set[object] | None = set() if policy is not None and policy.previous_hosts \
            else None
        while True:
            attempt += 1
            if attempt > 1:  # a retry sees ejections and EDS changes made since the first try
                cluster = self._clusters.get(cluster.name) or cluster
            host = cluster.pick(key)
            if tried is not None and policy is not None:
                for n in range(policy.host_selection_retry_max_attempts):
                    if host is None or host.address not in tried:
                        break
                    # Envoy's previous_hosts: pick again (a hashing balancer at another point
                    # of its ring, as Envoy's walks on).
                    host = cluster.pick(key if key is None else hash((key, n)) & _HASH_MASK)
                if host is not None:
                    tried.add(host.address)
            if host is None:
                raise _answer(503, ResponseFlag.NO_HEALTHY_UPSTREAM, b"no healthy upstream")
            ex.upstream = host.label
            if action.auto_host_rewrite:
                head.authority = ex.upstream.encode()
            sf = ex.filters
            if sf is not None:
                sf.host = ex.upstream
                if sf.active.after_host:
                    reply = sf.after_host()
                    if reply is not None:
                        raise _Answer(reply)
            began = _monotonic()
            try:
                cs = host.pool.new_stream(timeout)
            except PoolOverflow:
                raise _answer(503, ResponseFlag.UPSTREAM_OVERFLOW, b"upstream overflow",
                              _OVERLOADED) from None
            except StreamReset as e:  # a connect failure, or the host left while we waited
                ex.error = str(e)
                cluster.record(host, 0, began)
                if retries.on_reset(e.reason, _replayable(stream, ex)):
                    continue
                raise self._give_up(retries, _answer(
                    503, _UF, b"upstream connect error or disconnect/reset before headers. "
                              b"reset reason: connection failure")) from None
            except StreamTimeout:
                raise _answer(504, ResponseFlag.UPSTREAM_REQUEST_TIMEOUT,
                              b"upstream request timeout") from None
            try:
                self._exchange(stream, cs, ex, timeout, attempt, retries)
                cluster.record(host, ex.status, began)
                return
            except _RetryStatus as r:
                cluster.record(host, r.status, began)
                cs.reset("retrying")
                continue
            except StreamError as err:
                cs.reset(str(err))
                if isinstance(err, DownstreamError):
                    raise
                if ex.downstream_error:  # the pump saw the client go; nobody is left to answer
                    raise ex.downstream_error from None
                replayable = _replayable(stream, ex)
                if (type(err) is StreamReset and stale_retry and cs.reused
                        and not cs.response_started and replayable):
                    stale_retry = False
                    self._stats.inc(f"cluster.{cluster.name}.upstream_rq_retry")
                    continue  # a stale keep-alive connection: once more on another
                cluster.record(host, 0, began)
                reason = err.reason if isinstance(err, StreamReset) else None
                if retries.on_reset(reason, replayable):
                    continue
                ex.error = str(err)
                raise self._give_up(retries, _upstream_failure(err)) from None

    def _exchange(self, stream: ServerStream, cs: ClientStream, ex: _Exchange,
                  timeout: float | None, attempt: int, retries: RetryState) -> None:
        head = stream.request
        pump = None
        ex.upstream_stream = cs
        stream.on_reset(lambda: self._downstream_reset(ex, cs))
        if stream.request_complete:
            ex.body_done_at = _monotonic()
            cs.send_headers(head, end_stream=True)
        elif attempt > 1:  # the whole body is in the replay buffer
            cs.send_headers(head, end_stream=False)
            replay = iter(ex.replay)
            _Relay(lambda block: next(replay, None), ex.body, cs, _ignore).run(block=True)
        else:
            cs.send_headers(head, end_stream=False)
            body = ex.body
            read = body.read if isinstance(body, _Filtered) else stream.read_body
            relay = _Relay(read, body, cs, lambda chunk: self._keep(ex, chunk))
            if relay.run(block=False):  # the whole body was already here
                ex.body_done_at = _monotonic()
            else:
                pump = spawn_held(self._pump_request, relay, cs, ex)
        try:
            try_timeout = retries.try_timeout
            resp = self._await_response(stream, cs, ex, try_timeout)
            while resp.status < 200:
                if resp.status == 101:
                    if not head.upgrade:
                        raise StreamReset("upstream switched protocols unasked",
                                          ResetReason.PROTOCOL_ERROR)
                    self._tunnel(stream, cs, ex, resp)
                    return
                if resp.status != 100:  # greenmesh answered 100-continue itself
                    stream.send_informational(resp)
                resp = self._await_response(stream, cs, ex, try_timeout)
            if retries.on_status(resp.status, _replayable(stream, ex)):
                raise _RetryStatus(resp.status)  # before anything of it reaches the client
            ex.status = resp.status
            self._respond(stream, cs, ex, resp, timeout)
        except _Answer:  # a filter answers instead of the upstream: its response is dropped
            cs.reset("local reply")
            raise
        finally:
            if pump is not None:
                pump.kill()
        cs.finish()
        ex.upstream_stream = None

    @staticmethod
    def _downstream_reset(ex: _Exchange, cs: ClientStream) -> None:
        """The client cancelled: cancel upstream too (Envoy resets the upstream stream)."""
        ex.downstream_error = DownstreamError("downstream reset the stream")
        cs.reset("downstream reset")

    def _await_response(self, stream: ServerStream, cs: ClientStream, ex: _Exchange,
                        timeout: float | None) -> ResponseHead:
        """The next response head; the route timeout runs from the end of the request body."""
        while True:
            done = ex.body_done_at
            try:
                return cs.read_headers(_remaining(done + timeout) if done and timeout else timeout)
            except StreamTimeout:
                done = ex.body_done_at
                if ex.downstream_error:
                    raise StreamReset("downstream went away") from None
                if done is not None and _monotonic() - done >= (timeout or 0):
                    raise
                # Still uploading: the clock has not started yet.

    def _pump_request(self, relay: _Relay, cs: ClientStream, ex: _Exchange) -> None:
        """Streams the request body upstream while the main greenlet waits for the response."""
        try:
            relay.run(block=True)
            ex.body_done_at = _monotonic()
        except DownstreamError as e:
            ex.downstream_error = e
            ex.error = str(e)
            cs.reset("downstream went away")
        except StreamError:
            pass  # the upstream failed; the response side sees it too and answers for it

    @staticmethod
    def _keep(ex: _Exchange, chunk: bytes) -> None:
        ex.bytes_in += len(chunk)
        if ex.replay_ok:
            if ex.bytes_in <= REPLAY_LIMIT:
                ex.replay.append(chunk)
            else:
                ex.replay_ok = False
                ex.replay = []

    def _respond(self, stream: ServerStream, cs: ClientStream, ex: _Exchange,
                 resp: ResponseHead, timeout: float | None) -> None:
        deadline = (ex.body_done_at or _monotonic()) + timeout if timeout else None
        route = ex.route
        assert route is not None and route.route.route is not None
        out = resp
        if route.response_add or route.response_remove:
            resp.load_headers()
            out = ResponseHead(resp.status, _apply_header_ops(resp.headers, route.response_add,
                                                              route.response_remove),
                               resp.reason, resp.native, resp.message_bytes)
        ex.bytes_out += resp.message_bytes
        idle = route.route.route.idle_timeout or self._stream_idle

        def read(block: bool) -> Chunk:
            if not block:
                return cs.read_body(None, False)
            wait = _remaining(deadline)
            if idle and (wait is None or idle < wait):
                wait = idle  # the route's idle timeout: no bytes for this long ends it
            return cs.read_body(wait)

        src: ClientStream | _Filtered = cs
        sf = ex.filters
        if sf is not None:
            if sf.active.response_headers:
                reply = sf.response_headers(out)
                if reply is not None:
                    raise _Answer(reply)
                ex.status = out.status  # a filter may have changed it
            if sf.active.wants_response_body:
                src = _Filtered(read, cs, sf.response_data, sf.response_trailers)
                read = src.read
        first = read(False)
        if first is None and not src.trailers:
            stream.send_headers(out, end_stream=True)
            return
        stream.send_headers(out, end_stream=False)

        def count(chunk: bytes) -> None:
            ex.bytes_out += len(chunk)
        relay = _Relay(read, src, stream, count)
        if isinstance(first, bytes):
            count(first)
            relay.held = first
        try:
            relay.run(block=True)
        except (StreamReset, StreamTimeout) as e:
            if ex.downstream_error:  # the client went first; cancelling upstream made this
                flag = ResponseFlag.DOWNSTREAM_CONNECTION_TERMINATION
                ex.error = str(ex.downstream_error)
            else:  # too late for a status: the client sees the response cut short
                flag = (ResponseFlag.UPSTREAM_REQUEST_TIMEOUT if isinstance(e, StreamTimeout)
                        else ResponseFlag.UPSTREAM_CONNECTION_TERMINATION)
                ex.error = str(e)
            ex.flags.append(flag)
            stream.reset(flag.value)
            cs.reset(flag.value)

    def _tunnel(self, stream: ServerStream, cs: ClientStream, ex: _Exchange,
                resp: ResponseHead) -> None:
        """After a 101: raw bytes both ways until either side is done."""
        ex.status = 101
        stream.send_informational(resp)
        down, up = stream.upgrade(), cs.upgrade()
        back = spawn_held(self._copy, up, down, ex, False)
        try:
            self._copy(down, up, ex, True)
            back.join()
        finally:
            back.kill()
            cs.reset("tunnel closed")
            stream.reset("tunnel closed")

    def _copy(self, src: Tunnel, dst: Tunnel, ex: _Exchange, upstream_bound: bool) -> None:
        try:
            while True:
                data = src.read(self._tunnel_idle)
                if not data:
                    dst.shutdown_write()
                    return
                dst.write(data)
                if upstream_bound:
                    ex.bytes_in += len(data)
                else:
                    ex.bytes_out += len(data)
        except StreamError:
            return
