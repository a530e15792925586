"""A gevent StreamServer per listener: one greenlet per connection, protocol picked per config.

At a connection limit (the listener's ``max_connections`` or the overload manager's) the
listener stops accepting until a connection closes: the next ones wait in the kernel's backlog
instead of being accepted and closed at once, which costs a core and serves nobody.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any, Final

import gevent
from gevent import socket as gsocket
from gevent.pool import Pool
from gevent.server import StreamServer

from greenmesh import model, tls
from greenmesh.conn import Conn, ConnError
from greenmesh.logger import get_logger
from greenmesh.overload import LimitLog, OverloadManager
from greenmesh.proxy import Proxy
from greenmesh.stats import Stats
from greenmesh.streams import Match, Protocol, Registry
from greenmesh.streams.base import ServerConnection, ServerOptions

log = get_logger("greenmesh.listener")

# Bytes a protocol may need to see before it can be told apart from the others.
SNIFF_LIMIT: Final = 64
SNIFF_TIMEOUT: Final = 10.0
HANDSHAKE_TIMEOUT: Final = 10.0


def _reuse_port_socket(host: str, port: int) -> gsocket.socket:
    """A listening socket other processes may bind too (SO_REUSEPORT): the kernel spreads new
    connections among them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = gsocket.socket(family, socket.SOCK_STREAM)  # gevent's: what StreamServer takes
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return sock


class Listener:
    def __init__(self, config: model.Listener, registry: Registry, proxy: Proxy, stats: Stats,
                 overload: OverloadManager):
        self.config = config
        self._overload = overload
        self.registry = registry
        self.proxy = proxy
        self.stats = stats
        self._protocol: Protocol | None = (
            None if config.protocol == "auto" else registry.get(config.protocol))
        self._candidates = registry.names()
        offered = [self._protocol] if self._protocol else [registry.get(n) for n in self._candidates]
        self._tls = (tls.server_context(config.tls, [p.alpn for p in offered if p.alpn])
                     if config.tls else None)
        self._scheme = b"https" if config.tls else b"http"
        self._conns: set[Conn] = set()  # every open connection, served or still being sniffed
        self._servers: set[ServerConnection] = set()
        self._draining = False
        self._server: StreamServer | None = None
        self._pool = Pool()
        self._prefix = f"listener.{config.name}."
        self._open = 0  # connections accepted and not yet closed (their greenlet may not run yet)
        # Since when accepting is stopped at a limit, and the log that said so.
        self._paused: tuple[float, LimitLog] | None = None
        self._limit_log = LimitLog()

    @property
    def address(self) -> tuple[str, int]:
        """The bound address (the real port when the config asked for port 0)."""
        assert self._server is not None
        address = self._server.address
        assert isinstance(address, tuple)
        return address[0], address[1]

    def _rejected(self, protocol: str) -> Callable[[int, bytes, bytes, str], None]:
        proxy = self.proxy
        return lambda status, method, path, why: proxy.rejected(status, method, path, why,
                                                                protocol)

    @property
    def active_connections(self) -> int:
        return self._open

    def start(self) -> None:
        a = self.config.address
        if self.config.reuse_port:
            server = StreamServer(_reuse_port_socket(a.host, a.port), self._handle,
                                  spawn=self._spawn)
        else:
            server = StreamServer((a.host, a.port), self._handle, spawn=self._spawn,
                                  backlog=1024)
        # Asked before each accept (gevent puts a pool's full() here the same way).
        server.full = self._full  # type: ignore[method-assign]
        server.start()
        self._server = server
        log.info("listener_started", listener=self.config.name, address=str(a),
                 protocol=self.config.protocol)

    def _count(self, name: str) -> None:
        self.stats.inc(self._prefix + name)

    def _full(self) -> bool:
        """At a limit: stop accepting (counted once per pause, warned at most every 10 s)."""
        limit = self.config.max_connections
        if limit is not None and self._open >= limit:
            why, scope, said = ("downstream_cx_overflow", f"listener max_connections {limit}",
                                self._limit_log)
        else:
            overload = self._overload
            refusal = overload.refusal()
            if refusal is None:
                return False
            (why, scope), said = refusal, overload.limit_log  # one limit for all: one voice
            overload.wait(self._resume)
        self._count(why)
        if self._paused is None:
            self._paused = (time.monotonic(), said)
            said.reached(listener=self.config.name, limit=scope)
        return True

    def _resume(self) -> None:
        server = self._server
        if server is not None and server.started and not self._draining:
            server.start_accepting()  # asks _full again before it accepts

    def _spawn(self, func: Callable[..., object], /, *args: Any, **kwargs: Any) -> gevent.Greenlet:
        self._open += 1
        self._overload.opened()
        if self._paused is not None:
            since, said = self._paused
            self._paused = None
            said.cleared(listener=self.config.name, paused_s=round(time.monotonic() - since, 3))
        return self._pool.spawn(func, *args, **kwargs)

    def _handle(self, sock, peer) -> None:
        try:
            self._serve(sock, peer)
        finally:
            self._open -= 1
            self._overload.closed()
            if self._paused is not None:
                self._resume()

    def _serve(self, sock, peer) -> None:
        stats = self.stats
        conn = Conn(sock, peer, self.config.idle_timeout)
        self._conns.add(conn)
        stats.inc(self._prefix + "downstream_cx_total")
        try:
            if self._tls is not None:
                alpn = conn.accept_tls(self._tls, HANDSHAKE_TIMEOUT)
                protocol = self.registry.by_alpn(alpn) or self._protocol or self._detect(conn)
            else:
                protocol = self._protocol or self._detect(conn)
            if protocol is not None:
                stats.inc(f"{self._prefix}downstream_cx_{protocol.name}_total")
                opts = ServerOptions(peer=peer, scheme=self._scheme,
                                     max_header_bytes=self.config.max_request_headers_kb * 1024,
                                     idle_timeout=self.config.idle_timeout, count=self._count,
                                     accept_http10=self.config.accept_http_10,
                                     max_headers=self.config.max_headers_count,
                                     request_headers_timeout=self.config.request_headers_timeout,
                                     stream_idle_timeout=self.config.stream_idle_timeout,
                                     max_concurrent_streams=self.config.max_concurrent_streams,
                                     max_frame_size=self.config.max_frame_size,
                                     buffer_limit=self.config.per_connection_buffer_limit_bytes,
                                     rejected=self._rejected(protocol.name))
                sc = protocol.server(conn, opts, self.proxy.handler(protocol.name))
                self._servers.add(sc)
                if self._draining:  # the listener began to drain while this one was sniffed
                    sc.drain()
                try:
                    sc.run()
                finally:
                    self._servers.discard(sc)
        except ConnError:
            pass
        except Exception:  # a codec bug: this connection only
            log.exception("connection_error", listener=self.config.name, peer=peer)
        finally:
            conn.close("done")
            self._conns.discard(conn)
            stats.inc(self._prefix + "downstream_cx_destroy")
            # Why it ended (peer gone, drained, premature resets, a peer that took nothing...).
            log.debug("connection_closed", listener=self.config.name, peer=peer,
                      reason=conn.close_reason, bytes_in=conn.bytes_in, bytes_out=conn.bytes_out)

    def _detect(self, conn: Conn) -> Protocol | None:
        data = b""
        while True:
            chunk = conn.read(SNIFF_TIMEOUT)
            if not chunk:
                return None
            data += chunk
            found = self.registry.detect(data, self._candidates)
            if isinstance(found, Protocol):
                conn.unread(data)
                return found
            if found is Match.NO or len(data) >= SNIFF_LIMIT:
                self.stats.inc(self._prefix + "downstream_cx_protocol_error")
                log.info("unknown_protocol", listener=self.config.name, peer=conn.peer,
                         first_bytes=data[:16].hex())
                answer = self.registry.refusal(data, self._candidates)
                if answer is not None:
                    conn.write(answer)
                    self.proxy.rejected(400, b"", b"", "not a protocol this listener speaks")
                return None

    def close_listening(self) -> None:
        """Stops accepting (the port is free at once); connections are left alone."""
        if self._server is not None and not self._server.closed:
            self._server.close()

    def stop(self, timeout: float) -> None:
        """Stops accepting; idle connections close now, the others once their requests end."""
        self._draining = True
        server = self._server
        if server is None:
            return
        self.close_listening()
        served = {sc.conn for sc in self._servers}
        for sc in list(self._servers):
            sc.drain()  # idle ones close now; HTTP/2 says GOAWAY; the rest close when done
        for conn in list(self._conns - served):
            conn.close("listener stopped")  # still being told apart: nothing in flight
        pool = self._pool
        if not pool.join(timeout=timeout):
            pool.kill(timeout=1)
        for conn in list(self._conns):
            conn.close("listener stopped")
        self._server = None
        gevent.sleep(0)
        log.info("listener_stopped", listener=self.config.name)
