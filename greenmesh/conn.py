"""A socket plus its buffers: the only place greenmesh touches sockets.

Reads and writes look blocking; gevent does the waiting. Timeouts and peer failures become two
exceptions, so codecs and the proxy never see ``OSError`` variety.
"""

from __future__ import annotations

import ipaddress
import socket as _stdsocket
from collections.abc import Callable

import gevent
import gevent.event
from gevent import socket, ssl
from gevent.timeout import Timeout

READ_SIZE = 65536


def _literal_family(host: str) -> int | None:
    """The address family of a literal IP address, None for a name."""
    try:
        return _stdsocket.AF_INET6 if ipaddress.ip_address(host).version == 6 else _stdsocket.AF_INET
    except ValueError:
        return None


class ConnError(Exception):
    """The peer reset or the socket failed."""


class ConnTimeout(ConnError):
    """No bytes arrived (or could be sent) within the allowed time."""


class Conn:
    """One TCP connection. ``read`` returns ``b""`` at EOF; the rest raise ConnError.

    Reads and writes first try the socket without blocking (what is usually there costs one
    syscall and no timer); only one that must wait arms a timer, the connection's own, reused:
    gevent's socket timeouts create a timer per wait, which measured 7 µs of a 28 µs request on a
    bare gevent relay."""

    __slots__ = ("sock", "peer", "bytes_in", "bytes_out", "closed", "close_reason",
                 "_pending", "_timeout", "tls", "_raw", "_timers")

    def __init__(self, sock: socket.socket, peer: tuple | None = None, timeout: float | None = None):
        self.sock = sock
        self.peer = peer
        self.bytes_in = 0
        self.bytes_out = 0
        self.closed = False
        self.close_reason = ""
        self._pending = b""
        self._timeout = timeout  # for reads that do not say, and for writes
        self.tls = False
        # One reusable timer for waiting reads, one for waiting writes: with multiplexed
        # protocols a reader and a writer greenlet may both be waiting on this connection.
        self._timers: dict[str, Timeout] = {}
        sock.settimeout(None)  # waits are bounded by our timer, not gevent's per-wait one
        # The underlying non-blocking socket (gevent's own), for the first, non-waiting try.
        self._raw: _stdsocket.socket | None = getattr(sock, "_sock", None)
        try:
            sock.setsockopt(_stdsocket.IPPROTO_TCP, _stdsocket.TCP_NODELAY, 1)
        except OSError:
            pass

    @classmethod
    def connect(cls, host: str, port: int, timeout: float, tls: ssl.SSLContext | None = None,
                server_hostname: str = "") -> Conn:
        """Opens a connection (and TLS on it, within the same timeout), raising ConnTimeout or
        ConnError (refused, unreachable, handshake or verification failed). A literal IP
        address is connected to directly: no name resolution (gevent resolves through a thread
        pool, where a thousand connects at once would queue)."""
        try:
            family = _literal_family(host)
            if family is None:
                sock = socket.create_connection((host, port), timeout=timeout)
            else:
                sock = socket.socket(family, _stdsocket.SOCK_STREAM)
                sock.settimeout(timeout)
                try:
                    sock.connect((host, port))
                except BaseException:
                    sock.close()
                    raise
        except TimeoutError as e:
            raise ConnTimeout(f"connect to {host}:{port} timed out") from e
        except OSError as e:
            raise ConnError(f"connect to {host}:{port}: {e.strerror or e}") from e
        if tls is not None:
            try:
                sock = tls.wrap_socket(sock, server_hostname=server_hostname or host,
                                       do_handshake_on_connect=False)
                sock.do_handshake()
            except (OSError, ValueError) as e:
                sock.close()
                raise ConnError(f"TLS to {host}:{port}: {e}") from e
        conn = cls(sock, (host, port))
        conn.tls = tls is not None
        if conn.tls:
            conn._raw = None  # TLS records: only the SSL object may read them
        return conn

    def accept_tls(self, ctx: ssl.SSLContext, timeout: float) -> str | None:
        """Server side of the handshake; returns the ALPN protocol the client chose."""
        try:
            sock = ctx.wrap_socket(self.sock, server_side=True, do_handshake_on_connect=False)
            sock.settimeout(timeout)
            sock.do_handshake()
        except (OSError, ValueError) as e:
            raise ConnError(f"TLS handshake: {e}") from e
        self.sock = sock
        self.tls = True
        self._raw = None
        sock.settimeout(None)
        return sock.selected_alpn_protocol()

    def _wait(self, call, arg, timeout: float | None, what: str):
        """``call(arg)`` on the gevent socket, which may wait, bounded by ``timeout``; ``what``
        (read, write) names the timer, and the error."""
        if timeout is None:
            return call(arg)
        timer = self._timers.get(what)
        if timer is None or timer.seconds != timeout:
            self._timers[what] = timer = Timeout(timeout)
        timer.start()
        try:
            return call(arg)
        except Timeout as t:
            if t is not timer:
                raise
            raise ConnTimeout(f"{what} timed out") from None
        finally:
            timer.cancel()

    def read(self, timeout: float | None = -1.0) -> bytes:
        """Returns what is available (at most READ_SIZE), blocking until something is, for at
        most ``timeout`` (the connection's own when not given; None: no limit)."""
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        if timeout == -1.0:
            timeout = self._timeout
        try:
            raw = self._raw
            if raw is None:
                data = self._wait(self.sock.recv, READ_SIZE, timeout, "read")
            else:
                try:
                    data = raw.recv(READ_SIZE)
                except BlockingIOError:
                    data = self._wait(self.sock.recv, READ_SIZE, timeout, "read")
        except ConnTimeout:
            raise
        except OSError as e:
            raise ConnError(f"read failed: {e.strerror or e}") from None
        self.bytes_in += len(data)
        return data

    def unread(self, data: bytes) -> None:
        """Puts bytes back to be returned by the next read (protocol sniffing hands them on)."""
        self._pending = data + self._pending

    def write(self, data: bytes) -> None:
        """Sends all of ``data``, waiting at most the connection's timeout (or STALL_TIMEOUT)
        for the peer to take each part."""
        try:
            raw = self._raw
            sent = 0
            if raw is not None:
                try:
                    sent = raw.send(data)
                except BlockingIOError:
                    pass
            if sent < len(data):
                self._wait(self.sock.sendall, memoryview(data)[sent:] if sent else data,
                           self._timeout or STALL_TIMEOUT, "write")
        except ConnTimeout:
            raise
        except OSError as e:
            raise ConnError(f"write failed: {e.strerror or e}") from None
        self.bytes_out += len(data)

    def readable_or_closed(self) -> bool:
        """True if the peer sent something or closed: an idle pooled connection must not be."""
        if self.closed or self._pending:
            return True
        if self.tls:
            return self._tls_readable_or_closed()
        raw = self._raw  # gevent's own recv would wait on EAGAIN instead of reporting it
        if raw is None:
            return True
        try:
            raw.recv(1, _stdsocket.MSG_PEEK | _stdsocket.MSG_DONTWAIT)
            return True
        except BlockingIOError:
            return False
        except OSError:
            return True

    def _tls_readable_or_closed(self) -> bool:
        """Over TLS, unread bytes may be harmless records (a TLS 1.3 session ticket): read
        without blocking and see whether application data or the end comes out."""
        sock = self.sock
        assert isinstance(sock, ssl.SSLSocket)
        if sock.pending():
            return True
        try:
            sock.settimeout(0.0)
            return sock.recv(1) is not None  # data (unexpected) or b"" (closed): unusable
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError, TimeoutError):
            return False
        except OSError:
            return True
        finally:
            sock.settimeout(None)

    def shutdown_write(self) -> None:
        try:
            self.sock.shutdown(_stdsocket.SHUT_WR)
        except OSError:
            pass

    def close(self, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        try:
            self.sock.close()
        except OSError:
            pass


# Bytes a connection may have queued for its socket before its producers wait (Envoy's default
# per_connection_buffer_limit_bytes).
HIGH_WATER = 1 << 20
# How long a writer may take to flush that much before the peer counts as gone (Envoy's
# stream_idle_timeout default).
STALL_TIMEOUT = 300.0


class BatchWriter:
    """One greenlet writes a connection for many producers (multiplexed streams).

    Producers queue bytes where ``pull`` finds them and call ``wake()``; the writer sends all
    that is queued in one write per wake-up, so no producer blocks on the socket and the
    frames of many streams share a syscall. It can close the connection once flushed.

    ``wait_writable()`` is the back-pressure: past HIGH_WATER queued bytes (``backlog()``) a
    producer waits until the writer has flushed, so a peer that does not read holds back the
    streams and the reader that feed it, not the proxy's memory. A peer that takes longer than
    ``stall_timeout`` to take that much loses the connection (Envoy: the stream idle timeout).
    """

    __slots__ = ("conn", "_pull", "_backlog", "_stall_timeout", "_on_close", "_wake", "_flushed",
                 "_close_after", "_greenlet", "_on_wait")

    def __init__(self, conn: Conn, pull: Callable[[], bytes], on_close: Callable[[str], None],
                 backlog: Callable[[], int], stall_timeout: float | None = STALL_TIMEOUT,
                 on_wait: Callable[[], None] = lambda: None):
        self.conn = conn
        self._pull = pull
        self._backlog = backlog
        self._stall_timeout = stall_timeout
        self._on_close = on_close
        self._wake = gevent.event.Event()
        self._flushed = gevent.event.Event()
        self._flushed.set()
        self._close_after = ""
        self._on_wait = on_wait  # a producer must wait: the peer is slower than we are
        self._greenlet = gevent.spawn(self._run)

    def wake(self) -> None:
        self._wake.set()

    @property
    def backed_up(self) -> bool:
        """More than HIGH_WATER bytes wait for the socket."""
        return self._backlog() > HIGH_WATER

    def wait_writable(self) -> None:
        if self._backlog() > HIGH_WATER:
            self._on_wait()
        while self._backlog() > HIGH_WATER and not self.conn.closed and not self._greenlet.dead:
            self._flushed.clear()
            self._wake.set()
            if not self._flushed.wait(self._stall_timeout):
                self._on_close(f"peer took nothing for {self._stall_timeout:g}s")

    def close_after_flush(self, reason: str) -> None:
        self._close_after = reason
        self._wake.set()

    def stop(self) -> None:
        self._greenlet.kill(block=False)

    def join(self, timeout: float) -> None:
        self._greenlet.join(timeout=timeout)
        if not self._greenlet.dead:
            self._greenlet.kill(block=False)

    def _run(self) -> None:
        wake, pull, conn, flushed = self._wake, self._pull, self.conn, self._flushed
        try:
            while True:
                wake.wait()
                wake.clear()
                while data := pull():  # more may queue while a write blocks
                    conn.write(data)
                flushed.set()
                if self._close_after:
                    self._on_close(self._close_after)
                    return
                if conn.closed:
                    return
        except ConnError as e:
            self._on_close(f"write failed: {e}")
        finally:
            flushed.set()  # nobody waits on a writer that is gone
