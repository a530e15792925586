"""A socket plus its buffers: the only place greenmesh touches sockets.

Reads and writes look blocking; gevent does the waiting. Timeouts and peer failures become two
exceptions, so codecs and the proxy never see ``OSError`` variety.
"""

from __future__ import annotations

import ipaddress
import socket as _stdsocket
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import gevent
import gevent.event
from gevent import socket, ssl
from greenlet import getcurrent

from greenmesh.cooperate import spawn_held
from greenmesh.deadline import Expired

if TYPE_CHECKING:
    from gevent._types import _TimerWatcher as Timer

READ_SIZE: Final = 65536
# A plain int: the IntFlag arithmetic of socket.MsgFlag costs more than the syscall.
_PEEK: Final = int(_stdsocket.MSG_PEEK | _stdsocket.MSG_DONTWAIT)


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


def _timed_out(what: str, timeout: float) -> ConnTimeout:
    if what == "write":
        return ConnTimeout(f"peer took nothing for {timeout:g}s")
    return ConnTimeout(f"{what} timed out")


class Conn:
    """One TCP connection. ``read`` returns ``b""`` at EOF; the rest raise ConnError.

    Reads and writes first try the socket without blocking (what is usually there costs one
    syscall and no timer), unless the caller says the peer has yet to answer; one that must
    wait parks the greenlet on the socket's own watcher with the connection's own timer, both
    reused. gevent's socket methods would wrap each wait in Python (a Timeout object per wait,
    its recv loop): that measured 7 µs of a 28 µs request on a bare gevent relay, and a fifth
    of greenmesh's HTTP/1.1 CPU once the rest was compiled.
    TLS sockets keep gevent's methods: only the SSL object knows when a record is complete."""

    __slots__ = ("sock", "peer", "bytes_in", "bytes_out", "closed", "close_reason",
                 "_pending", "_timeout", "tls", "_raw", "_read_timer", "_read_after",
                 "_write_timer", "_write_after", "_hub")

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
        # One reusable timer for waiting reads, one for waiting writes (with the timeout it
        # was made for): with multiplexed protocols a reader and a writer greenlet may both be
        # waiting on this connection. Made repeating and armed with again(): libev keeps what
        # was left of a one-shot timer when it is stopped, so start() after stop() would wait
        # only the rest, and the timeouts of a long-lived connection would shrink to nothing.
        # (Plain slots, not a dict: an idle connection holds them.)
        self._read_timer: Timer | None = None
        self._read_after = 0.0
        self._write_timer: Timer | None = None
        self._write_after = 0.0
        self._hub = gevent.get_hub()
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
        except OSError as err:
            raise ConnError(f"connect to {host}:{port}: {err.strerror or err}") from err
        if tls is not None:
            try:
                sock = tls.wrap_socket(sock, server_hostname=server_hostname or host,
                                       do_handshake_on_connect=False)
                sock.do_handshake()
            except (OSError, ValueError) as tls_err:
                sock.close()
                raise ConnError(f"TLS to {host}:{port}: {tls_err}") from tls_err
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

    def _timer(self, what: str, timeout: float) -> Timer:
        if what == "read":
            timer = self._read_timer
            if timer is None or self._read_after != timeout:
                timer = self._read_timer = self._hub.loop.timer(timeout, timeout)
                self._read_after = timeout
            return timer
        timer = self._write_timer
        if timer is None or self._write_after != timeout:
            timer = self._write_timer = self._hub.loop.timer(timeout, timeout)
            self._write_after = timeout
        return timer

    def _until_ready(self, what: str, timeout: float | None) -> None:
        """Parks the greenlet until the socket is readable (``what`` is "read") or writable,
        for at most ``timeout``. Closing the socket from another greenlet wakes it with
        OSError (gevent's cancel_wait)."""
        sock = self.sock
        watcher = sock._read_event if what == "read" else sock._write_event  # type: ignore[attr-defined]
        if timeout is None:
            self._hub.wait(watcher)
            return
        timer = self._timer(what, timeout)
        timer.again(getcurrent().throw, Expired)  # the whole timeout, each time
        try:
            self._hub.wait(watcher)
        except Expired:
            raise _timed_out(what, timeout) from None
        finally:
            timer.stop()

    def _wait(self, call, arg, timeout: float | None, what: str):
        """``call(arg)`` on the gevent socket (TLS), which may wait, bounded by ``timeout``."""
        if timeout is None:
            return call(arg)
        timer = self._timer(what, timeout)
        timer.again(getcurrent().throw, Expired)  # the whole timeout, each time
        try:
            return call(arg)
        except Expired:
            raise _timed_out(what, timeout) from None
        finally:
            timer.stop()

    def read(self, timeout: float | None = -1.0, wait_first: bool = False) -> bytes:
        """Returns what is available (at most READ_SIZE), blocking until something is, for at
        most ``timeout`` (the connection's own when not given; None: no limit).

        ``wait_first``: the caller knows the peer has yet to answer what we just sent (an
        HTTP/1.1 response head, the next keep-alive request), so the read waits for readiness
        before trying; a first try would fail (EAGAIN: a syscall and an exception, 0.8 µs
        measured) twice a request. Readers of multiplexed protocols keep trying first: they
        handle all the input there is before their streams' handlers run."""
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
                if wait_first:
                    self._until_ready("read", timeout)
                while True:
                    try:
                        data = raw.recv(READ_SIZE)
                        break
                    except BlockingIOError:
                        self._until_ready("read", timeout)
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
            if raw is None:
                self._wait(self.sock.sendall, data, self._timeout or STALL_TIMEOUT, "write")
            else:
                sent = 0
                try:
                    sent = raw.send(data)
                except BlockingIOError:
                    pass
                if sent < len(data):
                    view = memoryview(data)
                    while sent < len(data):
                        self._until_ready("write", self._timeout or STALL_TIMEOUT)
                        try:
                            sent += raw.send(view[sent:])
                        except BlockingIOError:
                            pass
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
            raw.recv(1, _PEEK)
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
HIGH_WATER: Final = 1 << 20
# How long a writer may take to flush that much before the peer counts as gone (Envoy's
# stream_idle_timeout default).
STALL_TIMEOUT: Final = 300.0


def _no_bytes() -> bytes:
    return b""


def _no_backlog() -> int:
    return 0


def _ignore_reason(reason: str) -> None:
    pass


def _nothing() -> None:
    pass


class BatchWriter:
    """One greenlet writes a connection for many producers (multiplexed streams).

    Producers queue bytes where ``pull`` finds them and call ``wake()``; the writer sends all
    that is queued in one write per wake-up, so no producer blocks on the socket and the
    frames of many streams share a syscall. It can close the connection once flushed.

    ``wait_writable()`` is the back-pressure: past ``high_water`` queued bytes (``backlog()``) a
    producer waits until the writer has flushed, so a peer that does not read holds back the
    streams and the reader that feed it, not the proxy's memory. A peer that takes longer than
    ``stall_timeout`` to take that much loses the connection (Envoy: the stream idle timeout).
    """

    __slots__ = ("conn", "_pull", "_backlog", "_stall_timeout", "_on_close", "_wake", "_flushed",
                 "_close_after", "_greenlet", "_on_wait", "_stopped", "high_water")

    def __init__(self, conn: Conn, pull: Callable[[], bytes], on_close: Callable[[str], None],
                 backlog: Callable[[], int], stall_timeout: float | None = STALL_TIMEOUT,
                 on_wait: Callable[[], None] = lambda: None, high_water: int = HIGH_WATER):
        self.conn = conn
        self.high_water = high_water
        self._pull = pull
        self._backlog = backlog
        self._stall_timeout = stall_timeout
        self._on_close = on_close
        self._wake = gevent.event.Event()
        self._flushed = gevent.event.Event()
        self._flushed.set()
        self._close_after = ""
        self._on_wait = on_wait  # a producer must wait: the peer is slower than we are
        self._stopped = False
        self._greenlet = spawn_held(self._run)  # join() may kill it while it runs

    def wake(self) -> None:
        self._wake.set()

    @property
    def backed_up(self) -> bool:
        """More than ``high_water`` bytes wait for the socket."""
        return self._backlog() > self.high_water

    def wait_writable(self) -> None:
        high = self.high_water
        if self._backlog() > high:
            self._on_wait()
        while self._backlog() > high and not self.conn.closed and not self._greenlet.dead:
            self._flushed.clear()
            self._wake.set()
            if not self._flushed.wait(self._stall_timeout):
                self._on_close(f"peer took nothing for {self._stall_timeout:g}s")

    def close_after_flush(self, reason: str) -> None:
        self._close_after = reason
        self._wake.set()

    def stop(self) -> None:
        """Ends the writer without flushing (its connection is closed). It returns by itself
        rather than being killed: a killed greenlet keeps its GreenletExit, whose traceback
        holds this writer, a cycle only the full collector frees."""
        self._stopped = True
        self._wake.set()

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
                if self._stopped:
                    return
                while data := pull():  # more may queue while a write blocks
                    conn.write(data)
                flushed.set()
                if self._close_after:
                    self._on_close(self._close_after)
                    return
                if conn.closed:
                    return
        except ConnTimeout as e:
            self._on_close(str(e))  # the peer stopped reading: say so, as wait_writable does
        except ConnError as err:
            self._on_close(f"write failed: {err}")
        finally:
            flushed.set()  # nobody waits on a writer that is gone
            # Its callbacks lead back to the connection that holds this writer: let them go.
            self._pull, self._backlog = _no_bytes, _no_backlog
            self._on_close, self._on_wait = _ignore_reason, _nothing
